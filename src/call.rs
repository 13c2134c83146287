//! `tagcast call`: sends one signed request with the same [`crate::signing`] code the
//! server verifies with, and reports the answer.

use std::path::Path;

use http::{HeaderMap, HeaderValue};
use time::OffsetDateTime;

use crate::accounts;
use crate::actions::VERSION;
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

/// A client bound to one endpoint and one key pair.
pub struct Client {
    pub endpoint: String,
    pub credentials: Credentials,
    http: reqwest::Client,
}

impl Client {
    /// `endpoint` is `http://host:port`.
    pub fn new(endpoint: &str, credentials: Credentials) -> Self {
        Client {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            credentials,
            http: reqwest::Client::new(),
        }
    }

    /// Signs and sends `POST /?Action=..&Version=2020-12-01` with `body`.
    pub async fn call(&self, action: &str, body: &[u8]) -> Result<Answer, String> {
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
    ) -> Result<Answer, String> {
        let url: reqwest::Url = format!("{}/?{query}", self.endpoint)
            .parse()
            .map_err(|e| format!("endpoint {:?}: {e}", self.endpoint))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(format!("endpoint {:?} has no host", self.endpoint)),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
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
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let response = self
            .http
            .request(method, url)
            .headers(headers)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| format!("sending to {}: {e}", self.endpoint))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// Credentials from flags/environment, else the development credentials that `serve`
/// generated in `data_dir`.
pub fn resolve_credentials(
    access_key: Option<String>,
    secret_key: Option<String>,
    region: String,
    data_dir: &Path,
) -> Result<Credentials, String> {
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
            (key.access_key, key.secret_key)
        }
        _ => return Err("give both --access-key and --secret-key, or neither".into()),
    };
    Ok(Credentials {
        access_key,
        secret_key: SecretKey::new(secret_key),
        region,
    })
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
