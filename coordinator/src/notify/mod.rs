//! Telling the team: webhook subscriptions, the events the coordinator publishes, and their
//! durable delivery.
//!
//! - `webhook`: subscriptions (`[[webhooks]]` in the configuration, `tessera webhook add`),
//!   which events and labels each wants, the URL redaction every log uses;
//! - `outbox`: the durable outbox in the metadata store;
//! - `deliver`: the loop that sends what is due, with retries, and prunes;
//! - here: [`Notifier`], which turns what happened into events, renders and signs one
//!   delivery per interested subscription, writes it to the outbox and wakes the loop.
//!
//! Events (the payload schema is `deploy/webhooks/event.schema.json`): `job.finished` (every
//! job), `job.failed` (also, when its result is failed, error or infrastructure),
//! `test.flaky` (a test seen flaky for the first time in its project), `branch.broken` and
//! `branch.fixed` (a job with a `branch` label failed after passing, or passed after failing,
//! compared with the last job of the same instance, project, name and branch), `agent.lost`
//! (an agent's session ended without a drain), `queue.stalled` (the oldest queued action has
//! waited longer than `queue_stall_after`; once per episode).

pub mod deliver;
pub mod outbox;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tessera_cas::meta::{MetaError, MetadataStore, SwapOutcome, Table};
use tessera_proto::tessera::v1::{JobFinished, JobResult, JobSpec, TestRef};
use tokio::sync::Notify;

use self::outbox::{Delivery, Outbox, State, now_ms};
use self::webhook::{Format, Webhook, Webhooks};

/// Last verdict of each (instance, project, name, branch): `passed` or `failed`.
const BRANCHES_TABLE: &str = "branch_verdicts";
/// Tests seen flaky (instance, project, group, name) → first seen (Unix ms).
const FLAKY_TABLE: &str = "flaky_seen";

/// Publishes events to the subscriptions that want them. Cheap to clone; a disabled one (no
/// metadata store behind it, for tests and benchmarks) publishes nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    meta: Arc<dyn MetadataStore>,
    hooks: Webhooks,
    outbox: Outbox,
    wake: Arc<Notify>,
    branches: Table,
    flaky: Table,
    /// Names this coordinator in payloads.
    source: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

/// A job as the events describe it.
#[derive(Debug, Clone, Copy)]
pub struct FinishedJob<'a> {
    /// Its id.
    pub id: &'a str,
    /// What it ran.
    pub spec: &'a JobSpec,
    /// How it ended.
    pub finished: &'a JobFinished,
    /// Tests whose final outcome was flaky.
    pub flaky: &'a [TestRef],
}

impl Notifier {
    /// A notifier over `meta` with the configured subscriptions; `source` names the
    /// coordinator in payloads.
    pub fn open(
        meta: Arc<dyn MetadataStore>,
        configured: Vec<Webhook>,
        source: String,
    ) -> Result<Self, MetaError> {
        let hooks = Webhooks::open(&meta, configured)?;
        Ok(Notifier {
            inner: Some(Arc::new(Inner {
                outbox: Outbox::open(meta.as_ref())?,
                branches: meta.table(BRANCHES_TABLE)?,
                flaky: meta.table(FLAKY_TABLE)?,
                wake: Arc::new(Notify::new()),
                hooks,
                meta,
                source,
            })),
        })
    }

    /// The subscriptions, the outbox and the wake-up of the delivery loop; `None` when
    /// disabled.
    pub fn parts(&self) -> Option<(Webhooks, Outbox, Arc<Notify>)> {
        let inner = self.inner.as_ref()?;
        Some((
            inner.hooks.clone(),
            inner.outbox.clone(),
            Arc::clone(&inner.wake),
        ))
    }

    /// A job ended: `job.finished`, `job.failed` when it failed, `branch.broken` or
    /// `branch.fixed` when its branch's verdict changed, and `test.flaky` for each test seen
    /// flaky for the first time.
    pub fn job_finished(&self, job: FinishedJob<'_>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let labels: BTreeMap<String, String> = job
            .spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let result = job.finished.result();
        let job_json = job_json(job, &labels);
        self.publish(
            "job.finished",
            Some(&labels),
            json!({ "job": job_json }),
            Some(job.id),
        );
        if matches!(
            result,
            JobResult::Failed | JobResult::Error | JobResult::Infrastructure
        ) {
            self.publish(
                "job.failed",
                Some(&labels),
                json!({ "job": job_json }),
                Some(job.id),
            );
        }
        if let Some(branch) = labels.get("branch") {
            let verdict = match result {
                JobResult::Passed => Some("passed"),
                JobResult::Failed => Some("failed"),
                _ => None,
            };
            if let Some(verdict) = verdict {
                let name = labels.get("name").map_or("", String::as_str);
                let key = [
                    job.spec.instance_name.as_str(),
                    job.spec.project.as_str(),
                    name,
                    branch,
                ]
                .join("\0");
                match inner.branches.insert(key.as_bytes(), verdict.as_bytes()) {
                    Ok(previous) => {
                        let event = match (previous.as_deref(), verdict) {
                            (Some(b"passed"), "failed") => Some("branch.broken"),
                            (Some(b"failed"), "passed") => Some("branch.fixed"),
                            _ => None,
                        };
                        if let Some(event) = event {
                            let previous = if verdict == "failed" {
                                "passed"
                            } else {
                                "failed"
                            };
                            self.publish(
                                event,
                                Some(&labels),
                                json!({
                                    "job": job_json,
                                    "branch": {
                                        "branch": branch, "name": name,
                                        "previous": previous, "result": verdict,
                                    },
                                }),
                                Some(job.id),
                            );
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot record the branch's verdict"),
                }
            }
        }
        for test in job.flaky {
            let key = [
                job.spec.instance_name.as_str(),
                job.spec.project.as_str(),
                test.group.as_str(),
                test.name.as_str(),
            ]
            .join("\0");
            let first =
                inner
                    .flaky
                    .compare_and_swap(key.as_bytes(), None, Some(&now_ms().to_be_bytes()));
            match first {
                Ok(SwapOutcome::Swapped) => self.publish(
                    "test.flaky",
                    Some(&labels),
                    json!({
                        "job": job_json,
                        "test": { "group": test.group, "name": test.name },
                    }),
                    Some(&key),
                ),
                Ok(SwapOutcome::Conflict { .. }) => {}
                Err(error) => tracing::warn!(%error, "cannot record a flaky test"),
            }
        }
    }

    /// An agent's session ended without a drain.
    pub fn agent_lost(&self, agent: &str, reason: &str) {
        self.publish(
            "agent.lost",
            None,
            json!({ "agent": { "id": agent, "reason": reason } }),
            None,
        );
    }

    /// The oldest queued action has waited past `threshold`.
    pub fn queue_stalled(&self, queued: usize, oldest_wait: Duration, threshold: Duration) {
        self.publish(
            "queue.stalled",
            None,
            json!({ "queue": {
                "queued": queued,
                "oldest_wait_ms": oldest_wait.as_millis() as u64,
                "threshold_ms": threshold.as_millis() as u64,
            }}),
            None,
        );
    }

    /// Writes one delivery of `event` (with `fields` added to the envelope) for each
    /// subscription that wants it, makes them durable, and wakes the delivery loop.
    ///
    /// `subject` names what the event is about (a job, a job's test); the delivery id is
    /// derived from it, the event and the subscription, so the same event published twice (a
    /// job that ends again after a coordinator restart) is written once. `None`: every
    /// publication is a new event.
    fn publish(
        &self,
        event: &str,
        labels: Option<&BTreeMap<String, String>>,
        fields: Value,
        subject: Option<&str>,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        let hooks = match inner.hooks.all() {
            Ok(hooks) => hooks,
            Err(error) => {
                tracing::warn!(%error, event, "cannot read the webhooks; event not published");
                return;
            }
        };
        let created_ms = now_ms();
        let mut written = 0;
        for hook in hooks.iter().filter(|h| h.wants(event, labels)) {
            let id = match subject {
                Some(subject) => delivery_id(&hook.id, event, subject),
                None => uuid::Uuid::new_v4().to_string(),
            };
            let mut envelope = json!({
                "id": id,
                "event": event,
                "created_unix_ms": created_ms,
                "coordinator": inner.source,
            });
            if let (Value::Object(envelope), Value::Object(fields)) = (&mut envelope, &fields) {
                envelope.extend(fields.clone());
            }
            let body = match hook.format {
                Format::Json => envelope.to_string(),
                Format::Slack => json!({ "text": slack_text(&envelope) }).to_string(),
            };
            let delivery = Delivery {
                signature: sign(&hook.secret, body.as_bytes()),
                id,
                webhook: hook.id.clone(),
                event: event.to_owned(),
                body,
                created_ms,
                attempts: 0,
                next_ms: created_ms,
                state: State::Pending,
                done_ms: 0,
                last_error: String::new(),
            };
            match inner.outbox.put_new(&delivery) {
                Ok(true) => written += 1,
                Ok(false) => {
                    tracing::debug!(event, delivery = %delivery.id, "event already published")
                }
                Err(error) => tracing::warn!(%error, event, "cannot write a webhook delivery"),
            }
        }
        if written > 0 {
            let (meta, wake) = (Arc::clone(&inner.meta), Arc::clone(&inner.wake));
            tokio::spawn(async move {
                if let Err(error) = meta.flush_async().await {
                    tracing::warn!(%error, "webhook deliveries may not survive a crash");
                }
                wake.notify_one();
            });
        }
    }
}

/// How often [`watch_queue`] looks at the queue.
const QUEUE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Publishes `queue.stalled` when the oldest queued action has waited longer than `after`:
/// once per episode (again only after the queue's oldest wait fell back under `after`).
pub async fn watch_queue(
    scheduler: crate::execution::scheduler::SchedulerHandle,
    notifier: Notifier,
    after: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    if notifier.inner.is_none() {
        return;
    }
    let mut stalled = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(QUEUE_CHECK_EVERY.min(after)) => {}
        }
        let Ok((stats, _)) = scheduler.stats().await else {
            return;
        };
        let oldest = stats.oldest_queued.unwrap_or_default();
        if oldest >= after && !stalled {
            stalled = true;
            tracing::warn!(queued = stats.queued, oldest_wait = ?oldest, "the queue is stalled");
            notifier.queue_stalled(stats.queued, oldest, after);
        } else if oldest < after {
            stalled = false;
        }
    }
}

/// The delivery id of `event` about `subject` for subscription `hook`: a UUID-shaped digest,
/// the same whenever the same event is published again.
fn delivery_id(hook: &str, event: &str, subject: &str) -> String {
    use sha2::Digest as _;
    let digest = Sha256::digest([hook, event, subject].join("\0").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `secret`; empty without a secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    if secret.is_empty() {
        return String::new();
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn job_json(job: FinishedJob<'_>, labels: &BTreeMap<String, String>) -> Value {
    let f = job.finished;
    json!({
        "id": job.id,
        "name": labels.get("name").cloned().unwrap_or_else(|| job.spec.title.clone()),
        "title": job.spec.title,
        "submitter": job.spec.submitter,
        "project": job.spec.project,
        "labels": labels,
        "result": crate::metrics::job_result(f.result()),
        "message": f.message,
        "counts": {
            "passed": f.passed, "failed": f.failed, "errors": f.errors,
            "skipped": f.skipped, "flaky": f.flaky, "timed_out": f.timed_out,
            "cached": f.cached, "not_run": f.not_run,
        },
        "wall_ms": f.wall.as_ref().map_or(0, |d| {
            u64::try_from(d.seconds).unwrap_or(0) * 1000 + u64::try_from(d.nanos / 1_000_000).unwrap_or(0)
        }),
    })
}

/// One line for a Slack channel.
fn slack_text(envelope: &Value) -> String {
    let job = &envelope["job"];
    let name = job["name"].as_str().unwrap_or_default();
    let branch = job["labels"]["branch"]
        .as_str()
        .map(|b| format!(" on `{b}`"))
        .unwrap_or_default();
    let counts = &job["counts"];
    let tally = format!(
        "{} passed, {} failed, {} flaky",
        counts["passed"], counts["failed"], counts["flaky"]
    );
    match envelope["event"].as_str().unwrap_or_default() {
        "job.finished" => format!(
            "Job `{name}`{branch} {}: {tally} (job {})",
            job["result"].as_str().unwrap_or_default(),
            job["id"].as_str().unwrap_or_default()
        ),
        "job.failed" => format!(
            ":x: Job `{name}`{branch} {}: {tally} (job {})",
            job["result"].as_str().unwrap_or_default(),
            job["id"].as_str().unwrap_or_default()
        ),
        "branch.broken" => format!(":rotating_light: `{name}`{branch} is broken: {tally}"),
        "branch.fixed" => format!(":white_check_mark: `{name}`{branch} is fixed"),
        "test.flaky" => format!(
            ":warning: Test `{} {}` is flaky (first seen in `{name}`{branch})",
            envelope["test"]["group"].as_str().unwrap_or_default(),
            envelope["test"]["name"].as_str().unwrap_or_default()
        ),
        "agent.lost" => format!(
            ":warning: Agent `{}` was lost: {}",
            envelope["agent"]["id"].as_str().unwrap_or_default(),
            envelope["agent"]["reason"].as_str().unwrap_or_default()
        ),
        "queue.stalled" => format!(
            ":hourglass: The queue is stalled: {} actions waiting, the oldest for {} s",
            envelope["queue"]["queued"],
            envelope["queue"]["oldest_wait_ms"].as_u64().unwrap_or(0) / 1000
        ),
        other => format!("Tessera event {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_messages_say_what_happened_in_one_line() {
        let job = json!({
            "id": "j1", "name": "unit", "result": "failed",
            "labels": {"branch": "main"},
            "counts": {"passed": 3, "failed": 1, "flaky": 0},
        });
        let text = |event: &str, extra: Value| {
            let mut envelope = json!({ "event": event, "job": job });
            if let (Value::Object(e), Value::Object(x)) = (&mut envelope, extra) {
                e.extend(x);
            }
            slack_text(&envelope)
        };
        assert_eq!(
            text("job.failed", json!({})),
            ":x: Job `unit` on `main` failed: 3 passed, 1 failed, 0 flaky (job j1)"
        );
        assert!(text("branch.broken", json!({})).contains("`unit` on `main` is broken"));
        assert_eq!(
            text(
                "agent.lost",
                json!({"agent": {"id": "a1", "reason": "gone"}})
            ),
            ":warning: Agent `a1` was lost: gone"
        );
    }

    #[test]
    fn delivery_ids_are_stable_per_subscription_event_and_subject() {
        let id = delivery_id("hook-1", "job.finished", "job-9");
        assert_eq!(id, delivery_id("hook-1", "job.finished", "job-9"));
        assert_ne!(id, delivery_id("hook-2", "job.finished", "job-9"));
        assert_ne!(id, delivery_id("hook-1", "job.failed", "job-9"));
        assert_eq!(id.len(), 36);
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_raw_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(sign("", b"x"), "");
    }
}
