//! Compatibility with the official Volcengine Python SDK (`volcengine` on PyPI): the script
//! `tests/sdk/python_compat.py` drives an in-process server through the SDK's own signer and
//! HTTP client, then this test reads the result back with the Rust client.
//!
//! The interpreter comes from `TAGCAST_PYTHON`, by default `<repo>/.venv/bin/python`, which
//! `./scripts/test` creates (via `./scripts/sdk-venv.sh`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/python_compat.py");

pub fn python() -> PathBuf {
    let py = match std::env::var_os("TAGCAST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python")),
    };
    // A bare name ("python3") is looked up on PATH by the OS; a path must exist.
    if py.components().count() > 1 && !py.exists() {
        panic!(
            "Python interpreter {} not found: run ./scripts/test (it creates .venv with the \
             official Volcengine SDK via ./scripts/sdk-venv.sh), or set TAGCAST_PYTHON to an \
             interpreter that can `import volcengine`",
            py.display()
        );
    }
    py
}

/// Runs `cmd` (stdin closed, killed if dropped) to its end, which must come within `limit`.
pub async fn output_within(
    cmd: &mut tokio::process::Command,
    limit: Duration,
) -> std::process::Output {
    let what = format!("{:?}", cmd.as_std());
    let run = cmd.stdin(Stdio::null()).kill_on_drop(true).output();
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn official_python_sdk_registers_tags_and_reads_back() {
    let py = python();
    let server = TestServer::start().await;

    let mut cmd = tokio::process::Command::new(&py);
    cmd.arg(SCRIPT)
        .env("TAGCAST_ENDPOINT_HOST", server.addr.to_string())
        .env("TAGCAST_AK", AK)
        .env("TAGCAST_SK", SK)
        .env("TAGCAST_APP_ID", APP.to_string())
        // The SDK would otherwise prefer these over the keys it is given.
        .env_remove("VOLC_ACCESSKEY")
        .env_remove("VOLC_SECRETKEY")
        .env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = output_within(&mut cmd, Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python_compat.py failed ({}) with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status,
        py.display()
    );
    assert!(
        stdout.contains("python_compat: OK"),
        "unexpected output:\n{stdout}\n{stderr}"
    );

    // What the SDK wrote, seen through the Rust client.
    let client = server.client();
    assert_eq!(
        tags_of(&client, APP, 0, 10001).await,
        Some(vec![
            "city:shanghai".to_owned(),
            "key:value".to_owned(),
            "level:gold".to_owned()
        ])
    );
    assert_eq!(
        tags_of(&client, APP, 0, 10002).await,
        Some(vec!["city:shanghai".to_owned()])
    );
    let r = ok(&get_users(&client, &[10001, 10002]).await);
    let nicks: Vec<&str> = r["Users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["NickName"].as_str().unwrap())
        .collect();
    assert_eq!(nicks, ["Zhang Wei 张伟 ✓", "Renée 🚀 李娜"], "{r}");

    server.stop().await;
}
