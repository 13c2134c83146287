//! Volcengine signature V4, header form: pure functions, no I/O, no configuration.
//!
//! The server verifies with [`ParsedAuth::parse`] (cheap header checks, clock passed in)
//! followed by [`ParsedAuth::verify`] (body hash and HMAC, after the caller has looked up
//! the secret). `tagcast call` and the tests sign with [`sign`]. Each step of the
//! algorithm is a public function so tests can assert it on its own.

mod keys;
#[cfg(test)]
mod tests;

pub use keys::{SecretKey, Signature};

use http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use time::{
    Duration, OffsetDateTime, PrimitiveDateTime, format_description::BorrowedFormatItem,
    macros::format_description,
};

pub const ALGORITHM: &str = "HMAC-SHA256";
pub const SERVICE: &str = "rtc";
pub const TERMINATOR: &str = "request";
/// How far X-Date may be from the server clock, either way.
pub const CLOCK_WINDOW: Duration = Duration::minutes(15);

const X_DATE_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// RFC 3986 unreserved characters stay as they are; everything else is %XX (upper case).
const QUERY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Same set, but `/` separates path segments and is kept.
const PATH_ENCODE: &AsciiSet = &QUERY_ENCODE.remove(b'/');

/// Why a request failed authentication. The gateway maps each kind to its error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No Authorization header at all.
    MissingAuthorization,
    /// Authorization or X-Date present but not in the expected form.
    Malformed(String),
    /// Authorization has no (or an empty) Signature part.
    MissingSignature,
    /// X-Date is outside the clock window.
    Expired(String),
    /// Signature, body hash or credential scope do not match.
    Mismatch(String),
}

/// The parts of `Credential=AK/date/region/service/request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialScope {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

impl CredentialScope {
    /// `date/region/service/request`, as it appears in the string to sign.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/{TERMINATOR}",
            self.date, self.region, self.service
        )
    }
}

/// A parsed Authorization header whose cheap checks (form, clock window, scope) passed.
#[derive(Debug)]
pub struct ParsedAuth {
    pub credential: CredentialScope,
    /// Lower-cased, sorted, de-duplicated header names from SignedHeaders.
    pub signed_headers: Vec<String>,
    pub x_date: String,
    signature_hex: String,
}

/// What the verifier accepts besides the signature itself.
pub struct VerifyPolicy<'a> {
    pub now: OffsetDateTime,
    pub regions: &'a [String],
}

impl ParsedAuth {
    /// The signature the client sent (hex, either case). Once [`ParsedAuth::verify`]
    /// passed, it names this request: a replay carries the same (UserBroadcast's token).
    pub fn signature(&self) -> &str {
        &self.signature_hex
    }

    /// Parses Authorization and X-Date and checks everything that needs no secret and no
    /// body: form, the clock window against `policy.now`, service and region of the scope.
    pub fn parse(headers: &HeaderMap, policy: &VerifyPolicy<'_>) -> Result<Self, AuthError> {
        let auth = match headers.get(http::header::AUTHORIZATION) {
            None => return Err(AuthError::MissingAuthorization),
            Some(v) => v
                .to_str()
                .map_err(|_| AuthError::Malformed("Authorization is not ASCII".into()))?,
        };
        let parsed = parse_authorization(auth)?;
        let x_date = headers
            .get("x-date")
            .ok_or_else(|| AuthError::Malformed("X-Date header is missing".into()))?
            .to_str()
            .map_err(|_| AuthError::Malformed("X-Date is not ASCII".into()))?
            .trim()
            .to_owned();
        let when = parse_x_date(&x_date)?;
        let skew = (policy.now - when).abs();
        if skew > CLOCK_WINDOW {
            return Err(AuthError::Expired(format!(
                "X-Date {x_date} is {} s away from the server clock; the limit is {} s",
                skew.whole_seconds(),
                CLOCK_WINDOW.whole_seconds()
            )));
        }
        let (credential, signed_headers, signature_hex) = parsed;
        if credential.service != SERVICE {
            return Err(AuthError::Mismatch(format!(
                "credential scope names service {:?}; this server is {SERVICE:?}",
                credential.service
            )));
        }
        if !policy.regions.contains(&credential.region) {
            return Err(AuthError::Mismatch(format!(
                "credential scope names region {:?}, which this server does not accept",
                credential.region
            )));
        }
        if credential.date != x_date[..8] {
            return Err(AuthError::Mismatch(
                "credential scope date differs from X-Date".into(),
            ));
        }
        if !signed_headers.iter().any(|h| h == "x-date") {
            return Err(AuthError::Mismatch(
                "SignedHeaders must include x-date".into(),
            ));
        }
        Ok(ParsedAuth {
            credential,
            signed_headers,
            x_date,
            signature_hex,
        })
    }

    /// Recomputes the signature over the request as received (body hash from `body`
    /// itself) with `secret` and compares in constant time.
    pub fn verify(
        &self,
        secret: &SecretKey,
        method: &str,
        path: &str,
        raw_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let body_hash = sha256_hex(body);
        let claimed = headers.get("x-content-sha256");
        if claimed.is_some_and(|c| !c.as_bytes().eq_ignore_ascii_case(body_hash.as_bytes())) {
            return Err(AuthError::Mismatch(
                "X-Content-Sha256 does not match the body".into(),
            ));
        }
        let canonical_headers = canonical_headers(&self.signed_headers, headers)?;
        let creq = canonical_request(
            method,
            path,
            raw_query,
            &canonical_headers,
            &self.signed_headers.join(";"),
            &body_hash,
        );
        let sts = string_to_sign(&self.x_date, &self.credential.scope(), &creq);
        let key = secret.signing_key(&self.credential.date, &self.credential.region, SERVICE);
        let expected = Signature::compute(&key, &sts);
        if expected.matches_hex(&self.signature_hex) {
            Ok(())
        } else {
            Err(AuthError::Mismatch("signature does not match".into()))
        }
    }
}

type AuthorizationParts = (CredentialScope, Vec<String>, String);

/// Splits `HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationParts, AuthError> {
    let malformed = |why: &str| AuthError::Malformed(format!("Authorization header: {why}"));
    let (algorithm, rest) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| malformed("no parts after the algorithm"))?;
    if algorithm != ALGORITHM {
        return Err(malformed("algorithm must be HMAC-SHA256"));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, val) = part
            .split_once('=')
            .ok_or_else(|| malformed("a part has no '='"))?;
        let slot = match name.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(
                    "unknown part (expected Credential, SignedHeaders, Signature)",
                ));
            }
        };
        if slot.replace(val.trim()).is_some() {
            return Err(malformed("a part appears twice"));
        }
    }
    let credential = credential.ok_or_else(|| malformed("Credential is missing"))?;
    let fields: Vec<&str> = credential.split('/').collect();
    let [ak, date, region, service, terminator] = fields[..] else {
        return Err(malformed(
            "Credential must be AccessKey/Date/Region/Service/request",
        ));
    };
    if ak.is_empty() || region.is_empty() || service.is_empty() || terminator != TERMINATOR {
        return Err(malformed(
            "Credential must be AccessKey/Date/Region/Service/request",
        ));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("Credential date must be YYYYMMDD"));
    }
    let signed = signed.ok_or_else(|| malformed("SignedHeaders is missing"))?;
    let mut names: Vec<String> = signed
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if names.iter().any(String::is_empty) {
        return Err(malformed("SignedHeaders has an empty name"));
    }
    names.sort();
    names.dedup();
    let signature = match signature {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => return Err(AuthError::MissingSignature),
    };
    let scope = CredentialScope {
        access_key: ak.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
    };
    Ok((scope, names, signature))
}

/// Parses `YYYYMMDD'T'HHMMSS'Z'` (UTC).
pub fn parse_x_date(value: &str) -> Result<OffsetDateTime, AuthError> {
    PrimitiveDateTime::parse(value, X_DATE_FORMAT)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| {
            AuthError::Malformed(format!(
                "X-Date must be YYYYMMDD'T'HHMMSS'Z', got {:?}",
                truncate(value, 32)
            ))
        })
}

pub fn format_x_date(when: OffsetDateTime) -> String {
    when.to_offset(time::UtcOffset::UTC)
        .format(X_DATE_FORMAT)
        .expect("X-Date format has only numeric components")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Decodes the raw query (`+` is a space, as form encoders send it), re-encodes each key
/// and value with RFC 3986 rules (space as `%20`) and sorts by key, keeping the order of
/// repeated keys, as the official SDKs do.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(raw_query.len() + 8);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.extend(utf8_percent_encode(k, QUERY_ENCODE));
        out.push('=');
        out.extend(utf8_percent_encode(v, QUERY_ENCODE));
    }
    out
}

/// The path as the client meant it (percent-decoded), re-encoded; `/` when empty.
pub fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".into();
    }
    let decoded = percent_decode_str(raw_path).decode_utf8_lossy();
    utf8_percent_encode(&decoded, PATH_ENCODE).to_string()
}

/// `name:trimmed-value\n` for each signed header, in sorted order. Repeated headers are
/// joined with `,`. A signed header missing from the request fails verification.
pub fn canonical_headers(signed: &[String], headers: &HeaderMap) -> Result<String, AuthError> {
    let mut out = String::new();
    for name in signed {
        let mut values = headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            return Err(AuthError::Mismatch(format!(
                "signed header {name:?} is not in the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        for (i, v) in values.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = String::from_utf8_lossy(v.as_bytes());
            let v = v.trim();
            if name == "host" {
                out.push_str(strip_default_port(v));
            } else {
                out.push_str(v);
            }
        }
        out.push('\n');
    }
    Ok(out)
}

fn strip_default_port(host: &str) -> &str {
    host.strip_suffix(":80")
        .or_else(|| host.strip_suffix(":443"))
        .unwrap_or(host)
}

pub fn canonical_request(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    canonical_headers: &str,
    signed_headers: &str,
    body_sha256_hex: &str,
) -> String {
    format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{body_sha256_hex}",
        canonical_uri(raw_path),
        canonical_query(raw_query)
    )
}

pub fn string_to_sign(x_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{x_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// HMAC chain secret -> date -> region -> service -> "request" (no prefix on the secret).
pub fn signing_key(secret: &SecretKey, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = keys::hmac(secret.expose().as_bytes(), date.as_bytes());
    let k_region = keys::hmac(&k_date, region.as_bytes());
    let k_service = keys::hmac(&k_region, service.as_bytes());
    keys::hmac(&k_service, TERMINATOR.as_bytes())
}

/// Credentials a client signs with.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: SecretKey,
    pub region: String,
}

/// Signs a request the way the official Python SDK does: sets X-Date and X-Content-Sha256,
/// signs Content-Type, Host and every `X-` header present, and sets Authorization.
pub fn sign(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &mut HeaderMap,
    body: &[u8],
    creds: &Credentials,
    now: OffsetDateTime,
) {
    let x_date = format_x_date(now);
    let body_hash = sha256_hex(body);
    headers.insert("x-date", x_date.parse().expect("X-Date is ASCII"));
    headers.insert("x-content-sha256", body_hash.parse().expect("hex is ASCII"));
    let mut signed: Vec<String> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| matches!(*k, "content-type" | "content-md5" | "host") || k.starts_with("x-"))
        .map(str::to_owned)
        .collect();
    signed.sort();
    signed.dedup();
    let canonical = canonical_headers(&signed, headers).expect("every signed header is present");
    let signed_list = signed.join(";");
    let creq = canonical_request(
        method,
        raw_path,
        raw_query,
        &canonical,
        &signed_list,
        &body_hash,
    );
    let date = &x_date[..8];
    let scope = CredentialScope {
        access_key: creds.access_key.clone(),
        date: date.to_owned(),
        region: creds.region.clone(),
        service: SERVICE.to_owned(),
    };
    let sts = string_to_sign(&x_date, &scope.scope(), &creq);
    let key = signing_key(&creds.secret_key, date, &creds.region, SERVICE);
    let signature = Signature::compute(&key, &sts);
    let value = format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={signed_list}, Signature={}",
        creds.access_key,
        scope.scope(),
        signature.to_hex()
    );
    headers.insert(
        http::header::AUTHORIZATION,
        value.parse().expect("Authorization is ASCII"),
    );
}

/// Shortens user-supplied text quoted back in messages.
pub fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}...", &s[..i]),
    }
}
