//! Reading many trees from an object store: walks of snapshots (restore,
//! `ls`, the parent of a backup, check, prune, stats, diff, copy).
//!
//! One ranged GET per tree made planning a restore of a 52k-file tree
//! (1 446 directories) from a local Garage take 25 s, against 3 s for all
//! of its content. Trees are packed apart from data, so a tree pack holds
//! only trees: the first tree a walk needs from such a pack fetches the
//! pack's whole indexed span in one request, and the pack's other trees
//! come from memory.
//!
//! Memory is bounded: spans stay cached up to [`CACHE_BUDGET`] bytes, oldest
//! dropped first. A pack needed again after its span was dropped is read
//! tree by tree from then on, so a walk that jumps between many large
//! packs never downloads a pack more than once. From a local disk a ranged
//! read is cheap, and trees are read one by one as before.
//!
//! With the repository's local cache ([`crate::cache`]) tree packs are
//! fetched whole, checked against their names and kept on disk, so walks
//! in later commands read them from there.

use crate::blob::{self, BlobKind};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::index::Index;
use crate::repository::{FileKind, Repository};
use crate::tree::{Extents, Tree};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes of pack spans a walk keeps (four full 16 MiB tree packs).
const CACHE_BUDGET: u64 = 64 * 1024 * 1024;

/// A fetched span, or `None` when fetching it failed (the caller then reads
/// the tree alone, which reports the error with the tree's name).
type Span = Arc<OnceLock<Option<Bytes>>>;

/// Reads trees for one walk; safe to share between threads.
pub(crate) struct TreeReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    /// Per tree pack: start and end of its indexed blobs. Empty when
    /// reading from a local disk.
    spans: OnceLock<HashMap<PackId, (u32, u32)>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    spans: HashMap<PackId, Span>,
    /// Cached packs, oldest first, with their span lengths.
    order: VecDeque<(PackId, u64)>,
    bytes: u64,
    /// Packs whose span was dropped: read tree by tree from now on.
    dropped: HashSet<PackId>,
}

impl<'a> TreeReader<'a> {
    pub(crate) fn new(repo: &'a Repository, index: &'a Index) -> Self {
        Self {
            repo,
            index,
            spans: OnceLock::new(),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Per tree pack, the span of its indexed blobs; worked out from the
    /// index on the first read (a backup without a parent reads no tree).
    fn spans(&self) -> &HashMap<PackId, (u32, u32)> {
        self.spans.get_or_init(|| {
            let mut spans: HashMap<PackId, (u32, u32)> = HashMap::new();
            if self.repo.backend().is_local() {
                return spans;
            }
            let mut data_packs: HashSet<PackId> = HashSet::new();
            for (_, loc) in self.index.blobs() {
                if loc.kind != BlobKind::Tree {
                    data_packs.insert(loc.pack);
                    continue;
                }
                let end = loc.offset.saturating_add(loc.length);
                let span = spans.entry(loc.pack).or_insert((loc.offset, end));
                span.0 = span.0.min(loc.offset);
                span.1 = span.1.max(end);
            }
            // A pack mixing kinds (not written by vault, or repaired) is
            // read tree by tree rather than fetched with its data.
            spans.retain(|pack, _| !data_packs.contains(pack));
            spans
        })
    }

    /// Reads every tree below `root` that `extents` does not hold yet, each
    /// once, and measures it: fails as damage when they list each other
    /// into more than [`crate::tree::MAX_ENTRIES`] entries. For commands
    /// that expand a snapshot's trees in some other order than a walk
    /// (rewrite), before they expand any.
    pub(crate) fn measure(&self, root: &BlobId, extents: &mut Extents) -> Result<()> {
        let mut stack = vec![*root];
        while let Some(id) = stack.pop() {
            if extents.contains(&id) {
                continue;
            }
            let tree = self.read(&id)?;
            extents.add_walked(id, &tree)?;
            stack.extend(tree.nodes.iter().filter_map(|n| n.subtree));
        }
        Ok(())
    }

    /// Reads and decodes tree `id`.
    pub(crate) fn read(&self, id: &BlobId) -> Result<Tree> {
        if let Some(loc) = self.index.get(id)
            && loc.kind == BlobKind::Tree
            && let Some(span) = self.span(&loc.pack)
            && let Some(Some(bytes)) = span.get()
        {
            let from = loc.offset.saturating_sub(self.spans()[&loc.pack].0) as usize;
            if let Some(stored) = bytes.get(from..from + loc.length as usize) {
                let plain = match blob::open(self.repo.key(), loc.kind, id, loc.raw_len, stored) {
                    Ok(plain) => plain,
                    // This copy is damaged; another pack may hold the tree.
                    Err(e) => self
                        .repo
                        .other_copy(self.index, id, &loc.pack)
                        .ok()
                        .flatten()
                        .ok_or_else(|| {
                            Error::corrupt(format!("blob {id} in pack {}", loc.pack), e)
                        })?,
                };
                return Tree::decode(&plain).map_err(|e| Error::corrupt(format!("tree {id}"), e));
            }
        }
        self.repo.read_tree(self.index, id)
    }

    /// The cached span of `pack`, fetched by the first caller to need it
    /// (others wait for it); `None` to read tree by tree.
    fn span(&self, pack: &PackId) -> Option<Span> {
        let &(start, end) = self.spans().get(pack)?;
        let cell = {
            let mut cache = self.cache.lock().expect("not poisoned");
            if cache.dropped.contains(pack) {
                return None;
            }
            if let Some(cell) = cache.spans.get(pack) {
                cell.clone()
            } else {
                let len = u64::from(end - start);
                cache.bytes += len;
                cache.order.push_back((*pack, len));
                while cache.bytes > CACHE_BUDGET && cache.order.len() > 1 {
                    let (old, old_len) = cache.order.pop_front().expect("not empty");
                    cache.spans.remove(&old);
                    // With a disk cache a dropped pack is read from disk
                    // again, whole; only without one would that download it
                    // again.
                    if self.repo.cache().is_none() {
                        cache.dropped.insert(old);
                    }
                    cache.bytes -= old_len;
                }
                let cell = Span::default();
                cache.spans.insert(*pack, cell.clone());
                cell
            }
        };
        cell.get_or_init(|| {
            if self.repo.cache().is_some() {
                let whole = self.whole_pack(pack)?;
                let range = start as usize..end as usize;
                return whole.get(range.clone()).map(|_| whole.slice(range));
            }
            let path = FileKind::Pack.path(&pack.to_hex());
            self.repo
                .backend()
                .get_range(&path, u64::from(start), u64::from(end - start))
                .ok()
        });
        Some(cell)
    }

    /// Tree pack `pack` whole, from the local cache or else from the store
    /// (then kept in the cache): with a cache, the next walk of the same
    /// trees (tomorrow's backup, an `ls`) downloads nothing. Fetched whole,
    /// not just its span, so the copy can be checked against its name.
    fn whole_pack(&self, pack: &PackId) -> Option<Bytes> {
        let cache = self.repo.cache()?;
        let hex = pack.to_hex();
        if let Some(bytes) = cache.read(FileKind::Pack, &hex) {
            return Some(Bytes::from(bytes));
        }
        let bytes = self
            .repo
            .backend()
            .get(&FileKind::Pack.path(&hex), FileKind::Pack.max_len())
            .ok()?;
        // A pack that does not match its name is not cached; its trees are
        // then read one by one, which names what is wrong.
        if blake3::hash(&bytes).to_hex().as_str() != hex {
            return None;
        }
        cache.write(FileKind::Pack, &hex, &bytes);
        Some(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backup::Source;
    use crate::cache::Cache;
    use crate::repository::InitOptions;
    use crate::test_support::{backup_source, memory_repo, password};

    /// Every file name under `tree`, read through `reader`.
    fn walk(reader: &TreeReader<'_>, tree: &BlobId, out: &mut Vec<String>) {
        for node in reader.read(tree).unwrap().nodes {
            out.push(node.name.clone());
            if let Some(sub) = node.subtree {
                walk(reader, &sub, out);
            }
        }
    }

    #[test]
    fn with_a_disk_cache_tree_packs_are_downloaded_once_and_checked() {
        let (backend, repo) = memory_repo(InitOptions::default());
        let src = tempfile::tempdir().unwrap();
        for d in 0..20 {
            let dir = src.path().join(format!("d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("f"), format!("{d}")).unwrap();
        }
        let root = backup_source(&repo, Source::Paths(vec![src.path().to_path_buf()])).tree;
        let base = tempfile::tempdir().unwrap();
        let open = || {
            let mut repo = Repository::open(backend.clone(), &password()).unwrap();
            repo.set_cache(Cache::open(base.path(), &repo.config().id).unwrap());
            repo
        };
        let gets = || backend.requests().unwrap().get;
        let names = |repo: &Repository| {
            let index = repo.load_index().unwrap();
            let mut out = Vec::new();
            walk(&TreeReader::new(repo, &index), &root, &mut out);
            out
        };
        let first = open();
        let before = gets();
        let expected = names(&first);
        assert!(expected.len() > 40);
        assert!(gets() > before);
        let second = open();
        let before = gets();
        assert_eq!(names(&second), expected);
        assert_eq!(gets(), before, "trees came from the cache");
        // Single tree reads (mount, path lookups) use the cached packs too.
        let index = second.load_index().unwrap();
        let before = gets();
        let tree = second.read_tree(&index, &root).unwrap();
        assert_eq!(gets(), before, "a single tree read came from the cache");
        // A damaged copy is not believed: the pack is fetched again.
        let trees = base.path().join(&second.config().id).join("trees");
        let copies: Vec<_> = std::fs::read_dir(&trees).unwrap().flatten().collect();
        assert!(!copies.is_empty());
        for copy in &copies {
            let flipped: Vec<u8> = std::fs::read(copy.path())
                .unwrap()
                .iter()
                .map(|b| !b)
                .collect();
            std::fs::write(copy.path(), flipped).unwrap();
        }
        let before = gets();
        assert_eq!(second.read_tree(&index, &root).unwrap(), tree);
        assert!(gets() > before, "a damaged copy is read past");
        assert!(copies.iter().any(|c| !c.path().exists()), "and dropped");
        let third = open();
        let before = gets();
        assert_eq!(names(&third), expected);
        assert!(gets() > before);
        // A pack the index no longer lists (pruned) leaves the cache.
        let stray = trees.join("ab".repeat(32));
        std::fs::write(&stray, b"pruned pack").unwrap();
        third.load_index().unwrap();
        assert!(!stray.exists());
    }
}
