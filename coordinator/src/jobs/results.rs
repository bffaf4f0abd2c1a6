//! What the coordinator remembers about tests between jobs: each test's cached pass (keyed by
//! everything that decides it) and each test's recorded duration (for the planner).
//!
//! - **Result cache** (table `test_results`): key = hash of the instance, the prepared input
//!   root, the runner and its settings, the environment, the platform and the test id
//!   (DESIGN.md §5.3). Only clean passes and skips are stored (value: duration in
//!   microseconds, then one byte 1 for a skip, then the subtests as JSON `[[name, skipped]]`
//!   when there are any); a flaky pass or a failure never is.
//! - **History** (table `test_history`): key = the suite (instance, runner settings,
//!   environment, platform: not the input root, so history survives code changes) and the test
//!   id; value = moving average of its duration in microseconds.
//!
//! Writes go in one batch per finished batch of tests, not one commit per test.

use std::sync::Arc;
use std::time::Duration;

use tessera_cas::meta::{Batch, MetaError, MetadataStore, Table};
use tessera_runners::TestId;

const RESULTS: &str = "test_results";
const HISTORY: &str = "test_history";

/// The result cache and the duration history.
#[derive(Clone)]
pub struct TestStore {
    meta: Arc<dyn MetadataStore>,
    results: Table,
    history: Table,
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
    /// (instance, runner JSON, environment, platform), in a stable encoding.
    pub fn new(settings: &[u8], prepared_root: &str) -> Self {
        let suite = *blake3::hash(settings).as_bytes();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&suite);
        hasher.update(prepared_root.as_bytes());
        SuiteKey {
            suite,
            results: *hasher.finalize().as_bytes(),
        }
    }

    fn key(prefix: &[u8; 32], test: &TestId) -> Vec<u8> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(test.group.as_bytes());
        key.push(0);
        key.extend_from_slice(test.name.as_bytes());
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

impl TestStore {
    /// Opens the two tables in `meta`.
    pub fn open(meta: Arc<dyn MetadataStore>) -> Result<Self, MetaError> {
        Ok(TestStore {
            results: meta.table(RESULTS)?,
            history: meta.table(HISTORY)?,
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

    /// The recorded duration of `test`, if any.
    pub fn history(&self, key: &SuiteKey, test: &TestId) -> Result<Option<Duration>, MetaError> {
        let value = self.history.get(&SuiteKey::key(&key.suite, test))?;
        Ok(value.and_then(|v| decode_micros(&v)))
    }

    /// Records a batch of outcomes: `durations` (moving averages, as the planner computed
    /// them) into the history, and `passes` (clean first-attempt passes and skips) into the
    /// cache.
    pub fn record(
        &self,
        key: &SuiteKey,
        durations: &[(TestId, Duration)],
        passes: &[(TestId, CachedPass)],
    ) -> Result<(), MetaError> {
        let mut batch = Batch::new();
        for (test, duration) in durations {
            batch.insert(
                HISTORY,
                SuiteKey::key(&key.suite, test),
                encode_micros(*duration),
            );
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

    #[test]
    fn passes_are_keyed_by_the_prepared_root_and_history_is_not() {
        let store = TestStore::open(Arc::new(MemoryMetaStore::new())).unwrap();
        let test = TestId::new("crate", "t");
        let v1 = SuiteKey::new(b"settings", "root-1");
        let v2 = SuiteKey::new(b"settings", "root-2");
        let other = SuiteKey::new(b"other settings", "root-1");
        store
            .record(
                &v1,
                &[(test.clone(), Duration::from_millis(40))],
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
