//! The SQL of each write and read, run on one connection. The writer thread reads the state
//! a batch needs and writes the planner's changes inside its group-commit transaction;
//! being the only writer, it needs no row locks for the read-then-write of the tag cap.

use std::collections::BTreeMap;

use rusqlite::{CachedStatement, Connection, params};

use crate::audience::index::{Builder, Profile};
use crate::store::ext_json;
use crate::store::plan::{Change, Plan};

/// Writes a plan's changes, in order, each changed user's tags, and the apps' next
/// ordinals. One row per user: a registration inserts it with its tags as the batch leaves
/// them; any other change of tags rewrites the row's `tags` once, after the batch's
/// profile and registration statements.
pub fn write_changes(conn: &Connection, plan: &Plan) -> rusqlite::Result<()> {
    let now = plan.time_ms;
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
                let tags = plan.tags_at_insert(*app, *user, *ordinal);
                conn.prepare_cached(
                    "INSERT INTO users (app_id, user_id, ordinal, nick_name, portrait, ext, is_robot, create_time, modify_time, tags)
                     VALUES (?1, ?2, ?3, COALESCE(?4, ''), COALESCE(?5, ''), COALESCE(?6, '{}'), COALESCE(?7, 0), ?8, ?8, COALESCE(?9, '{}'))",
                )?
                .execute(params![app, user, ordinal, nick, portrait, ext, robot, now, tags])?;
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
            // SetTag and DeleteTag: written once per user below, as the batch leaves them;
            // the others are only for the event log.
            Change::SetTag { .. }
            | Change::DeleteTag { .. }
            | Change::ProfileWas { .. }
            | Change::BroadcastSent { .. }
            | Change::BroadcastRecalled { .. } => {}
            Change::Unregistered { app, user, .. } => {
                conn.prepare_cached("DELETE FROM users WHERE app_id = ?1 AND user_id = ?2")?
                    .execute(params![app, user])?;
            }
        }
    }
    let mut set_tags = None;
    for (app, user, tags) in plan.tags_to_update() {
        statement(
            &mut set_tags,
            conn,
            "UPDATE users SET tags = ?3 WHERE app_id = ?1 AND user_id = ?2",
        )?
        .execute(params![app, user, tags])?;
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

/// Every registered user with its profile and every tag, into a state builder (at start):
/// one pass over the users' rows, each row's tags parsed from its `tags` column.
pub fn build_index(conn: &Connection) -> rusqlite::Result<Builder> {
    let mut b = Builder::default();
    let mut users = conn.prepare(
        "SELECT app_id, user_id, ordinal, create_time, modify_time, nick_name, portrait, ext, is_robot, tags
         FROM users ORDER BY app_id, user_id",
    )?;
    let mut users = users.query([])?;
    while let Some(r) = users.next()? {
        let (app, user, ordinal): (u32, i64, u32) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let nick_name = r.get_ref(5)?.as_str()?;
        let portrait = r.get_ref(6)?.as_str()?;
        let ext = r.get_ref(7)?.as_str()?;
        let is_robot: bool = r.get(8)?;
        let profile = (!nick_name.is_empty() || !portrait.is_empty() || ext != "{}" || is_robot)
            .then(|| -> rusqlite::Result<Profile> {
                Ok(Profile {
                    nick_name: nick_name.to_owned(),
                    portrait: portrait.to_owned(),
                    ext: parse_ext(ext, 7, app, user)?,
                    is_robot,
                })
            })
            .transpose()?;
        b.user(app, user, ordinal, (r.get(3)?, r.get(4)?), profile);
        let tags = r.get_ref(9)?.as_str()?;
        if tags != "{}" {
            let tags = crate::model::parse_tags_json(tags).map_err(|e| {
                let why = format!("users.tags of user {user} of AppId {app} is {e}");
                rusqlite::Error::FromSqlConversionFailure(
                    9,
                    rusqlite::types::Type::Text,
                    why.into(),
                )
            })?;
            for (inbox, key, value) in &tags {
                b.tag(app, *inbox, key, value, ordinal);
            }
        }
    }
    let mut apps = conn.prepare("SELECT app_id, next_ordinal FROM tagcast_apps")?;
    let mut apps = apps.query([])?;
    while let Some(r) = apps.next()? {
        b.next_ordinal(r.get(0)?, r.get(1)?);
    }
    // Each app's last change log entry: the rows hold everything up to it.
    let mut heads = conn.prepare(
        "SELECT l.app_id, l.pos, l.time_ms FROM tagcast_log l
         WHERE l.pos = (SELECT MAX(pos) FROM tagcast_log WHERE app_id = l.app_id)",
    )?;
    let mut heads = heads.query([])?;
    while let Some(r) = heads.next()? {
        b.log_head(r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?);
    }
    Ok(b)
}

/// `users.ext` (column `col`) of user `user` of `app` as the map it stores.
fn parse_ext(
    text: &str,
    col: usize,
    app: u32,
    user: i64,
) -> rusqlite::Result<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| {
        let why =
            format!("users.ext of user {user} of AppId {app} is not a JSON object of strings: {e}");
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, why.into())
    })
}
