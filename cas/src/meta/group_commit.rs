//! Group commit: many writers' batches applied in one transaction.
//!
//! With redb every write transaction costs a commit (a copy of the changed B-tree pages and a
//! header update), so small writes from many threads are bound by the commit rate, not by the
//! bytes. A dedicated committer thread takes everything queued since its last commit and
//! applies it as one [`Batch`]; writers that queue while it commits are served by the next
//! commit. So under load one commit serves as many writers as arrived during the previous one.
//!
//! **Lingering.** A committer started with [`GroupCommit::start_lingering`] waits up to its
//! linger after the first batch arrives for more to join it (up to `LINGER_MAX_OPS`
//! operations), counted from when the first of them was queued, so writes that come one by one,
//! as a build tool's uploads do, share commits too. It is for callers that never wait on a
//! commit in the normal course (the blob store's writers are acknowledged before their index
//! records commit): a [`Queued::wait`] on a batch still lingering (whether from
//! [`GroupCommit::queue`], [`GroupCommit::barrier`] or [`GroupCommit::apply`]) cuts the linger
//! short, so whoever does wait is not delayed.
//!
//! Order is kept: batches are applied in the order they were queued (later operations on a key
//! win), so a caller that queues under its own lock gets its lock's order in the store. A
//! commit is all-or-nothing for every writer in it: if the combined batch fails, each of them
//! gets the error and none of their writes was made. Like any [`MetadataStore::apply_batch`],
//! a commit makes the writes visible, not durable: durability is a flush's job
//! ([`MetadataStore::flush`]), unchanged.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Batch, MetaError, MetadataStore};

/// Applies queued batches in groups; see the module docs. Dropping it commits what is already
/// queued, then stops the committer thread.
pub struct GroupCommit {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// Operations a lingering commit stops gathering at.
const LINGER_MAX_OPS: usize = 4096;

struct Shared {
    state: Mutex<State>,
    /// Wakes the committer when something is queued or it must stop.
    queued: Condvar,
    /// How long the committer waits for more after the first batch (see the module docs).
    linger: Duration,
}

struct State {
    /// Everything queued since the committer last took the queue.
    batch: Batch,
    /// The outcome every writer of `batch` waits on.
    group: Arc<Group>,
    /// Set on drop: commit what is queued, then exit.
    stopping: bool,
    /// The committer has exited: nothing more will be committed.
    stopped: bool,
    /// Groups committed so far (for tests and metrics).
    commits: u64,
    /// The group the committer is applying now, if any.
    in_flight: Option<Arc<Group>>,
    /// Someone waits for the queued batch: commit it without lingering.
    hurry: bool,
    /// When the first batch of `batch` was queued: a linger counts from there.
    first_queued: Option<Instant>,
}

/// The outcome of one commit, shared by its writers.
#[derive(Default)]
struct Group {
    outcome: Mutex<Option<Result<(), Arc<MetaError>>>>,
    done: Condvar,
}

impl Group {
    fn finish(&self, outcome: Result<(), Arc<MetaError>>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.done.notify_all();
    }
}

/// A queued batch; [`Queued::wait`] blocks until the commit that holds it has run.
#[must_use = "a queued batch is only known to be written once waited on"]
#[derive(Clone)]
pub struct Queued {
    group: Option<Arc<Group>>,
    /// The committer's state, so a wait can cut a linger short.
    shared: Option<Arc<Shared>>,
}

impl Queued {
    /// A batch the committer will never take: it has stopped.
    fn closed() -> Queued {
        let group = Arc::new(Group::default());
        group.finish(Err(Arc::new(MetaError::Closed)));
        Queued {
            group: Some(group),
            shared: None,
        }
    }

    /// Without blocking: `None` while the commit is still to run, then whether it succeeded.
    pub fn finished(&self) -> Option<bool> {
        let Some(group) = &self.group else {
            return Some(true);
        };
        let outcome = group.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        outcome.as_ref().map(Result::is_ok)
    }

    /// Blocks until the batch is applied (visible to readers) or its commit failed. A
    /// lingering committer commits at once for a waiter (see the module docs).
    pub fn wait(self) -> Result<(), MetaError> {
        let Some(group) = self.group else {
            return Ok(());
        };
        if let Some(shared) = &self.shared {
            let mut state = shared.lock();
            if Arc::ptr_eq(&state.group, &group) {
                state.hurry = true;
                drop(state);
                shared.queued.notify_one();
            }
        }
        let mut outcome = group.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match &*outcome {
                Some(Ok(())) => return Ok(()),
                Some(Err(error)) => return Err(shared_error(error)),
                None => {
                    outcome = group
                        .done
                        .wait(outcome)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

/// One writer's copy of a commit's error: the kinds callers act on keep their kind.
fn shared_error(error: &Arc<MetaError>) -> MetaError {
    match &**error {
        MetaError::OutOfSpace { path } => MetaError::OutOfSpace { path: path.clone() },
        MetaError::Unavailable { path, cause } => MetaError::Unavailable {
            path: path.clone(),
            cause: cause.clone(),
        },
        MetaError::Closed => MetaError::Closed,
        _ => MetaError::GroupCommit {
            source: Arc::clone(error) as Arc<dyn std::error::Error + Send + Sync>,
        },
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held while committing, so a poisoned state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl GroupCommit {
    /// Starts the committer thread (named `thread_name`) writing to `meta`.
    pub fn start(thread_name: &str, meta: Arc<dyn MetadataStore>) -> std::io::Result<Self> {
        GroupCommit::start_lingering(thread_name, meta, Duration::ZERO)
    }

    /// [`GroupCommit::start`], with a committer that waits up to `linger` for more batches
    /// to join the first (see the module docs).
    pub fn start_lingering(
        thread_name: &str,
        meta: Arc<dyn MetadataStore>,
        linger: Duration,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                batch: Batch::new(),
                group: Arc::default(),
                stopping: false,
                stopped: false,
                commits: 0,
                in_flight: None,
                hurry: false,
                first_queued: None,
            }),
            queued: Condvar::new(),
            linger,
        });
        let committer = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_committer(&shared, &*meta)
            })?;
        Ok(GroupCommit {
            shared,
            committer: Some(committer),
        })
    }

    /// Queues `batch` for the next commit. Cheap and non-blocking, so callers may queue under
    /// their own lock to keep their order. An empty batch is done at once.
    pub fn queue(&self, batch: Batch) -> Queued {
        if batch.is_empty() {
            return Queued {
                group: None,
                shared: None,
            };
        }
        let mut state = self.shared.lock();
        if state.stopped {
            return Queued::closed();
        }
        // A committer with something queued already is committing or lingering: it needs no
        // wake-up per batch, only once there is enough to commit at once.
        let first = state.batch.is_empty();
        if first {
            state.first_queued = Some(Instant::now());
        }
        let wake = first || state.batch.len() + batch.len() >= LINGER_MAX_OPS;
        state.batch.append(batch);
        let group = Arc::clone(&state.group);
        drop(state);
        if wake {
            self.shared.queued.notify_one();
        }
        Queued {
            group: Some(group),
            shared: Some(Arc::clone(&self.shared)),
        }
    }

    /// A wait for everything queued before this call to be committed (nothing of its own):
    /// the next commit if something is queued, else the one running, else done at once. What
    /// a caller needs before a flush that must cover earlier writers' batches (an empty
    /// [`GroupCommit::queue`] is done at once, whatever is still queued).
    pub fn barrier(&self) -> Queued {
        let state = self.shared.lock();
        if state.stopped {
            return Queued::closed();
        }
        if !state.batch.is_empty() {
            return Queued {
                group: Some(Arc::clone(&state.group)),
                shared: Some(Arc::clone(&self.shared)),
            };
        }
        Queued {
            group: state.in_flight.clone(),
            shared: None,
        }
    }

    /// Queues `batch` and waits for its commit.
    pub fn apply(&self, batch: Batch) -> Result<(), MetaError> {
        self.queue(batch).wait()
    }

    /// Number of commits run so far.
    pub fn commits(&self) -> u64 {
        self.shared.lock().commits
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.queued.notify_one();
        if let Some(committer) = self.committer.take() {
            // A panic in the store was already turned into `Closed` for the waiters.
            let _ = committer.join();
        }
    }
}

fn run_committer(shared: &Shared, meta: &dyn MetadataStore) {
    // Also runs if the store panics, so no writer waits forever on a dead committer.
    struct MarkStopped<'a>(&'a Shared);
    impl Drop for MarkStopped<'_> {
        fn drop(&mut self) {
            let mut state = self.0.lock();
            state.stopped = true;
            state.batch = Batch::new();
            // A group left in flight by a panic was finished (as closed) by its guard.
            state.in_flight = None;
            let group = std::mem::take(&mut state.group);
            drop(state);
            if group
                .outcome
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none()
            {
                group.finish(Err(Arc::new(MetaError::Closed)));
            }
        }
    }
    let _stopped = MarkStopped(shared);

    loop {
        let (batch, group) = {
            let mut state = shared.lock();
            while state.batch.is_empty() && !state.stopping {
                state = shared
                    .queued
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.batch.is_empty() {
                return;
            }
            let until = state.first_queued.unwrap_or_else(Instant::now) + shared.linger;
            while !state.hurry && !state.stopping && state.batch.len() < LINGER_MAX_OPS {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = shared
                    .queued
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.hurry = false;
            state.first_queued = None;
            let batch = std::mem::take(&mut state.batch);
            let group = std::mem::take(&mut state.group);
            state.in_flight = Some(Arc::clone(&group));
            (batch, group)
        };
        // Finished by the guard (as closed) if applying panics.
        struct Unfinished(Option<Arc<Group>>);
        impl Drop for Unfinished {
            fn drop(&mut self) {
                if let Some(group) = self.0.take() {
                    group.finish(Err(Arc::new(MetaError::Closed)));
                }
            }
        }
        let mut pending = Unfinished(Some(group));
        let outcome = meta.apply_batch(batch).map_err(Arc::new);
        {
            // Applied: a flush from here on covers it.
            let mut state = shared.lock();
            state.commits += 1;
            state.in_flight = None;
        }
        if let Some(group) = pending.0.take() {
            group.finish(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::meta::{MemoryMetaStore, RedbStore};

    fn batch(table: &str, key: &str, value: &str) -> Batch {
        let mut batch = Batch::new();
        batch.insert(table, key.as_bytes().to_vec(), value.as_bytes().to_vec());
        batch
    }

    #[test]
    fn queued_batches_are_visible_once_waited_on_and_keep_their_order() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let commits = GroupCommit::start("test-commit", Arc::clone(&meta)).unwrap();
        let first = commits.queue(batch("t", "k", "first"));
        let mut second = batch("t", "other", "x");
        second.remove("t", b"k".to_vec());
        second.insert("t", b"k".to_vec(), b"second".to_vec());
        let second = commits.queue(second);
        first.wait().unwrap();
        second.wait().unwrap();
        let table = meta.table("t").unwrap();
        assert_eq!(table.get(b"k").unwrap(), Some(b"second".to_vec()));
        assert_eq!(table.get(b"other").unwrap(), Some(b"x".to_vec()));
        commits.apply(Batch::new()).unwrap();
    }

    #[test]
    fn a_lingering_committer_gathers_batches_that_come_one_by_one() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        // Far more than the test's own 25 ms: a stalled machine still gathers all five.
        let linger = Duration::from_secs(1);
        let commits =
            GroupCommit::start_lingering("test-commit", Arc::clone(&meta), linger).unwrap();
        let queued: Vec<Queued> = (0..5)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(5));
                commits.queue(batch("t", &i.to_string(), "v"))
            })
            .collect();
        // Polled, not waited on: a wait would cut the linger short.
        let started = Instant::now();
        while queued.iter().any(|q| q.finished().is_none()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never committed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(queued.iter().all(|q| q.finished() == Some(true)));
        assert_eq!(commits.commits(), 1, "one commit for all five");
        assert_eq!(
            meta.table("t").unwrap().get(b"4").unwrap(),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn a_wait_cuts_the_linger_short() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        // Longer than any test may take: only being cut short lets these return.
        let linger = Duration::from_secs(3600);
        let commits =
            GroupCommit::start_lingering("test-commit", Arc::clone(&meta), linger).unwrap();
        let queued = commits.queue(batch("t", "a", "1"));
        commits.barrier().wait().unwrap();
        assert_eq!(queued.finished(), Some(true));
        commits.apply(batch("t", "b", "2")).unwrap();
        commits.queue(batch("t", "c", "3")).wait().unwrap();
        assert_eq!(commits.commits(), 3);
        // Dropping commits what is queued at once too.
        let last = commits.queue(batch("t", "d", "4"));
        drop(commits);
        last.wait().unwrap();
        assert_eq!(
            meta.table("t").unwrap().get(b"d").unwrap(),
            Some(b"4".to_vec())
        );
    }

    #[test]
    fn concurrent_writers_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetadataStore> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let commits = GroupCommit::start("test-commit", Arc::clone(&meta)).unwrap();
        let start = Barrier::new(16);
        std::thread::scope(|scope| {
            for writer in 0..16 {
                let (commits, start) = (&commits, &start);
                scope.spawn(move || {
                    start.wait();
                    for n in 0..50 {
                        commits
                            .apply(batch("t", &format!("{writer}/{n}"), "v"))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(meta.table("t").unwrap().len().unwrap(), 800);
        // 800 batches; one commit each would be 800.
        assert!(commits.commits() < 800, "{} commits", commits.commits());
    }

    /// A memory store whose commits take a while, so a barrier has something to wait for.
    struct Slow(MemoryMetaStore);

    impl MetadataStore for Slow {
        fn table(&self, name: &str) -> Result<crate::meta::Table, MetaError> {
            self.0.table(name)
        }
        fn apply_batch(&self, batch: Batch) -> Result<(), MetaError> {
            std::thread::sleep(std::time::Duration::from_millis(30));
            self.0.apply_batch(batch)
        }
        fn flush(&self) -> Result<(), MetaError> {
            self.0.flush()
        }
        fn flush_async(&self) -> futures::future::BoxFuture<'static, Result<(), MetaError>> {
            self.0.flush_async()
        }
        fn dump(&self, skip: &[&str]) -> Result<Vec<crate::meta::TableDump>, MetaError> {
            self.0.dump(skip)
        }
    }

    /// An empty batch is done at once even while others are queued; a barrier waits for them
    /// (the one being committed and the ones queued behind it).
    #[test]
    fn a_barrier_waits_for_every_batch_queued_before_it() {
        let meta = Arc::new(Slow(MemoryMetaStore::new()));
        let commits = GroupCommit::start("test-commit", Arc::clone(&meta) as _).unwrap();
        commits.barrier().wait().unwrap();
        let table = meta.table("t").unwrap();
        let first = commits.queue(batch("t", "a", "1"));
        // Let the committer take the first batch, then queue a second behind it.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let second = commits.queue(batch("t", "b", "2"));
        assert!(commits.queue(Batch::new()).wait().is_ok());
        assert_eq!(
            table.get(b"b").unwrap(),
            None,
            "an empty batch waits for nothing"
        );
        commits.barrier().wait().unwrap();
        assert_eq!(table.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(table.get(b"b").unwrap(), Some(b"2".to_vec()));
        // Only the first in flight: the barrier waits for it alone.
        let third = commits.queue(batch("t", "c", "3"));
        std::thread::sleep(std::time::Duration::from_millis(10));
        commits.barrier().wait().unwrap();
        assert_eq!(table.get(b"c").unwrap(), Some(b"3".to_vec()));
        for queued in [first, second, third] {
            queued.wait().unwrap();
        }
        drop(commits);
    }

    /// A store whose batches all fail, as a full disk makes them.
    struct Refusing;

    impl MetadataStore for Refusing {
        fn table(&self, _: &str) -> Result<crate::meta::Table, MetaError> {
            Err(MetaError::Closed)
        }
        fn apply_batch(&self, _: Batch) -> Result<(), MetaError> {
            Err(MetaError::OutOfSpace {
                path: "/full".into(),
            })
        }
        fn flush(&self) -> Result<(), MetaError> {
            Ok(())
        }
        fn flush_async(&self) -> futures::future::BoxFuture<'static, Result<(), MetaError>> {
            Box::pin(async { Ok(()) })
        }
        fn dump(&self, _: &[&str]) -> Result<Vec<crate::meta::TableDump>, MetaError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_failed_commit_fails_every_writer_in_it_with_its_kind() {
        let commits = GroupCommit::start("test-commit", Arc::new(Refusing)).unwrap();
        let waits: Vec<Queued> = (0..4)
            .map(|n| commits.queue(batch("t", &n.to_string(), "v")))
            .collect();
        for wait in waits {
            assert!(wait.wait().unwrap_err().is_out_of_space());
        }
    }

    #[test]
    fn drop_commits_what_is_queued() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let commits = GroupCommit::start("test-commit", Arc::clone(&meta)).unwrap();
        let queued = commits.queue(batch("t", "k", "v"));
        drop(commits);
        queued.wait().unwrap();
        assert!(meta.table("t").unwrap().get(b"k").unwrap().is_some());
    }
}
