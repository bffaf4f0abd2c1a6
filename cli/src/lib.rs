//! The `tessera` command: everything behind the thin `main.rs`, so tests reach it in-process.
//!
//! | module | owns |
//! | --- | --- |
//! | [`command`] | the command line: parser, subcommands, `--help` texts, which function runs each |
//! | [`commands`] | one module per subcommand: `run`/`watch`, `status`/`cancel`, `logs`, `token`, `audit`, `up`, `coordinator`, `agent` |
//! | [`exit`] | the documented exit codes, `CliError`, printing it once |
//! | [`spec`] | the runner inferred from the command line, environment, platform: the `JobSpec` |
//! | [`upload`] | snapshot of the working tree and upload of what the CAS lacks |
//! | [`report`] | views of a job's events: progress bar or plain lines, JSON lines, JUnit XML |
//! | [`paths`] | cache directory, endpoint file, exec roots |
//! | [`project`] | the project a job belongs to (its history is shared by it): origin, root commit or directory |
//! | [`client_config`] | the client commands' settings: client config file, `TESSERA_*` variables, `--coordinator`, `--token-file`, `--tls-ca` |
//! | [`connect`] | which coordinator: the configured ones (TLS, token), or the embedded cluster's endpoint file |
//! | [`cluster`] | the embedded cluster (coordinator and agents in-process) and its lock |
//! | [`watch`] | following a job: re-attaching lost streams, Ctrl-C as Cancel |
//! | [`logging`] | log set-up: servers at info, clients warnings only |
//! | [`signals`] | the servers' shutdown signal |
//!
//! Settings of `coordinator` and `agent` are loaded by their crates through `tessera-config`;
//! duration flags parse with `tessera_config::parse_duration`.

pub mod ci_env;
pub mod client_config;
pub mod cluster;
pub mod command;
pub mod commands;
pub mod connect;
pub mod exit;
pub mod logging;
pub mod paths;
pub mod project;
pub mod report;
pub mod signals;
pub mod spec;
pub mod upload;
pub mod watch;
