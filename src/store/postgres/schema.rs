//! Versioned schema of the PostgreSQL store. The version lives in `tagcast_schema`; every
//! start takes a transaction-scoped advisory lock before reading it, so several nodes
//! starting at once migrate exactly once.
//!
//! Every table is keyed by `app_id` first and every query filters by it, so the tables can
//! be distributed by `app_id` (Citus `create_distributed_table`) unchanged: see
//! docs/scaling.md.

use tokio_postgres::Client;

use super::connect::chain;

/// Arbitrary, fixed: the advisory lock key that serializes migrations.
const MIGRATION_LOCK: i64 = 0x7461_6763_6173_7401;

const MIGRATIONS: &[&str] = &[
    // v1. Keys and values use the "C" collation so ordering is byte order, as in the API.
    "CREATE TABLE users (
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
];

pub const CURRENT_VERSION: i32 = MIGRATIONS.len() as i32;

/// Migrates to [`CURRENT_VERSION`]; returns (from, to). Refuses a newer schema.
pub async fn migrate(client: &mut Client) -> Result<(i32, i32), String> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| format!("starting migration: {}", chain(&e)))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| format!("taking the migration lock: {}", chain(&e)))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS tagcast_schema (version integer NOT NULL)")
        .await
        .map_err(|e| format!("creating tagcast_schema: {}", chain(&e)))?;
    let from: i32 = match tx
        .query_opt("SELECT version FROM tagcast_schema", &[])
        .await
        .map_err(|e| format!("reading the schema version: {}", chain(&e)))?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO tagcast_schema (version) VALUES (0)", &[])
                .await
                .map_err(|e| chain(&e))?;
            0
        }
    };
    if from > CURRENT_VERSION {
        return Err(format!(
            "the database has schema version {from}, newer than this tagcast understands ({CURRENT_VERSION}); \
             run a newer tagcast"
        ));
    }
    for v in from..CURRENT_VERSION {
        tx.batch_execute(MIGRATIONS[v as usize])
            .await
            .map_err(|e| format!("migrating schema to version {}: {}", v + 1, chain(&e)))?;
    }
    tx.execute(
        "UPDATE tagcast_schema SET version = $1",
        &[&CURRENT_VERSION],
    )
    .await
    .map_err(|e| chain(&e))?;
    tx.commit()
        .await
        .map_err(|e| format!("committing the migration: {}", chain(&e)))?;
    Ok((from, CURRENT_VERSION))
}
