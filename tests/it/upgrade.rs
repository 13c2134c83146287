//! Rolling upgrades: a database migrated by the next release, whose new steps are
//! additive, is still served by this binary; one that needs newer code is refused with
//! both versions named.

use serde_json::json;

use crate::common::*;
use crate::infra::postgres_backend;

/// Applies this release's migrations plus one more, as the next release would, with that
/// step declaring the oldest schema version that can still use the result.
async fn migrate_one_step_ahead(config: &tagcast::config::Config, usable_from: u32) {
    if postgres_backend() {
        use tagcast::store::postgres::schema::{MIGRATIONS, Migration, migrate_with};
        let mut steps = MIGRATIONS.to_vec();
        steps.push(Migration {
            sql: "ALTER TABLE users ADD COLUMN locale text NOT NULL DEFAULT '';
                  CREATE TABLE next_release (app_id integer NOT NULL, id bigint NOT NULL,
                                             PRIMARY KEY (app_id, id));",
            usable_from,
        });
        let url = config.store.url.clone().unwrap();
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let r = migrate_with(&mut client, &steps).await.unwrap();
        assert_eq!(r.to, MIGRATIONS.len() as u32 + 1);
    } else {
        use tagcast::store::embedded::schema::{MIGRATIONS, Migration, migrate};
        let mut steps = MIGRATIONS.to_vec();
        steps.push(Migration {
            sql: "ALTER TABLE users ADD COLUMN locale TEXT NOT NULL DEFAULT '';
                  CREATE TABLE next_release (app_id INTEGER NOT NULL, id INTEGER NOT NULL,
                                             PRIMARY KEY (app_id, id)) WITHOUT ROWID;",
            usable_from,
        });
        let db = config.data_dir.join(tagcast::store::embedded::DB_FILE);
        let mut conn = rusqlite::Connection::open(db).unwrap();
        let r = migrate(&mut conn, &steps).unwrap();
        assert_eq!(r.to, MIGRATIONS.len() as u32 + 1);
    }
}

fn current() -> u32 {
    if postgres_backend() {
        tagcast::store::postgres::schema::CURRENT_VERSION
    } else {
        tagcast::store::embedded::schema::CURRENT_VERSION
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_one_additive_step_ahead_is_still_served_by_this_release() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    register(&s.client(), APP, &[1]).await;
    let config = s.config.clone();
    s.stop().await;
    migrate_one_step_ahead(&config, current()).await;

    // This release serves it: reads, and writes that do not know the new column.
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let c = s.client();
    register(&c, APP, &[2]).await;
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {"a": "1"}}, {"UserId": 2, "Tags": {"b": "2"}}]}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    assert_eq!(tags_of(&c, APP, 0, 1).await.unwrap(), vec!["a:1"]);
    assert_eq!(tags_of(&c, APP, 0, 2).await.unwrap(), vec!["b:2"]);
    s.stop().await;
    // ... and leaves the newer schema as it found it (no downgrade).
    let again = crate::common::prepare_in_process(&config).await;
    drop(again);
    if !postgres_backend() {
        let conn =
            rusqlite::Connection::open(config.data_dir.join(tagcast::store::embedded::DB_FILE))
                .unwrap();
        assert_eq!(
            tagcast::store::embedded::schema::version(&conn).unwrap(),
            current() + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_that_needs_newer_code_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let config = s.config.clone();
    s.stop().await;
    migrate_one_step_ahead(&config, current() + 1).await;
    let err = tagcast::server::prepare(&config)
        .await
        .err()
        .expect("refused");
    let (ahead, ours) = (current() + 1, current());
    assert!(
        err.contains(&format!(
            "schema version {ahead}, newer than this tagcast understands ({ours})"
        )) && err.contains(&format!("understands schema {ahead} or newer")),
        "{err}"
    );
}

/// Brings the test's database (of `config`) to schema version `v` with this release's
/// migrations.
async fn migrate_to(config: &tagcast::config::Config, v: usize) {
    if postgres_backend() {
        use tagcast::store::postgres::schema::{MIGRATIONS, migrate_with};
        let url = config.store.url.clone().unwrap();
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        migrate_with(&mut client, &MIGRATIONS[..v]).await.unwrap();
    } else {
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let db = config.data_dir.join(tagcast::store::embedded::DB_FILE);
        let mut conn = rusqlite::Connection::open(db).unwrap();
        tagcast::store::embedded::schema::migrate_to(&mut conn, v as u32).unwrap();
    }
}

/// The outbox of one row per page (embedded v4, PostgreSQL v3) becomes lanes: what was
/// delivered, failed and dropped is kept, and a page still pending is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_of_pages_becomes_lanes_and_its_pending_page_is_delivered() {
    use crate::webhook_receiver::{Answer, Receiver, webhook};
    let receiver = Receiver::start(|_, _| Answer::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    let (users_at, pages_at) = if postgres_backend() { (1, 3) } else { (1, 4) };
    migrate_to(&config, users_at).await;
    run_sql(
        &config,
        "INSERT INTO users (app_id, user_id, create_time, modify_time) VALUES
             (666675, 1, 1, 1), (666675, 2, 1, 1), (666675, 3, 1, 1)",
    );
    // Ordinals 0, 1, 2, in user id order.
    migrate_to(&config, pages_at).await;
    let audience: roaring::RoaringBitmap = (0..3).collect();
    let blob = hex::encode(tagcast::broadcast::serialize_audience(&audience));
    let blob = if postgres_backend() {
        format!("'\\x{blob}'::bytea")
    } else {
        format!("X'{blob}'")
    };
    let now = tagcast::store::now_ms();
    let url = receiver.url.clone();
    run_sql(
        &config,
        &format!(
            "INSERT INTO tagcast_broadcasts (id, app_id, inbox_type, sender, msg_type, content,
                 ext, selector, audience_count, create_time, expire_time, audience)
             VALUES (41, 666675, 0, 1, 1, 'before lanes', '{{}}', '{{}}', 3, {now}, {}, {blob});
             INSERT INTO tagcast_outbox (broadcast_id, url, page, state, attempts, next_at, created)
             VALUES (41, '{url}', 0, 1, 1, 0, {now}), (41, '{url}', 1, 0, 2, 0, {now}),
                    (41, '{url}', 2, 2, 9, 0, {now});",
            now + 3_600_000
        ),
    );
    crate::broadcast::fast_delivery(&mut config);
    config.webhooks = vec![webhook(dir.path(), &receiver.url, 1)];
    let s = TestServer::start_in(&dir.path().join("data"), {
        let config = config.clone();
        move |c| *c = config
    })
    .await;
    let got = receiver
        .wait_complete("41", 1, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec![2],
        "page 1 is user 2"
    );
    assert_eq!(receiver.arrivals()[0].delivery_id, "41-1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let g = ok(&call(
            &s.client(),
            "GetBroadcast",
            json!({"AppId": APP, "BroadcastId": "41"}),
        )
        .await);
        let d = &g["Broadcast"]["Delivery"];
        if d["Delivered"] == 2 {
            assert_eq!(
                (
                    d["Pages"].clone(),
                    d["Failed"].clone(),
                    d["Pending"].clone()
                ),
                (json!(3), json!(1), json!(0)),
                "{d}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// PostgreSQL schema 4 (the release before issue 18: one global log behind
/// `tagcast_log_head`, a row per tag) through 5 (the old entries go), 6 (a log per app) and
/// 7 (one row per user): users, tags and old log entries written at schema 4; the new
/// release migrates, builds its state from the rows, answers them,
/// raises `usable_from` to 7, its next write appends the app's first entry of the new log,
/// and every user's tags are in its row as `jsonb`.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_database_of_the_global_log_serves_its_users_after_the_per_app_log_migration() {
    if crate::skip::on_embedded("its schema 4 to 7 of PostgreSQL") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    migrate_to(&config, 4).await;
    run_sql(
        &config,
        "INSERT INTO users (app_id, user_id, ordinal, create_time, modify_time, nick_name)
             VALUES (666675, 1, 0, 1, 1, 'ann'), (666675, 2, 1, 1, 1, '');
         INSERT INTO tags VALUES (666675, 1, 0, 'level', 'gold'), (666675, 2, 0, 'level', 'gold'),
                                 (666675, 2, 0, 'city', 'sh');
         INSERT INTO tagcast_apps VALUES (666675, 2);
         UPDATE tagcast_log_head SET pos = 7;
         INSERT INTO tagcast_changes VALUES (7, 1, '\\x5b5d'::bytea);",
    );
    let s = TestServer::start_in(&dir.path().join("data"), {
        let config = config.clone();
        move |c| *c = config
    })
    .await;
    let c = s.client();
    let count = |f: serde_json::Value| {
        let c = s.client();
        async move {
            ok(&call(&c, "CountAudience", json!({"AppId": APP, "Filter": f})).await)["Count"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(count(json!({"Tag": "level:gold"})).await, 2);
    let got = ok(&call(&c, "BatchGetUser", json!({"AppId": APP, "UserIds": [1, 2]})).await);
    assert_eq!(got["Users"][0]["NickName"], "ann", "{got}");
    assert_eq!(
        got["Users"][1]["Tags"],
        json!(["city:sh", "level:gold"]),
        "{got}"
    );
    let set = json!({"AppId": APP, "UserIds": [1], "Tags": ["city:bj"]});
    assert!(failed_infos(&call(&c, "BatchUpdateUserTags", set).await).is_empty());
    assert_eq!(count(json!({"Key": "city"})).await, 2);
    let url = config.store.url.clone().unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT (SELECT usable_from FROM tagcast_schema),
                    (SELECT log_pos FROM tagcast_apps WHERE app_id = 666675),
                    (SELECT COUNT(*) FROM tagcast_app_log WHERE app_id = 666675),
                    to_regclass('tagcast_log_head') IS NULL,
                    to_regclass('tags') IS NULL,
                    (SELECT tags FROM users WHERE user_id = 1)
                        = '{\"0\": {\"city\": \"bj\", \"level\": \"gold\"}}'::jsonb,
                    (SELECT tags FROM users WHERE user_id = 2)
                        = '{\"0\": {\"city\": \"sh\", \"level\": \"gold\"}}'::jsonb",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), Some(7));
    assert_eq!(row.get::<_, i64>(1), 1);
    assert_eq!(row.get::<_, i64>(2), 1);
    assert!(row.get::<_, bool>(3), "tagcast_log_head is still there");
    assert!(row.get::<_, bool>(4), "the tags table is still there");
    assert!(row.get::<_, bool>(5), "user 1's row does not hold its tags");
    assert!(row.get::<_, bool>(6), "user 2's row does not hold its tags");
}

/// Embedded schema 5 (a row per tag, no change log: the release before issue 18) through 6
/// (the change log) to 7 (one row per user): users and tags written at schema 5 and the
/// saved state of that release beside them; the new release migrates, cannot use the old
/// file (its token is not the store's), builds its state from the rows, answers them,
/// raises `usable_from` to 7, and its next write is the app's first log entry.
#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_store_of_a_row_per_tag_serves_its_users_after_the_one_row_migration() {
    if crate::skip::on_postgres("its schema 5 to 7 of the embedded store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = test_config(&data);
    migrate_to(&config, 5).await;
    run_sql(
        &config,
        "INSERT INTO users (app_id, user_id, ordinal, create_time, modify_time, nick_name)
             VALUES (666675, 1, 0, 1, 1, 'ann'), (666675, 2, 1, 1, 1, '');
         INSERT INTO tags VALUES (666675, 1, 0, 'level', 'gold'), (666675, 2, 0, 'level', 'gold'),
                                 (666675, 2, 0, 'city', 'sh'), (666675, 2, 4, 'vip', '1');
         INSERT INTO tagcast_apps VALUES (666675, 2);",
    );
    // The previous release's saved state (another format, no token of this store).
    std::fs::write(
        data.join(tagcast::store::embedded::SNAPSHOT_FILE),
        b"TCIDX001 an older saved state",
    )
    .unwrap();
    let server = ChildServer::spawn_logged(dir.path(), &config, "info");
    let built = server.wait_for_log("audience index built").await;
    assert!(
        built.iter().any(|l| l.contains("from=\"store\"")),
        "{built:?}"
    );
    let c = server.client();
    let count = |f: serde_json::Value, inbox: u32| {
        let c = server.client();
        async move {
            ok(&call(
                &c,
                "CountAudience",
                json!({"AppId": APP, "InboxType": inbox, "Filter": f}),
            )
            .await)["Count"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(count(json!({"Tag": "level:gold"}), 0).await, 2);
    assert_eq!(count(json!({"Tag": "vip:1"}), 4).await, 1);
    let got = ok(&call(&c, "BatchGetUser", json!({"AppId": APP, "UserIds": [1, 2]})).await);
    assert_eq!(got["Users"][0]["NickName"], "ann", "{got}");
    assert_eq!(
        got["Users"][1]["Tags"],
        json!(["city:sh", "level:gold"]),
        "{got}"
    );
    let set = json!({"AppId": APP, "UserIds": [1], "Tags": ["city:bj"]});
    assert!(failed_infos(&call(&c, "BatchUpdateUserTags", set).await).is_empty());
    assert_eq!(count(json!({"Key": "city"}), 0).await, 2);
    server.terminate();
    let db = rusqlite::Connection::open(data.join(tagcast::store::embedded::DB_FILE)).unwrap();
    let (usable, entries, tags_table, one, two): (String, i64, i64, String, String) = db
        .query_row(
            "SELECT (SELECT value FROM tagcast_meta WHERE key = 'usable_from'),
                    (SELECT COUNT(*) FROM tagcast_log WHERE app_id = 666675),
                    (SELECT COUNT(*) FROM sqlite_master WHERE name = 'tags'),
                    (SELECT tags FROM users WHERE user_id = 1),
                    (SELECT tags FROM users WHERE user_id = 2)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(usable, "7");
    assert!(entries >= 1, "the write after the migration logged nothing");
    assert_eq!(tags_table, 0, "the tags table is still there");
    assert_eq!(one, r#"{"0":{"city":"bj","level":"gold"}}"#);
    assert_eq!(two, r#"{"0":{"city":"sh","level":"gold"},"4":{"vip":"1"}}"#);
}
