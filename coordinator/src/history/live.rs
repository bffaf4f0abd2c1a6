//! The feed of changes that keeps open dashboard pages live: every job whose shown events
//! changed, and every job recorded as finished. Pages hear of a change through `/events` and
//! fetch what changed; the feed itself carries no results.
//!
//! A broadcast channel: a slow page misses changes (it is told it lagged and reloads what it
//! shows), it never slows a job.

use serde::Serialize;
use tokio::sync::broadcast;

/// How many changes a page may fall behind before it is told it lagged.
const CAPACITY: usize = 1024;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveChange {
    /// A job's shown events changed: up to `seq` may now be read.
    Job {
        /// The job.
        id: String,
        /// Its highest shown event.
        seq: u64,
        /// Its REAPI instance (who may hear of it), not sent.
        #[serde(skip)]
        instance: String,
    },
    /// A job finished and its record is in the history.
    Recorded {
        /// The job.
        id: String,
        /// See [`LiveChange::Job`].
        #[serde(skip)]
        instance: String,
    },
}

impl LiveChange {
    /// Its event's name on `/events`.
    pub fn name(&self) -> &'static str {
        match self {
            LiveChange::Job { .. } => "job",
            LiveChange::Recorded { .. } => "recorded",
        }
    }

    /// The instance of the job it is about.
    pub fn instance(&self) -> &str {
        match self {
            LiveChange::Job { instance, .. } | LiveChange::Recorded { instance, .. } => instance,
        }
    }
}

/// Where changes are published. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<LiveChange>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl LiveFeed {
    /// A feed nobody listens to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `change` to every listener (none: it is dropped).
    pub fn publish(&self, change: LiveChange) {
        let _ = self.sender.send(change);
    }

    /// A new listener, hearing changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveChange> {
        self.sender.subscribe()
    }
}
