//! Per-account, per-Action GCRA limits: 429 FlowLimitExceeded with Retry-After, other
//! accounts and other Actions unaffected, failed authentication not charged.

use serde_json::json;

use crate::common::*;

fn slow(c: &mut tagcast::config::Config) {
    // One request per second: a burst of back-to-back requests must hit the limit unless
    // each took a whole second.
    c.limits.qps = 1;
    c.limits.actions.clear();
    c.limits.actions.insert("BatchGetUser".into(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_is_429_with_retry_after_and_other_accounts_are_served() {
    let s = TestServer::with(slow).await;
    let body = json!({"AppId": APP, "UserIds": [1]});
    // Failed authentication is not charged: these go first, then the account's one token is still there.
    for _ in 0..5 {
        assert_error(
            &call(&s.client_with(AK, "wrong"), "BatchGetUser", body.clone()).await,
            401,
            "SignatureDoesNotMatch",
        );
    }
    ok(&call(&s.client(), "BatchGetUser", body.clone()).await);
    let mut limited = 0;
    for _ in 0..10 {
        let a = call(&s.client(), "BatchGetUser", body.clone()).await;
        if a.status == 429 {
            let v = assert_error(&a, 429, "FlowLimitExceeded");
            assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100018);
            let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 1, "Retry-After {retry}");
            limited += 1;
        } else {
            ok(&a);
        }
    }
    assert!(limited >= 1, "no request was limited");
    // Another account has its own budget, and so does another Action of the same account.
    ok(&call(
        &s.client_with(AK_OTHER, SK_OTHER),
        "BatchGetUser",
        json!({"AppId": OTHER_APP, "UserIds": [1]}),
    )
    .await);
    ok(&call(
        &s.client(),
        "UnRegisterUsers",
        json!({"AppId": APP, "UserIds": [1]}),
    )
    .await);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(&format!(
            "tagcast_rate_limited_total{{action=\"BatchGetUser\"}} {limited}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_limit_is_shared_by_all_apps_of_an_account() {
    let s = TestServer::with(slow).await;
    ok(&get_users(&s.client(), &[1]).await);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            call(
                &s.client(),
                "BatchGetUser",
                json!({"AppId": APP2, "UserIds": [1]}),
            )
            .await
            .status,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}
