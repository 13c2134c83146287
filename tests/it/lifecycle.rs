//! The start-up order (signal handlers, then the socket, then the data directory's lock,
//! then the data) and what each step protects: SIGTERM at any moment exits 0, a port in
//! use leaves nothing behind, and a data directory is served by one process only.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::infra::postgres_backend;

/// Whether `pid` has a handler for SIGTERM (`SigCgt` in /proc/PID/status, bit 15 - 1).
fn catches_sigterm(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    Some(mask & (1 << 14) != 0)
}

#[test]
fn sigterm_at_a_random_moment_of_the_first_300_ms_exits_zero_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let trials = 50;
    let (mut deferred, mut latest_handler) = (0, Duration::ZERO);
    for trial in 0..trials {
        // Half the starts create their data directory, half reopen the same one.
        let fresh = trial % 2 == 0;
        let data = if fresh {
            dir.path().join(format!("fresh-{trial}"))
        } else {
            dir.path().join("reused")
        };
        let config = test_config(&data);
        let config_path = dir.path().join("tagcast.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        let delay = Duration::from_micros(rand::random_range(0..300_000));
        let spawned = Instant::now();
        let child = KillOnDrop::new(
            tagcast_command()
                .args(["serve", "--config"])
                .arg(&config_path)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let pid = child.id();
        let marker = data.join("tagcast.lock");
        let mut handler = None;
        loop {
            // The lock file first, then the handler: a lock file seen while no handler
            // is installed means the server touched its data before it could be stopped.
            let touched = fresh && marker.exists();
            let catches = catches_sigterm(pid) == Some(true);
            if catches && handler.is_none() {
                handler = Some(spawned.elapsed());
            }
            assert!(
                !touched || catches,
                "trial {trial}: the data directory was in use before SIGTERM was caught"
            );
            // The only moment a process cannot catch a signal is before its first
            // instructions install the handler (exec and the loader, well under a ms);
            // a signal due then is sent the moment the handler exists.
            if spawned.elapsed() >= delay && catches {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let handler = handler.unwrap();
        latest_handler = latest_handler.max(handler);
        if handler > delay {
            deferred += 1;
        }
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let out = child.take().wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "trial {trial}: SIGTERM {delay:?} after spawn gave {}; log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "sigterm: {trials} starts, SIGTERM at a random moment of the first 300 ms, all exited 0; \
         the handler was in place at most {latest_handler:?} after spawn ({deferred} signals waited for it)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_fails_before_the_data_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let data = dir.path().join("never-created");
    let mut config = test_config(&data);
    config.listen = taken.local_addr().unwrap().to_string();
    // Without [[accounts]] a start would also create development credentials there.
    config.accounts.clear();
    let config_path = dir.path().join("tagcast.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let (code, _, stderr) = run_tagcast(
        &["serve", "--config", config_path.to_str().unwrap()],
        dir.path(),
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {}", config.listen))
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    if postgres_backend() {
        // The tests keep their PostgreSQL URL in the data directory; nothing else is there.
        let left: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [".test-postgres-url"], "{left:?}");
    } else {
        assert!(!data.exists(), "the data directory was created");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_data_directory_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded store only: PostgreSQL nodes share their database by design.
    let config = base_config(&dir.path().join("data"));
    let first = ChildServer::spawn_with(dir.path(), &config);
    let pid = first.child.id();
    let other = dir.path().join("second");
    std::fs::create_dir_all(&other).unwrap();
    let config_path = other.join("tagcast.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();
    let (code, stdout, stderr) = run_tagcast(
        &["serve", "--config", config_path.to_str().unwrap()],
        &other,
    )
    .await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "the second server printed {stdout:?}");
    let message = stderr.trim();
    assert!(
        !message.contains('\n') && message.contains(&format!("(pid {pid})")),
        "{stderr}"
    );
    // Restoring a backup over a served directory is refused the same way.
    let (code, _, stderr) = run_tagcast(
        &[
            "restore",
            "--data-dir",
            config.data_dir.to_str().unwrap(),
            "--from",
            "/nonexistent.db",
        ],
        &other,
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("(pid {pid})")), "{stderr}");
    // The first server is untouched, and once it is gone the directory is free again.
    let c = first.client();
    register(&c, APP, &[1]).await;
    assert!(first.terminate().success());
    let again = ChildServer::spawn_with(dir.path(), &config);
    assert_eq!(tags_of(&again.client(), APP, 0, 1).await, Some(vec![]));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_sigint_stop_the_server_as_gracefully_as_sigterm() {
    for signal in ["-HUP", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(&dir.path().join("data"));
        let mut server = ChildServer::spawn_with(dir.path(), &config);
        register(&server.client(), APP, &[1]).await;
        std::process::Command::new("kill")
            .args([signal, &server.child.id().to_string()])
            .status()
            .unwrap();
        let status = server.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{signal}: {status}");
    }
}
