//! The outbox's rules, written once for both stores (as `plan.rs` is for tags): the
//! stores read lanes and their open pages, these functions decide, the stores write back.
//!
//! A broadcast's delivery to one webhook is a *lane*: its page count, a cursor (pages
//! below `next_page` have been claimed at least once), and the counts of pages delivered,
//! failed and dropped. Only pages that were claimed and not finished have rows of their
//! own (*open* pages: in flight under a lease, or waiting for a retry), and a lane keeps
//! at most `window` of them: its cursor does not move while that many are open. So what a
//! send writes, a recall drops and the sweeper purges is a row per webhook and at most
//! `window` pages, whatever the page size and the audience: a million one-id pages cost
//! what one page does (issue 17, item 8).
//!
//! Fairness (item 3): a webhook's pages are claimed one lane at a time, the lane served
//! longest ago first (`turn`), round after round, so a broadcast with a million pages and
//! one with a single page take turns; the delivery loop bounds what each webhook has in
//! flight, so a receiver that hangs holds only its own share of the slots.

use crate::model::broadcast::{Claimed, Delivery, PageDone, PageKey};

/// One (broadcast, webhook) of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub broadcast_id: i64,
    pub url: String,
    pub pages: u32,
    /// Pages below this were claimed at least once.
    pub next_page: u32,
    pub delivered: u32,
    pub failed: u32,
    /// Not sent: the broadcast was recalled first.
    pub dropped: u32,
    /// When the lane last gave a page (ms); the lane served longest ago goes first.
    pub turn: i64,
    /// When the lane can give a page next (ms), `CLOSED` once it never will.
    pub ready_at: i64,
    /// The broadcast's creation time (ms), for the age of the oldest pending page.
    pub created: i64,
}

/// `ready_at` of a lane with nothing left to send.
pub const CLOSED: i64 = i64::MAX;

/// A page claimed and not finished: in flight until `lease_until`, then due again at
/// `next_at` (a retry) or at once (its claimer died).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenPage {
    pub page: u32,
    pub attempts: u32,
    pub next_at: i64,
    pub lease_until: i64,
}

impl OpenPage {
    fn due_at(&self) -> i64 {
        self.next_at.max(self.lease_until)
    }
}

/// A lane as the stores read it, with its open pages, and what changed in it.
#[derive(Debug, Clone)]
pub struct LaneState {
    pub lane: Lane,
    pub open: Vec<OpenPage>,
    /// Pages whose rows are to be written (inserted or updated) or deleted.
    pub upserts: Vec<OpenPage>,
    pub deletes: Vec<u32>,
    pub changed: bool,
}

impl LaneState {
    pub fn new(lane: Lane, open: Vec<OpenPage>) -> Self {
        LaneState {
            lane,
            open,
            upserts: Vec::new(),
            deletes: Vec::new(),
            changed: false,
        }
    }

    /// When the lane can give a page next: at once while its cursor may move, else when
    /// its first open page is due; `CLOSED` when nothing is left.
    fn ready_at(&self, window: u32) -> i64 {
        let l = &self.lane;
        if l.next_page < l.pages && (self.open.len() as u32) < window {
            return 0;
        }
        self.open
            .iter()
            .map(OpenPage::due_at)
            .min()
            .unwrap_or(CLOSED)
    }

    fn settle(&mut self, window: u32) {
        self.lane.ready_at = self.ready_at(window);
        self.changed = true;
    }

    /// One page due at `now`, claimed for `lease_ms`: an open page that is due first (the
    /// lowest), else the next one under the cursor while fewer than `window` are open.
    fn take(&mut self, now: i64, lease_ms: i64, window: u32) -> Option<(u32, u32)> {
        let due = self
            .open
            .iter_mut()
            .filter(|p| p.due_at() <= now)
            .min_by_key(|p| p.page);
        let page = match due {
            Some(p) => {
                p.attempts += 1;
                p.lease_until = now + lease_ms;
                *p
            }
            None => {
                let l = &mut self.lane;
                if l.next_page >= l.pages || self.open.len() as u32 >= window {
                    return None;
                }
                let p = OpenPage {
                    page: l.next_page,
                    attempts: 1,
                    next_at: now,
                    lease_until: now + lease_ms,
                };
                l.next_page += 1;
                self.open.push(p);
                p
            }
        };
        self.upserts.retain(|u| u.page != page.page);
        self.upserts.push(page);
        Some((page.page, page.attempts))
    }
}

/// Claims up to `want` pages of one webhook's `lanes` (read in `turn` order): a page from
/// each lane in turn, round after round, until `want` or none is left. Every lane that
/// gave a page takes its turn `now`.
pub fn claim(
    lanes: &mut [LaneState],
    now: i64,
    lease_ms: i64,
    window: u32,
    want: usize,
) -> Vec<Claimed> {
    let mut out = Vec::new();
    lanes.sort_by_key(|s| (s.lane.turn, s.lane.broadcast_id));
    loop {
        let before = out.len();
        for s in lanes.iter_mut() {
            if out.len() == want {
                break;
            }
            if let Some((page, attempts)) = s.take(now, lease_ms, window) {
                s.lane.turn = now;
                out.push(Claimed {
                    key: PageKey {
                        broadcast_id: s.lane.broadcast_id,
                        url: s.lane.url.clone(),
                        page,
                    },
                    attempts,
                });
            }
        }
        if out.len() == want || out.len() == before {
            break;
        }
    }
    for s in lanes.iter_mut() {
        if !s.upserts.is_empty() {
            s.settle(window);
        }
    }
    out
}

/// Records how an attempt at `page` ended. A page that is not open any more (recalled,
/// or finished by another node whose lease it outlived) changes nothing.
pub fn finish(s: &mut LaneState, page: u32, done: PageDone, window: u32) {
    let Some(at) = s.open.iter().position(|p| p.page == page) else {
        return;
    };
    match done {
        PageDone::Retry { at_ms } => {
            let p = &mut s.open[at];
            p.next_at = at_ms;
            p.lease_until = 0;
            let p = *p;
            s.upserts.retain(|u| u.page != page);
            s.upserts.push(p);
        }
        PageDone::Delivered | PageDone::Failed => {
            s.open.swap_remove(at);
            s.upserts.retain(|u| u.page != page);
            s.deletes.push(page);
            if done == PageDone::Delivered {
                s.lane.delivered += 1;
            } else {
                s.lane.failed += 1;
            }
        }
    }
    s.settle(window);
}

/// A recall: every page not yet delivered or failed is dropped, and the lane is closed
/// (a page in flight may still land; it is not counted).
pub fn drop_rest(lane: &mut Lane) {
    lane.dropped = lane.pages - lane.delivered.min(lane.pages) - lane.failed.min(lane.pages);
    lane.ready_at = CLOSED;
}

/// Pages neither delivered, failed nor dropped: still to be sent.
pub fn pending(lane: &Lane) -> u64 {
    u64::from(lane.pages).saturating_sub(
        u64::from(lane.delivered) + u64::from(lane.failed) + u64::from(lane.dropped),
    )
}

/// The delivery summary of a broadcast's lanes (GetBroadcast, ListBroadcasts).
pub fn summary<'a>(lanes: impl IntoIterator<Item = &'a Lane>) -> Delivery {
    let mut d = Delivery::default();
    for l in lanes {
        d.pages += u64::from(l.pages);
        d.delivered += u64::from(l.delivered);
        d.failed += u64::from(l.failed);
        d.dropped += u64::from(l.dropped);
        d.pending += pending(l);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(id: i64, pages: u32, turn: i64) -> LaneState {
        LaneState::new(
            Lane {
                broadcast_id: id,
                url: "http://x".into(),
                pages,
                next_page: 0,
                delivered: 0,
                failed: 0,
                dropped: 0,
                turn,
                ready_at: 0,
                created: 0,
            },
            Vec::new(),
        )
    }

    fn ids(c: &[Claimed]) -> Vec<(i64, u32)> {
        c.iter().map(|c| (c.key.broadcast_id, c.key.page)).collect()
    }

    #[test]
    fn lanes_take_turns_and_the_window_bounds_open_pages() {
        let mut lanes = vec![lane(1, 1_000_000, 0), lane(2, 1, 5)];
        let c = claim(&mut lanes, 100, 30_000, 4, 3);
        assert_eq!(ids(&c), vec![(1, 0), (2, 0), (1, 1)]);
        // Lane 1 may have 4 open; lane 2 is done being handed out.
        let c = claim(&mut lanes, 101, 30_000, 4, 10);
        assert_eq!(ids(&c), vec![(1, 2), (1, 3)]);
        assert_eq!(
            lanes[0].lane.ready_at,
            100 + 30_000,
            "full: due when its first lease ends"
        );
        assert!(claim(&mut lanes, 102, 30_000, 4, 10).is_empty());
    }

    #[test]
    fn retries_come_back_when_due_and_finishing_moves_the_cursor() {
        let mut lanes = vec![lane(7, 3, 0)];
        let c = claim(&mut lanes, 0, 1000, 1, 1);
        assert_eq!(ids(&c), vec![(7, 0)]);
        finish(&mut lanes[0], 0, PageDone::Retry { at_ms: 50 }, 1);
        assert_eq!(lanes[0].lane.ready_at, 50);
        assert!(claim(&mut lanes, 49, 1000, 1, 1).is_empty());
        let c = claim(&mut lanes, 50, 1000, 1, 1);
        assert_eq!((ids(&c), c[0].attempts), (vec![(7, 0)], 2));
        finish(&mut lanes[0], 0, PageDone::Delivered, 1);
        assert_eq!(lanes[0].lane.ready_at, 0, "the cursor may move again");
        for _ in 0..2 {
            let c = claim(&mut lanes, 60, 1000, 1, 1);
            finish(&mut lanes[0], c[0].key.page, PageDone::Failed, 1);
        }
        let l = &lanes[0].lane;
        assert_eq!((l.delivered, l.failed, l.ready_at), (1, 2, CLOSED));
        assert_eq!(pending(l), 0);
    }

    #[test]
    fn a_page_whose_lease_ended_is_claimed_again() {
        let mut lanes = vec![lane(1, 1, 0)];
        claim(&mut lanes, 0, 100, 4, 1);
        assert!(claim(&mut lanes, 99, 100, 4, 1).is_empty());
        let c = claim(&mut lanes, 100, 100, 4, 1);
        assert_eq!(c[0].attempts, 2);
    }

    #[test]
    fn recall_drops_what_is_left_and_late_outcomes_change_nothing() {
        let mut s = lane(1, 10, 0);
        let c = claim(std::slice::from_mut(&mut s), 0, 100, 4, 4);
        finish(&mut s, c[0].key.page, PageDone::Delivered, 4);
        drop_rest(&mut s.lane);
        s.open.clear();
        finish(&mut s, c[1].key.page, PageDone::Delivered, 4);
        let d = summary([&s.lane]);
        assert_eq!((d.pages, d.delivered, d.dropped, d.pending), (10, 1, 9, 0));
    }
}
