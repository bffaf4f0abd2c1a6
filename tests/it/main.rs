//! One integration-test binary for the workspace; each module is a story about one area.

mod agent_cache_crash;
mod architecture;
mod bad_input;
mod bazel;
mod by_file;
mod cas_api;
mod cas_crash;
mod disk_full;
mod execution;
mod faults;
mod harness;
mod job_faults;
mod jobs;
mod lifecycle;
mod matrix;
mod metrics;
mod network;
mod run_refusals;
mod runners_e2e;
mod secret_masking;
mod secrets;
mod security;
mod store_full;
mod test_output;
mod toolchains;
mod world_suites;
