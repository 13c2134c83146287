//! The event log's SQL (API.md §9) on the embedded store: `tagcast_log` read as events,
//! its retention, the event-only entries of broadcasts, and event webhooks' cursors.
//! Entries are appended by the single writer in position order and committed in that
//! order, so a reader never sees an entry before an earlier one of its app.

use rusqlite::{Connection, OptionalExtension, params};

use crate::audience::AudienceIndex;
use crate::model::{Change, Origin};
use crate::store::{LogEntry, LogPage, LogRead};

/// The app's entries `read` asks for, with the log's bounds, in one read transaction.
pub(super) fn read(conn: &Connection, app: u32, read: LogRead) -> rusqlite::Result<LogPage> {
    let tx = conn.unchecked_transaction()?;
    let (oldest, head): (Option<i64>, Option<i64>) = tx
        .prepare_cached(
            "SELECT (SELECT MIN(pos) FROM tagcast_log WHERE app_id = ?1),
                    (SELECT MAX(pos) FROM tagcast_log WHERE app_id = ?1)",
        )?
        .query_row([app], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let row = |r: &rusqlite::Row| {
        Ok(LogEntry {
            pos: r.get::<_, i64>(0)? as u64,
            time_ms: r.get(1)?,
            body: r.get(2)?,
        })
    };
    let entries = match read {
        LogRead::From { from, max } => tx
            .prepare_cached(
                "SELECT pos, time_ms, body FROM tagcast_log WHERE app_id = ?1 AND pos >= ?2
                 ORDER BY pos LIMIT ?3",
            )?
            .query_map(params![app, from as i64, max as i64], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        LogRead::Newest { before, max } => tx
            .prepare_cached(
                "SELECT pos, time_ms, body FROM tagcast_log WHERE app_id = ?1 AND pos < ?2
                 ORDER BY pos DESC LIMIT ?3",
            )?
            .query_map(
                params![app, before.min(i64::MAX as u64) as i64, max as i64],
                row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(LogPage {
        oldest: oldest.unwrap_or(0) as u64,
        head: head.unwrap_or(0) as u64,
        entries,
    })
}

/// (oldest, first position to keep): see [`crate::store::Store::log_cut`]. The scan for
/// the first kept entry walks only the entries retention drops. (MIN and MAX each in a
/// subquery: SQLite answers an aggregate alone from the key, both at once by a scan.)
pub(super) fn cut(
    conn: &Connection,
    app: u32,
    since_ms: i64,
    max_events: u64,
) -> rusqlite::Result<(u64, u64)> {
    let tx = conn.unchecked_transaction()?;
    let bounds: Option<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT (SELECT MIN(pos) FROM tagcast_log WHERE app_id = ?1), pos, total
             FROM tagcast_log WHERE app_id = ?1 ORDER BY pos DESC LIMIT 1",
        )?
        .query_row([app], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((oldest, head, total)) = bounds else {
        return Ok((0, 0));
    };
    let keep: Option<i64> = tx
        .prepare_cached(
            "SELECT pos FROM tagcast_log WHERE app_id = ?1 AND time_ms >= ?2 AND total > ?3
             ORDER BY pos LIMIT 1",
        )?
        .query_row(
            params![app, since_ms, total.saturating_sub(max_events as i64)],
            |r| r.get(0),
        )
        .optional()?;
    Ok((oldest as u64, keep.unwrap_or(head).min(head) as u64))
}

/// Deletes up to `chunk` of the app's oldest entries before `keep_from`; whether older
/// ones are left.
pub(super) fn trim(
    conn: &Connection,
    app: u32,
    keep_from: u64,
    chunk: u64,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "DELETE FROM tagcast_log WHERE app_id = ?1
           AND pos < MIN(?2, (SELECT MIN(pos) FROM tagcast_log WHERE app_id = ?1) + ?3)",
    )?
    .execute(params![app, keep_from as i64, chunk as i64])?;
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT MIN(pos) FROM tagcast_log WHERE app_id = ?1")?
        .query_row([app], |r| r.get(0))?;
    Ok(oldest.is_some_and(|o| (o as u64) < keep_from))
}

/// Appends an entry of event-only changes (a broadcast sent or recalled) in the open
/// transaction, at the app's next position; the caller applies it to `index` after the
/// commit ([`applied`]).
pub(super) fn append_event(
    conn: &Connection,
    index: &AudienceIndex,
    origin: &Origin,
    change: &Change,
    time_ms: i64,
) -> rusqlite::Result<u64> {
    let app = change.app();
    let pos = index.log_pos(app) + 1;
    let body = crate::model::encode_entry(&[(origin, std::slice::from_ref(change))]);
    super::saved::append_entry(conn, app, pos, time_ms, &body, 1)?;
    Ok(pos)
}

/// After the commit of [`append_event`]'s transaction: the state holds its position.
pub(super) fn applied(index: &AudienceIndex, change: &Change, time_ms: i64, pos: u64) {
    index.apply_logged(
        std::slice::from_ref(change),
        time_ms,
        &[(change.app(), pos)],
    );
}

pub(super) fn cursor(conn: &Connection, url: &str, app: u32) -> rusqlite::Result<u64> {
    Ok(conn
        .prepare_cached("SELECT pos FROM tagcast_event_cursors WHERE url = ?1 AND app_id = ?2")?
        .query_row(params![url, app], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

pub(super) fn save_cursor(
    conn: &Connection,
    url: &str,
    app: u32,
    pos: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO tagcast_event_cursors (url, app_id, pos) VALUES (?1, ?2, ?3)
         ON CONFLICT (url, app_id) DO UPDATE SET pos = MAX(pos, excluded.pos)",
    )?
    .execute(params![url, app, pos as i64])?;
    Ok(())
}
