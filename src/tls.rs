//! TLS for the connections tagcast makes itself (PostgreSQL, Redis): the one rustls crypto
//! provider of the binary, CA files and the system's CA certificates.
//!
//! One provider, `ring`, for everything: rustls picks a process default only when exactly
//! one provider is compiled in, and the Redis client builds its configuration from that
//! default, so it is installed explicitly before anything connects. `ring` rather than
//! `aws-lc-rs` because it builds with the C compiler alone (no cmake, no aws-lc build).

use std::path::Path;
use std::sync::{Arc, Once};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The crypto provider of every TLS connection, installed as the process default on the
/// first call (the Redis client and every reqwest client take the process default; the
/// binary calls this first thing, the library's clients before they are built).
pub fn provider() -> Arc<CryptoProvider> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another part of the process installed one first; that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The PEM text of a CA file named by `setting`, with at least one certificate in it.
/// Errors name the setting and the file, never anything else of the configuration.
pub fn read_ca_file(setting: &str, path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{setting}: cannot read CA file {}: {e}", path.display()))?;
    ca_certificates(setting, path, &pem)?;
    Ok(pem)
}

fn ca_certificates(
    setting: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{setting}: CA file {} is not valid PEM: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{setting}: CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The trust anchors in the CA file named by `setting`.
pub fn load_ca_file(setting: &str, path: &Path) -> Result<RootCertStore, String> {
    let pem = read_ca_file(setting, path)?;
    let mut roots = RootCertStore::empty();
    for cert in ca_certificates(setting, path, &pem)? {
        roots.add(cert).map_err(|e| {
            format!(
                "{setting}: CA file {} holds a certificate that is not a usable CA: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The operating system's CA certificates (on Debian the `ca-certificates` bundle, which
/// the administrator manages and can extend with `update-ca-certificates`), for
/// verification when no CA file is configured. `why` says which setting asked for them.
pub fn system_roots(why: &str) -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "{why} uses the system's CA certificates, but none could be loaded{}; \
             install ca-certificates or configure a CA file",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        ));
    }
    Ok(roots)
}

/// A client configuration verifying servers (chain and host name) against `roots`, on the
/// binary's provider.
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, String> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("building the TLS configuration: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The TLS configuration of a reqwest client that talks to `url`: for `https://`, the
/// system's CA certificates (none loadable: a configuration that trusts nothing, so the
/// handshake fails with its cause); for anything else, one that trusts nothing, built
/// once: the client never makes a TLS connection, and building reqwest's own default (its
/// platform verifier reads every system certificate) would cost each client milliseconds.
pub fn http_client_tls(url: &str) -> rustls::ClientConfig {
    static PLAIN: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    let nothing = || {
        client_config(RootCertStore::empty())
            .expect("the binary's provider supports its own default protocol versions")
    };
    if url.starts_with("https:")
        && let Ok(roots) = system_roots(url)
    {
        return client_config(roots).unwrap_or_else(|_| nothing());
    }
    PLAIN.get_or_init(nothing).clone()
}
