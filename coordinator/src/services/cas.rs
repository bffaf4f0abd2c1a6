//! REAPI `ContentAddressableStorage`: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs,
//! GetTree. Blobs are shared by all instance names (they are named by content); the instance
//! name is validated but does not partition the store.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tessera_cas::digest::{Digest, DigestError, DigestFunction};
use tessera_cas::resource::{ResourceError, validate_instance_name};
use tessera_cas::store::{BlobStore, StoreError, codec};
use tessera_proto::reapi::{
    BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, Directory, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetTreeRequest, GetTreeResponse, batch_read_blobs_response, batch_update_blobs_response,
    compressor, content_addressable_storage_server,
};
use thiserror::Error;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Caller};
use crate::status::{rpc_ok, rpc_status, store_error};

/// Directories per GetTree page when the client sets no page size, and the most it may ask.
const MAX_TREE_PAGE: usize = 10_000;
/// Bytes of directories per GetTree page, to stay well under gRPC's message limit.
const MAX_TREE_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Most directories one GetTree walks.
const MAX_TREE_DIRECTORIES: usize = 1_000_000;

/// What can go wrong in a CAS call; mapped to a status in one place below.
#[derive(Debug, Error)]
enum CasError {
    #[error(transparent)]
    Instance(#[from] ResourceError),
    #[error("{what}: {source}")]
    Digest {
        what: String,
        #[source]
        source: DigestError,
    },
    #[error(
        "batch of {total} bytes exceeds the limit of {limit} bytes; use ByteStream for large blobs"
    )]
    BatchTooLarge { total: u64, limit: u64 },
    #[error("unsupported compressor {0} (this server supports identity and zstd)")]
    Compressor(i32),
    #[error("blob {digest}: {source}")]
    Codec {
        digest: Digest,
        #[source]
        source: codec::CodecError,
    },
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("tree root {0} is not a Directory message")]
    NotADirectory(Digest),
    #[error("invalid page_token \"{0}\"")]
    PageToken(String),
    #[error("invalid page_size {0}: must not be negative")]
    PageSize(i32),
    #[error("tree under {0} has more than {MAX_TREE_DIRECTORIES} directories")]
    TreeTooLarge(Digest),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("worker thread failed: {0}")]
    Join(String),
}

impl From<CasError> for Status {
    fn from(error: CasError) -> Status {
        match &error {
            CasError::Instance(_)
            | CasError::Digest { .. }
            | CasError::BatchTooLarge { .. }
            | CasError::Compressor(_)
            | CasError::Codec { .. }
            | CasError::NotADirectory(_)
            | CasError::PageToken(_)
            | CasError::PageSize(_) => Status::invalid_argument(error.to_string()),
            CasError::NotFound(_) => Status::not_found(error.to_string()),
            CasError::TreeTooLarge(_) => Status::resource_exhausted(error.to_string()),
            CasError::Store(inner) => store_error(inner),
            CasError::Join(_) => Status::internal(error.to_string()),
        }
    }
}

fn parse_digest(
    function: DigestFunction,
    what: impl FnOnce() -> String,
    digest: Option<&tessera_proto::reapi::Digest>,
) -> Result<Digest, CasError> {
    Digest::from_proto_opt(function, digest).map_err(|source| CasError::Digest {
        what: what(),
        source,
    })
}

fn function_of(value: i32) -> Result<DigestFunction, CasError> {
    DigestFunction::from_request(value).map_err(|source| CasError::Digest {
        what: "digest_function".to_owned(),
        source,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CasError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CasError::Join(e.to_string()))
}

/// The ContentAddressableStorage service.
#[derive(Clone)]
pub struct CasService {
    store: Arc<dyn BlobStore>,
    max_batch_bytes: u64,
    auth: Option<Auth>,
}

impl CasService {
    /// Serves `store`, refusing batches larger than `max_batch_bytes` in total.
    pub fn new(store: Arc<dyn BlobStore>, max_batch_bytes: u64) -> Self {
        CasService {
            store,
            max_batch_bytes,
            auth: None,
        }
    }

    /// Checks each caller's instance scope and upload rate against `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    fn find_missing(
        &self,
        req: &FindMissingBlobsRequest,
    ) -> Result<FindMissingBlobsResponse, CasError> {
        validate_instance_name(&req.instance_name)?;
        let function = function_of(req.digest_function)?;
        let digests = req
            .blob_digests
            .iter()
            .enumerate()
            .map(|(i, d)| parse_digest(function, || format!("blob_digests[{i}]"), Some(d)))
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self.store.find_missing(&digests);
        Ok(FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        })
    }

    async fn batch_update(
        &self,
        req: BatchUpdateBlobsRequest,
    ) -> Result<BatchUpdateBlobsResponse, CasError> {
        validate_instance_name(&req.instance_name)?;
        let function = function_of(req.digest_function)?;
        // A compressed entry counts at its decompressed size: that is what the server holds
        // in memory, and zstd can expand a tiny payload enormously.
        let total = req.requests.iter().fold(0u64, |sum, r| {
            let size = r
                .digest
                .as_ref()
                .and_then(|d| u64::try_from(d.size_bytes).ok())
                .unwrap_or(0);
            sum.saturating_add(size.max(r.data.len() as u64))
        });
        if total > self.max_batch_bytes {
            return Err(CasError::BatchTooLarge {
                total,
                limit: self.max_batch_bytes,
            });
        }
        let store = Arc::clone(&self.store);
        let responses = blocking(move || {
            req.requests
                .into_iter()
                .enumerate()
                .map(|(i, entry)| {
                    let outcome = update_one(store.as_ref(), function, i, &entry);
                    batch_update_blobs_response::Response {
                        digest: entry.digest,
                        status: Some(match outcome {
                            Ok(()) => rpc_ok(),
                            Err(error) => rpc_status(&Status::from(error)),
                        }),
                    }
                })
                .collect()
        })
        .await?;
        Ok(BatchUpdateBlobsResponse { responses })
    }

    async fn batch_read(
        &self,
        req: BatchReadBlobsRequest,
    ) -> Result<BatchReadBlobsResponse, CasError> {
        validate_instance_name(&req.instance_name)?;
        let function = function_of(req.digest_function)?;
        let digests = req
            .digests
            .iter()
            .enumerate()
            .map(|(i, d)| parse_digest(function, || format!("digests[{i}]"), Some(d)))
            .collect::<Result<Vec<_>, _>>()?;
        let total = digests
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.size_bytes));
        if total > self.max_batch_bytes {
            return Err(CasError::BatchTooLarge {
                total,
                limit: self.max_batch_bytes,
            });
        }
        let zstd_ok = req
            .acceptable_compressors
            .contains(&(compressor::Value::Zstd as i32));
        let store = Arc::clone(&self.store);
        let responses = blocking(move || {
            digests
                .into_iter()
                .map(|digest| read_one(store.as_ref(), digest, zstd_ok))
                .collect()
        })
        .await?;
        Ok(BatchReadBlobsResponse { responses })
    }

    async fn get_tree(&self, req: GetTreeRequest) -> Result<Vec<GetTreeResponse>, CasError> {
        validate_instance_name(&req.instance_name)?;
        let function = function_of(req.digest_function)?;
        let root = parse_digest(
            function,
            || "root_digest".to_owned(),
            req.root_digest.as_ref(),
        )?;
        if req.page_size < 0 {
            return Err(CasError::PageSize(req.page_size));
        }
        let start = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse::<usize>()
                .map_err(|_| CasError::PageToken(req.page_token.clone()))?
        };
        let single_page = req.page_size > 0;
        let page_size = if single_page {
            usize::try_from(req.page_size)
                .unwrap_or(MAX_TREE_PAGE)
                .min(MAX_TREE_PAGE)
        } else {
            MAX_TREE_PAGE
        };
        let store = Arc::clone(&self.store);
        blocking(move || walk_tree(store.as_ref(), root, start, page_size, single_page)).await?
    }
}

fn update_one(
    store: &dyn BlobStore,
    function: DigestFunction,
    index: usize,
    entry: &tessera_proto::reapi::batch_update_blobs_request::Request,
) -> Result<(), CasError> {
    let digest = parse_digest(
        function,
        || format!("requests[{index}].digest"),
        entry.digest.as_ref(),
    )?;
    match compressor::Value::try_from(entry.compressor) {
        Ok(compressor::Value::Identity) => store.write(&digest, &entry.data)?,
        Ok(compressor::Value::Zstd) => {
            let data = codec::decompress(&entry.data, digest.size_bytes)
                .map_err(|source| CasError::Codec { digest, source })?;
            store.write(&digest, &data)?;
        }
        _ => return Err(CasError::Compressor(entry.compressor)),
    }
    Ok(())
}

fn read_one(
    store: &dyn BlobStore,
    digest: Digest,
    zstd_ok: bool,
) -> batch_read_blobs_response::Response {
    let proto = Some(digest.to_proto());
    match store.read(&digest) {
        Ok(Some(data)) => {
            let compressed = zstd_ok && data.len() > 512;
            let (data, compressor) = match compressed.then(|| codec::compress(&data)) {
                Some(small) if small.len() < data.len() => (small.into(), compressor::Value::Zstd),
                _ => (data, compressor::Value::Identity),
            };
            batch_read_blobs_response::Response {
                digest: proto,
                data,
                compressor: compressor as i32,
                status: Some(rpc_ok()),
            }
        }
        Ok(None) => batch_read_blobs_response::Response {
            digest: proto,
            data: Default::default(),
            compressor: 0,
            status: Some(rpc_status(&Status::from(CasError::NotFound(digest)))),
        },
        Err(error) => batch_read_blobs_response::Response {
            digest: proto,
            data: Default::default(),
            compressor: 0,
            status: Some(rpc_status(&Status::from(CasError::Store(error)))),
        },
    }
}

/// Breadth-first walk from `root`, each distinct directory once, in a stable order; returns
/// the pages from directory number `start` on. Missing subdirectories are skipped (REAPI:
/// return the portion present).
fn walk_tree(
    store: &dyn BlobStore,
    root: Digest,
    start: usize,
    page_size: usize,
    single_page: bool,
) -> Result<Vec<GetTreeResponse>, CasError> {
    let Some(root_bytes) = store.read(&root)? else {
        return Err(CasError::NotFound(root));
    };
    let root_dir = Directory::decode(root_bytes).map_err(|_| CasError::NotADirectory(root))?;
    let mut order: Vec<Directory> = Vec::new();
    let mut seen: HashSet<Digest> = HashSet::from([root]);
    let mut queue = std::collections::VecDeque::from([root_dir]);
    // One page asked for: the walk (breadth first, so its order is the same every call) stops
    // once that page is full, so a client taking the top of a large tree does not pay for
    // the whole of it.
    let enough = if single_page {
        start.saturating_add(page_size)
    } else {
        usize::MAX
    };
    while let Some(dir) = queue.pop_front() {
        if order.len() == enough {
            // Something is left (this directory at least): the page says so.
            order.push(dir);
            break;
        }
        for child in &dir.directories {
            let Ok(digest) = Digest::from_proto_opt(root.function, child.digest.as_ref()) else {
                continue;
            };
            if !seen.insert(digest) {
                continue;
            }
            if seen.len() > MAX_TREE_DIRECTORIES {
                return Err(CasError::TreeTooLarge(root));
            }
            if let Some(bytes) = store.read(&digest)?
                && let Ok(child_dir) = Directory::decode(bytes)
            {
                queue.push_back(child_dir);
            }
        }
        order.push(dir);
    }
    if start > order.len() {
        return Err(CasError::PageToken(start.to_string()));
    }
    let mut pages = Vec::new();
    let mut rest = order.into_iter().skip(start).peekable();
    let mut position = start;
    loop {
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(dir) = rest.peek() {
            let len = dir.encoded_len();
            if page.len() >= page_size || (!page.is_empty() && bytes + len > MAX_TREE_PAGE_BYTES) {
                break;
            }
            bytes += len;
            page.extend(rest.next());
        }
        position += page.len();
        let more = rest.peek().is_some();
        pages.push(GetTreeResponse {
            directories: page,
            next_page_token: if more {
                position.to_string()
            } else {
                String::new()
            },
        });
        if !more || single_page {
            return Ok(pages);
        }
    }
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl content_addressable_storage_server::ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        Caller::of(self.auth.as_ref(), &request)
            .instance("FindMissingBlobs", &request.get_ref().instance_name)?;
        Ok(Response::new(self.find_missing(request.get_ref())?))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let caller = Caller::of(self.auth.as_ref(), &request);
        caller.instance("BatchUpdateBlobs", &request.get_ref().instance_name)?;
        let bytes = request
            .get_ref()
            .requests
            .iter()
            .map(|r| r.data.len() as u64)
            .sum();
        caller.upload(bytes)?;
        let response = self.batch_update(request.into_inner()).await?;
        crate::metrics::metrics().bytes_written(bytes);
        Ok(Response::new(response))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        Caller::of(self.auth.as_ref(), &request)
            .instance("BatchReadBlobs", &request.get_ref().instance_name)?;
        let response = self.batch_read(request.into_inner()).await?;
        crate::metrics::metrics()
            .bytes_read(response.responses.iter().map(|r| r.data.len() as u64).sum());
        Ok(Response::new(response))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Caller::of(self.auth.as_ref(), &request)
            .instance("GetTree", &request.get_ref().instance_name)?;
        let pages = self.get_tree(request.into_inner()).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            pages.into_iter().map(Ok),
        ))))
    }
}
