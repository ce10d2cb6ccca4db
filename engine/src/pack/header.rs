//! The pack header plaintext (repo-format.md §7.2):
//!
//! | field      | size | meaning                                  |
//! |------------|------|------------------------------------------|
//! | count      | 4    | number of entries, u32 LE                |
//! | entries    | 41×n | `kind u8 · length u32 · raw_len u32 · id [32]` |
//!
//! Offsets are implicit: blobs are stored back to back in entry order,
//! starting at offset 0.
#![warn(clippy::indexing_slicing)]

use super::PackedBlob;
use crate::blob::BlobKind;
use crate::id::BlobId;

pub(super) const ENTRY_LEN: usize = 1 + 4 + 4 + 32;
/// Largest sealed header a reader accepts: ~400k entries.
pub(crate) const MAX_HEADER_LEN: usize = 16 * 1024 * 1024; // 16 MiB

/// One header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    /// Kind.
    pub kind: BlobKind,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Id.
    pub id: BlobId,
}

/// A pack header that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PackHeaderError {
    /// Too short, or lengths inconsistent with the pack size.
    #[error("pack header truncated or inconsistent with pack size")]
    Truncated,
    /// Authentication failed.
    #[error("pack header authentication failed")]
    Auth,
    /// Count does not match the length, or an unknown kind.
    #[error("malformed pack header: {0}")]
    Malformed(&'static str),
}

pub(super) fn encode_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + blobs.len() * ENTRY_LEN);
    let count = u32::try_from(blobs.len()).expect("fewer than 2^32 blobs per pack");
    out.extend_from_slice(&count.to_le_bytes());
    for b in blobs {
        out.push(b.kind.to_byte());
        out.extend_from_slice(&b.length.to_le_bytes());
        out.extend_from_slice(&b.raw_len.to_le_bytes());
        out.extend_from_slice(&b.id.0);
    }
    out
}

/// Decodes a header plaintext.
pub fn decode_header(plain: &[u8]) -> Result<Vec<HeaderEntry>, PackHeaderError> {
    let (count, rest) = plain
        .split_first_chunk::<4>()
        .ok_or(PackHeaderError::Truncated)?;
    let count = u32::from_le_bytes(*count) as usize;
    if count.checked_mul(ENTRY_LEN) != Some(rest.len()) {
        return Err(PackHeaderError::Malformed(
            "entry count does not match length",
        ));
    }
    rest.chunks_exact(ENTRY_LEN)
        .map(|e| {
            let (&kind, e) = e.split_first().ok_or(PackHeaderError::Truncated)?;
            let (length, e) = e
                .split_first_chunk::<4>()
                .ok_or(PackHeaderError::Truncated)?;
            let (raw_len, id) = e
                .split_first_chunk::<4>()
                .ok_or(PackHeaderError::Truncated)?;
            Ok(HeaderEntry {
                kind: BlobKind::from_byte(kind).ok_or(PackHeaderError::Malformed("blob kind"))?,
                length: u32::from_le_bytes(*length),
                raw_len: u32::from_le_bytes(*raw_len),
                id: BlobId::from_slice(id).ok_or(PackHeaderError::Truncated)?,
            })
        })
        .collect()
}
