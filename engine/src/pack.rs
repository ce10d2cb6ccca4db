//! Pack files (repo-format.md §7): many sealed blobs in one stored object,
//! followed by a sealed header listing them.
//!
//! ```text
//! pack = blob_0 || blob_1 || … || blob_{n-1} || sealed_header || header_len (u32 LE)
//! ```
//!
//! The writer shuffles blob order before writing, so the sequence of blob
//! sizes in a pack does not follow file order and cannot be matched against
//! the chunk-size fingerprint of a known file.

mod header;

pub(crate) use header::MAX_HEADER_LEN;
pub use header::{HeaderEntry, PackHeaderError, decode_header};

use crate::blob::BlobKind;
use crate::crypto::{Domain, MasterKey};
use crate::id::{BlobId, PackId};
use rand::seq::SliceRandom;

/// Length of the trailing header-length field.
pub const TRAILER_LEN: usize = 4;

/// Bytes each blob adds to its pack's header (§7.2), beside its sealed
/// bytes.
pub(crate) const HEADER_ENTRY_LEN: u64 = header::ENTRY_LEN as u64;

/// A blob placed in a finished pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedBlob {
    /// Kind.
    pub kind: BlobKind,
    /// Id.
    pub id: BlobId,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

/// A finished pack ready for upload.
#[derive(Debug)]
pub struct FinishedPack {
    /// BLAKE3 of `bytes`.
    pub id: PackId,
    /// The stored bytes.
    pub bytes: Vec<u8>,
    /// Where each blob landed.
    pub blobs: Vec<PackedBlob>,
}

struct Pending {
    kind: BlobKind,
    id: BlobId,
    raw_len: u32,
    sealed: Vec<u8>,
}

/// Collects sealed blobs until the pack is big enough.
#[derive(Default)]
pub struct PackWriter {
    pending: Vec<Pending>,
    size: usize,
}

impl PackWriter {
    /// An empty pack.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sealed blob.
    pub fn add(&mut self, kind: BlobKind, id: BlobId, raw_len: u32, sealed: Vec<u8>) {
        self.size += sealed.len() + header::ENTRY_LEN;
        self.pending.push(Pending {
            kind,
            id,
            raw_len,
            sealed,
        });
    }

    /// Bytes accumulated so far.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Number of blobs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when no blob was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Shuffles, concatenates and appends the sealed header.
    #[must_use]
    pub fn finish(self, key: &MasterKey) -> FinishedPack {
        self.finish_into(key, Vec::new())
    }

    /// Like [`PackWriter::finish`], writing into `bytes` (cleared first), so
    /// a caller can reuse pack-sized buffers.
    #[must_use]
    pub fn finish_into(mut self, key: &MasterKey, mut bytes: Vec<u8>) -> FinishedPack {
        self.pending.shuffle(&mut rand::rng());
        bytes.clear();
        bytes.reserve_exact(self.size + 64);
        let mut blobs = Vec::with_capacity(self.pending.len());
        for p in self.pending {
            let offset = u32::try_from(bytes.len()).expect("packs stay below 4 GiB");
            let length = u32::try_from(p.sealed.len()).expect("blobs stay below 4 GiB");
            bytes.extend_from_slice(&p.sealed);
            blobs.push(PackedBlob {
                kind: p.kind,
                id: p.id,
                offset,
                length,
                raw_len: p.raw_len,
            });
        }
        let plain = header::encode_header(&blobs);
        let sealed = key.seal(Domain::PackHeader, &plain);
        bytes.extend_from_slice(&sealed);
        let header_len = u32::try_from(sealed.len()).expect("header below 4 GiB");
        bytes.extend_from_slice(&header_len.to_le_bytes());
        FinishedPack {
            id: PackId::of_bytes(&bytes),
            bytes,
            blobs,
        }
    }
}

/// Reads the blob list of a pack given its last bytes. `tail` must be the
/// final `min(pack_size, MAX_HEADER_LEN + TRAILER_LEN)` bytes.
pub fn read_header(
    key: &MasterKey,
    pack_size: u64,
    tail: &[u8],
) -> Result<Vec<PackedBlob>, PackHeaderError> {
    let (rest, trailer) = tail
        .split_last_chunk::<TRAILER_LEN>()
        .ok_or(PackHeaderError::Truncated)?;
    let header_len = u32::from_le_bytes(*trailer) as usize;
    if header_len > header::MAX_HEADER_LEN || header_len > rest.len() {
        return Err(PackHeaderError::Truncated);
    }
    let sealed = rest
        .get(rest.len() - header_len..)
        .ok_or(PackHeaderError::Truncated)?;
    let plain = key
        .open(Domain::PackHeader, sealed)
        .map_err(|_| PackHeaderError::Auth)?;
    let entries = decode_header(&plain)?;
    let blobs_end = pack_size
        .checked_sub((header_len + TRAILER_LEN) as u64)
        .ok_or(PackHeaderError::Truncated)?;
    let mut offset: u64 = 0;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let end = offset + u64::from(e.length);
        if end > blobs_end {
            return Err(PackHeaderError::Truncated);
        }
        out.push(PackedBlob {
            kind: e.kind,
            id: e.id,
            offset: u32::try_from(offset).map_err(|_| PackHeaderError::Truncated)?,
            length: e.length,
            raw_len: e.raw_len,
        });
        offset = end;
    }
    Ok(out)
}

/// How many trailing bytes to fetch to be sure of getting the header.
#[must_use]
pub fn tail_len(pack_size: u64) -> u64 {
    pack_size.min((header::MAX_HEADER_LEN + TRAILER_LEN) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob;
    use crate::compress::Compression;

    #[test]
    fn header_round_trips_and_blobs_open() {
        let key = MasterKey::generate();
        let mut w = PackWriter::new();
        let datas: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        for d in &datas {
            let id = key.blob_id(d);
            let sealed = blob::seal(&key, BlobKind::Data, &id, Compression::Zstd(3), d);
            w.add(BlobKind::Data, id, d.len() as u32, sealed);
        }
        let pack = w.finish(&key);
        let size = pack.bytes.len() as u64;
        let tail = &pack.bytes[(size - tail_len(size)) as usize..];
        let blobs = read_header(&key, size, tail).unwrap();
        assert_eq!(blobs, pack.blobs);
        for b in blobs {
            let stored = &pack.bytes[b.offset as usize..(b.offset + b.length) as usize];
            let plain = blob::open(&key, b.kind, &b.id, b.raw_len, stored).unwrap();
            assert!(datas.contains(&plain));
        }
    }

    #[test]
    fn read_header_rejects_garbage() {
        let key = MasterKey::generate();
        assert!(read_header(&key, 3, &[1, 2, 3]).is_err());
        assert!(read_header(&key, 8, &[0, 0, 0, 0, 255, 255, 255, 255]).is_err());
    }
}
