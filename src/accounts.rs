//! Tenancy: which access key belongs to which account, and which account owns an AppId.
//! Also the first-start bootstrap that creates a development account when none is
//! configured.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngExt;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ErrorCode};
pub use crate::config::KeyRole;
use crate::config::{AccountConfig, KeyConfig, validate_accounts};
use crate::signing::SecretKey;

/// Index of an account in [`Tenancy`]; cheap to copy into a request's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountId(pub usize);

struct KeyEntry {
    account: AccountId,
    secret: SecretKey,
    disabled: bool,
    role: KeyRole,
}

pub struct Tenancy {
    names: Vec<String>,
    keys: HashMap<String, KeyEntry>,
    app_owner: HashMap<u32, AccountId>,
}

impl Tenancy {
    /// Accounts must have passed [`validate_accounts`] and had their secrets read by
    /// [`crate::config::resolve_accounts`].
    pub fn new(accounts: &[AccountConfig]) -> Self {
        let mut t = Tenancy {
            names: Vec::new(),
            keys: HashMap::new(),
            app_owner: HashMap::new(),
        };
        for (i, a) in accounts.iter().enumerate() {
            let id = AccountId(i);
            t.names.push(a.name.clone());
            for &app in &a.apps {
                t.app_owner.insert(app as u32, id);
            }
            for k in &a.keys {
                t.keys.insert(
                    k.access_key.clone(),
                    KeyEntry {
                        account: id,
                        secret: SecretKey::new(
                            k.secret_key
                                .clone()
                                .expect("secrets are resolved before Tenancy::new"),
                        ),
                        disabled: k.disabled,
                        role: k.role,
                    },
                );
            }
        }
        t
    }

    /// The secret, account and role of an enabled access key.
    pub fn key(&self, access_key: &str) -> Option<(&SecretKey, AccountId, KeyRole)> {
        self.keys
            .get(access_key)
            .filter(|k| !k.disabled)
            .map(|k| (&k.secret, k.account, k.role))
    }

    /// The apps an account owns, sorted.
    pub fn account_apps(&self, account: AccountId) -> Vec<u32> {
        let mut apps: Vec<u32> = self
            .app_owner
            .iter()
            .filter(|(_, owner)| **owner == account)
            .map(|(app, _)| *app)
            .collect();
        apps.sort_unstable();
        apps
    }

    /// Every configured app, sorted.
    pub fn apps(&self) -> Vec<u32> {
        let mut apps: Vec<u32> = self.app_owner.keys().copied().collect();
        apps.sort_unstable();
        apps
    }

    pub fn account_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn account_name(&self, id: AccountId) -> &str {
        &self.names[id.0]
    }

    /// AppId unknown: AppNotFound. Owned by another account: AccessDenied.
    pub fn authorize(&self, account: AccountId, app_id: u32) -> Result<(), ApiError> {
        match self.app_owner.get(&app_id) {
            None => Err(ApiError::new(
                ErrorCode::AppNotFound,
                format!("AppId {app_id} does not exist on this server"),
            )),
            Some(owner) if *owner != account => Err(ApiError::new(
                ErrorCode::AccessDenied,
                format!("the access key's account may not act on AppId {app_id}"),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Where the generated development credentials live inside the data directory.
pub const BOOTSTRAP_FILE: &str = "credentials.toml";
/// The generated account's AppId: the one in the seed document's example.
pub const BOOTSTRAP_APP_ID: i64 = 666675;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    accounts: Vec<AccountConfig>,
}

pub struct Bootstrap {
    pub accounts: Vec<AccountConfig>,
    pub path: PathBuf,
    /// True when this start created the file.
    pub created: bool,
}

/// `len` random ASCII letters and digits (key material).
pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A fresh key pair in the style of the vendor's console: the access key is `AKLT` and
/// base64 of 32 random hex digits (47 characters), the secret base64 of base64 of 32
/// random hex digits (60 characters, 128 random bits).
pub fn new_key_pair() -> (String, String) {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let hex_digits = || hex::encode(rand::random::<[u8; 16]>());
    let access_key = format!("AKLT{}", STANDARD_NO_PAD.encode(hex_digits()));
    let secret_key = STANDARD.encode(STANDARD.encode(hex_digits()));
    (access_key, secret_key)
}

/// Loads `data_dir/credentials.toml`, creating it (mode 0600) with one account, one AppId
/// and one random key pair when it does not exist.
pub fn load_or_create_bootstrap(data_dir: &Path) -> Result<Bootstrap, String> {
    let path = data_dir.join(BOOTSTRAP_FILE);
    if path.exists() {
        let accounts = read_credentials_file(&path)?;
        return Ok(Bootstrap {
            accounts,
            path,
            created: false,
        });
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let (access_key, secret_key) = new_key_pair();
    let accounts = vec![AccountConfig {
        name: "default".into(),
        apps: vec![BOOTSTRAP_APP_ID],
        keys: vec![KeyConfig::inline(access_key, secret_key)],
    }];
    let body = toml::to_string(&CredentialsFile {
        accounts: accounts.clone(),
    })
    .map_err(|e| e.to_string())?;
    let text = format!(
        "# Development credentials generated by `tagcast serve` on first start.\n\
         # Used only while the configuration names no [[accounts]]. Keep this file private.\n{body}"
    );
    write_private(&path, text.as_bytes())?;
    Ok(Bootstrap {
        accounts,
        path,
        created: true,
    })
}

pub fn read_credentials_file(path: &Path) -> Result<Vec<AccountConfig>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file: CredentialsFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    validate_accounts(&file.accounts).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file.accounts)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}
