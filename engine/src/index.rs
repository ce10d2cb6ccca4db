//! Indexes (repo-format.md §8): which pack holds each blob, and where.
//!
//! `IndexFile` is the stored form (binary, compressed, sealed). `Index` is
//! the in-memory union of all index files: a sorted array of fixed-size
//! entries (48 bytes per blob, so one million blobs, roughly 1 TiB of 1 MiB
//! chunks, need about 46 MiB; see [`Index`]).
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

/// One blob in the in-memory index: 48 bytes, no heap allocation.
#[derive(Clone, Copy)]
struct Entry {
    id: BlobId,
    /// Pack slot (index into `Index::packs`) << 1 | kind (1 = tree).
    pack_kind: u32,
    offset: u32,
    length: u32,
    raw_len: u32,
}

impl Entry {
    fn slot(&self) -> usize {
        (self.pack_kind >> 1) as usize
    }

    fn kind(&self) -> BlobKind {
        if self.pack_kind & 1 == 1 {
            BlobKind::Tree
        } else {
            BlobKind::Data
        }
    }
}

/// The top `bits` bits of an id, as a bucket number.
fn bucket_of(id: &BlobId, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    // Most significant byte first, so buckets follow the ids' sort order.
    let head =
        id.0.iter()
            .take(4)
            .fold(0u32, |acc, b| acc << 8 | u32::from(*b));
    (head >> (32 - bits)) as usize
}

/// The in-memory index: every blob of every loaded index file.
///
/// Blobs are one array of fixed-size entries sorted by id, found by binary
/// search within a bucket chosen by the id's first bits (ids are uniformly
/// random, so buckets are even). 48 bytes per blob plus 64 bytes per pack
/// (about 46 MiB for a million blobs, 1 TiB of 1 MiB chunks), against ~110
/// MiB for a hash map of the same entries, whose table doubles past 7/8
/// load. Built once by [`IndexBuilder`] and read-only afterwards.
#[derive(Default)]
pub struct Index {
    packs: Vec<(PackId, u64)>,
    /// Sorted by id, one entry per id.
    entries: Vec<Entry>,
    /// `entries[starts[b]..starts[b + 1]]` are the ids in bucket `b`.
    starts: Vec<u32>,
    bucket_bits: u32,
    /// Blobs listed in more than one pack (kept for check and prune).
    duplicates: Vec<(BlobId, BlobLocation)>,
    /// Packs marked for deletion, with the time of marking.
    marked: IdMap<PackId, i64>,
}

/// Collects index files or packs, then sorts them into an [`Index`].
#[derive(Default)]
pub struct IndexBuilder {
    packs: Vec<(PackId, u64)>,
    pack_slot: IdMap<PackId, u32>,
    entries: Vec<Entry>,
    marked: IdMap<PackId, i64>,
}

impl IndexBuilder {
    /// Empty.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pack's entries.
    pub fn add_pack(&mut self, id: PackId, size: u64, blobs: &[PackedBlob]) {
        let slot = match self.pack_slot.get(&id) {
            Some(&s) => s,
            None => {
                let s = u32::try_from(self.packs.len())
                    .ok()
                    .filter(|s| *s < 1 << 31)
                    .expect("fewer than 2^31 packs");
                self.packs.push((id, size));
                self.pack_slot.insert(id, s);
                s
            }
        };
        self.entries.extend(blobs.iter().map(|b| Entry {
            id: b.id,
            pack_kind: slot << 1 | u32::from(b.kind == BlobKind::Tree),
            offset: b.offset,
            length: b.length,
            raw_len: b.raw_len,
        }));
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

    /// Records that `pack` was marked for deletion at `at` (earliest wins).
    pub fn mark(&mut self, pack: PackId, at: i64) {
        let entry = self.marked.entry(pack).or_insert(at);
        *entry = (*entry).min(at);
    }

    /// Sorts the entries into an index. A blob listed in several packs is
    /// found at an unmarked one if it has any, else at the first pack
    /// added; the other locations are kept as duplicates.
    #[must_use]
    pub fn finish(self) -> Index {
        let IndexBuilder {
            packs,
            pack_slot: _,
            mut entries,
            marked,
        } = self;
        let is_marked: Vec<bool> = packs
            .iter()
            .map(|(id, _)| marked.contains_key(id))
            .collect();
        let marked_slot = |e: &Entry| is_marked.get(e.slot()).copied().unwrap_or(false);
        // Slots are numbered in the order packs were added, so this is
        // "unmarked first, then first added" among equal ids.
        entries.sort_unstable_by(|a, b| {
            a.id.0
                .cmp(&b.id.0)
                .then_with(|| marked_slot(a).cmp(&marked_slot(b)))
                .then_with(|| a.pack_kind.cmp(&b.pack_kind))
                .then_with(|| a.offset.cmp(&b.offset))
        });
        let mut duplicates = Vec::new();
        // `later` is removed when it repeats the id of `kept`; listing the
        // same pack in two index files is not a second location.
        entries.dedup_by(|later, kept| {
            if later.id != kept.id {
                return false;
            }
            if (later.slot() != kept.slot() || later.offset != kept.offset)
                && let Some((pack, _)) = packs.get(later.slot())
            {
                duplicates.push((
                    later.id,
                    BlobLocation {
                        kind: later.kind(),
                        pack: *pack,
                        offset: later.offset,
                        length: later.length,
                        raw_len: later.raw_len,
                    },
                ));
            }
            true
        });
        entries.shrink_to_fit();
        // About 16 entries per bucket; at most 2^16 buckets (256 KiB).
        let bucket_bits = (usize::BITS - (entries.len() / 16).leading_zeros()).min(16);
        let mut starts = vec![0u32; (1usize << bucket_bits) + 1];
        for e in &entries {
            if let Some(n) = starts.get_mut(bucket_of(&e.id, bucket_bits) + 1) {
                *n += 1;
            }
        }
        for i in 1..starts.len() {
            let before = starts.get(i - 1).copied().unwrap_or(0);
            if let Some(n) = starts.get_mut(i) {
                *n += before;
            }
        }
        Index {
            packs,
            entries,
            starts,
            bucket_bits,
            duplicates,
            marked,
        }
    }
}

impl Index {
    /// The index of several files; see [`IndexBuilder::finish`] for which
    /// location of a blob wins.
    #[must_use]
    pub fn from_files<'a>(files: impl IntoIterator<Item = &'a IndexFile>) -> Self {
        let mut builder = IndexBuilder::new();
        for f in files {
            builder.add_file(f);
        }
        builder.finish()
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

    fn find(&self, id: &BlobId) -> Option<&Entry> {
        let b = bucket_of(id, self.bucket_bits);
        let lo = *self.starts.get(b)? as usize;
        let hi = *self.starts.get(b + 1)? as usize;
        let bucket = self.entries.get(lo..hi)?;
        let i = bucket.binary_search_by(|e| e.id.0.cmp(&id.0)).ok()?;
        bucket.get(i)
    }

    fn location(&self, e: &Entry) -> Option<BlobLocation> {
        let (pack, _) = self.packs.get(e.slot())?;
        Some(BlobLocation {
            kind: e.kind(),
            pack: *pack,
            offset: e.offset,
            length: e.length,
            raw_len: e.raw_len,
        })
    }

    /// Where `id` is stored.
    #[must_use]
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.location(self.find(id)?)
    }

    /// The slot of the pack `id` is found in: its position in
    /// [`Index::packs`], for callers keeping state per pack.
    pub(crate) fn pack_slot(&self, id: &BlobId) -> Option<usize> {
        Some(self.find(id)?.slot())
    }

    /// Whether `id` is indexed.
    #[must_use]
    pub fn contains(&self, id: &BlobId) -> bool {
        self.find(id).is_some()
    }

    /// Number of distinct blobs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every indexed pack with its size.
    pub fn packs(&self) -> impl Iterator<Item = (PackId, u64)> + '_ {
        self.packs.iter().copied()
    }

    /// Every blob with its location, in id order.
    pub fn blobs(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.entries
            .iter()
            .filter_map(|e| Some((e.id, self.location(e)?)))
    }

    /// Blobs indexed in more than one place (beyond their first location),
    /// in id order.
    #[must_use]
    pub fn duplicates(&self) -> &[(BlobId, BlobLocation)] {
        &self.duplicates
    }

    /// Every location of `id`: where [`Index::get`] finds it, then the
    /// other packs holding it. Readers try them in turn, so a blob stored
    /// twice (two backups of the same data at once) survives the loss or
    /// damage of one pack.
    #[must_use]
    pub fn locations(&self, id: &BlobId) -> Vec<BlobLocation> {
        let Some(first) = self.get(id) else {
            return Vec::new();
        };
        let from = self.duplicates.partition_point(|(d, _)| d.0 < id.0);
        let others = self
            .duplicates
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|(d, _)| d == id)
            .map(|(_, loc)| *loc);
        std::iter::once(first).chain(others).collect()
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

    proptest! {
        /// Against a model: for each id, the location of the first
        /// unmarked pack listing it, else of the first pack.
        #[test]
        fn lookups_match_a_map_model(
            packs in proptest::collection::vec(
                (0u8..12, proptest::collection::vec((0u8..40, 0u32..4), 0..20), any::<bool>()),
                0..30,
            ),
        ) {
            let mut builder = IndexBuilder::new();
            let mut order: Vec<(BlobId, PackId, u32)> = Vec::new();
            let mut marked = std::collections::HashSet::new();
            for (pack, blobs, mark) in &packs {
                let pack_id = PackId([*pack; 32]);
                let blobs: Vec<PackedBlob> = blobs
                    .iter()
                    .map(|(id, slot)| blob(*id, slot * 10))
                    .collect();
                builder.add_pack(pack_id, 1000, &blobs);
                if *mark {
                    builder.mark(pack_id, 5);
                    marked.insert(pack_id);
                }
                order.extend(blobs.iter().map(|b| (b.id, pack_id, b.offset)));
            }
            let index = builder.finish();
            // Packs in the order first added (even without blobs), as the
            // builder numbers them.
            let mut first_seen: Vec<PackId> = Vec::new();
            for (p, _, _) in &packs {
                if !first_seen.contains(&PackId([*p; 32])) {
                    first_seen.push(PackId([*p; 32]));
                }
            }
            let rank = |p: &PackId| first_seen.iter().position(|q| q == p).unwrap();
            let mut model: HashMap<BlobId, (PackId, u32)> = HashMap::new();
            for (id, pack, offset) in &order {
                let better = match model.get(id) {
                    None => true,
                    Some((p, o)) => (marked.contains(pack), rank(pack), *offset)
                        < (marked.contains(p), rank(p), *o),
                };
                if better {
                    model.insert(*id, (*pack, *offset));
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for i in 0u8..40 {
                let id = BlobId([i; 32]);
                let got = index.get(&id).map(|l| (l.pack, l.offset));
                prop_assert_eq!(got, model.get(&id).copied());
                prop_assert_eq!(index.contains(&id), model.contains_key(&id));
            }
            let listed: Vec<BlobId> = index.blobs().map(|(id, _)| id).collect();
            let mut sorted = listed.clone();
            sorted.sort();
            prop_assert_eq!(listed, sorted);
        }
    }

    #[test]
    fn many_blobs_use_every_bucket_and_find_each() {
        let mut builder = IndexBuilder::new();
        let mut ids = Vec::new();
        for p in 0..200u32 {
            let blobs: Vec<PackedBlob> = (0..50u32)
                .map(|i| {
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(
                        &blake3::hash(&(p * 50 + i).to_le_bytes()).as_bytes()[..8],
                    );
                    ids.push(BlobId(id));
                    PackedBlob {
                        kind: BlobKind::Data,
                        id: BlobId(id),
                        offset: i * 10,
                        length: 10,
                        raw_len: 10,
                    }
                })
                .collect();
            let mut pid = [0u8; 32];
            pid[..4].copy_from_slice(&p.to_le_bytes());
            builder.add_pack(PackId(pid), 500, &blobs);
        }
        let index = builder.finish();
        assert_eq!(index.len(), 10_000);
        assert!(index.bucket_bits >= 9);
        for id in &ids {
            assert!(index.contains(id));
        }
        assert!(!index.contains(&BlobId([0xff; 32])));
        assert!(!index.contains(&BlobId([0; 32])));
    }

    #[test]
    fn index_lookup_and_duplicates() {
        let mut b = IndexBuilder::new();
        b.add_pack(PackId([1; 32]), 100, &[blob(1, 0)]);
        b.add_pack(PackId([2; 32]), 100, &[blob(1, 0), blob(2, 10)]);
        let idx = b.finish();
        assert_eq!(idx.get(&BlobId([1; 32])).unwrap().pack, PackId([1; 32]));
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.duplicates().len(), 1);
        assert_eq!(idx.packs().count(), 2);
        let packs = |id: u8| -> Vec<PackId> {
            idx.locations(&BlobId([id; 32]))
                .iter()
                .map(|l| l.pack)
                .collect()
        };
        assert_eq!(packs(1), [PackId([1; 32]), PackId([2; 32])]);
        assert_eq!(packs(2), [PackId([2; 32])]);
        assert_eq!(packs(3), []);
    }
}
