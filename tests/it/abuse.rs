//! Resource abuse: huge bodies, thousands of idle connections and slow-header clients must
//! not cost memory or stop normal requests, and read timeouts close slow clients.

use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn head_for(addr: &str, extra: &str) -> String {
    let q = "Action=BatchUpdateUserTags&Version=2020-12-01";
    let h = signed_headers(
        &creds(AK, SK),
        "POST",
        addr,
        q,
        b"{}",
        OffsetDateTime::now_utc(),
    );
    let mut head = format!("POST /?{q} HTTP/1.1\r\n");
    for (k, v) in &h {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_body_is_refused_without_the_server_growing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn_with(dir.path(), &test_config(&dir.path().join("data")));
    let addr: std::net::SocketAddr = server
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    ok(&get_users(&server.client(), &[1]).await);
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mib = |n: usize| (0..n * 16).map(|_| vec![b' '; 64 * 1024]);
    // Announced.
    let head = head_for(
        &addr.to_string(),
        &format!("content-length: {}\r\n", 100 << 20),
    );
    let (status, v) = raw_tcp(addr, head, mib(100)).await;
    assert_eq!(status, 413, "{v}");
    // Streamed (chunked): refused once past 1 MiB.
    let head = head_for(&addr.to_string(), "transfer-encoding: chunked\r\n");
    let chunks = mib(100).map(|data| {
        [
            format!("{:x}\r\n", data.len()).into_bytes(),
            data,
            b"\r\n".to_vec(),
        ]
        .concat()
    });
    let (status, v) = raw_tcp(addr, head, chunks).await;
    assert_eq!(status, 413, "{v}");
    ok(&get_users(&server.client(), &[1]).await);
    let after = rss_kib(pid);
    println!("abuse: server RSS {before} KiB before two 100 MiB bodies, {after} KiB after");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_and_slow_header_clients_do_not_stop_service_and_are_closed() {
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.http.header_timeout_secs = 2;
    let server = ChildServer::spawn_with(dir.path(), &config);
    let addr: std::net::SocketAddr = server
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Slow-header clients: a byte at a time, never finishing.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /?Action=BatchGetUser").await.unwrap();
        slow.push(c);
    }
    // Normal requests are served meanwhile.
    for _ in 0..20 {
        ok(&get_users(&server.client(), &[1]).await);
    }
    // The header timeout closes every one of them (EOF), without help from the clients.
    let mut closed = 0;
    for mut c in idle.into_iter().chain(slow) {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 or similar may come first
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "a connection stayed open past the header timeout"
        );
        closed += 1;
    }
    assert_eq!(closed, 2020);
    ok(&call(
        &server.client(),
        "BatchGetUser",
        json!({"AppId": APP, "UserIds": [1]}),
    )
    .await);
}
