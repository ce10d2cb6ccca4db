//! Cryptography (repo-format.md §4, §5).
//!
//! One master key set per repository: a 256-bit XChaCha20-Poly1305 key for
//! every stored object and a 256-bit BLAKE3 key for blob ids. Key files wrap
//! the set under a key derived from a password with argon2id.

mod aead;
mod keyfile;

pub use aead::OpenError;

pub(crate) use keyfile::MAX_KEY_FILE_LEN;
pub use keyfile::{KdfParams, KeyFile, KeyFileError};

use crate::id::BlobId;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Associated data that binds an envelope to the kind of object it holds, so
/// a stored object cannot be passed off as another kind (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    Config,
    Index,
    Snapshot,
    PackHeader,
    MasterKey,
    Lock,
    Wal,
}

impl Domain {
    pub(crate) fn aad(self) -> &'static [u8] {
        match self {
            Domain::Config => b"vault/v1/config",
            Domain::Index => b"vault/v1/index",
            Domain::Snapshot => b"vault/v1/snapshot",
            Domain::PackHeader => b"vault/v1/pack-header",
            Domain::MasterKey => b"vault/v1/master-key",
            Domain::Lock => b"vault/v1/lock",
            Domain::Wal => b"vault/v1/wal",
        }
    }
}

/// A password, wiped from memory on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Password(Vec<u8>);

impl Password {
    /// Wraps password bytes.
    #[must_use]
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// The repository's master key set. Never leaves memory unencrypted except
/// through an explicit key export.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    encrypt: [u8; 32],
    id: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// Serialised length: encryption key then id key.
    pub const LEN: usize = 64;

    /// A fresh random key set.
    #[must_use]
    pub fn generate() -> Self {
        let mut encrypt = [0u8; 32];
        let mut id = [0u8; 32];
        rand::fill(&mut encrypt);
        rand::fill(&mut id);
        Self { encrypt, id }
    }

    /// Builds a key set from fixed bytes (golden vectors, key import).
    #[must_use]
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let mut encrypt = [0u8; 32];
        let mut id = [0u8; 32];
        encrypt.copy_from_slice(&bytes[..32]);
        id.copy_from_slice(&bytes[32..]);
        Self { encrypt, id }
    }

    /// The 64 raw bytes (for key export only).
    #[must_use]
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 64]> {
        let mut out = zeroize::Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(&self.encrypt);
        out[32..].copy_from_slice(&self.id);
        out
    }

    /// Keyed BLAKE3 of a blob's plaintext: its id (§3).
    #[must_use]
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id, plaintext).as_bytes())
    }

    /// Seals a whole object of the given domain.
    pub(crate) fn seal(&self, domain: Domain, plaintext: &[u8]) -> Vec<u8> {
        aead::seal(&self.encrypt, domain.aad(), plaintext)
    }

    /// Opens a whole object of the given domain.
    pub(crate) fn open(&self, domain: Domain, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        aead::open(&self.encrypt, domain.aad(), sealed)
    }

    /// Seals a blob; the AAD binds its kind and id (§7). Public only for
    /// the benchmarks in `benches/` (the AEAD alone); not a stable API.
    #[doc(hidden)]
    pub fn seal_blob(&self, aad: &[u8; 33], plaintext: Vec<u8>) -> Vec<u8> {
        aead::seal_owned(&self.encrypt, aad, plaintext)
    }

    /// Opens a blob sealed with [`MasterKey::seal_blob`]. Public only for
    /// the benchmarks in `benches/`; not a stable API.
    #[doc(hidden)]
    pub fn open_blob(&self, aad: &[u8; 33], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        aead::open(&self.encrypt, aad, sealed)
    }

    /// Opens a sealed blob where it lies (see [`aead::open_in_place`]).
    pub(crate) fn open_blob_in_place<'a>(
        &self,
        aad: &[u8; 33],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        aead::open_in_place(&self.encrypt, aad, sealed)
    }
}
