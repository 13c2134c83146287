//! The broadcast phase, on the audience phase's app: UserBroadcast latency for audiences of
//! about 1 %, 10 % and 100 % of the app; the recipient's pull (ListUserBroadcasts) with 140
//! active broadcasts against BatchGetUser in the same run; webhook throughput, the whole
//! app's audience POSTed to a receiver in this process; and a webhook of page size 1 (a
//! page per user): a send and a recall against the same without webhooks, and BatchGetUser
//! alone against BatchGetUser beside 8 clients of ListBroadcasts (issue 17, item 8).
//!
//! Two servers on the same data: the first without webhooks (sends and pulls), the second
//! with one webhook (delivery), so the latency sends make no pages.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use super::audience::DataSet;
use super::load::{self, Generator, Request};
use super::server::{self, Backend, BenchAccount, ServerProcess};
use super::{Figures, Options, Signer, peak_load, wait_ready};

/// Active broadcasts during the pull measurement (20 a day for 7 days).
const ACTIVE: usize = 140;
const WEBHOOK_SECRET: &str = "bench-webhook-secret-9f2c71";

/// Counts what arrives; answers 200 at once.
struct Receiver {
    url: String,
    ids: Arc<AtomicU64>,
    pages: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(rename = "UserIds")]
    user_ids: Vec<i64>,
}

impl Receiver {
    async fn start() -> Result<Self, String> {
        let ids = Arc::new(AtomicU64::new(0));
        let pages = Arc::new(AtomicU64::new(0));
        let last: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (i, p, l) = (ids.clone(), pages.clone(), last.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: bytes::Bytes| {
                let (i, p, l) = (i.clone(), p.clone(), l.clone());
                async move {
                    match serde_json::from_slice::<Page>(&body) {
                        Ok(page) => {
                            i.fetch_add(page.user_ids.len() as u64, Ordering::Relaxed);
                            p.fetch_add(1, Ordering::Relaxed);
                            *l.lock().expect("receiver lock") = Some(Instant::now());
                            http::StatusCode::OK
                        }
                        Err(_) => http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding the webhook receiver: {e}"))?;
        let url = format!(
            "http://{}/hook",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            ids,
            pages,
            last,
            task,
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pool of signed requests made by `body(n)`, cycled (signed up front: the client's CPU
/// goes to sending).
fn pool(signer: &Signer, action: &str, body: impl Fn(u64) -> Value) -> Generator {
    let pool: Vec<Request> = (0..4096u64)
        .map(|n| signer.request(action, body(n).to_string().into_bytes()))
        .collect();
    let pool = Arc::new(pool);
    Arc::new(move |n| pool[(n % pool.len() as u64) as usize].clone())
}

async fn send(addr: SocketAddr, signer: &Signer, body: Value) -> Result<Value, String> {
    let answer = load::fetch(
        addr,
        signer.request("UserBroadcast", body.to_string().into_bytes()),
    )
    .await?;
    let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    if v["ResponseMetadata"].get("Error").is_some() {
        return Err(format!("UserBroadcast failed: {v}"));
    }
    Ok(v["Result"].clone())
}

/// The tag whose share of users is closest to `share`.
fn tag_near(data: &DataSet, share: f64) -> (String, u64) {
    let n = data.users as f64;
    data.counts
        .iter()
        .min_by(|a, b| {
            let da = (*a.1 as f64 / n - share).abs();
            let db = (*b.1 as f64 / n - share).abs();
            da.total_cmp(&db).then(a.0.cmp(b.0))
        })
        .map(|(t, c)| (t.clone(), *c))
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The phase; `backend` holds the imported app.
pub(super) async fn phase(
    name: &str,
    work: &Path,
    backend: &Backend,
    account: &BenchAccount,
    data: &DataSet,
    options: &Options,
    f: &mut Figures,
) -> Result<(), String> {
    let n = data.users;
    let app = account.app_id;
    let config = server::write_config_with(
        &work.join(format!("{name}-broadcast")),
        backend,
        account,
        |c| {
            c.limits.broadcasts_per_day = 1_000_000;
            c.limits.actions.insert("UserBroadcast".into(), 1_000_000);
        },
    )?;
    let srv = ServerProcess::start(&config)?;
    wait_ready(srv.addr, Duration::from_secs(1800)).await?;
    let signer = Signer::new(srv.addr, account)?;

    // Send latency, each audience size in turn; these expire after a second.
    let runs = if n >= 1_000_000 { 30 } else { 15 };
    let (tag10, count10) = tag_near(data, 0.10);
    let vip = data.counts.get("vip").copied().unwrap_or(0);
    let cases = [
        ("1pct", json!({"Tags": ["vip"]}), vip),
        ("10pct", json!({"Tags": [tag10]}), count10),
        ("100pct", json!({}), n),
    ];
    for (label, selector, expected) in cases {
        let mut ms = Vec::with_capacity(runs);
        for run in 0..runs {
            // A token each: identical sends signed in one second are one broadcast.
            let mut body = json!({"AppId": app, "Sender": 1, "MsgTTL": 1, "MsgType": 1,
                                  "Content": "{\"text\":\"bench\"}",
                                  "ClientToken": format!("bench-{label}-{run}")});
            for (k, v) in selector.as_object().expect("an object") {
                body[k] = v.clone();
            }
            let started = Instant::now();
            let r = send(srv.addr, &signer, body).await?;
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if r["AudienceCount"].as_u64() != Some(expected) {
                return Err(format!(
                    "UserBroadcast {label}: AudienceCount {} where the data holds {expected}",
                    r["AudienceCount"]
                ));
            }
        }
        ms.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
        println!(
            "[{name}] broadcast     UserBroadcast to {expected} users ({label}): p50 {p50:.2} ms p99 {p99:.2} ms over {runs} sends"
        );
        f.set(&format!("broadcast_p50_ms_{label}"), p50);
        f.set(&format!("broadcast_p99_ms_{label}"), p99);
    }

    // 140 active broadcasts of mixed audiences, once the latency sends are purged.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = load::fetch(
            srv.addr,
            signer.request(
                "ListBroadcasts",
                json!({"AppId": app, "Limit": 1}).to_string().into_bytes(),
            ),
        )
        .await?;
        let v: Value = serde_json::from_slice(&listed).map_err(|e| e.to_string())?;
        if v["Result"]["Broadcasts"]
            .as_array()
            .is_some_and(|b| b.is_empty())
        {
            break;
        }
        if Instant::now() > deadline {
            return Err("the latency sends were not purged within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..ACTIVE {
        let selector = match i % 4 {
            0 => json!({}),
            1 => json!({"Tags": [format!("level:l{}", i % 5)]}),
            2 => json!({"Tags": [format!("country:c{}", i % 50)]}),
            _ => json!({"Tags": [format!("lang:g{}", i % 20)], "TagOp": 0}),
        };
        let mut body = json!({"AppId": app, "Sender": 1, "MsgTTL": 604800, "MsgType": 1,
                              "Content": format!("{{\"text\":\"broadcast {i}\"}}")});
        for (k, v) in selector.as_object().expect("an object") {
            body[k] = v.clone();
        }
        send(srv.addr, &signer, body).await?;
    }
    let mut rng = StdRng::seed_from_u64(7);
    let users: Vec<u64> = (0..4096).map(|_| rng.random_range(1..=n)).collect();
    let users = Arc::new(users);
    let u = users.clone();
    let get = pool(
        &signer,
        "BatchGetUser",
        move |i| json!({"AppId": app, "UserIds": [u[i as usize]]}),
    );
    let u = users.clone();
    let pull = pool(
        &signer,
        "ListUserBroadcasts",
        move |i| json!({"AppId": app, "UserId": u[i as usize], "Limit": 20}),
    );
    // Alternating rounds, the median of each: on a shared machine one round of either can
    // be off by a third.
    let (mut gets, mut pulls, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    // One round of each in a quick run (its figures are rough anyway).
    let rounds = if n >= 1_000_000 { 3 } else { 1 };
    for _ in 0..rounds {
        let got = peak_load(srv.addr, options, get.clone(), false, "BatchGetUser").await?;
        gets.push(got.rps());
        let pulled =
            peak_load(srv.addr, options, pull.clone(), false, "ListUserBroadcasts").await?;
        pulls.push(pulled.rps());
        p99s.push(pulled.percentile_ms(0.99));
    }
    for v in [&mut gets, &mut pulls, &mut p99s] {
        v.sort_by(f64::total_cmp);
    }
    let mid = rounds / 2;
    let (get_rps, pull_rps) = (gets[mid], pulls[mid]);
    let ratio = pull_rps / get_rps;
    println!(
        "[{name}] broadcast     ListUserBroadcasts (Limit 20) with {ACTIVE} active broadcasts: {pull_rps:.0} req/s (p99 {:.2} ms); \
         BatchGetUser of 1 user: {get_rps:.0} req/s; ratio {ratio:.2} (medians of {rounds} alternating rounds: pull {pulls:.0?}, get {gets:.0?})",
        p99s[mid]
    );
    f.set("list_user_broadcasts_rps", pull_rps);
    f.set("batch_get_user_rps", get_rps);
    f.set("ratio_pull_vs_batchget", ratio);
    srv.stop()?;

    // Delivery: the whole app to one webhook, default page size.
    let receiver = Receiver::start().await?;
    let secret = work.join(format!("{name}-webhook.secret"));
    std::fs::write(&secret, WEBHOOK_SECRET).map_err(|e| e.to_string())?;
    let url = receiver.url.clone();
    let config = server::write_config_with(
        &work.join(format!("{name}-webhook")),
        backend,
        account,
        |c| {
            c.limits.broadcasts_per_day = 1_000_000;
            c.webhooks = vec![crate::config::WebhookConfig::with_secret_file(
                &url, secret, 10_000,
            )];
        },
    )?;
    let srv = ServerProcess::start(&config)?;
    wait_ready(srv.addr, Duration::from_secs(1800)).await?;
    let signer = Signer::new(srv.addr, account)?;
    let body = json!({"AppId": app, "Sender": 1, "MsgTTL": 86400, "MsgType": 1,
                      "Content": "{\"text\":\"everyone\"}"});
    let r = send(srv.addr, &signer, body).await?;
    let answered = Instant::now();
    let expected = r["AudienceCount"].as_u64().unwrap_or(0);
    let limit = Duration::from_secs(600);
    while receiver.ids.load(Ordering::Relaxed) < expected {
        if answered.elapsed() > limit {
            return Err(format!(
                "webhook delivery: {} of {expected} user ids after {limit:?}",
                receiver.ids.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = receiver
        .last
        .lock()
        .expect("receiver lock")
        .unwrap_or_else(Instant::now);
    let took = last.saturating_duration_since(answered);
    let ids_per_s = expected as f64 / took.as_secs_f64().max(1e-6);
    println!(
        "[{name}] broadcast     webhook: {expected} user ids in {} pages of 10,000 delivered {:.0} ms after UserBroadcast answered: {ids_per_s:.0} ids/s",
        receiver.pages.load(Ordering::Relaxed),
        took.as_secs_f64() * 1000.0
    );
    f.set("webhook_ids_per_s", ids_per_s);
    f.set("webhook_full_delivery_ms", took.as_secs_f64() * 1000.0);
    srv.stop()?;
    drop(receiver);
    small_pages(name, work, backend, account, data, options, f).await
}

/// Mean and maximum of `ms`.
fn mean_max(ms: &[f64]) -> (f64, f64) {
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    (mean, ms.iter().copied().fold(0.0, f64::max))
}

/// A webhook of page size 1: every user is a page. What a send to everyone and its recall
/// take, against the same on a server without webhooks; then BatchGetUser's latency alone
/// and beside 8 clients of ListBroadcasts (Limit 100) over 20 such broadcasts.
async fn small_pages(
    name: &str,
    work: &Path,
    backend: &Backend,
    account: &BenchAccount,
    data: &DataSet,
    options: &Options,
    f: &mut Figures,
) -> Result<(), String> {
    let n = data.users;
    let app = account.app_id;
    let receiver = Receiver::start().await?;
    let secret = work.join(format!("{name}-pages.secret"));
    std::fs::write(&secret, WEBHOOK_SECRET).map_err(|e| e.to_string())?;
    let runs = 5;
    // (without webhooks, with the page-size-1 webhook): send ms, recall ms.
    let mut sends: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut recalls: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut get_p50 = [0.0f64; 2];
    for (k, hooked) in [false, true].into_iter().enumerate() {
        let url = receiver.url.clone();
        let secret = secret.clone();
        let config = server::write_config_with(
            &work.join(format!("{name}-pages-{k}")),
            backend,
            account,
            move |c| {
                c.limits.broadcasts_per_day = 1_000_000;
                c.limits.actions.insert("UserBroadcast".into(), 1_000_000);
                if hooked {
                    c.webhooks = vec![crate::config::WebhookConfig::with_secret_file(
                        &url, secret, 1,
                    )];
                }
            },
        )?;
        let srv = ServerProcess::start(&config)?;
        wait_ready(srv.addr, Duration::from_secs(1800)).await?;
        let signer = Signer::new(srv.addr, account)?;
        for run in 0..runs {
            let body = json!({"AppId": app, "Sender": 1, "MsgTTL": 86400, "MsgType": 1,
                              "Content": "{\"text\":\"a page each\"}",
                              "ClientToken": format!("pages-{k}-{run}")});
            let started = Instant::now();
            let r = send(srv.addr, &signer, body).await?;
            sends[k].push(started.elapsed().as_secs_f64() * 1000.0);
            let id = r["BroadcastId"].as_str().unwrap_or_default().to_owned();
            let started = Instant::now();
            let answer = load::fetch(
                srv.addr,
                signer.request(
                    "RecallBroadcast",
                    json!({"AppId": app, "BroadcastId": id})
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await?;
            recalls[k].push(started.elapsed().as_secs_f64() * 1000.0);
            let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
            if v["ResponseMetadata"].get("Error").is_some() {
                return Err(format!("RecallBroadcast failed: {v}"));
            }
        }
        // 20 live broadcasts to everyone for ListBroadcasts to summarize.
        for i in 0..20 {
            let body = json!({"AppId": app, "Sender": 1, "MsgTTL": 86400, "MsgType": 1,
                              "Content": format!("{{\"text\":\"live {i}\"}}"),
                              "ClientToken": format!("live-{k}-{i}")});
            send(srv.addr, &signer, body).await?;
        }
        let mut rng = StdRng::seed_from_u64(11);
        let users: Arc<Vec<u64>> = Arc::new((0..4096).map(|_| rng.random_range(1..=n)).collect());
        let get = pool(
            &signer,
            "BatchGetUser",
            move |i| json!({"AppId": app, "UserIds": [users[i as usize]]}),
        );
        let alone = peak_load(srv.addr, options, get.clone(), false, "BatchGetUser").await?;
        let list = pool(
            &signer,
            "ListBroadcasts",
            move |_| json!({"AppId": app, "Limit": 100}),
        );
        let addr = srv.addr;
        let busy_for = options.duration + options.duration / 4 + Duration::from_millis(500);
        let lists = tokio::spawn(load::run(
            addr,
            8,
            load::Pace::Closed { duration: busy_for },
            list,
            load::Expect {
                status: 200,
                body_contains: None,
            },
        ));
        let beside = peak_load(srv.addr, options, get, false, "BatchGetUser").await?;
        let listed = lists
            .await
            .map_err(|e| format!("the ListBroadcasts load: {e}"))??;
        let (a, b) = (alone.percentile_ms(0.5), beside.percentile_ms(0.5));
        println!(
            "[{name}] pages         {}: BatchGetUser p50 {a:.2} ms alone, {b:.2} ms beside 8 clients of ListBroadcasts ({:.0} req/s of them, 20 broadcasts of {n} pages)",
            if hooked { "page size 1" } else { "no webhook" },
            listed.rps()
        );
        if hooked {
            get_p50 = [a, b];
        }
        srv.stop()?;
    }
    let (s0, s0max) = mean_max(&sends[0]);
    let (s1, s1max) = mean_max(&sends[1]);
    let (r0, r0max) = mean_max(&recalls[0]);
    let (r1, r1max) = mean_max(&recalls[1]);
    println!(
        "[{name}] pages         UserBroadcast to {n} users: {s1:.1} ms (max {s1max:.1}) with a webhook of page size 1 ({n} pages), {s0:.1} ms (max {s0max:.1}) without webhooks: ratio {:.2}",
        s1 / s0
    );
    println!(
        "[{name}] pages         RecallBroadcast of it: {r1:.1} ms (max {r1max:.1}) with, {r0:.1} ms (max {r0max:.1}) without: ratio {:.2}",
        r1 / r0
    );
    f.set("pages1_send_ms", s1);
    f.set("pages1_send_ms_max", s1max);
    f.set("pages1_recall_ms", r1);
    f.set("pages1_recall_ms_max", r1max);
    f.set("ratio_pages1_send_vs_no_webhook", s1 / s0);
    f.set("ratio_pages1_recall_vs_no_webhook", r1 / r0);
    f.set("pages1_get_p50_ms_alone", get_p50[0]);
    f.set("pages1_get_p50_ms_beside_list", get_p50[1]);
    f.set("ratio_get_p50_beside_list", get_p50[1] / get_p50[0]);
    Ok(())
}
