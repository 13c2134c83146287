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
    let again = tagcast::server::prepare(&config).await;
    assert!(again.is_ok(), "{:?}", again.err());
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
