//! The disk store's index: what is stored, in which form, and when it was last used.
//!
//! The whole index lives in memory (a blob costs a few dozen bytes), so FindMissingBlobs is a
//! hash-map probe per digest and never touches the database. Every insert and removal is also
//! written to the metadata store table `blobs`; access times are only kept in memory and written
//! back in batches (see [`Index::queue_dirty`]), because losing some of them in a crash only makes
//! eviction slightly less exact. The records of blob files are a cache of what the files say: a
//! record that could not be written (a full disk) is kept in memory and written back with the
//! access times, and a blob file whose record was lost is adopted again at the next start.
//! Eviction is least-recently-used to a byte budget and skips pinned blobs and blobs used within
//! the protection window.
//!
//! Small blobs may be kept inline ([`Form::Inline`]): their bytes are a value of the table
//! `blobs_inline` under the same key as their record, written in the same batch, so record and
//! content appear and go together. They are in a table of their own so that loading the index
//! at start never reads blob contents.
//!
//! The index does not write to the metadata store itself: every change queues its writes in an
//! outbox ([`Index::take_outbox`]) that the disk store hands, still under the index lock, to its
//! group commit. So the store sees the writes in the order the index made them, whichever
//! thread commits them. Until its commit has succeeded, an inline blob's bytes are kept here
//! ([`Index::pending_content`]) so that readers can be served the moment it is listed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};
use crate::meta::{Batch, MetaError, Table};

/// Name of the metadata table holding one record per blob.
pub(crate) const TABLE: &str = "blobs";
/// Name of the metadata table holding the bytes of inline blobs, keyed like their records.
pub(crate) const INLINE_TABLE: &str = "blobs_inline";

/// How a blob sits on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// The bytes themselves.
    Raw,
    /// One zstd frame.
    Zstd,
    /// The bytes themselves, as a value of [`INLINE_TABLE`] instead of a file.
    Inline,
}

impl Form {
    /// Whether the blob is a file under `blobs/`.
    pub(crate) fn is_file(self) -> bool {
        self != Form::Inline
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) stored: u64,
    pub(crate) form: Form,
    /// Milliseconds since the Unix epoch.
    pub(crate) last_access: u64,
    /// The access time as last queued for writing (or loaded): a touch marks the record
    /// dirty once `last_access` has moved a second past it.
    pub(crate) marked_access: u64,
    pub(crate) pins: u32,
    /// Whether the file has been hashed by this process (written by it, or checked since).
    /// Records loaded at start are not: the file is hashed on its first use by a caller that
    /// does not read it through the store ([`crate::store::DiskStore::raw_path`]).
    pub(crate) verified: bool,
}

impl Entry {
    /// The record of a blob this process has just stored (or checked): unpinned, verified.
    pub(crate) fn fresh(stored: u64, form: Form, last_access: u64) -> Entry {
        Entry {
            stored,
            form,
            last_access,
            marked_access: last_access,
            pins: 0,
            verified: true,
        }
    }
}

/// A blob eviction chose; the caller deletes its file while still holding the index lock.
#[derive(Debug)]
pub(crate) struct Victim {
    pub(crate) digest: Digest,
    pub(crate) form: Form,
}

/// A record queued for writing as it was at one change (numbered by the index): once the
/// write has run, [`Index::recorded`] marks it clean only if nothing changed it since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) digest: Digest,
    change: u64,
}

/// An insert handed to a commit, to settle once that commit has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Inline insert number N: served from the store from then on, or queued again
    /// ([`Index::settle_inline`], [`Index::requeue_inline`]).
    Inline(u64),
    /// A blob file's record as of change N: clean once written ([`Index::recorded`]), or left
    /// dirty for the next checkpoint.
    Record(u64),
}

impl Insert {
    /// The record this insert wrote, for [`Index::recorded`].
    pub(crate) fn record_of(self, digest: Digest) -> Option<Mark> {
        match self {
            Insert::Record(change) => Some(Mark { digest, change }),
            Insert::Inline(_) => None,
        }
    }
}

pub(crate) struct Index {
    entries: HashMap<Digest, Entry>,
    /// Records to write back, each with the number of its latest change (see [`Mark`]).
    dirty: HashMap<Digest, u64>,
    /// Numbers changes that mark records dirty.
    changes: u64,
    /// Inline blobs whose commit has not succeeded yet: their bytes, and which insert they are.
    pending: HashMap<Digest, (u64, Bytes)>,
    /// Bytes held in `pending`.
    pending_bytes: u64,
    /// Inserts whose writes are in the outbox (inline inserts by number, blob files' records
    /// by change): handed, with it, to a commit, which settles them (see
    /// [`Index::take_unqueued`]).
    unqueued: Vec<(Digest, Insert)>,
    /// Numbers inline inserts, so a commit finishing late cannot settle a newer insert.
    inserts: u64,
    /// Writes queued by changes since the last [`Index::take_outbox`].
    outbox: Batch,
    stored_bytes: u64,
    logical_bytes: u64,
    pub(crate) budget: u64,
    pub(crate) protect: Duration,
    pub(crate) evicted: u64,
    pub(crate) evicted_bytes: u64,
}

pub(crate) fn now_ms() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // Never go backwards, so LRU order is stable across clock steps.
    LAST.fetch_max(now, Ordering::Relaxed).max(now)
}

pub(crate) fn key(digest: &Digest) -> Vec<u8> {
    let mut key = Vec::with_capacity(41);
    key.push(match digest.function {
        DigestFunction::Sha256 => 1,
        DigestFunction::Blake3 => 9,
    });
    key.extend_from_slice(&digest.hash);
    key.extend_from_slice(&digest.size_bytes.to_be_bytes());
    key
}

pub(crate) fn decode_key(key: &[u8]) -> Option<Digest> {
    let (&function, rest) = key.split_first()?;
    let function = match function {
        1 => DigestFunction::Sha256,
        9 => DigestFunction::Blake3,
        _ => return None,
    };
    let hash: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    let size_bytes = u64::from_be_bytes(rest.get(32..40)?.try_into().ok()?);
    Some(Digest {
        function,
        hash,
        size_bytes,
    })
}

fn encode_value(entry: &Entry) -> Vec<u8> {
    let mut value = Vec::with_capacity(17);
    value.extend_from_slice(&entry.stored.to_be_bytes());
    value.push(match entry.form {
        Form::Raw => 0,
        Form::Zstd => 1,
        Form::Inline => 2,
    });
    value.extend_from_slice(&entry.last_access.to_be_bytes());
    value
}

fn decode_value(value: &[u8]) -> Option<Entry> {
    let stored = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let form = match value.get(8)? {
        0 => Form::Raw,
        1 => Form::Zstd,
        2 => Form::Inline,
        _ => return None,
    };
    let last_access = u64::from_be_bytes(value.get(9..17)?.try_into().ok()?);
    Some(Entry {
        stored,
        form,
        last_access,
        marked_access: last_access,
        pins: 0,
        verified: false,
    })
}

impl Index {
    /// Loads every record of `table`. Records that do not decode are dropped (their removal
    /// is queued in the outbox).
    pub(crate) fn load(table: &Table, budget: u64, protect: Duration) -> Result<Self, MetaError> {
        let mut entries = HashMap::new();
        let mut bad = Vec::new();
        for item in table.scan_prefix(b"") {
            let (k, v) = item?;
            match (decode_key(&k), decode_value(&v)) {
                (Some(digest), Some(entry)) => {
                    entries.insert(digest, entry);
                }
                _ => bad.push(k),
            }
        }
        let mut outbox = Batch::new();
        for k in bad {
            tracing::warn!("dropping undecodable blob index record");
            outbox.remove(TABLE, k.clone());
            outbox.remove(INLINE_TABLE, k);
        }
        let stored_bytes = entries.values().map(|e| e.stored).sum();
        let logical_bytes = entries.keys().map(|d| d.size_bytes).sum();
        Ok(Index {
            entries,
            dirty: HashMap::new(),
            changes: 0,
            pending: HashMap::new(),
            pending_bytes: 0,
            unqueued: Vec::new(),
            inserts: 0,
            outbox,
            stored_bytes,
            logical_bytes,
            budget,
            protect,
            evicted: 0,
            evicted_bytes: 0,
        })
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<Entry> {
        self.entries.get(digest).copied()
    }

    pub(crate) fn digests(&self) -> impl Iterator<Item = (&Digest, &Entry)> {
        self.entries.iter()
    }

    pub(crate) fn touch(&mut self, digest: &Digest, now: u64) -> bool {
        let Some(entry) = self.entries.get_mut(digest) else {
            return false;
        };
        // Only a change worth writing back marks the record dirty: a second past the time
        // last marked, however often it was touched since.
        entry.last_access = entry.last_access.max(now);
        if entry.last_access.saturating_sub(entry.marked_access) > 1_000 {
            entry.marked_access = entry.last_access;
            self.mark_dirty(*digest);
        }
        true
    }

    pub(crate) fn pin(&mut self, digest: &Digest) -> bool {
        match self.entries.get_mut(digest) {
            Some(entry) => {
                entry.pins += 1;
                true
            }
            None => false,
        }
    }

    pub(crate) fn unpin(&mut self, digest: &Digest) {
        if let Some(entry) = self.entries.get_mut(digest) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }

    /// Chooses victims so that `needed` more stored bytes fit in the budget, evicting down to
    /// 90% of the budget so eviction runs in batches. Returns `Err(pinned_bytes)` if even
    /// removing every evictable blob would not make room; nothing is chosen then.
    pub(crate) fn make_room(&mut self, needed: u64, now: u64) -> Result<Vec<Victim>, u64> {
        if self.stored_bytes.saturating_add(needed) <= self.budget {
            return Ok(Vec::new());
        }
        let protect_ms = u64::try_from(self.protect.as_millis()).unwrap_or(u64::MAX);
        let mut candidates: Vec<(u64, Digest, u64)> = Vec::new();
        let mut untouchable = 0u64;
        for (digest, entry) in &self.entries {
            if entry.pins > 0 || now.saturating_sub(entry.last_access) < protect_ms {
                untouchable += entry.stored;
            } else {
                candidates.push((entry.last_access, *digest, entry.stored));
            }
        }
        if untouchable.saturating_add(needed) > self.budget {
            return Err(untouchable);
        }
        let target = (self.budget / 10 * 9)
            .max(untouchable.saturating_add(needed))
            .min(self.budget)
            .saturating_sub(needed);
        candidates.sort_unstable_by_key(|(access, digest, _)| (*access, *digest));
        let mut victims = Vec::new();
        let mut stored = self.stored_bytes;
        for (_, digest, size) in candidates {
            if stored <= target {
                break;
            }
            stored -= size;
            victims.push(digest);
        }
        Ok(victims
            .into_iter()
            .filter_map(|digest| {
                self.remove(&digest).map(|entry| {
                    self.evicted += 1;
                    self.evicted_bytes += entry.stored;
                    Victim {
                        digest,
                        form: entry.form,
                    }
                })
            })
            .collect())
    }

    /// Adds (or replaces) a blob file and queues its record. The record stays dirty until
    /// [`Index::recorded`], so one whose commit failed is written again by the next
    /// [`Index::queue_dirty`].
    pub(crate) fn insert(&mut self, digest: Digest, entry: Entry) {
        debug_assert!(entry.form.is_file());
        self.insert_in_memory(digest, entry);
        let mark = self.mark_dirty(digest);
        self.outbox
            .insert(TABLE, key(&digest), encode_value(&entry));
        self.unqueued.push((digest, Insert::Record(mark.change)));
    }

    /// Adds an inline blob: queues its record and its bytes in one batch and keeps the bytes
    /// at hand until [`Index::settle_inline`]. Returns the insert's number for that call.
    pub(crate) fn insert_inline(&mut self, digest: Digest, entry: Entry, content: Bytes) -> u64 {
        debug_assert_eq!(entry.form, Form::Inline);
        self.insert_in_memory(digest, entry);
        let k = key(&digest);
        self.outbox.insert(TABLE, k.clone(), encode_value(&entry));
        self.outbox.insert(INLINE_TABLE, k, content.to_vec());
        self.inserts += 1;
        self.unqueued.push((digest, Insert::Inline(self.inserts)));
        self.pending_bytes += content.len() as u64;
        if let Some((_, old)) = self.pending.insert(digest, (self.inserts, content)) {
            self.pending_bytes -= old.len() as u64;
        }
        self.inserts
    }

    /// The commit of inline insert `number` of `digest` has run: if it was written, the bytes
    /// are read from the store from now on; if not, the blob is dropped (nothing of it was
    /// written). An insert replaced or removed meanwhile is left alone.
    pub(crate) fn settle_inline(&mut self, digest: &Digest, number: u64, written: bool) {
        if !self.is_pending(digest, number) {
            return;
        }
        self.drop_pending(digest);
        if !written && let Some(entry) = self.entries.remove(digest) {
            self.stored_bytes -= entry.stored;
            self.logical_bytes -= digest.size_bytes;
            self.dirty.remove(digest);
        }
    }

    /// The commit of inline insert `number` of `digest` failed, but the blob was acknowledged
    /// (it is journaled): its record and bytes are queued again for the next commit, and its
    /// bytes stay at hand until one succeeds. An insert replaced or removed meanwhile is left
    /// alone.
    pub(crate) fn requeue_inline(&mut self, digest: &Digest, number: u64) {
        if !self.is_pending(digest, number) {
            return;
        }
        let (Some(entry), Some((_, content))) =
            (self.entries.get(digest), self.pending.get(digest))
        else {
            return;
        };
        let k = key(digest);
        self.outbox.insert(TABLE, k.clone(), encode_value(entry));
        self.outbox.insert(INLINE_TABLE, k, content.to_vec());
        self.unqueued.push((*digest, Insert::Inline(number)));
    }

    fn is_pending(&self, digest: &Digest, number: u64) -> bool {
        self.pending.get(digest).is_some_and(|(n, _)| *n == number)
    }

    fn drop_pending(&mut self, digest: &Digest) {
        if let Some((_, content)) = self.pending.remove(digest) {
            self.pending_bytes -= content.len() as u64;
        }
    }

    /// The inserts (inline blobs and blob files' records) whose writes are in the outbox, to
    /// pair with the commit that takes it (see [`Index::take_outbox`]).
    pub(crate) fn take_unqueued(&mut self) -> Vec<(Digest, Insert)> {
        std::mem::take(&mut self.unqueued)
    }

    /// Bytes of inline blobs whose commit has not succeeded yet.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Whether an inline insert numbered `number` or lower still waits for its commit.
    pub(crate) fn pending_up_to(&self, number: u64) -> bool {
        self.pending.values().any(|(n, _)| *n <= number)
    }

    /// The number of the latest inline insert.
    pub(crate) fn inserts(&self) -> u64 {
        self.inserts
    }

    /// The bytes of an inline blob whose commit has not succeeded yet.
    pub(crate) fn pending_content(&self, digest: &Digest) -> Option<Bytes> {
        self.pending.get(digest).map(|(_, bytes)| bytes.clone())
    }

    /// Adds blobs found without records (files, or inline contents) and queues their records
    /// (if that fails, [`Index::queue_dirty`] queues them again).
    pub(crate) fn adopt(&mut self, found: Vec<(Digest, Entry)>) -> Vec<Mark> {
        found
            .into_iter()
            .map(|(digest, entry)| {
                self.insert_in_memory(digest, entry);
                self.outbox
                    .insert(TABLE, key(&digest), encode_value(&entry));
                self.mark_dirty(digest)
            })
            .collect()
    }

    fn mark_dirty(&mut self, digest: Digest) -> Mark {
        self.changes += 1;
        self.dirty.insert(digest, self.changes);
        Mark {
            digest,
            change: self.changes,
        }
    }

    /// Marks blobs whose records were written (queued by [`Index::insert`], [`Index::adopt`]
    /// or [`Index::queue_dirty`]) as clean, unless a later change marked one again (its
    /// record as written is then already stale).
    pub(crate) fn recorded(&mut self, marks: &[Mark]) {
        for mark in marks {
            if self.dirty.get(&mark.digest) == Some(&mark.change) {
                self.dirty.remove(&mark.digest);
            }
        }
    }

    fn insert_in_memory(&mut self, digest: Digest, entry: Entry) {
        if let Some(old) = self.entries.insert(digest, entry) {
            self.stored_bytes -= old.stored;
            self.logical_bytes -= digest.size_bytes;
        }
        self.stored_bytes += entry.stored;
        self.logical_bytes += digest.size_bytes;
    }

    /// Records that the file of `digest` has been hashed and matched.
    pub(crate) fn set_verified(&mut self, digest: &Digest) {
        if let Some(entry) = self.entries.get_mut(digest) {
            entry.verified = true;
        }
    }

    /// Drops a blob and queues the removal of its record (and inline bytes). The caller
    /// removes its file. A removal that fails to commit leaves a stale record, dropped or
    /// adopted again at the next start.
    pub(crate) fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let entry = self.entries.remove(digest)?;
        self.stored_bytes -= entry.stored;
        self.logical_bytes -= digest.size_bytes;
        self.dirty.remove(digest);
        self.drop_pending(digest);
        let k = key(digest);
        if entry.form == Form::Inline {
            self.outbox.remove(INLINE_TABLE, k.clone());
        }
        self.outbox.remove(TABLE, k);
        Some(entry)
    }

    /// Queues a raw write for the next commit (reconciling at start).
    pub(crate) fn queue(&mut self, batch: Batch) {
        self.outbox.append(batch);
    }

    /// The writes queued since the last call, to hand to the group commit while the index is
    /// still locked.
    pub(crate) fn take_outbox(&mut self) -> Batch {
        std::mem::take(&mut self.outbox)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub(crate) fn logical_bytes(&self) -> u64 {
        self.logical_bytes
    }

    /// Queues the records changed since the last write-back (access times, and records that
    /// could not be written) and returns the blobs they cover: pass those to
    /// [`Index::recorded`] once the commit has run. Inline blobs whose own commit is still
    /// pending wait for the next call.
    pub(crate) fn queue_dirty(&mut self) -> Vec<Mark> {
        let mut marks = Vec::with_capacity(self.dirty.len());
        for (digest, &change) in &self.dirty {
            if self.pending.contains_key(digest) {
                continue;
            }
            if let Some(entry) = self.entries.get(digest) {
                self.outbox.insert(TABLE, key(digest), encode_value(entry));
            }
            marks.push(Mark {
                digest: *digest,
                change,
            });
        }
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{MemoryMetaStore, MetadataStore};

    fn index(budget: u64) -> Index {
        let store = MemoryMetaStore::new();
        Index::load(&store.table(TABLE).unwrap(), budget, Duration::ZERO).unwrap()
    }

    fn blob(n: u8, size: u64) -> Digest {
        Digest {
            function: DigestFunction::Sha256,
            hash: [n; 32],
            size_bytes: size,
        }
    }

    fn entry(stored: u64, last_access: u64) -> Entry {
        Entry {
            form: Form::Raw,
            ..Entry::fresh(stored, Form::Raw, last_access)
        }
    }

    #[test]
    fn records_round_trip() {
        let d = blob(7, 1234);
        assert_eq!(decode_key(&key(&d)), Some(d));
        let e = Entry {
            pins: 3,
            ..Entry::fresh(99, Form::Zstd, 42)
        };
        let back = decode_value(&encode_value(&e)).unwrap();
        assert_eq!(
            (back.stored, back.form, back.last_access, back.pins),
            (99, Form::Zstd, 42, 0)
        );
        assert_eq!(decode_key(b"\x05short"), None);
        assert!(decode_value(b"\x00").is_none());
    }

    #[test]
    fn eviction_takes_least_recently_used_first() {
        let mut idx = index(100);
        for n in 0..10u8 {
            idx.insert(blob(n, 10), entry(10, u64::from(n)));
        }
        // Blob 0 was used last, so it survives.
        idx.touch(&blob(0, 10), 1_000);
        let victims = idx.make_room(10, 2_000).unwrap();
        let gone: Vec<u8> = victims.iter().map(|v| v.digest.hash[0]).collect();
        assert_eq!(gone, vec![1, 2]);
        assert!(idx.get(&blob(0, 10)).is_some());
        assert_eq!(idx.stored_bytes(), 80);
        assert_eq!(idx.evicted, 2);
    }

    #[test]
    fn pinned_and_recent_blobs_are_never_evicted() {
        let mut idx = index(30);
        idx.protect = Duration::from_millis(500);
        idx.insert(blob(1, 10), entry(10, 0));
        idx.insert(blob(2, 10), entry(10, 0));
        idx.insert(blob(3, 10), entry(10, 900));
        assert!(idx.pin(&blob(1, 10)));
        // Only blob 2 may go: 10 bytes free after it, so 20 bytes cannot fit.
        assert_eq!(idx.make_room(20, 1_000).unwrap_err(), 20);
        assert_eq!(idx.len(), 3, "a refused eviction removes nothing");
        let victims = idx.make_room(10, 1_000).unwrap();
        assert_eq!(victims.len(), 1);
        assert_eq!(victims[0].digest, blob(2, 10));
        idx.unpin(&blob(1, 10));
    }

    #[test]
    fn a_blob_larger_than_the_budget_is_refused() {
        let mut idx = index(100);
        assert_eq!(idx.make_room(101, 0).unwrap_err(), 0);
    }

    /// An index in `store` holding `blob(1, 1)`, accessed at 0, its record written and clean.
    fn one_clean_record(store: &MemoryMetaStore) -> (Table, Index) {
        let table = store.table(TABLE).unwrap();
        let mut idx = Index::load(&table, 1_000, Duration::ZERO).unwrap();
        idx.insert(blob(1, 1), entry(1, 0));
        store.apply_batch(idx.take_outbox()).unwrap();
        let [(digest, insert)] = idx.take_unqueued()[..] else {
            panic!("one insert");
        };
        idx.recorded(&[insert.record_of(digest).unwrap()]);
        assert!(idx.queue_dirty().is_empty());
        (table, idx)
    }

    #[test]
    fn access_times_are_written_back_in_one_batch() {
        let store = MemoryMetaStore::new();
        let (table, mut idx) = one_clean_record(&store);
        idx.touch(&blob(1, 1), 50_000);
        let digests = idx.queue_dirty();
        let batch = idx.take_outbox();
        assert_eq!(batch.len(), 1);
        store.apply_batch(batch).unwrap();
        idx.recorded(&digests);
        assert!(idx.queue_dirty().is_empty());
        let reloaded = Index::load(&table, 1_000, Duration::ZERO).unwrap();
        assert_eq!(reloaded.get(&blob(1, 1)).unwrap().last_access, 50_000);
    }

    /// Regression: a blob touched more often than once a second still has its access time
    /// written back once it has moved a second past the one written.
    #[test]
    fn frequent_touches_still_mark_the_record_dirty() {
        let store = MemoryMetaStore::new();
        let (table, mut idx) = one_clean_record(&store);
        idx.touch(&blob(1, 1), 900);
        assert!(
            idx.queue_dirty().is_empty(),
            "under a second: not worth a write"
        );
        idx.touch(&blob(1, 1), 1_800);
        let marks = idx.queue_dirty();
        assert_eq!(marks.len(), 1, "1.8 s past the written access time");
        store.apply_batch(idx.take_outbox()).unwrap();
        idx.recorded(&marks);
        let reloaded = Index::load(&table, 1_000, Duration::ZERO).unwrap();
        assert_eq!(reloaded.get(&blob(1, 1)).unwrap().last_access, 1_800);
    }

    /// Regression: a record written as it was before a later change must not mark the blob
    /// clean, or the change (an access time) is never written.
    #[test]
    fn a_record_changed_while_its_write_ran_stays_dirty() {
        let store = MemoryMetaStore::new();
        let table = store.table(TABLE).unwrap();
        let mut idx = Index::load(&table, 1_000, Duration::ZERO).unwrap();
        idx.insert(blob(1, 1), entry(1, 0));
        let batch = idx.take_outbox();
        let [(digest, insert)] = idx.take_unqueued()[..] else {
            panic!("one insert");
        };
        // Touched after the insert's record was queued, before its commit settles.
        idx.touch(&blob(1, 1), 50_000);
        store.apply_batch(batch).unwrap();
        idx.recorded(&[insert.record_of(digest).unwrap()]);
        let marks = idx.queue_dirty();
        assert_eq!(marks.len(), 1, "the access time is still to be written");
        // The same for a write-back that a touch overtakes.
        let batch = idx.take_outbox();
        idx.touch(&blob(1, 1), 90_000);
        store.apply_batch(batch).unwrap();
        idx.recorded(&marks);
        let marks = idx.queue_dirty();
        assert_eq!(marks.len(), 1);
        store.apply_batch(idx.take_outbox()).unwrap();
        idx.recorded(&marks);
        assert!(idx.queue_dirty().is_empty());
        let reloaded = Index::load(&table, 1_000, Duration::ZERO).unwrap();
        assert_eq!(reloaded.get(&blob(1, 1)).unwrap().last_access, 90_000);
    }

    #[test]
    fn an_inline_blob_is_record_and_content_together_and_a_failed_commit_drops_it() {
        let store = MemoryMetaStore::new();
        let table = store.table(TABLE).unwrap();
        let mut idx = Index::load(&table, 1_000, Duration::ZERO).unwrap();
        let inline = |stored| Entry {
            form: Form::Inline,
            ..entry(stored, 0)
        };
        let written = idx.insert_inline(blob(1, 3), inline(3), Bytes::from_static(b"abc"));
        let lost = idx.insert_inline(blob(2, 3), inline(3), Bytes::from_static(b"xyz"));
        assert_eq!(idx.pending_content(&blob(1, 3)).unwrap(), &b"abc"[..]);
        // Dirty access times wait for the blob's own commit.
        idx.touch(&blob(1, 3), 50_000);
        assert!(idx.queue_dirty().is_empty());
        let batch = idx.take_outbox();
        assert_eq!(batch.tables(), [TABLE, INLINE_TABLE]);
        store.apply_batch(batch).unwrap();
        idx.settle_inline(&blob(1, 3), written, true);
        idx.settle_inline(&blob(2, 3), lost, false);
        assert!(idx.pending_content(&blob(1, 3)).is_none());
        assert!(
            idx.get(&blob(2, 3)).is_none(),
            "a failed commit drops the blob"
        );
        assert_eq!((idx.len(), idx.stored_bytes()), (1, 3));
        // A settle for an older insert leaves a newer one alone.
        let newer = idx.insert_inline(blob(3, 3), inline(3), Bytes::from_static(b"new"));
        idx.settle_inline(&blob(3, 3), newer - 1, false);
        assert!(idx.pending_content(&blob(3, 3)).is_some());
        assert_eq!(idx.pending_bytes(), 3);
        assert!(idx.pending_up_to(newer) && !idx.pending_up_to(newer - 1));
        assert_eq!(
            idx.take_unqueued(),
            [
                (blob(1, 3), Insert::Inline(written)),
                (blob(2, 3), Insert::Inline(lost)),
                (blob(3, 3), Insert::Inline(newer))
            ]
        );
        // An acknowledged insert whose commit failed is queued again, bytes kept.
        let _ = idx.take_outbox();
        idx.requeue_inline(&blob(3, 3), newer);
        assert_eq!(idx.take_outbox().tables(), [TABLE, INLINE_TABLE]);
        assert_eq!(idx.take_unqueued(), [(blob(3, 3), Insert::Inline(newer))]);
        idx.settle_inline(&blob(3, 3), newer, true);
        assert_eq!(idx.pending_bytes(), 0);

        let reloaded = Index::load(&table, 1_000, Duration::ZERO).unwrap();
        assert_eq!(reloaded.get(&blob(1, 3)).unwrap().form, Form::Inline);
        let contents = store.table(INLINE_TABLE).unwrap();
        assert_eq!(contents.get(&key(&blob(1, 3))).unwrap().unwrap(), b"abc");

        // Removal queues both the record and the content.
        idx.remove(&blob(1, 3));
        store.apply_batch(idx.take_outbox()).unwrap();
        assert!(contents.get(&key(&blob(1, 3))).unwrap().is_none());
        assert!(table.get(&key(&blob(1, 3))).unwrap().is_none());
    }
}
