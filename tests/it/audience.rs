//! CountAudience and ListAudience over HTTP: a model-based test of random writes (by every
//! write Action) and random filters against a brute-force evaluation (then again after a
//! restart from the saved state, from the rows, and after a kill -9 in the middle of a write), every filter
//! form and error, and paging.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tagcast::call::Client;

use crate::common::*;

const KEYS: [&str; 4] = ["level", "city", "vip", "lang"];
const VALUES: [&str; 4] = ["", "a", "b", "c"];
const USERS: i64 = 40;
const INBOXES: u32 = 3;
const CAP: usize = 3;

/// What the store should hold: registered users and their tags per inbox, and their
/// nick names.
#[derive(Default, Clone)]
struct Model {
    users: BTreeMap<i64, HashMap<u32, BTreeMap<String, String>>>,
    nicks: BTreeMap<i64, String>,
}

impl Model {
    fn upsert(&mut self, user: i64, inbox: u32, tags: &[(String, String)]) -> bool {
        let Some(inboxes) = self.users.get_mut(&user) else {
            return false;
        };
        let t = inboxes.entry(inbox).or_default();
        let net_new = tags.iter().filter(|(k, _)| !t.contains_key(k)).count();
        if t.len() + net_new > CAP {
            return false;
        }
        for (k, v) in tags {
            t.insert(k.clone(), v.clone());
        }
        true
    }

    /// BatchUpdateUser's Tags: the whole inbox-0 set, if it fits under the cap.
    fn replace(&mut self, user: i64, tags: &[(String, String)]) -> bool {
        let Some(inboxes) = self.users.get_mut(&user) else {
            return false;
        };
        if tags.len() > CAP {
            return false;
        }
        inboxes.insert(0, tags.iter().cloned().collect());
        true
    }

    fn delete(&mut self, user: i64, inbox: u32, keys: &[(String, String)]) {
        if let Some(t) = self.users.get_mut(&user).and_then(|i| i.get_mut(&inbox)) {
            for (k, _) in keys {
                t.remove(k);
            }
        }
    }

    fn eval(&self, f: &Value, user: i64, inbox: u32) -> bool {
        let empty = BTreeMap::new();
        let tags = self.users[&user].get(&inbox).unwrap_or(&empty);
        let parse = |s: &str| match s.split_once(':') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (s.to_owned(), String::new()),
        };
        let (op, arg) = f.as_object().unwrap().iter().next().unwrap();
        match op.as_str() {
            "Tag" => {
                let (k, v) = parse(arg.as_str().unwrap());
                tags.get(&k) == Some(&v)
            }
            "Key" => tags.contains_key(arg.as_str().unwrap()),
            "And" => arg
                .as_array()
                .unwrap()
                .iter()
                .all(|g| self.eval(g, user, inbox)),
            "Or" => arg
                .as_array()
                .unwrap()
                .iter()
                .any(|g| self.eval(g, user, inbox)),
            "Not" => !self.eval(arg, user, inbox),
            _ => unreachable!(),
        }
    }

    fn select(&self, f: &Value, inbox: u32) -> BTreeSet<i64> {
        self.users
            .keys()
            .copied()
            .filter(|u| self.eval(f, *u, inbox))
            .collect()
    }
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

fn random_tags(rng: &mut StdRng) -> Vec<(String, String)> {
    let mut keys = KEYS.to_vec();
    let n = rng.random_range(1..=3);
    let mut out = Vec::new();
    for _ in 0..n {
        let k = keys.remove(rng.random_range(0..keys.len()));
        out.push((k.to_owned(), pick(rng, &VALUES).to_owned()));
    }
    out
}

fn tag_string((k, v): &(String, String)) -> String {
    if v.is_empty() && k.len() % 2 == 0 {
        k.clone()
    } else {
        format!("{k}:{v}")
    }
}

fn random_filter(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth >= 3 || rng.random_bool(0.4);
    if leaf {
        let k = pick(rng, &KEYS);
        return if rng.random_bool(0.3) {
            json!({"Key": k})
        } else {
            json!({"Tag": format!("{k}:{}", pick(rng, &VALUES))})
        };
    }
    match rng.random_range(0..3) {
        0 => json!({"Not": random_filter(rng, depth + 1)}),
        op => {
            let n = rng.random_range(1..=3);
            let items: Vec<Value> = (0..n).map(|_| random_filter(rng, depth + 1)).collect();
            json!({ (if op == 1 { "And" } else { "Or" }): items })
        }
    }
}

/// One random write: the request, and the model as it is once the store applied it (with
/// whether the answer must list no failures, where the model knows).
struct Write {
    action: &'static str,
    body: Value,
    after: Model,
    no_failures: Option<bool>,
}

/// One random write, applied through the API and to the model.
async fn random_write(rng: &mut StdRng, client: &Client, model: &mut Model) {
    let w = random_request(rng, model);
    let a = call(client, w.action, w.body).await;
    if let Some(expected) = w.no_failures {
        assert_eq!(failed_infos(&a).is_empty(), expected, "{}", w.action);
    }
    *model = w.after;
}

/// A random write request and what it does to `model`.
fn random_request(rng: &mut StdRng, model: &Model) -> Write {
    let mut model = model.clone();
    let user = rng.random_range(1..=USERS);
    let (action, body, no_failures) = match rng.random_range(0..10) {
        0..=2 => {
            let tags = random_tags(rng);
            let nick = rng
                .random_bool(0.5)
                .then(|| pick(rng, &["", "ann", "bo"]).to_owned());
            let mut u =
                json!({"UserId": user, "Tags": tags.iter().map(tag_string).collect::<Vec<_>>()});
            if let Some(n) = &nick {
                u["NickName"] = json!(n);
            }
            let fresh = !model.users.contains_key(&user);
            if fresh {
                model.users.insert(user, HashMap::new());
            }
            let applied = model.upsert(user, 0, &tags);
            if !applied && fresh {
                model.users.remove(&user);
            }
            if applied {
                let kept = model.nicks.remove(&user).unwrap_or_default();
                model.nicks.insert(user, nick.unwrap_or(kept));
            }
            (
                "RegisterUsers",
                json!({"AppId": APP, "Users": [u]}),
                Some(applied),
            )
        }
        3 => {
            let was = model.users.remove(&user).is_some();
            model.nicks.remove(&user);
            (
                "UnRegisterUsers",
                json!({"AppId": APP, "UserIds": [user]}),
                Some(was),
            )
        }
        4..=6 => {
            let inbox = rng.random_range(0..INBOXES);
            let tags = random_tags(rng);
            let op = i32::from(rng.random_bool(0.3));
            let map: serde_json::Map<String, Value> =
                tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            if op == 0 {
                model.upsert(user, inbox, &tags);
            } else {
                model.delete(user, inbox, &tags);
            }
            (
                "BatchUpdateUserTags",
                json!({"AppId": APP, "InboxType": inbox, "Op": op, "UserTags": [{"UserId": user, "Tags": map}]}),
                None,
            )
        }
        7 => {
            // Empty, every key (one over the cap), or a few.
            let tags = match rng.random_range(0..4) {
                0 => Vec::new(),
                1 => {
                    let mut all = Vec::new();
                    for k in KEYS {
                        all.push((k.to_owned(), pick(rng, &VALUES).to_owned()));
                    }
                    all
                }
                _ => random_tags(rng),
            };
            let nick = rng
                .random_bool(0.5)
                .then(|| pick(rng, &["", "cy", "dee"]).to_owned());
            let mut u =
                json!({"UserId": user, "Tags": tags.iter().map(tag_string).collect::<Vec<_>>()});
            if let Some(n) = &nick {
                u["NickName"] = json!(n);
            }
            let applied = model.replace(user, &tags);
            if applied && let Some(n) = nick {
                model.nicks.insert(user, n);
            }
            (
                "BatchUpdateUser",
                json!({"AppId": APP, "Users": [u]}),
                Some(applied),
            )
        }
        _ => {
            let others: Vec<i64> = vec![user, rng.random_range(1..=USERS)];
            let tags = random_tags(rng);
            let op = i32::from(rng.random_bool(0.3));
            let strings: Vec<String> = tags.iter().map(tag_string).collect();
            for u in &others {
                if op == 0 {
                    model.upsert(*u, 0, &tags);
                } else {
                    model.delete(*u, 0, &tags);
                }
            }
            (
                "BatchUpdateUserTags",
                json!({"AppId": APP, "UserIds": others, "Tags": strings, "Op": op}),
                None,
            )
        }
    };
    Write {
        action,
        body,
        after: model,
        no_failures,
    }
}

async fn count(client: &Client, inbox: u32, filter: &Value) -> u64 {
    let a = call(
        client,
        "CountAudience",
        json!({"AppId": APP, "InboxType": inbox, "Filter": filter}),
    )
    .await;
    ok(&a)["Count"].as_u64().unwrap()
}

/// Every page of ListAudience, checking that no user comes twice.
async fn list_all(client: &Client, mut body: Value) -> Vec<i64> {
    let mut out = Vec::new();
    loop {
        let r = ok(&call(client, "ListAudience", body.clone()).await);
        out.extend(
            r["UserIds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
        let next = r["NextCursor"].as_str().unwrap();
        if next.is_empty() {
            break;
        }
        body["Cursor"] = json!(next);
    }
    let distinct: BTreeSet<i64> = out.iter().copied().collect();
    assert_eq!(distinct.len(), out.len(), "a user came twice: {out:?}");
    out
}

/// Per inbox: every registered user's (nick name, tags) and the ids not found.
type Seen = Vec<(BTreeMap<i64, (String, Vec<String>)>, BTreeSet<i64>)>;

/// What BatchGetUser of every user id answers, in every inbox.
async fn observed(client: &Client) -> Seen {
    let ids: Vec<i64> = (1..=USERS).collect();
    let mut seen = Vec::new();
    for inbox in 0..INBOXES {
        let a = call(
            client,
            "BatchGetUser",
            json!({"AppId": APP, "InboxType": inbox, "UserIds": ids}),
        )
        .await;
        let r = ok(&a);
        let mut found = BTreeMap::new();
        for u in r["Users"].as_array().unwrap() {
            let tags: Vec<String> = u["Tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect();
            assert!(
                u["ModifyTime"].as_i64().unwrap() >= u["CreateTime"].as_i64().unwrap(),
                "{u}"
            );
            found.insert(
                u["UserId"].as_i64().unwrap(),
                (u["NickName"].as_str().unwrap().to_owned(), tags),
            );
        }
        let missing: BTreeSet<i64> = r["NotFoundUsers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        seen.push((found, missing));
    }
    seen
}

/// What [`observed`] must answer for `model`.
fn expected(model: &Model) -> Seen {
    (0..INBOXES)
        .map(|inbox| {
            let found = model
                .users
                .iter()
                .map(|(id, inboxes)| {
                    let tags = inboxes
                        .get(&inbox)
                        .map(|t| t.iter().map(|(k, v)| format!("{k}:{v}")).collect())
                        .unwrap_or_default();
                    let nick = model.nicks.get(id).cloned().unwrap_or_default();
                    (*id, (nick, tags))
                })
                .collect();
            let unregistered = (1..=USERS)
                .filter(|id| !model.users.contains_key(id))
                .collect();
            (found, unregistered)
        })
        .collect()
}

/// BatchGetUser of every user id, in every inbox, answers what the model holds: who is
/// registered, their tags and their nick names.
async fn check_users(client: &Client, model: &Model) {
    let seen = observed(client).await;
    for (inbox, (seen, want)) in seen.iter().zip(expected(model)).enumerate() {
        assert_eq!(seen.0, want.0, "BatchGetUser in inbox {inbox}");
        assert_eq!(seen.1, want.1, "NotFoundUsers in inbox {inbox}");
    }
}

async fn check_filters(rng: &mut StdRng, client: &Client, model: &Model, rounds: usize) {
    check_users(client, model).await;
    for _ in 0..rounds {
        let inbox = rng.random_range(0..INBOXES);
        let f = random_filter(rng, 1);
        let expected = model.select(&f, inbox);
        assert_eq!(
            count(client, inbox, &f).await,
            expected.len() as u64,
            "Count of {f} in inbox {inbox}"
        );
        let listed = list_all(
            client,
            json!({"AppId": APP, "InboxType": inbox, "Filter": f, "Limit": 7}),
        )
        .await;
        assert_eq!(
            listed.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "ListAudience of {f}"
        );
    }
    // The vendor form: OR (TagOp 0) and AND (TagOp 1) of "k:v" strings.
    for op in [0, 1] {
        let tags: Vec<String> = (0..2)
            .map(|_| format!("{}:{}", pick(rng, &KEYS), pick(rng, &VALUES)))
            .collect();
        let leaves: Vec<Value> = tags.iter().map(|t| json!({"Tag": t})).collect();
        let tree = if op == 0 {
            json!({"Or": leaves})
        } else {
            json!({"And": leaves})
        };
        let a = call(
            client,
            "CountAudience",
            json!({"AppId": APP, "Tags": tags, "TagOp": op}),
        )
        .await;
        assert_eq!(
            ok(&a)["Count"].as_u64().unwrap(),
            model.select(&tree, 0).len() as u64,
            "{tags:?} TagOp {op}"
        );
    }
    let all = call(client, "CountAudience", json!({"AppId": APP})).await;
    assert_eq!(
        ok(&all)["Count"].as_u64().unwrap(),
        model.users.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audiences_equal_a_brute_force_model_of_random_writes_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let tweak = |c: &mut tagcast::config::Config| c.tags.max_per_user = CAP;
    for seed in [7_u64, 11, 2024] {
        let dir = tmp.path().join(seed.to_string());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Model::default();
        let server = TestServer::start_in(&dir, tweak).await;
        let client = server.client();
        for step in 0..150 {
            random_write(&mut rng, &client, &mut model).await;
            if step % 25 == 24 {
                check_filters(&mut rng, &client, &model, 6).await;
            }
        }
        server.stop().await;
        let snapshot = dir.join(tagcast::store::embedded::SNAPSHOT_FILE);
        if !crate::infra::postgres_backend() {
            // A clean stop saved the state; the restart reads it instead of every row.
            assert!(snapshot.exists());
        }
        let server = TestServer::start_in(&dir, tweak).await;
        check_filters(&mut rng, &server.client(), &model, 20).await;
        // More writes on the loaded state, then a start from the rows alone.
        for _ in 0..50 {
            random_write(&mut rng, &server.client(), &mut model).await;
        }
        check_filters(&mut rng, &server.client(), &model, 6).await;
        server.stop().await;
        let _ = std::fs::remove_file(&snapshot);
        let server = TestServer::start_in(&dir, tweak).await;
        check_filters(&mut rng, &server.client(), &model, 20).await;
        server.stop().await;
        // kill -9 at a random moment of a stream of writes: the write in flight when the
        // server died either committed or not, so the start (a saved state, if one was
        // taken, and the log after it) answers the model before it or after it, and
        // every answer goes on matching.
        kill_9_mid_write(&dir, &mut rng, &mut model).await;
        let mut config = test_config(&dir);
        tweak(&mut config);
        let server = ChildServer::spawn_with(tmp.path(), &config);
        check_filters(&mut rng, &server.client(), &model, 20).await;
        server.terminate();
    }
}

/// Writes from `model` to a child server on `dir` until a kill -9 at a random moment ends
/// it, then restarts it and settles the model on what the store holds: the model before
/// the write in flight, or after it, and nothing else.
async fn kill_9_mid_write(dir: &std::path::Path, rng: &mut StdRng, model: &mut Model) {
    let mut config = test_config(dir);
    config.tags.max_per_user = CAP;
    // Saved states taken while writing, so the start after the kill replays a log tail.
    config.store.snapshot_changes = 7;
    let beside = dir.parent().unwrap();
    let server = ChildServer::spawn_with(beside, &config);
    let client = server.client();
    let pid = server.child.id().to_string();
    let after_ms = rng.random_range(30..400);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap();
    });
    let mut in_flight = None;
    let mut acknowledged = 0;
    for _ in 0..100_000 {
        let w = random_request(rng, model);
        match client.call(w.action, w.body.to_string().as_bytes()).await {
            Ok(a) => {
                if let Some(expected) = w.no_failures {
                    assert_eq!(failed_infos(&a).is_empty(), expected, "{}", w.action);
                }
                *model = w.after;
                acknowledged += 1;
            }
            Err(_) => {
                in_flight = Some(w.after);
                break;
            }
        }
    }
    killer.join().unwrap();
    drop(server);
    let in_flight = in_flight.expect("the kill ended the writes");
    let server = ChildServer::spawn_with(beside, &config);
    let seen = observed(&server.client()).await;
    if seen != expected(model) {
        assert_eq!(
            seen,
            expected(&in_flight),
            "after kill -9 ({acknowledged} writes acknowledged) the store is neither the model before the write in flight nor after it"
        );
        *model = in_flight;
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_filter_error_is_invalid_param_naming_the_problem() {
    let server = TestServer::start().await;
    let c = server.client();
    let deep = (0..9).fold(json!({"Tag": "a:b"}), |f, _| json!({"Not": f}));
    let wide: Vec<Value> = (0..33).map(|i| json!({"Tag": format!("k:{i}")})).collect();
    let leaves: Vec<Value> = (0..3)
        .map(|j| json!({"Or": (0..11).map(|i| json!({"Tag": format!("k{j}:{i}")})).collect::<Vec<_>>()}))
        .collect();
    let cases = [
        (
            json!({"AppId": APP, "Tags": ["a:b"], "Filter": {"Tag": "a:b"}}),
            "not both",
        ),
        (json!({"AppId": APP, "Tags": ["a:b"], "TagOp": 2}), "TagOp"),
        (
            json!({"AppId": APP, "Tags": (0..11).map(|i| format!("k:{i}")).collect::<Vec<_>>()}),
            "10",
        ),
        (json!({"AppId": APP, "Tags": ["bad\u{1}key:v"]}), "Tags[0]"),
        (json!({"AppId": APP, "Filter": {"Key": "a:b"}}), "Filter"),
        (json!({"AppId": APP, "Filter": {"And": []}}), "Filter.And"),
        (json!({"AppId": APP, "Filter": {"Or": wide}}), "32"),
        (json!({"AppId": APP, "Filter": {"And": leaves}}), "leaves"),
        (json!({"AppId": APP, "Filter": deep}), "more than 8 levels"),
        (json!({"AppId": APP, "Filter": {"Xor": []}}), "Xor"),
        (json!({"AppId": APP, "Filter": {"Tag": 5}}), "Filter.Tag"),
        (
            json!({"AppId": APP, "Filter": {"Tag": "a:b", "Key": "a"}}),
            "Filter",
        ),
        (json!({"AppId": APP, "Filter": "level:gold"}), "Filter"),
        (json!({"AppId": APP, "Tags": "level:gold"}), "Tags"),
        (json!({"AppId": 0}), "AppId"),
        (json!({"AppId": APP, "InboxType": -1}), "InboxType"),
    ];
    for (body, needle) in cases {
        for action in ["CountAudience", "ListAudience"] {
            let v = assert_error(&call(&c, action, body.clone()).await, 400, "InvalidParam");
            let message = v["ResponseMetadata"]["Error"]["Message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                message.contains(needle),
                "{action} {body}: {message:?} should mention {needle:?}"
            );
        }
    }
    for (limit, good) in [(0, false), (1, true), (1000, true), (1001, false)] {
        let a = call(&c, "ListAudience", json!({"AppId": APP, "Limit": limit})).await;
        if good {
            ok(&a);
        } else {
            assert_error(&a, 400, "InvalidParam");
        }
    }
    for cursor in ["garbage", "dGMx", "%%%", &"A".repeat(10_000)] {
        let a = call(&c, "ListAudience", json!({"AppId": APP, "Cursor": cursor})).await;
        assert_error(&a, 400, "InvalidParam");
    }
    assert_error(
        &call(&c, "CountAudience", json!({"AppId": 424242})).await,
        404,
        "AppNotFound",
    );
    assert_error(
        &call(&c, "CountAudience", json!({"AppId": OTHER_APP})).await,
        403,
        "AccessDenied",
    );
    assert_error(
        &call(&c, "CountAudience", json!([APP])).await,
        400,
        "InvalidParam",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_returns_every_selected_user_once_in_a_stable_order() {
    let server = TestServer::start().await;
    let c = server.client();
    let ids: Vec<i64> = (1..=250).map(|i| i * 1000 + 7).collect();
    register(&c, APP, &ids).await;
    for chunk in ids.chunks(100) {
        let a = call(
            &c,
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserIds": chunk, "Tags": ["level:gold", "vip"]}),
        )
        .await;
        assert!(failed_infos(&a).is_empty());
    }
    let body = json!({"AppId": APP, "Tags": ["level:gold", "vip"], "TagOp": 1, "Limit": 33});
    let first = list_all(&c, body.clone()).await;
    assert_eq!(
        first.iter().copied().collect::<BTreeSet<_>>(),
        ids.iter().copied().collect()
    );
    assert_eq!(list_all(&c, body).await, first, "the same order every time");
    // Vendor form without tags: everyone; "vip" without a colon is vip = "".
    assert_eq!(count(&c, 0, &json!({"Tag": "vip"})).await, 250);
    assert_eq!(count(&c, 0, &json!({"Tag": "vip:"})).await, 250);
    let a = call(&c, "CountAudience", json!({"AppId": APP, "Tags": ["vip"]})).await;
    assert_eq!(ok(&a)["Count"], 250);
    let a = call(&c, "CountAudience", json!({"AppId": APP, "Tags": []})).await;
    assert_eq!(ok(&a)["Count"], 250);
    // Another inbox has no tags; a default Limit is 100.
    assert_eq!(count(&c, 1, &json!({"Key": "level"})).await, 0);
    let r = ok(&call(&c, "ListAudience", json!({"AppId": APP})).await);
    assert_eq!(r["UserIds"].as_array().unwrap().len(), 100);
    assert!(!r["NextCursor"].as_str().unwrap().is_empty());
    // An acknowledged unregister leaves the very next answer.
    call(
        &c,
        "UnRegisterUsers",
        json!({"AppId": APP, "UserIds": [ids[0]]}),
    )
    .await;
    assert_eq!(count(&c, 0, &json!({"Key": "vip"})).await, 249);
    assert_eq!(count(&c, 0, &json!({"Not": {"Key": "vip"}})).await, 0);
}

/// How many rows `sql` counts in the store `config` names (read beside the server).
async fn store_count(config: &tagcast::config::Config, sql: &str) -> u64 {
    match config.store.url.clone() {
        Some(url) => {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) as u64
        }
        None => {
            let path = config.data_dir.join(tagcast::store::embedded::DB_FILE);
            let conn = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_under_writers_the_rebuilt_index_equals_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(&tmp.path().join("data"));
    config.tags.max_per_user = 1000;
    let ids: Vec<i64> = (1..=300).collect();
    let mut rng = StdRng::seed_from_u64(9);
    for cycle in 0..3 {
        let server = ChildServer::spawn_with(tmp.path(), &config);
        if cycle == 0 {
            register(&server.client(), APP, &ids).await;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3_i64 {
            let (client, stop) = (server.client(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut i = 0_i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let users: Vec<i64> = (0..10).map(|j| 1 + (w * 97 + i * 31 + j * 7) % 300).collect();
                    let value = ["a", "b", "c"][((w + i) % 3) as usize];
                    let op = i32::from(i % 5 == 4);
                    let body = json!({"AppId": APP, "UserIds": users, "Tags": [format!("level:{value}"), "vip"], "Op": op});
                    // Answers stop when the server is killed.
                    if client.call("BatchUpdateUserTags", body.to_string().as_bytes()).await.is_err() {
                        break;
                    }
                    i += 1;
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(200..800))).await;
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let server = ChildServer::spawn_with(tmp.path(), &config);
        let c = server.client();
        // One row per user, the tags of every inbox in its `tags` column (JSON).
        let pg = config.store.url.is_some();
        let is = |k: &str, v: &str| match pg {
            true => format!("tags->'0'->>'{k}' = '{v}'"),
            false => format!("json_extract(tags, '$.\"0\".{k}') = '{v}'"),
        };
        let has = |k: &str| match pg {
            true => format!("tags->'0' ? '{k}'"),
            false => format!("json_type(tags, '$.\"0\".{k}') IS NOT NULL"),
        };
        for (filter, sql) in [
            (json!({"Tag": "level:a"}), is("level", "a")),
            (json!({"Tag": "level:c"}), is("level", "c")),
            (json!({"Key": "vip"}), has("vip")),
            (
                json!({"Not": {"Key": "level"}}),
                format!("NOT COALESCE({}, false)", has("level")),
            ),
        ] {
            assert_eq!(
                count(&c, 0, &filter).await,
                store_count(&config, &format!("SELECT COUNT(*) FROM users WHERE {sql}")).await,
                "cycle {cycle}: {filter}"
            );
        }
        server.terminate();
    }
}

/// Starts a server that must build its state from the rows, logging once why it did not
/// use the saved state, with `cause` in that line.
async fn start_from_the_rows(
    dir: &std::path::Path,
    config: &tagcast::config::Config,
    cause: &str,
) -> ChildServer {
    let server = ChildServer::spawn_logged(dir, config, "info");
    let built = server.wait_for_log("audience index built").await;
    assert!(
        built.iter().any(|l| l.contains("from=\"store\"")),
        "{built:?}"
    );
    let why = server.log_lines_with("not starting from the saved state");
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains(cause), "{why:?}");
    server
}

/// Both backends: the state saved periodically plus the change log after it are the
/// start after a kill -9. Random writes, a periodic save (every second here), more writes, kill -9:
/// the start loads the file, replays the entries after it, and every read and audience
/// answer equals the model. Then the fallbacks, each with its one log line and the same
/// answers: a truncated file, and a log that no longer holds the entry the file ends at.
#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_the_start_loads_the_saved_state_and_replays_the_log_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(&tmp.path().join("data"));
    config.tags.max_per_user = CAP;
    config.store.snapshot_interval_s = 1;
    let log = match config.store.kind {
        tagcast::config::StoreKind::Embedded => "tagcast_log",
        tagcast::config::StoreKind::Postgres => "tagcast_app_log",
    };
    let snapshot = config
        .data_dir
        .join(tagcast::store::embedded::SNAPSHOT_FILE);
    let mut rng = StdRng::seed_from_u64(18);
    let mut model = Model::default();
    let server = ChildServer::spawn_logged(tmp.path(), &config, "info");
    for _ in 0..120 {
        random_write(&mut rng, &server.client(), &mut model).await;
    }
    server.wait_for_log("state saved").await;
    for _ in 0..80 {
        random_write(&mut rng, &server.client(), &mut model).await;
    }
    server.kill9();

    let server = ChildServer::spawn_logged(tmp.path(), &config, "info");
    let built = server.wait_for_log("audience index built").await;
    assert!(
        built
            .iter()
            .any(|l| l.contains("from=\"snapshot\"") && !l.contains("replayed=0")),
        "the start after kill -9 did not load the saved state and replay: {built:?}"
    );
    check_filters(&mut rng, &server.client(), &model, 10).await;
    for _ in 0..40 {
        random_write(&mut rng, &server.client(), &mut model).await;
    }
    server.kill9();

    // A truncated file: built from the rows, saying why.
    let len = std::fs::metadata(&snapshot).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&snapshot)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let server = start_from_the_rows(tmp.path(), &config, "unreadable").await;
    check_filters(&mut rng, &server.client(), &model, 10).await;
    for _ in 0..40 {
        random_write(&mut rng, &server.client(), &mut model).await;
    }
    server.wait_for_log("state saved").await;
    server.kill9();

    // The log trimmed past the file: the entry it ends at is gone.
    run_sql(&config, &format!("DELETE FROM {log} WHERE app_id = {APP}"));
    let server = start_from_the_rows(tmp.path(), &config, "no longer holds the entry").await;
    check_filters(&mut rng, &server.client(), &model, 10).await;
    server.terminate();
}
