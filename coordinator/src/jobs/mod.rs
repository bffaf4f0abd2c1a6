//! Test-suite jobs (`tessera run`, DESIGN.md §5): the registry of accepted jobs, the driver
//! that runs a job's steps as actions, the journal that keeps what clients saw across a crash,
//! the lifecycle of each test in a job, a job's matrix cells, the per-test result cache and
//! history, the quarantine of flaky tests, and the planner that splits the tests a job still has to run into batches for the
//! agents' slots. The gRPC service is `services::jobs`.

mod batches;
pub mod cells;
pub mod driver;
pub mod job;
pub mod journal;
pub mod labels;
mod output;
pub mod overlay;
pub mod planner;
pub mod quarantine;
pub mod registry;
pub mod results;
pub mod secrets;
mod steps;
mod tally;
mod test_state;
mod toolchain;
mod validate;
