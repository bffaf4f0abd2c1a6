//! One integration-test binary for the workspace; each module is a story about one area.

mod lifecycle;
