//! `--json`: one JSON object a line on stdout, one per event, and nothing else there.
//!
//! Each test has one final `test` line (the first final result the coordinator reported; a
//! repeat is left out, with a `note` when it said something else), and the `finished` line
//! counts exactly the tests listed (`report/tally.rs`).
//!
//! Every line has `"event"`; job events also have `"seq"` and `"elapsed_ms"`. Field names:
//!
//! | event | fields |
//! | --- | --- |
//! | `submitted` | `job_id`, `labels` (an object; the client's first line; `tessera watch` omits it) |
//! | `phase` | `phase` (`queued`, `preparing`, `listing`, `running`, `done`), `detail`, `cell` |
//! | `queue` | `ahead` (operations of others ahead in the queue) |
//! | `planned` | `total`, `cached`, `to_run`, `expected_ms`, `cell` (a matrix run plans each cell on its own) |
//! | `test` | `test` (`"group name"`, or the name without a group), `group`, `name`, `outcome` (`passed`, `failed`, `error`, `skipped`, `timed_out`, `flaky`, `no_result`, `cancelled`), `attempt`, `final`, `cached`, `duration_ms`, `agent`, `output`, `failed_attempts`, `subtest` (go's `TestX/case`, reported beside its parent), `output_cut` (`tessera logs` has the whole output), `cell`, `quarantined` (the test is quarantined: its outcome is true, but a failure does not fail the job) |
//! | `progress` | `done`, `total`, `running_batches`, `agents`, `busy_slots`, `total_slots`, `eta_ms`, `cell` (`done`, `total` and `eta_ms` are that cell's) |
//! | `log` | `text` |
//! | `note` | `text` (from the client: re-attaching, cancelling, a test reported twice, counts that differ from the coordinator's) |
//! | `finished` | `job_id`, `result` (`passed`, `failed`, `error`, `infrastructure`, `cancelled`), `message`, `passed`, `failed`, `errors`, `skipped`, `flaky`, `timed_out`, `cached`, `not_run`, `wall_ms`, `serial_ms`, `batches` (handed to agents, every attempt), `tool_startups` (test-tool processes the agents started), `quarantined` (failures and errors of quarantined tests, also counted in `failed`, `errors`, `timed_out`), `log`, `exit_code`, `cells` (a matrix run: one object per cell with `cell`, `result`, `message` and its counts `passed` to `not_run`) |
//!
//! `cell` is the matrix cell the event is of, as `[NAME=v1]` (`[A=1,B=x]` for several names;
//! `tessera run --matrix`), and `""` in a plain run. A test's `test` does not name its cell: in
//! a matrix run a test is identified by `cell` and `test` together.

use std::io::Write;

use serde_json::{Value, json};
use tessera_proto::tessera::v1::{JobEvent, JobFinished, job_event::Kind};

use super::tally::{
    EventSink, Tally, cell_label, duration, exit_for, outcome_name, phase_name, result_name,
    test_name,
};

fn ms(d: Option<&prost_types::Duration>) -> u64 {
    u64::try_from(duration(d).as_millis()).unwrap_or(u64::MAX)
}

/// The JSON object for one job event, given the tally that passed it.
pub fn event_json(event: &JobEvent, tally: &Tally) -> Value {
    let mut value = match &event.kind {
        Some(Kind::Phase(p)) => json!({
            "event": "phase", "phase": phase_name(p.phase()), "detail": p.detail,
            "cell": cell_label(&p.cell),
        }),
        Some(Kind::Queue(q)) => json!({ "event": "queue", "ahead": q.ahead }),
        Some(Kind::Planned(p)) => json!({
            "event": "planned", "total": p.total, "cached": p.cached, "to_run": p.to_run,
            "expected_ms": ms(p.expected.as_ref()), "cell": cell_label(&p.cell),
        }),
        Some(Kind::Test(t)) => {
            let (group, name) = t
                .test
                .as_ref()
                .map(|r| (r.group.as_str(), r.name.as_str()))
                .unwrap_or_default();
            json!({
                "event": "test", "test": test_name(t), "group": group, "name": name,
                "outcome": outcome_name(t.outcome()), "attempt": t.attempt, "final": t.r#final,
                "cached": t.cached, "duration_ms": ms(t.duration.as_ref()), "agent": t.agent,
                "output": t.output, "failed_attempts": t.failed_attempts,
                "subtest": t.subtest, "output_cut": t.output_digest.is_some(),
                "cell": cell_label(&t.cell), "quarantined": t.quarantined,
            })
        }
        Some(Kind::Progress(p)) => json!({
            "event": "progress", "done": p.done, "total": p.total,
            "running_batches": p.running_batches, "agents": p.agents,
            "busy_slots": p.busy_slots, "total_slots": p.total_slots,
            "eta_ms": ms(p.eta.as_ref()), "cell": cell_label(&p.cell),
        }),
        Some(Kind::Log(l)) => json!({ "event": "log", "text": l.text }),
        Some(Kind::Finished(f)) => json!({
            "event": "finished", "job_id": tally.job_id, "result": result_name(f.result()),
            "message": f.message, "passed": f.passed, "failed": f.failed, "errors": f.errors,
            "skipped": f.skipped, "flaky": f.flaky, "timed_out": f.timed_out,
            "cached": f.cached, "not_run": f.not_run, "wall_ms": ms(f.wall.as_ref()),
            "serial_ms": ms(f.serial.as_ref()), "batches": f.batches,
            "tool_startups": f.tool_startups, "quarantined": f.quarantined, "log": f.log,
            "exit_code": exit_for(f) as u8, "cells": cells_json(f, tally),
        }),
        None => json!({ "event": "unknown" }),
    };
    if let Value::Object(map) = &mut value {
        map.insert("seq".to_owned(), json!(event.seq));
        map.insert("elapsed_ms".to_owned(), json!(event.elapsed_ms));
    }
    value
}

/// How each cell of a matrix run ended, with the counts of its tests shown.
fn cells_json(finished: &JobFinished, tally: &Tally) -> Vec<Value> {
    finished
        .cells
        .iter()
        .map(|cell| {
            let counts = tally.cell_counts(&cell.cell);
            json!({
                "cell": cell_label(&cell.cell), "result": result_name(cell.result()),
                "message": cell.message, "passed": counts.passed, "failed": counts.failed,
                "errors": counts.errors, "skipped": counts.skipped, "flaky": counts.flaky,
                "timed_out": counts.timed_out, "cached": counts.cached,
                "not_run": counts.not_run,
            })
        })
        .collect()
}

/// Writes JSON lines to `out`.
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    /// JSON lines on `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// The `submitted` line.
    pub fn submitted(&mut self, job_id: &str, labels: &std::collections::BTreeMap<String, String>) {
        self.line(&json!({ "event": "submitted", "job_id": job_id, "labels": labels }));
    }

    fn line(&mut self, value: &Value) {
        // A closed stdout (`| head`) must not stop the job's watch; the exit code still counts.
        let _ = writeln!(self.out, "{value}");
        let _ = self.out.flush();
    }

    /// The writer (for tests).
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> EventSink for JsonLines<W> {
    fn event(&mut self, event: &JobEvent, tally: &Tally) {
        let value = event_json(event, tally);
        self.line(&value);
    }

    fn note(&mut self, text: &str) {
        self.line(&json!({ "event": "note", "text": text }));
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::tessera::v1::{JobFinished, JobResult, TestFinished, TestOutcome, TestRef};

    use super::*;

    #[test]
    fn every_event_is_one_parseable_line_with_documented_fields() {
        let mut sink = JsonLines::new(Vec::new());
        let tally = Tally::new("job-1");
        sink.submitted("job-1", &[("name".to_owned(), "suite".to_owned())].into());
        sink.event(
            &JobEvent {
                seq: 1,
                elapsed_ms: 5,
                kind: Some(Kind::Test(TestFinished {
                    test: Some(TestRef {
                        group: "pkg".into(),
                        name: "t \"quoted\"\nnext".into(),
                    }),
                    outcome: TestOutcome::TimedOut as i32,
                    attempt: 2,
                    r#final: true,
                    duration: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 500_000_000,
                    }),
                    output: "boom".into(),
                    ..TestFinished::default()
                })),
            },
            &tally,
        );
        sink.event(
            &JobEvent {
                seq: 2,
                elapsed_ms: 9,
                kind: Some(Kind::Finished(JobFinished {
                    result: JobResult::Failed as i32,
                    passed: 3,
                    timed_out: 1,
                    batches: 2,
                    tool_startups: 1,
                    ..JobFinished::default()
                })),
            },
            &tally,
        );
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["event"], "submitted");
        assert_eq!(lines[0]["labels"]["name"], "suite");
        assert_eq!(lines[1]["event"], "test");
        assert_eq!(lines[1]["test"], "pkg t \"quoted\"\nnext");
        assert_eq!(lines[1]["outcome"], "timed_out");
        assert_eq!(lines[1]["duration_ms"], 1500);
        assert_eq!(lines[1]["final"], true);
        assert_eq!(lines[1]["seq"], 1);
        assert_eq!(lines[2]["event"], "finished");
        assert_eq!(lines[2]["job_id"], "job-1");
        assert_eq!(lines[2]["result"], "failed");
        assert_eq!(lines[2]["exit_code"], 1);
        assert_eq!(
            (
                lines[2]["batches"].as_u64(),
                lines[2]["tool_startups"].as_u64()
            ),
            (Some(2), Some(1))
        );
        // A plain run: no cell.
        assert_eq!(lines[1]["cell"], "");
        assert_eq!(lines[2]["cells"], serde_json::json!([]));
    }

    #[test]
    fn a_matrix_runs_events_name_their_cell() {
        use tessera_proto::tessera::v1::{CellFinished, PhaseChanged, TestsPlanned};
        let mut tally = Tally::new("job-1");
        let mut sink = JsonLines::new(Vec::new());
        let events = [
            Kind::Phase(PhaseChanged {
                phase: tessera_proto::tessera::v1::JobPhase::Preparing as i32,
                detail: String::new(),
                cell: "MODE=a,OPTS=x".into(),
            }),
            Kind::Planned(TestsPlanned {
                total: 1,
                cell: "MODE=a,OPTS=x".into(),
                ..TestsPlanned::default()
            }),
            Kind::Test(TestFinished {
                test: Some(TestRef {
                    group: String::new(),
                    name: "t".into(),
                }),
                outcome: TestOutcome::Failed as i32,
                r#final: true,
                cell: "MODE=a,OPTS=x".into(),
                ..TestFinished::default()
            }),
            Kind::Finished(JobFinished {
                result: JobResult::Error as i32,
                failed: 1,
                cells: vec![
                    CellFinished {
                        cell: "MODE=a,OPTS=x".into(),
                        result: JobResult::Failed as i32,
                        message: String::new(),
                    },
                    CellFinished {
                        cell: "MODE=b,OPTS=x".into(),
                        result: JobResult::Error as i32,
                        message: "the prepare step failed".into(),
                    },
                ],
                ..JobFinished::default()
            }),
        ];
        for (seq, kind) in (1..).zip(events) {
            let applied = tally.apply(JobEvent {
                seq,
                elapsed_ms: 0,
                kind: Some(kind),
            });
            sink.event(&applied.event.expect("shown"), &tally);
        }
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for line in &lines[..3] {
            assert_eq!(line["cell"], "[MODE=a,OPTS=x]", "{line}");
        }
        assert_eq!(lines[2]["test"], "t");
        let cells = &lines[3]["cells"];
        assert_eq!(cells[0]["cell"], "[MODE=a,OPTS=x]");
        assert_eq!(cells[0]["result"], "failed");
        assert_eq!(cells[0]["failed"], 1);
        assert_eq!(cells[1]["cell"], "[MODE=b,OPTS=x]");
        assert_eq!(cells[1]["result"], "error");
        assert_eq!(cells[1]["message"], "the prepare step failed");
        assert_eq!(cells[1]["failed"], 0);
        assert_eq!(lines[3]["exit_code"], 1);
    }
}
