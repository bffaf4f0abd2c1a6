//! Test-suite jobs (`tessera run`, DESIGN.md §5): how the tests a job still has to run are
//! split into batches for the agents' slots.

pub mod planner;
