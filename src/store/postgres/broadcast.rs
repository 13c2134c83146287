//! Broadcasts and their outbox in PostgreSQL (the tables of schema v3).
//!
//! - A send first catches this node's audience index up with the change log (so the
//!   frozen audience holds every write acknowledged on any node), then counts the send
//!   in `tagcast_broadcast_days` (the row lock orders concurrent sends of one app on
//!   every node; over the quota the transaction rolls back) and inserts the broadcast and
//!   its outbox pages, in one transaction.
//! - Pages are claimed with `FOR UPDATE SKIP LOCKED` under a lease: one node at a time
//!   sends a page; a node that dies holding it lets another take it once the lease ends.

use std::collections::BTreeMap;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Shared, classify, follow, within};
use crate::audience::filter::Filter;
use crate::broadcast::{
    Claimed, Delivery, Info, Loaded, NewBroadcast, OutboxStats, Outlet, PageDone, PageKey, Purged,
    Sent, deserialize_audience, pages, serialize_audience, state, utc_day,
};
use crate::store::{StoreError, ext_json, now_ms};

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

fn delivery_of(rows: &[Row]) -> Delivery {
    let mut d = Delivery::default();
    for r in rows {
        let (s, n): (i16, i64) = (r.get(0), r.get(1));
        let n = n as u64;
        d.pages += n;
        match i64::from(s) {
            state::PENDING => d.pending += n,
            state::DELIVERED => d.delivered += n,
            state::FAILED => d.failed += n,
            _ => d.dropped += n,
        }
    }
    d
}

impl Shared {
    pub(super) async fn send_broadcast(
        &self,
        b: NewBroadcast,
        filter: &Filter,
        per_day: u32,
        outlets: Vec<Outlet>,
    ) -> Result<Sent, StoreError> {
        follow::catch_up(self, self.options.timeout).await?;
        let audience = self.follower.index.select(b.app_id, b.inbox, filter);
        let count = audience.len();
        let blob = serialize_audience(&audience);
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let now = now_ms();
            let (day, _) = utc_day(now);
            let app = b.app_id as i32;
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
            let expire_time = now + i64::from(b.ttl_secs) * 1000;
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
            let mut urls = Vec::new();
            let mut page_numbers = Vec::new();
            for o in &outlets {
                for p in 0..pages(count, o.page_size) {
                    urls.push(o.url.clone());
                    page_numbers.push(p as i32);
                }
            }
            if !urls.is_empty() {
                tx.execute(
                    "INSERT INTO tagcast_outbox (broadcast_id, url, page, next_at, created)
                     SELECT $1, u, p, $4, $4 FROM unnest($2::text[], $3::int[]) AS x(u, p)",
                    &[&id, &urls, &page_numbers, &now],
                )
                .await
                .map_err(classify)?;
            }
            tx.commit().await.map_err(classify)?;
            Ok(Sent::Created {
                id,
                audience_count: count,
                create_time: now,
                expire_time,
            })
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn recall_broadcast(&self, app_id: u32, id: i64) -> Result<bool, StoreError> {
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let found = tx
                .execute(
                    "UPDATE tagcast_broadcasts SET recalled = true WHERE app_id = $1 AND id = $2",
                    &[&(app_id as i32), &id],
                )
                .await
                .map_err(classify)?
                > 0;
            tx.execute(
                "UPDATE tagcast_outbox SET state = 3, lease_until = 0
                 WHERE broadcast_id = $1 AND state = 0",
                &[&id],
            )
            .await
            .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(found)
        };
        within(self.options.timeout, work).await
    }

    async fn delivery(
        &self,
        client: &deadpool_postgres::Object,
        id: i64,
    ) -> Result<Delivery, StoreError> {
        let rows = client
            .query(
                "SELECT state, COUNT(*) FROM tagcast_outbox WHERE broadcast_id = $1 GROUP BY state",
                &[&id],
            )
            .await
            .map_err(|e| classify(&self.target, e))?;
        Ok(delivery_of(&rows))
    }

    pub(super) async fn get_broadcast(
        &self,
        app_id: u32,
        id: i64,
    ) -> Result<Option<(Info, Delivery)>, StoreError> {
        let work = async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {INFO_COLUMNS} FROM tagcast_broadcasts WHERE app_id = $1 AND id = $2"
                    ),
                    &[&(app_id as i32), &id],
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some((info(&r), self.delivery(&client, id).await?))),
            }
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn list_broadcasts(
        &self,
        app_id: u32,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(Info, Delivery)>, StoreError> {
        let work = async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {INFO_COLUMNS} FROM tagcast_broadcasts WHERE app_id = $1 AND id < $2
                         ORDER BY id DESC LIMIT $3"
                    ),
                    &[
                        &(app_id as i32),
                        &before.unwrap_or(i64::MAX),
                        &(limit as i64),
                    ],
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let i = info(r);
                let d = self.delivery(&client, i.id).await?;
                out.push((i, d));
            }
            Ok(out)
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
                        audience: deserialize_audience(&blob)?,
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
        limit: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let work = async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "UPDATE tagcast_outbox o SET lease_until = $1 + $2, attempts = o.attempts + 1
                     FROM (SELECT broadcast_id, url, page FROM tagcast_outbox
                           WHERE state = 0 AND next_at <= $1 AND lease_until <= $1
                           ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED) c
                     WHERE o.broadcast_id = c.broadcast_id AND o.url = c.url AND o.page = c.page
                     RETURNING o.broadcast_id, o.url, o.page, o.attempts",
                    &[&now, &lease_ms, &(limit as i64)],
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            Ok(rows
                .iter()
                .map(|r| Claimed {
                    key: PageKey {
                        broadcast_id: r.get(0),
                        url: r.get(1),
                        page: r.get::<_, i32>(2) as u32,
                    },
                    attempts: r.get::<_, i32>(3) as u32,
                })
                .collect())
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn finish_pages(
        &self,
        done: Vec<(PageKey, PageDone)>,
    ) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(done.len());
        let mut urls = Vec::with_capacity(done.len());
        let mut page_numbers = Vec::with_capacity(done.len());
        let mut states = Vec::with_capacity(done.len());
        let mut next = Vec::with_capacity(done.len());
        for (k, d) in done {
            let (s, at) = match d {
                PageDone::Delivered => (state::DELIVERED, 0),
                PageDone::Retry { at_ms } => (state::PENDING, at_ms),
                PageDone::Failed => (state::FAILED, 0),
            };
            ids.push(k.broadcast_id);
            urls.push(k.url);
            page_numbers.push(k.page as i32);
            states.push(s as i16);
            next.push(at);
        }
        let work = async {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE tagcast_outbox o SET state = x.s, next_at = x.n, lease_until = 0
                     FROM unnest($1::bigint[], $2::text[], $3::int[], $4::smallint[], $5::bigint[])
                          AS x(b, u, p, s, n)
                     WHERE o.broadcast_id = x.b AND o.url = x.u AND o.page = x.p AND o.state = 0",
                    &[&ids, &urls, &page_numbers, &states, &next],
                )
                .await
                .map_err(|e| classify(&self.target, e))?;
            Ok(())
        };
        within(self.options.timeout, work).await
    }

    pub(super) async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let work = async {
            let client = self.client().await?;
            let r = client
                .query_one(
                    "SELECT COUNT(*), MIN(created) FROM tagcast_outbox WHERE state = 0",
                    &[],
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
            let r = tx
                .query_one(
                    "WITH gone AS (DELETE FROM tagcast_broadcasts WHERE expire_time <= $1 RETURNING id),
                          pages AS (DELETE FROM tagcast_outbox WHERE broadcast_id IN (SELECT id FROM gone)
                                    RETURNING state)
                     SELECT (SELECT COUNT(*) FROM gone),
                            (SELECT COUNT(*) FROM pages WHERE state = 0)",
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
            tx.commit().await.map_err(classify)?;
            Ok(Purged {
                broadcasts: r.get::<_, i64>(0) as u64,
                pending_pages: r.get::<_, i64>(1) as u64,
            })
        };
        within(self.options.timeout, work).await
    }
}
