//! Broadcasts and their outbox in SQLite (the tables of schema v4). Writes run on the
//! writer thread ([`super::writer::Msg::Run`]), after the batch queued with them, so a
//! broadcast's audience holds every write acknowledged before it; reads use the pool.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::audience::AudienceIndex;
use crate::audience::filter::Filter;
use crate::broadcast::{
    Claimed, Delivery, Info, Loaded, NewBroadcast, OutboxStats, Outlet, PageDone, PageKey, Purged,
    Sent, deserialize_audience, pages, serialize_audience, state, utc_day,
};
use crate::store::{StoreError, ext_json};

const INFO_COLUMNS: &str = "id, app_id, inbox_type, sender, msg_type, content, ext, selector, \
                            audience_count, create_time, expire_time, recalled";

fn info(r: &Row<'_>) -> rusqlite::Result<Info> {
    let ext: String = r.get(6)?;
    Ok(Info {
        id: r.get(0)?,
        app_id: r.get(1)?,
        inbox: r.get(2)?,
        sender: r.get(3)?,
        msg_type: r.get(4)?,
        content: r.get(5)?,
        ext: serde_json::from_str::<BTreeMap<String, String>>(&ext).unwrap_or_default(),
        selector: r.get(7)?,
        audience_count: r.get::<_, i64>(8)? as u64,
        create_time: r.get(9)?,
        expire_time: r.get(10)?,
        recalled: r.get(11)?,
    })
}

pub(super) fn send(
    conn: &mut Connection,
    index: &AudienceIndex,
    b: &NewBroadcast,
    filter: &Filter,
    per_day: u32,
    outlets: &[Outlet],
    now: i64,
) -> rusqlite::Result<Sent> {
    let audience = index.select(b.app_id, b.inbox, filter);
    let count = audience.len();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (day, _) = utc_day(now);
    let sent: i64 = tx.query_row(
        "INSERT INTO tagcast_broadcast_days (app_id, day, sent) VALUES (?1, ?2, 1)
         ON CONFLICT (app_id, day) DO UPDATE SET sent = sent + 1 RETURNING sent",
        params![b.app_id, day],
        |r| r.get(0),
    )?;
    if sent > i64::from(per_day) {
        // Dropping the transaction rolls the count back.
        return Ok(Sent::OverQuota { limit: per_day });
    }
    let expire_time = now + i64::from(b.ttl_secs) * 1000;
    tx.execute(
        "INSERT INTO tagcast_broadcasts (app_id, inbox_type, sender, msg_type, content, ext,
             selector, audience_count, audience, create_time, expire_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            b.app_id,
            b.inbox,
            b.sender,
            b.msg_type,
            b.content,
            ext_json(&b.ext),
            b.selector,
            count as i64,
            serialize_audience(&audience),
            now,
            expire_time
        ],
    )?;
    let id = tx.last_insert_rowid();
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO tagcast_outbox (broadcast_id, url, page, next_at, created)
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )?;
        for o in outlets {
            for page in 0..pages(count, o.page_size) {
                st.execute(params![id, o.url, page, now])?;
            }
        }
    }
    tx.commit()?;
    Ok(Sent::Created {
        id,
        audience_count: count,
        create_time: now,
        expire_time,
    })
}

pub(super) fn recall(conn: &mut Connection, app_id: u32, id: i64) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = tx.execute(
        "UPDATE tagcast_broadcasts SET recalled = 1 WHERE app_id = ?1 AND id = ?2",
        params![app_id, id],
    )? > 0;
    tx.execute(
        "UPDATE tagcast_outbox SET state = ?2, lease_until = 0 WHERE broadcast_id = ?1 AND state = ?3",
        params![id, state::DROPPED, state::PENDING],
    )?;
    tx.commit()?;
    Ok(found)
}

fn delivery(conn: &Connection, id: i64) -> rusqlite::Result<Delivery> {
    let mut st = conn.prepare_cached(
        "SELECT state, COUNT(*) FROM tagcast_outbox WHERE broadcast_id = ?1 GROUP BY state",
    )?;
    let mut d = Delivery::default();
    let rows = st.query_map([id], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    for row in rows {
        let (s, n) = row?;
        d.pages += n;
        match s {
            state::PENDING => d.pending += n,
            state::DELIVERED => d.delivered += n,
            state::FAILED => d.failed += n,
            _ => d.dropped += n,
        }
    }
    Ok(d)
}

pub(super) fn get(
    conn: &Connection,
    app_id: u32,
    id: i64,
) -> rusqlite::Result<Option<(Info, Delivery)>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {INFO_COLUMNS} FROM tagcast_broadcasts WHERE app_id = ?1 AND id = ?2"
        ))?
        .query_row(params![app_id, id], info)
        .optional()?;
    match found {
        None => Ok(None),
        Some(i) => Ok(Some((i, delivery(conn, id)?))),
    }
}

pub(super) fn list(
    conn: &Connection,
    app_id: u32,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<(Info, Delivery)>> {
    let infos: Vec<Info> = conn
        .prepare_cached(&format!(
            "SELECT {INFO_COLUMNS} FROM tagcast_broadcasts WHERE app_id = ?1 AND id < ?2
             ORDER BY id DESC LIMIT ?3"
        ))?
        .query_map(
            params![app_id, before.unwrap_or(i64::MAX), limit as i64],
            info,
        )?
        .collect::<rusqlite::Result<_>>()?;
    infos
        .into_iter()
        .map(|i| {
            let d = delivery(conn, i.id)?;
            Ok((i, d))
        })
        .collect()
}

/// The user's ordinal (`None`: not registered).
pub(super) fn ordinal(
    conn: &Connection,
    app_id: u32,
    user_id: i64,
) -> rusqlite::Result<Option<u32>> {
    let ordinal: Option<Option<i64>> = conn
        .prepare_cached("SELECT ordinal FROM users WHERE app_id = ?1 AND user_id = ?2")?
        .query_row(params![app_id, user_id], |r| r.get(0))
        .optional()?;
    Ok(ordinal.flatten().map(|o| o as u32))
}

/// A broadcast neither recalled nor purged, as the pull needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Active {
    pub id: i64,
    pub inbox: u32,
    pub expire_time: i64,
}

/// Every app's broadcasts that are neither recalled nor purged, in id order. The single
/// process owning the directory keeps this list in memory beside the table (send, recall
/// and purge change both), so the pull reads only the user's ordinal.
#[derive(Default)]
pub(super) struct ActiveList(std::sync::Mutex<std::collections::HashMap<u32, Vec<Active>>>);

impl ActiveList {
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let list = ActiveList::default();
        {
            let mut map = list.0.lock().expect("active lock");
            let mut st = conn.prepare(
                "SELECT app_id, id, inbox_type, expire_time FROM tagcast_broadcasts
                 WHERE recalled = 0 ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    Active {
                        id: r.get(1)?,
                        inbox: r.get(2)?,
                        expire_time: r.get(3)?,
                    },
                ))
            })?;
            for row in rows {
                let (app, a) = row?;
                map.entry(app).or_default().push(a);
            }
        }
        Ok(list)
    }

    pub(super) fn add(&self, app_id: u32, a: Active) {
        let mut map = self.0.lock().expect("active lock");
        let list = map.entry(app_id).or_default();
        let at = list.partition_point(|x| x.id < a.id);
        list.insert(at, a);
    }

    pub(super) fn remove(&self, app_id: u32, id: i64) {
        if let Some(list) = self.0.lock().expect("active lock").get_mut(&app_id) {
            list.retain(|a| a.id != id);
        }
    }

    pub(super) fn expire(&self, now: i64) {
        for list in self.0.lock().expect("active lock").values_mut() {
            list.retain(|a| a.expire_time > now);
        }
    }

    /// Ids of the app's broadcasts in `inbox` unexpired at `now`, newest first.
    pub(super) fn ids(&self, app_id: u32, inbox: u32, now: i64) -> Vec<i64> {
        let map = self.0.lock().expect("active lock");
        map.get(&app_id).map_or_else(Vec::new, |list| {
            list.iter()
                .rev()
                .filter(|a| a.inbox == inbox && a.expire_time > now)
                .map(|a| a.id)
                .collect()
        })
    }
}

pub(super) fn load(conn: &Connection, id: i64) -> Result<Option<Loaded>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {INFO_COLUMNS}, audience FROM tagcast_broadcasts WHERE id = ?1"
        ))
        .and_then(|mut st| {
            st.query_row([id], |r| Ok((info(r)?, r.get::<_, Vec<u8>>(12)?)))
                .optional()
        })
        .map_err(|e| StoreError::Internal(format!("reading broadcast {id}: {e}")))?;
    match row {
        None => Ok(None),
        Some((info, blob)) => Ok(Some(Loaded {
            info,
            audience: deserialize_audience(&blob)?,
        })),
    }
}

pub(super) fn claim(
    conn: &mut Connection,
    now: i64,
    lease_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Claimed>> {
    // Nothing due: no transaction, no write.
    let due: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 FROM tagcast_outbox WHERE state = 0 AND next_at <= ?1 AND lease_until <= ?1 LIMIT 1",
        )?
        .query_row([now], |r| r.get(0))
        .optional()?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let claimed = tx
        .prepare_cached(
            "UPDATE tagcast_outbox SET lease_until = ?1 + ?2, attempts = attempts + 1
             WHERE rowid IN (SELECT rowid FROM tagcast_outbox
                             WHERE state = 0 AND next_at <= ?1 AND lease_until <= ?1
                             ORDER BY next_at LIMIT ?3)
             RETURNING broadcast_id, url, page, attempts",
        )?
        .query_map(params![now, lease_ms, limit as i64], |r| {
            Ok(Claimed {
                key: PageKey {
                    broadcast_id: r.get(0)?,
                    url: r.get(1)?,
                    page: r.get(2)?,
                },
                attempts: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(claimed)
}

pub(super) fn finish(conn: &mut Connection, done: &[(PageKey, PageDone)]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut st = tx.prepare_cached(
            "UPDATE tagcast_outbox SET state = ?4, next_at = ?5, lease_until = 0
             WHERE broadcast_id = ?1 AND url = ?2 AND page = ?3 AND state = 0",
        )?;
        for (k, d) in done {
            let (s, next_at) = match d {
                PageDone::Delivered => (state::DELIVERED, 0),
                PageDone::Retry { at_ms } => (state::PENDING, *at_ms),
                PageDone::Failed => (state::FAILED, 0),
            };
            st.execute(params![k.broadcast_id, k.url, k.page, s, next_at])?;
        }
    }
    tx.commit()
}

/// A previous process's leases: nobody holds them any more (one process per directory).
pub(super) fn release_leases(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE tagcast_outbox SET lease_until = 0 WHERE lease_until <> 0",
        [],
    )
}

pub(super) fn stats(conn: &Connection) -> rusqlite::Result<OutboxStats> {
    conn.prepare_cached("SELECT COUNT(*), MIN(created) FROM tagcast_outbox WHERE state = 0")?
        .query_row([], |r| {
            Ok(OutboxStats {
                pending: r.get::<_, i64>(0)? as u64,
                oldest_pending_ms: r.get(1)?,
            })
        })
}

pub(super) fn purge(conn: &mut Connection, now: i64) -> rusqlite::Result<Purged> {
    let (today, _) = utc_day(now);
    let expired: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM tagcast_broadcasts WHERE expire_time <= ?1 LIMIT 1")?
        .query_row([now], |r| r.get(0))
        .optional()?;
    let old_days: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM tagcast_broadcast_days WHERE day < ?1 LIMIT 1")?
        .query_row([today - 1], |r| r.get(0))
        .optional()?;
    if expired.is_none() && old_days.is_none() {
        return Ok(Purged::default());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let pending_pages: i64 = tx.query_row(
        "SELECT COUNT(*) FROM tagcast_outbox WHERE state = 0 AND broadcast_id IN
             (SELECT id FROM tagcast_broadcasts WHERE expire_time <= ?1)",
        [now],
        |r| r.get(0),
    )?;
    tx.execute(
        "DELETE FROM tagcast_outbox WHERE broadcast_id IN
             (SELECT id FROM tagcast_broadcasts WHERE expire_time <= ?1)",
        [now],
    )?;
    let broadcasts = tx.execute(
        "DELETE FROM tagcast_broadcasts WHERE expire_time <= ?1",
        [now],
    )?;
    tx.execute(
        "DELETE FROM tagcast_broadcast_days WHERE day < ?1",
        [today - 1],
    )?;
    tx.commit()?;
    Ok(Purged {
        broadcasts: broadcasts as u64,
        pending_pages: pending_pages as u64,
    })
}
