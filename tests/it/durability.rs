//! Acknowledged writes survive a graceful restart, a SIGKILL of the server process, and a
//! schema upgrade of an older data directory (newer ones: upgrade.rs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tagcast::store::embedded::{DB_FILE, schema};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn stop_and_restart_on_the_same_data_directory_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let c = s.client();
    register(&c, APP, &[1, 2, 3]).await;
    let a = call(&c, "BatchUpdateUserTags", json!({"AppId": APP, "InboxType": 2, "UserTags": [{"UserId": 2, "Tags": {"a": "1", "b": "2"}}]})).await;
    assert!(failed_infos(&a).is_empty());
    ok(&call(&c, "UnRegisterUsers", json!({"AppId": APP, "UserIds": [3]})).await);
    s.stop().await;

    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let c = s.client();
    assert_eq!(tags_of(&c, APP, 2, 2).await.unwrap(), vec!["a:1", "b:2"]);
    assert_eq!(tags_of(&c, APP, 0, 1).await.unwrap(), Vec::<String>::new());
    assert_eq!(tags_of(&c, APP, 0, 3).await, None);
    s.stop().await;
}

/// The stored tags of `users`, checked against every acknowledged write in `ledger`.
async fn assert_ledger_present(
    server: &ChildServer,
    users: &[i64],
    ledger: &BTreeMap<(i64, String), String>,
) {
    let c = server.client();
    for &user in users {
        let stored = tags_of(&c, APP, 0, user).await.unwrap();
        for ((u, k), v) in ledger {
            if *u == user {
                assert!(
                    stored.contains(&format!("{k}:{v}")),
                    "user {user} lost {k}={v}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_no_acknowledged_write_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<i64> = (1..=8).collect();
    let mut config = test_config(&dir.path().join("data"));
    config.tags.max_per_user = 1_000_000;
    let spawn = || ChildServer::spawn_with(dir.path(), &config);
    let mut server = spawn();
    register(&server.client(), APP, &users).await;
    let ledger: Arc<Mutex<BTreeMap<(i64, String), String>>> = Arc::default();
    let cycles = 10;
    for cycle in 0..cycles {
        // 4 writers, each owning two users, write distinct keys; every acknowledged write
        // goes into the ledger. The server is killed at a random moment while they write.
        let mut tasks = Vec::new();
        for w in 0..4i64 {
            let client = server.client();
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                for r in 0..100_000 {
                    let user = 1 + w * 2 + (r % 2);
                    let (k, v) = (format!("c{cycle}w{w}r{r}"), format!("v{r}"));
                    let body = json!({"AppId": APP, "UserTags": [{"UserId": user, "Tags": {k.clone(): v.clone()}}]});
                    match client.call("BatchUpdateUserTags", body.to_string().as_bytes()).await {
                        Ok(a) if a.status == 200 => {
                            assert_eq!(failed_infos(&a), Vec::<serde_json::Value>::new());
                            ledger.lock().unwrap().insert((user, k), v);
                        }
                        _ => break, // the server is gone: this write was not acknowledged
                    }
                }
            }));
        }
        let before = ledger.lock().unwrap().len();
        while ledger.lock().unwrap().len() == before {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(0..150))).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        server = spawn();
        let snapshot = ledger.lock().unwrap().clone();
        assert_ledger_present(&server, &users, &snapshot).await;
    }
    let acknowledged = ledger.lock().unwrap().len();
    println!(
        "durability: {cycles} SIGKILL cycles, {acknowledged} acknowledged writes, all present after each restart"
    );
    // A graceful stop exits 0, and nothing is lost by it either.
    assert!(server.terminate().success());
    let server = spawn();
    let snapshot = ledger.lock().unwrap().clone();
    assert_ledger_present(&server, &users, &snapshot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_schema_is_migrated_on_start_and_keeps_its_data() {
    if crate::skip::on_postgres(
        "SQLite's schema history from v1; upgrade.rs migrates PostgreSQL's outbox",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let mut conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        let r = schema::migrate_to(&mut conn, 1).unwrap();
        assert_eq!((r.from, r.to), (0, 1));
        conn.execute_batch(
            "INSERT INTO users (app_id, user_id, nick_name, create_time, modify_time) VALUES (666675, 77, 'old', 1, 1);
             INSERT INTO tags (app_id, user_id, inbox_type, key, value) VALUES (666675, 77, 0, 'from', 'v1');
             INSERT INTO tags (app_id, user_id, inbox_type, key, value) VALUES (666675, 78, 0, 'orphan', 'v1');",
        )
        .unwrap();
    }
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    assert_eq!(
        tags_of(&s.client(), APP, 0, 77).await.unwrap(),
        vec!["from:v1"]
    );
    // A tag of no user (v1 allowed one) is gone with the tags table; the user's row holds
    // its own.
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        let tags: String = conn
            .query_row("SELECT tags FROM users WHERE user_id = 77", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(tags, r#"{"0":{"from":"v1"}}"#);
    }
    // The old user got an ordinal: the audience index holds it, and a new user comes after.
    register(&s.client(), APP, &[5]).await;
    let listed = call(
        &s.client(),
        "ListAudience",
        serde_json::json!({"AppId": APP}),
    )
    .await;
    assert_eq!(ok(&listed)["UserIds"], serde_json::json!([77, 5]));
    s.stop().await;
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    assert_eq!(schema::version(&conn).unwrap(), schema::CURRENT_VERSION);
    let index: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'tags_audience'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 0, "v3 drops the SQL audience index");
}
