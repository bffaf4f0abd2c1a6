//! Masking a lease's secret values (`tessera run --secret-env`) in everything that leaves the
//! agent: every occurrence of a value becomes `***`, the way CI systems print masked secrets.
//!
//! The lease pipeline masks stdout, stderr and output files in place before they are hashed
//! (see `outputs`), and a step masks its test results and report field by field before they
//! are encoded (see `step`), so JSON escaping cannot hide a value from the mask and the mask
//! cannot break the JSON.
//!
//! Matching is on bytes. Every byte of every occurrence of every value is masked: where values
//! overlap (one inside another, or one running into the next) the union of their occurrences
//! becomes a single `***`, so the longest value always wins and no part of one is left
//! showing. Values shorter than [`MIN_MASKED_LEN`] bytes are not masked: a value such as `1`
//! or `yes` would hit all over ordinary output and make it unreadable, while hiding nothing
//! anyone could not guess.
//!
//! Files are masked as a stream, in chunks, holding back the last `longest value - 1` bytes of
//! each chunk so that a value split across two chunks is still found; memory stays bounded
//! whatever the file's size.
//!
//! Does not decide what is masked (see `pipeline`), and does not hide a value a test spells
//! differently (encoded, reversed, split over several writes of a file it rewrites).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a secret's occurrence is replaced with.
pub const MASK: &[u8] = b"***";

/// Values shorter than this (in bytes) are not masked: too many false hits.
pub const MIN_MASKED_LEN: usize = 4;

/// Bytes read from a file at a time while masking it.
const CHUNK_BYTES: usize = 1024 * 1024;

/// The secret values of one lease, ready to mask with.
#[derive(Clone, Default)]
pub struct SecretMask {
    /// Distinct values of at least [`MIN_MASKED_LEN`] bytes.
    values: Vec<Vec<u8>>,
    /// The length of the longest value (0 when there are none).
    longest: usize,
}

impl std::fmt::Debug for SecretMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values themselves.
        f.debug_struct("SecretMask")
            .field("values", &self.values.len())
            .finish()
    }
}

impl SecretMask {
    /// A mask for `values`; those shorter than [`MIN_MASKED_LEN`] bytes are left out.
    pub fn new<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Self {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| v.as_ref().to_vec())
            .filter(|v| v.len() >= MIN_MASKED_LEN)
            .collect();
        values.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let longest = values.first().map_or(0, Vec::len);
        SecretMask { values, longest }
    }

    /// A mask for the secret values `lease` carries.
    pub fn of_lease(lease: &tessera_proto::tessera::v1::Lease) -> Self {
        Self::new(lease.secrets.iter().map(|s| s.value.as_bytes()))
    }

    /// True if there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `bytes` with every occurrence of a value masked.
    pub fn mask(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut stream = self.stream();
        stream.push(bytes, &mut out);
        stream.finish(&mut out);
        out
    }

    /// `text` with every occurrence of a value masked.
    pub fn mask_str(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_owned();
        }
        // A value that is valid UTF-8 only ever matches whole characters of valid UTF-8 text,
        // so the result is valid too; a value that is not cannot occur in `text`.
        match String::from_utf8(self.mask(text.as_bytes())) {
            Ok(masked) => masked,
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        }
    }

    /// Masks `text` where it is.
    pub fn mask_in_place(&self, text: &mut String) {
        if !self.is_empty() {
            *text = self.mask_str(text);
        }
    }

    /// A stream to mask bytes that arrive in pieces.
    pub fn stream(&self) -> MaskStream<'_> {
        MaskStream {
            mask: self,
            carry: Vec::new(),
            pending: 0,
            masked: false,
        }
    }

    /// Masks the regular file at `path`: if it holds a value, it is replaced (by a rename, so
    /// that a hard link to it elsewhere, such as the agent's blob cache, is not touched) with
    /// a masked copy of the same mode. True if it held one. Blocking.
    pub fn mask_file(&self, path: &Path) -> Result<bool, MaskError> {
        if self.is_empty() || !self.holds_value(path)? {
            return Ok(false);
        }
        let error = |op| {
            move |source| MaskError {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let mode = fs::metadata(path)
            .map_err(error("stat"))?
            .permissions()
            .mode();
        let copy = masked_copy_path(path);
        let written = self.write_masked(path, &copy, mode);
        let replaced = written.and_then(|()| {
            fs::rename(&copy, path).map_err(|source| MaskError {
                op: "replace with its masked copy",
                path: path.to_owned(),
                source,
            })
        });
        if replaced.is_err() {
            let _ = fs::remove_file(&copy);
        }
        replaced?;
        Ok(true)
    }

    /// Masks every regular file under `dir` (symlinks are not followed). How many held a
    /// value. Blocking.
    pub fn mask_tree(&self, dir: &Path) -> Result<usize, MaskError> {
        if self.is_empty() {
            return Ok(0);
        }
        let mut masked = 0;
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(&dir).map_err(|source| MaskError {
                op: "list",
                path: dir.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| MaskError {
                    op: "list",
                    path: dir.clone(),
                    source,
                })?;
                let path = entry.path();
                let kind = entry.file_type().map_err(|source| MaskError {
                    op: "stat",
                    path: path.clone(),
                    source,
                })?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() && self.mask_file(&path)? {
                    masked += 1;
                }
            }
        }
        Ok(masked)
    }

    /// Writes a masked copy of `path` to `copy` (a new file of mode `mode`).
    fn write_masked(&self, path: &Path, copy: &Path, mode: u32) -> Result<(), MaskError> {
        let error = |op, at: &Path| {
            let at = at.to_owned();
            move |source| MaskError {
                op,
                path: at,
                source,
            }
        };
        let mut reader = fs::File::open(path).map_err(error("open", path))?;
        let mut writer = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(copy)
            .map_err(error("create", copy))?;
        let mut stream = self.stream();
        let mut chunk = vec![0; CHUNK_BYTES];
        let mut out = Vec::with_capacity(CHUNK_BYTES + MASK.len());
        loop {
            let n = read_some(&mut reader, &mut chunk).map_err(error("read", path))?;
            if n == 0 {
                break;
            }
            stream.push(&chunk[..n], &mut out);
            writer.write_all(&out).map_err(error("write", copy))?;
            out.clear();
        }
        stream.finish(&mut out);
        writer.write_all(&out).map_err(error("write", copy))?;
        // The mode asked for at creation is cut by the umask.
        writer
            .set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(error("set the mode of", copy))
    }

    /// Whether the file at `path` holds a value: one read, nothing written.
    fn holds_value(&self, path: &Path) -> Result<bool, MaskError> {
        let error = |op| {
            move |source| MaskError {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let mut reader = fs::File::open(path).map_err(error("open"))?;
        let mut stream = self.stream();
        let mut chunk = vec![0; CHUNK_BYTES];
        let mut sink = Vec::with_capacity(CHUNK_BYTES + MASK.len());
        loop {
            let n = read_some(&mut reader, &mut chunk).map_err(error("read"))?;
            if n == 0 {
                break;
            }
            stream.push(&chunk[..n], &mut sink);
            sink.clear();
            if stream.masked {
                return Ok(true);
            }
        }
        Ok(stream.finish(&mut sink))
    }

    /// The spans `[start, end)` of every occurrence in `buf` of every value starting before
    /// `before`, sorted by start.
    fn occurrences(&self, buf: &[u8], before: usize) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        for value in &self.values {
            let first = value[0];
            let last_start = buf.len().saturating_sub(value.len() - 1).min(before);
            for start in 0..last_start {
                if buf[start] == first && buf[start..].starts_with(value) {
                    spans.push((start, start + value.len()));
                }
            }
        }
        spans.sort_unstable();
        spans
    }
}

/// A new name beside `path` for its masked copy.
fn masked_copy_path(path: &Path) -> PathBuf {
    let name = format!(".tessera-masked-{:016x}", rand::random::<u64>());
    path.with_file_name(name)
}

fn read_some(reader: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Masks bytes that arrive in pieces: [`MaskStream::push`] each piece, then
/// [`MaskStream::finish`]. The output is the same however the input is split.
#[derive(Debug)]
pub struct MaskStream<'a> {
    mask: &'a SecretMask,
    /// Input held back: it may begin a value that the next piece completes.
    carry: Vec<u8>,
    /// How many bytes at the start of `carry` belong to an occurrence whose `***` is already
    /// out.
    pending: usize,
    /// Whether anything was masked so far.
    masked: bool,
}

impl MaskStream<'_> {
    /// Masks what it can of `piece`, appending the result to `out`; holds back the end of it
    /// that may begin a value.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(piece);
        self.process(buf, false, out);
    }

    /// Masks what is held back, appending it to `out`; says whether anything was masked.
    pub fn finish(mut self, out: &mut Vec<u8>) -> bool {
        let buf = std::mem::take(&mut self.carry);
        self.process(buf, true, out);
        self.masked
    }

    /// Whether anything was masked so far.
    pub fn masked(&self) -> bool {
        self.masked
    }

    fn process(&mut self, buf: Vec<u8>, last: bool, out: &mut Vec<u8>) {
        if self.mask.is_empty() {
            out.extend_from_slice(&buf);
            return;
        }
        // Every occurrence starting before `cut` ends inside `buf`; one starting later may
        // not, so the bytes from `cut` on wait for the next piece.
        let cut = if last {
            buf.len()
        } else {
            buf.len().saturating_sub(self.mask.longest - 1)
        };
        let mut spans = Vec::new();
        if self.pending > 0 {
            spans.push((0, self.pending));
        }
        spans.extend(self.mask.occurrences(&buf, cut));
        let continues = self.pending > 0;
        let mut pos = 0;
        let mut pending = 0;
        let mut spans = spans.into_iter().peekable();
        let mut first = true;
        while let Some((start, mut end)) = spans.next() {
            // Overlapping occurrences become one.
            while let Some(&(next_start, next_end)) = spans.peek() {
                if next_start >= end {
                    break;
                }
                end = end.max(next_end);
                spans.next();
            }
            out.extend_from_slice(&buf[pos..start]);
            if !(first && continues) {
                out.extend_from_slice(MASK);
                self.masked = true;
            }
            first = false;
            pos = end.min(cut);
            pending = end.saturating_sub(cut);
        }
        out.extend_from_slice(&buf[pos..cut]);
        self.pending = pending;
        self.carry = buf[cut..].to_vec();
    }
}

/// A file could not be masked.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} {} while masking secret values: {source}", .path.display())]
pub struct MaskError {
    /// What was being done.
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(values: &[&str], text: &str) -> String {
        SecretMask::new(values).mask_str(text)
    }

    /// `text` masked through a stream fed `piece` bytes at a time.
    fn streamed(mask: &SecretMask, text: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stream = mask.stream();
        for chunk in text.chunks(piece) {
            stream.push(chunk, &mut out);
        }
        stream.finish(&mut out);
        out
    }

    #[test]
    fn every_occurrence_becomes_stars() {
        assert_eq!(
            masked(&["hunter22"], "pw=hunter22; again hunter22."),
            "pw=***; again ***."
        );
        assert_eq!(masked(&["hunter22"], "hunter22"), "***");
        assert_eq!(masked(&["hunter22"], "nothing here"), "nothing here");
        assert_eq!(masked(&[], "hunter22"), "hunter22");
    }

    #[test]
    fn short_values_are_not_masked() {
        // Three bytes: would hit ordinary words; four bytes and up: masked.
        assert_eq!(masked(&["abc", "wxyz"], "abc wxyz"), "abc ***");
        assert!(SecretMask::new(["abc", ""]).is_empty());
    }

    #[test]
    fn the_longest_of_overlapping_values_wins() {
        // One value inside another: the whole longer one goes, not a part of it.
        assert_eq!(
            masked(&["token", "token-long-value"], "a token-long-value b"),
            "a *** b"
        );
        assert_eq!(
            masked(&["token-long-value", "token"], "token and token-long-value"),
            "*** and ***"
        );
        // Values that run into each other: one mask over both, nothing left showing.
        assert_eq!(masked(&["abcdef", "defghi"], "xabcdefghix"), "x***x");
        // An occurrence overlapping itself.
        assert_eq!(masked(&["aaaa"], "aaaaaa!"), "***!");
        // Back to back: two.
        assert_eq!(masked(&["abcd"], "abcdabcd"), "******");
    }

    #[test]
    fn masking_is_byte_exact() {
        let mask = SecretMask::new([b"\xffsec\x00ret\n".as_slice()]);
        assert_eq!(mask.mask(b"a\xffsec\x00ret\nb"), b"a***b");
        assert_eq!(mask.mask(b"a\xffsec\x00ret b"), b"a\xffsec\x00ret b");
        // Multibyte characters stay whole.
        assert_eq!(masked(&["größe"], "die größe: größer"), "die ***: ***r");
        // Case matters.
        assert_eq!(masked(&["Secret"], "secret Secret"), "secret ***");
    }

    #[test]
    fn a_stream_masks_values_split_across_pieces() {
        let mask = SecretMask::new(["s3cret-value", "cret", "value-2"]);
        let text = b"s3cret-value-2 then s3cret-value at the end s3cret-valu".repeat(3);
        let whole = mask.mask(&text);
        assert_eq!(
            String::from_utf8_lossy(&whole),
            "*** then *** at the end s3***-valu".repeat(3)
        );
        // Every split point, every piece size: the same bytes.
        for piece in 1..=text.len() {
            assert_eq!(streamed(&mask, &text, piece), whole, "pieces of {piece}");
        }
    }

    #[test]
    fn a_value_at_the_edges_of_a_piece_is_masked() {
        let mask = SecretMask::new(["0123456789"]);
        for at in 0..40 {
            let mut text = vec![b'.'; 40];
            text.splice(at..at, b"0123456789".iter().copied());
            let expected: Vec<u8> = [&text[..at], b"***", &text[at + 10..]].concat();
            for piece in [1, 3, 9, 10, 11, 17, 50] {
                assert_eq!(
                    streamed(&mask, &text, piece),
                    expected,
                    "at {at}, pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn files_are_replaced_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.txt");
        let link = dir.path().join("cache-link");
        fs::write(&file, "key=s3cret-value\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o751)).unwrap();
        // A hard link, as the agent's blob cache keeps for inputs.
        fs::hard_link(&file, &link).unwrap();
        let mask = SecretMask::new(["s3cret-value"]);
        assert!(mask.mask_file(&file).unwrap());
        assert_eq!(fs::read_to_string(&file).unwrap(), "key=***\n");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
            0o751
        );
        assert_eq!(fs::read_to_string(&link).unwrap(), "key=s3cret-value\n");
        // Nothing to mask: left alone.
        assert!(!mask.mask_file(&file).unwrap());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no copies left behind");
    }

    #[test]
    fn large_files_are_masked_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        let value = b"s3cret-value";
        // One occurrence straddling the first chunk boundary, one at the very end.
        let mut bytes = vec![b'x'; CHUNK_BYTES - 5];
        bytes.extend_from_slice(value);
        bytes.extend(std::iter::repeat_n(b'y', CHUNK_BYTES));
        bytes.extend_from_slice(value);
        fs::write(&file, &bytes).unwrap();
        let mask = SecretMask::new([value]);
        assert!(mask.mask_file(&file).unwrap());
        let after = fs::read(&file).unwrap();
        assert_eq!(after.len(), bytes.len() - 2 * (value.len() - 3));
        assert!(!after.windows(value.len()).any(|w| w == value));
        assert_eq!(after.windows(3).filter(|w| *w == b"***").count(), 2);
    }

    #[test]
    fn trees_are_masked_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tree = dir.path().join("out");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/deep"), "s3cret-value").unwrap();
        fs::write(tree.join("plain"), "nothing").unwrap();
        fs::write(outside.path().join("theirs"), "s3cret-value").unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("away")).unwrap();
        let mask = SecretMask::new(["s3cret-value"]);
        assert_eq!(mask.mask_tree(&tree).unwrap(), 1);
        assert_eq!(fs::read_to_string(tree.join("a/b/deep")).unwrap(), "***");
        assert_eq!(
            fs::read_to_string(outside.path().join("theirs")).unwrap(),
            "s3cret-value"
        );
    }

    #[test]
    fn debug_never_shows_values() {
        let mask = SecretMask::new(["s3cret-value"]);
        assert!(!format!("{mask:?}").contains("s3cret"));
    }
}
