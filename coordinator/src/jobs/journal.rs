//! The durable part of each job's event log, so that what a client has seen survives a crash
//! of the coordinator and is never numbered again (DESIGN.md §5.5, §6).
//!
//! The rule, kept by [`Job`](super::job::Job): **an event is shown to watchers only once
//! nothing it says can be lost**.
//!
//! | event | kept here | shown when |
//! | --- | --- | --- |
//! | a test's final result (run, cached or not run) | yes, with its seq (table `job_events`) | a flush after its write has returned |
//! | anything else (phases, plan, progress, retries, logs, the finished event) | no, only its number | its seq is at or below the job's durable *ceiling* (table `job_seqs`), and every event before it is shown |
//!
//! The ceiling is raised a block of [`SEQ_BLOCK`] numbers at a time, with the final results
//! being written anyway, so keeping numbers costs one flush per block, not one per event.
//!
//! After a restart, a resumed job gets back its final results with their numbers, and numbers
//! its new events from above the ceiling. Each result names its matrix cell
//! (`TestFinished.cell`), and the job keeps them by cell and test, so a restart of a matrix
//! job never takes one cell's result for another's. So every number a client saw before the crash still
//! names the same event, a client that re-attaches after the last number it saw misses no
//! final result, and no test a client saw finish is run or reported again (the driver counts
//! the restored results and does not run those tests).
//!
//! While the metadata store refuses writes (a full disk), events are shown without waiting,
//! as DESIGN.md §3 promises results reach the client on a full disk; what could not be written
//! is written with the next events. A crash in that window may report a test again after the
//! restart; clients keep the first final result of each test (`cli/src/report/tally.rs`).
//!
//! Not here: when a job is forgotten (the registry removes its record and its journal in one
//! batch), what the events mean (the driver).

use std::sync::Arc;

use futures::future::BoxFuture;
use prost::Message;
use tessera_cas::meta::{Batch, MetaError, MetadataStore, Table};
use tessera_proto::tessera::v1::JobEvent;

/// Table of final test events: job id, `/`, seq (big-endian) → `JobEvent`.
const EVENTS: &str = "job_events";
/// Table of durable ceilings: job id → the highest seq the job may have shown (big-endian).
const SEQS: &str = "job_seqs";

/// How many sequence numbers one write of the ceiling reserves.
pub(super) const SEQ_BLOCK: u64 = 1024;

/// What a job had made durable before the coordinator stopped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Restored {
    /// Its final test events, by seq.
    pub events: Vec<JobEvent>,
    /// No event it showed had a higher seq.
    pub ceiling: u64,
}

/// The two tables every job's durable events live in.
#[derive(Clone)]
pub struct Journal {
    meta: Arc<dyn MetadataStore>,
    events: Table,
    seqs: Table,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

/// Whether `key` of journal table `table` belongs to job `job` (for backups, which leave out a
/// job with its journal).
pub(crate) fn journal_key_of(table: &str, key: &[u8], job: &str) -> bool {
    match table {
        EVENTS => key.starts_with(&prefix(job)),
        SEQS => key == job.as_bytes(),
        _ => false,
    }
}

fn prefix(job: &str) -> Vec<u8> {
    let mut key = job.as_bytes().to_vec();
    key.push(b'/');
    key
}

fn event_key(job: &str, seq: u64) -> Vec<u8> {
    let mut key = prefix(job);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl Journal {
    /// Opens (or creates) the journal's tables in `meta`.
    pub fn open(meta: Arc<dyn MetadataStore>) -> Result<Self, MetaError> {
        Ok(Journal {
            events: meta.table(EVENTS)?,
            seqs: meta.table(SEQS)?,
            meta,
        })
    }

    /// What job `job` made durable; nothing for a job never journaled. An undecodable event is
    /// skipped with a warning (its test runs again).
    pub fn load(&self, job: &str) -> Result<Restored, MetaError> {
        let mut restored = Restored::default();
        for entry in self.events.scan_prefix(&prefix(job)) {
            let (key, value) = entry?;
            match JobEvent::decode(value.as_slice()) {
                Ok(event) => restored.events.push(event),
                Err(error) => {
                    tracing::warn!(%error, job, key = ?key, "skipping an undecodable job event");
                }
            }
        }
        restored.events.sort_by_key(|e| e.seq);
        restored.ceiling = self
            .seqs
            .get(job.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(restored)
    }

    /// Writes `events` of job `job` and, if given, its new `ceiling`, in one atomic batch;
    /// durable once a later [`flush`](Self::flush) returns.
    pub fn write(
        &self,
        job: &str,
        events: &[JobEvent],
        ceiling: Option<u64>,
    ) -> Result<(), MetaError> {
        let mut batch = Batch::new();
        for event in events {
            batch.insert(EVENTS, event_key(job, event.seq), event.encode_to_vec());
        }
        if let Some(ceiling) = ceiling {
            batch.insert(SEQS, job.as_bytes(), ceiling.to_be_bytes());
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.meta.apply_batch(batch)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> BoxFuture<'static, Result<(), MetaError>> {
        self.meta.flush_async()
    }

    /// Adds the removal of everything job `job` journaled to `batch`.
    pub fn forget(&self, job: &str, batch: &mut Batch) -> Result<(), MetaError> {
        for entry in self.events.scan_prefix(&prefix(job)) {
            let (key, _) = entry?;
            batch.remove(EVENTS, key);
        }
        batch.remove(SEQS, job.as_bytes());
        Ok(())
    }

    /// Ids of the jobs that have a journal.
    pub fn jobs(&self) -> Result<Vec<String>, MetaError> {
        self.seqs
            .scan_prefix(b"")
            .map(|entry| entry.map(|(key, _)| String::from_utf8_lossy(&key).into_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;
    use tessera_proto::tessera::v1::{TestFinished, job_event::Kind};

    use super::*;

    fn final_event(seq: u64, name: &str) -> JobEvent {
        JobEvent {
            seq,
            elapsed_ms: seq * 10,
            kind: Some(Kind::Test(TestFinished {
                r#final: true,
                test: Some(tessera_proto::tessera::v1::TestRef {
                    group: String::new(),
                    name: name.to_owned(),
                }),
                ..TestFinished::default()
            })),
        }
    }

    #[test]
    fn a_job_gets_back_its_events_and_ceiling_and_forgetting_removes_only_its_own() {
        let meta = Arc::new(MemoryMetaStore::new());
        let journal = Journal::open(meta.clone()).unwrap();
        assert_eq!(journal.load("a").unwrap(), Restored::default());
        // Written out of order, across two writes; the ceiling is raised by the second.
        journal
            .write("a", &[final_event(300, "late")], Some(1024))
            .unwrap();
        journal
            .write("a", &[final_event(7, "early")], Some(2048))
            .unwrap();
        // A job whose id starts with the other's is a different job.
        journal.write("ab", &[final_event(1, "x")], None).unwrap();
        let restored = journal.load("a").unwrap();
        assert_eq!(
            restored.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [7, 300]
        );
        assert_eq!(restored.ceiling, 2048);
        assert_eq!(journal.jobs().unwrap(), ["a"]);

        let mut batch = Batch::new();
        journal.forget("a", &mut batch).unwrap();
        meta.apply_batch(batch).unwrap();
        assert_eq!(journal.load("a").unwrap(), Restored::default());
        assert_eq!(journal.load("ab").unwrap().events.len(), 1);
    }
}
