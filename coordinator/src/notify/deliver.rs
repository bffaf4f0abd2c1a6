//! The delivery loop: sends what is due from the outbox, one POST per delivery, and writes each
//! attempt's outcome back: delivered on a 2xx answer; otherwise tried again after an
//! exponential backoff (1 s, 2 s, 4 s, ... at most an hour, with a fifth of jitter) until the
//! retry window (24 h from the event) closes, then expired. Finished entries older than the
//! retention are pruned.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::outbox::{Delivery, Outbox, State, now_ms};
use super::webhook::{Webhook, Webhooks, redacted_url};

/// How long an event is tried before it expires.
pub const RETRY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Time limit of one attempt.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(10);
/// Deliveries attempted at once.
const PARALLEL: usize = 4;
/// Longest sleep between two looks at the outbox.
const IDLE: Duration = Duration::from_secs(5);
/// How often finished entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The wait before attempt `attempts + 1`, from the number of failed attempts so far.
pub fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    let jitter = rand::random::<f64>() * 0.2;
    base.mul_f64(1.0 + jitter)
}

/// Runs deliveries until `stop`; `wake` is notified when new deliveries are written.
pub async fn run(
    outbox: Outbox,
    hooks: Webhooks,
    wake: Arc<Notify>,
    retention: Duration,
    stop: CancellationToken,
) {
    let mut last_prune = 0u64;
    loop {
        let now = now_ms();
        let all = match outbox.all() {
            Ok(all) => all,
            Err(error) => {
                tracing::warn!(%error, "cannot read the webhook outbox");
                Vec::new()
            }
        };
        if now.saturating_sub(last_prune) >= PRUNE_EVERY.as_millis() as u64 {
            prune(&outbox, &all, now, retention);
            last_prune = now;
        }
        let due: Vec<Delivery> = all
            .iter()
            .filter(|d| d.state == State::Pending && d.next_ms <= now)
            .cloned()
            .collect();
        let next = all
            .iter()
            .filter(|d| d.state == State::Pending && d.next_ms > now)
            .map(|d| d.next_ms - now)
            .min()
            .map_or(IDLE, |ms| Duration::from_millis(ms).min(IDLE));
        if !due.is_empty() {
            // The subscriptions are read once per round, not once per delivery.
            let subscriptions = match hooks.all() {
                Ok(all) => all,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the webhooks; deliveries postponed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(IDLE) => {}
                    }
                    continue;
                }
            };
            use futures::StreamExt;
            futures::stream::iter(due)
                .for_each_concurrent(PARALLEL, |delivery| {
                    let (outbox, subscriptions) = (&outbox, &subscriptions);
                    async move { attempt(outbox, subscriptions, delivery).await }
                })
                .await;
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(next) => {}
        }
    }
}

/// One attempt of `delivery` to its subscription among `subscriptions`; its outcome is
/// written back.
async fn attempt(outbox: &Outbox, subscriptions: &[Webhook], mut delivery: Delivery) {
    let hook = subscriptions.iter().find(|h| h.id == delivery.webhook);
    let now = now_ms();
    let Some(hook) = hook else {
        delivery.state = State::Dropped;
        delivery.done_ms = now;
        save(outbox, &delivery);
        return;
    };
    let mut headers = vec![
        ("x-tessera-event", delivery.event.clone()),
        ("x-tessera-delivery", delivery.id.clone()),
    ];
    if !delivery.signature.is_empty() {
        headers.push(("x-tessera-signature", delivery.signature.clone()));
    }
    let sent = tessera_net::post::post(
        &hook.url,
        &headers,
        Bytes::from(delivery.body.clone()),
        ATTEMPT_LIMIT,
    )
    .await;
    delivery.attempts += 1;
    let now = now_ms();
    match sent {
        Ok(status) if (200..300).contains(&status) => {
            delivery.state = State::Delivered;
            delivery.done_ms = now;
            tracing::info!(
                webhook = %hook.id,
                url = %redacted_url(&hook.url),
                event = %delivery.event,
                delivery = %delivery.id,
                attempts = delivery.attempts,
                "webhook delivered"
            );
        }
        outcome => {
            delivery.last_error = match outcome {
                Ok(status) => format!("HTTP {status}"),
                Err(error) => error.to_string(),
            };
            if now.saturating_sub(delivery.created_ms) >= RETRY_WINDOW.as_millis() as u64 {
                delivery.state = State::Expired;
                delivery.done_ms = now;
                tracing::warn!(
                    webhook = %hook.id,
                    url = %redacted_url(&hook.url),
                    event = %delivery.event,
                    delivery = %delivery.id,
                    attempts = delivery.attempts,
                    error = %delivery.last_error,
                    "webhook delivery expired: not delivered within 24 h"
                );
            } else {
                let wait = backoff(delivery.attempts);
                delivery.next_ms = now + wait.as_millis() as u64;
                tracing::info!(
                    webhook = %hook.id,
                    url = %redacted_url(&hook.url),
                    event = %delivery.event,
                    delivery = %delivery.id,
                    attempts = delivery.attempts,
                    error = %delivery.last_error,
                    retry_in = ?wait,
                    "webhook delivery failed; will retry"
                );
            }
        }
    }
    save(outbox, &delivery);
}

fn save(outbox: &Outbox, delivery: &Delivery) {
    if let Err(error) = outbox.put(delivery) {
        tracing::warn!(%error, delivery = %delivery.id, "cannot record a webhook attempt");
    }
}

/// Removes finished deliveries older than `retention`.
fn prune(outbox: &Outbox, all: &[Delivery], now: u64, retention: Duration) {
    let horizon = now.saturating_sub(retention.as_millis() as u64);
    for delivery in all
        .iter()
        .filter(|d| d.state != State::Pending && d.done_ms < horizon)
    {
        if let Err(error) = outbox.remove(delivery) {
            tracing::warn!(%error, "cannot prune the webhook outbox");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour_with_a_fifth_of_jitter() {
        for (attempts, base) in [(1, 1), (2, 2), (3, 4), (10, 512), (13, 3600), (40, 3600)] {
            let wait = backoff(attempts);
            let base = Duration::from_secs(base);
            assert!(
                wait >= base && wait <= base.mul_f64(1.2),
                "{attempts}: {wait:?}"
            );
        }
    }
}
