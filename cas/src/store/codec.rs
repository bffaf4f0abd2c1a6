//! zstd on the wire: the `compressed-blobs/zstd` ByteStream resources and compressed batch
//! entries. Streaming so a 256 MiB blob never sits in memory twice; decoding is bounded by the
//! digest's size, so a small compressed upload can never expand into unbounded memory.

use thiserror::Error;
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// Level used for compressing on the fly: fast, and most of the gain.
pub const WIRE_LEVEL: i32 = 1;

/// Compressed data that could not be decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The bytes are not a valid zstd stream.
    #[error("invalid zstd data: {0}")]
    Invalid(std::io::Error),
    /// The data decodes to more bytes than allowed.
    #[error("zstd data decodes to more than {limit} bytes")]
    TooLarge {
        /// The limit (the digest's size).
        limit: u64,
    },
    /// The stream ended in the middle of a frame.
    #[error("zstd data ends in the middle of a frame")]
    Truncated,
}

/// Incremental zstd decoder with an output limit.
pub struct StreamDecoder {
    decoder: Decoder<'static>,
    limit: u64,
    produced: u64,
    /// Whether the last frame was completed (the decoder returned 0 "hint").
    frame_done: bool,
    out: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder that refuses to produce more than `limit` bytes.
    pub fn new(limit: u64) -> Result<Self, CodecError> {
        Ok(StreamDecoder {
            decoder: Decoder::new().map_err(CodecError::Invalid)?,
            limit,
            produced: 0,
            frame_done: true,
            out: vec![0u8; 256 * 1024],
        })
    }

    /// Decodes `input`, passing every decoded piece to `sink`.
    pub fn feed<E: From<CodecError>>(
        &mut self,
        input: &[u8],
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut src = InBuffer::around(input);
        while src.pos() < input.len() {
            let mut dst = OutBuffer::around(&mut self.out[..]);
            let hint = self
                .decoder
                .run(&mut src, &mut dst)
                .map_err(CodecError::Invalid)?;
            let n = dst.pos();
            self.frame_done = hint == 0;
            if n > 0 {
                self.produced += n as u64;
                if self.produced > self.limit {
                    return Err(CodecError::TooLarge { limit: self.limit }.into());
                }
                sink(&self.out[..n])?;
            }
        }
        // Drain what the decoder still holds for this input.
        loop {
            let mut dst = OutBuffer::around(&mut self.out[..]);
            let mut empty = InBuffer::around(&[]);
            let hint = self
                .decoder
                .run(&mut empty, &mut dst)
                .map_err(CodecError::Invalid)?;
            let n = dst.pos();
            if n == 0 {
                self.frame_done = self.frame_done || hint == 0;
                break;
            }
            self.frame_done = hint == 0;
            self.produced += n as u64;
            if self.produced > self.limit {
                return Err(CodecError::TooLarge { limit: self.limit }.into());
            }
            sink(&self.out[..n])?;
        }
        Ok(())
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.frame_done {
            Ok(())
        } else {
            Err(CodecError::Truncated)
        }
    }
}

/// Incremental zstd encoder producing one frame.
pub struct StreamEncoder {
    encoder: Encoder<'static>,
    out: Vec<u8>,
}

impl StreamEncoder {
    /// An encoder at [`WIRE_LEVEL`].
    pub fn new() -> std::io::Result<Self> {
        Ok(StreamEncoder {
            encoder: Encoder::new(WIRE_LEVEL)?,
            out: vec![0u8; 256 * 1024],
        })
    }

    /// Compresses `input`; returns the compressed bytes produced so far (may be empty).
    pub fn feed(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut produced = Vec::new();
        let mut src = InBuffer::around(input);
        while src.pos() < input.len() {
            let mut dst = OutBuffer::around(&mut self.out[..]);
            self.encoder.run(&mut src, &mut dst)?;
            let n = dst.pos();
            produced.extend_from_slice(&self.out[..n]);
        }
        Ok(produced)
    }

    /// Ends the frame and returns the remaining compressed bytes.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        let mut produced = Vec::new();
        loop {
            let mut dst = OutBuffer::around(&mut self.out[..]);
            let remaining = self.encoder.finish(&mut dst, true)?;
            let n = dst.pos();
            produced.extend_from_slice(&self.out[..n]);
            if remaining == 0 {
                return Ok(produced);
            }
        }
    }
}

/// Decompresses a whole zstd payload of at most `limit` bytes.
pub fn decompress(data: &[u8], limit: u64) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(usize::try_from(limit.min(64 << 20)).unwrap_or(0));
    let mut decoder = StreamDecoder::new(limit)?;
    decoder.feed::<CodecError>(data, |piece| {
        out.extend_from_slice(piece);
        Ok(())
    })?;
    decoder.finish()?;
    Ok(out)
}

/// Compresses a whole payload at [`WIRE_LEVEL`].
pub fn compress(data: &[u8]) -> Vec<u8> {
    // Bulk compression of an in-memory slice only fails on allocation failure.
    zstd::bulk::compress(data, WIRE_LEVEL).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_round_trip_in_odd_pieces() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut enc = StreamEncoder::new().unwrap();
        let mut compressed = Vec::new();
        for piece in data.chunks(7_777) {
            compressed.extend(enc.feed(piece).unwrap());
        }
        compressed.extend(enc.finish().unwrap());
        assert!(compressed.len() < data.len());

        let mut dec = StreamDecoder::new(data.len() as u64).unwrap();
        let mut out = Vec::new();
        for piece in compressed.chunks(1_000) {
            dec.feed::<CodecError>(piece, |p| {
                out.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
        }
        dec.finish().unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn output_beyond_the_limit_is_refused() {
        let compressed = compress(&vec![0u8; 100_000]);
        assert!(matches!(
            decompress(&compressed, 99_999),
            Err(CodecError::TooLarge { limit: 99_999 })
        ));
        assert_eq!(decompress(&compressed, 100_000).unwrap().len(), 100_000);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(matches!(
            decompress(b"definitely not zstd", 100),
            Err(CodecError::Invalid(_))
        ));
        let compressed = compress(&vec![7u8; 50_000]);
        let cut = &compressed[..compressed.len() - 3];
        assert!(decompress(cut, 50_000).is_err());
    }
}
