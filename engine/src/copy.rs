//! Copy snapshots into another repository (local or S3, any password).
//!
//! Blob ids are keyed with each repository's own id key (repo-format.md §3),
//! so the same chunk has unrelated ids in two repositories. Copying
//! therefore reads each needed blob from the source, re-hashes its plaintext
//! with the target's id key, and stores it through the target's [`Saver`]
//! (sealed with the target's keys, deduplicated against the target's index);
//! trees are then rewritten bottom-up with the new ids. When both
//! repositories share the id key (a target made with the same master key),
//! ids are kept and blobs the target already has are not read at all.
//!
//! A copied snapshot records where it came from in `original`: the source
//! snapshot's own `original` if it has one (it is itself a copy or a
//! repair), else the source snapshot's id, as restic does. A source snapshot
//! is skipped when the target holds a snapshot with the same `original` (or
//! id) and the same time, host, user, paths and tags, so copying twice
//! copies nothing new.
//!
//! Not reading what the target already has: the target's copy of an earlier
//! snapshot of the same host and paths is walked beside its source to learn
//! which source blob became which target blob. A learned tree is used only
//! if rewriting the source tree with the learned ids gives exactly the
//! target tree's id, and only if every blob below it is indexed in the
//! target in a pack prune has not marked; so unchanged files are neither
//! read nor sent.
//!
//! Crash safety is the backup's: blobs go through the [`Saver`] (which
//! indexes what it uploaded every few packs, and on interruption), and a
//! snapshot is written only after every blob it references is durable and
//! indexed. Snapshots are written in batches of about
//! [`CHECKPOINT_BYTES`] of new data, so an interrupted copy keeps the
//! snapshots it finished; a rerun does not upload again what was uploaded.

use crate::backup::{Saver, SaverStats};
use crate::blob::{self, BlobKind};
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use crate::index::Index;
use crate::repository::{FileKind, Repository};
use crate::snapshot::Snapshot;
use crate::tree::Extents;
use crate::tree::Tree;
use crate::tree_reader::TreeReader;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// New stored bytes after which finished snapshots are written.
pub const CHECKPOINT_BYTES: u64 = 512 * 1024 * 1024;
/// Decoded tree nodes kept between planning and rewriting a snapshot;
/// beyond this, trees are read again.
const TREE_CACHE_NODES: usize = 200_000;

/// Knobs for a copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Compression for blobs stored in the target.
    pub compression: Compression,
    /// Concurrent pack uploads to the target.
    pub upload_concurrency: usize,
    /// Concurrent pack reads from the source.
    pub download_concurrency: usize,
    /// Set to stop; finished snapshots are still written.
    pub cancel: Arc<AtomicBool>,
    /// Write finished snapshots after this many new stored bytes.
    pub checkpoint_bytes: u64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            compression: Compression::default(),
            upload_concurrency: 2,
            download_concurrency: 4,
            cancel: Arc::new(AtomicBool::new(false)),
            checkpoint_bytes: CHECKPOINT_BYTES,
        }
    }
}

/// Live counters.
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// Snapshots to copy (known after planning).
    pub snapshots_total: AtomicU64,
    /// Snapshots copied so far.
    pub snapshots_done: AtomicU64,
    /// Blobs read from the source.
    pub blobs_read: AtomicU64,
    /// Plaintext bytes read from the source.
    pub bytes_read: AtomicU64,
    /// The target's write pipeline.
    pub saver: Arc<SaverStats>,
}

/// A snapshot written to the target.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedSnapshot {
    /// In the source.
    pub source: SnapshotId,
    /// In the target.
    pub target: SnapshotId,
}

/// A source snapshot the target already holds.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedSnapshot {
    /// In the source.
    pub source: SnapshotId,
    /// Its copy in the target.
    pub existing: SnapshotId,
}

/// Outcome of a copy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Snapshots written to the target.
    pub copied: Vec<CopiedSnapshot>,
    /// Snapshots the target already had.
    pub skipped: Vec<SkippedSnapshot>,
    /// Whether both repositories share the id key (ids kept as they are).
    pub same_id_key: bool,
    /// Blobs read from the source.
    pub blobs_read: u64,
    /// Plaintext bytes read from the source.
    pub bytes_read: u64,
    /// Blobs stored in the target.
    pub blobs_added: u64,
    /// Their plaintext bytes.
    pub bytes_added: u64,
    /// Their stored bytes.
    pub bytes_stored: u64,
    /// Packs uploaded to the target.
    pub packs_uploaded: u64,
}

/// The id a snapshot is known by across copies.
fn origin(id: &SnapshotId, snap: &Snapshot) -> SnapshotId {
    snap.original.unwrap_or(*id)
}

/// Same backup, as far as the metadata shows (restic's rule).
fn similar(a: &Snapshot, b: &Snapshot) -> bool {
    a.time.timestamp() == b.time.timestamp()
        && a.hostname == b.hostname
        && a.username == b.username
        && a.paths == b.paths
        && a.tags == b.tags
}

/// The target snapshots each source snapshot would duplicate.
fn existing_copy(
    by_origin: &HashMap<SnapshotId, Vec<(SnapshotId, Snapshot)>>,
    id: &SnapshotId,
    snap: &Snapshot,
) -> Option<(SnapshotId, Snapshot)> {
    by_origin
        .get(&origin(id, snap))?
        .iter()
        .find(|(_, t)| similar(t, snap))
        .cloned()
}

/// Source blob id → target blob id.
#[derive(Default)]
struct Mapping {
    data: HashMap<BlobId, BlobId>,
    trees: HashMap<BlobId, BlobId>,
    /// Source trees whose learning from an existing copy failed.
    unlearnable: HashSet<BlobId>,
    /// Target packs holding what was learned, which copied snapshots may
    /// reference without the saver seeing it (see `write_snapshots`).
    reused: HashSet<PackId>,
}

/// A blob to read from the source.
struct Needed {
    id: BlobId,
    kind: BlobKind,
    offset: u32,
    length: u32,
    raw_len: u32,
}

struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Arc<Repository>,
    src_index: &'a Index,
    /// The source's trees (a tree pack at a time from an object store).
    src_trees: TreeReader<'a>,
    dst_index: Arc<Index>,
    same_key: bool,
    map: Mutex<Mapping>,
    options: &'a CopyOptions,
    progress: &'a CopyProgress,
    tree_cache: HashMap<BlobId, Tree>,
    cached_nodes: usize,
}

impl Copier<'_> {
    /// `reused` (from the saver) and the target packs learned ids are in.
    fn with_learned_packs(&self, mut reused: Vec<PackId>) -> Vec<PackId> {
        let map = self.map.lock().expect("not poisoned");
        reused.extend(map.reused.iter().copied());
        reused.sort_unstable();
        reused.dedup();
        reused
    }

    /// The target id of a source data blob, if known without reading it.
    fn mapped_data(&self, map: &Mapping, saver: &Saver, id: &BlobId) -> Option<BlobId> {
        if self.same_key {
            saver.contains(id).then_some(*id)
        } else {
            map.data.get(id).copied()
        }
    }

    fn usable_in_target(&self, id: &BlobId) -> Option<u32> {
        let loc = self.dst_index.get(id)?;
        self.dst_index
            .marked_at(&loc.pack)
            .is_none()
            .then_some(loc.raw_len)
    }

    /// Learns source → target ids from a source tree and the target tree
    /// copied from it earlier. Returns whether `src_tree` maps to
    /// `dst_tree` (verified by rewriting and re-hashing).
    fn learn(&mut self, src_tree: BlobId, dst_tree: BlobId, depth: usize) -> Result<bool> {
        // Deeper than readers follow: not learned (each level is a frame).
        if depth > crate::tree::MAX_DEPTH {
            return Ok(false);
        }
        {
            let map = self.map.lock().expect("not poisoned");
            if let Some(d) = map.trees.get(&src_tree) {
                return Ok(*d == dst_tree);
            }
            if map.unlearnable.contains(&src_tree) {
                return Ok(false);
            }
        }
        let ok = self.learn_tree(src_tree, dst_tree, depth)?;
        if !ok {
            let mut map = self.map.lock().expect("not poisoned");
            map.unlearnable.insert(src_tree);
        }
        Ok(ok)
    }

    fn learn_tree(&mut self, src_tree: BlobId, dst_tree: BlobId, depth: usize) -> Result<bool> {
        if self.usable_in_target(&dst_tree).is_none() {
            return Ok(false);
        }
        let (Ok(st), Ok(dt)) = (
            self.src_trees.read(&src_tree),
            self.dst.read_tree(&self.dst_index, &dst_tree),
        ) else {
            return Ok(false);
        };
        if st.nodes.len() != dt.nodes.len() {
            return Ok(false);
        }
        let mut ok = true;
        let mut learned: Vec<(BlobId, BlobId)> = Vec::new();
        for (a, b) in st.nodes.iter().zip(&dt.nodes) {
            if a.name != b.name || a.name_raw != b.name_raw || a.kind != b.kind {
                return Ok(false);
            }
            match (&a.subtree, &b.subtree) {
                (Some(sa), Some(sb)) => ok &= self.learn(*sa, *sb, depth + 1)?,
                (None, None) => {}
                _ => ok = false,
            }
            match (&a.content, &b.content) {
                (Some(ca), Some(cb)) if ca.len() == cb.len() => {
                    for (s, d) in ca.iter().zip(cb) {
                        let src_len = self.src_index.get(s).map(|l| l.raw_len);
                        match self.usable_in_target(d) {
                            Some(len) if Some(len) == src_len => learned.push((*s, *d)),
                            _ => ok = false,
                        }
                    }
                }
                (None, None) => {}
                _ => ok = false,
            }
        }
        if !ok {
            return Ok(false);
        }
        let learned_map: HashMap<BlobId, BlobId> = learned.iter().copied().collect();
        let rewritten = {
            let map = self.map.lock().expect("not poisoned");
            rewrite(
                &st,
                |id| learned_map.get(id).copied(),
                |id| map.trees.get(id).copied(),
            )
        };
        let Some(rewritten) = rewritten else {
            return Ok(false);
        };
        if self.dst.key().blob_id(&rewritten.encode()) != dst_tree {
            return Ok(false);
        }
        let mut map = self.map.lock().expect("not poisoned");
        let packs = (learned.iter().map(|(_, d)| d).chain([&dst_tree]))
            .filter_map(|id| Some(self.dst_index.get(id)?.pack));
        map.reused.extend(packs);
        map.data.extend(learned);
        map.trees.insert(src_tree, dst_tree);
        Ok(true)
    }

    fn read_src_tree(&mut self, id: &BlobId, keep: bool) -> Result<Tree> {
        if let Some(t) = self.tree_cache.get(id) {
            return Ok(t.clone());
        }
        let tree = self.src_trees.read(id)?;
        if keep && self.cached_nodes + tree.nodes.len() <= TREE_CACHE_NODES {
            self.cached_nodes += tree.nodes.len();
            self.tree_cache.insert(*id, tree.clone());
        }
        Ok(tree)
    }

    /// Lists the source blobs a snapshot needs that the target does not
    /// have (as far as known without reading them).
    fn plan(&mut self, saver: &Saver, root: &BlobId) -> Result<Vec<BlobId>> {
        let mut needed = Vec::new();
        let mut seen_trees = HashSet::new();
        let mut seen_data = HashSet::new();
        let mut stack = vec![*root];
        while let Some(tree_id) = stack.pop() {
            if !seen_trees.insert(tree_id) {
                continue;
            }
            if self
                .map
                .lock()
                .expect("not poisoned")
                .trees
                .contains_key(&tree_id)
            {
                continue; // rewritten or learned before: complete in the target
            }
            let tree = self.read_src_tree(&tree_id, true)?;
            let map = self.map.lock().expect("not poisoned");
            for node in &tree.nodes {
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
                for id in node.content.iter().flatten() {
                    if seen_data.insert(*id) && self.mapped_data(&map, saver, id).is_none() {
                        needed.push(*id);
                    }
                }
            }
        }
        Ok(needed)
    }

    /// Reads `blobs` from the source, pack by pack, and stores them in the
    /// target.
    fn transfer(&self, saver: &Saver, blobs: &[BlobId]) -> Result<()> {
        let mut by_pack: BTreeMap<PackId, Vec<Needed>> = BTreeMap::new();
        for id in blobs {
            let loc = self.src_index.get(id).ok_or_else(|| Error::NotFound {
                object: format!(
                    "blob {id} in the source (not in any index; run `vault check` on the source)"
                ),
            })?;
            by_pack.entry(loc.pack).or_default().push(Needed {
                id: *id,
                kind: loc.kind,
                offset: loc.offset,
                length: loc.length,
                raw_len: loc.raw_len,
            });
        }
        let packs: Vec<(PackId, Vec<Needed>)> = by_pack.into_iter().collect();
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let pool = crate::repository::thread_pool(self.options.download_concurrency.max(1))?;
        pool.install(|| {
            packs.par_iter().for_each(|(pack, needed)| {
                if self.options.cancel.load(Ordering::Relaxed)
                    || saver.has_failed()
                    || first_error.lock().expect("not poisoned").is_some()
                {
                    return;
                }
                if let Err(e) = self.transfer_pack(saver, pack, needed) {
                    first_error.lock().expect("not poisoned").get_or_insert(e);
                }
            });
        });
        if let Some(e) = first_error.into_inner().expect("not poisoned") {
            return Err(e);
        }
        if self.options.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        Ok(())
    }

    fn transfer_pack(&self, saver: &Saver, pack: &PackId, needed: &[Needed]) -> Result<()> {
        let path = FileKind::Pack.path(&pack.to_hex());
        // Ranged reads of nearby blobs, merged while the gap is small.
        const MAX_GAP: u64 = 1024 * 1024;
        let mut sorted: Vec<&Needed> = needed.iter().collect();
        sorted.sort_by_key(|n| n.offset);
        let mut runs: Vec<Vec<&Needed>> = Vec::new();
        for n in sorted {
            match runs.last_mut() {
                Some(run)
                    if run.last().is_some_and(|p| {
                        u64::from(n.offset) <= u64::from(p.offset) + u64::from(p.length) + MAX_GAP
                    }) =>
                {
                    run.push(n);
                }
                _ => runs.push(vec![n]),
            }
        }
        for run in runs {
            if self.options.cancel.load(Ordering::Relaxed) || saver.has_failed() {
                return Ok(());
            }
            let start = u64::from(run.first().map_or(0, |n| n.offset));
            let end = run
                .iter()
                .map(|n| u64::from(n.offset) + u64::from(n.length))
                .max()
                .unwrap_or(start);
            let span = self
                .src
                .backend()
                .get_range(&path, start, end - start)
                .map_err(|e| Error::backend(format!("source pack {pack}"), e));
            // Only damage is worked around; the store failing stops the copy.
            let span = match span {
                Err(e) if !matches!(e, Error::NotFound { .. } | Error::Corrupt { .. }) => {
                    return Err(e);
                }
                span => span,
            };
            for n in run {
                // The span's error, again for each blob it costs.
                let plain = span
                    .as_ref()
                    .map_err(|e| match e {
                        Error::NotFound { object } => Error::NotFound {
                            object: object.clone(),
                        },
                        e => Error::corrupt(format!("source pack {pack}"), e),
                    })
                    .and_then(|span| {
                        let from =
                            usize::try_from(u64::from(n.offset) - start).unwrap_or(usize::MAX);
                        let stored = span
                            .get(from..from.saturating_add(n.length as usize))
                            .ok_or_else(|| {
                                Error::corrupt(
                                    format!("source pack {pack}"),
                                    "shorter than indexed",
                                )
                            })?;
                        blob::open(self.src.key(), n.kind, &n.id, n.raw_len, stored).map_err(|e| {
                            Error::corrupt(format!("blob {} in source pack {pack}", n.id), e)
                        })
                    });
                // Another copy of the blob (two backups stored it at once)
                // stands in for a missing or damaged one, as in restore.
                let plain = match plain {
                    Ok(plain) => plain,
                    Err(e @ (Error::NotFound { .. } | Error::Corrupt { .. })) => self
                        .src
                        .other_copy(self.src_index, &n.id, pack)
                        .ok()
                        .flatten()
                        .ok_or(e)?,
                    Err(e) => return Err(e),
                };
                self.progress.blobs_read.fetch_add(1, Ordering::Relaxed);
                self.progress
                    .bytes_read
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
                let new_id = self.dst.key().blob_id(&plain);
                saver.save_with_id(BlobKind::Data, new_id, plain)?;
                if !self.same_key {
                    self.map
                        .lock()
                        .expect("not poisoned")
                        .data
                        .insert(n.id, new_id);
                }
            }
        }
        Ok(())
    }

    /// Rewrites the source tree `id` and everything below it with target
    /// ids, storing new trees; returns the target id.
    fn rewrite_tree(&mut self, saver: &Saver, id: &BlobId, depth: usize) -> Result<BlobId> {
        if let Some(d) = self.map.lock().expect("not poisoned").trees.get(id) {
            return Ok(*d);
        }
        crate::tree::within_depth(depth, &format_args!("tree {id}"))?;
        let tree = match self.tree_cache.remove(id) {
            Some(t) => {
                self.cached_nodes -= t.nodes.len();
                t
            }
            None => self.read_src_tree(id, false)?,
        };
        for node in &tree.nodes {
            if let Some(sub) = &node.subtree {
                self.rewrite_tree(saver, sub, depth + 1)?;
            }
        }
        let rewritten = {
            let map = self.map.lock().expect("not poisoned");
            rewrite(
                &tree,
                |b| self.mapped_data(&map, saver, b),
                |t| map.trees.get(t).copied(),
            )
        }
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "copy: tree {} references a blob that was not copied",
                id.short()
            ))
        })?;
        let bytes = rewritten.encode();
        let new_id = self.dst.key().blob_id(&bytes);
        saver.save_with_id(BlobKind::Tree, new_id, bytes)?;
        self.map
            .lock()
            .expect("not poisoned")
            .trees
            .insert(*id, new_id);
        Ok(new_id)
    }
}

/// Fails as damage if the trees of source snapshot `id` are beyond what
/// readers follow ([`crate::tree::Extent::exceeds_limits`]).
fn within_limits(
    trees: &TreeReader<'_>,
    extents: &mut Extents,
    id: &SnapshotId,
    snap: &Snapshot,
) -> Result<()> {
    trees.measure(&snap.tree, extents)?;
    match extents.get(&snap.tree) {
        Some(extent) if extent.exceeds_limits() => Err(Error::corrupt(
            format!("snapshot {id}"),
            format!(
                "its tree {} nests {} levels deep or expands to {} entries, beyond the {} levels and {} entries readers follow: restore, ls and dump refuse it, and copy does not pass it on",
                snap.tree.short(),
                extent.levels.saturating_sub(1),
                extent.entries,
                crate::tree::MAX_DEPTH,
                crate::tree::MAX_ENTRIES
            ),
        )),
        _ => Ok(()),
    }
}

/// `tree` with every content and subtree id replaced; `None` if one has no
/// replacement.
fn rewrite(
    tree: &Tree,
    data: impl Fn(&BlobId) -> Option<BlobId>,
    trees: impl Fn(&BlobId) -> Option<BlobId>,
) -> Option<Tree> {
    let mut out = tree.clone();
    for node in &mut out.nodes {
        if let Some(content) = &mut node.content {
            for id in content.iter_mut() {
                *id = data(id)?;
            }
        }
        if let Some(sub) = &mut node.subtree {
            *sub = trees(sub)?;
        }
    }
    Some(out)
}

/// Like backup's check: a prune of the target that ran during the copy may
/// have removed packs the copied snapshots deduplicated against. Refuse to
/// write snapshots that would reference missing data.
fn ensure_not_pruned_under_us(
    dst: &Repository,
    at_start: &HashSet<IndexId>,
    roots: &[BlobId],
) -> Result<()> {
    let mut maintenance_ran = false;
    for id in dst.index_ids()? {
        if !at_start.contains(&id)
            && let Ok(file) = dst.load_index_file(&id)
            && !file.supersedes.is_empty()
        {
            maintenance_ran = true;
        }
    }
    if !maintenance_ran {
        return Ok(());
    }
    let index = dst.load_index()?;
    let stored = crate::check::stored_packs(dst)?;
    let present = |id: &BlobId| index.get(id).is_some_and(|l| stored.contains_key(&l.pack));
    let missing = || {
        Error::InvalidInput(
            "a prune of the target ran beside this copy and removed data it deduplicated against; run the copy again".into(),
        )
    };
    let mut stack = roots.to_vec();
    let mut seen = HashSet::new();
    while let Some(tree_id) = stack.pop() {
        if !seen.insert(tree_id) {
            continue;
        }
        if !present(&tree_id) {
            return Err(missing());
        }
        for node in dst.read_tree(&index, &tree_id)?.nodes {
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
            if node.content.iter().flatten().any(|id| !present(id)) {
                return Err(missing());
            }
        }
    }
    Ok(())
}

/// Copies `selected` snapshots of `src` into `dst`, skipping those already
/// there.
pub fn copy(
    src: &Repository,
    dst: &Arc<Repository>,
    selected: &[(SnapshotId, Snapshot)],
    options: &CopyOptions,
    progress: &CopyProgress,
) -> Result<CopyReport> {
    if src.config().id == dst.config().id {
        return Err(Error::InvalidInput(
            "source and target are the same repository".into(),
        ));
    }
    let probe = b"vault copy: id key probe";
    let same_key = src.key().blob_id(probe) == dst.key().blob_id(probe);
    let mut report = CopyReport {
        same_id_key: same_key,
        ..CopyReport::default()
    };

    let mut by_origin: HashMap<SnapshotId, Vec<(SnapshotId, Snapshot)>> = HashMap::new();
    for (id, snap) in dst.snapshots()? {
        by_origin
            .entry(origin(&id, &snap))
            .or_default()
            .push((id, snap));
    }
    let dst_index = Arc::new(dst.load_index()?);
    let mut todo: Vec<&(SnapshotId, Snapshot)> = Vec::new();
    // Source snapshot -> its earlier copy whose root tree the target lost.
    let mut mending: HashMap<SnapshotId, (SnapshotId, BlobId)> = HashMap::new();
    let mut seen = HashSet::new();
    for entry in selected {
        let (id, snap) = entry;
        if !seen.insert(*id) {
            continue;
        }
        match existing_copy(&by_origin, id, snap) {
            Some((existing, copy)) if dst_index.contains(&copy.tree) => {
                report.skipped.push(SkippedSnapshot {
                    source: *id,
                    existing,
                });
            }
            // An earlier copy whose root tree the target lost (its pack
            // gone, then `repair index`): the source still has it whole,
            // so its data is copied again, which mends that copy (same
            // content, same ids) without writing a second one.
            Some((existing, copy)) => {
                mending.insert(*id, (existing, copy.tree));
                todo.push(entry);
            }
            None => todo.push(entry),
        }
    }
    todo.sort_by_key(|(_, s)| s.time.timestamp());
    progress
        .snapshots_total
        .store(todo.len() as u64, Ordering::Relaxed);
    if todo.is_empty() {
        return Ok(report);
    }

    let src_index = src.load_index()?;
    let mut at_start: HashSet<IndexId> = dst.index_ids()?.into_iter().collect();
    let mut copier = Copier {
        src,
        dst,
        src_index: &src_index,
        src_trees: TreeReader::new(src, &src_index),
        dst_index,
        same_key,
        map: Mutex::new(Mapping::default()),
        options,
        progress,
        tree_cache: HashMap::new(),
        cached_nodes: 0,
    };
    // Earlier copies of each host and paths, to learn ids from.
    let earlier: Vec<(Snapshot, BlobId)> = if same_key {
        Vec::new()
    } else {
        src.snapshots()?
            .into_iter()
            .filter_map(|(id, s)| {
                let (_, t) = existing_copy(&by_origin, &id, &s)?;
                Some((s, t.tree))
            })
            .collect()
    };
    let mut learned_from: HashSet<BlobId> = HashSet::new();
    // What each snapshot's trees expand to, each distinct tree read once:
    // trees nested deeper than readers follow, or listing each other into
    // more entries than any file system holds, are damage here as they
    // are to restore, ls and rewrite (check reports them), and copied they
    // would only pass the damage on.
    let mut extents = Extents::default();

    let start_saver = |index: &Arc<Index>| {
        Saver::start(
            dst.clone(),
            index.clone(),
            options.compression,
            options.upload_concurrency,
            progress.saver.clone(),
        )
    };
    let mut saver = Some(start_saver(&copier.dst_index));
    let mut pending: Vec<(SnapshotId, Snapshot)> = Vec::new();
    let mut stored_at_checkpoint = progress.saver.bytes_stored.load(Ordering::Relaxed);
    let mut outcome: Result<()> = Ok(());
    for (n, (id, snap)) in todo.iter().enumerate() {
        if options.cancel.load(Ordering::Relaxed) {
            outcome = Err(Error::Interrupted);
            break;
        }
        let Some(current) = saver.as_ref() else {
            break;
        };
        // Learn from the earlier copy nearest in time of the same host and
        // paths (preferring older ones, as a backup picks its parent).
        let nearest = earlier
            .iter()
            .filter(|(s, _)| s.hostname == snap.hostname && s.paths == snap.paths)
            .min_by_key(|(s, _)| {
                let d = s.time.timestamp().as_nanosecond() - snap.time.timestamp().as_nanosecond();
                (d > 0, d.abs())
            })
            .map(|(s, t)| (s.tree, *t));
        let step = within_limits(&copier.src_trees, &mut extents, id, snap)
            .and_then(|()| match nearest {
                Some((s_root, t_root)) if learned_from.insert(s_root) => {
                    copier.learn(s_root, t_root, 0).map(|_| ())
                }
                _ => Ok(()),
            })
            .and_then(|()| copier.plan(current, &snap.tree))
            .and_then(|needed| copier.transfer(current, &needed))
            .and_then(|()| copier.rewrite_tree(current, &snap.tree, 0));
        let root = match step {
            Ok(root) => root,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        match mending.get(id) {
            Some(&(existing, tree)) if tree == root => {
                report.skipped.push(SkippedSnapshot {
                    source: *id,
                    existing,
                });
                progress.snapshots_done.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                let mut copy = snap.clone();
                copy.tree = root;
                copy.original = Some(origin(id, snap));
                copy.parent = None;
                pending.push((*id, copy));
            }
        }
        let stored = progress.saver.bytes_stored.load(Ordering::Relaxed);
        let last = n + 1 == todo.len();
        if !last && stored - stored_at_checkpoint >= options.checkpoint_bytes {
            // Make what this batch uploaded durable and indexed, write its
            // snapshots, and go on with a fresh view of the target.
            let checkpoint = saver
                .take()
                .map_or(Ok(Vec::new()), Saver::finish_reused)
                .and_then(|reused| {
                    let reused = copier.with_learned_packs(reused);
                    write_snapshots(dst, &at_start, &reused, &mut pending, &mut report, progress)
                })
                .and_then(|()| {
                    at_start = dst.index_ids()?.into_iter().collect();
                    copier.dst_index = Arc::new(dst.load_index()?);
                    Ok(())
                });
            if let Err(e) = checkpoint {
                outcome = Err(e);
                break;
            }
            saver = Some(start_saver(&copier.dst_index));
            stored_at_checkpoint = stored;
        }
    }
    // Drain the pipeline whatever happened, so uploads are indexed and a
    // rerun reuses them; snapshots finished before an interruption or an
    // error are still written.
    let finished = saver.take().map_or(Ok(Vec::new()), Saver::finish_reused);
    let written = match &finished {
        Ok(reused) => {
            let reused = copier.with_learned_packs(reused.clone());
            write_snapshots(dst, &at_start, &reused, &mut pending, &mut report, progress)
        }
        Err(_) => Ok(()),
    };
    // The pipeline's own error first: a failed save only says that the
    // pipeline stopped, finish says why (a full disk, exit 7).
    let result = finished.map(drop).and(outcome).and(written);
    let s = &progress.saver;
    report.blobs_read = progress.blobs_read.load(Ordering::Relaxed);
    report.bytes_read = progress.bytes_read.load(Ordering::Relaxed);
    report.blobs_added = s.blobs_added.load(Ordering::Relaxed);
    report.bytes_added = s.bytes_added.load(Ordering::Relaxed);
    report.bytes_stored = s.bytes_stored.load(Ordering::Relaxed);
    report.packs_uploaded = s.packs_uploaded.load(Ordering::Relaxed);
    result.map(|()| report)
}

/// Writes the copied snapshots once their data is durable, unless a prune
/// of the target removed some of it meanwhile or a target pack they
/// deduplicated against (`reused`) is gone from storage.
fn write_snapshots(
    dst: &Repository,
    at_start: &HashSet<IndexId>,
    reused: &[PackId],
    pending: &mut Vec<(SnapshotId, Snapshot)>,
    report: &mut CopyReport,
    progress: &CopyProgress,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let roots: Vec<BlobId> = pending.iter().map(|(_, s)| s.tree).collect();
    ensure_not_pruned_under_us(dst, at_start, &roots)?;
    crate::backup::ensure_stored(dst, reused, "copy")?;
    for (source, snap) in pending.drain(..) {
        let target = dst.save_snapshot(&snap)?;
        report.copied.push(CopiedSnapshot { source, target });
        progress.snapshots_done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::repository::InitOptions;

    fn repo(master_key: Option<MasterKey>) -> Arc<Repository> {
        crate::test_support::memory_repo(InitOptions {
            master_key,
            chunker: Some(crate::test_support::SMALL_CHUNKER),
            pack_size: Some(64 * 1024),
            ..InitOptions::default()
        })
        .1
    }

    fn backup_stream(repo: &Arc<Repository>, data: &[u8]) {
        crate::test_support::backup_stream(repo, "dump.sql", data);
    }

    fn content(repo: &Repository, snap: &Snapshot) -> Vec<u8> {
        let index = repo.load_index().unwrap();
        let node = crate::restore::find_node(repo, &index, &snap.tree, "/dump.sql").unwrap();
        let mut out = Vec::new();
        crate::restore::dump(repo, &index, &node, &mut out).unwrap();
        out
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        let mut state = u64::from(seed) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    fn copy_all(src: &Repository, dst: &Arc<Repository>) -> CopyReport {
        let snaps = src.snapshots().unwrap();
        copy(
            src,
            dst,
            &snaps,
            &CopyOptions::default(),
            &CopyProgress::default(),
        )
        .unwrap()
    }

    /// Both id-key cases: a target with its own master key (ids re-keyed,
    /// trees rewritten) and one sharing the source's (ids kept).
    #[test]
    fn copies_round_trip_and_repeat_as_no_ops() {
        for same_key in [false, true] {
            let src = repo(None);
            let dst = repo(same_key.then(|| src.key().clone()));
            let first = data(1, 300_000);
            backup_stream(&src, &first);
            let report = copy_all(&src, &dst);
            assert_eq!(report.same_id_key, same_key);
            assert_eq!(report.copied.len(), 1);
            let copied = dst.snapshots().unwrap();
            assert_eq!(content(&dst, &copied[0].1), first);
            assert_eq!(copied[0].1.original, Some(report.copied[0].source));
            assert_eq!(
                copied[0].1.tree == src.snapshots().unwrap()[0].1.tree,
                same_key
            );

            let again = copy_all(&src, &dst);
            assert!(again.copied.is_empty());
            assert_eq!(again.skipped.len(), 1);
            assert_eq!(again.blobs_read + again.blobs_added, 0);

            // A second snapshot sharing most of its data: only what is new
            // is read from the source.
            let mut second = first.clone();
            second.extend_from_slice(&data(2, 1000));
            backup_stream(&src, &second);
            let third = copy_all(&src, &dst);
            assert_eq!(third.copied.len(), 1);
            let total_blobs = src.load_index().unwrap().len() as u64;
            assert!(total_blobs > 40);
            assert!(third.blobs_read <= 3, "{third:?}");
            let latest = dst.snapshots().unwrap().pop().unwrap().1;
            assert_eq!(content(&dst, &latest), second);
        }
    }

    #[test]
    fn refuses_to_copy_into_itself() {
        let src = repo(None);
        backup_stream(&src, b"x");
        let snaps = src.snapshots().unwrap();
        let err = copy(
            &src,
            &src,
            &snaps,
            &CopyOptions::default(),
            &CopyProgress::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("same repository"));
    }
}
