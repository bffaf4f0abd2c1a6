//! What the coordinator remembers about tests between jobs: each test's cached pass (keyed by
//! everything that decides it), each test's recent durations and each suite's recent tool
//! start-ups (for the planner).
//!
//! - **Result cache** (table `test_results`): key = hash of the instance, the prepared input
//!   root, the runner and its settings, the environment, the platform and the test id
//!   (DESIGN.md §5.3). Only clean passes and skips are stored (value: duration in
//!   microseconds, then one byte 1 for a skip, then the subtests as JSON `[[name, skipped]]`
//!   when there are any); a flaky pass or a failure never is.
//! - **History** (table `test_history`): key = the suite's history scope (the job driver's
//!   `history_scope`: instance, project, runner settings without the checkout's path, matrix
//!   cell; not the input root, so history survives code changes, and not the submitter or
//!   the environment, so CI and laptops share it) and the test id; value = the day it was last
//!   recorded (days since the Unix epoch, u32) and its last [`HistoryLimits::runs`] durations
//!   (microseconds, u64 each, oldest first). A test's estimate is their **median**: one slow
//!   run (a loaded agent) does not move it, and a real change shows within half of them. The
//!   suite's tool start-ups are kept the same way, under the scope and a byte (0xFF) that no
//!   test id (UTF-8) starts with. An entry of the 8 bytes earlier versions wrote (a moving
//!   average) reads as one run.
//! - **Last seen** (table `test_history_seen`): key = day ++ history key, so the table lists
//!   entries oldest first. Recording moves an entry to today; every record also removes up to
//!   [`PRUNE_PER_RECORD`] entries not recorded for [`HistoryLimits::retention`] (tests that
//!   were deleted or renamed, suites whose settings changed), so the table cannot grow
//!   without limit.
//!
//! Writes go in one batch per finished batch of tests, not one commit per test. Two jobs
//! recording the same test at once may lose one of the two runs: history guides the plan, a
//! lost sample only costs a slightly older estimate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_cas::meta::{Batch, MetaError, MetadataStore, Table};
use tessera_runners::TestId;

use super::planner::median;

const RESULTS: &str = "test_results";
const HISTORY: &str = "test_history";
const SEEN: &str = "test_history_seen";

/// Most stale history entries one record removes (the rest go with the next records).
pub const PRUNE_PER_RECORD: usize = 256;

/// Follows a history scope in the key of the suite's start-ups: not the first byte of any
/// UTF-8 test group, so no test's key collides with it.
const STARTUP_MARK: u8 = 0xFF;

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Durations kept per test (and start-ups per suite), newest last. At least one.
    pub runs: usize,
    /// An entry not recorded for this long is removed.
    pub retention: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            runs: 10,
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// A day, as days since the Unix epoch: when a history entry was last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(pub u32);

impl Day {
    /// Today, by the system clock.
    pub fn today() -> Self {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Day(u32::try_from(secs / 86_400).unwrap_or(u32::MAX))
    }
}

/// The result cache and the duration history.
#[derive(Clone)]
pub struct TestStore {
    meta: Arc<dyn MetadataStore>,
    results: Table,
    history: Table,
    seen: Table,
    limits: HistoryLimits,
}

impl std::fmt::Debug for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore").finish_non_exhaustive()
    }
}

/// The part of every key that one job shares: [`SuiteKey::suite`] for history,
/// [`SuiteKey::results`] for the result cache.
#[derive(Debug, Clone)]
pub struct SuiteKey {
    suite: [u8; 32],
    results: [u8; 32],
}

impl SuiteKey {
    /// Keys for a job. `settings` is everything besides the input root that decides a result
    /// (instance, runner JSON, environment, platform), in a stable encoding; `history` is what
    /// the suite's history is shared across (see the module docs), or empty for `settings`
    /// (a client too old to name its project).
    pub fn new(settings: &[u8], prepared_root: &str, history: &[u8]) -> Self {
        let results = {
            let mut hasher = blake3::Hasher::new();
            hasher.update(blake3::hash(settings).as_bytes());
            hasher.update(prepared_root.as_bytes());
            *hasher.finalize().as_bytes()
        };
        let history = if history.is_empty() {
            settings
        } else {
            history
        };
        SuiteKey {
            suite: *blake3::hash(history).as_bytes(),
            results,
        }
    }

    fn key(prefix: &[u8; 32], test: &TestId) -> Vec<u8> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(test.group.as_bytes());
        key.push(0);
        key.extend_from_slice(test.name.as_bytes());
        key
    }

    fn startup_key(&self) -> Vec<u8> {
        let mut key = self.suite.to_vec();
        key.push(STARTUP_MARK);
        key
    }
}

/// A test's cached pass (or skip: a skip is cached like a pass, under the same key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPass {
    /// How long the passing run took.
    pub duration: Duration,
    /// The tool skipped the test.
    pub skipped: bool,
    /// The subtests the passing run reported (go's `TestX/case`), each with whether it was
    /// skipped, in the order they were reported: a cached answer reports them again.
    pub subtests: Vec<(String, bool)>,
}

/// One history entry: the day it was last recorded (`None` for an entry of an earlier
/// version) and its runs, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Runs {
    day: Option<Day>,
    runs: Vec<Duration>,
}

impl Runs {
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() == 8 {
            return Some(Runs {
                day: None,
                runs: vec![decode_micros(bytes)?],
            });
        }
        let (day, rest) = bytes.split_first_chunk::<4>()?;
        if rest.len() % 8 != 0 {
            return None;
        }
        Some(Runs {
            day: Some(Day(u32::from_be_bytes(*day))),
            runs: rest.chunks(8).filter_map(decode_micros).collect(),
        })
    }

    fn encode(&self, day: Day) -> Vec<u8> {
        let mut out = day.0.to_be_bytes().to_vec();
        for run in &self.runs {
            out.extend(encode_micros(*run));
        }
        out
    }
}

impl TestStore {
    /// Opens the tables in `meta`; history is kept within `limits`.
    pub fn open(meta: Arc<dyn MetadataStore>, limits: HistoryLimits) -> Result<Self, MetaError> {
        Ok(TestStore {
            results: meta.table(RESULTS)?,
            history: meta.table(HISTORY)?,
            seen: meta.table(SEEN)?,
            limits: HistoryLimits {
                runs: limits.runs.max(1),
                ..limits
            },
            meta,
        })
    }

    /// The cached pass of `test`, if any.
    pub fn cached(&self, key: &SuiteKey, test: &TestId) -> Result<Option<CachedPass>, MetaError> {
        let value = self.results.get(&SuiteKey::key(&key.results, test))?;
        Ok(value.and_then(|v| {
            let (micros, rest) = v.split_at_checked(8)?;
            let subtests = match rest.get(1..) {
                Some(json) if !json.is_empty() => serde_json::from_slice(json).ok()?,
                _ => Vec::new(),
            };
            Some(CachedPass {
                duration: decode_micros(micros)?,
                skipped: rest.first() == Some(&1),
                subtests,
            })
        }))
    }

    /// The expected duration of `test`: the median of its recorded runs, if any.
    pub fn history(&self, key: &SuiteKey, test: &TestId) -> Result<Option<Duration>, MetaError> {
        self.estimate(&SuiteKey::key(&key.suite, test))
    }

    /// The suite's tool start-up: the median of its recorded start-ups, if any.
    pub fn startup(&self, key: &SuiteKey) -> Result<Option<Duration>, MetaError> {
        self.estimate(&key.startup_key())
    }

    fn estimate(&self, key: &[u8]) -> Result<Option<Duration>, MetaError> {
        let runs = self.history.get(key)?.and_then(|v| Runs::decode(&v));
        Ok(runs.and_then(|r| median(r.runs.into_iter())))
    }

    /// Records a batch of outcomes on `day`: `durations` (each test's run) and `startups`
    /// (tool start-ups measured for the suite) into the history, keeping the last
    /// [`HistoryLimits::runs`] of each, and `passes` (clean first-attempt passes and skips)
    /// into the cache. Removes some history entries older than the retention (see the module
    /// docs).
    pub fn record(
        &self,
        key: &SuiteKey,
        durations: &[(TestId, Duration)],
        startups: &[Duration],
        passes: &[(TestId, CachedPass)],
        day: Day,
    ) -> Result<(), MetaError> {
        let mut batch = Batch::new();
        // First, so that an entry recorded now outlives the removal of its stale self (the
        // batch's later operations on a key win).
        self.prune(&mut batch, day)?;
        for (test, duration) in durations {
            self.add_runs(
                &mut batch,
                SuiteKey::key(&key.suite, test),
                &[*duration],
                day,
            )?;
        }
        if !startups.is_empty() {
            self.add_runs(&mut batch, key.startup_key(), startups, day)?;
        }
        for (test, pass) in passes {
            let mut value = encode_micros(pass.duration);
            if pass.skipped || !pass.subtests.is_empty() {
                value.push(u8::from(pass.skipped));
            }
            if !pass.subtests.is_empty() {
                // A list of pairs of strings and booleans always serializes.
                value.extend(serde_json::to_vec(&pass.subtests).unwrap_or_default());
            }
            batch.insert(RESULTS, SuiteKey::key(&key.results, test), value);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.meta.apply_batch(batch)
    }

    /// Appends `new` to the runs under `key`, keeps the last ones, and moves the entry to
    /// `day` in the last-seen table.
    fn add_runs(
        &self,
        batch: &mut Batch,
        key: Vec<u8>,
        new: &[Duration],
        day: Day,
    ) -> Result<(), MetaError> {
        let old = self.history.get(&key)?.and_then(|v| Runs::decode(&v));
        let mut entry = old.unwrap_or(Runs {
            day: None,
            runs: Vec::new(),
        });
        entry.runs.extend_from_slice(new);
        let excess = entry.runs.len().saturating_sub(self.limits.runs);
        entry.runs.drain(..excess);
        if entry.day != Some(day) {
            if let Some(old_day) = entry.day {
                batch.remove(SEEN, seen_key(old_day, &key));
            }
            batch.insert(SEEN, seen_key(day, &key), Vec::new());
        }
        batch.insert(HISTORY, key, entry.encode(day));
        Ok(())
    }

    /// Adds to `batch` the removal of up to [`PRUNE_PER_RECORD`] history entries last
    /// recorded before `today` less the retention, oldest first.
    fn prune(&self, batch: &mut Batch, today: Day) -> Result<(), MetaError> {
        let days = self.limits.retention.as_secs().div_ceil(86_400);
        let cutoff = today
            .0
            .saturating_sub(u32::try_from(days).unwrap_or(u32::MAX));
        for entry in self.seen.scan_prefix(&[]).take(PRUNE_PER_RECORD) {
            let (key, _) = entry?;
            let Some((day, history_key)) = key.split_first_chunk::<4>() else {
                continue;
            };
            if u32::from_be_bytes(*day) >= cutoff {
                break;
            }
            batch.remove(HISTORY, history_key.to_vec());
            batch.remove(SEEN, key.clone());
        }
        Ok(())
    }
}

/// The last-seen table's key of the history entry `key` recorded on `day`.
fn seen_key(day: Day, key: &[u8]) -> Vec<u8> {
    let mut out = day.0.to_be_bytes().to_vec();
    out.extend_from_slice(key);
    out
}

fn encode_micros(duration: Duration) -> Vec<u8> {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .to_be_bytes()
        .to_vec()
}

fn decode_micros(bytes: &[u8]) -> Option<Duration> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(Duration::from_micros(u64::from_be_bytes(array)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_cas::meta::MemoryMetaStore;

    fn store(limits: HistoryLimits) -> TestStore {
        TestStore::open(Arc::new(MemoryMetaStore::new()), limits).unwrap()
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Records one run of each of `tests` on `day`.
    fn run(store: &TestStore, key: &SuiteKey, tests: &[(&TestId, u64)], day: u32) {
        let durations: Vec<(TestId, Duration)> =
            tests.iter().map(|(t, d)| ((*t).clone(), ms(*d))).collect();
        store.record(key, &durations, &[], &[], Day(day)).unwrap();
    }

    #[test]
    fn history_keeps_the_last_runs_and_estimates_their_median() {
        let store = store(HistoryLimits {
            runs: 5,
            ..HistoryLimits::default()
        });
        let key = SuiteKey::new(b"settings", "root", b"project scope");
        let test = TestId::new("tests/a.py", "test_x");
        assert_eq!(store.history(&key, &test).unwrap(), None);
        // Runs of 100 ms, then a slow one: the median does not move.
        for _ in 0..4 {
            run(&store, &key, &[(&test, 100)], 1);
        }
        run(&store, &key, &[(&test, 5_000)], 1);
        assert_eq!(store.history(&key, &test).unwrap(), Some(ms(100)));
        // Only the last five are kept: after three runs of 300 ms, three of five are 300.
        for _ in 0..3 {
            run(&store, &key, &[(&test, 300)], 2);
        }
        assert_eq!(store.history(&key, &test).unwrap(), Some(ms(300)));
        let value = store
            .history
            .get(&SuiteKey::key(&key.suite, &test))
            .unwrap()
            .unwrap();
        assert_eq!(value.len(), 4 + 5 * 8, "a day and five runs");
        // A moving average written by an earlier version reads as one run.
        let old = TestId::new("tests/a.py", "test_old");
        store
            .history
            .insert(&SuiteKey::key(&key.suite, &old), &encode_micros(ms(70)))
            .unwrap();
        assert_eq!(store.history(&key, &old).unwrap(), Some(ms(70)));
        run(&store, &key, &[(&old, 90)], 2);
        assert_eq!(store.history(&key, &old).unwrap(), Some(ms(80)));
    }

    #[test]
    fn entries_not_recorded_within_the_retention_are_removed() {
        let store = store(HistoryLimits {
            runs: 10,
            retention: Duration::from_secs(30 * 86_400),
        });
        let key = SuiteKey::new(b"settings", "root", b"project scope");
        let (gone, kept, fresh) = (
            TestId::new("g", "renamed_away"),
            TestId::new("g", "still_here"),
            TestId::new("g", "new"),
        );
        run(&store, &key, &[(&gone, 10), (&kept, 20)], 100);
        store.record(&key, &[], &[ms(900)], &[], Day(100)).unwrap();
        assert_eq!(store.startup(&key).unwrap(), Some(ms(900)));
        // Seen again on day 120; then day 131 is more than 30 days after day 100.
        run(&store, &key, &[(&kept, 30)], 120);
        assert_eq!(store.history.len().unwrap(), 3);
        assert_eq!(store.seen.len().unwrap(), 3);
        run(&store, &key, &[(&fresh, 5)], 130);
        assert_eq!(
            store.history.len().unwrap(),
            4,
            "day 100 is within 30 days of 130"
        );
        run(&store, &key, &[(&fresh, 5)], 131);
        assert_eq!(store.history(&key, &gone).unwrap(), None);
        assert_eq!(store.startup(&key).unwrap(), None);
        assert_eq!(store.history(&key, &kept).unwrap(), Some(ms(25)));
        assert_eq!(store.history(&key, &fresh).unwrap(), Some(ms(5)));
        assert_eq!(store.history.len().unwrap(), 2);
        assert_eq!(
            store.seen.len().unwrap(),
            2,
            "one last-seen entry per history entry"
        );
        // A stale entry recorded again is kept, with its runs.
        run(&store, &key, &[(&kept, 40)], 200);
        assert_eq!(store.history(&key, &kept).unwrap(), Some(ms(30)));
        assert_eq!(store.history(&key, &fresh).unwrap(), None);
        assert_eq!(store.seen.len().unwrap(), 1);
    }

    #[test]
    fn start_ups_are_kept_per_suite() {
        let store = store(HistoryLimits::default());
        let a = SuiteKey::new(b"a", "root", b"scope a");
        let b = SuiteKey::new(b"b", "root", b"scope b");
        store
            .record(&a, &[], &[ms(800), ms(1_000), ms(1_200)], &[], Day(1))
            .unwrap();
        assert_eq!(store.startup(&a).unwrap(), Some(ms(1_000)));
        assert_eq!(store.startup(&b).unwrap(), None);
    }

    #[test]
    fn history_follows_the_scope_and_results_the_settings() {
        let store = store(HistoryLimits::default());
        let test = TestId::new("g", "t");
        // Two submitters' settings differ (HOME, say); their project's scope is the same.
        let ann = SuiteKey::new(b"HOME=/home/ann", "root", b"project");
        let ci = SuiteKey::new(b"HOME=/builds", "root", b"project");
        run(&store, &ann, &[(&test, 50)], 1);
        assert_eq!(store.history(&ci, &test).unwrap(), Some(ms(50)));
        let pass = CachedPass {
            duration: ms(50),
            skipped: false,
            subtests: Vec::new(),
        };
        store
            .record(&ann, &[], &[], &[(test.clone(), pass)], Day(1))
            .unwrap();
        assert!(store.cached(&ann, &test).unwrap().is_some());
        assert_eq!(store.cached(&ci, &test).unwrap(), None);
    }

    #[test]
    fn passes_are_keyed_by_the_prepared_root_and_history_is_not() {
        let store = store(HistoryLimits::default());
        let test = TestId::new("crate", "t");
        let v1 = SuiteKey::new(b"settings", "root-1", b"");
        let v2 = SuiteKey::new(b"settings", "root-2", b"");
        let other = SuiteKey::new(b"other settings", "root-1", b"");
        store
            .record(
                &v1,
                &[(test.clone(), Duration::from_millis(40))],
                &[],
                &[
                    (
                        test.clone(),
                        CachedPass {
                            duration: Duration::from_millis(42),
                            skipped: false,
                            subtests: vec![("t/a".into(), false), ("t/b".into(), true)],
                        },
                    ),
                    (
                        TestId::new("crate", "skip"),
                        CachedPass {
                            duration: Duration::ZERO,
                            skipped: true,
                            subtests: Vec::new(),
                        },
                    ),
                ],
                Day(1),
            )
            .unwrap();
        assert_eq!(
            store.cached(&v1, &test).unwrap(),
            Some(CachedPass {
                duration: Duration::from_millis(42),
                skipped: false,
                subtests: vec![("t/a".into(), false), ("t/b".into(), true)],
            })
        );
        // Skips are cached like passes, and say so.
        assert!(
            store
                .cached(&v1, &TestId::new("crate", "skip"))
                .unwrap()
                .unwrap()
                .skipped
        );
        assert_eq!(store.cached(&v2, &test).unwrap(), None);
        assert_eq!(store.cached(&other, &test).unwrap(), None);
        assert_eq!(
            store.history(&v2, &test).unwrap(),
            Some(Duration::from_millis(40))
        );
        assert_eq!(store.history(&other, &test).unwrap(), None);
        assert_eq!(store.cached(&v1, &TestId::new("crate", "u")).unwrap(), None);
    }
}
