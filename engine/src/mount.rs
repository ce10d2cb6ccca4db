//! The storage side of `vault mount`: random-access reads of file content
//! and the names snapshots get in a browsable view. The filesystem glue
//! (FUSE, inodes) lives in the CLI; nothing here writes to storage.
//!
//! A file is its list of chunks. [`FileContent`] keeps the cumulative end
//! offset of each chunk, so a read at `(offset, len)` finds its first chunk
//! by binary search and touches only the chunks that overlap the range.
//! Decrypted chunks are kept in a [`BlobCache`], a least-recently-used map
//! bounded in bytes, so that the kernel's many small sequential reads of
//! one file decrypt each chunk once, and memory never holds whole files.

use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::index::Index;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Tree};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Default capacity of a [`BlobCache`].
pub const DEFAULT_CACHE_SIZE: usize = 128 * 1024 * 1024; // 128 MiB

/// Decrypted, verified blobs, least recently used evicted first once the
/// total plaintext exceeds the capacity.
#[derive(Debug)]
pub struct BlobCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Blob → (plaintext, last use).
    blobs: HashMap<BlobId, (Arc<[u8]>, u64)>,
    /// Last use → blob: the oldest entry is the first.
    by_use: BTreeMap<u64, BlobId>,
    clock: u64,
    bytes: usize,
}

impl CacheInner {
    fn touch(&mut self, id: &BlobId) -> Option<Arc<[u8]>> {
        self.clock += 1;
        let clock = self.clock;
        let (data, used) = self.blobs.get_mut(id)?;
        self.by_use.remove(used);
        *used = clock;
        self.by_use.insert(clock, *id);
        Some(data.clone())
    }
}

impl BlobCache {
    /// A cache holding at most `capacity` bytes of plaintext.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    /// Plaintext bytes held now.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock leaves the maps consistent (every
        // update is a few infallible map operations), so poison is ignored.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The blob's plaintext, from the cache or read (and verified) from
    /// storage. Storage is read without holding the lock, so concurrent
    /// readers of different blobs do not wait for each other; two readers
    /// of the same missing blob may both fetch it.
    pub fn load(&self, repo: &Repository, index: &Index, id: &BlobId) -> Result<Arc<[u8]>> {
        if let Some(data) = self.lock().touch(id) {
            return Ok(data);
        }
        let data: Arc<[u8]> = repo.read_blob(index, id)?.into();
        Ok(self.insert(*id, data))
    }

    /// Keeps `data`, evicting the least recently used blobs to make room;
    /// returns the copy the cache holds (another reader's, if it was
    /// faster). A blob larger than the whole cache is not kept.
    fn insert(&self, id: BlobId, data: Arc<[u8]>) -> Arc<[u8]> {
        if data.len() > self.capacity {
            return data;
        }
        let mut inner = self.lock();
        if let Some(held) = inner.touch(&id) {
            return held;
        }
        while inner.bytes + data.len() > self.capacity {
            let Some((_, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            if let Some((evicted, _)) = inner.blobs.remove(&oldest) {
                inner.bytes -= evicted.len();
            }
        }
        inner.clock += 1;
        let clock = inner.clock;
        inner.by_use.insert(clock, id);
        inner.bytes += data.len();
        inner.blobs.insert(id, (data.clone(), clock));
        data
    }

    /// A tree blob, decoded, its nodes as restore and `ls` show them (a
    /// legacy symlink with a subtree is a directory:
    /// [`Node::legacy_ancestor_as_dir`]).
    pub fn load_tree(&self, repo: &Repository, index: &Index, id: &BlobId) -> Result<Tree> {
        let bytes = self.load(repo, index, id)?;
        let mut tree = Tree::decode(&bytes).map_err(|e| Error::corrupt(format!("tree {id}"), e))?;
        tree.nodes.iter_mut().for_each(Node::legacy_ancestor_as_dir);
        Ok(tree)
    }
}

/// The content of one file, addressable by byte offset.
#[derive(Debug, Clone)]
pub struct FileContent {
    chunks: Vec<BlobId>,
    /// `ends[i]`: offset one past the last byte of `chunks[i]`.
    ends: Vec<u64>,
}

impl FileContent {
    /// Looks up the size of every chunk of a file node in the index.
    ///
    /// # Errors
    /// `NotFound` when a chunk is in no index; `InvalidInput` for a node
    /// that is not a file.
    pub fn new(index: &Index, node: &Node) -> Result<Self> {
        if node.kind != NodeKind::File {
            return Err(Error::InvalidInput(format!("{} is not a file", node.name)));
        }
        let chunks = node.content.clone().unwrap_or_default();
        let mut ends = Vec::with_capacity(chunks.len());
        let mut end = 0u64;
        for id in &chunks {
            let loc = index.get(id).ok_or_else(|| Error::NotFound {
                object: format!("blob {id} of {} (not in any index)", node.name),
            })?;
            end += u64::from(loc.raw_len);
            ends.push(end);
        }
        Ok(Self { chunks, ends })
    }

    /// Content length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Whether the file is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunks overlapping `offset..offset + len`, each with the range
    /// of its plaintext to take, in file order.
    fn spans(&self, offset: u64, len: u64) -> Vec<(usize, std::ops::Range<usize>)> {
        let end = offset.saturating_add(len).min(self.len());
        let mut spans = Vec::new();
        // The first chunk ending after `offset` holds its byte.
        let mut i = self.ends.partition_point(|&e| e <= offset);
        let mut pos = offset;
        while pos < end && i < self.chunks.len() {
            let chunk_start = if i == 0 { 0 } else { self.ends[i - 1] };
            let chunk_end = self.ends[i];
            let from = pos - chunk_start;
            let to = end.min(chunk_end) - chunk_start;
            // Chunks are at most a few MiB (the chunker's maximum), so their
            // offsets fit in usize.
            spans.push((i, usize_of(from)..usize_of(to)));
            pos = chunk_start + to;
            i += 1;
        }
        spans
    }

    /// Reads up to `len` bytes at `offset`: fewer only at the end of the
    /// file. Each chunk is verified when it is read from storage.
    pub fn read_at(
        &self,
        repo: &Repository,
        index: &Index,
        cache: &BlobCache,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let spans = self.spans(offset, len as u64);
        let mut out = Vec::with_capacity(spans.iter().map(|(_, r)| r.len()).sum());
        for (i, range) in spans {
            let id = &self.chunks[i];
            let data = cache.load(repo, index, id)?;
            let piece = data.get(range).ok_or_else(|| {
                Error::corrupt(
                    format!("blob {id}"),
                    "plaintext shorter than its index entry",
                )
            })?;
            out.extend_from_slice(piece);
        }
        Ok(out)
    }
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).expect("a chunk offset fits in usize")
}

/// Directory names for snapshots, in the order given: the snapshot time in
/// UTC to the second (`2026-11-23T09:30:00Z`); snapshots taken in the same
/// second get `-1`, `-2`, ... after the first, as restic does.
#[must_use]
pub fn snapshot_names(snapshots: &[(SnapshotId, Snapshot)]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    snapshots
        .iter()
        .map(|(_, s)| {
            let base = s
                .time
                .timestamp()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let n = seen.entry(base.clone()).or_insert(0);
            let name = if *n == 0 { base } else { format!("{base}-{n}") };
            *n += 1;
            name
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotSummary;

    fn content(sizes: &[u64]) -> FileContent {
        let mut end = 0;
        let ends = sizes
            .iter()
            .map(|s| {
                end += s;
                end
            })
            .collect();
        FileContent {
            chunks: (0..sizes.len()).map(|i| BlobId([i as u8; 32])).collect(),
            ends,
        }
    }

    #[test]
    fn spans_cross_chunk_boundaries() {
        let c = content(&[10, 5, 20]);
        assert_eq!(c.len(), 35);
        assert_eq!(c.spans(0, 10), vec![(0, 0..10)]);
        assert_eq!(c.spans(8, 10), vec![(0, 8..10), (1, 0..5), (2, 0..3)]);
        assert_eq!(c.spans(10, 5), vec![(1, 0..5)]);
        assert_eq!(c.spans(34, 100), vec![(2, 19..20)]);
        assert!(c.spans(35, 10).is_empty());
        assert!(c.spans(1000, 10).is_empty());
        assert!(c.spans(3, 0).is_empty());
        assert!(content(&[]).spans(0, 10).is_empty());
    }

    #[test]
    fn spans_cover_every_byte_once() {
        let sizes = [7, 1, 13, 4, 9];
        let c = content(&sizes);
        for offset in 0..c.len() + 2 {
            for len in 0..c.len() + 2 {
                let total: usize = c.spans(offset, len).iter().map(|(_, r)| r.len()).sum();
                let want = offset
                    .saturating_add(len)
                    .min(c.len())
                    .saturating_sub(offset);
                assert_eq!(total as u64, want, "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn cache_evicts_least_recently_used_within_capacity() {
        let cache = BlobCache::new(10);
        let id = |n: u8| BlobId([n; 32]);
        let blob = |len: usize| -> Arc<[u8]> { vec![0u8; len].into() };
        cache.insert(id(1), blob(4));
        cache.insert(id(2), blob(4));
        assert!(cache.lock().touch(&id(1)).is_some());
        cache.insert(id(3), blob(4));
        assert_eq!(cache.bytes(), 8);
        let mut inner = cache.lock();
        assert!(inner.touch(&id(2)).is_none(), "least recently used evicted");
        assert!(inner.touch(&id(1)).is_some() && inner.touch(&id(3)).is_some());
        drop(inner);
        cache.insert(id(4), blob(11));
        assert_eq!(cache.bytes(), 8, "a blob larger than the cache is not kept");
    }

    #[test]
    fn names_are_utc_seconds_and_unique() {
        let snap = |t: &str| {
            let ts: jiff::Timestamp = t.parse().unwrap();
            (
                SnapshotId::of_bytes(t.as_bytes()),
                Snapshot {
                    version: 1,
                    time: ts.to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(2))),
                    tree: BlobId([0; 32]),
                    paths: vec![],
                    hostname: "h".into(),
                    username: "u".into(),
                    uid: 0,
                    gid: 0,
                    tags: vec![],
                    parent: None,
                    original: None,
                    program_version: "t".into(),
                    inode_flags: false,
                    summary: SnapshotSummary::default(),
                    extra: serde_json::Map::new(),
                },
            )
        };
        let snaps = vec![
            snap("2026-11-23T09:30:00.1Z"),
            snap("2026-11-23T09:30:00.7Z"),
            snap("2026-11-23T09:30:01Z"),
        ];
        assert_eq!(
            snapshot_names(&snaps),
            vec![
                "2026-11-23T09:30:00Z",
                "2026-11-23T09:30:00Z-1",
                "2026-11-23T09:30:01Z"
            ]
        );
    }
}
