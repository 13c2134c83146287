//! Versioned schema of the embedded store. `PRAGMA user_version` holds the version; each
//! migration runs in its own transaction, so a crash mid-upgrade leaves the previous
//! version intact and the next start resumes.

use rusqlite::Connection;

/// Migrations in order; index i takes the schema from version i to i + 1.
const MIGRATIONS: &[&str] = &[
    // v1: users and their tags. Every key starts with app_id so one app's rows are
    // contiguous (and so the same layout distributes by app_id in PostgreSQL/Citus).
    "CREATE TABLE users (
         app_id      INTEGER NOT NULL,
         user_id     INTEGER NOT NULL,
         nick_name   TEXT    NOT NULL DEFAULT '',
         portrait    TEXT    NOT NULL DEFAULT '',
         ext         TEXT    NOT NULL DEFAULT '{}',
         is_robot    INTEGER NOT NULL DEFAULT 0,
         create_time INTEGER NOT NULL,
         modify_time INTEGER NOT NULL,
         PRIMARY KEY (app_id, user_id)
     ) WITHOUT ROWID;
     CREATE TABLE tags (
         app_id     INTEGER NOT NULL,
         user_id    INTEGER NOT NULL,
         inbox_type INTEGER NOT NULL,
         key        TEXT    NOT NULL,
         value      TEXT    NOT NULL,
         PRIMARY KEY (app_id, user_id, inbox_type, key)
     ) WITHOUT ROWID;",
    // v2: audience lookups (which users of an app carry key=value in an inbox) must not
    // scan every user; broadcasts target segments by tag.
    "CREATE INDEX tags_audience ON tags (app_id, inbox_type, key, value, user_id);",
];

pub const CURRENT_VERSION: u32 = MIGRATIONS.len() as u32;

pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the database to `target` (at most [`CURRENT_VERSION`]). A database written by a
/// newer tagcast is refused rather than guessed at.
pub fn migrate_to(conn: &mut Connection, target: u32) -> Result<MigrationReport, String> {
    let from = version(conn).map_err(|e| format!("reading schema version: {e}"))?;
    if from > CURRENT_VERSION {
        return Err(format!(
            "the data directory has schema version {from}, newer than this tagcast understands \
             ({CURRENT_VERSION}); run a newer tagcast or restore a backup"
        ));
    }
    for v in from..target.min(CURRENT_VERSION) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(MIGRATIONS[v as usize])
            .and_then(|_| tx.pragma_update(None, "user_version", v + 1))
            .and_then(|_| tx.commit())
            .map_err(|e| format!("migrating schema to version {}: {e}", v + 1))?;
    }
    Ok(MigrationReport {
        from,
        to: version(conn).map_err(|e| e.to_string())?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    pub from: u32,
    pub to: u32,
}
