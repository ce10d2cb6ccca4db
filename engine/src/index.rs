//! Indexes (repo-format.md §8): which pack holds each blob, and where.
//!
//! `IndexFile` is the stored form (binary, compressed, sealed). `Index` is
//! the in-memory union of all index files: a hash table of fixed-size
//! entries keyed by blob id (about 70 bytes per blob, so one million blobs,
//! roughly 1 TiB of 1 MiB chunks, need about 70 MiB).
#![warn(clippy::indexing_slicing)]

use crate::blob::BlobKind;
use crate::id::{BlobId, IndexId, PackId};
use crate::pack::PackedBlob;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const MAGIC: &[u8; 4] = b"VIDX";
/// Version written. Version 1 files (no `marked` section) are still read.
const VERSION: u8 = 2;
const MARK_LEN: usize = 32 + 8;
const PACK_ENTRY_FIXED: usize = 32 + 8 + 4;
const BLOB_ENTRY_LEN: usize = 1 + 4 + 4 + 4 + 32;

/// An index file that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Shorter than its counts claim.
    #[error("index truncated")]
    Truncated,
    /// Wrong magic, version or kind.
    #[error("malformed index: {0}")]
    Malformed(&'static str),
}

/// One pack as listed in an index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    /// The pack.
    pub id: PackId,
    /// Its stored size.
    pub size: u64,
    /// Its blobs.
    pub blobs: Vec<PackedBlob>,
}

/// The stored index file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Packs described by this file.
    pub packs: Vec<IndexedPack>,
    /// Index files whose content this one replaces (written by prune and
    /// repair; readers ignore the superseded files).
    pub supersedes: Vec<IndexId>,
    /// Packs marked for deletion by prune, with the Unix time of marking
    /// (repo-format.md §11.3). Their blobs stay readable, but new backups do
    /// not deduplicate against them.
    pub marked: Vec<(PackId, i64)>,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<&'a [u8; N], IndexError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(IndexError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(*self.take::<4>()?))
    }
    fn u64(&mut self) -> Result<u64, IndexError> {
        Ok(u64::from_le_bytes(*self.take::<8>()?))
    }
    /// A count whose items take at least `item_len` bytes each: refuse
    /// counts the remaining input cannot hold before allocating for them.
    fn count(&mut self, item_len: usize) -> Result<usize, IndexError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_len) > self.0.len() {
            return Err(IndexError::Truncated);
        }
        Ok(n)
    }
}

impl IndexFile {
    /// Encodes the plaintext (§8 byte table).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut out =
            Vec::with_capacity(16 + self.packs.len() * PACK_ENTRY_FIXED + blobs * BLOB_ENTRY_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        let u32_of = |n: usize| u32::try_from(n).expect("counts fit u32");
        out.extend_from_slice(&u32_of(self.packs.len()).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&u32_of(p.blobs.len()).to_le_bytes());
            for b in &p.blobs {
                out.push(b.kind.to_byte());
                out.extend_from_slice(&b.offset.to_le_bytes());
                out.extend_from_slice(&b.length.to_le_bytes());
                out.extend_from_slice(&b.raw_len.to_le_bytes());
                out.extend_from_slice(&b.id.0);
            }
        }
        out.extend_from_slice(&u32_of(self.supersedes.len()).to_le_bytes());
        for id in &self.supersedes {
            out.extend_from_slice(&id.0);
        }
        out.extend_from_slice(&u32_of(self.marked.len()).to_le_bytes());
        for (id, at) in &self.marked {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&at.to_le_bytes());
        }
        out
    }

    /// Decodes a plaintext, checking every count against the input length.
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let mut r = Reader(bytes);
        if r.take::<4>()? != MAGIC {
            return Err(IndexError::Malformed("magic"));
        }
        let version = r.take::<1>()?[0];
        if version != 1 && version != VERSION {
            return Err(IndexError::Malformed("unsupported version"));
        }
        let pack_count = r.count(PACK_ENTRY_FIXED)?;
        let mut packs = Vec::with_capacity(pack_count);
        for _ in 0..pack_count {
            let id = PackId(*r.take::<32>()?);
            let size = r.u64()?;
            let blob_count = r.count(BLOB_ENTRY_LEN)?;
            let mut blobs = Vec::with_capacity(blob_count);
            for _ in 0..blob_count {
                let kind = BlobKind::from_byte(r.take::<1>()?[0])
                    .ok_or(IndexError::Malformed("blob kind"))?;
                let offset = r.u32()?;
                let length = r.u32()?;
                let raw_len = r.u32()?;
                let id = BlobId(*r.take::<32>()?);
                if u64::from(offset) + u64::from(length) > size {
                    return Err(IndexError::Malformed("blob beyond pack end"));
                }
                blobs.push(PackedBlob {
                    kind,
                    id,
                    offset,
                    length,
                    raw_len,
                });
            }
            packs.push(IndexedPack { id, size, blobs });
        }
        let sup_count = r.count(32)?;
        let mut supersedes = Vec::with_capacity(sup_count);
        for _ in 0..sup_count {
            supersedes.push(IndexId(*r.take::<32>()?));
        }
        let mut marked = Vec::new();
        if version >= 2 {
            let mark_count = r.count(MARK_LEN)?;
            marked.reserve(mark_count);
            for _ in 0..mark_count {
                let id = PackId(*r.take::<32>()?);
                let at = i64::from_le_bytes(*r.take::<8>()?);
                marked.push((id, at));
            }
        }
        if !r.0.is_empty() {
            return Err(IndexError::Malformed("trailing bytes"));
        }
        Ok(Self {
            packs,
            supersedes,
            marked,
        })
    }
}

/// Blob ids are uniformly random already: use 8 of their bytes as the hash
/// instead of running SipHash over all 32.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            for (dst, src) in b.iter_mut().zip(chunk) {
                *dst = *src;
            }
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Where a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Kind.
    pub kind: BlobKind,
    /// Pack holding it.
    pub pack: PackId,
    /// Offset in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

#[derive(Clone, Copy)]
struct Entry {
    pack: u32,
    offset: u32,
    length: u32,
    raw_len: u32,
    kind: BlobKind,
}

/// The in-memory index: every blob of every loaded index file.
#[derive(Default)]
pub struct Index {
    packs: Vec<(PackId, u64)>,
    pack_slot: IdMap<PackId, u32>,
    blobs: IdMap<BlobId, Entry>,
    /// Blobs listed in more than one pack (kept for check and prune).
    duplicates: Vec<(BlobId, BlobLocation)>,
    /// Packs marked for deletion, with the time of marking.
    marked: IdMap<PackId, i64>,
}

impl Index {
    /// Empty.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pack's entries. The first location seen for a blob wins;
    /// later ones are remembered as duplicates.
    pub fn add_pack(&mut self, id: PackId, size: u64, blobs: &[PackedBlob]) {
        let slot = match self.pack_slot.get(&id) {
            Some(&s) => s,
            None => {
                let s = u32::try_from(self.packs.len()).expect("fewer than 2^32 packs");
                self.packs.push((id, size));
                self.pack_slot.insert(id, s);
                s
            }
        };
        for b in blobs {
            let entry = Entry {
                pack: slot,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
                kind: b.kind,
            };
            match self.blobs.entry(b.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(entry);
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    if o.get().pack != slot || o.get().offset != b.offset {
                        self.duplicates.push((
                            b.id,
                            BlobLocation {
                                kind: b.kind,
                                pack: id,
                                offset: b.offset,
                                length: b.length,
                                raw_len: b.raw_len,
                            },
                        ));
                    }
                }
            }
        }
    }

    /// Adds every pack of an index file, and its marks.
    pub fn add_file(&mut self, file: &IndexFile) {
        for p in &file.packs {
            self.add_pack(p.id, p.size, &p.blobs);
        }
        for (id, at) in &file.marked {
            self.mark(*id, *at);
        }
    }

    /// Builds the index of several files so that, for a blob stored in both
    /// a marked and an unmarked pack, the unmarked location is the primary.
    #[must_use]
    pub fn from_files<'a>(files: impl IntoIterator<Item = &'a IndexFile> + Clone) -> Self {
        let mut index = Index::new();
        for f in files.clone() {
            for (id, at) in &f.marked {
                index.mark(*id, *at);
            }
        }
        for marked_pass in [false, true] {
            for f in files.clone() {
                for p in &f.packs {
                    if index.marked.contains_key(&p.id) == marked_pass {
                        index.add_pack(p.id, p.size, &p.blobs);
                    }
                }
            }
        }
        index
    }

    /// Records that `pack` was marked for deletion at `at` (earliest wins).
    pub fn mark(&mut self, pack: PackId, at: i64) {
        let entry = self.marked.entry(pack).or_insert(at);
        *entry = (*entry).min(at);
    }

    /// When `pack` was marked for deletion, if it is.
    #[must_use]
    pub fn marked_at(&self, pack: &PackId) -> Option<i64> {
        self.marked.get(pack).copied()
    }

    /// Every mark.
    pub fn marks(&self) -> impl Iterator<Item = (PackId, i64)> + '_ {
        self.marked.iter().map(|(p, t)| (*p, *t))
    }

    /// Where `id` is stored.
    #[must_use]
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        let e = self.blobs.get(id)?;
        let (pack, _) = self.packs.get(e.pack as usize)?;
        Some(BlobLocation {
            kind: e.kind,
            pack: *pack,
            offset: e.offset,
            length: e.length,
            raw_len: e.raw_len,
        })
    }

    /// Whether `id` is indexed.
    #[must_use]
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// Number of distinct blobs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every indexed pack with its size.
    pub fn packs(&self) -> impl Iterator<Item = (PackId, u64)> + '_ {
        self.packs.iter().copied()
    }

    /// Every blob with its location.
    pub fn blobs(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.blobs.iter().filter_map(|(id, e)| {
            let (pack, _) = self.packs.get(e.pack as usize)?;
            Some((
                *id,
                BlobLocation {
                    kind: e.kind,
                    pack: *pack,
                    offset: e.offset,
                    length: e.length,
                    raw_len: e.raw_len,
                },
            ))
        })
    }

    /// Blobs indexed in more than one place (beyond their first location).
    #[must_use]
    pub fn duplicates(&self) -> &[(BlobId, BlobLocation)] {
        &self.duplicates
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(i: u8, offset: u32) -> PackedBlob {
        PackedBlob {
            kind: if i.is_multiple_of(2) {
                BlobKind::Data
            } else {
                BlobKind::Tree
            },
            id: BlobId([i; 32]),
            offset,
            length: 10,
            raw_len: 20,
        }
    }

    #[test]
    fn encode_decode_round_trips() {
        let file = IndexFile {
            packs: vec![IndexedPack {
                id: PackId([9; 32]),
                size: 100,
                blobs: vec![blob(1, 0), blob(2, 10)],
            }],
            supersedes: vec![IndexId([3; 32])],
            marked: vec![(PackId([4; 32]), 1_700_000_000)],
        };
        assert_eq!(IndexFile::decode(&file.encode()).unwrap(), file);
    }

    #[test]
    fn decode_rejects_huge_counts_without_allocating() {
        let mut bytes = b"VIDX\x02".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            IndexFile::decode(&bytes),
            Err(IndexError::Truncated)
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = b"VIDX\x01".to_vec();
            bytes.extend_from_slice(&data);
            let _ = IndexFile::decode(&bytes);
        }
    }

    #[test]
    fn index_lookup_and_duplicates() {
        let mut idx = Index::new();
        idx.add_pack(PackId([1; 32]), 100, &[blob(1, 0)]);
        idx.add_pack(PackId([2; 32]), 100, &[blob(1, 0), blob(2, 10)]);
        assert_eq!(idx.get(&BlobId([1; 32])).unwrap().pack, PackId([1; 32]));
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.duplicates().len(), 1);
        assert_eq!(idx.packs().count(), 2);
    }
}
