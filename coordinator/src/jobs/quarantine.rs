//! Flaky-test quarantine: which tests of a project are quarantined, by whom and why, and the
//! flake policy that quarantines a test by itself. A quarantined test still runs and reports
//! its true outcome; only the job's result ignores its failure (`tally.rs`).
//!
//! - **Entries** (table `quarantine`): key = the instance, the project (`JobSpec.project`,
//!   the identity `tessera run` computes from the checkout), each length-prefixed, then the
//!   test's group, a 0 byte and its name (the runners' [`TestId`]); value = the
//!   `tessera.v1.QuarantineEntry` (who, since when, why). A test is quarantined for its
//!   project, not for one suite: across matrix cells and runner settings, laptops and CI
//!   alike. A job that names no project (a client older than the field) has no quarantine.
//! - **Flake window** (table `quarantine_window`, same key): the test's last runs, one bit
//!   each (1: flaky), newest in bit 0, and how many runs it holds (at most 64). Kept here,
//!   not in the duration history (`results.rs`): that history is scoped per cell and runner
//!   settings, while a quarantine holds for the project, and a flake needs one bit where a
//!   duration needs eight bytes. Written only while the policy is on. A run is a test's final
//!   outcome in one cell of one job; cached passes and cancelled tests are not runs.
//!
//! The policy ([`FlakePolicy`]): a test whose flaky runs among its last `runs`, divided by
//! `runs`, is above `flake_rate` is quarantined, and the audit log says the rule did it. A
//! test with fewer recorded runs counts the missing ones as clean, so one unlucky first run
//! does not quarantine it. Removing a quarantine clears the test's window: it starts afresh
//! instead of being quarantined again by its next flake.
//!
//! A job reads its project's quarantine once, when it starts: a quarantine added while it
//! runs applies from the next job. Two jobs recording the same test at once may lose one
//! run of its window, as with the duration history.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;
use tessera_cas::meta::{Batch, MetaError, MetadataStore, Table};
use tessera_proto::tessera::v1::{QuarantineEntry, TestRef};
use tessera_runners::TestId;

use crate::auth::{AuditLog, AuditRecord, Principal, Role};

const ENTRIES: &str = "quarantine";
const WINDOW: &str = "quarantine_window";

/// Longest project, test group, test name or reason (the job's project has the same limit).
pub const MAX_PART_BYTES: usize = 4096;

/// The most runs a flake window holds (one bit each in a `u64`).
pub const MAX_WINDOW_RUNS: u32 = 64;

/// The automatic quarantine rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlakePolicy {
    /// A test flaky in more than this share of its last `runs` runs is quarantined.
    pub flake_rate: f64,
    /// Runs the rate is taken over, 1 to [`MAX_WINDOW_RUNS`].
    pub runs: u32,
}

impl FlakePolicy {
    /// The rule's name in the audit log and in the entries it makes (`by`).
    pub fn name(&self) -> String {
        format!(
            "policy:flake_rate>{} over {} runs",
            self.flake_rate, self.runs
        )
    }

    /// Whether `window` breaks the rule; if so, the observation (the entry's reason).
    fn judge(&self, window: Window) -> Option<String> {
        let runs = self.runs.min(MAX_WINDOW_RUNS);
        let flaky = window.flaky_in(runs);
        (f64::from(flaky) / f64::from(runs) > self.flake_rate)
            .then(|| format!("flaky in {flaky} of the last {runs} runs"))
    }
}

/// Where one quarantine applies: an instance, a project, a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineKey {
    /// The REAPI instance name.
    pub instance: String,
    /// The project identity (`JobSpec.project`).
    pub project: String,
    /// The test.
    pub test: TestId,
}

impl QuarantineKey {
    fn encode(&self) -> Vec<u8> {
        let mut key = project_prefix(&self.instance, &self.project);
        key.extend_from_slice(self.test.group.as_bytes());
        key.push(0);
        key.extend_from_slice(self.test.name.as_bytes());
        key
    }
}

/// Why the store refused a change.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// A quarantine needs a project.
    #[error("a quarantine needs a project (the checkout's identity, `JobSpec.project`)")]
    NoProject,
    /// A quarantine needs a test name.
    #[error("a quarantine needs a test name")]
    NoTest,
    /// A part of the request is longer than the store keeps.
    #[error("{field} is {len} bytes; at most {MAX_PART_BYTES}")]
    TooLong {
        /// Which part.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// Remove of a test that is not quarantined.
    #[error("test {test} is not quarantined in project {project:?}")]
    NotQuarantined {
        /// The project.
        project: String,
        /// The test.
        test: TestId,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

fn part(key: &mut Vec<u8>, part: &str) {
    key.extend_from_slice(&(part.len() as u64).to_le_bytes());
    key.extend_from_slice(part.as_bytes());
}

fn project_prefix(instance: &str, project: &str) -> Vec<u8> {
    let mut key = Vec::new();
    part(&mut key, instance);
    part(&mut key, project);
    key
}

/// A test's last runs: bit `i` is the run `i` runs ago (1: flaky); `len` runs recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    bits: u64,
    len: u8,
}

impl Window {
    fn decode(value: &[u8]) -> Option<Self> {
        let (len, bits) = value.split_first()?;
        Some(Window {
            bits: u64::from_le_bytes(bits.try_into().ok()?),
            len: *len,
        })
    }

    fn encode(self) -> Vec<u8> {
        let mut value = vec![self.len];
        value.extend_from_slice(&self.bits.to_le_bytes());
        value
    }

    fn push(self, flaky: bool) -> Self {
        Window {
            bits: (self.bits << 1) | u64::from(flaky),
            len: self.len.saturating_add(1).min(MAX_WINDOW_RUNS as u8),
        }
    }

    /// Flaky runs among the last `runs`.
    fn flaky_in(self, runs: u32) -> u32 {
        let mask = if runs >= 64 {
            u64::MAX
        } else {
            (1u64 << runs) - 1
        };
        (self.bits & mask).count_ones()
    }
}

/// The quarantine entries and flake windows. Cheap to clone.
#[derive(Clone)]
pub struct QuarantineStore {
    meta: Arc<dyn MetadataStore>,
    entries: Table,
    window: Table,
    policy: Option<FlakePolicy>,
    audit: AuditLog,
}

impl std::fmt::Debug for QuarantineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuarantineStore")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl QuarantineStore {
    /// Opens the tables in `meta`; `policy` quarantines flaky tests by itself (`None`: off);
    /// every change is recorded in `audit`.
    pub fn open(
        meta: Arc<dyn MetadataStore>,
        policy: Option<FlakePolicy>,
        audit: AuditLog,
    ) -> Result<Self, MetaError> {
        Ok(QuarantineStore {
            entries: meta.table(ENTRIES)?,
            window: meta.table(WINDOW)?,
            meta,
            policy,
            audit,
        })
    }

    /// The policy, if it is on.
    pub fn policy(&self) -> Option<FlakePolicy> {
        self.policy
    }

    /// Quarantines `key` by `principal` (a caller of the Quarantine service), with `reason`;
    /// records it in the audit log. Quarantining a test again replaces its entry.
    pub fn add(
        &self,
        principal: &Principal,
        key: &QuarantineKey,
        reason: &str,
    ) -> Result<QuarantineEntry, QuarantineError> {
        check(key, reason)?;
        let entry = entry(key, &principal.name, reason);
        self.entries.insert(&key.encode(), &entry.encode_to_vec())?;
        self.audit
            .record(principal, audit_record("quarantine.add", key, reason));
        Ok(entry)
    }

    /// Ends the quarantine of `key` (and clears its flake window); records it in the audit
    /// log. The entry that was removed.
    pub fn remove(
        &self,
        principal: &Principal,
        key: &QuarantineKey,
    ) -> Result<QuarantineEntry, QuarantineError> {
        check(key, "")?;
        let encoded = key.encode();
        let old = self
            .entries
            .get(&encoded)?
            .and_then(|v| QuarantineEntry::decode(v.as_slice()).ok())
            .ok_or_else(|| QuarantineError::NotQuarantined {
                project: key.project.clone(),
                test: key.test.clone(),
            })?;
        let mut batch = Batch::new();
        batch.remove(ENTRIES, encoded.clone());
        batch.remove(WINDOW, encoded);
        self.meta.apply_batch(batch)?;
        self.audit
            .record(principal, audit_record("quarantine.remove", key, ""));
        Ok(old)
    }

    /// The entries of `project` on `instance` (every project's if `project` is empty), by
    /// project, then test.
    pub fn list(&self, instance: &str, project: &str) -> Result<Vec<QuarantineEntry>, MetaError> {
        let prefix = if project.is_empty() {
            let mut key = Vec::new();
            part(&mut key, instance);
            key
        } else {
            project_prefix(instance, project)
        };
        let mut entries = Vec::new();
        for item in self.entries.scan_prefix(&prefix) {
            let (_, value) = item?;
            if let Ok(entry) = QuarantineEntry::decode(value.as_slice()) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// The quarantined tests of `project` on `instance` (none for an empty project).
    pub fn quarantined(&self, instance: &str, project: &str) -> Result<Quarantined, MetaError> {
        if project.is_empty() {
            return Ok(Quarantined::default());
        }
        let tests = self
            .list(instance, project)?
            .into_iter()
            .filter_map(|e| e.test)
            .map(|t| TestId::new(t.group, t.name))
            .collect();
        Ok(Quarantined { tests })
    }

    /// Records one run of each test in `runs` (`true`: it was flaky) for `project` on
    /// `instance`, and quarantines those the policy finds too flaky (returned, each recorded
    /// in the audit log as done by the rule). Nothing while the policy is off, or for a job
    /// with no project.
    pub fn observe(
        &self,
        instance: &str,
        project: &str,
        runs: &[(TestId, bool)],
    ) -> Result<Vec<QuarantineEntry>, MetaError> {
        let Some(policy) = self.policy else {
            return Ok(Vec::new());
        };
        if project.is_empty() || runs.is_empty() {
            return Ok(Vec::new());
        }
        let rule = Principal {
            name: policy.name(),
            role: Role::Admin,
            instances: Vec::new(),
            token_hash: None,
            peer: None,
        };
        let mut batch = Batch::new();
        let mut added = Vec::new();
        for (test, flaky) in runs {
            let key = QuarantineKey {
                instance: instance.to_owned(),
                project: project.to_owned(),
                test: test.clone(),
            };
            let encoded = key.encode();
            let old = self.window.get(&encoded)?.and_then(|v| Window::decode(&v));
            let window = old.unwrap_or_default().push(*flaky);
            batch.insert(WINDOW, encoded.clone(), window.encode());
            if !*flaky || self.entries.get(&encoded)?.is_some() {
                continue;
            }
            if let Some(reason) = policy.judge(window) {
                let entry = entry(&key, &rule.name, &reason);
                batch.insert(ENTRIES, encoded, entry.encode_to_vec());
                added.push((key, entry));
            }
        }
        self.meta.apply_batch(batch)?;
        for (key, entry) in &added {
            self.audit
                .record(&rule, audit_record("quarantine.add", key, &entry.reason));
            tracing::info!(project = %key.project, test = %key.test, reason = %entry.reason, "quarantined a flaky test");
        }
        Ok(added.into_iter().map(|(_, entry)| entry).collect())
    }
}

/// The tests a job treats as quarantined: its project's, read when it started.
#[derive(Debug, Clone, Default)]
pub struct Quarantined {
    tests: HashSet<TestId>,
}

impl Quarantined {
    /// Whether `test` is quarantined.
    pub fn contains(&self, test: &TestId) -> bool {
        self.tests.contains(test)
    }
}

fn check(key: &QuarantineKey, reason: &str) -> Result<(), QuarantineError> {
    for (field, text) in [
        ("the project", key.project.as_str()),
        ("the test group", &key.test.group),
        ("the test name", &key.test.name),
        ("the reason", reason),
    ] {
        if text.len() > MAX_PART_BYTES {
            return Err(QuarantineError::TooLong {
                field,
                len: text.len(),
            });
        }
    }
    if key.project.is_empty() {
        return Err(QuarantineError::NoProject);
    }
    if key.test.name.is_empty() {
        return Err(QuarantineError::NoTest);
    }
    Ok(())
}

fn entry(key: &QuarantineKey, by: &str, reason: &str) -> QuarantineEntry {
    let ms = tessera_proto::time::unix_ms();
    QuarantineEntry {
        instance_name: key.instance.clone(),
        project: key.project.clone(),
        test: Some(TestRef {
            group: key.test.group.clone(),
            name: key.test.name.clone(),
        }),
        by: by.to_owned(),
        since: Some(prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
        }),
        reason: reason.to_owned(),
    }
}

fn audit_record<'a>(action: &'a str, key: &'a QuarantineKey, detail: &'a str) -> AuditRecord<'a> {
    AuditRecord {
        action,
        instance: &key.instance,
        object: &key.project,
        allowed: true,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tessera_cas::meta::MemoryMetaStore;

    use super::*;

    fn store(policy: Option<FlakePolicy>) -> (QuarantineStore, AuditLog) {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let audit = AuditLog::open(&meta, Duration::from_secs(86_400)).unwrap();
        (
            QuarantineStore::open(meta, policy, audit.clone()).unwrap(),
            audit,
        )
    }

    fn key(project: &str, group: &str, name: &str) -> QuarantineKey {
        QuarantineKey {
            instance: String::new(),
            project: project.to_owned(),
            test: TestId::new(group, name),
        }
    }

    fn admin(name: &str) -> Principal {
        Principal {
            name: name.to_owned(),
            token_hash: Some([1; 32]),
            ..Principal::anonymous(None)
        }
    }

    #[test]
    fn a_quarantine_holds_for_its_project_only_and_is_audited() {
        let (store, audit) = store(None);
        let entry = store
            .add(
                &admin("ci-main"),
                &key("acme/widget", "g", "t"),
                "flaky on arm",
            )
            .unwrap();
        assert_eq!(
            (entry.by.as_str(), entry.reason.as_str()),
            ("ci-main", "flaky on arm")
        );
        store
            .add(&admin("ops"), &key("acme/gadget", "g", "t"), "")
            .unwrap();
        let widget = store.quarantined("", "acme/widget").unwrap();
        assert!(widget.contains(&TestId::new("g", "t")));
        assert!(!widget.contains(&TestId::new("g", "u")));
        // A project whose name is a prefix of another's is not that project.
        assert!(
            !store
                .quarantined("", "acme/widg")
                .unwrap()
                .contains(&TestId::new("g", "t"))
        );
        assert!(
            !store
                .quarantined("other", "acme/widget")
                .unwrap()
                .contains(&TestId::new("g", "t"))
        );
        assert!(store.quarantined("", "").unwrap().tests.is_empty());
        assert_eq!(store.list("", "").unwrap().len(), 2);

        let removed = store
            .remove(&admin("ops"), &key("acme/widget", "g", "t"))
            .unwrap();
        assert_eq!(removed.reason, "flaky on arm");
        assert!(matches!(
            store.remove(&admin("ops"), &key("acme/widget", "g", "t")),
            Err(QuarantineError::NotQuarantined { .. })
        ));
        assert!(matches!(
            store.add(&admin("ops"), &key("", "g", "t"), ""),
            Err(QuarantineError::NoProject)
        ));
        let actions: Vec<(String, String)> = audit
            .read(0, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.token))
            .collect();
        assert_eq!(
            actions,
            [
                ("quarantine.add".to_owned(), "ci-main".to_owned()),
                ("quarantine.add".to_owned(), "ops".to_owned()),
                ("quarantine.remove".to_owned(), "ops".to_owned()),
            ]
        );
    }

    #[test]
    fn the_policy_quarantines_a_test_flaky_above_the_rate_and_says_so() {
        let policy = FlakePolicy {
            flake_rate: 0.3,
            runs: 10,
        };
        let (store, audit) = store(Some(policy));
        let t = TestId::new("g", "t");
        // 3 flaky of 10 is not above 0.3; clean runs never quarantine.
        for flaky in [true, false, true, false, true] {
            assert!(
                store
                    .observe("", "p", &[(t.clone(), flaky)])
                    .unwrap()
                    .is_empty()
            );
        }
        let added = store.observe("", "p", &[(t.clone(), true)]).unwrap();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].reason, "flaky in 4 of the last 10 runs");
        assert_eq!(added[0].by, policy.name());
        assert!(store.quarantined("", "p").unwrap().contains(&t));
        // Already quarantined: not again.
        assert!(
            store
                .observe("", "p", &[(t.clone(), true)])
                .unwrap()
                .is_empty()
        );
        let entries = audit.read(0, 100).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].token, policy.name());

        // Removing it clears its window: the next flake does not quarantine it again.
        store.remove(&admin("ops"), &key("p", "g", "t")).unwrap();
        assert!(
            store
                .observe("", "p", &[(t.clone(), true)])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_window_keeps_the_last_runs() {
        let mut window = Window::default();
        for _ in 0..70 {
            window = window.push(true);
        }
        window = window.push(false);
        assert_eq!(window.len, 64);
        assert_eq!(window.flaky_in(1), 0);
        assert_eq!(window.flaky_in(5), 4);
        assert_eq!(window.flaky_in(64), 63);
        assert_eq!(Window::decode(&window.encode()), Some(window));
        // Off: nothing is recorded.
        let (store, _) = store(None);
        assert!(
            store
                .observe("", "p", &[(TestId::new("g", "t"), true)])
                .unwrap()
                .is_empty()
        );
        assert!(store.window.scan_prefix(b"").next().is_none());
    }
}
