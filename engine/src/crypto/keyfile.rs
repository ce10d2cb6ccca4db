//! Key files (repo-format.md §5): JSON objects under `keys/` that wrap the
//! master key set with a key derived from a password by argon2id.
#![warn(clippy::indexing_slicing)]

use super::{Domain, MasterKey, Password, aead};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// Upper bounds a reader enforces before running the KDF, so a hostile key
/// file cannot make `open` allocate or spin without limit.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024; // 4 GiB
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 64;
const MIN_SALT_LEN: usize = 16;
const MAX_SALT_LEN: usize = 64;
pub(crate) const MAX_KEY_FILE_LEN: usize = 64 * 1024; // 64 KiB

/// Why a key file could not be decoded or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Not valid key-file JSON.
    #[error("malformed key file: {0}")]
    Malformed(String),
    /// Parameters outside the accepted bounds.
    #[error("key file parameters out of range: {0}")]
    Limits(&'static str),
    /// The password does not unwrap this key.
    #[error("wrong password or damaged key file")]
    WrongPassword,
}

/// argon2id parameters, stored in each key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes: RFC 9106's second recommended setting,
    /// well inside the RAM of a 1 GiB VPS. The lanes are computed on every
    /// core (a quarter of a second on one small server core, half that on
    /// two); an attacker's cost is the same as with one lane.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfJson {
    algorithm: String,
    version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

/// The stored key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version of this key file, 1.
    pub version: u32,
    /// When the key was added (RFC 3339).
    pub created: String,
    /// Host that added it.
    pub hostname: String,
    /// User that added it.
    pub username: String,
    kdf: KdfJson,
    /// The sealed master key, base64.
    data: String,
}

impl KeyFile {
    /// Wraps `master` under `password`.
    #[must_use]
    pub fn wrap(
        master: &MasterKey,
        password: &Password,
        params: KdfParams,
        hostname: &str,
        username: &str,
        created: String,
    ) -> Self {
        let mut salt = [0u8; 32];
        rand::fill(&mut salt);
        let wrapping = derive(password, &salt, params).expect("default KDF parameters are valid");
        let sealed = aead::seal(&wrapping, Domain::MasterKey.aad(), &*master.to_bytes());
        Self {
            version: 1,
            created,
            hostname: hostname.to_owned(),
            username: username.to_owned(),
            kdf: KdfJson {
                algorithm: "argon2id".into(),
                version: 0x13,
                memory_kib: params.memory_kib,
                iterations: params.iterations,
                parallelism: params.parallelism,
                salt: B64.encode(salt),
            },
            data: B64.encode(sealed),
        }
    }

    /// The KDF parameters recorded in this file.
    #[must_use]
    pub fn kdf_params(&self) -> KdfParams {
        KdfParams {
            memory_kib: self.kdf.memory_kib,
            iterations: self.kdf.iterations,
            parallelism: self.kdf.parallelism,
        }
    }

    /// Encodes to the stored JSON bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key file serialises")
    }

    /// Decodes stored bytes, checking every bound before any KDF work.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyFileError> {
        if bytes.len() > MAX_KEY_FILE_LEN {
            return Err(KeyFileError::Limits("file too large"));
        }
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| KeyFileError::Malformed(e.to_string()))?;
        if file.version != 1 {
            return Err(KeyFileError::Malformed(format!(
                "unsupported key file version {}",
                file.version
            )));
        }
        if file.kdf.algorithm != "argon2id" || file.kdf.version != 0x13 {
            return Err(KeyFileError::Malformed("unsupported KDF".into()));
        }
        let p = file.kdf_params();
        if p.memory_kib > MAX_MEMORY_KIB
            || p.iterations == 0
            || p.iterations > MAX_ITERATIONS
            || p.parallelism == 0
            || p.parallelism > MAX_PARALLELISM
            || p.memory_kib < 8 * p.parallelism
        {
            return Err(KeyFileError::Limits("argon2 parameters"));
        }
        let salt = file.salt()?;
        if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&salt.len()) {
            return Err(KeyFileError::Limits("salt length"));
        }
        Ok(file)
    }

    fn salt(&self) -> Result<Vec<u8>, KeyFileError> {
        B64.decode(&self.kdf.salt)
            .map_err(|e| KeyFileError::Malformed(format!("salt: {e}")))
    }

    /// Unwraps the master key with `password`.
    pub fn open(&self, password: &Password) -> Result<MasterKey, KeyFileError> {
        let salt = self.salt()?;
        let sealed = B64
            .decode(&self.data)
            .map_err(|e| KeyFileError::Malformed(format!("data: {e}")))?;
        let wrapping = derive(password, &salt, self.kdf_params())?;
        let plain = aead::open(&wrapping, Domain::MasterKey.aad(), &sealed)
            .map_err(|_| KeyFileError::WrongPassword)?;
        let bytes: [u8; MasterKey::LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KeyFileError::Malformed("master key length".into()))?;
        let key = MasterKey::from_bytes(&bytes);
        let mut plain = plain;
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(key)
    }
}

fn derive(password: &Password, salt: &[u8], p: KdfParams) -> Result<[u8; 32], KeyFileError> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|_| KeyFileError::Limits("argon2 parameters"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|_| KeyFileError::Limits("argon2 input"))?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// The wrapping key against libargon2 (the reference implementation,
    /// through Python's argon2-cffi `hash_secret_raw`), with one lane and
    /// with four computed on several threads.
    #[test]
    fn derivation_matches_reference_implementation() {
        let pw = Password::new("correct horse");
        let salt = b"0123456789abcdef";
        let one = KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let four = KdfParams {
            memory_kib: 64,
            iterations: 3,
            parallelism: 4,
        };
        assert_eq!(
            hex::encode(derive(&pw, salt, one).unwrap()),
            "32364fd7ed54f4951b0d6bc3bed2f212c66235738a114c5f8ba3b6a1ee3abb10"
        );
        assert_eq!(
            hex::encode(derive(&pw, salt, four).unwrap()),
            "d0266a319d5004c687423de9f9af630e2c0d70ba0b1eee8de6383bdeae80fcce"
        );
    }

    #[test]
    fn open_with_right_password_returns_same_key() {
        let master = MasterKey::generate();
        let kf = KeyFile::wrap(&master, &Password::new("pw"), FAST, "h", "u", "t".into());
        let decoded = KeyFile::decode(&kf.encode()).unwrap();
        let got = decoded.open(&Password::new("pw")).unwrap();
        assert_eq!(*got.to_bytes(), *master.to_bytes());
    }

    #[test]
    fn open_with_wrong_password_fails() {
        let master = MasterKey::generate();
        let kf = KeyFile::wrap(&master, &Password::new("pw"), FAST, "h", "u", "t".into());
        assert!(matches!(
            kf.open(&Password::new("nope")),
            Err(KeyFileError::WrongPassword)
        ));
    }

    #[test]
    fn decode_rejects_huge_memory_cost() {
        let master = MasterKey::generate();
        let mut kf = KeyFile::wrap(&master, &Password::new("pw"), FAST, "h", "u", "t".into());
        kf.kdf.memory_kib = u32::MAX;
        assert!(matches!(
            KeyFile::decode(&kf.encode()),
            Err(KeyFileError::Limits(_))
        ));
    }
}
