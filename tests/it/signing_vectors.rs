//! Known-answer tests over the official SDK signers' vectors: every `accept` request
//! verifies at its server_time, every `reject` request fails with its Code, and the
//! canonical request and string to sign equal the ones the Python SDK itself produced.

use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tagcast::api::ApiError;
use tagcast::signing::{self, ParsedAuth, SecretKey, VerifyPolicy};

/// Vector files: the project's copy, plus ../shared/vectors when it is present (it is kept
/// current there), each file once by name.
fn vector_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut by_name = std::collections::BTreeMap::new();
    for dir in [root.join("tests/vectors"), root.join("../shared/vectors")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("signature_v4_") && name.ends_with(".json") {
                by_name.insert(name, e.path());
            }
        }
    }
    assert!(
        by_name.len() >= 2,
        "expected the Python and Node vector files"
    );
    by_name.into_values().collect()
}

fn headers_of(req: &Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in req["headers"].as_object().unwrap() {
        h.append(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
        );
    }
    h
}

/// What the server answers for a request at `now`, as a Code, or Ok.
fn verify(case: &Value, req: &Value) -> Result<(), String> {
    let regions = vec!["cn-north-1".to_owned(), "ap-southeast-1".to_owned()];
    let now = signing::parse_x_date(case["server_time"].as_str().unwrap()).unwrap();
    let policy = VerifyPolicy {
        now,
        regions: &regions,
    };
    let headers = headers_of(req);
    let code = |e: signing::AuthError| ApiError::from(e).code.wire().1.to_owned();
    let parsed = ParsedAuth::parse(&headers, &policy).map_err(code)?;
    if parsed.credential.access_key != case["access_key"].as_str().unwrap() {
        return Err("InvalidAccessKey".into());
    }
    let secret = SecretKey::new(case["secret_key"].as_str().unwrap());
    let body = req["body"].as_str().unwrap().as_bytes();
    parsed
        .verify(
            &secret,
            req["method"].as_str().unwrap(),
            req["path"].as_str().unwrap(),
            req["query"].as_str().unwrap(),
            &headers,
            body,
        )
        .map_err(code)
}

#[test]
fn every_official_sdk_vector_accepts_and_rejects_as_documented() {
    let mut accepted = 0;
    let mut rejected = 0;
    for file in vector_files() {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for case in doc["cases"].as_array().unwrap() {
            let name = format!("{} / {}", file.display(), case["name"]);
            assert_eq!(verify(case, &case["accept"]), Ok(()), "{name}: accept");
            accepted += 1;
            for r in case["reject"].as_array().unwrap() {
                let got = verify(case, &r["request"]);
                assert_eq!(
                    got,
                    Err(r["code"].as_str().unwrap().to_owned()),
                    "{name}: reject {}",
                    r["why"]
                );
                rejected += 1;
            }
        }
    }
    assert!(
        accepted >= 7 && rejected >= 30,
        "only {accepted} accept / {rejected} reject cases ran"
    );
}

#[test]
fn accept_vectors_fail_fifteen_minutes_and_one_second_later() {
    for file in vector_files() {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for case in doc["cases"].as_array().unwrap() {
            let mut late = case.clone();
            let t = signing::parse_x_date(case["server_time"].as_str().unwrap()).unwrap()
                + time::Duration::seconds(901);
            late["server_time"] = Value::String(signing::format_x_date(t));
            assert_eq!(
                verify(&late, &case["accept"]),
                Err("InvalidTimestamp".into()),
                "{}",
                case["name"]
            );
        }
    }
}

/// Steps recorded from the official Python SDK signer by tests/vectors/gen_steps.py.
#[test]
fn canonical_request_and_string_to_sign_match_the_python_sdk_step_by_step() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let steps: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("python_sdk_steps.json")).unwrap())
            .unwrap();
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("signature_v4_python_sdk.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for step in steps["cases"].as_array().unwrap() {
        let case = vectors["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == step["name"])
            .unwrap();
        let req = &case["accept"];
        let headers = headers_of(req);
        let regions = vec![case["region"].as_str().unwrap().to_owned()];
        let now = signing::parse_x_date(case["server_time"].as_str().unwrap()).unwrap();
        let parsed = ParsedAuth::parse(
            &headers,
            &VerifyPolicy {
                now,
                regions: &regions,
            },
        )
        .unwrap();
        let body = req["body"].as_str().unwrap().as_bytes();
        let canonical_headers =
            signing::canonical_headers(&parsed.signed_headers, &headers).unwrap();
        let creq = signing::canonical_request(
            req["method"].as_str().unwrap(),
            req["path"].as_str().unwrap(),
            req["query"].as_str().unwrap(),
            &canonical_headers,
            &parsed.signed_headers.join(";"),
            &signing::sha256_hex(body),
        );
        assert_eq!(
            creq,
            step["canonical_request"].as_str().unwrap(),
            "canonical request of {}",
            step["name"]
        );
        let sts = signing::string_to_sign(&parsed.x_date, &parsed.credential.scope(), &creq);
        assert_eq!(
            sts,
            step["string_to_sign"].as_str().unwrap(),
            "string to sign of {}",
            step["name"]
        );
        let key = signing::signing_key(
            &SecretKey::new(case["secret_key"].as_str().unwrap()),
            &parsed.credential.date,
            &parsed.credential.region,
            "rtc",
        );
        let sig = signing::Signature::compute(&key, &sts);
        assert_eq!(
            sig.to_hex(),
            step["signature"].as_str().unwrap(),
            "signature of {}",
            step["name"]
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// Our signer, given the same request and clock, produces the official SDK's Authorization.
#[test]
fn our_signer_reproduces_the_python_sdk_authorization() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("signature_v4_python_sdk.json")).unwrap(),
    )
    .unwrap();
    for case in vectors["cases"].as_array().unwrap() {
        let req = &case["accept"];
        let mut headers = headers_of(req);
        let expected = headers.remove("authorization").unwrap();
        headers.remove("x-date");
        headers.remove("x-content-sha256");
        let creds = signing::Credentials {
            access_key: case["access_key"].as_str().unwrap().into(),
            secret_key: SecretKey::new(case["secret_key"].as_str().unwrap()),
            region: case["region"].as_str().unwrap().into(),
        };
        let now = signing::parse_x_date(case["server_time"].as_str().unwrap()).unwrap();
        signing::sign(
            req["method"].as_str().unwrap(),
            req["path"].as_str().unwrap(),
            req["query"].as_str().unwrap(),
            &mut headers,
            req["body"].as_str().unwrap().as_bytes(),
            &creds,
            now,
        );
        assert_eq!(headers["authorization"], expected, "{}", case["name"]);
    }
}
