//! How the rest of the coordinator talks to the scheduler actor: [`SchedulerHandle`] sends a
//! [`Request`] and, where there is an answer, awaits it on a `oneshot`. Also the settings, the
//! counters and the one error type of the scheduler's API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_cas::meta::MetaError;
use tessera_proto::tessera::v1::{AgentMessage, CoordinatorMessage, OperationRecord, SecretEnv};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use super::fleet::FleetView;
use crate::execution::inputs::Carried;
use crate::execution::operation::OpSnapshot;
use crate::execution::platform::Platform;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A lease expires when not extended by a heartbeat within this.
    pub lease_timeout: Duration,
    /// Attempts (first run included) before an operation fails on infrastructure errors.
    pub max_attempts: u32,
    /// How long finished operations stay available to WaitExecution / GetOperation.
    pub retention: Duration,
    /// Platform keys accepted even before any agent declares them.
    pub known_platform_keys: Vec<String>,
}

impl SchedulerConfig {
    /// How often agents are asked to send heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease_timeout / 4).max(Duration::from_millis(100))
    }
}

/// Counters for tests, logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Operations queued now.
    pub queued: usize,
    /// Leases held now.
    pub leased: usize,
    /// Connected agents.
    pub agents: usize,
    /// Total slots of connected agents.
    pub slots: usize,
    /// Operations finished since start.
    pub completed: u64,
    /// Leases that expired since start.
    pub expired_leases: u64,
    /// Results refused because their lease was no longer current.
    pub stale_results: u64,
    /// Executions merged into an identical in-flight one.
    pub merged: u64,
    /// How long the longest-waiting queued operation has waited (scheduler clock).
    pub oldest_queued: Option<Duration>,
}

/// A connected agent as seen by the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent id.
    pub id: String,
    /// Declared properties.
    pub properties: Vec<(String, String)>,
    /// Slots.
    pub slots: u32,
    /// Leases it holds.
    pub running: usize,
    /// Whether it is draining.
    pub draining: bool,
}

/// Why a request to the scheduler failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The actor has stopped: the coordinator is shutting down. The one way the rest of the
    /// coordinator learns that the scheduler is gone.
    #[error("scheduler is shutting down")]
    Stopped,
    /// The platform names a key no agent or configuration knows.
    #[error(
        "unknown platform property \"{0}\": no agent has declared it and it is not configured (known: {1})"
    )]
    UnknownPlatformKey(String, String),
    /// No such operation.
    #[error("operation \"{0}\" not found")]
    NotFound(String),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// The sending half of an agent's session.
pub type AgentTx = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// A new operation and its watch; `created` is false when it joined an identical in-flight one.
pub(crate) type SubmitReply = Result<(watch::Receiver<OpSnapshot>, bool), SchedulerError>;

/// What the actor is asked to do.
pub(crate) enum Request {
    Submit {
        record: Box<OperationRecord>,
        platform: Platform,
        mergeable: bool,
        secrets: Vec<SecretEnv>,
        carried: Carried,
        trace: HashMap<String, String>,
        job: Option<String>,
        reply: oneshot::Sender<SubmitReply>,
    },
    CheckPlatform {
        platform: Platform,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    Watch {
        name: String,
        reply: oneshot::Sender<Option<watch::Receiver<OpSnapshot>>>,
    },
    Cancel {
        name: String,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    AgentJoined {
        id: String,
        session: u64,
        properties: Platform,
        slots: u32,
        tx: AgentTx,
    },
    AgentMessage {
        id: String,
        session: u64,
        message: Box<AgentMessage>,
    },
    AgentLeft {
        id: String,
        session: u64,
    },
    Stats {
        reply: oneshot::Sender<(SchedulerStats, Vec<AgentInfo>)>,
    },
    Position {
        names: Vec<String>,
        reply: oneshot::Sender<Option<usize>>,
    },
    Fleet {
        reply: oneshot::Sender<FleetView>,
    },
}

/// A cheap, cloneable way to talk to the scheduler actor.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Request>,
    config: Arc<SchedulerConfig>,
}

impl SchedulerHandle {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Request>, config: Arc<SchedulerConfig>) -> Self {
        SchedulerHandle { tx, config }
    }

    /// The scheduler's settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| SchedulerError::Stopped)?;
        rx.await.map_err(|_| SchedulerError::Stopped)
    }

    /// Tells the actor something that needs no answer (agent session events); once it has
    /// stopped there is nobody to tell.
    fn tell(&self, request: Request) {
        let _ = self.tx.send(request);
    }

    /// Queues an operation (or joins an identical in-flight one when `mergeable`). Returns a
    /// watch on it and whether a new operation was created (which the caller must flush).
    /// `secrets` go to the agent with each lease of it; they are kept in memory only, as is
    /// the calling span's trace context, which goes with them, and `carried` (the input
    /// tree's Directory messages and small files, when read at hand). `job` names the Tessera job it is
    /// a step of, for the fleet view (also in memory only).
    pub async fn submit(
        &self,
        record: OperationRecord,
        platform: Platform,
        mergeable: bool,
        (secrets, carried): (Vec<SecretEnv>, Carried),
        job: Option<String>,
    ) -> Result<(watch::Receiver<OpSnapshot>, bool), SchedulerError> {
        self.ask(|reply| Request::Submit {
            record: Box::new(record),
            platform,
            mergeable,
            secrets,
            carried,
            trace: tessera_net::trace::carry(),
            job,
            reply,
        })
        .await?
    }

    /// Refuses platforms with keys nobody declared.
    pub async fn check_platform(&self, platform: Platform) -> Result<(), SchedulerError> {
        self.ask(|reply| Request::CheckPlatform { platform, reply })
            .await?
    }

    /// A watch on an operation, if it is known.
    pub async fn watch(
        &self,
        name: &str,
    ) -> Result<Option<watch::Receiver<OpSnapshot>>, SchedulerError> {
        self.ask(|reply| Request::Watch {
            name: name.to_owned(),
            reply,
        })
        .await
    }

    /// Cancels an operation: removed from the queue, or its agent told to stop.
    pub async fn cancel(&self, name: &str) -> Result<(), SchedulerError> {
        self.ask(|reply| Request::Cancel {
            name: name.to_owned(),
            reply,
        })
        .await?
    }

    /// Counters and the connected agents.
    pub async fn stats(&self) -> Result<(SchedulerStats, Vec<AgentInfo>), SchedulerError> {
        self.ask(|reply| Request::Stats { reply }).await
    }

    /// The connected agents with their leases, and the queue by requester in fair-share
    /// order, as of one instant (the dashboard's `/fleet`).
    pub async fn fleet(&self) -> Result<FleetView, SchedulerError> {
        self.ask(|reply| Request::Fleet { reply }).await
    }

    /// How many queued operations would be picked before the first of `names` that is still
    /// queued (`None` when none of them is queued).
    pub async fn queue_position(
        &self,
        names: Vec<String>,
    ) -> Result<Option<usize>, SchedulerError> {
        self.ask(|reply| Request::Position { names, reply }).await
    }

    /// An agent's session opened.
    pub fn agent_joined(
        &self,
        id: String,
        session: u64,
        properties: Platform,
        slots: u32,
        tx: AgentTx,
    ) {
        self.tell(Request::AgentJoined {
            id,
            session,
            properties,
            slots,
            tx,
        });
    }

    /// A message arrived on an agent's session.
    pub fn agent_message(&self, id: String, session: u64, message: AgentMessage) {
        self.tell(Request::AgentMessage {
            id,
            session,
            message: Box::new(message),
        });
    }

    /// An agent's session closed.
    pub fn agent_left(&self, id: String, session: u64) {
        self.tell(Request::AgentLeft { id, session });
    }

    /// Resolves when the scheduler has stopped (the coordinator is shutting down).
    pub async fn stopped(&self) {
        self.tx.closed().await;
    }
}
