//! Versioned schema of the embedded store. `PRAGMA user_version` holds the version; each
//! migration runs in its own transaction, so a crash mid-upgrade leaves the previous
//! version intact and the next start resumes.
//!
//! Upgrades and rollbacks: every migration says from which schema version on a tagcast
//! can still use the database after it ran ([`Migration::usable_from`]), and the database
//! records the highest such value in `tagcast_meta` (key `usable_from`). A tagcast that
//! finds a newer schema than its own serves it unchanged when its own version is at least
//! that value, and refuses it otherwise. So migrations must stay additive (new tables, new
//! columns with defaults, new indexes) to keep `usable_from` where it is; a migration that
//! older code cannot live with (a dropped or renamed column, a changed meaning) raises it.

use rusqlite::{Connection, OptionalExtension};

use crate::store::schema::{serve_newer, usable_from as recorded_usable_from};

pub use crate::store::schema::{Migration, MigrationReport};

/// Migrations in order; index i takes the schema from version i to i + 1.
pub const MIGRATIONS: &[Migration] = &[
    // v1: users and their tags. Every key starts with app_id so one app's rows are
    // contiguous (and so the same layout distributes by app_id in PostgreSQL/Citus).
    Migration {
        sql: "CREATE TABLE users (
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
        usable_from: 1,
    },
    // v2: audience lookups (which users of an app carry key=value in an inbox) must not
    // scan every user; broadcasts target segments by tag.
    Migration {
        sql: "CREATE INDEX tags_audience ON tags (app_id, inbox_type, key, value, user_id);",
        usable_from: 1,
    },
    // v3: audiences are answered by the in-memory index (src/audience), which numbers each
    // app's users densely: every user gets an ordinal, never reused (`tagcast_apps` holds
    // each app's next one), existing users numbered in user id order. The SQL index that
    // served audience lookups only cost every tag write a second B-tree update. Older code
    // would register users without an ordinal: usable from this version on.
    Migration {
        sql: "ALTER TABLE users ADD COLUMN ordinal INTEGER;
              UPDATE users SET ordinal = r.o
                FROM (SELECT app_id, user_id,
                             row_number() OVER (PARTITION BY app_id ORDER BY user_id) - 1 AS o
                      FROM users) AS r
               WHERE users.app_id = r.app_id AND users.user_id = r.user_id;
              CREATE TABLE tagcast_apps (
                  app_id       INTEGER PRIMARY KEY,
                  next_ordinal INTEGER NOT NULL
              );
              INSERT INTO tagcast_apps SELECT app_id, COUNT(*) FROM users GROUP BY app_id;
              DROP INDEX tags_audience;",
        usable_from: 3,
    },
    // v4: broadcasts (API.md §7) with their frozen audience (a serialized roaring bitmap
    // of ordinals), each app's count per UTC day (the quota), and the webhook outbox: one
    // row per (broadcast, webhook URL, page), pending until delivered, failed or dropped.
    // New tables only: older code serves the database unchanged.
    Migration {
        sql: "CREATE TABLE tagcast_broadcasts (
                  id             INTEGER PRIMARY KEY AUTOINCREMENT,
                  app_id         INTEGER NOT NULL,
                  inbox_type     INTEGER NOT NULL,
                  sender         INTEGER NOT NULL,
                  msg_type       INTEGER NOT NULL,
                  content        TEXT    NOT NULL,
                  ext            TEXT    NOT NULL,
                  selector       TEXT    NOT NULL,
                  audience_count INTEGER NOT NULL,
                  create_time    INTEGER NOT NULL,
                  expire_time    INTEGER NOT NULL,
                  recalled       INTEGER NOT NULL DEFAULT 0,
                  -- Last: reading the other columns never walks its overflow pages.
                  audience       BLOB    NOT NULL
              );
              CREATE INDEX tagcast_broadcasts_app ON tagcast_broadcasts (app_id, id);
              -- The recipient's pull reads only this index (the rows hold whole audiences).
              CREATE INDEX tagcast_broadcasts_active
                  ON tagcast_broadcasts (app_id, inbox_type, recalled, id, expire_time);
              CREATE INDEX tagcast_broadcasts_expiry ON tagcast_broadcasts (expire_time);
              CREATE TABLE tagcast_broadcast_days (
                  app_id INTEGER NOT NULL,
                  day    INTEGER NOT NULL,
                  sent   INTEGER NOT NULL,
                  PRIMARY KEY (app_id, day)
              ) WITHOUT ROWID;
              CREATE TABLE tagcast_outbox (
                  broadcast_id INTEGER NOT NULL,
                  url          TEXT    NOT NULL,
                  page         INTEGER NOT NULL,
                  state        INTEGER NOT NULL DEFAULT 0,
                  attempts     INTEGER NOT NULL DEFAULT 0,
                  next_at      INTEGER NOT NULL,
                  lease_until  INTEGER NOT NULL DEFAULT 0,
                  created      INTEGER NOT NULL,
                  PRIMARY KEY (broadcast_id, url, page)
              );
              CREATE INDEX tagcast_outbox_due ON tagcast_outbox (next_at) WHERE state = 0;",
        usable_from: 3,
    },
    // v5: the outbox as lanes (issue 17): one row per (broadcast, webhook) with a page
    // cursor and incremental counts, plus rows only for the pages claimed and not finished
    // (at most a window per lane), so a send, recall or purge costs the same at any page
    // count (see store/outbox.rs). Pending pages of v4 become open pages of their lane.
    // And UserBroadcast's idempotency tokens (API.md §7), unique per app. Older code would
    // look for the dropped table: usable from this version on.
    Migration {
        sql: "CREATE TABLE tagcast_outbox_lanes (
                  broadcast_id INTEGER NOT NULL,
                  url          TEXT    NOT NULL,
                  pages        INTEGER NOT NULL,
                  next_page    INTEGER NOT NULL DEFAULT 0,
                  delivered    INTEGER NOT NULL DEFAULT 0,
                  failed       INTEGER NOT NULL DEFAULT 0,
                  dropped      INTEGER NOT NULL DEFAULT 0,
                  turn         INTEGER NOT NULL DEFAULT 0,
                  ready_at     INTEGER NOT NULL,
                  created      INTEGER NOT NULL,
                  PRIMARY KEY (broadcast_id, url)
              ) WITHOUT ROWID;
              CREATE INDEX tagcast_outbox_lanes_due ON tagcast_outbox_lanes (url, ready_at);
              CREATE TABLE tagcast_outbox_pages (
                  broadcast_id INTEGER NOT NULL,
                  url          TEXT    NOT NULL,
                  page         INTEGER NOT NULL,
                  attempts     INTEGER NOT NULL,
                  next_at      INTEGER NOT NULL,
                  lease_until  INTEGER NOT NULL,
                  PRIMARY KEY (broadcast_id, url, page)
              ) WITHOUT ROWID;
              INSERT INTO tagcast_outbox_lanes
                  (broadcast_id, url, pages, next_page, delivered, failed, dropped, ready_at, created)
                  SELECT broadcast_id, url, COUNT(*), COUNT(*), SUM(state = 1), SUM(state = 2),
                         SUM(state = 3),
                         COALESCE(MIN(CASE WHEN state = 0 THEN next_at END), 9223372036854775807),
                         MIN(created)
                  FROM tagcast_outbox GROUP BY broadcast_id, url;
              INSERT INTO tagcast_outbox_pages
                  SELECT broadcast_id, url, page, attempts, next_at, 0
                  FROM tagcast_outbox WHERE state = 0;
              DROP TABLE tagcast_outbox;
              CREATE TABLE tagcast_broadcast_tokens (
                  app_id         INTEGER NOT NULL,
                  token          TEXT    NOT NULL,
                  broadcast_id   INTEGER NOT NULL,
                  audience_count INTEGER NOT NULL,
                  expire_time    INTEGER NOT NULL,
                  created        INTEGER NOT NULL,
                  PRIMARY KEY (app_id, token)
              ) WITHOUT ROWID;
              CREATE INDEX tagcast_broadcast_tokens_age ON tagcast_broadcast_tokens (created);",
        usable_from: 5,
    },
    // v6: the change log (issue 18): per app, every committed batch's changes at the app's
    // next position, in the batch's transaction, so a start loads the newest saved state
    // and replays the entries after it instead of reading every row. Additive: a binary of
    // the previous release writes no entries, but it also retires the saved state's token
    // at its start, so the next start of this release builds from the rows instead of
    // replaying an incomplete log.
    Migration {
        sql: "CREATE TABLE tagcast_log (
                  app_id  INTEGER NOT NULL,
                  pos     INTEGER NOT NULL,
                  time_ms INTEGER NOT NULL,
                  body    BLOB    NOT NULL,
                  PRIMARY KEY (app_id, pos)
              ) WITHOUT ROWID;",
        usable_from: 5,
    },
    // v7: one row per user (issue 18): every inbox's tags in the user's row, as the JSON of
    // `model::tags_json`, instead of a row per tag. A write rewrites one row per user it
    // changes; a start without a saved state reads one row per user. The change log's
    // entries now carry each request's RequestId and AccessKey: the entries of the old
    // format go (a start after a migration builds from the rows anyway). Not additive (the
    // tags table goes), so a binary before it cannot use the database.
    Migration {
        sql: "ALTER TABLE users ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
              UPDATE users SET tags = COALESCE(
                  (SELECT json_group_object(CAST(inbox_type AS TEXT), json(keys))
                   FROM (SELECT inbox_type, json_group_object(key, value) AS keys
                         FROM (SELECT inbox_type, key, value FROM tags t
                               WHERE t.app_id = users.app_id AND t.user_id = users.user_id
                               ORDER BY inbox_type, key)
                         GROUP BY inbox_type ORDER BY inbox_type)),
                  '{}');
              DROP TABLE tags;
              DELETE FROM tagcast_log;",
        usable_from: 7,
    },
    // v8: the change log is the event log (issue 19). Each entry records `total`, the
    // app's events through it (retention by `events.max_per_app`), and event webhooks keep
    // a cursor per (URL, app). Additive: the release before appends entries with total 0
    // and ignores the cursors, so it can still use the database.
    Migration {
        sql: "ALTER TABLE tagcast_log ADD COLUMN total INTEGER NOT NULL DEFAULT 0;
              CREATE TABLE tagcast_event_cursors (
                  url    TEXT    NOT NULL,
                  app_id INTEGER NOT NULL,
                  pos    INTEGER NOT NULL,
                  PRIMARY KEY (url, app_id)
              ) WITHOUT ROWID;",
        usable_from: 7,
    },
];

pub const CURRENT_VERSION: u32 = MIGRATIONS.len() as u32;

/// Small facts about the database itself: `usable_from`, and the `probe` row the store
/// writes to find out whether it can write again after a failure. Created outside the
/// versioned migrations because it is additive and every version tolerates it, so a
/// database stays usable by the release before the one that added the table.
const META: &str = "CREATE TABLE IF NOT EXISTS tagcast_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID";

pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// The `usable_from` the database records; a database without the record is usable only
/// by its own version.
pub fn usable_from(conn: &Connection) -> rusqlite::Result<u32> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tagcast_meta')",
        [],
        |r| r.get(0),
    )?;
    let recorded = if has_meta {
        conn.query_row(
            "SELECT value FROM tagcast_meta WHERE key = 'usable_from'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
    } else {
        None
    };
    match recorded {
        Some(v) => Ok(v),
        None => version(conn),
    }
}

/// Brings the database to `target` (at most [`CURRENT_VERSION`]) with this binary's
/// migrations.
pub fn migrate_to(conn: &mut Connection, target: u32) -> Result<MigrationReport, String> {
    migrate(conn, &MIGRATIONS[..target.min(CURRENT_VERSION) as usize])
}

/// Brings the database to the last of `migrations`, or, when it is already newer, checks
/// that it declares itself usable by a binary that knows only these migrations.
pub fn migrate(conn: &mut Connection, migrations: &[Migration]) -> Result<MigrationReport, String> {
    let known = migrations.len() as u32;
    let from = version(conn).map_err(|e| format!("reading schema version: {e}"))?;
    if from > known {
        let usable = usable_from(conn).map_err(|e| format!("reading tagcast_meta: {e}"))?;
        return serve_newer(
            "the data directory",
            from,
            Some(usable),
            known,
            "run a newer tagcast or restore a backup",
        );
    }
    conn.execute_batch(META)
        .map_err(|e| format!("creating tagcast_meta: {e}"))?;
    let record_usable = |conn: &Connection, upto: usize| {
        let usable = recorded_usable_from(&migrations[..upto]);
        conn.execute(
            "INSERT INTO tagcast_meta (key, value) VALUES ('usable_from', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [usable.to_string()],
        )
    };
    for v in from..known {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(migrations[v as usize].sql)
            .and_then(|_| tx.pragma_update(None, "user_version", v + 1))
            .and_then(|_| record_usable(&tx, v as usize + 1))
            .and_then(|_| tx.commit())
            .map_err(|e| format!("migrating schema to version {}: {e}", v + 1))?;
    }
    if from == known && known > 0 {
        // Written by a release that did not record it yet.
        record_usable(conn, known as usize)
            .map_err(|e| format!("recording usable_from in tagcast_meta: {e}"))?;
    }
    Ok(MigrationReport {
        from,
        to: version(conn).map_err(|e| e.to_string())?,
        ahead: false,
    })
}
