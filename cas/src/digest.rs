//! Digests: the `(function, hash, size)` triple that names every blob.
//!
//! Owns the two digest functions Tessera speaks (SHA-256, what most REAPI clients send, and
//! BLAKE3, the native default), strict parsing of hashes and sizes that arrive from the wire,
//! conversion to and from the REAPI `Digest` message, incremental hashing and verification of
//! data against a digest. Does not know where blobs live (see `store`) nor how they are named
//! in ByteStream resource names (see `resource`).

use std::fmt;
use std::io::{self, Read};

use thiserror::Error;

/// Size of the buffer used when hashing from a reader.
const READ_BUFFER: usize = 64 * 1024;

/// Longest value quoted verbatim in an error message; longer ones are cut.
const MAX_QUOTED: usize = 96;

/// A digest function Tessera implements.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum DigestFunction {
    /// SHA-256: what Bazel and most REAPI clients use; the default when none is named.
    Sha256,
    /// BLAKE3 with 32-byte output: Tessera's native default.
    Blake3,
}

/// REAPI `DigestFunction.Value` numbers (see `remote_execution.proto`).
const PROTO_UNKNOWN: i32 = 0;
const PROTO_SHA256: i32 = 1;
const PROTO_BLAKE3: i32 = 9;

impl DigestFunction {
    /// Every function Tessera implements, in the order they are advertised.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// From a REAPI `DigestFunction.Value` in a request. 0 (UNKNOWN) means SHA-256, which is
    /// what legacy clients that do not set the field mean.
    pub fn from_request(value: i32) -> Result<Self, DigestError> {
        match value {
            PROTO_UNKNOWN | PROTO_SHA256 => Ok(DigestFunction::Sha256),
            PROTO_BLAKE3 => Ok(DigestFunction::Blake3),
            other => Err(DigestError::UnsupportedFunction(other)),
        }
    }

    /// The REAPI `DigestFunction.Value` number of this function.
    pub fn to_proto(self) -> i32 {
        match self {
            DigestFunction::Sha256 => PROTO_SHA256,
            DigestFunction::Blake3 => PROTO_BLAKE3,
        }
    }

    /// Lowercase name, as used in ByteStream resource names.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// Parses a function name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        DigestFunction::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// A fresh incremental hasher.
    pub fn hasher(self) -> Hasher {
        let inner = match self {
            DigestFunction::Sha256 => HasherInner::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
            DigestFunction::Blake3 => HasherInner::Blake3(Box::new(blake3::Hasher::new())),
        };
        Hasher { inner, len: 0 }
    }

    /// The digest of `data`.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finish_digest()
    }

    /// The digest of everything `reader` yields, read in bounded chunks so that large inputs
    /// are never held in memory.
    pub fn digest_reader<R: Read>(self, mut reader: R) -> io::Result<Digest> {
        let mut hasher = self.hasher();
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(hasher.finish_digest())
    }

    /// The digest of the empty blob, which always exists.
    pub fn empty_digest(self) -> Digest {
        self.digest_of(&[])
    }

    /// A way to hash a `size`-byte blob as independent parts of `part` bytes (the last one
    /// possibly shorter), each on any thread and in any order, when this function allows it:
    /// BLAKE3 is a tree, and an aligned part whose length is a power of two of at least one
    /// chunk is one of its subtrees. `None` for SHA-256, for an odd part length, and for a blob
    /// of one part or less (hash it whole).
    pub fn parts(self, size: u64, part: u64) -> Option<PartHashing> {
        (self == DigestFunction::Blake3
            && part.is_power_of_two()
            && part >= blake3::CHUNK_LEN as u64
            && size > part)
            .then_some(PartHashing { size, part })
    }
}

/// The hash of one part of a blob, from [`PartHashing::hash_part`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PartHash([u8; 32]);

/// Hashes one blob in parts that are hashed apart and combined at the end
/// ([`DigestFunction::parts`]); gives the same digest as hashing the blob whole.
#[derive(Clone, Copy, Debug)]
pub struct PartHashing {
    size: u64,
    part: u64,
}

impl PartHashing {
    /// The length of every part but the last.
    pub fn part_len(&self) -> u64 {
        self.part
    }

    /// The number of parts.
    pub fn count(&self) -> u64 {
        self.size.div_ceil(self.part)
    }

    /// The hash of part `index`, whose bytes are `data`; `None` if `data` is not that part's
    /// length or there is no such part.
    pub fn hash_part(&self, index: u64, data: &[u8]) -> Option<PartHash> {
        let offset = index.checked_mul(self.part).filter(|&o| o < self.size)?;
        if data.len() as u64 != self.part.min(self.size - offset) {
            return None;
        }
        let mut hasher = blake3::Hasher::new();
        blake3::hazmat::HasherExt::set_input_offset(&mut hasher, offset);
        hasher.update(data);
        Some(PartHash(blake3::hazmat::HasherExt::finalize_non_root(
            &hasher,
        )))
    }

    /// The digest of the whole blob from the hashes of all its parts, in order; `None` if
    /// their number is wrong.
    pub fn finish(&self, parts: &[PartHash]) -> Option<Digest> {
        if parts.len() as u64 != self.count() {
            return None;
        }
        let (left, right) = self.children(parts, self.size);
        let root = blake3::hazmat::merge_subtrees_root(&left, &right, blake3::hazmat::Mode::Hash);
        Some(Digest {
            function: DigestFunction::Blake3,
            hash: *root.as_bytes(),
            size_bytes: self.size,
        })
    }

    /// The chaining value of the subtree of `len` bytes made of `parts`.
    fn subtree(&self, parts: &[PartHash], len: u64) -> [u8; 32] {
        if len <= self.part {
            return parts[0].0;
        }
        let (left, right) = self.children(parts, len);
        blake3::hazmat::merge_subtrees_non_root(&left, &right, blake3::hazmat::Mode::Hash)
    }

    /// The chaining values of the two children of the node over `len` bytes made of `parts`
    /// (two or more): the left one holds the largest power-of-two number of chunks that
    /// leaves the right one at least a byte (BLAKE3 paper, section 2.1), always a whole number
    /// of parts because parts are powers of two.
    fn children(&self, parts: &[PartHash], len: u64) -> ([u8; 32], [u8; 32]) {
        let left = blake3::hazmat::left_subtree_len(len);
        let split = (left / self.part) as usize;
        (
            self.subtree(&parts[..split], left),
            self.subtree(&parts[split..], len - left),
        )
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An incremental hasher for one digest function; also an [`io::Write`] sink so that
/// `io::copy` can feed it. Cloning forks the state, to peek at a prefix's hash.
#[derive(Clone)]
pub struct Hasher {
    inner: HasherInner,
    len: u64,
}

#[derive(Clone)]
enum HasherInner {
    Sha256(sha2::Sha256),
    // Boxed: blake3's state is about 2 KiB and would bloat every Hasher otherwise.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// The function this hasher computes.
    pub fn function(&self) -> DigestFunction {
        match self.inner {
            HasherInner::Sha256(_) => DigestFunction::Sha256,
            HasherInner::Blake3(_) => DigestFunction::Blake3,
        }
    }

    /// Feeds `data` into the hash.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            HasherInner::Sha256(h) => sha2::Digest::update(h, data),
            HasherInner::Blake3(h) => {
                h.update(data);
            }
        }
        self.len = self.len.saturating_add(data.len() as u64);
    }

    /// Number of bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 32-byte hash of everything fed.
    pub fn finalize(self) -> [u8; 32] {
        match self.inner {
            HasherInner::Sha256(h) => sha2::Digest::finalize(h).into(),
            HasherInner::Blake3(h) => *h.finalize().as_bytes(),
        }
    }

    /// The digest (function, hash and byte count) of everything fed.
    pub fn finish_digest(self) -> Digest {
        let function = self.function();
        let size_bytes = self.len;
        Digest {
            function,
            hash: self.finalize(),
            size_bytes,
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("function", &self.function())
            .field("len", &self.len)
            .finish()
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a digest was refused or data did not match it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// The request named a `DigestFunction.Value` that Tessera does not implement.
    #[error("unsupported digest function {0}")]
    UnsupportedFunction(i32),
    /// The hash is not exactly 64 lowercase hexadecimal characters.
    #[error("invalid hash \"{hash}\": {reason}")]
    InvalidHash {
        /// The offending hash, cut if very long.
        hash: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The size is negative.
    #[error("invalid size {0}: must not be negative")]
    NegativeSize(i64),
    /// The digest message is missing where one is required.
    #[error("missing digest")]
    Missing,
    /// The data has a different length than the digest says.
    #[error("size mismatch for {expected}: data has {actual} bytes")]
    SizeMismatch {
        /// The digest the data was checked against.
        expected: Digest,
        /// The length of the data.
        actual: u64,
    },
    /// The data hashes to something else than the digest says.
    #[error("hash mismatch for {expected}: data hashes to {actual}")]
    HashMismatch {
        /// The digest the data was checked against.
        expected: Digest,
        /// The digest the data actually has.
        actual: Digest,
    },
}

/// The name of a blob: which function hashed it, its hash and its length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest {
    /// The function that computed `hash`.
    pub function: DigestFunction,
    /// The raw 32-byte hash.
    pub hash: [u8; 32],
    /// The blob's length in bytes.
    pub size_bytes: u64,
}

impl Digest {
    /// Parses a hash and size as they arrive from the wire. Strict: the hash must be exactly 64
    /// lowercase hexadecimal characters and the size must not be negative.
    pub fn parse(
        function: DigestFunction,
        hash_hex: &str,
        size_bytes: i64,
    ) -> Result<Digest, DigestError> {
        let hash = parse_hash(hash_hex)?;
        let size_bytes =
            u64::try_from(size_bytes).map_err(|_| DigestError::NegativeSize(size_bytes))?;
        Ok(Digest {
            function,
            hash,
            size_bytes,
        })
    }

    /// From a REAPI `Digest` message; the function comes from the request around it.
    pub fn from_proto(
        function: DigestFunction,
        d: &tessera_proto::reapi::Digest,
    ) -> Result<Digest, DigestError> {
        Digest::parse(function, &d.hash, d.size_bytes)
    }

    /// From an optional REAPI `Digest` field, refusing a missing one.
    pub fn from_proto_opt(
        function: DigestFunction,
        d: Option<&tessera_proto::reapi::Digest>,
    ) -> Result<Digest, DigestError> {
        Digest::from_proto(function, d.ok_or(DigestError::Missing)?)
    }

    /// To a REAPI `Digest` message. A size beyond `i64::MAX` (which no parsed digest has)
    /// is clamped.
    pub fn to_proto(&self) -> tessera_proto::reapi::Digest {
        tessera_proto::reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size_i64(),
        }
    }

    /// The size as the wire's `int64`, clamped to `i64::MAX`.
    pub fn size_i64(&self) -> i64 {
        i64::try_from(self.size_bytes).unwrap_or(i64::MAX)
    }

    /// The hash as 64 lowercase hexadecimal characters.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// True if this is the empty blob of its function (size 0 and the empty hash).
    pub fn is_empty_blob(&self) -> bool {
        self.size_bytes == 0 && *self == self.function.empty_digest()
    }

    /// Checks that `data` is exactly the blob this digest names.
    pub fn verify(&self, data: &[u8]) -> Result<(), DigestError> {
        let actual = self.function.digest_of(data);
        self.verify_against(&actual)
    }

    /// Checks that a digest computed from data (for example by a streaming [`Hasher`]) is this
    /// one; the size is compared first so the error says the more telling thing.
    pub fn verify_against(&self, actual: &Digest) -> Result<(), DigestError> {
        if actual.size_bytes != self.size_bytes {
            return Err(DigestError::SizeMismatch {
                expected: *self,
                actual: actual.size_bytes,
            });
        }
        if actual.function != self.function || actual.hash != self.hash {
            return Err(DigestError::HashMismatch {
                expected: *self,
                actual: *actual,
            });
        }
        Ok(())
    }
}

/// `{hash}/{size}` for SHA-256, `blake3:{hash}/{size}` for BLAKE3.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.function != DigestFunction::Sha256 {
            write!(f, "{}:", self.function.name())?;
        }
        write!(f, "{}/{}", self.hash_hex(), self.size_bytes)
    }
}

/// Encodes `message` and hashes the encoding: the digest under which it is stored, and the
/// bytes to store.
pub fn digest_message<M: prost::Message>(
    function: DigestFunction,
    message: &M,
) -> (Digest, Vec<u8>) {
    let bytes = message.encode_to_vec();
    (function.digest_of(&bytes), bytes)
}

fn parse_hash(hash_hex: &str) -> Result<[u8; 32], DigestError> {
    let invalid = |reason| DigestError::InvalidHash {
        hash: shorten(hash_hex),
        reason,
    };
    if hash_hex.len() != 64 {
        return Err(invalid("expected 64 hexadecimal characters"));
    }
    if !hash_hex
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(invalid("expected lowercase hexadecimal characters only"));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hash_hex, &mut hash)
        .map_err(|_| invalid("expected lowercase hexadecimal characters only"))?;
    Ok(hash)
}

/// A value from the wire, cut to a length fit for an error message.
pub(crate) fn shorten(value: &str) -> String {
    if value.len() <= MAX_QUOTED {
        return value.to_owned();
    }
    let mut end = MAX_QUOTED;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn blake3_parts_hashed_apart_give_the_whole_blob_digest() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let data: Vec<u8> = (0..(3 << 20) + 12_345)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for part in [1024u64, 4096, 64 * 1024, 1 << 20, 2 << 20] {
            for size in [
                part + 1,
                2 * part,
                3 * part - 1,
                5 * part,
                data.len() as u64,
            ] {
                let Some(size) = Some(size).filter(|&s| s <= data.len() as u64) else {
                    continue;
                };
                let blob = &data[..size as usize];
                let parts = DigestFunction::Blake3.parts(size, part).unwrap();
                // Hashed last to first: order must not matter.
                let mut hashes: Vec<PartHash> = blob
                    .chunks(part as usize)
                    .enumerate()
                    .rev()
                    .map(|(i, piece)| parts.hash_part(i as u64, piece).unwrap())
                    .collect();
                hashes.reverse();
                assert_eq!(
                    parts.finish(&hashes),
                    Some(DigestFunction::Blake3.digest_of(blob)),
                    "{size} bytes in parts of {part}"
                );
                assert_eq!(parts.finish(&hashes[1..]), None);
            }
        }
    }

    #[test]
    fn only_blake3_with_aligned_power_of_two_parts_is_hashed_in_parts() {
        assert!(DigestFunction::Sha256.parts(1 << 30, 8 << 20).is_none());
        assert!(DigestFunction::Blake3.parts(1 << 30, 3 << 20).is_none());
        assert!(DigestFunction::Blake3.parts(1 << 30, 512).is_none());
        assert!(DigestFunction::Blake3.parts(8 << 20, 8 << 20).is_none());
        let parts = DigestFunction::Blake3
            .parts((16 << 20) + 1, 8 << 20)
            .unwrap();
        assert_eq!(parts.count(), 3);
        assert!(parts.hash_part(3, &[]).is_none());
        assert!(parts.hash_part(2, &[0, 0]).is_none());
        assert!(parts.hash_part(2, &[0]).is_some());
    }

    use super::*;
    use std::io::Write;

    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const BLAKE3_EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const BLAKE3_ABC: &str = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";

    #[test]
    fn known_vectors() {
        assert_eq!(
            DigestFunction::Sha256.empty_digest().hash_hex(),
            SHA256_EMPTY
        );
        assert_eq!(
            DigestFunction::Blake3.empty_digest().hash_hex(),
            BLAKE3_EMPTY
        );
        assert_eq!(
            DigestFunction::Sha256.digest_of(b"abc").hash_hex(),
            SHA256_ABC
        );
        assert_eq!(
            DigestFunction::Blake3.digest_of(b"abc").hash_hex(),
            BLAKE3_ABC
        );
        assert_eq!(DigestFunction::Sha256.digest_of(b"abc").size_bytes, 3);
    }

    #[test]
    fn request_values() {
        assert_eq!(DigestFunction::from_request(0), Ok(DigestFunction::Sha256));
        assert_eq!(DigestFunction::from_request(1), Ok(DigestFunction::Sha256));
        assert_eq!(DigestFunction::from_request(9), Ok(DigestFunction::Blake3));
        for bad in [2, 3, 4, 5, 6, 7, 8, 10, -1, i32::MIN, i32::MAX] {
            assert_eq!(
                DigestFunction::from_request(bad),
                Err(DigestError::UnsupportedFunction(bad))
            );
        }
        for f in DigestFunction::ALL {
            assert_eq!(DigestFunction::from_request(f.to_proto()), Ok(f));
        }
        assert_eq!(
            DigestFunction::from_request(7).unwrap_err().to_string(),
            "unsupported digest function 7"
        );
    }

    #[test]
    fn names() {
        for f in DigestFunction::ALL {
            assert_eq!(DigestFunction::from_name(f.name()), Some(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!(
            DigestFunction::from_name("SHA256"),
            Some(DigestFunction::Sha256)
        );
        assert_eq!(
            DigestFunction::from_name("Blake3"),
            Some(DigestFunction::Blake3)
        );
        for bad in ["", "sha1", "md5", "sha-256", "blake3 ", "sha2566"] {
            assert_eq!(DigestFunction::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for f in DigestFunction::ALL {
            let mut h = f.hasher();
            assert!(h.is_empty());
            for chunk in data.chunks(7919) {
                h.update(chunk);
            }
            assert_eq!(h.len(), data.len() as u64);
            assert_eq!(h.function(), f);
            assert_eq!(h.finish_digest(), f.digest_of(&data));

            let mut h = f.hasher();
            h.write_all(&data).unwrap();
            assert_eq!(h.finalize(), f.digest_of(&data).hash);

            assert_eq!(f.digest_reader(&data[..]).unwrap(), f.digest_of(&data));
        }
    }

    #[test]
    fn reader_errors_propagate() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        assert!(DigestFunction::Blake3.digest_reader(Failing).is_err());
    }

    #[test]
    fn parse_round_trip() {
        for f in DigestFunction::ALL {
            let d = f.digest_of(b"hello");
            let parsed = Digest::parse(f, &d.hash_hex(), 5).unwrap();
            assert_eq!(parsed, d);
            let proto = d.to_proto();
            assert_eq!(proto.size_bytes, 5);
            assert_eq!(Digest::from_proto(f, &proto).unwrap(), d);
            assert_eq!(Digest::from_proto_opt(f, Some(&proto)).unwrap(), d);
        }
        assert_eq!(
            Digest::from_proto_opt(DigestFunction::Sha256, None),
            Err(DigestError::Missing)
        );
        let max = Digest::parse(DigestFunction::Sha256, SHA256_EMPTY, i64::MAX).unwrap();
        assert_eq!(max.size_bytes, i64::MAX as u64);
        assert_eq!(max.to_proto().size_bytes, i64::MAX);
    }

    #[test]
    fn parse_rejects_bad_hashes() {
        let upper = SHA256_EMPTY.to_uppercase();
        let short = &SHA256_EMPTY[..63];
        let long = format!("{SHA256_EMPTY}0");
        let with_g = format!("g{}", &SHA256_EMPTY[1..]);
        let with_space = format!(" {}", &SHA256_EMPTY[1..]);
        let multibyte = format!("é{}", &SHA256_EMPTY[2..]); // 64 bytes, 63 chars
        let huge = "a".repeat(100_000);
        let prefixed = format!("0x{}", &SHA256_EMPTY[2..]);
        for bad in [
            "",
            short,
            &long,
            &upper,
            &with_g,
            &with_space,
            &multibyte,
            &huge,
            &prefixed,
        ] {
            let err = Digest::parse(DigestFunction::Sha256, bad, 0).unwrap_err();
            assert!(
                matches!(err, DigestError::InvalidHash { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().len() < 250, "message not cut: {err}");
        }
        let err = Digest::parse(DigestFunction::Sha256, &upper, 0).unwrap_err();
        assert!(err.to_string().contains(&upper), "{err}");
    }

    #[test]
    fn parse_rejects_negative_size() {
        for bad in [-1, i64::MIN] {
            assert_eq!(
                Digest::parse(DigestFunction::Sha256, SHA256_EMPTY, bad),
                Err(DigestError::NegativeSize(bad))
            );
        }
        assert_eq!(
            DigestError::NegativeSize(-1).to_string(),
            "invalid size -1: must not be negative"
        );
    }

    #[test]
    fn empty_blob() {
        for f in DigestFunction::ALL {
            assert!(f.empty_digest().is_empty_blob());
            assert_eq!(f.empty_digest().size_bytes, 0);
            assert!(!f.digest_of(b"x").is_empty_blob());
        }
        // The SHA-256 empty hash under BLAKE3 is not the BLAKE3 empty blob.
        let confused = Digest::parse(DigestFunction::Blake3, SHA256_EMPTY, 0).unwrap();
        assert!(!confused.is_empty_blob());
        // Right hash, wrong size.
        let wrong_size = Digest::parse(DigestFunction::Sha256, SHA256_EMPTY, 1).unwrap();
        assert!(!wrong_size.is_empty_blob());
    }

    #[test]
    fn verify() {
        for f in DigestFunction::ALL {
            let d = f.digest_of(b"hello");
            assert_eq!(d.verify(b"hello"), Ok(()));

            let err = d.verify(b"hello!").unwrap_err();
            assert_eq!(
                err,
                DigestError::SizeMismatch {
                    expected: d,
                    actual: 6
                }
            );
            assert!(err.to_string().contains(&d.hash_hex()));
            assert!(err.to_string().contains("6 bytes"));

            let err = d.verify(b"jello").unwrap_err();
            let actual = f.digest_of(b"jello");
            assert_eq!(
                err,
                DigestError::HashMismatch {
                    expected: d,
                    actual
                }
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&d.hash_hex()) && msg.contains(&actual.hash_hex()),
                "{msg}"
            );
        }
        let sha = DigestFunction::Sha256.digest_of(b"x");
        let blake = DigestFunction::Blake3.digest_of(b"x");
        assert!(sha.verify_against(&blake).is_err());
    }

    #[test]
    fn display() {
        let sha = DigestFunction::Sha256.empty_digest();
        assert_eq!(sha.to_string(), format!("{SHA256_EMPTY}/0"));
        let blake = DigestFunction::Blake3.digest_of(b"abc");
        assert_eq!(blake.to_string(), format!("blake3:{BLAKE3_ABC}/3"));
    }

    #[test]
    fn digest_of_message() {
        let d = DigestFunction::Sha256.digest_of(b"abc").to_proto();
        let (digest, bytes) = digest_message(DigestFunction::Blake3, &d);
        assert_eq!(digest, DigestFunction::Blake3.digest_of(&bytes));
        assert_eq!(
            <tessera_proto::reapi::Digest as prost::Message>::decode(&bytes[..]).unwrap(),
            d
        );
        // The empty message encodes to nothing: the empty blob.
        let (empty, bytes) = digest_message(
            DigestFunction::Sha256,
            &tessera_proto::reapi::Digest::default(),
        );
        assert!(bytes.is_empty());
        assert!(empty.is_empty_blob());
    }

    #[test]
    fn shorten_cuts_on_char_boundaries() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(200);
        let cut = shorten(&long);
        assert!(cut.ends_with("...") && cut.len() <= MAX_QUOTED + 3);
    }
}
