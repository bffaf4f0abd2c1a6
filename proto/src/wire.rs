//! ByteStream's bulk messages on the wire, without the copies tonic's codec makes.
//!
//! tonic copies every received HTTP/2 data frame into one contiguous buffer before it decodes a
//! message, and copies every message it sends into another before it hands it to HTTP/2. For a
//! blob moving through ByteStream that is two extra passes over every byte, on a path where
//! the only work that must touch each byte is the socket copy, the hash and the file write.
//! Here a message is cut out of the frames as they arrived ([`Rope`]: a list of `Bytes` that
//! share the frames' memory), and `WriteRequest.data` and `ReadResponse.data` stay those
//! pieces; a message to send is a short head (the gRPC prefix and every field before `data`)
//! followed by the data's own `Bytes`, so nothing is copied on either side.
//!
//! Only these two messages are handled here. They decode as prost decodes them (fields in any
//! order, repeated ones, unknown ones skipped), except that a group (a wire type proto3 no
//! longer writes, and no field of REAPI uses) is refused instead of skipped.
//!
//! Frames smaller than [`KEEP_FRAME_MIN`] are copied into a buffer of the message's own
//! instead of kept: an HTTP/2 frame shares the memory of the connection's read buffer, so
//! keeping many small ones could hold far more memory than the message limit allows (a peer
//! sending 1-byte frames, or interleaving other streams' frames with ours). Only large frames,
//! which fill most of the buffer they came in, are kept as they are; a Bazel client's 16 KiB
//! frames are copied once, as tonic would copy them.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;

/// Bytes before each gRPC message: a compressed flag and the message's length (big-endian).
pub const PREFIX_LEN: usize = 5;
/// Received frames at least this large are kept uncopied; smaller ones are copied.
pub const KEEP_FRAME_MIN: usize = 256 * 1024;

/// `WriteRequest` and `ReadResponse` field numbers (google/bytestream/bytestream.proto).
const WRITE_RESOURCE_NAME: u32 = 1;
const WRITE_OFFSET: u32 = 2;
const WRITE_FINISH: u32 = 3;
const DATA: u32 = 10;

/// Bytes in the pieces they arrived in, shared with the buffers they came from, never copied
/// into one. Reads across piece boundaries as one sequence ([`Buf`]).
#[derive(Debug, Default, Clone)]
pub struct Rope {
    pieces: VecDeque<Bytes>,
    len: usize,
}

impl Rope {
    /// An empty rope.
    pub fn new() -> Self {
        Rope::default()
    }

    /// Appends `piece` (no copy).
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push_back(piece);
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `n` bytes (all of them if there are fewer), split off without copying.
    pub fn split_to(&mut self, n: usize) -> Rope {
        let mut front = Rope::new();
        let mut wanted = n.min(self.len);
        while wanted > 0 {
            let Some(mut piece) = self.pieces.pop_front() else {
                break;
            };
            if piece.len() > wanted {
                self.pieces.push_front(piece.split_off(wanted));
            }
            wanted -= piece.len();
            self.len -= piece.len();
            front.push(piece);
        }
        front
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        self.pieces.iter()
    }

    /// The pieces, in order, given up.
    pub fn into_pieces(self) -> impl Iterator<Item = Bytes> {
        self.pieces.into_iter()
    }

    /// The first `N` bytes, copied, if there are that many.
    fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        let mut filled = 0;
        for piece in &self.pieces {
            let take = piece.len().min(N - filled);
            out[filled..filled + take].copy_from_slice(&piece[..take]);
            filled += take;
            if filled == N {
                return Some(out);
            }
        }
        None
    }
}

impl From<Bytes> for Rope {
    fn from(piece: Bytes) -> Self {
        let mut rope = Rope::new();
        rope.push(piece);
        rope
    }
}

impl Buf for Rope {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.front().map_or(&[], |piece| &piece[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(
            cnt <= self.len,
            "advanced {cnt} bytes past a rope of {}",
            self.len
        );
        while cnt > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            let step = cnt.min(front.len());
            front.advance(step);
            self.len -= step;
            cnt -= step;
            if front.is_empty() {
                self.pieces.pop_front();
            }
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.len,
            "took {len} bytes from a rope of {}",
            self.len
        );
        match self.pieces.front_mut() {
            Some(front) if front.len() >= len => {
                let out = front.split_to(len);
                self.len -= len;
                if front.is_empty() {
                    self.pieces.pop_front();
                }
                out
            }
            _ => {
                let mut out = BytesMut::with_capacity(len);
                for piece in self.split_to(len).into_pieces() {
                    out.put(piece);
                }
                out.freeze()
            }
        }
    }
}

/// Whole gRPC messages cut from a stream's data as it arrives.
#[derive(Debug)]
pub struct Messages {
    /// Data received, in order: `buffered`, then `small`.
    buffered: Rope,
    /// Small frames received since the last large one, copied together.
    small: BytesMut,
    limit: usize,
}

impl Messages {
    /// Cuts messages of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Messages {
            buffered: Rope::new(),
            small: BytesMut::new(),
            limit,
        }
    }

    /// Adds data as it came off the stream: kept if large, copied if small.
    pub fn push(&mut self, data: Bytes) {
        if data.len() < KEEP_FRAME_MIN {
            self.small.extend_from_slice(&data);
        } else {
            self.flush_small();
            self.buffered.push(data);
        }
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.buffered.push(self.small.split().freeze());
        }
    }

    /// The next message, once all of it has arrived. A compressed message (this path
    /// advertises no compression) or one over the limit is an error.
    pub fn next_message(&mut self) -> Result<Option<Rope>, Status> {
        if self.buffered.len() < PREFIX_LEN {
            self.flush_small();
        }
        let Some(prefix) = self.buffered.peek::<PREFIX_LEN>() else {
            return Ok(None);
        };
        match prefix[0] {
            0 => {}
            1 => {
                // As the gRPC compression spec asks of a compressed message on a call whose
                // grpc-encoding is identity.
                return Err(Status::internal(
                    "a gRPC message came compressed on a call without compression; send it \
                     uncompressed (blobs can travel zstd-compressed through \
                     compressed-blobs/zstd resources instead)",
                ));
            }
            flag => {
                return Err(Status::invalid_argument(format!(
                    "gRPC message prefix has compressed-flag {flag}; only 0 and 1 exist"
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            // The code tonic answers with.
            return Err(Status::out_of_range(format!(
                "gRPC message of {len} bytes is too large: at most {} bytes are taken per \
                 message; send the data in smaller messages",
                self.limit
            )));
        }
        if self.buffered.len() < PREFIX_LEN + len {
            if self.buffered.len() + self.small.len() < PREFIX_LEN + len {
                return Ok(None);
            }
            self.flush_small();
        }
        self.buffered.advance(PREFIX_LEN);
        Ok(Some(self.buffered.split_to(len)))
    }

    /// Bytes received that do not yet make a whole message: at the end of the stream, a
    /// message cut short.
    pub fn pending(&self) -> usize {
        self.buffered.len() + self.small.len()
    }
}

/// The messages of an HTTP body (a request's or a response's), as they arrive, and the
/// trailers that end it.
#[derive(Debug)]
pub struct BodyMessages {
    body: tonic::body::Body,
    messages: Messages,
    trailers: Option<http::HeaderMap>,
    ended: bool,
    received: u64,
}

impl BodyMessages {
    /// Reads `body`'s messages of at most `limit` bytes.
    pub fn new(body: tonic::body::Body, limit: usize) -> Self {
        BodyMessages {
            body,
            messages: Messages::new(limit),
            trailers: None,
            ended: false,
            received: 0,
        }
    }

    /// Bytes of data received so far, whole messages or not: whether a peer is still sending
    /// while a large message is on its way.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next message; `None` once the body ended cleanly.
    pub async fn next_message(&mut self) -> Result<Option<Rope>, Status> {
        loop {
            if let Some(message) = self.messages.next_message()? {
                return Ok(Some(message));
            }
            if self.ended {
                return match self.messages.pending() {
                    0 => Ok(None),
                    left => Err(Status::invalid_argument(format!(
                        "the stream ended inside a gRPC message ({left} bytes of it came)"
                    ))),
                };
            }
            let frame = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(std::pin::Pin::new(&mut self.body), cx)
            })
            .await;
            match frame {
                None => self.ended = true,
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.received += data.len() as u64;
                        self.messages.push(data);
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
    }

    /// A body whose status came in `headers` (a response of headers only).
    pub fn ended_by(mut self, headers: http::HeaderMap) -> Self {
        self.trailers = Some(headers);
        self
    }

    /// Reads to the end and answers the status its trailers carry: a response's outcome. A
    /// message after the last one expected is an error.
    pub async fn finish(mut self) -> Result<(), Status> {
        if self.next_message().await?.is_some() {
            return Err(Status::internal(
                "the response carried more messages than expected",
            ));
        }
        match self.trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) if status.code() == tonic::Code::Ok => Ok(()),
            Some(status) => Err(status),
            None => Err(Status::internal(
                "the response ended without a grpc-status trailer",
            )),
        }
    }
}

/// A `google.bytestream.WriteRequest` whose `data` is still the pieces it arrived in.
#[derive(Debug, Default, Clone)]
pub struct WriteChunk {
    /// `resource_name` (usually only in a stream's first message).
    pub resource_name: String,
    /// `write_offset`.
    pub write_offset: i64,
    /// `finish_write`.
    pub finish_write: bool,
    /// `data`.
    pub data: Rope,
}

impl From<crate::bytestream::WriteRequest> for WriteChunk {
    fn from(request: crate::bytestream::WriteRequest) -> Self {
        WriteChunk {
            resource_name: request.resource_name,
            write_offset: request.write_offset,
            finish_write: request.finish_write,
            data: Rope::from(request.data),
        }
    }
}

/// Decodes a `WriteRequest` as prost would, keeping `data` uncopied.
pub fn decode_write(mut message: Rope) -> Result<WriteChunk, Status> {
    let mut chunk = WriteChunk::default();
    while message.has_remaining() {
        let (field, wire) = key(&mut message, "WriteRequest")?;
        match (field, wire) {
            (WRITE_RESOURCE_NAME, WireType::LengthDelimited) => {
                let bytes = delimited(&mut message, "WriteRequest.resource_name")?;
                let bytes = message.copy_to_bytes(bytes);
                chunk.resource_name = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    Status::invalid_argument("WriteRequest.resource_name is not valid UTF-8")
                })?;
            }
            (WRITE_OFFSET, WireType::Varint) => {
                // int64 travels as its two's complement.
                chunk.write_offset = varint(&mut message, "WriteRequest.write_offset")? as i64;
            }
            (WRITE_FINISH, WireType::Varint) => {
                chunk.finish_write = varint(&mut message, "WriteRequest.finish_write")? != 0;
            }
            (DATA, WireType::LengthDelimited) => {
                let len = delimited(&mut message, "WriteRequest.data")?;
                chunk.data = message.split_to(len);
            }
            (WRITE_RESOURCE_NAME | WRITE_OFFSET | WRITE_FINISH | DATA, wire) => {
                return Err(malformed(format!(
                    "WriteRequest field {field} has wire type {wire:?}"
                )));
            }
            (_, wire) => skip(&mut message, wire, "WriteRequest")?,
        }
    }
    Ok(chunk)
}

/// Decodes a `ReadResponse` as prost would, keeping `data` uncopied.
pub fn decode_read_response(mut message: Rope) -> Result<Rope, Status> {
    let mut data = Rope::new();
    while message.has_remaining() {
        match key(&mut message, "ReadResponse")? {
            (DATA, WireType::LengthDelimited) => {
                let len = delimited(&mut message, "ReadResponse.data")?;
                data = message.split_to(len);
            }
            (DATA, wire) => {
                return Err(malformed(format!(
                    "ReadResponse field {DATA} has wire type {wire:?}"
                )));
            }
            (_, wire) => skip(&mut message, wire, "ReadResponse")?,
        }
    }
    Ok(data)
}

/// What comes before `data_len` bytes of data to make one framed `WriteRequest`: the gRPC
/// prefix and the other fields, each left out when it has its default value (as prost does).
pub fn write_request_head(
    resource_name: &str,
    write_offset: i64,
    finish_write: bool,
    data_len: usize,
) -> Bytes {
    let mut fields = BytesMut::with_capacity(resource_name.len() + 32);
    if !resource_name.is_empty() {
        encode_key(WRITE_RESOURCE_NAME, WireType::LengthDelimited, &mut fields);
        encode_varint(resource_name.len() as u64, &mut fields);
        fields.put_slice(resource_name.as_bytes());
    }
    if write_offset != 0 {
        encode_key(WRITE_OFFSET, WireType::Varint, &mut fields);
        encode_varint(write_offset as u64, &mut fields);
    }
    if finish_write {
        encode_key(WRITE_FINISH, WireType::Varint, &mut fields);
        encode_varint(1, &mut fields);
    }
    head(fields, data_len)
}

/// What comes before `data_len` bytes of data to make one framed `ReadResponse`.
pub fn read_response_head(data_len: usize) -> Bytes {
    head(BytesMut::new(), data_len)
}

/// `message`, framed: the gRPC prefix and its encoding.
pub fn framed(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX_LEN + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    message
        .encode(&mut out)
        .expect("a buffer sized by encoded_len holds the message");
    out.freeze()
}

/// The prefix, `fields`, then the key and length of `data_len` bytes of field [`DATA`].
fn head(fields: BytesMut, data_len: usize) -> Bytes {
    let data_head = if data_len == 0 {
        0
    } else {
        1 + encoded_len_varint(data_len as u64)
    };
    let message_len = fields.len() + data_head + data_len;
    debug_assert!(
        u32::try_from(message_len).is_ok(),
        "callers send messages far below 4 GiB"
    );
    let mut out = BytesMut::with_capacity(PREFIX_LEN + fields.len() + data_head);
    out.put_u8(0);
    out.put_u32(u32::try_from(message_len).unwrap_or(u32::MAX));
    out.put(fields);
    if data_len > 0 {
        encode_key(DATA, WireType::LengthDelimited, &mut out);
        encode_varint(data_len as u64, &mut out);
    }
    out.freeze()
}

fn malformed(detail: String) -> Status {
    Status::invalid_argument(format!("malformed protobuf message: {detail}"))
}

fn varint(message: &mut Rope, what: &str) -> Result<u64, Status> {
    decode_varint(message).map_err(|e| malformed(format!("{what}: {e}")))
}

/// A field's number and wire type.
fn key(message: &mut Rope, what: &str) -> Result<(u32, WireType), Status> {
    let key = varint(message, what)?;
    let wire = WireType::try_from(key & 7)
        .map_err(|_| malformed(format!("{what}: wire type {} does not exist", key & 7)))?;
    let field = u32::try_from(key)
        .ok()
        .map(|key| key >> 3)
        .filter(|&field| field > 0)
        .ok_or_else(|| malformed(format!("{what}: key {key} is invalid")))?;
    Ok((field, wire))
}

/// A length-delimited field's length, checked against what is left.
fn delimited(message: &mut Rope, what: &str) -> Result<usize, Status> {
    let len = varint(message, what)?;
    usize::try_from(len)
        .ok()
        .filter(|&len| len <= message.remaining())
        .ok_or_else(|| {
            malformed(format!(
                "{what} claims {len} bytes, {} are left in the message",
                message.remaining()
            ))
        })
}

/// Skips an unknown field.
fn skip(message: &mut Rope, wire: WireType, what: &str) -> Result<(), Status> {
    let len = match wire {
        WireType::Varint => {
            varint(message, what)?;
            return Ok(());
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => delimited(message, what)?,
        WireType::StartGroup | WireType::EndGroup => {
            return Err(malformed(format!(
                "{what}: groups are not used by this message"
            )));
        }
    };
    if message.remaining() < len {
        return Err(malformed(format!(
            "{what}: a field runs past the message's end"
        )));
    }
    message.advance(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::bytestream::{ReadResponse, WriteRequest};

    /// `bytes` as a rope cut every `every` bytes (a frame boundary anywhere).
    fn cut(bytes: &[u8], every: usize) -> Rope {
        let mut rope = Rope::new();
        for piece in bytes.chunks(every.max(1)) {
            rope.push(Bytes::copy_from_slice(piece));
        }
        rope
    }

    fn flat(rope: &Rope) -> Vec<u8> {
        rope.pieces().flat_map(|p| p.iter().copied()).collect()
    }

    fn request(name: &str, offset: i64, finish: bool, data: &[u8]) -> WriteRequest {
        WriteRequest {
            resource_name: name.to_owned(),
            write_offset: offset,
            finish_write: finish,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn write_requests_decode_as_prost_encodes_them_wherever_the_frames_break() {
        let data: Vec<u8> = (0..5_000u32).map(|i| (i * 7) as u8).collect();
        let cases = [
            request("uploads/u/blobs/abc/5000", 0, false, &data),
            request("", 4096, true, &data[..17]),
            request("", -3, false, b""),
            request("", 0, false, b""),
            request("x", i64::MAX, true, &data),
        ];
        for case in cases {
            let encoded = case.encode_to_vec();
            for every in [1, 2, 3, 7, 64, 4_999, 100_000] {
                let chunk = decode_write(cut(&encoded, every)).unwrap();
                assert_eq!(chunk.resource_name, case.resource_name);
                assert_eq!(chunk.write_offset, case.write_offset);
                assert_eq!(chunk.finish_write, case.finish_write);
                assert_eq!(flat(&chunk.data), case.data.to_vec(), "cut every {every}");
            }
        }
    }

    #[test]
    fn fields_in_any_order_repeated_or_unknown_decode_as_prost_decodes_them() {
        let mut encoded = Vec::new();
        // data first, then an unknown varint, fixed64, fixed32 and length-delimited field,
        // then resource_name twice and data again (the last one counts for both).
        prost::encoding::bytes::encode(DATA, &Bytes::from_static(b"first"), &mut encoded);
        prost::encoding::uint64::encode(4, &300, &mut encoded);
        prost::encoding::fixed64::encode(5, &7, &mut encoded);
        prost::encoding::fixed32::encode(6, &7, &mut encoded);
        prost::encoding::string::encode(7, &"ignored".to_owned(), &mut encoded);
        prost::encoding::string::encode(1, &"a".to_owned(), &mut encoded);
        prost::encoding::string::encode(1, &"b".to_owned(), &mut encoded);
        prost::encoding::bool::encode(3, &true, &mut encoded);
        prost::encoding::bytes::encode(DATA, &Bytes::from_static(b"second"), &mut encoded);
        let expected = WriteRequest::decode(&encoded[..]).unwrap();
        for every in [1, 3, 1000] {
            let chunk = decode_write(cut(&encoded, every)).unwrap();
            assert_eq!(chunk.resource_name, expected.resource_name);
            assert_eq!(chunk.finish_write, expected.finish_write);
            assert_eq!(flat(&chunk.data), expected.data.to_vec());
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_what_is_wrong() {
        let good = request("n", 1, true, b"data").encode_to_vec();
        // Cut short anywhere: every prefix that is not a whole message is refused (prost agrees).
        for end in 1..good.len() {
            if WriteRequest::decode(&good[..end]).is_err() {
                let error = decode_write(cut(&good[..end], 2)).unwrap_err();
                assert_eq!(error.code(), tonic::Code::InvalidArgument, "cut at {end}");
            }
        }
        let error = decode_write(Rope::from(Bytes::from_static(&[0x23]))).unwrap_err();
        assert!(error.message().contains("groups"), "{}", error.message());
        let error = decode_write(Rope::from(Bytes::from_static(&[0x10 | 2, 0]))).unwrap_err();
        assert!(error.message().contains("wire type"), "{}", error.message());
        let error = decode_write(Rope::from(Bytes::from_static(&[0x0a, 1, 0xff]))).unwrap_err();
        assert!(error.message().contains("UTF-8"), "{}", error.message());
        let error = decode_write(Rope::from(Bytes::from_static(&[0x52, 9, 1]))).unwrap_err();
        assert!(
            error.message().contains("claims 9 bytes"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn heads_followed_by_data_are_the_messages_prost_would_send() {
        let data = Bytes::from(vec![9u8; 300]);
        for (name, offset, finish, data) in [
            ("uploads/u/blobs/h/300", 0, false, data.clone()),
            ("", 1 << 40, true, data.clone()),
            ("", 0, true, Bytes::new()),
        ] {
            let mut framed = head_then(write_request_head(name, offset, finish, data.len()), &data);
            let expected = request(name, offset, finish, &data);
            assert_eq!(framed.split_off(PREFIX_LEN), expected.encode_to_vec());
            assert_eq!(framed, super::framed(&expected)[..PREFIX_LEN].to_vec());
        }
        let mut framed = head_then(read_response_head(data.len()), &data);
        let expected = ReadResponse { data: data.clone() };
        assert_eq!(framed.split_off(PREFIX_LEN), expected.encode_to_vec());
        assert_eq!(framed, super::framed(&expected)[..PREFIX_LEN].to_vec());
        let encoded = expected.encode_to_vec();
        assert_eq!(
            flat(&decode_read_response(cut(&encoded, 5)).unwrap()),
            data.to_vec()
        );
    }

    fn head_then(head: Bytes, data: &[u8]) -> Vec<u8> {
        let mut out = head.to_vec();
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn messages_are_cut_from_the_stream_whole_and_only_whole() {
        let one = framed(&request("a", 0, false, b"xyz"));
        let two = framed(&request("", 3, true, &[1; 40]));
        let stream: Vec<u8> = [one.to_vec(), two.to_vec()].concat();
        for every in [1, 4, 5, 6, 50, 1000] {
            let mut messages = Messages::new(1024);
            let mut got = Vec::new();
            for piece in stream.chunks(every) {
                messages.push(Bytes::copy_from_slice(piece));
                while let Some(message) = messages.next_message().unwrap() {
                    got.push(decode_write(message).unwrap());
                }
            }
            assert_eq!(messages.pending(), 0);
            assert_eq!(got.len(), 2, "cut every {every}");
            assert_eq!(flat(&got[1].data), vec![1; 40]);
        }
        let mut short = Messages::new(1024);
        short.push(one.slice(..one.len() - 1));
        assert!(short.next_message().unwrap().is_none());
        assert_eq!(short.pending(), one.len() - 1);

        let mut big = Messages::new(10);
        big.push(two.clone());
        assert_eq!(
            big.next_message().unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        let mut compressed = Messages::new(1024);
        compressed.push(Bytes::from_static(&[1, 0, 0, 0, 0]));
        assert_eq!(
            compressed.next_message().unwrap_err().code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn small_frames_are_gathered_and_large_ones_kept_as_they_came() {
        let data: Vec<u8> = (0..3 * KEEP_FRAME_MIN).map(|i| i as u8).collect();
        let request = request("", 0, true, &data);
        let stream = framed(&request);
        // One byte per frame: copied into one buffer, not kept as millions of pieces.
        let mut messages = Messages::new(usize::MAX);
        for byte in stream.iter() {
            messages.push(Bytes::copy_from_slice(&[*byte]));
        }
        let message = messages.next_message().unwrap().unwrap();
        assert_eq!(message.pieces().count(), 1);
        assert_eq!(flat(&decode_write(message).unwrap().data), data);
        // Large frames are the data as it arrived, small ones between them gathered.
        let mut messages = Messages::new(usize::MAX);
        let (head, body) = stream.split_at(100);
        let large = Bytes::copy_from_slice(&body[..2 * KEEP_FRAME_MIN]);
        messages.push(Bytes::copy_from_slice(head));
        messages.push(large.clone());
        for piece in body[2 * KEEP_FRAME_MIN..].chunks(1000) {
            messages.push(Bytes::copy_from_slice(piece));
        }
        let message = messages.next_message().unwrap().unwrap();
        assert_eq!(message.pieces().count(), 3);
        assert!(
            message
                .pieces()
                .any(|piece| piece.as_ptr() == large.as_ptr())
        );
        assert_eq!(flat(&decode_write(message).unwrap().data), data);
    }

    #[test]
    fn a_rope_splits_and_reads_across_its_pieces_without_losing_a_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut rope = cut(&bytes, 10);
        let front = rope.split_to(25);
        assert_eq!(flat(&front), bytes[..25].to_vec());
        assert_eq!(rope.len(), 231);
        assert_eq!(rope.copy_to_bytes(3).to_vec(), bytes[25..28].to_vec());
        assert_eq!(rope.copy_to_bytes(20).to_vec(), bytes[28..48].to_vec());
        rope.advance(8);
        assert_eq!(rope.chunk()[0], 56);
        assert_eq!(flat(&rope.split_to(1_000)), bytes[56..].to_vec());
        assert!(rope.is_empty());
    }
}
