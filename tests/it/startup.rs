//! Start-up behaviour: first-start credentials, refusing to expose them, the config file,
//! and `tagcast call` against a running server.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use tagcast::config::Config;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn first_start_creates_private_credentials_that_tagcast_call_uses() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.accounts.clear();
    let prepared = tagcast::server::prepare(&config).await.unwrap();
    let file = dir.path().join("credentials.toml");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let addr = prepared.addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tagcast::server::serve(
        prepared.listener,
        prepared.state,
        async {
            let _ = rx.await;
        },
    ));
    let tagcast = env!("CARGO_BIN_EXE_tagcast");
    let run = |args: Vec<String>| {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            Command::new(tagcast)
                .args(args)
                .env_remove("TAGCAST_ACCESS_KEY")
                .env_remove("TAGCAST_SECRET_KEY")
                .env("TAGCAST_DATA_DIR", dir)
                .output()
                .unwrap()
        })
    };
    let endpoint = format!("http://{addr}");
    let reg = r#"{"AppId":666675,"Users":[{"UserId":10001}]}"#;
    let out = run(vec![
        "call".into(),
        "RegisterUsers".into(),
        "--endpoint".into(),
        endpoint.clone(),
        "--body".into(),
        reg.into(),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seed = r#"{"AppId":666675,"InboxType":0,"UserTags":[{"UserId":10001,"Tags":{"key":"value"}}],"Op":0}"#;
    let body_file = dir.path().join("seed.json");
    std::fs::write(&body_file, seed).unwrap();
    let out = run(vec![
        "call".into(),
        "BatchUpdateUserTags".into(),
        "--endpoint".into(),
        endpoint.clone(),
        "--body".into(),
        format!("@{}", body_file.display()),
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["Result"]["FailedInfos"], serde_json::json!([]));
    // An error exits non-zero with the Code on stderr.
    let out = run(vec![
        "call".into(),
        "BatchGetUser".into(),
        "--endpoint".into(),
        endpoint.clone(),
        "--body".into(),
        "{}".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "an error answer exits 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("InvalidParam (HTTP 400)")),
        "{stderr}"
    );
    // It says which key it signed with, and from which file.
    assert!(
        stderr.contains("signing with AKLT") && stderr.contains("credentials.toml"),
        "{stderr}"
    );
    let out = run(vec![
        "call".into(),
        "BatchGetUser".into(),
        "--endpoint".into(),
        endpoint,
        "--access-key".into(),
        "AKLTx".into(),
        "--secret-key".into(),
        "y".into(),
        "--body".into(),
        "{}".into(),
    ])
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("InvalidAccessKey"), "{stderr}");
    assert!(!stderr.contains("signing with"), "{stderr}");
    tx.send(()).unwrap();
    task.await.unwrap();
    // A second start reuses the same credentials (waiting out a forked child's copy of
    // the lock's descriptor, as every restart in the suite does).
    let again = crate::common::prepare_in_process(&config).await;
    assert_eq!(
        again.accounts[0].keys[0].access_key,
        tagcast::accounts::read_credentials_file(&file).unwrap()[0].keys[0].access_key
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_loopback_listen_without_configured_accounts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.accounts.clear();
    config.listen = "0.0.0.0:0".into();
    let err = tagcast::server::prepare(&config)
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("refusing to listen on 0.0.0.0") && err.contains("accounts"),
        "{err}"
    );
    assert!(!dir.path().join("credentials.toml").exists());
}

#[test]
fn config_file_accepts_the_documented_keys_and_rejects_typos() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        r#"
listen = "127.0.0.1:8080"
data_dir = "./tagcast-data"
regions = ["cn-north-1", "ap-southeast-1"]
log_format = "json"
[limits]
qps = 50
[limits.actions]
BatchUpdateUserTags = 60
[tags]
max_key_bytes = 64
max_value_bytes = 256
max_per_user = 10
[http]
max_body_bytes = 65536
header_timeout_secs = 5
body_timeout_secs = 10
shutdown_grace_secs = 3
[store]
kind = "embedded"
max_batch = 128
read_connections = 2
wal_limit_mb = 16
[[accounts]]
name = "acme"
apps = [666675]
[[accounts.keys]]
access_key = "AKLTa"
secret_key = "a-long-enough-secret-0001"
"#,
    )
    .unwrap();
    let c = Config::from_file(&path).unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.limits
            .qps_for(tagcast::actions::Action::BatchUpdateUserTags),
        60
    );
    assert_eq!(
        c.limits.qps_for(tagcast::actions::Action::RegisterUsers),
        50
    );
    assert_eq!(
        c.limits.qps_for(tagcast::actions::Action::BatchUpdateUser),
        50,
        "a write: the write default"
    );
    assert_eq!(
        c.limits.qps_for(tagcast::actions::Action::BatchGetUser),
        100
    );
    assert_eq!(c.tags.max_per_user, 10);
    assert!(
        !format!("{:?}", c.accounts).contains("a-long-enough-secret-0001"),
        "secret in Debug output"
    );

    std::fs::write(&path, "listen = \"127.0.0.1:8080\"\nqps = 5\n").unwrap();
    assert!(Config::from_file(&path).unwrap_err().contains("qps"));
    for bad in [
        "[limits.actions]\nBatchUpdateUserTag = 5\n",
        "[[accounts]]\nname = \"a\"\napps = [0]\n",
        "[[accounts]]\nname = \"a\"\napps = [1]\n[[accounts]]\nname = \"b\"\napps = [1]\n",
        "[store]\nkind = \"postgres\"\n",
        "listen = \"nowhere\"\n",
    ] {
        std::fs::write(&path, bad).unwrap();
        assert!(
            Config::from_file(&path).unwrap().validate().is_err(),
            "{bad}"
        );
    }
}
