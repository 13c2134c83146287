//! `tagcast check` on the embedded store: SQLite's own integrity check (every page, every
//! index entry against its table), then the schema, then what tagcast's rules say the
//! rows must be. All of it reads one snapshot (one read transaction), so it can run while
//! a server writes: WAL readers neither block the writer nor see half a commit.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::schema;
use crate::config::TagLimits;
use crate::store::check::{Report, RowCounts, TagScan, bad_keys};

/// Checks the SQLite file at `db`. `Err` only when it cannot be read at all.
pub fn check_file(db: &Path, limits: &TagLimits) -> Result<Report, String> {
    if !db.is_file() {
        return Err(format!("{} does not exist", db.display()));
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {}: {e}", db.display()))?;
    conn.busy_timeout(super::BUSY_TIMEOUT)
        .and_then(|_| conn.pragma_update(None, "query_only", true))
        .map_err(|e| format!("opening {}: {e}", db.display()))?;
    let mut report = Report::default();
    // One snapshot for every check below.
    conn.execute_batch("BEGIN")
        .map_err(|e| format!("reading {}: {e}", db.display()))?;
    if let Err(e) = run_checks(&conn, limits, &mut report) {
        // A read that fails (a page SQLite cannot decode) is itself a finding.
        report.fail("read", e.to_string());
    }
    let _ = conn.execute_batch("COMMIT");
    Ok(report)
}

fn count(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<i64> {
    conn.query_row(sql, p, |r| r.get(0))
}

fn run_checks(conn: &Connection, limits: &TagLimits, report: &mut Report) -> rusqlite::Result<()> {
    let version = schema::version(conn)?;
    if version == 0 {
        report.fail(
            "schema",
            "empty: this is not a tagcast store (schema version 0)",
        );
        return Ok(());
    }
    report.schema(version, schema::usable_from(conn)?, schema::CURRENT_VERSION);

    let mut problems = Vec::new();
    {
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let line: String = row.get(0)?;
            if line != "ok" {
                problems.push(line);
            }
        }
    }
    if problems.is_empty() {
        report.ok(
            "integrity",
            "every page, table and index is sound (PRAGMA integrity_check)",
        );
    } else {
        report.fail(
            "integrity",
            format!(
                "{} problem(s), first: {}; restore from a backup (docs/operations.md)",
                problems.len(),
                problems[0]
            ),
        );
        // The rows cannot be trusted to read back; stop here.
        return Ok(());
    }

    for (kind, name) in [("table", "users"), ("table", "tagcast_apps")] {
        let present = count(
            conn,
            "SELECT COUNT(*) FROM sqlite_master WHERE type = ?1 AND name = ?2",
            params![kind, name],
        )?;
        if present == 0 {
            report.fail("schema", format!("{kind} {name} is missing"));
        }
    }

    let mut scan = TagScan::default();
    {
        let mut stmt = conn.prepare("SELECT tags FROM users")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            match row.get_ref(0)?.as_str() {
                Ok(text) => scan.add(text, limits),
                Err(_) => scan.bad_tags += 1,
            }
        }
    }
    let counts = RowCounts {
        users: count(conn, "SELECT COUNT(*) FROM users", [])?,
        apps: count(conn, "SELECT COUNT(DISTINCT app_id) FROM users", [])?,
        tags: scan.tags,
        bad_tags: scan.bad_tags,
        bad_ids: count(
            conn,
            "SELECT COUNT(*) FROM users WHERE app_id NOT BETWEEN 1 AND 2147483647 OR user_id < 1",
            [],
        )? + scan.bad_inboxes,
        bad_ext: count(
            conn,
            "SELECT COUNT(*) FROM users WHERE NOT json_valid(ext) OR json_type(ext) <> 'object'",
            [],
        )?,
        bad_keys: bad_keys(scan.keys, limits),
        long_values: scan.long_values,
        over_cap: scan.over_cap,
        bad_ordinals: count(conn, "SELECT CAST((SELECT COUNT(*) FROM users u WHERE u.ordinal IS NULL OR u.ordinal < 0
                     OR u.ordinal >= COALESCE((SELECT next_ordinal FROM tagcast_apps a WHERE a.app_id = u.app_id), 0))
                  + (SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM users
                     WHERE ordinal IS NOT NULL GROUP BY app_id, ordinal HAVING COUNT(*) > 1) d) AS bigint)", [])?,
    };
    report.rows(&counts, limits);
    Ok(())
}
