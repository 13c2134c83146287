//! Several `tagcast serve` processes on one PostgreSQL and one Redis behave like one node:
//! read-your-writes across nodes, no lost keys, one shared rate limit, and recovery from a
//! database restart with no acknowledged write lost. Real processes, real servers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tagcast::call::Client;
use tagcast::config::{Config, OnLimiterError};

use crate::common::*;
use crate::infra::{fresh_database, shared_postgres, shared_redis, start_postgres, start_redis};

/// A node's configuration on `db_url` and the shared Redis.
fn node_config(dir: &std::path::Path, db_url: &str, prefix: &str) -> Config {
    let mut c = base_config(dir);
    c.limits.redis_url = Some(shared_redis().url());
    c.limits.redis_key_prefix = prefix.to_owned();
    c.store.kind = tagcast::config::StoreKind::Postgres;
    c.store.url = Some(db_url.to_owned());
    c.store.timeout_ms = 1000;
    c
}

fn two_nodes(config: &Config) -> (tempfile::TempDir, ChildServer, ChildServer) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Each node with its own data directory (each keeps its snapshot file there).
    let (mut ca, mut cb) = (config.clone(), config.clone());
    ca.data_dir = a.clone();
    cb.data_dir = b.clone();
    let na = ChildServer::spawn_with(&a, &ca);
    let nb = ChildServer::spawn_with(&b, &cb);
    (dir, na, nb)
}

fn prefix() -> String {
    format!("t{}", rand_suffix())
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_acknowledged_by_one_node_is_read_back_from_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let config = node_config(tmp.path(), &fresh_database(shared_postgres()), &prefix());
    let (_dir, a, b) = two_nodes(&config);
    register(&a.client(), APP, &[1, 2]).await;
    for round in 0..20 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let body = json!({"AppId": APP, "UserTags": [{"UserId": 1 + round % 2, "Tags": {format!("k{round}"): format!("v{round}")}}]});
        assert!(
            failed_infos(&call(&writer.client(), "BatchUpdateUserTags", body).await).is_empty()
        );
        let tags = tags_of(&reader.client(), APP, 0, 1 + round % 2)
            .await
            .unwrap();
        assert!(
            tags.contains(&format!("k{round}:v{round}")),
            "round {round}: {tags:?}"
        );
    }
    ok(&call(
        &b.client(),
        "UnRegisterUsers",
        json!({"AppId": APP, "UserIds": [2]}),
    )
    .await);
    assert_eq!(tags_of(&a.client(), APP, 0, 2).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_on_both_nodes_to_the_same_users_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = node_config(tmp.path(), &fresh_database(shared_postgres()), &prefix());
    config.tags.max_per_user = 100_000;
    let (_dir, a, b) = two_nodes(&config);
    register(&a.client(), APP, &[1, 2, 3]).await;
    let clients = [a.client(), b.client()];
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let client = Client::new(&clients[w % 2].endpoint, creds(AK, SK));
        tasks.push(tokio::spawn(async move {
            for r in 0..30 {
                // Every entry touches all three users: the same rows from both nodes at once.
                let entries: Vec<_> = (1..=3)
                    .map(|u| json!({"UserId": u, "Tags": {format!("w{w}r{r}"): "x"}}))
                    .collect();
                let a = call(
                    &client,
                    "BatchUpdateUserTags",
                    json!({"AppId": APP, "UserTags": entries}),
                )
                .await;
                assert_eq!(
                    failed_infos(&a),
                    Vec::<serde_json::Value>::new(),
                    "{}",
                    a.json()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut checked = 0;
    for node in [&a, &b] {
        for u in 1..=3 {
            let tags = tags_of(&node.client(), APP, 0, u).await.unwrap();
            assert_eq!(tags.len(), 8 * 30, "user {u}");
            checked += tags.len();
        }
    }
    println!(
        "scale_out: {checked} keys written concurrently through two nodes, all present on both"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_account_across_two_nodes_is_held_to_its_limit_while_another_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = node_config(tmp.path(), &fresh_database(shared_postgres()), &prefix());
    let qps = 20u32;
    config.limits.actions.insert("BatchGetUser".into(), qps);
    let (_dir, a, b) = two_nodes(&config);
    let window = Duration::from_secs(3);
    let accepted = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..6usize {
        let client = Client::new(&[&a, &b][w % 2].endpoint, creds(AK, SK));
        let (accepted, sent) = (accepted.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < window {
                let r = get_users(&client, &[1]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                match r.status {
                    200 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {}
                    other => panic!("unexpected status {other}: {}", r.json()),
                }
            }
        }));
    }
    // The other account is served throughout, on both nodes.
    let other = [a.client_with_other(), b.client_with_other()];
    let mut other_ok = 0;
    while started.elapsed() < window {
        for c in &other {
            ok(&call(
                c,
                "BatchGetUser",
                json!({"AppId": OTHER_APP, "UserIds": [1]}),
            )
            .await);
            other_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed) as f64;
    let sent = sent.load(Ordering::Relaxed) as f64;
    // GCRA from a quiet start: one burst (= the per-second limit), then the steady rate.
    let expected = f64::from(qps) + f64::from(qps) * elapsed;
    println!(
        "scale_out: limit {qps}/s over two nodes: sent {sent} ({:.0}/s), accepted {accepted} in {elapsed:.2}s \
         (expected {expected:.0}, {:+.1}%); other account served {other_ok} times",
        sent / elapsed,
        (accepted - expected) / expected * 100.0
    );
    assert!(
        sent > 3.0 * expected,
        "the load was not several times the limit: sent {sent}"
    );
    assert!(
        (accepted - expected).abs() <= 0.1 * expected,
        "accepted {accepted}, expected {expected:.0} ± 10 %"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_under_load_gives_503_then_full_service_and_loses_nothing() {
    let mut pg = start_postgres();
    let db = fresh_database(&pg);
    let tmp = tempfile::tempdir().unwrap();
    let config = node_config(tmp.path(), &db, &prefix());
    let (_dir, a, b) = two_nodes(&config);
    register(&a.client(), APP, &[1, 2, 3, 4]).await;

    let ledger: Arc<Mutex<BTreeMap<(i64, String), String>>> = Arc::default();
    let unavailable = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let client = Client::new(&[&a, &b][w as usize % 2].endpoint, creds(AK, SK));
        let (ledger, unavailable, stop) = (ledger.clone(), unavailable.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = 0;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("w{w}r{r}"), format!("v{r}"));
                let body = json!({"AppId": APP, "UserTags": [{"UserId": w + 1, "Tags": {k.clone(): v.clone()}}]});
                let ans = call(&client, "BatchUpdateUserTags", body).await;
                match ans.status {
                    200 => {
                        assert!(failed_infos(&ans).is_empty(), "{}", ans.json());
                        ledger.lock().unwrap().insert((w + 1, k), v);
                    }
                    503 => {
                        assert_error(&ans, 503, "ServiceUnavailableTemp");
                        unavailable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected {other}: {}", ans.json()),
                }
                r += 1;
            }
        }));
    }
    let http = http_client();
    while ledger.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pg.pause();
    let down_since = Instant::now();
    while unavailable.load(Ordering::Relaxed) < 20 {
        assert!(
            down_since.elapsed() < Duration::from_secs(60),
            "no 503 while the database was down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = http
        .get(format!("{}/readyz", a.endpoint))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "/readyz must be red while the database is down");
    let acked_before_restart = ledger.lock().unwrap().len();
    pg.resume().unwrap();
    let back = Instant::now();
    // Service comes back on its own: count how long until each node answers a write again.
    let mut recovery = Vec::new();
    for node in [&a, &b] {
        loop {
            let ans = call(
                &node.client(),
                "BatchUpdateUserTags",
                json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {"probe": "1"}}]}),
            )
            .await;
            if ans.status == 200 {
                recovery.push(back.elapsed());
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "no recovery: {}",
                ans.json()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let after = ledger.lock().unwrap().len();
    while ledger.lock().unwrap().len() < after + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        http.get(format!("{}/readyz", b.endpoint))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let acknowledged = ledger.lock().unwrap().clone();
    for u in 1..=4 {
        let stored = tags_of(&b.client(), APP, 0, u).await.unwrap();
        for ((user, k), v) in &acknowledged {
            if *user == u {
                assert!(
                    stored.contains(&format!("{k}:{v}")),
                    "user {u} lost {k}={v}"
                );
            }
        }
    }
    println!(
        "scale_out: postgres restart: {} writes acknowledged ({acked_before_restart} before the stop), all present; \
         {} answered 503 while down; service back {:?} after the database returned (per node)",
        acknowledged.len(),
        unavailable.load(Ordering::Relaxed),
        recovery
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_starting_at_once_migrate_once() {
    let db = fresh_database(shared_postgres());
    let tmp = tempfile::tempdir().unwrap();
    let config = node_config(tmp.path(), &db, &prefix());
    let starts = (0..4).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { tagcast::server::prepare(&config).await.map(|_| ()) })
    });
    for s in starts {
        s.await.unwrap().expect("every node starts");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_follows_on_redis_error_and_is_counted() {
    let mut redis = start_redis();
    for (policy, status) in [(OnLimiterError::Allow, 200), (OnLimiterError::Deny, 503)] {
        let s = TestServer::with(|c| {
            c.limits.redis_url = Some(redis.url());
            c.limits.on_redis_error = policy;
            c.limits.redis_key_prefix = prefix();
        })
        .await;
        if policy == OnLimiterError::Allow {
            // Working Redis first: decisions are made there.
            ok(&get_users(&s.client(), &[1]).await);
            redis.stop();
        }
        let a = get_users(&s.client(), &[1]).await;
        assert_eq!(a.status, status, "{policy:?}: {}", a.json());
        if status == 503 {
            assert_error(&a, 503, "ServiceUnavailableTemp");
        }
        let metrics = s.metrics().await;
        let errors = metrics
            .lines()
            .find_map(|l| l.strip_prefix("tagcast_limiter_errors_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(errors >= 1, "{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tag_cap_holds_exactly_under_concurrent_writers_on_two_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = node_config(tmp.path(), &fresh_database(shared_postgres()), &prefix());
    let (_dir, a, b) = two_nodes(&config);
    register(&a.client(), APP, &[1]).await;
    let applied = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let client = Client::new(&[&a, &b][w % 2].endpoint, creds(AK, SK));
        let applied = applied.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..30 {
                let body = json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {format!("w{w}r{r}"): "x"}}]});
                let f = failed_infos(&call(&client, "BatchUpdateUserTags", body).await);
                match f.first() {
                    None => {
                        applied.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(info) => assert_eq!(info["Code"], "TagLimitExceeded"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 240 net-new keys offered, the cap is 100: exactly 100 were accepted, and kept.
    assert_eq!(applied.load(Ordering::Relaxed), 100);
    assert_eq!(tags_of(&b.client(), APP, 0, 1).await.unwrap().len(), 100);
}
