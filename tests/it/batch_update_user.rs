//! BatchUpdateUser over real HTTP (API.md §5): absent or null fields left alone, empty ones
//! set empty, Tags replacing inbox 0 only (and audiences following), the tag cap, per-user
//! failures as RegisterUsers reports them, counts, and a user listed twice.

use serde_json::{Value, json};
use tagcast::call::{Answer, Client};

use crate::common::*;

async fn update(c: &Client, users: Value) -> Answer {
    call(c, "BatchUpdateUser", json!({"AppId": APP, "Users": users})).await
}

/// BatchGetUser of one user of APP in inbox 0 (`Null` when not registered).
async fn user(c: &Client, id: i64) -> Value {
    ok(&get_users(c, &[id]).await)["Users"][0].clone()
}

/// The profile fields and inbox-0 tags of a user, the parts BatchUpdateUser may change.
fn profile(u: &Value) -> Value {
    json!([
        u["NickName"],
        u["Portrait"],
        u["Ext"],
        u["IsRobot"],
        u["Tags"]
    ])
}

async fn count(c: &Client, inbox: u32, filter: Value) -> u64 {
    let a = call(
        c,
        "CountAudience",
        json!({"AppId": APP, "InboxType": inbox, "Filter": filter}),
    )
    .await;
    ok(&a)["Count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn absent_or_null_fields_are_left_alone_and_empty_ones_set_empty() {
    let s = TestServer::start().await;
    let c = s.client();
    let a = call(&c, "RegisterUsers", json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "n", "Portrait": "p", "Ext": {"a": "1"}, "Tags": ["level:gold", "vip"], "IsRobot": true}]})).await;
    assert!(failed_infos(&a).is_empty());
    let before = user(&c, 1).await;
    let full = json!(["n", "p", {"a": "1"}, true, ["level:gold", "vip:"]]);
    assert_eq!(profile(&before), full);

    // Every field absent, then every field null (what the Go SDK sends for nil): unchanged.
    let nulls = json!({"UserId": 1, "NickName": null, "Portrait": null, "Ext": null, "Tags": null, "IsRobot": null});
    for u in [json!({"UserId": 1}), nulls] {
        assert_eq!(
            failed_infos(&update(&c, json!([u.clone()])).await),
            Vec::<Value>::new()
        );
        assert_eq!(profile(&user(&c, 1).await), full, "after {u}");
    }

    // One field given: only that one changes.
    let a = update(&c, json!([{"UserId": 1, "NickName": "小明"}])).await;
    assert!(failed_infos(&a).is_empty());
    let u = user(&c, 1).await;
    assert_eq!(
        profile(&u),
        json!(["小明", "p", {"a": "1"}, true, ["level:gold", "vip:"]])
    );
    assert_eq!(u["CreateTime"], before["CreateTime"]);
    assert!(u["ModifyTime"].as_i64().unwrap() >= before["ModifyTime"].as_i64().unwrap());

    // Empty string, map and list set each field empty; IsRobot is taken as RegisterUsers does.
    let a = update(&c, json!([{"UserId": 1, "NickName": "", "Portrait": "", "Ext": {}, "Tags": [], "IsRobot": false}])).await;
    assert!(failed_infos(&a).is_empty());
    assert_eq!(profile(&user(&c, 1).await), json!(["", "", {}, false, []]));

    // Ext given is replaced whole, not merged.
    let a = update(&c, json!([{"UserId": 1, "Ext": {"b": "2"}}])).await;
    assert!(failed_infos(&a).is_empty());
    assert_eq!(user(&c, 1).await["Ext"], json!({"b": "2"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_replace_inbox_0_only_and_audiences_follow_the_replace() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1, 2]).await;
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserIds": [1, 2], "Tags": ["level:gold", "city:sh"]}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    let a = call(&c, "BatchUpdateUserTags", json!({"AppId": APP, "InboxType": 5, "UserTags": [{"UserId": 1, "Tags": {"level": "gold"}}]})).await;
    assert!(failed_infos(&a).is_empty());
    let gold = || json!({"Tag": "level:gold"});
    assert_eq!(count(&c, 0, gold()).await, 2);

    let a = update(&c, json!([{"UserId": 1, "Tags": ["level:silver", "vip"]}])).await;
    assert!(failed_infos(&a).is_empty());
    // city is gone, level overwritten, vip added; inbox 5 and user 2 untouched.
    assert_eq!(
        tags_of(&c, APP, 0, 1).await.unwrap(),
        vec!["level:silver", "vip:"]
    );
    assert_eq!(tags_of(&c, APP, 5, 1).await.unwrap(), vec!["level:gold"]);
    assert_eq!(
        tags_of(&c, APP, 0, 2).await.unwrap(),
        vec!["city:sh", "level:gold"]
    );
    assert_eq!(count(&c, 0, gold()).await, 1);
    assert_eq!(count(&c, 0, json!({"Tag": "level:silver"})).await, 1);
    assert_eq!(count(&c, 0, json!({"Key": "city"})).await, 1);
    assert_eq!(count(&c, 0, json!({"Tag": "vip"})).await, 1);
    assert_eq!(count(&c, 5, gold()).await, 1);
    let a = call(
        &c,
        "ListAudience",
        json!({"AppId": APP, "Filter": {"Key": "city"}}),
    )
    .await;
    assert_eq!(ok(&a)["UserIds"], json!([2]));

    // An empty list empties inbox 0, and the user leaves every tag audience there.
    let a = update(&c, json!([{"UserId": 1, "Tags": []}])).await;
    assert!(failed_infos(&a).is_empty());
    assert_eq!(tags_of(&c, APP, 0, 1).await.unwrap(), Vec::<String>::new());
    assert_eq!(
        count(&c, 0, json!({"Or": [{"Key": "level"}, {"Key": "vip"}]})).await,
        1
    );
    assert_eq!(count(&c, 5, gold()).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_tag_cap_the_entry_changes_nothing_not_even_its_profile() {
    let s = TestServer::with(|c| c.tags.max_per_user = 3).await;
    let c = s.client();
    let a = call(&c, "RegisterUsers", json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "before", "Tags": ["a:1", "b:1", "c:1"]}]})).await;
    assert!(failed_infos(&a).is_empty());
    let before = profile(&user(&c, 1).await);

    let f = failed_infos(
        &update(
            &c,
            json!([{"UserId": 1, "NickName": "after", "IsRobot": true, "Tags": ["w", "x", "y", "z"]}]),
        )
        .await,
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (&f[0]["UserId"], &f[0]["Code"]),
        (&json!(1), &json!("TagLimitExceeded"))
    );
    let message = f[0]["Message"].as_str().unwrap();
    assert!(message.contains('4') && message.contains('3'), "{message}");
    assert_eq!(profile(&user(&c, 1).await), before);

    // The cap limits the new set, whatever it had: three other keys replace three.
    let a = update(
        &c,
        json!([{"UserId": 1, "NickName": "after", "Tags": ["x", "y", "z:1"]}]),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    let u = user(&c, 1).await;
    assert_eq!(u["NickName"], "after");
    assert_eq!(u["Tags"], json!(["x:", "y:", "z:1"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn unregistered_users_are_reported_and_the_others_applied() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1, 2]).await;
    let f = failed_infos(
        &update(
            &c,
            json!([
                {"UserId": 1, "NickName": "one", "Tags": ["t:1"]},
                {"UserId": 99, "NickName": "ghost", "Tags": ["t:1"]},
                {"UserId": 2, "NickName": "two"},
            ]),
        )
        .await,
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (&f[0]["UserId"], &f[0]["Code"]),
        (&json!(99), &json!("UserNotFound"))
    );
    let r = ok(&get_users(&c, &[1, 2, 99]).await);
    assert_eq!(
        r["NotFoundUsers"],
        json!([99]),
        "BatchUpdateUser registers no one"
    );
    assert_eq!(
        profile(&r["Users"][0]),
        json!(["one", "", {}, false, ["t:1"]])
    );
    assert_eq!(r["Users"][1]["NickName"], "two");
    // Another app of the same account: a user of APP is not one of APP2.
    let a = call(
        &c,
        "BatchUpdateUser",
        json!({"AppId": APP2, "Users": [{"UserId": 1, "NickName": "x"}]}),
    )
    .await;
    assert_eq!(failed_infos(&a)[0]["Code"], "UserNotFound");
    assert_eq!(user(&c, 1).await["NickName"], "one");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_to_ten_users_and_a_bad_shape_fails_the_whole_request() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &(1..=10).collect::<Vec<_>>()).await;
    let users = |n: i64| {
        (1..=n)
            .map(|i| json!({"UserId": i, "NickName": "x"}))
            .collect::<Vec<_>>()
    };
    assert!(failed_infos(&update(&c, json!(users(10))).await).is_empty());
    let renamed = |n: i64| {
        (1..=n)
            .map(|i| json!({"UserId": i, "NickName": "y"}))
            .collect::<Vec<_>>()
    };
    let cases = [
        (json!({"AppId": APP, "Users": []}), "10"),
        (json!({"AppId": APP, "Users": renamed(11)}), "10"),
        (json!({"AppId": APP}), "Users"),
        (
            json!({"AppId": APP, "Users": [{"UserId": 0}]}),
            "Users[0].UserId",
        ),
        (
            json!({"AppId": APP, "Users": [{"NickName": "y"}]}),
            "UserId",
        ),
        (
            json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": 5}]}),
            "Users[0].NickName",
        ),
        (
            json!({"AppId": APP, "Users": [{"UserId": 1, "Tags": "a:b"}]}),
            "Users[0].Tags",
        ),
        (
            json!({"AppId": APP, "Users": [{"UserId": 1, "Ext": {"a": 1}}]}),
            "Users[0].Ext",
        ),
        (
            json!({"AppId": APP, "Users": [{"UserId": 1, "IsRobot": "yes"}]}),
            "Users[0].IsRobot",
        ),
        // A key twice is ambiguous, as in RegisterUsers.
        (
            json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "y", "Tags": ["a:1", "a:2"]}]}),
            "appears twice",
        ),
        (json!({"AppId": 0, "Users": renamed(1)}), "AppId"),
    ];
    for (body, needle) in cases {
        let v = assert_error(
            &call(&c, "BatchUpdateUser", body.clone()).await,
            400,
            "InvalidParam",
        );
        let message = v["ResponseMetadata"]["Error"]["Message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{body}: {message:?} should mention {needle:?}"
        );
    }
    assert_error(
        &c.call("BatchUpdateUser", br#"{"AppId": 666675, "Users": ["#)
            .await
            .unwrap(),
        400,
        "JsonParsingError",
    );
    assert_error(
        &call(
            &c,
            "BatchUpdateUser",
            json!({"AppId": OTHER_APP, "Users": renamed(1)}),
        )
        .await,
        403,
        "AccessDenied",
    );
    // None of the refused requests changed anything.
    for id in [1, 10] {
        assert_eq!(user(&c, id).await["NickName"], "x");
    }
    let a = call(
        &c,
        "BatchUpdateUser",
        json!({"AppId": APP, "Users": renamed(1)}),
    )
    .await;
    assert_eq!(a.json()["ResponseMetadata"]["Action"], "BatchUpdateUser");
    assert!(failed_infos(&a).is_empty());
    assert_eq!(user(&c, 1).await["NickName"], "y");
}

#[tokio::test(flavor = "multi_thread")]
async fn field_limits_fail_that_user_only_exactly_as_register_users_reports_them() {
    let s = TestServer::start().await;
    let c = s.client();
    let ids: Vec<i64> = (1..=7).collect();
    register(&c, APP, &ids).await;
    let bad = json!([
        {"UserId": 1, "NickName": "n".repeat(101)},
        {"UserId": 2, "Ext": {"s:reserved": "v"}},
        {"UserId": 3, "Portrait": "p".repeat(501)},
        {"UserId": 4, "Ext": {"k": "v".repeat(501)}},
        {"UserId": 5, "Tags": ["bad\u{1}key:v"]},
        {"UserId": 6, "NickName": "bad tag next", "Tags": [format!("k:{}", "v".repeat(1025))]},
        {"UserId": 7, "NickName": "n".repeat(100), "Portrait": "p".repeat(500)},
    ]);
    let updated = failed_infos(&update(&c, bad.clone()).await);
    assert_eq!(
        updated
            .iter()
            .map(|f| f["UserId"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(
        updated.iter().all(|f| f["Code"] == "InvalidParam"),
        "{updated:?}"
    );
    assert!(updated[0]["Message"].as_str().unwrap().contains("NickName"));
    assert!(updated[1]["Message"].as_str().unwrap().contains("s:"));
    // The same users sent to RegisterUsers fail with the same FailedInfos.
    let registered =
        failed_infos(&call(&c, "RegisterUsers", json!({"AppId": APP, "Users": bad})).await);
    assert_eq!(updated, registered);
    // The refused users are untouched; the last one, at the limits, applied.
    let r = ok(&get_users(&c, &ids).await);
    for u in &r["Users"].as_array().unwrap()[..6] {
        assert_eq!(profile(u), json!(["", "", {}, false, []]), "{u}");
    }
    assert_eq!(r["Users"][6]["NickName"], "n".repeat(100));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_listed_twice_applies_in_order() {
    let s = TestServer::with(|c| c.tags.max_per_user = 2).await;
    let c = s.client();
    register(&c, APP, &[1]).await;
    let f = failed_infos(
        &update(
            &c,
            json!([
                {"UserId": 1, "NickName": "first", "Portrait": "p", "Tags": ["a:1", "b:1"]},
                {"UserId": 1, "NickName": "second", "Tags": ["a:2"]},
                // Refused over the cap (three keys), whatever the entries before it did.
                {"UserId": 1, "NickName": "third", "Tags": ["x", "y", "z"]},
                {"UserId": 1, "Ext": {"e": "1"}},
            ]),
        )
        .await,
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["Code"], "TagLimitExceeded");
    assert_eq!(
        profile(&user(&c, 1).await),
        json!(["second", "p", {"e": "1"}, false, ["a:2"]])
    );
}
