//! ByteStream resource names: the paths that name a blob in REAPI `Read` and `Write` calls.
//!
//! Owns parsing and formatting of
//! `[{instance}/]blobs/[{function}/]{hash}/{size}[/{metadata}]`,
//! `[{instance}/]compressed-blobs/{compressor}/[{function}/]{hash}/{size}[/{metadata}]`
//! and their upload forms prefixed with `uploads/{uuid}/`, plus the rules for instance names,
//! and the subject that names a missing blob in a REAPI `PreconditionFailure`
//! ([`missing_subject`]). Optional trailing metadata is accepted and ignored. Does not know
//! which instances exist nor which compressors a store serves.
//!
//! Instance names may span several segments but none of them may be a reserved keyword
//! (upstream rule), so the first reserved segment always ends the instance name: a name
//! parses in exactly one way, even when its metadata contains `blobs`.

use thiserror::Error;

use crate::digest::{Digest, DigestError, DigestFunction, shorten};

/// Path segments that an instance name may not contain (REAPI ByteStream section).
pub const RESERVED_SEGMENTS: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// Longest upload id accepted.
const MAX_UPLOAD_ID: usize = 128;

/// How a blob is encoded on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compressor {
    /// Plain bytes (`blobs/...`).
    Identity,
    /// zstd frames (`compressed-blobs/zstd/...`).
    Zstd,
}

/// REAPI `Compressor.Value` numbers.
const PROTO_IDENTITY: i32 = 0;
const PROTO_ZSTD: i32 = 1;

impl Compressor {
    /// Lowercase name as in resource names.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Identity => "identity",
            Compressor::Zstd => "zstd",
        }
    }

    /// The REAPI `Compressor.Value` number.
    pub fn to_proto(self) -> i32 {
        match self {
            Compressor::Identity => PROTO_IDENTITY,
            Compressor::Zstd => PROTO_ZSTD,
        }
    }

    /// From a REAPI `Compressor.Value` number; `None` for compressors Tessera does not speak
    /// (DEFLATE, BROTLI, unknown).
    pub fn from_proto(value: i32) -> Option<Self> {
        match value {
            PROTO_IDENTITY => Some(Compressor::Identity),
            PROTO_ZSTD => Some(Compressor::Zstd),
            _ => None,
        }
    }
}

/// A parsed `ReadRequest.resource_name`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReadResource {
    /// The instance, possibly empty, possibly with slashes.
    pub instance_name: String,
    /// `Identity` for `blobs/`, otherwise the compressor of `compressed-blobs/`.
    pub compressor: Compressor,
    /// The (uncompressed) blob.
    pub digest: Digest,
}

/// A parsed `WriteRequest.resource_name`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WriteResource {
    /// The instance, possibly empty, possibly with slashes.
    pub instance_name: String,
    /// The client's upload id (`uuid` upstream); only `[A-Za-z0-9._-]`, never `.` or `..`.
    pub upload_id: String,
    /// `Identity` for `blobs/`, otherwise the compressor of `compressed-blobs/`.
    pub compressor: Compressor,
    /// The (uncompressed) blob.
    pub digest: Digest,
}

/// Why a resource name or instance name was refused. Every variant is a client error.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResourceError {
    /// The instance name breaks a rule.
    #[error("invalid instance name \"{name}\": {reason}")]
    InvalidInstanceName {
        /// The offending instance name, cut if very long.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The name has no `blobs` or `compressed-blobs` segment where one belongs.
    #[error("resource name \"{name}\" has no {expected} segment")]
    MissingAnchor {
        /// The offending resource name, cut if very long.
        name: String,
        /// What was looked for.
        expected: &'static str,
    },
    /// A reserved segment other than the one expected ends the instance name.
    #[error("unexpected segment \"{found}\" in resource name, expected {expected}")]
    UnexpectedSegment {
        /// The segment found.
        found: String,
        /// What belongs there.
        expected: &'static str,
    },
    /// The name ends before a required part.
    #[error("resource name \"{name}\" ends before its {part}")]
    Truncated {
        /// The offending resource name, cut if very long.
        name: String,
        /// The missing part.
        part: &'static str,
    },
    /// The upload id is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid upload id \"{0}\"")]
    InvalidUploadId(String),
    /// `compressed-blobs/` names a compressor Tessera does not serve (or `identity`).
    #[error("unsupported compressor \"{0}\"")]
    UnsupportedCompressor(String),
    /// The digest-function segment names a function Tessera does not implement.
    #[error("unsupported digest function \"{0}\"")]
    UnsupportedDigestFunction(String),
    /// The size segment is not a non-negative decimal `int64`.
    #[error("invalid size \"{value}\": {reason}")]
    InvalidSize {
        /// The offending size segment, cut if very long.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A slash follows the size but no metadata does.
    #[error("resource name \"{0}\" has empty metadata after the size")]
    EmptyMetadata(String),
    /// The hash is malformed.
    #[error("invalid digest in resource name: {0}")]
    Digest(#[from] DigestError),
}

/// Checks an instance name: empty, or `/`-separated non-empty segments, none of them `.`,
/// `..` or a reserved keyword, and no control characters.
pub fn validate_instance_name(name: &str) -> Result<(), ResourceError> {
    let invalid = |reason| ResourceError::InvalidInstanceName {
        name: shorten(name),
        reason,
    };
    if name.is_empty() {
        return Ok(());
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    if name.starts_with('/') {
        return Err(invalid("starts with '/'"));
    }
    if name.ends_with('/') {
        return Err(invalid("ends with '/'"));
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(invalid("has an empty segment"));
        }
        if segment == "." || segment == ".." {
            return Err(invalid("has a '.' or '..' segment"));
        }
        if RESERVED_SEGMENTS.contains(&segment) {
            return Err(invalid("has a reserved segment"));
        }
    }
    Ok(())
}

/// Parses a `ReadRequest.resource_name`.
pub fn parse_read(name: &str) -> Result<ReadResource, ResourceError> {
    let segments: Vec<&str> = name.split('/').collect();
    let anchor = first_reserved(&segments).ok_or_else(|| ResourceError::MissingAnchor {
        name: shorten(name),
        expected: "blobs or compressed-blobs",
    })?;
    let instance_name = instance_before(&segments, anchor)?;
    let (compressor, digest) = parse_blob_part(name, &segments[anchor..])?;
    Ok(ReadResource {
        instance_name,
        compressor,
        digest,
    })
}

/// Parses a `WriteRequest.resource_name`.
pub fn parse_write(name: &str) -> Result<WriteResource, ResourceError> {
    let segments: Vec<&str> = name.split('/').collect();
    let anchor = first_reserved(&segments).ok_or_else(|| ResourceError::MissingAnchor {
        name: shorten(name),
        expected: "uploads",
    })?;
    if segments[anchor] != "uploads" {
        return Err(ResourceError::UnexpectedSegment {
            found: segments[anchor].to_owned(),
            expected: "uploads",
        });
    }
    let instance_name = instance_before(&segments, anchor)?;
    let upload_id = *segments
        .get(anchor + 1)
        .ok_or_else(|| ResourceError::Truncated {
            name: shorten(name),
            part: "upload id",
        })?;
    validate_upload_id(upload_id)?;
    let rest = &segments[anchor + 2..];
    if rest.is_empty() {
        return Err(ResourceError::Truncated {
            name: shorten(name),
            part: "blobs segment",
        });
    }
    let (compressor, digest) = parse_blob_part(name, rest)?;
    Ok(WriteResource {
        instance_name,
        upload_id: upload_id.to_owned(),
        compressor,
        digest,
    })
}

/// Formats a read resource name; SHA-256 is left implicit, as upstream requires.
pub fn format_read(r: &ReadResource) -> String {
    let mut out = String::new();
    push_instance(&mut out, &r.instance_name);
    push_blob_part(&mut out, r.compressor, &r.digest);
    out
}

/// Formats a write resource name; SHA-256 is left implicit, as upstream requires.
pub fn format_write(w: &WriteResource) -> String {
    let mut out = String::new();
    push_instance(&mut out, &w.instance_name);
    out.push_str("uploads/");
    out.push_str(&w.upload_id);
    out.push('/');
    push_blob_part(&mut out, w.compressor, &w.digest);
    out
}

/// The subject of a REAPI `PreconditionFailure` violation of type `MISSING` for `digest`: its
/// ByteStream read resource name without an instance name, `blobs/{hash}/{size}` for SHA-256
/// and `blobs/{function}/{hash}/{size}` for the others, as [`format_read`] writes it. REAPI
/// asks for exactly this so that clients re-upload what is missing; one function builds it so
/// every place that reports missing blobs names them alike.
pub fn missing_subject(digest: &Digest) -> String {
    format_read(&ReadResource {
        instance_name: String::new(),
        compressor: Compressor::Identity,
        digest: *digest,
    })
}

fn push_instance(out: &mut String, instance_name: &str) {
    if !instance_name.is_empty() {
        out.push_str(instance_name);
        out.push('/');
    }
}

fn push_blob_part(out: &mut String, compressor: Compressor, digest: &Digest) {
    match compressor {
        Compressor::Identity => out.push_str("blobs/"),
        Compressor::Zstd => {
            out.push_str("compressed-blobs/");
            out.push_str(compressor.name());
            out.push('/');
        }
    }
    if digest.function != DigestFunction::Sha256 {
        out.push_str(digest.function.name());
        out.push('/');
    }
    out.push_str(&digest.hash_hex());
    out.push('/');
    out.push_str(&digest.size_bytes.to_string());
}

/// The instance name before the segment at `anchor`, validated. Checked on the segments, not
/// on their join alone, so that a leading `/` (an empty first segment) is caught too.
fn instance_before(segments: &[&str], anchor: usize) -> Result<String, ResourceError> {
    let instance_name = segments[..anchor].join("/");
    if anchor > 0 && instance_name.is_empty() {
        return Err(ResourceError::InvalidInstanceName {
            name: String::new(),
            reason: "has an empty segment",
        });
    }
    validate_instance_name(&instance_name)?;
    Ok(instance_name)
}

fn first_reserved(segments: &[&str]) -> Option<usize> {
    segments.iter().position(|s| RESERVED_SEGMENTS.contains(s))
}

fn validate_upload_id(id: &str) -> Result<(), ResourceError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_UPLOAD_ID
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ResourceError::InvalidUploadId(shorten(id)))
    }
}

/// Parses `blobs/...` or `compressed-blobs/...` up to and including the size; whatever
/// follows the size is metadata and ignored, but must not be empty.
fn parse_blob_part(name: &str, segments: &[&str]) -> Result<(Compressor, Digest), ResourceError> {
    let truncated = |part| ResourceError::Truncated {
        name: shorten(name),
        part,
    };
    let mut rest = segments;
    let compressor = match rest {
        ["blobs", tail @ ..] => {
            rest = tail;
            Compressor::Identity
        }
        ["compressed-blobs", tail @ ..] => {
            let (compressor, tail) = tail.split_first().ok_or_else(|| truncated("compressor"))?;
            rest = tail;
            match *compressor {
                "zstd" => Compressor::Zstd,
                // Upstream: the compressor of `compressed-blobs` is anything but `identity`.
                other => return Err(ResourceError::UnsupportedCompressor(shorten(other))),
            }
        }
        [other, ..] => {
            return Err(ResourceError::UnexpectedSegment {
                found: shorten(other),
                expected: "blobs or compressed-blobs",
            });
        }
        [] => return Err(truncated("blobs segment")),
    };

    let first = *rest.first().ok_or_else(|| truncated("hash"))?;
    let function = match DigestFunction::from_name(first) {
        // Names are lowercase on the wire; `SHA256` is not a function name there.
        Some(f) if f.name() == first => {
            rest = &rest[1..];
            f
        }
        _ => {
            if first.len() != 64 && rest.get(1).is_some_and(|s| looks_like_hash(s)) {
                return Err(ResourceError::UnsupportedDigestFunction(shorten(first)));
            }
            DigestFunction::Sha256
        }
    };

    let hash = *rest.first().ok_or_else(|| truncated("hash"))?;
    // The hash is checked before the size so that `blobs/` complains about the hash.
    Digest::parse(function, hash, 0)?;
    let size = *rest.get(1).ok_or_else(|| truncated("size"))?;
    let digest = Digest::parse(function, hash, parse_size(size)?)?;

    let metadata = &rest[2..];
    if metadata.len() == 1 && metadata[0].is_empty() {
        return Err(ResourceError::EmptyMetadata(shorten(name)));
    }
    Ok((compressor, digest))
}

fn looks_like_hash(segment: &str) -> bool {
    segment.len() == 64 && segment.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A size segment: decimal digits only (no sign, no spaces), fitting an `int64`.
fn parse_size(segment: &str) -> Result<i64, ResourceError> {
    let invalid = |reason| ResourceError::InvalidSize {
        value: shorten(segment),
        reason,
    };
    if segment.is_empty() {
        return Err(invalid("empty"));
    }
    if segment.starts_with('-')
        && segment.len() > 1
        && segment[1..].bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid("must not be negative"));
    }
    if !segment.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("expected decimal digits"));
    }
    segment.parse::<i64>().map_err(|_| invalid("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const H2: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    fn sha(hash: &str, size: i64) -> Digest {
        Digest::parse(DigestFunction::Sha256, hash, size).unwrap()
    }

    fn blake(hash: &str, size: i64) -> Digest {
        Digest::parse(DigestFunction::Blake3, hash, size).unwrap()
    }

    fn read(instance: &str, compressor: Compressor, digest: Digest) -> ReadResource {
        ReadResource {
            instance_name: instance.to_owned(),
            compressor,
            digest,
        }
    }

    fn write(instance: &str, id: &str, compressor: Compressor, digest: Digest) -> WriteResource {
        WriteResource {
            instance_name: instance.to_owned(),
            upload_id: id.to_owned(),
            compressor,
            digest,
        }
    }

    #[test]
    fn missing_subjects_name_sha256_implicitly_and_other_functions_explicitly() {
        assert_eq!(missing_subject(&sha(H, 7)), format!("blobs/{H}/7"));
        assert_eq!(
            missing_subject(&blake(H2, 12)),
            format!("blobs/blake3/{H2}/12")
        );
        // A subject is a read resource name: it parses back to the same blob.
        for digest in [sha(H, 7), blake(H2, 12)] {
            let parsed = parse_read(&missing_subject(&digest)).unwrap();
            assert_eq!(parsed, read("", Compressor::Identity, digest));
        }
    }

    #[test]
    fn read_accepts() {
        use Compressor::*;
        let cases: Vec<(String, ReadResource)> = vec![
            (format!("blobs/{H}/0"), read("", Identity, sha(H, 0))),
            (
                format!("main/blobs/{H}/42"),
                read("main", Identity, sha(H, 42)),
            ),
            (
                format!("a/b/c/blobs/{H}/42"),
                read("a/b/c", Identity, sha(H, 42)),
            ),
            (format!("blobs/sha256/{H}/1"), read("", Identity, sha(H, 1))),
            (
                format!("blobs/blake3/{H2}/1"),
                read("", Identity, blake(H2, 1)),
            ),
            (
                format!("i/compressed-blobs/zstd/{H}/7"),
                read("i", Zstd, sha(H, 7)),
            ),
            (
                format!("x/y/compressed-blobs/zstd/blake3/{H2}/7"),
                read("x/y", Zstd, blake(H2, 7)),
            ),
            // An instance named like a hash, or like a digest function.
            (format!("{H}/blobs/{H2}/3"), read(H, Identity, sha(H2, 3))),
            (
                format!("blake3/blobs/{H}/3"),
                read("blake3", Identity, sha(H, 3)),
            ),
            (
                format!("{H}/5/blobs/{H}/5"),
                read(&format!("{H}/5"), Identity, sha(H, 5)),
            ),
            // Metadata after the size, even metadata that looks like another blob.
            (format!("blobs/{H}/9/meta"), read("", Identity, sha(H, 9))),
            (
                format!("blobs/{H}/9/blobs/{H2}/10"),
                read("", Identity, sha(H, 9)),
            ),
            (
                format!("i/blobs/{H}/9/a//b/"),
                read("i", Identity, sha(H, 9)),
            ),
            (
                format!("blobs/{H}/{}", i64::MAX),
                read("", Identity, sha(H, i64::MAX)),
            ),
            // Leading zeros are the same number.
            (format!("blobs/{H}/007"), read("", Identity, sha(H, 7))),
            // Keywords are case-sensitive: `Blobs` is an ordinary instance segment.
            (
                format!("Blobs/blobs/{H}/1"),
                read("Blobs", Identity, sha(H, 1)),
            ),
        ];
        for (name, want) in cases {
            assert_eq!(parse_read(&name), Ok(want), "{name}");
        }
    }

    #[test]
    fn read_rejects() {
        let huge = "x".repeat(1 << 20);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no blobs or compressed-blobs segment"),
            (
                "just/an/instance".into(),
                "no blobs or compressed-blobs segment",
            ),
            (format!("{H}/0"), "no blobs or compressed-blobs segment"),
            ("blobs".into(), "ends before its hash"),
            ("blobs/".into(), "invalid hash"),
            (format!("blobs/{H}"), "ends before its size"),
            (format!("blobs/{H}/"), "invalid size \"\": empty"),
            (format!("blobs/{H}/abc"), "expected decimal digits"),
            (format!("blobs/{H}/-1"), "must not be negative"),
            (format!("blobs/{H}/+1"), "expected decimal digits"),
            (format!("blobs/{H}/1e3"), "expected decimal digits"),
            (format!("blobs/{H}/ 1"), "expected decimal digits"),
            (format!("blobs/{H}/9223372036854775808"), "too large"),
            (format!("blobs/{H}/99999999999999999999999"), "too large"),
            (format!("blobs/{H}/5/"), "empty metadata"),
            (format!("blobs/{}/1", H.to_uppercase()), "lowercase"),
            (format!("blobs/{}/1", &H[..63]), "64 hexadecimal"),
            (format!("blobs/{H}0/1"), "64 hexadecimal"),
            (
                format!("blobs/BLAKE3/{H}/1"),
                "unsupported digest function \"BLAKE3\"",
            ),
            (
                format!("blobs/md5/{H}/1"),
                "unsupported digest function \"md5\"",
            ),
            (
                format!("blobs/sha1/{H}/1"),
                "unsupported digest function \"sha1\"",
            ),
            ("blobs/blake3".into(), "ends before its hash"),
            (format!("blobs/blake3/{H}"), "ends before its size"),
            (
                format!("compressed-blobs/identity/{H}/1"),
                "unsupported compressor \"identity\"",
            ),
            (
                format!("compressed-blobs/deflate/{H}/1"),
                "unsupported compressor \"deflate\"",
            ),
            (
                format!("compressed-blobs/ZSTD/{H}/1"),
                "unsupported compressor \"ZSTD\"",
            ),
            ("compressed-blobs".into(), "ends before its compressor"),
            ("compressed-blobs/zstd".into(), "ends before its hash"),
            (format!("compressed-blobs/{H}/1"), "unsupported compressor"),
            (format!("/blobs/{H}/1"), "has an empty segment"),
            (format!("/i/blobs/{H}/1"), "starts with '/'"),
            (format!("a//b/blobs/{H}/1"), "has an empty segment"),
            (format!("//blobs/{H}/1"), "starts with '/'"),
            (
                format!("a/blobs/{H}/1").replacen('a', "", 1),
                "has an empty segment",
            ),
            (format!("../blobs/{H}/1"), "'.' or '..'"),
            (format!("a/./blobs/{H}/1"), "'.' or '..'"),
            (format!("a\nb/blobs/{H}/1"), "control character"),
            (
                format!("uploads/u/blobs/{H}/1"),
                "unexpected segment \"uploads\"",
            ),
            (
                format!("actions/blobs/{H}/1"),
                "unexpected segment \"actions\"",
            ),
            (
                format!("i/operations/x/blobs/{H}/1"),
                "unexpected segment \"operations\"",
            ),
            (format!("{huge}/{huge}"), "no blobs"),
        ];
        for (name, want) in cases {
            let err = parse_read(&name).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:.100}: got {err:?}, want {want:?}",
                name
            );
            assert!(err.len() < 400, "message not cut: {err:.100}");
        }
    }

    #[test]
    fn write_accepts() {
        use Compressor::*;
        let uuid = "3f2a6c1e-8b7d-4e2a-9c1f-0a1b2c3d4e5f";
        let cases: Vec<(String, WriteResource)> = vec![
            (
                format!("uploads/{uuid}/blobs/{H}/10"),
                write("", uuid, Identity, sha(H, 10)),
            ),
            (
                format!("a/b/uploads/{uuid}/blobs/blake3/{H2}/10/meta/data"),
                write("a/b", uuid, Identity, blake(H2, 10)),
            ),
            (
                format!("i/uploads/u1/compressed-blobs/zstd/{H}/10"),
                write("i", "u1", Zstd, sha(H, 10)),
            ),
            (
                format!("i/uploads/u1/compressed-blobs/zstd/blake3/{H2}/10/m"),
                write("i", "u1", Zstd, blake(H2, 10)),
            ),
            // Metadata holding keywords does not confuse the parser.
            (
                format!("uploads/u/blobs/{H}/1/uploads/v/blobs/{H2}/2"),
                write("", "u", Identity, sha(H, 1)),
            ),
            (
                format!("{H}/uploads/x.y_Z-1/blobs/{H}/1"),
                write(H, "x.y_Z-1", Identity, sha(H, 1)),
            ),
        ];
        for (name, want) in cases {
            assert_eq!(parse_write(&name), Ok(want), "{name}");
        }
    }

    #[test]
    fn write_rejects() {
        let long_id = "a".repeat(MAX_UPLOAD_ID + 1);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no uploads segment"),
            (format!("i/{H}/1"), "no uploads segment"),
            (format!("blobs/{H}/1"), "unexpected segment \"blobs\""),
            (
                format!("i/blobs/uploads/u/blobs/{H}/1"),
                "unexpected segment \"blobs\"",
            ),
            ("uploads".into(), "ends before its upload id"),
            ("uploads/u".into(), "ends before its blobs segment"),
            (format!("uploads//blobs/{H}/1"), "invalid upload id \"\""),
            (
                format!("uploads/../blobs/{H}/1"),
                "invalid upload id \"..\"",
            ),
            (format!("uploads/./blobs/{H}/1"), "invalid upload id \".\""),
            (format!("uploads/a b/blobs/{H}/1"), "invalid upload id"),
            (format!("uploads/a\\b/blobs/{H}/1"), "invalid upload id"),
            (
                format!("uploads/{long_id}/blobs/{H}/1"),
                "invalid upload id",
            ),
            // `uploads` without an id: the id would be `blobs`, then no blobs segment.
            (format!("uploads/blobs/{H}/1"), "unexpected segment"),
            (format!("uploads/u/{H}/1"), "unexpected segment"),
            (format!("uploads/u/blobs/{H}"), "ends before its size"),
            (format!("uploads/u/blobs/{H}/x"), "expected decimal digits"),
            (format!("uploads/u/blobs/{H}/-5"), "must not be negative"),
            (
                format!("uploads/u/compressed-blobs/brotli/{H}/1"),
                "unsupported compressor",
            ),
            (format!("a//uploads/u/blobs/{H}/1"), "ends with '/'"),
            (format!("/uploads/u/blobs/{H}/1"), "empty segment"),
            (
                format!("a/actionResults/uploads/u/blobs/{H}/1"),
                "unexpected segment",
            ),
            (
                format!("uploads/u/blobs/{}/1", H.to_uppercase()),
                "lowercase",
            ),
        ];
        for (name, want) in cases {
            let err = parse_write(&name).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn round_trips() {
        let digests = [sha(H, 0), sha(H2, 123), blake(H, 5), blake(H2, i64::MAX)];
        for instance in ["", "main", "a/b/c", H, "blake3", "sha256/x"] {
            for compressor in [Compressor::Identity, Compressor::Zstd] {
                for digest in digests {
                    let r = read(instance, compressor, digest);
                    let name = format_read(&r);
                    assert_eq!(parse_read(&name), Ok(r), "{name}");

                    let w = write(instance, "3f2a-uuid", compressor, digest);
                    let name = format_write(&w);
                    assert_eq!(parse_write(&name), Ok(w), "{name}");
                }
            }
        }
        assert_eq!(
            format_read(&read("i", Compressor::Zstd, blake(H, 5))),
            format!("i/compressed-blobs/zstd/blake3/{H}/5")
        );
        assert_eq!(
            format_write(&write("", "u", Compressor::Identity, sha(H, 5))),
            format!("uploads/u/blobs/{H}/5")
        );
    }

    #[test]
    fn instance_names() {
        for ok in [
            "",
            "a",
            "a/b",
            "main-instance_1",
            "a.b",
            "...",
            "Blobs",
            "x/compressed",
        ] {
            assert_eq!(validate_instance_name(ok), Ok(()), "{ok}");
        }
        for bad in RESERVED_SEGMENTS {
            assert!(validate_instance_name(bad).is_err(), "{bad}");
            assert!(
                validate_instance_name(&format!("a/{bad}/b")).is_err(),
                "{bad}"
            );
        }
        for bad in ["/", "/a", "a/", "a//b", ".", "..", "a/../b", "a\0b", "a\tb"] {
            let err = validate_instance_name(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid instance name"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn compressor_proto() {
        for c in [Compressor::Identity, Compressor::Zstd] {
            assert_eq!(Compressor::from_proto(c.to_proto()), Some(c));
        }
        assert_eq!(Compressor::from_proto(2), None);
        assert_eq!(Compressor::from_proto(-1), None);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let pieces = [
            "",
            "/",
            "blobs",
            "uploads",
            "compressed-blobs",
            "zstd",
            "identity",
            "blake3",
            "sha256",
            H,
            "1",
            "-1",
            "x",
            "é",
            "\0",
            "..",
        ];
        // Every 4-piece combination, joined with and without slashes.
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let slashed = format!("{a}/{b}/{c}/{d}");
                        let glued = format!("{a}{b}{c}{d}");
                        for name in [slashed, glued] {
                            if let Ok(r) = parse_read(&name) {
                                validate_instance_name(&r.instance_name).unwrap();
                            }
                            if let Ok(w) = parse_write(&name) {
                                validate_instance_name(&w.instance_name).unwrap();
                            }
                        }
                    }
                }
            }
        }
    }
}
