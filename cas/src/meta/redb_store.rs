//! The redb implementation of the metadata store.
//!
//! Chosen over sled after the crash test (`cas/tests/meta_crash.rs`) caught sled 0.34 unable to
//! reopen its database ("Read corrupted data") after a SIGKILL that landed while it was
//! generating a snapshot, about once in a few thousand kills. redb is copy-on-write with
//! checksummed commits: after a crash it opens at the last commit that reached the file. redb
//! 2.6 once panicked reopening the file after a SIGKILL (in its repair, `buddy_allocator.rs`:
//! `assertion failed: !self.get_order_allocated(order).get(page_number)`, in the CAS crash test
//! under CI); redb 4 fixed several repair bugs of that kind, so the store moved to it, and a file
//! in redb 2's format is migrated when it is opened ([`migrate_from_v2`]).
//!
//! Every write is its own transaction committed with `Durability::None`: visible at once, made
//! durable by the next flush, which is an empty commit with `Durability::Immediate` run by the
//! [`GroupFlush`] thread, so many waiting writers share one fsync. Every [`RECLAIM_EVERY`]th
//! write is followed by a durable commit of its own as well, which lets redb return to its free
//! list the pages that only non-durable commits freed (it fsyncs: it must stay rare, never one
//! per write).
//!
//! After an I/O error (a full disk, most often) redb refuses every further call until the
//! database is reopened. So the store drops the failed database and the next call reopens it
//! (at most once per [`REOPEN_EVERY`] while reopening keeps failing). A reopened redb database
//! is at its last *durable* commit: the non-durable commits since then are gone from it, though
//! their writers were told they succeeded and may rely on them (the blob store drops an inline
//! blob's bytes from memory once its commit succeeds, and keeps only its journal until the next
//! flush). So the store keeps a [`Redo`] log of what every commit since the last durable one
//! changed. After a reopen the database is *behind* the log until the next commit, which makes
//! the log's changes again before its own: a reopen loses nothing that was committed. Reading
//! needs no write, so it goes on while the disk is full: meanwhile a key the log changed is
//! answered from the log (indexed by key while the database is behind it), and a scan of a
//! table the log changed is refused (out of space or unavailable, never a wrong answer).
//!
//! Writes always commit without durability; a durable commit is an empty one of its own (a
//! flush, or every [`RECLAIM_EVERY`]th write, or once the log holds [`REDO_MAX`] bytes), so
//! whatever commit a reopen lands on, the log makes the rest. A durable commit empties the
//! log; if durable commits keep failing while other commits succeed, writes are refused once
//! the log holds twice [`REDO_MAX`].
//!
//! A full file system is reported as [`MetaError::OutOfSpace`] and logged once per episode.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};

use super::error::{BackendError, display_key};
use super::{
    Batch, BatchOp, Entries, GroupFlush, MetaError, MetaTable, MetadataStore, SwapOutcome, Table,
    TableDump,
};
use crate::space::{SpaceStats, SpaceWatch, is_out_of_space};

/// Writes between durable commits (which let redb reclaim pages).
const RECLAIM_EVERY: u64 = 256;
/// Least time between two attempts to reopen a database that failed to reopen.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
/// While the file system is full, writes are tried at most this often; the others are refused
/// at once. Each failed write closes the database and the next call reopens it, which can mean
/// a repair pass over the whole file, so a burst of writes must not each pay for one.
const WRITE_RETRY: Duration = Duration::from_millis(250);
/// How long a call that met redb's `PreviousIo` waits for the call that met the I/O error
/// itself to say what it was (see [`Shared::earlier_error_was_out_of_space`]).
const EARLIER_ERROR_WAIT: Duration = Duration::from_millis(200);
/// Bytes of changes the [`Redo`] log may hold before a durable commit empties it; at twice
/// this (durable commits keep failing) writes are refused until one succeeds.
const REDO_MAX: usize = 16 * 1024 * 1024;
/// What one logged change costs besides its bytes: the entry and its allocations' headers.
const CHANGE_OVERHEAD: usize = 96;

fn def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// A failed redb call, boxed (redb's error is large).
struct Failure(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(Box::new(error.into()))
    }
}

/// One change a commit made, as it must be made again: a table created, or a key's new value
/// (`None`: removed).
enum Change {
    Table(String),
    Set {
        table: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
}

impl Change {
    fn set(table: &str, key: &[u8], value: Option<&[u8]>) -> Self {
        Change::Set {
            table: table.to_owned(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// Memory it takes, about (its allocations' headers counted as [`CHANGE_OVERHEAD`]).
    fn bytes(&self) -> usize {
        CHANGE_OVERHEAD
            + match self {
                Change::Table(name) => name.len(),
                Change::Set { table, key, value } => {
                    table.len() + key.len() + value.as_ref().map_or(0, Vec::len)
                }
            }
    }

    fn apply(&self, txn: &redb::WriteTransaction) -> Result<(), Failure> {
        match self {
            Change::Table(name) => {
                txn.open_table(def(name))?;
            }
            Change::Set { table, key, value } => {
                let mut t = txn.open_table(def(table))?;
                match value {
                    Some(value) => t.insert(key.as_slice(), value.as_slice())?,
                    None => t.remove(key.as_slice())?,
                };
            }
        }
        Ok(())
    }
}

/// The changes of every commit since the last durable one, in commit order; see the module
/// docs. Its lock is held from `begin_write` to the end of the commit, so the log's order is
/// the commits' order (redb runs one write transaction at a time anyway).
#[derive(Default)]
struct Redo {
    changes: Vec<Change>,
    bytes: usize,
    /// While the database is behind the log: what the log changed, for reads.
    view: Option<View>,
}

/// The log indexed for reads: each changed key's last change, and the tables the log created.
#[derive(Default)]
struct View {
    keys: HashMap<String, HashMap<Vec<u8>, usize>>,
    created: HashSet<String>,
}

impl Redo {
    /// Records a commit (which made the whole log, if the database was behind it): a durable
    /// one empties the log, any other adds its changes.
    fn committed(&mut self, durable: bool, changes: Vec<Change>) {
        self.view = None;
        if durable {
            self.changes = Vec::new();
            self.bytes = 0;
        } else {
            self.bytes += changes.iter().map(Change::bytes).sum::<usize>();
            self.changes.extend(changes);
        }
    }

    /// Makes the logged changes again in `txn` if the database is behind them.
    fn catch_up(&self, txn: &redb::WriteTransaction) -> Result<(), Failure> {
        if self.view.is_some() {
            for change in &self.changes {
                change.apply(txn)?;
            }
        }
        Ok(())
    }

    /// Indexes the log for reads, once the database is behind it.
    fn fell_behind(&mut self) {
        let mut view = View::default();
        for (n, change) in self.changes.iter().enumerate() {
            match change {
                Change::Table(table) => {
                    view.created.insert(table.clone());
                }
                Change::Set { table, key, .. } => {
                    view.keys
                        .entry(table.clone())
                        .or_default()
                        .insert(key.clone(), n);
                }
            }
        }
        self.view = Some(view);
    }
}

impl View {
    /// A read of `key` in `table` as the log (`changes`, which this indexes) decides it.
    fn key(&self, changes: &[Change], table: &str, key: &[u8]) -> FromLog<Option<Vec<u8>>> {
        match self.keys.get(table).and_then(|keys| keys.get(key)) {
            Some(&n) => match &changes[n] {
                Change::Set { value, .. } => FromLog::Answer(value.clone()),
                Change::Table(_) => FromLog::Refuse,
            },
            // The database may not have the table yet.
            None if self.created.contains(table) => FromLog::Refuse,
            None => FromLog::Untouched,
        }
    }

    /// A read of the whole of `table` as the log decides it.
    fn table<T>(&self, table: &str) -> FromLog<T> {
        if self.keys.contains_key(table) || self.created.contains(table) {
            FromLog::Refuse
        } else {
            FromLog::Untouched
        }
    }
}

/// What the [`Redo`] log says of a read while the database is behind it.
enum FromLog<T> {
    /// The log changed what is read last: this is the answer.
    Answer(T),
    /// The log did not change it: the database answers.
    Untouched,
    /// The log changed some of it: refused until the next commit makes the log again.
    Refuse,
}

/// Why the database is closed, while it is.
struct Closed {
    out_of_space: bool,
    cause: String,
    next_attempt: Instant,
}

/// The database, or why there is none right now.
enum Slot {
    Open(Arc<Database>),
    /// An I/O error closed it; the next call after `next_attempt` reopens it.
    Closed(Closed),
}

struct Shared {
    dir: PathBuf,
    file: PathBuf,
    slot: RwLock<Slot>,
    space: SpaceWatch,
    writes: AtomicU64,
    /// Set when a write found the file system full: writes before then are refused untried.
    writes_resume: Mutex<Option<Instant>>,
    redo: Mutex<Redo>,
    /// Whether `redo.view` is set: the open database lacks the log's changes (it was reopened
    /// since they were made). Lets reads skip the lock; changed only under it.
    behind: AtomicBool,
}

impl Shared {
    /// The open database, reopening it if an I/O error closed it.
    fn database(&self) -> Result<Arc<Database>, MetaError> {
        if let Slot::Open(db) = &*self.slot.read().unwrap_or_else(PoisonError::into_inner) {
            return Ok(Arc::clone(db));
        }
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        let state = match &mut *slot {
            Slot::Open(db) => return Ok(Arc::clone(db)),
            Slot::Closed(state) => state,
        };
        let now = Instant::now();
        if now < state.next_attempt {
            return Err(self.closed_error(state));
        }
        match Database::create(&self.file) {
            Ok(db) => {
                let db = Arc::new(db);
                let mut redo = self.redo.lock().unwrap_or_else(PoisonError::into_inner);
                let behind = redo.changes.len();
                if behind > 0 {
                    redo.fell_behind();
                    self.behind.store(true, Ordering::Release);
                }
                drop(redo);
                *slot = Slot::Open(Arc::clone(&db));
                tracing::info!(path = %self.dir.display(), behind, "metadata store reopened");
                Ok(db)
            }
            Err(error) => {
                let error = redb::Error::from(error);
                if let redb::Error::DatabaseAlreadyOpen = error {
                    // A call that began before the error still holds the old database; it
                    // ends soon, so the next call tries again at once.
                    state.next_attempt = now;
                } else {
                    if let redb::Error::Io(io) = &error {
                        state.out_of_space = is_out_of_space(io);
                    }
                    state.cause = format!("reopening failed: {error}");
                    state.next_attempt = now + REOPEN_EVERY;
                }
                Err(self.closed_error(state))
            }
        }
    }

    fn closed_error(&self, state: &Closed) -> MetaError {
        if state.out_of_space {
            self.space.refused();
            MetaError::OutOfSpace {
                path: self.dir.clone(),
            }
        } else {
            MetaError::Unavailable {
                path: self.dir.clone(),
                cause: state.cause.clone(),
            }
        }
    }

    /// Runs `f` on the database. An I/O error closes the database (the next call reopens
    /// it); a full file system becomes [`MetaError::OutOfSpace`]; other errors go through
    /// `wrap`.
    fn call<T>(
        &self,
        wrap: impl FnOnce(BackendError) -> MetaError,
        f: impl FnOnce(&Database) -> Result<T, Failure>,
    ) -> Result<T, MetaError> {
        let db = self.database()?;
        let result = f(&db);
        self.outcome(&db, wrap, result)
    }

    /// Runs the read `f` on the database; while the database is behind the [`Redo`] log,
    /// `from_log` first says whether the log answers it, refuses it or leaves it to `f`.
    fn read<T>(
        &self,
        wrap: impl FnOnce(BackendError) -> MetaError,
        from_log: impl FnOnce(&View, &[Change]) -> FromLog<T>,
        f: impl FnOnce(&Database) -> Result<T, Failure>,
    ) -> Result<T, MetaError> {
        let db = self.database()?;
        if self.behind.load(Ordering::Acquire) {
            let redo = self.redo.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(view) = &redo.view {
                match from_log(view, &redo.changes) {
                    FromLog::Answer(value) => return Ok(value),
                    FromLog::Refuse => return Err(self.behind_error()),
                    // What the log did not change the database has; a commit that makes the
                    // log again meanwhile only makes it newer (and `db` cannot be reopened
                    // under this call).
                    FromLog::Untouched => {}
                }
            }
        }
        let result = f(&db);
        self.outcome(&db, wrap, result)
    }

    /// Records a commit in the log (see [`Redo::committed`]): the database is no longer
    /// behind it.
    fn committed(&self, redo: &mut Redo, durable: bool, changes: Vec<Change>) {
        redo.committed(durable, changes);
        self.behind.store(false, Ordering::Release);
    }

    /// The refusal of a read the [`Redo`] log changed part of while the database is behind it.
    fn behind_error(&self) -> MetaError {
        if self.space.stats().full {
            MetaError::OutOfSpace {
                path: self.dir.clone(),
            }
        } else {
            MetaError::Unavailable {
                path: self.dir.clone(),
                cause: "reopened after an I/O error; the changes since the last flush are \
                        written again by the next write"
                    .to_owned(),
            }
        }
    }

    /// A call's result: an I/O error closes `db` (the next call reopens it); a full file
    /// system becomes [`MetaError::OutOfSpace`]; other errors go through `wrap`.
    fn outcome<T>(
        &self,
        db: &Arc<Database>,
        wrap: impl FnOnce(BackendError) -> MetaError,
        result: Result<T, Failure>,
    ) -> Result<T, MetaError> {
        let error = match result {
            Ok(value) => return Ok(value),
            Err(Failure(error)) => *error,
        };
        let out_of_space = match &error {
            redb::Error::Io(io) => is_out_of_space(io),
            redb::Error::PreviousIo => self.earlier_error_was_out_of_space(),
            // redb refuses every further write after a commit that failed part way, until the
            // database is reopened (which repairs it).
            redb::Error::Corrupted(_) => false,
            _ => return Err(wrap(Box::new(error))),
        };
        self.close(db, out_of_space, &error);
        if out_of_space {
            self.space.refused();
            *self
                .writes_resume
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + WRITE_RETRY);
            return Err(MetaError::OutOfSpace {
                path: self.dir.clone(),
            });
        }
        Err(wrap(Box::new(error)))
    }

    /// Whether the I/O error that failed the open database before this call met `PreviousIo`
    /// was a full file system, as the call that met that error decided when it closed the
    /// database. That call may still be on its way back from redb (it set redb's failure flag,
    /// then returns through its transaction), so while the database is open this waits a moment
    /// for it; without that, the other call closed it as for an unexplained error and answered
    /// unavailable where the disk was full (seen under load). If it stays open, no call met the
    /// error itself: not known to be a full disk.
    fn earlier_error_was_out_of_space(&self) -> bool {
        let give_up = Instant::now() + EARLIER_ERROR_WAIT;
        loop {
            match &*self.slot.read().unwrap_or_else(PoisonError::into_inner) {
                Slot::Closed(closed) => return closed.out_of_space,
                Slot::Open(_) if Instant::now() >= give_up => return false,
                // (Never another database: the caller still holds the failed one, so a reopen
                // would find the file locked.)
                Slot::Open(_) => {}
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Closes `db` after an I/O error, unless another call already has.
    fn close(&self, db: &Arc<Database>, out_of_space: bool, error: &redb::Error) {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        if !matches!(&*slot, Slot::Open(current) if Arc::ptr_eq(current, db)) {
            return;
        }
        *slot = Slot::Closed(Closed {
            out_of_space,
            cause: error.to_string(),
            next_attempt: Instant::now(),
        });
        if !out_of_space {
            tracing::error!(path = %self.dir.display(), %error, "metadata store I/O error; reopening it");
        }
    }

    /// Runs `f` in a write transaction and commits it (visible, not yet durable); `f` lists
    /// what it changed, for the [`Redo`] log.
    fn write<T>(
        &self,
        wrap: impl FnOnce(BackendError) -> MetaError,
        f: impl FnOnce(&redb::WriteTransaction, &mut Vec<Change>) -> Result<T, Failure>,
    ) -> Result<T, MetaError> {
        self.check_space()?;
        let stuck = self
            .redo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
            >= 2 * REDO_MAX;
        if stuck {
            // Durable commits keep failing: the log may not grow without bound.
            self.durable_commit()?;
        }
        let (value, sync) = self.call(wrap, |db| {
            let mut redo = self.redo.lock().unwrap_or_else(PoisonError::into_inner);
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            redo.catch_up(&txn)?;
            let mut changes = Vec::new();
            let value = f(&txn, &mut changes)?;
            txn.commit()?;
            self.committed(&mut redo, false, changes);
            let n = self.writes.fetch_add(1, Ordering::Relaxed);
            Ok((
                value,
                n % RECLAIM_EVERY == RECLAIM_EVERY - 1 || redo.bytes >= REDO_MAX,
            ))
        })?;
        if sync {
            // The write is made and logged whatever becomes of this; a failure closes the
            // database like any other, and the log makes the write again after the reopen.
            // A success ends an out-of-space episode, as any write's does.
            let _ = self.durable_commit();
        } else {
            self.space.accepted();
        }
        Ok(value)
    }

    /// Refuses a write untried while a recent one found the file system full.
    fn check_space(&self) -> Result<(), MetaError> {
        let mut resume = self
            .writes_resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *resume {
            Some(at) if Instant::now() < at => {
                self.space.refused();
                Err(MetaError::OutOfSpace {
                    path: self.dir.clone(),
                })
            }
            Some(_) => {
                *resume = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The durable commit a flush runs.
    fn flush(&self) -> Result<(), MetaError> {
        self.durable_commit()
    }

    /// An empty durable commit, making the [`Redo`] log's changes again first if the database
    /// is behind them; it empties the log.
    fn durable_commit(&self) -> Result<(), MetaError> {
        self.check_space()?;
        self.call(
            |source| MetaError::Flush {
                source: Arc::from(source),
            },
            |db| {
                let mut redo = self.redo.lock().unwrap_or_else(PoisonError::into_inner);
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                redo.catch_up(&txn)?;
                txn.commit()?;
                self.committed(&mut redo, true, Vec::new());
                Ok(())
            },
        )?;
        self.space.accepted();
        Ok(())
    }
}

/// Removes `path` if it is there.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates the database `file` if it does not exist, under a temporary name first: a process
/// killed while redb writes a new file's first pages would otherwise leave a file that no
/// later start can open.
fn create_whole(file: &Path) -> Result<(), BackendError> {
    if file.exists() {
        return Ok(());
    }
    let fresh = file.with_extension("redb.new");
    remove_if_present(&fresh)?;
    drop(Database::create(&fresh)?);
    std::fs::File::open(&fresh)?.sync_all()?;
    std::fs::rename(&fresh, file)?;
    Ok(())
}

/// Why a store in redb 2's format was not migrated.
enum MigrationError {
    /// Another process holds the old file (an earlier Tessera, or another start migrating it).
    Busy,
    Failed(BackendError),
}

impl<E: Into<BackendError>> From<E> for MigrationError {
    fn from(error: E) -> Self {
        MigrationError::Failed(error.into())
    }
}

/// Rewrites `file`, a store that Tessera wrote with redb 2 (its file format v2, which redb 3 and
/// later refuse to open), in the current format, without changing the old file:
///
/// 1. with the old file locked (redb 2 locks it the same way, so neither an earlier Tessera
///    nor another start migrating it can have it meanwhile), it is copied to `meta.redb.v2-work`;
/// 2. redb 2 opens the copy (repairing it if its last writer was killed; a panic there is
///    caught and reported) and every table is copied into `meta.redb.v3`, committed and synced;
/// 3. the old file is kept as `meta.redb.v2` (a hard link: no copy), and `meta.redb.v3` is
///    renamed over `meta.redb`.
///
/// A process killed before the rename leaves the old file as it was and the next start
/// migrates it again; after it, the store is migrated. It needs room for two more copies of
/// the store while it runs; a failure removes them.
fn migrate_from_v2(file: &Path) -> Result<(), MigrationError> {
    let started = Instant::now();
    let old = std::fs::File::open(file)?;
    match old.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(MigrationError::Busy),
        Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
    }
    let work = file.with_extension("redb.v2-work");
    let fresh = file.with_extension("redb.v3");
    let backup = file.with_extension("redb.v2");
    remove_if_present(&work)?;
    remove_if_present(&fresh)?;
    let copied = std::fs::copy(file, &work)
        .map_err(BackendError::from)
        .and_then(|_| copy_tables_from_v2(&work, &fresh));
    let _ = remove_if_present(&work);
    let (tables, entries) = match copied {
        Ok(counts) => counts,
        Err(error) => {
            let _ = remove_if_present(&fresh);
            return Err(error.into());
        }
    };
    remove_if_present(&backup)?;
    std::fs::hard_link(file, &backup)?;
    std::fs::rename(&fresh, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    drop(old);
    tracing::info!(
        path = %file.display(),
        tables,
        entries,
        backup = %backup.display(),
        took_ms = started.elapsed().as_millis() as u64,
        "metadata store migrated from redb's file format v2"
    );
    Ok(())
}

/// Copies every table of the redb 2 database `from` into a new database `to`, committed durably
/// and synced; returns the number of tables and entries.
fn copy_tables_from_v2(from: &Path, to: &Path) -> Result<(usize, u64), BackendError> {
    let opened = std::panic::catch_unwind(|| redb2::Database::open(from));
    let old = match opened {
        Ok(opened) => opened?,
        Err(_) => {
            return Err(format!(
                "redb 2 panicked opening a copy of the store ({}) to migrate it; the store \
                 itself is unchanged",
                from.display()
            )
            .into());
        }
    };
    let new = Database::create(to)?;
    let (mut tables, mut entries) = (0_usize, 0_u64);
    let read = old.begin_read()?;
    let write = new.begin_write()?;
    for handle in read.list_tables()? {
        let name = redb2::TableHandle::name(&handle).to_owned();
        let from = read.open_table(redb2::TableDefinition::<&[u8], &[u8]>::new(&name))?;
        let mut to = write.open_table(def(&name))?;
        for entry in redb2::ReadableTable::iter(&from)? {
            let (key, value) = entry?;
            to.insert(key.value(), value.value())?;
            entries += 1;
        }
        tables += 1;
    }
    // The default durability: the copy is on disk before it replaces the old file.
    write.commit()?;
    drop(new);
    std::fs::File::open(to)?.sync_all()?;
    Ok((tables, entries))
}

/// A metadata store in one redb file inside directory `path`. Only one process may open it at
/// a time.
pub struct RedbStore {
    shared: Arc<Shared>,
    group: GroupFlush,
}

impl RedbStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        RedbStore::open_waiting(path, Duration::ZERO)
    }

    /// Like [`RedbStore::open`], but while another process holds the database, tries again
    /// for up to `patience` before giving up. For an agent's own stores: the processes it
    /// forks (its actions' stand-ins) hold its descriptors, and so the lock, until they close
    /// them a moment after the fork, so an agent killed mid-spawn and started again at once
    /// can find its database still locked for that moment.
    pub fn open_waiting(path: impl AsRef<Path>, patience: Duration) -> Result<Self, MetaError> {
        let path = path.as_ref().to_owned();
        let open_error = |source: BackendError| MetaError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(|e| open_error(Box::new(e)))?;
        let file = path.join("meta.redb");
        create_whole(&file).map_err(open_error)?;
        let give_up = Instant::now() + patience;
        let db = loop {
            let opened = match Database::create(&file) {
                Err(redb::DatabaseError::UpgradeRequired(2)) => match migrate_from_v2(&file) {
                    Ok(()) => continue,
                    // Another start is migrating it: as for a store held open.
                    Err(MigrationError::Busy) => Err(redb::DatabaseError::DatabaseAlreadyOpen),
                    Err(MigrationError::Failed(error)) => {
                        return Err(open_error(
                            format!(
                                "migrating the store from redb 2's format failed (the old file \
                                 is unchanged; the migration needs room for two more copies \
                                 of it): {error}"
                            )
                            .into(),
                        ));
                    }
                },
                other => other,
            };
            match opened {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.map_err(|e| open_error(Box::new(e)))?,
            }
        };
        let shared = Arc::new(Shared {
            space: SpaceWatch::new("metadata", &path),
            dir: path.clone(),
            file,
            slot: RwLock::new(Slot::Open(Arc::new(db))),
            writes: AtomicU64::new(0),
            writes_resume: Mutex::new(None),
            redo: Mutex::default(),
            behind: AtomicBool::new(false),
        });
        let group = GroupFlush::start("tessera-meta-flush", {
            let shared = Arc::clone(&shared);
            move || shared.flush().map_err(|e| Box::new(e) as BackendError)
        })
        .map_err(|e| open_error(Box::new(e)))?;
        Ok(RedbStore { shared, group })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.shared.dir
    }

    /// Number of fsyncs the group flush has run (for metrics and tests).
    pub fn flushes(&self) -> u64 {
        self.group.flushes()
    }

    /// A flush error as the caller should see it: out of space or unavailable as such.
    fn flush_error(dir: &Path, error: MetaError) -> MetaError {
        if let MetaError::Flush { source } = &error
            && let Some(inner) = source.downcast_ref::<MetaError>()
        {
            match inner {
                MetaError::OutOfSpace { .. } => {
                    return MetaError::OutOfSpace {
                        path: dir.to_owned(),
                    };
                }
                MetaError::Unavailable { cause, .. } => {
                    return MetaError::Unavailable {
                        path: dir.to_owned(),
                        cause: cause.clone(),
                    };
                }
                _ => {}
            }
        }
        error
    }
}

impl MetadataStore for RedbStore {
    fn reads_quickly(&self) -> bool {
        let open = matches!(self.shared.slot.try_read().as_deref(), Ok(Slot::Open(_)));
        open && !self.shared.behind.load(Ordering::Acquire)
    }

    fn table(&self, name: &str) -> Result<Table, MetaError> {
        if name.is_empty() {
            return Err(MetaError::InvalidTableName {
                name: name.to_owned(),
            });
        }
        self.shared.write(
            |source| MetaError::OpenTable {
                table: name.to_owned(),
                source,
            },
            |txn, changes| {
                txn.open_table(def(name))?;
                changes.push(Change::Table(name.to_owned()));
                Ok(())
            },
        )?;
        Ok(Arc::new(RedbTable {
            name: name.to_owned(),
            shared: Arc::clone(&self.shared),
        }))
    }

    fn apply_batch(&self, batch: Batch) -> Result<(), MetaError> {
        if batch.is_empty() {
            return Ok(());
        }
        let tables = batch.tables().join(", ");
        for name in batch.tables() {
            if name.is_empty() {
                return Err(MetaError::InvalidTableName {
                    name: name.to_owned(),
                });
            }
        }
        self.shared.write(
            |source| MetaError::Batch { tables, source },
            |txn, changes| {
                for op in batch.into_ops() {
                    let change = match op {
                        BatchOp::Insert { table, key, value } => Change::Set {
                            table,
                            key,
                            value: Some(value),
                        },
                        BatchOp::Remove { table, key } => Change::Set {
                            table,
                            key,
                            value: None,
                        },
                    };
                    change.apply(txn)?;
                    changes.push(change);
                }
                Ok(())
            },
        )
    }

    fn flush(&self) -> Result<(), MetaError> {
        self.group
            .flush()
            .map_err(|e| Self::flush_error(&self.shared.dir, e))
    }

    fn dump(&self, except: &[&str]) -> Result<Vec<TableDump>, MetaError> {
        self.shared.read(
            |source| MetaError::Scan {
                table: "(all tables)".to_owned(),
                source,
            },
            // Behind a log, which is never empty then, some table is not as committed.
            |_, _| FromLog::Refuse,
            |db| {
                // One read transaction: every table as of the same commit.
                let txn = db.begin_read()?;
                let mut dump = Vec::new();
                for handle in txn.list_tables()? {
                    let name = handle.name().to_owned();
                    if except.contains(&name.as_str()) {
                        continue;
                    }
                    let table = txn.open_table(def(&name))?;
                    let mut entries = Vec::new();
                    for entry in table.iter()? {
                        let (k, v) = entry?;
                        entries.push((k.value().to_vec(), v.value().to_vec()));
                    }
                    dump.push(TableDump { name, entries });
                }
                dump.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(dump)
            },
        )
    }

    fn space(&self) -> SpaceStats {
        self.shared.space.stats()
    }

    fn flush_async(&self) -> BoxFuture<'static, Result<(), MetaError>> {
        let dir = self.shared.dir.clone();
        self.group
            .flush_async()
            .map(move |result| result.map_err(|e| Self::flush_error(&dir, e)))
            .boxed()
    }
}

struct RedbTable {
    name: String,
    shared: Arc<Shared>,
}

impl RedbTable {
    /// Runs `f` on the table in a read transaction; `from_log` as in [`Shared::read`].
    fn read<T>(
        &self,
        key: &[u8],
        from_log: impl FnOnce(&View, &[Change]) -> FromLog<T>,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, Failure>,
    ) -> Result<T, MetaError> {
        self.shared.read(
            |source| MetaError::Read {
                table: self.name.clone(),
                key: display_key(key),
                source,
            },
            from_log,
            |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(def(&self.name))?;
                f(&table)
            },
        )
    }

    /// Runs `f` on the table in a write transaction; `f` says what it did to `key` (the only
    /// key it may change), for the [`Redo`] log.
    fn write<'v, T>(
        &self,
        key: &[u8],
        f: impl FnOnce(
            &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        ) -> Result<(T, KeyWrite<'v>), Failure>,
    ) -> Result<T, MetaError> {
        self.shared.write(
            |source| MetaError::Write {
                table: self.name.clone(),
                key: display_key(key),
                source,
            },
            |txn, changes| {
                let mut table = txn.open_table(def(&self.name))?;
                let (value, write) = f(&mut table)?;
                match write {
                    KeyWrite::Unchanged => {}
                    KeyWrite::Set(new) => changes.push(Change::set(&self.name, key, Some(new))),
                    KeyWrite::Removed => changes.push(Change::set(&self.name, key, None)),
                }
                Ok(value)
            },
        )
    }
}

/// What a [`RedbTable::write`] did to its key.
enum KeyWrite<'a> {
    Unchanged,
    Set(&'a [u8]),
    Removed,
}

impl MetaTable for RedbTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.read(
            key,
            |view, changes| view.key(changes, &self.name, key),
            |t| Ok(t.get(key)?.map(|v| v.value().to_vec())),
        )
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.write(key, |t| {
            let old = t.insert(key, value)?.map(|v| v.value().to_vec());
            Ok((old, KeyWrite::Set(value)))
        })
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.write(key, |t| {
            let old = t.remove(key)?.map(|v| v.value().to_vec());
            let write = if old.is_some() {
                KeyWrite::Removed
            } else {
                KeyWrite::Unchanged
            };
            Ok((old, write))
        })
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<SwapOutcome, MetaError> {
        self.write(key, |t| {
            let current = t.get(key)?.map(|v| v.value().to_vec());
            if current.as_deref() != expected {
                return Ok((SwapOutcome::Conflict { current }, KeyWrite::Unchanged));
            }
            let write = match new {
                Some(value) => {
                    t.insert(key, value)?;
                    KeyWrite::Set(value)
                }
                None => {
                    t.remove(key)?;
                    KeyWrite::Removed
                }
            };
            Ok((SwapOutcome::Swapped, write))
        })
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        let table = self.name.clone();
        let collected = self.read(
            prefix,
            |view, _| view.table(&self.name),
            |t| {
                let mut out = Vec::new();
                for entry in t.range(prefix..)? {
                    let (k, v) = entry?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.push((k.value().to_vec(), v.value().to_vec()));
                }
                Ok(out)
            },
        );
        match collected {
            Ok(entries) => Box::new(entries.into_iter().map(Ok)),
            Err(error @ (MetaError::OutOfSpace { .. } | MetaError::Unavailable { .. })) => {
                Box::new(std::iter::once(Err(error)))
            }
            Err(error) => {
                let source: BackendError = Box::new(error);
                Box::new(std::iter::once(Err(MetaError::Scan { table, source })))
            }
        }
    }

    fn len(&self) -> Result<usize, MetaError> {
        self.read(
            b"",
            |view, _| view.table(&self.name),
            |t| Ok(t.len()? as usize),
        )
    }

    fn is_empty(&self) -> Result<bool, MetaError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::contract;
    use super::*;

    fn open() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("meta")).unwrap();
        (dir, store)
    }

    /// A store written by redb 2 (file format v2, as Tessera wrote it before redb 4) opens
    /// with every table and entry, once migrated; a copy left by a migration killed part way
    /// is replaced, and the old file is no longer kept.
    #[test]
    fn a_store_in_redb_2s_format_is_migrated_whole() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        std::fs::create_dir_all(&meta).unwrap();
        let file = meta.join("meta.redb");
        {
            let old = redb2::Database::create(&file).unwrap();
            let txn = old.begin_write().unwrap();
            {
                let blobs = redb2::TableDefinition::<&[u8], &[u8]>::new("blobs");
                let mut table = txn.open_table(blobs).unwrap();
                for n in 0..1000_u32 {
                    table
                        .insert(n.to_be_bytes().as_slice(), vec![n as u8; 100].as_slice())
                        .unwrap();
                }
                let ac = redb2::TableDefinition::<&[u8], &[u8]>::new("ac");
                txn.open_table(ac)
                    .unwrap()
                    .insert(b"action".as_slice(), b"result".as_slice())
                    .unwrap();
                let empty = redb2::TableDefinition::<&[u8], &[u8]>::new("empty");
                txn.open_table(empty).unwrap();
            }
            txn.commit().unwrap();
        }
        std::fs::write(meta.join("meta.redb.v3"), b"a killed migration's copy").unwrap();
        std::fs::write(meta.join("meta.redb.v2-work"), b"a killed migration's copy").unwrap();
        let old_bytes = std::fs::read(&file).unwrap();
        assert!(matches!(
            Database::create(&file),
            Err(redb::DatabaseError::UpgradeRequired(2))
        ));

        // While an earlier Tessera holds it, it is left alone, and the error says why.
        let held = redb2::Database::open(&file).unwrap();
        let error = RedbStore::open(&meta).err().expect("refused while held");
        let error = format!("{error:?}");
        assert!(
            error.contains("DatabaseAlreadyOpen") || error.contains("another process holds it"),
            "{error}"
        );
        drop(held);
        assert_eq!(std::fs::read(&file).unwrap(), old_bytes);

        let store = RedbStore::open(&meta).unwrap();
        let blobs = store.table("blobs").unwrap();
        assert_eq!(blobs.len().unwrap(), 1000);
        assert_eq!(
            blobs.get(&7_u32.to_be_bytes()).unwrap(),
            Some(vec![7_u8; 100])
        );
        let names: Vec<String> = store
            .dump(&[])
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["ac", "blobs", "empty"]);
        assert_eq!(
            store.table("ac").unwrap().get(b"action").unwrap(),
            Some(b"result".to_vec())
        );
        store.table("ac").unwrap().insert(b"more", b"x").unwrap();
        store.flush().unwrap();
        drop((blobs, store));
        assert!(!meta.join("meta.redb.v3").exists());
        assert!(!meta.join("meta.redb.v2-work").exists());
        // The old file is kept as it was, beside the store.
        assert_eq!(std::fs::read(meta.join("meta.redb.v2")).unwrap(), old_bytes);

        // Now in the current format: opened as it is.
        let store = RedbStore::open(&meta).unwrap();
        assert_eq!(
            store.table("ac").unwrap().get(b"more").unwrap(),
            Some(b"x".to_vec())
        );
    }

    #[test]
    fn tables_are_separate_ordered_maps() {
        contract::tables_are_separate_ordered_maps(&open().1);
    }

    #[test]
    fn a_dump_holds_every_table_in_order() {
        contract::a_dump_holds_every_table_in_order(&open().1);
    }

    #[test]
    fn empty_table_name_is_refused() {
        contract::empty_table_name_is_refused(&open().1);
    }

    #[test]
    fn compare_and_swap_reports_conflicts() {
        contract::compare_and_swap_reports_conflicts(&open().1);
    }

    #[test]
    fn batches_span_tables() {
        contract::batches_span_tables(&open().1);
    }

    #[test]
    fn flushes_return() {
        contract::flushes_return(&open().1);
    }

    #[test]
    fn flushed_writes_survive_reopen_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let store = RedbStore::open(&path).unwrap();
            store.table("t").unwrap().insert(b"k", b"v").unwrap();
            store.flush().unwrap();
            assert!(RedbStore::open(&path).is_err(), "one process at a time");
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.table("t").unwrap().get(b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }
}
