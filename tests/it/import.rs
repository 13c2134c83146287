//! `tagcast import`: JSON Lines into the configured store (the suite's backend), validated
//! as RegisterUsers is; bad lines skipped or fatal; refused while a server holds an
//! embedded store's directory; on PostgreSQL, a running server's audience follows.

use std::io::Write;
use std::process::Stdio;

use serde_json::json;

use crate::common::*;
use crate::infra::postgres_backend;

const LINES: &str = r#"{"UserId":1,"NickName":"a","Tags":["level:gold","city:sh"]}
{"UserId":2,"Tags":["level:gold"]}

{"UserId":3,"Tags":["bad:key:is:fine","x"],"Ext":{"k":"v"}}
not json
{"UserId":4,"Tags":["bad\u0001key:v"]}
{"UserId":0}
{"UserId":5,"Tags":["level:silver"]}
"#;

async fn count(c: &tagcast::call::Client, filter: serde_json::Value, inbox: u32) -> u64 {
    let a = call(
        c,
        "CountAudience",
        json!({"AppId": APP, "InboxType": inbox, "Filter": filter}),
    )
    .await;
    ok(&a)["Count"].as_u64().unwrap()
}

fn write_config(dir: &std::path::Path) -> (tagcast::config::Config, std::path::PathBuf) {
    let config = test_config(&dir.join("data"));
    let path = dir.join("tagcast.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    (config, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_lines_are_skipped_and_reported_or_stop_the_run_and_the_rest_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, path) = write_config(tmp.path());
    let file = tmp.path().join("users.jsonl");
    std::fs::write(&file, LINES).unwrap();
    let cfg = path.to_str().unwrap();
    let app = APP.to_string();

    // The default stops at the first bad line (5): lines 1-4 are in, nothing after.
    let (code, out, err) = run_tagcast(
        &[
            "import",
            "--config",
            cfg,
            "--app",
            &app,
            file.to_str().unwrap(),
        ],
        tmp.path(),
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("stopped at line 5"), "{err}");
    assert!(out.contains("3 users imported"), "{out}");

    // Skip: every bad line named with its number and why; exit 3.
    let (code, out, err) = run_tagcast(
        &[
            "import",
            "--config",
            cfg,
            "--app",
            &app,
            "--on-error",
            "skip",
            file.to_str().unwrap(),
        ],
        tmp.path(),
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("4 users imported") && out.contains("8 lines read, 3 refused"),
        "{out}"
    );
    assert!(err.contains("line 5: not valid JSON: "), "{err}");
    assert!(!err.contains("line 1 column"), "a line is one line: {err}");
    assert!(err.contains("line 6: user 4: tag key"), "{err}");
    assert!(err.contains("line 7: UserId must be a positive"), "{err}");

    // Standard input, into another inbox.
    let mut child = tagcast_command()
        .args([
            "import", "--config", cfg, "--app", &app, "--inbox", "7", "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"UserId\":9,\"Tags\":[\"vip\"]}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = TestServer::start_in(&config.data_dir, |_| {}).await;
    let c = server.client();
    assert_eq!(count(&c, json!({"Tag": "level:gold"}), 0).await, 2);
    assert_eq!(count(&c, json!({"Not": {"Key": "nothing"}}), 0).await, 5);
    assert_eq!(count(&c, json!({"Tag": "vip:"}), 7).await, 1);
    assert_eq!(
        tags_of(&c, APP, 0, 3).await.unwrap(),
        vec!["bad:key:is:fine", "x:"]
    );
    let got = ok(&get_users(&c, &[1]).await);
    assert_eq!(got["Users"][0]["NickName"], "a");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_server_refuses_an_embedded_import_or_follows_a_postgres_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, path) = write_config(tmp.path());
    let file = tmp.path().join("users.jsonl");
    const USERS: u64 = 100_000;
    let lines: String = (1..=USERS)
        .map(|i| format!("{{\"UserId\":{i},\"Tags\":[\"cohort:c{}\"]}}\n", i % 5))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let server = ChildServer::spawn_with(tmp.path(), &config);
    let args = [
        "import",
        "--config",
        path.to_str().unwrap(),
        "--app",
        &APP.to_string(),
        file.to_str().unwrap(),
    ];
    let (code, out, err) = run_tagcast(&args, tmp.path()).await;
    let cohort = |server: &ChildServer| {
        let c = server.client();
        async move {
            let a = call(
                &c,
                "CountAudience",
                json!({"AppId": APP, "Filter": {"Tag": "cohort:c0"}}),
            )
            .await;
            ok(&a)["Count"].as_u64().unwrap()
        }
    };
    if postgres_backend() {
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(cohort(&server).await, USERS / 5);
        // The import only wrote: the server's directory holds no state file of its own
        // (the server saves at its interval or its stop, not before).
        let saved = config
            .data_dir
            .join(tagcast::store::embedded::SNAPSHOT_FILE);
        assert!(!saved.exists(), "{} written by the import", saved.display());
    } else {
        assert_ne!(code, 0);
        let pid = server.child.id().to_string();
        assert!(
            err.contains(&pid),
            "the refusal names the server's PID {pid}: {err}"
        );
        let a = call(&server.client(), "CountAudience", json!({"AppId": APP})).await;
        assert_eq!(ok(&a)["Count"], 0);
        // Stopped, the store takes the import.
        server.terminate();
        let (code, out, err) = run_tagcast(&args, tmp.path()).await;
        assert_eq!(code, 0, "{out}{err}");
        let server = ChildServer::spawn_with(tmp.path(), &config);
        assert_eq!(cohort(&server).await, USERS / 5);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_no_account_owns_is_refused_unless_allowed_and_a_long_line_is_a_bad_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = base_config(&tmp.path().join("data"));
    let cfg = tmp.path().join("tagcast.toml");
    std::fs::write(&cfg, config.to_toml()).unwrap();
    let file = tmp.path().join("users.jsonl");
    // The second line is a valid user padded past the line limit.
    let padded = format!("{{\"UserId\":2{}}}", " ".repeat(2 << 20));
    std::fs::write(
        &file,
        format!("{{\"UserId\":1}}\n{padded}\n{{\"UserId\":3}}\n"),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let dir = tmp.path().to_owned();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tagcast(&refs, &dir).await
        }
    };
    let args = |app: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["import", "--config", cfg.to_str().unwrap(), "--app", app]
            .map(String::from)
            .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(file.to_str().unwrap().to_owned());
        a
    };
    let (code, out, err) = run(args("999", &[])).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--app 999") && err.contains(&format!("{APP}, {APP2}, {OTHER_APP}")),
        "the message names the configured apps: {err}"
    );
    assert!(err.contains("--allow-unowned-app"), "{err}");
    assert!(
        !config.data_dir.join("tagcast.db").exists(),
        "nothing was written"
    );
    // Allowed: imported, the long line refused as a bad line.
    let (code, out, err) = run(args("999", &["--allow-unowned-app", "--on-error", "skip"])).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("line 2: the line is ") && err.contains("--max-line-bytes"),
        "{err}"
    );
    assert!(
        out.contains("2 users imported") && out.contains("3 lines read, 1 refused"),
        "{out}"
    );
    // One of each: singular.
    std::fs::write(&file, "{\"UserId\":5}\n").unwrap();
    let (code, out, err) = run(args(&APP.to_string(), &[])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("1 user imported") && out.contains("1 line read"),
        "{out}"
    );
}
