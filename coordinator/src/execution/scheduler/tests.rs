//! The scheduler driven request by request on a manual clock: leases, heartbeats, expiry,
//! refusals, retries, retention and recovery, without sleeping.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tessera_cas::digest::DigestFunction;
use tessera_cas::meta::{MemoryMetaStore, MetadataStore};
use tessera_cas::store::MemoryStore;
use tessera_proto::reapi::{Action, ExecuteResponse, execution_stage};
use tessera_proto::rpc::PreconditionFailure;
use tessera_proto::tessera::v1::{
    AgentMessage, CoordinatorMessage, Draining, Heartbeat, Lease, LeaseOutcome, LeaseResult,
    OperationRecord, SecretEnv, agent_message, coordinator_message,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Code, Status};

use super::LeaseView;
use super::actor::Scheduler;
use super::handle::{Request, SchedulerConfig, SchedulerError};
use crate::action_cache::ActionCache;
use crate::execution::clock::{Clock, ManualClock};
use crate::execution::operation::OpSnapshot;
use crate::execution::platform::Platform;

const LEASE_TIMEOUT: Duration = Duration::from_secs(10);

struct Harness {
    scheduler: Scheduler,
    clock: ManualClock,
    meta: Arc<dyn MetadataStore>,
    next_session: u64,
}

type AgentRx = mpsc::Receiver<Result<CoordinatorMessage, Status>>;

fn config(max_attempts: u32) -> SchedulerConfig {
    SchedulerConfig {
        lease_timeout: LEASE_TIMEOUT,
        max_attempts,
        retention: Duration::from_secs(600),
        known_platform_keys: Vec::new(),
    }
}

impl Harness {
    fn new(max_attempts: u32) -> Self {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        Self::open(meta, ManualClock::new(), max_attempts)
    }

    /// A scheduler over `meta`, as after a restart.
    fn open(meta: Arc<dyn MetadataStore>, clock: ManualClock, max_attempts: u32) -> Self {
        let cache = ActionCache::open(Arc::clone(&meta), Arc::new(MemoryStore::new())).unwrap();
        let scheduler =
            Scheduler::open(config(max_attempts), &meta, cache, Arc::new(clock.clone())).unwrap();
        Harness {
            scheduler,
            clock,
            meta,
            next_session: 1,
        }
    }

    /// Connects agent `id`; returns what the scheduler sends it.
    fn agent(&mut self, id: &str, slots: u32) -> (u64, AgentRx) {
        let (tx, rx) = mpsc::channel(64);
        let session = self.next_session;
        self.next_session += 1;
        self.scheduler.handle(Request::AgentJoined {
            id: id.to_owned(),
            session,
            properties: Platform::default(),
            slots,
            tx,
        });
        (session, rx)
    }

    fn submit_with(&mut self, n: u8, function: DigestFunction) -> watch::Receiver<OpSnapshot> {
        self.submit_secret(n, function, Vec::new(), true)
    }

    /// Submits operation `n` with `secrets`; whether a new operation was `created` is checked.
    fn submit_secret(
        &mut self,
        n: u8,
        function: DigestFunction,
        secrets: Vec<SecretEnv>,
        created_expected: bool,
    ) -> watch::Receiver<OpSnapshot> {
        let record = record(n, function, "someone");
        self.submit_record(n, record, secrets, None, created_expected)
    }

    /// Submits operation `n` for `requester`, as a step of `job` when given.
    fn submit_for(
        &mut self,
        n: u8,
        requester: &str,
        job: Option<&str>,
    ) -> watch::Receiver<OpSnapshot> {
        let record = record(n, DigestFunction::Sha256, requester);
        self.submit_record(n, record, Vec::new(), job.map(str::to_owned), true)
    }

    /// Submits operation `n` as `record`.
    fn submit_record(
        &mut self,
        n: u8,
        record: OperationRecord,
        secrets: Vec<SecretEnv>,
        job: Option<String>,
        created_expected: bool,
    ) -> watch::Receiver<OpSnapshot> {
        let (reply, mut rx) = oneshot::channel();
        self.scheduler.handle(Request::Submit {
            record: Box::new(record),
            carried: Default::default(),
            platform: Platform::default(),
            mergeable: true,
            secrets,
            trace: trace_of(n),
            job,
            reply,
        });
        let (watch, created) = rx.try_recv().unwrap().unwrap();
        assert_eq!(created, created_expected);
        self.scheduler.dispatch();
        watch
    }

    fn submit(&mut self, n: u8) -> watch::Receiver<OpSnapshot> {
        self.submit_with(n, DigestFunction::Sha256)
    }

    fn send(&mut self, id: &str, session: u64, kind: agent_message::Kind) {
        self.scheduler.handle(Request::AgentMessage {
            id: id.to_owned(),
            session,
            message: Box::new(AgentMessage { kind: Some(kind) }),
        });
        self.scheduler.dispatch();
    }

    fn result(&mut self, id: &str, session: u64, lease: &Lease, outcome: LeaseOutcome) {
        self.report(
            id,
            session,
            LeaseResult {
                lease_id: lease.lease_id.clone(),
                attempt: lease.attempt,
                outcome: outcome as i32,
                message: format!("{outcome:?}"),
                ..Default::default()
            },
        );
    }

    fn report(&mut self, id: &str, session: u64, result: LeaseResult) {
        self.send(id, session, agent_message::Kind::Result(result));
    }

    fn heartbeat(&mut self, id: &str, session: u64, leases: &[&Lease]) {
        let lease_ids = leases.iter().map(|l| l.lease_id.clone()).collect();
        self.send(
            id,
            session,
            agent_message::Kind::Heartbeat(Heartbeat { lease_ids }),
        );
    }

    /// Lets time pass and runs what the actor's timer would.
    fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.scheduler.expire_leases();
        self.scheduler.dispatch();
    }
}

/// Operation `n`'s record, submitted by `requester`.
fn record(n: u8, function: DigestFunction, requester: &str) -> OperationRecord {
    OperationRecord {
        name: format!("operations/op-{n}"),
        action_digest: Some(function.digest_of(&[n]).to_proto()),
        digest_function: function.to_proto(),
        requester: requester.into(),
        timeout_ms: 60_000,
        action: Some(Action::default()),
        ..Default::default()
    }
}

/// The next lease sent to an agent (cancellations skipped), if any.
fn next_lease(rx: &mut AgentRx) -> Option<Lease> {
    while let Ok(message) = rx.try_recv() {
        if let Some(coordinator_message::Kind::Lease(lease)) = message.unwrap().kind {
            return Some(lease);
        }
    }
    None
}

fn response(watch: &watch::Receiver<OpSnapshot>) -> Option<ExecuteResponse> {
    watch.borrow().response.clone()
}

/// A completed result of `lease` whose (empty) outputs were stored as `function`.
fn completed(lease: &Lease, function: DigestFunction) -> LeaseResult {
    LeaseResult {
        lease_id: lease.lease_id.clone(),
        attempt: lease.attempt,
        outcome: LeaseOutcome::Completed as i32,
        digest_function: function.to_proto(),
        result: Some(Default::default()),
        ..Default::default()
    }
}

fn code(response: &ExecuteResponse) -> Code {
    Code::from(response.status.as_ref().map_or(0, |s| s.code))
}

#[test]
fn a_completed_lease_finishes_the_operation() {
    let mut h = Harness::new(3);
    let (session, mut rx) = h.agent("a", 1);
    let op = h.submit(1);
    let lease = next_lease(&mut rx).unwrap();
    assert_eq!((lease.lease_id.as_str(), lease.attempt), ("op-1#1", 1));
    assert_eq!(op.borrow().stage, execution_stage::Value::Executing);
    h.result("a", session, &lease, LeaseOutcome::Completed);
    let done = response(&op).unwrap();
    assert_eq!(code(&done), Code::Ok);
    assert_eq!(h.scheduler.stats.completed, 1);
}

/// The trace context operation `n` is submitted with.
fn trace_of(n: u8) -> std::collections::HashMap<String, String> {
    let traceparent = format!("00-{:032x}-{:016x}-01", u128::from(n) + 1, u64::from(n) + 1);
    [("traceparent".to_owned(), traceparent)].into()
}

#[test]
fn secrets_ride_with_every_lease_and_never_in_the_record() {
    let mut h = Harness::new(3);
    let secret = SecretEnv {
        name: "TOKEN".into(),
        value: "s3cret".into(),
    };
    // Submitted first without them (another client's identical action), then merged with a
    // job step's: the operation takes them.
    let _op = h.submit_secret(1, DigestFunction::Sha256, Vec::new(), true);
    let _merged = h.submit_secret(1, DigestFunction::Sha256, vec![secret.clone()], false);
    let (session, mut rx) = h.agent("a", 1);
    h.heartbeat("a", session, &[]);
    let lease = next_lease(&mut rx).unwrap();
    assert_eq!(lease.secrets, [secret]);
    // The first submitter's trace context goes with it, so the agent's spans join its trace.
    assert_eq!(lease.trace_context, trace_of(1));
    let stored: Vec<u8> = h
        .meta
        .table(super::OPERATIONS_TABLE)
        .unwrap()
        .scan_prefix(b"")
        .flat_map(|entry| entry.unwrap().1)
        .collect();
    assert!(!stored.is_empty());
    assert!(!stored.windows(6).any(|w| w == b"s3cret"));
    // After a restart the operation is back, its secrets are not.
    let (meta, clock) = (Arc::clone(&h.meta), h.clock.clone());
    let mut h = Harness::open(meta, clock, 3);
    h.advance(LEASE_TIMEOUT);
    let (session, mut rx) = h.agent("b", 1);
    h.heartbeat("b", session, &[]);
    let lease = next_lease(&mut rx).expect("queued again after the restart");
    assert!(lease.secrets.is_empty());
    assert!(lease.trace_context.is_empty());
}

#[test]
fn a_lease_without_heartbeats_expires_and_its_late_result_is_refused() {
    let mut h = Harness::new(3);
    let (s1, mut rx1) = h.agent("a", 1);
    let op = h.submit(1);
    let first = next_lease(&mut rx1).unwrap();
    // Another agent with room arrives; the first one falls silent.
    let (s2, mut rx2) = h.agent("b", 1);
    h.advance(LEASE_TIMEOUT - Duration::from_millis(1));
    assert!(next_lease(&mut rx2).is_none(), "expired too early");
    h.heartbeat("b", s2, &[]);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.scheduler.stats.expired_leases, 1);
    let second = next_lease(&mut rx2).expect("the work goes to the agent that is alive");
    assert_eq!((second.lease_id.as_str(), second.attempt), ("op-1#2", 2));
    h.result("a", s1, &first, LeaseOutcome::Completed);
    assert_eq!(h.scheduler.stats.stale_results, 1);
    assert!(response(&op).is_none(), "a stale result must not finish it");
    h.result("b", s2, &second, LeaseOutcome::Completed);
    assert_eq!(code(&response(&op).unwrap()), Code::Ok);
}

#[test]
fn heartbeats_move_the_deadline() {
    let mut h = Harness::new(3);
    let (session, mut rx) = h.agent("a", 1);
    let op = h.submit(1);
    let lease = next_lease(&mut rx).unwrap();
    for _ in 0..5 {
        h.advance(LEASE_TIMEOUT * 3 / 4);
        h.heartbeat("a", session, &[&lease]);
    }
    assert_eq!(h.scheduler.stats.expired_leases, 0);
    assert_eq!(op.borrow().stage, execution_stage::Value::Executing);
    h.advance(LEASE_TIMEOUT);
    assert_eq!(h.scheduler.stats.expired_leases, 1);
}

#[test]
fn a_refused_lease_spends_no_attempt_and_pauses_the_agent_until_its_heartbeat() {
    let mut h = Harness::new(1);
    let (session, mut rx) = h.agent("a", 4);
    let op = h.submit(1);
    let lease = next_lease(&mut rx).unwrap();
    h.result("a", session, &lease, LeaseOutcome::Refused);
    assert!(response(&op).is_none(), "a refusal is not a failure");
    assert!(
        next_lease(&mut rx).is_none(),
        "no work until the next heartbeat"
    );
    assert_eq!(op.borrow().stage, execution_stage::Value::Queued);
    h.heartbeat("a", session, &[]);
    let again = next_lease(&mut rx).unwrap();
    assert_eq!(again.attempt, 1, "the refused attempt was not spent");
    h.result("a", session, &again, LeaseOutcome::Completed);
    assert_eq!(code(&response(&op).unwrap()), Code::Ok);
}

#[test]
fn infrastructure_failures_are_retried_then_fail_unavailable() {
    let mut h = Harness::new(2);
    let (session, mut rx) = h.agent("a", 1);
    let op = h.submit(1);
    for attempt in 1..=2 {
        let lease = next_lease(&mut rx).unwrap();
        assert_eq!(lease.attempt, attempt);
        h.result("a", session, &lease, LeaseOutcome::Retryable);
    }
    let done = response(&op).unwrap();
    assert_eq!(code(&done), Code::Unavailable);
    let message = done.status.unwrap().message;
    assert_eq!(
        message,
        "action failed 2 times on agents; last failure: agent a: Retryable"
    );
    assert!(next_lease(&mut rx).is_none());
}

#[test]
fn final_outcomes_become_the_status_the_client_sees() {
    for (outcome, expected) in [
        (LeaseOutcome::TimedOut, Code::DeadlineExceeded),
        (LeaseOutcome::Cancelled, Code::Cancelled),
        (LeaseOutcome::InvalidAction, Code::InvalidArgument),
        (LeaseOutcome::MissingInputs, Code::FailedPrecondition),
    ] {
        let mut h = Harness::new(3);
        let (session, mut rx) = h.agent("a", 1);
        let op = h.submit(1);
        let lease = next_lease(&mut rx).unwrap();
        h.result("a", session, &lease, outcome);
        let done = response(&op).unwrap();
        assert_eq!(code(&done), expected, "{outcome:?}");
        assert_eq!(done.status.unwrap().message, format!("{outcome:?}"));
    }
}

/// Regression: the agent built MISSING subjects itself and left out the digest function of
/// BLAKE3 digests; the coordinator now builds them in the one place REAPI resource names are
/// written.
#[test]
fn missing_blake3_inputs_are_named_with_their_digest_function() {
    let mut h = Harness::new(3);
    let (session, mut rx) = h.agent("a", 1);
    let op = h.submit_with(1, DigestFunction::Blake3);
    let lease = next_lease(&mut rx).unwrap();
    let missing = DigestFunction::Blake3.digest_of(b"gone");
    h.report(
        "a",
        session,
        LeaseResult {
            lease_id: lease.lease_id.clone(),
            attempt: lease.attempt,
            outcome: LeaseOutcome::MissingInputs as i32,
            message: "fetching inputs: 1 blob missing".into(),
            missing: vec![missing.to_proto()],
            ..Default::default()
        },
    );
    let status = response(&op).unwrap().status.unwrap();
    assert_eq!(status.code, Code::FailedPrecondition as i32);
    let failure = PreconditionFailure::decode(status.details[0].value.as_ref()).unwrap();
    let subject = &failure.violations[0].subject;
    assert_eq!(
        subject,
        &format!("blobs/blake3/{}/{}", missing.hash_hex(), missing.size_bytes)
    );
    assert_eq!(failure.violations[0].r#type, "MISSING");
}

#[test]
fn a_silent_agent_gets_no_new_work_until_it_speaks() {
    let mut h = Harness::new(3);
    let (session, mut rx) = h.agent("a", 4);
    h.advance(LEASE_TIMEOUT);
    let _op = h.submit(1);
    assert!(next_lease(&mut rx).is_none(), "presumed frozen");
    h.heartbeat("a", session, &[]);
    assert!(next_lease(&mut rx).is_some());
}

#[test]
fn finished_operations_are_forgotten_after_retention() {
    let mut h = Harness::new(3);
    let (session, mut rx) = h.agent("a", 1);
    let _op = h.submit(1);
    let lease = next_lease(&mut rx).unwrap();
    h.result("a", session, &lease, LeaseOutcome::Completed);
    h.clock.advance(Duration::from_secs(599));
    h.scheduler.forget_old();
    assert!(h.scheduler.ops.contains_key("operations/op-1"));
    h.clock.advance(Duration::from_secs(2));
    h.scheduler.forget_old();
    assert!(!h.scheduler.ops.contains_key("operations/op-1"));
    let table = h.meta.table(super::OPERATIONS_TABLE).unwrap();
    assert!(table.get(b"operations/op-1").unwrap().is_none());
}

#[test]
fn after_a_restart_a_held_lease_is_honoured_and_queued_work_is_queued_again() {
    let mut h = Harness::new(3);
    let (_, mut rx) = h.agent("a", 1);
    let _running = h.submit(1);
    let _waiting = h.submit(2);
    let lease = next_lease(&mut rx).unwrap();
    let (meta, clock) = (Arc::clone(&h.meta), h.clock.clone());
    drop(h);

    let mut h = Harness::open(meta, clock, 3);
    let running = h.scheduler.ops["operations/op-1"].tx.subscribe();
    assert_eq!(running.borrow().stage, execution_stage::Value::Executing);
    assert_eq!(h.scheduler.queue.len(), 1, "op-2 is queued again");
    // The agent reconnects on a new session and reports the lease it kept running.
    let (session, mut rx) = h.agent("a", 1);
    h.result("a", session, &lease, LeaseOutcome::Completed);
    assert_eq!(code(&response(&running).unwrap()), Code::Ok);
    let next = next_lease(&mut rx).unwrap();
    assert_eq!((next.lease_id.as_str(), next.attempt), ("op-2#1", 1));
}

#[test]
fn a_recovered_lease_lapses_if_its_agent_never_returns() {
    let mut h = Harness::new(3);
    let (_, mut rx) = h.agent("a", 1);
    let _op = h.submit(1);
    assert!(next_lease(&mut rx).is_some());
    let (meta, clock) = (Arc::clone(&h.meta), h.clock.clone());
    drop(h);

    let mut h = Harness::open(meta, clock, 3);
    let (session, mut rx) = h.agent("b", 1);
    assert!(next_lease(&mut rx).is_none());
    h.advance(LEASE_TIMEOUT);
    h.heartbeat("b", session, &[]);
    let lease = next_lease(&mut rx).expect("requeued once the recovered lease lapsed");
    assert_eq!(lease.attempt, 2);
}

#[test]
fn cancelling_a_running_operation_tells_its_agent() {
    let mut h = Harness::new(3);
    let (_, mut rx) = h.agent("a", 1);
    let op = h.submit(1);
    let lease = next_lease(&mut rx).unwrap();
    let (reply, mut answer) = oneshot::channel();
    h.scheduler.handle(Request::Cancel {
        name: "operations/op-1".into(),
        reply,
    });
    answer.try_recv().unwrap().unwrap();
    assert_eq!(code(&response(&op).unwrap()), Code::Cancelled);
    let message = rx.try_recv().unwrap().unwrap();
    assert!(
        matches!(message.kind, Some(coordinator_message::Kind::Cancel(c)) if c.lease_id == lease.lease_id)
    );
}

/// Review finding: a refusal after a restart with a lower limit than the attempts already
/// spent fails the operation, as before the reshape, instead of queueing it forever.
#[test]
fn a_refusal_with_every_attempt_spent_fails_the_operation() {
    let mut h = Harness::new(3);
    let (session, mut rx) = h.agent("a", 1);
    let _op = h.submit(1);
    for _ in 0..2 {
        let lease = next_lease(&mut rx).unwrap();
        h.result("a", session, &lease, LeaseOutcome::Retryable);
    }
    let third = next_lease(&mut rx).unwrap();
    assert_eq!(third.attempt, 3);
    let (meta, clock) = (Arc::clone(&h.meta), h.clock.clone());
    drop(h);

    let mut h = Harness::open(meta, clock, 1);
    let op = h.scheduler.ops["operations/op-1"].tx.subscribe();
    let (session, _rx) = h.agent("a", 1);
    h.result("a", session, &third, LeaseOutcome::Refused);
    let done = response(&op).expect("failed, not queued again");
    assert_eq!(code(&done), Code::Unavailable);
    assert_eq!(
        done.status.unwrap().message,
        "action failed 2 times on agents; last failure: Refused"
    );
}

/// Wall-clock milliseconds of the harness clock, as the fleet view shows them.
fn unix_ms(h: &Harness) -> u64 {
    u64::try_from(h.clock.now().unix_ms).unwrap()
}

#[test]
fn the_fleet_shows_connected_agents_with_their_leases_and_last_heartbeat() {
    let mut h = Harness::new(3);
    let joined = unix_ms(&h);
    let (session, mut rx) = h.agent("a", 3);
    let _job_step = h.submit_for(1, "alice", Some("job-7"));
    let first = next_lease(&mut rx).unwrap();
    h.advance(Duration::from_secs(1));
    let _reapi = h.submit_for(2, "build-42", None);
    let second = next_lease(&mut rx).unwrap();
    // The REAPI action's first attempt fails on the agent; its second starts later.
    h.advance(Duration::from_secs(1));
    h.result("a", session, &second, LeaseOutcome::Retryable);
    let retried = next_lease(&mut rx).unwrap();
    assert_eq!(retried.attempt, 2);
    let retried_at = unix_ms(&h);
    h.advance(Duration::from_secs(2));
    h.heartbeat("a", session, &[&first, &retried]);
    let heard = unix_ms(&h);
    h.advance(Duration::from_secs(1));
    // Another agent joins after the work is out; one that left is not shown.
    let (_, _b) = h.agent("b", 2);
    let (gone, _c) = h.agent("c", 1);
    h.scheduler.handle(Request::AgentLeft {
        id: "c".into(),
        session: gone,
    });

    let fleet = h.scheduler.fleet();
    let ids: Vec<&str> = fleet.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let a = &fleet.agents[0];
    assert_eq!((a.slots, a.busy(), a.idle(), a.draining), (3, 2, 1, false));
    assert_eq!(a.connected_unix_ms, joined);
    assert_eq!(a.last_heard_unix_ms, heard);
    assert_eq!(
        a.leases,
        [
            LeaseView {
                operation: "operations/op-1".into(),
                requester: "alice".into(),
                job: Some("job-7".into()),
                attempt: 1,
                leased_unix_ms: joined,
            },
            LeaseView {
                operation: "operations/op-2".into(),
                requester: "build-42".into(),
                job: None,
                attempt: 2,
                leased_unix_ms: retried_at,
            },
        ]
    );
    let b = &fleet.agents[1];
    assert_eq!((b.busy(), b.idle()), (0, 2));
    assert_eq!(b.connected_unix_ms, unix_ms(&h));
    assert_eq!((fleet.queued, fleet.queue.len()), (0, 0));
}

#[test]
fn queue_positions_follow_fair_share_and_swap_as_service_is_given() {
    let mut h = Harness::new(3);
    let _ = h.submit_for(1, "alice", Some("job-1"));
    let _ = h.submit_for(2, "alice", Some("job-1"));
    h.advance(Duration::from_secs(1));
    let _ = h.submit_for(3, "bob", Some("job-2"));
    let _ = h.submit_for(4, "bob", Some("job-2"));
    h.advance(Duration::from_secs(1));
    let positions = |h: &Harness| -> Vec<(String, usize, usize, f64)> {
        h.scheduler
            .fleet()
            .queue
            .into_iter()
            .map(|q| (q.requester, q.position, q.queued, q.virtual_time))
            .collect()
    };
    // Nobody served yet: alice came first.
    assert_eq!(
        positions(&h),
        [("alice".into(), 1, 2, 0.0), ("bob".into(), 2, 2, 0.0)]
    );
    let fleet = h.scheduler.fleet();
    assert_eq!(fleet.queued, 4);
    let waits: Vec<u64> = fleet.queue.iter().map(|q| q.oldest_wait_ms).collect();
    assert_eq!(waits, [2_000, 1_000]);
    assert!(fleet.queue.iter().all(|q| q.weight == 1.0));

    // An agent takes alice's first: bob has had less service and moves ahead.
    let (session, mut rx) = h.agent("a", 1);
    h.scheduler.dispatch();
    let lease = next_lease(&mut rx).unwrap();
    assert_eq!(lease.lease_id, "op-1#1");
    assert_eq!(
        positions(&h),
        [("bob".into(), 1, 2, 0.0), ("alice".into(), 2, 1, 1.0)]
    );

    // Bob is served next, as the view said; with equal service alice leads again.
    h.result("a", session, &lease, LeaseOutcome::Completed);
    assert_eq!(next_lease(&mut rx).unwrap().lease_id, "op-3#1");
    assert_eq!(
        positions(&h),
        [("alice".into(), 1, 1, 1.0), ("bob".into(), 2, 1, 1.0)]
    );
}

#[test]
fn a_draining_agent_shows_as_draining() {
    let mut h = Harness::new(3);
    let (session, _rx) = h.agent("a", 2);
    assert!(!h.scheduler.fleet().agents[0].draining);
    h.send("a", session, agent_message::Kind::Draining(Draining {}));
    let _waiting = h.submit_for(1, "alice", None);
    let fleet = h.scheduler.fleet();
    assert!(fleet.agents[0].draining);
    assert_eq!((fleet.agents[0].busy(), fleet.queued), (0, 1));
    // Reconnecting (a restarted agent) clears it.
    let (_, _rx) = h.agent("a", 2);
    assert!(!h.scheduler.fleet().agents[0].draining);
}

#[tokio::test]
async fn the_handle_answers_the_fleet_from_the_running_actor() {
    let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
    let cache = ActionCache::open(Arc::clone(&meta), Arc::new(MemoryStore::new())).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (handle, task) = super::start(config(3), &meta, cache, stop.clone()).unwrap();
    let (tx, _rx) = mpsc::channel(4);
    let properties = Platform::new([("OSFamily".to_owned(), "linux".to_owned())]);
    handle.agent_joined("a".into(), 1, properties, 4, tx);
    // Requests are handled in order, so the join is in the view.
    let fleet = handle.fleet().await.unwrap();
    assert_eq!(fleet.agents.len(), 1);
    assert_eq!(
        fleet.agents[0].properties,
        [("OSFamily".to_owned(), "linux".to_owned())]
    );
    assert_eq!((fleet.agents[0].slots, fleet.agents[0].idle()), (4, 4));
    stop.cancel();
    task.await.unwrap();
    assert!(matches!(handle.fleet().await, Err(SchedulerError::Stopped)));
}

#[test]
fn what_leases_carry_is_given_back_when_the_operation_ends_and_wrong_outputs_run_again() {
    use crate::execution::inputs::CarriedBudget;
    let mut h = Harness::new(3);
    let (session, mut rx) = h.agent("a", 1);
    let budget = CarriedBudget::default();
    let directory = bytes::Bytes::from_static(b"a directory");
    let (reply, mut submitted) = oneshot::channel();
    h.scheduler.handle(Request::Submit {
        record: Box::new(record(1, DigestFunction::Sha256, "someone")),
        carried: budget.take(vec![directory.clone()], Vec::new()),
        platform: Platform::default(),
        mergeable: true,
        secrets: Vec::new(),
        trace: trace_of(1),
        job: None,
        reply,
    });
    let (op, _) = submitted.try_recv().unwrap().unwrap();
    h.scheduler.dispatch();
    let lease = next_lease(&mut rx).unwrap();
    assert_eq!(lease.input_directories, vec![directory.clone()]);
    assert_eq!(budget.held(), directory.len());

    // Outputs of another digest function than the action's: not its outputs, so it runs
    // again (and the next lease carries the same).
    h.report("a", session, completed(&lease, DigestFunction::Blake3));
    let again = next_lease(&mut rx).unwrap();
    assert_eq!(again.attempt, 2);
    assert_eq!(again.input_directories, vec![directory.clone()]);
    assert!(response(&op).is_none());

    // Outputs of the action's own function are taken.
    h.report("a", session, completed(&again, DigestFunction::Sha256));
    assert_eq!(code(&response(&op).unwrap()), Code::Ok);
    assert_eq!(budget.held(), 0, "given back when the operation ended");
}

/// The operation a [`WatchingStore`] watches, and at each write to its action cache table
/// whether that operation already showed done.
#[derive(Default)]
struct CacheProbe {
    watched: std::sync::Mutex<Option<watch::Receiver<OpSnapshot>>>,
    done_when_cached: std::sync::Mutex<Vec<bool>>,
}

/// A store whose action cache table reports its writes to a [`CacheProbe`].
struct WatchingStore {
    inner: MemoryMetaStore,
    probe: Arc<CacheProbe>,
}

struct WatchingTable {
    inner: tessera_cas::meta::Table,
    probe: Arc<CacheProbe>,
}

impl MetadataStore for WatchingStore {
    fn table(&self, name: &str) -> Result<tessera_cas::meta::Table, tessera_cas::meta::MetaError> {
        let inner = self.inner.table(name)?;
        if name != crate::action_cache::TABLE {
            return Ok(inner);
        }
        Ok(Arc::new(WatchingTable {
            inner,
            probe: Arc::clone(&self.probe),
        }))
    }
    fn apply_batch(
        &self,
        batch: tessera_cas::meta::Batch,
    ) -> Result<(), tessera_cas::meta::MetaError> {
        self.inner.apply_batch(batch)
    }
    fn flush(&self) -> Result<(), tessera_cas::meta::MetaError> {
        self.inner.flush()
    }
    fn flush_async(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<(), tessera_cas::meta::MetaError>> {
        self.inner.flush_async()
    }
    fn dump(
        &self,
        except: &[&str],
    ) -> Result<Vec<tessera_cas::meta::TableDump>, tessera_cas::meta::MetaError> {
        self.inner.dump(except)
    }
}

impl tessera_cas::meta::MetaTable for WatchingTable {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, tessera_cas::meta::MetaError> {
        self.inner.get(key)
    }
    fn insert(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, tessera_cas::meta::MetaError> {
        if let Some(watched) = self.probe.watched.lock().unwrap().as_ref() {
            let done = watched.borrow().response.is_some();
            self.probe.done_when_cached.lock().unwrap().push(done);
        }
        self.inner.insert(key, value)
    }
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, tessera_cas::meta::MetaError> {
        self.inner.remove(key)
    }
    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<tessera_cas::meta::SwapOutcome, tessera_cas::meta::MetaError> {
        self.inner.compare_and_swap(key, expected, new)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> tessera_cas::meta::Entries {
        self.inner.scan_prefix(prefix)
    }
    fn len(&self) -> Result<usize, tessera_cas::meta::MetaError> {
        self.inner.len()
    }
    fn is_empty(&self) -> Result<bool, tessera_cas::meta::MetaError> {
        self.inner.is_empty()
    }
}

/// A client that saw its operation done and asks the action cache next (Bazel does, and so
/// does a second build) must find the result: it is cached before any watcher hears.
#[test]
fn a_result_is_in_the_action_cache_before_its_operation_shows_done() {
    let probe = Arc::new(CacheProbe::default());
    let meta: Arc<dyn MetadataStore> = Arc::new(WatchingStore {
        inner: MemoryMetaStore::new(),
        probe: Arc::clone(&probe),
    });
    let mut h = Harness::open(meta, ManualClock::new(), 3);
    let (session, mut rx) = h.agent("a", 1);
    let op = h.submit(1);
    *probe.watched.lock().unwrap() = Some(op.clone());
    let lease = next_lease(&mut rx).unwrap();
    h.report("a", session, completed(&lease, DigestFunction::Sha256));
    assert_eq!(code(&response(&op).unwrap()), Code::Ok);
    assert_eq!(*probe.done_when_cached.lock().unwrap(), [false]);
}
