//! UserBroadcast is idempotent (API.md §7): a captured request replayed, once or 30 times
//! at once, sends one broadcast and spends one of the day's sends; a ClientToken makes a
//! repeat of a send (another request, later) answer the first one's Result; tokens are
//! per app and checked. Runs on the suite's backend; the two-node case is in
//! `broadcast_nodes.rs`.

use serde_json::{Value, json};

use crate::broadcast::send_body;
use crate::common::*;

/// A UserBroadcast body without a ClientToken.
fn plain(content: &str) -> Vec<u8> {
    json!({"AppId": APP, "Sender": 1, "MsgTTL": 3600, "MsgType": 1, "Content": content})
        .to_string()
        .into_bytes()
}

/// A UserBroadcast request signed now for `host`: what an attacker captures.
pub fn capture(host: &str, body: &[u8]) -> http::HeaderMap {
    signed_headers(
        &creds(AK, SK),
        "POST",
        host,
        "Action=UserBroadcast&Version=2020-12-01",
        body,
        time::OffsetDateTime::now_utc(),
    )
}

/// Sends the captured request (`headers`, `body`) `n` times at once; the answers.
pub async fn replay(
    endpoint: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    n: usize,
) -> Vec<tagcast::call::Answer> {
    let q = "Action=UserBroadcast&Version=2020-12-01";
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (endpoint, headers, body) = (endpoint.to_owned(), headers.clone(), body.to_vec());
        tasks.spawn(async move { send_raw(&endpoint, "POST", q, headers, body).await });
    }
    tasks.join_all().await
}

/// The one Result all `answers` carry.
pub fn the_same_result(answers: &[tagcast::call::Answer]) -> Value {
    let results: Vec<Value> = answers.iter().map(ok).collect();
    for r in &results {
        assert_eq!(
            r, &results[0],
            "every replay answers the first send's Result"
        );
    }
    results[0].clone()
}

async fn broadcasts(c: &tagcast::call::Client, app: i64) -> usize {
    ok(&call(c, "ListBroadcasts", json!({"AppId": app, "Limit": 100})).await)["Broadcasts"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_captured_request_replayed_30_times_at_once_sends_one_broadcast() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1, 2]).await;
    let body = plain("once");
    let captured = capture(&s.addr.to_string(), &body);
    let answers = replay(&s.endpoint(), &captured, &body, 30).await;
    let r = the_same_result(&answers);
    assert_eq!(r["AudienceCount"], 2);
    assert_eq!(broadcasts(&c, APP).await, 1);
    // One of the day's 20 was spent: 19 more are accepted, then the quota says no.
    for _ in 0..19 {
        ok(&call(&c, "UserBroadcast", send_body(json!({}))).await);
    }
    let a = call(&c, "UserBroadcast", send_body(json!({}))).await;
    assert_error(&a, 429, "FlowLimitExceeded");
    // A replay of the first after the quota is gone still answers its Result.
    let again = replay(&s.endpoint(), &captured, &body, 1).await;
    assert_eq!(the_same_result(&again)["BroadcastId"], r["BroadcastId"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_token_makes_a_later_repeat_answer_the_first_send() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1]).await;
    register(&c, APP2, &[1]).await;
    let first = ok(&call(
        &c,
        "UserBroadcast",
        send_body(json!({"ClientToken": "order-42", "Content": "first"})),
    )
    .await);
    // Another request (other content, signed anew) with the same token: nothing is sent.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let repeat = ok(&call(
        &c,
        "UserBroadcast",
        send_body(json!({"ClientToken": "order-42", "Content": "second"})),
    )
    .await);
    assert_eq!(repeat, first);
    assert_eq!(broadcasts(&c, APP).await, 1);
    // Tokens are per app.
    let other = ok(&call(
        &c,
        "UserBroadcast",
        send_body(json!({"ClientToken": "order-42", "AppId": APP2})),
    )
    .await);
    assert_ne!(other["BroadcastId"], first["BroadcastId"]);
    // Checked: 1 to 64 printable ASCII characters.
    for bad in [
        json!(""),
        json!("x".repeat(65)),
        json!("tab\there"),
        json!("ü"),
    ] {
        let a = call(&c, "UserBroadcast", send_body(json!({"ClientToken": bad}))).await;
        let v = assert_error(&a, 400, "InvalidParam");
        assert!(v.to_string().contains("ClientToken"), "{v}");
    }
}
