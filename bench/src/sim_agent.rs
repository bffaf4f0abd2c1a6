//! Agents simulated by the bench process, to load the scheduler and nothing else. Each speaks
//! the real agent protocol on its own HTTP/2 connection: `Hello` with a real agent's platform
//! properties, heartbeats at the interval `Welcome` asks for, and every `Lease` answered at
//! once with an OK `LeaseResult` (exit code 0, no outputs). The moment a lease arrives is
//! marked on the [`Timeline`], found from the action's marker argument.

use std::sync::Arc;
use std::time::Duration;

use tessera_net::client::{ClientAuth, Link};
use tessera_proto::reapi::platform::Property;
use tessera_proto::reapi::{ActionResult, ExecutedActionMetadata};
use tessera_proto::tessera::v1::agent_session_client::AgentSessionClient;
use tessera_proto::tessera::v1::{
    AgentMessage, Heartbeat, Hello, Lease, LeaseResult, agent_message, coordinator_message,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::actions::{Timeline, index_of};
use crate::error::BenchError;
use crate::link::{self, Traffic};

/// Messages an agent may queue towards the coordinator.
const OUTBOUND: usize = 1024;
/// Heartbeat interval if `Welcome` names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// Running simulated agents.
pub(crate) struct SimulatedAgents {
    stop: CancellationToken,
    tasks: JoinSet<Result<u64, BenchError>>,
}

impl SimulatedAgents {
    /// Connects `count` agents with `slots` slots each to `endpoint`, presenting `auth`; each
    /// has a session open (its `Welcome` received) when this returns.
    pub(crate) async fn start(
        endpoint: &str,
        auth: &ClientAuth,
        count: usize,
        slots: u32,
        timeline: Arc<Timeline>,
    ) -> Result<Self, BenchError> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for n in 0..count {
            let channel = link::connect(endpoint, auth, Traffic::Calls).await?;
            let session = Session::open(channel, format!("bench-agent-{n}"), slots).await?;
            tasks.spawn(session.serve(Arc::clone(&timeline), stop.clone()));
        }
        Ok(SimulatedAgents { stop, tasks })
    }

    /// Closes every session; returns how many leases the agents answered in all.
    pub(crate) async fn stop(mut self) -> Result<u64, BenchError> {
        self.stop.cancel();
        let mut answered = 0;
        while let Some(joined) = self.tasks.join_next().await {
            answered += joined??;
        }
        Ok(answered)
    }
}

/// One agent's open session.
struct Session {
    out: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<tessera_proto::tessera::v1::CoordinatorMessage>,
    heartbeat: Duration,
}

impl Session {
    /// Sends `Hello` and waits for `Welcome`.
    async fn open(channel: Link, agent_id: String, slots: u32) -> Result<Self, BenchError> {
        let rpc = |status| BenchError::Rpc {
            call: "AgentSession",
            status,
        };
        let (out, rx) = mpsc::channel(OUTBOUND);
        let hello = Hello {
            agent_id,
            properties: properties(),
            slots,
            version: "tessera-bench".to_owned(),
            protocol_version: tessera_proto::AGENT_PROTOCOL_VERSION,
        };
        send(&out, agent_message::Kind::Hello(hello)).await?;
        let mut inbound = AgentSessionClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await
            .map_err(rpc)?
            .into_inner();
        let first = inbound.message().await.map_err(rpc)?;
        let Some(coordinator_message::Kind::Welcome(welcome)) = first.and_then(|m| m.kind) else {
            return Err(BenchError::Unexpected(
                "the coordinator did not answer Hello with Welcome".to_owned(),
            ));
        };
        let heartbeat = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT);
        Ok(Session {
            out,
            inbound,
            heartbeat,
        })
    }

    /// Answers leases until `stop`; returns how many it answered.
    async fn serve(
        mut self,
        timeline: Arc<Timeline>,
        stop: CancellationToken,
    ) -> Result<u64, BenchError> {
        let mut beat = tokio::time::interval(self.heartbeat);
        let mut answered = 0;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => break,
                _ = beat.tick() => {
                    // Leases are answered as they come, so none is ever still running.
                    send(&self.out, agent_message::Kind::Heartbeat(Heartbeat::default())).await?;
                    continue;
                }
                message = self.inbound.message() => message,
            };
            let kind = match message {
                Ok(Some(message)) => message.kind,
                Ok(None) => break,
                Err(status) => {
                    return Err(BenchError::Rpc {
                        call: "AgentSession",
                        status,
                    });
                }
            };
            match kind {
                Some(coordinator_message::Kind::Lease(lease)) => {
                    if let Some(index) = index_of(lease.command.as_ref()) {
                        timeline.leased(index);
                    }
                    send(&self.out, agent_message::Kind::Result(passed(&lease))).await?;
                    answered += 1;
                }
                Some(coordinator_message::Kind::Drain(_)) => break,
                Some(coordinator_message::Kind::Refused(status)) => {
                    return Err(BenchError::Unexpected(format!(
                        "the coordinator refused a simulated agent: {}",
                        status.message
                    )));
                }
                _ => {}
            }
        }
        Ok(answered)
    }
}

/// What a real Linux agent advertises.
fn properties() -> Vec<Property> {
    [
        ("ISA", std::env::consts::ARCH),
        ("OSFamily", std::env::consts::OS),
        ("arch", std::env::consts::ARCH),
        ("cores", "4"),
        ("network", "off"),
        ("network", "on"),
        ("sandbox", "namespaces"),
    ]
    .into_iter()
    .map(|(name, value)| Property {
        name: name.to_owned(),
        value: value.to_owned(),
    })
    .collect()
}

/// An OK result with exit code 0 for `lease`.
fn passed(lease: &Lease) -> LeaseResult {
    LeaseResult {
        lease_id: lease.lease_id.clone(),
        attempt: lease.attempt,
        result: Some(ActionResult {
            exit_code: 0,
            execution_metadata: Some(ExecutedActionMetadata {
                worker: "tessera-bench".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        outcome: tessera_proto::tessera::v1::LeaseOutcome::Completed as i32,
        ..Default::default()
    }
}

async fn send(
    out: &mpsc::Sender<AgentMessage>,
    kind: agent_message::Kind,
) -> Result<(), BenchError> {
    out.send(AgentMessage { kind: Some(kind) })
        .await
        .map_err(|_| BenchError::Unexpected("an agent session closed early".to_owned()))
}
