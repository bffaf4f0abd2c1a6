//! The web dashboard on the coordinator's HTTP port (`--http-listen`): jobs, a job with its
//! tests and timeline, a test's history, flaky tests, the fleet and Bazel builds, as
//! server-rendered HTML kept live through server-sent events, and the same data as JSON
//! (`Accept: application/json`).
//!
//! `routes.rs` owns the paths and status codes, `access.rs` who may look and write,
//! `views.rs` what each page shows, `html.rs` how it looks. The data comes from the job
//! registry and its history (`crate::history`), the quarantine and the scheduler.

mod access;
mod html;
mod routes;
mod views;

pub use routes::{Dashboard, router};
