//! The agent's settings: what they are, their defaults, keys, variables and checks.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config`), `TESSERA_AGENT_*`
//! environment variables (plus `TESSERA_COORDINATOR`, shared with the client commands), then
//! command-line flags. The client commands' `TESSERA_TOKEN`, `TESSERA_TOKEN_FILE` and
//! `TESSERA_TLS_CA` are fallbacks below all of these: each applies only when no layer sets
//! the agent's own setting (`TESSERA_TOKEN` beats `TESSERA_TOKEN_FILE`). Unknown file keys,
//! unknown `TESSERA_AGENT_*` variables and malformed values are errors. Other `TESSERA_*`
//! variables belong to other commands and are left alone.
//! The layering itself, the value parsers and [`ConfigError`] live in `tessera-config`, shared
//! with the coordinator and the CLI.
//! Also owns the agent's identity: the configured id, or one generated once and kept in the
//! work directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_config::{
    BadValue, EnvScope, Settings, file_duration, parse, parse_bool, parse_duration, parse_list,
};
use tessera_net::client::{ClientAuth, ClientError, Token};

pub use tessera_config::ConfigError;

/// Whether to run actions in Linux namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Use namespaces if a probe at startup shows the host allows them; otherwise warn and run
    /// without (advertising `sandbox=none`).
    #[default]
    Auto,
    /// Never use namespaces (resource limits and process groups still apply).
    Off,
}

impl std::str::FromStr for SandboxMode {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(SandboxMode::Auto),
            "off" => Ok(SandboxMode::Off),
            other => Err(BadValue::new(
                other,
                format!("unknown sandbox mode \"{other}\" (expected auto or off)"),
            )),
        }
    }
}

/// Everything the agent needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The coordinator's gRPC endpoint, `http://HOST:PORT`; it also serves the CAS.
    pub coordinator: String,
    /// Directory for the agent's state: its id, the local blob cache, the exec roots.
    pub work_dir: PathBuf,
    /// Actions run at once.
    pub slots: u32,
    /// Extra platform properties to advertise; they override detected ones with the same name.
    pub properties: BTreeMap<String, String>,
    /// The agent id; `None` uses the one kept in the work directory (generated on first start).
    pub id: Option<String>,
    /// Byte budget of the local blob cache; least recently used blobs are evicted beyond it.
    pub max_cache_bytes: u64,
    /// Whether to sandbox actions with namespaces.
    pub sandbox: SandboxMode,
    /// Keep the directory of a failed lease (non-zero exit or error) under `work_dir/kept/`.
    pub keep_failed: bool,
    /// Reuse a finished lease's directory for a later lease of the same trust domain (only
    /// where each command runs in a PID namespace of its own; see `workdir::LeaseDirPool`).
    pub recycle_dirs: bool,
    /// When draining, cancel leases still running after this long (`None`: wait for each
    /// lease's own timeout).
    pub drain_timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when a command's process group is stopped.
    pub kill_grace: Duration,
    /// How long a long-lived test worker (a pytest that runs one job's batches one after
    /// another) waits for its next batch before it is stopped; zero turns workers off, and
    /// every batch starts its tool anew.
    pub worker_idle: Duration,
    /// Lay large input roots out once, as shared read-only layers that each lease sees
    /// through its own overlay mount (where the host allows mounting; see `layer`); `false`
    /// lays every root out file by file for every lease.
    pub layers: bool,
    /// Input roots with fewer entries (files, directories and symlinks) than this are laid
    /// out file by file even with `layers` (linking a few files costs less than a mount).
    pub layer_min_entries: u64,
    /// Layers kept at most; the least recently used one not in use is evicted beyond it.
    pub max_layers: usize,
    /// Entries in all kept layers together at most; least recently used layers not in use
    /// are evicted beyond it.
    pub max_layer_entries: u64,
    /// File holding the agent's bearer token (a coordinator with `auth = "tokens"` needs one
    /// of role `agent`); read at start. Wins over [`AgentConfig::token`].
    pub token_file: Option<PathBuf>,
    /// The token itself, from `TESSERA_TOKEN` (only when no `token_file` is set).
    pub token: Option<Token>,
    /// CA certificate (PEM) that signed the coordinator's certificate; needed for an
    /// `https://` coordinator.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a coordinator that requires mutual TLS.
    pub tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_client_cert`.
    pub tls_client_key: Option<PathBuf>,
    /// Address of the HTTP port serving `/metrics`, `/healthz` and `/readyz`; `None` (the
    /// default) serves none. Meant for loopback: the agent has no TLS server certificate, so
    /// another address is served in plain HTTP, with a warning.
    pub http_listen: Option<SocketAddr>,
    /// OTLP/gRPC collector (`http://HOST:4317`) the agent's spans are exported to; `None` (the
    /// default) exports none.
    pub otlp_endpoint: Option<String>,
}

/// Default local cache budget: 10 GiB.
pub const DEFAULT_MAX_CACHE_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Default smallest root given a layer. An overlay mount and its clean-up cost ~8–20 ms on
/// this project's 2-core machine (more under load), linking files ~19 µs each: the crossover
/// lies between ~400 and ~1,000 entries (README, `job` section).
pub const DEFAULT_LAYER_MIN_ENTRIES: u64 = 1_024;
/// Default number of layers kept.
pub const DEFAULT_MAX_LAYERS: usize = 16;
/// Default entries in all layers together: 16 roots of ~60,000 entries. A layer's files are
/// hard links to cached blobs, so it costs directory entries and directories, not copies of
/// the files; but a blob the cache evicts stays on disk while a layer links it.
pub const DEFAULT_MAX_LAYER_ENTRIES: u64 = 1_000_000;

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            coordinator: "http://127.0.0.1:8980".to_owned(),
            work_dir: PathBuf::from("tessera-agent"),
            slots: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            properties: BTreeMap::new(),
            id: None,
            max_cache_bytes: DEFAULT_MAX_CACHE_BYTES,
            sandbox: SandboxMode::Auto,
            keep_failed: false,
            recycle_dirs: true,
            drain_timeout: None,
            kill_grace: Duration::from_secs(2),
            worker_idle: Duration::from_secs(30),
            layers: true,
            layer_min_entries: DEFAULT_LAYER_MIN_ENTRIES,
            max_layers: DEFAULT_MAX_LAYERS,
            max_layer_entries: DEFAULT_MAX_LAYER_ENTRIES,
            token_file: None,
            token: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
            http_listen: None,
            otlp_endpoint: None,
        }
    }
}

/// Values given on the command line; `None` (or empty) leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct AgentOverrides {
    /// `--coordinator`.
    pub coordinator: Option<String>,
    /// `--work-dir`.
    pub work_dir: Option<PathBuf>,
    /// `--slots`.
    pub slots: Option<u32>,
    /// `--property key=value`, repeated; added to (and overriding) lower layers' properties.
    pub properties: Vec<String>,
    /// `--id`.
    pub id: Option<String>,
    /// `--max-cache-bytes`.
    pub max_cache_bytes: Option<u64>,
    /// `--sandbox`.
    pub sandbox: Option<SandboxMode>,
    /// `--keep-failed` (only ever turns it on).
    pub keep_failed: bool,
    /// `--no-recycle-dirs` (only ever turns recycling off).
    pub no_recycle_dirs: bool,
    /// `--drain-timeout`.
    pub drain_timeout: Option<Duration>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `--tls-client-cert`.
    pub tls_client_cert: Option<PathBuf>,
    /// `--tls-client-key`.
    pub tls_client_key: Option<PathBuf>,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
}

/// Environment variables read by [`AgentConfig::load`].
pub const ENV_KEYS: &[&str] = &[
    "TESSERA_COORDINATOR",
    "TESSERA_AGENT_CONFIG",
    "TESSERA_AGENT_WORK_DIR",
    "TESSERA_AGENT_SLOTS",
    "TESSERA_AGENT_PROPERTIES",
    "TESSERA_AGENT_ID",
    "TESSERA_AGENT_MAX_CACHE_BYTES",
    "TESSERA_AGENT_SANDBOX",
    "TESSERA_AGENT_KEEP_FAILED",
    "TESSERA_AGENT_RECYCLE_DIRS",
    "TESSERA_AGENT_DRAIN_TIMEOUT",
    "TESSERA_AGENT_KILL_GRACE",
    "TESSERA_AGENT_WORKER_IDLE",
    "TESSERA_AGENT_LAYERS",
    "TESSERA_AGENT_LAYER_MIN_ENTRIES",
    "TESSERA_AGENT_MAX_LAYERS",
    "TESSERA_AGENT_MAX_LAYER_ENTRIES",
    "TESSERA_AGENT_TOKEN_FILE",
    "TESSERA_AGENT_TLS_CA",
    "TESSERA_AGENT_TLS_CLIENT_CERT",
    "TESSERA_AGENT_TLS_CLIENT_KEY",
    "TESSERA_AGENT_HTTP_LISTEN",
    // The client commands' variables, read as fallbacks (see the module docs).
    "TESSERA_TOKEN",
    "TESSERA_TOKEN_FILE",
    "TESSERA_TLS_CA",
];

/// The file form: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    coordinator: Option<String>,
    work_dir: Option<PathBuf>,
    slots: Option<u32>,
    properties: Option<BTreeMap<String, String>>,
    id: Option<String>,
    max_cache_bytes: Option<u64>,
    sandbox: Option<SandboxMode>,
    keep_failed: Option<bool>,
    recycle_dirs: Option<bool>,
    drain_timeout: Option<String>,
    kill_grace: Option<String>,
    worker_idle: Option<String>,
    layers: Option<bool>,
    layer_min_entries: Option<u64>,
    max_layers: Option<usize>,
    max_layer_entries: Option<u64>,
    token_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
    http_listen: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
}

/// Parses one `key=value` property.
pub fn parse_property(text: &str) -> Result<(String, String), BadValue> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(BadValue::new(text, "expected key=value"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(BadValue::new(text, "the property name is empty"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

impl AgentConfig {
    /// Loads the configuration: defaults, then `file` (if any), then the agent's variables in
    /// `env`, then `flags`; then checks it.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        flags: &AgentOverrides,
    ) -> Result<Self, ConfigError> {
        tessera_config::load(file, env, flags)
    }

    /// Applies a TOML document (the loader checks the settings once every layer is in).
    pub fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        self.merge_file(tessera_config::parse_file(path, text)?)
    }

    /// How the agent connects to the coordinator: reads the token file, if any.
    pub fn client_auth(&self) -> Result<ClientAuth, ClientError> {
        let token = match &self.token_file {
            Some(path) => Some(Token::read_file(path)?),
            None => self.token.clone(),
        };
        Ok(ClientAuth {
            tls_ca: self.tls_ca.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
            token,
        })
    }

    /// Checks values that parse but make no sense.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.slots == 0 {
            return Err(BadValue::new("0", "an agent needs at least one slot").for_key("slots"));
        }
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(BadValue::new(
                self.coordinator.as_str(),
                "expected an endpoint like http://127.0.0.1:8980",
            )
            .for_key("coordinator"));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(BadValue::new(
                endpoint.as_str(),
                "must be an http:// or https:// URL (OTLP over gRPC, e.g. http://collector:4317)",
            )
            .for_key("otlp_endpoint"));
        }
        if self.coordinator.starts_with("https://") && self.tls_ca.is_none() {
            return Err(BadValue::new(
                "(unset)",
                "an https:// coordinator needs the CA that signed its certificate: --tls-ca \
                 FILE (or TESSERA_AGENT_TLS_CA, or TESSERA_TLS_CA)",
            )
            .for_key("tls_ca"));
        }
        match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(_), None) => {
                return Err(BadValue::new(
                    "(unset)",
                    "tls_client_cert is set: set tls_client_key too (--tls-client-key)",
                )
                .for_key("tls_client_key"));
            }
            (None, Some(_)) => {
                return Err(BadValue::new(
                    "(unset)",
                    "tls_client_key is set: set tls_client_cert too (--tls-client-cert)",
                )
                .for_key("tls_client_cert"));
            }
            _ => {}
        }
        if let Some(id) = &self.id {
            check_agent_id(id)
                .map_err(|reason| BadValue::new(id.as_str(), reason).for_key("id"))?;
        }
        if self.max_layers == 0 {
            return Err(BadValue::new(
                "0",
                "at least one layer must fit (layers = false turns layers off)",
            )
            .for_key("max_layers"));
        }
        Ok(())
    }
}

impl Settings for AgentConfig {
    type File = FileConfig;
    type Flags = AgentOverrides;
    const ENV: EnvScope = EnvScope {
        reads: ENV_KEYS,
        prefix: "TESSERA_AGENT_",
        others: &[],
    };

    fn merge_file(&mut self, file: FileConfig) -> Result<(), ConfigError> {
        if let Some(v) = file.coordinator {
            self.coordinator = v;
        }
        if let Some(v) = file.work_dir {
            self.work_dir = v;
        }
        if let Some(v) = file.slots {
            self.slots = v;
        }
        if let Some(v) = file.properties {
            self.properties.extend(v);
        }
        if let Some(v) = file.id {
            self.id = Some(v);
        }
        if let Some(v) = file.max_cache_bytes {
            self.max_cache_bytes = v;
        }
        if let Some(v) = file.sandbox {
            self.sandbox = v;
        }
        if let Some(v) = file.keep_failed {
            self.keep_failed = v;
        }
        if let Some(v) = file.recycle_dirs {
            self.recycle_dirs = v;
        }
        if let Some(v) = file.drain_timeout {
            self.drain_timeout = Some(file_duration("drain_timeout", &v)?);
        }
        if let Some(v) = file.kill_grace {
            self.kill_grace = file_duration("kill_grace", &v)?;
        }
        if let Some(v) = file.worker_idle {
            self.worker_idle = file_duration("worker_idle", &v)?;
        }
        if let Some(v) = file.layers {
            self.layers = v;
        }
        if let Some(v) = file.layer_min_entries {
            self.layer_min_entries = v;
        }
        if let Some(v) = file.max_layers {
            self.max_layers = v;
        }
        if let Some(v) = file.max_layer_entries {
            self.max_layer_entries = v;
        }
        if let Some(v) = file.token_file {
            self.set_token_file(v);
        }
        if let Some(v) = file.tls_ca {
            self.tls_ca = Some(v);
        }
        if let Some(v) = file.tls_client_cert {
            self.tls_client_cert = Some(v);
        }
        if let Some(v) = file.tls_client_key {
            self.tls_client_key = Some(v);
        }
        if let Some(v) = file.http_listen {
            self.http_listen = Some(v);
        }
        if let Some(v) = file.otlp_endpoint {
            self.otlp_endpoint = Some(v);
        }
        Ok(())
    }

    fn merge_env(&mut self, var: &str, value: &str) -> Result<(), BadValue> {
        match var {
            "TESSERA_COORDINATOR" => value.clone_into(&mut self.coordinator),
            "TESSERA_AGENT_WORK_DIR" => self.work_dir = PathBuf::from(value),
            "TESSERA_AGENT_SLOTS" => self.slots = parse(value)?,
            "TESSERA_AGENT_PROPERTIES" => {
                for item in parse_list(value) {
                    let (name, v) = parse_property(&item)?;
                    self.properties.insert(name, v);
                }
            }
            "TESSERA_AGENT_ID" => self.id = Some(value.to_owned()),
            "TESSERA_AGENT_MAX_CACHE_BYTES" => self.max_cache_bytes = parse(value)?,
            "TESSERA_AGENT_SANDBOX" => self.sandbox = parse(value)?,
            "TESSERA_AGENT_KEEP_FAILED" => self.keep_failed = parse_bool(value)?,
            "TESSERA_AGENT_RECYCLE_DIRS" => self.recycle_dirs = parse_bool(value)?,
            "TESSERA_AGENT_DRAIN_TIMEOUT" => self.drain_timeout = Some(parse_duration(value)?),
            "TESSERA_AGENT_KILL_GRACE" => self.kill_grace = parse_duration(value)?,
            "TESSERA_AGENT_WORKER_IDLE" => self.worker_idle = parse_duration(value)?,
            "TESSERA_AGENT_LAYERS" => self.layers = parse_bool(value)?,
            "TESSERA_AGENT_LAYER_MIN_ENTRIES" => self.layer_min_entries = parse(value)?,
            "TESSERA_AGENT_MAX_LAYERS" => self.max_layers = parse(value)?,
            "TESSERA_AGENT_MAX_LAYER_ENTRIES" => self.max_layer_entries = parse(value)?,
            "TESSERA_AGENT_TOKEN_FILE" => self.set_token_file(PathBuf::from(value)),
            "TESSERA_AGENT_TLS_CA" => self.tls_ca = Some(PathBuf::from(value)),
            "TESSERA_AGENT_TLS_CLIENT_CERT" => self.tls_client_cert = Some(PathBuf::from(value)),
            "TESSERA_AGENT_TLS_CLIENT_KEY" => self.tls_client_key = Some(PathBuf::from(value)),
            "TESSERA_AGENT_HTTP_LISTEN" => self.http_listen = Some(parse(value)?),
            "TESSERA_AGENT_OTLP_ENDPOINT" => self.otlp_endpoint = Some(value.to_owned()),
            // Fallbacks: they never replace a value set by the agent's own settings, whatever
            // order the variables come in (the agent's own ones overwrite, these fill gaps).
            "TESSERA_TOKEN" if self.token_file.is_none() && self.token.is_none() => {
                // The value is a secret: never echo it in an error.
                let token = Token::new(value.to_owned())
                    .map_err(|e| BadValue::new("(hidden)", e.to_string()))?;
                self.token = Some(token);
            }
            "TESSERA_TOKEN_FILE" if self.token_file.is_none() && self.token.is_none() => {
                self.token_file = Some(PathBuf::from(value));
            }
            "TESSERA_TLS_CA" if self.tls_ca.is_none() => {
                self.tls_ca = Some(PathBuf::from(value));
            }
            // TESSERA_AGENT_CONFIG: read by the command line before loading starts.
            _ => {}
        }
        Ok(())
    }

    fn merge_flags(&mut self, flags: &AgentOverrides) -> Result<(), ConfigError> {
        if let Some(v) = &flags.coordinator {
            self.coordinator.clone_from(v);
        }
        if let Some(v) = &flags.work_dir {
            self.work_dir.clone_from(v);
        }
        if let Some(v) = flags.slots {
            self.slots = v;
        }
        for item in &flags.properties {
            let (name, value) = parse_property(item).map_err(|bad| bad.for_key("--property"))?;
            self.properties.insert(name, value);
        }
        if let Some(v) = &flags.id {
            self.id = Some(v.clone());
        }
        if let Some(v) = flags.max_cache_bytes {
            self.max_cache_bytes = v;
        }
        if let Some(v) = flags.sandbox {
            self.sandbox = v;
        }
        if flags.keep_failed {
            self.keep_failed = true;
        }
        if flags.no_recycle_dirs {
            self.recycle_dirs = false;
        }
        if let Some(v) = flags.drain_timeout {
            self.drain_timeout = Some(v);
        }
        if let Some(v) = &flags.token_file {
            self.set_token_file(v.clone());
        }
        if let Some(v) = &flags.tls_ca {
            self.tls_ca = Some(v.clone());
        }
        if let Some(v) = &flags.tls_client_cert {
            self.tls_client_cert = Some(v.clone());
        }
        if let Some(v) = &flags.tls_client_key {
            self.tls_client_key = Some(v.clone());
        }
        if let Some(v) = flags.http_listen {
            self.http_listen = Some(v);
        }
        if let Some(v) = &flags.otlp_endpoint {
            self.otlp_endpoint = Some(v.clone());
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.check()
    }
}

impl AgentConfig {
    /// The agent's own token file setting, which replaces a `TESSERA_TOKEN` fallback.
    fn set_token_file(&mut self, path: PathBuf) {
        self.token_file = Some(path);
        self.token = None;
    }
}

/// Agent ids are printable ASCII without spaces, 1 to 128 bytes: they appear in logs, metrics
/// and `ExecutedActionMetadata.worker`.
pub fn check_agent_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters");
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces");
    }
    Ok(())
}

/// Name of the file in the work directory that keeps a generated agent id.
const ID_FILE: &str = "agent-id";

/// The agent's id: `configured` if given, else the one kept in `work_dir`, else a new one
/// (`<hostname>-<8 hex digits>`) written there for the next start.
pub fn agent_id(configured: Option<&str>, work_dir: &Path) -> std::io::Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = work_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if check_agent_id(id).is_ok() {
                return Ok(id.to_owned());
            }
            tracing::warn!(path = %path.display(), "ignoring malformed agent id file");
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .take(64)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".to_owned());
    let id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let tmp = work_dir.join(format!("{ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
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

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "coordinator = \"http://file:1\"\nslots = 3\nwork_dir = \"/from/file\"\n\
             drain_timeout = \"5m\"\n[properties]\npool = \"file\"\ngpu = \"none\"\n",
        )
        .unwrap();
        let e = env(&[
            ("TESSERA_AGENT_WORK_DIR", "/from/env"),
            ("TESSERA_AGENT_PROPERTIES", "pool=env, zone=b"),
            ("TESSERA_LISTEN", "belongs to the coordinator"),
            ("PATH", "/bin"),
        ]);
        let flags = AgentOverrides {
            slots: Some(7),
            properties: vec!["pool=flag".into()],
            ..AgentOverrides::default()
        };
        let c = AgentConfig::load(Some(&file), &e, &flags).unwrap();
        assert_eq!(c.coordinator, "http://file:1");
        assert_eq!(c.work_dir, PathBuf::from("/from/env"));
        assert_eq!(c.slots, 7);
        assert_eq!(c.drain_timeout, Some(Duration::from_secs(300)));
        let props: Vec<(&str, &str)> = c
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            props,
            [("gpu", "none"), ("pool", "flag"), ("zone", "b")],
            "flags override env, env overrides file"
        );
    }

    #[test]
    fn directory_reuse_is_on_unless_a_file_the_environment_or_a_flag_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "recycle_dirs = false\n").unwrap();
        let none = AgentOverrides::default();
        let off = AgentOverrides {
            no_recycle_dirs: true,
            ..AgentOverrides::default()
        };
        let load = |file: Option<&Path>, vars: &[(&str, &str)], flags: &AgentOverrides| {
            AgentConfig::load(file, &env(vars), flags)
                .unwrap()
                .recycle_dirs
        };
        assert!(load(None, &[], &none));
        assert!(!load(Some(&file), &[], &none));
        assert!(!load(
            None,
            &[("TESSERA_AGENT_RECYCLE_DIRS", "false")],
            &none
        ));
        assert!(load(
            Some(&file),
            &[("TESSERA_AGENT_RECYCLE_DIRS", "true")],
            &none
        ));
        assert!(!load(None, &[("TESSERA_AGENT_RECYCLE_DIRS", "true")], &off));
    }

    #[test]
    fn mistakes_are_errors() {
        let none = AgentOverrides::default();
        let mut c = AgentConfig::default();
        let err = c.apply_file(Path::new("a.toml"), "slot = 3\n").unwrap_err();
        assert!(err.to_string().contains("slot"), "{err}");

        let err = AgentConfig::load(None, &env(&[("TESSERA_AGENT_SLOT", "3")]), &none).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv(ref k) if k == "TESSERA_AGENT_SLOT"));

        let err =
            AgentConfig::load(None, &env(&[("TESSERA_AGENT_SLOTS", "many")]), &none).unwrap_err();
        assert!(err.to_string().contains("TESSERA_AGENT_SLOTS"), "{err}");

        let err =
            AgentConfig::load(None, &env(&[("TESSERA_AGENT_SLOTS", "0")]), &none).unwrap_err();
        assert!(err.to_string().contains("at least one slot"), "{err}");

        let bad_property = AgentOverrides {
            properties: vec!["novalue".into()],
            ..AgentOverrides::default()
        };
        let err = AgentConfig::load(None, &BTreeMap::new(), &bad_property).unwrap_err();
        assert!(err.to_string().contains("key=value"), "{err}");

        let bad_endpoint = AgentOverrides {
            coordinator: Some("127.0.0.1:8980".into()),
            ..AgentOverrides::default()
        };
        let err = AgentConfig::load(None, &BTreeMap::new(), &bad_endpoint).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");

        let bad_id = AgentOverrides {
            id: Some("has space".into()),
            ..AgentOverrides::default()
        };
        assert!(AgentConfig::load(None, &BTreeMap::new(), &bad_id).is_err());

        let err =
            AgentConfig::load(None, &env(&[("TESSERA_AGENT_SANDBOX", "on")]), &none).unwrap_err();
        assert!(err.to_string().contains("auto or off"), "{err}");

        let err =
            AgentConfig::load(None, &env(&[("TESSERA_AGENT_MAX_LAYERS", "0")]), &none).unwrap_err();
        assert!(err.to_string().contains("layers = false"), "{err}");
        let err =
            AgentConfig::load(None, &env(&[("TESSERA_AGENT_LAYERS", "maybe")]), &none).unwrap_err();
        assert!(err.to_string().contains("TESSERA_AGENT_LAYERS"), "{err}");
    }

    #[test]
    fn http_listen_comes_from_file_environment_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "http_listen = \"127.0.0.1:9001\"\n").unwrap();
        let none = AgentOverrides::default();
        let c = AgentConfig::load(Some(&file), &env(&[]), &none).unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:9001".parse().unwrap()));
        let e = env(&[("TESSERA_AGENT_HTTP_LISTEN", "127.0.0.1:9002")]);
        let c = AgentConfig::load(Some(&file), &e, &none).unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:9002".parse().unwrap()));
        let flags = AgentOverrides {
            http_listen: Some("127.0.0.1:9003".parse().unwrap()),
            ..AgentOverrides::default()
        };
        let c = AgentConfig::load(Some(&file), &e, &flags).unwrap();
        assert_eq!(c.http_listen, Some("127.0.0.1:9003".parse().unwrap()));
        assert_eq!(AgentConfig::default().http_listen, None, "off by default");
        let err = AgentConfig::load(
            None,
            &env(&[("TESSERA_AGENT_HTTP_LISTEN", "localhost")]),
            &none,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("TESSERA_AGENT_HTTP_LISTEN"),
            "{err}"
        );
    }

    #[test]
    fn layer_settings_come_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "layers = false\nlayer_min_entries = 10\nmax_layers = 3\nmax_layer_entries = 99\n",
        )
        .unwrap();
        let c = AgentConfig::load(
            Some(&file),
            &env(&[("TESSERA_AGENT_MAX_LAYERS", "5")]),
            &AgentOverrides::default(),
        )
        .unwrap();
        assert!(!c.layers);
        assert_eq!(
            (c.layer_min_entries, c.max_layers, c.max_layer_entries),
            (10, 5, 99)
        );
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
        let c =
            AgentConfig::load(Some(&path), &BTreeMap::new(), &AgentOverrides::default()).unwrap();
        assert_ne!(
            c,
            AgentConfig::default(),
            "the example should set something"
        );
    }

    #[test]
    fn client_variables_are_fallbacks_below_the_agents_own_settings() {
        let none = AgentOverrides::default();
        let c = AgentConfig::load(
            None,
            &env(&[
                ("TESSERA_TOKEN", "from-env"),
                ("TESSERA_TOKEN_FILE", "/client/token"),
                ("TESSERA_TLS_CA", "/client/ca.pem"),
                ("TESSERA_TLS_CLIENT_CERT", "/client/cert.pem"),
                ("TESSERA_ON_BEHALF_OF", "someone"),
                ("TESSERA_CLIENT_CONFIG", "/client/config.toml"),
            ]),
            &none,
        )
        .unwrap();
        assert_eq!(c.token.as_ref().map(Token::secret), Some("from-env"));
        assert_eq!(c.token_file, None, "TESSERA_TOKEN beats TESSERA_TOKEN_FILE");
        assert_eq!(c.tls_ca, Some(PathBuf::from("/client/ca.pem")));
        assert_eq!(
            c.tls_client_cert, None,
            "only the agent's own variable sets it"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "token_file = \"/file/token\"\ntls_ca = \"/file/ca.pem\"\n",
        )
        .unwrap();
        let client_env = env(&[
            ("TESSERA_TOKEN", "from-env"),
            ("TESSERA_TLS_CA", "/client/ca.pem"),
        ]);
        let c = AgentConfig::load(Some(&file), &client_env, &none).unwrap();
        assert_eq!(c.token_file, Some(PathBuf::from("/file/token")));
        assert_eq!(c.token, None);
        assert_eq!(c.tls_ca, Some(PathBuf::from("/file/ca.pem")));

        let mut agent_env = client_env.clone();
        agent_env.insert("TESSERA_AGENT_TLS_CA".into(), "/agent/ca.pem".into());
        let flags = AgentOverrides {
            token_file: Some("/flag/token".into()),
            tls_client_cert: Some("/flag/cert.pem".into()),
            tls_client_key: Some("/flag/key.pem".into()),
            ..AgentOverrides::default()
        };
        let c = AgentConfig::load(None, &agent_env, &flags).unwrap();
        assert_eq!(c.tls_ca, Some(PathBuf::from("/agent/ca.pem")));
        assert_eq!(c.token_file, Some(PathBuf::from("/flag/token")));
        assert_eq!(c.token, None, "--token-file replaces TESSERA_TOKEN");
        assert_eq!(c.tls_client_key, Some(PathBuf::from("/flag/key.pem")));
    }

    #[test]
    fn credential_mistakes_are_errors_that_never_show_the_token() {
        let none = AgentOverrides::default();
        let err = AgentConfig::load(None, &env(&[("TESSERA_TOKEN", "bad secret")]), &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TESSERA_TOKEN") && !err.contains("bad secret"),
            "{err}"
        );

        let https = AgentOverrides {
            coordinator: Some("https://coordinator:8980".into()),
            ..AgentOverrides::default()
        };
        let err = AgentConfig::load(None, &BTreeMap::new(), &https).unwrap_err();
        assert!(err.to_string().contains("--tls-ca"), "{err}");

        let half = AgentOverrides {
            tls_client_cert: Some("/cert.pem".into()),
            ..AgentOverrides::default()
        };
        let err = AgentConfig::load(None, &BTreeMap::new(), &half).unwrap_err();
        assert!(err.to_string().contains("tls_client_key"), "{err}");

        let err =
            AgentConfig::load(None, &env(&[("TESSERA_AGENT_TOKEN", "x")]), &none).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv(_)), "{err}");
    }

    #[test]
    fn generated_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = agent_id(None, dir.path()).unwrap();
        check_agent_id(&first).unwrap();
        assert_eq!(agent_id(None, dir.path()).unwrap(), first);
        assert_eq!(agent_id(Some("given"), dir.path()).unwrap(), "given");
    }
}
