//! Test-suite jobs (`tessera run`, DESIGN.md §5): the `tessera.v1.Jobs` service, the driver
//! that runs a job's steps as actions, the per-test result cache and history, and the planner
//! that splits the tests a job still has to run into batches for the agents' slots.

pub mod driver;
pub mod job;
pub mod overlay;
pub mod planner;
pub mod results;
pub mod service;
