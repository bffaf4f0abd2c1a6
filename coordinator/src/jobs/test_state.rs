//! One test's lifecycle in a job, with one owner: [`TestState`] and its one transition
//! function [`TestState::apply`], and [`TestTable`], the state of every test of the job keyed
//! by its [`TestId`].
//!
//! | state | event | next state |
//! | --- | --- | --- |
//! | queued | cached | done: passed (answered from the result cache) |
//! | queued | restored | done: the outcome an earlier run of the coordinator reported (`journal.rs`) |
//! | queued | started in a batch | running, attempt 1 |
//! | retrying after attempt n | started in a batch | running, attempt n + 1 |
//! | running | passed | done: passed, or flaky if an earlier attempt failed |
//! | running | skipped | done: skipped |
//! | running | failed, may retry | retrying (its output kept, and the agent to avoid) |
//! | running | failed, may not retry | done: failed, timed out or no result |
//! | queued, running or retrying | job stopped | done: cancelled (not run) |
//! | any other pair | | an [`IllegalTransition`]; the state does not change |
//!
//! Not here: which batch a test goes in (the planner), the events clients see and the tally
//! (the run phase, `batches.rs`), whether the job may retry (the caller decides, from the
//! job's retry limit and its cancellation, and says so in [`TestEvent::Failed`]).

use std::collections::BTreeMap;

use tessera_proto::tessera::v1::TestOutcome;
use tessera_runners::TestId;
use thiserror::Error;

use super::planner::BatchId;

/// How a run of a test failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The tool reported a failure.
    Failed,
    /// The tool reported an error outside the test's body (setup, import, build).
    Error,
    /// The test ran past its deadline.
    TimedOut,
    /// The tool said nothing about the test (a crash, a build failure, a lost batch).
    NoResult,
}

impl Failure {
    /// The outcome clients see.
    pub(super) fn outcome(self) -> TestOutcome {
        match self {
            Failure::Failed => TestOutcome::Failed,
            Failure::Error => TestOutcome::Error,
            Failure::TimedOut => TestOutcome::TimedOut,
            Failure::NoResult => TestOutcome::NoResult,
        }
    }
}

/// A test's final outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Final {
    /// How it ended.
    pub(super) outcome: TestOutcome,
    /// Runs started (0 for a test cancelled before it ran, 1 for a cached pass).
    pub(super) attempt: u32,
    /// Output of each failed run, oldest first (a flaky test's failed attempts).
    pub(super) failures: Vec<String>,
}

/// Where one test is in its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TestState {
    /// Listed, waiting for its first run.
    Queued,
    /// Handed out in `batch`, which has not reported it yet.
    Running {
        /// This run's number, from 1.
        attempt: u32,
        /// The batch running it.
        batch: BatchId,
        /// Output of each earlier, failed run.
        failures: Vec<String>,
    },
    /// Failed, waiting to run again.
    Retrying {
        /// Runs so far.
        attempt: u32,
        /// Output of each failed run, oldest first.
        failures: Vec<String>,
        /// The agent it last failed on, which its next run avoids where it can.
        failed_on: String,
    },
    /// Has its final outcome.
    Done(Final),
}

/// What happens to a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TestEvent {
    /// Its clean pass was found in the result cache.
    Cached,
    /// Its skip was found in the result cache.
    CachedSkip,
    /// An earlier run of the coordinator reported its final outcome, which clients may have
    /// seen: it stands.
    Restored {
        /// That outcome.
        outcome: TestOutcome,
        /// The runs it took.
        attempt: u32,
    },
    /// It was handed out in `batch`.
    Started {
        /// The batch.
        batch: BatchId,
    },
    /// Its run passed.
    Passed,
    /// Its run passed after the tool itself had run it again (nextest's retries): flaky.
    PassedAfterRetries {
        /// The tool's account of the failed tries.
        output: String,
    },
    /// Its run skipped it.
    Skipped,
    /// Its run failed.
    Failed {
        /// How.
        failure: Failure,
        /// What it printed (already cut to size).
        output: String,
        /// The agent it ran on.
        agent: String,
        /// Whether the job runs it again (retries left, and the job not cancelled).
        retry: bool,
    },
    /// The job stopped before the test had its final outcome.
    Stopped,
}

/// An event that does not apply to a test's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("no transition from {state} on {event}")]
pub(super) struct IllegalTransition {
    /// The state's name.
    pub(super) state: &'static str,
    /// The event's name.
    pub(super) event: &'static str,
}

impl TestState {
    /// Moves the test on by `event`; an event that does not apply leaves it as it was.
    pub(super) fn apply(&mut self, event: TestEvent) -> Result<(), IllegalTransition> {
        use TestEvent as E;
        use TestState as S;
        let done = |outcome, attempt, failures| {
            S::Done(Final {
                outcome,
                attempt,
                failures,
            })
        };
        let next = match (std::mem::replace(self, S::Queued), event) {
            (S::Queued, E::Cached) => done(TestOutcome::Passed, 1, Vec::new()),
            (S::Queued, E::CachedSkip) => done(TestOutcome::Skipped, 1, Vec::new()),
            (S::Queued, E::Restored { outcome, attempt }) => done(outcome, attempt, Vec::new()),
            (S::Queued, E::Started { batch }) => S::Running {
                attempt: 1,
                batch,
                failures: Vec::new(),
            },
            (
                S::Retrying {
                    attempt, failures, ..
                },
                E::Started { batch },
            ) => S::Running {
                attempt: attempt + 1,
                batch,
                failures,
            },
            (
                S::Running {
                    attempt, failures, ..
                },
                E::Passed,
            ) => {
                let outcome = if failures.is_empty() {
                    TestOutcome::Passed
                } else {
                    TestOutcome::Flaky
                };
                done(outcome, attempt, failures)
            }
            (
                S::Running {
                    attempt,
                    mut failures,
                    ..
                },
                E::PassedAfterRetries { output },
            ) => {
                failures.push(output);
                done(TestOutcome::Flaky, attempt, failures)
            }
            (
                S::Running {
                    attempt, failures, ..
                },
                E::Skipped,
            ) => done(TestOutcome::Skipped, attempt, failures),
            (
                S::Running {
                    attempt,
                    mut failures,
                    ..
                },
                E::Failed {
                    failure,
                    output,
                    agent,
                    retry,
                },
            ) => {
                failures.push(output);
                if retry {
                    S::Retrying {
                        attempt,
                        failures,
                        failed_on: agent,
                    }
                } else {
                    done(failure.outcome(), attempt, failures)
                }
            }
            (S::Queued, E::Stopped) => done(TestOutcome::Cancelled, 0, Vec::new()),
            (
                S::Running {
                    attempt, failures, ..
                }
                | S::Retrying {
                    attempt, failures, ..
                },
                E::Stopped,
            ) => done(TestOutcome::Cancelled, attempt, failures),
            (state, event) => {
                let illegal = IllegalTransition {
                    state: state.name(),
                    event: event.name(),
                };
                *self = state;
                return Err(illegal);
            }
        };
        *self = next;
        Ok(())
    }

    /// Runs started so far.
    pub(super) fn attempt(&self) -> u32 {
        match self {
            TestState::Queued => 0,
            TestState::Running { attempt, .. } | TestState::Retrying { attempt, .. } => *attempt,
            TestState::Done(done) => done.attempt,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            TestState::Queued => "queued",
            TestState::Running { .. } => "running",
            TestState::Retrying { .. } => "retrying",
            TestState::Done(_) => "done",
        }
    }
}

impl TestEvent {
    fn name(&self) -> &'static str {
        match self {
            TestEvent::Cached => "cached",
            TestEvent::CachedSkip => "cached skip",
            TestEvent::Restored { .. } => "restored",
            TestEvent::Started { .. } => "started",
            TestEvent::Passed => "passed",
            TestEvent::PassedAfterRetries { .. } => "passed after retries",
            TestEvent::Skipped => "skipped",
            TestEvent::Failed { .. } => "failed",
            TestEvent::Stopped => "stopped",
        }
    }
}

/// Why [`TestTable::apply`] refused an event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(super) enum TableError {
    /// The test was not listed by this job.
    #[error("test {0} is not part of this job")]
    Unknown(TestId),
    /// The event does not apply to the test's state.
    #[error("test {test}: {source}")]
    Illegal {
        /// The test.
        test: TestId,
        /// What was refused.
        #[source]
        source: IllegalTransition,
    },
}

/// Every test of one job and where it is: the one owner of the tests' lifecycle.
#[derive(Debug, Default)]
pub(super) struct TestTable {
    /// Ordered by id, so that what is left when a job stops is reported in a stable order.
    states: BTreeMap<TestId, TestState>,
}

impl TestTable {
    /// Adds a listed test, queued; `false` if it was listed already (the first one counts).
    pub(super) fn insert(&mut self, test: TestId) -> bool {
        match self.states.entry(test) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(TestState::Queued);
                true
            }
        }
    }

    /// How many tests the job has.
    pub(super) fn len(&self) -> usize {
        self.states.len()
    }

    /// Where `test` is, if the job has it.
    pub(super) fn get(&self, test: &TestId) -> Option<&TestState> {
        self.states.get(test)
    }

    /// Whether `test` is running in `batch` (and so a result of that batch counts for it).
    pub(super) fn running_in(&self, test: &TestId, batch: BatchId) -> bool {
        matches!(self.states.get(test), Some(TestState::Running { batch: b, .. }) if *b == batch)
    }

    /// Moves `test` on by `event` and returns its new state.
    pub(super) fn apply(
        &mut self,
        test: &TestId,
        event: TestEvent,
    ) -> Result<&TestState, TableError> {
        let state = self
            .states
            .get_mut(test)
            .ok_or_else(|| TableError::Unknown(test.clone()))?;
        state.apply(event).map_err(|source| TableError::Illegal {
            test: test.clone(),
            source,
        })?;
        Ok(state)
    }

    /// The tests without a final outcome, by id.
    pub(super) fn unfinished(&self) -> Vec<TestId> {
        self.states
            .iter()
            .filter(|(_, state)| !matches!(state, TestState::Done(_)))
            .map(|(test, _)| test.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: BatchId = BatchId(7);

    fn running(attempt: u32, failures: &[&str]) -> TestState {
        TestState::Running {
            attempt,
            batch: BatchId(3),
            failures: failures.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    fn retrying(attempt: u32, failures: &[&str]) -> TestState {
        TestState::Retrying {
            attempt,
            failures: failures.iter().map(|f| (*f).to_owned()).collect(),
            failed_on: "agent-a".to_owned(),
        }
    }

    fn done(outcome: TestOutcome, attempt: u32, failures: &[&str]) -> TestState {
        TestState::Done(Final {
            outcome,
            attempt,
            failures: failures.iter().map(|f| (*f).to_owned()).collect(),
        })
    }

    fn failed(retry: bool) -> TestEvent {
        TestEvent::Failed {
            failure: Failure::TimedOut,
            output: "boom".to_owned(),
            agent: "agent-b".to_owned(),
            retry,
        }
    }

    /// Every (state, event) pair: the next state, or `None` where the event is illegal.
    #[test]
    fn every_state_and_event_pair() {
        use TestOutcome::{Cancelled, Failed, Flaky, Passed, Skipped, TimedOut};
        let states = [
            TestState::Queued,
            running(1, &[]),
            running(2, &["first"]),
            retrying(1, &["first"]),
            done(Passed, 1, &[]),
        ];
        let events = [
            TestEvent::Cached,
            TestEvent::CachedSkip,
            TestEvent::Restored {
                outcome: TestOutcome::Failed,
                attempt: 2,
            },
            TestEvent::Started { batch: BATCH },
            TestEvent::Passed,
            TestEvent::PassedAfterRetries {
                output: "tried twice".to_owned(),
            },
            TestEvent::Skipped,
            failed(true),
            failed(false),
            TestEvent::Stopped,
        ];
        let started = |attempt, failures: &[&str]| TestState::Running {
            attempt,
            batch: BATCH,
            failures: failures.iter().map(|f| (*f).to_owned()).collect(),
        };
        let failed_on_b = |attempt, failures: &[&str]| TestState::Retrying {
            attempt,
            failures: failures.iter().map(|f| (*f).to_owned()).collect(),
            failed_on: "agent-b".to_owned(),
        };
        // One row per state, one column per event, in the order of `events`.
        let table: [[Option<TestState>; 10]; 5] = [
            // Queued
            [
                Some(done(Passed, 1, &[])),
                Some(done(Skipped, 1, &[])),
                Some(done(Failed, 2, &[])),
                Some(started(1, &[])),
                None,
                None,
                None,
                None,
                None,
                Some(done(Cancelled, 0, &[])),
            ],
            // Running, first attempt
            [
                None,
                None,
                None,
                None,
                Some(done(Passed, 1, &[])),
                Some(done(Flaky, 1, &["tried twice"])),
                Some(done(Skipped, 1, &[])),
                Some(failed_on_b(1, &["boom"])),
                Some(done(TimedOut, 1, &["boom"])),
                Some(done(Cancelled, 1, &[])),
            ],
            // Running, second attempt after a failure
            [
                None,
                None,
                None,
                None,
                Some(done(Flaky, 2, &["first"])),
                Some(done(Flaky, 2, &["first", "tried twice"])),
                Some(done(Skipped, 2, &["first"])),
                Some(failed_on_b(2, &["first", "boom"])),
                Some(done(TimedOut, 2, &["first", "boom"])),
                Some(done(Cancelled, 2, &["first"])),
            ],
            // Retrying after one failed attempt
            [
                None,
                None,
                None,
                Some(started(2, &["first"])),
                None,
                None,
                None,
                None,
                None,
                Some(done(Cancelled, 1, &["first"])),
            ],
            // Done
            [None, None, None, None, None, None, None, None, None, None],
        ];
        for (state, row) in states.iter().zip(table) {
            for (event, expected) in events.iter().zip(row) {
                let mut after = state.clone();
                let applied = after.apply(event.clone());
                match expected {
                    Some(next) => {
                        assert_eq!(applied, Ok(()), "{state:?} on {event:?}");
                        assert_eq!(after, next, "{state:?} on {event:?}");
                    }
                    None => {
                        assert_eq!(
                            applied,
                            Err(IllegalTransition {
                                state: state.name(),
                                event: event.name()
                            }),
                            "{state:?} on {event:?}"
                        );
                        assert_eq!(&after, state, "an illegal event changed {state:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn attempts_count_the_runs_started() {
        assert_eq!(TestState::Queued.attempt(), 0);
        assert_eq!(running(2, &["first"]).attempt(), 2);
        assert_eq!(retrying(1, &["first"]).attempt(), 1);
        assert_eq!(done(TestOutcome::Passed, 3, &[]).attempt(), 3);
    }

    #[test]
    fn the_table_keeps_the_first_listing_and_reports_what_is_left_by_id() {
        let mut table = TestTable::default();
        let (a, b, c) = (
            TestId::new("g", "a"),
            TestId::new("g", "b"),
            TestId::new("f", "z"),
        );
        assert!(table.insert(b.clone()));
        assert!(table.insert(a.clone()));
        assert!(table.insert(c.clone()));
        assert!(!table.insert(a.clone()));
        assert_eq!(table.len(), 3);

        table
            .apply(&a, TestEvent::Started { batch: BATCH })
            .unwrap();
        assert!(table.running_in(&a, BATCH));
        assert!(!table.running_in(&a, BatchId(8)));
        assert!(!table.running_in(&b, BATCH));
        assert_eq!(
            table.apply(&a, TestEvent::Passed).unwrap(),
            &done(TestOutcome::Passed, 1, &[])
        );
        assert_eq!(table.unfinished(), [c, b.clone()]);

        let unknown = TestId::new("g", "nope");
        assert_eq!(
            table.apply(&unknown, TestEvent::Passed),
            Err(TableError::Unknown(unknown))
        );
        assert!(matches!(
            table.apply(&b, TestEvent::Passed),
            Err(TableError::Illegal { test, .. }) if test == b
        ));
        assert_eq!(table.get(&b), Some(&TestState::Queued));
    }
}
