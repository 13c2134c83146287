//! The command line as an operator meets it: secrets kept out of the configuration file,
//! weak secrets refused, `keys new`, the `try:` line of the banner, and `tagcast call`'s
//! messages and exit codes.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::json;
use tagcast::config::{AccountConfig, KeyConfig};

use crate::common::*;

/// `tagcast serve` on `config` with extra environment; (child, endpoint, banner lines).
fn serve_with_env(
    dir: &std::path::Path,
    config: &tagcast::config::Config,
    env: &[(&str, &str)],
) -> (KillOnDrop, String, Vec<String>) {
    let path = dir.join("tagcast.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let mut cmd = tagcast_command();
    cmd.args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = read_banner(&mut lines);
    let endpoint = banner
        .first()
        .expect("a banner")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (KillOnDrop::new(child), endpoint, banner)
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_come_from_the_environment_or_a_file_and_sign_requests() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("other.secret");
    std::fs::write(&secret_file, format!("{SK_OTHER}\n")).unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.accounts[0].keys = vec![KeyConfig {
        access_key: AK.into(),
        secret_key_env: Some("ACME_SECRET_FOR_TEST".into()),
        ..KeyConfig::default()
    }];
    config.accounts[1].keys = vec![KeyConfig {
        access_key: AK_OTHER.into(),
        secret_key_file: Some(secret_file),
        ..KeyConfig::default()
    }];
    let text = config.to_toml();
    assert!(!text.contains(SK) && !text.contains(SK_OTHER), "{text}");
    let (child, endpoint, _) = serve_with_env(dir.path(), &config, &[("ACME_SECRET_FOR_TEST", SK)]);
    let acme = tagcast::call::Client::new(&endpoint, creds(AK, SK));
    register(&acme, APP, &[1]).await;
    let other = tagcast::call::Client::new(&endpoint, creds(AK_OTHER, SK_OTHER));
    register(&other, OTHER_APP, &[1]).await;
    drop(child);

    // Unset, the variable stops the start with a message naming it.
    let path = dir.path().join("tagcast.toml");
    let (code, _, stderr) =
        run_tagcast(&["serve", "--config", path.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("ACME_SECRET_FOR_TEST") && stderr.contains("not set"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_and_placeholder_secrets_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (secret, why) in [
        ("s3cr3t", "6 bytes"),
        ("...", "bytes"),
        ("your-secret-key-here", "placeholder"),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "distinct characters"),
    ] {
        let mut config = test_config(&dir.path().join("data"));
        config.accounts[0].keys = vec![KeyConfig::inline(AK, secret)];
        let err = tagcast::server::prepare(&config)
            .await
            .err()
            .expect("refused");
        assert!(
            err.contains("accounts.acme") && err.contains(AK) && err.contains(why),
            "{secret}: {err}"
        );
        assert!(
            !err.contains(secret) || secret == "...",
            "the secret itself is in {err}"
        );
        assert!(!dir.path().join("data").join("tagcast.db").exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_new_prints_a_vendor_style_pair_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_tagcast(&["keys", "new"], dir.path()).await;
    assert_eq!(code, 0, "{stderr}");
    #[derive(serde::Deserialize)]
    struct Pasted {
        accounts: Vec<AccountConfig>,
    }
    // Pasted under an [[accounts]] entry, it is a valid configuration.
    let pasted: Pasted = toml::from_str(&format!(
        "[[accounts]]\nname = \"new\"\napps = [4242]\n{stdout}"
    ))
    .unwrap_or_else(|e| panic!("{stdout}: {e}"));
    let key = pasted.accounts[0].keys[0].clone();
    assert!(key.access_key.starts_with("AKLT") && key.access_key.len() == 47);
    let secret = key.secret_key.clone().unwrap();
    assert_eq!(secret.len(), 60, "{secret}");
    let (_, again, _) = run_tagcast(&["keys", "new"], dir.path()).await;
    assert!(!again.contains(&secret), "two calls gave the same secret");
    let s = TestServer::with(|c| c.accounts = pasted.accounts.clone()).await;
    let client = tagcast::call::Client::new(&s.endpoint(), creds(&key.access_key, &secret));
    register(&client, 4242, &[1]).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_banner_try_line_runs_as_printed_with_a_non_default_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&dir.path().join("my data"));
    config.accounts.clear();
    let (_child, _, banner) = serve_with_env(dir.path(), &config, &[]);
    let try_line = banner
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("try:"))
        .unwrap_or_else(|| panic!("no try: line in {banner:?}"))
        .trim()
        .to_owned();
    assert!(try_line.contains("--data-dir '"), "{try_line}");
    let out = std::process::Command::new("sh")
        .args(["-c", &try_line])
        .current_dir(dir.path())
        .env_remove("TAGCAST_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{try_line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn call_exits_with_a_code_per_outcome_and_says_what_went_wrong() {
    let s = TestServer::start().await;
    let endpoint = s.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let call_args = |action: &str, body: serde_json::Value| -> Vec<String> {
        [
            "call",
            action,
            "--endpoint",
            &endpoint,
            "--access-key",
            AK,
            "--secret-key",
            SK,
            "--body",
            &body.to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: Vec<String>| {
        let dir = dir.path().to_owned();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tagcast(&refs, &dir).await
        }
    };
    register(&s.client(), APP, &[1]).await;
    let (code, stdout, stderr) = run(call_args(
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {"a": "b"}}]}),
    ))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"FailedInfos\": []"), "{stdout}");

    // Some users failed: exit 3, each named on stderr, the whole answer on stdout.
    let (code, stdout, stderr) = run(call_args(
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": 1, "Tags": {"a": "c"}}, {"UserId": 99, "Tags": {"a": "c"}}]}),
    ))
    .await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("user 99: UserNotFound"), "{stderr}");
    assert!(stdout.contains("UserNotFound"), "{stdout}");

    // A misspelt Action: exit 1, with the closest name.
    let (code, _, stderr) = run(call_args("batchupdateusertag", json!({}))).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("InvalidActionOrVersion")
            && stderr.contains("did you mean BatchUpdateUserTags?"),
        "{stderr}"
    );

    // Nothing listening: exit 4 and a sentence, not a library's error chain.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut args = call_args("BatchGetUser", json!({"AppId": APP, "UserIds": [1]}));
    args[3] = closed.clone();
    let (code, _, stderr) = run(args).await;
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("tagcast call: connection refused: is tagcast running at {closed}?")
    );

    // No key and no credentials file: exit 2, saying what to do.
    let (code, _, stderr) = run(vec!["call".into(), "BatchGetUser".into()]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--access-key"), "{stderr}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_flag_of_every_command_has_help_text() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        vec!["serve"],
        vec!["call"],
        vec!["check"],
        vec!["backup"],
        vec!["restore"],
        vec!["keys", "new"],
        vec!["ready"],
        vec!["bench"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let (code, stdout, _) = run_tagcast(&args, dir.path()).await;
        assert_eq!(code, 0, "{args:?}");
        // clap prints each argument as "  -x, --name <V>  text", or, when any help is
        // long, with the text on the next, further indented line.
        let lines: Vec<&str> = stdout.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if !(t.starts_with('-') || t.starts_with('<')) || !line.starts_with("  ") {
                continue;
            }
            let same_line = t.split_whitespace().skip(1).any(|w| {
                !w.starts_with('-')
                    && !w.starts_with('<')
                    && !w.starts_with('[')
                    && !w.ends_with(',')
            });
            let next_line = lines.get(i + 1).is_some_and(|n| {
                n.len() - n.trim_start().len() > line.len() - t.len() && !n.trim().is_empty()
            });
            assert!(
                same_line || next_line,
                "{command:?}: no help text for {line:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_say_what_to_do_for_a_missing_server_a_bare_address_and_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // Nothing listening: the same sentence as `call`'s.
    let (code, _, stderr) = run_tagcast(
        &["ready", "--endpoint", &format!("http://{closed}")],
        dir.path(),
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "connection refused: is tagcast running at http://{closed}?"
        )),
        "{stderr}"
    );
    // An address without http://: the fix, for both commands.
    for args in [
        vec!["ready", "--endpoint", &closed],
        vec![
            "call",
            "BatchGetUser",
            "--endpoint",
            &closed,
            "--access-key",
            AK,
            "--secret-key",
            SK,
        ],
    ] {
        let (code, _, stderr) = run_tagcast(&args, dir.path()).await;
        assert_ne!(code, 0);
        assert!(
            stderr.contains(&format!("has no scheme: write http://{closed}")),
            "{args:?}: {stderr}"
        );
    }
    // A host name to listen on is resolved.
    let mut config = test_config(&dir.path().join("data"));
    config.listen = "localhost:0".into();
    let (_server, endpoint, _) = serve_with_env(dir.path(), &config, &[]);
    assert!(
        endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://[::1]:"),
        "{endpoint}"
    );
    let (code, _, stderr) = run_tagcast(
        &["ready", "--wait", "10", "--endpoint", &endpoint],
        dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_configuration_that_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&dir.path().join("data"));
    config.accounts[0].keys = vec![KeyConfig::inline(AK, "12345")];
    let path = dir.path().join("tagcast.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let (code, out, err) =
        run_tagcast(&["check", "--config", path.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("accounts.acme") && err.contains(AK) && err.contains("5 bytes"),
        "{err}"
    );
    assert!(!err.contains("12345"), "the secret is in {err}");
    let serve = tagcast::server::prepare(&config)
        .await
        .err()
        .expect("serve refuses it too");
    assert!(serve.contains("5 bytes"), "{serve}");
}
