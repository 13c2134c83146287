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
    if crate::infra::postgres_backend() {
        return; // PostgreSQL is backed up with its own tools (docs/operations.md)
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
