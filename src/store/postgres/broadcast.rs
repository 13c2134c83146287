//! Broadcasts and their outbox in PostgreSQL (the tables of schema v3).
//!
//! - A send first catches this node's audience index up with the change log (so the
//!   frozen audience holds every write acknowledged on any node), then counts the send
//!   in `tagcast_broadcast_days` (the row lock orders concurrent sends of one app on
//!   every node; over the quota the transaction rolls back) and inserts the broadcast and
//!   its outbox pages, in one transaction.
//! - A send with the token of an earlier one (API.md §7) finds it: the token's primary key
//!   makes a concurrent replay on any node wait for the first send's commit, then see it.
//! - The outbox is lanes (`store/outbox.rs` has the rules): a node claims a webhook's
//!   due lanes with `FOR UPDATE SKIP LOCKED` and leases pages from them; one node at a
//!   time sends a page, and a node that dies holding it lets another take it once the
//!   lease ends.

use std::collections::BTreeMap;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Shared, classify, events, follow, within};
use crate::model::broadcast::{
    Claimed, Delivery, Info, Loaded, NewBroadcast, OutboxStats, Outlet, PageDone, PageKey, Purged,
    Sent, TOKEN_TTL_MS, deserialize_audience, pages, serialize_audience, utc_day,
};
use crate::model::filter::Filter;
use crate::model::{Change, Origin};
use crate::store::outbox::{self, CLOSED, Lane, LaneState, OpenPage};
use crate::store::{StoreError, ext_json};

const INFO_COLUMNS: &str = "id, app_id, inbox_type, sender, msg_type, content, ext, selector, \
                            audience_count, create_time, expire_time, recalled";

fn info(r: &Row) -> Info {
    let ext: String = r.get(6);
    Info {
        id: r.get(0),
        app_id: r.get::<_, i32>(1) as u32,
        inbox: r.get::<_, i32>(2) as u32,
        sender: r.get(3),
        msg_type: r.get(4),
        content: r.get(5),
        ext: serde_json::from_str::<BTreeMap<String, String>>(&ext).unwrap_or_default(),
        selector: r.get(7),
        audience_count: r.get::<_, i64>(8) as u64,
        create_time: r.get(9),
        expire_time: r.get(10),
        recalled: r.get(11),
    }
}

const LANE_COLUMNS: &str =
    "broadcast_id, url, pages, next_page, delivered, failed, dropped, turn, ready_at, created";

fn lane(r: &Row) -> Lane {
    Lane {
        broadcast_id: r.get(0),
        url: r.get(1),
        pages: r.get::<_, i32>(2) as u32,
        next_page: r.get::<_, i32>(3) as u32,
        delivered: r.get::<_, i32>(4) as u32,
        failed: r.get::<_, i32>(5) as u32,
        dropped: r.get::<_, i32>(6) as u32,
        turn: r.get(7),
        ready_at: r.get(8),
        created: r.get(9),
    }
}

/// The delivery summary of each of `ids` from their lanes, in one query.
async fn deliveries(
    client: &tokio_postgres::Client,
    ids: &[i64],
) -> Result<Vec<Delivery>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {LANE_COLUMNS} FROM tagcast_outbox_lanes WHERE broadcast_id = ANY($1)"
            ),
            &[&ids],
        )
        .await?;
    let lanes: Vec<Lane> = rows.iter().map(lane).collect();
    Ok(ids
        .iter()
        .map(|id| outbox::summary(lanes.iter().filter(|l| l.broadcast_id == *id)))
        .collect())
}

/// Lanes with their open pages, read in the transaction that holds their rows.
async fn lane_states(
    tx: &tokio_postgres::Transaction<'_>,
    lanes: Vec<Lane>,
) -> Result<Vec<LaneState>, tokio_postgres::Error> {
    let ids: Vec<i64> = lanes.iter().map(|l| l.broadcast_id).collect();
    let urls: Vec<&str> = lanes.iter().map(|l| l.url.as_str()).collect();
    let rows = tx
        .query(
            "SELECT p.broadcast_id, p.url, p.page, p.attempts, p.next_at, p.lease_until
             FROM tagcast_outbox_pages p
             JOIN unnest($1::bigint[], $2::text[]) AS l(b, u) ON p.broadcast_id = l.b AND p.url = l.u",
            &[&ids, &urls],
        )
        .await?;
    let mut states: Vec<LaneState> = lanes
        .into_iter()
        .map(|l| LaneState::new(l, Vec::new()))
        .collect();
    for r in &rows {
        let (b, u): (i64, &str) = (r.get(0), r.get(1));
        if let Some(s) = states
            .iter_mut()
            .find(|s| s.lane.broadcast_id == b && s.lane.url == u)
        {
            s.open.push(OpenPage {
                page: r.get::<_, i32>(2) as u32,
                attempts: r.get::<_, i32>(3) as u32,
                next_at: r.get(4),
                lease_until: r.get(5),
            });
        }
    }
    Ok(states)
}

/// Writes what the outbox's rules changed in `states`: three statements for any number.
async fn write_lanes(
    tx: &tokio_postgres::Transaction<'_>,
    states: &[LaneState],
) -> Result<(), tokio_postgres::Error> {
    let changed: Vec<&LaneState> = states.iter().filter(|s| s.changed).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Lane) -> i64| -> Vec<i64> { changed.iter().map(|s| f(&s.lane)).collect() };
    let ids = col(|l| l.broadcast_id);
    let urls: Vec<&str> = changed.iter().map(|s| s.lane.url.as_str()).collect();
    tx.execute(
        "UPDATE tagcast_outbox_lanes o SET next_page = x.n, delivered = x.d, failed = x.f,
             turn = x.t, ready_at = x.r
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::bigint[]) AS x(b, u, n, d, f, t, r)
         WHERE o.broadcast_id = x.b AND o.url = x.u",
        &[
            &ids,
            &urls,
            &col(|l| i64::from(l.next_page)),
            &col(|l| i64::from(l.delivered)),
            &col(|l| i64::from(l.failed)),
            &col(|l| l.turn),
            &col(|l| l.ready_at),
        ],
    )
    .await?;
    let (mut b, mut u, mut p, mut a, mut n, mut l) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut db, mut du, mut dp) = (vec![], vec![], vec![]);
    for s in &changed {
        for o in &s.upserts {
            b.push(s.lane.broadcast_id);
            u.push(s.lane.url.as_str());
            p.push(o.page as i32);
            a.push(o.attempts as i32);
            n.push(o.next_at);
            l.push(o.lease_until);
        }
        for page in &s.deletes {
            db.push(s.lane.broadcast_id);
            du.push(s.lane.url.as_str());
            dp.push(*page as i32);
        }
    }
    if !b.is_empty() {
        tx.execute(
            "INSERT INTO tagcast_outbox_pages (broadcast_id, url, page, attempts, next_at, lease_until)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::bigint[], $6::bigint[])
             ON CONFLICT (broadcast_id, url, page) DO UPDATE SET attempts = excluded.attempts,
                 next_at = excluded.next_at, lease_until = excluded.lease_until",
            &[&b, &u, &p, &a, &n, &l],
        )
        .await?;
    }
    if !db.is_empty() {
        tx.execute(
            "DELETE FROM tagcast_outbox_pages o USING unnest($1::bigint[], $2::text[], $3::int[]) AS x(b, u, p)
             WHERE o.broadcast_id = x.b AND o.url = x.u AND o.page = x.p",
            &[&db, &du, &dp],
        )
        .await?;
    }
    Ok(())
}

impl Shared {
    pub(super) async fn send_broadcast(
        &self,
        b: NewBroadcast,
        filter: &Filter,
        per_day: u32,
        outlets: Vec<Outlet>,
        now: i64,
    ) -> Result<Sent, StoreError> {
        follow::catch_up(self, b.app_id, self.options.timeout).await?;
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let app = b.app_id as i32;
            // The token first: a concurrent send with it (on any node) holds its key until
            // it commits or rolls back; then this one finds it, or takes it.
            let fresh = tx
                .execute(
                    "INSERT INTO tagcast_broadcast_tokens (app_id, token, created) VALUES ($1, $2, $3)
                     ON CONFLICT (app_id, token) DO UPDATE
                     SET created = excluded.created, broadcast_id = NULL
                     WHERE tagcast_broadcast_tokens.created <= $4",
                    &[&app, &b.token, &now, &(now - TOKEN_TTL_MS)],
                )
                .await
                .map_err(classify)?
                == 1;
            if !fresh {
                let r = tx
                    .query_one(
                        "SELECT broadcast_id, audience_count, expire_time
                         FROM tagcast_broadcast_tokens WHERE app_id = $1 AND token = $2",
                        &[&app, &b.token],
                    )
                    .await
                    .map_err(classify)?;
                tx.rollback().await.map_err(classify)?;
                let id: Option<i64> = r.get(0);
                let id = id.ok_or_else(|| {
                    StoreError::internal("a committed broadcast token has no broadcast")
                })?;
                return Ok(Sent::Created {
                    id,
                    audience_count: r.get::<_, i64>(1) as u64,
                    expire_time: r.get(2),
                    replayed: true,
                });
            }
            let (day, _) = utc_day(now);
            let sent: i32 = tx
                .query_one(
                    "INSERT INTO tagcast_broadcast_days (app_id, day, sent) VALUES ($1, $2, 1)
                     ON CONFLICT (app_id, day) DO UPDATE
                     SET sent = tagcast_broadcast_days.sent + 1 RETURNING sent",
                    &[&app, &day],
                )
                .await
                .map_err(classify)?
                .get(0);
            if i64::from(sent) > i64::from(per_day) {
                tx.rollback().await.map_err(classify)?;
                return Ok(Sent::OverQuota { limit: per_day });
            }
            // After the quota: a refused send selects nothing.
            let audience = self.follower.index.select(b.app_id, b.inbox, filter);
            let count = audience.len();
            let blob = serialize_audience(&audience);
            let expire_time = b.expire_time(now);
            let params: [&(dyn ToSql + Sync); 11] = [
                &app,
                &(b.inbox as i32),
                &b.sender,
                &b.msg_type,
                &b.content,
                &ext_json(&b.ext),
                &b.selector,
                &(count as i64),
                &blob,
                &now,
                &expire_time,
            ];
            let id: i64 = tx
                .query_one(
                    "INSERT INTO tagcast_broadcasts (app_id, inbox_type, sender, msg_type, content,
                         ext, selector, audience_count, audience, create_time, expire_time)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                    &params,
                )
                .await
                .map_err(classify)?
                .get(0);
            tx.execute(
                "UPDATE tagcast_broadcast_tokens SET broadcast_id = $3, audience_count = $4,
                     expire_time = $5
                 WHERE app_id = $1 AND token = $2",
                &[&app, &b.token, &id, &(count as i64), &expire_time],
            )
            .await
            .map_err(classify)?;
            // One lane per webhook, whatever the page count.
            let urls: Vec<&str> = outlets.iter().map(|o| o.url.as_str()).collect();
            let counts: Vec<i32> = outlets
                .iter()
                .map(|o| pages(count, o.page_size) as i32)
                .collect();
            if !urls.is_empty() {
                tx.execute(
                    "INSERT INTO tagcast_outbox_lanes (broadcast_id, url, pages, ready_at, created)
                     SELECT $1, u, n, CASE WHEN n = 0 THEN $4::bigint ELSE $3::bigint END, $3
                     FROM unnest($2::text[], $5::int[]) AS x(u, n)",
                    &[&id, &urls, &now, &CLOSED, &counts],
                )
                .await
                .map_err(classify)?;
            }
            let change = b.sent(id, count, expire_time);
            events::append_event(&tx, &b.origin, &change, now)
                .await
                .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(Sent::Created {
                id,
                audience_count: count,
                expire_time,
                replayed: false,
            })
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn recall_broadcast(
        &self,
        app_id: u32,
        id: i64,
        origin: Origin,
    ) -> Result<bool, StoreError> {
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let was: Option<bool> = tx
                .query_opt(
                    "SELECT recalled FROM tagcast_broadcasts WHERE app_id = $1 AND id = $2 FOR UPDATE",
                    &[&(app_id as i32), &id],
                )
                .await
                .map_err(classify)?
                .map(|r| r.get(0));
            let found = was.is_some();
            if was == Some(false) {
                tx.execute(
                    "UPDATE tagcast_broadcasts SET recalled = true WHERE app_id = $1 AND id = $2",
                    &[&(app_id as i32), &id],
                )
                .await
                .map_err(classify)?;
                let change = Change::BroadcastRecalled { app: app_id, id };
                events::append_event(&tx, &origin, &change, crate::model::now_ms())
                    .await
                    .map_err(classify)?;
                // A lane per webhook and at most a window of open pages: the same cost at
                // any page count.
                tx.execute(
                    "UPDATE tagcast_outbox_lanes
                     SET dropped = GREATEST(pages - delivered - failed, 0), ready_at = $2
                     WHERE broadcast_id = $1 AND ready_at <> $2",
                    &[&id, &CLOSED],
                )
                .await
                .map_err(classify)?;
                tx.execute(
                    "DELETE FROM tagcast_outbox_pages WHERE broadcast_id = $1",
                    &[&id],
                )
                .await
                .map_err(classify)?;
            }
            tx.commit().await.map_err(classify)?;
            Ok(found)
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn get_broadcast(
        &self,
        app_id: u32,
        id: i64,
    ) -> Result<Option<(Info, Delivery)>, StoreError> {
        Ok(self
            .list_where(app_id, "id = $2", id, 1)
            .await?
            .into_iter()
            .next())
    }

    pub(super) async fn broadcasts_on_day(&self, app_id: u32, day: i64) -> Result<u32, StoreError> {
        let work = async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT sent FROM tagcast_broadcast_days WHERE app_id = $1 AND day = $2",
                    &[&(app_id as i32), &day],
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            Ok(row.map_or(0, |r| r.get::<_, i32>(0).max(0) as u32))
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn list_broadcasts(
        &self,
        app_id: u32,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(Info, Delivery)>, StoreError> {
        self.list_where(app_id, "id < $2", before.unwrap_or(i64::MAX), limit)
            .await
    }

    /// The app's broadcasts matching `cond` (on `$2`), newest first, with their delivery
    /// summaries: two queries for any number.
    async fn list_where(
        &self,
        app_id: u32,
        cond: &str,
        arg: i64,
        limit: usize,
    ) -> Result<Vec<(Info, Delivery)>, StoreError> {
        let work = async {
            let classify = |e| classify(&self.target, e);
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {INFO_COLUMNS} FROM tagcast_broadcasts WHERE app_id = $1 AND {cond}
                         ORDER BY id DESC LIMIT $3"
                    ),
                    &[&(app_id as i32), &arg, &(limit as i64)],
                )
                .await
                .map_err(classify)?;
            let infos: Vec<Info> = rows.iter().map(info).collect();
            let ids: Vec<i64> = infos.iter().map(|i| i.id).collect();
            let summaries = deliveries(&client, &ids).await.map_err(classify)?;
            Ok(infos.into_iter().zip(summaries).collect())
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn active_broadcasts(
        &self,
        app_id: u32,
        inbox: u32,
        user_id: i64,
        now: i64,
    ) -> Result<(Option<u32>, Vec<i64>), StoreError> {
        let work = async {
            let client = self.client().await?;
            let st = client
                .prepare_cached(
                    "SELECT (SELECT ordinal FROM users WHERE app_id = $1 AND user_id = $2),
                            ARRAY(SELECT id FROM tagcast_broadcasts
                                  WHERE app_id = $1 AND inbox_type = $3 AND NOT recalled
                                    AND expire_time > $4
                                  ORDER BY id DESC)",
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            let row = client
                .query_one(&st, &[&(app_id as i32), &user_id, &(inbox as i32), &now])
                .await
                .map_err(|e| classify(&self.target, e))?;
            let ordinal: Option<i64> = row.get(0);
            match ordinal {
                None => Ok((None, Vec::new())),
                Some(o) => Ok((Some(o as u32), row.get(1))),
            }
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn load_broadcast(&self, id: i64) -> Result<Option<Loaded>, StoreError> {
        let work = async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {INFO_COLUMNS}, audience FROM tagcast_broadcasts WHERE id = $1"
                    ),
                    &[&id],
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let blob: Vec<u8> = r.get(12);
                    Ok(Some(Loaded {
                        info: info(&r),
                        audience: deserialize_audience(&blob).map_err(|e| {
                            StoreError::internal(format!(
                                "the audience of broadcast {id} is unreadable"
                            ))
                            .caused_by(e)
                        })?,
                    }))
                }
            }
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn claim_pages(
        &self,
        now: i64,
        lease_ms: i64,
        window: u32,
        wants: Vec<(String, usize)>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let mut claimed = Vec::new();
            for (url, want) in &wants {
                // Lanes another node is claiming or finishing are skipped, not waited for.
                let rows = tx
                    .query(
                        &format!(
                            "SELECT {LANE_COLUMNS} FROM tagcast_outbox_lanes
                             WHERE url = $1 AND ready_at <= $2 ORDER BY turn, broadcast_id
                             LIMIT $3 FOR UPDATE SKIP LOCKED"
                        ),
                        &[url, &now, &(*want as i64)],
                    )
                    .await
                    .map_err(classify)?;
                if rows.is_empty() {
                    continue;
                }
                let mut states = lane_states(&tx, rows.iter().map(lane).collect())
                    .await
                    .map_err(classify)?;
                claimed.extend(outbox::claim(&mut states, now, lease_ms, window, *want));
                write_lanes(&tx, &states).await.map_err(classify)?;
            }
            tx.commit().await.map_err(classify)?;
            Ok(claimed)
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn finish_pages(
        &self,
        done: Vec<(PageKey, PageDone)>,
        window: u32,
    ) -> Result<(), StoreError> {
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let mut keys: Vec<(i64, &str)> = done
                .iter()
                .map(|(k, _)| (k.broadcast_id, k.url.as_str()))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
            let urls: Vec<&str> = keys.iter().map(|k| k.1).collect();
            // Locked in key order, so two nodes finishing pages of the same lanes never
            // deadlock; purged lanes are simply absent.
            let rows = tx
                .query(
                    &format!(
                        "SELECT {LANE_COLUMNS} FROM tagcast_outbox_lanes
                         WHERE (broadcast_id, url) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))
                         ORDER BY broadcast_id, url FOR UPDATE"
                    ),
                    &[&ids, &urls],
                )
                .await
                .map_err(classify)?;
            let mut states = lane_states(&tx, rows.iter().map(lane).collect())
                .await
                .map_err(classify)?;
            for (k, d) in &done {
                if let Some(s) = states
                    .iter_mut()
                    .find(|s| s.lane.broadcast_id == k.broadcast_id && s.lane.url == k.url)
                {
                    outbox::finish(s, k.page, *d, window);
                }
            }
            write_lanes(&tx, &states).await.map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(())
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let work = async {
            let client = self.client().await?;
            let r = client
                .query_one(
                    "SELECT COALESCE(SUM(GREATEST(pages - delivered - failed - dropped, 0)), 0)::bigint,
                            MIN(created)
                     FROM tagcast_outbox_lanes WHERE ready_at <> $1",
                    &[&CLOSED],
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            Ok(OutboxStats {
                pending: r.get::<_, i64>(0) as u64,
                oldest_pending_ms: r.get(1),
            })
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn purge_expired(&self, now: i64) -> Result<Purged, StoreError> {
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let (today, _) = utc_day(now);
            let tx = client.transaction().await.map_err(classify)?;
            // A lane per webhook and at most a window of pages each: the cost does not
            // depend on the page count.
            let r = tx
                .query_one(
                    "WITH gone AS (DELETE FROM tagcast_broadcasts WHERE expire_time <= $1 RETURNING id),
                          lanes AS (DELETE FROM tagcast_outbox_lanes WHERE broadcast_id IN (SELECT id FROM gone)
                                    RETURNING GREATEST(pages - delivered - failed - dropped, 0) AS unsent),
                          pages AS (DELETE FROM tagcast_outbox_pages WHERE broadcast_id IN (SELECT id FROM gone))
                     SELECT (SELECT COUNT(*) FROM gone),
                            (SELECT COALESCE(SUM(unsent), 0)::bigint FROM lanes)",
                    &[&now],
                )
                .await
                .map_err(classify)?;
            tx.execute(
                "DELETE FROM tagcast_broadcast_days WHERE day < $1",
                &[&(today - 1)],
            )
            .await
            .map_err(classify)?;
            tx.execute(
                "DELETE FROM tagcast_broadcast_tokens WHERE created <= $1",
                &[&(now - TOKEN_TTL_MS)],
            )
            .await
            .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(Purged {
                broadcasts: r.get::<_, i64>(0) as u64,
                pending_pages: r.get::<_, i64>(1) as u64,
            })
        };
        within(self.options.timeout, work).await
    }
}
