//! `tagcast check` on either backend, while the server runs: clean on a store written
//! through the API, and each problem named once rows break tagcast's rules.

use serde_json::json;

use crate::common::*;
use crate::infra::postgres_backend;

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_a_served_store_and_names_rows_that_break_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    let server = ChildServer::spawn_with(dir.path(), &config);
    let c = server.client();
    register(&c, APP, &[1, 2]).await;
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {"level": "gold"}}]}),
    )
    .await;
    assert!(failed_infos(&a).is_empty());
    let target: Vec<String> = match &config.store.url {
        Some(url) => vec!["--store-url".into(), url.clone()],
        None => vec!["--data-dir".into(), config.data_dir.display().to_string()],
    };
    let check = || {
        let mut args = vec!["check".to_owned()];
        args.extend(target.iter().cloned());
        let dir = dir.path().to_owned();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tagcast(&refs, &dir).await
        }
    };
    if postgres_backend() {
        // Debian's PostgreSQL ships amcheck; with it the indexes are verified too.
        run_sql(&config, "CREATE EXTENSION IF NOT EXISTS amcheck");
    }
    let (code, stdout, stderr) = check().await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("0 problem(s), 0 warning(s)"), "{stdout}");
    assert!(stdout.contains("2 users in 1 apps, 1 tags"), "{stdout}");
    if postgres_backend() {
        assert!(stdout.contains("ok      amcheck"), "{stdout}");
        // A role that may read the tables but not run amcheck: a warning, and every
        // other check still runs.
        let url = config.store.url.clone().unwrap();
        let role = format!("checker_{}", url.rsplit('/').next().unwrap());
        run_sql(
            &config,
            &format!(
                "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
            ),
        );
        let as_role = url.replacen("tagcast@", &format!("{role}@"), 1);
        let dir = dir.path().to_owned();
        let (code, stdout, stderr) = run_tagcast(&["check", "--store-url", &as_role], &dir).await;
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(
            stdout.contains("warning amcheck        installed, but this role may not run it")
                && stdout.contains("ok      tag cap"),
            "{stdout}"
        );
    } else {
        let pid = server.child.id();
        assert!(
            stdout.contains(&format!("online: served by pid {pid}")),
            "{stdout}"
        );
        assert!(stdout.contains("ok      integrity"), "{stdout}");
    }

    // Rows the API could never have written: a tags column of the wrong shape, a key the
    // decoder refuses, an Ext that is no object.
    let (bad, colon) = match config.store.url.is_some() {
        true => (
            "'{\"0\": {\"k\": 1}}'::jsonb",
            "'{\"0\": {\"a:b\": \"v\"}}'::jsonb",
        ),
        false => ("'{\"0\":{\"k\":1}}'", "'{\"0\":{\"a:b\":\"v\"}}'"),
    };
    run_sql(
        &config,
        &format!(
            "UPDATE users SET tags = {bad} WHERE app_id = {APP} AND user_id = 1;
             UPDATE users SET tags = {colon} WHERE app_id = {APP} AND user_id = 2;
             UPDATE users SET ext = '[1]' WHERE app_id = {APP} AND user_id = 2;"
        ),
    );
    let (code, stdout, _) = check().await;
    assert_eq!(code, 1, "{stdout}");
    for expected in [
        "FAILED  users.tags     1 users hold tags that are not a JSON object of inboxes",
        "FAILED  users.ext      1 users hold an Ext that is not a JSON object",
        "warning tag keys       1 distinct keys break today's tag rules (first: \"a:b\": contains ':')",
        "tagcast check: 2 problem(s), 1 warning(s)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    assert!(server.terminate().success());
}
