//! `tagcast backup` while writes run: every write acknowledged before it began is in the
//! copy, the copy passes `tagcast check`, and `tagcast restore` serves it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_under_writes_holds_every_earlier_acknowledged_write_and_restores() {
    if crate::skip::on_postgres("PostgreSQL is backed up with its own tools") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(&dir.path().join("data"));
    config.tags.max_per_user = 1_000_000;
    let server = ChildServer::spawn_with(dir.path(), &config);
    let users: Vec<i64> = (1..=8).collect();
    register(&server.client(), APP, &users).await;

    // Four writers, distinct keys; every acknowledgement goes into the ledger with its time.
    type Ledger = Arc<Mutex<Vec<(Instant, i64, String)>>>;
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (client, ledger, stop) = (server.client(), ledger.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut r = 0;
            while !stop.load(Ordering::Relaxed) {
                let user = 1 + w * 2 + (r % 2);
                let key = format!("w{w}r{r}");
                let body = json!({"AppId": APP, "UserTags": [{"UserId": user, "Tags": {key.clone(): "v"}}]});
                let a = call(&client, "BatchUpdateUserTags", body).await;
                assert!(failed_infos(&a).is_empty());
                ledger.lock().unwrap().push((Instant::now(), user, key));
                r += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let backup = dir.path().join("backup.db");
    let began = Instant::now();
    let (code, stdout, stderr) = run_tagcast(
        &[
            "backup",
            "--data-dir",
            config.data_dir.to_str().unwrap(),
            "--to",
            backup.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let ledger = ledger.lock().unwrap().clone();
    let before: Vec<_> = ledger.iter().filter(|(at, _, _)| *at < began).collect();
    let after = ledger.len() - before.len();
    assert!(
        before.len() > 100 && after > 0,
        "writes ran before ({}) and during/after ({after}) the backup",
        before.len()
    );
    // Writing over it again is refused without --force.
    let (code, _, stderr) = run_tagcast(
        &[
            "backup",
            "--data-dir",
            config.data_dir.to_str().unwrap(),
            "--to",
            backup.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--force"), "{stderr}");

    // The copy passes the full check on its own.
    let (code, out, _) =
        run_tagcast(&["check", "--file", backup.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 problem(s)"), "{out}");

    // Restored into a new directory and served, it holds every write acknowledged before
    // the backup began.
    let restored = dir.path().join("restored");
    let (code, out, err) = run_tagcast(
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let mut config2 = config.clone();
    config2.data_dir = restored.clone();
    let dir2 = dir.path().join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let copy = ChildServer::spawn_with(&dir2, &config2);
    let mut stored: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for &u in &users {
        stored.insert(u, tags_of(&copy.client(), APP, 0, u).await.unwrap());
    }
    for (_, user, key) in &before {
        assert!(
            stored[user].contains(&format!("{key}:v")),
            "user {user} lost {key}, acknowledged before the backup began"
        );
    }
    assert!(copy.terminate().success());
    // Restoring over an existing store needs --force, and keeps the old one aside.
    let args = [
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ];
    let (code, _, err) = run_tagcast(&args, dir.path()).await;
    assert_eq!(code, 2, "{err}");
    let mut forced = args.to_vec();
    forced.push("--force");
    let (code, out, err) = run_tagcast(&forced, dir.path()).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tagcast.db.replaced-"), "{out}");
    // Even over a store SQLite cannot open (often the reason to restore), and the copy
    // belongs to whoever owns the directory (root restoring for a service user).
    let db = restored.join(tagcast::store::embedded::DB_FILE);
    std::fs::write(&db, vec![0x42; 8192]).unwrap();
    let as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if as_root {
        std::os::unix::fs::chown(&restored, Some(65534), Some(65534)).unwrap();
    }
    let (code, out, err) = run_tagcast(&forced, dir.path()).await;
    assert_eq!(code, 0, "{out}{err}");
    if as_root {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&db).unwrap().uid(), 65534);
    }
    let (code, out, _) = run_tagcast(
        &["check", "--data-dir", restored.to_str().unwrap()],
        dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    println!(
        "backup: taken while 4 writers ran; {} writes acknowledged before it began, all in the copy; {stdout}",
        before.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_over_the_live_store_is_refused_and_no_acknowledged_write_is_lost() {
    if crate::skip::on_postgres("tagcast backup copies the embedded store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"));
    let data = config.data_dir.clone();
    let server = ChildServer::spawn_with(dir.path(), &config);
    register(&server.client(), APP, &[1]).await;
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // The store's own file by another name (a hard link), and a directory link into it.
    std::fs::hard_link(
        data.join(tagcast::store::embedded::DB_FILE),
        elsewhere.join("link.db"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&data, dir.path().join("via-link")).unwrap();
    for (to, says) in [
        (data.join("tagcast.db"), "inside the data directory"),
        (data.join("tagcast.db-wal"), "inside the data directory"),
        (data.join("sub/copy.db"), "its directory"),
        (data.join("copy.db"), "inside the data directory"),
        (
            dir.path().join("via-link/copy.db"),
            "inside the data directory",
        ),
        (elsewhere.join("link.db"), "the store's own tagcast.db"),
    ] {
        let (code, out, err) = run_tagcast(
            &[
                "backup",
                "--data-dir",
                data.to_str().unwrap(),
                "--to",
                to.to_str().unwrap(),
                "--force",
            ],
            dir.path(),
        )
        .await;
        assert_eq!(code, 2, "--to {}: {out}{err}", to.display());
        assert!(err.contains(says), "--to {}: {err}", to.display());
    }
    // Written and read back after those attempts: still there after a restart.
    register(&server.client(), APP, &[99]).await;
    assert!(tags_of(&server.client(), APP, 0, 99).await.is_some());
    assert!(server.terminate().success());
    let server = ChildServer::spawn_with(dir.path(), &config);
    assert!(
        tags_of(&server.client(), APP, 0, 99).await.is_some(),
        "user 99 was lost"
    );
    let (code, out, _) =
        run_tagcast(&["check", "--data-dir", data.to_str().unwrap()], dir.path()).await;
    assert_eq!(code, 0, "{out}");
}

/// A store of `users` users (imported: fast), so a backup of it takes a while.
async fn a_large_store(dir: &std::path::Path, users: u32) -> std::path::PathBuf {
    let data = dir.join("data");
    let file = dir.join("users.jsonl");
    let mut lines = String::new();
    for u in 1..=users {
        lines.push_str(&format!(
            "{{\"UserId\":{u},\"NickName\":\"user {u}\",\"Tags\":[\"level:l{}\",\"city:c{}\",\"n:{u}\"]}}\n",
            u % 7,
            u % 13
        ));
    }
    std::fs::write(&file, lines).unwrap();
    let (code, out, err) = run_tagcast(
        &[
            "import",
            "--data-dir",
            data.to_str().unwrap(),
            "--app",
            &APP.to_string(),
            file.to_str().unwrap(),
        ],
        dir,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    data
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_backup_removes_its_partial_copy_and_a_killed_one_is_cleaned_next_time() {
    if crate::skip::on_postgres("tagcast backup copies the embedded store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = a_large_store(dir.path(), 400_000).await;
    let to = dir.path().join("copy.db");
    let partial = dir.path().join("copy.db.partial");
    let backup = || {
        KillOnDrop::new(
            tagcast_command()
                .args([
                    "backup",
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--to",
                    to.to_str().unwrap(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let wait_partial = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !partial.exists() {
            assert!(
                Instant::now() < deadline,
                "the backup wrote no partial copy"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // SIGTERM (and SIGINT, SIGHUP) mid-copy: the copy stops and its partial file goes.
    let running = backup();
    wait_partial();
    std::process::Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status()
        .unwrap();
    let out = running.take().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("interrupted"),
        "{err}"
    );
    assert!(!partial.exists() && !to.exists(), "{err}");
    // SIGKILL leaves it; the next backup to the same place removes it and succeeds.
    let running = backup();
    wait_partial();
    let mut child = running.take();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(partial.exists());
    let out = backup().take().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(to.exists() && !partial.exists());
}
