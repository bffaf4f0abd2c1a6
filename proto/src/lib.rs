//! Generated protocol code for Tessera, plus the protocol's constants, time conversions
//! ([`time`]), the words for its enums ([`names`]) and ByteStream's bulk messages read and
//! written on the wire without copies ([`wire`]); nothing else.
//!
//! The `.proto` files under `protos/` are our own, written to be wire-compatible with upstream
//! `bazelbuild/remote-apis` and `googleapis` (same packages, names, numbers and types). Code is
//! generated at build time by prost/tonic through protox, so no system `protoc` is needed.
//! `bytes` fields are `bytes::Bytes`.

pub mod names;
pub mod time;
pub mod wire;

#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod build {
    pub mod bazel {
        pub mod semver {
            tonic::include_proto!("build.bazel.semver");
        }
        pub mod remote {
            pub mod execution {
                pub mod v2 {
                    tonic::include_proto!("build.bazel.remote.execution.v2");
                }
            }
        }
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod google {
    pub mod bytestream {
        tonic::include_proto!("google.bytestream");
    }
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod tessera {
    pub mod v1 {
        tonic::include_proto!("tessera.v1");
    }
}

/// The REAPI v2 messages and services.
pub use build::bazel::remote::execution::v2 as reapi;
/// `google.bytestream`.
pub use google::bytestream;
/// `google.longrunning`.
pub use google::longrunning;
/// `google.rpc` (Status and error details).
pub use google::rpc;

/// The version of the agent protocol (`tessera.v1.AgentSession`) this build speaks. Bumped
/// whenever a change would make an older agent or coordinator misread the other; a coordinator
/// accepts only agents that speak the same version (see `Hello.protocol_version`).
///
/// History: 1 carried lease outcomes as `google.rpc.Status` codes (and sent no version);
/// 2 carries `LeaseOutcome`; 3 lets a result carry small outputs inline
/// (`LeaseResult.blobs`, up to `Welcome.inline_output_bytes`) and sends lease stages only when
/// the `Welcome` asks for them.
pub const AGENT_PROTOCOL_VERSION: u32 = 3;

/// The gRPC metadata key under which REAPI clients send `RequestMetadata`.
pub const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";
