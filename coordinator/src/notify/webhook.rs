//! Webhook subscriptions: where events go, which ones, for which jobs, in what form.
//!
//! Subscriptions come from the coordinator's configuration (`[[webhooks]]`, fixed while it
//! runs) and from admins (`tessera webhook add`, kept in the metadata table `webhooks`). A
//! subscription's secret signs its deliveries and is never shown again, logged or sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_cas::meta::{MetaError, MetadataStore, Table};
use tonic::codegen::http;

/// Table of admin-added subscriptions: id → JSON [`Webhook`].
const TABLE: &str = "webhooks";

/// Every event a subscription may ask for, in the order the README lists them.
pub const EVENTS: [&str; 7] = [
    "job.finished",
    "job.failed",
    "test.flaky",
    "branch.broken",
    "branch.fixed",
    "agent.lost",
    "queue.stalled",
];

/// How deliveries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The documented JSON payload (`deploy/webhooks/event.schema.json`).
    #[default]
    Json,
    /// A Slack incoming-webhook message (`{"text": ...}`).
    Slack,
}

/// One subscription.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Its id: `config-N` for the N-th `[[webhooks]]` entry, a random id for added ones.
    pub id: String,
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// The HMAC-SHA256 key of `X-Tessera-Signature`; empty: deliveries are not signed.
    pub secret: String,
    /// The events it receives; empty: all.
    pub events: Vec<String>,
    /// Only jobs (and their tests) carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// The payload's form.
    pub format: Format,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &redacted_url(&self.url))
            .field("secret", &(!self.secret.is_empty()).then_some("<redacted>"))
            .field("events", &self.events)
            .field("labels", &self.labels)
            .field("format", &self.format)
            .finish()
    }
}

impl Webhook {
    /// Whether it receives `event` for something labelled `labels` (`None`: an event of no
    /// job, such as `agent.lost`, which a label filter never matches... unless it has none).
    pub fn wants(&self, event: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        if !self.events.is_empty() && !self.events.iter().any(|e| e == event) {
            return false;
        }
        if self.labels.is_empty() {
            return true;
        }
        labels.is_some_and(|have| {
            self.labels
                .iter()
                .all(|(k, v)| have.get(k).is_some_and(|h| h == v))
        })
    }

    /// Checks the subscription; the problem names the field.
    pub fn check(&self) -> Result<(), String> {
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok || self.url.parse::<http::Uri>().is_err() {
            return Err(format!(
                "url \"{}\" must be an http:// or https:// URL",
                redacted_url(&self.url)
            ));
        }
        if let Some(bad) = self.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(format!(
                "events: unknown event \"{bad}\" (known: {})",
                EVENTS.join(", ")
            ));
        }
        if self.secret.is_empty() && self.format == Format::Json {
            return Err(
                "secret is empty: JSON deliveries are signed with it (X-Tessera-Signature)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// `url` with only its scheme, host and port: a webhook URL often holds a credential in its
/// path (Slack's do), so logs and listings never show the rest.
pub fn redacted_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => {
                let host = authority.as_str().rsplit('@').next().unwrap_or_default();
                let rest = if uri.path().len() > 1 { "/…" } else { "" };
                format!("{scheme}://{host}{rest}")
            }
            _ => "(malformed URL)".to_owned(),
        },
        Err(_) => "(malformed URL)".to_owned(),
    }
}

/// The subscriptions: the configured ones and those admins added.
#[derive(Clone)]
pub struct Webhooks {
    configured: Arc<Vec<Webhook>>,
    table: Table,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("configured", &self.configured.len())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The configured subscriptions (given ids `config-1`, ...) and the table of added ones.
    pub fn open(
        meta: &Arc<dyn MetadataStore>,
        mut configured: Vec<Webhook>,
    ) -> Result<Self, MetaError> {
        for (i, hook) in configured.iter_mut().enumerate() {
            hook.id = format!("config-{}", i + 1);
        }
        Ok(Webhooks {
            configured: Arc::new(configured),
            table: meta.table(TABLE)?,
        })
    }

    /// Every subscription: configured first, then added ones in id order.
    pub fn all(&self) -> Result<Vec<Webhook>, MetaError> {
        let mut all: Vec<Webhook> = self.configured.as_ref().clone();
        for entry in self.table.scan_prefix(b"") {
            let (_, value) = entry?;
            match serde_json::from_slice::<Webhook>(&value) {
                Ok(hook) => all.push(hook),
                Err(error) => tracing::warn!(%error, "skipping an undecodable webhook"),
            }
        }
        Ok(all)
    }

    /// Adds a subscription (its id is made here); returns it.
    pub fn add(&self, mut hook: Webhook) -> Result<Result<Webhook, String>, MetaError> {
        hook.id = format!("hook-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        if let Err(problem) = hook.check() {
            return Ok(Err(problem));
        }
        let json = serde_json::to_vec(&hook).expect("a webhook serializes");
        self.table.insert(hook.id.as_bytes(), &json)?;
        Ok(Ok(hook))
    }

    /// Removes an added subscription; `Ok(false)` when there is none of that id (configured
    /// ones are removed from the configuration file, not here).
    pub fn remove(&self, id: &str) -> Result<bool, MetaError> {
        Ok(self.table.remove(id.as_bytes())?.is_some())
    }

    /// Whether `id` is a configured subscription.
    pub fn is_configured(&self, id: &str) -> bool {
        self.configured.iter().any(|h| h.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(events: &[&str], labels: &[(&str, &str)]) -> Webhook {
        Webhook {
            id: "h".into(),
            url: "https://hooks.example/abc/secret-path".into(),
            secret: "s3cret".into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            format: Format::Json,
        }
    }

    #[test]
    fn a_subscription_matches_its_events_and_labels() {
        let main: BTreeMap<String, String> = [("branch".into(), "main".into())].into();
        let other: BTreeMap<String, String> = [("branch".into(), "dev".into())].into();
        assert!(hook(&[], &[]).wants("agent.lost", None));
        assert!(hook(&["job.failed"], &[]).wants("job.failed", Some(&main)));
        assert!(!hook(&["job.failed"], &[]).wants("job.finished", Some(&main)));
        let on_main = hook(&[], &[("branch", "main")]);
        assert!(on_main.wants("job.finished", Some(&main)));
        assert!(!on_main.wants("job.finished", Some(&other)));
        assert!(!on_main.wants("agent.lost", None));
    }

    #[test]
    fn checks_name_the_field_and_never_show_the_secret_or_the_path() {
        assert_eq!(hook(&[], &[]).check(), Ok(()));
        let mut bad = hook(&["job.exploded"], &[]);
        assert!(bad.check().unwrap_err().contains("job.exploded"));
        bad = hook(&[], &[]);
        bad.url = "ftp://x/y".into();
        assert!(bad.check().unwrap_err().starts_with("url"));
        bad = hook(&[], &[]);
        bad.secret.clear();
        assert!(bad.check().unwrap_err().starts_with("secret"));
        bad.format = Format::Slack;
        assert_eq!(bad.check(), Ok(()));
        let shown = format!("{:?}", hook(&[], &[]));
        assert!(
            !shown.contains("s3cret") && !shown.contains("secret-path"),
            "{shown}"
        );
        assert_eq!(
            redacted_url("https://user:pw@hooks.example:8443/T0/B1/xyz"),
            "https://hooks.example:8443/…"
        );
    }
}
