//! Encryption of secrets at rest (BMC passwords) and hashing of credentials.
//!
//! BMC passwords must be readable again (the power drivers send them), so
//! they are encrypted with AES-256-GCM under a key that lives outside the
//! database: a file in the data directory, created on first start with mode
//! 0600, or `ANVIL_SECRET_KEY` (64 hex digits) for deployments that keep it
//! in a secret store. A stolen database dump alone reveals no password.
//! User passwords are hashed with argon2id; API tokens and session ids are
//! long random strings, so a SHA-256 of them is enough to look them up
//! without storing them.

use crate::error::{Error, Result};
use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;

const KEY_FILE: &str = "secret.key";
/// Prefix byte of the stored ciphertext, so the format can change later.
const FORMAT_V1: u8 = 1;

#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("ANVIL_SECRET_KEY must be 64 hexadecimal digits (32 bytes)")]
    BadEnvKey,
    #[error("the key file {path} must hold 64 hexadecimal digits")]
    BadKeyFile { path: String },
    #[error("cannot read or create the key file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SecretBox {
    pub fn from_key(key: [u8; 32]) -> Self {
        SecretBox {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        }
    }

    /// The key from `env_key` (the value of `ANVIL_SECRET_KEY`) if given,
    /// else from `<data_dir>/secret.key`, created if missing.
    pub fn load_or_create(data_dir: &Path, env_key: Option<&str>) -> Result<Self, KeyError> {
        if let Some(hexkey) = env_key {
            return parse_key(hexkey)
                .map(Self::from_key)
                .ok_or(KeyError::BadEnvKey);
        }
        let path = data_dir.join(KEY_FILE);
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(&text)
                .map(Self::from_key)
                .ok_or(KeyError::BadKeyFile { path: shown }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                OsRng.fill_bytes(&mut key);
                write_private(&path, &format!("{}\n", hex::encode(key))).map_err(|source| {
                    KeyError::Io {
                        path: shown,
                        source,
                    }
                })?;
                Ok(Self::from_key(key))
            }
            Err(source) => Err(KeyError::Io {
                path: shown,
                source,
            }),
        }
    }

    /// A box with a random key that is never stored: for short-lived
    /// commands that must not create or read `secret.key`.
    pub fn ephemeral() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self::from_key(key)
    }

    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(&nonce, plaintext)
            .map_err(|_| Error::Internal {
                context: "encrypting a secret",
                source: "AES-GCM encryption failed".into(),
            })?;
        let mut out = Vec::with_capacity(1 + nonce.len() + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        let fail = || {
            Error::Internal {
            context: "decrypting a secret",
            source: "the stored secret does not decrypt with this key (was the data directory's secret.key replaced?)".into(),
        }
        };
        if sealed.len() < 1 + 12 + 16 || sealed[0] != FORMAT_V1 {
            return Err(fail());
        }
        let nonce = Nonce::from_slice(&sealed[1..13]);
        self.cipher
            .decrypt(nonce, &sealed[13..])
            .map_err(|_| fail())
    }
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// Writes a file readable only by its owner (0600 from the start, never
/// briefly world-readable).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// A random token of `bytes` bytes, URL-safe base64 without padding.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal {
            context: "hashing a password",
            source: e.to_string().into(),
        })
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let b = SecretBox::from_key([7; 32]);
        let sealed = b.seal(b"calvin").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"calvin"));
        assert_eq!(b.open(&sealed).unwrap(), b"calvin");
        let other = SecretBox::from_key([8; 32]);
        assert!(other.open(&sealed).is_err());
        assert!(b.open(&sealed[..10]).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load_or_create(dir.path(), None).unwrap();
        let sealed = a.seal(b"x").unwrap();
        let b = SecretBox::load_or_create(dir.path(), None).unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            SecretBox::load_or_create(dir.path(), Some("abc")),
            Err(KeyError::BadEnvKey)
        ));
    }

    #[test]
    fn passwords() {
        let h = hash_password("hunter2").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("hunter2", &h));
        assert!(!verify_password("hunter3", &h));
        assert!(!verify_password("hunter2", "not a hash"));
    }
}
