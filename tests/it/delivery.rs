//! Webhook delivery against misbehaving receivers (issue 17): a receiver that hangs delays
//! only itself, a broadcast with many pages does not hold back a later one, redirects are
//! failed attempts and never followed, failed attempts are logged (rate-limited, the URL
//! redacted) and the pending gauge follows a recall, and what a send, recall or purge
//! writes does not grow with the page count. Runs on the suite's backend.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broadcast::{fast_delivery, send, send_body};
use crate::common::*;
use crate::webhook_receiver::{Answer, Elsewhere, Receiver, webhook};

/// A receiver that never answers within any timeout.
fn hangs() -> Answer {
    Answer::Slow(Duration::from_secs(3600))
}

/// Polls `f` every 50 ms until it is true or `limit` passed; whether it became true.
async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delivery(c: &tagcast::call::Client, app: i64, id: &str) -> Value {
    ok(&call(c, "GetBroadcast", json!({"AppId": app, "BroadcastId": id})).await)["Broadcast"]
        ["Delivery"]
        .clone()
}

/// A value of `/metrics`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_receiver_with_200_pending_pages_delays_only_itself() {
    let stuck = Receiver::start(|_, _| hangs()).await;
    let healthy = Receiver::start(|_, _| Answer::Ok).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut to_stuck = webhook(tmp.path(), &stuck.url, 1);
    to_stuck.apps = Some(vec![APP]);
    let mut to_healthy = webhook(tmp.path(), &healthy.url, 10);
    to_healthy.apps = Some(vec![OTHER_APP]);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        // The receiver's full 10 s: a stuck page holds its slot that long.
        c.delivery.timeout_ms = 10_000;
        c.delivery.lease_ms = 30_000;
        c.webhooks = vec![to_stuck, to_healthy];
    })
    .await;
    let c = server.client();
    register(&c, APP, &(1..=200).collect::<Vec<_>>()).await;
    send(&c, json!({})).await;
    // The stuck receiver holds its share of the slots.
    assert!(eventually(Duration::from_secs(10), async || stuck.received() > 0).await);
    // Another account's broadcast, to another webhook: its page comes at once.
    let other = server.client_with(AK_OTHER, SK_OTHER);
    register(&other, OTHER_APP, &[1, 2, 3]).await;
    let sent = Instant::now();
    let r = ok(&call(
        &other,
        "UserBroadcast",
        send_body(json!({"AppId": OTHER_APP})),
    )
    .await);
    let id = r["BroadcastId"].as_str().unwrap().to_owned();
    let got = healthy.wait_complete(&id, 1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 3);
    let waited = sent.elapsed();
    // A bound on what the test measures, not on the server's speed: before issue 17 the
    // page waited for the stuck pages' 10 s timeouts (120 s in the report).
    assert!(
        waited < Duration::from_secs(5),
        "the healthy webhook's page took {waited:?} behind a stuck receiver"
    );
    // The stuck receiver never had more than its share in flight.
    let share = server.config.delivery.per_webhook;
    assert!(stuck.received() <= share, "{}", stuck.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_of_many_pages_does_not_hold_back_a_later_one() {
    let receiver = Receiver::start(|_, _| Answer::Slow(Duration::from_millis(100))).await;
    let tmp = tempfile::tempdir().unwrap();
    let hook = webhook(tmp.path(), &receiver.url, 1);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        c.delivery.timeout_ms = 5_000;
        c.delivery.lease_ms = 10_000;
        c.webhooks = vec![hook];
    })
    .await;
    let c = server.client();
    register(&c, APP, &(1..=100).collect::<Vec<_>>()).await;
    let tagged = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserIds": [7], "Tags": ["solo"]}),
    )
    .await;
    assert!(failed_infos(&tagged).is_empty());
    let big = send(&c, json!({})).await["BroadcastId"]
        .as_str()
        .unwrap()
        .to_owned();
    let small = send(&c, json!({"Tags": ["solo"]})).await;
    let small = small["BroadcastId"].as_str().unwrap().to_owned();
    // One page, sent after a hundred: the lanes take turns.
    receiver
        .wait_complete(&small, 1, Duration::from_secs(60))
        .await;
    let first_small = receiver
        .arrivals()
        .into_iter()
        .find(|a| a.broadcast_id == small)
        .unwrap();
    let big_before = receiver
        .arrivals()
        .into_iter()
        .filter(|a| a.broadcast_id == big && a.at < first_small.at)
        .count();
    assert!(
        big_before < 20,
        "{big_before} pages of the earlier broadcast went before the later one's first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_failed_attempts_logged_and_never_followed() {
    let elsewhere = Elsewhere::start().await;
    let to = elsewhere.url.clone();
    let found = Receiver::start(move |_, _| Answer::Redirect(302, to.clone())).await;
    let to = elsewhere.url.clone();
    let temporary = Receiver::start(move |_, _| Answer::Redirect(307, to.clone())).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    fast_delivery(&mut config);
    config.webhooks = vec![
        webhook(tmp.path(), &found.url, 10),
        webhook(tmp.path(), &temporary.url, 10),
    ];
    let server = ChildServer::spawn_logged(tmp.path(), &config, "info");
    let c = server.client();
    register(&c, APP, &[1, 2]).await;
    let id = send(&c, json!({})).await["BroadcastId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        eventually(Duration::from_secs(20), async || {
            found.arrivals().len() >= 3 && temporary.arrivals().len() >= 3
        })
        .await
    );
    assert_eq!(elsewhere.hits(), 0, "a redirect was followed");
    let d = delivery(&c, APP, &id).await;
    assert_eq!(
        (d["Delivered"].clone(), d["Pending"].clone()),
        (json!(0), json!(2)),
        "{d}"
    );
    let lines = server.wait_for_log("webhook attempt failed").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("HTTP 302") && l.contains("redirect")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_attempts_are_logged_rate_limited_with_the_url_redacted() {
    let receiver = Receiver::start(|_, _| Answer::Fail).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    fast_delivery(&mut config);
    let with_password = receiver
        .url
        .replace("http://", "http://alice:hunter2hunter2@");
    config.webhooks = vec![webhook(tmp.path(), &with_password, 1)];
    let server = ChildServer::spawn_logged(tmp.path(), &config, "info");
    let c = server.client();
    register(&c, APP, &[1, 2, 3]).await;
    send(&c, json!({})).await;
    assert!(
        eventually(Duration::from_secs(20), async || receiver.arrivals().len()
            >= 20)
        .await
    );
    let lines = server.log_lines_with("webhook attempt failed");
    assert!(!lines.is_empty(), "no failed attempt was logged");
    assert!(
        lines.len() <= 2,
        "{} attempts failed and {} lines were logged: {lines:?}",
        receiver.arrivals().len(),
        lines.len()
    );
    let line = &lines[0];
    println!("delivery: the log line of a failed attempt: {line}");
    assert!(
        line.contains("HTTP 500") && line.contains("delivery="),
        "{line}"
    );
    assert!(
        line.contains(&receiver.url.replace("http://", "")),
        "{line}"
    );
    let all = server.log.lock().unwrap().join("\n");
    assert!(
        !all.contains("hunter2"),
        "the URL's password reached the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pending_gauge_follows_a_recall() {
    let receiver = Receiver::start(|_, _| hangs()).await;
    let tmp = tempfile::tempdir().unwrap();
    let hook = webhook(tmp.path(), &receiver.url, 1);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        c.delivery.sweep_ms = 60_000;
        c.webhooks = vec![hook];
    })
    .await;
    let c = server.client();
    register(&c, APP, &[1, 2, 3]).await;
    let id = send(&c, json!({})).await["BroadcastId"]
        .as_str()
        .unwrap()
        .to_owned();
    let pending = async || metric(&server.metrics().await, "tagcast_webhook_pages_pending");
    assert!(eventually(Duration::from_secs(10), async || pending().await == 3.0).await);
    ok(&call(
        &c,
        "RecallBroadcast",
        json!({"AppId": APP, "BroadcastId": id}),
    )
    .await);
    // Long before the next sweep.
    assert!(
        eventually(Duration::from_secs(5), async || pending().await == 0.0).await,
        "{}",
        pending().await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lane_at_its_window_gives_its_next_page_once_the_outcomes_are_recorded() {
    let receiver = Receiver::start(|_, _| Answer::Ok).await;
    let tmp = tempfile::tempdir().unwrap();
    let hook = webhook(tmp.path(), &receiver.url, 1);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        // No polling to fall back on: only a send, an attempt's end and a recorded
        // outcome wake the delivery loop.
        c.delivery.poll_ms = 3_600_000;
        c.webhooks = vec![hook];
    })
    .await;
    let c = server.client();
    register(&c, APP, &(1..=40).collect::<Vec<_>>()).await;
    let r = send(&c, json!({})).await;
    let id = r["BroadcastId"].as_str().unwrap().to_owned();
    // 40 pages through a window of per_webhook (4): ten times the lane is full and gives
    // its next page only once the finisher has recorded how the last ones ended. Before
    // that woke the loop, the lane waited for the next poll: on PostgreSQL, whose claim
    // and record run on connections of their own, 4-5 of 40 pages came in 60 s (the
    // embedded store's single writer mostly records before it claims).
    let got = receiver
        .wait_complete(&id, 40, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), 40);
}

/// Rows of `table` for broadcast `id`, straight from the database behind `config`.
async fn rows(config: &tagcast::config::Config, table: &str, id: &str) -> i64 {
    crate::broadcast::rows(config, table, "broadcast_id", id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_and_a_recall_write_a_row_per_webhook_whatever_the_page_count() {
    let receiver = Receiver::start(|_, _| hangs()).await;
    let tmp = tempfile::tempdir().unwrap();
    let hook = webhook(tmp.path(), &receiver.url, 1);
    let server = TestServer::with(move |c| {
        fast_delivery(c);
        c.webhooks = vec![hook];
    })
    .await;
    let c = server.client();
    let users: Vec<i64> = (1..=3000).collect();
    register(&c, APP, &users).await;
    let r = send(&c, json!({})).await;
    let id = r["BroadcastId"].as_str().unwrap().to_owned();
    assert_eq!(r["AudienceCount"], 3000);
    assert!(eventually(Duration::from_secs(10), async || receiver.received() > 0).await);
    // 3,000 pages: one lane, and only the pages in flight have rows.
    assert_eq!(rows(&server.config, "tagcast_outbox_lanes", &id).await, 1);
    let open = rows(&server.config, "tagcast_outbox_pages", &id).await;
    assert!(
        (1..=server.config.delivery.per_webhook as i64).contains(&open),
        "{open} open pages"
    );
    let d = delivery(&c, APP, &id).await;
    assert_eq!(
        (d["Pages"].clone(), d["Pending"].clone()),
        (json!(3000), json!(3000))
    );
    ok(&call(
        &c,
        "RecallBroadcast",
        json!({"AppId": APP, "BroadcastId": id}),
    )
    .await);
    assert_eq!(rows(&server.config, "tagcast_outbox_pages", &id).await, 0);
    let d = delivery(&c, APP, &id).await;
    assert_eq!(
        (d["Dropped"].clone(), d["Pending"].clone()),
        (json!(3000), json!(0))
    );
}
