//! The console's server side (API.md §10, §11): key roles, ListApps, ListTags, and the
//! console's files with their headers. The browser drives the console in
//! `console_browser.rs`.

use serde_json::{Value, json};
use tagcast::config::{KeyConfig, KeyRole};

use crate::broadcast::send_body;
use crate::common::*;

pub const AK_READ: &str = "AKLTacmeRead01";
pub const SK_READ: &str = "acme-read-secret-0001";

/// The test accounts plus a read key on acme's account.
pub fn with_read_key(c: &mut tagcast::config::Config) {
    c.accounts[0].keys.push(KeyConfig {
        role: KeyRole::Read,
        ..KeyConfig::inline(AK_READ, SK_READ)
    });
}

async fn set_tags(client: &tagcast::call::Client, app: i64, inbox: i64, user: i64, tags: Value) {
    let a = call(
        client,
        "BatchUpdateUserTags",
        json!({"AppId": app, "InboxType": inbox, "Op": 0,
               "UserTags": [{"UserId": user, "Tags": tags}]}),
    )
    .await;
    assert_eq!(failed_infos(&a), Vec::<Value>::new());
}

#[tokio::test]
async fn a_read_key_may_call_every_read_and_no_write_and_is_told_its_role() {
    let s = TestServer::with(with_read_key).await;
    let admin = s.client();
    let read = s.client_with(AK_READ, SK_READ);
    register(&admin, APP, &[1]).await;
    let bodies = [
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserIds": [1], "Tags": ["a:b"]}),
        ),
        (
            "RegisterUsers",
            json!({"AppId": APP, "Users": [{"UserId": 2}]}),
        ),
        ("UnRegisterUsers", json!({"AppId": APP, "UserIds": [1]})),
        ("BatchGetUser", json!({"AppId": APP, "UserIds": [1]})),
        (
            "BatchUpdateUser",
            json!({"AppId": APP, "Users": [{"UserId": 1, "Nick": "x"}]}),
        ),
        ("CountAudience", json!({"AppId": APP})),
        ("ListAudience", json!({"AppId": APP})),
        ("UserBroadcast", send_body(json!({}))),
        ("ListUserBroadcasts", json!({"AppId": APP, "UserId": 1})),
        ("GetBroadcast", json!({"AppId": APP, "BroadcastId": "1"})),
        ("ListBroadcasts", json!({"AppId": APP})),
        ("RecallBroadcast", json!({"AppId": APP, "BroadcastId": "1"})),
        ("ListEvents", json!({"AppId": APP})),
        ("ListApps", json!({})),
        ("ListTags", json!({"AppId": APP})),
    ];
    assert_eq!(
        bodies.len(),
        tagcast::api::Action::ALL.len(),
        "every Action is tried"
    );
    for (action, body) in bodies {
        let is_read = tagcast::api::Action::from_name(action).unwrap().is_read();
        let a = call(&read, action, body.clone()).await;
        if is_read {
            let v = a.json();
            let code = &v["ResponseMetadata"]["Error"]["Code"];
            // GetBroadcast of an id that does not exist is refused for that, not the role.
            assert!(
                a.status == 200 || code != "AccessDenied",
                "{action} with a read key: {v}"
            );
        } else {
            let v = assert_error(&a, 403, "AccessDenied");
            let e = &v["ResponseMetadata"]["Error"];
            assert_eq!(e["CodeN"], 100013);
            let m = e["Message"].as_str().unwrap();
            assert!(m.contains("role is read") && m.contains(action), "{m}");
        }
    }
    // Nothing the refused writes asked for happened.
    assert_eq!(tags_of(&admin, APP, 0, 1).await, Some(vec![]));
    assert_eq!(tags_of(&admin, APP, 0, 2).await, None);
    let r = ok(&call(&admin, "ListBroadcasts", json!({"AppId": APP})).await);
    assert_eq!(r["Broadcasts"].as_array().unwrap().len(), 0, "{r}");
    // The role is on the key: the admin key of the same account may write.
    register(&admin, APP, &[2]).await;
    assert_eq!(tags_of(&admin, APP, 0, 2).await, Some(vec![]));
}

#[tokio::test]
async fn list_apps_answers_the_accounts_apps_their_users_todays_broadcasts_and_the_role() {
    let s = TestServer::with(|c| {
        with_read_key(c);
        c.limits.broadcasts_per_day = 7;
    })
    .await;
    let admin = s.client();
    register(&admin, APP, &[1, 2, 3]).await;
    register(&admin, APP2, &[1]).await;
    ok(&call(
        &admin,
        "UnRegisterUsers",
        json!({"AppId": APP, "UserIds": [3]}),
    )
    .await);
    ok(&call(&admin, "UserBroadcast", send_body(json!({}))).await);
    ok(&call(&admin, "UserBroadcast", send_body(json!({}))).await);

    let r = ok(&call(&admin, "ListApps", json!({})).await);
    const { assert!(APP2 < APP, "Apps are sorted by AppId") };
    assert_eq!(
        r,
        json!({"Apps": [
            {"AppId": APP2, "Users": 1, "BroadcastsToday": 0, "BroadcastsPerDay": 7},
            {"AppId": APP, "Users": 2, "BroadcastsToday": 2, "BroadcastsPerDay": 7},
        ], "Role": "admin"})
    );
    let r = ok(&call(&s.client_with(AK_READ, SK_READ), "ListApps", json!({})).await);
    assert_eq!(r["Role"], "read");
    assert_eq!(r["Apps"].as_array().unwrap().len(), 2);
    // Another account sees only its own app.
    let r = ok(&call(&s.client_with(AK_OTHER, SK_OTHER), "ListApps", json!({})).await);
    assert_eq!(
        r,
        json!({"Apps": [{"AppId": OTHER_APP, "Users": 0, "BroadcastsToday": 0, "BroadcastsPerDay": 7}], "Role": "admin"})
    );
    // A field ListApps does not know is refused, naming it.
    let v = assert_error(
        &call(&admin, "ListApps", json!({"AppIds": [APP]})).await,
        400,
        "InvalidParam",
    );
    assert!(v.to_string().contains("AppIds"), "{v}");
}

#[tokio::test]
async fn list_tags_counts_keys_and_values_exactly_and_follows_every_write() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1, 2, 3, 4, 5]).await;
    for (user, level) in [(1, "gold"), (2, "gold"), (3, "silver"), (4, "gold")] {
        set_tags(&c, APP, 0, user, json!({"level": level})).await;
    }
    for user in [1, 5] {
        set_tags(&c, APP, 0, user, json!({"city": "sh"})).await;
    }
    set_tags(&c, APP, 0, 3, json!({"zone": "a"})).await;
    set_tags(&c, APP, 0, 4, json!({"yard": "b"})).await;
    set_tags(&c, APP, 2, 1, json!({"level": "other-inbox"})).await;

    let tags = |body: Value| {
        let c = &c;
        async move { ok(&call(c, "ListTags", body).await) }
    };
    // Most users first, then by key.
    assert_eq!(
        tags(json!({"AppId": APP})).await,
        json!({"Keys": [
            {"Key": "level", "Users": 4, "Values": 2},
            {"Key": "city", "Users": 2, "Values": 1},
            {"Key": "yard", "Users": 1, "Values": 1},
            {"Key": "zone", "Users": 1, "Values": 1},
        ]})
    );
    assert_eq!(
        tags(json!({"AppId": APP, "InboxType": 0, "Limit": 2})).await["Keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        tags(json!({"AppId": APP, "Key": "level"})).await,
        json!({"Values": [{"Value": "gold", "Users": 3}, {"Value": "silver", "Users": 1}]})
    );
    assert_eq!(
        tags(json!({"AppId": APP, "InboxType": 2})).await,
        json!({"Keys": [{"Key": "level", "Users": 1, "Values": 1}]})
    );
    assert_eq!(
        tags(json!({"AppId": APP, "Key": "nope"})).await,
        json!({"Values": []})
    );
    assert_eq!(tags(json!({"AppId": APP2})).await, json!({"Keys": []}));

    // Every write shows at once: a value changed, a key deleted, a user unregistered.
    set_tags(&c, APP, 0, 3, json!({"level": "gold"})).await;
    ok(&call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "Op": 1, "UserTags": [{"UserId": 4, "Tags": {"yard": ""}}]}),
    )
    .await);
    ok(&call(&c, "UnRegisterUsers", json!({"AppId": APP, "UserIds": [5]})).await);
    assert_eq!(
        tags(json!({"AppId": APP})).await,
        json!({"Keys": [
            {"Key": "level", "Users": 4, "Values": 1},
            {"Key": "city", "Users": 1, "Values": 1},
            {"Key": "zone", "Users": 1, "Values": 1},
        ]})
    );
    let counted = ok(&call(
        &c,
        "CountAudience",
        json!({"AppId": APP, "Tags": ["level:gold"]}),
    )
    .await);
    assert_eq!(counted["Count"], 4, "ListTags agrees with CountAudience");

    // Refusals name the field and the limit.
    for (body, needle) in [
        (
            json!({"AppId": APP, "Limit": 0}),
            "Limit must be between 1 and 1000",
        ),
        (
            json!({"AppId": APP, "Limit": 1001}),
            "Limit must be between 1 and 1000",
        ),
        (
            json!({"AppId": APP, "Key": ""}),
            "Key must be a tag key of 1 to 128 bytes",
        ),
        (
            json!({"AppId": APP, "Key": "k".repeat(129)}),
            "Key must be a tag key of 1 to 128 bytes",
        ),
        (json!({"AppId": APP, "Keys": "level"}), "Keys"),
        (json!({"AppId": 0}), "AppId"),
        (json!({"AppId": APP, "InboxType": -1}), "InboxType"),
    ] {
        let v = assert_error(
            &call(&c, "ListTags", body.clone()).await,
            400,
            "InvalidParam",
        );
        let m = v["ResponseMetadata"]["Error"]["Message"].as_str().unwrap();
        assert!(m.contains(needle), "{body}: {m}");
    }
    assert_error(
        &call(&c, "ListTags", json!({"AppId": OTHER_APP})).await,
        403,
        "AccessDenied",
    );
}

const HEADERS: [(&str, &str); 3] = [
    ("content-security-policy", tagcast::console::CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

fn assert_console_headers(r: &reqwest::Response, what: &str) {
    for (name, value) in HEADERS {
        assert_eq!(
            r.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} on {what}"
        );
    }
}

#[tokio::test]
async fn every_console_file_is_served_from_the_binary_with_the_headers_and_revalidates() {
    let s = TestServer::start().await;
    let base = s.endpoint();
    let r = http_get(format!("{base}/console/")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_console_headers(&r, "/console/");
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = r.text().await.unwrap();
    assert!(html.contains("data-testid=\"signin-submit\""), "{html}");
    for (name, mime, bytes) in tagcast::console::ASSETS {
        let r = http_get(format!("{base}/console/{name}")).await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_console_headers(&r, name);
        assert_eq!(r.headers()["content-type"], *mime, "{name}");
        let etag = r.headers()["etag"].clone();
        assert_eq!(r.bytes().await.unwrap().as_ref(), *bytes, "{name}");
        let again = http_client()
            .get(format!("{base}/console/{name}"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{name} revalidated");
        assert_console_headers(&again, name);
    }
    // No file outside the table, whatever the path.
    for path in [
        "/console/nope.js",
        "/console/Cargo.toml",
        "/console/js/",
        "/console/js/api.js/x",
    ] {
        let r = http_get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_console_headers(&r, path);
    }
    let r = http_client()
        .get(format!("{base}/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "/console is redirected to the console");
    assert_eq!(r.url().path(), "/console/");

    // Turned off, the console is not served.
    let off = TestServer::with(|c| c.console.enabled = false).await;
    assert_ne!(off.status_of("/console/").await, 200);
    assert_ne!(off.status_of("/console/js/api.js").await, 200);
}
