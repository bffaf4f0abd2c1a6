//! The upload/download client for a REAPI content store: what agents, the CLI, tests and the
//! bench use to move blobs. Small blobs go in batches up to the server's advertised limit;
//! large ones through ByteStream, optionally zstd-compressed on the wire. Everything
//! downloaded is verified against its digest.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use tessera_net::client::{ClientAuth, Link};
use tessera_proto::bytestream::{ReadRequest, WriteResponse};
use tessera_proto::reapi::capabilities_client::CapabilitiesClient;
use tessera_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tessera_proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetCapabilitiesRequest, batch_update_blobs_request, compressor,
};
use tessera_proto::wire::{self, BodyMessages};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use crate::digest::{Digest, DigestError, DigestFunction, PartHash, PartHashing};
use crate::resource::{Compressor, ReadResource, WriteResource, format_read, format_write};
use crate::store::codec::{self, CodecError, StreamDecoder};

/// Bytes per ByteStream WriteRequest.
pub const WRITE_CHUNK: usize = 1024 * 1024;
/// Blobs at least this large are downloaded as ranged Reads, several at once.
pub const PARTS_MIN: u64 = 16 * 1024 * 1024;
/// Bytes per ranged Read of a download in parts.
pub const READ_PART: usize = 8 * 1024 * 1024;
/// ByteStream Writes in flight for one [`CasClient::upload`].
const WRITES_IN_FLIGHT: usize = 4;
/// Ranged Reads in flight for one download.
const PARTS_IN_FLIGHT: usize = 4;
/// Response header by which a Tessera server says that it served a ranged Read from that
/// part's bytes alone (it had hashed the blob before). Without it (another server, or a blob
/// the server must read whole to verify or to decompress), further parts would each cost the
/// server a pass over the whole blob, so the client fetches the rest in one Read instead.
pub const PART_ONLY_HEADER: &str = "tessera-read-part-only";
/// Digests per FindMissingBlobs call.
const FIND_MISSING_CHUNK: usize = 16_384;

/// Largest gRPC message the client sends or accepts.
const MESSAGE_LIMIT: usize = 64 * 1024 * 1024;
/// Most data in one WriteRequest: well inside [`MESSAGE_LIMIT`] with the other fields.
const WRITE_PIECE_MAX: usize = MESSAGE_LIMIT / 2;

/// The gRPC status for an HTTP response that is not a gRPC one (a proxy's error page), as
/// gRPC's HTTP-to-status table (and tonic) maps it.
fn http_status(status: http::StatusCode) -> tonic::Status {
    let code = match status.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    tonic::Status::new(
        code,
        format!("the server answered HTTP {status} instead of a gRPC response"),
    )
}

/// `data`, the blob `digest`, as an uncompressed BatchUpdateBlobs entry (also how Tessera's
/// agent protocol carries blobs inline).
pub fn blob_request(digest: &Digest, data: Bytes) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(digest.to_proto()),
        data,
        compressor: compressor::Value::Identity as i32,
    }
}

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The endpoint URL is malformed or the connection failed.
    #[error("failed to connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("{call} failed: {status}")]
    Rpc {
        /// The call.
        call: &'static str,
        /// The status.
        status: tonic::Status,
    },
    /// One blob of a batch failed.
    #[error("{call} of {digest} failed: {code:?} {message}")]
    Blob {
        /// The call.
        call: &'static str,
        /// The blob.
        digest: String,
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// Downloaded bytes do not match their digest.
    #[error("downloaded data does not match: {0}")]
    Mismatch(#[from] DigestError),
    /// Compressed bytes from the server did not decode.
    #[error("downloaded zstd data is invalid: {0}")]
    Codec(#[from] CodecError),
    /// The server answered something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    move |status| ClientError::Rpc { call, status }
}

/// A client for one instance of a REAPI content store.
#[derive(Debug, Clone)]
pub struct CasClient {
    cas: ContentAddressableStorageClient<Link>,
    /// ByteStream over the first link, then over each link added with
    /// [`CasClient::with_transfer_links`]: each transfer (a Write, a Read, a part of a Read
    /// in parts) takes the next in turn, so large transfers spread over connections.
    lanes: Arc<[Link]>,
    next_lane: Arc<AtomicUsize>,
    instance: String,
    function: DigestFunction,
    max_batch_bytes: u64,
}

impl CasClient {
    /// Connects to `endpoint` (`http://host:port`) and reads the server's batch limit.
    pub async fn connect(
        endpoint: &str,
        instance: &str,
        function: DigestFunction,
    ) -> Result<Self, ClientError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .tcp_nodelay(true)
            .max_frame_size(1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024)
            .initial_stream_window_size(16 * 1024 * 1024)
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        Self::from_channel(channel, instance, function).await
    }

    /// Uses an existing channel, sending no token.
    pub async fn from_channel(
        channel: Channel,
        instance: &str,
        function: DigestFunction,
    ) -> Result<Self, ClientError> {
        let link = tessera_net::client::link(channel, &ClientAuth::default());
        Self::from_link(link, instance, function).await
    }

    /// Uses an existing link (a channel that carries the caller's token).
    pub async fn from_link(
        channel: Link,
        instance: &str,
        function: DigestFunction,
    ) -> Result<Self, ClientError> {
        let caps = CapabilitiesClient::new(channel.clone())
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: instance.to_owned(),
            })
            .await
            .map_err(rpc("GetCapabilities"))?
            .into_inner();
        let advertised = caps
            .cache_capabilities
            .map_or(0, |c| c.max_batch_total_size_bytes);
        let max_batch_bytes = match u64::try_from(advertised) {
            Ok(0) | Err(_) => 4 * 1024 * 1024,
            Ok(n) => n,
        };
        Ok(CasClient {
            cas: ContentAddressableStorageClient::new(channel.clone())
                .max_decoding_message_size(MESSAGE_LIMIT)
                .max_encoding_message_size(MESSAGE_LIMIT),
            lanes: Arc::from([channel]),
            next_lane: Arc::new(AtomicUsize::new(0)),
            instance: instance.to_owned(),
            function,
            max_batch_bytes,
        })
    }

    /// Adds `links` (further connections to the same server) for ByteStream transfers: each
    /// transfer (a Write, a Read, a part of a Read in parts) takes the next link in turn,
    /// counted by calls, not bytes. One HTTP/2 connection's task does every socket copy of its
    /// streams on one core, so large transfers in flight at once go faster over several (a
    /// REAPI client may open several; Bazel's pool holds up to `--remote_max_connections`).
    /// Other calls stay on the first link.
    pub fn with_transfer_links(mut self, links: impl IntoIterator<Item = Link>) -> Self {
        let lanes: Vec<_> = self.lanes.iter().cloned().chain(links).collect();
        self.lanes = Arc::from(lanes);
        self
    }

    /// The link for the next transfer (see [`CasClient::with_transfer_links`]).
    fn lane(&self) -> Link {
        let lane = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[lane].clone()
    }

    /// Calls ByteStream `method` with `body` on the next lane, on the wire directly
    /// ([`tessera_proto::wire`]: no copy of the data into tonic's buffers either way); the
    /// response's headers and its messages as they come.
    async fn call_raw(
        &self,
        method: &'static str,
        body: tonic::body::Body,
    ) -> Result<(http::HeaderMap, BodyMessages), tonic::Status> {
        let mut link = self.lane();
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("/google.bytestream.ByteStream/{method}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(body)
            .map_err(|e| tonic::Status::internal(format!("building the request: {e}")))?;
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut link, cx))
            .await
            .map_err(|e| tonic::Status::from_error(e.into()))?;
        let response = tower_service::Service::call(&mut link, request)
            .await
            .map_err(|e| tonic::Status::from_error(e.into()))?;
        let (parts, body) = response.into_parts();
        let messages = BodyMessages::new(tonic::body::Body::new(body), MESSAGE_LIMIT);
        // A response of headers only carries its status there.
        if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
            if status.code() != tonic::Code::Ok {
                return Err(status);
            }
            return Ok((parts.headers.clone(), messages.ended_by(parts.headers)));
        }
        if parts.status != http::StatusCode::OK {
            return Err(http_status(parts.status));
        }
        Ok((parts.headers, messages))
    }

    /// One ByteStream Read of `resource` from `offset` (at most `limit` bytes, 0 for all),
    /// taken off the wire directly: each piece of data goes to `sink` as it arrived, uncopied.
    /// Tells `part_only` whether the server read only that part.
    async fn read_raw(
        &self,
        resource: String,
        offset: i64,
        limit: i64,
        part_only: Option<tokio::sync::oneshot::Sender<bool>>,
        mut sink: impl FnMut(&[u8]) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let request = wire::framed(&ReadRequest {
            resource_name: resource,
            read_offset: offset,
            read_limit: limit,
        });
        let body = tonic::body::Body::new(http_body_util::Full::new(request));
        let (headers, mut messages) = self
            .call_raw("Read", body)
            .await
            .map_err(rpc("ByteStream.Read"))?;
        if let Some(part_only) = part_only {
            let _ = part_only.send(headers.contains_key(PART_ONLY_HEADER));
        }
        while let Some(message) = messages
            .next_message()
            .await
            .map_err(rpc("ByteStream.Read"))?
        {
            let data = wire::decode_read_response(message).map_err(rpc("ByteStream.Read"))?;
            for piece in data.pieces() {
                sink(piece)?;
            }
        }
        messages.finish().await.map_err(rpc("ByteStream.Read"))
    }

    /// One ByteStream Write to `resource` of `size` bytes (on the wire) from `pieces`, a
    /// message each (a piece larger than a message may be, several), taken to the wire
    /// directly: each message's head, then the piece itself. The committed size the server
    /// answers.
    async fn write_raw(
        &self,
        resource: String,
        size: u64,
        pieces: impl futures::Stream<Item = Bytes> + Send + 'static,
    ) -> Result<i64, ClientError> {
        let mut resource = Some(resource);
        let mut offset = 0u64;
        let frames = pieces
            .flat_map(|mut data| {
                let mut parts = Vec::with_capacity(data.len().div_ceil(WRITE_PIECE_MAX).max(1));
                while data.len() > WRITE_PIECE_MAX {
                    parts.push(data.split_to(WRITE_PIECE_MAX));
                }
                parts.push(data);
                futures::stream::iter(parts)
            })
            .flat_map(move |data| {
                let write_offset = offset;
                offset += data.len() as u64;
                let head = wire::write_request_head(
                    &resource.take().unwrap_or_default(),
                    i64::try_from(write_offset).unwrap_or(i64::MAX),
                    offset == size,
                    data.len(),
                );
                futures::stream::iter(
                    std::iter::once(head).chain(Some(data).filter(|d| !d.is_empty())),
                )
            });
        let body = http_body_util::StreamBody::new(
            frames.map(|frame| Ok::<_, std::convert::Infallible>(http_body::Frame::data(frame))),
        );
        let (_, mut messages) = self
            .call_raw("Write", tonic::body::Body::new(body))
            .await
            .map_err(rpc("ByteStream.Write"))?;
        let Some(message) = messages
            .next_message()
            .await
            .map_err(rpc("ByteStream.Write"))?
        else {
            // A server that fails after sending its headers says why in the trailers.
            messages.finish().await.map_err(rpc("ByteStream.Write"))?;
            return Err(ClientError::Protocol(
                "ByteStream.Write answered OK without a response".into(),
            ));
        };
        let response = <WriteResponse as prost::Message>::decode(message)
            .map_err(|e| ClientError::Protocol(format!("malformed WriteResponse: {e}")))?;
        messages.finish().await.map_err(rpc("ByteStream.Write"))?;
        Ok(response.committed_size)
    }

    /// The digest function this client hashes with.
    pub fn function(&self) -> DigestFunction {
        self.function
    }

    /// Which of `digests` the server lacks.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, ClientError> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_MISSING_CHUNK) {
            let response = self
                .cas
                .clone()
                .find_missing_blobs(FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                    digest_function: self.function.to_proto(),
                })
                .await
                .map_err(rpc("FindMissingBlobs"))?
                .into_inner();
            for d in &response.missing_blob_digests {
                missing.push(Digest::from_proto(self.function, d)?);
            }
        }
        Ok(missing)
    }

    /// Uploads whatever of `blobs` the server lacks: small ones in batches, large ones through
    /// ByteStream (zstd on the wire if `compress`).
    pub async fn upload(
        &self,
        blobs: &[(Digest, Bytes)],
        compress: bool,
    ) -> Result<(), ClientError> {
        let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let missing: std::collections::HashSet<Digest> =
            self.find_missing(&digests).await?.into_iter().collect();
        let mut batch: Vec<(Digest, Bytes)> = Vec::new();
        let mut batch_bytes = 0u64;
        let headroom = self.max_batch_bytes.saturating_sub(64 * 1024).max(1);
        let mut large = Vec::new();
        for (digest, data) in blobs.iter().filter(|(d, _)| missing.contains(d)) {
            if digest.size_bytes > headroom / 2 {
                large.push((*digest, data.clone()));
                continue;
            }
            if batch_bytes + digest.size_bytes > headroom {
                self.batch_update(std::mem::take(&mut batch), compress)
                    .await?;
                batch_bytes = 0;
            }
            batch_bytes += digest.size_bytes;
            batch.push((*digest, data.clone()));
        }
        if !batch.is_empty() {
            self.batch_update(batch, compress).await?;
        }
        // Several at once: one stream alone moves far less than the connection can.
        futures::stream::iter(large)
            .map(|(digest, data)| async move { self.write(&digest, data, compress).await })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// One BatchUpdateBlobs call; every entry must succeed.
    pub async fn batch_update(
        &self,
        blobs: Vec<(Digest, Bytes)>,
        compress: bool,
    ) -> Result<(), ClientError> {
        let requests = blobs
            .iter()
            .map(|(digest, data)| {
                if compress {
                    batch_update_blobs_request::Request {
                        digest: Some(digest.to_proto()),
                        data: Bytes::from(codec::compress(data)),
                        compressor: compressor::Value::Zstd as i32,
                    }
                } else {
                    blob_request(digest, data.clone())
                }
            })
            .collect();
        let response = self
            .cas
            .clone()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: self.function.to_proto(),
            })
            .await
            .map_err(rpc("BatchUpdateBlobs"))?
            .into_inner();
        for entry in response.responses {
            let status = entry.status.unwrap_or_default();
            if status.code != 0 {
                return Err(ClientError::Blob {
                    call: "BatchUpdateBlobs",
                    digest: entry
                        .digest
                        .map(|d| format!("{}/{}", d.hash, d.size_bytes))
                        .unwrap_or_default(),
                    code: tonic::Code::from(status.code),
                    message: status.message,
                });
            }
        }
        Ok(())
    }

    /// Uploads one blob with ByteStream Write in [`WRITE_CHUNK`] pieces.
    pub async fn write(
        &self,
        digest: &Digest,
        data: Bytes,
        compress: bool,
    ) -> Result<i64, ClientError> {
        self.write_chunked(digest, data, compress, WRITE_CHUNK)
            .await
    }

    /// Uploads one blob with ByteStream Write in `chunk`-byte pieces (Bazel uses 16 KiB).
    pub async fn write_chunked(
        &self,
        digest: &Digest,
        data: Bytes,
        compress: bool,
        chunk: usize,
    ) -> Result<i64, ClientError> {
        let resource = format_write(&WriteResource {
            instance_name: self.instance.clone(),
            upload_id: uuid::Uuid::new_v4().to_string(),
            compressor: if compress {
                Compressor::Zstd
            } else {
                Compressor::Identity
            },
            digest: *digest,
        });
        let payload = if compress {
            Bytes::from(codec::compress(&data))
        } else {
            data
        };
        let chunk = chunk.max(1);
        let total = payload.len();
        // An empty blob is one message with finish_write and no data.
        let pieces: Vec<Bytes> = if total == 0 {
            vec![Bytes::new()]
        } else {
            (0..total)
                .step_by(chunk)
                .map(|start| payload.slice(start..(start + chunk).min(total)))
                .collect()
        };
        self.write_raw(resource, total as u64, futures::stream::iter(pieces))
            .await
    }

    /// Uploads one blob with ByteStream Write, uncompressed, from `pieces` as they come (a
    /// large file read a piece at a time, never whole in memory). The pieces must add up to the
    /// blob; if they end short, the server refuses the write.
    pub async fn write_stream(
        &self,
        digest: &Digest,
        pieces: impl futures::Stream<Item = Bytes> + Send + 'static,
    ) -> Result<i64, ClientError> {
        let resource = format_write(&WriteResource {
            instance_name: self.instance.clone(),
            upload_id: uuid::Uuid::new_v4().to_string(),
            compressor: Compressor::Identity,
            digest: *digest,
        });
        self.write_raw(resource, digest.size_bytes, pieces).await
    }

    /// Downloads one blob with ByteStream Read (zstd on the wire if `compressed`) and verifies
    /// it. Blobs of [`PARTS_MIN`] bytes or more, uncompressed, come in parts
    /// ([`CasClient::read_in_parts`]).
    pub async fn read(&self, digest: &Digest, compressed: bool) -> Result<Bytes, ClientError> {
        if !compressed && digest.size_bytes >= PARTS_MIN {
            return self.read_in_parts(digest, READ_PART).await;
        }
        self.read_whole(digest, compressed).await
    }

    /// Downloads one blob as ranged Reads of `part` bytes, `PARTS_IN_FLIGHT` (4) at once, each
    /// on its own task (so that both the decoding and the server's reads spread over cores),
    /// hashing the parts and verifying the whole: in order as they arrive, or, for BLAKE3 with
    /// power-of-two parts, each on its own as it arrives, the part hashes combined at the end
    /// ([`DigestFunction::parts`]). One stream tops out well below what the machine can move.
    ///
    /// If the server says it had to read the whole blob for the first part
    /// ([`PART_ONLY_HEADER`] missing), the blob is read in one Read instead. The server does
    /// not hash a part it serves from the part alone, so if the whole does not match, the blob is read again in one Read: the server verifies that one as it
    /// streams and removes the blob if it is corrupt at rest, so the next upload repairs it.
    pub async fn read_in_parts(&self, digest: &Digest, part: usize) -> Result<Bytes, ClientError> {
        match self.fetch_parts(digest, part.max(1)).await {
            Err(ClientError::Mismatch(error)) => {
                tracing::warn!(%digest, %error, "blob read in parts does not match; reading it whole");
                self.read_whole(digest, false).await
            }
            other => other,
        }
    }

    async fn fetch_parts(&self, digest: &Digest, part: usize) -> Result<Bytes, ClientError> {
        let size = usize::try_from(digest.size_bytes)
            .map_err(|_| ClientError::Protocol(format!("blob {digest} is too large to hold")))?;
        // One allocation for the whole blob, split into disjoint parts that each task fills;
        // joined again without copies.
        let mut rest = download_buffer(size);
        let mut offset = part.min(size);
        let first = split_front(&mut rest, offset);
        let (part_only_tx, part_only_rx) = tokio::sync::oneshot::channel();
        // BLAKE3: each part is hashed on its own as soon as it is in, on whichever core is
        // free; the hashes combine into the blob's at the end. Otherwise in order, here.
        let parts = digest.function.parts(size as u64, part as u64);
        let mut fetches =
            VecDeque::from([self.spawn_part(digest, 0, first, Some(part_only_tx), parts)]);
        if !part_only_rx.await.unwrap_or(false) {
            drop(fetches);
            return self.read_whole(digest, false).await;
        }
        let mut hasher = parts.is_none().then(|| digest.function.hasher());
        let mut part_hashes = Vec::new();
        let mut whole = BytesMut::new();
        loop {
            while fetches.len() < PARTS_IN_FLIGHT && offset < size {
                let buf = split_front(&mut rest, part.min(size - offset));
                let len = buf.capacity();
                fetches.push_back(self.spawn_part(digest, offset, buf, None, parts));
                offset += len;
            }
            let Some(fetch) = fetches.pop_front() else {
                break;
            };
            let (filled, part_hash) = fetch.await?;
            let filled = match part_hash {
                Some(part_hash) => {
                    part_hashes.push(part_hash);
                    filled
                }
                None => {
                    let mut in_order = hasher.take().expect("hasher is returned after each part");
                    let (updated, filled) = off_runtime(move || {
                        in_order.update(&filled);
                        (in_order, filled)
                    })
                    .await?;
                    hasher = Some(updated);
                    filled
                }
            };
            whole.unsplit(filled);
        }
        let actual = match parts {
            Some(parts) => parts.finish(&part_hashes).ok_or_else(|| {
                ClientError::Protocol(format!("blob {digest} came in the wrong number of parts"))
            })?,
            None => hasher
                .expect("hasher is returned after each part")
                .finish_digest(),
        };
        digest.verify_against(&actual)?;
        Ok(whole.freeze())
    }

    /// Starts fetching `buf.capacity()` bytes of `digest` from `offset` into `buf`; tells
    /// `part_only` whether the server read only that part. With `parts`, also hashes the part.
    fn spawn_part(
        &self,
        digest: &Digest,
        offset: usize,
        buf: BytesMut,
        part_only: Option<tokio::sync::oneshot::Sender<bool>>,
        parts: Option<PartHashing>,
    ) -> PartFetch {
        let client = self.clone();
        let digest = *digest;
        PartFetch(tokio::spawn(async move {
            let filled = client.fetch_part(&digest, offset, buf, part_only).await?;
            let Some(parts) = parts else {
                return Ok((filled, None));
            };
            let index = (offset as u64) / parts.part_len();
            off_runtime(move || {
                let hash = parts.hash_part(index, &filled);
                (filled, hash)
            })
            .await
            .and_then(|(filled, hash)| match hash {
                Some(hash) => Ok((filled, Some(hash))),
                None => Err(ClientError::Protocol(format!(
                    "part {index} of {digest} does not fit the blob"
                ))),
            })
        }))
    }

    async fn fetch_part(
        &self,
        digest: &Digest,
        offset: usize,
        mut buf: BytesMut,
        part_only: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> Result<BytesMut, ClientError> {
        let want = buf.capacity();
        self.read_raw(
            self.read_resource(digest, false),
            offset as i64,
            want as i64,
            part_only,
            |data| {
                if data.len() > want - buf.len() {
                    return Err(ClientError::Protocol(format!(
                        "Read of {digest} from {offset} sent more than the {want} bytes asked for"
                    )));
                }
                buf.extend_from_slice(data);
                Ok(())
            },
        )
        .await?;
        if buf.len() != want {
            return Err(ClientError::Protocol(format!(
                "Read of {digest} from {offset} ended after {} of {want} bytes",
                buf.len()
            )));
        }
        Ok(buf)
    }

    fn read_resource(&self, digest: &Digest, compressed: bool) -> String {
        format_read(&ReadResource {
            instance_name: self.instance.clone(),
            compressor: if compressed {
                Compressor::Zstd
            } else {
                Compressor::Identity
            },
            digest: *digest,
        })
    }

    /// Downloads one blob in one ByteStream Read (zstd on the wire if `compressed`), hashing
    /// as the bytes arrive so that verification overlaps the transfer.
    pub async fn read_whole(
        &self,
        digest: &Digest,
        compressed: bool,
    ) -> Result<Bytes, ClientError> {
        let mut out = download_buffer(usize::try_from(digest.size_bytes).unwrap_or(0));
        let mut decoder = if compressed {
            Some(StreamDecoder::new(digest.size_bytes)?)
        } else {
            None
        };
        let mut hasher = digest.function.hasher();
        self.read_raw(self.read_resource(digest, compressed), 0, 0, None, |data| {
            match &mut decoder {
                Some(decoder) => decoder.feed::<CodecError>(data, |piece| {
                    hasher.update(piece);
                    out.extend_from_slice(piece);
                    Ok(())
                })?,
                None => {
                    hasher.update(data);
                    out.extend_from_slice(data);
                }
            }
            Ok(())
        })
        .await?;
        if let Some(decoder) = &decoder {
            decoder.finish()?;
        }
        digest.verify_against(&hasher.finish_digest())?;
        Ok(out.freeze())
    }

    /// Downloads blobs with BatchReadBlobs (accepting zstd if `compressed`), verifying each.
    pub async fn batch_read(
        &self,
        digests: &[Digest],
        compressed: bool,
    ) -> Result<HashMap<Digest, Bytes>, ClientError> {
        let response = self
            .cas
            .clone()
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: digests.iter().map(Digest::to_proto).collect(),
                acceptable_compressors: if compressed {
                    vec![compressor::Value::Zstd as i32]
                } else {
                    Vec::new()
                },
                digest_function: self.function.to_proto(),
            })
            .await
            .map_err(rpc("BatchReadBlobs"))?
            .into_inner();
        let mut out = HashMap::new();
        for entry in response.responses {
            let proto = entry.digest.ok_or_else(|| {
                ClientError::Protocol("BatchReadBlobs entry without digest".into())
            })?;
            let digest = Digest::from_proto(self.function, &proto)?;
            let status = entry.status.unwrap_or_default();
            if status.code != 0 {
                return Err(ClientError::Blob {
                    call: "BatchReadBlobs",
                    digest: digest.to_string(),
                    code: tonic::Code::from(status.code),
                    message: status.message,
                });
            }
            let data = if entry.compressor == compressor::Value::Zstd as i32 {
                Bytes::from(codec::decompress(&entry.data, digest.size_bytes)?)
            } else {
                entry.data
            };
            digest.verify(&data)?;
            out.insert(digest, data);
        }
        Ok(out)
    }
}

/// Runs `hash` on a blocking thread: hashing a part takes milliseconds, too long for the
/// runtime's threads.
async fn off_runtime<T: Send + 'static>(
    hash: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(hash)
        .await
        .map_err(|e| ClientError::Protocol(format!("hashing task failed: {e}")))
}

/// Blobs larger than this are received into memory backed by huge pages where the system
/// allows it. glibc maps allocations this large on their own (its largest mmap threshold, and
/// the one [`crate::alloc::keep_freed_memory`] fixes), so the advice reaches memory that
/// outlives the buffer only if an arena happens to hold a larger free block (its arenas keep
/// at most that much free at their top); such memory is then merely eligible for huge pages.
const HUGE_BUFFER_MIN: usize = 32 * 1024 * 1024;
const HUGE_PAGE: usize = 2 * 1024 * 1024;

/// An empty buffer with room for a `size`-byte download. A large one asks the kernel for
/// transparent huge pages: filling 256 MiB of fresh memory otherwise takes 65,536 page faults,
/// a fifth of a download's CPU on the client.
pub fn download_buffer(size: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(size);
    if size > HUGE_BUFFER_MIN {
        advise_huge_pages(buf.spare_capacity_mut());
    }
    buf
}

#[expect(
    unsafe_code,
    reason = "madvise(MADV_HUGEPAGE) on memory this process owns and has not yet written; the \
              advice changes how it is backed, never its contents, and lasts as long as the \
              mapping, which is this buffer's own"
)]
fn advise_huge_pages(memory: &mut [std::mem::MaybeUninit<u8>]) {
    let start = memory.as_mut_ptr().addr();
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let end = (start + memory.len()) / HUGE_PAGE * HUGE_PAGE;
    if end <= aligned {
        return;
    }
    let Some(addr) = std::ptr::NonNull::new(
        memory
            .as_mut_ptr()
            .wrapping_byte_add(aligned - start)
            .cast::<std::ffi::c_void>(),
    ) else {
        return;
    };
    // SAFETY: [aligned, end) lies inside `memory`, which the caller holds exclusively;
    // MADV_HUGEPAGE only tells the kernel how to back the pages, and failing is harmless
    // (ordinary pages are used).
    let _ = unsafe {
        nix::sys::mman::madvise(
            addr,
            end - aligned,
            nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
        )
    };
}

/// The first `len` bytes of `buf`'s free capacity, split off as a buffer of their own.
fn split_front(buf: &mut BytesMut, len: usize) -> BytesMut {
    let rest = buf.split_off(len);
    std::mem::replace(buf, rest)
}

/// A part being fetched on its own task; dropping it (a download that failed or was given up)
/// stops the fetch.
struct PartFetch(tokio::task::JoinHandle<Result<FetchedPart, ClientError>>);

/// A part's bytes, and their hash when the blob is hashed in parts.
type FetchedPart = (BytesMut, Option<PartHash>);

impl Future for PartFetch {
    type Output = Result<FetchedPart, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| Err(ClientError::Protocol(format!("part fetch failed: {e}"))))
        })
    }
}

impl Drop for PartFetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl CasClient {
    /// The top of the tree under `root`: up to `max` of its Directory messages, breadth first
    /// from `root` itself, in one GetTree call (one page), each with the digest of its
    /// encoding; one round trip instead of one per level. A message re-encoded differently
    /// than its uploader encoded it gets a digest no parent names, so a caller following
    /// digests from `root` never uses it (and fetches that directory by its digest instead):
    /// nothing is taken on trust. Directories past `max` are left to the caller too, so a
    /// large tree whose lower levels the caller already has costs the server `max`
    /// directories, not the whole tree.
    pub async fn get_tree(
        &self,
        root: &Digest,
        max: usize,
    ) -> Result<Vec<(Digest, Bytes)>, ClientError> {
        use prost::Message as _;
        use tessera_proto::reapi::GetTreeRequest;
        let mut pages = self
            .cas
            .clone()
            .get_tree(GetTreeRequest {
                instance_name: self.instance.clone(),
                root_digest: Some(root.to_proto()),
                page_size: i32::try_from(max.max(1)).unwrap_or(i32::MAX),
                page_token: String::new(),
                digest_function: self.function.to_proto(),
            })
            .await
            .map_err(rpc("GetTree"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(page) = pages.message().await.map_err(rpc("GetTree"))? {
            for directory in page.directories.into_iter().take(max - out.len().min(max)) {
                let bytes = Bytes::from(directory.encode_to_vec());
                out.push((self.function.digest_of(&bytes), bytes));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every call with headers, then trailers carrying UNAVAILABLE: how a server (or a
    /// proxy) fails once its headers are out.
    #[derive(Clone)]
    struct FailsAfterHeaders;

    impl tonic::server::NamedService for FailsAfterHeaders {
        const NAME: &'static str = "google.bytestream.ByteStream";
    }

    impl tower_service::Service<http::Request<tonic::body::Body>> for FailsAfterHeaders {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<tonic::body::Body>) -> Self::Future {
            let mut trailers = http::HeaderMap::new();
            tonic::Status::unavailable("draining")
                .add_header(&mut trailers)
                .unwrap();
            let body = http_body_util::StreamBody::new(futures::stream::iter([Ok::<
                _,
                std::convert::Infallible,
            >(
                http_body::Frame::trailers(trailers),
            )]));
            let mut response = http::Response::new(tonic::body::Body::new(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn a_status_sent_in_trailers_after_the_headers_reaches_the_caller() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FailsAfterHeaders)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let link = tessera_net::client::link(channel, &ClientAuth::default());
        let client = CasClient {
            cas: ContentAddressableStorageClient::new(link.clone()),
            lanes: Arc::from([link]),
            next_lane: Arc::default(),
            instance: String::new(),
            function: DigestFunction::Sha256,
            max_batch_bytes: 1 << 20,
        };
        let data = Bytes::from_static(b"a blob");
        let digest = DigestFunction::Sha256.digest_of(&data);
        let outcomes = [
            (
                "Write",
                client.write(&digest, data.clone(), false).await.map(drop),
            ),
            ("Read", client.read_whole(&digest, false).await.map(drop)),
        ];
        for (call, outcome) in outcomes {
            match outcome {
                Err(ClientError::Rpc { status, .. }) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{call}");
                    assert_eq!(status.message(), "draining", "{call}");
                }
                other => panic!("{call}: expected the trailers' UNAVAILABLE, got {other:?}"),
            }
        }
    }
}
