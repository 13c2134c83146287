//! The change log as the record of who changed what (issue 18, what issue 19's events
//! read): every entry keeps each request's RequestId and AccessKey beside its changes and
//! their previous values, on the suite's backend; an import's changes carry
//! `import-<id>` and an empty AccessKey (API.md §9).

use serde_json::json;
use tagcast::model::{Change, Written, decode_entry};

use crate::common::*;

/// Every request recorded in `app`'s change log, in log order.
async fn logged(config: &tagcast::config::Config, app: i64) -> Vec<Written> {
    let bodies: Vec<Vec<u8>> = match &config.store.url {
        Some(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .query(
                    "SELECT body FROM tagcast_app_log WHERE app_id = $1 ORDER BY pos",
                    &[&(app as i32)],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                config.data_dir.join(tagcast::store::embedded::DB_FILE),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let mut stmt = conn
                .prepare("SELECT body FROM tagcast_log WHERE app_id = ?1 ORDER BY pos")
                .unwrap();
            stmt.query_map([app], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
    };
    bodies
        .iter()
        .flat_map(|b| decode_entry(b).expect("every entry decodes"))
        .collect()
}

fn request_id(answer: &tagcast::call::Answer) -> String {
    answer.json()["ResponseMetadata"]["RequestId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_log_entry_names_the_request_and_key_that_made_its_changes() {
    let s = TestServer::start().await;
    let c = s.client();
    let mut requests = Vec::new();
    let a = call(
        &c,
        "RegisterUsers",
        json!({"AppId": APP, "Users": [{"UserId": 1}, {"UserId": 2}]}),
    )
    .await;
    ok(&a);
    requests.push(request_id(&a));
    for value in ["gold", "silver"] {
        let a = call(
            &c,
            "BatchUpdateUserTags",
            json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {"level": value}}]}),
        )
        .await;
        assert!(failed_infos(&a).is_empty());
        requests.push(request_id(&a));
    }
    // Concurrent writers share commits: each request's changes stay under its own id.
    let mut tasks = Vec::new();
    for user in [1, 2] {
        let c = s.client();
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"AppId": APP, "UserTags": [{"UserId": user, "Tags": {"city": "sh"}}]});
            call(&c, "BatchUpdateUserTags", body).await
        }));
    }
    let mut city = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert!(failed_infos(&a).is_empty());
        city.push(request_id(&a));
    }
    // A request that changes nothing is in no entry.
    let noop = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "Op": 1, "UserTags": [{"UserId": 2, "Tags": {"absent": ""}}]}),
    )
    .await;
    assert!(failed_infos(&noop).is_empty());

    let log = logged(&s.config, APP).await;
    let ids: Vec<&str> = log.iter().map(|w| w.origin.request_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "one part per changing request: {ids:?}");
    assert_eq!(
        ids[..3],
        requests.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    for id in &city {
        assert!(ids.contains(&id.as_str()), "{id} not in {ids:?}");
    }
    assert!(!ids.contains(&request_id(&noop).as_str()));
    assert!(log.iter().all(|w| w.origin.access_key == AK), "{log:?}");
    // The overwrite carries the value it replaced.
    assert!(
        matches!(
            &log[2].changes[..],
            [Change::SetTag { user: 1, key, old: Some(old), value, .. }]
                if key == "level" && old == "gold" && value == "silver"
        ),
        "{:?}",
        log[2]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_is_logged_as_one_import_request_without_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = test_config(&tmp.path().join("data"));
    let cfg = tmp.path().join("tagcast.toml");
    std::fs::write(&cfg, config.to_toml()).unwrap();
    let file = tmp.path().join("users.jsonl");
    let lines: String = (1..=2500)
        .map(|u| format!("{{\"UserId\":{u},\"Tags\":[\"level:gold\"]}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let app = APP.to_string();
    let (code, out, err) = run_tagcast(
        &[
            "import",
            "--config",
            cfg.to_str().unwrap(),
            "--app",
            &app,
            file.to_str().unwrap(),
        ],
        tmp.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let log = logged(&config, APP).await;
    // The embedded import saves the state as it closes the store and trims the log behind
    // it, keeping each app's head entry: what is left is the last commit's.
    assert!(!log.is_empty(), "no entry left of the import");
    let id = &log[0].origin.request_id;
    assert!(id.starts_with("import-"), "{id}");
    assert!(
        log.iter()
            .all(|w| &w.origin.request_id == id && w.origin.access_key.is_empty()),
        "{log:?}"
    );
    let registered = log
        .iter()
        .flat_map(|w| &w.changes)
        .filter(|c| matches!(c, Change::Registered { .. }))
        .count();
    if config.store.url.is_some() {
        // PostgreSQL's log is trimmed by the serving nodes only, after 5 minutes.
        assert_eq!(registered, 2500);
    } else {
        assert!((1..=2500).contains(&registered), "{registered}");
    }
}
