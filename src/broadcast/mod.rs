//! Broadcasts (API.md §7): a message sent to the audience a filter selected at send time,
//! read back by recipients (ListUserBroadcasts) and POSTed to webhooks page by page.
//!
//! - The audience is frozen at send time as a roaring bitmap of the app's user ordinals
//!   (dense, never reused: see `store/plan.rs`), stored with the broadcast in the same
//!   transaction as the day's quota count and the broadcast's outbox pages.
//! - Active broadcasts never change once sent (only their `recalled` flag), so each node
//!   keeps the ones it has read in memory ([`Cache`]): the recipient's pull asks the store
//!   only which broadcasts are active for the app (one small query) and the user's ordinal.
//! - Delivery (`delivery.rs`) claims due outbox pages under a lease, POSTs them signed,
//!   and records the outcome; the sweeper purges expired broadcasts with their pages.

pub mod delivery;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{DeliveryConfig, Webhook};
pub use crate::model::broadcast::*;
use crate::store::{Store, StoreError};

/// What makes a repeat of a UserBroadcast a replay: its `ClientToken`, else its
/// signature, which a replay of the captured request repeats and no other request has
/// (hashed: the store need not hold a signature that still verifies).
pub fn send_token(client_token: Option<&str>, signature_hex: &str) -> String {
    use sha2::Digest;
    match client_token {
        Some(t) => format!("ct:{t}"),
        None => format!(
            "sig:{}",
            hex::encode(sha2::Sha256::digest(signature_hex.to_ascii_lowercase()))
        ),
    }
}

/// The broadcasts this node has read, by id: they never change once sent (a recall is
/// read from the store on every pull), so entries are dropped only when they expire.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<i64, Arc<Loaded>>>,
}

impl Cache {
    pub fn get(&self, id: i64) -> Option<Arc<Loaded>> {
        self.entries.lock().expect("cache lock").get(&id).cloned()
    }

    /// The cached ones of `ids`, in order (`None`: not cached), under one lock.
    pub fn get_many(&self, ids: &[i64]) -> Vec<Option<Arc<Loaded>>> {
        let entries = self.entries.lock().expect("cache lock");
        ids.iter().map(|id| entries.get(id).cloned()).collect()
    }

    pub fn insert(&self, loaded: Loaded) -> Arc<Loaded> {
        let loaded = Arc::new(loaded);
        self.entries
            .lock()
            .expect("cache lock")
            .insert(loaded.info.id, loaded.clone());
        loaded
    }

    /// Drops every entry expired at `now_ms`.
    pub fn evict_expired(&self, now_ms: i64) {
        self.entries
            .lock()
            .expect("cache lock")
            .retain(|_, l| l.info.expire_time > now_ms);
    }

    pub fn forget(&self, id: i64) {
        self.entries.lock().expect("cache lock").remove(&id);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Wall-clock milliseconds for broadcasts: the quota's UTC day, expiry, retries, leases.
/// Tests move it forward ([`Clock::advance`]) instead of waiting for midnight.
#[derive(Default)]
pub struct Clock {
    ahead_ms: std::sync::atomic::AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        crate::model::now_ms() + self.ahead_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on the clock reads `ms` later than it did.
    pub fn advance(&self, ms: i64) {
        self.ahead_ms
            .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What the broadcast Actions and the delivery tasks of one node share.
pub struct Service {
    pub clock: Clock,
    pub cache: Cache,
    /// `limits.broadcasts_per_day`.
    pub per_day: u32,
    pub webhooks: Vec<Webhook>,
    pub delivery: DeliveryConfig,
    /// Wakes this node's delivery loop (a broadcast was just sent here).
    pub wake: tokio::sync::Notify,
    /// A send or recall here changed the outbox: the sweeper refreshes its gauges.
    pub outbox_changed: tokio::sync::Notify,
}

impl Service {
    pub fn new(per_day: u32, webhooks: Vec<Webhook>, delivery: DeliveryConfig) -> Self {
        Service {
            clock: Clock::default(),
            cache: Cache::default(),
            per_day,
            webhooks,
            delivery,
            wake: tokio::sync::Notify::new(),
            outbox_changed: tokio::sync::Notify::new(),
        }
    }

    /// The webhooks that get the app's broadcasts, with their page sizes.
    pub fn outlets(&self, app_id: u32) -> Vec<Outlet> {
        self.webhooks
            .iter()
            .filter(|w| w.broadcasts && w.serves(app_id))
            .map(|w| Outlet {
                url: w.url.clone(),
                page_size: w.page_size,
            })
            .collect()
    }

    /// The broadcast with its audience, from the cache or else the store (then cached).
    pub async fn loaded(
        &self,
        store: &dyn Store,
        id: i64,
    ) -> Result<Option<Arc<Loaded>>, StoreError> {
        if let Some(l) = self.cache.get(id) {
            return Ok(Some(l));
        }
        Ok(store
            .load_broadcast(id)
            .await?
            .map(|l| self.cache.insert(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_token_is_the_client_token_or_the_hashed_signature() {
        assert_eq!(send_token(Some("order-42"), "ABCD"), "ct:order-42");
        let sig = send_token(None, "ABCD");
        assert_eq!(
            sig,
            send_token(None, "abcd"),
            "a signature's case is not its own"
        );
        assert!(sig.starts_with("sig:") && sig.len() == 4 + 64, "{sig}");
        assert_ne!(sig, send_token(None, "abce"));
    }
}
