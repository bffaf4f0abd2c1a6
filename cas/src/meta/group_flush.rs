//! Group flush: many writers waiting on one fsync.
//!
//! A dedicated flusher thread runs the backend's flush. A writer asks for a flush that *starts
//! after* its request (a flush already running may have begun before the writer's write), then
//! waits for it; every writer that asks while a flush runs is served by the next one. So under
//! load there is at most one flush running and one queued, whatever the number of writers.
//! Works for blocking callers and async ones alike, and needs no runtime.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::MetaError;
use super::error::BackendError;

/// The backend's flush: returns once everything written before it started is durable.
pub(super) type FlushFn = Box<dyn FnMut() -> Result<(), BackendError> + Send + 'static>;

/// Coalesces concurrent flush requests; see the module docs. Dropping it runs the flushes
/// already requested, then stops the flusher thread.
pub struct GroupFlush {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher when a flush is wanted or it must stop.
    requested: Condvar,
    /// Wakes blocking waiters when a flush finished or the flusher stopped.
    finished: Condvar,
    /// Tells async waiters the same.
    progress: watch::Sender<Progress>,
}

struct State {
    /// Epoch of the last flush that started (flushes are numbered from 1).
    started: u64,
    /// Highest epoch some waiter needs.
    wanted: u64,
    /// Set on drop: run what is wanted, then exit.
    stopping: bool,
    progress: Progress,
}

#[derive(Clone, Default)]
struct Progress {
    /// Epoch of the last flush that finished.
    completed: u64,
    /// How that flush failed, if it did.
    error: Option<Arc<dyn StdError + Send + Sync + 'static>>,
    /// The flusher has exited; nothing further will be flushed.
    stopped: bool,
}

impl Progress {
    /// The answer for a waiter that needs flush `target`. A later flush than the one needed
    /// also covers the waiter's writes, so the last finished flush decides.
    fn outcome(&self, target: u64) -> Result<(), MetaError> {
        if self.completed < target {
            return Err(MetaError::Closed);
        }
        match &self.error {
            None => Ok(()),
            Some(source) => Err(MetaError::Flush {
                source: Arc::clone(source),
            }),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held while running the flush, so a poisoned state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, state: &State) {
        self.finished.notify_all();
        self.progress.send_replace(state.progress.clone());
    }
}

impl GroupFlush {
    /// Starts the flusher thread (named `thread_name`) around `flush`.
    pub fn start(
        thread_name: &str,
        flush: impl FnMut() -> Result<(), BackendError> + Send + 'static,
    ) -> io::Result<Self> {
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                started: 0,
                wanted: 0,
                stopping: false,
                progress: Progress::default(),
            }),
            requested: Condvar::new(),
            finished: Condvar::new(),
            progress,
        });
        let flush: FlushFn = Box::new(flush);
        let flusher = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_flusher(&shared, flush)
            })?;
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    /// Blocks until everything written before the call is durable.
    pub fn flush(&self) -> Result<(), MetaError> {
        let target = self.request();
        let mut state = self.shared.lock();
        while state.progress.completed < target && !state.progress.stopped {
            state = self
                .shared
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.progress.outcome(target)
    }

    /// Resolves once everything written before the call is durable. The request is registered
    /// now; dropping the future only stops waiting.
    pub fn flush_async(&self) -> impl Future<Output = Result<(), MetaError>> + Send + 'static {
        let mut progress = self.shared.progress.subscribe();
        let target = self.request();
        async move {
            match progress
                .wait_for(|p| p.completed >= target || p.stopped)
                .await
            {
                Ok(progress) => progress.outcome(target),
                Err(_) => Err(MetaError::Closed),
            }
        }
    }

    /// Number of flushes run so far (for tests and metrics).
    pub fn flushes(&self) -> u64 {
        self.shared.lock().progress.completed
    }

    fn request(&self) -> u64 {
        let mut state = self.shared.lock();
        let target = state.started + 1;
        state.wanted = state.wanted.max(target);
        drop(state);
        self.shared.requested.notify_one();
        target
    }
}

impl Drop for GroupFlush {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.requested.notify_one();
        if let Some(flusher) = self.flusher.take() {
            // A panic in the backend's flush was already turned into `Closed` for the waiters.
            let _ = flusher.join();
        }
    }
}

fn run_flusher(shared: &Shared, mut flush: FlushFn) {
    // Also runs if `flush` panics, so no waiter hangs on a dead flusher.
    struct MarkStopped<'a>(&'a Shared);
    impl Drop for MarkStopped<'_> {
        fn drop(&mut self) {
            let mut state = self.0.lock();
            state.progress.stopped = true;
            self.0.publish(&state);
        }
    }
    let _stopped = MarkStopped(shared);

    loop {
        let epoch = {
            let mut state = shared.lock();
            while state.wanted <= state.started && !state.stopping {
                state = shared
                    .requested
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.wanted <= state.started {
                return;
            }
            state.started += 1;
            state.started
        };
        let result = flush();
        let mut state = shared.lock();
        state.progress.completed = epoch;
        state.progress.error = result.err().map(Arc::from);
        shared.publish(&state);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn flush_runs_the_backend_flush() {
        let count = Arc::new(AtomicU64::new(0));
        let group = GroupFlush::start("test-flush", {
            let count = Arc::clone(&count);
            move || {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .unwrap();
        group.flush().unwrap();
        runtime().block_on(group.flush_async()).unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(group.flushes(), 2);
    }

    /// While one flush runs, any number of new requests share the next one, and none of them
    /// is answered by the flush that was already running (it may predate their writes).
    #[test]
    fn requests_during_a_flush_share_the_next_one() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let group = GroupFlush::start("test-flush", move || {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(())
        })
        .unwrap();

        let first = group.flush_async();
        entered.recv().unwrap(); // flush 1 is running
        let waiters: Vec<_> = (0..32).map(|_| group.flush_async()).collect();
        release.send(()).unwrap();
        entered.recv().unwrap(); // flush 2 started, for all 32 waiters
        assert_eq!(group.flushes(), 1);
        release.send(()).unwrap();

        let runtime = runtime();
        runtime.block_on(first).unwrap();
        for waiter in waiters {
            runtime.block_on(waiter).unwrap();
        }
        assert_eq!(group.flushes(), 2);
        assert!(entered.try_recv().is_err(), "no third flush");
    }

    #[test]
    fn blocking_waiters_from_many_threads_coalesce() {
        let group = GroupFlush::start("test-flush", || {
            std::thread::sleep(Duration::from_millis(5));
            Ok(())
        })
        .unwrap();
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..10 {
                        group.flush().unwrap();
                    }
                });
            }
        });
        // 160 requests; without coalescing there would be 160 flushes.
        assert!(group.flushes() < 100, "{} flushes", group.flushes());
    }

    #[test]
    fn a_failed_flush_fails_its_waiters_and_the_next_can_succeed() {
        let fail = Arc::new(AtomicBool::new(true));
        let group = GroupFlush::start("test-flush", {
            let fail = Arc::clone(&fail);
            move || {
                if fail.load(Ordering::SeqCst) {
                    Err("disk full".into())
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
        let err = group.flush().unwrap_err();
        assert!(matches!(err, MetaError::Flush { .. }), "{err:?}");
        assert_eq!(err.source().unwrap().to_string(), "disk full");
        fail.store(false, Ordering::SeqCst);
        group.flush().unwrap();
    }

    #[test]
    fn a_panicking_flush_closes_instead_of_hanging() {
        let group = GroupFlush::start("test-flush", || panic!("backend bug")).unwrap();
        assert!(matches!(group.flush(), Err(MetaError::Closed)));
        assert!(matches!(
            runtime().block_on(group.flush_async()),
            Err(MetaError::Closed)
        ));
    }

    #[test]
    fn drop_runs_requested_flushes_first() {
        let count = Arc::new(AtomicU64::new(0));
        let group = GroupFlush::start("test-flush", {
            let count = Arc::clone(&count);
            move || {
                std::thread::sleep(Duration::from_millis(20));
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .unwrap();
        let pending = group.flush_async();
        drop(group);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        runtime().block_on(pending).unwrap();
    }
}
