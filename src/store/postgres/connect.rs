//! How the PostgreSQL store connects: libpq's `sslmode` and `sslrootcert` taken out of
//! `store.url` (tokio-postgres itself knows only disable/prefer/require and no CA), the
//! rustls connector that gives each mode libpq's meaning, and error texts that name the
//! server and the cause but never the URL or the password.
//!
//! | sslmode | TLS | certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | if the server offers it, else plain | not verified |
//! | `require` | always | not verified; with a CA file, the chain (as libpq) |
//! | `verify-ca` | always | chain to the CA, any host name |
//! | `verify-full` | always | chain to the CA and the host name (DNS or IP SAN) |
//!
//! The CA is `sslrootcert` in the URL, else `store.ca_file`, else (verify-* only) the
//! system's CA certificates; `sslrootcert=system` asks for those explicitly (libpq 16).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's "allow" tries plain first; tokio-postgres cannot, and quietly
            // treating it as another mode would surprise.
            other => {
                return Err(format!(
                    "store.url: sslmode={other:?} is not supported \
                     (use disable, prefer, require, verify-ca or verify-full)"
                ));
            }
        })
    }
}

/// Where the CA certificates for verification come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CaSource {
    File {
        setting: &'static str,
        path: PathBuf,
    },
    System,
}

/// Everything needed to open connections, from `store.url` and `store.ca_file`.
pub struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
    /// "127.0.0.1:5432, database \"tagcast\"": what errors name (no user, no password).
    pub target: String,
}

impl Connector {
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let (rest, mode, rootcert) = take_tls_params(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| format!("store.url: {}", chain(&e)))?;
        // A mode given in the key=value form reached tokio-postgres, which knows three.
        let mode = mode.unwrap_or(match config.get_ssl_mode() {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        });
        config.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        let ca = match (rootcert, ca_file) {
            (Some(r), Some(_)) => {
                tracing::warn!(
                    "store.url's sslrootcert is used; store.ca_file is ignored (the URL's setting wins)"
                );
                Some(r)
            }
            (Some(r), None) => Some(r),
            (None, Some(p)) => Some(CaSource::File {
                setting: "store.ca_file",
                path: p.to_owned(),
            }),
            (None, None) => None,
        };
        if ca == Some(CaSource::System) && mode != SslMode::VerifyFull {
            // As libpq: the public CAs vouch for names, so anything less is meaningless.
            return Err(format!(
                "store.url: sslrootcert=system needs sslmode=verify-full (got {mode:?})"
            ));
        }
        let tls = MakeRustlsConnect::new(client_config(mode, ca)?);
        let target = describe_target(&config);
        Ok(Connector {
            config,
            tls,
            mode,
            target,
        })
    }
}

/// Splits libpq's `sslmode` and `sslrootcert` off a `postgres://` URL, returning the rest
/// for tokio-postgres. The key=value form is passed through as it is.
fn take_tls_params(url: &str) -> Result<(String, Option<SslMode>, Option<CaSource>), String> {
    let Some(after_scheme) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
    else {
        if ["verify-ca", "verify-full", "sslrootcert"]
            .iter()
            .any(|w| url.contains(w))
        {
            return Err(
                "store.url: sslmode=verify-ca/verify-full and sslrootcert are read from \
                 the URL form (postgres://user@host:port/db?sslmode=verify-full&sslrootcert=/path)"
                    .into(),
            );
        }
        return Ok((url.to_owned(), None, None));
    };
    // As tokio-postgres: credentials end at the first '@', parameters start at the next
    // '?', so a '?' in a password is not taken for the start of the parameters.
    let head_len = url.len() - after_scheme.len() + after_scheme.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[head_len..].find('?').map(|i| head_len + i) else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut mode, mut rootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Percent-decoded like tokio-postgres's own parameters ('+' stays '+').
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        match key {
            "sslmode" => mode = Some(SslMode::parse(&decoded)?),
            "sslrootcert" if decoded == "system" => rootcert = Some(CaSource::System),
            "sslrootcert" => {
                rootcert = Some(CaSource::File {
                    setting: "store.url sslrootcert",
                    path: PathBuf::from(decoded),
                })
            }
            _ => kept.push(pair),
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, mode, rootcert))
}

fn client_config(mode: SslMode, ca: Option<CaSource>) -> Result<ClientConfig, String> {
    let provider = crate::tls::provider();
    let roots = |ca: Option<CaSource>| -> Result<RootCertStore, String> {
        match ca {
            Some(CaSource::File { setting, path }) => crate::tls::load_ca_file(setting, &path),
            Some(CaSource::System) | None => crate::tls::system_roots(&format!(
                "store.url sslmode={} without sslrootcert or store.ca_file",
                if mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )),
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca) {
        (SslMode::VerifyFull, ca) => rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(ca)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("store.url: building the certificate verifier: {e}"))?,
        (SslMode::VerifyCa, ca) => Arc::new(Verifier {
            chain: Some(Arc::new(roots(ca)?)),
            provider: provider.clone(),
        }),
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        (SslMode::Require, Some(ca)) => Arc::new(Verifier {
            chain: Some(Arc::new(roots(Some(ca))?)),
            provider: provider.clone(),
        }),
        // prefer never verifies: whoever can forge a certificate can also answer "no TLS".
        _ => Arc::new(Verifier {
            chain: None,
            provider: provider.clone(),
        }),
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("store.url: TLS protocol versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The certificate check of `require` (none) and `verify-ca` (the chain, not the name).
/// Handshake signatures are always checked: the server must hold the certificate's key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.chain {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let db = config.get_dbname().or(config.get_user()).unwrap_or("?");
    format!("{}, database {db:?}", hosts.join(","))
}

/// A PostgreSQL error with its causes: the server's own message (not "db error"), the
/// OS error or the TLS failure. Never holds the URL or the password: tokio-postgres puts
/// neither in its errors.
pub fn chain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        // Some errors repeat their source in their own text.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_and_rootcert_leave_the_url_tokio_postgres_parses() {
        let (rest, mode, ca) = take_tls_params(
            "postgres://u:p%3Fw@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%3Fw@h:5/db?application_name=x");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(
            ca,
            Some(CaSource::File {
                setting: "store.url sslrootcert",
                path: "/etc/ca.pem".into()
            })
        );
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, mode, _) = take_tls_params("postgres://u:a?b@h/db").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgres://u:a?b@h/db", None));
        let (rest, mode, ca) =
            take_tls_params("postgresql://h/db?sslmode=disable&sslrootcert=system").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!((mode, ca), (Some(SslMode::Disable), Some(CaSource::System)));
    }

    #[test]
    fn unknown_modes_are_refused_without_echoing_the_url() {
        let e = take_tls_params("postgres://u:secret@h/db?sslmode=allow").unwrap_err();
        assert!(e.contains("sslmode=\"allow\""), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn the_target_names_hosts_ports_and_database_only() {
        let c: tokio_postgres::Config = "postgres://u:secret@a:1,b:2/db".parse().unwrap();
        assert_eq!(describe_target(&c), "a:1,b:2, database \"db\"");
    }
}
