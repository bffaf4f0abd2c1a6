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

pub mod exit;
pub mod paths;
pub mod report;
pub mod spec;
