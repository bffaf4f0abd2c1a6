//! Showing a job's events: the tally every view shares, the human view (progress bar on a
//! terminal, plain lines otherwise), JSON lines, and the JUnit XML report; and the plain tables
//! of the listing commands.

pub mod human;
pub mod json;
pub mod junit;
pub mod table;
pub mod tally;

pub use tally::{EventSink, Tally};
