//! REAPI `Capabilities`: what this server supports.

use tessera_cas::resource::validate_instance_name;
use tessera_proto::build::bazel::semver::SemVer;
use tessera_proto::reapi::{
    ActionCacheUpdateCapabilities, CacheCapabilities, ExecutionCapabilities,
    GetCapabilitiesRequest, PriorityCapabilities, ServerCapabilities, capabilities_server,
    compressor, digest_function, priority_capabilities::PriorityRange,
    symlink_absolute_path_strategy,
};
use tonic::{Request, Response, Status};

/// The Capabilities service.
#[derive(Debug, Clone)]
pub struct CapabilitiesService {
    max_batch_total_size_bytes: u64,
}

impl CapabilitiesService {
    /// Advertises `max_batch_total_size_bytes` as the batch limit.
    pub fn new(max_batch_total_size_bytes: u64) -> Self {
        CapabilitiesService {
            max_batch_total_size_bytes,
        }
    }

    fn capabilities(&self) -> ServerCapabilities {
        let version = |minor| SemVer {
            major: 2,
            minor,
            patch: 0,
            prerelease: String::new(),
        };
        let functions = vec![
            digest_function::Value::Sha256 as i32,
            digest_function::Value::Blake3 as i32,
        ];
        ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: functions.clone(),
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                cache_priority_capabilities: Some(PriorityCapabilities {
                    priorities: vec![PriorityRange {
                        min_priority: 0,
                        max_priority: 0,
                    }],
                }),
                max_batch_total_size_bytes: i64::try_from(self.max_batch_total_size_bytes)
                    .unwrap_or(i64::MAX),
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Disallowed
                    as i32,
                supported_compressors: vec![compressor::Value::Zstd as i32],
                supported_batch_update_compressors: vec![compressor::Value::Zstd as i32],
            }),
            execution_capabilities: Some(ExecutionCapabilities {
                digest_function: digest_function::Value::Sha256 as i32,
                exec_enabled: true,
                execution_priority_capabilities: Some(PriorityCapabilities {
                    priorities: vec![PriorityRange {
                        min_priority: crate::services::execution::PRIORITY_RANGE.0,
                        max_priority: crate::services::execution::PRIORITY_RANGE.1,
                    }],
                }),
                supported_node_properties: Vec::new(),
                digest_functions: functions,
            }),
            deprecated_api_version: Some(version(0)),
            low_api_version: Some(version(0)),
            high_api_version: Some(version(3)),
        }
    }
}

#[tonic::async_trait]
impl capabilities_server::Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        validate_instance_name(&request.get_ref().instance_name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(self.capabilities()))
    }
}
