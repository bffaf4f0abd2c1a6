//! One module per `tessera` subcommand: its clap flags and the function that runs it, returning
//! `Result<Exit, CliError>` (see [`crate::exit`]).
//!
//! | module | commands |
//! | --- | --- |
//! | [`run`] | `tessera run`, `tessera watch` |
//! | [`status`] | `tessera status`, `tessera cancel` |
//! | [`logs`] | `tessera logs`: a test's whole output |
//! | [`token`] | `tessera token create`, `list`, `revoke` |
//! | [`audit`] | `tessera audit`: the coordinator's audit log |
//! | [`quarantine`] | `tessera quarantine add`, `remove`, `list` |
//! | [`backup`] | `tessera backup`, `tessera restore` |
//! | [`tunnel`] | `tessera tunnel`: a loopback port forwarded over TLS to the coordinator |
//! | [`webhook`] | `tessera webhook add`, `list`, `remove` |
//! | [`up`] | `tessera up`: the embedded cluster in the foreground |
//! | [`coordinator`] | `tessera coordinator` |
//! | [`agent`] | `tessera agent` |

pub mod agent;
pub mod audit;
pub mod backup;
pub mod coordinator;
pub mod logs;
pub mod quarantine;
pub mod run;
pub mod status;
pub mod token;
pub mod tunnel;
pub mod up;
pub mod webhook;
