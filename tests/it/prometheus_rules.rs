//! The Prometheus rules under `deploy/prometheus/` are valid (`promtool check rules`), pass
//! their unit tests (`promtool test rules`: every alert fires when it should and stays quiet
//! when it should not), and the example scrape config loads them (`promtool check config`).
//!
//! `promtool` comes with Debian's `prometheus` package (`.ci/install-deps.sh`); outside CI the
//! tests skip without it, under CI they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tessera_tests::in_ci;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// `promtool ARGS` run in the rules directory; `None` (skip) when promtool is missing outside
/// CI.
fn promtool(args: &[&str]) -> Option<Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
    {
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !in_ci(),
                "promtool is required under CI (Debian package prometheus; .ci/install-deps.sh)"
            );
            eprintln!("skipping: promtool is not installed (apt-get install prometheus)");
            None
        }
        Err(error) => panic!("failed to run promtool: {error}"),
    }
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_rules_are_valid() {
    let Some(output) = promtool(&["check", "rules", "tessera-rules.yml"]) else {
        return;
    };
    assert_success("promtool check rules", &output);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_fires_when_it_should_and_only_then() {
    let Some(output) = promtool(&["test", "rules", "tessera-rules.test.yml"]) else {
        return;
    };
    assert_success("promtool test rules", &output);
    // Every alert has a case that fires and one that does not.
    let rules = std::fs::read_to_string(rules_dir().join("tessera-rules.yml")).expect("rules");
    let tests =
        std::fs::read_to_string(rules_dir().join("tessera-rules.test.yml")).expect("rule tests");
    for alert in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        let cases: Vec<&str> = tests
            .split("- name: ")
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|case| case.contains("exp_labels")),
            "no test case where {alert} fires"
        );
        assert!(
            cases.iter().any(|case| case.contains("exp_alerts: []")),
            "no test case where {alert} stays quiet"
        );
    }
}

#[test]
fn the_example_scrape_config_is_valid() {
    let Some(output) = promtool(&["check", "config", "prometheus.yml"]) else {
        return;
    };
    assert_success("promtool check config", &output);
}
