//! The one error type of configuration loading ([`ConfigError`]), and the two small errors it
//! is built from: a refused value ([`BadValue`]) and an unknown variable ([`UnknownEnvVar`]).
//!
//! Every message names where the bad input came from (the file, the variable, the key or the
//! flag), so `tessera` can print it as it is and exit 2.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// Why a command's configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, ...).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, including the offending key and line.
        #[source]
        source: toml::de::Error,
    },
    /// A variable under the command's own prefix that no setting uses.
    #[error("unknown environment variable {0}")]
    UnknownEnv(UnknownEnvVar),
    /// An environment variable has a value that does not parse.
    #[error("invalid value for {var}: \"{value}\": {reason}")]
    EnvValue {
        /// The variable.
        var: String,
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A file key or a flag has a value that does not parse, or the settings as loaded make no
    /// sense (then `key` names the setting).
    #[error("invalid value for {key}: \"{value}\": {reason}")]
    Value {
        /// The key, flag or setting.
        key: String,
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

/// A value refused by a parser, before anyone has said where it came from.
///
/// It displays as the reason alone: whoever knows the source shows the value beside its name
/// (clap as `invalid value '5x' for '--timeout <DURATION>'`, the loader through
/// [`BadValue::for_env`] and [`BadValue::for_key`]). So it serves as a clap `value_parser`
/// error and as a `FromStr` error as it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct BadValue {
    value: String,
    reason: String,
}

impl BadValue {
    /// `value` was refused because of `reason` (a lowercase fragment).
    pub fn new(value: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            value: value.into(),
            reason: reason.to_string(),
        }
    }

    /// The value as given.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The value came from environment variable `var`.
    pub fn for_env(self, var: &str) -> ConfigError {
        ConfigError::EnvValue {
            var: var.to_owned(),
            value: self.value,
            reason: self.reason,
        }
    }

    /// The value came from file key, flag or setting `key`.
    pub fn for_key(self, key: &str) -> ConfigError {
        ConfigError::Value {
            key: key.to_owned(),
            value: self.value,
            reason: self.reason,
        }
    }
}

/// A `TESSERA_*` variable that a command does not read although it falls under its prefix
/// (most likely a typo), with the variables the command does read, for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEnvVar {
    name: String,
    known: &'static [&'static str],
}

impl UnknownEnvVar {
    /// `name` is unknown to a command that reads `known`.
    pub fn new(name: impl Into<String>, known: &'static [&'static str]) -> Self {
        Self {
            name: name.into(),
            known,
        }
    }

    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for UnknownEnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (known: {})", self.name, self.known.join(", "))
    }
}

/// Compares by name, so a test can say `UnknownEnv(ref v) if v == "TESSERA_LISTN"`.
impl PartialEq<str> for UnknownEnvVar {
    fn eq(&self, other: &str) -> bool {
        self.name == other
    }
}
