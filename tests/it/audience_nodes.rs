//! The audience index on several nodes (PostgreSQL): every node follows the change log, so
//! a count on one node includes every write another node acknowledged before it; nodes
//! started late catch up, a node that fell behind the trimmed log rebuilds, and a log
//! position cannot be taken while an earlier one is still uncommitted.

use std::time::Duration;

use serde_json::{Value, json};
use tagcast::call::Client;
use tagcast::config::Config;

use crate::common::*;
use crate::infra::{fresh_database, shared_postgres};

fn node_config(dir: &std::path::Path, db_url: &str) -> Config {
    let mut c = base_config(dir);
    c.store.kind = tagcast::config::StoreKind::Postgres;
    c.store.url = Some(db_url.to_owned());
    c.tags.max_per_user = 1000;
    c
}

fn node(root: &std::path::Path, name: &str, config: &Config) -> ChildServer {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    ChildServer::spawn_with(&dir, config)
}

async fn count(client: &Client, filter: Value) -> u64 {
    let a = call(
        client,
        "CountAudience",
        json!({"AppId": APP, "Filter": filter}),
    )
    .await;
    ok(&a)["Count"].as_u64().unwrap()
}

async fn tag(client: &Client, users: &[i64], tags: &[&str], op: i32) {
    let a = call(
        client,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserIds": users, "Tags": tags, "Op": op}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
}

async fn sql_count(url: &str, sql: &str) -> u64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
    drop(client);
    let _ = driver.await;
    n as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_count_on_one_node_includes_what_the_other_acknowledged_just_before() {
    let tmp = tempfile::tempdir().unwrap();
    let config = node_config(tmp.path(), &fresh_database(shared_postgres()));
    let (a, b) = (
        node(tmp.path(), "a", &config),
        node(tmp.path(), "b", &config),
    );
    let (ca, cb) = (a.client(), b.client());
    let ids: Vec<i64> = (1..=60).collect();
    register(&ca, APP, &ids).await;
    assert_eq!(count(&cb, json!({"Not": {"Key": "x"}})).await, 60);
    for round in 0..60_i64 {
        let (writer, reader) = if round % 2 == 0 {
            (&ca, &cb)
        } else {
            (&cb, &ca)
        };
        tag(writer, &[round + 1], &["level:gold"], 0).await;
        assert_eq!(
            count(reader, json!({"Tag": "level:gold"})).await,
            round as u64 + 1,
            "round {round}"
        );
    }
    for round in 0..10_i64 {
        let (writer, reader) = if round % 2 == 0 {
            (&cb, &ca)
        } else {
            (&ca, &cb)
        };
        call(
            writer,
            "UnRegisterUsers",
            json!({"AppId": APP, "UserIds": [round + 1]}),
        )
        .await;
        assert_eq!(
            count(reader, json!({"Key": "level"})).await,
            59 - round as u64
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_concurrent_writers_on_both_nodes_every_node_counts_what_sql_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let url = fresh_database(shared_postgres());
    let config = node_config(tmp.path(), &url);
    let (a, b) = (
        node(tmp.path(), "a", &config),
        node(tmp.path(), "b", &config),
    );
    let ids: Vec<i64> = (1..=200).collect();
    register(&a.client(), APP, &ids).await;
    let mut writers = Vec::new();
    for w in 0..4_i64 {
        let client = if w % 2 == 0 { a.client() } else { b.client() };
        writers.push(tokio::spawn(async move {
            for i in 0..60_i64 {
                let users: Vec<i64> = (0..5)
                    .map(|j| 1 + (w * 37 + i * 13 + j * 41) % 200)
                    .collect();
                let value = ["a", "b", "c"][((w + i) % 3) as usize];
                // Another writer may have just unregistered one of these users: a
                // UserNotFound is fine here, the counts below are checked against SQL.
                let set = json!({"AppId": APP, "UserIds": users, "Tags": [format!("level:{value}"), "vip"]});
                ok(&call(&client, "BatchUpdateUserTags", set).await);
                if i % 7 == 0 {
                    let unset = json!({"AppId": APP, "UserIds": &users[..2], "Tags": ["vip"], "Op": 1});
                    ok(&call(&client, "BatchUpdateUserTags", unset).await);
                }
                if i % 11 == 0 {
                    let u = users[4];
                    call(
                        &client,
                        "UnRegisterUsers",
                        json!({"AppId": APP, "UserIds": [u]}),
                    )
                    .await;
                    register(&client, APP, &[u]).await;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let checks = [
        (
            json!({"Tag": "level:a"}),
            "SELECT COUNT(*) FROM tags WHERE key = 'level' AND value = 'a'",
        ),
        (
            json!({"Key": "vip"}),
            "SELECT COUNT(*) FROM tags WHERE key = 'vip'",
        ),
        (
            json!({"And": [{"Tag": "level:b"}, {"Not": {"Key": "vip"}}]}),
            "SELECT COUNT(*) FROM tags t WHERE key = 'level' AND value = 'b' AND NOT EXISTS
             (SELECT 1 FROM tags v WHERE v.user_id = t.user_id AND v.key = 'vip')",
        ),
        (
            json!({"Not": {"Key": "nothing"}}),
            "SELECT COUNT(*) FROM users",
        ),
    ];
    for (filter, sql) in checks {
        let expected = sql_count(&url, sql).await;
        for node in [&a, &b] {
            assert_eq!(
                count(&node.client(), filter.clone()).await,
                expected,
                "{filter}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_late_and_a_node_behind_the_trimmed_log_both_answer_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let url = fresh_database(shared_postgres());
    let config = node_config(tmp.path(), &url);
    let a = node(tmp.path(), "a", &config);
    let ids: Vec<i64> = (1..=100).collect();
    register(&a.client(), APP, &ids).await;
    tag(&a.client(), &ids[..40], &["city:sh"], 0).await;
    // Started after the writes: it builds from the tables.
    let b = node(tmp.path(), "b", &config);
    assert_eq!(count(&b.client(), json!({"Tag": "city:sh"})).await, 40);
    // B stops applying; A writes; the log entries B has not applied are trimmed.
    let pid = b.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    tag(&a.client(), &ids[40..70], &["city:sh"], 0).await;
    tag(&a.client(), &ids[..10], &["city"], 1).await;
    crate::infra::execute(&url, "DELETE FROM tagcast_changes");
    tag(&a.client(), &ids[90..], &["city:sh"], 0).await;
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    // 40 + 30 - 10 + 10
    assert_eq!(count(&b.client(), json!({"Tag": "city:sh"})).await, 70);
    assert_eq!(count(&a.client(), json!({"Tag": "city:sh"})).await, 70);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_write_is_acknowledged_while_an_earlier_log_position_is_uncommitted() {
    let tmp = tempfile::tempdir().unwrap();
    let url = fresh_database(shared_postgres());
    let mut config = node_config(tmp.path(), &url);
    config.store.timeout_ms = 10_000;
    let a = node(tmp.path(), "a", &config);
    let b = node(tmp.path(), "b", &config);
    register(&a.client(), APP, &[1, 2]).await;
    // Another transaction takes the next position and holds it, uncommitted: a commit
    // that took a later position could become visible before it.
    let (holder, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    holder
        .batch_execute("BEGIN; UPDATE tagcast_log_head SET pos = pos + 1")
        .await
        .unwrap();
    let writer = a.client();
    let write = tokio::spawn(async move { tag(&writer, &[1], &["level:gold"], 0).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !write.is_finished(),
        "a write was acknowledged past an uncommitted position"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    write.await.unwrap();
    assert_eq!(count(&b.client(), json!({"Tag": "level:gold"})).await, 1);
    assert_eq!(count(&a.client(), json!({"Tag": "level:gold"})).await, 1);
}
