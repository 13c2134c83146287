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
pub mod outbox;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use roaring::RoaringBitmap;
use serde::Serialize;

use crate::config::{DeliveryConfig, Webhook};
use crate::store::{Store, StoreError};

/// Most broadcasts per app per UTC day unless configured (vendor: 20).
pub const DEFAULT_PER_DAY: u32 = 20;
pub const DAY_MS: i64 = 86_400_000;

/// A broadcast as UserBroadcast accepted it, before its audience is chosen.
#[derive(Debug, Clone)]
pub struct NewBroadcast {
    pub app_id: u32,
    pub inbox: u32,
    pub sender: i64,
    pub msg_type: i64,
    pub content: String,
    pub ext: BTreeMap<String, String>,
    /// `Tags`, `TagOp` and `Filter` as sent, as a JSON object (GetBroadcast returns them).
    pub selector: String,
    pub ttl_secs: u32,
    /// What makes a second send of the same broadcast a replay (API.md §7): the
    /// request's `ClientToken`, else its signature (`sig:<hex>`).
    pub token: String,
}

/// How long a send's token makes a repeat of it a replay (API.md §7).
pub const TOKEN_TTL_MS: i64 = DAY_MS;

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

/// A stored broadcast, without its audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub id: i64,
    pub app_id: u32,
    pub inbox: u32,
    pub sender: i64,
    pub msg_type: i64,
    pub content: String,
    pub ext: BTreeMap<String, String>,
    pub selector: String,
    pub audience_count: u64,
    pub create_time: i64,
    pub expire_time: i64,
    pub recalled: bool,
}

/// Where a broadcast's webhook pages stand (all webhooks together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Delivery {
    pub pages: u64,
    pub delivered: u64,
    pub pending: u64,
    pub failed: u64,
    /// Pages not sent because the broadcast was recalled first.
    pub dropped: u64,
}

/// What UserBroadcast's store call decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Created {
        id: i64,
        audience_count: u64,
        expire_time: i64,
        /// A send with the token of an earlier one: nothing was sent or counted, and this
        /// is the earlier send's answer.
        replayed: bool,
    },
    /// The app has sent `limit` broadcasts this UTC day already.
    OverQuota { limit: u32 },
}

/// The pages one webhook gets of a new broadcast.
#[derive(Debug, Clone)]
pub struct Outlet {
    pub url: String,
    pub page_size: usize,
}

/// Pages of `count` ids at `page_size` per page.
pub fn pages(count: u64, page_size: usize) -> u32 {
    count.div_ceil(page_size.max(1) as u64) as u32
}

/// One outbox page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub broadcast_id: i64,
    pub url: String,
    pub page: u32,
}

/// A page this node claimed, and how many attempts (this one included) it has had.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub key: PageKey,
    pub attempts: u32,
}

/// How an attempt at a page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageDone {
    Delivered,
    /// Try again at this time (ms).
    Retry {
        at_ms: i64,
    },
    /// Given up: the broadcast expires before the next attempt, or the webhook is gone.
    Failed,
}

/// What the sweeper removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Purged {
    pub broadcasts: u64,
    /// Pages still pending when their broadcast expired (they count as failed).
    pub pending_pages: u64,
}

/// The outbox in `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxStats {
    pub pending: u64,
    /// Creation time (ms) of the broadcast of the oldest pending page.
    pub oldest_pending_ms: Option<i64>,
}

/// The UTC day of `ms`, and the seconds from `ms` to the next UTC midnight.
pub fn utc_day(ms: i64) -> (i64, u64) {
    let day = ms.div_euclid(DAY_MS);
    let next = (day + 1) * DAY_MS;
    (day, ((next - ms) as u64).div_ceil(1000).max(1))
}

pub fn serialize_audience(b: &RoaringBitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

pub fn deserialize_audience(bytes: &[u8]) -> Result<RoaringBitmap, StoreError> {
    RoaringBitmap::deserialize_from(bytes)
        .map_err(|e| StoreError::internal("a stored audience is unreadable").caused_by(e))
}

/// A broadcast with its frozen audience, as cached.
#[derive(Debug)]
pub struct Loaded {
    pub info: Info,
    pub audience: RoaringBitmap,
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
        crate::store::now_ms() + self.ahead_ms.load(std::sync::atomic::Ordering::Relaxed)
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
            .filter(|w| w.serves(app_id))
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

/// The ordinals of page `page` of `audience` at `page_size` ids per page, in order.
pub fn page_ordinals(audience: &RoaringBitmap, page: u32, page_size: usize) -> Vec<u32> {
    let start = page as u64 * page_size as u64;
    let Some(first) = audience.select(start.min(u32::MAX as u64) as u32) else {
        return Vec::new();
    };
    if start > u32::MAX as u64 {
        return Vec::new();
    }
    audience.range(first..).take(page_size).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_the_audience_in_order_without_overlap() {
        let b: RoaringBitmap = (0..25u32).map(|x| x * 3).collect();
        let all: Vec<u32> = (0..3).flat_map(|p| page_ordinals(&b, p, 10)).collect();
        assert_eq!(all, b.iter().collect::<Vec<_>>());
        assert_eq!(page_ordinals(&b, 2, 10).len(), 5);
        assert!(page_ordinals(&b, 3, 10).is_empty());
        assert_eq!(pages(25, 10), 3);
        assert_eq!(pages(0, 10), 0);
    }

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

    #[test]
    fn retry_after_reaches_the_next_utc_midnight() {
        assert_eq!(utc_day(DAY_MS - 1), (0, 1));
        assert_eq!(utc_day(DAY_MS), (1, 86_400));
        assert_eq!(utc_day(DAY_MS + 500), (1, 86_400));
    }
}
