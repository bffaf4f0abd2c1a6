//! The coordinator's Prometheus metrics: one `prometheus-client` registry with the families
//! issue 13 makes a contract (names and label values are what operators' alert rules read),
//! every known label value registered at zero so no series is ever missing.
//!
//! Counters and histograms are updated where the event happens, through [`metrics()`] (one
//! registry per process: several coordinators in one test process share it). Gauges that
//! describe state owned elsewhere (queue depth, agents, slots) are set by their owner (the
//! scheduler actor) after each change; the CAS size is read from the store at scrape time
//! ([`Metrics::encode`] takes a closure for it).
//!
//! Label values are bounded: outcomes and results are fixed sets, gRPC `service`/`method`
//! come from the fixed table [`GRPC_METHODS`] (anything else is `unknown`), gRPC `code` is one
//! of the 17 canonical names.
//!
//! Recording can be switched off for the whole process with [`set_recording`]. The switch
//! exists for the benchmark (`tessera-bench cas|sched --metrics both` measures what metrics
//! cost); nothing in the product turns it off. Every method of [`Metrics`] that changes a
//! value, and the gRPC layer, checks it once on entry, so with recording off they return at
//! once (the layer passes calls straight through).

pub mod layer;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set of static names and values (always bounded).
pub type Labels = Vec<(&'static str, &'static str)>;

/// Action outcomes (`tessera_actions_total{outcome}`).
pub const ACTION_OUTCOMES: [&str; 5] = ["ok", "failed", "timed_out", "cancelled", "infra_error"];
/// Job results (`tessera_jobs_total{result}`).
pub const JOB_RESULTS: [&str; 5] = ["passed", "failed", "error", "infrastructure", "cancelled"];
/// Test outcomes (`tessera_tests_total{outcome}`).
pub const TEST_OUTCOMES: [&str; 5] = ["passed", "failed", "skipped", "flaky", "timed_out"];

/// The gRPC methods the coordinator serves, as (full service name, short name, method).
pub const GRPC_METHODS: &[(&str, &str, &str)] = &[
    (
        "build.bazel.remote.execution.v2.Capabilities",
        "Capabilities",
        "GetCapabilities",
    ),
    (
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "ContentAddressableStorage",
        "FindMissingBlobs",
    ),
    (
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "ContentAddressableStorage",
        "BatchUpdateBlobs",
    ),
    (
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "ContentAddressableStorage",
        "BatchReadBlobs",
    ),
    (
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "ContentAddressableStorage",
        "GetTree",
    ),
    (
        "build.bazel.remote.execution.v2.ActionCache",
        "ActionCache",
        "GetActionResult",
    ),
    (
        "build.bazel.remote.execution.v2.ActionCache",
        "ActionCache",
        "UpdateActionResult",
    ),
    (
        "build.bazel.remote.execution.v2.Execution",
        "Execution",
        "Execute",
    ),
    (
        "build.bazel.remote.execution.v2.Execution",
        "Execution",
        "WaitExecution",
    ),
    ("google.bytestream.ByteStream", "ByteStream", "Read"),
    ("google.bytestream.ByteStream", "ByteStream", "Write"),
    (
        "google.bytestream.ByteStream",
        "ByteStream",
        "QueryWriteStatus",
    ),
    (
        "google.longrunning.Operations",
        "Operations",
        "GetOperation",
    ),
    (
        "google.longrunning.Operations",
        "Operations",
        "ListOperations",
    ),
    (
        "google.longrunning.Operations",
        "Operations",
        "WaitOperation",
    ),
    (
        "google.longrunning.Operations",
        "Operations",
        "CancelOperation",
    ),
    (
        "google.longrunning.Operations",
        "Operations",
        "DeleteOperation",
    ),
    ("tessera.v1.Jobs", "Jobs", "Submit"),
    ("tessera.v1.Jobs", "Jobs", "Cancel"),
    ("tessera.v1.Jobs", "Jobs", "Watch"),
    ("tessera.v1.Jobs", "Jobs", "Status"),
    ("tessera.v1.AgentSession", "AgentSession", "Session"),
    ("tessera.v1.Admin", "Admin", "CreateToken"),
    ("tessera.v1.Admin", "Admin", "ListTokens"),
    ("tessera.v1.Admin", "Admin", "RevokeToken"),
    ("tessera.v1.Admin", "Admin", "ReadAudit"),
];

/// The `(service, method)` labels of a gRPC path `/package.Service/Method`: the short service
/// name and the method when the path is in [`GRPC_METHODS`], `("unknown", "unknown")`
/// otherwise (so a client cannot grow the label set).
pub fn grpc_labels(path: &str) -> (&'static str, &'static str) {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return ("unknown", "unknown");
    };
    GRPC_METHODS
        .iter()
        .find(|(full, _, m)| *full == service && *m == method)
        .map(|(_, short, m)| (*short, *m))
        .unwrap_or(("unknown", "unknown"))
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `tessera_jobs_total` result of a job's final result (an unset result counts as
/// `error`).
pub fn job_result(result: tessera_proto::tessera::v1::JobResult) -> &'static str {
    use tessera_proto::tessera::v1::JobResult as R;
    match result {
        R::Passed => "passed",
        R::Failed => "failed",
        R::Error | R::Unknown => "error",
        R::Infrastructure => "infrastructure",
        R::Cancelled => "cancelled",
    }
}

/// The `tessera_tests_total` outcome of a test's final outcome; `None` for a test that did
/// not run (cancelled). A test error and a test without a result count as `failed`.
pub fn test_outcome(outcome: tessera_proto::tessera::v1::TestOutcome) -> Option<&'static str> {
    use tessera_proto::tessera::v1::TestOutcome as O;
    match outcome {
        O::Passed => Some("passed"),
        O::Failed | O::NoResult | O::Unknown | O::Error => Some("failed"),
        O::Skipped => Some("skipped"),
        O::Flaky => Some("flaky"),
        O::TimedOut => Some("timed_out"),
        O::Cancelled => None,
    }
}

/// Every coordinator metric family. The families are private: every update goes through a
/// method, which checks [`recording`] once.
pub struct Metrics {
    registry: std::sync::Mutex<Registry>,
    /// `tessera_backup_last_success_timestamp_seconds`: registered only once scheduled
    /// backups are on ([`Metrics::enable_backups`]), so the backup-age alert never sees a
    /// zero from a coordinator that takes none.
    backup_last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `tessera_backups_total{result="ok|failed"}` (with the above).
    backups: Family<Labels, Counter>,
    backups_enabled: std::sync::Once,
    /// `tessera_queue_depth`: actions waiting for a slot.
    queue_depth: Gauge,
    /// `tessera_queue_wait_seconds`: time from queued to leased.
    queue_wait: Histogram,
    /// `tessera_agents_connected`.
    agents_connected: Gauge,
    /// `tessera_slots{state}`.
    slots: Family<Labels, Gauge>,
    /// `tessera_actions_total{outcome}`.
    actions: Family<Labels, Counter>,
    /// `tessera_action_duration_seconds`: time from leased to result.
    action_duration: Histogram,
    /// `tessera_lease_expired_total`.
    lease_expired: Counter,
    /// `tessera_action_cache_requests_total{result}`.
    action_cache_requests: Family<Labels, Counter>,
    /// `tessera_cas_bytes`: bytes at rest in the CAS (set at scrape time).
    cas_bytes: Gauge,
    /// `tessera_cas_evicted_bytes_total` (set at scrape time from the store's total).
    cas_evicted_bytes: Counter,
    /// `tessera_cas_budget_bytes`: the CAS's byte budget (0: unlimited).
    cas_budget_bytes: Gauge,
    /// `tessera_store_out_of_space`: 1 while the blob store or the metadata store refuses
    /// writes for lack of disk space.
    store_out_of_space: Gauge,
    /// `tessera_cas_transfer_bytes_total{direction}`.
    cas_transfer_bytes: Family<Labels, Counter>,
    /// `tessera_jobs_total{result}`.
    jobs: Family<Labels, Counter>,
    /// `tessera_job_duration_seconds`.
    job_duration: Histogram,
    /// `tessera_tests_total{outcome}`.
    tests: Family<Labels, Counter>,
    /// `tessera_grpc_requests_total{service,method,code}`.
    grpc_requests: Family<Labels, Counter>,
    /// `tessera_grpc_request_duration_seconds{service,method}`.
    grpc_duration: Family<Labels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Whether metrics are recorded in this process (see [`set_recording`]).
static RECORDING: AtomicBool = AtomicBool::new(true);

/// The process's coordinator metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Turns metric recording on or off for the whole process (every [`Metrics`], and the gRPC
/// layer). On by default. For the benchmark only, which measures the coordinator with and
/// without metrics: nothing in the product turns it off, and a scrape while it is off shows
/// the values as they were when it was turned off.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// Whether metrics are recorded ([`set_recording`]). Relaxed: a flag read on every event,
/// ordered with nothing else; a change is seen by other threads soon, which is all the
/// benchmark needs.
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

fn grpc_histogram() -> Histogram {
    // 1 ms .. ~4.4 min.
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

impl Metrics {
    /// A registry with every family, known label values at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            queue_depth: Gauge::default(),
            // 5 ms .. ~2.7 min.
            queue_wait: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            agents_connected: Gauge::default(),
            slots: Family::default(),
            actions: Family::default(),
            // 10 ms .. ~10 min.
            action_duration: Histogram::new(exponential_buckets(0.01, 2.5, 12)),
            lease_expired: Counter::default(),
            action_cache_requests: Family::default(),
            cas_bytes: Gauge::default(),
            cas_evicted_bytes: Counter::default(),
            cas_budget_bytes: Gauge::default(),
            store_out_of_space: Gauge::default(),
            cas_transfer_bytes: Family::default(),
            jobs: Family::default(),
            // 1 s .. ~2.3 h.
            job_duration: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            tests: Family::default(),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(grpc_histogram),
            registry: std::sync::Mutex::new(Registry::default()),
            backup_last_success: Gauge::default(),
            backups: Family::default(),
            backups_enabled: std::sync::Once::new(),
        };
        // prometheus-client appends `_total` to counters and the unit to unit-less names is
        // not added: names below are the family names without `_total`.
        let r = &mut registry;
        r.register(
            "tessera_queue_depth",
            "Actions waiting for a slot",
            m.queue_depth.clone(),
        );
        r.register(
            "tessera_queue_wait_seconds",
            "Time an action waited from queued to leased",
            m.queue_wait.clone(),
        );
        r.register(
            "tessera_agents_connected",
            "Agents with an open session",
            m.agents_connected.clone(),
        );
        r.register(
            "tessera_slots",
            "Execution slots of connected agents by state",
            m.slots.clone(),
        );
        r.register(
            "tessera_actions",
            "Actions finished, by outcome",
            m.actions.clone(),
        );
        r.register(
            "tessera_action_duration_seconds",
            "Time from lease to result of finished actions",
            m.action_duration.clone(),
        );
        r.register(
            "tessera_lease_expired",
            "Leases that expired (agent silent)",
            m.lease_expired.clone(),
        );
        r.register(
            "tessera_action_cache_requests",
            "Action cache lookups, by result",
            m.action_cache_requests.clone(),
        );
        r.register(
            "tessera_cas_bytes",
            "Bytes at rest in the CAS",
            m.cas_bytes.clone(),
        );
        r.register(
            "tessera_cas_evicted_bytes",
            "Bytes at rest evicted from the CAS",
            m.cas_evicted_bytes.clone(),
        );
        r.register(
            "tessera_cas_budget_bytes",
            "The CAS's byte budget (0: unlimited)",
            m.cas_budget_bytes.clone(),
        );
        r.register(
            "tessera_store_out_of_space",
            "1 while a store refuses writes for lack of disk space",
            m.store_out_of_space.clone(),
        );
        r.register(
            "tessera_cas_transfer_bytes",
            "Blob bytes sent to (read) and received from (write) clients",
            m.cas_transfer_bytes.clone(),
        );
        r.register("tessera_jobs", "Jobs finished, by result", m.jobs.clone());
        r.register(
            "tessera_job_duration_seconds",
            "Duration of finished jobs",
            m.job_duration.clone(),
        );
        r.register(
            "tessera_tests",
            "Tests finished, by final outcome",
            m.tests.clone(),
        );
        r.register(
            "tessera_grpc_requests",
            "gRPC calls, by method and status code (streams: counted at response head)",
            m.grpc_requests.clone(),
        );
        r.register(
            "tessera_grpc_request_duration_seconds",
            "gRPC call latency to response head",
            m.grpc_duration.clone(),
        );

        for state in ["busy", "idle"] {
            let _ = m.slots.get_or_create(&vec![("state", state)]);
        }
        for outcome in ACTION_OUTCOMES {
            let _ = m.actions.get_or_create(&vec![("outcome", outcome)]);
        }
        for result in ["hit", "miss"] {
            let _ = m
                .action_cache_requests
                .get_or_create(&vec![("result", result)]);
        }
        for direction in ["read", "write"] {
            let _ = m
                .cas_transfer_bytes
                .get_or_create(&vec![("direction", direction)]);
        }
        for result in JOB_RESULTS {
            let _ = m.jobs.get_or_create(&vec![("result", result)]);
        }
        for outcome in TEST_OUTCOMES {
            let _ = m.tests.get_or_create(&vec![("outcome", outcome)]);
        }
        // Every method at zero with code OK (the other codes appear when they happen: 17
        // codes times every method would be hundreds of empty series).
        for (_, service, method) in GRPC_METHODS {
            let _ = m.grpc_requests.get_or_create(&vec![
                ("service", *service),
                ("method", *method),
                ("code", "OK"),
            ]);
            let _ = m
                .grpc_duration
                .get_or_create(&vec![("service", *service), ("method", *method)]);
        }
        Metrics {
            registry: std::sync::Mutex::new(registry),
            ..m
        }
    }

    /// The exposition text (OpenMetrics), after `refresh` has set the scrape-time values.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = encode(&mut text, &registry) {
            tracing::error!(%error, "failed to encode metrics");
        }
        text
    }

    /// Counts a finished action.
    pub fn action_finished(&self, outcome: &'static str, ran_for: Option<Duration>) {
        if !recording() {
            return;
        }
        self.actions
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
        if let Some(ran_for) = ran_for {
            self.action_duration.observe(ran_for.as_secs_f64());
        }
    }

    /// Times how long an action waited from queued to leased.
    pub fn action_leased(&self, waited: Duration) {
        if !recording() {
            return;
        }
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// Counts a lease that expired (its agent went silent).
    pub fn lease_expired(&self) {
        if !recording() {
            return;
        }
        self.lease_expired.inc();
    }

    /// Counts an action cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        if !recording() {
            return;
        }
        let result = if hit { "hit" } else { "miss" };
        self.action_cache_requests
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// Counts blob bytes sent to clients.
    pub fn bytes_read(&self, bytes: u64) {
        if !recording() {
            return;
        }
        self.cas_transfer_bytes
            .get_or_create(&vec![("direction", "read")])
            .inc_by(bytes);
    }

    /// Counts blob bytes received from clients.
    pub fn bytes_written(&self, bytes: u64) {
        if !recording() {
            return;
        }
        self.cas_transfer_bytes
            .get_or_create(&vec![("direction", "write")])
            .inc_by(bytes);
    }

    /// Adds the backup families (at most once): called when scheduled backups are on.
    pub fn enable_backups(&self) {
        self.backups_enabled.call_once(|| {
            let mut registry = self
                .registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            registry.register(
                "tessera_backup_last_success_timestamp_seconds",
                "When the last scheduled backup that succeeded was taken (Unix time)",
                self.backup_last_success.clone(),
            );
            registry.register(
                "tessera_backups",
                "Scheduled backups, by result",
                self.backups.clone(),
            );
            for result in ["ok", "failed"] {
                let _ = self.backups.get_or_create(&vec![("result", result)]);
            }
        });
    }

    /// Records a scheduled backup: its result and, when it succeeded, when it was taken.
    pub fn backup_finished(&self, taken: Option<std::time::SystemTime>) {
        if !recording() {
            return;
        }
        let result = if taken.is_some() { "ok" } else { "failed" };
        self.backups.get_or_create(&vec![("result", result)]).inc();
        if let Some(taken) = taken {
            let secs = taken
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.backup_last_success.set(secs);
        }
    }

    /// Counts a finished job.
    pub fn job_finished(&self, result: &'static str, ran_for: Duration) {
        if !recording() {
            return;
        }
        self.jobs.get_or_create(&vec![("result", result)]).inc();
        self.job_duration.observe(ran_for.as_secs_f64());
    }

    /// Counts a test's final outcome.
    pub fn test_finished(&self, outcome: &'static str) {
        if !recording() {
            return;
        }
        self.tests.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    /// Sets the CAS figures from the store's totals (at scrape time).
    pub fn set_cas(&self, stored_bytes: u64, evicted_bytes_total: u64) {
        if !recording() {
            return;
        }
        self.cas_bytes
            .set(i64::try_from(stored_bytes).unwrap_or(i64::MAX));
        let seen = self.cas_evicted_bytes.get();
        if evicted_bytes_total > seen {
            self.cas_evicted_bytes.inc_by(evicted_bytes_total - seen);
        }
    }

    /// Sets the budget and out-of-space gauges (at scrape time).
    pub fn set_space(&self, budget_bytes: Option<u64>, out_of_space: bool) {
        if !recording() {
            return;
        }
        self.cas_budget_bytes
            .set(budget_bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)));
        self.store_out_of_space.set(i64::from(out_of_space));
    }

    /// Sets the scheduler gauges (the scheduler actor calls this after its state changes).
    pub fn set_scheduler(&self, queued: usize, agents: usize, slots: usize, busy: usize) {
        if !recording() {
            return;
        }
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.queue_depth.set(n(queued));
        self.agents_connected.set(n(agents));
        self.slots
            .get_or_create(&vec![("state", "busy")])
            .set(n(busy));
        self.slots
            .get_or_create(&vec![("state", "idle")])
            .set(n(slots.saturating_sub(busy)));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `text`, as (name with labels, value).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (name, value) = line.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn every_family_and_label_value_is_exposed_at_zero() {
        let text = Metrics::new().encode();
        let samples = samples(&text);
        let value = |name: &str| {
            samples
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
        };
        let mut want = vec![
            "tessera_queue_depth".to_owned(),
            "tessera_queue_wait_seconds_count".to_owned(),
            "tessera_agents_connected".to_owned(),
            "tessera_action_duration_seconds_count".to_owned(),
            "tessera_lease_expired_total".to_owned(),
            "tessera_cas_bytes".to_owned(),
            "tessera_cas_evicted_bytes_total".to_owned(),
            "tessera_cas_budget_bytes".to_owned(),
            "tessera_store_out_of_space".to_owned(),
            "tessera_job_duration_seconds_count".to_owned(),
            r#"tessera_grpc_requests_total{service="ByteStream",method="Read",code="OK"}"#
                .to_owned(),
            r#"tessera_grpc_request_duration_seconds_count{service="ByteStream",method="Write"}"#
                .to_owned(),
        ];
        want.extend(["busy", "idle"].map(|s| format!(r#"tessera_slots{{state="{s}"}}"#)));
        want.extend(ACTION_OUTCOMES.map(|o| format!(r#"tessera_actions_total{{outcome="{o}"}}"#)));
        want.extend(
            ["hit", "miss"]
                .map(|r| format!(r#"tessera_action_cache_requests_total{{result="{r}"}}"#)),
        );
        want.extend(
            ["read", "write"]
                .map(|d| format!(r#"tessera_cas_transfer_bytes_total{{direction="{d}"}}"#)),
        );
        want.extend(JOB_RESULTS.map(|r| format!(r#"tessera_jobs_total{{result="{r}"}}"#)));
        want.extend(TEST_OUTCOMES.map(|o| format!(r#"tessera_tests_total{{outcome="{o}"}}"#)));
        for name in want {
            assert_eq!(value(&name), 0.0, "{name}");
        }
    }

    #[test]
    fn updates_show_in_the_text() {
        let m = Metrics::new();
        m.action_finished("timed_out", Some(Duration::from_millis(30)));
        m.cache_lookup(true);
        m.bytes_written(42);
        m.set_scheduler(3, 2, 8, 5);
        m.set_cas(1000, 10);
        m.set_cas(1000, 25);
        let text = m.encode();
        for line in [
            r#"tessera_actions_total{outcome="timed_out"} 1"#,
            "tessera_action_duration_seconds_count 1",
            r#"tessera_action_cache_requests_total{result="hit"} 1"#,
            r#"tessera_cas_transfer_bytes_total{direction="write"} 42"#,
            "tessera_queue_depth 3",
            "tessera_agents_connected 2",
            r#"tessera_slots{state="busy"} 5"#,
            r#"tessera_slots{state="idle"} 3"#,
            "tessera_cas_bytes 1000",
            "tessera_cas_evicted_bytes_total 25",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    /// The switch is process-wide: this test relies on nextest running each test in its own
    /// process (under `cargo test` a concurrent test could see recording off).
    #[test]
    fn with_recording_off_updates_change_nothing() {
        let m = Metrics::new();
        let before = m.encode();
        set_recording(false);
        m.action_finished("ok", Some(Duration::from_millis(30)));
        m.action_leased(Duration::from_millis(5));
        m.lease_expired();
        m.cache_lookup(false);
        m.bytes_read(7);
        m.bytes_written(42);
        m.job_finished("passed", Duration::from_secs(2));
        m.test_finished("flaky");
        m.set_cas(1000, 25);
        m.set_space(Some(4096), true);
        m.set_scheduler(3, 2, 8, 5);
        let off = m.encode();
        set_recording(true);
        assert_eq!(off, before);
        m.lease_expired();
        assert!(
            m.encode()
                .lines()
                .any(|l| l == "tessera_lease_expired_total 1")
        );
    }

    #[test]
    fn grpc_labels_are_bounded() {
        assert_eq!(
            grpc_labels("/google.bytestream.ByteStream/Read"),
            ("ByteStream", "Read")
        );
        assert_eq!(
            grpc_labels(
                "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"
            ),
            ("ContentAddressableStorage", "FindMissingBlobs")
        );
        for path in [
            "/google.bytestream.ByteStream/Nope",
            "/x.Y/Z",
            "garbage",
            "/",
            "",
        ] {
            assert_eq!(grpc_labels(path), ("unknown", "unknown"), "{path}");
        }
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    }
}
