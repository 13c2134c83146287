//! Secret material with the safety in its types: a secret that never prints and is wiped
//! on drop, and a signature that can only be compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use std::sync::RwLock;

pub(super) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A secret access key. `Debug` shows nothing of it; the memory is zeroed on drop, the
/// last signing key derived from it too.
pub struct SecretKey {
    secret: Zeroizing<String>,
    /// The last signing key derived (date, region, service, key): a key signs for a day,
    /// so the server derives it once a day per region instead of four HMACs per request,
    /// as the vendors' SDKs cache it.
    derived: RwLock<Option<Derived>>,
}

struct Derived {
    scope: (String, String, String),
    key: Zeroizing<[u8; 32]>,
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        SecretKey::new(self.expose())
    }
}

impl SecretKey {
    pub fn new(secret: impl Into<String>) -> Self {
        SecretKey {
            secret: Zeroizing::new(secret.into()),
            derived: RwLock::new(None),
        }
    }

    /// The secret itself, for the HMAC chain and for writing the credentials file.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// [`super::signing_key`] of this secret, from the cache when the scope is the last
    /// one asked for.
    pub fn signing_key(&self, date: &str, region: &str, service: &str) -> [u8; 32] {
        let same = |d: &Derived| d.scope.0 == date && d.scope.1 == region && d.scope.2 == service;
        if let Some(d) = self.derived.read().expect("key cache lock").as_ref()
            && same(d)
        {
            return *d.key;
        }
        let key = super::signing_key(self, date, region, service);
        *self.derived.write().expect("key cache lock") = Some(Derived {
            scope: (date.to_owned(), region.to_owned(), service.to_owned()),
            key: Zeroizing::new(key),
        });
        key
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A computed signature. Deliberately no `PartialEq`: the only comparison is
/// [`Signature::matches_hex`], which runs in constant time.
pub struct Signature([u8; 32]);

impl Signature {
    pub fn compute(signing_key: &[u8; 32], string_to_sign: &str) -> Self {
        Signature(hmac(signing_key, string_to_sign.as_bytes()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Compares with a hex signature from a client (either case) in constant time.
    /// Input of the wrong length or with non-hex characters never matches.
    pub fn matches_hex(&self, claimed: &str) -> bool {
        let mut decoded = [0u8; 32];
        if hex::decode_to_slice(claimed, &mut decoded).is_err() {
            return false;
        }
        self.0.ct_eq(&decoded).into()
    }
}
