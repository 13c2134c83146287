//! A full disk: writes get 503 and reads go on, `/readyz` says not ready, the repeated
//! failure is logged once per period with a count, and once a little space is freed the
//! store writes again and is ready, by itself, with nothing acknowledged lost. And a
//! corrupt store: not ready, a 500 whose RequestId is on the log line with its cause, and
//! `tagcast check` names the damage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tagcast::store::embedded::DB_FILE;

use crate::common::*;

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root).
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Bytes free on `dir`'s filesystem.
fn free_bytes(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).unwrap();
    s.f_bavail * s.f_frsize
}

/// Fills `dir` with 1 MiB files until the disk refuses; returns them.
fn fill(dir: &Path) -> Vec<PathBuf> {
    let chunk = vec![0x5au8; 1 << 20];
    let mut files = Vec::new();
    for i in 0.. {
        let f = dir.join(format!("filler-{i}"));
        let written = std::fs::write(&f, &chunk);
        files.push(f);
        if written.is_err() {
            break;
        }
    }
    files
}

async fn update(client: &tagcast::call::Client, user: i64, round: u32) -> u16 {
    let tags: serde_json::Map<String, serde_json::Value> = (0..8)
        .map(|k| (format!("r{round}k{k}"), json!("v".repeat(300))))
        .collect();
    call(
        client,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": user, "Tags": tags}]}),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_is_not_ready_and_recovers_once_space_is_freed() {
    if crate::skip::on_postgres("a full disk under the embedded store") {
        return;
    }
    let disk = SmallDisk::mount(32);
    if !crate::skip::require(disk.is_some(), "root, to mount a small tmpfs") {
        return;
    }
    let disk = disk.unwrap();
    let mut config = base_config(&disk.path.join("data"));
    config.tags.max_per_user = 1_000_000;
    let server = ChildServer::spawn_logged(&disk.path, &config, "info");
    let c = server.client();
    register(&c, APP, &[1, 2, 3, 4]).await;
    assert_eq!(server.status_of("/readyz").await, 200);

    // Leave ~2 MiB, then write until the store is refused.
    let mut fillers = fill(&disk.path);
    let _ = std::fs::remove_file(fillers.pop().unwrap());
    let _ = std::fs::remove_file(fillers.pop().unwrap());
    let _ = std::fs::remove_file(fillers.pop().unwrap());
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let (mut zero, mut ready_while_full) = (Vec::new(), 0);
    for round in 0..100_000u32 {
        let user = 1 + i64::from(round % 4);
        match update(&c, user, round).await {
            200 => acknowledged.push((user, round)),
            503 => {
                refused += 1;
                if refused == 1 {
                    // Not a byte left. Writes keep failing for a while: the warning must
                    // not repeat per failure, and /readyz must not once say ready (the
                    // probe and the sweeper's empty commits once made it flap).
                    zero = fill(&disk.path);
                    let until = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < until {
                        // A write may still fit in blocks SQLite holds; most do not.
                        match update(&c, user, round).await {
                            200 => {}
                            503 => refused += 1,
                            other => panic!("write answered {other} on a full disk"),
                        }
                        let before = free_bytes(&disk.path);
                        let ready = server.status_of("/readyz").await == 200;
                        // Ready only with room for writes (the server's probe asks 2 MiB).
                        if ready && before.max(free_bytes(&disk.path)) < 1 << 20 {
                            ready_while_full += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    break;
                }
            }
            other => panic!("write answered {other} on a full disk"),
        }
    }
    // Some writes may still fit (and the log, emptied when idle, gives space back).
    assert!(refused >= 1 && !acknowledged.is_empty());
    assert_eq!(
        ready_while_full, 0,
        "/readyz said ready with no room to write"
    );
    if free_bytes(&disk.path) < 1 << 20 {
        assert_eq!(server.status_of("/readyz").await, 503);
    }
    let read = ok(&get_users(&c, &[1]).await);
    assert_eq!(
        read["Users"].as_array().unwrap().len(),
        1,
        "reads go on while writes are refused"
    );
    let warnings = server.log_lines_with("cannot write").len();
    let checkpoint_warnings = server.log_lines_with("WAL checkpoint failed").len();
    assert!(
        (1..=2).contains(&warnings) && checkpoint_warnings <= 2,
        "{refused} refused writes logged {warnings} + {checkpoint_warnings} warnings: {:?}",
        server.log_lines_with("WARN")
    );

    // Free a little space (2 MiB of 32): the store comes back by itself.
    for f in zero.iter().chain(fillers.iter().rev().take(2)) {
        let _ = std::fs::remove_file(f);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.status_of("/readyz").await != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready 60 s after space was freed; log: {:?}",
            server.log_lines_with("WARN")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(update(&c, 1, 999_999).await, 200);
    assert!(!server.wait_for_log("writes again; ready").await.is_empty());
    for (user, round) in acknowledged.iter().rev().take(20) {
        let tags = tags_of(&c, APP, 0, *user).await.unwrap();
        assert!(tags.iter().any(|t| t.starts_with(&format!("r{round}k0:"))));
    }
    println!(
        "disk_full: {} writes acknowledged, {refused} refused with 503 over 5 s, logged as {warnings} \
         warning line(s); ready again after 2 MiB were freed",
        acknowledged.len()
    );
    drop(server);
}

/// Overwrites the root page of the `users` table with garbage: every read of a user or a
/// tag (one row per user) passes through it.
fn corrupt_the_users_root_page(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let root: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'users'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(((root - 1) * page_size) as u64))
        .unwrap();
    f.write_all(&vec![0xa5; page_size as usize]).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_store_is_not_ready_its_500_is_traceable_and_check_finds_it() {
    if crate::skip::on_postgres("a corrupt page of the embedded store's file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(&dir.path().join("data"));
    {
        let s = ChildServer::spawn_with(dir.path(), &config);
        let c = s.client();
        let users: Vec<i64> = (1..=300).collect();
        register(&c, APP, &users).await;
        for chunk in users.chunks(100) {
            let entries: Vec<_> = chunk
                .iter()
                .map(|u| json!({"UserId": u, "Tags": {"city": "x".repeat(200), "level": "gold"}}))
                .collect();
            let a = call(
                &c,
                "BatchUpdateUserTags",
                json!({"AppId": APP, "UserTags": entries}),
            )
            .await;
            assert!(failed_infos(&a).is_empty());
        }
        assert!(s.terminate().success());
    }
    let db = config.data_dir.join(DB_FILE);
    let (code, stdout, _) = run_tagcast(
        &["check", "--data-dir", config.data_dir.to_str().unwrap()],
        dir.path(),
    )
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("offline"), "{stdout}");

    corrupt_the_users_root_page(&db);
    let (code, stdout, stderr) = run_tagcast(
        &["check", "--data-dir", config.data_dir.to_str().unwrap()],
        dir.path(),
    )
    .await;
    assert_eq!(
        code, 1,
        "check must fail on a corrupt page:\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains("FAILED") && stdout.contains("1 problem(s)"),
        "{stdout}"
    );

    // Without the state saved at the clean stop, the start reads every row and finds the
    // damage (with it, the damage shows at the first write to that page).
    std::fs::remove_file(
        config
            .data_dir
            .join(tagcast::store::embedded::SNAPSHOT_FILE),
    )
    .unwrap();
    let server = ChildServer::spawn_logged(dir.path(), &config, "info");
    let c = server.client();
    let a = get_users(&c, &[1, 2, 3]).await;
    let v = assert_error(&a, 500, "InternalError");
    let request_id = v["ResponseMetadata"]["RequestId"].as_str().unwrap();
    let cause = server.wait_for_log(request_id).await;
    assert!(
        cause
            .iter()
            .any(|l| l.contains(request_id) && l.contains("ERROR")),
        "no ERROR line with the cause and RequestId {request_id}: {cause:?}"
    );
    assert_eq!(server.status_of("/readyz").await, 503);
    let body = http_get(format!("{}/readyz", server.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("corruption") && body.contains("tagcast check"),
        "{body}"
    );
}
