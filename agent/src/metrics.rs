//! The agent's Prometheus metrics: one registry with the families operators write alert rules
//! against (issue 13's contract), and whether the agent is ready for work (`/readyz`).
//!
//! | family | type | set where |
//! | --- | --- | --- |
//! | `tessera_agent_slots{state="busy\|idle"}` | gauge | `session`, whenever a lease starts or ends |
//! | `tessera_agent_actions_total{outcome}` | counter | `session`, when a lease's pipeline ends |
//! | `tessera_agent_cache_bytes` | gauge | `cache`, after every write to the local cache |
//! | `tessera_agent_fetch_bytes_total` | counter | `cache`, per blob downloaded from the CAS |
//! | `tessera_agent_action_overhead_seconds` | histogram | `pipeline`: a lease's wall time minus its command's |
//!
//! `outcome` takes the coordinator's words for `tessera_actions_total` (ok, failed,
//! timed_out, cancelled, infra_error); [`ActionOutcome::of`] maps a lease's [`RunOutcome`]
//! onto them. Every label value is registered at zero when the registry is made, so a rule
//! never sees a missing series. Does not serve HTTP (`tessera-net`'s `serve_http` does).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tessera_proto::tessera::v1::LeaseOutcome;

use crate::lease::{CancelReason, RunOutcome};

/// Buckets of `tessera_agent_action_overhead_seconds`: 1 ms to ~65 s (fetching a large input
/// root on a cold cache takes tens of seconds).
const OVERHEAD_BUCKETS: (f64, f64, u16) = (0.001, 2.0, 17);

/// A slot's state: the `state` label of `tessera_agent_slots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Running a lease.
    Busy,
    /// Free for one.
    Idle,
}

impl SlotState {
    /// Every value, registered at zero.
    pub const ALL: [SlotState; 2] = [SlotState::Busy, SlotState::Idle];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Busy => "busy",
            SlotState::Idle => "idle",
        }
    }
}

impl EncodeLabelValue for SlotState {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// How an action ended, in the words of the coordinator's `tessera_actions_total`: the
/// `outcome` label of `tessera_agent_actions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionOutcome {
    /// The command exited 0.
    Ok,
    /// The command exited non-zero, or the action cannot run (malformed, inputs missing from
    /// the CAS): the client's problem, not the fleet's.
    Failed,
    /// The command ran past its timeout.
    TimedOut,
    /// The coordinator cancelled the lease.
    Cancelled,
    /// The agent could not run it (CAS unreachable, local disk, the agent stopping, the lease
    /// task failing): it runs again elsewhere.
    InfraError,
}

impl ActionOutcome {
    /// Every value, registered at zero.
    pub const ALL: [ActionOutcome; 5] = [
        ActionOutcome::Ok,
        ActionOutcome::Failed,
        ActionOutcome::TimedOut,
        ActionOutcome::Cancelled,
        ActionOutcome::InfraError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Ok => "ok",
            ActionOutcome::Failed => "failed",
            ActionOutcome::TimedOut => "timed_out",
            ActionOutcome::Cancelled => "cancelled",
            ActionOutcome::InfraError => "infra_error",
        }
    }

    /// The outcome a lease that ended with `outcome` counts as. Errors follow what the
    /// coordinator is told ([`crate::lease::LeaseError::outcome`]): what it retries elsewhere
    /// is the agent's trouble, what it reports to the client is the action's.
    pub fn of(outcome: &RunOutcome) -> Self {
        match outcome {
            RunOutcome::Passed => ActionOutcome::Ok,
            RunOutcome::Failed { .. } => ActionOutcome::Failed,
            RunOutcome::TimedOut { .. } => ActionOutcome::TimedOut,
            RunOutcome::Cancelled {
                reason: CancelReason::Coordinator,
            } => ActionOutcome::Cancelled,
            RunOutcome::Cancelled {
                reason: CancelReason::AgentStopping,
            } => ActionOutcome::InfraError,
            RunOutcome::Error { error, .. } => match error.outcome() {
                LeaseOutcome::MissingInputs | LeaseOutcome::InvalidAction => ActionOutcome::Failed,
                _ => ActionOutcome::InfraError,
            },
        }
    }
}

impl EncodeLabelValue for ActionOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlotLabels {
    state: SlotState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: ActionOutcome,
}

/// The meters the local cache updates (see `cache`): clones of the registered ones, or
/// unregistered ones that count for nobody (tests, tools).
#[derive(Debug, Clone, Default)]
pub struct CacheMeters {
    /// `tessera_agent_cache_bytes`.
    pub bytes: Gauge,
    /// `tessera_agent_fetch_bytes_total`.
    pub fetched: Counter,
}

/// The agent's metrics and readiness. Cheap to clone: every clone updates the same registry.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    slots: Family<SlotLabels, Gauge>,
    actions: Family<OutcomeLabels, Counter>,
    cache: CacheMeters,
    overhead: Histogram,
    connected: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// A registry with every family, every known label value at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let slots = Family::<SlotLabels, Gauge>::default();
        for state in SlotState::ALL {
            drop(slots.get_or_create(&SlotLabels { state }));
        }
        registry.register(
            "tessera_agent_slots",
            "Slots of this agent, by state (busy: running a lease)",
            slots.clone(),
        );
        let actions = Family::<OutcomeLabels, Counter>::default();
        for outcome in ActionOutcome::ALL {
            drop(actions.get_or_create(&OutcomeLabels { outcome }));
        }
        // The client library adds `_total` to a counter's name.
        registry.register(
            "tessera_agent_actions",
            "Leases this agent ran to an end, by outcome",
            actions.clone(),
        );
        let cache = CacheMeters::default();
        registry.register(
            "tessera_agent_cache_bytes",
            "Bytes held by the agent's local blob cache",
            cache.bytes.clone(),
        );
        registry.register(
            "tessera_agent_fetch_bytes",
            "Bytes of blobs the agent downloaded from the CAS",
            cache.fetched.clone(),
        );
        let (start, factor, count) = OVERHEAD_BUCKETS;
        let overhead = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            start, factor, count,
        ));
        registry.register(
            "tessera_agent_action_overhead_seconds",
            "Time a lease spends outside its command: checking, fetching and laying out \
             inputs, uploading outputs",
            overhead.clone(),
        );
        AgentMetrics {
            registry: Arc::new(registry),
            slots,
            actions,
            cache,
            overhead,
            connected: Arc::default(),
            draining: Arc::default(),
        }
    }

    /// The meters the local cache updates.
    pub fn cache_meters(&self) -> CacheMeters {
        self.cache.clone()
    }

    /// Sets `tessera_agent_slots`: `busy` of `total` slots run a lease.
    pub fn set_slots(&self, busy: usize, total: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.slots
            .get_or_create(&SlotLabels {
                state: SlotState::Busy,
            })
            .set(gauge(busy));
        self.slots
            .get_or_create(&SlotLabels {
                state: SlotState::Idle,
            })
            .set(gauge(total.saturating_sub(busy)));
    }

    /// Counts one lease that ended as `outcome`.
    pub fn count_action(&self, outcome: ActionOutcome) {
        self.actions.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records a lease's time outside its command.
    pub fn observe_overhead(&self, overhead: Duration) {
        self.overhead.observe(overhead.as_secs_f64());
    }

    /// Records whether the session with the coordinator is up.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Records that the agent is draining (it takes no new leases, for good).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ready for work: connected to the coordinator and not draining (`/readyz`); otherwise
    /// the reason.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("the agent is draining: it takes no new leases".to_owned());
        }
        if !self.connected.load(Ordering::Relaxed) {
            return Err("not connected to the coordinator (see the agent's log)".to_owned());
        }
        Ok(())
    }

    /// The registry in the OpenMetrics text format (`/metrics`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A lease's time outside its command: `wall` minus `command` (zero if the clocks disagree).
pub fn overhead(wall: Duration, command: Duration) -> Duration {
    wall.saturating_sub(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{LeaseError, Stage};
    use tessera_cas::client::ClientError;

    /// The value of the sample `name` (with its labels) in `text`, if present.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_family_is_exposed_at_zero_from_the_start() {
        let text = AgentMetrics::new().encode();
        for series in [
            "tessera_agent_slots{state=\"busy\"}",
            "tessera_agent_slots{state=\"idle\"}",
            "tessera_agent_actions_total{outcome=\"ok\"}",
            "tessera_agent_actions_total{outcome=\"failed\"}",
            "tessera_agent_actions_total{outcome=\"timed_out\"}",
            "tessera_agent_actions_total{outcome=\"cancelled\"}",
            "tessera_agent_actions_total{outcome=\"infra_error\"}",
            "tessera_agent_cache_bytes",
            "tessera_agent_fetch_bytes_total",
            "tessera_agent_action_overhead_seconds_count",
            "tessera_agent_action_overhead_seconds_sum",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE tessera_agent_action_overhead_seconds histogram"));
    }

    #[test]
    fn updates_show_in_the_scrape() {
        let metrics = AgentMetrics::new();
        metrics.set_slots(3, 4);
        metrics.count_action(ActionOutcome::TimedOut);
        metrics.count_action(ActionOutcome::TimedOut);
        metrics.cache_meters().bytes.set(1234);
        metrics.cache_meters().fetched.inc_by(99);
        metrics.observe_overhead(Duration::from_millis(250));
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "tessera_agent_slots{state=\"busy\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "tessera_agent_slots{state=\"idle\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tessera_agent_actions_total{outcome=\"timed_out\"}"),
            Some(2.0)
        );
        assert_eq!(sample(&text, "tessera_agent_cache_bytes"), Some(1234.0));
        assert_eq!(sample(&text, "tessera_agent_fetch_bytes_total"), Some(99.0));
        assert_eq!(
            sample(&text, "tessera_agent_action_overhead_seconds_count"),
            Some(1.0)
        );
    }

    #[test]
    fn lease_outcomes_map_onto_the_coordinators_words() {
        let of = |outcome: RunOutcome| ActionOutcome::of(&outcome).as_str();
        assert_eq!(of(RunOutcome::Passed), "ok");
        assert_eq!(of(RunOutcome::Failed { exit_code: 1 }), "failed");
        assert_eq!(
            of(RunOutcome::TimedOut {
                after: Duration::from_secs(1)
            }),
            "timed_out"
        );
        assert_eq!(
            of(RunOutcome::Cancelled {
                reason: CancelReason::Coordinator
            }),
            "cancelled"
        );
        assert_eq!(
            of(RunOutcome::Cancelled {
                reason: CancelReason::AgentStopping
            }),
            "infra_error"
        );
        let error = |error: LeaseError| RunOutcome::Error {
            stage: Stage::Fetch,
            error,
        };
        assert_eq!(of(error(LeaseError::BadLease("no".into()))), "failed");
        assert_eq!(
            of(error(LeaseError::Io {
                op: "write".into(),
                source: std::io::Error::other("disk"),
            })),
            "infra_error"
        );
        assert_eq!(
            of(error(LeaseError::Cas(ClientError::Rpc {
                call: "read",
                status: tonic::Status::unavailable("down"),
            }))),
            "infra_error"
        );
    }

    #[test]
    fn ready_means_connected_and_not_draining() {
        let metrics = AgentMetrics::new();
        assert!(metrics.readiness().is_err());
        metrics.set_connected(true);
        assert_eq!(metrics.readiness(), Ok(()));
        metrics.set_draining();
        assert!(metrics.readiness().unwrap_err().contains("draining"));
    }

    #[test]
    fn overhead_never_goes_negative() {
        assert_eq!(
            overhead(Duration::from_secs(1), Duration::from_secs(2)),
            Duration::ZERO
        );
        assert_eq!(
            overhead(Duration::from_secs(3), Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }
}
