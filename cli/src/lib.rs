//! The `tessera` client: what `tessera run`, `watch`, `cancel`, `status` and `up` do, behind
//! the thin `main.rs`.
//!
//! | module | owns |
//! | --- | --- |
//! | [`spec`] | the runner inferred from the command line, environment, platform: the `JobSpec` |
//! | [`upload`] | snapshot of the working tree and upload of what the CAS lacks |
//! | [`report`] | views of a job's events: progress bar or plain lines, JSON lines, JUnit XML |
//! | [`exit`] | the documented exit codes |
//! | [`paths`] | cache directory, endpoint file, exec roots |
//! | [`connect`] | which coordinator: flag, environment, or the embedded cluster's endpoint file |
//! | [`cluster`] | the embedded cluster (coordinator and agents in-process) and its lock |
//! | [`watch`] | following a job: re-attaching lost streams, Ctrl-C as Cancel |
//! | [`run`] | `tessera run` and `tessera watch` end to end |
//! | [`status`] | `tessera status` and `tessera cancel` |

pub mod cluster;
pub mod connect;
pub mod exit;
pub mod paths;
pub mod report;
pub mod run;
pub mod spec;
pub mod status;
pub mod upload;
pub mod watch;
