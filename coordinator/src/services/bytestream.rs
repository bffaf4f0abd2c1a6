//! `google.bytestream.ByteStream` for the CAS: Read (with offset and limit), Write (resumable,
//! deduplicated) and QueryWriteStatus, for `blobs/` and `compressed-blobs/zstd/` resources.
//!
//! An upload whose stream breaks is parked under its resource name, so the client can ask
//! QueryWriteStatus and resume from the committed offset; parked uploads expire after
//! [`PARK_TTL`]. So is one that receives nothing for the idle timeout
//! ([`ByteStreamService::with_idle_timeout`]), ended with DEADLINE_EXCEEDED: a client that
//! froze or was cut off mid-upload holds neither the upload nor its writer thread for longer.
//! (A client that keeps sending, however slowly, is not cut off. The timeout must exceed the
//! longest the store may stall: while it does not read, HTTP/2 flow control stops every
//! upload on that connection.)
//!
//! If the blob appears while an upload is running (another client finished it), the upload
//! ends at once with the full size, as REAPI specifies. Reads verify the whole blob as they
//! stream it and end in DATA_LOSS if it does not match its digest; a read of part of a blob
//! (an offset or a limit) that the store has already hashed in this process is served from
//! the bytes of that part alone ([`BlobStore::open_range`]), so a client may fetch a large
//! blob as parallel ranges, verifying the whole itself.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use http_body::Frame;
use tessera_cas::digest::Digest;
use tessera_cas::resource::{self, Compressor, ResourceError};
use tessera_cas::store::codec::{CodecError, StreamDecoder, StreamEncoder};
use tessera_cas::store::{BlobReader, BlobStore, StoreError, Upload};
use tessera_proto::bytestream::byte_stream_server::{self, ByteStreamServer};
use tessera_proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use tessera_proto::wire::{self, BodyMessages, Rope, WriteChunk};
use thiserror::Error;
use tokio::sync::oneshot;
use tonic::codegen::Service;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, Caller};
use crate::status::store_error;

/// How long a broken upload waits to be resumed.
pub const PARK_TTL: Duration = Duration::from_secs(600);
/// Most broken uploads kept at once; the oldest go first.
const MAX_PARKED: usize = 1024;
/// Uploads at least this large are hashed and written while the next messages arrive
/// ([`Feeding`]).
const PIPELINE_MIN: u64 = 4 * 1024 * 1024;
/// Messages queued for a pipelined upload's writer.
const PIPELINE_QUEUE: usize = 4;
/// How long a Write may receive nothing before it is ended and parked, unless the server
/// says otherwise ([`ByteStreamService::with_idle_timeout`]).
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `data` in one ReadResponse.
const MAX_READ_MESSAGE: usize = 1024 * 1024;

#[derive(Debug, Error)]
enum ByteStreamError {
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("write stream is empty")]
    EmptyWrite,
    #[error("no message for this Write in {0:?}: send it again")]
    Silent(Duration),
    #[error(
        "no data for {resource} in {after:?}: the upload was set aside; resume it from offset \
         {committed} (QueryWriteStatus) or send it again"
    )]
    Idle {
        resource: String,
        committed: u64,
        after: Duration,
    },
    #[error("write for {expected} continued with a different resource name \"{found}\"")]
    ResourceChanged { expected: String, found: String },
    #[error(
        "write_offset {got} does not match the {expected} bytes committed for {resource}; ask QueryWriteStatus and resume from there"
    )]
    WrongOffset {
        resource: String,
        expected: u64,
        got: i64,
    },
    #[error("write stream for {0} ended without finish_write; resume with QueryWriteStatus")]
    Unfinished(String),
    #[error("read_offset {offset} is out of range for blob of {size} bytes")]
    OffsetOutOfRange { offset: i64, size: u64 },
    #[error("read_limit {0} is negative")]
    NegativeLimit(i64),
    #[error("read_limit must be 0 for compressed-blobs resources, got {0}")]
    CompressedLimit(i64),
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("compressed upload: {0}")]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
    /// The request stream itself failed (too large a message, a broken connection): its own
    /// status is passed on.
    #[error("{}", .0.message())]
    Stream(Status),
    /// The caller may not write here, or is over its upload rate: that status is passed on.
    #[error("{}", .0.message())]
    Denied(Status),
}

impl From<ByteStreamError> for Status {
    fn from(error: ByteStreamError) -> Status {
        match &error {
            ByteStreamError::Resource(_)
            | ByteStreamError::EmptyWrite
            | ByteStreamError::ResourceChanged { .. }
            | ByteStreamError::WrongOffset { .. }
            | ByteStreamError::Unfinished(_)
            | ByteStreamError::NegativeLimit(_)
            | ByteStreamError::CompressedLimit(_)
            | ByteStreamError::Codec(_) => Status::invalid_argument(error.to_string()),
            ByteStreamError::OffsetOutOfRange { .. } => Status::out_of_range(error.to_string()),
            ByteStreamError::NotFound(_) => Status::not_found(error.to_string()),
            ByteStreamError::Idle { .. } | ByteStreamError::Silent(_) => {
                Status::deadline_exceeded(error.to_string())
            }
            ByteStreamError::Store(inner) => store_error(inner),
            ByteStreamError::Internal(_) => Status::internal(error.to_string()),
            ByteStreamError::Stream(status) | ByteStreamError::Denied(status) => status.clone(),
        }
    }
}

/// An upload in progress: the store's upload plus, for compressed resources, the decoder.
struct UploadState {
    upload: Box<dyn Upload>,
    decoder: Option<StreamDecoder>,
    /// Bytes accepted on the wire (compressed bytes for compressed resources).
    committed: u64,
}

struct Parked {
    state: UploadState,
    since: Instant,
}

/// The ByteStream service.
#[derive(Clone)]
pub struct ByteStreamService {
    store: Arc<dyn BlobStore>,
    parked: Arc<Mutex<HashMap<String, Parked>>>,
    auth: Option<Auth>,
    idle_timeout: Duration,
    park_ttl: Duration,
}

impl ByteStreamService {
    /// Serves blobs of `store`.
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        ByteStreamService {
            store,
            parked: Arc::default(),
            auth: None,
            idle_timeout: UPLOAD_IDLE_TIMEOUT,
            park_ttl: PARK_TTL,
        }
    }

    /// Ends a Write that receives nothing for `idle` (DEADLINE_EXCEEDED) and parks it, so that
    /// a client that froze or vanished mid-upload holds neither the upload nor, for a large
    /// one, its writer thread until the connection closes.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Checks each caller's instance scope and upload rate against `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The parked uploads, those parked longer than [`PARK_TTL`] dropped first (with their
    /// temporary files), whenever any upload starts, parks or is asked about: not only when
    /// another one parks.
    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Parked>> {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if !parked.is_empty() {
            parked.retain(|_, p| p.since.elapsed() < self.park_ttl);
        }
        parked
    }

    fn park(&self, key: String, state: UploadState) {
        let mut parked = self.parked();
        if parked.len() >= MAX_PARKED
            && let Some(oldest) = parked
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| k.clone())
        {
            parked.remove(&oldest);
        }
        parked.insert(
            key,
            Parked {
                state,
                since: Instant::now(),
            },
        );
    }

    /// Starts streaming what `req` asks for; also whether only that part of the blob is read
    /// ([`tessera_cas::client::PART_ONLY_HEADER`]).
    fn start_read(&self, req: &ReadRequest) -> Result<(ReadStream, bool), ByteStreamError> {
        let resource = resource::parse_read(&req.resource_name)?;
        let digest = resource.digest;
        if req.read_offset < 0 || req.read_offset as u64 > digest.size_bytes {
            return Err(ByteStreamError::OffsetOutOfRange {
                offset: req.read_offset,
                size: digest.size_bytes,
            });
        }
        if req.read_limit < 0 {
            return Err(ByteStreamError::NegativeLimit(req.read_limit));
        }
        let compressed = resource.compressor == Compressor::Zstd;
        if compressed && req.read_limit != 0 {
            return Err(ByteStreamError::CompressedLimit(req.read_limit));
        }
        let offset = req.read_offset as u64;
        let limit = u64::try_from(req.read_limit)
            .ok()
            .filter(|&limit| limit > 0);
        let Some(reader) = self.store.open_range(&digest, offset, limit)? else {
            return Err(ByteStreamError::NotFound(digest));
        };
        let part_only = reader.reads_part_only();
        let in_memory = !compressed && reader.in_memory();
        let encoder = if compressed {
            Some(StreamEncoder::new().map_err(|e| ByteStreamError::Internal(e.to_string()))?)
        } else {
            None
        };
        let mut pump = ReadPump {
            reader,
            encoder,
            remaining: if req.read_limit == 0 {
                u64::MAX
            } else {
                req.read_limit as u64
            },
            done: false,
        };
        let stream = if in_memory {
            // An inline or hot blob, verified when opened: no blocking thread.
            let responses: Vec<_> = std::iter::from_fn(|| pump.step()).flatten().collect();
            Box::pin(futures::stream::iter(responses))
        } else {
            pump.into_stream()
        };
        Ok((counted(stream), part_only))
    }

    async fn write(
        &self,
        caller: Caller,
        mut stream: impl WriteMessages,
    ) -> Result<WriteResponse, ByteStreamError> {
        let idle = self.idle_timeout;
        let first = match stream.next_chunk_within(idle).await {
            Some(Ok(Some(first))) => first,
            Some(Ok(None)) => return Err(ByteStreamError::EmptyWrite),
            Some(Err(status)) => return Err(ByteStreamError::Stream(status)),
            None => return Err(ByteStreamError::Silent(idle)),
        };
        let resource = resource::parse_write(&first.resource_name)?;
        caller
            .instance("ByteStream.Write", &resource.instance_name)
            .and_then(|()| caller.upload(resource.digest.size_bytes))
            .map_err(ByteStreamError::Denied)?;
        let digest = resource.digest;
        let compressed = resource.compressor == Compressor::Zstd;
        let key = resource::format_write(&resource);
        // REAPI: when the blob already exists, answer -1 for compressed uploads and the full
        // size for plain ones.
        let already_there = WriteResponse {
            committed_size: if compressed { -1 } else { digest.size_i64() },
        };
        if self.store.contains(&digest) {
            return Ok(already_there);
        }
        let parked = self.parked().remove(&key);
        let state = match (first.write_offset, parked) {
            (0, _) => UploadState {
                upload: self.store.begin_upload(&digest)?,
                decoder: if compressed {
                    Some(StreamDecoder::new(digest.size_bytes)?)
                } else {
                    None
                },
                committed: 0,
            },
            (offset, Some(p)) if offset >= 0 && offset as u64 == p.state.committed => p.state,
            (offset, parked) => {
                let expected = parked.as_ref().map_or(0, |p| p.state.committed);
                if let Some(p) = parked {
                    self.park(key.clone(), p.state);
                }
                return Err(ByteStreamError::WrongOffset {
                    resource: key,
                    expected,
                    got: offset,
                });
            }
        };
        let mut feeding = Feeding::start(state, digest.size_bytes, {
            let service = self.clone();
            let key = key.clone();
            move |state| service.park(key, state)
        });
        let mut message = first;
        loop {
            if !message.resource_name.is_empty() && !same_resource(&key, &message.resource_name) {
                feeding.discard().await;
                return Err(ByteStreamError::ResourceChanged {
                    expected: key,
                    found: message.resource_name,
                });
            }
            if message.write_offset < 0 || message.write_offset as u64 != feeding.committed() {
                let got = message.write_offset;
                let expected = feeding.committed();
                self.park(key.clone(), feeding.stop().await?);
                return Err(ByteStreamError::WrongOffset {
                    resource: key,
                    expected,
                    got,
                });
            }
            feeding.feed(message.data).await?;
            if message.finish_write {
                let UploadState {
                    upload,
                    decoder,
                    committed,
                } = feeding.stop().await?;
                if let Some(decoder) = &decoder {
                    decoder.finish()?;
                }
                if upload.commits_quickly() {
                    // A small blob: the hop to a blocking thread would cost more than this.
                    upload.commit()?;
                } else {
                    tokio::task::spawn_blocking(move || upload.commit())
                        .await
                        .map_err(|e| ByteStreamError::Internal(e.to_string()))??;
                }
                return Ok(WriteResponse {
                    committed_size: if compressed {
                        committed as i64
                    } else {
                        digest.size_i64()
                    },
                });
            }
            // Another writer finished the same blob: stop early, as REAPI allows.
            if self.store.contains(&digest) {
                feeding.discard().await;
                return Ok(already_there);
            }
            message = match stream.next_chunk_within(idle).await {
                Some(Ok(Some(next))) => next,
                Some(Ok(None)) => {
                    self.park(key.clone(), feeding.stop().await?);
                    return Err(ByteStreamError::Unfinished(key));
                }
                Some(Err(status)) => {
                    tracing::debug!(resource = %key, %status, "upload stream broke; parked for resumption");
                    self.park(key, feeding.stop().await?);
                    return Err(ByteStreamError::Stream(status));
                }
                None => {
                    let committed = feeding.committed();
                    self.park(key.clone(), feeding.stop().await?);
                    // Once parked: a QueryWriteStatus after this line sees the offset.
                    tracing::info!(resource = %key, committed, ?idle, "upload received nothing; parked for resumption");
                    return Err(ByteStreamError::Idle {
                        resource: key,
                        committed,
                        after: idle,
                    });
                }
            };
        }
    }

    fn query_write_status(
        &self,
        req: &QueryWriteStatusRequest,
    ) -> Result<QueryWriteStatusResponse, ByteStreamError> {
        let resource = resource::parse_write(&req.resource_name)?;
        if self.store.contains(&resource.digest) {
            return Ok(QueryWriteStatusResponse {
                committed_size: resource.digest.size_i64(),
                complete: true,
            });
        }
        let key = resource::format_write(&resource);
        let committed = self.parked().get(&key).map_or(0, |p| p.state.committed);
        Ok(QueryWriteStatusResponse {
            committed_size: committed as i64,
            complete: false,
        })
    }
}

/// `chunk` cut to the `remaining` bytes a read may still hand out, which it counts down.
fn cut_to(mut chunk: Bytes, remaining: &mut u64) -> Bytes {
    if chunk.len() as u64 > *remaining {
        chunk.truncate(*remaining as usize);
    }
    *remaining -= chunk.len() as u64;
    chunk
}

/// One Read's chunks of a blob (decompressed, or compressed for the wire), cut to its limit,
/// as messages. From disk it runs a chunk per trip to the blocking pool
/// ([`ReadPump::into_stream`]): each trip ends by itself, so a client that stops reading holds
/// no thread, only the chunk read ahead; before, a reader thread per Read waited for the
/// client to make room.
struct ReadPump {
    reader: BlobReader,
    encoder: Option<StreamEncoder>,
    /// Bytes still to hand out (`u64::MAX`: no limit).
    remaining: u64,
    done: bool,
}

/// The messages of one [`ReadPump::step`]; `None` once the read is over.
type Pumped = Option<Vec<Result<ReadResponse, Status>>>;

impl ReadPump {
    /// The messages of the next chunk that yields any; `None` once the read is over. A reader
    /// that hashes the whole blob reads on past the limit to verify it.
    fn step(&mut self) -> Pumped {
        while !self.done {
            let out = match self.reader.next_chunk() {
                Ok(Some(chunk)) => {
                    if self.remaining == 0 {
                        continue;
                    }
                    let chunk = cut_to(chunk, &mut self.remaining);
                    match &mut self.encoder {
                        Some(encoder) => match encoder.feed(&chunk) {
                            Ok(compressed) => Bytes::from(compressed),
                            Err(e) => return self.fail(Status::internal(e.to_string())),
                        },
                        None => chunk,
                    }
                }
                Ok(None) => {
                    self.done = true;
                    match self.encoder.as_mut().map(StreamEncoder::finish) {
                        None => Bytes::new(),
                        Some(Ok(tail)) => Bytes::from(tail),
                        Some(Err(e)) => return self.fail(Status::internal(e.to_string())),
                    }
                }
                Err(error) => return self.fail(store_error(&error)),
            };
            let messages: Vec<_> = read_messages(out).map(Ok).collect();
            if !messages.is_empty() {
                return Some(messages);
            }
        }
        None
    }

    fn fail(&mut self, status: Status) -> Pumped {
        self.done = true;
        Some(vec![Err(status)])
    }

    /// The Read's messages: each chunk is read on the blocking pool while the one before it
    /// goes out.
    fn into_stream(self) -> ReadStream {
        fn ahead(mut pump: ReadPump) -> tokio::task::JoinHandle<(ReadPump, Pumped)> {
            tokio::task::spawn_blocking(move || {
                let messages = pump.step();
                (pump, messages)
            })
        }
        let stream = futures::stream::unfold(Some(ahead(self)), |pending| async move {
            let (pump, messages) = match pending?.await {
                Ok(stepped) => stepped,
                Err(e) => {
                    let failed = vec![Err(Status::internal(format!("blob read failed: {e}")))];
                    return Some((futures::stream::iter(failed), None));
                }
            };
            let messages = messages?;
            let next = (!pump.done).then(|| ahead(pump));
            Some((futures::stream::iter(messages), next))
        });
        Box::pin(futures::StreamExt::flatten(stream))
    }
}

/// `data` as Read responses of at most [`MAX_READ_MESSAGE`] bytes each.
fn read_messages(mut data: Bytes) -> impl Iterator<Item = ReadResponse> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let piece = data.split_to(data.len().min(MAX_READ_MESSAGE));
        Some(ReadResponse { data: piece })
    })
}

/// `stream`, each response's bytes counted as read when it is handed out (not when read
/// ahead for a client that may leave).
fn counted(stream: ReadStream) -> ReadStream {
    Box::pin(futures::StreamExt::inspect(stream, |response| {
        if let Ok(response) = response {
            crate::metrics::metrics().bytes_read(response.data.len() as u64);
        }
    }))
}

/// Later messages may repeat the resource name, possibly with other trailing metadata; they
/// must name the same upload.
fn same_resource(key: &str, name: &str) -> bool {
    resource::parse_write(name).is_ok_and(|parsed| resource::format_write(&parsed) == key)
}

/// How an upload's bytes reach the store. A large upload is hashed and written on a blocking
/// thread while the next messages arrive (the store's calls block, and this way receiving,
/// hashing and writing overlap on different cores); a small one inline, where the hand-off
/// would cost more than it saves.
///
/// The server drops a call's handler when its client resets the stream, possibly while the
/// writer still holds the upload; the writer then parks the upload itself, so a broken upload
/// can be resumed however it broke.
enum Feeding {
    Inline(UploadState),
    Pipelined {
        queue: tokio::sync::mpsc::Sender<Rope>,
        /// The state back once the queue is closed and drained, or at the first error.
        done: Option<oneshot::Receiver<Written>>,
        /// Wire bytes queued so far, the offset the next message must start at.
        committed: u64,
    },
}

/// What a pipelined upload's writer ends with.
type Written = (UploadState, Result<(), ByteStreamError>);

impl Feeding {
    /// Feeds `state`, an upload of `size` bytes; `park` keeps a large upload whose handler is
    /// gone.
    fn start(
        state: UploadState,
        size: u64,
        park: impl FnOnce(UploadState) + Send + 'static,
    ) -> Feeding {
        if size < PIPELINE_MIN {
            return Feeding::Inline(state);
        }
        let committed = state.committed;
        let (queue, mut received) = tokio::sync::mpsc::channel::<Rope>(PIPELINE_QUEUE);
        let (done, finished) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut state = state;
            let mut fed = Ok(());
            while let Some(data) = received.blocking_recv() {
                fed = feed(&mut state, &data);
                if fed.is_err() {
                    break;
                }
            }
            if let Err((state, Ok(()))) = done.send((state, fed)) {
                park(state);
            }
        });
        Feeding::Pipelined {
            queue,
            done: Some(finished),
            committed,
        }
    }

    fn committed(&self) -> u64 {
        match self {
            Feeding::Inline(state) => state.committed,
            Feeding::Pipelined { committed, .. } => *committed,
        }
    }

    async fn feed(&mut self, data: Rope) -> Result<(), ByteStreamError> {
        match self {
            Feeding::Inline(state) => feed(state, &data),
            Feeding::Pipelined {
                queue,
                done,
                committed,
            } => {
                let len = data.len() as u64;
                if queue.send(data).await.is_ok() {
                    *committed += len;
                    return Ok(());
                }
                // The writer stopped at an error: report it.
                Err(written(done.take()).await.err().unwrap_or_else(writer_gone))
            }
        }
    }

    /// Drops the upload (not parked).
    async fn discard(self) {
        let _ = self.stop().await;
    }

    /// Waits until everything fed is in the upload; gives the upload back.
    async fn stop(self) -> Result<UploadState, ByteStreamError> {
        match self {
            Feeding::Inline(state) => Ok(state),
            Feeding::Pipelined { queue, done, .. } => {
                drop(queue);
                written(done).await
            }
        }
    }
}

/// The state a pipelined upload's writer gave back, or its error.
async fn written(done: Option<oneshot::Receiver<Written>>) -> Result<UploadState, ByteStreamError> {
    let (state, fed) = done
        .ok_or_else(writer_gone)?
        .await
        .map_err(|_| writer_gone())?;
    fed.map(|()| state)
}

fn writer_gone() -> ByteStreamError {
    ByteStreamError::Internal("upload writer stopped".into())
}

/// Feeds one message's data, piece by piece as it arrived.
fn feed(state: &mut UploadState, data: &Rope) -> Result<(), ByteStreamError> {
    for piece in data.pieces() {
        match &mut state.decoder {
            Some(decoder) => {
                let upload = &mut state.upload;
                decoder.feed::<ByteStreamError>(piece, |piece| {
                    upload.write(piece).map_err(Into::into)
                })?;
            }
            None => state.upload.write(piece)?,
        }
        state.committed += piece.len() as u64;
    }
    crate::metrics::metrics().bytes_written(data.len() as u64);
    Ok(())
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl byte_stream_server::ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.may_read(request.extensions(), request.get_ref())?;
        let (stream, part_only) = self.start_read(request.get_ref())?;
        let mut response = Response::new(stream);
        if part_only {
            response.metadata_mut().insert(
                tessera_cas::client::PART_ONLY_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(response)
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let caller = Caller::of(self.auth.as_ref(), &request);
        Ok(Response::new(
            self.write(caller, request.into_inner()).await?,
        ))
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        Ok(Response::new(self.query_write_status(request.get_ref())?))
    }
}

/// Where an upload's messages come from: tonic's decoder, or the request body read directly
/// ([`ByteStreamRoutes`]).
trait WriteMessages: Send {
    /// The next message, `None` at the end of the stream. Cancel-safe: bytes of a message
    /// received before the future is dropped stay for the next call.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<WriteChunk>, Status>> + Send;

    /// Bytes received so far, whole messages or not, where the source counts them (0 where
    /// it does not: only whole messages then show that the client is still sending).
    fn received(&self) -> u64 {
        0
    }

    /// [`WriteMessages::next_chunk`], unless nothing at all arrives for `idle` (`None`); a
    /// large message still coming in keeps the wait going.
    fn next_chunk_within(
        &mut self,
        idle: Duration,
    ) -> impl Future<Output = Option<Result<Option<WriteChunk>, Status>>> + Send {
        async move {
            loop {
                let before = self.received();
                match tokio::time::timeout(idle, self.next_chunk()).await {
                    Ok(next) => return Some(next),
                    Err(_) if self.received() != before => {}
                    Err(_) => return None,
                }
            }
        }
    }
}

impl WriteMessages for Streaming<WriteRequest> {
    async fn next_chunk(&mut self) -> Result<Option<WriteChunk>, Status> {
        Ok(self.message().await?.map(WriteChunk::from))
    }
}

impl WriteMessages for BodyMessages {
    async fn next_chunk(&mut self) -> Result<Option<WriteChunk>, Status> {
        self.next_message()
            .await?
            .map(wire::decode_write)
            .transpose()
    }

    fn received(&self) -> u64 {
        BodyMessages::received(self)
    }
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

/// ByteStream as the server mounts it: Write and Read read and write their messages on the
/// wire directly ([`tessera_proto::wire`]), so a blob's bytes go from the socket's frames to
/// the store, and from the store to the socket, without tonic's two copies;
/// QueryWriteStatus goes through tonic. Authorization, metrics and tracing are the server's
/// layers around this, as for every other service.
#[derive(Clone)]
pub struct ByteStreamRoutes {
    service: ByteStreamService,
    grpc: ByteStreamServer<ByteStreamService>,
    message_limit: usize,
}

impl ByteStreamRoutes {
    /// Serves `service`, taking and sending messages of at most `message_limit` bytes.
    pub fn new(service: ByteStreamService, message_limit: usize) -> Self {
        ByteStreamRoutes {
            grpc: ByteStreamServer::new(service.clone())
                .max_decoding_message_size(message_limit)
                .max_encoding_message_size(message_limit),
            service,
            message_limit,
        }
    }
}

impl tonic::server::NamedService for ByteStreamRoutes {
    const NAME: &'static str = "google.bytestream.ByteStream";
}

impl Service<HttpRequest> for ByteStreamRoutes {
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let service = self.service.clone();
        let limit = self.message_limit;
        match request.uri().path() {
            "/google.bytestream.ByteStream/Write" => {
                Box::pin(async move { Ok(service.serve_write(request, limit).await) })
            }
            "/google.bytestream.ByteStream/Read" => {
                Box::pin(async move { Ok(service.serve_read(request, limit).await) })
            }
            _ => Box::pin(self.grpc.call(request)),
        }
    }
}

impl ByteStreamService {
    async fn serve_write(&self, request: HttpRequest, limit: usize) -> HttpResponse {
        let (parts, body) = request.into_parts();
        if let Some(refused) = unsupported_encoding(&parts.headers) {
            return refused;
        }
        let caller = Caller::of_extensions(self.auth.as_ref(), &parts.extensions);
        match self.write(caller, BodyMessages::new(body, limit)).await {
            Ok(response) => grpc_response(
                http::HeaderMap::new(),
                RawBody::new(futures::stream::iter([Ok(wire::framed(&response))])),
            ),
            Err(error) => Status::from(error).into_http(),
        }
    }

    async fn serve_read(&self, request: HttpRequest, limit: usize) -> HttpResponse {
        let (parts, body) = request.into_parts();
        if let Some(refused) = unsupported_encoding(&parts.headers) {
            return refused;
        }
        match self.raw_read(&parts.extensions, body, limit).await {
            Ok((stream, part_only)) => {
                let mut headers = http::HeaderMap::new();
                if part_only {
                    headers.insert(
                        tessera_cas::client::PART_ONLY_HEADER,
                        http::HeaderValue::from_static("1"),
                    );
                }
                grpc_response(headers, RawBody::read(stream))
            }
            Err(status) => status.into_http(),
        }
    }

    async fn raw_read(
        &self,
        extensions: &http::Extensions,
        body: tonic::body::Body,
        limit: usize,
    ) -> Result<(ReadStream, bool), Status> {
        let message = BodyMessages::new(body, limit)
            .next_message()
            .await?
            .ok_or_else(|| {
                Status::invalid_argument("ByteStream.Read request carried no message")
            })?;
        let request = <ReadRequest as prost::Message>::decode(message)
            .map_err(|e| Status::invalid_argument(format!("malformed ReadRequest: {e}")))?;
        self.may_read(extensions, &request)?;
        Ok(self.start_read(&request)?)
    }

    /// PERMISSION_DENIED unless the caller (from the request's `extensions`) may read the
    /// instance `request` names.
    fn may_read(&self, extensions: &http::Extensions, request: &ReadRequest) -> Result<(), Status> {
        if self.auth.is_none() {
            return Ok(());
        }
        let resource =
            resource::parse_read(&request.resource_name).map_err(ByteStreamError::from)?;
        Caller::of_extensions(self.auth.as_ref(), extensions)
            .instance("ByteStream.Read", &resource.instance_name)
    }
}

/// UNIMPLEMENTED, as tonic answers it, for a request compressed with anything but identity
/// (this path accepts no compression; blobs can travel zstd-compressed through
/// `compressed-blobs/zstd` resources).
fn unsupported_encoding(headers: &http::HeaderMap) -> Option<HttpResponse> {
    let encoding = headers.get("grpc-encoding")?;
    if encoding.as_bytes() == b"identity" {
        return None;
    }
    let mut response = Status::unimplemented(format!(
        "Content is compressed with `{}` which isn't supported; send it uncompressed (blobs \
         can travel zstd-compressed through compressed-blobs/zstd resources)",
        String::from_utf8_lossy(encoding.as_bytes())
    ))
    .into_http();
    response.headers_mut().insert(
        "grpc-accept-encoding",
        http::HeaderValue::from_static("identity"),
    );
    Some(response)
}

/// A gRPC response with `headers` (besides the content type) and `body`.
fn grpc_response(headers: http::HeaderMap, body: RawBody) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(body));
    *response.headers_mut() = headers;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The trailers that end a response with `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert(Status::GRPC_STATUS, http::HeaderValue::from_static("13"));
    }
    trailers
}

/// A response body written on the wire directly: its frames (each message's head, then its
/// data as the store handed it over), then the trailers with the call's status: the first
/// error, or OK at the end.
struct RawBody {
    /// `None` once the trailers went out.
    frames: Option<Frames>,
}

/// A response's data frames, or the error that ends it.
type Frames = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl RawBody {
    fn new(frames: impl Stream<Item = Result<Bytes, Status>> + Send + 'static) -> Self {
        RawBody {
            frames: Some(Box::pin(frames)),
        }
    }

    /// Read's messages, each as its head and then its data.
    fn read(messages: ReadStream) -> Self {
        RawBody::new(futures::StreamExt::flat_map(messages, |message| {
            let (head, data) = match message {
                Ok(message) => (
                    Ok(wire::read_response_head(message.data.len())),
                    Some(message.data).filter(|data| !data.is_empty()).map(Ok),
                ),
                Err(status) => (Err(status), None),
            };
            futures::stream::iter(std::iter::once(head).chain(data))
        }))
    }
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Some(frames) = self.frames.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let status = match std::task::ready!(frames.as_mut().poll_next(cx)) {
            Some(Ok(data)) => return std::task::Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.frames = None;
        std::task::Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tessera_cas::digest::DigestFunction;
    use tessera_cas::store::MemoryStore;

    use super::*;

    /// A client's Write that sends `chunks` and then nothing, staying open.
    struct ThenSilent(VecDeque<WriteChunk>);

    impl WriteMessages for ThenSilent {
        async fn next_chunk(&mut self) -> Result<Option<WriteChunk>, Status> {
            match self.0.pop_front() {
                Some(chunk) => Ok(Some(chunk)),
                None => std::future::pending().await,
            }
        }
    }

    fn chunk(name: &str, offset: usize, data: &[u8], finish_write: bool) -> WriteChunk {
        WriteChunk::from(WriteRequest {
            resource_name: name.to_owned(),
            write_offset: offset as i64,
            finish_write,
            data: Bytes::copy_from_slice(data),
        })
    }

    #[tokio::test]
    async fn a_silent_upload_is_parked_and_forgotten_after_its_time_without_another_parking() {
        let mut service = ByteStreamService::new(Arc::new(MemoryStore::new()))
            .with_idle_timeout(Duration::from_millis(50));
        service.park_ttl = Duration::from_millis(300);
        let data = vec![3u8; 10_000];
        let digest = DigestFunction::Sha256.digest_of(&data);
        let name = format!(
            "uploads/u1/blobs/{}/{}",
            digest.hash_hex(),
            digest.size_bytes
        );
        let caller = || Caller::of_extensions(None, &http::Extensions::new());
        let silent = ThenSilent(VecDeque::from([chunk(&name, 0, &data[..4_000], false)]));
        let error = service.write(caller(), silent).await.unwrap_err();
        assert!(
            matches!(
                error,
                ByteStreamError::Idle {
                    committed: 4_000,
                    ..
                }
            ),
            "{error}"
        );
        let query = QueryWriteStatusRequest {
            resource_name: name.clone(),
        };
        assert_eq!(
            service.query_write_status(&query).unwrap().committed_size,
            4_000
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Nothing else parked in the meantime: asking is enough to drop it.
        assert_eq!(
            service.query_write_status(&query).unwrap().committed_size,
            0
        );
        assert!(service.parked().is_empty());
        let resumed = ThenSilent(VecDeque::from([chunk(&name, 4_000, &data[4_000..], true)]));
        let error = service.write(caller(), resumed).await.unwrap_err();
        assert!(
            matches!(error, ByteStreamError::WrongOffset { expected: 0, .. }),
            "{error}"
        );
        let whole = ThenSilent(VecDeque::from([chunk(&name, 0, &data, true)]));
        let written = service.write(caller(), whole).await.unwrap();
        assert_eq!(written.committed_size, 10_000);
        assert!(service.store.contains(&digest));
    }
}
