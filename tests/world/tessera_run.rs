//! A suite run through `tessera run --junit FILE --json -- COMMAND`, and its three views of
//! the answer: the final `test` events on stdout, the JUnit file, the `finished` summary.
//! Each must list every test exactly once, and they must agree with each other; what they
//! say is then compared with the direct run (`compare.rs`).
//!
//! Names: a `--json` test event's `group` and `name`; a JUnit case's suite (`tessera` for
//! tests without a group) and name.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::compare::{Outcome, Outcomes, TestKey};
use super::junit;

/// The JUnit suite of tests without a group (`cli/src/report/junit.rs`).
const UNGROUPED_SUITE: &str = "tessera";

/// A `tessera run` child with its stdout read line by line as it comes.
pub struct TesseraRun {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// Every JSON line so far, parsed.
    pub events: Vec<Value>,
    /// Where `--junit` writes.
    pub junit: PathBuf,
}

impl TesseraRun {
    /// Starts `tessera run --coordinator URL --junit JUNIT --json -- COMMAND` in `dir` with
    /// exactly `env` (and `extra` flags before `--`).
    pub fn start(
        url: &str,
        dir: &Path,
        env: &BTreeMap<String, String>,
        command: &[&str],
        junit: PathBuf,
        extra: &[&str],
    ) -> Self {
        let mut child = Command::new(crate::tessera_bin())
            .arg("run")
            .args(["--coordinator", url, "--json", "--junit"])
            .arg(&junit)
            .args(extra)
            .arg("--")
            .args(command)
            .current_dir(dir)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tessera run");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        TesseraRun {
            child,
            lines,
            stderr: Some(stderr),
            events: Vec::new(),
            junit,
        }
    }

    /// Waits up to `limit` for the next JSON event and returns it (`None`: stdout closed or
    /// the time is up).
    pub fn next_event(&mut self, limit: Duration) -> Option<&Value> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "event": "not-json", "text": line }));
                self.events.push(value);
                self.events.last()
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits until `seen` holds for an event, at most `limit`; returns whether it did.
    pub fn wait_for_event(
        &mut self,
        limit: Duration,
        mut seen: impl FnMut(&Value) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(event) if seen(event) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    }

    /// Reads every event to the end and waits for the exit (killing the client after
    /// `limit`), then reads the views.
    pub fn finish(mut self, limit: Duration) -> Answer {
        let deadline = Instant::now() + limit;
        while self
            .next_event(deadline.saturating_duration_since(Instant::now()))
            .is_some()
        {}
        let left = deadline.saturating_duration_since(Instant::now());
        let exit = match crate::wait_exit(&mut self.child, left.max(Duration::from_secs(5))) {
            Some(status) => status.code(),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Answer::read(exit, stderr, std::mem::take(&mut self.events), &self.junit)
    }
}

impl Drop for TesseraRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `tessera run` answered, in its three views.
#[derive(Debug)]
pub struct Answer {
    /// Its exit code (`None`: killed after its time).
    pub exit: Option<i32>,
    /// What it printed on stderr (a refusal, an error).
    pub stderr: String,
    /// Every final `test` event, in order, duplicates kept.
    pub json_tests: Vec<(TestKey, Outcome)>,
    /// Every JUnit case, duplicates kept (`Err`: no readable report).
    pub junit_tests: Result<Vec<(TestKey, Outcome)>, String>,
    /// The `finished` event, if one came.
    pub finished: Option<Value>,
    /// Every line `--json` printed, parsed.
    pub events: Vec<Value>,
}

/// A `--json` outcome word, normalised (`compare.rs`).
fn json_outcome(word: &str) -> Outcome {
    match word {
        "passed" => Outcome::Pass,
        "failed" => Outcome::Fail,
        "error" => Outcome::Error,
        "skipped" => Outcome::Skip,
        other => Outcome::Other(other.to_owned()),
    }
}

/// A JUnit case's outcome, as `cli/src/report/junit.rs` writes them.
fn junit_outcome(case: &junit::Case) -> Outcome {
    let Some(mark) = case.marks.iter().find(|m| {
        matches!(
            m.tag.as_str(),
            "failure" | "error" | "skipped" | "flakyFailure"
        )
    }) else {
        return Outcome::Pass;
    };
    match (mark.tag.as_str(), mark.kind.as_str()) {
        ("failure", "timeout") => Outcome::Other("timed_out".into()),
        ("failure", _) => Outcome::Fail,
        ("error", "no_result") => Outcome::Other("no_result".into()),
        ("error", _) => Outcome::Error,
        ("skipped", _) if mark.message.starts_with("not run") => Outcome::Other("cancelled".into()),
        ("skipped", _) => Outcome::Skip,
        _ => Outcome::Other("flaky".into()),
    }
}

impl Answer {
    fn read(exit: Option<i32>, stderr: String, events: Vec<Value>, junit_path: &Path) -> Self {
        let json_tests = events
            .iter()
            .filter(|e| e["event"] == "test" && e["final"] == true)
            .map(|e| {
                (
                    TestKey::new(
                        e["group"].as_str().unwrap_or_default(),
                        e["name"].as_str().unwrap_or_default(),
                    ),
                    json_outcome(e["outcome"].as_str().unwrap_or_default()),
                )
            })
            .collect();
        let junit_tests = std::fs::read_to_string(junit_path)
            .map_err(|e| format!("no JUnit report {}: {e}", junit_path.display()))
            .and_then(|xml| junit::cases(&xml))
            .map(|cases| {
                cases
                    .iter()
                    .map(|c| {
                        let group = if c.suite == UNGROUPED_SUITE {
                            ""
                        } else {
                            &c.suite
                        };
                        (TestKey::new(group, c.name.clone()), junit_outcome(c))
                    })
                    .collect()
            });
        let finished = events
            .iter()
            .rev()
            .find(|e| e["event"] == "finished")
            .cloned();
        Answer {
            exit,
            stderr,
            json_tests,
            junit_tests,
            finished,
            events,
        }
    }

    /// The tests and outcomes, as the `--json` events give them (the last final event of a
    /// test counts, as in the JUnit report).
    pub fn outcomes(&self) -> Outcomes {
        self.json_tests.iter().cloned().collect()
    }

    /// Why the run gave no per-test answer at all, if so: refused, no summary, an empty
    /// job whose summary says why.
    pub fn problem(&self) -> Option<String> {
        // One line of at most 300 characters: it goes into a table cell.
        let first_line = |s: &str| {
            s.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect::<String>()
        };
        match (&self.finished, self.exit) {
            (None, Some(2)) => Some(format!("refused: {}", first_line(&self.stderr))),
            (None, code) => Some(format!(
                "no summary (exit {code:?}): {}",
                first_line(&self.stderr)
            )),
            (Some(f), _) if self.json_tests.is_empty() => Some(format!(
                "{}: {} {}",
                f["result"].as_str().unwrap_or_default(),
                f["message"].as_str().unwrap_or_default(),
                first_line(f["log"].as_str().unwrap_or_default())
            )),
            _ => None,
        }
    }

    /// Where the three views break "every test exactly once, the same everywhere".
    pub fn views_disagree(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let once = |view: &str, tests: &[(TestKey, Outcome)], problems: &mut Vec<String>| {
            let mut seen: BTreeMap<&TestKey, usize> = BTreeMap::new();
            for (key, _) in tests {
                *seen.entry(key).or_default() += 1;
            }
            for (key, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
                problems.push(format!("{view} lists {key} {n} times"));
            }
        };
        once("--json", &self.json_tests, &mut problems);
        let json = self.outcomes();
        match &self.junit_tests {
            Ok(junit) => {
                once("JUnit", junit, &mut problems);
                let junit: Outcomes = junit.iter().cloned().collect();
                let keys: BTreeSet<&TestKey> = json.keys().chain(junit.keys()).collect();
                for key in keys {
                    let (j, x) = (json.get(key), junit.get(key));
                    if j != x {
                        problems.push(format!("{key}: --json says {j:?}, JUnit says {x:?}"));
                    }
                }
            }
            Err(e) if self.finished.is_some() => problems.push(e.clone()),
            Err(_) => {}
        }
        if let Some(f) = &self.finished {
            let count = |o: &[&str]| {
                json.values()
                    .filter(|v| {
                        let word = match v {
                            Outcome::Pass => "passed",
                            Outcome::Fail => "failed",
                            Outcome::Error => "error",
                            Outcome::Skip => "skipped",
                            Outcome::Other(w) => w.as_str(),
                        };
                        o.contains(&word)
                    })
                    .count() as u64
            };
            let said = |field: &str| f[field].as_u64().unwrap_or(0);
            for (field, words) in [
                ("passed", &["passed"][..]),
                ("failed", &["failed", "no_result", "unknown"][..]),
                ("errors", &["error"][..]),
                ("skipped", &["skipped"][..]),
                ("flaky", &["flaky"][..]),
                ("timed_out", &["timed_out"][..]),
                ("not_run", &["cancelled"][..]),
            ] {
                if said(field) != count(words) {
                    problems.push(format!(
                        "the summary says {field}={}, the --json test events {}",
                        said(field),
                        count(words)
                    ));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_that_list_a_test_twice_or_disagree_are_caught() {
        let dir = tempfile::tempdir().expect("temp dir");
        let junit = dir.path().join("r.xml");
        std::fs::write(
            &junit,
            r#"<testsuites><testsuite name="tessera">
<testcase name="a" classname="tessera"/>
<testcase name="b" classname="tessera"><skipped/></testcase>
</testsuite></testsuites>"#,
        )
        .expect("write");
        let test = |name: &str, outcome: &str| serde_json::json!({"event": "test", "final": true, "group": "", "name": name, "outcome": outcome});
        let events = vec![
            test("a", "passed"),
            test("b", "passed"),
            test("b", "passed"),
            serde_json::json!({"event": "finished", "passed": 2, "skipped": 0}),
        ];
        let answer = Answer::read(Some(0), String::new(), events, &junit);
        assert_eq!(
            answer.views_disagree(),
            [
                "--json lists b 2 times",
                "b: --json says Some(Pass), JUnit says Some(Skip)",
            ]
        );
    }
}
