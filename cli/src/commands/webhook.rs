//! `tessera webhook add|list|remove`: admins' webhook subscriptions (those of the
//! coordinator's configuration file are listed too). Needs an `admin` token when auth is on.

use tessera_proto::tessera::v1::webhooks_client::WebhooksClient;
use tessera_proto::tessera::v1::{
    AddWebhookRequest, ListWebhooksRequest, RemoveWebhookRequest, WebhookInfo,
};

use crate::client_config::{ClientConfig, ClientFlags};
use crate::exit::{CliError, Exit};
use crate::report::table::table;
use crate::{connect, paths};

/// `tessera webhook ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WebhookCommand {
    /// Subscribe URL to events: a signed JSON POST for each (or a Slack message with
    /// --format slack), retried for 24 h from a durable outbox.
    Add(AddArgs),
    /// The subscriptions, with deliveries still pending and the last error.
    List(ListArgs),
    /// Remove a subscription added with `tessera webhook add` (its pending deliveries are
    /// dropped).
    Remove(RemoveArgs),
}

/// `tessera webhook add` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// Where to POST (http:// or https://).
    pub url: String,
    /// File holding the HMAC-SHA256 key of X-Tessera-Signature (required unless --format
    /// slack); or TESSERA_WEBHOOK_SECRET holds the key itself.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<std::path::PathBuf>,
    /// An event to send; repeatable [default: all]: job.finished, job.failed, test.flaky,
    /// branch.broken, branch.fixed, agent.lost, queue.stalled.
    #[arg(long = "event", value_name = "NAME")]
    pub events: Vec<String>,
    /// Only jobs with this label, KEY=VALUE; repeatable (all must match).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// json (the documented payload) or slack (an incoming-webhook message).
    #[arg(long, default_value = "json")]
    pub format: String,
    /// Coordinator, admin token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera webhook list` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// One JSON object a line for each subscription.
    #[arg(long)]
    pub json: bool,
    /// Coordinator, admin token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera webhook remove` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoveArgs {
    /// The subscription's id (`tessera webhook list`).
    pub id: String,
    /// Coordinator, admin token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera webhook ...`.
pub async fn webhook(command: WebhookCommand) -> Result<Exit, CliError> {
    match command {
        WebhookCommand::Add(args) => add(args).await,
        WebhookCommand::List(args) => list(args).await,
        WebhookCommand::Remove(args) => remove(args).await,
    }
}

async fn client(
    flags: &ClientFlags,
) -> Result<
    (
        connect::Connection,
        WebhooksClient<tessera_net::client::Link>,
    ),
    CliError,
> {
    let config = ClientConfig::from_process(flags)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let client = WebhooksClient::new(connection.link.clone());
    Ok((connection, client))
}

async fn add(args: AddArgs) -> Result<Exit, CliError> {
    let secret = match &args.secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("--secret-file {}: {e}", path.display())))?
            .trim()
            .to_owned(),
        None => std::env::var("TESSERA_WEBHOOK_SECRET").unwrap_or_default(),
    };
    let mut labels = std::collections::HashMap::new();
    for label in &args.labels {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--label {label}: expected KEY=VALUE")))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let (connection, mut client) = client(&args.client).await?;
    let added = client
        .add_webhook(AddWebhookRequest {
            url: args.url,
            secret,
            events: args.events,
            labels,
            format: args.format,
        })
        .await
        .map_err(|s| connection.failed("AddWebhook", &s))?
        .into_inner();
    println!("added webhook {} ({})", added.id, added.url);
    Ok(Exit::Success)
}

async fn list(args: ListArgs) -> Result<Exit, CliError> {
    let (connection, mut client) = client(&args.client).await?;
    let hooks = client
        .list_webhooks(ListWebhooksRequest {})
        .await
        .map_err(|s| connection.failed("ListWebhooks", &s))?
        .into_inner()
        .webhooks;
    if args.json {
        for hook in &hooks {
            println!("{}", hook_json(hook));
        }
        return Ok(Exit::Success);
    }
    let mut rows = vec![
        [
            "ID",
            "URL",
            "EVENTS",
            "LABELS",
            "FORMAT",
            "PENDING",
            "LAST ERROR",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for h in &hooks {
        let mut labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        rows.push(vec![
            format!("{}{}", h.id, if h.configured { " (config)" } else { "" }),
            h.url.clone(),
            if h.events.is_empty() {
                "all".to_owned()
            } else {
                h.events.join(",")
            },
            if labels.is_empty() {
                "-".to_owned()
            } else {
                labels.join(" ")
            },
            h.format.clone(),
            h.pending.to_string(),
            if h.last_error.is_empty() {
                "-".to_owned()
            } else {
                h.last_error.clone()
            },
        ]);
    }
    if hooks.is_empty() {
        println!("no webhooks");
    } else {
        print!("{}", table(&rows));
    }
    Ok(Exit::Success)
}

fn hook_json(h: &WebhookInfo) -> serde_json::Value {
    serde_json::json!({
        "id": h.id, "url": h.url, "signed": h.signed, "events": h.events,
        "labels": h.labels, "format": h.format, "configured": h.configured,
        "pending": h.pending, "last_error": h.last_error,
    })
}

async fn remove(args: RemoveArgs) -> Result<Exit, CliError> {
    let (connection, mut client) = client(&args.client).await?;
    client
        .remove_webhook(RemoveWebhookRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(|s| connection.failed("RemoveWebhook", &s))?;
    println!("removed webhook {}", args.id);
    Ok(Exit::Success)
}
