//! `tessera.v1.AgentSession`: the agent's long-lived stream. The first message must be Hello;
//! the coordinator answers Welcome and hands the session to the scheduler, which sends leases
//! on it. Every later message is forwarded to the scheduler; when the stream ends, the
//! scheduler is told (the agent's leases then live until they expire, so an agent that
//! reconnects in time keeps them).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::Stream;
use tessera_proto::tessera::v1::{
    AgentMessage, CoordinatorMessage, Welcome, agent_message, agent_session_server,
    coordinator_message,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::execution::platform::Platform;
use crate::execution::scheduler::SchedulerHandle;

/// Most slots one agent may declare.
const MAX_SLOTS: u32 = 4096;

static SESSIONS: AtomicU64 = AtomicU64::new(1);

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The AgentSession service.
#[derive(Clone, Debug)]
pub struct AgentSessionService {
    scheduler: SchedulerHandle,
}

impl AgentSessionService {
    /// Connects agents to `scheduler`.
    pub fn new(scheduler: SchedulerHandle) -> Self {
        AgentSessionService { scheduler }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl agent_session_server::AgentSession for AgentSessionService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("agent session closed before Hello"))?;
        let Some(agent_message::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message of an agent session must be Hello",
            ));
        };
        if hello.agent_id.is_empty() || hello.agent_id.len() > 256 {
            return Err(Status::invalid_argument(
                "Hello.agent_id must be 1 to 256 characters",
            ));
        }
        if hello.slots == 0 || hello.slots > MAX_SLOTS {
            return Err(Status::invalid_argument(format!(
                "Hello.slots must be 1 to {MAX_SLOTS}, got {}",
                hello.slots
            )));
        }
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let config = self.scheduler.config();
        let welcome = CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Welcome(Welcome {
                heartbeat_interval: Some(duration(config.heartbeat_interval())),
                lease_timeout: Some(duration(config.lease_timeout)),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::internal("session closed"))?;
        let properties = Platform::new(hello.properties.into_iter().map(|p| (p.name, p.value)));
        let id = hello.agent_id;
        self.scheduler
            .agent_joined(id.clone(), session, properties, hello.slots, tx);
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    // Shutting down: let go of the stream so the connection can close.
                    () = scheduler.stopped() => break,
                    next = inbound.message() => next,
                };
                match next {
                    Ok(Some(message)) => scheduler.agent_message(id.clone(), session, message),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(agent = %id, %status, "agent session broke");
                        break;
                    }
                }
            }
            scheduler.agent_left(id, session);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
