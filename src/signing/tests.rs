use super::*;
use http::HeaderValue;
use proptest::prelude::*;

fn creds() -> Credentials {
    Credentials {
        access_key: "AKLTtest".into(),
        secret_key: SecretKey::new("secret-for-tests"),
        region: "cn-north-1".into(),
    }
}

fn regions() -> Vec<String> {
    vec!["cn-north-1".into(), "ap-southeast-1".into()]
}

fn now() -> OffsetDateTime {
    parse_x_date("20261125T080000Z").unwrap()
}

fn signed(query: &str, extra: &[(String, String)], body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    for (k, v) in extra {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    sign("POST", "/", query, &mut headers, body, &creds(), now());
    headers
}

fn verify_all(query: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), AuthError> {
    let regions = regions();
    let policy = VerifyPolicy {
        now: now(),
        regions: &regions,
    };
    let parsed = ParsedAuth::parse(headers, &policy)?;
    parsed.verify(&creds().secret_key, "POST", "/", query, headers, body)
}

#[test]
fn canonical_query_sorts_and_encodes_space_as_percent20() {
    assert_eq!(canonical_query("b=2&a=x+y&c=%7E~"), "a=x%20y&b=2&c=~~");
    assert_eq!(
        canonical_query("Version=2020-12-01&Action=BatchGetUser"),
        "Action=BatchGetUser&Version=2020-12-01"
    );
    assert_eq!(canonical_query(""), "");
    assert_eq!(canonical_query("k=%E4%B8%8A"), "k=%E4%B8%8A");
}

#[test]
fn host_drops_only_default_ports() {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("example:443"));
    assert_eq!(
        canonical_headers(&["host".into()], &h).unwrap(),
        "host:example\n"
    );
    h.insert("host", HeaderValue::from_static("example:8443"));
    assert_eq!(
        canonical_headers(&["host".into()], &h).unwrap(),
        "host:example:8443\n"
    );
}

#[test]
fn secret_key_debug_hides_the_secret() {
    let s = SecretKey::new("super-secret-value");
    assert!(!format!("{s:?}").contains("super-secret"));
}

#[test]
fn the_cached_signing_key_is_the_derived_one_for_every_scope_asked() {
    let secret = SecretKey::new("c2VjcmV0c2VjcmV0");
    let scopes = [
        ("20261205", "cn-north-1"),
        ("20261205", "cn-north-1"),
        ("20261205", "ap-southeast-1"),
        ("20261206", "ap-southeast-1"),
        ("20261205", "cn-north-1"),
    ];
    for (date, region) in scopes {
        assert_eq!(
            secret.signing_key(date, region, SERVICE),
            signing_key(&secret, date, region, SERVICE),
            "{date} {region}"
        );
    }
    // Another secret never gets this one's cached key.
    let other = SecretKey::new("another-secret");
    assert_ne!(
        other.signing_key("20261205", "cn-north-1", SERVICE),
        secret.signing_key("20261205", "cn-north-1", SERVICE)
    );
}

#[test]
fn signature_comparison_rejects_wrong_length_and_non_hex() {
    let sig = Signature::compute(&[7u8; 32], "x");
    let hex = sig.to_hex();
    assert!(sig.matches_hex(&hex));
    assert!(sig.matches_hex(&hex.to_uppercase()));
    assert!(!sig.matches_hex(&hex[..62]));
    assert!(!sig.matches_hex(&format!("{}zz", &hex[..62])));
}

#[test]
fn authorization_without_signature_is_missing_signature() {
    let e = parse_authorization(
        "HMAC-SHA256 Credential=AK/20260101/cn-north-1/rtc/request, SignedHeaders=x-date",
    )
    .unwrap_err();
    assert_eq!(e, AuthError::MissingSignature);
}

#[test]
fn unsigned_x_date_is_refused() {
    let mut h = signed("Action=A", &[], b"{}");
    let auth = h
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .replace(";x-date", "");
    h.insert("authorization", auth.parse().unwrap());
    assert!(matches!(
        verify_all("Action=A", &h, b"{}"),
        Err(AuthError::Mismatch(_))
    ));
}

#[test]
fn clock_window_is_fifteen_minutes_either_way() {
    let regions = regions();
    let h = signed("", &[], b"");
    for (offset, ok) in [
        (-15 * 60, true),
        (15 * 60, true),
        (-15 * 60 - 1, false),
        (15 * 60 + 1, false),
    ] {
        let policy = VerifyPolicy {
            now: now() + Duration::seconds(offset),
            regions: &regions,
        };
        let r = ParsedAuth::parse(&h, &policy);
        assert_eq!(r.is_ok(), ok, "offset {offset}: {r:?}");
        if !ok {
            assert!(matches!(r, Err(AuthError::Expired(_))));
        }
    }
}

fn header_name() -> impl Strategy<Value = String> {
    "x-[a-z]{1,12}".prop_filter("not a header the signer sets", |n| {
        n != "x-date" && n != "x-content-sha256"
    })
}

prop_compose! {
    fn request()(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        query in proptest::collection::vec(("[A-Za-z0-9 ~._+-]{1,10}", "[ -~]{0,12}"), 0..5),
        extra in proptest::collection::btree_map(header_name(), "[!-~]{1,20}", 0..4),
    ) -> (Vec<u8>, String, Vec<(String, String)>) {
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
        (body, query, extra.into_iter().collect())
    }
}

proptest! {
    #[test]
    fn sign_then_verify_passes((body, query, extra) in request()) {
        let h = signed(&query, &extra, &body);
        prop_assert_eq!(verify_all(&query, &h, &body), Ok(()));
    }

    #[test]
    fn any_changed_body_byte_fails((body, query, extra) in request(), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        prop_assume!(!body.is_empty());
        let h = signed(&query, &extra, &body);
        let mut tampered = body.clone();
        let i = pos.index(body.len());
        tampered[i] ^= flip;
        prop_assert!(matches!(verify_all(&query, &h, &tampered), Err(AuthError::Mismatch(_))));
        // Also with the claimed hash removed: the server hashes what it received.
        let mut h2 = h.clone();
        h2.remove("x-content-sha256");
        let r = verify_all(&query, &h2, &tampered);
        prop_assert!(matches!(r, Err(AuthError::Mismatch(_))), "{:?}", r);
    }

    #[test]
    fn any_changed_signed_header_fails((body, query, extra) in request(), pick in any::<prop::sample::Index>()) {
        let h = signed(&query, &extra, &body);
        let names = ["host", "content-type"].into_iter().map(str::to_owned)
            .chain(extra.iter().map(|(k, _)| k.clone())).collect::<Vec<_>>();
        let name = &names[pick.index(names.len())];
        let mut h2 = h.clone();
        let old = h2.get(name.as_str()).unwrap().to_str().unwrap().to_owned();
        h2.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), format!("{old}x").parse().unwrap());
        prop_assert!(matches!(verify_all(&query, &h2, &body), Err(AuthError::Mismatch(_))));
        // Removing a signed header fails too.
        let mut h3 = h.clone();
        h3.remove(name.as_str());
        prop_assert!(matches!(verify_all(&query, &h3, &body), Err(AuthError::Mismatch(_))));
    }

    #[test]
    fn any_changed_query_fails((body, query, extra) in request(), key in "[A-Za-z]{1,8}") {
        let h = signed(&query, &extra, &body);
        let tampered = if query.is_empty() { format!("{key}=1") } else { format!("{query}&{key}=1") };
        prop_assert!(matches!(verify_all(&tampered, &h, &body), Err(AuthError::Mismatch(_))));
    }

    #[test]
    fn any_changed_signature_char_fails((body, query, extra) in request(), pos in 0usize..64) {
        let h = signed(&query, &extra, &body);
        let auth = h.get("authorization").unwrap().to_str().unwrap().to_owned();
        let sig_start = auth.rfind("Signature=").unwrap() + "Signature=".len();
        let mut bytes = auth.into_bytes();
        let c = &mut bytes[sig_start + pos];
        *c = if *c == b'0' { b'1' } else { b'0' };
        let mut h2 = h.clone();
        h2.insert("authorization", String::from_utf8(bytes).unwrap().parse().unwrap());
        prop_assert!(matches!(verify_all(&query, &h2, &body), Err(AuthError::Mismatch(_))));
    }

    #[test]
    fn authorization_parser_never_panics(s in "\\PC{0,200}") {
        let _ = parse_authorization(&s);
        let _ = parse_x_date(&s);
    }
}
