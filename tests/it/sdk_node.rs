//! Compatibility with the official Volcengine Node SDK (`@volcengine/openapi`):
//! `tests/sdk/node/node_compat.js` drives an in-process server through the SDK, then this
//! test reads the result back with the Rust client. `./scripts/test` installs the SDK
//! (`npm ci` in tests/sdk/node).

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/node");

#[tokio::test(flavor = "multi_thread")]
async fn official_node_sdk_registers_tags_and_reads_back() {
    assert!(
        std::path::Path::new(DIR)
            .join("node_modules/@volcengine/openapi")
            .exists(),
        "the Node SDK is not installed: run ./scripts/test (it runs npm ci in tests/sdk/node)"
    );
    let server = TestServer::start().await;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("node_compat.js")
        .current_dir(DIR)
        .env("TAGCAST_ENDPOINT_HOST", server.addr.to_string())
        .env("TAGCAST_AK", AK)
        .env("TAGCAST_SK", SK)
        .env("TAGCAST_APP_ID", APP.to_string())
        .env_remove("VOLC_ACCESSKEY")
        .env_remove("VOLC_SECRETKEY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("node_compat.js finished within 120 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("node_compat: OK"),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(
        tags_of(&server.client(), APP, 0, 20001).await,
        Some(vec!["key:value".to_owned(), "level:gold".to_owned()])
    );
    server.stop().await;
}
