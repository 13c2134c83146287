//! Every row of API.md's error table, and the transport rules around it, over real HTTP.

use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::common::*;

const Q: &str = "Action=BatchGetUser&Version=2020-12-01";

fn body() -> Vec<u8> {
    json!({"AppId": APP, "UserIds": [1]})
        .to_string()
        .into_bytes()
}

fn host(s: &TestServer) -> String {
    s.addr.to_string()
}

/// Headers of the standard BatchGetUser request `body()`, signed now with the acme key.
fn signed_now(s: &TestServer) -> http::HeaderMap {
    signed_headers(
        &creds(AK, SK),
        "POST",
        &host(s),
        Q,
        &body(),
        OffsetDateTime::now_utc(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_authorization_is_401_missing_authentication_token() {
    let s = TestServer::start().await;
    let mut h = signed_now(&s);
    h.remove("authorization");
    let a = send_raw(&s.endpoint(), "POST", Q, h, body()).await;
    let v = assert_error(&a, 401, "MissingAuthenticationToken");
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100003);
    assert_eq!(v["ResponseMetadata"]["Action"], "BatchGetUser");
    assert_eq!(v["ResponseMetadata"]["Service"], "rtc");
    assert_eq!(v["ResponseMetadata"]["Region"], "cn-north-1");
    assert_eq!(a.headers["content-type"], "application/json; charset=utf-8");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbled_authorization_and_missing_or_bad_x_date_are_400_missing_request_info() {
    let s = TestServer::start().await;
    let good = signed_now(&s);
    let garbled = [
        "HMAC-SHA256",
        "HMAC-SHA256 garbage",
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/request, SignedHeaders=x-date, Signature=00",
        "HMAC-SHA256 Credential=AKLTacme0001/2026/cn-north-1/rtc/request, SignedHeaders=x-date, Signature=00",
        "HMAC-SHA256 Credential=AKLTacme0001, SignedHeaders=x-date, Signature=00",
        "HMAC-SHA256 SignedHeaders=x-date, Signature=00",
    ];
    for g in garbled {
        let mut h = good.clone();
        h.insert("authorization", g.parse().unwrap());
        assert_error(
            &send_raw(&s.endpoint(), "POST", Q, h, body()).await,
            400,
            "MissingRequestInfo",
        );
    }
    let mut h = good.clone();
    h.remove("x-date");
    assert_error(
        &send_raw(&s.endpoint(), "POST", Q, h, body()).await,
        400,
        "MissingRequestInfo",
    );
    for bad in [
        "2026-11-25T08:00:00Z",
        "20261125T080000",
        "yesterday",
        "20261332T250000Z",
    ] {
        let mut h = good.clone();
        h.insert("x-date", bad.parse().unwrap());
        assert_error(
            &send_raw(&s.endpoint(), "POST", Q, h, body()).await,
            400,
            "MissingRequestInfo",
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_without_signature_part_is_401_missing_signature() {
    let s = TestServer::start().await;
    let mut h = signed_now(&s);
    let auth = h["authorization"].to_str().unwrap().to_owned();
    let without = auth.split(", Signature=").next().unwrap().to_owned();
    h.insert("authorization", without.parse().unwrap());
    let v = assert_error(
        &send_raw(&s.endpoint(), "POST", Q, h, body()).await,
        401,
        "MissingSignature",
    );
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100005);
}

#[tokio::test(flavor = "multi_thread")]
async fn x_date_beyond_fifteen_minutes_either_way_is_400_invalid_timestamp() {
    let s = TestServer::start().await;
    let c = s.client();
    for offset in [Duration::minutes(-16), Duration::minutes(16)] {
        let a = c
            .send("POST", Q, &body(), OffsetDateTime::now_utc() + offset)
            .await
            .unwrap();
        let v = assert_error(&a, 400, "InvalidTimestamp");
        assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100006);
    }
    // Inside the window it is accepted.
    let a = c
        .send(
            "POST",
            Q,
            &body(),
            OffsetDateTime::now_utc() - Duration::minutes(14),
        )
        .await
        .unwrap();
    ok(&a);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_or_disabled_access_key_is_401_invalid_access_key() {
    let s = TestServer::start().await;
    for (ak, sk) in [("AKLTnobody", "x"), (AK_DISABLED, "disabled-secret")] {
        let a = call(
            &s.client_with(ak, sk),
            "BatchGetUser",
            json!({"AppId": APP, "UserIds": [1]}),
        )
        .await;
        let v = assert_error(&a, 401, "InvalidAccessKey");
        assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100009);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secret_swapped_body_wrong_service_or_region_are_401_signature_does_not_match() {
    let s = TestServer::start().await;
    let now = OffsetDateTime::now_utc();
    // Wrong secret.
    let a = call(
        &s.client_with(AK, "not-the-secret"),
        "BatchGetUser",
        json!({"AppId": APP, "UserIds": [1]}),
    )
    .await;
    let v = assert_error(&a, 401, "SignatureDoesNotMatch");
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100010);
    // Body swapped after signing, with and without the claimed hash.
    let h = signed_headers(&creds(AK, SK), "POST", &host(&s), Q, &body(), now);
    let other = json!({"AppId": APP, "UserIds": [2]})
        .to_string()
        .into_bytes();
    assert_error(
        &send_raw(&s.endpoint(), "POST", Q, h.clone(), other.clone()).await,
        401,
        "SignatureDoesNotMatch",
    );
    let mut h2 = h.clone();
    h2.remove("x-content-sha256");
    assert_error(
        &send_raw(&s.endpoint(), "POST", Q, h2, other).await,
        401,
        "SignatureDoesNotMatch",
    );
    // Action changed after signing.
    let q2 = "Action=UnRegisterUsers&Version=2020-12-01";
    assert_error(
        &send_raw(&s.endpoint(), "POST", q2, h.clone(), body()).await,
        401,
        "SignatureDoesNotMatch",
    );
    // Another service in the scope.
    let mut h3 = h.clone();
    let auth = h3["authorization"]
        .to_str()
        .unwrap()
        .replace("/rtc/request", "/iam/request");
    h3.insert("authorization", auth.parse().unwrap());
    assert_error(
        &send_raw(&s.endpoint(), "POST", Q, h3, body()).await,
        401,
        "SignatureDoesNotMatch",
    );
    // A region this server does not accept.
    let mut c = creds(AK, SK);
    c.region = "us-east-1".into();
    let a = tagcast::call::Client::new(&s.endpoint(), c)
        .call("BatchGetUser", &body())
        .await
        .unwrap();
    assert_error(&a, 401, "SignatureDoesNotMatch");
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_region_is_echoed_in_the_envelope() {
    let s = TestServer::start().await;
    let mut c = creds(AK, SK);
    c.region = "ap-southeast-1".into();
    let a = tagcast::call::Client::new(&s.endpoint(), c)
        .call("BatchGetUser", &body())
        .await
        .unwrap();
    ok(&a);
    assert_eq!(a.json()["ResponseMetadata"]["Region"], "ap-southeast-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_accounts_app_is_403_access_denied_and_unknown_app_is_404() {
    let s = TestServer::start().await;
    let a = call(
        &s.client(),
        "BatchGetUser",
        json!({"AppId": OTHER_APP, "UserIds": [1]}),
    )
    .await;
    let v = assert_error(&a, 403, "AccessDenied");
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100013);
    let a = call(
        &s.client(),
        "BatchUpdateUserTags",
        json!({"AppId": 424242, "UserTags": [{"UserId": 1}]}),
    )
    .await;
    assert_error(&a, 404, "AppNotFound");
    // The other account reaches its own app.
    ok(&call(
        &s.client_with(AK_OTHER, SK_OTHER),
        "BatchGetUser",
        json!({"AppId": OTHER_APP, "UserIds": [1]}),
    )
    .await);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_with_an_action_is_405_and_missing_action_or_version_is_400() {
    let s = TestServer::start().await;
    let c = s.client();
    let now = OffsetDateTime::now_utc();
    for m in ["GET", "PUT", "DELETE"] {
        let v = assert_error(
            &c.send(m, Q, b"", now).await.unwrap(),
            405,
            "MethodNotAllowed",
        );
        assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100020);
    }
    for q in ["Version=2020-12-01", "Action=BatchGetUser", ""] {
        let v = assert_error(
            &c.send("POST", q, &body(), now).await.unwrap(),
            400,
            "MissingParameter",
        );
        assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100002);
    }
    for q in [
        "Action=DeleteEverything&Version=2020-12-01",
        "Action=BatchGetUser&Version=2099-01-01",
    ] {
        let v = assert_error(
            &c.send("POST", q, &body(), now).await.unwrap(),
            404,
            "InvalidActionOrVersion",
        );
        assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100008);
    }
    let v = assert_error(
        &c.send("POST", "Action=Nope&Version=2020-12-01", b"", now)
            .await
            .unwrap(),
        404,
        "InvalidActionOrVersion",
    );
    assert_eq!(v["ResponseMetadata"]["Action"], "Nope");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_are_400_json_parsing_error_or_invalid_param() {
    let s = TestServer::start().await;
    let c = s.client();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "JsonParsingError"),
        (b"{".to_vec(), "JsonParsingError"),
        (b"not json".to_vec(), "JsonParsingError"),
        (
            b"{\"AppId\": 666675, \"UserIds\": [1]} trailing".to_vec(),
            "JsonParsingError",
        ),
        (vec![b'{', 0xff, 0xfe, b'}'], "JsonParsingError"),
        (b"[]".to_vec(), "InvalidParam"),
        (
            b"{\"AppId\": \"666675\", \"UserIds\": [1]}".to_vec(),
            "InvalidParam",
        ),
        (
            b"{\"AppId\": 666675.5, \"UserIds\": [1]}".to_vec(),
            "InvalidParam",
        ),
        (
            b"{\"AppId\": 99999999999999999999999, \"UserIds\": [1]}".to_vec(),
            "InvalidParam",
        ),
        (
            b"{\"AppId\": 666675, \"AppId\": 1, \"UserIds\": [1]}".to_vec(),
            "InvalidParam",
        ),
        (b"{\"UserIds\": [1]}".to_vec(), "InvalidParam"),
        (b"{\"AppId\": 0, \"UserIds\": [1]}".to_vec(), "InvalidParam"),
        (
            b"{\"AppId\": 666675, \"UserIds\": [0]}".to_vec(),
            "InvalidParam",
        ),
        (
            b"{\"AppId\": 666675, \"UserIds\": []}".to_vec(),
            "InvalidParam",
        ),
        (
            b"{\"AppId\": 666675, \"UserIds\": [1], \"InboxType\": -1}".to_vec(),
            "InvalidParam",
        ),
    ];
    for (b, code) in cases {
        let a = c.call("BatchGetUser", &b).await.unwrap();
        let v = assert_error(&a, 400, code);
        let msg = v["ResponseMetadata"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!msg.is_empty(), "{}", String::from_utf8_lossy(&b));
    }
    // Hostile nesting, at the top and inside an ignored field: refused without deep recursion.
    for nested in [
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("{{\"X\":{}}}", "[".repeat(100_000)),
    ] {
        let a = c.call("BatchGetUser", nested.as_bytes()).await.unwrap();
        assert_eq!(a.status, 400, "{}", a.json());
    }
    // Field names in messages.
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": "x"}]}),
    )
    .await;
    let v = assert_error(&a, 400, "InvalidParam");
    assert!(
        v["ResponseMetadata"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains("UserTags[0].UserId"),
        "{v}"
    );
    // Unknown fields are refused, naming the field (API.md §5; strict_bodies.rs has
    // every Action and the opt-out).
    let a = call(
        &c,
        "BatchGetUser",
        json!({"AppId": APP, "UserIds": [1], "Future": {"x": 1}}),
    )
    .await;
    let v = assert_error(&a, 400, "InvalidParam");
    assert!(
        v["ResponseMetadata"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .starts_with("unknown field \"Future\""),
        "{v}"
    );
    // Still serving.
    ok(&get_users(&c, &[1]).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_one_mebibyte_is_413_before_it_is_read() {
    let s = TestServer::start().await;
    let q = "Action=BatchUpdateUserTags&Version=2020-12-01";
    let h = signed_headers(
        &creds(AK, SK),
        "POST",
        &host(&s),
        q,
        b"{}",
        OffsetDateTime::now_utc(),
    );
    let mut head = format!("POST /?{q} HTTP/1.1\r\n");
    for (k, v) in &h {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    // Announced: 100 MiB that never comes.
    let announced = format!("{head}content-length: {}\r\n\r\n", 100 << 20);
    let (status, v) = raw_tcp(s.addr, announced, std::iter::empty()).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["ResponseMetadata"]["Error"]["Code"], "InvalidParam");
    assert!(
        v["ResponseMetadata"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains("1048576"),
        "{v}"
    );
    // Streamed: chunked, passing the limit after some MiB.
    let chunked = format!("{head}transfer-encoding: chunked\r\n\r\n");
    let chunks = (0..64).map(|_| {
        let data = vec![b' '; 64 * 1024];
        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
        c.extend_from_slice(&data);
        c.extend_from_slice(b"\r\n");
        c
    });
    let (status, v) = raw_tcp(s.addr, chunked, chunks).await;
    assert_eq!(status, 413, "{v}");
    // Exactly at the limit is fine as far as size goes (it is then just bad JSON).
    let a = send_raw(
        &s.endpoint(),
        "POST",
        q,
        signed_headers(
            &creds(AK, SK),
            "POST",
            &host(&s),
            q,
            &vec![b' '; 1 << 20],
            OffsetDateTime::now_utc(),
        ),
        vec![b' '; 1 << 20],
    )
    .await;
    assert_error(&a, 400, "JsonParsingError");
}

#[tokio::test(flavor = "multi_thread")]
async fn store_unavailable_is_503_and_readyz_turns_red() {
    let s = TestServer::start().await;
    assert_eq!(s.status_of("/readyz").await, 200);
    s.state.store.close().await;
    let a = call(
        &s.client(),
        "RegisterUsers",
        json!({"AppId": APP, "Users": [{"UserId": 1}]}),
    )
    .await;
    let v = assert_error(&a, 503, "ServiceUnavailableTemp");
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100019);
    assert_eq!(s.status_of("/readyz").await, 503);
    assert_eq!(s.status_of("/healthz").await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_unique_and_in_the_header() {
    let s = TestServer::start().await;
    let c = s.client();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..50 {
        let a = get_users(&c, &[1]).await;
        let id = a.json()["ResponseMetadata"]["RequestId"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(a.headers["x-request-id"], id.as_str());
        assert!(ids.insert(id));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_action_and_code() {
    let s = TestServer::start().await;
    ok(&get_users(&s.client(), &[1]).await);
    assert_error(
        &call(
            &s.client_with(AK, "bad"),
            "BatchGetUser",
            json!({"AppId": APP, "UserIds": [1]}),
        )
        .await,
        401,
        "SignatureDoesNotMatch",
    );
    let text = s.metrics().await;
    assert!(
        text.contains(r#"tagcast_requests_total{action="BatchGetUser",code="Success"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tagcast_requests_total{action="BatchGetUser",code="SignatureDoesNotMatch"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("tagcast_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off_and_a_slow_body_is_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::with(|c| {
        c.http.header_timeout_secs = 1;
        c.http.body_timeout_secs = 1;
    })
    .await;
    // Headers that never finish: the server closes the connection by itself.
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"POST /?Action=BatchGetUser&Version=2020-12-01 HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        conn.read_to_end(&mut buf),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a slow-header connection open"
    );
    // A body that stops arriving: 408 in the envelope.
    let q = "Action=BatchGetUser&Version=2020-12-01";
    let body = json!({"AppId": APP, "UserIds": [1]}).to_string();
    let h = signed_headers(
        &creds(AK, SK),
        "POST",
        &s.addr.to_string(),
        q,
        body.as_bytes(),
        OffsetDateTime::now_utc(),
    );
    let mut head = format!("POST /?{q} HTTP/1.1\r\n");
    for (k, v) in &h {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let first_half = body.as_bytes()[..5].to_vec();
    let (status, v) = raw_tcp(s.addr, head, std::iter::once(first_half)).await;
    assert_eq!(status, 408, "{v}");
    assert_eq!(v["ResponseMetadata"]["Error"]["Code"], "RequestTimeout");
    // Normal requests are still served.
    ok(&get_users(&s.client(), &[1]).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_stored_data_is_500_internal_error_without_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    register(&s.client(), APP, &[1, 2]).await;
    // Damage one row behind the server's back; the next start builds its state from it.
    run_sql(
        &s.config,
        "UPDATE users SET ext = 'not json' WHERE user_id = 1",
    );
    s.stop().await;
    let _ = std::fs::remove_file(dir.path().join(tagcast::store::embedded::SNAPSHOT_FILE));
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let a = get_users(&s.client(), &[1]).await;
    let v = assert_error(&a, 500, "InternalError");
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 100014);
    let msg = v["ResponseMetadata"]["Error"]["Message"].as_str().unwrap();
    assert!(
        !msg.contains("not json") && !msg.contains("column"),
        "{msg}"
    );
    // The node's state cannot be built until the row is repaired: every read says so (a
    // state missing that user would answer wrongly). Embedded writes plan over that state
    // and are refused too; PostgreSQL writes read the rows under their locks and go on.
    assert_error(&get_users(&s.client(), &[2]).await, 500, "InternalError");
    let w = call(
        &s.client(),
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserIds": [2], "Tags": ["a:b"]}),
    )
    .await;
    if crate::infra::postgres_backend() {
        assert!(failed_infos(&w).is_empty(), "{}", w.json());
    } else {
        assert_error(&w, 500, "InternalError");
    }
}

/// Writes are committed in shared batches; a request that fails inside the database (here
/// a trigger refusing one key) gets 500 alone, and the requests committed beside it stand.
/// Rounds of concurrent requests until one failed inside a shared commit (the batch was
/// split): with a batch size of 1 the test would otherwise pass without testing anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_failing_inside_a_shared_commit_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    // One PostgreSQL committer: requests queue behind each commit, as under load.
    let s = TestServer::start_in(dir.path(), |c| c.store.committers = 1).await;
    let ids: Vec<i64> = (1..=24).collect();
    register(&s.client(), APP, &ids).await;
    let trigger = if crate::infra::postgres_backend() {
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.tags->'0' ? 'boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER boom BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION boom();"
    } else {
        "CREATE TRIGGER boom BEFORE UPDATE OF tags ON users
         WHEN json_type(NEW.tags, '$.\"0\".boom') IS NOT NULL
         BEGIN SELECT RAISE(ABORT, 'boom'); END;"
    };
    run_sql(&s.config, trigger);
    for round in 0..20 {
        let mut tasks = Vec::new();
        for &id in &ids {
            let client = s.client();
            tasks.push(tokio::spawn(async move {
                let key = if id == 7 {
                    "boom".to_owned()
                } else {
                    format!("r{round}")
                };
                let body =
                    json!({"AppId": APP, "UserTags": [{"UserId": id, "Tags": {key: "gold"}}]});
                (id, call(&client, "BatchUpdateUserTags", body).await)
            }));
        }
        for t in tasks {
            let (id, answer) = t.await.unwrap();
            if id == 7 {
                assert_error(&answer, 500, "InternalError");
            } else {
                assert!(failed_infos(&answer).is_empty(), "user {id}");
                let tags = tags_of(&s.client(), APP, 0, id).await.unwrap();
                assert!(
                    tags.contains(&format!("r{round}:gold")),
                    "user {id}: {tags:?}"
                );
            }
        }
        assert_eq!(tags_of(&s.client(), APP, 0, 7).await, Some(vec![]));
        if s.state.metrics.commits_shared_and_split().1 >= 1 {
            return;
        }
    }
    let (shared, split) = s.state.metrics.commits_shared_and_split();
    panic!(
        "in 20 rounds the failing request never shared a commit: {shared} shared commits, {split} split"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_content_type_is_not_enforced() {
    let s = TestServer::start().await;
    let q = "Action=BatchGetUser&Version=2020-12-01";
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/json; charset=utf-8",
    ] {
        let mut h = http::HeaderMap::new();
        h.insert("host", s.addr.to_string().parse().unwrap());
        h.insert("content-type", ct.parse().unwrap());
        tagcast::signing::sign(
            "POST",
            "/",
            q,
            &mut h,
            &body(),
            &creds(AK, SK),
            OffsetDateTime::now_utc(),
        );
        ok(&send_raw(&s.endpoint(), "POST", q, h, body()).await);
    }
}
