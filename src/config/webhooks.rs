//! `[[webhooks]]` (where broadcasts are POSTed) and `[delivery]` (how hard tagcast tries).
//! A webhook's secret comes from the file, an environment variable or a file of its own,
//! like an access key's; it is never printed, logged or serialized.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `url` without any `user:password@` (for logs and errors: it may hold credentials).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// Most user ids in one webhook POST.
pub const MAX_PAGE_SIZE: usize = 100_000;

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The HMAC key of `X-Tagcast-Signature`.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// The name of an environment variable holding the secret instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// A file holding only the secret instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The apps whose broadcasts go here; absent: every app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<i64>>,
    /// User ids per POST (1..=100000).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// https only: trust the CA certificates of this PEM file instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Whether broadcast pages go here (API.md §7; default true).
    #[serde(default = "default_true")]
    pub broadcasts: bool,
    /// The event types whose events go here, in order (API.md §9; default none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_page_size() -> usize {
    10_000
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("apps", &self.apps)
            .field("page_size", &self.page_size)
            .field("ca_file", &self.ca_file)
            .field("broadcasts", &self.broadcasts)
            .field("events", &self.events)
            .finish()
    }
}

impl WebhookConfig {
    /// A webhook of every app, its secret in `secret_file`.
    pub fn with_secret_file(url: &str, secret_file: PathBuf, page_size: usize) -> Self {
        WebhookConfig {
            url: url.to_owned(),
            secret: None,
            secret_env: None,
            secret_file: Some(secret_file),
            apps: None,
            page_size,
            ca_file: None,
            broadcasts: true,
            events: Vec::new(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let at = |what: String| format!("webhooks ({}): {what}", redact_url(&self.url));
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("webhooks: url {} is not a URL: {e}", redact_url(&self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(at("the url must be http:// or https:// with a host".into()));
        }
        if self.ca_file.is_some() && url.scheme() != "https" {
            return Err(at(
                "ca_file is set but the url is not https:// (a CA file only verifies https)".into(),
            ));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(at(format!(
                "page_size is {}; it must be 1..={MAX_PAGE_SIZE}",
                self.page_size
            )));
        }
        let sources = [
            self.secret.is_some(),
            self.secret_env.is_some(),
            self.secret_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(at(
                "give its secret as exactly one of secret, secret_env (an environment variable's name) or secret_file"
                    .into(),
            ));
        }
        for (i, name) in self.events.iter().enumerate() {
            if crate::model::events::EventType::parse(name).is_none() {
                return Err(at(format!(
                    "events[{i}] is {name:?}, not an event type; the types are: {}",
                    crate::model::events::EventType::names()
                )));
            }
        }
        if !self.broadcasts && self.events.is_empty() {
            return Err(at(
                "broadcasts = false and no events: nothing would be sent to it".into(),
            ));
        }
        for app in self.apps.iter().flatten() {
            if !(1..=i64::from(i32::MAX)).contains(app) {
                return Err(at(format!("AppId {app} is outside 1..=2147483647")));
            }
        }
        Ok(())
    }

    /// The TLS configuration of an https webhook: its `ca_file`'s CAs, or the system's.
    fn tls(&self) -> Result<Option<rustls::ClientConfig>, String> {
        // The parsed scheme: "HTTPS://..." is https too.
        if !reqwest::Url::parse(&self.url).is_ok_and(|u| u.scheme() == "https") {
            return Ok(None);
        }
        let setting = format!("webhooks ({}) ca_file", redact_url(&self.url));
        let roots = match &self.ca_file {
            Some(path) => crate::tls::load_ca_file(&setting, path)?,
            None => crate::tls::system_roots(&format!(
                "webhooks ({}) without ca_file",
                redact_url(&self.url)
            ))?,
        };
        crate::tls::client_config(roots)
            .map(Some)
            .map_err(|e| format!("webhooks ({}): {e}", redact_url(&self.url)))
    }

    fn read_secret(&self) -> Result<String, String> {
        let at = |what: String| format!("webhooks ({}): {what}", redact_url(&self.url));
        let secret = if let Some(s) = &self.secret {
            s.clone()
        } else if let Some(var) = &self.secret_env {
            std::env::var(var).map_err(|_| at(format!("secret_env = {var:?} is not set")))?
        } else if let Some(path) = &self.secret_file {
            std::fs::read_to_string(path)
                .map_err(|e| at(format!("cannot read secret_file {}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned()
        } else {
            return Err(at("no secret".into()));
        };
        if secret.len() < 16 {
            return Err(at(format!(
                "the secret is {} bytes; use at least 16 random bytes",
                secret.len()
            )));
        }
        if let Some(why) = super::weak_secret_reason(&secret) {
            return Err(at(format!("the secret is refused: {why}")));
        }
        Ok(secret)
    }
}

/// A webhook ready to use: its secret read.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    /// The HMAC key of `X-Tagcast-Signature`: the secret's bytes as given.
    pub secret: Arc<zeroize::Zeroizing<Vec<u8>>>,
    /// The HMAC key of the Standard Webhooks `webhook-signature`: a `whsec_<base64>`
    /// secret's decoded bytes, any other secret's bytes as given (API.md §7).
    pub standard_key: Arc<zeroize::Zeroizing<Vec<u8>>>,
    pub apps: Option<Vec<u32>>,
    pub page_size: usize,
    /// Whether broadcast pages go here.
    pub broadcasts: bool,
    /// The event types sent here (API.md §9; empty: no events).
    pub events: Vec<crate::model::events::EventType>,
    /// https: the TLS configuration that verifies the receiver (the system's CA
    /// certificates, or `ca_file`'s), on the binary's one crypto provider.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redact_url(&self.url))
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub fn serves(&self, app: u32) -> bool {
        self.apps.as_ref().is_none_or(|a| a.contains(&app))
    }
}

/// Reads every webhook's secret; refuses missing and weak ones, and a URL configured twice
/// (pages are kept per URL).
pub fn resolve_webhooks(webhooks: &[WebhookConfig]) -> Result<Vec<Webhook>, String> {
    let mut out: Vec<Webhook> = Vec::with_capacity(webhooks.len());
    for w in webhooks {
        w.validate()?;
        if out.iter().any(|o| o.url == w.url) {
            return Err(format!(
                "webhooks: url {} is configured twice",
                redact_url(&w.url)
            ));
        }
        let secret = zeroize::Zeroizing::new(w.read_secret()?.into_bytes());
        let standard_key = standard_key(&secret)
            .map_err(|why| format!("webhooks ({}): {why}", redact_url(&w.url)))?;
        out.push(Webhook {
            url: w.url.clone(),
            secret: Arc::new(secret),
            standard_key: Arc::new(standard_key),
            apps: w
                .apps
                .as_ref()
                .map(|a| a.iter().map(|&x| x as u32).collect()),
            page_size: w.page_size,
            broadcasts: w.broadcasts,
            events: w
                .events
                .iter()
                .filter_map(|n| crate::model::events::EventType::parse(n))
                .collect(),
            tls: w.tls()?.map(Arc::new),
        });
    }
    Ok(out)
}

/// The Standard Webhooks key of `secret`: after `whsec_`, base64 decoded (the spec's
/// form); otherwise the bytes as given.
fn standard_key(secret: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use base64::Engine;
    let Some(encoded) = secret.strip_prefix(b"whsec_") else {
        return Ok(zeroize::Zeroizing::new(secret.to_vec()));
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| {
            "the secret starts with whsec_ but what follows is not base64 (the Standard Webhooks form is whsec_ and the base64 of the key)"
                .to_owned()
        })?;
    if key.len() < 16 {
        return Err(format!(
            "the whsec_ secret decodes to {} bytes; use at least 16 random bytes",
            key.len()
        ));
    }
    Ok(zeroize::Zeroizing::new(key))
}

/// How webhook pages are delivered and how often expired broadcasts are purged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Longest wait for a receiver's answer (API.md: 10 s).
    pub timeout_ms: u64,
    /// A page claimed by a node is its own for this long; then another node may take it
    /// over (the first died). Longer than `timeout_ms`.
    pub lease_ms: u64,
    /// The first retry's delay; it doubles with each attempt, with jitter.
    pub retry_base_ms: u64,
    /// The longest delay between two attempts (API.md: 5 min).
    pub retry_max_ms: u64,
    /// Pages in flight at once per node.
    pub concurrency: usize,
    /// Pages in flight at once per webhook on a node, and pages of one broadcast open at
    /// once per webhook on all nodes (at most `concurrency`): a receiver that hangs holds
    /// this many of the slots, never all of them.
    pub per_webhook: usize,
    /// How often a node looks for due pages when nothing woke it.
    pub poll_ms: u64,
    /// How often expired broadcasts are purged.
    pub sweep_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout_ms: 10_000,
            lease_ms: 30_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            concurrency: 16,
            per_webhook: 4,
            poll_ms: 250,
            sweep_ms: 1_000,
        }
    }
}

impl DeliveryConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        let d = self;
        if [
            d.timeout_ms,
            d.retry_base_ms,
            d.retry_max_ms,
            d.poll_ms,
            d.sweep_ms,
        ]
        .contains(&0)
            || d.concurrency == 0
            || d.per_webhook == 0
        {
            return Err("delivery.timeout_ms, retry_base_ms, retry_max_ms, poll_ms, sweep_ms, concurrency and per_webhook must be at least 1".into());
        }

        if d.lease_ms <= d.timeout_ms {
            return Err(format!(
                "delivery.lease_ms ({}) must be longer than delivery.timeout_ms ({}): a page still in flight must not be taken over",
                d.lease_ms, d.timeout_ms
            ));
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `per_webhook`, at most `concurrency`.
    pub fn per_webhook(&self) -> usize {
        self.per_webhook.min(self.concurrency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_webhook_url_never_reach_a_message() {
        assert_eq!(
            redact_url("http://alice:s3cret@127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000/hook"
        );
        assert_eq!(redact_url("http://127.0.0.1/x"), "http://127.0.0.1/x");
        let w = WebhookConfig {
            url: "ftp://alice:s3cret@127.0.0.1/".into(),
            secret: Some("0123456789abcdef".into()),
            secret_env: None,
            secret_file: None,
            apps: None,
            page_size: 0,
            ca_file: None,
            broadcasts: true,
            events: Vec::new(),
        };
        let e = w.validate().unwrap_err();
        assert!(!e.contains("s3cret") && e.contains("http://"), "{e}");
        assert!(!format!("{w:?}").contains("s3cret"));
    }

    #[test]
    fn an_https_url_in_any_case_is_verified_with_its_ca_file_and_an_http_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let hook = |url: &str| WebhookConfig {
            url: url.into(),
            secret: Some("0123456789abcdef".into()),
            secret_env: None,
            secret_file: None,
            apps: None,
            page_size: 10,
            broadcasts: true,
            events: Vec::new(),
            ca_file: Some(ca.clone()),
        };
        assert!(hook("HTTPS://127.0.0.1:9/x").tls().unwrap().is_some());
        assert!(hook("https://127.0.0.1:9/x").tls().unwrap().is_some());
        assert!(hook("http://127.0.0.1:9/x").tls().unwrap().is_none());
        let e = hook("http://127.0.0.1:9/x").validate().unwrap_err();
        assert!(
            e.contains("ca_file is set but the url is not https://"),
            "{e}"
        );
    }

    #[test]
    fn a_whsec_secret_is_decoded_for_standard_webhooks_and_a_bad_one_is_refused() {
        assert_eq!(
            standard_key(b"whsec_MDEyMzQ1Njc4OWFiY2RlZg==")
                .unwrap()
                .as_slice(),
            b"0123456789abcdef"
        );
        assert_eq!(
            standard_key(b"plain-secret-0123").unwrap().as_slice(),
            b"plain-secret-0123"
        );
        let e = standard_key(b"whsec_not base64!!").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        let e = standard_key(b"whsec_c2hvcnQ=").unwrap_err();
        assert!(e.contains("5 bytes"), "{e}");
    }
}
