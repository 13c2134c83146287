//! Broadcasts' plain records (API.md §7) and the rules both stores follow with them: the
//! quota's UTC day, page layout, the frozen audience's bytes. The stores write and read
//! them (`store/`), the Actions answer them (`actions/broadcast.rs`), the delivery loop
//! sends their pages (`broadcast/`).

use std::collections::BTreeMap;

use roaring::RoaringBitmap;
use serde::Serialize;

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
    /// The request's RequestId and AccessKey, for the `broadcast.sent` event.
    pub origin: crate::model::Origin,
}

impl NewBroadcast {
    /// The `broadcast.sent` change of this broadcast, stored as `id` with its audience's
    /// size and expiry (both stores append it in the send's transaction).
    pub fn sent(&self, id: i64, audience_count: u64, expire_ms: i64) -> crate::model::Change {
        crate::model::Change::BroadcastSent {
            app: self.app_id,
            id,
            inbox: self.inbox,
            audience_count,
            selector: self.selector.clone(),
            expire_ms,
        }
    }

    /// When a broadcast sent at `now_ms` expires: its TTL later (recipients stop seeing it,
    /// its pending pages fail, the sweeper purges it).
    pub fn expire_time(&self, now_ms: i64) -> i64 {
        now_ms + i64::from(self.ttl_secs) * 1000
    }
}

/// How long a send's token makes a repeat of it a replay (API.md §7).
pub const TOKEN_TTL_MS: i64 = DAY_MS;

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

pub fn deserialize_audience(bytes: &[u8]) -> std::io::Result<RoaringBitmap> {
    RoaringBitmap::deserialize_from(bytes)
}

/// A broadcast with its frozen audience, as cached.
#[derive(Debug)]
pub struct Loaded {
    pub info: Info,
    pub audience: RoaringBitmap,
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
    fn retry_after_reaches_the_next_utc_midnight() {
        assert_eq!(utc_day(DAY_MS - 1), (0, 1));
        assert_eq!(utc_day(DAY_MS), (1, 86_400));
        assert_eq!(utc_day(DAY_MS + 500), (1, 86_400));
    }
}
