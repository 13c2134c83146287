//! Versioned schema of the PostgreSQL store. The version lives in `tagcast_schema`; every
//! start takes a transaction-scoped advisory lock before reading it, so several nodes
//! starting at once migrate exactly once.
//!
//! Every table is keyed by `app_id` first and every query filters by it, so the tables can
//! be distributed by `app_id` (Citus `create_distributed_table`) unchanged: see
//! docs/scaling.md.

use tokio_postgres::Client;

use crate::store::schema::{serve_newer, usable_from};

use super::connect::chain;

/// Arbitrary, fixed: the advisory lock key that serializes migrations.
const MIGRATION_LOCK: i64 = 0x7461_6763_6173_7401;

pub use crate::store::schema::{Migration, MigrationReport};

/// Steps stay additive (new tables, new columns with defaults, new indexes) where they can,
/// so that `usable_from` stays where it is and a node of the previous release keeps
/// working during a rolling upgrade; v2 could not (docs/operations.md says what to do).
pub const MIGRATIONS: &[Migration] = &[
    // v1. Keys and values use the "C" collation so ordering is byte order, as in the API.
    Migration {
        sql: "CREATE TABLE users (
                  app_id      integer NOT NULL,
                  user_id     bigint  NOT NULL,
                  nick_name   text    NOT NULL DEFAULT '',
                  portrait    text    NOT NULL DEFAULT '',
                  ext         text    NOT NULL DEFAULT '{}',
                  is_robot    boolean NOT NULL DEFAULT false,
                  create_time bigint  NOT NULL,
                  modify_time bigint  NOT NULL,
                  PRIMARY KEY (app_id, user_id)
              );
              CREATE TABLE tags (
                  app_id     integer NOT NULL,
                  user_id    bigint  NOT NULL,
                  inbox_type integer NOT NULL,
                  key        text COLLATE \"C\" NOT NULL,
                  value      text COLLATE \"C\" NOT NULL,
                  PRIMARY KEY (app_id, user_id, inbox_type, key)
              );
              CREATE INDEX tags_audience ON tags (app_id, inbox_type, key, value, user_id);",
        usable_from: 1,
    },
    // v2: audiences are answered by each node's in-memory index (src/audience): every user
    // gets a dense per-app ordinal, never reused (`tagcast_apps` holds each app's next),
    // existing users numbered in user id order; every write transaction appends what the
    // index needs to `tagcast_changes` at the position it takes from `tagcast_log_head`
    // (see follow.rs), which the nodes apply in order. The SQL audience index only cost
    // every tag write. Older code would write without ordinals or log: usable from 2 on.
    Migration {
        sql: "ALTER TABLE users ADD COLUMN ordinal bigint;
              UPDATE users SET ordinal = r.o
                FROM (SELECT app_id, user_id,
                             row_number() OVER (PARTITION BY app_id ORDER BY user_id) - 1 AS o
                      FROM users) AS r
               WHERE users.app_id = r.app_id AND users.user_id = r.user_id;
              CREATE TABLE tagcast_apps (
                  app_id       integer PRIMARY KEY,
                  next_ordinal bigint  NOT NULL
              );
              INSERT INTO tagcast_apps SELECT app_id, COUNT(*) FROM users GROUP BY app_id;
              CREATE TABLE tagcast_log_head (pos bigint NOT NULL);
              INSERT INTO tagcast_log_head VALUES (0);
              CREATE TABLE tagcast_changes (
                  pos     bigint PRIMARY KEY,
                  created bigint NOT NULL,
                  changes bytea  NOT NULL
              );
              DROP INDEX tags_audience;",
        usable_from: 2,
    },
    // v3: broadcasts (API.md §7) with their frozen audience (a serialized roaring bitmap
    // of ordinals), each app's count per UTC day (the quota, one row per app and day:
    // its row lock orders concurrent sends on every node), and the webhook outbox, one row
    // per (broadcast, webhook URL, page), which nodes claim with FOR UPDATE SKIP LOCKED
    // under a lease. New tables only: a node of the previous release keeps working.
    Migration {
        sql: "CREATE TABLE tagcast_broadcasts (
                  id             bigserial PRIMARY KEY,
                  app_id         integer NOT NULL,
                  inbox_type     integer NOT NULL,
                  sender         bigint  NOT NULL,
                  msg_type       bigint  NOT NULL,
                  content        text    NOT NULL,
                  ext            text    NOT NULL,
                  selector       text    NOT NULL,
                  audience_count bigint  NOT NULL,
                  create_time    bigint  NOT NULL,
                  expire_time    bigint  NOT NULL,
                  recalled       boolean NOT NULL DEFAULT false,
                  -- Last: reading the other columns never walks its overflow pages.
                  audience       bytea    NOT NULL
              );
              CREATE INDEX tagcast_broadcasts_app ON tagcast_broadcasts (app_id, id);
              -- The recipient's pull reads only this index (the rows hold whole audiences).
              CREATE INDEX tagcast_broadcasts_active
                  ON tagcast_broadcasts (app_id, inbox_type, recalled, id, expire_time);
              CREATE INDEX tagcast_broadcasts_expiry ON tagcast_broadcasts (expire_time);
              CREATE TABLE tagcast_broadcast_days (
                  app_id integer NOT NULL,
                  day    bigint  NOT NULL,
                  sent   integer NOT NULL,
                  PRIMARY KEY (app_id, day)
              );
              CREATE TABLE tagcast_outbox (
                  broadcast_id bigint  NOT NULL,
                  url          text    NOT NULL,
                  page         integer NOT NULL,
                  state        smallint NOT NULL DEFAULT 0,
                  attempts     integer NOT NULL DEFAULT 0,
                  next_at      bigint  NOT NULL,
                  lease_until  bigint  NOT NULL DEFAULT 0,
                  created      bigint  NOT NULL,
                  PRIMARY KEY (broadcast_id, url, page)
              );
              CREATE INDEX tagcast_outbox_due ON tagcast_outbox (next_at) WHERE state = 0;",
        usable_from: 2,
    },
    // v4: the outbox as lanes (issue 17): one row per (broadcast, webhook) with a page
    // cursor and incremental counts, plus rows only for the pages claimed and not finished
    // (at most a window per lane), so a send, recall or purge costs the same at any page
    // count (see store/outbox.rs); nodes claim lanes with FOR UPDATE SKIP LOCKED.
    // Pending pages of v3 become open pages of their lane. And UserBroadcast's idempotency
    // tokens (API.md §7): the primary key makes a replay on another node wait for the
    // first send and then find it. A node of the previous release would look for the
    // dropped table: usable from this version on (upgrade every node).
    Migration {
        sql: "CREATE TABLE tagcast_outbox_lanes (
                  broadcast_id bigint  NOT NULL,
                  url          text    NOT NULL,
                  pages        integer NOT NULL,
                  next_page    integer NOT NULL DEFAULT 0,
                  delivered    integer NOT NULL DEFAULT 0,
                  failed       integer NOT NULL DEFAULT 0,
                  dropped      integer NOT NULL DEFAULT 0,
                  turn         bigint  NOT NULL DEFAULT 0,
                  ready_at     bigint  NOT NULL,
                  created      bigint  NOT NULL,
                  PRIMARY KEY (broadcast_id, url)
              );
              CREATE INDEX tagcast_outbox_lanes_due ON tagcast_outbox_lanes (url, ready_at);
              CREATE TABLE tagcast_outbox_pages (
                  broadcast_id bigint  NOT NULL,
                  url          text    NOT NULL,
                  page         integer NOT NULL,
                  attempts     integer NOT NULL,
                  next_at      bigint  NOT NULL,
                  lease_until  bigint  NOT NULL,
                  PRIMARY KEY (broadcast_id, url, page)
              );
              INSERT INTO tagcast_outbox_lanes
                  (broadcast_id, url, pages, next_page, delivered, failed, dropped, ready_at, created)
                  SELECT broadcast_id, url, COUNT(*), COUNT(*),
                         COUNT(*) FILTER (WHERE state = 1), COUNT(*) FILTER (WHERE state = 2),
                         COUNT(*) FILTER (WHERE state = 3),
                         COALESCE(MIN(next_at) FILTER (WHERE state = 0), 9223372036854775807),
                         MIN(created)
                  FROM tagcast_outbox GROUP BY broadcast_id, url;
              INSERT INTO tagcast_outbox_pages
                  SELECT broadcast_id, url, page, attempts, next_at, 0
                  FROM tagcast_outbox WHERE state = 0;
              DROP TABLE tagcast_outbox;
              CREATE TABLE tagcast_broadcast_tokens (
                  app_id         integer NOT NULL,
                  token          text    NOT NULL,
                  broadcast_id   bigint,
                  audience_count bigint,
                  expire_time    bigint,
                  created        bigint  NOT NULL,
                  PRIMARY KEY (app_id, token)
              );
              CREATE INDEX tagcast_broadcast_tokens_age ON tagcast_broadcast_tokens (created);",
        usable_from: 4,
    },
    // v5: the change log carries every change, profiles included, with the batch's time
    // (issue 18): each node's state answers BatchGetUser from it. A node of the previous
    // release would append entries without profiles, which the others would miss: usable
    // from this version on. The entries written before lack them too, so they go; every
    // node builds its state from the tables at start.
    Migration {
        sql: "DELETE FROM tagcast_changes;",
        usable_from: 5,
    },
    // v6: one change log per app (issue 18), so writes of different apps never wait on
    // one another and every table stays distributable by app_id: each app's head is
    // `tagcast_apps.log_pos`, taken under that row's lock (see follow.rs), and entries
    // are `postcard`, not JSON. Nodes start from a snapshot file of their state and
    // record the positions it holds in `tagcast_snapshot_marks`, which the trim keeps
    // behind; `tagcast_meta` holds the token the files carry (a file of another
    // database is never replayed). A node of the previous release would append to the
    // dropped global log: usable from this version on (stop every node, then upgrade).
    Migration {
        sql: "ALTER TABLE tagcast_apps ADD COLUMN log_pos bigint NOT NULL DEFAULT 0;
              CREATE TABLE tagcast_app_log (
                  app_id  integer NOT NULL,
                  pos     bigint  NOT NULL,
                  created bigint  NOT NULL,
                  body    bytea   NOT NULL,
                  PRIMARY KEY (app_id, pos)
              );
              CREATE TABLE tagcast_snapshot_marks (
                  app_id integer NOT NULL,
                  node   text    NOT NULL,
                  pos    bigint  NOT NULL,
                  saved  bigint  NOT NULL,
                  PRIMARY KEY (app_id, node)
              );
              CREATE TABLE tagcast_meta (
                  key   text PRIMARY KEY,
                  value text NOT NULL
              );
              INSERT INTO tagcast_meta VALUES
                  ('snapshot_token', md5(random()::text || clock_timestamp()::text));
              DROP TABLE tagcast_changes;
              DROP TABLE tagcast_log_head;",
        usable_from: 6,
    },
    // v7: one row per user (issue 18): every inbox's tags in the user's row, `jsonb` in the
    // shape of `model::tags_json` (`{"0": {"level": "gold"}}`), so a write rewrites one row
    // per user it changes and an operator can still query tags
    // (`WHERE tags->'0'->>'level' = 'gold'`). The tags table goes, so a node of the
    // previous release cannot use the database: stop every node, then upgrade. The change
    // log's entries now carry each request's RequestId and AccessKey; the entries of the
    // old format go, and the token changes, so every node rebuilds its state from the new
    // rows once.
    Migration {
        sql: "ALTER TABLE users ADD COLUMN tags jsonb NOT NULL DEFAULT '{}';
              UPDATE users u SET tags = t.tags
                FROM (SELECT app_id, user_id, jsonb_object_agg(inbox_type::text, keys) AS tags
                      FROM (SELECT app_id, user_id, inbox_type, jsonb_object_agg(key, value) AS keys
                            FROM tags GROUP BY app_id, user_id, inbox_type) i
                      GROUP BY app_id, user_id) t
               WHERE u.app_id = t.app_id AND u.user_id = t.user_id;
              DROP TABLE tags;
              DELETE FROM tagcast_app_log;
              DELETE FROM tagcast_snapshot_marks;
              UPDATE tagcast_meta SET value = md5(random()::text || clock_timestamp()::text)
               WHERE key = 'snapshot_token';",
        usable_from: 7,
    },
    // v8: the change log is the event log (issue 19). Each entry records `total`, the
    // app's events through it (retention by `events.max_per_app`; the app row keeps the
    // running count), and event webhooks keep a cursor per (URL, app) with the lease of
    // the node sending it. Additive: a node of the release before can still write (its
    // entries count 0 events).
    Migration {
        sql: "ALTER TABLE tagcast_apps ADD COLUMN events bigint NOT NULL DEFAULT 0;
              ALTER TABLE tagcast_app_log ADD COLUMN total bigint NOT NULL DEFAULT 0;
              CREATE TABLE tagcast_event_cursors (
                  url         text    NOT NULL,
                  app_id      integer NOT NULL,
                  pos         bigint  NOT NULL DEFAULT 0,
                  node        text    NOT NULL DEFAULT '',
                  lease_until bigint  NOT NULL DEFAULT 0,
                  PRIMARY KEY (url, app_id)
              );",
        usable_from: 7,
    },
];

pub const CURRENT_VERSION: u32 = MIGRATIONS.len() as u32;

/// Migrates to [`CURRENT_VERSION`] with this binary's migrations.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, String> {
    migrate_with(client, MIGRATIONS).await
}

/// Brings the database to the last of `migrations` under the migration lock, or, when it
/// is already newer, checks that it declares itself usable by a binary that knows only
/// these migrations.
pub async fn migrate_with(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<MigrationReport, String> {
    let known = migrations.len() as u32;
    let tx = client
        .transaction()
        .await
        .map_err(|e| format!("starting migration: {}", chain(&e)))?;
    // IF NOT EXISTS below would log a NOTICE at every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(|e| format!("starting migration: {}", chain(&e)))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| format!("taking the migration lock: {}", chain(&e)))?;
    // `usable_from` is additive and every release tolerates it, so it is added outside
    // the numbered steps (NULL: usable only by its own version).
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tagcast_schema (version integer NOT NULL);
         ALTER TABLE tagcast_schema ADD COLUMN IF NOT EXISTS usable_from integer",
    )
    .await
    .map_err(|e| format!("creating tagcast_schema: {}", chain(&e)))?;
    let (from, usable): (i32, Option<i32>) = match tx
        .query_opt("SELECT version, usable_from FROM tagcast_schema", &[])
        .await
        .map_err(|e| format!("reading the schema version: {}", chain(&e)))?
    {
        Some(row) => (row.get(0), row.get(1)),
        None => {
            tx.execute("INSERT INTO tagcast_schema (version) VALUES (0)", &[])
                .await
                .map_err(|e| chain(&e))?;
            (0, None)
        }
    };
    // Versions are small; the column is a PostgreSQL integer.
    let (from, usable) = (from.max(0) as u32, usable.map(|u| u.max(0) as u32));
    if from > known {
        return serve_newer("the database", from, usable, known, "run a newer tagcast");
    }
    for v in from..known {
        tx.batch_execute(migrations[v as usize].sql)
            .await
            .map_err(|e| format!("migrating schema to version {}: {}", v + 1, chain(&e)))?;
    }
    let (version, usable) = (known as i32, usable_from(migrations) as i32);
    tx.execute(
        "UPDATE tagcast_schema SET version = $1, usable_from = $2",
        &[&version, &usable],
    )
    .await
    .map_err(|e| chain(&e))?;
    tx.commit()
        .await
        .map_err(|e| format!("committing the migration: {}", chain(&e)))?;
    Ok(MigrationReport {
        from,
        to: known,
        ahead: false,
    })
}
