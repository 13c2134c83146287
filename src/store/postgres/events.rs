//! The event log's SQL (API.md §9) on PostgreSQL: `tagcast_app_log` read as events, its
//! retention, the event-only entries of broadcasts, and event webhooks' cursors and
//! leases. An app's positions are taken under its `tagcast_apps` row's lock, held until
//! commit, so they become visible in order: a reader on any node never sees an entry
//! before an earlier one of its app (no event can appear behind a consumer's cursor).

use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::batch::{APPEND_LOG, NOTIFY};
use super::{Shared, classify};
use crate::model::{Change, Origin};
use crate::store::{LogEntry, LogPage, LogRead, StoreError};

/// The app's bounds with each entry from `$2` on (at most `$3`); one row of bounds and
/// NULLs when there is none.
const READ_FROM: &str =
    "WITH b AS (SELECT MIN(pos) AS lo, MAX(pos) AS hi FROM tagcast_app_log WHERE app_id = $1)
     SELECT b.lo, b.hi, l.pos, l.created, l.body FROM b
     LEFT JOIN LATERAL (SELECT pos, created, body FROM tagcast_app_log
                        WHERE app_id = $1 AND pos >= $2 ORDER BY pos LIMIT $3) l ON true
     ORDER BY l.pos";
/// The same, the newest entries before `$2`, newest first.
const READ_NEWEST: &str =
    "WITH b AS (SELECT MIN(pos) AS lo, MAX(pos) AS hi FROM tagcast_app_log WHERE app_id = $1)
     SELECT b.lo, b.hi, l.pos, l.created, l.body FROM b
     LEFT JOIN LATERAL (SELECT pos, created, body FROM tagcast_app_log
                        WHERE app_id = $1 AND pos < $2 ORDER BY pos DESC LIMIT $3) l ON true
     ORDER BY l.pos DESC";

/// Appends an entry of one event-only change (a broadcast sent or recalled) in `tx`, at
/// the app's next position, and notifies the other nodes at commit.
pub(super) async fn append_event(
    tx: &Transaction<'_>,
    origin: &Origin,
    change: &Change,
    time_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let app = change.app() as i32;
    tx.execute(
        "INSERT INTO tagcast_apps (app_id, next_ordinal) VALUES ($1, 0) ON CONFLICT (app_id) DO NOTHING",
        &[&app],
    )
    .await?;
    let body = crate::model::encode_entry(&[(origin, std::slice::from_ref(change))]);
    let params: [&(dyn ToSql + Sync); 4] = [&vec![app], &time_ms, &vec![body], &vec![1i64]];
    tx.execute(APPEND_LOG, &params).await?;
    tx.execute(NOTIFY, &[]).await?;
    Ok(())
}

impl Shared {
    /// One statement, so one snapshot, for the bounds and the entries (one round trip).
    pub(super) async fn read_log(&self, app: u32, read: LogRead) -> Result<LogPage, StoreError> {
        let classify = |e| classify(&self.target, e);
        let client = self.client().await?;
        let app_i = app as i32;
        let rows = match read {
            LogRead::From { from, max } => {
                let statement = client.prepare_cached(READ_FROM).await.map_err(classify)?;
                client
                    .query(
                        &statement,
                        &[&app_i, &(from.min(i64::MAX as u64) as i64), &(max as i64)],
                    )
                    .await
            }
            LogRead::Newest { before, max } => {
                let statement = client.prepare_cached(READ_NEWEST).await.map_err(classify)?;
                client
                    .query(
                        &statement,
                        &[&app_i, &(before.min(i64::MAX as u64) as i64), &(max as i64)],
                    )
                    .await
            }
        }
        .map_err(classify)?;
        let mut page = LogPage::default();
        for r in rows {
            page.oldest = r.get::<_, Option<i64>>(0).unwrap_or(0) as u64;
            page.head = r.get::<_, Option<i64>>(1).unwrap_or(0) as u64;
            if let Some(pos) = r.get::<_, Option<i64>>(2) {
                page.entries.push(LogEntry {
                    pos: pos as u64,
                    time_ms: r.get(3),
                    body: r.get(4),
                });
            }
        }
        Ok(page)
    }

    pub(super) async fn log_apps(&self) -> Result<Vec<u32>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT app_id FROM tagcast_apps WHERE log_pos > 0", &[])
            .await
            .map_err(|e| classify(&self.target, e))?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    }

    pub(super) async fn log_cut(
        &self,
        app: u32,
        since_ms: i64,
        max_events: u64,
    ) -> Result<(u64, u64), StoreError> {
        let classify = |e| classify(&self.target, e);
        let client = self.client().await?;
        let app_i = app as i32;
        let Some(head) = client
            .query_opt(
                "SELECT (SELECT MIN(pos) FROM tagcast_app_log WHERE app_id = $1), pos, total
                 FROM tagcast_app_log WHERE app_id = $1 ORDER BY pos DESC LIMIT 1",
                &[&app_i],
            )
            .await
            .map_err(classify)?
        else {
            return Ok((0, 0));
        };
        let (oldest, head_pos, total): (i64, i64, i64) = (head.get(0), head.get(1), head.get(2));
        let keep: Option<i64> = client
            .query_opt(
                "SELECT pos FROM tagcast_app_log
                 WHERE app_id = $1 AND created >= $2 AND total > $3 ORDER BY pos LIMIT 1",
                &[&app_i, &since_ms, &total.saturating_sub(max_events as i64)],
            )
            .await
            .map_err(classify)?
            .map(|r| r.get(0));
        Ok((oldest as u64, keep.unwrap_or(head_pos).min(head_pos) as u64))
    }

    pub(super) async fn trim_log(
        &self,
        app: u32,
        keep_from: u64,
        chunk: u64,
    ) -> Result<bool, StoreError> {
        let classify = |e| classify(&self.target, e);
        let client = self.client().await?;
        let app_i = app as i32;
        client
            .execute(
                "DELETE FROM tagcast_app_log WHERE app_id = $1
                   AND pos < LEAST($2, (SELECT MIN(pos) FROM tagcast_app_log WHERE app_id = $1) + $3)",
                &[&app_i, &(keep_from as i64), &(chunk as i64)],
            )
            .await
            .map_err(classify)?;
        let oldest: Option<i64> = client
            .query_one(
                "SELECT MIN(pos) FROM tagcast_app_log WHERE app_id = $1",
                &[&app_i],
            )
            .await
            .map_err(classify)?
            .get(0);
        Ok(oldest.is_some_and(|o| (o as u64) < keep_from))
    }

    pub(super) async fn event_cursor(&self, hook: &str, app: u32) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT pos FROM tagcast_event_cursors WHERE url = $1 AND app_id = $2",
                &[&hook, &(app as i32)],
            )
            .await
            .map_err(|e| classify(&self.target, e))?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// Takes the lease when it is free or expired, renews it when `node` holds it.
    pub(super) async fn lease_event_sender(
        &self,
        hook: &str,
        app: u32,
        node: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO tagcast_event_cursors AS c (url, app_id, node, lease_until)
                 VALUES ($1, $2, $3, $4::bigint + $5::bigint)
                 ON CONFLICT (url, app_id) DO UPDATE SET node = $3, lease_until = $4::bigint + $5::bigint
                   WHERE c.node = $3 OR c.lease_until < $4::bigint
                 RETURNING pos",
                &[&hook, &(app as i32), &node, &now_ms, &lease_ms],
            )
            .await
            .map_err(|e| classify(&self.target, e))?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    pub(super) async fn save_event_cursor(
        &self,
        hook: &str,
        app: u32,
        node: &str,
        pos: u64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE tagcast_event_cursors SET pos = GREATEST(pos, $4)
                 WHERE url = $1 AND app_id = $2 AND node = $3",
                &[&hook, &(app as i32), &node, &(pos as i64)],
            )
            .await
            .map_err(|e| classify(&self.target, e))?;
        Ok(n > 0)
    }
}
