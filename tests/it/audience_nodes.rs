//! The state on several nodes (PostgreSQL): every node follows the apps' change logs, so a
//! count on one node includes every write another node acknowledged before it; nodes
//! started late catch up, a node that fell behind the trimmed log rebuilds, a node
//! restarts from its snapshot while the other writes, and an app's log position cannot
//! be taken while an earlier one is still uncommitted (while other apps go on).

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

/// A node with its own data directory (each keeps its snapshot file there).
fn node(root: &std::path::Path, name: &str, config: &Config) -> ChildServer {
    let (dir, config) = node_dir(root, name, config);
    ChildServer::spawn_with(&dir, &config)
}

/// [`node`], keeping its log lines at info.
fn node_logged(root: &std::path::Path, name: &str, config: &Config) -> ChildServer {
    let (dir, config) = node_dir(root, name, config);
    ChildServer::spawn_logged(&dir, &config, "info")
}

fn node_dir(root: &std::path::Path, name: &str, config: &Config) -> (std::path::PathBuf, Config) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = config.clone();
    config.data_dir = dir.clone();
    (dir, config)
}

async fn count(client: &Client, filter: Value) -> u64 {
    count_in(client, APP, filter).await
}

async fn count_in(client: &Client, app: i64, filter: Value) -> u64 {
    let a = call(
        client,
        "CountAudience",
        json!({"AppId": app, "Filter": filter}),
    )
    .await;
    ok(&a)["Count"].as_u64().unwrap()
}

async fn tag(client: &Client, users: &[i64], tags: &[&str], op: i32) {
    tag_in(client, APP, users, tags, op).await
}

async fn tag_in(client: &Client, app: i64, users: &[i64], tags: &[&str], op: i32) {
    let a = call(
        client,
        "BatchUpdateUserTags",
        json!({"AppId": app, "UserIds": users, "Tags": tags, "Op": op}),
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

/// Each (filter, SQL count) pair: every node's CountAudience equals the SQL count.
async fn every_node_counts_what_sql_counts(
    url: &str,
    nodes: &[&ChildServer],
    checks: &[(Value, &str)],
) {
    for (filter, sql) in checks {
        let expected = sql_count(url, sql).await;
        for node in nodes {
            assert_eq!(
                count(&node.client(), filter.clone()).await,
                expected,
                "{filter}"
            );
        }
    }
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
            "SELECT COUNT(*) FROM users WHERE tags->'0'->>'level' = 'a'",
        ),
        (
            json!({"Key": "vip"}),
            "SELECT COUNT(*) FROM users WHERE tags->'0' ? 'vip'",
        ),
        (
            json!({"And": [{"Tag": "level:b"}, {"Not": {"Key": "vip"}}]}),
            "SELECT COUNT(*) FROM users WHERE tags->'0'->>'level' = 'b' AND NOT COALESCE(tags->'0' ? 'vip', false)",
        ),
        (
            json!({"Not": {"Key": "nothing"}}),
            "SELECT COUNT(*) FROM users",
        ),
    ];
    every_node_counts_what_sql_counts(&url, &[&a, &b], &checks).await;
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
    crate::infra::execute(&url, "DELETE FROM tagcast_app_log");
    tag(&a.client(), &ids[90..], &["city:sh"], 0).await;
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    // 40 + 30 - 10 + 10
    assert_eq!(count(&b.client(), json!({"Tag": "city:sh"})).await, 70);
    assert_eq!(count(&a.client(), json!({"Tag": "city:sh"})).await, 70);
}

/// The no-skip rule, per app: a write of an app is not acknowledged while an earlier
/// position of that app's log is taken and uncommitted (a transaction from a separate SQL
/// session holds it), while writes of two other apps are acknowledged and counted on the
/// other node meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn no_write_of_an_app_is_acknowledged_while_its_earlier_log_position_is_uncommitted_and_other_apps_go_on()
 {
    const THIRD: i64 = 3003;
    let tmp = tempfile::tempdir().unwrap();
    let url = fresh_database(shared_postgres());
    let mut config = node_config(tmp.path(), &url);
    config.store.timeout_ms = 10_000;
    config.accounts[0].apps.push(THIRD);
    let a = node(tmp.path(), "a", &config);
    let b = node(tmp.path(), "b", &config);
    for app in [APP, APP2, THIRD] {
        register(&a.client(), app, &[1, 2]).await;
    }
    // Another transaction takes APP's next position and holds it, uncommitted: a commit
    // that took a later position could become visible before it.
    let (holder, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    holder
        .batch_execute(&format!(
            "BEGIN; UPDATE tagcast_apps SET log_pos = log_pos + 1 WHERE app_id = {APP}"
        ))
        .await
        .unwrap();
    let writer = a.client();
    let write = tokio::spawn(async move { tag(&writer, &[1], &["level:gold"], 0).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for app in [APP2, THIRD] {
        tag_in(&a.client(), app, &[1, 2], &["level:gold"], 0).await;
        assert_eq!(
            count_in(&b.client(), app, json!({"Tag": "level:gold"})).await,
            2,
            "AppId {app} while AppId {APP}'s position is held"
        );
    }
    assert!(
        !write.is_finished(),
        "a write was acknowledged past an uncommitted position of its app"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    write.await.unwrap();
    assert_eq!(count(&b.client(), json!({"Tag": "level:gold"})).await, 1);
    assert_eq!(count(&a.client(), json!({"Tag": "level:gold"})).await, 1);
}

/// What BatchGetUser answers for `ids` in inbox 0, as comparable JSON.
async fn users_of(client: &Client, ids: &[i64]) -> Value {
    let a = call(
        client,
        "BatchGetUser",
        json!({"AppId": APP, "UserIds": ids}),
    )
    .await;
    ok(&a)["Users"].clone()
}

/// A node killed with -9 restarts from its snapshot file while the other node keeps
/// writing: its start loads the file and replays the log after it, and then both nodes
/// count what SQL counts and answer BatchGetUser alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarts_from_its_snapshot_while_the_other_writes_and_both_answer_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let url = fresh_database(shared_postgres());
    let mut config = node_config(tmp.path(), &url);
    config.store.snapshot_interval_s = 1;
    let a = node(tmp.path(), "a", &config);
    let b = node_logged(tmp.path(), "b", &config);
    let ids: Vec<i64> = (1..=300).collect();
    register(&a.client(), APP, &ids).await;
    tag(&a.client(), &ids[..100], &["city:sh"], 0).await;
    tag(&a.client(), &ids[100..150], &["city:sh"], 0).await;
    // A save after those writes.
    assert_eq!(count(&b.client(), json!({"Tag": "city:sh"})).await, 150);
    let saves = b.log_lines_with("state saved").len();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.log_lines_with("state saved").len() == saves {
        assert!(std::time::Instant::now() < deadline, "no save within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.kill9();
    let writer = a.client();
    let writes = tokio::spawn(async move {
        for i in 0..120_i64 {
            let users = [1 + (i * 7) % 300, 1 + (i * 13 + 5) % 300];
            let value = ["gz", "bj", "sz"][(i % 3) as usize];
            tag(&writer, &users, &[&format!("city:{value}"), "vip"], 0).await;
            if i % 9 == 0 {
                tag(&writer, &users[..1], &["vip"], 1).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = node_logged(tmp.path(), "b", &config);
    let built = b.wait_for_log("audience index built").await;
    assert!(
        built
            .iter()
            .any(|l| l.contains("from=\"snapshot\"") && !l.contains("replayed=0")),
        "the restart did not load its snapshot and replay the log: {built:?}"
    );
    writes.await.unwrap();
    let checks = [
        (
            json!({"Tag": "city:sh"}),
            "SELECT COUNT(*) FROM users WHERE tags->'0'->>'city' = 'sh'",
        ),
        (
            json!({"Tag": "city:gz"}),
            "SELECT COUNT(*) FROM users WHERE tags->'0'->>'city' = 'gz'",
        ),
        (
            json!({"Key": "vip"}),
            "SELECT COUNT(*) FROM users WHERE tags->'0' ? 'vip'",
        ),
        (
            json!({"Not": {"Key": "city"}}),
            "SELECT COUNT(*) FROM users WHERE NOT COALESCE(tags->'0' ? 'city', false)",
        ),
    ];
    every_node_counts_what_sql_counts(&url, &[&a, &b], &checks).await;
    for chunk in ids.chunks(50) {
        assert_eq!(
            users_of(&a.client(), chunk).await,
            users_of(&b.client(), chunk).await
        );
    }
}

/// Batches that mix apps (group commit folds whatever is queued) lock the apps' rows in
/// one order on every node: writers of three apps on both nodes at once, registering new
/// users (which locks every app of the batch first) and tagging existing ones (which locks
/// only the apps changed, at the append), never fail (a deadlock would), and every node
/// then counts what SQL counts in each app.
#[tokio::test(flavor = "multi_thread")]
async fn writers_of_three_apps_on_both_nodes_never_deadlock_and_every_node_counts_what_sql_counts()
{
    const THIRD: i64 = 3003;
    let apps = [APP, APP2, THIRD];
    let tmp = tempfile::tempdir().unwrap();
    let url = fresh_database(shared_postgres());
    let mut config = node_config(tmp.path(), &url);
    config.accounts[0].apps.push(THIRD);
    let a = node(tmp.path(), "a", &config);
    let b = node(tmp.path(), "b", &config);
    for app in apps {
        register(&a.client(), app, &(1..=50).collect::<Vec<_>>()).await;
    }
    let mut writers = Vec::new();
    for w in 0..8_i64 {
        let client = if w % 2 == 0 { a.client() } else { b.client() };
        writers.push(tokio::spawn(async move {
            for i in 0..80_i64 {
                let app = apps[((w + i) % 3) as usize];
                if i % 4 == 0 {
                    // New users: this batch locks the rows of every app it names.
                    register(&client, app, &[1000 + w * 100 + i]).await;
                } else {
                    let users = [1 + (w * 7 + i) % 50, 1 + (w * 11 + i * 3) % 50];
                    let value = ["a", "b"][(i % 2) as usize];
                    tag_in(&client, app, &users, &[&format!("level:{value}")], 0).await;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for app in apps {
        for (filter, sql) in [
            (
                json!({"Tag": "level:a"}),
                format!(
                    "SELECT COUNT(*) FROM users WHERE app_id = {app} AND tags->'0'->>'level' = 'a'"
                ),
            ),
            (
                json!({"Not": {"Key": "level"}}),
                format!(
                    "SELECT COUNT(*) FROM users WHERE app_id = {app}
                         AND NOT COALESCE(tags->'0' ? 'level', false)"
                ),
            ),
        ] {
            let expected = sql_count(&url, &sql).await;
            for node in [&a, &b] {
                assert_eq!(
                    count_in(&node.client(), app, filter.clone()).await,
                    expected,
                    "AppId {app}: {filter}"
                );
            }
        }
    }
}
