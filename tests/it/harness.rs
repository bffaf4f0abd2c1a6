//! The harness itself: the log lines tests wait for still exist in the code that prints them,
//! so a reworded message fails here, by name, instead of as a timeout in some other test.

use std::path::Path;

use tessera_tests::lines;

/// Whether any `.rs` file under `dir` contains `text`.
fn source_contains(dir: &Path, text: &str) -> bool {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                source_contains(&path, text)
            } else {
                path.extension().is_some_and(|x| x == "rs")
                    && std::fs::read_to_string(&path).is_ok_and(|s| s.contains(text))
            }
        })
}

#[test]
fn the_log_lines_the_harness_waits_for_are_still_logged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (line, crate_dir) in [
        (lines::COORDINATOR_LISTENING, "coordinator/src"),
        (lines::AGENT_CONNECTED, "agent/src"),
        (lines::LEASE_ACCEPTED, "agent/src"),
        (lines::RESULT_REFUSED, "coordinator/src"),
        (lines::OUT_OF_SPACE, "cas/src"),
        (lines::SPACE_RETURNED, "cas/src"),
    ] {
        assert!(
            source_contains(&root.join(crate_dir), line),
            "{crate_dir} no longer logs {line:?}: update tessera_tests::lines"
        );
    }
}
