//! Blobs: the unit of deduplication (repo-format.md §6, §7).
//!
//! A data blob is one chunk of file content; a tree blob is one encoded
//! directory listing. Both are stored in packs as
//! `envelope(aad = kind || id, compress::encode(plaintext))`.

use crate::compress::{self, Compression};
use crate::crypto::MasterKey;
use crate::id::BlobId;
use serde::{Deserialize, Serialize};

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// File content.
    Data,
    /// A directory listing.
    Tree,
}

impl BlobKind {
    /// On-storage byte.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }

    /// Parses the on-storage byte.
    #[must_use]
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// Why a stored blob could not be turned back into its plaintext.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Authentication failed.
    #[error("authentication failed")]
    Auth,
    /// Decompression failed.
    #[error("{0}")]
    Decompress(#[from] compress::DecompressError),
    /// The plaintext does not hash to the expected id.
    #[error("content does not match its id")]
    IdMismatch,
    /// The plaintext has the wrong length.
    #[error("length {actual} differs from indexed {expected}")]
    Length {
        /// From the index.
        expected: u32,
        /// Decoded.
        actual: usize,
    },
}

pub(crate) fn aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind.to_byte();
    aad[1..].copy_from_slice(&id.0);
    aad
}

/// Compresses and seals a blob for a pack.
pub(crate) fn seal(
    key: &MasterKey,
    kind: BlobKind,
    id: &BlobId,
    compression: Compression,
    plaintext: &[u8],
) -> Vec<u8> {
    key.seal_blob(&aad(kind, id), compress::encode(compression, plaintext))
}

/// Opens, decompresses and re-hashes a stored blob. Returns the plaintext
/// only if it is exactly what `id` names.
pub fn open(
    key: &MasterKey,
    kind: BlobKind,
    id: &BlobId,
    raw_len: u32,
    stored: &[u8],
) -> Result<Vec<u8>, BlobError> {
    let encoded = key
        .open_blob(&aad(kind, id), stored)
        .map_err(|_| BlobError::Auth)?;
    let plain = compress::decode(&encoded, raw_len as usize)?;
    is_named(key, id, raw_len, &plain)?;
    Ok(plain)
}

/// Proves a stored blob sound as [`open`] does, for a caller that owns the
/// stored bytes and needs neither them nor the plaintext afterwards (check
/// reading whole packs): decrypted where it lies, decompressed into
/// `scratch`, which keeps its allocation from blob to blob. `stored` is
/// overwritten.
pub(crate) fn verify_in_place(
    key: &MasterKey,
    kind: BlobKind,
    id: &BlobId,
    raw_len: u32,
    stored: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<(), BlobError> {
    let encoded = key
        .open_blob_in_place(&aad(kind, id), stored)
        .map_err(|_| BlobError::Auth)?;
    let plain = match compress::decode_into(encoded, raw_len as usize, scratch)? {
        compress::Decoded::Stored(plain) => plain,
        compress::Decoded::Buffer => scratch.as_slice(),
    };
    is_named(key, id, raw_len, plain)
}

/// Whether `plain` is exactly the blob `id` names.
fn is_named(key: &MasterKey, id: &BlobId, raw_len: u32, plain: &[u8]) -> Result<(), BlobError> {
    if plain.len() != raw_len as usize {
        return Err(BlobError::Length {
            expected: raw_len,
            actual: plain.len(),
        });
    }
    if key.blob_id(plain) != *id {
        return Err(BlobError::IdMismatch);
    }
    Ok(())
}
