//! The agent's integration tests: one binary, a small harness (`harness`: a fake coordinator
//! serving the real CAS services, and agents run in-process), and stories by topic.

mod auth;
mod harness;
mod layers;
mod leases;
mod metrics;
mod outputs;
mod protocol;
mod runner;
mod session;
mod steps;
