//! What finished jobs leave behind for people to look at: each job's summary, its tests and
//! its batches, every test's runs across jobs and its flake window (`store.rs`, the
//! [`JobHistory`]), and the feed of changes that keeps open dashboard pages live (`live.rs`).
//!
//! Not here: what the scheduler needs from history (durations and cached passes,
//! `jobs/results.rs`), how pages render it (`dashboard/`).

mod live;
mod record;
mod store;

pub use live::{LiveChange, LiveFeed};
pub use record::{BatchSpan, FlakeWindow, JobRecord, RunRecord, rerun_command};
pub use store::{FlakyTest, JobFilter, JobHistory, JobPage, TestRow, test_key};
