//! The event log (issue 19, API.md §9) on the suite's backend: replayed from nothing it
//! equals what every writer did and what BatchGetUser answers, across a kill -9; a
//! long-polling consumer sees exactly the log, in order; no-op writes append nothing;
//! filters, validation, retention and 410; event webhooks in Seq order through failures
//! and a kill -9.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tagcast::call::Client;

use crate::common::*;
use crate::webhook_receiver::{self, Answer, Receiver};

async fn list(client: &Client, body: Value) -> Value {
    ok(&call(client, "ListEvents", body).await)
}

fn seq(e: &Value) -> u64 {
    e["Seq"].as_str().unwrap().parse().unwrap()
}

/// Every retained event of `app`, read After by After, Limit 1000.
async fn all_events(client: &Client, app: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({"AppId": app, "Limit": 1000});
        if let Some(a) = &after {
            body["After"] = json!(a);
        }
        let r = list(client, body).await;
        let events = r["Events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        after = Some(r["NextAfter"].as_str().unwrap().to_owned());
        out.extend(events);
    }
}

/// Long-polls (WaitMs 20 s, `limit` at a time) from the start until `n` events came: the
/// events, and the polls that brought them. Every poll must bring some: writes go on.
async fn follow(client: Client, n: usize, limit: usize) -> (Vec<Value>, usize) {
    let (mut seen, mut after, mut polls) = (Vec::<Value>::new(), "0".to_owned(), 0);
    while seen.len() < n {
        let r = list(
            &client,
            json!({"AppId": APP, "After": after, "WaitMs": 20000, "Limit": limit}),
        )
        .await;
        let events = r["Events"].as_array().unwrap();
        assert!(
            !events.is_empty(),
            "a 20 s long poll answered empty while writes went on"
        );
        polls += 1;
        seen.extend(events.iter().cloned());
        after = r["NextAfter"].as_str().unwrap().to_owned();
    }
    (seen, polls)
}

/// A server of its own directory under `root` on the PostgreSQL database `url`.
fn pg_node(
    root: &std::path::Path,
    name: &str,
    url: &str,
    tweak: impl FnOnce(&mut tagcast::config::Config),
) -> ChildServer {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut c = base_config(&d);
    c.store.kind = tagcast::config::StoreKind::Postgres;
    c.store.url = Some(url.to_owned());
    tweak(&mut c);
    ChildServer::spawn_with(&d, &c)
}

/// A registered user as events and BatchGetUser show it: NickName and tags of every inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct User {
    nick: String,
    tags: BTreeMap<(u32, String), String>,
}

type Model = BTreeMap<i64, User>;

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// Applies one event to the replayed state, checking every `Previous` against it.
fn replay(model: &mut Model, e: &Value) -> Result<(), String> {
    let user = e["UserId"].as_i64().unwrap_or(0);
    match e["Type"].as_str().unwrap() {
        "user.registered" => {
            if model.contains_key(&user) {
                return Err(format!("registered while registered: {e}"));
            }
            let tags = str_map(&e["Tags"])
                .into_iter()
                .map(|(k, v)| ((0, k), v))
                .collect();
            let nick = e["NickName"].as_str().unwrap().to_owned();
            model.insert(user, User { nick, tags });
        }
        "user.updated" => {
            let u = model
                .get_mut(&user)
                .ok_or(format!("updated unknown: {e}"))?;
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            if keys(&e["Changed"]) != keys(&e["Previous"]) || keys(&e["Changed"]).is_empty() {
                return Err(format!(
                    "Previous must hold the old value of every field Changed holds: {e}"
                ));
            }
            if let Some(prev) = e["Previous"].get("NickName")
                && prev.as_str() != Some(u.nick.as_str())
            {
                return Err(format!(
                    "Previous NickName {prev} but the state holds {:?}: {e}",
                    u.nick
                ));
            }
            if let Some(n) = e["Changed"].get("NickName") {
                u.nick = n.as_str().unwrap().to_owned();
            }
        }
        "user.tags_changed" => {
            let u = model
                .get_mut(&user)
                .ok_or(format!("tags of unknown: {e}"))?;
            let inbox = e["InboxType"].as_u64().unwrap() as u32;
            let prev = str_map(&e["Previous"]);
            let set = str_map(&e["Set"]);
            let deleted: Vec<String> = e["Deleted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect();
            for k in set.keys().chain(deleted.iter()) {
                let held = u.tags.get(&(inbox, k.clone()));
                if held != prev.get(k) {
                    return Err(format!(
                        "key {k}: Previous {:?}, state {held:?}: {e}",
                        prev.get(k)
                    ));
                }
            }
            for k in &deleted {
                u.tags.remove(&(inbox, k.clone()));
            }
            for (k, v) in set {
                u.tags.insert((inbox, k), v);
            }
        }
        "user.unregistered" => {
            model
                .remove(&user)
                .ok_or(format!("unregistered unknown: {e}"))?;
        }
        _ => {}
    }
    Ok(())
}

/// One writer's random single-user write over the users it owns, and what it does to
/// its model (applied by the caller once acknowledged).
fn random_write(
    rng: &mut rand::rngs::StdRng,
    users: &[i64],
    model: &Model,
) -> (String, Value, Model) {
    let user = users[rng.random_range(0..users.len())];
    let key = |rng: &mut rand::rngs::StdRng| format!("k{}", rng.random_range(0..4));
    let val = |rng: &mut rand::rngs::StdRng| format!("v{}", rng.random_range(0..3));
    let mut after = model.clone();
    let registered = model.contains_key(&user);
    let inbox: u32 = if rng.random_bool(0.3) { 2 } else { 0 };
    match rng.random_range(0..10) {
        0 | 1 => {
            let nick = format!("n{}", rng.random_range(0..3));
            let (k, v) = (key(rng), val(rng));
            let u = after.entry(user).or_default();
            u.nick = nick.clone();
            u.tags.insert((0, k.clone()), v.clone());
            let body = json!({"AppId": APP, "Users": [{"UserId": user, "NickName": nick, "Tags": [format!("{k}:{v}")]}]});
            ("RegisterUsers".into(), body, after)
        }
        2..=5 => {
            let mut tags = serde_json::Map::new();
            for _ in 0..rng.random_range(1..3) {
                let (k, v) = (key(rng), val(rng));
                tags.insert(k.clone(), json!(v));
                if let Some(u) = after.get_mut(&user) {
                    u.tags.insert((inbox, k), v);
                }
            }
            let body = json!({"AppId": APP, "InboxType": inbox, "Op": 0, "UserTags": [{"UserId": user, "Tags": tags}]});
            ("BatchUpdateUserTags".into(), body, after)
        }
        6 | 7 => {
            let k = key(rng);
            if let Some(u) = after.get_mut(&user) {
                u.tags.remove(&(inbox, k.clone()));
            }
            let body = json!({"AppId": APP, "InboxType": inbox, "Op": 1, "UserTags": [{"UserId": user, "Tags": {k: ""}}]});
            ("BatchUpdateUserTags".into(), body, after)
        }
        8 => {
            let nick = format!("n{}", rng.random_range(0..3));
            let (k, v) = (key(rng), val(rng));
            if let Some(u) = after.get_mut(&user) {
                u.nick = nick.clone();
                u.tags.retain(|(i, _), _| *i != 0);
                u.tags.insert((0, k.clone()), v.clone());
            }
            let body = json!({"AppId": APP, "Users": [{"UserId": user, "NickName": nick, "Tags": [format!("{k}:{v}")]}]});
            ("BatchUpdateUser".into(), body, after)
        }
        _ => {
            after.remove(&user);
            let _ = registered;
            let body = json!({"AppId": APP, "UserIds": [user]});
            ("UnRegisterUsers".into(), body, after)
        }
    }
}

/// What BatchGetUser answers of `users`, as the model holds them.
async fn served(client: &Client, users: &[i64]) -> Model {
    let mut out = Model::new();
    for inbox in [0u32, 2] {
        let a = call(
            client,
            "BatchGetUser",
            json!({"AppId": APP, "InboxType": inbox, "UserIds": users}),
        )
        .await;
        for u in ok(&a)["Users"].as_array().unwrap() {
            let id = u["UserId"].as_i64().unwrap();
            let entry = out.entry(id).or_default();
            entry.nick = u["NickName"].as_str().unwrap().to_owned();
            for t in u["Tags"].as_array().unwrap() {
                let (k, v) = t.as_str().unwrap().split_once(':').unwrap();
                entry.tags.insert((inbox, k.to_owned()), v.to_owned());
            }
        }
    }
    out
}

struct Writer {
    users: Vec<i64>,
    model: Model,
    rng: rand::rngs::StdRng,
    /// RequestIds of acknowledged writes that changed the writer's model.
    changed: Vec<String>,
    /// A write the kill -9 interrupted: the model before and after it.
    unsure: Option<(Model, Model)>,
}

impl Writer {
    /// Up to `n` writes; stops at the first that gets no answer (the server died).
    async fn run(mut self, client: Client, n: usize) -> Self {
        for _ in 0..n {
            let (action, body, after) = random_write(&mut self.rng, &self.users, &self.model);
            match client.call(&action, body.to_string().as_bytes()).await {
                Ok(a) if a.status == 200 => {
                    let v = a.json();
                    if after != self.model {
                        self.changed.push(
                            v["ResponseMetadata"]["RequestId"]
                                .as_str()
                                .unwrap()
                                .to_owned(),
                        );
                    }
                    self.model = after;
                }
                Ok(a) => panic!("{action} {body}: {}", a.json()),
                Err(_) => {
                    self.unsure = Some((self.model.clone(), after));
                    return self;
                }
            }
        }
        self
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_replayed_from_nothing_equals_every_writers_model_and_batch_get_user_across_a_kill_9()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.tags.max_per_user = 100;
    let server = ChildServer::spawn_with(dir.path(), &config);
    let mut writers: Vec<Writer> = (0..3i64)
        .map(|w| Writer {
            users: (1..=8).map(|i| 5000 + w * 100 + i).collect(),
            model: Model::new(),
            rng: rand::rngs::StdRng::seed_from_u64(19 + w as u64),
            changed: Vec::new(),
            unsure: None,
        })
        .collect();
    // Phase 1: writers in parallel, then a kill -9 while they write.
    let mut tasks = Vec::new();
    for w in writers.drain(..) {
        tasks.push(tokio::spawn(w.run(server.client(), 100_000)));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for t in tasks {
        writers.push(t.await.unwrap());
    }
    assert!(
        writers.iter().all(|w| w.unsure.is_some()),
        "every writer was cut off"
    );
    // Restart: each interrupted write either committed or not, as a whole.
    let server = ChildServer::spawn_with(dir.path(), &config);
    let client = server.client();
    for w in &mut writers {
        let (before, after) = w.unsure.take().unwrap();
        let now = served(&client, &w.users).await;
        let mine = |m: &Model| -> Model {
            m.iter()
                .filter(|(u, _)| w.users.contains(u))
                .map(|(u, x)| (*u, x.clone()))
                .collect()
        };
        w.model = if now == mine(&after) {
            after
        } else {
            assert_eq!(
                now,
                mine(&before),
                "an interrupted write left a state of neither side"
            );
            before
        };
    }
    // Phase 2: more writes after the restart.
    let mut tasks = Vec::new();
    for w in writers.drain(..) {
        tasks.push(tokio::spawn(w.run(server.client(), 60)));
    }
    for t in tasks {
        writers.push(t.await.unwrap());
    }
    let events = all_events(&client, APP).await;
    let seqs: Vec<u64> = events.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "Seqs increase");
    let mut replayed = Model::new();
    for e in &events {
        replay(&mut replayed, e).unwrap();
        assert_eq!(e["AppId"], APP);
        assert!(e["Time"].as_i64().unwrap() > 0);
    }
    let request_ids: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["RequestId"].as_str())
        .collect();
    let mut total_changed = 0;
    for w in &writers {
        let mine: Model = replayed
            .iter()
            .filter(|(u, _)| w.users.contains(u))
            .map(|(u, x)| (*u, x.clone()))
            .collect();
        assert_eq!(mine, w.model, "replay equals the writer's model");
        assert_eq!(
            served(&client, &w.users).await,
            w.model,
            "BatchGetUser equals it"
        );
        for id in &w.changed {
            assert!(
                request_ids.contains(id.as_str()),
                "acknowledged {id} has its event"
            );
        }
        total_changed += w.changed.len();
    }
    assert!(
        total_changed > 50,
        "the writers changed things: {total_changed}"
    );
    for e in &events {
        assert_eq!(e["AccessKey"], AK);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_polling_consumer_sees_exactly_the_log_in_order_and_an_empty_poll_answers_empty() {
    let s = TestServer::start().await;
    let client = s.client();
    // Nothing yet: the poll waits and answers empty.
    let r = list(&client, json!({"AppId": APP, "WaitMs": 300})).await;
    assert_eq!(r["Events"], json!([]));
    assert_eq!(r["NextAfter"], "0");
    let consumer = tokio::spawn(follow(s.client(), 200, 7));
    for i in 0..200 {
        register(&client, APP, &[70_000 + i]).await;
    }
    let (seen, polls) = consumer.await.unwrap();
    let log = all_events(&client, APP).await;
    assert_eq!(seen, log, "the consumer saw exactly the log, in order");
    assert!(polls >= 200 / 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_op_writes_append_nothing_and_types_and_user_filters_select() {
    let s = TestServer::start().await;
    let c = s.client();
    let head = |r: &Value| r["NextAfter"].as_str().unwrap().to_owned();
    ok(&call(&c, "RegisterUsers", json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "a", "Tags": ["k:v"]}, {"UserId": 2}]})).await);
    let before = head(&list(&c, json!({"AppId": APP, "Latest": true, "Limit": 1})).await);
    for (action, body) in [
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "Op": 0, "UserTags": [{"UserId": 1, "Tags": {"k": "v"}}]}),
        ),
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "Op": 1, "UserTags": [{"UserId": 1, "Tags": {"absent": ""}}]}),
        ),
        (
            "BatchUpdateUser",
            json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "a"}]}),
        ),
        (
            "RegisterUsers",
            json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "a", "Tags": ["k:v"]}]}),
        ),
        ("UnRegisterUsers", json!({"AppId": APP, "UserIds": [99]})),
        (
            "BatchUpdateUserTags",
            json!({"AppId": APP, "Op": 0, "UserTags": [{"UserId": 99, "Tags": {"k": "v"}}]}),
        ),
    ] {
        call(&c, action, body).await;
    }
    let after = head(&list(&c, json!({"AppId": APP, "Latest": true, "Limit": 1})).await);
    assert_eq!(before, after, "no-op writes appended events");
    // A real change, of two users, then a profile change: filters.
    ok(&call(&c, "BatchUpdateUserTags", json!({"AppId": APP, "Op": 0, "UserTags": [{"UserId": 1, "Tags": {"k": "w"}}, {"UserId": 2, "Tags": {"x": "1"}}]})).await);
    ok(&call(
        &c,
        "BatchUpdateUser",
        json!({"AppId": APP, "Users": [{"UserId": 1, "NickName": "b"}]}),
    )
    .await);
    let r = list(&c, json!({"AppId": APP, "After": before})).await;
    let types: Vec<&str> = r["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["user.tags_changed", "user.tags_changed", "user.updated"]
    );
    let e = &r["Events"][0];
    assert_eq!(
        (e["UserId"].clone(), e["Set"].clone(), e["Previous"].clone()),
        (json!(1), json!({"k": "w"}), json!({"k": "v"}))
    );
    assert_eq!(r["Events"][2]["Previous"], json!({"NickName": "a"}));
    let only = list(
        &c,
        json!({"AppId": APP, "After": before, "Types": ["user.updated"]}),
    )
    .await;
    assert_eq!(only["Events"].as_array().unwrap().len(), 1);
    let by_user = list(&c, json!({"AppId": APP, "After": before, "UserId": 2})).await;
    assert_eq!(by_user["Events"].as_array().unwrap().len(), 1);
    assert_eq!(by_user["Events"][0]["UserId"], 2);
    // Filters that skip everything still move NextAfter to where they scanned.
    let none = list(
        &c,
        json!({"AppId": APP, "After": before, "Types": ["broadcast.recalled"]}),
    )
    .await;
    assert_eq!(none["Events"], json!([]));
    assert_eq!(none["NextAfter"], r["NextAfter"]);
    // Latest: newest first.
    let latest = list(&c, json!({"AppId": APP, "Latest": true, "Limit": 2})).await;
    assert_eq!(latest["Events"][0]["Type"], "user.updated");
    assert_eq!(latest["NextAfter"], r["NextAfter"]);
    // Refusals name the field.
    for (body, field) in [
        (json!({"AppId": APP, "Limit": 0}), "Limit"),
        (json!({"AppId": APP, "Limit": 1001}), "Limit"),
        (json!({"AppId": APP, "WaitMs": 25001}), "WaitMs"),
        (json!({"AppId": APP, "After": "12x"}), "After"),
        (json!({"AppId": APP, "After": 12}), "After"),
        (json!({"AppId": APP, "Types": ["user.deleted"]}), "Types[0]"),
        (json!({"AppId": APP, "Types": []}), "Types"),
        (json!({"AppId": APP, "UserId": 0}), "UserId"),
        (json!({"AppId": APP, "Latest": true, "After": "1"}), "After"),
        (json!({"AppId": APP, "Typess": ["user.updated"]}), "Typess"),
    ] {
        let a = call(&c, "ListEvents", body.clone()).await;
        let v = assert_error(&a, 400, "InvalidParam");
        let m = v["ResponseMetadata"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(m.contains(field), "{body}: {m}");
    }
    assert_error(
        &call(&c, "ListEvents", json!({"AppId": OTHER_APP})).await,
        403,
        "AccessDenied",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_log_within_max_per_app_and_a_cursor_behind_it_is_410() {
    let s = TestServer::with(|c| {
        c.events.max_per_app = 100;
        c.events.trim_interval_s = 1;
    })
    .await;
    let c = s.client();
    register(&c, APP, &[1]).await;
    let first = all_events(&c, APP).await[0].clone();
    // A sustained load: 60 requests of 10 users, each a tags_changed event per user.
    register(&c, APP, &(2..=10).collect::<Vec<_>>()).await;
    for round in 0..60 {
        let entries: Vec<Value> = (1..=10)
            .map(|u| json!({"UserId": u, "Tags": {"round": round.to_string()}}))
            .collect();
        ok(&call(
            &c,
            "BatchUpdateUserTags",
            json!({"AppId": APP, "Op": 0, "UserTags": entries}),
        )
        .await);
    }
    // The trim runs every second; wait (bounded) until it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let kept = loop {
        let kept = all_events(&c, APP).await;
        if kept.len() <= 100 || std::time::Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        kept.len() <= 100,
        "retained {} events, max_per_app 100",
        kept.len()
    );
    assert!(
        kept.len() >= 90,
        "retention keeps the newest ones: {}",
        kept.len()
    );
    assert_eq!(kept.last().unwrap()["Set"]["round"], "59");
    let a = call(
        &c,
        "ListEvents",
        json!({"AppId": APP, "After": first["Seq"]}),
    )
    .await;
    let v = assert_error(&a, 410, "EventCursorExpired");
    assert_eq!(v["ResponseMetadata"]["Error"]["CodeN"], 200006);
    let oldest = list(&c, json!({"AppId": APP, "Limit": 1})).await["OldestSeq"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        v["ResponseMetadata"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains(&oldest)
    );
    // OldestSeq - 1 reads from the oldest retained event on.
    let from = (oldest.parse::<u64>().unwrap() - 1).to_string();
    let r = list(&c, json!({"AppId": APP, "After": from, "Limit": 1000})).await;
    assert_eq!(r["Events"].as_array().unwrap().len(), kept.len());
    assert!(
        s.metrics()
            .await
            .contains("tagcast_event_log_entries_trimmed_total")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_webhook_gets_every_event_in_seq_order_through_failures_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // 30 % of first attempts fail, and every third batch's second attempt too.
    let receiver = Receiver::start(|id: &str, n: usize| {
        let h = id
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        if (n == 0 && h % 10 < 3) || (n == 1 && h % 3 == 0) {
            Answer::Fail
        } else {
            Answer::Ok
        }
    })
    .await;
    let mut config = test_config(&dir.path().join("data"));
    let mut hook = webhook_receiver::webhook(dir.path(), &receiver.url, 1000);
    hook.broadcasts = false;
    hook.events = vec!["user.registered".into(), "user.tags_changed".into()];
    config.webhooks = vec![hook];
    config.delivery.retry_base_ms = 20;
    config.delivery.retry_max_ms = 200;
    let server = ChildServer::spawn_with(dir.path(), &config);
    let client = server.client();
    for i in 0..40 {
        register(&client, APP, &[90_000 + i]).await;
        ok(&call(&client, "BatchUpdateUserTags", json!({"AppId": APP, "Op": 0, "UserTags": [{"UserId": 90_000 + i, "Tags": {"k": "v"}}]})).await);
        // And one type the webhook does not take.
        ok(&call(
            &client,
            "BatchUpdateUser",
            json!({"AppId": APP, "Users": [{"UserId": 90_000 + i, "NickName": "x"}]}),
        )
        .await);
    }
    server.kill9();
    let server = ChildServer::spawn_with(dir.path(), &config);
    let client = server.client();
    for i in 40..60 {
        register(&client, APP, &[90_000 + i]).await;
    }
    let want: Vec<u64> = all_events(&client, APP)
        .await
        .iter()
        .filter(|e| e["Type"] != "user.updated")
        .map(seq)
        .collect();
    // 60 registrations and 40 tag changes (the 40 profile changes are not its types).
    assert_eq!(want.len(), 100);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let acked: BTreeSet<u64> = receiver
            .event_batches()
            .iter()
            .filter(|b| b.acked)
            .flat_map(|b| b.seqs())
            .collect();
        if want.iter().all(|s| acked.contains(s)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} events acknowledged",
            acked.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let batches = receiver.event_batches();
    assert!(batches.iter().any(|b| !b.acked), "some attempts failed");
    // Acknowledged batches, in arrival order, never go back in Seq (a batch sent again
    // after the kill -9 repeats, never reorders), and hold only the webhook's types.
    let (mut high, mut starts) = (0, BTreeSet::new());
    for b in batches.iter().filter(|b| b.acked) {
        let seqs = b.seqs();
        assert!(seqs.windows(2).all(|p| p[0] < p[1]));
        assert!(seqs.len() <= 1000);
        // The next batch starts after the last acknowledged one, or (a restart before its
        // cursor was recorded: at least once) where an acknowledged batch started.
        assert!(
            seqs[0] > high || starts.contains(&seqs[0]),
            "batch {} goes back behind {high}",
            b.delivery_id
        );
        starts.insert(seqs[0]);
        assert_eq!(b.app, APP);
        assert!(b.events.iter().all(|e| e["Type"] != "user.updated"));
        assert_eq!(
            b.delivery_id,
            format!("{APP}-{}-{}", seqs[0], seqs.last().unwrap())
        );
        high = high.max(*seqs.last().unwrap());
    }
    let acked_in_order: Vec<u64> = batches
        .iter()
        .filter(|b| b.acked)
        .flat_map(|b| b.seqs())
        .collect();
    let mut dedup = acked_in_order.clone();
    dedup.dedup();
    let mut sorted = dedup.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, want, "every event, nothing else");
    assert_eq!(receiver.bad_signatures(), 0);
    assert_eq!(
        receiver.overlapping(),
        0,
        "one batch in flight per (webhook, app)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_never_send_the_same_webhook_and_app_at_once_and_the_second_takes_over() {
    if crate::skip::on_embedded("two nodes share one database") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Slow answers: a second sender would overlap the first's batch in flight.
    let receiver =
        Receiver::start(|_: &str, _: usize| Answer::Slow(Duration::from_millis(30))).await;
    let url = crate::infra::fresh_database(crate::infra::shared_postgres());
    let node = |name: &str| {
        pg_node(dir.path(), name, &url, |c| {
            let mut hook = webhook_receiver::webhook(dir.path(), &receiver.url, 1000);
            hook.broadcasts = false;
            hook.events = vec!["user.registered".into()];
            c.webhooks = vec![hook];
            // A short lease, so the survivor takes over soon after the kill.
            c.delivery.lease_ms = 3000;
            c.delivery.timeout_ms = 1000;
        })
    };
    let (a, b) = (node("a"), node("b"));
    let client = a.client();
    for i in 0..30 {
        register(&client, APP, &[60_000 + i]).await;
    }
    // Half of them on the other node; then the first node dies.
    let client = b.client();
    for i in 30..60 {
        register(&client, APP, &[60_000 + i]).await;
    }
    a.kill9();
    for i in 60..90 {
        register(&client, APP, &[60_000 + i]).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let users: BTreeSet<i64> = receiver
            .event_batches()
            .iter()
            .filter(|x| x.acked)
            .flat_map(|x| {
                x.events
                    .iter()
                    .map(|e| e["UserId"].as_i64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        if users.len() == 90 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 90 registrations delivered",
            users.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        receiver.overlapping(),
        0,
        "two senders of one (webhook, app) at once"
    );
    let mut high = 0;
    let mut starts = BTreeSet::new();
    for x in receiver.event_batches().iter().filter(|x| x.acked) {
        let seqs = x.seqs();
        assert!(
            seqs[0] > high || starts.contains(&seqs[0]),
            "{} went back behind {high}",
            x.delivery_id
        );
        starts.insert(seqs[0]);
        high = high.max(*seqs.last().unwrap());
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_polling_consumer_on_another_node_sees_exactly_the_log_in_order() {
    if crate::skip::on_embedded("two nodes share one database") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = crate::infra::fresh_database(crate::infra::shared_postgres());
    let node = |name: &str| pg_node(dir.path(), name, &url, |_| {});
    let (writer, reader) = (node("writer"), node("reader"));
    let consumer = tokio::spawn(follow(reader.client(), 300, 9));
    // Three writers on the first node at once: commits interleave.
    let mut writers = Vec::new();
    for w in 0..3i64 {
        let client = writer.client();
        writers.push(tokio::spawn(async move {
            for i in 0..100 {
                register(&client, APP, &[80_000 + w * 1000 + i]).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let (seen, _) = consumer.await.unwrap();
    let log = all_events(&writer.client(), APP).await;
    assert_eq!(log.len(), 300);
    assert_eq!(
        seen, log,
        "the consumer on the other node saw exactly the log, in order"
    );
}
