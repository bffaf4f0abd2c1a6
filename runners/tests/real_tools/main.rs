//! Each runner adapter against the real tool, on the example projects under `examples/`: the
//! adapter's own prepare, list and run commands are executed as the agent will execute them, and
//! the outcomes it parses must be exactly those the tool reports when run directly.
//!
//! cargo and nextest must be installed; pytest (8.2 or later) and go are installed by
//! `.ci/install-deps.sh`. A missing pytest or go skips its tests with a message, except under
//! `CI=true`, where it fails them.

mod harness;

mod cargo;
mod command;
mod gotest;
mod nextest;
mod pytest;
