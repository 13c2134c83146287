//! Webhooks over https, and the Standard Webhooks headers on every POST (issue 19, items
//! 4 and 5; API.md §7). The receivers are the tests' own (`webhook_receiver.rs`), over TLS
//! with a certificate for 127.0.0.1 that a CA made by the test signed; the Standard
//! Webhooks signatures are checked by the `standardwebhooks` package from PyPI, as a
//! Python receiver would. Runs on the suite's backend.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broadcast::{fast_delivery, send};
use crate::common::*;
use crate::delivery::metric;
use crate::webhook_receiver::{Answer, Raw, Receiver, SECRET, webhook};

async fn delivery(c: &tagcast::call::Client, id: &str) -> Value {
    ok(&call(c, "GetBroadcast", json!({"AppId": APP, "BroadcastId": id})).await)["Broadcast"]
        ["Delivery"]
        .clone()
}

/// A broadcast to users 1..=25 (3 pages of 10 for each webhook); its id.
async fn broadcast_to_25(c: &tagcast::call::Client) -> String {
    register(c, APP, &(1..=25).collect::<Vec<_>>()).await;
    send(c, json!({})).await["BroadcastId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_webhook_delivers_with_its_ca_file_and_one_that_does_not_verify_fails_with_the_tls_cause_and_retries()
 {
    let pki = crate::tls::pki();
    let leaf = Some((pki.server_cert.as_str(), pki.server_key.as_str()));
    let trusted = Receiver::start_with(SECRET, leaf, |_, _| Answer::Ok).await;
    let untrusted = Receiver::start_with(SECRET, leaf, |_, _| Answer::Ok).await;
    assert!(trusted.url.starts_with("https://127.0.0.1:"));
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    fast_delivery(&mut config);
    let mut good = webhook(tmp.path(), &trusted.url, 10);
    good.ca_file = Some(crate::tls::write(tmp.path(), "ca.pem", &pki.ca));
    // The same certificate, checked against a CA that did not sign it.
    let mut wrong = webhook(tmp.path(), &untrusted.url, 10);
    wrong.ca_file = Some(crate::tls::write(tmp.path(), "other.pem", &pki.other_ca));
    config.webhooks = vec![good, wrong];
    let server = ChildServer::spawn_logged(tmp.path(), &config, "info");
    let c = server.client();
    let id = broadcast_to_25(&c).await;

    let users = trusted.wait_complete(&id, 3, Duration::from_secs(30)).await;
    assert_eq!(users, (1..=25).collect::<BTreeSet<i64>>());
    assert_eq!(trusted.bad_signatures(), 0);

    // The other webhook's attempts fail in the handshake, are counted as TLS failures,
    // and are retried; nothing reaches its receiver.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = server.metrics().await;
        if metric(&text, "tagcast_webhook_tls_failures_total") >= 6.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 6 TLS failures after 30 s: {}; {:?}",
            metric(&text, "tagcast_webhook_tls_failures_total"),
            server.log_lines_with("webhook attempt failed")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(untrusted.received(), 0);
    // The trusted pages' outcomes are recorded in batches after their 2xx: wait (bounded)
    // until the record shows them, then check it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut d = delivery(&c, &id).await;
    while d["Delivered"] != json!(3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        d = delivery(&c, &id).await;
    }
    assert_eq!(
        (d["Delivered"].clone(), d["Pending"].clone()),
        (json!(3), json!(3)),
        "{d}"
    );
    let lines = server.wait_for_log("webhook attempt failed").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("TLS: invalid peer certificate") && l.contains("UnknownIssuer")),
        "{lines:?}"
    );
}

/// The deliveries of a receiver as the verifier script takes them.
fn requests(raw: &[Raw]) -> Vec<Value> {
    raw.iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({"headers": headers, "body": String::from_utf8(r.body.clone()).unwrap()})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_post_carries_standard_webhooks_headers_that_the_python_package_verifies_with_a_plain_and_a_whsec_secret()
 {
    // 32 bytes of key in the spec's form.
    let whsec = "whsec_dGFnY2FzdC1zdGFuZGFyZC13ZWJob29rcy10ZXN0LWs=";
    let plain = Receiver::start(|_, _| Answer::Ok).await;
    let standard = Receiver::start_with(whsec, None, |_, _| Answer::Ok).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    fast_delivery(&mut config);
    let whsec_file = tmp.path().join("whsec.secret");
    std::fs::write(&whsec_file, whsec).unwrap();
    config.webhooks = vec![
        webhook(tmp.path(), &plain.url, 10),
        tagcast::config::WebhookConfig::with_secret_file(&standard.url, whsec_file, 10),
    ];
    let server = ChildServer::spawn_with(tmp.path(), &config);
    let c = server.client();
    let id = broadcast_to_25(&c).await;
    for r in [&plain, &standard] {
        r.wait_complete(&id, 3, Duration::from_secs(30)).await;
        // The receiver checked both signatures of every request it acknowledged.
        assert_eq!(r.bad_signatures(), 0);
    }

    let cases = json!([
        {"secret": SECRET, "requests": requests(&plain.raw())},
        {"secret": whsec, "requests": requests(&standard.raw())},
    ]);
    let n = plain.raw().len() + standard.raw().len();
    assert!(n >= 6, "{n} deliveries");
    let file = tmp.path().join("deliveries.json");
    std::fs::write(&file, cases.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(crate::sdk_python::python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/verify_standard_webhooks.py"
    ))
    .arg(&file)
    .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = crate::sdk_python::output_within(&mut cmd, Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify_standard_webhooks.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("verified {n}, refused {n}"));
}
