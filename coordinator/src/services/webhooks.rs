//! The `Webhooks` gRPC service (`tessera webhook add|list|remove`): admins' subscriptions.
//! Secrets are taken, never returned; URLs are listed without their path.

use std::collections::BTreeMap;

use tessera_proto::tessera::v1::{
    AddWebhookRequest, ListWebhooksRequest, ListWebhooksResponse, RemoveWebhookRequest,
    RemoveWebhookResponse, WebhookInfo, webhooks_server,
};
use tonic::{Request, Response, Status};

use crate::auth::{AuditRecord, Auth, principal};
use crate::notify::Notifier;
use crate::notify::outbox::State;
use crate::notify::webhook::{Format, Webhook, redacted_url};
use crate::status::meta_error;

/// A metadata-store failure as a status.
fn store_failed(error: tessera_cas::meta::MetaError) -> Status {
    meta_error(&format!("the webhook store failed: {error}"), &error)
}

/// Serves the subscriptions of one coordinator's notifier.
#[derive(Debug, Clone)]
pub struct WebhooksService {
    notifier: Notifier,
    auth: Option<Auth>,
}

impl WebhooksService {
    /// The subscriptions of `notifier`.
    pub fn new(notifier: Notifier) -> Self {
        WebhooksService {
            notifier,
            auth: None,
        }
    }

    /// Audits additions and removals in `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    fn audit<T>(&self, request: &Request<T>, action: &'static str, object: &str) {
        if let Some(auth) = &self.auth {
            auth.audit.record(
                &principal(request),
                AuditRecord {
                    action,
                    object,
                    allowed: true,
                    ..Default::default()
                },
            );
        }
    }
}

fn info(hook: &Webhook, configured: bool, pending: u32, last_error: String) -> WebhookInfo {
    WebhookInfo {
        id: hook.id.clone(),
        url: redacted_url(&hook.url),
        signed: !hook.secret.is_empty(),
        events: hook.events.clone(),
        labels: hook.labels.clone().into_iter().collect(),
        format: match hook.format {
            Format::Json => "json",
            Format::Slack => "slack",
        }
        .to_owned(),
        configured,
        pending,
        last_error,
    }
}

fn disabled() -> Status {
    Status::failed_precondition("this coordinator has no webhook store")
}

#[tonic::async_trait]
impl webhooks_server::Webhooks for WebhooksService {
    async fn add_webhook(
        &self,
        request: Request<AddWebhookRequest>,
    ) -> Result<Response<WebhookInfo>, Status> {
        let (hooks, _, _) = self.notifier.parts().ok_or_else(disabled)?;
        let req = request.get_ref().clone();
        let format = match req.format.as_str() {
            "" | "json" => Format::Json,
            "slack" => Format::Slack,
            other => {
                return Err(Status::invalid_argument(format!(
                    "format \"{other}\": expected json or slack"
                )));
            }
        };
        let hook = Webhook {
            id: String::new(),
            url: req.url,
            secret: req.secret,
            events: req.events,
            labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
            format,
        };
        let added = hooks
            .add(hook)
            .map_err(store_failed)?
            .map_err(Status::invalid_argument)?;
        self.audit(&request, "webhook.add", &added.id);
        Ok(Response::new(info(&added, false, 0, String::new())))
    }

    async fn list_webhooks(
        &self,
        _request: Request<ListWebhooksRequest>,
    ) -> Result<Response<ListWebhooksResponse>, Status> {
        let (hooks, outbox, _) = self.notifier.parts().ok_or_else(disabled)?;
        let deliveries = outbox.all().map_err(store_failed)?;
        let webhooks = hooks
            .all()
            .map_err(store_failed)?
            .iter()
            .map(|hook| {
                let pending: Vec<_> = deliveries
                    .iter()
                    .filter(|d| d.webhook == hook.id && d.state == State::Pending)
                    .collect();
                let last_error = pending
                    .iter()
                    .rev()
                    .find(|d| !d.last_error.is_empty())
                    .map(|d| d.last_error.clone())
                    .unwrap_or_default();
                info(
                    hook,
                    hooks.is_configured(&hook.id),
                    pending.len() as u32,
                    last_error,
                )
            })
            .collect();
        Ok(Response::new(ListWebhooksResponse { webhooks }))
    }

    async fn remove_webhook(
        &self,
        request: Request<RemoveWebhookRequest>,
    ) -> Result<Response<RemoveWebhookResponse>, Status> {
        let (hooks, _, _) = self.notifier.parts().ok_or_else(disabled)?;
        let id = request.get_ref().id.clone();
        if hooks.is_configured(&id) {
            return Err(Status::failed_precondition(format!(
                "webhook {id} comes from the coordinator's configuration file: remove it there \
                 and restart the coordinator"
            )));
        }
        if !hooks.remove(&id).map_err(store_failed)? {
            return Err(Status::not_found(format!(
                "no webhook {id}; `tessera webhook list` shows them"
            )));
        }
        self.audit(&request, "webhook.remove", &id);
        Ok(Response::new(RemoveWebhookResponse {}))
    }
}
