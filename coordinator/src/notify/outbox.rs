//! The durable outbox of webhook deliveries (metadata table `webhook_outbox`).
//!
//! An event is written here, signed and rendered, once per subscription that wants it, before
//! anything is sent; the delivery loop ([`super::deliver`]) sends what is due and writes each
//! attempt's outcome back. A coordinator that stops (or is killed) finds its pending
//! deliveries here at the next start: delivery is at least once, and a receiver tells repeats
//! apart by `X-Tessera-Delivery`. Delivered and expired entries stay for the retention, then
//! are pruned.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tessera_cas::meta::{MetaError, MetadataStore, Table};

const TABLE: &str = "webhook_outbox";

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not delivered yet; tried again at `next_ms`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Not delivered within the retry window.
    Expired,
    /// Its subscription was removed before it could be delivered.
    Dropped,
}

/// One delivery of one event to one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `X-Tessera-Delivery`: the same on every attempt.
    pub id: String,
    /// The subscription's id.
    pub webhook: String,
    /// The event's name.
    pub event: String,
    /// The request body, as sent.
    pub body: String,
    /// `X-Tessera-Signature` (`sha256=<hex>`), empty when unsigned.
    pub signature: String,
    /// When the event happened (Unix ms).
    pub created_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_ms: u64,
    /// Its state.
    pub state: State,
    /// When it was delivered, expired or dropped (Unix ms).
    pub done_ms: u64,
    /// What the last failed attempt got.
    pub last_error: String,
}

/// The outbox table.
#[derive(Clone)]
pub struct Outbox {
    table: Table,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A delivery's key: its id (an event published twice has one id, so one entry).
fn key(delivery: &Delivery) -> Vec<u8> {
    delivery.id.as_bytes().to_vec()
}

impl Outbox {
    /// Opens the table in `meta`.
    pub fn open(meta: &dyn MetadataStore) -> Result<Self, MetaError> {
        Ok(Outbox {
            table: meta.table(TABLE)?,
        })
    }

    /// Writes a new delivery unless one of its id exists (then `false`).
    pub fn put_new(&self, delivery: &Delivery) -> Result<bool, MetaError> {
        let json = serde_json::to_vec(delivery).expect("a delivery serializes");
        Ok(self
            .table
            .compare_and_swap(&key(delivery), None, Some(&json))?
            == tessera_cas::meta::SwapOutcome::Swapped)
    }

    /// Writes a delivery after an attempt.
    pub fn put(&self, delivery: &Delivery) -> Result<(), MetaError> {
        let json = serde_json::to_vec(delivery).expect("a delivery serializes");
        self.table.insert(&key(delivery), &json)?;
        Ok(())
    }

    /// Removes a delivery.
    pub fn remove(&self, delivery: &Delivery) -> Result<(), MetaError> {
        self.table.remove(&key(delivery))?;
        Ok(())
    }

    /// Every delivery, oldest first (undecodable entries are skipped with a warning).
    pub fn all(&self) -> Result<Vec<Delivery>, MetaError> {
        let mut out = Vec::new();
        for entry in self.table.scan_prefix(b"") {
            let (_, value) = entry?;
            match serde_json::from_slice(&value) {
                Ok(delivery) => out.push(delivery),
                Err(error) => tracing::warn!(%error, "skipping an undecodable webhook delivery"),
            }
        }
        out.sort_by_key(|d: &Delivery| d.created_ms);
        Ok(out)
    }
}
