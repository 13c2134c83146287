//! `tagcast call`: sends one signed request with the same [`crate::signing`] code the
//! server verifies with, and reports the answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use time::OffsetDateTime;

use crate::accounts;
use crate::actions::{Action, VERSION};
use crate::signing::{self, Credentials, SecretKey};

/// The parts of an HTTP answer a caller looks at.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `Result.FailedInfos` of a 200 answer (empty when absent).
    pub fn failed_infos(&self) -> Vec<serde_json::Value> {
        self.json()["Result"]["FailedInfos"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `(Code, Message)` when the answer carries an error.
    pub fn error(&self) -> Option<(String, String)> {
        let v = self.json();
        let e = v.get("ResponseMetadata")?.get("Error")?;
        Some((
            e.get("Code")?.as_str()?.to_owned(),
            e.get("Message")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_owned(),
        ))
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Nothing answered at the endpoint (refused, timed out, not HTTP).
    #[error("{0}")]
    Unreachable(String),
    /// The request could not be made (a bad endpoint or header).
    #[error("{0}")]
    Invalid(String),
}

/// A client bound to one endpoint and one key pair.
pub struct Client {
    pub endpoint: String,
    pub credentials: Credentials,
    http: reqwest::Client,
    timeout: Duration,
}

impl Client {
    /// `endpoint` is `http://host:port`; requests wait at most 60 s for an answer.
    pub fn new(endpoint: &str, credentials: Credentials) -> Self {
        Self::with_timeout(endpoint, credentials, Duration::from_secs(60))
    }

    pub fn with_timeout(endpoint: &str, credentials: Credentials, timeout: Duration) -> Self {
        Client {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            credentials,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .tls_backend_preconfigured(crate::tls::http_client_tls(endpoint))
                .build()
                .expect("a plain HTTP client builds"),
            timeout,
        }
    }

    /// Signs and sends `POST /?Action=..&Version=2020-12-01` with `body`.
    pub async fn call(&self, action: &str, body: &[u8]) -> Result<Answer, CallError> {
        let query = format!("Action={action}&Version={VERSION}");
        self.send("POST", &query, body, OffsetDateTime::now_utc())
            .await
    }

    /// Signs at `now` and sends; tests use other methods, queries and clocks.
    pub async fn send(
        &self,
        method: &str,
        query: &str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Answer, CallError> {
        let invalid = |what: String| CallError::Invalid(what);
        let url = endpoint_url(&self.endpoint, &format!("/?{query}")).map_err(invalid)?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(invalid(format!("endpoint {:?} has no host", self.endpoint))),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(&host).map_err(|e| invalid(e.to_string()))?,
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        signing::sign(
            method,
            "/",
            query,
            &mut headers,
            body,
            &self.credentials,
            now,
        );
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let response = self
            .http
            .request(method, url)
            .headers(headers)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| unreachable(&self.endpoint, self.timeout, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(&self.endpoint, self.timeout, &e))?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// `endpoint` (`http://host:port`) with `path` after it; an endpoint without a scheme is
/// named with the fix (`--endpoint 127.0.0.1:8080` means `http://127.0.0.1:8080`).
pub fn endpoint_url(endpoint: &str, path: &str) -> Result<reqwest::Url, String> {
    let endpoint = endpoint.trim_end_matches('/');
    if !endpoint.contains("://") {
        return Err(format!(
            "endpoint {endpoint:?} has no scheme: write http://{endpoint}"
        ));
    }
    let url: reqwest::Url = format!("{endpoint}{path}")
        .parse()
        .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    if url.host_str().is_none() {
        return Err(format!("endpoint {endpoint:?} has no host"));
    }
    Ok(url)
}

/// What a user should read when nothing answered: the cause, and what to check.
pub fn unreachable(endpoint: &str, timeout: Duration, e: &reqwest::Error) -> CallError {
    let causes = error_chain(e);
    let text = if e.is_timeout() {
        format!(
            "no answer from {endpoint} within {} s ({causes})",
            timeout.as_secs()
        )
    } else if causes.contains("Connection refused") {
        format!("connection refused: is tagcast running at {endpoint}?")
    } else if e.is_connect() {
        format!("cannot connect to {endpoint}: {causes}")
    } else {
        format!("{endpoint} did not answer as an HTTP server: {causes}")
    };
    CallError::Unreachable(text)
}

/// An error and its causes, innermost last, without repeats.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The Action the user most likely meant by `name` (case-insensitive, or within three
/// edits), for answers of `InvalidActionOrVersion`.
pub fn closest_action(name: &str) -> Option<&'static str> {
    crate::api::names::closest(name, Action::ALL.iter().map(|a| a.name()), 3).filter(|n| *n != name)
}

/// Where `tagcast call`'s key came from.
pub enum CredentialSource {
    /// Flags or environment.
    Given,
    /// The development credentials `tagcast serve` generated.
    File(PathBuf),
}

/// Credentials from flags/environment, else the development credentials that `serve`
/// generated in `data_dir`.
pub fn resolve_credentials(
    access_key: Option<String>,
    secret_key: Option<String>,
    region: String,
    data_dir: &Path,
) -> Result<(Credentials, CredentialSource), String> {
    let mut source = CredentialSource::Given;
    let (access_key, secret_key) = match (access_key, secret_key) {
        (Some(ak), Some(sk)) => (ak, sk),
        (None, None) => {
            let path = data_dir.join(accounts::BOOTSTRAP_FILE);
            if !path.exists() {
                return Err(format!(
                    "no credentials: pass --access-key and --secret-key (or TAGCAST_ACCESS_KEY and \
                     TAGCAST_SECRET_KEY), or run where `tagcast serve` created {}",
                    path.display()
                ));
            }
            let key = accounts::read_credentials_file(&path)?
                .into_iter()
                .flat_map(|a| a.keys)
                .find(|k| !k.disabled)
                .ok_or_else(|| format!("{} holds no enabled key", path.display()))?;
            let secret = key
                .secret_key
                .ok_or_else(|| format!("{} names no secret_key", path.display()))?;
            source = CredentialSource::File(path);
            (key.access_key, secret)
        }
        _ => return Err("give both --access-key and --secret-key, or neither".into()),
    };
    let credentials = Credentials {
        access_key,
        secret_key: SecretKey::new(secret_key),
        region,
    };
    Ok((credentials, source))
}

/// The body argument: inline JSON, or `@path` to read a file.
pub fn read_body_arg(arg: Option<&str>) -> Result<Vec<u8>, String> {
    match arg {
        None => Ok(b"{}".to_vec()),
        Some(a) => match a.strip_prefix('@') {
            Some(path) => std::fs::read(path).map_err(|e| format!("reading {path}: {e}")),
            None => Ok(a.as_bytes().to_vec()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_action_forgives_case_and_small_typos_only() {
        assert_eq!(
            closest_action("BatchUpdateUserTag"),
            Some("BatchUpdateUserTags")
        );
        assert_eq!(closest_action("batchgetuser"), Some("BatchGetUser"));
        assert_eq!(closest_action("UnregisterUsers"), Some("UnRegisterUsers"));
        assert_eq!(closest_action("BatchUpdateUsers"), Some("BatchUpdateUser"));
        assert_eq!(closest_action("RegisterUsers"), None);
        assert_eq!(closest_action("DeleteEverything"), None);
    }
}
