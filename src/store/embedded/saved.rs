//! The saved state and the change log behind it (issue 18).
//!
//! Every committed batch appends, per app it changed, one entry to `tagcast_log` at the
//! app's next position (`postcard` of its changes, in the batch's transaction). The state
//! is saved to a file at a clean stop and periodically (`store.snapshot_interval_s`,
//! `store.snapshot_changes`), each app with the position it holds; a start loads the
//! newest file and replays each app's entries after its position, so a start after a
//! crash costs the file and the log since, not every row. The file is trusted only when:
//! it carries the token `tagcast_meta` holds (a release before the log retires that token
//! at its start, so a store written without entries is never replayed), no migration ran
//! at this start, each app's entry at its position is still there with the same time (a
//! restored or swapped store fails this), and the log continues right after it. Otherwise
//! the state is built from the rows, and the log line says why. The log is also the event
//! log (API.md §9): entries are trimmed by the events' retention only (`events.rs`); a
//! saved file whose entry was trimmed is refused and the start builds from the rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use crate::audience::index::AppIndex;
use crate::audience::{AudienceIndex, snapshot};
use crate::store::plan::Plan;

/// The key in `tagcast_meta` of the token every saved file of this store carries.
pub(super) const TOKEN_KEY: &str = "index_snapshot";

/// What the writer and the periodic saver share.
pub(super) struct Saved {
    pub path: PathBuf,
    /// The store's token (`None` until the writer has recorded one).
    pub token: Mutex<Option<[u8; 16]>>,
    /// Changes applied since the last save.
    pub changes: AtomicU64,
    /// One save at a time (the periodic one, the one at a clean stop).
    pub writing: Mutex<()>,
}

pub(super) fn stored_token(conn: &Connection) -> rusqlite::Result<Option<[u8; 16]>> {
    let hex_token: Option<String> = conn
        .query_row(
            "SELECT value FROM tagcast_meta WHERE key = ?1",
            [TOKEN_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(hex_token.and_then(|t| hex::decode(t).ok()?.try_into().ok()))
}

pub(super) fn record_token(conn: &Connection, token: &[u8; 16]) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO tagcast_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [TOKEN_KEY, &hex::encode(token)],
    )?;
    Ok(())
}

/// Each app's next log position for a plan's changes, in the order the apps first appear.
pub(super) fn heads(index: &AudienceIndex, plan: &Plan) -> Vec<(u32, u64)> {
    plan.apps()
        .into_iter()
        .map(|app| (app, index.log_pos(app) + 1))
        .collect()
}

/// Appends one entry per app of `heads`: that app's changes, request by request, in order.
pub(super) fn append(conn: &Connection, plan: &Plan, heads: &[(u32, u64)]) -> rusqlite::Result<()> {
    for &(app, pos) in heads {
        append_entry(
            conn,
            app,
            pos,
            plan.time_ms,
            &plan.entry(app),
            plan.entry_events(app),
        )?;
    }
    Ok(())
}

/// Appends the app's entry at `pos` holding `events` events (its `total`: the previous
/// entry's plus those).
pub(super) fn append_entry(
    conn: &Connection,
    app: u32,
    pos: u64,
    time_ms: i64,
    body: &[u8],
    events: u64,
) -> rusqlite::Result<()> {
    // One statement: the previous entry's total read by the INSERT itself.
    conn.prepare_cached(
        "INSERT INTO tagcast_log (app_id, pos, time_ms, body, total) VALUES (?1, ?2, ?3, ?4,
             COALESCE((SELECT total FROM tagcast_log WHERE app_id = ?1 AND pos = ?2 - 1), 0) + ?5)",
    )?
    .execute(params![app, pos as i64, time_ms, body, events as i64])?;
    Ok(())
}

/// The saved state, checked against the store and brought up to date with the log after
/// it: `Ok((apps, entries replayed))`, or why it cannot be used.
pub(super) fn load(
    conn: &Connection,
    path: &Path,
    token: &[u8; 16],
) -> Result<(HashMap<u32, AppIndex>, u64), String> {
    let mut apps = match snapshot::read(path, token) {
        Ok(Some(apps)) => apps,
        Ok(None) => return Err("the saved state is of another store or an older one".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no saved state".into());
        }
        Err(e) => return Err(format!("the saved state is unreadable: {e}")),
    };
    let sql = |e: rusqlite::Error| format!("reading the change log: {e}");
    let mut at = conn
        .prepare("SELECT time_ms FROM tagcast_log WHERE app_id = ?1 AND pos = ?2")
        .map_err(sql)?;
    for (app, a) in &apps {
        let (pos, time) = a.log_head();
        if pos == 0 {
            continue;
        }
        let found: Option<i64> = at
            .query_row(params![app, pos as i64], |r| r.get(0))
            .optional()
            .map_err(sql)?;
        if found != Some(time) {
            return Err(format!(
                "the change log of AppId {app} no longer holds the entry {pos} the saved state ends at (a restored or replaced store?)"
            ));
        }
    }
    let mut logged: Vec<u32> = conn
        .prepare("SELECT DISTINCT app_id FROM tagcast_log")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(sql)?;
    logged.retain(|a| !apps.contains_key(a));
    let mut entries = conn
        .prepare("SELECT pos, time_ms, body FROM tagcast_log WHERE app_id = ?1 AND pos > ?2 ORDER BY pos")
        .map_err(sql)?;
    let mut replayed = 0;
    let ids: Vec<u32> = apps.keys().copied().chain(logged).collect();
    for app in ids {
        let a = apps.entry(app).or_default();
        let mut rows = entries
            .query(params![app, a.log_head().0 as i64])
            .map_err(sql)?;
        while let Some(r) = rows.next().map_err(sql)? {
            let pos = r.get::<_, i64>(0).map_err(sql)? as u64;
            if pos != a.log_head().0 + 1 {
                return Err(format!(
                    "the change log of AppId {app} jumps from {} to {pos} (trimmed past the saved state)",
                    a.log_head().0
                ));
            }
            let time: i64 = r.get(1).map_err(sql)?;
            let body = r
                .get_ref(2)
                .map_err(sql)?
                .as_blob()
                .map_err(|e| format!("the change log entry {pos} of AppId {app}: {e}"))?;
            let changes = crate::model::decode_entry(body)
                .map(crate::model::entry_changes)
                .map_err(|e| {
                    format!("the change log entry {pos} of AppId {app} does not decode: {e}")
                })?;
            a.apply_entry(&changes, time, pos);
            replayed += 1;
        }
    }
    Ok((apps, replayed))
}

/// The periodic save, run by the maintenance thread between its checkpoints.
pub(super) struct Periodic {
    pub saved: std::sync::Arc<Saved>,
    pub index: std::sync::Arc<AudienceIndex>,
    pub every: Option<Duration>,
    pub max_changes: u64,
    pub last: Instant,
}

impl Periodic {
    pub fn tick(&mut self) {
        let changes = self.saved.changes.load(Ordering::Relaxed);
        let due = changes >= self.max_changes
            || (changes > 0 && self.every.is_some_and(|e| self.last.elapsed() >= e));
        if !due || !self.index.is_built() {
            return;
        }
        let Some(token) = *self.saved.token.lock().expect("token lock") else {
            return;
        };
        self.last = Instant::now();
        let started = Instant::now();
        let _writing = self.saved.writing.lock().expect("save lock");
        // The changes counted from here on are after the copies.
        self.saved.changes.fetch_sub(changes, Ordering::Relaxed);
        let apps = self.index.copy_apps();
        let copied_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = snapshot::write_copies(&apps, &token, &self.saved.path) {
            self.saved.changes.fetch_add(changes, Ordering::Relaxed);
            tracing::warn!(error = %e, file = %self.saved.path.display(), "saving the state failed; retrying at the next interval");
            return;
        }
        drop(apps);
        tracing::info!(
            changes,
            copy_ms = copied_ms,
            ms = started.elapsed().as_millis() as u64,
            "state saved"
        );
    }
}
