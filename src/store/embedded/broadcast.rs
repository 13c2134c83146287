//! Broadcasts and their outbox in SQLite (the tables of schema v4 and v5). Writes run on
//! the writer thread ([`super::writer::Msg::Run`]), after the batch queued with them, so a
//! broadcast's audience holds every write acknowledged before it; reads use the pool. The
//! outbox's rules (lanes, open pages, turns) are `store/outbox.rs`'s; this file reads
//! and writes their rows.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::events;
use crate::audience::AudienceIndex;
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
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The only writer: a token in the table is a send that committed.
    let earlier = tx
        .prepare_cached(
            "SELECT broadcast_id, audience_count, expire_time FROM tagcast_broadcast_tokens
             WHERE app_id = ?1 AND token = ?2 AND created > ?3",
        )?
        .query_row(params![b.app_id, b.token, now - TOKEN_TTL_MS], |r| {
            Ok(Sent::Created {
                id: r.get(0)?,
                audience_count: r.get::<_, i64>(1)? as u64,
                expire_time: r.get(2)?,
                replayed: true,
            })
        })
        .optional()?;
    if let Some(earlier) = earlier {
        return Ok(earlier);
    }
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
    let audience = index.select(b.app_id, b.inbox, filter);
    let count = audience.len();
    let expire_time = b.expire_time(now);
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
    tx.execute(
        "INSERT INTO tagcast_broadcast_tokens
             (app_id, token, broadcast_id, audience_count, expire_time, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (app_id, token) DO UPDATE SET broadcast_id = excluded.broadcast_id,
             audience_count = excluded.audience_count, expire_time = excluded.expire_time,
             created = excluded.created",
        params![b.app_id, b.token, id, count as i64, expire_time, now],
    )?;
    {
        // One lane per webhook, whatever the page count.
        let mut st = tx.prepare_cached(
            "INSERT INTO tagcast_outbox_lanes (broadcast_id, url, pages, ready_at, created)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for o in outlets {
            let n = pages(count, o.page_size);
            let ready_at = if n == 0 { CLOSED } else { now };
            st.execute(params![id, o.url, n, ready_at, now])?;
        }
    }
    let change = b.sent(id, count, expire_time);
    let pos = events::append_event(&tx, index, &b.origin, &change, now)?;
    tx.commit()?;
    events::applied(index, &change, now, pos);
    Ok(Sent::Created {
        id,
        audience_count: count,
        expire_time,
        replayed: false,
    })
}

pub(super) fn recall(
    conn: &mut Connection,
    index: &AudienceIndex,
    app_id: u32,
    id: i64,
    origin: &Origin,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let was: Option<bool> = tx
        .query_row(
            "SELECT recalled FROM tagcast_broadcasts WHERE app_id = ?1 AND id = ?2",
            params![app_id, id],
            |r| r.get(0),
        )
        .optional()?;
    let found = was.is_some();
    let mut logged = None;
    if was == Some(false) {
        tx.execute(
            "UPDATE tagcast_broadcasts SET recalled = 1 WHERE app_id = ?1 AND id = ?2",
            params![app_id, id],
        )?;
        let change = Change::BroadcastRecalled { app: app_id, id };
        let now = crate::model::now_ms();
        let pos = events::append_event(&tx, index, origin, &change, now)?;
        logged = Some((change, now, pos));
        let lanes = lanes_of(&tx, id)?;
        let mut st = tx.prepare_cached(
            "UPDATE tagcast_outbox_lanes SET dropped = ?3, ready_at = ?4
             WHERE broadcast_id = ?1 AND url = ?2",
        )?;
        for mut lane in lanes.into_iter().filter(|l| l.ready_at != CLOSED) {
            outbox::drop_rest(&mut lane);
            st.execute(params![id, lane.url, lane.dropped, lane.ready_at])?;
        }
        tx.execute(
            "DELETE FROM tagcast_outbox_pages WHERE broadcast_id = ?1",
            [id],
        )?;
    }
    tx.commit()?;
    if let Some((change, now, pos)) = logged {
        events::applied(index, &change, now, pos);
    }
    Ok(found)
}

const LANE_COLUMNS: &str =
    "broadcast_id, url, pages, next_page, delivered, failed, dropped, turn, ready_at, created";

fn lane(r: &Row<'_>) -> rusqlite::Result<Lane> {
    Ok(Lane {
        broadcast_id: r.get(0)?,
        url: r.get(1)?,
        pages: r.get(2)?,
        next_page: r.get(3)?,
        delivered: r.get(4)?,
        failed: r.get(5)?,
        dropped: r.get(6)?,
        turn: r.get(7)?,
        ready_at: r.get(8)?,
        created: r.get(9)?,
    })
}

/// A broadcast's lanes, one per webhook it went to.
fn lanes_of(conn: &Connection, id: i64) -> rusqlite::Result<Vec<Lane>> {
    conn.prepare_cached(&format!(
        "SELECT {LANE_COLUMNS} FROM tagcast_outbox_lanes WHERE broadcast_id = ?1"
    ))?
    .query_map([id], lane)?
    .collect()
}

fn delivery(conn: &Connection, id: i64) -> rusqlite::Result<Delivery> {
    Ok(outbox::summary(&lanes_of(conn, id)?))
}

pub(super) fn sent_on_day(conn: &Connection, app_id: u32, day: i64) -> rusqlite::Result<u32> {
    Ok(conn
        .prepare_cached("SELECT sent FROM tagcast_broadcast_days WHERE app_id = ?1 AND day = ?2")?
        .query_row(params![app_id, day], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, |n| n.clamp(0, i64::from(u32::MAX)) as u32))
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
        .map_err(|e| StoreError::internal(format!("reading broadcast {id}")).caused_by(e))?;
    match row {
        None => Ok(None),
        Some((info, blob)) => Ok(Some(Loaded {
            info,
            audience: deserialize_audience(&blob).map_err(|e| {
                StoreError::internal(format!("the audience of broadcast {id} is unreadable"))
                    .caused_by(e)
            })?,
        })),
    }
}

fn open_page(r: &Row<'_>) -> rusqlite::Result<OpenPage> {
    Ok(OpenPage {
        page: r.get(0)?,
        attempts: r.get(1)?,
        next_at: r.get(2)?,
        lease_until: r.get(3)?,
    })
}

/// A lane with its open pages, as the outbox's rules take it.
fn lane_state(conn: &Connection, lane: Lane) -> rusqlite::Result<LaneState> {
    let open = conn
        .prepare_cached(
            "SELECT page, attempts, next_at, lease_until FROM tagcast_outbox_pages
             WHERE broadcast_id = ?1 AND url = ?2",
        )?
        .query_map(params![lane.broadcast_id, lane.url], open_page)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(LaneState::new(lane, open))
}

/// Writes what the outbox's rules changed in a lane.
fn write_lane(conn: &Connection, s: &LaneState) -> rusqlite::Result<()> {
    if !s.changed {
        return Ok(());
    }
    let l = &s.lane;
    conn.prepare_cached(
        "UPDATE tagcast_outbox_lanes SET next_page = ?3, delivered = ?4, failed = ?5,
             turn = ?6, ready_at = ?7
         WHERE broadcast_id = ?1 AND url = ?2",
    )?
    .execute(params![
        l.broadcast_id,
        l.url,
        l.next_page,
        l.delivered,
        l.failed,
        l.turn,
        l.ready_at
    ])?;
    let mut up = conn.prepare_cached(
        "INSERT INTO tagcast_outbox_pages (broadcast_id, url, page, attempts, next_at, lease_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (broadcast_id, url, page) DO UPDATE SET attempts = excluded.attempts,
             next_at = excluded.next_at, lease_until = excluded.lease_until",
    )?;
    for p in &s.upserts {
        up.execute(params![
            l.broadcast_id,
            l.url,
            p.page,
            p.attempts,
            p.next_at,
            p.lease_until
        ])?;
    }
    let mut del = conn.prepare_cached(
        "DELETE FROM tagcast_outbox_pages WHERE broadcast_id = ?1 AND url = ?2 AND page = ?3",
    )?;
    for page in &s.deletes {
        del.execute(params![l.broadcast_id, l.url, page])?;
    }
    Ok(())
}

/// Claims up to `want` due pages of each webhook URL, its lanes in turn.
pub(super) fn claim(
    conn: &mut Connection,
    now: i64,
    lease_ms: i64,
    window: u32,
    wants: &[(String, usize)],
) -> rusqlite::Result<Vec<Claimed>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut claimed = Vec::new();
    for (url, want) in wants {
        let lanes: Vec<Lane> = tx
            .prepare_cached(&format!(
                "SELECT {LANE_COLUMNS} FROM tagcast_outbox_lanes
                 WHERE url = ?1 AND ready_at <= ?2 ORDER BY turn, broadcast_id LIMIT ?3"
            ))?
            .query_map(params![url, now, *want as i64], lane)?
            .collect::<rusqlite::Result<_>>()?;
        if lanes.is_empty() {
            continue;
        }
        let mut states = lanes
            .into_iter()
            .map(|l| lane_state(&tx, l))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        claimed.extend(outbox::claim(&mut states, now, lease_ms, window, *want));
        for s in &states {
            write_lane(&tx, s)?;
        }
    }
    if claimed.is_empty() {
        // Nothing was due: nothing to commit (and no fsync).
        return Ok(claimed);
    }
    tx.commit()?;
    Ok(claimed)
}

pub(super) fn finish(
    conn: &mut Connection,
    done: &[(PageKey, PageDone)],
    window: u32,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (k, d) in done {
        let found = tx
            .prepare_cached(&format!(
                "SELECT {LANE_COLUMNS} FROM tagcast_outbox_lanes WHERE broadcast_id = ?1 AND url = ?2"
            ))?
            .query_row(params![k.broadcast_id, k.url], lane)
            .optional()?;
        // Purged meanwhile: nothing to record.
        let Some(l) = found else { continue };
        let mut s = lane_state(&tx, l)?;
        outbox::finish(&mut s, k.page, *d, window);
        write_lane(&tx, &s)?;
    }
    tx.commit()
}

/// A previous process's leases: nobody holds them any more (one process per directory).
pub(super) fn release_leases(conn: &Connection) -> rusqlite::Result<usize> {
    let released = conn.execute(
        "UPDATE tagcast_outbox_pages SET lease_until = 0 WHERE lease_until <> 0",
        [],
    )?;
    // Their lanes are due again: at the earliest time any of their pages is.
    conn.execute(
        "UPDATE tagcast_outbox_lanes SET ready_at = MIN(ready_at, COALESCE(
             (SELECT MIN(next_at) FROM tagcast_outbox_pages p
              WHERE p.broadcast_id = tagcast_outbox_lanes.broadcast_id
                AND p.url = tagcast_outbox_lanes.url), ready_at))
         WHERE ready_at <> ?1",
        [CLOSED],
    )?;
    Ok(released)
}

pub(super) fn stats(conn: &Connection) -> rusqlite::Result<OutboxStats> {
    conn.prepare_cached(
        "SELECT COALESCE(SUM(MAX(pages - delivered - failed - dropped, 0)), 0), MIN(created)
         FROM tagcast_outbox_lanes WHERE ready_at <> ?1",
    )?
    .query_row([CLOSED], |r| {
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
    let old_tokens: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM tagcast_broadcast_tokens WHERE created <= ?1 LIMIT 1")?
        .query_row([now - TOKEN_TTL_MS], |r| r.get(0))
        .optional()?;
    if expired.is_none() && old_days.is_none() && old_tokens.is_none() {
        return Ok(Purged::default());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A lane per webhook and at most a window of pages each: the cost of a purge does
    // not depend on the page count.
    let pending_pages: i64 = tx.query_row(
        "SELECT COALESCE(SUM(MAX(pages - delivered - failed - dropped, 0)), 0)
         FROM tagcast_outbox_lanes WHERE broadcast_id IN
             (SELECT id FROM tagcast_broadcasts WHERE expire_time <= ?1)",
        [now],
        |r| r.get(0),
    )?;
    for table in ["tagcast_outbox_pages", "tagcast_outbox_lanes"] {
        tx.execute(
            &format!(
                "DELETE FROM {table} WHERE broadcast_id IN
                     (SELECT id FROM tagcast_broadcasts WHERE expire_time <= ?1)"
            ),
            [now],
        )?;
    }
    let broadcasts = tx.execute(
        "DELETE FROM tagcast_broadcasts WHERE expire_time <= ?1",
        [now],
    )?;
    tx.execute(
        "DELETE FROM tagcast_broadcast_days WHERE day < ?1",
        [today - 1],
    )?;
    tx.execute(
        "DELETE FROM tagcast_broadcast_tokens WHERE created <= ?1",
        [now - TOKEN_TTL_MS],
    )?;
    tx.commit()?;
    Ok(Purged {
        broadcasts: broadcasts as u64,
        pending_pages: pending_pages as u64,
    })
}
