//! The audit log: every mutating or privileged call (job submit and cancel, action-cache
//! writes, token create and revoke, agent join and leave) and every denied call, with time,
//! token name, role, peer, instance and object. Kept in the metadata store's `audit` table for
//! the configured retention, read with `tessera audit` (Admin.ReadAudit), and written as a log
//! line (target `tessera::audit`: a JSON line with `--log-format json`) as it happens.
//!
//! Keys are the day (big-endian days since the epoch), then the time in milliseconds and a
//! sequence number, so a read from a time scans only the days since then and the retention
//! sweep removes whole days. Entries become durable with the coordinator's periodic flush
//! (every 10 s), not one by one: a crash may lose the last seconds of entries, never a write
//! of the store itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use tessera_cas::meta::{MetaError, MetadataStore, Table};
use tessera_proto::tessera::v1::AuditEntry;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::Principal;

const TABLE: &str = "audit";
const DAY_MS: i64 = 86_400_000;
/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Most entries one read returns.
pub const MAX_READ: usize = 10_000;

/// One entry to record.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord<'a> {
    /// What was done (`job.submit`, `ac.update`, `denied`, ...).
    pub action: &'a str,
    /// The instance name.
    pub instance: &'a str,
    /// What it was done to.
    pub object: &'a str,
    /// Whether it was allowed.
    pub allowed: bool,
    /// Anything else (a denial's reason).
    pub detail: &'a str,
}

/// The audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    table: Table,
    seq: Arc<AtomicU64>,
    retention: Duration,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

fn key(ms: i64, seq: u64) -> Vec<u8> {
    let day = u32::try_from(ms.div_euclid(DAY_MS)).unwrap_or(0);
    let mut key = Vec::with_capacity(20);
    key.extend_from_slice(&day.to_be_bytes());
    key.extend_from_slice(&u64::try_from(ms).unwrap_or(0).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn day_of(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?))
}

fn entry_ms(entry: &AuditEntry) -> i64 {
    entry
        .time
        .as_ref()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

impl AuditLog {
    /// The log in `meta`, keeping entries for `retention`.
    pub fn open(meta: &Arc<dyn MetadataStore>, retention: Duration) -> Result<Self, MetaError> {
        let table = meta.table(TABLE)?;
        // Continue the sequence after a restart, so entries within one millisecond stay
        // ordered. Only today's entries can share a millisecond with the next one, so only
        // today's day is read, not the whole retention.
        let today = u32::try_from(tessera_proto::time::unix_ms().div_euclid(DAY_MS)).unwrap_or(0);
        let seq = table
            .scan_prefix(&today.to_be_bytes())
            .filter_map(Result::ok)
            .last()
            .and_then(|(k, _)| Some(u64::from_be_bytes(k.get(12..20)?.try_into().ok()?)))
            .map_or(0, |s| s + 1);
        Ok(AuditLog {
            table,
            seq: Arc::new(AtomicU64::new(seq)),
            retention,
        })
    }

    /// Records `record` done by `principal`, now.
    pub fn record(&self, principal: &Principal, record: AuditRecord<'_>) {
        let ms = tessera_proto::time::unix_ms();
        let token = principal.name.as_str();
        let role = if principal.is_anonymous() {
            ""
        } else {
            principal.role.name()
        };
        let peer = principal.peer_name();
        tracing::info!(
            target: "tessera::audit",
            action = record.action,
            token,
            role,
            peer = %peer,
            instance = record.instance,
            object = record.object,
            allowed = record.allowed,
            detail = record.detail,
            "audit"
        );
        let entry = AuditEntry {
            time: Some(prost_types::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
            }),
            action: record.action.to_owned(),
            token: token.to_owned(),
            role: role.to_owned(),
            peer,
            instance: record.instance.to_owned(),
            object: record.object.to_owned(),
            allowed: record.allowed,
            detail: record.detail.to_owned(),
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.table.insert(&key(ms, seq), &entry.encode_to_vec()) {
            tracing::warn!(%error, action = record.action, "failed to write an audit entry");
        }
    }

    /// Records a denied call of `method` and the status it got.
    pub fn denied(&self, principal: &Principal, method: &str, instance: &str, status: &Status) {
        self.record(
            principal,
            AuditRecord {
                action: "denied",
                instance,
                object: method,
                allowed: false,
                detail: &format!("{:?}: {}", status.code(), status.message()),
            },
        );
    }

    /// The newest `limit` entries at or after `since_ms`, oldest first.
    pub fn read(&self, since_ms: i64, limit: usize) -> Result<Vec<AuditEntry>, MetaError> {
        let limit = limit.clamp(1, MAX_READ);
        let first_day = u32::try_from(since_ms.max(0).div_euclid(DAY_MS)).unwrap_or(0);
        let today = u32::try_from(tessera_proto::time::unix_ms().div_euclid(DAY_MS)).unwrap_or(0);
        let first_day = match self.oldest_day()? {
            Some(oldest) => first_day.max(oldest),
            None => return Ok(Vec::new()),
        };
        let mut kept = std::collections::VecDeque::with_capacity(limit.min(1024));
        for day in first_day..=today {
            for item in self.table.scan_prefix(&day.to_be_bytes()) {
                let (_, value) = item?;
                let Ok(entry) = AuditEntry::decode(value.as_slice()) else {
                    continue;
                };
                if entry_ms(&entry) < since_ms {
                    continue;
                }
                if kept.len() == limit {
                    kept.pop_front();
                }
                kept.push_back(entry);
            }
        }
        Ok(kept.into())
    }

    fn oldest_day(&self) -> Result<Option<u32>, MetaError> {
        match self.table.scan_prefix(b"").next() {
            Some(item) => Ok(day_of(&item?.0)),
            None => Ok(None),
        }
    }

    /// Removes the days older than the retention; returns how many entries went.
    pub fn sweep(&self) -> Result<usize, MetaError> {
        let cutoff_ms = tessera_proto::time::unix_ms()
            - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff_day = u32::try_from(cutoff_ms.max(0).div_euclid(DAY_MS)).unwrap_or(0);
        let mut removed = 0;
        while let Some(day) = self.oldest_day()? {
            if day >= cutoff_day {
                break;
            }
            let keys: Vec<Vec<u8>> = self
                .table
                .scan_prefix(&day.to_be_bytes())
                .map(|item| item.map(|(k, _)| k))
                .collect::<Result<_, _>>()?;
            for key in &keys {
                self.table.remove(key)?;
            }
            removed += keys.len();
        }
        Ok(removed)
    }

    /// Sweeps at start and then every hour until `stop`.
    pub async fn sweep_until(self, stop: CancellationToken) {
        loop {
            let log = self.clone();
            match tokio::task::spawn_blocking(move || log.sweep()).await {
                Ok(Ok(0)) | Err(_) => {}
                Ok(Ok(n)) => tracing::info!(removed = n, "audit log: old entries removed"),
                Ok(Err(error)) => tracing::warn!(%error, "audit log sweep failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }

    #[cfg(test)]
    fn insert_at(&self, ms: i64, action: &str) {
        let entry = AuditEntry {
            time: Some(prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: 0,
            }),
            action: action.to_owned(),
            ..AuditEntry::default()
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.table
            .insert(&key(ms, seq), &entry.encode_to_vec())
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;

    use super::*;
    use crate::auth::Role;

    fn principal() -> Principal {
        Principal {
            name: "ci".into(),
            role: Role::Ci,
            instances: vec![],
            token_hash: Some([1; 32]),
            peer: Some("10.0.0.2:5000".parse().unwrap()),
        }
    }

    #[test]
    fn entries_are_read_back_in_order_since_a_time_and_limited() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let log = AuditLog::open(&meta, Duration::from_secs(86_400 * 90)).unwrap();
        let now = tessera_proto::time::unix_ms();
        log.insert_at(now - 3 * DAY_MS, "old");
        for action in ["job.submit", "ac.update", "token.create"] {
            log.record(
                &principal(),
                AuditRecord {
                    action,
                    object: "x",
                    allowed: true,
                    ..Default::default()
                },
            );
        }
        log.denied(&principal(), "/m", "i", &Status::permission_denied("no"));
        let all = log.read(0, 100).unwrap();
        let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            ["old", "job.submit", "ac.update", "token.create", "denied"]
        );
        assert_eq!(all[1].token, "ci");
        assert_eq!(all[1].role, "ci");
        assert_eq!(all[1].peer, "10.0.0.2:5000");
        assert!(!all[4].allowed && all[4].detail.contains("PermissionDenied"));
        assert_eq!(log.read(now - DAY_MS, 100).unwrap().len(), 4);
        let newest = log.read(0, 2).unwrap();
        assert_eq!(newest[1].action, "denied");
        assert_eq!(newest.len(), 2);
        // A reopened log continues the sequence.
        let again = AuditLog::open(&meta, Duration::from_secs(3600)).unwrap();
        assert!(again.seq.load(Ordering::Relaxed) >= 5);
    }

    #[test]
    fn the_sweep_removes_days_past_the_retention() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let log = AuditLog::open(&meta, Duration::from_secs(86_400 * 2)).unwrap();
        let now = tessera_proto::time::unix_ms();
        log.insert_at(now - 10 * DAY_MS, "ancient");
        log.insert_at(now - 5 * DAY_MS, "old");
        log.insert_at(now, "new");
        assert_eq!(log.sweep().unwrap(), 2);
        let left: Vec<_> = log.read(0, 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].action, "new");
    }
}
