//! The client commands' configuration (`run`, `watch`, `cancel`, `status`, `logs`, `token`,
//! `audit`): which coordinators, which token, which TLS files.
//!
//! Lowest precedence first, as for the servers: defaults (none: the embedded cluster), the file,
//! the environment, the flags ([`ClientFlags`]).
//!
//! | setting | file key | variable | flag |
//! | --- | --- | --- | --- |
//! | the file itself | | `TESSERA_CLIENT_CONFIG` (default `$XDG_CONFIG_HOME/tessera/config.toml`, else `~/.config/tessera/config.toml`) | |
//! | coordinators, tried in order | `coordinator` (a URL or a list) | `TESSERA_COORDINATOR` (a comma list) | `--coordinator` (a comma list) |
//! | token | `token_file` | `TESSERA_TOKEN` (the token itself) or `TESSERA_TOKEN_FILE` | `--token-file` |
//! | CA certificate for `https://` | `tls_ca` | `TESSERA_TLS_CA` | `--tls-ca` |
//! | client certificate (mutual TLS) | `tls_client_cert` | `TESSERA_TLS_CLIENT_CERT` | |
//! | its key | `tls_client_key` | `TESSERA_TLS_CLIENT_KEY` | |
//!
//! A missing default file is fine; a file named by `TESSERA_CLIENT_CONFIG` must exist. Unknown
//! keys are errors. Relative paths in the file are relative to the file's directory (elsewhere,
//! to the current directory). Other `TESSERA_*` variables belong to the servers and are left
//! alone, except mistyped `TESSERA_TLS_*` ones (a CA that silently is not used would be a
//! puzzle).
//!
//! With no coordinator anywhere, the commands use the embedded cluster on loopback, without
//! TLS or token (`crate::connect`), whatever else is configured. What it does not own: reaching
//! the coordinator (`crate::connect`), TLS and the bearer header (`tessera_net::client`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tessera_config::{BadValue, ConfigError, EnvScope, EnvUse, Settings, UnknownEnvVar};
use tessera_net::client::{ClientAuth, Token};

use crate::connect;
use crate::exit::CliError;

/// The variables the client commands read.
pub const ENV_KEYS: &[&str] = &[
    "TESSERA_CLIENT_CONFIG",
    "TESSERA_COORDINATOR",
    "TESSERA_TOKEN",
    "TESSERA_TOKEN_FILE",
    "TESSERA_TLS_CA",
    "TESSERA_TLS_CLIENT_CERT",
    "TESSERA_TLS_CLIENT_KEY",
];

/// The flags every client command shares.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientFlags {
    /// Coordinator URL, `http://` or `https://` (a comma list is tried in order, the first
    /// that answers is used) [default: TESSERA_COORDINATOR, else `coordinator` in the client
    /// config file, else the embedded cluster on this machine].
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// File holding the token sent to the coordinator [default: TESSERA_TOKEN (the token
    /// itself), else TESSERA_TOKEN_FILE, else `token_file` in the client config file].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed an `https://` coordinator's certificate [default:
    /// TESSERA_TLS_CA, else `tls_ca` in the client config file].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `TESSERA_TOKEN`: the token itself (its `Debug` is redacted).
    Given(Token),
    /// A file holding it, read when connecting.
    File(PathBuf),
}

/// The client commands' settings, loaded by [`ClientConfig::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// Coordinator URLs (`http://` added to a bare `host:port`), tried in order; empty: the
    /// embedded cluster.
    pub coordinators: Vec<String>,
    /// The token, if any.
    pub token: Option<TokenSource>,
    /// CA certificate for `https://` coordinators.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate, for coordinators that require one.
    pub tls_client_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_client_key: Option<PathBuf>,
}

/// `coordinator = "URL"` or `coordinator = ["URL", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Coordinators {
    /// One URL.
    One(String),
    /// URLs tried in order.
    Many(Vec<String>),
}

/// The client config file; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Coordinator URL or URLs.
    pub coordinator: Option<Coordinators>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// CA certificate for `https://`.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate.
    pub tls_client_cert: Option<PathBuf>,
    /// Client key.
    pub tls_client_key: Option<PathBuf>,
}

impl ClientFile {
    /// The same file with relative paths made relative to `dir`, the file's directory.
    pub fn relative_to(mut self, dir: &Path) -> Self {
        for path in [
            &mut self.token_file,
            &mut self.tls_ca,
            &mut self.tls_client_cert,
            &mut self.tls_client_key,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
        self
    }
}

/// The client config file for `env`: `TESSERA_CLIENT_CONFIG` (it must exist: `true`), else
/// `$XDG_CONFIG_HOME/tessera/config.toml`, else `$HOME/.config/tessera/config.toml` (it may be
/// missing: `false`); `None` without a home.
pub fn config_file(env: &BTreeMap<String, String>) -> Option<(PathBuf, bool)> {
    let var = |k: &str| env.get(k).filter(|v| !v.is_empty());
    if let Some(named) = var("TESSERA_CLIENT_CONFIG") {
        return Some((PathBuf::from(named), true));
    }
    let base = match var("XDG_CONFIG_HOME").filter(|v| Path::new(v).is_absolute()) {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(var("HOME")?).join(".config"),
    };
    Some((base.join("tessera").join("config.toml"), false))
}

impl ClientConfig {
    /// Loads the settings from the process environment and `flags`.
    pub fn from_process(flags: &ClientFlags) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::load(&env, flags)
    }

    /// Loads the settings: defaults, the file [`config_file`] names (its relative paths taken
    /// from its directory), `env`, `flags`. The layering of `tessera_config::load`, written out
    /// because the file's directory matters here.
    pub fn load(env: &BTreeMap<String, String>, flags: &ClientFlags) -> Result<Self, ConfigError> {
        let mut settings = Self::default();
        if let Some((path, named)) = config_file(env) {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let file: ClientFile = tessera_config::parse_file(&path, &text)?;
                    let dir = path.parent().unwrap_or(Path::new("."));
                    settings.merge_file(file.relative_to(dir))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {}
                Err(source) => return Err(ConfigError::Read { path, source }),
            }
        }
        for (var, value) in env {
            match Self::ENV.classify(var) {
                EnvUse::Read => settings
                    .merge_env(var, value)
                    .map_err(|bad| bad.for_env(var))?,
                EnvUse::Unknown => {
                    return Err(ConfigError::UnknownEnv(UnknownEnvVar::new(
                        var.as_str(),
                        Self::ENV.reads,
                    )));
                }
                EnvUse::Ignore => {}
            }
        }
        settings.merge_flags(flags)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Whether a coordinator is configured (else the embedded cluster is used).
    pub fn has_coordinator(&self) -> bool {
        !self.coordinators.is_empty()
    }

    /// TLS files and token for the configured coordinators; reads the token file.
    pub fn auth(&self) -> Result<ClientAuth, CliError> {
        let token = match &self.token {
            None => None,
            Some(TokenSource::Given(token)) => Some(token.clone()),
            Some(TokenSource::File(path)) => Some(Token::read_file(path).map_err(|e| {
                CliError::usage(format!(
                    "{e} (the token file comes from --token-file, TESSERA_TOKEN_FILE or \
                     `token_file` in the client config file)"
                ))
            })?),
        };
        Ok(ClientAuth {
            tls_ca: self.tls_ca.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
            token,
        })
    }
}

fn urls(list: &str) -> Vec<String> {
    tessera_config::parse_list(list)
        .iter()
        .map(|u| connect::normalize(u))
        .collect()
}

fn path_value(value: &str) -> Result<PathBuf, BadValue> {
    if value.is_empty() {
        return Err(BadValue::new(value, "empty path"));
    }
    Ok(PathBuf::from(value))
}

impl Settings for ClientConfig {
    type File = ClientFile;
    type Flags = ClientFlags;
    const ENV: EnvScope = EnvScope {
        reads: ENV_KEYS,
        prefix: "TESSERA_TLS_",
        // The coordinator's.
        others: &[
            "TESSERA_TLS_CERT",
            "TESSERA_TLS_KEY",
            "TESSERA_TLS_CLIENT_CA",
        ],
    };

    fn merge_file(&mut self, file: ClientFile) -> Result<(), ConfigError> {
        match file.coordinator {
            Some(Coordinators::One(url)) => self.coordinators = urls(&url),
            Some(Coordinators::Many(list)) => {
                self.coordinators = list
                    .iter()
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| connect::normalize(u))
                    .collect();
            }
            None => {}
        }
        if let Some(v) = file.token_file {
            self.token = Some(TokenSource::File(v));
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
        Ok(())
    }

    fn merge_env(&mut self, var: &str, value: &str) -> Result<(), BadValue> {
        match var {
            // An empty value is as good as unset (`TESSERA_COORDINATOR= tessera run` uses the
            // embedded cluster).
            _ if value.is_empty() => {}
            "TESSERA_COORDINATOR" => self.coordinators = urls(value),
            "TESSERA_TOKEN" => {
                let token = Token::new(value.to_owned()).map_err(|e| {
                    // Never the value itself in the message.
                    BadValue::new("<the token>", e)
                })?;
                self.token = Some(TokenSource::Given(token));
            }
            // Variables are merged in name order: TESSERA_TOKEN came first.
            "TESSERA_TOKEN_FILE" => {
                if matches!(self.token, Some(TokenSource::Given(_))) {
                    return Err(BadValue::new(
                        value,
                        "TESSERA_TOKEN is set too; unset one of them",
                    ));
                }
                self.token = Some(TokenSource::File(path_value(value)?));
            }
            "TESSERA_TLS_CA" => self.tls_ca = Some(path_value(value)?),
            "TESSERA_TLS_CLIENT_CERT" => self.tls_client_cert = Some(path_value(value)?),
            "TESSERA_TLS_CLIENT_KEY" => self.tls_client_key = Some(path_value(value)?),
            // TESSERA_CLIENT_CONFIG was read before loading.
            _ => {}
        }
        Ok(())
    }

    fn merge_flags(&mut self, flags: &ClientFlags) -> Result<(), ConfigError> {
        if let Some(list) = &flags.coordinator {
            let list = urls(list);
            if list.is_empty() {
                return Err(BadValue::new("", "no URL given").for_key("--coordinator"));
            }
            self.coordinators = list;
        }
        if let Some(path) = &flags.token_file {
            self.token = Some(TokenSource::File(path.clone()));
        }
        if let Some(path) = &flags.tls_ca {
            self.tls_ca = Some(path.clone());
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for url in &self.coordinators {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(BadValue::new(
                    url.as_str(),
                    "a coordinator URL starts with http:// or https://",
                )
                .for_key("coordinator"));
            }
        }
        match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(_), None) => Err(BadValue::new(
                "",
                "tls_client_cert is set without tls_client_key; set both or neither",
            )
            .for_key("tls_client_key")),
            (None, Some(_)) => Err(BadValue::new(
                "",
                "tls_client_key is set without tls_client_cert; set both or neither",
            )
            .for_key("tls_client_cert")),
            _ => Ok(()),
        }
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

    /// A config directory holding `tessera/config.toml` with `text`, and the environment that
    /// finds it as the default file.
    fn home_with(text: &str) -> (tempfile::TempDir, BTreeMap<String, String>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tessera").join("config.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        let env = env(&[("XDG_CONFIG_HOME", dir.path().to_str().unwrap())]);
        (dir, env)
    }

    #[test]
    fn nothing_configured_means_the_embedded_cluster() {
        let home = tempfile::tempdir().unwrap();
        let config = ClientConfig::load(
            &env(&[("HOME", home.path().to_str().unwrap())]),
            &ClientFlags::default(),
        )
        .unwrap();
        assert_eq!(config, ClientConfig::default());
        assert!(!config.has_coordinator());
    }

    #[test]
    fn the_file_then_the_environment_then_the_flags() {
        let (dir, mut env) = home_with(
            "coordinator = \"https://ci.example:9090\"\ntoken_file = \"token\"\n\
             tls_ca = \"/etc/ca.pem\"\n",
        );
        let config = ClientConfig::load(&env, &ClientFlags::default()).unwrap();
        assert_eq!(config.coordinators, ["https://ci.example:9090"]);
        assert_eq!(
            config.token,
            Some(TokenSource::File(dir.path().join("tessera").join("token")))
        );
        assert_eq!(config.tls_ca, Some(PathBuf::from("/etc/ca.pem")));

        env.insert("TESSERA_COORDINATOR".into(), "10.0.0.1:9090".into());
        env.insert("TESSERA_TLS_CA".into(), "env-ca.pem".into());
        env.insert("TESSERA_TOKEN".into(), "tsr_fromenv".into());
        let config = ClientConfig::load(&env, &ClientFlags::default()).unwrap();
        assert_eq!(config.coordinators, ["http://10.0.0.1:9090"]);
        assert_eq!(config.tls_ca, Some(PathBuf::from("env-ca.pem")));
        let Some(TokenSource::Given(token)) = &config.token else {
            panic!("{config:?}");
        };
        assert_eq!(token.secret(), "tsr_fromenv");
        assert!(!format!("{config:?}").contains("tsr_fromenv"));

        let flags = ClientFlags {
            coordinator: Some("https://a:1,https://b:2".into()),
            token_file: Some("flag-token".into()),
            tls_ca: Some("flag-ca.pem".into()),
        };
        let config = ClientConfig::load(&env, &flags).unwrap();
        assert_eq!(config.coordinators, ["https://a:1", "https://b:2"]);
        assert_eq!(config.token, Some(TokenSource::File("flag-token".into())));
        assert_eq!(config.tls_ca, Some(PathBuf::from("flag-ca.pem")));
    }

    #[test]
    fn coordinator_may_be_a_list_and_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("laptop.toml");
        std::fs::write(
            &file,
            "coordinator = [\"https://one:9090\", \"two:9090\"]\n\
             tls_client_cert = \"certs/me.pem\"\ntls_client_key = \"/abs/me.key\"\n",
        )
        .unwrap();
        let env = env(&[("TESSERA_CLIENT_CONFIG", file.to_str().unwrap())]);
        let config = ClientConfig::load(&env, &ClientFlags::default()).unwrap();
        assert_eq!(config.coordinators, ["https://one:9090", "http://two:9090"]);
        assert_eq!(
            config.tls_client_cert,
            Some(dir.path().join("certs/me.pem"))
        );
        assert_eq!(config.tls_client_key, Some(PathBuf::from("/abs/me.key")));
    }

    #[test]
    fn a_named_file_must_exist_and_keys_are_strict() {
        let env_missing = env(&[("TESSERA_CLIENT_CONFIG", "/nonexistent/tessera.toml")]);
        let err = ClientConfig::load(&env_missing, &ClientFlags::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/tessera.toml"),
            "{err}"
        );

        let (_dir, env) = home_with("coordinater = \"http://x:1\"\n");
        let err = ClientConfig::load(&env, &ClientFlags::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("config.toml") && text.contains("coordinater"),
            "{text}"
        );
    }

    #[test]
    fn mistakes_in_the_environment_are_refused_without_showing_the_token() {
        let flags = ClientFlags::default();
        let err = ClientConfig::load(&env(&[("TESSERA_TLS_CAFILE", "x")]), &flags).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv(ref v) if v == "TESSERA_TLS_CAFILE"));
        // The servers' variables are theirs.
        let config = ClientConfig::load(
            &env(&[("TESSERA_TLS_CERT", "c"), ("TESSERA_LISTEN", "0.0.0.0:1")]),
            &flags,
        )
        .unwrap();
        assert_eq!(config, ClientConfig::default());

        let err = ClientConfig::load(&env(&[("TESSERA_TOKEN", "bad token\u{7}")]), &flags)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid value for TESSERA_TOKEN"), "{err}");
        assert!(!err.contains("bad token"), "{err}");

        let both = env(&[("TESSERA_TOKEN", "tsr_x"), ("TESSERA_TOKEN_FILE", "/t")]);
        let err = ClientConfig::load(&both, &flags).unwrap_err().to_string();
        assert!(err.contains("unset one of them"), "{err}");

        let half = env(&[("TESSERA_TLS_CLIENT_CERT", "/c.pem")]);
        let err = ClientConfig::load(&half, &flags).unwrap_err().to_string();
        assert!(err.contains("set both or neither"), "{err}");

        let err = ClientConfig::load(&env(&[("TESSERA_COORDINATOR", "grpc://x:1")]), &flags)
            .unwrap_err()
            .to_string();
        assert!(err.contains("http:// or https://"), "{err}");
    }

    #[test]
    fn an_empty_coordinator_variable_is_unset() {
        let config = ClientConfig::load(
            &env(&[("TESSERA_COORDINATOR", ""), ("HOME", "/nonexistent")]),
            &ClientFlags::default(),
        )
        .unwrap();
        assert!(!config.has_coordinator());
    }
}
