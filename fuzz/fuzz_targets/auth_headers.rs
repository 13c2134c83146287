//! Authorization and X-Date parsing on arbitrary input: never panics, and whatever parses
//! is checked against a clock without panicking either.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tagcast::signing::{ParsedAuth, VerifyPolicy, parse_authorization, parse_x_date};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_authorization(&text);
    let _ = parse_x_date(&text);
    // Split the input into an Authorization and an X-Date header.
    let (a, d) = data.split_at(data.iter().position(|&b| b == b'\n').unwrap_or(data.len()));
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(a) {
        headers.insert("authorization", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(d.get(1..).unwrap_or_default()) {
        headers.insert("x-date", v);
    }
    let regions = vec!["cn-north-1".to_owned()];
    let now = time::OffsetDateTime::from_unix_timestamp(1_795_600_000).unwrap();
    let _ = ParsedAuth::parse(
        &headers,
        &VerifyPolicy {
            now,
            regions: &regions,
        },
    );
});
