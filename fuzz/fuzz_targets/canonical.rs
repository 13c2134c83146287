//! The canonicalizer on arbitrary queries, paths and header values, and sign-then-verify:
//! a request signed by our signer always verifies, whatever its query, body and headers.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tagcast::signing::{self, Credentials, ParsedAuth, SecretKey, VerifyPolicy};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let header = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let _ = signing::canonical_query(&query);
    let _ = signing::canonical_uri(&path);

    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    if let Ok(v) = HeaderValue::from_bytes(header) {
        headers.insert("x-extra", v);
    }
    let creds = Credentials {
        access_key: "AKLTfuzz".into(),
        secret_key: SecretKey::new("fuzz-secret"),
        region: "cn-north-1".into(),
    };
    let now = time::OffsetDateTime::from_unix_timestamp(1_795_600_000).unwrap();
    // Only queries a client could send on the wire (no raw spaces or '#').
    if query.bytes().any(|b| b <= b' ' || b == b'#' || b >= 0x7f) {
        return;
    }
    signing::sign("POST", "/", &query, &mut headers, body, &creds, now);
    let regions = vec!["cn-north-1".to_owned()];
    let parsed = ParsedAuth::parse(
        &headers,
        &VerifyPolicy {
            now,
            regions: &regions,
        },
    )
    .expect("our own header parses");
    parsed
        .verify(&creds.secret_key, "POST", "/", &query, &headers, body)
        .expect("a request we signed verifies");
});
