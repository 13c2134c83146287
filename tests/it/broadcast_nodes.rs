//! Broadcasts on several nodes (PostgreSQL): the day quota is one count for all nodes, a
//! broadcast sent on one node is pulled on another at once with an audience holding what
//! that other node acknowledged just before, and webhook pages are sent by one node at a
//! time, with none lost when a node is killed mid-delivery.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::json;
use tagcast::config::Config;

use crate::broadcast::{fast_delivery, send, send_body};
use crate::common::*;
use crate::infra::{fresh_database, shared_postgres};
use crate::webhook_receiver::{Answer, Receiver, webhook};

fn node_config(dir: &std::path::Path, db_url: &str) -> Config {
    let mut c = base_config(dir);
    c.store.kind = tagcast::config::StoreKind::Postgres;
    c.store.url = Some(db_url.to_owned());
    fast_delivery(&mut c);
    c
}

/// A node with its own data directory (each keeps its snapshot file there).
fn node(root: &std::path::Path, name: &str, config: &Config) -> ChildServer {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = config.clone();
    config.data_dir = dir.clone();
    ChildServer::spawn_with(&dir, &config)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quota_is_shared_and_a_send_on_one_node_is_pulled_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = node_config(tmp.path(), &fresh_database(shared_postgres()));
    config.limits.broadcasts_per_day = 4;
    let (a, b) = (
        node(tmp.path(), "a", &config),
        node(tmp.path(), "b", &config),
    );
    let (ca, cb) = (a.client(), b.client());
    register(&ca, APP, &[1, 2, 3]).await;
    let mut sent = Vec::new();
    for round in 0..4 {
        let (writer, sender) = if round % 2 == 0 {
            (&cb, &ca)
        } else {
            (&ca, &cb)
        };
        // Acknowledged on one node, then frozen into the audience on the other.
        let t = call(
            writer,
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserIds": [round % 3 + 1], "Tags": [format!("r:{round}")]}),
        )
        .await;
        assert!(failed_infos(&t).is_empty());
        let r = send(sender, json!({"Tags": [format!("r:{round}")]})).await;
        assert_eq!(r["AudienceCount"], 1, "round {round}");
        let id = r["BroadcastId"].as_str().unwrap().to_owned();
        // Pulled at once on the node that did not send it.
        let pull = ok(&call(
            writer,
            "ListUserBroadcasts",
            json!({"AppId": APP, "UserId": round % 3 + 1}),
        )
        .await);
        assert_eq!(pull["Broadcasts"][0]["BroadcastId"], id.as_str());
        sent.push(id);
    }
    for c in [&ca, &cb] {
        let a = call(c, "UserBroadcast", send_body(json!({}))).await;
        assert_error(&a, 429, "FlowLimitExceeded");
    }
    // Recalled on one node: gone from the other's pull.
    ok(&call(
        &cb,
        "RecallBroadcast",
        json!({"AppId": APP, "BroadcastId": sent[0]}),
    )
    .await);
    let pull = ok(&call(
        &ca,
        "ListUserBroadcasts",
        json!({"AppId": APP, "UserId": 1}),
    )
    .await);
    assert!(
        !pull.to_string().contains(&format!("\"{}\"", sent[0])),
        "{pull}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_delivery_loses_no_page_and_no_page_is_sent_by_two_at_once() {
    let receiver = Receiver::start(|_, _| Answer::Slow(Duration::from_millis(100))).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = node_config(tmp.path(), &fresh_database(shared_postgres()));
    config.delivery.concurrency = 2;
    config.webhooks = vec![webhook(tmp.path(), &receiver.url, 10)];
    let (a, b) = (
        node(tmp.path(), "a", &config),
        node(tmp.path(), "b", &config),
    );
    let ca = a.client();
    let ids: Vec<i64> = (1..=400).collect();
    register(&ca, APP, &ids).await;
    let r = send(&ca, json!({})).await;
    let id = r["BroadcastId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.acked_pages(&id).len() < 10 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill9();
    let got = receiver
        .wait_complete(&id, 40, Duration::from_secs(60))
        .await;
    assert_eq!(got, ids.iter().copied().collect::<BTreeSet<_>>());
    assert_eq!(
        receiver.overlapping(),
        0,
        "a page was sent by two nodes at once"
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for arrival in receiver.arrivals() {
        *seen.entry(arrival.delivery_id).or_default() += 1;
    }
    // Only the pages the killed node had in flight (at most its concurrency) come twice.
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(twice <= 2, "{twice} pages arrived more than once: {seen:?}");
    assert_eq!(receiver.bad_signatures(), 0);
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_replayed_on_two_nodes_at_once_sends_one_broadcast() {
    let tmp = tempfile::tempdir().unwrap();
    let config = node_config(tmp.path(), &fresh_database(shared_postgres()));
    let (a, b) = (
        node(tmp.path(), "a", &config),
        node(tmp.path(), "b", &config),
    );
    register(&a.client(), APP, &[1, 2, 3]).await;
    let body =
        json!({"AppId": APP, "Sender": 1, "MsgTTL": 3600, "MsgType": 1, "Content": "twice?"})
            .to_string()
            .into_bytes();
    // The same signed request at both nodes, as a load balancer in front of them would
    // pass it on (its Host is the balancer's).
    let captured = crate::replays::capture("tagcast.internal:8080", &body);
    let (on_a, on_b) = tokio::join!(
        crate::replays::replay(&a.endpoint, &captured, &body, 15),
        crate::replays::replay(&b.endpoint, &captured, &body, 15),
    );
    let (ra, rb) = (
        crate::replays::the_same_result(&on_a),
        crate::replays::the_same_result(&on_b),
    );
    assert_eq!(ra, rb, "one send, on whichever node came first");
    // One ClientToken sent to both nodes at once: one broadcast.
    let token = send_body(json!({"ClientToken": "both-nodes"}));
    let (ca, cb) = (a.client(), b.client());
    let (x, y) = tokio::join!(
        call(&ca, "UserBroadcast", token.clone()),
        call(&cb, "UserBroadcast", token.clone()),
    );
    assert_eq!(ok(&x), ok(&y));
    let listed = ok(&call(&a.client(), "ListBroadcasts", json!({"AppId": APP})).await);
    assert_eq!(listed["Broadcasts"].as_array().unwrap().len(), 2);
}
