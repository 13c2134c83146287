//! The Actions over real HTTP: the seed example, both body shapes, Op semantics, inbox
//! isolation, per-user failures, and every limit of API.md §4–5.

use serde_json::{Value, json};

use crate::common::*;

fn tag_map(n: usize, prefix: &str) -> Value {
    Value::Object(
        (0..n)
            .map(|i| (format!("{prefix}{i}"), json!("v")))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_example_is_answered_as_the_seed_shows() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[10001]).await;
    let seed = r#"{
    "AppId":666675,
    "InboxType":0,
    "UserTags":[
        {
             "UserId":10001,
             "Tags":{
                 "key":"value"
             }
        }
    ],
    "Op":1
}"#;
    // Op 0 first so the seed's Op 1 has something to delete.
    let a = c
        .call(
            "BatchUpdateUserTags",
            seed.replace("\"Op\":1", "\"Op\":0").as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(failed_infos(&a), Vec::<Value>::new());
    assert_eq!(tags_of(&c, APP, 0, 10001).await.unwrap(), vec!["key:value"]);
    let a = c
        .call("BatchUpdateUserTags", seed.as_bytes())
        .await
        .unwrap();
    let v = a.json();
    assert_eq!(a.status, 200);
    let meta = &v["ResponseMetadata"];
    assert_eq!(meta["Action"], "BatchUpdateUserTags");
    assert_eq!(meta["Version"], "2020-12-01");
    assert_eq!(meta["Service"], "rtc");
    assert_eq!(meta["Region"], "cn-north-1");
    assert!(meta["RequestId"].as_str().unwrap().len() >= 16);
    assert_eq!(v["Result"], json!({"FailedInfos": []}));
    assert_eq!(
        tags_of(&c, APP, 0, 10001).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn op0_adds_and_overwrites_op1_deletes_and_ignores_absent_keys() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[7]).await;
    let upd = |tags: Value, op: i64| json!({"AppId": APP, "UserTags": [{"UserId": 7, "Tags": tags}], "Op": op});
    assert!(
        failed_infos(
            &call(
                &c,
                "BatchUpdateUserTags",
                upd(json!({"level": "silver", "city": "上海"}), 0)
            )
            .await
        )
        .is_empty()
    );
    assert!(
        failed_infos(
            &call(
                &c,
                "BatchUpdateUserTags",
                upd(json!({"level": "gold", "vip": ""}), 0)
            )
            .await
        )
        .is_empty()
    );
    assert_eq!(
        tags_of(&c, APP, 0, 7).await.unwrap(),
        vec!["city:上海", "level:gold", "vip:"]
    );
    // Op defaults to 0.
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": 7, "Tags": {"a": "1"}}]}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    // Op 1: values ignored, absent keys ignored.
    assert!(
        failed_infos(
            &call(
                &c,
                "BatchUpdateUserTags",
                upd(json!({"level": "whatever", "never-set": "x"}), 1)
            )
            .await
        )
        .is_empty()
    );
    assert_eq!(
        tags_of(&c, APP, 0, 7).await.unwrap(),
        vec!["a:1", "city:上海", "vip:"]
    );
    // Op other than 0/1 fails the whole request and changes nothing.
    let a = call(&c, "BatchUpdateUserTags", upd(json!({"a": "2"}), 2)).await;
    assert_error(&a, 400, "InvalidParam");
    assert_eq!(
        tags_of(&c, APP, 0, 7).await.unwrap(),
        vec!["a:1", "city:上海", "vip:"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_shape_applies_the_same_tags_to_every_listed_user() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1001, 1002]).await;
    let a = call(&c, "BatchUpdateUserTags", json!({"AppId": APP, "UserIds": [1001, 1002], "Tags": ["level:gold", "city", "url:http://x"], "Op": 0})).await;
    assert!(failed_infos(&a).is_empty());
    for u in [1001, 1002] {
        assert_eq!(
            tags_of(&c, APP, 0, u).await.unwrap(),
            vec!["city:", "level:gold", "url:http://x"]
        );
    }
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserIds": [1002], "Tags": ["level"], "Op": 1}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    assert_eq!(
        tags_of(&c, APP, 0, 1002).await.unwrap(),
        vec!["city:", "url:http://x"]
    );
    // Both shapes at once, or neither, is refused.
    let both =
        json!({"AppId": APP, "UserIds": [1001], "Tags": ["a"], "UserTags": [{"UserId": 1001}]});
    assert_error(
        &call(&c, "BatchUpdateUserTags", both).await,
        400,
        "InvalidParam",
    );
    assert_error(
        &call(&c, "BatchUpdateUserTags", json!({"AppId": APP})).await,
        400,
        "InvalidParam",
    );
    // The same key twice is ambiguous.
    let dup = json!({"AppId": APP, "UserIds": [1001], "Tags": ["a:1", "a:2"]});
    assert_error(
        &call(&c, "BatchUpdateUserTags", dup).await,
        400,
        "InvalidParam",
    );
    let dup = r#"{"AppId":666675,"UserTags":[{"UserId":1001,"Tags":{"a":"1","a":"2"}}]}"#;
    assert_error(
        &c.call("BatchUpdateUserTags", dup.as_bytes()).await.unwrap(),
        400,
        "InvalidParam",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_types_isolate_tag_sets_of_one_user() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[5]).await;
    for (inbox, v) in [(0, "zero"), (1, "one"), (2147483647, "max")] {
        let a = call(&c, "BatchUpdateUserTags", json!({"AppId": APP, "InboxType": inbox, "UserTags": [{"UserId": 5, "Tags": {"k": v}}]})).await;
        assert!(failed_infos(&a).is_empty());
    }
    assert_eq!(tags_of(&c, APP, 0, 5).await.unwrap(), vec!["k:zero"]);
    assert_eq!(tags_of(&c, APP, 1, 5).await.unwrap(), vec!["k:one"]);
    assert_eq!(
        tags_of(&c, APP, 2147483647, 5).await.unwrap(),
        vec!["k:max"]
    );
    let a = call(&c, "BatchUpdateUserTags", json!({"AppId": APP, "InboxType": 1, "UserTags": [{"UserId": 5, "Tags": {"k": ""}}], "Op": 1})).await;
    assert!(failed_infos(&a).is_empty());
    assert_eq!(tags_of(&c, APP, 1, 5).await.unwrap(), Vec::<String>::new());
    assert_eq!(tags_of(&c, APP, 0, 5).await.unwrap(), vec!["k:zero"]);
    // Apps isolate too.
    assert_eq!(tags_of(&c, APP2, 0, 5).await, None);
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "InboxType": 2147483648i64, "UserTags": [{"UserId": 5}]}),
    )
    .await;
    assert_error(&a, 400, "InvalidParam");
}

#[tokio::test(flavor = "multi_thread")]
async fn unregistered_user_is_reported_and_others_applied() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1, 3]).await;
    let long_key = "k".repeat(129);
    let body = json!({"AppId": APP, "UserTags": [
        {"UserId": 1, "Tags": {"a": "1"}},
        {"UserId": 2, "Tags": {"a": "1"}},
        {"UserId": 3, "Tags": {"ok": "1", long_key.clone(): "x"}},
        {"UserId": 3, "Tags": {"b": "2"}},
    ]});
    let f = failed_infos(&call(&c, "BatchUpdateUserTags", body).await);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0]["UserId"], 2);
    assert_eq!(f[0]["Code"], "UserNotFound");
    assert_eq!(f[1]["UserId"], 3);
    assert_eq!(f[1]["Code"], "InvalidParam");
    assert!(f[1]["Message"].as_str().unwrap().contains("128"), "{f:?}");
    assert_eq!(tags_of(&c, APP, 0, 1).await.unwrap(), vec!["a:1"]);
    // User 3's bad entry changed nothing (not even its valid key); its second entry applied.
    assert_eq!(tags_of(&c, APP, 0, 3).await.unwrap(), vec!["b:2"]);
    assert_eq!(tags_of(&c, APP, 0, 2).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_user_twice_applies_both_entries_in_order() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[9]).await;
    let body = json!({"AppId": APP, "UserTags": [
        {"UserId": 9, "Tags": {"a": "first", "b": "1"}},
        {"UserId": 9, "Tags": {"a": "second"}},
    ]});
    assert!(failed_infos(&call(&c, "BatchUpdateUserTags", body).await).is_empty());
    assert_eq!(
        tags_of(&c, APP, 0, 9).await.unwrap(),
        vec!["a:second", "b:1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_and_value_limits_are_enforced_per_user() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1]).await;
    let k128 = "k".repeat(128);
    let v1024 = "v".repeat(1024);
    let ok_body =
        json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {k128.clone(): v1024.clone()}}]});
    assert!(failed_infos(&call(&c, "BatchUpdateUserTags", ok_body).await).is_empty());
    let bad: Vec<(Value, &str)> = vec![
        (json!({"": "x"}), "1 to 128"),
        (json!({"k".repeat(129): "x"}), "128"),
        (json!({"a:b": "x"}), "':'"),
        (json!({"a\nb": "x"}), "control"),
        (json!({"a": "v".repeat(1025)}), "1024"),
    ];
    for (tags, needle) in bad {
        let f = failed_infos(
            &call(
                &c,
                "BatchUpdateUserTags",
                json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": tags}]}),
            )
            .await,
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0]["Code"], "InvalidParam");
        assert!(
            f[0]["Message"].as_str().unwrap().contains(needle),
            "{f:?} lacks {needle}"
        );
    }
    // Values are not checked for deletes.
    let del = json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {k128.clone(): "v".repeat(5000)}}], "Op": 1});
    assert!(failed_infos(&call(&c, "BatchUpdateUserTags", del).await).is_empty());
    assert_eq!(tags_of(&c, APP, 0, 1).await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_cap_counts_only_net_new_keys_and_deletes_are_always_allowed() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1, 2]).await;
    let up = |tags: Value, op: i64| json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": tags}], "Op": op});
    assert!(
        failed_infos(&call(&c, "BatchUpdateUserTags", up(tag_map(100, "k"), 0)).await).is_empty()
    );
    // Overwriting all 100 existing keys adds nothing: allowed.
    assert!(
        failed_infos(&call(&c, "BatchUpdateUserTags", up(tag_map(100, "k"), 0)).await).is_empty()
    );
    // 99 existing + 1 new = 101: refused whole, nothing changed.
    let mut mixed = tag_map(99, "k");
    mixed
        .as_object_mut()
        .unwrap()
        .insert("new".into(), json!("x"));
    mixed
        .as_object_mut()
        .unwrap()
        .insert("k0".into(), json!("changed"));
    let f = failed_infos(&call(&c, "BatchUpdateUserTags", up(mixed, 0)).await);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["Code"], "TagLimitExceeded");
    assert!(
        f[0]["Message"].as_str().unwrap().contains("101")
            && f[0]["Message"].as_str().unwrap().contains("100")
    );
    let tags = tags_of(&c, APP, 0, 1).await.unwrap();
    assert_eq!(tags.len(), 100);
    assert!(tags.contains(&"k0:v".to_owned()));
    // Delete one, then one new key fits.
    assert!(
        failed_infos(&call(&c, "BatchUpdateUserTags", up(json!({"k0": ""}), 1)).await).is_empty()
    );
    assert!(
        failed_infos(&call(&c, "BatchUpdateUserTags", up(json!({"new": "x"}), 0)).await).is_empty()
    );
    assert_eq!(tags_of(&c, APP, 0, 1).await.unwrap().len(), 100);
    // The cap is per inbox: another inbox of the same user has room.
    let other_inbox =
        json!({"AppId": APP, "InboxType": 3, "UserTags": [{"UserId": 1, "Tags": {"x": "1"}}]});
    assert!(failed_infos(&call(&c, "BatchUpdateUserTags", other_inbox).await).is_empty());
    // A single entry with 101 new keys is refused for that user only.
    let body = json!({"AppId": APP, "UserTags": [{"UserId": 2, "Tags": tag_map(101, "n")}, {"UserId": 2, "Tags": {"ok": "1"}}]});
    let f = failed_infos(&call(&c, "BatchUpdateUserTags", body).await);
    assert_eq!(f.len(), 1);
    assert_eq!(tags_of(&c, APP, 0, 2).await.unwrap(), vec!["ok:1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn item_counts_are_limited_per_action() {
    let s = TestServer::start().await;
    let c = s.client();
    let ids = |n: i64| (1..=n).collect::<Vec<_>>();
    let users = |n: i64| (1..=n).map(|i| json!({"UserId": i})).collect::<Vec<_>>();
    let entries = |n: i64| {
        (1..=n)
            .map(|i| json!({"UserId": i, "Tags": {}}))
            .collect::<Vec<_>>()
    };
    let cases = [
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserTags": entries(100)}),
            json!({"AppId": APP, "UserTags": entries(101)}),
            "100",
        ),
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserIds": ids(100), "Tags": []}),
            json!({"AppId": APP, "UserIds": ids(101), "Tags": []}),
            "100",
        ),
        (
            "RegisterUsers",
            json!({"AppId": APP, "Users": users(20)}),
            json!({"AppId": APP, "Users": users(21)}),
            "20",
        ),
        (
            "BatchUpdateUser",
            json!({"AppId": APP, "Users": users(10)}),
            json!({"AppId": APP, "Users": users(11)}),
            "10",
        ),
        (
            "UnRegisterUsers",
            json!({"AppId": APP, "UserIds": ids(10)}),
            json!({"AppId": APP, "UserIds": ids(11)}),
            "10",
        ),
        (
            "BatchGetUser",
            json!({"AppId": APP, "UserIds": ids(50)}),
            json!({"AppId": APP, "UserIds": ids(51)}),
            "50",
        ),
    ];
    for (action, at_limit, over, needle) in cases {
        ok(&call(&c, action, at_limit).await);
        let v = assert_error(&call(&c, action, over).await, 400, "InvalidParam");
        assert!(
            v["ResponseMetadata"]["Error"]["Message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{action}: {v}"
        );
        let empty = match action {
            "RegisterUsers" | "BatchUpdateUser" => json!({"AppId": APP, "Users": []}),
            "BatchUpdateUserTags" => json!({"AppId": APP, "UserTags": []}),
            _ => json!({"AppId": APP, "UserIds": []}),
        };
        assert_error(&call(&c, action, empty).await, 400, "InvalidParam");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn register_updates_given_fields_merges_tags_and_validates_profile() {
    let s = TestServer::start().await;
    let c = s.client();
    let a = call(&c, "RegisterUsers", json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "小明", "Portrait": "http://p", "Ext": {"a": "1"}, "Tags": ["level:gold"], "IsRobot": true}]})).await;
    assert!(failed_infos(&a).is_empty());
    // Re-register: only NickName given; tags merged.
    let a = call(
        &c,
        "RegisterUsers",
        json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "Ming", "Tags": ["city:sh"]}]}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    let r = ok(&get_users(&c, &[1, 1, 2]).await);
    let u = &r["Users"][0];
    assert_eq!(r["Users"].as_array().unwrap().len(), 1);
    assert_eq!(r["NotFoundUsers"], json!([2]));
    assert_eq!(u["AppId"], APP);
    assert_eq!(u["UserId"], 1);
    assert_eq!(u["NickName"], "Ming");
    assert_eq!(u["Portrait"], "http://p");
    assert_eq!(u["Ext"], json!({"a": "1"}));
    assert_eq!(u["IsRobot"], true);
    assert_eq!(u["Tags"], json!(["city:sh", "level:gold"]));
    assert!(u["CreateTime"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(u["ModifyTime"].as_i64().unwrap() >= u["CreateTime"].as_i64().unwrap());
    // Profile limits fail that user only.
    let ext21: Value = Value::Object((0..21).map(|i| (format!("e{i}"), json!("v"))).collect());
    let bad = [
        json!({"UserId": 10, "NickName": "n".repeat(101)}),
        json!({"UserId": 11, "Portrait": "p".repeat(501)}),
        json!({"UserId": 12, "Ext": ext21}),
        json!({"UserId": 13, "Ext": {"s:reserved": "v"}}),
        json!({"UserId": 14, "Ext": {"k".repeat(51): "v"}}),
        json!({"UserId": 15, "Ext": {"k": "v".repeat(501)}}),
        json!({"UserId": 16, "Tags": ["bad\u{1}key:v"]}),
        json!({"UserId": 17, "NickName": "n".repeat(100), "Portrait": "p".repeat(500)}),
    ];
    let f = failed_infos(&call(&c, "RegisterUsers", json!({"AppId": APP, "Users": bad})).await);
    assert_eq!(
        f.iter()
            .map(|x| x["UserId"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14, 15, 16]
    );
    assert!(f.iter().all(|x| x["Code"] == "InvalidParam"));
    let r = ok(&get_users(&c, &[10, 17]).await);
    assert_eq!(r["NotFoundUsers"], json!([10]));
    assert_eq!(r["Users"][0]["UserId"], 17);
}

#[tokio::test(flavor = "multi_thread")]
async fn unregister_removes_profile_and_tags_in_every_inbox() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1, 2]).await;
    for inbox in [0, 4] {
        let a = call(&c, "BatchUpdateUserTags", json!({"AppId": APP, "InboxType": inbox, "UserTags": [{"UserId": 1, "Tags": {"k": "v"}}]})).await;
        assert!(failed_infos(&a).is_empty());
    }
    let f = failed_infos(
        &call(
            &c,
            "UnRegisterUsers",
            json!({"AppId": APP, "UserIds": [1, 3]}),
        )
        .await,
    );
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["UserId"], 3);
    assert_eq!(f[0]["Code"], "UserNotFound");
    assert_eq!(tags_of(&c, APP, 0, 1).await, None);
    // Registering again starts clean in every inbox.
    register(&c, APP, &[1]).await;
    assert_eq!(tags_of(&c, APP, 0, 1).await.unwrap(), Vec::<String>::new());
    assert_eq!(tags_of(&c, APP, 4, 1).await.unwrap(), Vec::<String>::new());
    assert_eq!(tags_of(&c, APP, 0, 2).await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_on_one_user_lose_no_key() {
    let s = TestServer::with(|c| c.tags.max_per_user = 10_000).await;
    let c = s.client();
    register(&c, APP, &[42]).await;
    let writers = 8;
    let rounds = 25;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = s.client();
        tasks.push(tokio::spawn(async move {
            for r in 0..rounds {
                let body = json!({"AppId": APP, "UserTags": [{"UserId": 42, "Tags": {format!("w{w}r{r}"): format!("{w}-{r}")}}]});
                let a = call(&c, "BatchUpdateUserTags", body).await;
                assert!(failed_infos(&a).is_empty());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tags = tags_of(&c, APP, 0, 42).await.unwrap();
    assert_eq!(tags.len(), writers * rounds);
    for w in 0..writers {
        for r in 0..rounds {
            assert!(tags.contains(&format!("w{w}r{r}:{w}-{r}")));
        }
    }
}
