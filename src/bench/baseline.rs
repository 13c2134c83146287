//! The database baselines: the same durable write as one end-to-end request (upsert 2 tags
//! on each of 10 users, one transaction) sent straight to the database at the same
//! concurrency, with no HTTP, signing, JSON or tagcast in between, same durability
//! settings. They write the schema a team would write without tagcast, one row per tag
//! keyed (app, user, inbox, key): `bench_tags`, what tagcast itself kept before issue 18
//! moved each user's tags into the user's row (so the figures stay comparable across
//! releases).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::{USERS_PER_REQUEST, tag_value};

/// The baselines' table, in both dialects.
pub const BENCH_TAGS: &str = "CREATE TABLE IF NOT EXISTS bench_tags (
        app_id     integer NOT NULL,
        user_id    bigint  NOT NULL,
        inbox_type integer NOT NULL,
        key        text    NOT NULL,
        value      text    NOT NULL,
        PRIMARY KEY (app_id, user_id, inbox_type, key))";

pub struct BaselineResult {
    pub transactions: u64,
    pub elapsed: Duration,
}

impl BaselineResult {
    pub fn user_updates_per_s(&self) -> f64 {
        (self.transactions * USERS_PER_REQUEST as u64) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Users `worker` writes in transaction `n`: each worker has its own users, so
/// transactions never wait on each other's rows (only on the database itself).
fn users_of(worker: usize, n: u64, users_per_worker: u64) -> impl Iterator<Item = i64> {
    let base = worker as u64 * users_per_worker;
    let first = (n * USERS_PER_REQUEST as u64) % users_per_worker;
    (0..USERS_PER_REQUEST as u64).map(move |i| (base + (first + i) % users_per_worker + 1) as i64)
}

/// SQLite through rusqlite: WAL, `synchronous=FULL`, one connection per thread,
/// `BEGIN IMMEDIATE`, prepared upserts, `COMMIT`.
pub fn sqlite(
    dir: &Path,
    app_id: u32,
    workers: usize,
    duration: Duration,
) -> Result<BaselineResult, String> {
    let path = dir.join("baseline.db");
    let open = || -> rusqlite::Result<Connection> {
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    };
    {
        let conn = open().map_err(|e| format!("opening {}: {e}", path.display()))?;
        conn.execute_batch(BENCH_TAGS)
            .map_err(|e| format!("creating bench_tags: {e}"))?;
    }
    let users_per_worker = 1000u64;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut threads = Vec::with_capacity(workers);
    for w in 0..workers {
        let (stop, done) = (stop.clone(), done.clone());
        let conn = open().map_err(|e| format!("opening {}: {e}", path.display()))?;
        threads.push(std::thread::spawn(move || -> rusqlite::Result<()> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tx = rusqlite::Transaction::new_unchecked(
                    &conn,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO bench_tags (app_id, user_id, inbox_type, key, value) VALUES (?1, ?2, 0, ?3, ?4)
                         ON CONFLICT (app_id, user_id, inbox_type, key) DO UPDATE SET value = excluded.value",
                    )?;
                    for user in users_of(w, n, users_per_worker) {
                        stmt.execute(params![app_id, user, "level", tag_value(n)])?;
                        stmt.execute(params![app_id, user, "city", tag_value(n + 1)])?;
                    }
                }
                tx.commit()?;
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok(())
        }));
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let transactions = done.load(Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| "a baseline thread panicked".to_owned())?
            .map_err(|e| format!("SQLite baseline: {e}"))?;
    }
    Ok(BaselineResult {
        transactions,
        elapsed,
    })
}

/// PostgreSQL through tokio-postgres: one connection per worker, `BEGIN`, one prepared
/// upsert of the 20 rows (arrays, `UNNEST`), `COMMIT`; the server's defaults
/// (`fsync=on`, `synchronous_commit=on`).
pub async fn postgres(
    url: &str,
    app_id: u32,
    workers: usize,
    duration: Duration,
) -> Result<BaselineResult, String> {
    {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
        tokio::spawn(conn);
        client
            .batch_execute(BENCH_TAGS)
            .await
            .map_err(|e| format!("creating bench_tags: {e}"))?;
    }
    let deadline = tokio::time::Instant::now() + duration;
    let done = Arc::new(AtomicU64::new(0));
    let users_per_worker = 1000u64;
    let mut tasks = Vec::with_capacity(workers);
    let started = Instant::now();
    for w in 0..workers {
        let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
        tokio::spawn(conn);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let upsert = client
                .prepare(
                    "INSERT INTO bench_tags (app_id, user_id, inbox_type, key, value)
                     SELECT $1, u, 0, k, v FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS t(u, k, v)
                     ON CONFLICT (app_id, user_id, inbox_type, key) DO UPDATE SET value = excluded.value",
                )
                .await?;
            let app_id = app_id as i32;
            let mut n = 0u64;
            while tokio::time::Instant::now() < deadline {
                let (mut ids, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
                for user in users_of(w, n, users_per_worker) {
                    for (k, v) in [("level", tag_value(n)), ("city", tag_value(n + 1))] {
                        ids.push(user);
                        keys.push(k.to_owned());
                        values.push(v);
                    }
                }
                let tx = client.transaction().await?;
                tx.execute(&upsert, &[&app_id, &ids, &keys, &values]).await?;
                tx.commit().await?;
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            Ok::<(), tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| format!("baseline task: {e}"))?
            .map_err(|e| format!("PostgreSQL baseline: {e}"))?;
    }
    Ok(BaselineResult {
        transactions: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}
