//! The shard planner: which of a job's tests a free slot runs next, and how many at once.
//!
//! Pure: no I/O and no clock of its own (callers pass the job's elapsed time, real or
//! simulated), and the same calls give the same batches, so it is tested and benchmarked on a
//! simulated clock (`tessera-bench shard`). Tests are named by any ordered id: the job driver
//! uses `tessera_runners::TestId`, the unit tests and the benchmark use strings.
//!
//! How a job is split (DESIGN.md §5.4):
//! - The tests still to run are ordered slowest-first by their recorded duration; a test with
//!   no history counts as the median of the suite.
//! - Slots *pull*: whenever one is free it asks for a batch. A batch is cut from the front of
//!   the queue so that its expected duration is about [`PlannerConfig::batch_share`] of the
//!   time each slot is expected to have left (queued work plus the rest of what is running,
//!   over the slots). This is *factoring* from loop scheduling (Hummel, Schonberg and Flynn,
//!   1992): early batches are large, so few are needed and the fixed cost of a batch hardly
//!   shows; later ones shrink towards single tests, so when the queue runs dry every slot is
//!   close to done, however the slots' speeds differ and however wrong the estimates were.
//! - A test longer than the target goes alone, so the long tests start first, one per batch.
//! - No batch is planned shorter than [`PlannerConfig::min_batch`] while there is enough work
//!   left, to keep the fixed cost per batch small beside the work it carries.
//! - Tests to run again (a retry, a batch lost with its agent) go back to the front.
//! - Kept together ([`ShardPlanner::keep_together`], for order-dependent suites, as
//!   pytest-xdist's `--dist loadfile`): a batch that takes one test of a unit (a file) takes
//!   every queued test of it, and a batch lists each unit's tests in the order they were
//!   planned with (the tool's listing order). A retried test goes alone: its unit-mates are done.
//!
//! Not here: a test's lifecycle (attempts, failures, its final outcome: the job driver's
//! `TestState` owns that), leases, timeouts, retry limits, result caching and the history
//! store. The job driver asks this planner for batches, tells it what finished
//! ([`ShardPlanner::record`]) and what must run again ([`ShardPlanner::requeue`]), and stores
//! the updated history entries that [`ShardPlanner::record`] returns.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

/// Weight of the newest run in a test's recorded duration ([`moving_average`]).
const NEWEST_RUN_WEIGHT: f64 = 0.3;

/// The duration a test is recorded with after another run: an exponentially weighted moving
/// average giving the newest run a weight of 0.3, so one slow run moves the plan without
/// taking it over. A test with no history takes the new duration as it is.
pub fn moving_average(old: Option<Duration>, new: Duration) -> Duration {
    match old {
        None => new,
        Some(old) => old.mul_f64(1.0 - NEWEST_RUN_WEIGHT) + new.mul_f64(NEWEST_RUN_WEIGHT),
    }
}

/// A test and how long the planner expects it to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEstimate<Id> {
    /// The test's id.
    pub id: Id,
    /// Its recorded duration, or the suite's median if it has none.
    pub expected: Duration,
}

/// Names one batch of one planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

/// Tests one slot runs in one go, as one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<Id> {
    /// Which batch this is.
    pub id: BatchId,
    /// The tests, in the order to run them (slowest first).
    pub tests: Vec<Id>,
    /// The sum of the tests' expected durations, without the fixed cost of the batch.
    pub expected: Duration,
}

/// How batches are sized.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerConfig {
    /// The shortest batch planned while enough work is left, so the fixed cost of a batch
    /// stays below `batch_overhead / min_batch` of the work it carries. Only the last batch
    /// or two of each slot are this short, so about ten times `batch_overhead` is enough; a
    /// longer minimum leaves the slots finishing further apart (`tessera-bench shard`).
    pub min_batch: Duration,
    /// The fixed cost of one batch on an agent (lease, input root, start-up, reporting). The
    /// planner counts it in how long running batches keep their slots busy.
    pub batch_overhead: Duration,
    /// The most tests in one batch (bounds the size of one action and of what a lost agent
    /// takes with it). At least one.
    pub max_batch_tests: usize,
    /// The share, in (0, 1], of the time each slot is expected to have left that one batch
    /// takes. 0.5 halves the remaining work in each round of batches (factoring); smaller
    /// values cost more batches and cope better with slow slots and wrong estimates. Above 1
    /// counts as 1; zero, negative or NaN as the smallest positive share (every batch as
    /// short as `min_batch`).
    pub batch_share: f64,
    /// What a test is expected to take when no test of the suite has history.
    pub first_run_estimate: Duration,
    /// The longest batch planned, if any (a single longer test still goes alone). It bounds
    /// the work a lost agent takes with it; the job driver sets it (`driver::planner_config`).
    pub max_batch: Option<Duration>,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            min_batch: Duration::from_millis(500),
            batch_overhead: Duration::from_millis(50),
            max_batch_tests: 256,
            batch_share: 0.5,
            first_run_estimate: Duration::from_secs(1),
            max_batch: None,
        }
    }
}

/// Where one test is in the plan (its place in the queue or a batch; its lifecycle is the job
/// driver's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Waiting in the queue.
    Queued,
    /// Handed out in a batch that has not reported it yet.
    Leased(BatchId),
    /// Reported finished.
    Done,
}

/// A batch that has tests not yet reported.
#[derive(Debug, Clone, Copy)]
struct OpenBatch {
    /// When its slot is expected to be free again (job time).
    busy_until: Duration,
    /// Its tests not yet reported or requeued.
    unreported: usize,
}

/// A test's recorded duration (if any) and its position in the list it was planned from.
type Origin = (Option<Duration>, usize);

/// Splits one job's tests, named by `Id`, into batches for slots that pull work. See the
/// module docs.
#[derive(Debug)]
pub struct ShardPlanner<Id> {
    config: PlannerConfig,
    slots: usize,
    /// Every test of the job, in plan order (slowest first, then by id).
    tests: Vec<TestEstimate<Id>>,
    /// Recorded duration per test (same index as `tests`); `None` for no history.
    history: Vec<Option<Duration>>,
    placement: Vec<Placement>,
    index: HashMap<Id, usize>,
    /// Indices into `tests`, front first.
    queue: VecDeque<usize>,
    queued_expected: Duration,
    open: HashMap<BatchId, OpenBatch>,
    next_id: u64,
    /// With [`ShardPlanner::keep_together`]: each test's unit (same index as `tests`).
    units: Option<Vec<usize>>,
    /// Each test's position in the list it was planned from (same index as `tests`).
    listed: Vec<usize>,
}

impl<Id: Clone + Eq + Hash + Ord> ShardPlanner<Id> {
    /// Plans `tests` (id and recorded duration, if any) over `slots` slots. Tests without
    /// history are expected to take the median of those with history. A repeated id is planned
    /// once. `slots` and `config.max_batch_tests` below one count as one; see
    /// [`PlannerConfig::batch_share`] for shares outside (0, 1].
    pub fn new(tests: Vec<(Id, Option<Duration>)>, slots: usize, config: PlannerConfig) -> Self {
        let mut seen = HashSet::new();
        let tests: Vec<(usize, Id, Option<Duration>)> = tests
            .into_iter()
            .filter(|(id, _)| seen.insert(id.clone()))
            .enumerate()
            .map(|(i, (id, recorded))| (i, id, recorded))
            .collect();
        let fill = median(tests.iter().filter_map(|(_, _, recorded)| *recorded))
            .unwrap_or(config.first_run_estimate);
        let mut planned: Vec<(TestEstimate<Id>, Origin)> = tests
            .into_iter()
            .map(|(listed, id, recorded)| {
                let expected = recorded.unwrap_or(fill);
                (TestEstimate { id, expected }, (recorded, listed))
            })
            .collect();
        planned.sort_by(|(a, _), (b, _)| plan_order(a, b));
        let (tests, extra): (Vec<TestEstimate<Id>>, Vec<Origin>) = planned.into_iter().unzip();
        let (history, listed): (Vec<Option<Duration>>, Vec<usize>) = extra.into_iter().unzip();
        let index = tests
            .iter()
            .enumerate()
            .map(|(i, test)| (test.id.clone(), i))
            .collect();
        let queued_expected = tests.iter().map(|test| test.expected).sum();
        ShardPlanner {
            config: PlannerConfig {
                max_batch_tests: config.max_batch_tests.max(1),
                batch_share: if config.batch_share > 0.0 {
                    config.batch_share.min(1.0)
                } else {
                    f64::MIN_POSITIVE
                },
                ..config
            },
            slots: slots.max(1),
            placement: vec![Placement::Queued; tests.len()],
            queue: (0..tests.len()).collect(),
            tests,
            history,
            index,
            queued_expected,
            open: HashMap::new(),
            next_id: 0,
            units: None,
            listed,
        }
    }

    /// Keeps the tests of one unit together from now on: `unit_of` names each test's unit
    /// (for example its file). See the module docs.
    pub fn keep_together<U: Eq + Hash>(&mut self, unit_of: impl Fn(&Id) -> U) {
        let mut numbers: HashMap<U, usize> = HashMap::new();
        let units = self
            .tests
            .iter()
            .map(|test| {
                let next = numbers.len();
                *numbers.entry(unit_of(&test.id)).or_insert(next)
            })
            .collect();
        self.units = Some(units);
    }

    /// The next batch for a slot that is free at `now` (time since the job started), or
    /// `None` when no test is queued. The batch is cut from the front of the queue: at least
    /// one test, at most `max_batch_tests`, and tests are added while the batch's expected
    /// duration stays within half a test of [`ShardPlanner::batch_target`].
    pub fn next_batch(&mut self, now: Duration) -> Option<Batch<Id>> {
        self.queue.front()?;
        let target = self.batch_target(now);
        let id = BatchId(self.next_id);
        self.next_id += 1;
        let mut tests = Vec::new();
        let mut expected = Duration::ZERO;
        while let Some(&next) = self.queue.front() {
            let duration = self.tests[next].expected;
            let full =
                tests.len() >= self.config.max_batch_tests || expected + duration / 2 > target;
            if !tests.is_empty() && full {
                break;
            }
            self.queue.pop_front();
            self.placement[next] = Placement::Leased(id);
            tests.push(next);
            expected += duration;
        }
        if let Some(units) = &self.units {
            // The rest of each unit the batch took comes along, and each unit runs in its
            // listing order.
            let taken: HashSet<usize> = tests.iter().map(|&i| units[i]).collect();
            let (mates, rest): (VecDeque<usize>, VecDeque<usize>) = self
                .queue
                .drain(..)
                .partition(|&i| taken.contains(&units[i]));
            self.queue = rest;
            for i in mates {
                self.placement[i] = Placement::Leased(id);
                expected += self.tests[i].expected;
                tests.push(i);
            }
            let first_of_unit: HashMap<usize, usize> =
                tests.iter().fold(HashMap::new(), |mut first, &i| {
                    let at = first.entry(units[i]).or_insert(self.listed[i]);
                    *at = (*at).min(self.listed[i]);
                    first
                });
            tests.sort_by_key(|&i| (first_of_unit[&units[i]], self.listed[i]));
        }
        let tests: Vec<Id> = tests.iter().map(|&i| self.tests[i].id.clone()).collect();
        self.queued_expected = self.queued_expected.saturating_sub(expected);
        self.open.insert(
            id,
            OpenBatch {
                busy_until: now + self.config.batch_overhead + expected,
                unreported: tests.len(),
            },
        );
        Some(Batch {
            id,
            tests,
            expected,
        })
    }

    /// The expected duration a batch handed out at `now` aims at: `batch_share` of the time
    /// each slot is expected to have left, which is the queued work plus the rest of the
    /// running batches (each assumed to take its expected time), over the slots; but at
    /// least `min_batch` and at most `max_batch`.
    pub fn batch_target(&self, now: Duration) -> Duration {
        let running: Duration = self
            .open
            .values()
            .map(|batch| batch.busy_until.saturating_sub(now))
            .sum();
        let per_slot = (self.queued_expected + running).div_f64(self.slots as f64);
        let target = per_slot
            .mul_f64(self.config.batch_share)
            .max(self.config.min_batch);
        match self.config.max_batch {
            Some(max) => target.min(max.max(self.config.min_batch)),
            None => target,
        }
    }

    /// Puts `tests` back at the front of the queue, slowest first, to be handed out again
    /// (a retry, a batch lost with its agent). Ids the planner does not know and tests
    /// already queued are ignored.
    pub fn requeue(&mut self, tests: Vec<Id>) {
        let mut back = Vec::new();
        for id in tests {
            let Some(&i) = self.index.get(&id) else {
                continue;
            };
            match self.placement[i] {
                Placement::Queued => continue,
                Placement::Leased(batch) => self.release(batch),
                Placement::Done => {}
            }
            self.placement[i] = Placement::Queued;
            self.queued_expected += self.tests[i].expected;
            back.push(i);
        }
        back.sort_by(|&a, &b| plan_order(&self.tests[a], &self.tests[b]));
        for i in back.into_iter().rev() {
            self.queue.push_front(i);
        }
    }

    /// Records that test `id` ran for `took`, and returns its new history entry (see
    /// [`moving_average`]) for the job runner to store. The test's batch stops counting it
    /// as running, and a later [`ShardPlanner::requeue`] of the test expects the new
    /// duration. Record each test as it finishes: until then the planner assumes a running
    /// batch takes its expected time.
    pub fn record<Q>(&mut self, id: &Q, took: Duration) -> Duration
    where
        Id: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(&i) = self.index.get(id) else {
            return moving_average(None, took);
        };
        let updated = moving_average(self.history[i], took);
        self.history[i] = Some(updated);
        match self.placement[i] {
            Placement::Leased(batch) => {
                self.release(batch);
                self.placement[i] = Placement::Done;
            }
            Placement::Queued => {
                // A late report for a test already put back: it will run again, now expected
                // to take the new duration.
                self.queued_expected =
                    self.queued_expected.saturating_sub(self.tests[i].expected) + updated;
            }
            Placement::Done => {}
        }
        self.tests[i].expected = updated;
        updated
    }

    /// Tests still queued (not handed out, or put back).
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }

    /// The sum of the queued tests' expected durations (running batches not included).
    pub fn expected_remaining(&self) -> Duration {
        self.queued_expected
    }

    /// The queued tests, front first.
    pub fn queued(&self) -> impl Iterator<Item = &TestEstimate<Id>> + '_ {
        self.queue.iter().map(|&i| &self.tests[i])
    }

    /// One test of `batch` was reported or put back: it no longer counts as running.
    fn release(&mut self, batch: BatchId) {
        if let Some(open) = self.open.get_mut(&batch) {
            open.unreported -= 1;
            if open.unreported == 0 {
                self.open.remove(&batch);
            }
        }
    }
}

/// Slowest first; equal durations by id, so that plans are deterministic.
fn plan_order<Id: Ord>(a: &TestEstimate<Id>, b: &TestEstimate<Id>) -> std::cmp::Ordering {
    b.expected.cmp(&a.expected).then_with(|| a.id.cmp(&b.id))
}

/// The median of `durations` (the mean of the middle two for an even count), `None` if empty.
fn median(durations: impl Iterator<Item = Duration>) -> Option<Duration> {
    let mut sorted: Vec<Duration> = durations.collect();
    sorted.sort();
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2),
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::{BTreeMap, BinaryHeap};

    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn suite(durations: &[(&str, Option<f64>)]) -> Vec<(String, Option<Duration>)> {
        durations
            .iter()
            .map(|&(id, d)| (id.to_owned(), d.map(secs)))
            .collect()
    }

    /// A suite of `n` tests in no particular order: one in 50 takes 100 to 120 s, the others
    /// 0.05 to 3 s.
    fn spread_suite(n: usize) -> Vec<(String, Option<Duration>)> {
        (0..n)
            .map(|i| {
                let k = (i * 7919) % n;
                let d = if k < n / 50 {
                    100.0 + (k % 21) as f64
                } else {
                    0.05 + 3.0 * ((k * 37) % 100) as f64 / 100.0
                };
                (format!("t{i:04}"), Some(secs(d)))
            })
            .collect()
    }

    /// One batch handed out during a run on the simulated clock.
    struct Handed {
        at: Duration,
        target: Duration,
        batch: Batch<String>,
    }

    /// What happens at a point of simulated time.
    enum Event {
        TestFinished { test: String, took: Duration },
        SlotFree(usize),
    }

    /// Runs the planner to the end on a simulated clock. Slot `s` pulls whenever it is free
    /// and runs each test in `speeds[s]` times its `actual` duration, after the configured
    /// overhead per batch; each test is recorded when it finishes. Returns the batches handed
    /// out and when each slot ran out of work.
    fn simulate(
        mut planner: ShardPlanner<String>,
        speeds: &[f64],
        actual: &HashMap<String, Duration>,
    ) -> (Vec<Handed>, Vec<Duration>) {
        let overhead = planner.config.batch_overhead;
        // (time, finished tests before free slots, sequence) → what happens.
        let mut queue = BinaryHeap::new();
        let mut events = Vec::new();
        for slot in 0..speeds.len() {
            queue.push(Reverse((Duration::ZERO, 1, events.len())));
            events.push(Event::SlotFree(slot));
        }
        let mut handed = Vec::new();
        let mut idle_from = vec![Duration::ZERO; speeds.len()];
        while let Some(Reverse((now, _, event))) = queue.pop() {
            match &events[event] {
                Event::TestFinished { test, took } => {
                    let (test, took) = (test.clone(), *took);
                    planner.record(&test, took);
                }
                &Event::SlotFree(slot) => {
                    let target = planner.batch_target(now);
                    let Some(batch) = planner.next_batch(now) else {
                        idle_from[slot] = now;
                        continue;
                    };
                    let mut t = now + overhead;
                    for test in &batch.tests {
                        let took = actual[test].mul_f64(speeds[slot]);
                        t += took;
                        queue.push(Reverse((t, 0, events.len())));
                        events.push(Event::TestFinished {
                            test: test.clone(),
                            took,
                        });
                    }
                    queue.push(Reverse((t, 1, events.len())));
                    events.push(Event::SlotFree(slot));
                    handed.push(Handed {
                        at: now,
                        target,
                        batch,
                    });
                }
            }
        }
        (handed, idle_from)
    }

    /// [`simulate`] with `slots` equal slots; the batches handed out.
    fn run_exact(
        planner: ShardPlanner<String>,
        slots: usize,
        actual: &HashMap<String, Duration>,
    ) -> Vec<Handed> {
        simulate(planner, &vec![1.0; slots], actual).0
    }

    fn durations_of(tests: &[(String, Option<Duration>)]) -> HashMap<String, Duration> {
        tests
            .iter()
            .map(|(id, d)| (id.clone(), d.unwrap_or(Duration::ZERO)))
            .collect()
    }

    #[test]
    fn tests_are_planned_slowest_first_and_those_without_history_get_the_median() {
        let planner = ShardPlanner::new(
            suite(&[
                ("fast", Some(1.0)),
                ("new_b", None),
                ("slow", Some(10.0)),
                ("medium", Some(2.0)),
                ("new_a", None),
                ("slower", Some(30.0)),
            ]),
            2,
            PlannerConfig::default(),
        );
        let order: Vec<(&str, Duration)> = planner
            .queued()
            .map(|test| (test.id.as_str(), test.expected))
            .collect();
        // Median of 1, 2, 10, 30 is 6; equal durations are ordered by id.
        assert_eq!(
            order,
            vec![
                ("slower", secs(30.0)),
                ("slow", secs(10.0)),
                ("new_a", secs(6.0)),
                ("new_b", secs(6.0)),
                ("medium", secs(2.0)),
                ("fast", secs(1.0)),
            ]
        );
        assert_eq!(planner.remaining(), 6);
        assert_eq!(planner.expected_remaining(), secs(55.0));
    }

    #[test]
    fn a_suite_without_any_history_uses_the_first_run_estimate() {
        let config = PlannerConfig {
            first_run_estimate: secs(3.0),
            ..PlannerConfig::default()
        };
        let planner = ShardPlanner::new(suite(&[("b", None), ("a", None)]), 4, config);
        let ids: Vec<&str> = planner.queued().map(|test| test.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(planner.expected_remaining(), secs(6.0));
    }

    #[test]
    fn long_tests_go_one_per_batch_and_batches_shrink_towards_the_end() {
        let tests = spread_suite(600);
        let actual = durations_of(&tests);
        let config = PlannerConfig {
            min_batch: secs(0.5),
            ..PlannerConfig::default()
        };
        let handed = run_exact(ShardPlanner::new(tests, 16, config.clone()), 16, &actual);

        // The first batches are the longest tests, alone.
        for first in &handed[..12] {
            assert_eq!(first.batch.tests.len(), 1);
            assert!(first.batch.expected >= secs(100.0), "{:?}", first.batch);
        }
        // With exact estimates and no idle slot, the target only ever shrinks (but for the
        // fixed cost of the batch just handed out), down to the minimum batch; no batch of
        // several tests overshoots it by more than half a test.
        for pair in handed.windows(2) {
            let allowed = pair[0].target + config.batch_overhead;
            assert!(pair[1].target <= allowed, "target grew at {:?}", pair[1].at);
        }
        assert_eq!(handed.last().unwrap().target, config.min_batch);
        for h in &handed {
            if h.batch.tests.len() > 1 {
                assert!(h.batch.expected <= h.target.mul_f64(1.5), "{:?}", h.batch);
            }
        }
        // The last round of batches is short beside the first.
        let last_round: Duration = handed[handed.len() - 16..]
            .iter()
            .map(|h| h.batch.expected)
            .max()
            .unwrap();
        assert!(last_round <= secs(1.0), "last round up to {last_round:?}");
    }

    #[test]
    fn slots_finish_together_even_when_one_is_twice_as_slow() {
        let tests = spread_suite(800);
        let actual = durations_of(&tests);
        let total: Duration = actual.values().sum();
        let speeds = [1.0, 1.0, 1.0, 2.0];
        let planner = ShardPlanner::new(tests, speeds.len(), PlannerConfig::default());
        let (_, idle_from) = simulate(planner, &speeds, &actual);
        // The slow slot does half the work of a fast one: 3.5 slots' worth in all.
        let ideal = total.div_f64(3.5);
        let makespan = *idle_from.iter().max().unwrap();
        let first_idle = *idle_from.iter().min().unwrap();
        assert!(
            makespan <= ideal.mul_f64(1.01),
            "makespan {makespan:?}, ideal {ideal:?}"
        );
        assert!(
            makespan - first_idle <= secs(2.0),
            "a slot idled from {first_idle:?} while another worked until {makespan:?}"
        );
    }

    #[test]
    fn every_test_is_handed_out_exactly_once_and_no_batch_is_empty() {
        let mut tests = spread_suite(1000);
        tests.push(("t0003".to_owned(), Some(secs(5.0)))); // a repeated id is planned once
        tests.push(("no_history".to_owned(), None));
        let actual = durations_of(&tests);
        for slots in [1, 3, 16, 64] {
            let planner = ShardPlanner::new(tests.clone(), slots, PlannerConfig::default());
            let handed = run_exact(planner, slots, &actual);
            let mut seen = BTreeMap::new();
            for h in &handed {
                assert!(!h.batch.tests.is_empty());
                assert!(h.batch.tests.len() <= PlannerConfig::default().max_batch_tests);
                for test in &h.batch.tests {
                    *seen.entry(test.clone()).or_insert(0) += 1;
                }
            }
            assert_eq!(seen.len(), 1001, "{slots} slots");
            assert!(seen.values().all(|&n| n == 1), "{slots} slots");
        }
    }

    #[test]
    fn a_batch_holds_at_least_one_test_and_at_most_the_limit() {
        let tests: Vec<(String, Option<Duration>)> = (0..10)
            .map(|i| (format!("t{i}"), Some(Duration::ZERO)))
            .collect();
        let config = PlannerConfig {
            max_batch_tests: 0, // counts as one
            ..PlannerConfig::default()
        };
        let mut planner = ShardPlanner::new(tests.clone(), 2, config);
        assert_eq!(planner.next_batch(Duration::ZERO).unwrap().tests.len(), 1);

        let config = PlannerConfig {
            max_batch_tests: 4,
            ..PlannerConfig::default()
        };
        let mut planner = ShardPlanner::new(tests, 2, config);
        let sizes: Vec<usize> = std::iter::from_fn(|| planner.next_batch(Duration::ZERO))
            .map(|batch| batch.tests.len())
            .collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(planner.next_batch(Duration::ZERO), None);

        // A test far longer than any target still goes, alone.
        let mut planner = ShardPlanner::new(
            suite(&[("huge", Some(3600.0)), ("tiny", Some(0.1))]),
            64,
            PlannerConfig::default(),
        );
        assert_eq!(planner.next_batch(Duration::ZERO).unwrap().tests, ["huge"]);
        assert_eq!(planner.next_batch(Duration::ZERO).unwrap().tests, ["tiny"]);
        assert_eq!(planner.next_batch(Duration::ZERO), None);
    }

    #[test]
    fn shares_outside_the_range_are_clamped_not_fatal() {
        for (share, expected) in [(f64::NAN, 1.0), (-1.0, 1.0), (0.0, 1.0), (7.0, 10.0)] {
            let config = PlannerConfig {
                min_batch: secs(1.0),
                batch_overhead: Duration::ZERO,
                batch_share: share,
                ..PlannerConfig::default()
            };
            let planner =
                ShardPlanner::new(suite(&[("a", Some(10.0)), ("b", Some(10.0))]), 2, config);
            assert_eq!(
                planner.batch_target(Duration::ZERO),
                secs(expected),
                "{share}"
            );
        }
    }

    #[test]
    fn kept_together_a_unit_goes_whole_and_in_listing_order() {
        // Listed: a.py::1, b.py::1, a.py::2, a.py::3; a.py::3 is the slowest.
        let tests = vec![
            ("a.py::1".to_owned(), Some(secs(1.0))),
            ("b.py::1".to_owned(), Some(secs(2.0))),
            ("a.py::2".to_owned(), Some(secs(1.0))),
            ("a.py::3".to_owned(), Some(secs(9.0))),
        ];
        let config = PlannerConfig {
            max_batch_tests: 1,
            ..PlannerConfig::default()
        };
        let mut planner = ShardPlanner::new(tests, 4, config);
        planner.keep_together(|id: &String| id.split("::").next().unwrap_or("").to_owned());
        let first = planner.next_batch(Duration::ZERO).unwrap();
        assert_eq!(first.tests, vec!["a.py::1", "a.py::2", "a.py::3"]);
        assert_eq!(first.expected, secs(11.0));
        let second = planner.next_batch(Duration::ZERO).unwrap();
        assert_eq!(second.tests, vec!["b.py::1"]);
        assert!(planner.next_batch(Duration::ZERO).is_none());
        // A retry goes alone.
        planner.record("a.py::1", secs(1.0));
        planner.record("a.py::3", secs(9.0));
        planner.requeue(vec!["a.py::2".to_owned()]);
        assert_eq!(
            planner.next_batch(secs(12.0)).unwrap().tests,
            vec!["a.py::2"]
        );
    }

    #[test]
    fn requeued_tests_go_back_to_the_front_slowest_first() {
        let mut planner = ShardPlanner::new(
            suite(&[
                ("a", Some(9.0)),
                ("b", Some(8.0)),
                ("c", Some(7.0)),
                ("d", Some(1.0)),
                ("e", Some(1.0)),
            ]),
            1,
            PlannerConfig {
                min_batch: secs(1.0),
                batch_share: 0.3,
                ..PlannerConfig::default()
            },
        );
        let first = planner.next_batch(Duration::ZERO).unwrap();
        assert_eq!(first.tests, ["a"]);
        let second = planner.next_batch(Duration::ZERO).unwrap();
        assert_eq!(second.tests, ["b"]);
        assert_eq!(planner.remaining(), 3);

        // "a" failed and is retried; the agent running "b" was lost. Unknown and queued ids
        // are ignored, and so is a repeat.
        planner.record("a", secs(9.0));
        planner.requeue(vec![
            "a".into(),
            "unknown".into(),
            "b".into(),
            "c".into(),
            "b".into(),
        ]);
        let ids: Vec<&str> = planner.queued().map(|test| test.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
        assert_eq!(planner.expected_remaining(), secs(26.0));

        let mut handed = Vec::new();
        while let Some(batch) = planner.next_batch(secs(10.0)) {
            handed.extend(batch.tests);
        }
        assert_eq!(handed, ["a", "b", "c", "d", "e"]);
        assert_eq!(planner.expected_remaining(), Duration::ZERO);
    }

    #[test]
    fn running_batches_count_until_their_tests_are_recorded_or_requeued() {
        let config = PlannerConfig {
            min_batch: Duration::ZERO,
            batch_overhead: Duration::ZERO,
            batch_share: 1.0,
            ..PlannerConfig::default()
        };
        let mut planner = ShardPlanner::new(
            suite(&[("long", Some(40.0)), ("x", Some(10.0)), ("y", Some(10.0))]),
            2,
            config,
        );
        assert_eq!(planner.batch_target(Duration::ZERO), secs(30.0));
        let batch = planner.next_batch(Duration::ZERO).unwrap();
        assert_eq!(batch.tests, ["long"]);
        // 20 s queued plus 30 s left of "long", over 2 slots.
        assert_eq!(planner.batch_target(secs(10.0)), secs(25.0));
        // Overdue batches count as nearly done.
        assert_eq!(planner.batch_target(secs(100.0)), secs(10.0));
        planner.requeue(vec!["long".into()]);
        assert_eq!(planner.batch_target(secs(10.0)), secs(30.0));
        let batch = planner.next_batch(secs(10.0)).unwrap();
        planner.record("long", secs(44.0));
        assert_eq!(batch.tests, ["long"]);
        assert_eq!(planner.batch_target(secs(10.0)), secs(10.0));
    }

    #[test]
    fn recording_returns_the_new_history_entry() {
        assert_eq!(moving_average(None, secs(4.0)), secs(4.0));
        assert_eq!(moving_average(Some(secs(10.0)), secs(20.0)), secs(13.0));

        let mut planner = ShardPlanner::new(
            suite(&[("known", Some(10.0)), ("new", None)]),
            1,
            PlannerConfig::default(),
        );
        while planner.next_batch(Duration::ZERO).is_some() {}
        // A test planned at the median has no history of its own: its first run is its entry.
        assert_eq!(planner.record("new", secs(2.0)), secs(2.0));
        assert_eq!(planner.record("known", secs(20.0)), secs(13.0));
        assert_eq!(planner.record("not_in_job", secs(1.0)), secs(1.0));
        // A retry is expected to take the updated duration.
        planner.requeue(vec!["known".into()]);
        assert_eq!(planner.expected_remaining(), secs(13.0));
    }

    #[test]
    fn the_same_calls_give_the_same_batches() {
        let tests = spread_suite(300);
        let actual = durations_of(&tests);
        let plan = |tests: Vec<(String, Option<Duration>)>| -> Vec<Vec<String>> {
            run_exact(
                ShardPlanner::new(tests, 5, PlannerConfig::default()),
                5,
                &actual,
            )
            .into_iter()
            .map(|h| h.batch.tests)
            .collect()
        };
        let mut reversed = tests.clone();
        reversed.reverse();
        assert_eq!(plan(tests), plan(reversed));
    }

    #[test]
    fn batches_never_plan_more_than_max_batch() {
        let tests: Vec<(String, Option<Duration>)> = (0..100)
            .map(|i| (format!("t{i}"), Some(Duration::from_secs(1))))
            .collect();
        let config = PlannerConfig {
            max_batch: Some(Duration::from_secs(10)),
            ..PlannerConfig::default()
        };
        let mut planner = ShardPlanner::new(tests.clone(), 2, config);
        let first = planner.next_batch(Duration::ZERO).unwrap();
        assert_eq!(first.tests.len(), 10, "{first:?}");
        // Without the cap the first batch is half of each slot's share: 25 tests.
        let mut uncapped = ShardPlanner::new(tests, 2, PlannerConfig::default());
        assert_eq!(uncapped.next_batch(Duration::ZERO).unwrap().tests.len(), 25);
    }
}
