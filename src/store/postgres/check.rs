//! `tagcast check` on PostgreSQL: the schema as tagcast expects it (tables, columns,
//! keys), the B-tree indexes with `amcheck` when the extension is installed,
//! then tagcast's rules on every row. Everything reads one REPEATABLE READ snapshot, so it
//! can run while nodes write.

use tokio_postgres::IsolationLevel;

use super::schema;
use crate::config::TagLimits;
use crate::store::check::{Report, RowCounts, TagScan, bad_keys};

/// The columns tagcast reads and writes, with their types.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("users", "app_id", "integer"),
    ("users", "user_id", "bigint"),
    ("users", "nick_name", "text"),
    ("users", "portrait", "text"),
    ("users", "ext", "text"),
    ("users", "is_robot", "boolean"),
    ("users", "create_time", "bigint"),
    ("users", "modify_time", "bigint"),
    ("users", "ordinal", "bigint"),
    ("users", "tags", "jsonb"),
    ("tagcast_apps", "app_id", "integer"),
    ("tagcast_apps", "next_ordinal", "bigint"),
    ("tagcast_apps", "log_pos", "bigint"),
    ("tagcast_app_log", "app_id", "integer"),
    ("tagcast_app_log", "pos", "bigint"),
    ("tagcast_app_log", "created", "bigint"),
    ("tagcast_app_log", "body", "bytea"),
    ("tagcast_app_log", "total", "bigint"),
    ("tagcast_apps", "events", "bigint"),
    ("tagcast_event_cursors", "url", "text"),
    ("tagcast_event_cursors", "app_id", "integer"),
    ("tagcast_event_cursors", "pos", "bigint"),
    ("tagcast_event_cursors", "node", "text"),
    ("tagcast_event_cursors", "lease_until", "bigint"),
    ("tagcast_snapshot_marks", "app_id", "integer"),
    ("tagcast_snapshot_marks", "node", "text"),
    ("tagcast_snapshot_marks", "pos", "bigint"),
    ("tagcast_snapshot_marks", "saved", "bigint"),
    ("tagcast_meta", "key", "text"),
    ("tagcast_meta", "value", "text"),
];

const INDEXES: &[&str] = &[
    "users_pkey",
    "tagcast_apps_pkey",
    "tagcast_app_log_pkey",
    "tagcast_snapshot_marks_pkey",
    "tagcast_event_cursors_pkey",
    "tagcast_meta_pkey",
];

/// Checks the database at `url`. `Err` only when it cannot be reached or read at all.
pub async fn check(
    url: &str,
    ca_file: Option<&std::path::Path>,
    limits: &TagLimits,
) -> Result<Report, String> {
    let mut client = super::connect_one(url, ca_file).await?;
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| format!("starting a read-only transaction: {e}"))?;
    let mut report = Report::default();
    if let Err(e) = run_checks(&mut tx, limits, &mut report).await {
        report.fail("read", super::connect::chain(&e));
    }
    Ok(report)
}

async fn count(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<i64, tokio_postgres::Error> {
    Ok(tx.query_one(sql, params).await?.get(0))
}

async fn run_checks(
    tx: &mut tokio_postgres::Transaction<'_>,
    limits: &TagLimits,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let has_schema = count(
        tx,
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'tagcast_schema'
           AND table_schema = current_schema()",
        &[],
    )
    .await?;
    if has_schema == 0 {
        report.fail(
            "schema",
            "no tagcast_schema table: this database was never opened by tagcast",
        );
        return Ok(());
    }
    let row = tx
        .query_one("SELECT version, usable_from FROM tagcast_schema", &[])
        .await?;
    let (version, usable): (i32, Option<i32>) = (row.get(0), row.get(1));
    let version = version.max(0) as u32;
    let usable = usable.map_or(version, |u| u.max(0) as u32);
    report.schema(version, usable, schema::CURRENT_VERSION);

    let present = tx
        .query(
            "SELECT table_name::text, column_name::text, data_type::text
             FROM information_schema.columns
             WHERE table_schema = current_schema()
               AND table_name IN ('users', 'tagcast_apps', 'tagcast_app_log',
                                  'tagcast_snapshot_marks', 'tagcast_meta', 'tagcast_event_cursors')",
            &[],
        )
        .await?;
    let mut missing = Vec::new();
    for (table, column, ty) in COLUMNS {
        let found = present
            .iter()
            .find(|r| r.get::<_, String>(0) == *table && r.get::<_, String>(1) == *column);
        match found {
            None => missing.push(format!("{table}.{column} is missing")),
            Some(r) if r.get::<_, String>(2) != *ty => missing.push(format!(
                "{table}.{column} is {}, expected {ty}",
                r.get::<_, String>(2)
            )),
            Some(_) => {}
        }
    }
    let indexes: Vec<String> = tx
        .query(
            "SELECT indexname::text FROM pg_indexes
             WHERE schemaname = current_schema()
               AND tablename IN ('users', 'tagcast_apps', 'tagcast_app_log',
                                 'tagcast_snapshot_marks', 'tagcast_meta', 'tagcast_event_cursors')",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for index in INDEXES {
        if !indexes.iter().any(|i| i == index) {
            missing.push(format!("index {index} is missing"));
        }
    }
    if missing.is_empty() {
        report.ok(
            "tables",
            "users with their tags, ordinals, the change log and their keys as expected",
        );
    } else {
        report.fail("tables", missing.join("; "));
        return Ok(());
    }

    let amcheck = count(
        tx,
        "SELECT COUNT(*) FROM pg_extension WHERE extname = 'amcheck'",
        &[],
    )
    .await?;
    if amcheck > 0 {
        // In a savepoint: a refusal (no EXECUTE on bt_index_check) must not abort the
        // transaction the other checks read in.
        let mut failure = None;
        for index in INDEXES {
            let sp = tx.savepoint("amcheck").await?;
            let checked = sp
                .execute(
                    "SELECT bt_index_check(c.oid, true) FROM pg_class c
                     WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
                    &[index],
                )
                .await;
            match checked {
                Ok(_) => sp.commit().await?,
                Err(e) => {
                    sp.rollback().await?;
                    failure = Some((*index, e));
                    break;
                }
            }
        }
        match failure {
            None => report.ok(
                "amcheck",
                "every index matches its table (bt_index_check with heapallindexed)",
            ),
            Some((_, e))
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                report.warn(
                    "amcheck",
                    "installed, but this role may not run it: indexes not verified \
                     (GRANT EXECUTE ON FUNCTION bt_index_check(regclass, boolean) TO it)",
                )
            }
            Some((index, e)) => {
                report.fail("amcheck", format!("{index}: {}", super::connect::chain(&e)))
            }
        }
    } else {
        report.warn(
            "amcheck",
            "extension not installed, index structure not verified \
             (a superuser can run CREATE EXTENSION amcheck)",
        );
    }

    // PostgreSQL 15 has no pg_input_is_valid: Ext is judged here, without a cast that
    // would stop at the first bad row.
    let bad_ext = tx
        .query("SELECT ext FROM users", &[])
        .await?
        .iter()
        .filter(|r| {
            !matches!(
                serde_json::from_str::<serde_json::Value>(r.get(0)),
                Ok(serde_json::Value::Object(_))
            )
        })
        .count() as i64;
    let mut scan = TagScan::default();
    for row in tx.query("SELECT tags::text FROM users", &[]).await? {
        scan.add(row.get(0), limits);
    }
    let counts = RowCounts {
        users: count(tx, "SELECT COUNT(*) FROM users", &[]).await?,
        apps: count(tx, "SELECT COUNT(DISTINCT app_id) FROM users", &[]).await?,
        tags: scan.tags,
        bad_tags: scan.bad_tags,
        bad_ids: count(
            tx,
            "SELECT COUNT(*) FROM users WHERE app_id < 1 OR user_id < 1",
            &[],
        )
        .await?
            + scan.bad_inboxes,
        bad_ext,
        bad_keys: bad_keys(scan.keys, limits),
        long_values: scan.long_values,
        over_cap: scan.over_cap,
        bad_ordinals: count(tx, "SELECT CAST((SELECT COUNT(*) FROM users u WHERE u.ordinal IS NULL OR u.ordinal < 0
                     OR u.ordinal >= COALESCE((SELECT next_ordinal FROM tagcast_apps a WHERE a.app_id = u.app_id), 0))
                  + (SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM users
                     WHERE ordinal IS NOT NULL GROUP BY app_id, ordinal HAVING COUNT(*) > 1) d) AS bigint)", &[]).await?,
    };
    report.rows(&counts, limits);
    Ok(())
}
