//! The coordinator's settings: what they are, their defaults, keys, variables and checks.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config`), `TESSERA_*`
//! environment variables, command-line flags. Unknown keys in the file are errors, and so are
//! malformed environment values and unknown `TESSERA_*` variables that no other command uses:
//! a typo never silently falls back to a default. The layering itself, the value parsers and
//! [`ConfigError`] live in `tessera-config`, shared with the agent and the CLI.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_config::{
    BadValue, EnvScope, Settings, file_duration, parse, parse_bool, parse_duration, parse_list,
};

pub use tessera_config::ConfigError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(BadValue::new(
                other,
                format!("unknown log format \"{other}\" (expected text or json)"),
            )),
        }
    }
}

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every caller may do everything (loopback only, unless `insecure_no_auth`).
    #[default]
    None,
    /// Every call carries `authorization: Bearer TOKEN`; the token's role and instance scope
    /// decide what it may do.
    Tokens,
}

impl std::str::FromStr for AuthMode {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(AuthMode::None),
            "tokens" => Ok(AuthMode::Tokens),
            other => Err(BadValue::new(
                other,
                format!("unknown auth mode \"{other}\" (expected none or tokens)"),
            )),
        }
    }
}

/// Per-token limits against abuse (with `auth = "tokens"`). A rate is per second and its burst
/// is the bucket's size; 0 turns that limit off. Answered with `RESOURCE_EXHAUSTED` and a
/// `RetryInfo` delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Execute calls per second.
    pub execute_rate: u32,
    /// Execute calls at once above the rate.
    pub execute_burst: u32,
    /// Execute calls running at once.
    pub execute_inflight: u32,
    /// Job submissions per second.
    pub submit_rate: u32,
    /// Job submissions at once above the rate.
    pub submit_burst: u32,
    /// Jobs running at once.
    pub jobs_inflight: u32,
    /// Uploaded blob bytes per second (agents' uploads are not counted).
    pub upload_bytes_rate: u64,
    /// Uploaded bytes at once above the rate.
    pub upload_bytes_burst: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            execute_rate: 1000,
            execute_burst: 5000,
            execute_inflight: 10_000,
            submit_rate: 5,
            submit_burst: 50,
            jobs_inflight: 100,
            upload_bytes_rate: 1 << 30,
            upload_bytes_burst: 8 << 30,
        }
    }
}

/// Everything the coordinator needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// gRPC listen address. Loopback by default; any other address needs TLS and tokens (or
    /// the `insecure_*` settings that allow going without).
    pub listen: SocketAddr,
    /// Directory for all state: `meta/` (the redb metadata store) and `cas/` (blobs).
    pub data_dir: PathBuf,
    /// Byte budget for blobs at rest; `None` means no limit.
    pub max_cas_bytes: Option<u64>,
    /// Blobs used more recently than this are not evicted.
    pub cas_protect_recent: Duration,
    /// Largest total of blob bytes accepted or returned by one batch call.
    pub max_batch_total_size_bytes: u64,
    /// Log line format.
    pub log_format: LogFormat,
    /// A lease expires when its agent sends no heartbeat for this long.
    pub lease_timeout: Duration,
    /// Attempts (first run included) before an action fails on infrastructure errors.
    pub max_attempts: u32,
    /// How long finished operations stay available to WaitExecution.
    pub operation_retention: Duration,
    /// Timeout for actions that name none.
    pub default_action_timeout: Duration,
    /// Longest action timeout accepted.
    pub max_action_timeout: Duration,
    /// Platform keys accepted before any agent declares them.
    pub platform_keys: Vec<String>,
    /// Durations kept per test (and tool start-ups per suite) for the planner; a test's
    /// estimate is their median.
    pub history_runs: usize,
    /// A test's history not recorded for this long is removed.
    pub history_retention: Duration,
    /// Finished jobs the dashboard keeps (their tests, batches and runs), the oldest removed
    /// first; 0 keeps none (the pages show running jobs only).
    pub dashboard_jobs: usize,
    /// TLS certificate chain (PEM) for the gRPC port; with `tls_key`, turns TLS on.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: when set, every client must present
    /// one (mutual TLS), in addition to its token.
    pub tls_client_ca: Option<PathBuf>,
    /// How callers are authenticated.
    pub auth: AuthMode,
    /// Allow a non-loopback listen address without TLS.
    pub insecure_no_tls: bool,
    /// Allow a non-loopback listen address without authentication.
    pub insecure_no_auth: bool,
    /// Audit log entries older than this are removed.
    pub audit_retention: Duration,
    /// Per-token limits.
    pub limits: Limits,
    /// HTTP address for `/metrics`, `/healthz` and `/readyz`; `None`: no HTTP port.
    pub http_listen: Option<SocketAddr>,
    /// `/metrics` without a token (with `auth = "tokens"` it otherwise needs a reader token).
    pub metrics_public: bool,
    /// OTLP/gRPC endpoint that traces are exported to (`http://collector:4317`); `None`: off.
    pub otlp_endpoint: Option<String>,
    /// Directory of scheduled backups (`crate::backup::schedule`); needs `backup_interval`.
    pub backup_dir: Option<PathBuf>,
    /// Time between scheduled backups; `None`: no scheduled backups.
    pub backup_interval: Option<Duration>,
    /// Scheduled backups kept (the newest).
    pub backup_keep: usize,
    /// Webhook subscriptions (`[[webhooks]]`).
    pub webhooks: Vec<crate::notify::webhook::Webhook>,
    /// Delivered and expired webhook deliveries are pruned after this.
    pub webhook_retention: Duration,
    /// `queue.stalled` is published when the oldest queued action has waited this long.
    pub queue_stall_after: Duration,
    /// A ByteStream Write that receives nothing for this long is ended (DEADLINE_EXCEEDED) and
    /// set aside for resumption, so that a client that froze or vanished mid-upload does not
    /// hold the upload (and, for a large one, a writer thread) until its connection closes.
    pub upload_idle_timeout: Duration,
    /// The flake policy of `[quarantine]` (off by default).
    pub quarantine: QuarantineConfig,
}

/// The `[quarantine]` table: a test flaky in more than `flake_rate` of its last `runs` runs
/// is quarantined by itself (`jobs::quarantine`). Off while `flake_rate` is unset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuarantineConfig {
    /// The share of flaky runs (0 to 1, exclusive) above which a test is quarantined;
    /// `None`: the policy is off.
    pub flake_rate: Option<f64>,
    /// Runs the rate is taken over (1 to 64).
    pub runs: u32,
}

// The rate is checked to be a number between 0 and 1, never NaN.
impl Eq for QuarantineConfig {}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            flake_rate: None,
            runs: 20,
        }
    }
}

impl QuarantineConfig {
    /// The policy, if it is on.
    pub fn policy(&self) -> Option<crate::jobs::quarantine::FlakePolicy> {
        self.flake_rate
            .map(|flake_rate| crate::jobs::quarantine::FlakePolicy {
                flake_rate,
                runs: self.runs,
            })
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8980)),
            data_dir: PathBuf::from("tessera-data"),
            max_cas_bytes: None,
            cas_protect_recent: Duration::from_secs(60),
            max_batch_total_size_bytes: 4 * 1024 * 1024,
            log_format: LogFormat::Text,
            lease_timeout: Duration::from_secs(10),
            max_attempts: 3,
            operation_retention: Duration::from_secs(3600),
            default_action_timeout: Duration::from_secs(15 * 60),
            max_action_timeout: Duration::from_secs(3 * 3600),
            platform_keys: vec![
                "OSFamily".to_owned(),
                "ISA".to_owned(),
                "arch".to_owned(),
                "cores".to_owned(),
                "memory".to_owned(),
                "network".to_owned(),
                "pool".to_owned(),
            ],
            history_runs: 10,
            dashboard_jobs: 10_000,
            history_retention: Duration::from_secs(30 * 86_400),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth: AuthMode::None,
            insecure_no_tls: false,
            insecure_no_auth: false,
            audit_retention: Duration::from_secs(90 * 86_400),
            limits: Limits::default(),
            http_listen: None,
            metrics_public: false,
            otlp_endpoint: None,
            backup_dir: None,
            backup_interval: None,
            backup_keep: 7,
            webhooks: Vec::new(),
            webhook_retention: Duration::from_secs(7 * 86_400),
            queue_stall_after: Duration::from_secs(15 * 60),
            upload_idle_timeout: Duration::from_secs(60),
            quarantine: QuarantineConfig::default(),
        }
    }
}

/// The file form: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    max_cas_bytes: Option<u64>,
    cas_protect_recent: Option<String>,
    max_batch_total_size_bytes: Option<u64>,
    log_format: Option<LogFormat>,
    lease_timeout: Option<String>,
    max_attempts: Option<u32>,
    operation_retention: Option<String>,
    default_action_timeout: Option<String>,
    max_action_timeout: Option<String>,
    platform_keys: Option<Vec<String>>,
    history_runs: Option<usize>,
    history_retention: Option<String>,
    dashboard_jobs: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    auth: Option<AuthMode>,
    insecure_no_tls: Option<bool>,
    insecure_no_auth: Option<bool>,
    audit_retention: Option<String>,
    limits: Option<FileLimits>,
    http_listen: Option<SocketAddr>,
    metrics_public: Option<bool>,
    otlp_endpoint: Option<String>,
    backup_dir: Option<PathBuf>,
    backup_interval: Option<String>,
    backup_keep: Option<usize>,
    webhooks: Option<Vec<FileWebhook>>,
    webhook_retention: Option<String>,
    queue_stall_after: Option<String>,
    upload_idle_timeout: Option<String>,
    quarantine: Option<FileQuarantine>,
}

/// One `[[webhooks]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhook {
    url: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    format: crate::notify::webhook::Format,
}

/// The `[quarantine]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuarantine {
    flake_rate: Option<f64>,
    runs: Option<u32>,
}

/// The `[limits]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    execute_rate: Option<u32>,
    execute_burst: Option<u32>,
    execute_inflight: Option<u32>,
    submit_rate: Option<u32>,
    submit_burst: Option<u32>,
    jobs_inflight: Option<u32>,
    upload_bytes_rate: Option<u64>,
    upload_bytes_burst: Option<u64>,
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct ConfigOverrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--max-cas-bytes`.
    pub max_cas_bytes: Option<u64>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--auth`.
    pub auth: Option<AuthMode>,
    /// `--insecure-no-tls` (only ever turns it on).
    pub insecure_no_tls: bool,
    /// `--insecure-no-auth` (only ever turns it on).
    pub insecure_no_auth: bool,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--metrics-public` (only ever turns it on).
    pub metrics_public: bool,
    /// `--otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
    /// `--backup-dir`.
    pub backup_dir: Option<PathBuf>,
    /// `--backup-interval`.
    pub backup_interval: Option<Duration>,
    /// `--backup-keep`.
    pub backup_keep: Option<usize>,
}

/// Most durations kept per test: each is 8 bytes in every test's history entry.
pub const MAX_HISTORY_RUNS: usize = 1000;

/// Environment variables read by [`CoordinatorConfig::load`]. Other `TESSERA_*` variables that
/// belong to other commands are listed in [`OTHER_ENV_KEYS`] and ignored here.
pub const ENV_KEYS: &[&str] = &[
    "TESSERA_LISTEN",
    "TESSERA_BACKUP_DIR",
    "TESSERA_BACKUP_INTERVAL",
    "TESSERA_BACKUP_KEEP",
    "TESSERA_WEBHOOK_RETENTION",
    "TESSERA_QUEUE_STALL_AFTER",
    "TESSERA_UPLOAD_IDLE_TIMEOUT",
    "TESSERA_DATA_DIR",
    "TESSERA_MAX_CAS_BYTES",
    "TESSERA_CAS_PROTECT_RECENT",
    "TESSERA_MAX_BATCH_TOTAL_SIZE_BYTES",
    "TESSERA_LOG_FORMAT",
    "TESSERA_LEASE_TIMEOUT",
    "TESSERA_MAX_ATTEMPTS",
    "TESSERA_OPERATION_RETENTION",
    "TESSERA_DEFAULT_ACTION_TIMEOUT",
    "TESSERA_MAX_ACTION_TIMEOUT",
    "TESSERA_PLATFORM_KEYS",
    "TESSERA_HISTORY_RUNS",
    "TESSERA_HISTORY_RETENTION",
    "TESSERA_DASHBOARD_JOBS",
    "TESSERA_TLS_CERT",
    "TESSERA_TLS_KEY",
    "TESSERA_TLS_CLIENT_CA",
    "TESSERA_AUTH",
    "TESSERA_INSECURE_NO_TLS",
    "TESSERA_INSECURE_NO_AUTH",
    "TESSERA_AUDIT_RETENTION",
    "TESSERA_LIMIT_EXECUTE_RATE",
    "TESSERA_LIMIT_EXECUTE_BURST",
    "TESSERA_LIMIT_EXECUTE_INFLIGHT",
    "TESSERA_LIMIT_SUBMIT_RATE",
    "TESSERA_LIMIT_SUBMIT_BURST",
    "TESSERA_LIMIT_JOBS_INFLIGHT",
    "TESSERA_LIMIT_UPLOAD_BYTES_RATE",
    "TESSERA_LIMIT_UPLOAD_BYTES_BURST",
    "TESSERA_HTTP_LISTEN",
    "TESSERA_METRICS_PUBLIC",
    "TESSERA_OTLP_ENDPOINT",
    "TESSERA_QUARANTINE_FLAKE_RATE",
    "TESSERA_QUARANTINE_RUNS",
    "TESSERA_CONFIG",
];

/// `TESSERA_*` variables used by other parts of the `tessera` binary (a trailing `*` covers a
/// prefix: every agent variable).
pub const OTHER_ENV_KEYS: &[&str] = &[
    "TESSERA_COORDINATOR",
    "TESSERA_WORK_DIR",
    "TESSERA_SLOTS",
    "TESSERA_AGENT_ID",
    "TESSERA_BIN",
    "TESSERA_SUBMITTER",
    "TESSERA_TOKEN",
    "TESSERA_TOKEN_FILE",
    "TESSERA_TLS_CA",
    "TESSERA_TLS_CLIENT_CERT",
    "TESSERA_TLS_CLIENT_KEY",
    "TESSERA_ON_BEHALF_OF",
    "TESSERA_CLIENT_CONFIG",
    "TESSERA_AGENT_*",
];

impl CoordinatorConfig {
    /// Loads the configuration: defaults, then `file` (if any), then the `TESSERA_*` entries of
    /// `env`, then `flags`; then checks it.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: &ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        tessera_config::load(file, env, flags)
    }

    /// Applies a TOML document (the loader checks the settings once every layer is in).
    pub fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        self.merge_file(tessera_config::parse_file(path, text)?)
    }
}

impl Settings for CoordinatorConfig {
    type File = FileConfig;
    type Flags = ConfigOverrides;
    const ENV: EnvScope = EnvScope {
        reads: ENV_KEYS,
        prefix: "TESSERA_",
        others: OTHER_ENV_KEYS,
    };

    fn merge_file(&mut self, file: FileConfig) -> Result<(), ConfigError> {
        if let Some(v) = file.listen {
            self.listen = v;
        }
        if let Some(v) = file.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = file.max_cas_bytes {
            self.max_cas_bytes = Some(v);
        }
        if let Some(v) = file.cas_protect_recent {
            self.cas_protect_recent = file_duration("cas_protect_recent", &v)?;
        }
        if let Some(v) = file.max_batch_total_size_bytes {
            self.max_batch_total_size_bytes = v;
        }
        if let Some(v) = file.log_format {
            self.log_format = v;
        }
        if let Some(v) = file.lease_timeout {
            self.lease_timeout = file_duration("lease_timeout", &v)?;
        }
        if let Some(v) = file.max_attempts {
            self.max_attempts = v;
        }
        if let Some(v) = file.operation_retention {
            self.operation_retention = file_duration("operation_retention", &v)?;
        }
        if let Some(v) = file.default_action_timeout {
            self.default_action_timeout = file_duration("default_action_timeout", &v)?;
        }
        if let Some(v) = file.max_action_timeout {
            self.max_action_timeout = file_duration("max_action_timeout", &v)?;
        }
        if let Some(v) = file.platform_keys {
            self.platform_keys = v;
        }
        if let Some(v) = file.history_runs {
            self.history_runs = v;
        }
        if let Some(v) = file.history_retention {
            self.history_retention = file_duration("history_retention", &v)?;
        }
        if let Some(v) = file.dashboard_jobs {
            self.dashboard_jobs = v;
        }
        if let Some(v) = file.tls_cert {
            self.tls_cert = Some(v);
        }
        if let Some(v) = file.tls_key {
            self.tls_key = Some(v);
        }
        if let Some(v) = file.tls_client_ca {
            self.tls_client_ca = Some(v);
        }
        if let Some(v) = file.auth {
            self.auth = v;
        }
        if let Some(v) = file.insecure_no_tls {
            self.insecure_no_tls = v;
        }
        if let Some(v) = file.insecure_no_auth {
            self.insecure_no_auth = v;
        }
        if let Some(v) = file.audit_retention {
            self.audit_retention = file_duration("audit_retention", &v)?;
        }
        if let Some(v) = file.http_listen {
            self.http_listen = Some(v);
        }
        if let Some(v) = file.metrics_public {
            self.metrics_public = v;
        }
        if let Some(v) = file.backup_dir {
            self.backup_dir = Some(v);
        }
        if let Some(v) = file.backup_interval {
            self.backup_interval = Some(file_duration("backup_interval", &v)?);
        }
        if let Some(v) = file.backup_keep {
            self.backup_keep = v;
        }
        if let Some(hooks) = file.webhooks {
            self.webhooks = hooks
                .into_iter()
                .map(|h| crate::notify::webhook::Webhook {
                    id: String::new(),
                    url: h.url,
                    secret: h.secret,
                    events: h.events,
                    labels: h.labels,
                    format: h.format,
                })
                .collect();
        }
        if let Some(v) = file.webhook_retention {
            self.webhook_retention = file_duration("webhook_retention", &v)?;
        }
        if let Some(v) = file.queue_stall_after {
            self.queue_stall_after = file_duration("queue_stall_after", &v)?;
        }
        if let Some(v) = file.upload_idle_timeout {
            self.upload_idle_timeout = file_duration("upload_idle_timeout", &v)?;
        }
        if let Some(v) = file.otlp_endpoint {
            self.otlp_endpoint = Some(v);
        }
        if let Some(q) = file.quarantine {
            if let Some(rate) = q.flake_rate {
                self.quarantine.flake_rate = Some(rate);
            }
            if let Some(runs) = q.runs {
                self.quarantine.runs = runs;
            }
        }
        if let Some(l) = file.limits {
            let limits = &mut self.limits;
            limits.execute_rate = l.execute_rate.unwrap_or(limits.execute_rate);
            limits.execute_burst = l.execute_burst.unwrap_or(limits.execute_burst);
            limits.execute_inflight = l.execute_inflight.unwrap_or(limits.execute_inflight);
            limits.submit_rate = l.submit_rate.unwrap_or(limits.submit_rate);
            limits.submit_burst = l.submit_burst.unwrap_or(limits.submit_burst);
            limits.jobs_inflight = l.jobs_inflight.unwrap_or(limits.jobs_inflight);
            limits.upload_bytes_rate = l.upload_bytes_rate.unwrap_or(limits.upload_bytes_rate);
            limits.upload_bytes_burst = l.upload_bytes_burst.unwrap_or(limits.upload_bytes_burst);
        }
        Ok(())
    }

    fn merge_env(&mut self, var: &str, value: &str) -> Result<(), BadValue> {
        match var {
            "TESSERA_LISTEN" => self.listen = parse(value)?,
            "TESSERA_DATA_DIR" => self.data_dir = PathBuf::from(value),
            "TESSERA_MAX_CAS_BYTES" => self.max_cas_bytes = Some(parse(value)?),
            "TESSERA_CAS_PROTECT_RECENT" => self.cas_protect_recent = parse_duration(value)?,
            "TESSERA_MAX_BATCH_TOTAL_SIZE_BYTES" => {
                self.max_batch_total_size_bytes = parse(value)?;
            }
            "TESSERA_LOG_FORMAT" => self.log_format = parse(value)?,
            "TESSERA_LEASE_TIMEOUT" => self.lease_timeout = parse_duration(value)?,
            "TESSERA_MAX_ATTEMPTS" => self.max_attempts = parse(value)?,
            "TESSERA_OPERATION_RETENTION" => self.operation_retention = parse_duration(value)?,
            "TESSERA_DEFAULT_ACTION_TIMEOUT" => {
                self.default_action_timeout = parse_duration(value)?;
            }
            "TESSERA_MAX_ACTION_TIMEOUT" => self.max_action_timeout = parse_duration(value)?,
            "TESSERA_PLATFORM_KEYS" => self.platform_keys = parse_list(value),
            "TESSERA_HISTORY_RUNS" => self.history_runs = parse(value)?,
            "TESSERA_DASHBOARD_JOBS" => self.dashboard_jobs = parse(value)?,
            "TESSERA_HISTORY_RETENTION" => self.history_retention = parse_duration(value)?,
            "TESSERA_TLS_CERT" => self.tls_cert = Some(PathBuf::from(value)),
            "TESSERA_TLS_KEY" => self.tls_key = Some(PathBuf::from(value)),
            "TESSERA_TLS_CLIENT_CA" => self.tls_client_ca = Some(PathBuf::from(value)),
            "TESSERA_AUTH" => self.auth = parse(value)?,
            "TESSERA_INSECURE_NO_TLS" => self.insecure_no_tls = parse_bool(value)?,
            "TESSERA_INSECURE_NO_AUTH" => self.insecure_no_auth = parse_bool(value)?,
            "TESSERA_AUDIT_RETENTION" => self.audit_retention = parse_duration(value)?,
            "TESSERA_LIMIT_EXECUTE_RATE" => self.limits.execute_rate = parse(value)?,
            "TESSERA_LIMIT_EXECUTE_BURST" => self.limits.execute_burst = parse(value)?,
            "TESSERA_LIMIT_EXECUTE_INFLIGHT" => self.limits.execute_inflight = parse(value)?,
            "TESSERA_LIMIT_SUBMIT_RATE" => self.limits.submit_rate = parse(value)?,
            "TESSERA_LIMIT_SUBMIT_BURST" => self.limits.submit_burst = parse(value)?,
            "TESSERA_LIMIT_JOBS_INFLIGHT" => self.limits.jobs_inflight = parse(value)?,
            "TESSERA_LIMIT_UPLOAD_BYTES_RATE" => self.limits.upload_bytes_rate = parse(value)?,
            "TESSERA_LIMIT_UPLOAD_BYTES_BURST" => self.limits.upload_bytes_burst = parse(value)?,
            "TESSERA_HTTP_LISTEN" => self.http_listen = Some(parse(value)?),
            "TESSERA_METRICS_PUBLIC" => self.metrics_public = parse_bool(value)?,
            "TESSERA_OTLP_ENDPOINT" => self.otlp_endpoint = Some(value.to_owned()),
            "TESSERA_BACKUP_DIR" => self.backup_dir = Some(PathBuf::from(value)),
            "TESSERA_BACKUP_INTERVAL" => self.backup_interval = Some(parse_duration(value)?),
            "TESSERA_BACKUP_KEEP" => self.backup_keep = parse(value)?,
            "TESSERA_WEBHOOK_RETENTION" => self.webhook_retention = parse_duration(value)?,
            "TESSERA_QUEUE_STALL_AFTER" => self.queue_stall_after = parse_duration(value)?,
            "TESSERA_UPLOAD_IDLE_TIMEOUT" => self.upload_idle_timeout = parse_duration(value)?,
            "TESSERA_QUARANTINE_FLAKE_RATE" => self.quarantine.flake_rate = Some(parse(value)?),
            "TESSERA_QUARANTINE_RUNS" => self.quarantine.runs = parse(value)?,
            // TESSERA_CONFIG: read by the command line before loading starts.
            _ => {}
        }
        Ok(())
    }

    fn merge_flags(&mut self, flags: &ConfigOverrides) -> Result<(), ConfigError> {
        if let Some(listen) = flags.listen {
            self.listen = listen;
        }
        if let Some(dir) = &flags.data_dir {
            self.data_dir.clone_from(dir);
        }
        if let Some(max) = flags.max_cas_bytes {
            self.max_cas_bytes = Some(max);
        }
        if let Some(format) = flags.log_format {
            self.log_format = format;
        }
        if let Some(v) = &flags.tls_cert {
            self.tls_cert = Some(v.clone());
        }
        if let Some(v) = &flags.tls_key {
            self.tls_key = Some(v.clone());
        }
        if let Some(v) = &flags.tls_client_ca {
            self.tls_client_ca = Some(v.clone());
        }
        if let Some(v) = flags.auth {
            self.auth = v;
        }
        self.insecure_no_tls |= flags.insecure_no_tls;
        self.insecure_no_auth |= flags.insecure_no_auth;
        if let Some(v) = flags.http_listen {
            self.http_listen = Some(v);
        }
        self.metrics_public |= flags.metrics_public;
        if let Some(v) = &flags.otlp_endpoint {
            self.otlp_endpoint = Some(v.clone());
        }
        if let Some(v) = &flags.backup_dir {
            self.backup_dir = Some(v.clone());
        }
        if let Some(v) = flags.backup_interval {
            self.backup_interval = Some(v);
        }
        if let Some(v) = flags.backup_keep {
            self.backup_keep = v;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_timeout < Duration::from_millis(200) {
            return Err(BadValue::new(
                format!("{:?}", self.lease_timeout),
                "must be at least 200ms",
            )
            .for_key("lease_timeout"));
        }
        if self.max_attempts == 0 {
            return Err(BadValue::new("0", "must be at least 1").for_key("max_attempts"));
        }
        if self.default_action_timeout > self.max_action_timeout {
            return Err(BadValue::new(
                format!("{:?}", self.default_action_timeout),
                "must not exceed max_action_timeout",
            )
            .for_key("default_action_timeout"));
        }
        if !(1..=MAX_HISTORY_RUNS).contains(&self.history_runs) {
            return Err(BadValue::new(
                self.history_runs.to_string(),
                format!("must be between 1 and {MAX_HISTORY_RUNS}"),
            )
            .for_key("history_runs"));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(
                    BadValue::new("(unset)", "tls_cert is set: set tls_key too").for_key("tls_key")
                );
            }
            (None, Some(_)) => {
                return Err(BadValue::new("(unset)", "tls_key is set: set tls_cert too")
                    .for_key("tls_cert"));
            }
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(BadValue::new(
                "(unset)",
                "tls_client_ca needs TLS: set tls_cert and tls_key (--tls-cert, --tls-key)",
            )
            .for_key("tls_cert"));
        }
        if !self.listen.ip().is_loopback() {
            if self.tls_cert.is_none() && !self.insecure_no_tls {
                return Err(BadValue::new(
                    self.listen.to_string(),
                    "is not a loopback address and TLS is off: give --tls-cert and --tls-key \
                     (see README \"Deploying on a network\"), or --insecure-no-tls to allow it",
                )
                .for_key("listen"));
            }
            if self.auth == AuthMode::None && !self.insecure_no_auth {
                return Err(BadValue::new(
                    self.listen.to_string(),
                    "is not a loopback address and authentication is off: give --auth tokens \
                     (see README \"Deploying on a network\"), or --insecure-no-auth to allow it",
                )
                .for_key("listen"));
            }
        }
        if let Some(http) = self.http_listen
            && !http.ip().is_loopback()
        {
            if self.tls_cert.is_none() && !self.insecure_no_tls {
                return Err(BadValue::new(
                    http.to_string(),
                    "is not a loopback address and TLS is off: the HTTP port uses the gRPC \
                     port's certificate (--tls-cert, --tls-key), or give --insecure-no-tls",
                )
                .for_key("http_listen"));
            }
            if self.auth == AuthMode::None && !self.insecure_no_auth {
                return Err(BadValue::new(
                    http.to_string(),
                    "is not a loopback address and authentication is off: give --auth tokens, \
                     or --insecure-no-auth",
                )
                .for_key("http_listen"));
            }
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(BadValue::new(
                endpoint.clone(),
                "must be an http:// or https:// URL (OTLP over gRPC, e.g. http://collector:4317)",
            )
            .for_key("otlp_endpoint"));
        }
        match (&self.backup_dir, self.backup_interval) {
            (Some(_), None) => {
                return Err(BadValue::new(
                    "(unset)",
                    "backup_dir is set: give backup_interval too (e.g. 24h for daily backups)",
                )
                .for_key("backup_interval"));
            }
            (None, Some(_)) => {
                return Err(BadValue::new(
                    "(unset)",
                    "backup_interval is set: give backup_dir, the directory backups go to",
                )
                .for_key("backup_dir"));
            }
            (Some(_), Some(interval)) if interval < Duration::from_secs(60) => {
                return Err(
                    BadValue::new(format!("{interval:?}"), "must be at least 1m")
                        .for_key("backup_interval"),
                );
            }
            _ => {}
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            if let Err(problem) = hook.check() {
                return Err(
                    BadValue::new(format!("[[webhooks]] #{}", i + 1), problem).for_key("webhooks")
                );
            }
        }
        if self.queue_stall_after < Duration::from_secs(1) {
            return Err(BadValue::new(
                format!("{:?}", self.queue_stall_after),
                "must be at least 1s",
            )
            .for_key("queue_stall_after"));
        }
        if self.upload_idle_timeout < Duration::from_millis(100) {
            return Err(BadValue::new(
                format!("{:?}", self.upload_idle_timeout),
                "must be at least 100ms",
            )
            .for_key("upload_idle_timeout"));
        }
        if self.backup_keep == 0 {
            return Err(BadValue::new("0", "must keep at least 1 backup").for_key("backup_keep"));
        }
        if self.audit_retention < Duration::from_secs(3600) {
            return Err(BadValue::new(
                format!("{:?}", self.audit_retention),
                "must be at least 1h",
            )
            .for_key("audit_retention"));
        }
        if let Some(rate) = self.quarantine.flake_rate
            && (rate.is_nan() || rate <= 0.0 || rate >= 1.0)
        {
            return Err(BadValue::new(
                rate.to_string(),
                "must be above 0 and below 1 (the share of flaky runs)",
            )
            .for_key("quarantine.flake_rate"));
        }
        let max_runs = crate::jobs::quarantine::MAX_WINDOW_RUNS;
        if !(1..=max_runs).contains(&self.quarantine.runs) {
            return Err(BadValue::new(
                self.quarantine.runs.to_string(),
                format!("must be between 1 and {max_runs}"),
            )
            .for_key("quarantine.runs"));
        }
        if self.history_retention < Duration::from_secs(86_400) {
            return Err(BadValue::new(
                format!("{:?}", self.history_retention),
                "must be at least 1d (history is kept by the day)",
            )
            .for_key("history_retention"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Regression: `TESSERA_SUBMITTER` (read by `tessera run`) in the environment made
    /// `tessera coordinator` refuse to start as if it were a typo of one of its own variables.
    #[test]
    fn the_run_commands_submitter_variable_is_not_a_coordinator_typo() {
        let env = env(&[("TESSERA_SUBMITTER", "ci@builder")]);
        CoordinatorConfig::load(None, &env, &ConfigOverrides::default()).unwrap();
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1000\"\ndata_dir = \"/from/file\"\nmax_cas_bytes = 5\ncas_protect_recent = \"2m\"\n",
        )
        .unwrap();
        let e = env(&[
            ("TESSERA_DATA_DIR", "/from/env"),
            ("TESSERA_MAX_CAS_BYTES", "7"),
            ("PATH", "/bin"),
        ]);
        let flags = ConfigOverrides {
            max_cas_bytes: Some(9),
            ..Default::default()
        };
        let c = CoordinatorConfig::load(Some(&file), &e, &flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.max_cas_bytes, Some(9));
        assert_eq!(c.cas_protect_recent, Duration::from_secs(120));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let mut c = CoordinatorConfig::default();
        let err = c
            .apply_file(Path::new("x.toml"), "listen_addr = \"127.0.0.1:1\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_env_values_and_unknown_variables_are_errors() {
        let none = ConfigOverrides::default();
        let err = CoordinatorConfig::load(None, &env(&[("TESSERA_MAX_CAS_BYTES", "lots")]), &none)
            .unwrap_err();
        assert!(err.to_string().contains("TESSERA_MAX_CAS_BYTES"), "{err}");
        let err =
            CoordinatorConfig::load(None, &env(&[("TESSERA_LISTN", "x")]), &none).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv(ref k) if k == "TESSERA_LISTN"));
        let err =
            CoordinatorConfig::load(None, &env(&[("TESSERA_CAS_PROTECT_RECENT", "soon")]), &none)
                .unwrap_err();
        assert!(err.to_string().contains("30s"), "{err}");
    }

    #[test]
    fn the_history_bound_is_set_checked_and_defaults_to_ten_runs() {
        let none = ConfigOverrides::default();
        let c = CoordinatorConfig::load(None, &BTreeMap::new(), &none).unwrap();
        assert_eq!(
            (c.history_runs, c.history_retention),
            (10, Duration::from_secs(30 * 86_400))
        );
        let e = env(&[
            ("TESSERA_HISTORY_RUNS", "25"),
            ("TESSERA_HISTORY_RETENTION", "90days"),
        ]);
        let c = CoordinatorConfig::load(None, &e, &none).unwrap();
        assert_eq!(
            (c.history_runs, c.history_retention),
            (25, Duration::from_secs(90 * 86_400))
        );
        for (var, value) in [
            ("TESSERA_HISTORY_RUNS", "0"),
            ("TESSERA_HISTORY_RUNS", "100000"),
            ("TESSERA_HISTORY_RETENTION", "1h"),
        ] {
            let err = CoordinatorConfig::load(None, &env(&[(var, value)]), &none).unwrap_err();
            assert!(err.to_string().contains("history_"), "{var}={value}: {err}");
        }
    }

    #[test]
    fn the_upload_idle_timeout_is_set_checked_and_defaults_to_a_minute() {
        let none = ConfigOverrides::default();
        let c = CoordinatorConfig::load(None, &BTreeMap::new(), &none).unwrap();
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(60));
        let e = env(&[("TESSERA_UPLOAD_IDLE_TIMEOUT", "5m")]);
        let c = CoordinatorConfig::load(None, &e, &none).unwrap();
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(300));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "upload_idle_timeout = \"90s\"\n").unwrap();
        let c = CoordinatorConfig::load(Some(&file), &BTreeMap::new(), &none).unwrap();
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(90));
        let e = env(&[("TESSERA_UPLOAD_IDLE_TIMEOUT", "10ms")]);
        let err = CoordinatorConfig::load(None, &e, &none).unwrap_err();
        assert!(err.to_string().contains("upload_idle_timeout"), "{err}");
    }

    #[test]
    fn the_quarantine_policy_is_off_by_default_and_checked() {
        let none = ConfigOverrides::default();
        let c = CoordinatorConfig::load(None, &BTreeMap::new(), &none).unwrap();
        assert_eq!(c.quarantine.policy(), None);
        let mut c = CoordinatorConfig::default();
        c.apply_file(
            Path::new("c.toml"),
            "[quarantine]\nflake_rate = 0.3\nruns = 20\n",
        )
        .unwrap();
        let policy = c.quarantine.policy().unwrap();
        assert_eq!((policy.flake_rate, policy.runs), (0.3, 20));
        let e = env(&[("TESSERA_QUARANTINE_FLAKE_RATE", "0.5")]);
        let c = CoordinatorConfig::load(None, &e, &none).unwrap();
        assert_eq!(c.quarantine.flake_rate, Some(0.5));
        for (var, value) in [
            ("TESSERA_QUARANTINE_FLAKE_RATE", "1.5"),
            ("TESSERA_QUARANTINE_FLAKE_RATE", "NaN"),
            ("TESSERA_QUARANTINE_RUNS", "65"),
        ] {
            let err = CoordinatorConfig::load(None, &env(&[(var, value)]), &none).unwrap_err();
            assert!(
                err.to_string().contains("quarantine."),
                "{var}={value}: {err}"
            );
        }
    }

    #[test]
    fn a_network_address_needs_tls_and_auth_or_the_flags_that_allow_going_without() {
        let public = ConfigOverrides {
            listen: Some("0.0.0.0:8980".parse().unwrap()),
            ..Default::default()
        };
        let err = CoordinatorConfig::load(None, &BTreeMap::new(), &public).unwrap_err();
        assert!(err.to_string().contains("--insecure-no-tls"), "{err}");
        let tls = ConfigOverrides {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..public.clone()
        };
        let err = CoordinatorConfig::load(None, &BTreeMap::new(), &tls).unwrap_err();
        assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
        let secure = ConfigOverrides {
            auth: Some(AuthMode::Tokens),
            ..tls
        };
        CoordinatorConfig::load(None, &BTreeMap::new(), &secure).unwrap();
        let e = env(&[
            ("TESSERA_INSECURE_NO_TLS", "true"),
            ("TESSERA_INSECURE_NO_AUTH", "1"),
        ]);
        CoordinatorConfig::load(None, &e, &public).unwrap();
        // Loopback needs nothing.
        CoordinatorConfig::load(None, &BTreeMap::new(), &ConfigOverrides::default()).unwrap();
    }

    #[test]
    fn tls_files_come_in_pairs_and_limits_parse() {
        let none = ConfigOverrides::default();
        let err = CoordinatorConfig::load(None, &env(&[("TESSERA_TLS_CERT", "c.pem")]), &none)
            .unwrap_err();
        assert!(err.to_string().contains("tls_key"), "{err}");
        let err =
            CoordinatorConfig::load(None, &env(&[("TESSERA_TLS_CLIENT_CA", "ca.pem")]), &none)
                .unwrap_err();
        assert!(err.to_string().contains("tls_cert"), "{err}");
        let err = CoordinatorConfig::load(None, &env(&[("TESSERA_AUTH", "password")]), &none)
            .unwrap_err();
        assert!(err.to_string().contains("none or tokens"), "{err}");
        let c = CoordinatorConfig::load(
            None,
            &env(&[
                ("TESSERA_AUTH", "tokens"),
                ("TESSERA_LIMIT_SUBMIT_RATE", "2"),
                ("TESSERA_TOKEN", "tsr_x"),
                ("TESSERA_TLS_CA", "ca.pem"),
                ("TESSERA_CLIENT_CONFIG", "c.toml"),
            ]),
            &none,
        )
        .unwrap();
        assert_eq!((c.auth, c.limits.submit_rate), (AuthMode::Tokens, 2));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[limits]\nexecute_inflight = 7\n").unwrap();
        let c = CoordinatorConfig::load(Some(&file), &BTreeMap::new(), &none).unwrap();
        assert_eq!(c.limits.execute_inflight, 7);
        assert_eq!(c.limits.submit_burst, Limits::default().submit_burst);
        std::fs::write(&file, "[limits]\nexecute_rat = 7\n").unwrap();
        assert!(CoordinatorConfig::load(Some(&file), &BTreeMap::new(), &none).is_err());
    }

    #[test]
    fn the_example_config_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let c = CoordinatorConfig::load(Some(&path), &BTreeMap::new(), &ConfigOverrides::default())
            .unwrap();
        assert_ne!(
            c,
            CoordinatorConfig::default(),
            "the example should set something"
        );
    }
}
