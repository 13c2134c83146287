//! The SQL of each write and read, run on one connection. The writer thread calls these
//! inside its group-commit transaction; being the only writer, it needs no row locks for
//! the read-then-write of the tag cap.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{
    DEFAULT_INBOX, Outcome, StoredUser, Tag, TagEntry, TagOp, UserRegistration, now_ms,
};

/// Whether the user is registered, and how many keys it has in `inbox`: one statement.
fn lookup(
    conn: &Connection,
    app_id: u32,
    inbox: u32,
    user_id: i64,
) -> rusqlite::Result<(bool, usize)> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM users WHERE app_id = ?1 AND user_id = ?2),
                (SELECT COUNT(*) FROM tags WHERE app_id = ?1 AND user_id = ?2 AND inbox_type = ?3)",
    )?
    .query_row(params![app_id, user_id, inbox], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as usize))
    })
}

/// How many keys the user would have after upserting `tags` onto its `existing` keys, or
/// `None` when that is within `cap` (the common case, decided without looking at each key).
fn over_cap(
    conn: &Connection,
    app_id: u32,
    inbox: u32,
    user_id: i64,
    existing: usize,
    tags: &[Tag],
    cap: usize,
) -> rusqlite::Result<Option<usize>> {
    if existing + tags.len() <= cap {
        return Ok(None);
    }
    let mut exists = conn.prepare_cached(
        "SELECT 1 FROM tags WHERE app_id = ?1 AND user_id = ?2 AND inbox_type = ?3 AND key = ?4",
    )?;
    let mut net_new = 0;
    for (k, _) in tags {
        if exists
            .query_row(params![app_id, user_id, inbox, k], |_| Ok(()))
            .optional()?
            .is_none()
        {
            net_new += 1;
        }
    }
    Ok((existing + net_new > cap).then_some(existing + net_new))
}

fn upsert_tags(
    conn: &Connection,
    app_id: u32,
    inbox: u32,
    user_id: i64,
    tags: &[Tag],
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO tags (app_id, user_id, inbox_type, key, value) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (app_id, user_id, inbox_type, key) DO UPDATE SET value = excluded.value",
    )?;
    for (k, v) in tags {
        stmt.execute(params![app_id, user_id, inbox, k, v])?;
    }
    Ok(())
}

pub fn update_tags(
    conn: &Connection,
    app_id: u32,
    inbox: u32,
    op: TagOp,
    entries: &[TagEntry],
    cap: usize,
) -> rusqlite::Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let (registered, existing) = lookup(conn, app_id, inbox, e.user_id)?;
        if !registered {
            out.push(Outcome::UserNotFound);
            continue;
        }
        match op {
            TagOp::Upsert => {
                if let Some(would_have) =
                    over_cap(conn, app_id, inbox, e.user_id, existing, &e.tags, cap)?
                {
                    out.push(Outcome::TagLimitExceeded {
                        would_have,
                        limit: cap,
                    });
                    continue;
                }
                upsert_tags(conn, app_id, inbox, e.user_id, &e.tags)?;
            }
            TagOp::Delete => {
                let mut stmt = conn.prepare_cached(
                    "DELETE FROM tags WHERE app_id = ?1 AND user_id = ?2 AND inbox_type = ?3 AND key = ?4",
                )?;
                for (k, _) in &e.tags {
                    stmt.execute(params![app_id, e.user_id, inbox, k])?;
                }
            }
        }
        out.push(Outcome::Applied);
    }
    Ok(out)
}

pub fn register_users(
    conn: &Connection,
    app_id: u32,
    users: &[UserRegistration],
    cap: usize,
) -> rusqlite::Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(users.len());
    let now = now_ms();
    for u in users {
        let (_, existing) = lookup(conn, app_id, DEFAULT_INBOX, u.user_id)?;
        if let Some(would_have) = over_cap(
            conn,
            app_id,
            DEFAULT_INBOX,
            u.user_id,
            existing,
            &u.tags,
            cap,
        )? {
            out.push(Outcome::TagLimitExceeded {
                would_have,
                limit: cap,
            });
            continue;
        }
        let ext = u
            .ext
            .as_ref()
            .map(|m| serde_json::to_string(m).expect("a string map serializes"));
        conn.prepare_cached(
            "INSERT INTO users (app_id, user_id, nick_name, portrait, ext, is_robot, create_time, modify_time)
             VALUES (?1, ?2, COALESCE(?3, ''), COALESCE(?4, ''), COALESCE(?5, '{}'), COALESCE(?6, 0), ?7, ?7)
             ON CONFLICT (app_id, user_id) DO UPDATE SET
                 nick_name = COALESCE(?3, nick_name),
                 portrait = COALESCE(?4, portrait),
                 ext = COALESCE(?5, ext),
                 is_robot = COALESCE(?6, is_robot),
                 modify_time = ?7",
        )?
        .execute(params![app_id, u.user_id, u.nick_name, u.portrait, ext, u.is_robot, now])?;
        upsert_tags(conn, app_id, DEFAULT_INBOX, u.user_id, &u.tags)?;
        out.push(Outcome::Applied);
    }
    Ok(out)
}

pub fn unregister_users(
    conn: &Connection,
    app_id: u32,
    user_ids: &[i64],
) -> rusqlite::Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(user_ids.len());
    for &user_id in user_ids {
        let removed = conn
            .prepare_cached("DELETE FROM users WHERE app_id = ?1 AND user_id = ?2")?
            .execute(params![app_id, user_id])?;
        if removed == 0 {
            out.push(Outcome::UserNotFound);
            continue;
        }
        conn.prepare_cached("DELETE FROM tags WHERE app_id = ?1 AND user_id = ?2")?
            .execute(params![app_id, user_id])?;
        out.push(Outcome::Applied);
    }
    Ok(out)
}

pub fn get_users(
    conn: &Connection,
    app_id: u32,
    inbox: u32,
    user_ids: &[i64],
) -> rusqlite::Result<Vec<Option<StoredUser>>> {
    let mut user_stmt = conn.prepare_cached(
        "SELECT nick_name, portrait, ext, is_robot, create_time, modify_time FROM users WHERE app_id = ?1 AND user_id = ?2",
    )?;
    let mut tag_stmt = conn
        .prepare_cached("SELECT key, value FROM tags WHERE app_id = ?1 AND user_id = ?2 AND inbox_type = ?3 ORDER BY key")?;
    let mut out = Vec::with_capacity(user_ids.len());
    for &user_id in user_ids {
        let row = user_stmt
            .query_row(params![app_id, user_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .optional()?;
        let Some((nick_name, portrait, ext, is_robot, create_time_ms, modify_time_ms)) = row else {
            out.push(None);
            continue;
        };
        let tags = tag_stmt
            .query_map(params![app_id, user_id, inbox], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<Tag>>>()?;
        let ext: BTreeMap<String, String> = serde_json::from_str(&ext).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?;
        out.push(Some(StoredUser {
            user_id,
            nick_name,
            portrait,
            ext,
            is_robot,
            create_time_ms,
            modify_time_ms,
            tags,
        }));
    }
    Ok(out)
}
