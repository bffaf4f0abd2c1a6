//! The session with the coordinator: one bidirectional stream, kept up for the life of the
//! agent, and the table of running leases.
//!
//! One actor task owns all of it (the link, the lease table, results waiting to be sent); lease
//! tasks talk to it only through an event channel. The link moves through
//! `Down → Connecting → Up → Down ...`: connecting sends `Hello` and waits for `Welcome`; while
//! up, a `Heartbeat` listing the running leases goes out every `heartbeat_interval` (and at
//! once after every (re)connection, so the coordinator can keep those leases); when the stream
//! breaks or the coordinator is down, the agent retries with exponential backoff from 100 ms to
//! 5 s with jitter. Leases keep running while the link is down.
//!
//! Results: a finished lease's result is queued and sent as soon as a stream is up. The
//! protocol has no acknowledgement, so results handed to a stream that breaks within
//! [`RESEND_WINDOW`] are sent again on the next connection; the coordinator must treat a
//! repeated result for a lease it has already closed as stale (it refuses stale results
//! anyway). Waiting results are bounded: at most [`MAX_PENDING`], none older than
//! [`MAX_PENDING_AGE`]; and the inline outputs of those and of the results kept to send again
//! hold at most [`MAX_PENDING_INLINE_BYTES`] in all, counted after each hand-over to the stream
//! (past that, the oldest that carry outputs inline become retryable failures: an undelivered
//! one runs again rather than the agent's memory growing).
//!
//! Leases beyond the agent's slots, and leases that arrive while draining, are answered at once
//! with REFUSED so the coordinator can place them elsewhere without spending an attempt.
//!
//! Shutdown causes, all leading to the same drain: the shutdown token (SIGTERM/SIGINT in the
//! CLI), a `Drain` message. Draining: send `Draining`, take no new leases, let running ones
//! finish (or cancel them after the configured drain timeout, reporting RETRYABLE), deliver
//! their results (trying to reconnect for up to [`RESULT_FLUSH_TIMEOUT`] if the link is down),
//! close the stream, wait for lease clean-up, return. The abort token cancels running leases at
//! once and gives up on undelivered results after a short flush.
//!
//! Refusal: a coordinator that refuses the session with FAILED_PRECONDITION (an agent of
//! another protocol version), UNAUTHENTICATED (no token, or an unknown, revoked or expired
//! one) or PERMISSION_DENIED (a token of another role or instance scope) will refuse it again
//! however often the agent retries, so the session ends at once, cancelling running leases
//! (their results could not be delivered), and [`SessionEnd::refused`] says why and what to
//! do. The codes count whether they come as a `Refused` message, as the answer to the
//! session call, or as the error that ends an open stream (a token revoked mid-session). A
//! refusal with any other code is retried like a broken stream.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use tessera_proto::rpc::Status;
use tessera_proto::tessera::v1::agent_message::Kind as AgentKind;
use tessera_proto::tessera::v1::agent_session_client::AgentSessionClient;
use tessera_proto::tessera::v1::coordinator_message::Kind as CoordinatorKind;
use tessera_proto::tessera::v1::{
    AgentMessage, CoordinatorMessage, Draining, Heartbeat, Hello, Lease, LeaseOutcome,
    LeaseProgress, LeaseResult, LeaseStage, Welcome,
};
use tessera_proto::time::from_proto_duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tonic::codec::Streaming;
use tracing::Instrument;

use crate::lease::{CancelReason, LeaseCancel, Report, RunOutcome};
use crate::metrics::ActionOutcome;
use crate::pipeline::LeasePipeline;

/// First reconnection delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Results handed to a stream this recently before it broke are sent again.
pub const RESEND_WINDOW: Duration = Duration::from_secs(10);
/// Most results kept waiting for a connection.
pub const MAX_PENDING: usize = 1000;
/// Results waiting longer than this are dropped: their leases have long expired.
pub const MAX_PENDING_AGE: Duration = Duration::from_secs(600);
/// Most output bytes that results not known delivered may hold inline, in all (see
/// [`bound_held_inline`]).
pub const MAX_PENDING_INLINE_BYTES: u64 = 64 << 20;
/// When draining with results left and no link, how long to keep trying to deliver them.
pub const RESULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// After an abort, how long to try to deliver the cancellations.
const ABORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the coordinator to answer a new stream (headers, then `Welcome`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the coordinator to close its side after the agent closed its own.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Heartbeat interval when `Welcome` does not name one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval accepted.
const MIN_HEARTBEAT: Duration = Duration::from_millis(20);
/// Messages queued for the outbound stream.
const OUTBOUND_CAPACITY: usize = 1024;
/// Largest message accepted or sent (a lease inlines its action and command).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What the session needs.
pub struct SessionParams {
    /// Channel to the coordinator, carrying the agent's token.
    pub channel: tessera_net::client::Link,
    /// Sent on every connection.
    pub hello: Hello,
    /// Leases run at once.
    pub slots: usize,
    /// Runs the leases.
    pub pipeline: Arc<LeasePipeline>,
    /// Cancel leases still running this long after draining began.
    pub drain_timeout: Option<Duration>,
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// Results that could not be delivered.
    pub undelivered: usize,
    /// The coordinator's message, if it refused this agent for good (see the module docs).
    pub refused: Option<String>,
}

/// Runs the session until it has drained (after `shutdown`, a `Drain` message, or `abort`).
pub async fn run(
    params: SessionParams,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> SessionEnd {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        params,
        leases: HashMap::new(),
        next_seq: 0,
        pending: VecDeque::new(),
        sent: VecDeque::new(),
        draining: false,
        aborted: false,
        drain_deadline: None,
        flush_deadline: None,
        gave_up: false,
        refused: None,
        link: Link::Down {
            retry_at: Instant::now(),
        },
        backoff: Backoff::default(),
        events_tx,
        events_rx,
        tasks: TaskTracker::new(),
    };
    session.report_slots();
    while !session.is_done() {
        session.step(&shutdown, &abort).await;
    }
    session.close().await
}

/// What lease tasks tell the session.
enum Event {
    Progress {
        lease_id: String,
        stage: LeaseStage,
        /// Test results a batch step has read so far (JSON), or empty.
        results_json: String,
    },
    Finished {
        lease_id: String,
        result: Box<LeaseResult>,
    },
}

struct RunningLease {
    attempt: u32,
    cancel: LeaseCancel,
}

struct Pending {
    result: LeaseResult,
    since: Instant,
}

struct Session {
    params: SessionParams,
    leases: HashMap<String, RunningLease>,
    next_seq: u64,
    /// Results not yet handed to a live stream, oldest first.
    pending: VecDeque<Pending>,
    /// Results handed to the current stream, with when.
    sent: VecDeque<(Instant, Pending)>,
    draining: bool,
    aborted: bool,
    drain_deadline: Option<Instant>,
    flush_deadline: Option<Instant>,
    gave_up: bool,
    /// Set when the coordinator refused the agent for good: the session ends.
    refused: Option<String>,
    link: Link,
    backoff: Backoff,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    tasks: TaskTracker,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Connected, LinkError>> + Send>>;

enum Link {
    Down { retry_at: Instant },
    Connecting(ConnectFuture),
    Up(Box<Connected>),
}

struct Connected {
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<CoordinatorMessage>,
    heartbeat: Interval,
    /// What the coordinator said it takes: outputs inline, lease stages.
    offers: Offers,
}

/// What a `Welcome` offers beyond timing (protocol 3).
#[derive(Debug, Clone, Copy, Default)]
struct Offers {
    /// Output bytes a result may carry inline.
    inline_output_bytes: u64,
    /// Whether it wants a progress message for each stage a lease enters.
    lease_stages: bool,
}

impl Offers {
    fn of(welcome: &Welcome) -> Offers {
        Offers {
            inline_output_bytes: welcome.inline_output_bytes,
            lease_stages: welcome.lease_stages,
        }
    }
}

enum LinkEvent {
    Retry,
    Connected(Box<Connected>),
    Failed(LinkError),
    Message(Box<CoordinatorMessage>),
    Lost(String),
    /// The coordinator refused the agent for good (see [`is_final`]).
    Refused(Status),
    HeartbeatDue,
}

/// Why a connection attempt failed.
#[derive(Debug, Error)]
enum LinkError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Rpc(tonic::Status),
    #[error("the coordinator closed the stream before welcoming the agent")]
    Closed,
    #[error("the coordinator refused the agent: {:?}: {}", Code::from(.0.code), .0.message)]
    Refused(Status),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

impl Link {
    /// The next thing that happens on the link. Cancel-safe: all state lives in `self`.
    async fn next(&mut self) -> LinkEvent {
        match self {
            Link::Down { retry_at } => {
                tokio::time::sleep_until(*retry_at).await;
                LinkEvent::Retry
            }
            Link::Connecting(connecting) => match connecting.as_mut().await {
                Ok(connected) => LinkEvent::Connected(Box::new(connected)),
                Err(LinkError::Refused(refusal)) if is_final(Code::from(refusal.code)) => {
                    LinkEvent::Refused(refusal)
                }
                Err(LinkError::Rpc(status)) if is_final(status.code()) => {
                    LinkEvent::Refused(refusal_of(&status))
                }
                Err(error) => LinkEvent::Failed(error),
            },
            Link::Up(connected) => tokio::select! {
                message = connected.inbound.message() => match message {
                    Ok(Some(message)) => LinkEvent::Message(Box::new(message)),
                    Ok(None) => LinkEvent::Lost("the coordinator closed the stream".into()),
                    Err(status) if is_final(status.code()) => {
                        LinkEvent::Refused(refusal_of(&status))
                    }
                    Err(status) => LinkEvent::Lost(status.to_string()),
                },
                _ = connected.heartbeat.tick() => LinkEvent::HeartbeatDue,
            },
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn message(kind: AgentKind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

fn duration_of(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.as_ref()
        .and_then(from_proto_duration)
        .filter(|d| !d.is_zero())
}

/// Whether a refusal is for good, since retrying would only repeat it: FAILED_PRECONDITION
/// says the agent cannot work with this coordinator as it is (another protocol version);
/// UNAUTHENTICATED and PERMISSION_DENIED, that its token is not (or no longer) good for an
/// agent session.
fn is_final(code: Code) -> bool {
    matches!(
        code,
        Code::FailedPrecondition | Code::Unauthenticated | Code::PermissionDenied
    )
}

/// A gRPC status as the `Refused` message would carry it.
fn refusal_of(status: &tonic::Status) -> Status {
    Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

/// What to do about a final refusal, by its code.
fn refusal_hint(code: Code) -> Option<&'static str> {
    match code {
        Code::Unauthenticated => Some(
            "the coordinator does not accept this agent's token (none, or unknown, revoked or \
             expired): create a new agent token with `tessera token create --role agent --name \
             NAME` and give it with --token-file (or TESSERA_AGENT_TOKEN_FILE)",
        ),
        Code::PermissionDenied => Some(
            "this agent's token may not run an agent session (another role, or an instance \
             scope that does not fit): create an agent token with `tessera token create --role \
             agent --name NAME` and give it with --token-file (or TESSERA_AGENT_TOKEN_FILE)",
        ),
        _ => None,
    }
}

/// Opens a stream, says hello, waits for the welcome.
async fn connect(channel: tessera_net::client::Link, hello: Hello) -> Result<Connected, LinkError> {
    let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
    tx.try_send(message(AgentKind::Hello(hello)))
        .map_err(|_| LinkError::Protocol("outbound queue unusable"))?;
    let mut client = AgentSessionClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let response = tokio::time::timeout(CONNECT_TIMEOUT, client.session(ReceiverStream::new(rx)))
        .await
        .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))?
        .map_err(LinkError::Rpc)?;
    let mut inbound = response.into_inner();
    let first = tokio::time::timeout(CONNECT_TIMEOUT, inbound.message())
        .await
        .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))?
        .map_err(LinkError::Rpc)?;
    let welcome: Welcome = match first.and_then(|m| m.kind) {
        Some(CoordinatorKind::Welcome(welcome)) => welcome,
        Some(CoordinatorKind::Refused(status)) => return Err(LinkError::Refused(status)),
        None => return Err(LinkError::Closed),
        Some(_) => return Err(LinkError::Protocol("the first message was not Welcome")),
    };
    Ok(Connected {
        tx,
        inbound,
        heartbeat: heartbeat_timer(&welcome),
        offers: Offers::of(&welcome),
    })
}

/// Output bytes `result` carries inline.
fn inline_bytes(result: &LeaseResult) -> u64 {
    result
        .blobs
        .iter()
        .fold(0u64, |sum, blob| sum.saturating_add(blob.data.len() as u64))
}

/// Drops `result`'s inline outputs and makes it a retryable failure: the action runs again.
fn retry_without_inline(result: &mut LeaseResult, message: String) {
    result.blobs.clear();
    result.result = None;
    result.outcome = LeaseOutcome::Retryable as i32;
    result.message = message;
}

/// Makes `result` one the coordinator can take: if it carries more output bytes inline than
/// `allowed` (it was made while talking to a coordinator that took more), it cannot be
/// delivered with its outputs, so it becomes a retryable failure and the action runs again.
fn fit_inline_outputs(result: &mut LeaseResult, allowed: u64) {
    let inline = inline_bytes(result);
    if inline == 0 || inline <= allowed {
        return;
    }
    tracing::warn!(lease = %result.lease_id, inline, allowed,
        "a result's inline outputs are more than this coordinator takes; it runs again");
    retry_without_inline(
        result,
        format!("its outputs went inline ({inline} bytes) but the coordinator now takes {allowed}"),
    );
}

/// Keeps the inline outputs the session holds within [`MAX_PENDING_INLINE_BYTES`]: those of
/// results handed to a stream and kept to send again (`sent`, oldest first), then those of
/// results still waiting (`pending`). While over, the oldest that carry outputs inline become
/// retryable failures (a kept copy of a delivered result is then refused as stale if it is
/// ever sent again; an undelivered one runs again). Returns how many.
fn bound_held_inline(
    sent: &mut VecDeque<(Instant, Pending)>,
    pending: &mut VecDeque<Pending>,
) -> usize {
    let mut held = sent
        .iter()
        .map(|(_, p)| p)
        .chain(pending.iter())
        .fold(0u64, |sum, p| sum.saturating_add(inline_bytes(&p.result)));
    let mut retried = 0;
    for held_result in sent.iter_mut().map(|(_, p)| p).chain(pending.iter_mut()) {
        if held <= MAX_PENDING_INLINE_BYTES {
            break;
        }
        let inline = inline_bytes(&held_result.result);
        if inline == 0 {
            continue;
        }
        retry_without_inline(
            &mut held_result.result,
            format!(
                "its outputs went inline ({inline} bytes) while the agent held more than \
                 {MAX_PENDING_INLINE_BYTES} bytes of such outputs for results not known delivered"
            ),
        );
        held = held.saturating_sub(inline);
        retried += 1;
    }
    retried
}

fn heartbeat_timer(welcome: &Welcome) -> Interval {
    let every = duration_of(welcome.heartbeat_interval)
        .unwrap_or(DEFAULT_HEARTBEAT)
        .max(MIN_HEARTBEAT);
    // The first tick fires at once: a heartbeat right after (re)connecting.
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Exponential backoff with jitter between [`BACKOFF_MIN`] and [`BACKOFF_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = BACKOFF_MIN.saturating_mul(1 << self.failures.min(16));
        let ceiling = exp.min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        // Between half and all of it, so a fleet restarted together does not reconnect in step.
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Session {
    fn is_done(&self) -> bool {
        if self.gave_up || self.refused.is_some() {
            return true;
        }
        self.draining && self.leases.is_empty() && self.pending.is_empty()
    }

    async fn step(&mut self, shutdown: &CancellationToken, abort: &CancellationToken) {
        if self.draining && self.leases.is_empty() && !self.pending.is_empty() {
            self.flush_deadline
                .get_or_insert_with(|| Instant::now() + RESULT_FLUSH_TIMEOUT);
        }
        let drain_deadline = self.drain_deadline;
        let flush_deadline = self.flush_deadline;
        tokio::select! {
            () = shutdown.cancelled(), if !self.draining => self.begin_drain("shutdown requested"),
            () = abort.cancelled(), if !self.aborted => self.abort(),
            Some(event) = self.events_rx.recv() => self.on_event(event),
            event = self.link.next() => self.on_link(event),
            () = sleep_until_opt(drain_deadline) => {
                self.drain_deadline = None;
                tracing::warn!(running = self.leases.len(), "drain timeout: cancelling running leases");
                self.cancel_all(CancelReason::AgentStopping);
            }
            () = sleep_until_opt(flush_deadline) => {
                tracing::error!(
                    undelivered = self.pending.len(),
                    "giving up on delivering results to the coordinator"
                );
                self.gave_up = true;
            }
        }
    }

    fn begin_drain(&mut self, why: &str) {
        if self.draining {
            return;
        }
        tracing::info!(
            why,
            running = self.leases.len(),
            "draining: taking no new leases"
        );
        self.draining = true;
        self.params.pipeline.metrics.set_draining();
        self.drain_deadline = self.params.drain_timeout.map(|t| Instant::now() + t);
        self.send(message(AgentKind::Draining(Draining {})));
    }

    fn abort(&mut self) {
        tracing::warn!(
            running = self.leases.len(),
            "aborting: cancelling running leases"
        );
        self.aborted = true;
        self.begin_drain("abort");
        self.cancel_all(CancelReason::AgentStopping);
        self.flush_deadline = Some(Instant::now() + ABORT_FLUSH_TIMEOUT);
    }

    fn cancel_all(&self, reason: CancelReason) {
        for lease in self.leases.values() {
            lease.cancel.cancel(reason);
        }
    }

    /// Sends a message if the link is up; dropped otherwise (heartbeats, progress, draining
    /// are re-sent or superseded after reconnecting).
    fn send(&mut self, message: AgentMessage) {
        if let Link::Up(connected) = &self.link
            && let Err(error) = connected.tx.try_send(message)
        {
            tracing::debug!(%error, "outbound message dropped");
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Progress {
                lease_id,
                stage,
                results_json,
            } => {
                // A bare stage goes only to a coordinator that asked for stages.
                let wanted = match &self.link {
                    Link::Up(connected) => connected.offers.lease_stages,
                    _ => false,
                };
                if results_json.is_empty() && !wanted {
                    return;
                }
                self.send(message(AgentKind::Progress(LeaseProgress {
                    lease_id,
                    stage: stage as i32,
                    step_results_json: results_json,
                })));
            }
            Event::Finished { lease_id, result } => {
                self.leases.remove(&lease_id);
                self.report_slots();
                self.queue_result(*result);
            }
        }
    }

    fn queue_result(&mut self, result: LeaseResult) {
        self.pending.push_back(Pending {
            result,
            since: Instant::now(),
        });
        self.flush_pending();
    }

    /// Hands waiting results to the stream, if it is up; drops those past their bounds.
    fn flush_pending(&mut self) {
        let now = Instant::now();
        let before = self.pending.len();
        self.pending
            .retain(|p| now.duration_since(p.since) < MAX_PENDING_AGE);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
        }
        if self.pending.len() < before {
            tracing::warn!(
                dropped = before - self.pending.len(),
                "dropped results that waited too long for a connection"
            );
        }
        if let Link::Up(connected) = &self.link {
            while let Some(mut pending) = self.pending.pop_front() {
                fit_inline_outputs(&mut pending.result, connected.offers.inline_output_bytes);
                match connected
                    .tx
                    .try_send(message(AgentKind::Result(pending.result.clone())))
                {
                    Ok(()) => self.sent.push_back((now, pending)),
                    Err(_) => {
                        // Full or closed: keep it for the next try (or the next connection).
                        self.pending.push_front(pending);
                        break;
                    }
                }
            }
            while self
                .sent
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RESEND_WINDOW)
            {
                self.sent.pop_front();
            }
        }
        // Bounded after sending: a result the link can take now is never turned away.
        let retried = bound_held_inline(&mut self.sent, &mut self.pending);
        if retried > 0 {
            tracing::warn!(
                retried,
                "results not known delivered held too many outputs inline; those not delivered run again"
            );
        }
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Retry => {
                tracing::debug!("connecting to the coordinator");
                let connecting = connect(self.params.channel.clone(), self.params.hello.clone());
                self.link = Link::Connecting(Box::pin(connecting));
            }
            LinkEvent::Connected(connected) => {
                tracing::info!(
                    agent = %self.params.hello.agent_id,
                    running = self.leases.len(),
                    pending_results = self.pending.len(),
                    "connected to the coordinator"
                );
                self.backoff.reset();
                self.offered(connected.offers);
                self.link = Link::Up(connected);
                self.params.pipeline.metrics.set_connected(true);
                if self.draining {
                    self.send(message(AgentKind::Draining(Draining {})));
                }
                self.flush_pending();
            }
            LinkEvent::Refused(refusal) => self.refuse_session(refusal),
            LinkEvent::Failed(error) => {
                let wait = self.backoff.next();
                if self.backoff.failures <= 1 || self.backoff.failures.is_multiple_of(20) {
                    tracing::warn!(%error, retry_in = ?wait, "cannot reach the coordinator");
                } else {
                    tracing::debug!(%error, retry_in = ?wait, "cannot reach the coordinator");
                }
                self.link = Link::Down {
                    retry_at: Instant::now() + wait,
                };
            }
            LinkEvent::Lost(reason) => self.lose_link(&reason),
            LinkEvent::HeartbeatDue => {
                let lease_ids = self.leases.keys().cloned().collect();
                self.send(message(AgentKind::Heartbeat(Heartbeat { lease_ids })));
                self.flush_pending();
            }
            LinkEvent::Message(message) => self.on_message(*message),
        }
    }

    /// Leases uploading from now on send inline what `offers` allows.
    fn offered(&self, offers: Offers) {
        self.params
            .pipeline
            .inline_output_bytes
            .store(offers.inline_output_bytes, Ordering::Relaxed);
    }

    fn lose_link(&mut self, reason: &str) {
        let now = Instant::now();
        let resend: Vec<Pending> = self
            .sent
            .drain(..)
            .filter(|(at, _)| now.duration_since(*at) <= RESEND_WINDOW)
            .map(|(_, p)| p)
            .collect();
        for pending in resend.into_iter().rev() {
            self.pending.push_front(pending);
        }
        let wait = self.backoff.next();
        tracing::warn!(
            reason,
            running = self.leases.len(),
            pending_results = self.pending.len(),
            retry_in = ?wait,
            "lost the coordinator; leases keep running"
        );
        self.link = Link::Down {
            retry_at: now + wait,
        };
        self.params.pipeline.metrics.set_connected(false);
    }

    fn on_message(&mut self, message: CoordinatorMessage) {
        match message.kind {
            Some(CoordinatorKind::Lease(lease)) => self.on_lease(lease),
            Some(CoordinatorKind::Cancel(cancel)) => {
                if let Some(lease) = self.leases.get(&cancel.lease_id) {
                    tracing::info!(lease = %cancel.lease_id, "cancel requested by the coordinator");
                    lease.cancel.cancel(CancelReason::Coordinator);
                }
            }
            Some(CoordinatorKind::Drain(_)) => self.begin_drain("the coordinator asked"),
            Some(CoordinatorKind::Welcome(welcome)) => {
                if let Link::Up(connected) = &mut self.link {
                    connected.heartbeat = heartbeat_timer(&welcome);
                    connected.offers = Offers::of(&welcome);
                }
                self.offered(Offers::of(&welcome));
            }
            Some(CoordinatorKind::Refused(status)) if is_final(Code::from(status.code)) => {
                self.refuse_session(status);
            }
            Some(CoordinatorKind::Refused(status)) => {
                let reason = format!(
                    "refused by the coordinator: {:?}: {}",
                    Code::from(status.code),
                    status.message
                );
                self.lose_link(&reason);
            }
            None => tracing::debug!("ignoring an empty coordinator message"),
        }
    }

    /// Ends the session: the coordinator will not take this agent. Running leases are
    /// cancelled, since no result of theirs could be delivered.
    fn refuse_session(&mut self, refusal: Status) {
        let code = Code::from(refusal.code);
        let why = match refusal_hint(code) {
            Some(hint) => format!("{:?}: {} ({hint})", code, refusal.message),
            None => refusal.message,
        };
        tracing::error!(
            ?code,
            reason = %why,
            running = self.leases.len(),
            "the coordinator refused this agent; stopping"
        );
        self.cancel_all(CancelReason::AgentStopping);
        self.refused = Some(why);
        self.link = Link::Down {
            retry_at: Instant::now(),
        };
        self.params.pipeline.metrics.set_connected(false);
    }

    fn on_lease(&mut self, lease: Lease) {
        if let Some(running) = self.leases.get(&lease.lease_id) {
            tracing::debug!(lease = %lease.lease_id, attempt = running.attempt, "lease already running");
            return;
        }
        if self.draining {
            return self.refuse(&lease, "the agent is draining");
        }
        if self.leases.len() >= self.params.slots {
            let why = format!("all {} slots are busy", self.params.slots);
            return self.refuse(&lease, &why);
        }
        self.start(lease);
    }

    /// Sets `tessera_agent_slots` from the table of running leases.
    fn report_slots(&self) {
        self.params
            .pipeline
            .metrics
            .set_slots(self.leases.len(), self.params.slots);
    }

    fn refuse(&mut self, lease: &Lease, why: &str) {
        tracing::info!(lease = %lease.lease_id, why, "refusing a lease");
        // Not started: the coordinator queues it again without counting an attempt.
        self.queue_result(Report::new(LeaseOutcome::Refused, why).into_result(lease, None));
    }

    fn start(&mut self, lease: Lease) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let cancel = LeaseCancel::new();
        self.leases.insert(
            lease.lease_id.clone(),
            RunningLease {
                attempt: lease.attempt,
                cancel: cancel.clone(),
            },
        );
        self.report_slots();
        tracing::info!(lease = %lease.lease_id, attempt = lease.attempt, seq, "lease accepted");
        let pipeline = Arc::clone(&self.params.pipeline);
        let metrics = pipeline.metrics.clone();
        let events = self.events_tx.clone();
        let reported = Arc::new(AtomicBool::new(false));
        // The action's spans here: the children of the coordinator's, whatever this session
        // was doing when the lease arrived.
        let span = tracing::info_span!(
            parent: None,
            "lease",
            otel.name = "action",
            lease.id = %lease.lease_id,
            lease.attempt = lease.attempt,
        );
        tessera_net::trace::adopt(&span, &lease.trace_context);
        let lease = Arc::new(lease);
        let inner = tokio::spawn({
            let events = events.clone();
            let reported = Arc::clone(&reported);
            let lease = Arc::clone(&lease);
            async move {
                let lease_id = lease.lease_id.clone();
                let progress = |stage: LeaseStage| {
                    let _ = events.send(Event::Progress {
                        lease_id: lease_id.clone(),
                        stage,
                        results_json: String::new(),
                    });
                };
                let step_results = |results_json: String| {
                    let _ = events.send(Event::Progress {
                        lease_id: lease_id.clone(),
                        stage: LeaseStage::Executing,
                        results_json,
                    });
                };
                let (result, outcome) = pipeline
                    .run(&lease, seq, &cancel, &progress, &step_results)
                    .await;
                log_outcome(&lease, &outcome);
                pipeline.metrics.count_action(ActionOutcome::of(&outcome));
                reported.store(true, Ordering::SeqCst);
                let _ = events.send(Event::Finished {
                    lease_id,
                    result: Box::new(result),
                });
                pipeline.clean_up(&lease, seq, &outcome).await;
            }
            .instrument(span)
        });
        self.tasks.spawn(async move {
            if let Err(error) = inner.await {
                tracing::error!(lease = %lease.lease_id, %error, "lease task failed");
                if !reported.load(Ordering::SeqCst) {
                    metrics.count_action(ActionOutcome::InfraError);
                    let _ = events.send(Event::Finished {
                        lease_id: lease.lease_id.clone(),
                        result: Box::new(
                            Report::new(
                                LeaseOutcome::Retryable,
                                format!("the agent's lease task failed: {error}"),
                            )
                            .into_result(&lease, None),
                        ),
                    });
                }
            }
        });
    }

    /// Closes the stream (waiting briefly for the coordinator to close its side, so queued
    /// messages are flushed) and waits for lease clean-up.
    async fn close(self) -> SessionEnd {
        let undelivered = self.pending.len();
        if let Link::Up(connected) = self.link {
            let Connected {
                tx, mut inbound, ..
            } = *connected;
            drop(tx);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
        }
        self.tasks.close();
        if self.aborted || self.gave_up || self.refused.is_some() {
            if tokio::time::timeout(CLOSE_TIMEOUT, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("lease tasks still running at exit");
            }
        } else {
            self.tasks.wait().await;
        }
        tracing::info!(undelivered, "session closed");
        SessionEnd {
            undelivered,
            refused: self.refused,
        }
    }
}

fn log_outcome(lease: &Lease, outcome: &RunOutcome) {
    let id = &lease.lease_id;
    match outcome {
        RunOutcome::Passed => tracing::info!(lease = %id, "command passed"),
        RunOutcome::Failed { exit_code } => {
            tracing::info!(lease = %id, exit_code, "command failed");
        }
        RunOutcome::TimedOut { after } => tracing::info!(lease = %id, ?after, "command timed out"),
        RunOutcome::Cancelled { reason } => tracing::info!(lease = %id, ?reason, "lease cancelled"),
        RunOutcome::Error { stage, error } => {
            tracing::warn!(lease = %id, %stage, %error, outcome = ?error.outcome(), "lease failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let mut backoff = Backoff::default();
        let first = backoff.next();
        assert!(
            first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN,
            "{first:?}"
        );
        for _ in 0..20 {
            let wait = backoff.next();
            assert!(wait <= BACKOFF_MAX, "{wait:?}");
        }
        let late = backoff.next();
        assert!(late >= BACKOFF_MAX / 2, "{late:?}");
        backoff.reset();
        assert!(backoff.next() <= BACKOFF_MIN);
    }

    fn waiting(lease: &str, inline: usize) -> Pending {
        let blobs = if inline == 0 {
            Vec::new()
        } else {
            let data = bytes::Bytes::from(vec![7u8; inline]);
            let digest = tessera_cas::digest::DigestFunction::Sha256.digest_of(&data);
            vec![tessera_cas::client::blob_request(&digest, data)]
        };
        Pending {
            result: LeaseResult {
                lease_id: lease.to_owned(),
                outcome: LeaseOutcome::Completed as i32,
                result: Some(Default::default()),
                blobs,
                ..LeaseResult::default()
            },
            since: Instant::now(),
        }
    }

    fn retried<'a>(results: impl IntoIterator<Item = &'a Pending>) -> Vec<&'a str> {
        results
            .into_iter()
            .filter(|p| p.result.outcome == LeaseOutcome::Retryable as i32)
            .map(|p| p.result.lease_id.as_str())
            .collect()
    }

    #[test]
    fn held_inline_outputs_stay_within_the_bound() {
        const MIB: usize = 1 << 20;
        let budget = usize::try_from(MAX_PENDING_INLINE_BYTES).unwrap();
        let now = Instant::now();
        // Within the bound, sent and waiting together: nothing changes.
        let mut sent: VecDeque<(Instant, Pending)> =
            [(now, waiting("sent", budget - 2 * MIB))].into();
        let mut pending: VecDeque<Pending> = [waiting("a", MIB), waiting("b", 0)].into();
        assert_eq!(bound_held_inline(&mut sent, &mut pending), 0);
        assert!(retried(&pending).is_empty());
        assert_eq!(sent[0].1.result.blobs.len(), 1);
        assert_eq!(pending[0].result.blobs.len(), 1);
        // Over it: the oldest with outputs inline, kept copies of sent results first, become
        // retryable until the rest fit; results without inline outputs and the newest are
        // kept as they are.
        let mut sent: VecDeque<(Instant, Pending)> =
            [(now, waiting("plain-sent", 0)), (now, waiting("sent", MIB))].into();
        let mut pending: VecDeque<Pending> = [
            waiting("old", MIB),
            waiting("plain", 0),
            waiting("new", budget),
        ]
        .into();
        assert_eq!(bound_held_inline(&mut sent, &mut pending), 2);
        assert_eq!(retried(sent.iter().map(|(_, p)| p)), ["sent"]);
        assert_eq!(retried(&pending), ["old"]);
        assert!(sent[1].1.result.blobs.is_empty() && pending[0].result.blobs.is_empty());
        let old = &pending[0].result;
        assert!(old.result.is_none());
        assert!(
            old.message.contains("not known delivered"),
            "{}",
            old.message
        );
        assert_eq!(sent[0].1.result.outcome, LeaseOutcome::Completed as i32);
        assert_eq!(pending[1].result.outcome, LeaseOutcome::Completed as i32);
        assert_eq!(pending[2].result.outcome, LeaseOutcome::Completed as i32);
        assert_eq!(pending[2].result.blobs.len(), 1);
    }
}
