//! The event log's figures (issue 19), on the end-to-end phase's store (its log holds the
//! registrations and every update of that phase):
//!
//! - `list_events_per_s`: one consumer reading the log from the start, `ListEvents`
//!   Limit 1000, request after request, for the phase's duration;
//! - `event_webhook_per_s`: a server with one event webhook (every type) to a receiver in
//!   this process, from its start until the receiver holds the newest event;
//! - `event_lag_p99_ms`: then BatchUpdateUserTags at half the end-to-end peak (open loop)
//!   for the phase's duration, each event's lag from its commit `Time` to its arrival at
//!   the receiver (commit comes before the answer, so this is at least the lag from the
//!   acknowledgement);
//! - `events_write_overhead`: the log cannot be turned off (it is what a start replays),
//!   so its cost is measured alone: the same transaction as a write's (10 users' rows
//!   updated) with and without the log's part (encoding the entry, counting its events,
//!   reading the previous total, inserting the entry), on SQLite without fsync, per
//!   request; the figure is the write's server CPU ÷ (that CPU − the log's cost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::load::{self, Pace};
use super::server::{self, Backend, BenchAccount, ServerProcess};
use super::{Figures, Options, Signer, USERS_PER_REQUEST, update_generator, wait_ready};
use crate::model::{Change, Origin};

const SECRET: &str = "bench-event-webhook-secret-4b8e";

/// Counts the events that arrive and each one's lag from its commit time.
struct Receiver {
    url: String,
    events: Arc<AtomicU64>,
    newest: Arc<AtomicU64>,
    lags_ms: Arc<Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Result<Self, String> {
        let events = Arc::new(AtomicU64::new(0));
        let newest = Arc::new(AtomicU64::new(0));
        let lags_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
        let (e, n, l) = (events.clone(), newest.clone(), lags_ms.clone());
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |body: bytes::Bytes| {
                let (e, n, l) = (e.clone(), n.clone(), l.clone());
                async move {
                    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                        return http::StatusCode::BAD_REQUEST;
                    };
                    let now = crate::model::now_ms() as f64;
                    let batch = v["Events"].as_array().cloned().unwrap_or_default();
                    let mut lags = Vec::with_capacity(batch.len());
                    for ev in &batch {
                        lags.push(now - ev["Time"].as_f64().unwrap_or(now));
                        let seq = ev["Seq"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                        n.fetch_max(seq, Ordering::Relaxed);
                    }
                    e.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    l.lock().expect("receiver lock").extend(lags);
                    http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding the event receiver: {e}"))?;
        let url = format!(
            "http://{}/events",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            events,
            newest,
            lags_ms,
            task,
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn list_events(
    addr: std::net::SocketAddr,
    signer: &Signer,
    body: Value,
) -> Result<Value, String> {
    let answer = load::fetch(
        addr,
        signer.request("ListEvents", body.to_string().into_bytes()),
    )
    .await?;
    let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    if v["ResponseMetadata"].get("Error").is_some() {
        return Err(format!("ListEvents failed: {v}"));
    }
    Ok(v["Result"].clone())
}

/// The phase; `peak` is the end-to-end peak (requests/s) and `cpu_write` its server CPU
/// per request (µs).
#[allow(clippy::too_many_arguments)]
pub(super) async fn phase(
    name: &str,
    work: &std::path::Path,
    backend: &Backend,
    account: &BenchAccount,
    options: &Options,
    peak: f64,
    cpu_write: f64,
    f: &mut Figures,
) -> Result<(), String> {
    let d = options.duration;
    // Reading the log.
    let config = server::write_config(&work.join(format!("{name}-events")), backend, account)?;
    let srv = ServerProcess::start(&config)?;
    wait_ready(srv.addr, Duration::from_secs(600)).await?;
    let signer = Signer::new(srv.addr, account)?;
    let started = Instant::now();
    let (mut read, mut after): (u64, Option<String>) = (0, None);
    while started.elapsed() < d {
        let mut body = json!({"AppId": account.app_id, "Limit": 1000});
        if let Some(a) = &after {
            body["After"] = json!(a);
        }
        let r = list_events(srv.addr, &signer, body).await?;
        let n = r["Events"].as_array().map_or(0, Vec::len) as u64;
        if n == 0 {
            break;
        }
        read += n;
        after = r["NextAfter"].as_str().map(str::to_owned);
    }
    let list_per_s = read as f64 / started.elapsed().as_secs_f64();
    println!(
        "[{name}] events        ListEvents Limit 1000, one consumer from the start: {read} events in {:.2} s = {list_per_s:.0} events/s",
        started.elapsed().as_secs_f64()
    );
    f.set("list_events_per_s", list_per_s);
    let newest: u64 = list_events(
        srv.addr,
        &signer,
        json!({"AppId": account.app_id, "Latest": true, "Limit": 1}),
    )
    .await?["NextAfter"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    srv.stop()?;

    // The event webhook: the whole log from its start, then the lag under load.
    let receiver = Receiver::start().await?;
    let secret = work.join(format!("{name}-event-webhook.secret"));
    std::fs::write(&secret, SECRET).map_err(|e| e.to_string())?;
    let url = receiver.url.clone();
    let config = server::write_config_with(
        &work.join(format!("{name}-event-webhook")),
        backend,
        account,
        |c| {
            let mut hook = crate::config::WebhookConfig::with_secret_file(&url, secret, 10_000);
            hook.broadcasts = false;
            hook.events = crate::model::events::EventType::ALL
                .iter()
                .map(|t| t.name().to_owned())
                .collect();
            c.webhooks = vec![hook];
        },
    )?;
    let srv = ServerProcess::start(&config)?;
    let ready = Instant::now();
    wait_ready(srv.addr, Duration::from_secs(600)).await?;
    let limit = Duration::from_secs(600);
    while receiver.newest.load(Ordering::Relaxed) < newest {
        if ready.elapsed() > limit {
            return Err(format!(
                "event webhook: {} events after {limit:?}, the newest not yet",
                receiver.events.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = ready.elapsed();
    let delivered = receiver.events.load(Ordering::Relaxed);
    let hook_per_s = delivered as f64 / took.as_secs_f64();
    println!(
        "[{name}] events        event webhook, the whole log from a start: {delivered} events in {:.2} s = {hook_per_s:.0} events/s",
        took.as_secs_f64()
    );
    f.set("event_webhook_per_s", hook_per_s);
    receiver.lags_ms.lock().expect("receiver lock").clear();
    let signer = Arc::new(Signer::new(srv.addr, account)?);
    let rate = peak * 0.5;
    let r = load::run(
        srv.addr,
        options.connections,
        Pace::Open { rate, duration: d },
        update_generator(signer, account.app_id, options.e2e_users),
        load::Expect {
            status: 200,
            body_contains: Some(super::ALL_OK),
        },
    )
    .await?;
    super::check("BatchUpdateUserTags (event lag)", &r)?;
    // Every event of the load arrives (bounded wait), then the lags.
    let want = r.ok * USERS_PER_REQUEST as u64;
    let waited = Instant::now();
    while (receiver.lags_ms.lock().expect("receiver lock").len() as u64) < want
        && waited.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lags = std::mem::take(&mut *receiver.lags_ms.lock().expect("receiver lock"));
    srv.stop()?;
    lags.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "[{name}] events        lag commit -> event webhook at half the write peak ({rate:.0} req/s offered, {:.0} answered): \
         {} events, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.rps(),
        lags.len(),
        pct(0.5),
        pct(0.99),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    f.set("event_lag_p50_ms", pct(0.5));
    f.set("event_lag_p99_ms", pct(0.99));

    // The log's cost per write.
    let (with_log, without) = tokio::task::spawn_blocking(log_cost)
        .await
        .map_err(|e| e.to_string())??;
    let cost_us = (with_log - without).max(0.0);
    let overhead = cpu_write / (cpu_write - cost_us).max(1e-6);
    println!(
        "[{name}] events        the log's part of a write (SQLite, no fsync): {without:.1} µs without, {with_log:.1} µs with = \
         {cost_us:.1} µs of the write's {cpu_write:.1} µs server CPU: overhead {overhead:.3}x"
    );
    f.set("events_log_cost_us", cost_us);
    f.set("events_write_overhead", overhead);
    Ok(())
}

/// µs per transaction of 10 users' row updates with the log's part, and without it.
fn log_cost() -> Result<(f64, f64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let conn =
        rusqlite::Connection::open(dir.path().join("log-cost.db")).map_err(|e| e.to_string())?;
    let sql = |e: rusqlite::Error| e.to_string();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "OFF")
        .map_err(sql)?;
    conn.execute_batch(
        "CREATE TABLE users (app_id INTEGER, user_id INTEGER, tags TEXT, PRIMARY KEY (app_id, user_id)) WITHOUT ROWID;
         CREATE TABLE tagcast_log (app_id INTEGER NOT NULL, pos INTEGER NOT NULL, time_ms INTEGER NOT NULL,
             body BLOB NOT NULL, total INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (app_id, pos)) WITHOUT ROWID;",
    )
    .map_err(sql)?;
    for u in 0..10_000i64 {
        conn.execute("INSERT INTO users VALUES (1, ?1, '{}')", [u])
            .map_err(sql)?;
    }
    let origin = Origin {
        request_id: "2026120522000000ABCDEF0000000000".into(),
        access_key: "AKLTbench0000000000000000000000000".into(),
    };
    const N: i64 = 20_000;
    let run = |with_log: bool, base: i64| -> rusqlite::Result<f64> {
        let started = Instant::now();
        for n in 0..N {
            let tx = rusqlite::Transaction::new_unchecked(
                &conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let mut changes = Vec::with_capacity(20);
            for i in 0..USERS_PER_REQUEST as i64 {
                let user = (n * 10 + i) % 10_000;
                let tags = format!(
                    r#"{{"0":{{"city":"v{}","level":"v{}"}}}}"#,
                    n % 997,
                    (n + 1) % 997
                );
                tx.prepare_cached("UPDATE users SET tags = ?3 WHERE app_id = ?1 AND user_id = ?2")?
                    .execute(rusqlite::params![1, user, tags])?;
                for (key, v) in [("level", n % 997), ("city", (n + 1) % 997)] {
                    changes.push(Change::SetTag {
                        app: 1,
                        user,
                        ordinal: user as u32,
                        inbox: 0,
                        key: key.into(),
                        old: Some(format!("v{}", (v + 996) % 997)),
                        value: format!("v{v}"),
                    });
                }
            }
            if with_log {
                let body = crate::model::encode_entry(&[(&origin, &changes[..])]);
                let events = crate::model::events::count(std::iter::once(&changes[..]));
                tx.prepare_cached(
                    "INSERT INTO tagcast_log (app_id, pos, time_ms, body, total) VALUES (1, ?1, ?2, ?3,
                         COALESCE((SELECT total FROM tagcast_log WHERE app_id = 1 AND pos = ?1 - 1), 0) + ?4)",
                )?
                .execute(rusqlite::params![base + n + 1, n, body, events as i64])?;
            }
            tx.commit()?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / N as f64)
    };
    // Warm-up, then each variant twice, the better of each.
    run(false, 0).map_err(sql)?;
    let without = run(false, 0).map_err(sql)?.min(run(false, 0).map_err(sql)?);
    let with_log = run(true, 0).map_err(sql)?.min(run(true, N).map_err(sql)?);
    Ok((with_log, without))
}
