//! Broadcasts over HTTP (API.md §7): UserBroadcast's fields and limits, the day quota, the
//! frozen audience, the recipient's pull, recall, expiry and purge, and webhook delivery
//! (signed, retried, complete, nothing after a recall, resumed after kill -9). Runs on the
//! backend of the suite's pass; `broadcast_nodes.rs` has the multi-node cases.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tagcast::call::Client;
use tagcast::config::Config;

use crate::common::*;
use crate::webhook_receiver::{Answer, Receiver, webhook};

/// Delivery tuned for tests: short timeout, lease, backoff and sweep.
pub fn fast_delivery(c: &mut Config) {
    c.delivery.timeout_ms = 800;
    c.delivery.lease_ms = 2_500;
    c.delivery.retry_base_ms = 50;
    c.delivery.retry_max_ms = 400;
    c.delivery.poll_ms = 50;
    c.delivery.sweep_ms = 100;
}

/// A UserBroadcast body with `extra`'s fields, and a ClientToken of its own: identical
/// requests signed in the same second are one broadcast (API.md §7), and the tests send
/// many alike. The replay tests build theirs without one.
pub fn send_body(extra: Value) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut b = json!({"AppId": APP, "Sender": 10001, "MsgTTL": 3600, "MsgType": 10001,
                       "Content": "{\"text\":\"hi\"}", "ClientToken": format!("test-{n}")});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

pub async fn send(client: &Client, extra: Value) -> Value {
    ok(&call(client, "UserBroadcast", send_body(extra)).await)
}

async fn tag(client: &Client, users: &[i64], tags: &[&str]) {
    let a = call(
        client,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserIds": users, "Tags": tags}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
}

/// The broadcast ids a user pulls, newest first, following every cursor with `limit`.
async fn pulled(client: &Client, user: i64, inbox: u32, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = ok(&call(
            client,
            "ListUserBroadcasts",
            json!({"AppId": APP, "InboxType": inbox, "UserId": user, "Cursor": cursor, "Limit": limit}),
        )
        .await);
        for b in r["Broadcasts"].as_array().unwrap() {
            out.push(b["BroadcastId"].as_str().unwrap().to_owned());
        }
        cursor = r["NextCursor"].as_str().unwrap().to_owned();
        if cursor.is_empty() {
            return out;
        }
    }
}

async fn get(client: &Client, id: &str) -> Value {
    ok(&call(
        client,
        "GetBroadcast",
        json!({"AppId": APP, "BroadcastId": id}),
    )
    .await)["Broadcast"]
        .clone()
}

/// Rows of a table for one broadcast, straight from the database.
pub async fn rows(config: &Config, table: &str, column: &str, id: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = {id}");
    match &config.store.url {
        Some(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(conn);
            let n: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
            drop(client);
            let _ = driver.await;
            n
        }
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                config.data_dir.join(tagcast::store::embedded::DB_FILE),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            conn.query_row(&sql, [], |r| r.get(0)).unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_broadcast_refuses_each_bad_field_naming_it() {
    let server = TestServer::start().await;
    let c = server.client();
    register(&c, APP, &[1]).await;
    let eleven: Vec<String> = (0..11).map(|i| format!("k{i}:v")).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"MsgTTL": 0}), "MsgTTL"),
        (json!({"MsgTTL": 604801}), "MsgTTL"),
        (json!({"Content": ""}), "Content"),
        (json!({"Content": "x".repeat(65537)}), "Content"),
        (json!({"Sender": 0}), "Sender"),
        (json!({"MsgType": 1i64 << 40}), "MsgType"),
        (json!({"Tags": eleven}), "10"),
        (json!({"Tags": ["a:b"], "Filter": {"Tag": "a:b"}}), "Filter"),
        (json!({"Filter": {"Nope": 1}}), "Filter"),
        (json!({"TagOp": 2, "Tags": ["a"]}), "TagOp"),
        (json!({"Ext": {"s:x": "1"}}), "s:"),
        (json!({"Ext": {"k": "v".repeat(501)}}), "Ext"),
        (json!({"InboxType": -1}), "InboxType"),
    ];
    for (extra, needle) in cases {
        let a = call(&c, "UserBroadcast", send_body(extra.clone())).await;
        let v = assert_error(&a, 400, "InvalidParam");
        let msg = v["ResponseMetadata"]["Error"]["Message"].as_str().unwrap();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    for missing in ["Sender", "MsgTTL", "MsgType", "Content", "AppId"] {
        let mut b = send_body(json!({}));
        b.as_object_mut().unwrap().remove(missing);
        let a = call(&c, "UserBroadcast", b).await;
        let v = assert_error(&a, 400, "InvalidParam");
        assert!(v.to_string().contains(missing), "{v}");
    }
    let a = call(&c, "UserBroadcast", send_body(json!({"AppId": 999_999}))).await;
    assert_error(&a, 404, "AppNotFound");
    let a = call(&c, "UserBroadcast", send_body(json!({"AppId": OTHER_APP}))).await;
    assert_error(&a, 403, "AccessDenied");
    // Both filter forms are accepted; 65,536 bytes of Content and a 7-day TTL too.
    send(&c, json!({"Tags": ["a:b"], "TagOp": 1})).await;
    let r = send(
        &c,
        json!({"Filter": {"Not": {"Key": "a"}}, "MsgTTL": 604800, "Content": "x".repeat(65536)}),
    )
    .await;
    assert_eq!(r["AudienceCount"], 1);
    assert!(r["BroadcastId"].as_str().unwrap().parse::<i64>().unwrap() > 0);
    let expire = r["ExpireTime"].as_i64().unwrap();
    let now = tagcast::store::now_ms();
    assert!(
        (expire - now - 604_800_000).abs() < 60_000,
        "{expire} vs {now}"
    );
    // The other Actions' errors.
    for (action, body) in [
        ("GetBroadcast", json!({"AppId": APP, "BroadcastId": "x1"})),
        ("RecallBroadcast", json!({"AppId": APP, "BroadcastId": 0})),
        ("ListUserBroadcasts", json!({"AppId": APP, "UserId": 0})),
        (
            "ListUserBroadcasts",
            json!({"AppId": APP, "UserId": 1, "Limit": 101}),
        ),
        (
            "ListUserBroadcasts",
            json!({"AppId": APP, "UserId": 1, "Cursor": "bogus"}),
        ),
        ("ListBroadcasts", json!({"AppId": APP, "Limit": 0})),
    ] {
        let a = call(&c, action, body.clone()).await;
        assert_error(&a, 400, "InvalidParam");
    }
    for action in ["GetBroadcast", "RecallBroadcast"] {
        let a = call(
            &c,
            action,
            json!({"AppId": APP, "BroadcastId": "987654321"}),
        )
        .await;
        let v = assert_error(&a, 404, "BroadcastNotFound");
        assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 200005);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_day_quota_refuses_the_next_send_until_utc_midnight_per_app() {
    // The vendor's default, 20: the 21st of the day is refused.
    let server = TestServer::start().await;
    assert_eq!(server.config.limits.broadcasts_per_day, 20);
    let c = server.client();
    for _ in 0..20 {
        send(&c, json!({})).await;
    }
    let a = call(&c, "UserBroadcast", send_body(json!({}))).await;
    let v = assert_error(&a, 429, "FlowLimitExceeded");
    let msg = v["ResponseMetadata"]["Error"]["Message"].as_str().unwrap();
    assert!(
        msg.contains("broadcasts_per_day") && msg.contains("20"),
        "{msg}"
    );
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    let now = tagcast::store::now_ms();
    let to_midnight = (86_400_000 - now.rem_euclid(86_400_000)) as u64 / 1000;
    assert!(retry.abs_diff(to_midnight) <= 5, "{retry} vs {to_midnight}");
    // A refused send changes nothing: the day still holds 20, and another app is unaffected.
    let listed = ok(&call(&c, "ListBroadcasts", json!({"AppId": APP, "Limit": 100})).await);
    assert_eq!(listed["Broadcasts"].as_array().unwrap().len(), 20);
    ok(&call(&c, "UserBroadcast", send_body(json!({"AppId": APP2}))).await);
    // Still refused a second before midnight; the next UTC day has its own 20.
    let clock = &server.state.broadcasts.clock;
    let to_midnight = 86_400_000 - clock.now_ms().rem_euclid(86_400_000);
    clock.advance(to_midnight - 2_000);
    let a = call(&c, "UserBroadcast", send_body(json!({}))).await;
    assert_error(&a, 429, "FlowLimitExceeded");
    clock.advance(2_000);
    for n in 0..20 {
        let a = call(&c, "UserBroadcast", send_body(json!({}))).await;
        assert_eq!(a.status, 200, "send {n} of the next day: {}", a.json());
    }
    let a = call(&c, "UserBroadcast", send_body(json!({}))).await;
    assert_error(&a, 429, "FlowLimitExceeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audience_is_frozen_and_the_pull_lists_newest_first_until_recalled() {
    let server = TestServer::start().await;
    let c = server.client();
    register(&c, APP, &[1, 2, 3, 4, 5]).await;
    tag(&c, &[1, 2, 3], &["level:gold"]).await;
    tag(&c, &[3], &["city:sh"]).await;
    let gold = send(&c, json!({"Tags": ["level:gold"]})).await;
    assert_eq!(gold["AudienceCount"], 3);
    let gold_id = gold["BroadcastId"].as_str().unwrap().to_owned();
    let both = send(
        &c,
        json!({"Filter": {"And": [{"Tag": "level:gold"}, {"Tag": "city:sh"}]}}),
    )
    .await;
    let both_id = both["BroadcastId"].as_str().unwrap().to_owned();
    let everyone = send(&c, json!({})).await;
    assert_eq!(everyone["AudienceCount"], 5);
    let all_id = everyone["BroadcastId"].as_str().unwrap().to_owned();
    let inbox7 = send(&c, json!({"InboxType": 7})).await;
    let inbox7_id = inbox7["BroadcastId"].as_str().unwrap().to_owned();
    // Changes after the send change nothing of it.
    tag(&c, &[4], &["level:gold"]).await;
    register(&c, APP, &[6]).await;
    tag(&c, &[6], &["level:gold"]).await;
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserIds": [1], "Tags": ["level"], "Op": 1}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    assert_eq!(
        pulled(&c, 1, 0, 20).await,
        [all_id.clone(), gold_id.clone()]
    );
    assert_eq!(
        pulled(&c, 3, 0, 1).await,
        [all_id.clone(), both_id.clone(), gold_id.clone()]
    );
    assert_eq!(pulled(&c, 4, 0, 20).await, std::slice::from_ref(&all_id));
    assert!(pulled(&c, 6, 0, 20).await.is_empty());
    assert!(
        pulled(&c, 99, 0, 20).await.is_empty(),
        "not registered: none"
    );
    assert_eq!(pulled(&c, 2, 7, 20).await, [inbox7_id]);
    let g = get(&c, &gold_id).await;
    assert_eq!(g["AudienceCount"], 3);
    assert_eq!(g["Tags"], json!(["level:gold"]));
    assert_eq!(g["Recalled"], false);
    assert_eq!(g["Content"], "{\"text\":\"hi\"}");
    // An unregistered user has none, and registering again starts afresh.
    let a = call(&c, "UnRegisterUsers", json!({"AppId": APP, "UserIds": [2]})).await;
    assert!(failed_infos(&a).is_empty());
    assert!(pulled(&c, 2, 0, 20).await.is_empty());
    register(&c, APP, &[2]).await;
    assert!(pulled(&c, 2, 0, 20).await.is_empty());
    // Recall: gone from every pull, idempotent, still readable.
    for _ in 0..2 {
        ok(&call(
            &c,
            "RecallBroadcast",
            json!({"AppId": APP, "BroadcastId": gold_id}),
        )
        .await);
    }
    assert_eq!(pulled(&c, 3, 0, 20).await, [all_id.clone(), both_id]);
    assert_eq!(get(&c, &gold_id).await["Recalled"], true);
    // Another app's id is not found, and ListBroadcasts pages newest first.
    let a = call(
        &c,
        "GetBroadcast",
        json!({"AppId": APP2, "BroadcastId": gold_id}),
    )
    .await;
    assert_error(&a, 404, "BroadcastNotFound");
    let first = ok(&call(&c, "ListBroadcasts", json!({"AppId": APP, "Limit": 3})).await);
    let ids: Vec<&str> = first["Broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["BroadcastId"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], inbox7["BroadcastId"].as_str().unwrap());
    assert_eq!(ids[1], all_id);
    let cursor = first["NextCursor"].as_str().unwrap();
    let rest = ok(&call(
        &c,
        "ListBroadcasts",
        json!({"AppId": APP, "Cursor": cursor}),
    )
    .await);
    assert_eq!(rest["Broadcasts"].as_array().unwrap().len(), 1);
    assert_eq!(rest["NextCursor"], "");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_broadcast_leaves_the_pull_and_is_purged_with_its_pages() {
    let receiver = Receiver::start(|_, _| Answer::Fail).await;
    let tmp = tempfile::tempdir().unwrap();
    let hook = webhook(tmp.path(), &receiver.url, 2);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        c.webhooks = vec![hook];
    })
    .await;
    let c = server.client();
    register(&c, APP, &[1, 2, 3]).await;
    let short = send(&c, json!({"MsgTTL": 1})).await;
    let id = short["BroadcastId"].as_str().unwrap().to_owned();
    let long = send(&c, json!({})).await;
    assert_eq!(pulled(&c, 1, 0, 20).await.len(), 2);
    // One lane per webhook, whatever the page count.
    assert_eq!(
        rows(&server.config, "tagcast_outbox_lanes", "broadcast_id", &id).await,
        1
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = call(&c, "GetBroadcast", json!({"AppId": APP, "BroadcastId": id})).await;
        if a.status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "not purged: {}", a.json());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pulled(&c, 1, 0, 20).await,
        [long["BroadcastId"].as_str().unwrap()]
    );
    assert_eq!(
        rows(&server.config, "tagcast_broadcasts", "id", &id).await,
        0
    );
    for table in ["tagcast_outbox_lanes", "tagcast_outbox_pages"] {
        assert_eq!(rows(&server.config, table, "broadcast_id", &id).await, 0);
    }
    let m = server.metrics().await;
    assert!(m.contains("tagcast_broadcasts_purged_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_arrives_signed_at_least_once_despite_failures_and_timeouts() {
    // Every third first attempt fails, every fifth first attempt answers too late.
    let receiver = Receiver::start(|id, n| {
        let page: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
        match (n, page % 5, page % 3) {
            (0, 0, _) => Answer::Slow(Duration::from_millis(1500)),
            (0, _, 0) => Answer::Fail,
            (1, 1, _) => Answer::Slow(Duration::from_millis(100)),
            _ => Answer::Ok,
        }
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let hook = webhook(tmp.path(), &receiver.url, 20);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        c.webhooks = vec![hook];
    })
    .await;
    let c = server.client();
    let ids: Vec<i64> = (1..=250).map(|i| i * 7).collect();
    register(&c, APP, &ids).await;
    let gold: Vec<i64> = ids.iter().copied().filter(|i| i % 3 != 0).collect();
    for chunk in gold.chunks(100) {
        tag(&c, chunk, &["level:gold"]).await;
    }
    let r = send(&c, json!({"Tags": ["level:gold"]})).await;
    let id = r["BroadcastId"].as_str().unwrap().to_owned();
    assert_eq!(r["AudienceCount"], gold.len());
    let pages = (gold.len() as u64).div_ceil(20);
    let got = receiver
        .wait_complete(&id, pages, Duration::from_secs(60))
        .await;
    assert_eq!(got, gold.iter().copied().collect::<BTreeSet<_>>());
    assert_eq!(receiver.bad_signatures(), 0);
    for a in receiver.arrivals() {
        assert_eq!(a.pages, pages);
        assert!(a.page < pages);
    }
    // The outcome is recorded shortly after the last acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = get(&c, &id).await["Delivery"].clone();
        if d["Delivered"] == pages {
            assert_eq!(d["Pages"], pages);
            assert_eq!(d["Pending"], 0);
            assert_eq!(d["Failed"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = server.metrics().await;
    assert!(
        m.contains(&format!("tagcast_webhook_pages_delivered_total {pages}")),
        "{m}"
    );
    assert!(m.contains(&format!(
        "tagcast_webhook_user_ids_delivered_total {}",
        gold.len()
    )));
    assert!(
        !m.contains("tagcast_webhook_attempts_failed_total 0\n"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_arrives_after_a_recall() {
    let receiver = Receiver::start(|_, _| Answer::Fail).await;
    let tmp = tempfile::tempdir().unwrap();
    let hook = webhook(tmp.path(), &receiver.url, 5);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        c.webhooks = vec![hook];
    })
    .await;
    let c = server.client();
    register(&c, APP, &(1..=40).collect::<Vec<_>>()).await;
    let r = send(&c, json!({})).await;
    let id = r["BroadcastId"].as_str().unwrap().to_owned();
    // Pages are being retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.arrivals().len() < 16 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ok(&call(
        &c,
        "RecallBroadcast",
        json!({"AppId": APP, "BroadcastId": id}),
    )
    .await);
    // An attempt already in flight (at most the timeout) may still land; none after it.
    let settled = Instant::now() + Duration::from_millis(server.config.delivery.timeout_ms + 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late: Vec<_> = receiver
        .arrivals()
        .into_iter()
        .filter(|a| a.at > settled)
        .collect();
    assert!(late.is_empty(), "{} arrivals after the recall", late.len());
    let d = get(&c, &id).await["Delivery"].clone();
    assert_eq!(d["Pending"], 0, "{d}");
    assert_eq!(d["Dropped"], 8, "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_loses_no_page() {
    let receiver = Receiver::start(|_, _| Answer::Slow(Duration::from_millis(150))).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    fast_delivery(&mut config);
    config.delivery.concurrency = 2;
    config.webhooks = vec![webhook(tmp.path(), &receiver.url, 10)];
    let server = ChildServer::spawn_with(tmp.path(), &config);
    let c = server.client();
    let ids: Vec<i64> = (1..=300).collect();
    register(&c, APP, &ids).await;
    let r = send(&c, json!({})).await;
    let id = r["BroadcastId"].as_str().unwrap().to_owned();
    let mut server = Some(server);
    for cycle in 1..=3 {
        // Kill once a few more pages have arrived.
        let deadline = Instant::now() + Duration::from_secs(30);
        while receiver.acked_pages(&id).len() < cycle * 5 {
            assert!(Instant::now() < deadline, "cycle {cycle}: no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.take().unwrap().kill9();
        server = Some(ChildServer::spawn_with(tmp.path(), &config));
    }
    let got = receiver
        .wait_complete(&id, 30, Duration::from_secs(60))
        .await;
    assert_eq!(got, ids.iter().copied().collect::<BTreeSet<_>>());
    drop(server);
}
