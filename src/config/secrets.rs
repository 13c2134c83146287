//! Where account secrets come from (the file, an environment variable, or a file of their
//! own) and the start-up refusal of secrets that protect nothing: short ones and the
//! placeholders people copy from examples.

use std::path::Path;

use super::{AccountConfig, KeyConfig};

/// Shortest secret accepted at start, in bytes. The vendor's secrets are 40+ characters;
/// 16 random bytes is the least that resists guessing by brute force over the network.
pub const MIN_SECRET_BYTES: usize = 16;

/// Exactly one source must be named.
pub(super) fn check_source(account: &str, k: &KeyConfig) -> Result<(), String> {
    if k.access_key.trim().is_empty() {
        return Err(format!("accounts.{account}: a key has an empty access_key"));
    }
    let sources = [
        k.secret_key.is_some(),
        k.secret_key_env.is_some(),
        k.secret_key_file.is_some(),
    ];
    match sources.iter().filter(|s| **s).count() {
        1 => Ok(()),
        0 => Err(format!(
            "accounts.{account}: key {}: give its secret as secret_key, secret_key_env (an \
             environment variable's name) or secret_key_file (a file holding only the secret)",
            k.access_key
        )),
        _ => Err(format!(
            "accounts.{account}: key {}: give only one of secret_key, secret_key_env and secret_key_file",
            k.access_key
        )),
    }
}

/// Why `secret` must not be used, or `None` when it is acceptable.
pub fn weak_secret_reason(secret: &str) -> Option<String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Some(format!(
            "it is {} bytes long; use at least {MIN_SECRET_BYTES}",
            secret.len()
        ));
    }
    let lower = secret.to_ascii_lowercase();
    const PLACEHOLDERS: [&str; 8] = [
        "...",
        "changeme",
        "change-me",
        "change_me",
        "replace-me",
        "your-secret",
        "yoursecret",
        "placeholder",
    ];
    if let Some(p) = PLACEHOLDERS.iter().find(|p| lower.contains(**p)) {
        return Some(format!("it looks like a placeholder (it contains {p:?})"));
    }
    if (lower.starts_with('<') && lower.ends_with('>'))
        || (lower.starts_with("${") && lower.ends_with('}'))
    {
        return Some("it looks like a placeholder (<...> or ${...})".into());
    }
    let distinct: std::collections::HashSet<char> = secret.chars().collect();
    if distinct.len() < 4 {
        return Some(format!(
            "it uses only {} distinct characters",
            distinct.len()
        ));
    }
    None
}

/// The accounts with every key's secret read into `secret_key` (from the environment or
/// its file), after refusing missing, short and placeholder secrets of enabled keys.
pub fn resolve_accounts(accounts: &[AccountConfig]) -> Result<Vec<AccountConfig>, String> {
    let mut resolved = accounts.to_vec();
    for a in &mut resolved {
        for k in &mut a.keys {
            let secret = read_secret(&a.name, k)?;
            if let Some(why) = weak_secret_reason(&secret).filter(|_| !k.disabled) {
                return Err(format!(
                    "accounts.{}: the secret of key {} is refused: {why}. \
                     `tagcast keys new` prints a fresh key pair",
                    a.name, k.access_key
                ));
            }
            k.secret_key = Some(secret);
            k.secret_key_env = None;
            k.secret_key_file = None;
        }
    }
    Ok(resolved)
}

fn read_secret(account: &str, k: &KeyConfig) -> Result<String, String> {
    check_source(account, k)?;
    let at = |what: String| format!("accounts.{account}: key {}: {what}", k.access_key);
    if let Some(s) = &k.secret_key {
        return Ok(s.clone());
    }
    if let Some(var) = &k.secret_key_env {
        return match std::env::var(var) {
            Ok(s) if !s.is_empty() => Ok(s),
            Ok(_) => Err(at(format!("secret_key_env = {var:?} is set but empty"))),
            Err(std::env::VarError::NotPresent) => {
                Err(at(format!("secret_key_env = {var:?} is not set")))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(at(format!("secret_key_env = {var:?} is not valid UTF-8")))
            }
        };
    }
    let path = k
        .secret_key_file
        .as_deref()
        .expect("check_source: one source");
    read_secret_file(path).map_err(at)
}

/// The file's content without the line break editors and `echo` add.
fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading secret_key_file {}: {e}", path.display()))?;
    // systemd's credentials (LoadCredential=) are shared with the service through an ACL,
    // which shows in the mode's group bits: not a leak.
    let systemd_credential =
        std::env::var_os("CREDENTIALS_DIRECTORY").is_some_and(|dir| path.starts_with(dir));
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
        && !systemd_credential
    {
        tracing::warn!(
            file = %path.display(),
            "secret_key_file is readable by other users; chmod 600 it"
        );
    }
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(format!("secret_key_file {} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_placeholder_and_repetitive_secrets_are_refused() {
        for bad in [
            "s",
            "acme-secret-01",
            "...",
            "xxxxxxxxxxxxxxxxxxxxxx",
            "your-secret-key-goes-here",
            "<secret-key-from-vault>",
            "abababababababababab",
            "CHANGEME-CHANGEME-123",
        ] {
            assert!(weak_secret_reason(bad).is_some(), "{bad}");
        }
        for good in ["acme-secret-0001", "Zq8vN3kPw1XyT7mR4bLc9dF2hJ6s"] {
            assert_eq!(weak_secret_reason(good), None, "{good}");
        }
    }

    #[test]
    fn secrets_come_from_exactly_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sk");
        std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
        let key = |k: KeyConfig| AccountConfig {
            name: "acme".into(),
            apps: vec![1],
            keys: vec![k],
        };
        let from_file = KeyConfig {
            access_key: "AKLTf".into(),
            secret_key_file: Some(file.clone()),
            ..KeyConfig::default()
        };
        let r = resolve_accounts(&[key(from_file)]).unwrap();
        assert_eq!(
            r[0].keys[0].secret_key.as_deref(),
            Some("from-a-file-0123456789")
        );
        assert_eq!(r[0].keys[0].secret_key_file, None);

        let unset = KeyConfig {
            access_key: "AKLTe".into(),
            secret_key_env: Some("TAGCAST_TEST_SURELY_UNSET_VARIABLE".into()),
            ..KeyConfig::default()
        };
        let e = resolve_accounts(&[key(unset)]).unwrap_err();
        assert!(e.contains("TAGCAST_TEST_SURELY_UNSET_VARIABLE") && e.contains("not set"));

        let both = KeyConfig {
            secret_key_file: Some(file),
            ..KeyConfig::inline("AKLTb", "inline-secret-0123456")
        };
        assert!(
            resolve_accounts(&[key(both)])
                .unwrap_err()
                .contains("only one")
        );
        let none = KeyConfig {
            access_key: "AKLTn".into(),
            ..KeyConfig::default()
        };
        assert!(
            resolve_accounts(&[key(none)])
                .unwrap_err()
                .contains("secret_key_env")
        );
        let weak = KeyConfig::inline("AKLTw", "short");
        let e = resolve_accounts(&[key(weak.clone())]).unwrap_err();
        assert!(e.contains("5 bytes") && e.contains("AKLTw"), "{e}");
        assert!(
            !e.contains("short"),
            "the secret itself is never shown: {e}"
        );
        // A disabled key cannot sign anything; its secret is not judged.
        let disabled = KeyConfig {
            disabled: true,
            ..weak
        };
        assert!(resolve_accounts(&[key(disabled)]).is_ok());
    }
}
