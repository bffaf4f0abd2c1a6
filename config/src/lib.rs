//! Configuration loading for the Tessera commands, written once.
//!
//! Every command (`tessera coordinator`, `tessera agent`, the client commands' flags) reads its
//! settings the same way, lowest precedence first: built-in defaults, a TOML file (strict:
//! unknown keys are errors), `TESSERA_*` environment variables (unknown ones under the
//! command's own prefix are errors, the others belong to other commands and are left alone),
//! command-line flags. Durations are written like "30s". Every mistake is one [`ConfigError`].
//!
//! | module | owns |
//! | --- | --- |
//! | `layers` | the order of the layers: the [`Settings`] trait and [`load`] |
//! | `env` | which variables a command reads, refuses or ignores: [`EnvScope`] |
//! | `value` | value parsers shared by the file, the environment and clap |
//! | `error` | [`ConfigError`], [`BadValue`], [`UnknownEnvVar`] |
//!
//! What it does not own: the settings themselves. The coordinator and the agent keep their own
//! setting structs, keys, variable names and checks (`coordinator/src/config.rs`,
//! `agent/src/config.rs`); the CLI keeps its flags. This crate depends on no other crate of
//! ours, and on nothing async.

mod env;
mod error;
mod layers;
mod value;

pub use env::{EnvScope, EnvUse};
pub use error::{BadValue, ConfigError, UnknownEnvVar};
pub use layers::{Settings, load, parse_file, read_file};
pub use value::{DURATION_HINT, file_duration, parse, parse_bool, parse_duration, parse_list};
