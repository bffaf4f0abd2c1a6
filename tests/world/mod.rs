//! The world's suites: real test suites nobody here wrote, downloaded from the registries
//! (PyPI sdists, crates.io crates, Debian's Go sources), each run directly and through
//! `tessera run`, compared test by test (`it/world_suites.rs` tells the story).
//!
//! - `catalogue.rs`: which suites, pinned, what each is chosen for, how its copy is adjusted;
//! - `fetch.sh` (called by `source.rs`): downloads into a cache kept between runs;
//! - `source.rs`: the cache, the fetch, fresh copies of a suite's tree;
//! - `direct.rs`: runs a suite's command directly and reads what the tool reports (pytest's
//!   JUnit, libtest's text, `go test -json`), independently of `tessera-runners`;
//! - `junit.rs`: a small JUnit reader for both sides;
//! - `tessera_run.rs`: runs `tessera run --junit --json` and reads its three views;
//! - `compare.rs`: outcomes, the test-by-test comparison and the table.

pub mod catalogue;
pub mod compare;
pub mod direct;
pub mod junit;
pub mod source;
pub mod tessera_run;
