//! The build log: Bazel (REAPI client) invocations and their actions, for the dashboard's
//! `/builds` pages.
//!
//! An invocation is the REAPI `RequestMetadata.correlated_invocations_id` (the build), or the
//! `tool_invocation_id` when the client sends no build id. An action is one
//! `RequestMetadata.action_id` (the action digest when the client sends none) within an
//! invocation: a GetActionResult miss followed by an Execute of the same action is one action,
//! executed. The REAPI services call [`BuildLog::record`]; the dashboard reads with
//! [`BuildLog::list`] and [`BuildLog::invocation`]. This module owns the two tables and the
//! writer task; it does not decide what the REAPI services answer.
//!
//! Writes stay off the REAPI hot path: `record` puts the action on a bounded channel and
//! returns. One writer task (owned by whoever called [`BuildLog::start`]) merges what
//! arrived into the tables with one `apply_batch` per round. A full channel drops the record
//! (counted by [`BuildLog::dropped`]) rather than slow a build. The writer never flushes: this
//! is display data, made durable by the coordinator's periodic checkpoint, so a crash may lose
//! the last seconds of it (never a write of the store itself).
//!
//! Tables (keys are bytes; numbers big-endian so they sort):
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `build_invocations` | `o` ‖ `u64::MAX - started_ms` ‖ id | [`InvocationSummary`] (JSON) |
//! | `build_invocations` | `i` ‖ id | `started_ms` (locates the `o` entry) |
//! | `build_actions` | `u16 len(id)` ‖ id ‖ action key | [`ActionRow`] (JSON) |
//!
//! So newest first is a scan of prefix `o`, and one invocation's actions a scan of its
//! length-prefixed id. At most `keep` invocations are kept; the oldest (by start) are pruned
//! with their actions. Every string stored is cut to [`MAX_FIELD_BYTES`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tessera_cas::meta::{Batch, MetaError, MetadataStore, Table};
use tessera_proto::reapi::{ExecutedActionMetadata, RequestMetadata};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const INVOCATIONS: &str = "build_invocations";
const ACTIONS: &str = "build_actions";
/// Invocations kept by default.
pub const DEFAULT_KEEP: usize = 1_000;
/// Longest id, tool name, mnemonic, target id or digest stored, in bytes; longer ones are cut.
pub const MAX_FIELD_BYTES: usize = 256;
/// Records waiting for the writer before `record` starts dropping them.
const CHANNEL_CAPACITY: usize = 8_192;
/// Most records merged in one round (one `apply_batch`).
const MAX_ROUND: usize = 1_024;
/// Actions shown in an invocation's slowest list.
const SLOWEST: usize = 10;

/// Why the build log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BuildLogError {
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A stored entry is not what this version writes (a bug, or a damaged store).
    #[error("undecodable entry {key} in table {table}")]
    Undecodable {
        /// The table.
        table: &'static str,
        /// The key, in hex.
        key: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionKind {
    /// GetActionResult found a result.
    CacheHit,
    /// GetActionResult found none (the client then executes it, locally or with Execute).
    CacheMiss,
    /// Execute finished.
    Executed {
        /// Execute was answered from the action cache, nothing ran.
        cached: bool,
        /// The command's exit code.
        exit_code: i32,
        /// Time the command ran on the agent, from `ExecutedActionMetadata` (0 when absent).
        duration_ms: u64,
        /// The agent (`ExecutedActionMetadata.worker`), empty when unknown.
        agent: String,
    },
}

impl ActionKind {
    /// The outcome of an Execute whose result is `result` (`cached`: answered from cache).
    pub fn executed(
        cached: bool,
        exit_code: i32,
        metadata: Option<&ExecutedActionMetadata>,
    ) -> Self {
        let (duration_ms, agent) = metadata.map_or((0, String::new()), |m| {
            let duration = span_ms(
                m.execution_start_timestamp.as_ref(),
                m.execution_completed_timestamp.as_ref(),
            )
            .or_else(|| {
                span_ms(
                    m.worker_start_timestamp.as_ref(),
                    m.worker_completed_timestamp.as_ref(),
                )
            });
            (duration.unwrap_or(0), m.worker.clone())
        });
        ActionKind::Executed {
            cached,
            exit_code,
            duration_ms,
            agent,
        }
    }

    /// Served from the cache, by GetActionResult or by Execute.
    fn is_hit(&self) -> bool {
        matches!(
            self,
            ActionKind::CacheHit | ActionKind::Executed { cached: true, .. }
        )
    }

    /// Ran on an agent for this invocation.
    fn is_run(&self) -> bool {
        matches!(self, ActionKind::Executed { cached: false, .. })
    }

    fn is_failure(&self) -> bool {
        matches!(self, ActionKind::Executed { exit_code, .. } if *exit_code != 0)
    }

    fn duration_ms(&self) -> u64 {
        match self {
            ActionKind::Executed { duration_ms, .. } => *duration_ms,
            _ => 0,
        }
    }
}

fn span_ms(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Option<u64> {
    // Timestamps come from agents and from results clients upload: no arithmetic may overflow.
    let ms = |t: &prost_types::Timestamp| {
        t.seconds
            .checked_mul(1000)?
            .checked_add(i64::from(t.nanos / 1_000_000))
    };
    let span = ms(end?)?.checked_sub(ms(start?)?)?;
    u64::try_from(span).ok()
}

/// One event of one action, as the REAPI services see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// The action digest, `hash/size`.
    pub action_digest: String,
    /// What happened.
    pub kind: ActionKind,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// One invocation, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationSummary {
    /// The invocation id (correlated invocations id, else tool invocation id).
    pub id: String,
    /// The client: `ToolDetails` name and version (`bazel 4.2.3`), empty when not sent.
    pub tool: String,
    /// The first `tool_invocation_id` seen: for Bazel, the command's id, which it prints as
    /// `Invocation ID:` (while `id` is its build request id, which it does not print).
    pub tool_invocation_id: String,
    /// First record, ms since the epoch.
    pub started_unix_ms: u64,
    /// Latest record, ms since the epoch.
    pub last_unix_ms: u64,
    /// Distinct actions.
    pub actions: u64,
    /// Actions served from the cache (GetActionResult hit, or Execute answered from cache).
    pub cache_hits: u64,
    /// Actions that ran on an agent.
    pub executed: u64,
    /// Actions that ended with a non-zero exit code.
    pub failed: u64,
}

impl InvocationSummary {
    /// Cache hits over hits and executions (a miss that was then executed counts once, as an
    /// execution; a miss the client ran itself does not count). 0 when there were neither.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.cache_hits + self.executed;
        if total == 0 {
            return 0.0;
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "a ratio for display; counts far below 2^52"
        )]
        let ratio = self.cache_hits as f64 / total as f64;
        ratio
    }

    fn count(&mut self, kind: &ActionKind, sign: i8) {
        let apply = |n: &mut u64, yes: bool| {
            if yes {
                *n = if sign > 0 {
                    n.saturating_add(1)
                } else {
                    n.saturating_sub(1)
                };
            }
        };
        apply(&mut self.cache_hits, kind.is_hit());
        apply(&mut self.executed, kind.is_run());
        apply(&mut self.failed, kind.is_failure());
    }
}

/// One action of an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRow {
    /// The action digest, `hash/size`.
    pub action_digest: String,
    /// `RequestMetadata.action_id`, empty when not sent.
    pub action_id: String,
    /// `RequestMetadata.action_mnemonic` (`Genrule`, `CppCompile`, `TestRunner`).
    pub mnemonic: String,
    /// `RequestMetadata.target_id` (`//gen:alpha`).
    pub target_id: String,
    /// `RequestMetadata.configuration_id`.
    pub configuration_id: String,
    /// What happened to it last (a lookup miss never replaces a later outcome).
    pub kind: ActionKind,
    /// First record, ms since the epoch.
    pub first_unix_ms: u64,
    /// Latest record, ms since the epoch.
    pub last_unix_ms: u64,
}

/// One invocation with its actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationDetail {
    /// The summary, as listed.
    pub summary: InvocationSummary,
    /// Every action, in key order (action id, else digest).
    pub actions: Vec<ActionRow>,
    /// The actions that ran on an agent, longest first, at most 10.
    pub slowest: Vec<ActionRow>,
}

/// What the writer receives.
#[derive(Debug)]
struct Event {
    invocation: String,
    tool: String,
    tool_invocation_id: String,
    action_key: String,
    row: ActionRow,
}

/// The build log. Cheap to clone; every clone records to the same writer.
#[derive(Clone)]
pub struct BuildLog {
    invocations: Table,
    actions: Table,
    sender: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for BuildLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl BuildLog {
    /// Opens the tables in `meta` and returns the log with its writer, which keeps at most
    /// `keep` invocations. The caller owns the writer: spawn it (it runs until `token` is
    /// cancelled, then merges what is queued and returns). Records made after that are
    /// dropped.
    pub fn start(
        meta: Arc<dyn MetadataStore>,
        keep: usize,
        token: CancellationToken,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), MetaError> {
        let invocations = meta.table(INVOCATIONS)?;
        let actions = meta.table(ACTIONS)?;
        let count = invocations.scan_prefix(b"i").count();
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let writer = Writer {
            meta,
            invocations: Arc::clone(&invocations),
            actions: Arc::clone(&actions),
            keep: keep.max(1),
            count,
        };
        let log = BuildLog {
            invocations,
            actions,
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        Ok((log, writer.run(receiver, token)))
    }

    /// Reads the build log in `meta` without a writer (a stopped coordinator's store, for
    /// tools and tests): what is recorded through it is dropped.
    pub fn read_only(meta: Arc<dyn MetadataStore>) -> Result<Self, MetaError> {
        let (sender, _) = mpsc::channel(1);
        Ok(BuildLog {
            invocations: meta.table(INVOCATIONS)?,
            actions: meta.table(ACTIONS)?,
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records one action of the invocation `metadata` names: from GetActionResult (hit or
    /// miss) and Execute (when it finished or was answered from cache). Never blocks; calls
    /// without an invocation id are ignored.
    pub fn record(&self, metadata: &RequestMetadata, action: ActionRecord) {
        let invocation = if metadata.correlated_invocations_id.is_empty() {
            &metadata.tool_invocation_id
        } else {
            &metadata.correlated_invocations_id
        };
        if invocation.is_empty() {
            return;
        }
        let tool = metadata
            .tool_details
            .as_ref()
            .map_or_else(String::new, |t| {
                format!("{} {}", t.tool_name, t.tool_version)
                    .trim()
                    .to_owned()
            });
        let action_digest = cut(&action.action_digest);
        let action_id = cut(&metadata.action_id);
        let action_key = if action_id.is_empty() {
            action_digest.clone()
        } else {
            action_id.clone()
        };
        let event = Event {
            invocation: cut(invocation),
            tool: cut(&tool),
            tool_invocation_id: cut(&metadata.tool_invocation_id),
            action_key,
            row: ActionRow {
                action_digest,
                action_id,
                mnemonic: cut(&metadata.action_mnemonic),
                target_id: cut(&metadata.target_id),
                configuration_id: cut(&metadata.configuration_id),
                kind: match action.kind {
                    ActionKind::Executed {
                        cached,
                        exit_code,
                        duration_ms,
                        agent,
                    } => ActionKind::Executed {
                        cached,
                        exit_code,
                        duration_ms,
                        agent: cut(&agent),
                    },
                    other => other,
                },
                first_unix_ms: action.at_unix_ms,
                last_unix_ms: action.at_unix_ms,
            },
        };
        if let Err(error) = self.sender.try_send(event) {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(%error, dropped = total, "build log record dropped");
        }
    }

    /// Records dropped because the writer was behind (or stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Up to `limit` invocations, newest (by start) first; with `before`, those after the
    /// invocation `before` in that order (the id of the last one of the previous page). An
    /// unknown `before` (pruned meanwhile) gives an empty page.
    pub fn list(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<InvocationSummary>, BuildLogError> {
        let after = match before {
            None => None,
            Some(id) => match self.started(id)? {
                Some(started) => Some(order_key(started, id)),
                None => return Ok(Vec::new()),
            },
        };
        let mut out = Vec::new();
        // A scan from the start: the table holds at most `keep` invocations, and scans have
        // no lower bound.
        for entry in self.invocations.scan_prefix(b"o") {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            if after.as_ref().is_some_and(|after| key <= *after) {
                continue;
            }
            out.push(decode(INVOCATIONS, &key, &value)?);
        }
        Ok(out)
    }

    /// The invocation `id` with its actions, if it is kept.
    pub fn invocation(&self, id: &str) -> Result<Option<InvocationDetail>, BuildLogError> {
        let Some(started) = self.started(id)? else {
            return Ok(None);
        };
        let key = order_key(started, id);
        let Some(value) = self.invocations.get(&key)? else {
            return Ok(None);
        };
        let summary: InvocationSummary = decode(INVOCATIONS, &key, &value)?;
        let mut actions = Vec::new();
        for entry in self.actions.scan_prefix(&actions_prefix(id)) {
            let (key, value) = entry?;
            actions.push(decode::<ActionRow>(ACTIONS, &key, &value)?);
        }
        let mut slowest: Vec<ActionRow> = actions
            .iter()
            .filter(|a| a.kind.is_run())
            .cloned()
            .collect();
        slowest.sort_by_key(|a| std::cmp::Reverse(a.kind.duration_ms()));
        slowest.truncate(SLOWEST);
        Ok(Some(InvocationDetail {
            summary,
            actions,
            slowest,
        }))
    }

    fn started(&self, id: &str) -> Result<Option<u64>, MetaError> {
        Ok(self
            .invocations
            .get(&index_key(id))?
            .and_then(|v| be_u64(&v)))
    }
}

/// The single writer of the two tables.
struct Writer {
    meta: Arc<dyn MetadataStore>,
    invocations: Table,
    actions: Table,
    keep: usize,
    /// Invocations stored.
    count: usize,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Event>, token: CancellationToken) {
        loop {
            let first = tokio::select! {
                () = token.cancelled() => None,
                event = receiver.recv() => event,
            };
            let Some(first) = first else { break };
            let mut round = vec![first];
            while round.len() < MAX_ROUND {
                match receiver.try_recv() {
                    Ok(event) => round.push(event),
                    Err(_) => break,
                }
            }
            let Some(writer) = self.merge_blocking(round).await else {
                return;
            };
            self = writer;
        }
        // Shutdown: take nothing new, keep what was already queued.
        receiver.close();
        let mut rest = Vec::new();
        while let Some(event) = receiver.recv().await {
            rest.push(event);
            if rest.len() == MAX_ROUND {
                let Some(writer) = self.merge_blocking(std::mem::take(&mut rest)).await else {
                    return;
                };
                self = writer;
            }
        }
        if !rest.is_empty() {
            let _ = self.merge_blocking(rest).await;
        }
    }

    /// Merges `round` off the async runtime (store calls may wait on disk).
    async fn merge_blocking(mut self, round: Vec<Event>) -> Option<Self> {
        let outcome = tokio::task::spawn_blocking(move || {
            if let Err(error) = self.merge(round) {
                // Display data: a failed round is lost, the next one is tried.
                tracing::warn!(%error, "build log write failed");
            }
            self
        })
        .await;
        match outcome {
            Ok(writer) => Some(writer),
            Err(error) => {
                tracing::error!(%error, "build log writer failed; builds are no longer recorded");
                None
            }
        }
    }

    /// Merges one round of records into one batch.
    fn merge(&mut self, round: Vec<Event>) -> Result<(), BuildLogError> {
        let mut summaries: HashMap<String, (InvocationSummary, bool)> = HashMap::new();
        let mut rows: HashMap<(String, String), ActionRow> = HashMap::new();
        for event in round {
            if !summaries.contains_key(&event.invocation) {
                let loaded = self.load_summary(&event.invocation)?;
                let is_new = loaded.is_none();
                let summary = loaded.unwrap_or_else(|| InvocationSummary {
                    id: event.invocation.clone(),
                    tool: event.tool.clone(),
                    tool_invocation_id: event.tool_invocation_id.clone(),
                    started_unix_ms: event.row.first_unix_ms,
                    last_unix_ms: event.row.first_unix_ms,
                    actions: 0,
                    cache_hits: 0,
                    executed: 0,
                    failed: 0,
                });
                summaries.insert(event.invocation.clone(), (summary, is_new));
            }
            let Some((summary, _)) = summaries.get_mut(&event.invocation) else {
                continue;
            };
            let row_key = (event.invocation.clone(), event.action_key.clone());
            let old = match rows.remove(&row_key) {
                Some(row) => Some(row),
                None => self.load_row(&event.invocation, &event.action_key)?,
            };
            summary.last_unix_ms = summary.last_unix_ms.max(event.row.last_unix_ms);
            if summary.tool.is_empty() {
                summary.tool = event.tool;
            }
            if summary.tool_invocation_id.is_empty() {
                summary.tool_invocation_id = event.tool_invocation_id;
            }
            let row = match old {
                None => {
                    summary.actions += 1;
                    summary.count(&event.row.kind, 1);
                    event.row
                }
                Some(old) => merge_row(summary, old, event.row),
            };
            rows.insert(row_key, row);
        }

        let mut batch = Batch::new();
        let created = summaries.values().filter(|(_, new)| *new).count();
        let over = (self.count + created).saturating_sub(self.keep);
        let pruned = if over > 0 {
            self.prune(&mut batch, over, &mut summaries, &mut rows)?
        } else {
            0
        };
        for (summary, is_new) in summaries.values() {
            let key = order_key(summary.started_unix_ms, &summary.id);
            batch.insert(INVOCATIONS, key, encode(summary));
            if *is_new {
                batch.insert(
                    INVOCATIONS,
                    index_key(&summary.id),
                    summary.started_unix_ms.to_be_bytes().to_vec(),
                );
            }
        }
        for ((invocation, action), row) in &rows {
            let mut key = actions_prefix(invocation);
            key.extend_from_slice(action.as_bytes());
            batch.insert(ACTIONS, key, encode(row));
        }
        self.meta.apply_batch(batch)?;
        self.count = (self.count + created).saturating_sub(pruned);
        Ok(())
    }

    /// Removes the `over` oldest invocations (by start), stored or new in this round, with
    /// their actions: stored ones by removals added to `batch`, new ones by dropping them from
    /// the round. Returns how many.
    fn prune(
        &self,
        batch: &mut Batch,
        over: usize,
        summaries: &mut HashMap<String, (InvocationSummary, bool)>,
        rows: &mut HashMap<(String, String), ActionRow>,
    ) -> Result<usize, BuildLogError> {
        // (order key, id, stored): the stored ones (a scan of at most `keep` entries) and the
        // round's new ones.
        let mut all = Vec::new();
        for entry in self.invocations.scan_prefix(b"o") {
            let (key, value) = entry?;
            let summary: InvocationSummary = decode(INVOCATIONS, &key, &value)?;
            all.push((key, summary.id, true));
        }
        for (summary, is_new) in summaries.values() {
            if *is_new {
                let key = order_key(summary.started_unix_ms, &summary.id);
                all.push((key, summary.id.clone(), false));
            }
        }
        all.sort();
        let mut pruned = 0;
        // Newest first in key order, so the oldest are at the end.
        for (key, id, stored) in all.into_iter().rev().take(over) {
            if stored {
                batch.remove(INVOCATIONS, key);
                batch.remove(INVOCATIONS, index_key(&id));
                for entry in self.actions.scan_prefix(&actions_prefix(&id)) {
                    batch.remove(ACTIONS, entry?.0);
                }
            }
            summaries.remove(&id);
            rows.retain(|(invocation, _), _| *invocation != id);
            pruned += 1;
        }
        Ok(pruned)
    }

    fn load_summary(&self, id: &str) -> Result<Option<InvocationSummary>, BuildLogError> {
        let Some(started) = self
            .invocations
            .get(&index_key(id))?
            .and_then(|v| be_u64(&v))
        else {
            return Ok(None);
        };
        let key = order_key(started, id);
        self.invocations
            .get(&key)?
            .map(|value| decode(INVOCATIONS, &key, &value))
            .transpose()
    }

    fn load_row(&self, invocation: &str, action: &str) -> Result<Option<ActionRow>, BuildLogError> {
        let mut key = actions_prefix(invocation);
        key.extend_from_slice(action.as_bytes());
        self.actions
            .get(&key)?
            .map(|value| decode(ACTIONS, &key, &value))
            .transpose()
    }
}

/// The row after `new` happened to the action `old` describes, with `summary`'s counts moved
/// from the old outcome to the new. A lookup miss never replaces a known outcome (Bazel looks
/// up before it executes, and may look up again); anything else is newer news.
fn merge_row(summary: &mut InvocationSummary, old: ActionRow, new: ActionRow) -> ActionRow {
    let first = old.first_unix_ms.min(new.first_unix_ms);
    let last = old.last_unix_ms.max(new.last_unix_ms);
    let mut row = if new.kind == ActionKind::CacheMiss {
        old
    } else {
        summary.count(&old.kind, -1);
        summary.count(&new.kind, 1);
        // Keep what only one of the calls sent.
        ActionRow {
            mnemonic: pick(new.mnemonic, old.mnemonic),
            target_id: pick(new.target_id, old.target_id),
            configuration_id: pick(new.configuration_id, old.configuration_id),
            ..new
        }
    };
    row.first_unix_ms = first;
    row.last_unix_ms = last;
    row
}

fn pick(preferred: String, fallback: String) -> String {
    if preferred.is_empty() {
        fallback
    } else {
        preferred
    }
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `value` cut to at most [`MAX_FIELD_BYTES`], on a character boundary.
fn cut(value: &str) -> String {
    let mut end = value.len().min(MAX_FIELD_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

fn order_key(started_ms: u64, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + id.len());
    key.push(b'o');
    key.extend_from_slice(&(u64::MAX - started_ms).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn index_key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(b'i');
    key.extend_from_slice(id.as_bytes());
    key
}

/// Length-prefixed, so that no id's actions scan into another id that extends it.
fn actions_prefix(id: &str) -> Vec<u8> {
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + id.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, BuildLogError> {
    serde_json::from_slice(value).map_err(|source| BuildLogError::Undecodable {
        table,
        key: hex::encode(key),
        source,
    })
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;
    use tessera_proto::reapi::ToolDetails;

    use super::*;

    /// A log over `meta` whose writer runs until [`Harness::settle`].
    struct Harness {
        log: BuildLog,
        token: CancellationToken,
        writer: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        fn start(meta: &Arc<dyn MetadataStore>, keep: usize) -> Self {
            let token = CancellationToken::new();
            let (log, writer) = BuildLog::start(Arc::clone(meta), keep, token.clone()).unwrap();
            Harness {
                log,
                token,
                writer: tokio::spawn(writer),
            }
        }

        /// Stops the writer once it has merged everything recorded so far (it drains the
        /// channel on shutdown), and returns the log for reading.
        async fn settle(self) -> BuildLog {
            self.token.cancel();
            self.writer.await.unwrap();
            self.log
        }
    }

    fn memory() -> Arc<dyn MetadataStore> {
        Arc::new(MemoryMetaStore::new())
    }

    fn bazel(invocation: &str, action_id: &str) -> RequestMetadata {
        RequestMetadata {
            tool_details: Some(ToolDetails {
                tool_name: "bazel".into(),
                tool_version: "4.2.3".into(),
            }),
            action_id: action_id.into(),
            tool_invocation_id: format!("{invocation}-command"),
            correlated_invocations_id: invocation.into(),
            action_mnemonic: "Genrule".into(),
            target_id: format!("//gen:{action_id}"),
            configuration_id: "k8-fastbuild".into(),
        }
    }

    fn at(kind: ActionKind, at_unix_ms: u64) -> ActionRecord {
        ActionRecord {
            action_digest: "ab/1".into(),
            kind,
            at_unix_ms,
        }
    }

    fn ran(exit_code: i32, duration_ms: u64) -> ActionKind {
        ActionKind::Executed {
            cached: false,
            exit_code,
            duration_ms,
            agent: "agent-1".into(),
        }
    }

    #[tokio::test]
    async fn a_build_is_listed_with_its_actions_and_counts() {
        let meta = memory();
        let h = Harness::start(&meta, DEFAULT_KEEP);
        h.log
            .record(&bazel("b1", "a1"), at(ActionKind::CacheHit, 1_000));
        h.log
            .record(&bazel("b1", "a2"), at(ActionKind::CacheMiss, 1_100));
        h.log.record(&bazel("b1", "a2"), at(ran(0, 700), 1_900));
        h.log
            .record(&bazel("b1", "a3"), at(ActionKind::CacheMiss, 1_200));
        h.log.record(&bazel("b1", "a3"), at(ran(1, 300), 2_000));
        let log = h.settle().await;

        let list = log.list(10, None).unwrap();
        assert_eq!(
            list,
            [InvocationSummary {
                id: "b1".into(),
                tool: "bazel 4.2.3".into(),
                tool_invocation_id: "b1-command".into(),
                started_unix_ms: 1_000,
                last_unix_ms: 2_000,
                actions: 3,
                cache_hits: 1,
                executed: 2,
                failed: 1,
            }]
        );
        assert!((list[0].hit_ratio() - 1.0 / 3.0).abs() < 1e-9);

        let detail = log.invocation("b1").unwrap().unwrap();
        assert_eq!(detail.summary, list[0]);
        let ids: Vec<&str> = detail
            .actions
            .iter()
            .map(|a| a.action_id.as_str())
            .collect();
        assert_eq!(ids, ["a1", "a2", "a3"]);
        let a2 = &detail.actions[1];
        assert_eq!(a2.kind, ran(0, 700));
        assert_eq!((a2.first_unix_ms, a2.last_unix_ms), (1_100, 1_900));
        assert_eq!(a2.mnemonic, "Genrule");
        assert_eq!(a2.target_id, "//gen:a2");
        let slowest: Vec<&str> = detail
            .slowest
            .iter()
            .map(|a| a.action_id.as_str())
            .collect();
        assert_eq!(slowest, ["a2", "a3"], "executed only, longest first");
        assert_eq!(log.invocation("nope").unwrap(), None);
        assert_eq!(log.dropped(), 0);
    }

    #[tokio::test]
    async fn a_miss_then_execute_is_one_executed_action_even_across_rounds_and_restarts() {
        let meta = memory();
        let h = Harness::start(&meta, DEFAULT_KEEP);
        h.log
            .record(&bazel("b1", "a1"), at(ActionKind::CacheMiss, 10));
        h.settle().await;
        // A new writer over the same store (a coordinator restart) merges into the stored row.
        let h = Harness::start(&meta, DEFAULT_KEEP);
        h.log.record(&bazel("b1", "a1"), at(ran(0, 5), 20));
        // A later lookup miss does not undo the execution.
        h.log
            .record(&bazel("b1", "a1"), at(ActionKind::CacheMiss, 30));
        let log = h.settle().await;
        let summary = &log.list(10, None).unwrap()[0];
        assert_eq!(
            (summary.actions, summary.executed, summary.cache_hits),
            (1, 1, 0)
        );
        assert_eq!(summary.hit_ratio(), 0.0);
        let detail = log.invocation("b1").unwrap().unwrap();
        assert_eq!(detail.actions.len(), 1);
        assert_eq!(detail.actions[0].kind, ran(0, 5));
        assert_eq!(detail.actions[0].last_unix_ms, 30);
    }

    #[tokio::test]
    async fn execute_answered_from_cache_is_a_hit_and_a_retried_failure_is_not_failed() {
        let meta = memory();
        let h = Harness::start(&meta, DEFAULT_KEEP);
        let cached = ActionKind::Executed {
            cached: true,
            exit_code: 0,
            duration_ms: 40,
            agent: String::new(),
        };
        h.log.record(&bazel("b1", "a1"), at(cached, 10));
        h.log.record(&bazel("b1", "a2"), at(ran(3, 5), 10));
        h.log.record(&bazel("b1", "a2"), at(ran(0, 6), 20));
        let log = h.settle().await;
        let summary = &log.list(10, None).unwrap()[0];
        assert_eq!(
            (
                summary.actions,
                summary.cache_hits,
                summary.executed,
                summary.failed
            ),
            (2, 1, 1, 0)
        );
        assert_eq!(summary.hit_ratio(), 0.5);
        let detail = log.invocation("b1").unwrap().unwrap();
        let slowest: Vec<&str> = detail
            .slowest
            .iter()
            .map(|a| a.action_id.as_str())
            .collect();
        assert_eq!(
            slowest,
            ["a2"],
            "a cached result did not run for this build"
        );
    }

    #[tokio::test]
    async fn the_tool_invocation_names_a_build_without_a_build_id_and_none_is_ignored() {
        let meta = memory();
        let h = Harness::start(&meta, DEFAULT_KEEP);
        let mut command_only = bazel("", "a1");
        command_only.tool_invocation_id = "cmd-1".into();
        command_only.action_id = String::new();
        h.log.record(&command_only, at(ActionKind::CacheMiss, 10));
        h.log
            .record(&RequestMetadata::default(), at(ActionKind::CacheHit, 10));
        let log = h.settle().await;
        let list = log.list(10, None).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, "cmd-1");
        let detail = log.invocation("cmd-1").unwrap().unwrap();
        assert_eq!(detail.actions[0].action_digest, "ab/1", "keyed by digest");
    }

    #[tokio::test]
    async fn pages_go_newest_first_and_continue_after_the_cursor() {
        let meta = memory();
        let h = Harness::start(&meta, DEFAULT_KEEP);
        for i in 0..5u64 {
            h.log.record(
                &bazel(&format!("b{i}"), "a"),
                at(ActionKind::CacheHit, 100 * i),
            );
        }
        let log = h.settle().await;
        let ids = |page: Vec<InvocationSummary>| -> Vec<String> {
            page.into_iter().map(|s| s.id).collect()
        };
        assert_eq!(ids(log.list(2, None).unwrap()), ["b4", "b3"]);
        assert_eq!(ids(log.list(2, Some("b3")).unwrap()), ["b2", "b1"]);
        assert_eq!(ids(log.list(2, Some("b1")).unwrap()), ["b0"]);
        assert_eq!(ids(log.list(2, Some("b0")).unwrap()), Vec::<String>::new());
        assert_eq!(
            ids(log.list(2, Some("gone")).unwrap()),
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn only_the_newest_invocations_are_kept_with_their_actions() {
        let meta = memory();
        // The first writer stores three, the second adds three more.
        let h = Harness::start(&meta, 3);
        for i in 0..3u64 {
            h.log.record(
                &bazel(&format!("b{i}"), "a"),
                at(ActionKind::CacheHit, 100 * i),
            );
        }
        h.settle().await;
        let h = Harness::start(&meta, 3);
        for i in 3..6u64 {
            h.log.record(
                &bazel(&format!("b{i}"), "a"),
                at(ActionKind::CacheHit, 100 * i),
            );
        }
        let log = h.settle().await;
        let ids: Vec<String> = log
            .list(10, None)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["b5", "b4", "b3"]);
        for gone in ["b0", "b1", "b2"] {
            assert_eq!(log.invocation(gone).unwrap(), None, "{gone}");
        }
        let actions = meta.table(ACTIONS).unwrap();
        assert_eq!(
            actions.len().unwrap(),
            3,
            "pruned invocations' actions are gone"
        );
        assert_eq!(meta.table(INVOCATIONS).unwrap().len().unwrap(), 6);

        // More new ones in one round than are kept: still only the newest.
        let h = Harness::start(&meta, 3);
        for i in 6..11u64 {
            h.log.record(
                &bazel(&format!("b{i}"), "a"),
                at(ActionKind::CacheHit, 100 * i),
            );
        }
        let log = h.settle().await;
        let ids: Vec<String> = log
            .list(10, None)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["b10", "b9", "b8"]);
        assert_eq!(actions.len().unwrap(), 3);
    }

    #[tokio::test]
    async fn long_strings_are_cut_and_ids_that_extend_others_stay_apart() {
        let meta = memory();
        let h = Harness::start(&meta, DEFAULT_KEEP);
        let long = "é".repeat(400);
        let mut metadata = bazel(&long, "a");
        metadata.target_id = long.clone();
        h.log.record(&metadata, at(ActionKind::CacheHit, 1));
        h.log.record(&bazel("b", "a"), at(ActionKind::CacheHit, 2));
        h.log.record(&bazel("bb", "a"), at(ActionKind::CacheHit, 3));
        let log = h.settle().await;
        let cut_id = &log.list(10, None).unwrap()[2].id;
        assert_eq!(cut_id.len(), MAX_FIELD_BYTES);
        let detail = log.invocation(cut_id).unwrap().unwrap();
        assert_eq!(detail.actions[0].target_id.len(), MAX_FIELD_BYTES);
        assert_eq!(log.invocation("b").unwrap().unwrap().actions.len(), 1);
    }

    #[tokio::test]
    async fn a_full_channel_drops_records_instead_of_blocking() {
        let meta = memory();
        let token = CancellationToken::new();
        // The writer is not running: nothing drains the channel.
        let (log, _writer) = BuildLog::start(meta, DEFAULT_KEEP, token).unwrap();
        for i in 0..=CHANNEL_CAPACITY {
            log.record(&bazel("b", &i.to_string()), at(ActionKind::CacheHit, 1));
        }
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn durations_come_from_the_execution_timestamps() {
        let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let metadata = ExecutedActionMetadata {
            worker: "agent-2".into(),
            execution_start_timestamp: ts(10, 500_000_000),
            execution_completed_timestamp: ts(12, 0),
            ..Default::default()
        };
        assert_eq!(
            ActionKind::executed(false, 0, Some(&metadata)),
            ActionKind::Executed {
                cached: false,
                exit_code: 0,
                duration_ms: 1_500,
                agent: "agent-2".into()
            }
        );
        assert_eq!(
            ActionKind::executed(true, 2, None),
            ActionKind::Executed {
                cached: true,
                exit_code: 2,
                duration_ms: 0,
                agent: String::new()
            }
        );
    }

    #[tokio::test]
    async fn a_read_only_log_reads_what_the_writer_stored() {
        let meta = memory();
        let h = Harness::start(&meta, DEFAULT_KEEP);
        h.log
            .record(&bazel("b1", "a1"), at(ActionKind::CacheHit, 1));
        h.settle().await;
        let reader = BuildLog::read_only(Arc::clone(&meta)).unwrap();
        assert_eq!(reader.list(10, None).unwrap()[0].cache_hits, 1);
        reader.record(&bazel("b2", "a1"), at(ActionKind::CacheHit, 2));
        assert_eq!(reader.dropped(), 1);
        assert_eq!(reader.list(10, None).unwrap().len(), 1);
    }
}
