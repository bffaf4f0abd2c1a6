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
    BadValue, EnvScope, Settings, file_duration, parse, parse_duration, parse_list,
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

/// Everything the coordinator needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// gRPC listen address. Loopback by default: until authentication exists, a coordinator
    /// reachable from a network runs whatever its clients send.
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
            history_retention: Duration::from_secs(30 * 86_400),
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
}

/// Most durations kept per test: each is 8 bytes in every test's history entry.
pub const MAX_HISTORY_RUNS: usize = 1000;

/// Environment variables read by [`CoordinatorConfig::load`]. Other `TESSERA_*` variables that
/// belong to other commands are listed in [`OTHER_ENV_KEYS`] and ignored here.
pub const ENV_KEYS: &[&str] = &[
    "TESSERA_LISTEN",
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
            "TESSERA_HISTORY_RETENTION" => self.history_retention = parse_duration(value)?,
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
