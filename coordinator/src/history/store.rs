//! The durable record of finished jobs, in the metadata store, and the reads the dashboard's
//! pages make of it.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `history_jobs` | newest-first order (`u64::MAX - created ms`, big-endian) ++ job id | [`JobRecord`] (JSON) |
//! | `history_job_ids` | job id | its order (8 bytes) |
//! | `history_tests` | job id | its final `TestFinished`s, in the order they were shown (protobuf, length-delimited, one after the other) |
//! | `history_spans` | job id | its [`BatchSpan`]s (JSON) |
//! | `history_runs` | test key (length-prefixed) ++ job order ++ job id (length-prefixed) ++ matrix cell | [`RunRecord`] (JSON) of a result that ran (cached answers are not runs) |
//! | `history_flake` | test key, instance (length-prefixed each) ++ project | the test's [`FlakeWindow`] with its group and name (JSON) |
//!
//! So the jobs list is a scan from the front of `history_jobs` (newest first), a job's tests
//! one read, a test's history one prefix scan (newest first), and the flaky list one scan of
//! the windows (one per test, however many runs). Recording a job whose tests were all
//! answered from the cache is four writes, however many tests it has. A test's *key* is its id as
//! `tessera run` prints it (`group name`, or the name alone).
//!
//! A finished job is recorded in the same batch that removes its record and journal
//! (`jobs/registry.rs`): one commit, and never a job both running and finished. Beyond
//! `keep` jobs, each record removes the oldest job with its tests, spans and runs; flake
//! windows stay (they hold a test's last 64 runs whatever the retention). Writes are
//! serialized by one lock, so two jobs finishing at once never lose a run of a window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use serde::{Deserialize, Serialize};
use tessera_cas::meta::{Batch, MetaError, MetadataStore, Table};
use tessera_proto::names::outcome_name;
use tessera_proto::tessera::v1::{TestFinished, TestOutcome, TestRef};

use super::record::{BatchSpan, FlakeWindow, JobRecord, RunRecord};
use crate::jobs::job::is_failure;
use crate::jobs::registry::owned_by;

const JOBS: &str = "history_jobs";
const IDS: &str = "history_job_ids";
const TESTS: &str = "history_tests";
const SPANS: &str = "history_spans";
const RUNS: &str = "history_runs";
const FLAKE: &str = "history_flake";

/// Longest test key, instance or project kept in a key; longer ones are cut (at a character
/// boundary).
const MAX_KEY_PART: usize = 4096;

/// The id a test is known by in the pages: `group name`, or the name alone (as `tessera run`
/// prints it).
pub fn test_key(test: &TestRef) -> String {
    if test.group.is_empty() {
        test.name.clone()
    } else {
        format!("{} {}", test.group, test.name)
    }
}

/// Which finished jobs a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Jobs of this submitter (its own, or run on someone's behalf: `name/WHO`).
    pub submitter: Option<String>,
    /// Jobs with this label: `key=value`, or `key` for any value.
    pub label: Option<String>,
    /// Jobs with this result (`passed`, `failed`, ...).
    pub result: Option<String>,
    /// Jobs of these REAPI instances only (empty: every instance), the viewer's token scope.
    pub instances: Vec<String>,
}

impl JobFilter {
    /// Whether `job` passes the filter.
    pub fn matches(&self, job: &JobRecord) -> bool {
        self.submitter
            .as_deref()
            .is_none_or(|s| owned_by(&job.submitter, s))
            && self
                .label
                .as_deref()
                .is_none_or(|l| match l.split_once('=') {
                    Some((k, v)) => job.labels.get(k).is_some_and(|have| have == v),
                    None => job.labels.contains_key(l),
                })
            && self.result.as_deref().is_none_or(|r| job.result == r)
            && (self.instances.is_empty() || self.instances.contains(&job.instance))
    }
}

/// One page of the jobs list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<JobRecord>,
    /// The cursor of the next page, when there is one.
    pub next: Option<String>,
}

/// A job's test as recorded: its key and its final event.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRow {
    /// [`test_key`] of the test.
    pub key: String,
    /// Its final result.
    pub event: TestFinished,
}

/// A test's flake window in one project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlakyTest {
    /// [`test_key`].
    pub key: String,
    /// The test's group and name (for quarantine, which keys by them).
    pub group: String,
    /// See `group`.
    pub name: String,
    /// The REAPI instance and project its jobs ran in.
    pub instance: String,
    /// See `instance`.
    pub project: String,
    /// Its last runs.
    pub window: FlakeWindow,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct FlakeValue {
    group: String,
    name: String,
    window: FlakeWindow,
}

/// The history of finished jobs. Cheap to clone.
#[derive(Clone)]
pub struct JobHistory {
    meta: Arc<dyn MetadataStore>,
    jobs: Table,
    ids: Table,
    tests: Table,
    spans: Table,
    runs: Table,
    flake: Table,
    keep: usize,
    /// Every recorded job by (created, id), oldest first: what the next prune removes.
    /// Also the lock that serializes writes.
    kept: Arc<Mutex<BTreeSet<(u64, String)>>>,
}

impl std::fmt::Debug for JobHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHistory")
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

fn order(created_unix_ms: u64) -> [u8; 8] {
    (u64::MAX - created_unix_ms).to_be_bytes()
}

fn cut(text: &str) -> &str {
    if text.len() <= MAX_KEY_PART {
        return text;
    }
    let mut end = MAX_KEY_PART;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn push_part(key: &mut Vec<u8>, part: &str) {
    let part = cut(part);
    key.extend_from_slice(&u16::try_from(part.len()).unwrap_or(u16::MAX).to_be_bytes());
    key.extend_from_slice(part.as_bytes());
}

fn take_part(key: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = key.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes(len.try_into().ok()?));
    let (part, rest) = rest.split_at_checked(len)?;
    Some((std::str::from_utf8(part).ok()?, rest))
}

fn runs_prefix(key: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(key.len() + 2);
    push_part(&mut prefix, key);
    prefix
}

/// A run's key: the test, then its job (newest first), then the matrix cell (a matrix job
/// runs a test once per cell).
fn run_key(test: &str, created: u64, job: &str, cell: &str) -> Vec<u8> {
    let mut key = runs_prefix(test);
    key.extend_from_slice(&order(created));
    push_part(&mut key, job);
    key.extend_from_slice(cut(cell).as_bytes());
    key
}

fn flake_key(test: &str, instance: &str, project: &str) -> Vec<u8> {
    let mut key = runs_prefix(test);
    push_part(&mut key, instance);
    key.extend_from_slice(cut(project).as_bytes());
    key
}

fn job_key(created: u64, id: &str) -> Vec<u8> {
    let mut key = order(created).to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// Whether a final outcome is a run of the test for its flake window: it ran (a cached pass,
/// a cancelled or never-run test is not a run).
fn is_run(event: &TestFinished) -> bool {
    !event.cached
        && !matches!(
            event.outcome(),
            TestOutcome::Cancelled | TestOutcome::Unknown | TestOutcome::Skipped
        )
}

impl JobHistory {
    /// Opens the history's tables in `meta`; at most `keep` jobs are kept (at least one).
    pub fn open(meta: Arc<dyn MetadataStore>, keep: usize) -> Result<Self, MetaError> {
        let ids = meta.table(IDS)?;
        let mut kept = BTreeSet::new();
        for entry in ids.scan_prefix(b"") {
            let (id, value) = entry?;
            let Ok(order) = <[u8; 8]>::try_from(value.as_slice()) else {
                continue;
            };
            let created = u64::MAX - u64::from_be_bytes(order);
            kept.insert((created, String::from_utf8_lossy(&id).into_owned()));
        }
        Ok(JobHistory {
            jobs: meta.table(JOBS)?,
            tests: meta.table(TESTS)?,
            spans: meta.table(SPANS)?,
            runs: meta.table(RUNS)?,
            flake: meta.table(FLAKE)?,
            ids,
            meta,
            keep: keep.max(1),
            kept: Arc::new(Mutex::new(kept)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u64, String)>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records finished job `job` with its final test results and its batches, adding the writes
    /// to `batch`, then applies `batch` (with whatever the caller put in it) in one commit.
    /// Not flushed: the next flush of the store makes it durable.
    pub fn record(
        &self,
        job: &JobRecord,
        tests: &[TestFinished],
        spans: &[BatchSpan],
        mut batch: Batch,
    ) -> Result<(), MetaError> {
        let mut kept = self.lock();
        let created = job.created_unix_ms;
        batch.insert(JOBS, job_key(created, &job.id), json(job));
        batch.insert(IDS, job.id.as_bytes(), order(created));
        batch.insert(SPANS, job.id.as_bytes(), json(&spans));
        let mut windows: BTreeMap<Vec<u8>, FlakeValue> = BTreeMap::new();
        let mut encoded = Vec::with_capacity(tests.iter().map(|t| t.encoded_len() + 3).sum());
        for event in tests {
            // Into a Vec, which grows as needed: encoding cannot fail.
            let _ = event.encode_length_delimited(&mut encoded);
            if event.cached {
                continue;
            }
            let test = event.test.clone().unwrap_or_default();
            let key = test_key(&test);
            let run = RunRecord {
                job: job.id.clone(),
                created_unix_ms: created,
                outcome: outcome_name(event.outcome()).to_owned(),
                duration_us: event
                    .duration
                    .as_ref()
                    .and_then(tessera_proto::time::from_proto_duration)
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                attempts: event.attempt.max(1),
                cached: event.cached,
                agent: event.agent.clone(),
                instance: job.instance.clone(),
                project: job.project.clone(),
                submitter: job.submitter.clone(),
                cell: event.cell.clone(),
                quarantined: event.quarantined,
            };
            batch.insert(
                RUNS,
                run_key(&key, created, &job.id, &event.cell),
                json(&run),
            );
            if is_run(event) {
                let fkey = flake_key(&key, &job.instance, &job.project);
                let value = match windows.remove(&fkey) {
                    Some(value) => value,
                    None => self
                        .flake
                        .get(&fkey)?
                        .and_then(|v| serde_json::from_slice(&v).ok())
                        .unwrap_or_default(),
                };
                let window = value.window.push(
                    event.outcome() == TestOutcome::Flaky,
                    is_failure(event.outcome()),
                    created,
                );
                windows.insert(
                    fkey,
                    FlakeValue {
                        group: test.group,
                        name: test.name,
                        window,
                    },
                );
            }
        }
        batch.insert(TESTS, job.id.as_bytes(), encoded);
        for (key, value) in &windows {
            batch.insert(FLAKE, key.as_slice(), json(value));
        }
        let mut pruned = Vec::new();
        let fresh = !kept.iter().any(|(_, id)| id == &job.id);
        let after = kept.len() + usize::from(fresh);
        for (old_created, old) in kept.iter().take(after.saturating_sub(self.keep)) {
            if old != &job.id {
                self.forget(*old_created, old, &mut batch)?;
                pruned.push((*old_created, old.clone()));
            }
        }
        self.meta.apply_batch(batch)?;
        for old in pruned {
            kept.remove(&old);
        }
        kept.insert((created, job.id.clone()));
        Ok(())
    }

    /// Adds the removal of job `id` (accepted at `created`) to `batch`.
    fn forget(&self, created: u64, id: &str, batch: &mut Batch) -> Result<(), MetaError> {
        batch.remove(JOBS, job_key(created, id));
        batch.remove(IDS, id.as_bytes());
        batch.remove(SPANS, id.as_bytes());
        batch.remove(TESTS, id.as_bytes());
        for event in self.events(id)? {
            if !event.cached {
                let test = test_key(&event.test.unwrap_or_default());
                batch.remove(RUNS, run_key(&test, created, id, &event.cell));
            }
        }
        Ok(())
    }

    /// Whether job `id`, accepted at `created_unix_ms`, is recorded (no read of the store).
    pub fn contains(&self, created_unix_ms: u64, id: &str) -> bool {
        self.lock().contains(&(created_unix_ms, id.to_owned()))
    }

    /// Jobs recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no job is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` finished jobs that pass `filter`, newest first, after the cursor `after`
    /// (a [`JobPage::next`]).
    pub fn jobs(
        &self,
        filter: &JobFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<JobPage, MetaError> {
        let after = after.and_then(|c| hex::decode(c).ok());
        let mut page = JobPage::default();
        for entry in self.jobs.scan_prefix(b"") {
            let (key, value) = entry?;
            if after
                .as_ref()
                .is_some_and(|a| key.as_slice() <= a.as_slice())
            {
                continue;
            }
            let Ok(job) = serde_json::from_slice::<JobRecord>(&value) else {
                continue;
            };
            if !filter.matches(&job) {
                continue;
            }
            if page.jobs.len() == limit {
                page.next = page
                    .jobs
                    .last()
                    .map(|j| hex::encode(job_key(j.created_unix_ms, &j.id)));
                break;
            }
            page.jobs.push(job);
        }
        Ok(page)
    }

    /// Finished job `id`, if it is recorded.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, MetaError> {
        let Some(order) = self.ids.get(id.as_bytes())? else {
            return Ok(None);
        };
        let mut key = order;
        key.extend_from_slice(id.as_bytes());
        Ok(self
            .jobs
            .get(&key)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Job `id`'s final test results, in the order they were shown.
    pub fn tests(&self, id: &str) -> Result<Vec<TestRow>, MetaError> {
        Ok(self
            .events(id)?
            .into_iter()
            .map(|event| TestRow {
                key: test_key(event.test.as_ref().unwrap_or(&TestRef::default())),
                event,
            })
            .collect())
    }

    fn events(&self, id: &str) -> Result<Vec<TestFinished>, MetaError> {
        let Some(value) = self.tests.get(id.as_bytes())? else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        let mut bytes = value.as_slice();
        while !bytes.is_empty() {
            match TestFinished::decode_length_delimited(&mut bytes) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::warn!(%error, job = id, "the rest of a job's recorded tests is undecodable");
                    break;
                }
            }
        }
        Ok(events)
    }

    /// Job `id`'s batches.
    pub fn spans(&self, id: &str) -> Result<Vec<BatchSpan>, MetaError> {
        Ok(self
            .spans
            .get(id.as_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default())
    }

    /// The newest `limit` runs of test `key` across jobs, newest first.
    pub fn runs(&self, key: &str, limit: usize) -> Result<Vec<RunRecord>, MetaError> {
        let mut runs = Vec::new();
        for entry in self.runs.scan_prefix(&runs_prefix(key)).take(limit) {
            let (_, value) = entry?;
            if let Ok(run) = serde_json::from_slice(&value) {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Test `key`'s flake windows, one per instance and project it ran in.
    pub fn flake(&self, key: &str) -> Result<Vec<FlakyTest>, MetaError> {
        self.windows(&runs_prefix(key))
    }

    /// Tests with a flaky run among their last `last` runs, the highest flake rate first (then
    /// the most flaky runs, then the newest); at most `limit`.
    pub fn flaky(&self, last: u32, limit: usize) -> Result<Vec<FlakyTest>, MetaError> {
        let mut tests: Vec<FlakyTest> = self
            .windows(b"")?
            .into_iter()
            .filter(|t| t.window.flaky_in(last).0 > 0)
            .collect();
        tests.sort_by(|a, b| {
            b.window
                .flake_rate(last)
                .total_cmp(&a.window.flake_rate(last))
                .then(b.window.flaky_in(last).0.cmp(&a.window.flaky_in(last).0))
                .then(b.window.last_unix_ms.cmp(&a.window.last_unix_ms))
                .then(a.key.cmp(&b.key))
        });
        tests.truncate(limit);
        Ok(tests)
    }

    fn windows(&self, prefix: &[u8]) -> Result<Vec<FlakyTest>, MetaError> {
        let mut tests = Vec::new();
        for entry in self.flake.scan_prefix(prefix) {
            let (key, value) = entry?;
            let Some((test, rest)) = take_part(&key) else {
                continue;
            };
            let Some((instance, project)) = take_part(rest) else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<FlakeValue>(&value) else {
                continue;
            };
            tests.push(FlakyTest {
                key: test.to_owned(),
                group: value.group,
                name: value.name,
                instance: instance.to_owned(),
                project: String::from_utf8_lossy(project).into_owned(),
                window: value.window,
            });
        }
        Ok(tests)
    }
}

/// A record as stored: serializing these plain structs cannot fail.
fn json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;

    use super::*;

    fn job(id: &str, created: u64, result: &str) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            submitter: "ci/alice".to_owned(),
            project: "p".to_owned(),
            created_unix_ms: created,
            result: result.to_owned(),
            labels: [("branch".to_owned(), "main".to_owned())].into(),
            ..JobRecord::default()
        }
    }

    fn test(group: &str, name: &str, outcome: TestOutcome) -> TestFinished {
        TestFinished {
            test: Some(TestRef {
                group: group.to_owned(),
                name: name.to_owned(),
            }),
            outcome: outcome as i32,
            r#final: true,
            attempt: 1,
            agent: "a1".to_owned(),
            ..TestFinished::default()
        }
    }

    #[test]
    fn jobs_list_newest_first_with_filters_and_pages() {
        let history = JobHistory::open(Arc::new(MemoryMetaStore::new()), 100).unwrap();
        for i in 0..5u64 {
            let result = if i % 2 == 0 { "passed" } else { "failed" };
            let mut record = job(&format!("j{i}"), 1000 + i, result);
            if i == 3 {
                record.submitter = "bob".to_owned();
            }
            history.record(&record, &[], &[], Batch::new()).unwrap();
        }
        let all = history.jobs(&JobFilter::default(), None, 2).unwrap();
        assert_eq!(ids(&all.jobs), ["j4", "j3"]);
        let next = history
            .jobs(&JobFilter::default(), all.next.as_deref(), 2)
            .unwrap();
        assert_eq!(ids(&next.jobs), ["j2", "j1"]);
        let last = history
            .jobs(&JobFilter::default(), next.next.as_deref(), 2)
            .unwrap();
        assert_eq!(ids(&last.jobs), ["j0"]);
        assert_eq!(last.next, None);

        let failed = JobFilter {
            result: Some("failed".to_owned()),
            ..JobFilter::default()
        };
        assert_eq!(
            ids(&history.jobs(&failed, None, 10).unwrap().jobs),
            ["j3", "j1"]
        );
        let alice = JobFilter {
            submitter: Some("ci".to_owned()),
            label: Some("branch=main".to_owned()),
            ..JobFilter::default()
        };
        assert_eq!(
            ids(&history.jobs(&alice, None, 10).unwrap().jobs),
            ["j4", "j2", "j1", "j0"]
        );
        let other_branch = JobFilter {
            label: Some("branch=dev".to_owned()),
            ..JobFilter::default()
        };
        assert!(
            history
                .jobs(&other_branch, None, 10)
                .unwrap()
                .jobs
                .is_empty()
        );
    }

    fn ids(jobs: &[JobRecord]) -> Vec<&str> {
        jobs.iter().map(|j| j.id.as_str()).collect()
    }

    #[test]
    fn a_test_has_its_runs_across_jobs_and_a_flake_window() {
        let history = JobHistory::open(Arc::new(MemoryMetaStore::new()), 100).unwrap();
        let outcomes = [
            TestOutcome::Passed,
            TestOutcome::Flaky,
            TestOutcome::Failed,
            TestOutcome::Passed,
        ];
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let record = job(&format!("j{i}"), 100 + i as u64, "passed");
            let tests = [
                test("tests/a.py", "test_x[1/2]", outcome),
                test("", "steady", TestOutcome::Passed),
            ];
            history.record(&record, &tests, &[], Batch::new()).unwrap();
        }
        let runs = history.runs("tests/a.py test_x[1/2]", 10).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
            ["passed", "failed", "flaky", "passed"],
            "newest first"
        );
        assert_eq!(history.runs("tests/a.py test_x[1/2]", 2).unwrap().len(), 2);
        assert!(
            history.runs("tests/a.py", 10).unwrap().is_empty(),
            "no prefix match"
        );
        let flake = history.flake("tests/a.py test_x[1/2]").unwrap();
        assert_eq!(flake.len(), 1);
        assert_eq!(flake[0].window.flaky_in(10), (1, 4));
        assert_eq!(flake[0].window.failed_in(10), 1);
        assert_eq!(flake[0].name, "test_x[1/2]");
        let flaky = history.flaky(10, 10).unwrap();
        assert_eq!(flaky.len(), 1, "steady is not flaky: {flaky:?}");
        assert_eq!(flaky[0].key, "tests/a.py test_x[1/2]");
        assert!(
            history.flaky(2, 10).unwrap().is_empty(),
            "not in the last 2 runs"
        );

        let tests = history.tests("j1").unwrap();
        assert_eq!(tests.len(), 2);
        assert_eq!(tests[0].key, "tests/a.py test_x[1/2]");
        assert_eq!(tests[0].event.outcome(), TestOutcome::Flaky);
        assert_eq!(history.job("j1").unwrap().unwrap().id, "j1");
        assert_eq!(history.job("nope").unwrap(), None);
    }

    #[test]
    fn the_oldest_jobs_are_pruned_with_their_tests_and_runs() {
        let meta = Arc::new(MemoryMetaStore::new());
        let history = JobHistory::open(meta.clone(), 2).unwrap();
        for i in 0..3u64 {
            let tests = [test("", "t", TestOutcome::Passed)];
            let spans = [BatchSpan {
                agent: "a".into(),
                tests: 1,
                ..BatchSpan::default()
            }];
            history
                .record(
                    &job(&format!("j{i}"), 10 + i, "passed"),
                    &tests,
                    &spans,
                    Batch::new(),
                )
                .unwrap();
        }
        assert_eq!(history.len(), 2);
        assert_eq!(history.job("j0").unwrap(), None);
        assert!(history.tests("j0").unwrap().is_empty());
        assert!(history.spans("j0").unwrap().is_empty());
        assert_eq!(history.spans("j2").unwrap().len(), 1);
        assert_eq!(history.runs("t", 10).unwrap().len(), 2);
        // The flake window keeps all three runs.
        assert_eq!(history.flake("t").unwrap()[0].window.runs, 3);
        // Reopened, it still knows what to prune next.
        let reopened = JobHistory::open(meta, 2).unwrap();
        assert_eq!(reopened.len(), 2);
        reopened
            .record(&job("j3", 13, "passed"), &[], &[], Batch::new())
            .unwrap();
        assert_eq!(reopened.job("j1").unwrap(), None);
        assert!(reopened.job("j3").unwrap().is_some());
    }

    #[test]
    fn cached_answers_are_listed_with_their_job_but_are_not_runs() {
        let history = JobHistory::open(Arc::new(MemoryMetaStore::new()), 10).unwrap();
        let mut cached = test("", "c", TestOutcome::Passed);
        cached.cached = true;
        cached.agent.clear();
        let ran = test("", "r", TestOutcome::Flaky);
        history
            .record(&job("j", 1, "passed"), &[cached, ran], &[], Batch::new())
            .unwrap();
        let tests = history.tests("j").unwrap();
        assert_eq!(
            tests
                .iter()
                .map(|t| (t.key.as_str(), t.event.cached))
                .collect::<Vec<_>>(),
            [("c", true), ("r", false)],
            "in the order they were shown"
        );
        assert!(history.runs("c", 10).unwrap().is_empty());
        assert!(history.flake("c").unwrap().is_empty());
        assert_eq!(history.runs("r", 10).unwrap().len(), 1);
    }

    #[test]
    fn a_matrix_job_has_a_run_per_cell() {
        let meta = Arc::new(MemoryMetaStore::new());
        let history = JobHistory::open(meta.clone(), 1).unwrap();
        let in_cell = |cell: &str| TestFinished {
            cell: cell.to_owned(),
            ..test("", "t", TestOutcome::Passed)
        };
        history
            .record(
                &job("j", 1, "passed"),
                &[in_cell("PY=3.11"), in_cell("PY=3.12")],
                &[],
                Batch::new(),
            )
            .unwrap();
        let cells: Vec<String> = history
            .runs("t", 10)
            .unwrap()
            .into_iter()
            .map(|r| r.cell)
            .collect();
        assert_eq!(cells, ["PY=3.11", "PY=3.12"]);
        // Pruned with its job, every cell's run.
        history
            .record(&job("k", 2, "passed"), &[], &[], Batch::new())
            .unwrap();
        assert!(history.runs("t", 10).unwrap().is_empty());
    }

    #[test]
    fn recording_a_job_again_replaces_it() {
        let history = JobHistory::open(Arc::new(MemoryMetaStore::new()), 10).unwrap();
        history
            .record(&job("j", 1, "failed"), &[], &[], Batch::new())
            .unwrap();
        history
            .record(&job("j", 1, "passed"), &[], &[], Batch::new())
            .unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history.job("j").unwrap().unwrap().result, "passed");
    }
}
