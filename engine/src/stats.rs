//! Repository statistics, as `restic stats` offers them.
//!
//! - *restore size*: the logical bytes and files a restore of the chosen
//!   snapshots would write (hard-linked files counted once per snapshot);
//! - *raw data*: the distinct blobs those snapshots reference, their
//!   plaintext and stored sizes, and the deduplication and compression
//!   ratios that follow;
//! - *repository totals*: every stored object by kind, from a listing of
//!   the backend, and what the index holds;
//! - on request, restic's *files by contents* (regular files counted once
//!   per distinct content) and *blobs per file* (the blobs of those files,
//!   counted once per path).
//!
//! One pass computes them all: each distinct tree is read once, however
//! many snapshots share it.

use crate::blob::BlobKind;
use crate::error::Result;
use crate::id::{BlobId, PackId, SnapshotId};
use crate::index::Index;
use crate::repository::{FileKind, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{Extents, NodeKind};
use crate::tree_reader::TreeReader;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What a restore of the chosen snapshots would write.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreSize {
    /// Logical bytes of file content.
    pub total_size: u64,
    /// Regular files.
    pub total_file_count: u64,
    /// Directories.
    pub total_dir_count: u64,
    /// Symlinks, devices, fifos, sockets.
    pub total_other_count: u64,
}

/// The distinct blobs the chosen snapshots reference.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RawData {
    /// Distinct blobs (data and tree).
    pub total_blob_count: u64,
    /// Distinct data blobs.
    pub data_blob_count: u64,
    /// Distinct tree blobs.
    pub tree_blob_count: u64,
    /// Their plaintext bytes.
    pub total_uncompressed_size: u64,
    /// Their stored bytes (compressed and sealed, in packs).
    pub total_size: u64,
    /// Plaintext bytes of the distinct data blobs.
    pub data_uncompressed_size: u64,
    /// Logical bytes ÷ distinct data plaintext bytes: how much deduplication
    /// saves (1.0 = nothing shared).
    pub dedup_ratio: f64,
    /// Plaintext ÷ stored bytes of the distinct blobs.
    pub compression_ratio: f64,
    /// Referenced blobs no index lists (their sizes are unknown; `vault
    /// check` reports them).
    pub missing_blobs: u64,
}

/// Regular files counted once per distinct content (their list of data
/// blobs), wherever and however often they appear: what the chosen
/// snapshots hold once identical files are set aside. All empty files are
/// one content.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FilesByContents {
    /// Content bytes of one file of each distinct content.
    pub total_size: u64,
    /// Distinct contents.
    pub total_file_count: u64,
}

/// The data blobs of the files of [`FilesByContents`] (the first found of
/// each content), each counted once per path it is found under: a file
/// changed between snapshots counts once, with the blobs of every version.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlobsPerFile {
    /// Plaintext bytes of the blobs counted.
    pub total_size: u64,
    /// Distinct paths of those files.
    pub total_file_count: u64,
    /// Blobs, once per path.
    pub total_blob_count: u64,
    /// Blobs no index lists (their sizes are unknown; `vault check`
    /// reports them).
    pub missing_blobs: u64,
}

/// Which optional counts [`stats_with`] makes: each costs memory per
/// distinct file content (and path) found.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsOptions {
    /// Count [`FilesByContents`].
    pub files_by_contents: bool,
    /// Count [`BlobsPerFile`].
    pub blobs_per_file: bool,
}

/// Stored objects of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectCount {
    /// Objects.
    pub count: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

/// What the index lists.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexTotals {
    /// Indexed packs.
    pub packs: u64,
    /// Distinct blobs.
    pub blobs: u64,
    /// Distinct data blobs.
    pub data_blobs: u64,
    /// Distinct tree blobs.
    pub tree_blobs: u64,
    /// Their plaintext bytes.
    pub uncompressed_bytes: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
    /// Plaintext ÷ stored bytes.
    pub compression_ratio: f64,
    /// Packs in storage that no index lists (an interrupted or running
    /// backup's uploads).
    pub unindexed_packs: u64,
}

/// The whole repository, from a listing of its storage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepositoryTotals {
    /// Objects by kind: `config`, `keys`, `snapshots`, `index`, `data`, `locks`.
    pub objects: BTreeMap<&'static str, ObjectCount>,
    /// Every stored byte.
    pub total_bytes: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// What the index holds.
    pub index: IndexTotals,
}

/// Everything `vault stats` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsReport {
    /// Snapshots counted.
    pub snapshots_count: u64,
    /// Restore size of those snapshots.
    pub restore_size: RestoreSize,
    /// Raw data of those snapshots.
    pub raw_data: RawData,
    /// Repository totals.
    pub repository: RepositoryTotals,
    /// Files by contents, when asked for.
    pub files_by_contents: Option<FilesByContents>,
    /// Blobs per file, when asked for.
    pub blobs_per_file: Option<BlobsPerFile>,
}

/// Totals of one tree and everything below it. Files with more than one
/// link are counted apart, so each snapshot can count an inode's bytes
/// once: their (device, inode, size) are kept only where they are listed,
/// not copied into every tree above (a few crafted trees listing each other
/// over and over would copy them billions of times).
#[derive(Default)]
struct TreeTotals {
    bytes: u64,
    files: u64,
    dirs: u64,
    others: u64,
    /// Files with more than one link, below and in this tree, each time
    /// they appear.
    linked_files: u64,
    /// (device, inode, size) of this tree's own files with more than one
    /// link.
    own_links: Vec<(u64, u64, u64)>,
    /// Subtrees with such files below them.
    linked_below: Vec<BlobId>,
}

struct Walker<'a> {
    trees: TreeReader<'a>,
    memo: HashMap<BlobId, Arc<TreeTotals>>,
    data: HashSet<BlobId>,
    /// Trees listing each other into more entries than any file system
    /// holds are damage, as to restore: measured as they are read.
    extents: Extents,
    /// Files by contents and blobs per file, when asked for.
    contents: Option<ContentWalk>,
}

/// What files by contents and blobs per file gather as the trees are
/// walked. Each distinct tree is walked once (under the first path it is
/// found at): walking it again would find only contents already seen,
/// which count nothing, so this is restic's count without its re-walks.
#[derive(Default)]
struct ContentWalk {
    /// Hashes of the contents seen: a hash of the blob ids in order.
    seen: HashSet<[u8; 32]>,
    files: FilesByContents,
    /// For blobs per file: the blobs of each path.
    per_path: Option<HashMap<Vec<u8>, HashSet<BlobId>>>,
}

impl ContentWalk {
    fn file(&mut self, path: &[u8], node: &crate::tree::Node) {
        let mut hasher = blake3::Hasher::new();
        for id in node.content.iter().flatten() {
            hasher.update(&id.0);
        }
        if !self.seen.insert(*hasher.finalize().as_bytes()) {
            return;
        }
        self.files.total_size = self.files.total_size.saturating_add(node.size);
        self.files.total_file_count += 1;
        // A path with no blobs (an empty file) is no file here, as in
        // restic's count.
        if let Some(per_path) = self
            .per_path
            .as_mut()
            .filter(|_| node.content.as_ref().is_some_and(|c| !c.is_empty()))
        {
            let blobs = per_path.entry(path.to_vec()).or_default();
            blobs.extend(node.content.iter().flatten());
        }
    }
}

impl Walker<'_> {
    /// The totals of tree `id`, found at `path` (tracked only for
    /// [`ContentWalk`]).
    fn totals(&mut self, id: &BlobId, depth: usize, path: &[u8]) -> Result<Arc<TreeTotals>> {
        if let Some(t) = self.memo.get(id) {
            return Ok(t.clone());
        }
        crate::tree::within_depth(depth, &format_args!("tree {id}"))?;
        let tree = self.trees.read(id)?;
        self.extents.add_walked(*id, &tree)?;
        let mut t = TreeTotals::default();
        for mut node in tree.nodes {
            // As restore sees it: a node with a subtree is a directory.
            node.legacy_ancestor_as_dir();
            let node_path = match &self.contents {
                Some(c) if c.per_path.is_some() => {
                    use std::os::unix::ffi::OsStrExt;
                    [path, b"/", node.os_name().as_bytes()].concat()
                }
                _ => Vec::new(),
            };
            match node.kind {
                NodeKind::Dir => {
                    t.dirs += 1;
                    if let Some(sub) = &node.subtree {
                        let below = self.totals(sub, depth + 1, &node_path)?;
                        // Saturating: sizes are untrusted.
                        t.bytes = t.bytes.saturating_add(below.bytes);
                        t.files += below.files;
                        t.dirs += below.dirs;
                        t.others += below.others;
                        t.linked_files += below.linked_files;
                        // Listed twice if it is: the walk of them skips
                        // a tree it has seen.
                        if below.linked_files > 0 {
                            t.linked_below.push(*sub);
                        }
                    }
                }
                NodeKind::File => {
                    if node.links > 1 && node.inode != 0 {
                        t.own_links.push((node.device_id, node.inode, node.size));
                        t.linked_files += 1;
                    } else {
                        t.bytes = t.bytes.saturating_add(node.size);
                        t.files += 1;
                    }
                    if let Some(c) = &mut self.contents {
                        c.file(&node_path, &node);
                    }
                    self.data.extend(node.content.into_iter().flatten());
                }
                _ => t.others += 1,
            }
        }
        let t = Arc::new(t);
        self.memo.insert(*id, t.clone());
        Ok(t)
    }

    /// Content bytes of the distinct hard-linked files below `root` (each
    /// inode counted once, with the size of the first of its names found),
    /// from each distinct tree once.
    fn linked_bytes(&self, root: &BlobId) -> u64 {
        let mut inodes = HashSet::new();
        let mut trees = HashSet::new();
        let mut stack = vec![*root];
        let mut bytes = 0u64;
        while let Some(id) = stack.pop() {
            let Some(t) = self.memo.get(&id).filter(|_| trees.insert(id)) else {
                continue;
            };
            for (dev, ino, size) in &t.own_links {
                if inodes.insert((*dev, *ino)) {
                    bytes = bytes.saturating_add(*size);
                }
            }
            stack.extend(t.linked_below.iter().rev());
        }
        bytes
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        #[allow(clippy::cast_precision_loss)]
        let r = num as f64 / den as f64;
        (r * 1000.0).round() / 1000.0
    }
}

/// Repository totals from a listing of the storage and the index.
pub fn repository_totals(repo: &Repository, index: &Index) -> Result<RepositoryTotals> {
    let mut totals = RepositoryTotals::default();
    let config = repo
        .backend()
        .head("config")
        .map_err(|e| crate::Error::backend("config", e))?;
    totals.objects.insert(
        "config",
        ObjectCount {
            count: 1,
            bytes: config,
        },
    );
    let mut stored_packs: HashSet<PackId> = HashSet::new();
    for (name, kind) in [
        ("keys", FileKind::Key),
        ("snapshots", FileKind::Snapshot),
        ("index", FileKind::Index),
        ("data", FileKind::Pack),
        ("locks", FileKind::Lock),
    ] {
        let mut c = ObjectCount::default();
        for info in repo.list(kind)? {
            c.count += 1;
            c.bytes += info.size;
            if kind == FileKind::Pack
                && let Some(id) = info.path.rsplit('/').next().and_then(|n| n.parse().ok())
            {
                stored_packs.insert(id);
            }
        }
        totals.objects.insert(name, c);
    }
    totals.total_bytes = totals.objects.values().map(|c| c.bytes).sum();
    totals.snapshots = totals.objects.get("snapshots").map_or(0, |c| c.count);
    let mut ix = IndexTotals::default();
    let mut indexed_packs: HashSet<PackId> = HashSet::new();
    for (pack, _) in index.packs() {
        indexed_packs.insert(pack);
    }
    ix.packs = indexed_packs.len() as u64;
    for (_, loc) in index.blobs() {
        ix.blobs += 1;
        match loc.kind {
            BlobKind::Data => ix.data_blobs += 1,
            BlobKind::Tree => ix.tree_blobs += 1,
        }
        ix.uncompressed_bytes += u64::from(loc.raw_len);
        ix.stored_bytes += u64::from(loc.length);
    }
    ix.compression_ratio = ratio(ix.uncompressed_bytes, ix.stored_bytes);
    ix.unindexed_packs = stored_packs.difference(&indexed_packs).count() as u64;
    totals.index = ix;
    Ok(totals)
}

/// Statistics of `snapshots` (restore size and raw data) and of the whole
/// repository.
pub fn stats(
    repo: &Repository,
    index: &Index,
    snapshots: &[(SnapshotId, Snapshot)],
) -> Result<StatsReport> {
    stats_with(repo, index, snapshots, StatsOptions::default())
}

/// [`stats`], and the optional counts `options` asks for. Snapshots are
/// walked in the order given (it decides which path of a content blobs
/// per file counts).
pub fn stats_with(
    repo: &Repository,
    index: &Index,
    snapshots: &[(SnapshotId, Snapshot)],
    options: StatsOptions,
) -> Result<StatsReport> {
    let contents = (options.files_by_contents || options.blobs_per_file).then(|| ContentWalk {
        per_path: options.blobs_per_file.then(HashMap::new),
        ..ContentWalk::default()
    });
    let mut walker = Walker {
        trees: TreeReader::new(repo, index),
        memo: HashMap::new(),
        data: HashSet::new(),
        extents: Extents::default(),
        contents,
    };
    let mut restore = RestoreSize::default();
    for (_, snap) in snapshots {
        let t = walker.totals(&snap.tree, 0, b"")?;
        restore.total_size = restore
            .total_size
            .saturating_add(t.bytes)
            .saturating_add(walker.linked_bytes(&snap.tree));
        restore.total_file_count += t.files + t.linked_files;
        restore.total_dir_count += t.dirs;
        restore.total_other_count += t.others;
    }
    let mut raw = RawData::default();
    let mut add = |id: &BlobId, kind: BlobKind| match index.get(id) {
        Some(loc) => {
            raw.total_blob_count += 1;
            match kind {
                BlobKind::Data => {
                    raw.data_blob_count += 1;
                    raw.data_uncompressed_size += u64::from(loc.raw_len);
                }
                BlobKind::Tree => raw.tree_blob_count += 1,
            }
            raw.total_uncompressed_size += u64::from(loc.raw_len);
            raw.total_size += u64::from(loc.length);
        }
        None => raw.missing_blobs += 1,
    };
    for id in walker.memo.keys() {
        add(id, BlobKind::Tree);
    }
    for id in &walker.data {
        add(id, BlobKind::Data);
    }
    raw.dedup_ratio = ratio(restore.total_size, raw.data_uncompressed_size);
    raw.compression_ratio = ratio(raw.total_uncompressed_size, raw.total_size);
    let contents = walker.contents.take();
    let blobs_per_file = contents
        .as_ref()
        .and_then(|c| c.per_path.as_ref())
        .map(|per_path| {
            let mut b = BlobsPerFile {
                total_file_count: per_path.len() as u64,
                ..BlobsPerFile::default()
            };
            for id in per_path.values().flatten() {
                match index.get(id) {
                    Some(loc) => {
                        b.total_blob_count += 1;
                        b.total_size = b.total_size.saturating_add(u64::from(loc.raw_len));
                    }
                    None => b.missing_blobs += 1,
                }
            }
            b
        });
    Ok(StatsReport {
        snapshots_count: snapshots.len() as u64,
        restore_size: restore,
        raw_data: raw,
        repository: repository_totals(repo, index)?,
        files_by_contents: contents
            .filter(|_| options.files_by_contents)
            .map(|c| c.files),
        blobs_per_file,
    })
}
