//! The SQL of each write and read, run on one connection. The writer thread reads the state
//! a batch needs and writes the planner's changes inside its group-commit transaction;
//! being the only writer, it needs no row locks for the read-then-write of the tag cap.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use rusqlite::{CachedStatement, Connection, OptionalExtension, params};
use rustc_hash::FxHashMap;

use crate::audience::index::Builder;
use crate::store::plan::{Batch, Change, Plan, Snapshot, UserState};
use crate::store::{StoredUser, WriteJob, ext_json, now_ms};

/// Reads the state of every user `jobs` name, and the next ordinal of the apps where the
/// plan may register users: set-based, [`CHUNK`] users of one app per statement, in key
/// order (the users come sorted).
pub fn read_snapshot(conn: &Connection, jobs: &[WriteJob]) -> rusqlite::Result<Snapshot> {
    let batch = Batch { jobs };
    let mut ordinals = conn.prepare_cached(&ORDINALS_SQL)?;
    let mut tags = conn.prepare_cached(&ALL_TAGS_SQL)?;
    let mut snapshot = Snapshot::default();
    let users = batch.users();
    let mut ids = Vec::with_capacity(CHUNK);
    for group in users.chunk_by(|a, b| a.0 == b.0) {
        let app = group[0].0;
        for chunk in group.chunks(CHUNK) {
            ids.clear();
            ids.extend(chunk.iter().map(|&(_, u)| u));
            bind_chunk(&mut ordinals, app, &ids)?;
            let mut rows = ordinals.raw_query();
            while let Some(r) = rows.next()? {
                let ordinal = r.get::<_, Option<u32>>(1)?.ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(
                        1,
                        "ordinal".into(),
                        rusqlite::types::Type::Null,
                    )
                })?;
                let state = UserState {
                    ordinal: Some(ordinal),
                    ..Default::default()
                };
                snapshot.users.insert((app, r.get(0)?), state);
            }
            if !chunk.iter().any(|u| snapshot.users.contains_key(u)) {
                continue;
            }
            bind_chunk(&mut tags, app, &ids)?;
            let mut rows = tags.raw_query();
            while let Some(r) = rows.next()? {
                // Tags of a user that is not registered (`tagcast check` reports them)
                // are not part of its state.
                if let Some(state) = snapshot.users.get_mut(&(app, r.get(0)?)) {
                    state.tags.insert((r.get(1)?, r.get(2)?), r.get(3)?);
                }
            }
        }
    }
    let mut next =
        conn.prepare_cached("SELECT next_ordinal FROM tagcast_apps WHERE app_id = ?1")?;
    for app in batch.needs_ordinals(&snapshot.users) {
        let n = next
            .query_row([app], |r| r.get::<_, u32>(0))
            .optional()?
            .unwrap_or(0);
        snapshot.next_ordinal.insert(app, n);
    }
    Ok(snapshot)
}

/// Writes a plan's changes, in order, and the apps' next ordinals.
pub fn write_changes(conn: &Connection, plan: &Plan) -> rusqlite::Result<()> {
    let now = now_ms();
    // The tag statements, looked up in the cache once per batch rather than per change.
    let (mut set_tag, mut delete_tag) = (None, None);
    let mut changes = plan.changes.iter().peekable();
    while let Some(change) = changes.next() {
        match change {
            Change::Registered { app, user, ordinal } => {
                // A new user's profile comes next: one INSERT with it, not an UPDATE after.
                let (mut nick, mut portrait, mut ext, mut robot) = (None, None, None, None);
                if let Some(Change::Profile {
                    app: pa,
                    user: pu,
                    nick_name,
                    portrait: p,
                    ext: e,
                    is_robot,
                }) = changes.peek()
                    && (pa, pu) == (app, user)
                {
                    (nick, portrait, ext, robot) =
                        (nick_name.as_ref(), p.as_ref(), e.as_ref(), *is_robot);
                    changes.next();
                }
                let ext = ext.map(ext_json);
                conn.prepare_cached(
                    "INSERT INTO users (app_id, user_id, ordinal, nick_name, portrait, ext, is_robot, create_time, modify_time)
                     VALUES (?1, ?2, ?3, COALESCE(?4, ''), COALESCE(?5, ''), COALESCE(?6, '{}'), COALESCE(?7, 0), ?8, ?8)",
                )?
                .execute(params![app, user, ordinal, nick, portrait, ext, robot, now])?;
            }
            Change::Profile {
                app,
                user,
                nick_name,
                portrait,
                ext,
                is_robot,
            } => {
                let ext = ext.as_ref().map(ext_json);
                conn.prepare_cached(
                    "UPDATE users SET nick_name = COALESCE(?3, nick_name),
                                      portrait = COALESCE(?4, portrait),
                                      ext = COALESCE(?5, ext),
                                      is_robot = COALESCE(?6, is_robot),
                                      modify_time = ?7
                     WHERE app_id = ?1 AND user_id = ?2",
                )?
                .execute(params![app, user, nick_name, portrait, ext, is_robot, now])?;
            }
            Change::SetTag {
                app,
                user,
                inbox,
                key,
                value,
                ..
            } => {
                statement(&mut set_tag, conn,
                    "INSERT INTO tags (app_id, user_id, inbox_type, key, value) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (app_id, user_id, inbox_type, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![app, user, inbox, key, value])?;
            }
            Change::DeleteTag {
                app,
                user,
                inbox,
                key,
                ..
            } => {
                statement(
                    &mut delete_tag,
                    conn,
                    "DELETE FROM tags WHERE app_id = ?1 AND user_id = ?2 AND inbox_type = ?3 AND key = ?4",
                )?
                .execute(params![app, user, inbox, key])?;
            }
            Change::Unregistered { app, user, .. } => {
                conn.prepare_cached("DELETE FROM users WHERE app_id = ?1 AND user_id = ?2")?
                    .execute(params![app, user])?;
                conn.prepare_cached("DELETE FROM tags WHERE app_id = ?1 AND user_id = ?2")?
                    .execute(params![app, user])?;
            }
        }
    }
    for (app, next) in &plan.next_ordinal {
        conn.prepare_cached(
            "INSERT INTO tagcast_apps (app_id, next_ordinal) VALUES (?1, ?2)
             ON CONFLICT (app_id) DO UPDATE SET next_ordinal = excluded.next_ordinal",
        )?
        .execute(params![app, next])?;
    }
    Ok(())
}

/// The statement in `slot`, taken from the connection's cache the first time.
fn statement<'s, 'c>(
    slot: &'s mut Option<CachedStatement<'c>>,
    conn: &'c Connection,
    sql: &str,
) -> rusqlite::Result<&'s mut CachedStatement<'c>> {
    if slot.is_none() {
        *slot = Some(conn.prepare_cached(sql)?);
    }
    Ok(slot.as_mut().expect("set just above"))
}

/// Every registered user and every tag, into an index builder (at start). Both tables are
/// read in primary key order, which starts (app_id, user_id) in both, and merged: no
/// lookup per tag, and keys and values are borrowed from SQLite's rows, not copied.
pub fn build_index(conn: &Connection) -> rusqlite::Result<Builder> {
    let mut b = Builder::default();
    let mut users =
        conn.prepare("SELECT app_id, user_id, ordinal FROM users ORDER BY app_id, user_id")?;
    let mut users = users.query([])?;
    let mut tags = conn.prepare(
        "SELECT app_id, user_id, inbox_type, key, value FROM tags ORDER BY app_id, user_id",
    )?;
    let mut tags = tags.query([])?;
    // The user the merge stands on: (app, user, ordinal).
    let mut user: Option<(u32, i64, u32)> = None;
    let mut next_user = |b: &mut Builder| -> rusqlite::Result<Option<(u32, i64, u32)>> {
        Ok(match users.next()? {
            Some(r) => {
                let u = (r.get(0)?, r.get(1)?, r.get(2)?);
                b.user(u.0, u.1, u.2);
                Some(u)
            }
            None => None,
        })
    };
    let mut users_done = false;
    while let Some(t) = tags.next()? {
        let at: (u32, i64) = (t.get(0)?, t.get(1)?);
        // Advance the users up to this tag's (registering every one passed).
        while !users_done && user.is_none_or(|(a, u, _)| (a, u) < at) {
            user = next_user(&mut b)?;
            users_done = user.is_none();
        }
        let Some((_, _, ordinal)) = user.filter(|(a, u, _)| (*a, *u) == at) else {
            // A tag of no registered user (`tagcast check` reports them): not indexed.
            continue;
        };
        let key = t.get_ref(3)?.as_str()?;
        let value = t.get_ref(4)?.as_str()?;
        b.tag(at.0, t.get(2)?, key, value, ordinal);
    }
    while !users_done {
        users_done = next_user(&mut b)?.is_none();
    }
    Ok(b)
}

/// Ids per set-based statement (`user_id IN (?2, ..., ?17)`); a shorter list is padded
/// with NULL, which matches nothing. Plain parameters need no virtual-table module on
/// each connection (`rarray` measured the same), and one statement serves every length.
const CHUNK: usize = 16;

/// `?first, ?first+1, ..., ?first+CHUNK-1`.
fn placeholders(first: usize) -> String {
    (first..first + CHUNK)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

static USERS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT user_id, nick_name, portrait, ext, is_robot, create_time, modify_time
         FROM users WHERE app_id = ?1 AND user_id IN ({})",
        placeholders(2)
    )
});

// Ordered by the primary key (app_id, user_id, inbox_type, key): a user's tags come
// sorted by key.
static TAGS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT user_id, key, value FROM tags
         WHERE app_id = ?1 AND inbox_type = ?{} AND user_id IN ({})
         ORDER BY user_id, key",
        CHUNK + 2,
        placeholders(2)
    )
});

static ORDINALS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT user_id, ordinal FROM users WHERE app_id = ?1 AND user_id IN ({})",
        placeholders(2)
    )
});

static ALL_TAGS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT user_id, inbox_type, key, value FROM tags WHERE app_id = ?1 AND user_id IN ({})",
        placeholders(2)
    )
});

/// Binds `?1` = `app_id`, `?2..` = `ids` (at most [`CHUNK`], padded with NULL).
fn bind_chunk(
    stmt: &mut rusqlite::Statement<'_>,
    app_id: u32,
    ids: &[i64],
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, app_id)?;
    for i in 0..CHUNK {
        match ids.get(i) {
            Some(id) => stmt.raw_bind_parameter(i + 2, id)?,
            None => stmt.raw_bind_parameter(i + 2, rusqlite::types::Null)?,
        }
    }
    Ok(())
}

/// The users `user_ids` names (in that order; `None` for one not registered) with their
/// tags of `inbox`: set-based statements, [`CHUNK`] users each, in one read transaction,
/// so the WAL read lock is taken once per request, not twice per user.
pub fn get_users(
    conn: &Connection,
    app_id: u32,
    inbox: u32,
    user_ids: &[i64],
) -> rusqlite::Result<Vec<Option<StoredUser>>> {
    let _read = ReadTransaction::begin(conn)?;
    let mut users = conn.prepare_cached(&USERS_SQL)?;
    let mut found: FxHashMap<i64, StoredUser> = FxHashMap::default();
    for chunk in user_ids.chunks(CHUNK) {
        bind_chunk(&mut users, app_id, chunk)?;
        let mut rows = users.raw_query();
        while let Some(r) = rows.next()? {
            let ext: BTreeMap<String, String> = serde_json::from_str(r.get_ref(3)?.as_str()?)
                .map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        3,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?;
            let user_id = r.get(0)?;
            found.insert(
                user_id,
                StoredUser {
                    user_id,
                    nick_name: r.get(1)?,
                    portrait: r.get(2)?,
                    ext,
                    is_robot: r.get(4)?,
                    create_time_ms: r.get(5)?,
                    modify_time_ms: r.get(6)?,
                    tags: Vec::new(),
                },
            );
        }
    }
    if !found.is_empty() {
        let mut tags = conn.prepare_cached(&TAGS_SQL)?;
        for chunk in user_ids.chunks(CHUNK) {
            bind_chunk(&mut tags, app_id, chunk)?;
            tags.raw_bind_parameter(CHUNK + 2, inbox)?;
            let mut rows = tags.raw_query();
            while let Some(r) = rows.next()? {
                if let Some(u) = found.get_mut(&r.get(0)?) {
                    u.tags.push((r.get(1)?, r.get(2)?));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(user_ids.len());
    for (i, id) in user_ids.iter().enumerate() {
        // A user asked for twice is answered twice; the last ask takes it without a copy.
        let asked_again = user_ids[i + 1..].contains(id);
        out.push(if asked_again {
            found.get(id).cloned()
        } else {
            found.remove(id)
        });
    }
    Ok(out)
}

/// `BEGIN` now, `COMMIT` when dropped: the statements between share one snapshot and one
/// WAL read lock.
pub struct ReadTransaction<'c>(&'c Connection);

impl<'c> ReadTransaction<'c> {
    pub fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        if !conn.is_autocommit() {
            // One left open by a COMMIT that failed: end it first.
            conn.prepare_cached("ROLLBACK")?.execute([])?;
        }
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(ReadTransaction(conn))
    }
}

impl Drop for ReadTransaction<'_> {
    fn drop(&mut self) {
        // A read transaction has nothing to commit; this only ends it. It fails only after
        // a read failed (a damaged file, say), whose error the caller already has; the
        // next `begin` rolls back whatever was left open.
        if let Err(e) = self
            .0
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
        {
            tracing::debug!(error = %e, "ending a read transaction");
        }
    }
}
