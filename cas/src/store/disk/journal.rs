//! The inline journal: what makes an inline blob survive a process crash without an fsync.
//!
//! A redb commit that is not durable does not survive even a process crash (redb reopens at
//! its last durable commit), while a file written with `write(2)` does: its pages are the
//! kernel's the moment the call returns. So before an inline blob is acknowledged, its key and
//! bytes are appended to a journal file (one `write` of the whole record, no fsync), and the
//! write returns; its record and bytes reach the metadata store in the next group commit (queued
//! again if that commit fails; readers get the bytes from the index meanwhile), and become
//! durable at the next flush. A journal is needed only until then:
//! [`DiskStore::checkpoint`](super::DiskStore::checkpoint) switches new records to a fresh
//! journal, commits and flushes everything queued, and deletes the journals that flush covered.
//! At start, every journal left by a crash is replayed (each record is hashed; a record cut
//! short or not matching its key ends that journal: a write killed mid-record was never
//! acknowledged) before the store serves anything.
//!
//! Ordering: a record is appended under the index lock, just before its blob is queued for the
//! next commit (in the same hold of the lock). A checkpoint switches journals and queues its
//! commit in one hold of the same lock, waits for every earlier commit, and deletes the journals
//! only if no blob inserted before the switch still waits for a successful commit, so every
//! record of a journal it deletes belongs to a blob committed before its flush.
//!
//! Bounds: a journal past [`RETIRE_BYTES`] is retired at once by a checkpoint on a thread of
//! its own, not at the next periodic one; replay reads one journal at a time, and makes each
//! durable and removes it before the next. A journal whose replay could not be committed (a full disk at start) is
//! kept for the next start and never retired by this process.
//!
//! A machine crash can lose the tail of a journal as it can lose a blob file written in the
//! same seconds (blob files are not fsynced either): a cache miss, which clients repair.
//!
//! Record: magic `TIJ1`, key length (u16 LE), key ([`index::key`]), content length (u32 LE),
//! content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::digest::Digest;
use crate::store::index;

const MAGIC: &[u8; 4] = b"TIJ1";
const PREFIX: &str = "journal-";
/// Longest key a record may carry (keys are 41 bytes today).
const MAX_KEY: usize = 256;
/// A journal this large is retired at once (by a checkpoint on its own thread) rather than at the
/// next periodic checkpoint.
pub(super) const RETIRE_BYTES: u64 = 64 * 1024 * 1024;

/// The journal files of one store, under their own directory.
pub(super) struct Journal {
    dir: PathBuf,
    active: Mutex<Active>,
    /// Journals up to this generation (exclusive) hold records not yet replayed: never retired.
    kept_below: AtomicU64,
}

struct Active {
    file: Option<File>,
    generation: u64,
    /// Bytes appended to the active file.
    len: u64,
}

/// A record read back by [`read_journal`].
pub(super) struct Replayed {
    pub digest: Digest,
    pub content: Vec<u8>,
}

impl Journal {
    /// Opens the journal directory `dir` (creating it). Existing journals are left for
    /// [`replay`]; new records go to a generation after theirs.
    pub(super) fn open(dir: &Path) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let next = list(dir)?
            .last()
            .map_or(0, |(generation, _)| generation + 1);
        Ok(Journal {
            dir: dir.to_owned(),
            active: Mutex::new(Active {
                file: None,
                generation: next,
                len: 0,
            }),
            kept_below: AtomicU64::new(0),
        })
    }

    /// The journals left by an earlier process, oldest first, for [`read_journal`].
    pub(super) fn leftovers(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let first_own = active.generation;
        drop(active);
        Ok(list(&self.dir)?
            .into_iter()
            .filter(|(generation, _)| *generation < first_own)
            .collect())
    }

    /// The leftovers not yet replayed (a replay that could not be stored) are kept for the
    /// next start: [`Journal::rotate`] never hands them out for deletion.
    pub(super) fn keep_leftovers(&self) {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        self.kept_below.store(active.generation, Ordering::Relaxed);
    }

    /// Appends one record (a single `write` of the whole record). On an error the record may
    /// be partly written; a later replay stops at it, so the caller must refuse the blob, and
    /// the next record starts a new journal. Returns the size of the journal it went to.
    pub(super) fn append(&self, digest: &Digest, content: &[u8]) -> io::Result<u64> {
        let key = index::key(digest);
        let length = u32::try_from(content.len())
            .map_err(|_| io::Error::other("inline blob too large for the journal"))?;
        let mut record = Vec::with_capacity(4 + 2 + key.len() + 4 + content.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&(key.len() as u16).to_le_bytes());
        record.extend_from_slice(&key);
        record.extend_from_slice(&length.to_le_bytes());
        record.extend_from_slice(content);
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active.file.is_none() {
            let path = self.path(active.generation);
            active.file = Some(OpenOptions::new().create(true).append(true).open(&path)?);
        }
        let file = active.file.as_mut().expect("opened above");
        if let Err(error) = file.write_all(&record) {
            // The record may be partly written, and replay stops at it: later records go to
            // a fresh journal, so none of them is hidden behind it.
            active.file = None;
            active.generation += 1;
            active.len = 0;
            return Err(error);
        }
        active.len += record.len() as u64;
        Ok(active.len)
    }

    /// Starts a new generation if the active one holds records; returns the paths of every
    /// journal before it, which the caller deletes once a durable flush covers them.
    pub(super) fn rotate(&self) -> io::Result<Vec<PathBuf>> {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active.len > 0 {
            active.file = None;
            active.generation += 1;
            active.len = 0;
        }
        let current = active.generation;
        drop(active);
        let kept_below = self.kept_below.load(Ordering::Relaxed);
        Ok(list(&self.dir)?
            .into_iter()
            .filter(|(generation, _)| (kept_below..current).contains(generation))
            .map(|(_, path)| path)
            .collect())
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{generation:020}"))
    }

    /// The directory the journals live in.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The journal files in `dir`, oldest first.
fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((generation, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// The whole records of the journal at `path`, oldest first, and whether it ended in a record
/// cut short or not matching its key (the records before it are returned).
pub(super) fn read_journal(path: &Path) -> io::Result<(Vec<Replayed>, bool)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let whole = read_records(&bytes, &mut records);
    Ok((records, !whole))
}

/// Appends the records of one journal to `out`; false if it ended in a bad record.
fn read_records(mut bytes: &[u8], out: &mut Vec<Replayed>) -> bool {
    while !bytes.is_empty() {
        match read_record(bytes) {
            Some((record, used)) => {
                out.push(record);
                bytes = &bytes[used..];
            }
            None => return false,
        }
    }
    true
}

/// One record at the start of `bytes` and its length; `None` if cut short or not whole.
fn read_record(bytes: &[u8]) -> Option<(Replayed, usize)> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let key_len = usize::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?));
    if key_len > MAX_KEY {
        return None;
    }
    let key = rest.get(2..2 + key_len)?;
    let digest = index::decode_key(key)?;
    let at = 2 + key_len;
    let len = u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize;
    let content = rest.get(at + 4..at + 4 + len)?;
    digest.verify(content).ok()?;
    let used = MAGIC.len() + at + 4 + len;
    Some((
        Replayed {
            digest,
            content: content.to_vec(),
        },
        used,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn blob(text: &str) -> (Digest, Vec<u8>) {
        let data = text.as_bytes().to_vec();
        (DigestFunction::Blake3.digest_of(&data), data)
    }

    fn digests(records: &[Replayed]) -> Vec<Digest> {
        records.iter().map(|r| r.digest).collect()
    }

    #[test]
    fn records_are_read_back_in_order_and_a_reopened_journal_writes_after_the_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (a, data_a) = blob("first");
        let (b, data_b) = blob("second");
        assert!(journal.append(&a, &data_a).unwrap() > 5);
        assert_eq!(journal.rotate().unwrap().len(), 1);
        journal.append(&b, &data_b).unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let (first, torn) = read_journal(&files[0].1).unwrap();
        assert_eq!((digests(&first), torn), (vec![a], false));
        let (second, _) = read_journal(&files[1].1).unwrap();
        assert_eq!(second[0].content, data_b);

        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.leftovers().unwrap(), files);
        reopened.append(&a, &data_a).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 3);
        assert_eq!(
            reopened.leftovers().unwrap(),
            files,
            "its own journal is no leftover"
        );
        // Leftovers kept (their replay failed) are never handed out for deletion.
        reopened.keep_leftovers();
        let retired = reopened.rotate().unwrap();
        assert_eq!(retired, vec![list(dir.path()).unwrap()[2].1.clone()]);
    }

    #[test]
    fn an_empty_generation_is_not_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert!(journal.rotate().unwrap().is_empty());
        let (a, data) = blob("x");
        journal.append(&a, &data).unwrap();
        let old = journal.rotate().unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(journal.rotate().unwrap().len(), 1, "not yet deleted");
        fs::remove_file(&old[0]).unwrap();
        assert!(journal.rotate().unwrap().is_empty());
    }

    #[test]
    fn a_record_cut_short_or_damaged_ends_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (a, data_a) = blob("kept");
        let (b, data_b) = blob("cut short");
        journal.append(&a, &data_a).unwrap();
        journal.append(&b, &data_b).unwrap();
        let path = list(dir.path()).unwrap()[0].1.clone();
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let (cut, torn) = read_journal(&path).unwrap();
        assert_eq!((digests(&cut), torn), (vec![a], true));
        // A flipped content byte: the record does not match its key.
        let mut damaged = whole.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        fs::write(&path, &damaged).unwrap();
        let (bad, torn) = read_journal(&path).unwrap();
        assert_eq!((bad.len(), torn), (1, true));
        fs::write(&path, &whole).unwrap();
        let (all, torn) = read_journal(&path).unwrap();
        assert_eq!((all.len(), torn), (2, false));
    }
}
