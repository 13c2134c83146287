//! Strict bodies (API.md §5): a field no Action declares is refused, naming it and the
//! closest known name, at every depth and in every Action, with nothing changed; a key
//! given twice is refused at every depth (a filter included); every field the official
//! SDKs' request structs send stays accepted; `api.unknown_fields = "ignore"` restores
//! lenient parsing.

use serde_json::{Value, json};
use tagcast::call::Client;
use tagcast::config::UnknownFields;

use crate::common::*;

/// Sends `body` as it is written (duplicate keys need raw text).
async fn raw(c: &Client, action: &str, body: &str) -> tagcast::call::Answer {
    c.call(action, body.as_bytes()).await.expect("answered")
}

fn message(v: &Value) -> String {
    v["ResponseMetadata"]["Error"]["Message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// (Action, body with a misspelt or unknown field, what the message must say).
fn misspelt() -> Vec<(&'static str, Value, &'static str)> {
    let send = |extra: Value| {
        let mut b = json!({"AppId": APP, "Sender": 1, "MsgTTL": 60, "MsgType": 1, "Content": "x"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    vec![
        (
            "UserBroadcast",
            send(json!({"tags": ["vip"]})),
            r#"unknown field "tags" (did you mean "Tags"?)"#,
        ),
        (
            "UserBroadcast",
            send(json!({"filter": {"Tag": "vip"}})),
            r#"unknown field "filter" (did you mean "Filter"?)"#,
        ),
        (
            "UserBroadcast",
            send(json!({"TagsOp": 1})),
            r#"unknown field "TagsOp" (did you mean "TagOp"?)"#,
        ),
        (
            "CountAudience",
            json!({"AppId": APP, "Tag": ["vip"]}),
            r#"unknown field "Tag" (did you mean "Tags"?)"#,
        ),
        (
            "ListAudience",
            json!({"AppId": APP, "Limits": 5}),
            r#"unknown field "Limits" (did you mean "Limit"?)"#,
        ),
        (
            "RegisterUsers",
            json!({"AppId": APP, "Users": [{"UserId": 77, "Nickname": "x"}]}),
            r#"Users[0]: unknown field "Nickname" (did you mean "NickName"?)"#,
        ),
        (
            "BatchUpdateUser",
            json!({"AppId": APP, "Users": [{"UserId": 1, "Portait": "p"}]}),
            r#"Users[0]: unknown field "Portait" (did you mean "Portrait"?)"#,
        ),
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tag": {"a": "b"}}]}),
            r#"UserTags[0]: unknown field "Tag" (did you mean "Tags"?)"#,
        ),
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserIds": [1], "Tags": ["a:b"], "op": 1}),
            r#"unknown field "op" (did you mean "Op"?)"#,
        ),
        (
            "UnRegisterUsers",
            json!({"AppId": APP, "UserId": [1]}),
            r#"unknown field "UserId" (did you mean "UserIds"?)"#,
        ),
        (
            "BatchGetUser",
            json!({"AppId": APP, "UserIds": [1], "Inbox": 0}),
            r#"unknown field "Inbox"; the known fields here are AppId, UserIds, InboxType"#,
        ),
        (
            "ListUserBroadcasts",
            json!({"AppId": APP, "UserId": 1, "Cursr": ""}),
            r#"unknown field "Cursr" (did you mean "Cursor"?)"#,
        ),
        (
            "GetBroadcast",
            json!({"AppId": APP, "BroadcastID": "1"}),
            r#"unknown field "BroadcastID" (did you mean "BroadcastId"?)"#,
        ),
        (
            "RecallBroadcast",
            json!({"AppID": APP, "BroadcastId": "1"}),
            r#"unknown field "AppID" (did you mean "AppId"?)"#,
        ),
        (
            "ListBroadcasts",
            json!({"AppId": APP, "limit": 5}),
            r#"unknown field "limit" (did you mean "Limit"?)"#,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_field_is_refused_naming_it_and_the_closest_known_one_and_changes_nothing() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1]).await;
    for (action, body, expected) in misspelt() {
        let a = call(&c, action, body.clone()).await;
        let v = assert_error(&a, 400, "InvalidParam");
        assert_eq!(message(&v), expected, "{action} {body}");
    }
    // Nothing was sent (the misspelt Tags would have reached everyone), registered or
    // counted against the day's quota.
    let listed = ok(&call(&c, "ListBroadcasts", json!({"AppId": APP})).await);
    assert_eq!(listed["Broadcasts"], json!([]));
    let got = ok(&get_users(&c, &[77]).await);
    assert_eq!(got["NotFoundUsers"], json!([77]));
    assert_eq!(
        tags_of(&c, APP, 0, 1).await,
        Some(vec![]),
        "no tag was written"
    );
}

/// Every field the official SDKs' request structs can send (the Go SDK's
/// `service/im/model.go`: `UserBroadcastBody`, `RegisterUsersBody(UsersItem)`,
/// `BatchUpdateUserBody(UsersItem)`, `BatchUpdateUserTagsBody`, `BatchGetUserBody`,
/// `UnRegisterUsersBody`; the Java SDK's models carry the same names), the seed's shape,
/// and the fields we document on top (`IsRobot`, `InboxType`, `ClientToken`, the filter).
#[tokio::test(flavor = "multi_thread")]
async fn every_field_the_official_sdks_send_is_accepted() {
    let s = TestServer::start().await;
    let c = s.client();
    let bodies: Vec<(&str, Value)> = vec![
        (
            "RegisterUsers",
            json!({"AppId": APP, "Users": [{"UserId": 1, "Ext": {"e": "1"}, "NickName": "n",
                   "Portrait": "p", "Tags": ["level:gold"], "IsRobot": false}]}),
        ),
        (
            "BatchUpdateUser",
            json!({"AppId": APP, "Users": [{"Ext": {"e": "2"}, "NickName": "m", "Portrait": "q",
                   "Tags": ["level:gold", "vip"], "UserId": 1, "IsRobot": false}]}),
        ),
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "Op": 0, "Tags": ["city:sh"], "UserIds": [1], "InboxType": 0}),
        ),
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "InboxType": 0, "UserTags": [{"UserId": 1, "Tags": {"key": "value"}}], "Op": 0}),
        ),
        (
            "BatchGetUser",
            json!({"AppId": APP, "UserIds": [1], "InboxType": 0}),
        ),
        (
            "CountAudience",
            json!({"AppId": APP, "InboxType": 0, "Tags": ["level:gold"], "TagOp": 1}),
        ),
        (
            "ListAudience",
            json!({"AppId": APP, "InboxType": 0, "Filter": {"Tag": "level:gold"}, "Cursor": "", "Limit": 10}),
        ),
        (
            "UserBroadcast",
            json!({"AppId": APP, "Content": "hi", "MsgTTL": 60, "MsgType": 1, "Sender": 1,
                   "Ext": {"k": "v"}, "InboxType": 0, "TagOp": 0, "Tags": ["level:gold"],
                   "ClientToken": "sdk-fields-1"}),
        ),
        (
            "ListUserBroadcasts",
            json!({"AppId": APP, "InboxType": 0, "UserId": 1, "Cursor": "", "Limit": 20}),
        ),
        (
            "ListBroadcasts",
            json!({"AppId": APP, "Cursor": "", "Limit": 20}),
        ),
        ("UnRegisterUsers", json!({"AppId": APP, "UserIds": [1]})),
    ];
    for (action, body) in bodies {
        let a = call(&c, action, body.clone()).await;
        let r = ok(&a);
        if let Some(f) = r.get("FailedInfos") {
            assert_eq!(f, &json!([]), "{action} {body}");
        }
    }
    // The Go SDK sends null for a nil map or slice of BatchUpdateUser (API.md §5).
    register(&c, APP, &[2]).await;
    let a = call(
        &c,
        "BatchUpdateUser",
        json!({"AppId": APP, "Users": [{"UserId": 2, "Ext": null, "NickName": "", "Portrait": "", "Tags": null}]}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
}

/// (Action, body with a key given twice, the path the message names).
fn duplicated() -> Vec<(&'static str, String, &'static str)> {
    let app = APP;
    vec![
        (
            "BatchGetUser",
            format!(r#"{{"AppId":{app},"UserIds":[1],"AppId":{app}}}"#),
            "duplicate field `AppId`",
        ),
        (
            "RegisterUsers",
            format!(r#"{{"AppId":{app},"Users":[{{"UserId":5,"UserId":6}}]}}"#),
            "Users[0]: duplicate field `UserId`",
        ),
        (
            "RegisterUsers",
            format!(r#"{{"AppId":{app},"Users":[{{"UserId":5,"Ext":{{"a":"1","a":"2"}}}}]}}"#),
            "Users[0].Ext: duplicate key \"a\"",
        ),
        (
            "BatchUpdateUserTags",
            format!(r#"{{"AppId":{app},"UserTags":[{{"UserId":1,"Tags":{{"k":"1","k":"2"}}}}]}}"#),
            "UserTags[0].Tags: duplicate key \"k\"",
        ),
        (
            "CountAudience",
            format!(
                r#"{{"AppId":{app},"Filter":{{"Not":{{"Tag":"a:b"}},"Not":{{"Tag":"z:1"}}}}}}"#
            ),
            "Filter: duplicate key \"Not\"",
        ),
        (
            "ListAudience",
            format!(
                r#"{{"AppId":{app},"Filter":{{"And":[{{"Key":"a"}},{{"Or":[{{"Tag":"a:b","Tag":"c:d"}}]}}]}}}}"#
            ),
            "Filter.And[1].Or[0]: duplicate key \"Tag\"",
        ),
        (
            "UserBroadcast",
            format!(
                r#"{{"AppId":{app},"Sender":1,"MsgTTL":60,"MsgType":1,"Content":"x","Filter":{{"Not":{{"Tag":"a:b"}},"Not":{{"Tag":"z:1"}}}}}}"#
            ),
            "Filter: duplicate key \"Not\"",
        ),
        (
            "UserBroadcast",
            format!(
                r#"{{"AppId":{app},"Sender":1,"MsgTTL":60,"MsgType":1,"Content":"x","Ext":{{"k":"1","k":"2"}}}}"#
            ),
            "Ext: duplicate key \"k\"",
        ),
        (
            "UserBroadcast",
            format!(
                r#"{{"AppId":{app},"Sender":1,"MsgTTL":60,"MsgType":1,"Content":"x","Tags":["a:b"],"Tags":[]}}"#
            ),
            "duplicate field `Tags`",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_given_twice_is_refused_at_every_depth_of_every_body() {
    let s = TestServer::start().await;
    let c = s.client();
    register(&c, APP, &[1]).await;
    for (action, body, expected) in duplicated() {
        let a = raw(&c, action, &body).await;
        let v = assert_error(&a, 400, "InvalidParam");
        assert!(message(&v).starts_with(expected), "{action} {body}: {v}");
    }
    // The duplicated Not was not sent as a broadcast to everyone.
    let listed = ok(&call(&c, "ListBroadcasts", json!({"AppId": APP})).await);
    assert_eq!(listed["Broadcasts"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_ignore_skips_them_and_still_refuses_duplicate_keys() {
    let s = TestServer::with(|c| c.api.unknown_fields = UnknownFields::Ignore).await;
    let c = s.client();
    register(&c, APP, &[1]).await;
    // Skipped: some bodies then lack a required field, or name no broadcast; none is
    // refused for the unknown one.
    for (action, body, _) in misspelt() {
        let a = call(&c, action, body.clone()).await;
        let text = String::from_utf8_lossy(&a.body).into_owned();
        assert!(!text.contains("unknown field"), "{action} {body}: {text}");
    }
    let counted = ok(&call(&c, "CountAudience", json!({"AppId": APP, "Tag": ["vip"]})).await);
    // The unknown Tag is skipped: everyone (user 1, and 77 whose Nickname was skipped).
    assert_eq!(counted["Count"], 2);
    for (action, body, _) in duplicated() {
        let a = raw(&c, action, &body).await;
        assert_error(&a, 400, "InvalidParam");
    }
}
