//! Answers hyper writes itself (API.md §1: every answer carries the envelope): a request
//! with too many headers, or a head (a URI included) over http.max_header_bytes (431), and a
//! request line or header that is not HTTP (400) each get the envelope with a RequestId,
//! and the server serves on. (hyper's 414 needs a head over 64 KiB, beyond the default.)

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Writes `request` on a fresh connection and reads the answer to its end (the server
/// closes after these); (status, envelope).
async fn exchange(addr: std::net::SocketAddr, request: Vec<u8>) -> (u16, Value) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    assert_eq!(body.len(), length, "{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}")),
    )
}

fn code(v: &Value) -> (&str, u64) {
    let e = &v["ResponseMetadata"]["Error"];
    assert!(
        !v["ResponseMetadata"]["RequestId"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{v}"
    );
    assert!(!e["Message"].as_str().unwrap().is_empty(), "{v}");
    (e["Code"].as_str().unwrap(), e["CodeN"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_hyper_writes_itself_carry_the_envelope() {
    let s = TestServer::start().await;
    let mut many =
        String::from("POST /?Action=BatchGetUser&Version=2020-12-01 HTTP/1.1\r\nhost: x\r\n");
    for i in 0..3000 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (status, v) = exchange(s.addr, many.into_bytes()).await;
    assert_eq!((status, code(&v)), (431, ("InvalidParam", 200002)), "{v}");

    // A URI longer than the whole head may be (http.max_header_bytes, 32 KiB).
    let long = format!("GET /?x={} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let (status, v) = exchange(s.addr, long.into_bytes()).await;
    assert_eq!((status, code(&v)), (431, ("InvalidParam", 200002)), "{v}");
    // A head over http.max_header_bytes as a whole, of fields of ordinary length.
    let mut big = String::from("POST / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..40 {
        big.push_str(&format!("x-big-{i}: {}\r\n", "v".repeat(2000)));
    }
    big.push_str("\r\n");
    let (status, v) = exchange(s.addr, big.into_bytes()).await;
    assert_eq!((status, code(&v)), (431, ("InvalidParam", 200002)), "{v}");
    assert!(v.to_string().contains("max_header_bytes"), "{v}");

    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let (status, v) = exchange(s.addr, garbage.to_vec()).await;
        assert_eq!(
            (status, code(&v)),
            (400, ("MalformedRequest", 200007)),
            "{:?}: {v}",
            String::from_utf8_lossy(garbage)
        );
    }
    // Counted, and the server serves on.
    let m = s.metrics().await;
    assert!(m.contains("tagcast_malformed_requests_total 7"), "{m}");
    ok(&get_users(&s.client(), &[1]).await);
}
