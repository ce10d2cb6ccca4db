//! Rewriting snapshots without some paths, as `restic rewrite` and `borg
//! recreate --exclude` do: for data that should never have been backed up
//! (a leaked secret, a file a deletion request names, a huge scratch
//! directory). Each changed snapshot is stored anew with `original` naming
//! the first; the old one is kept unless asked to forget it. The excluded
//! data stays in storage until `prune` finds it unused.

use crate::backup::{Excludes, TreeSink};
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::index::Index;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Extents, NodeKind, Tree};
use crate::tree_reader::TreeReader;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What rewriting did to one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Rewritten {
    /// The snapshot rewritten.
    pub original: String,
    /// The new snapshot; `None` on a dry run.
    pub replacement: Option<String>,
    /// Whether the original was deleted.
    pub forgotten: bool,
    /// Paths removed (a removed directory is one entry).
    pub removed: Vec<String>,
    /// Files removed, counting those inside removed directories.
    pub removed_files: u64,
    /// Their bytes.
    pub removed_bytes: u64,
}

/// Removed entries below one tree: relative paths, files, bytes (also
/// what `repair snapshots` drops).
#[derive(Debug, Clone, Default)]
pub(crate) struct Removed {
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

impl Removed {
    /// Adds what was removed below the entry `name`.
    pub(crate) fn extend_below(&mut self, name: &Path, below: Removed) {
        self.files += below.files;
        self.bytes += below.bytes;
        self.paths
            .extend(below.paths.into_iter().map(|p| name.join(p)));
    }

    /// The snapshot's summary without what was removed.
    pub(crate) fn subtract_from(&self, summary: &mut crate::snapshot::SnapshotSummary) {
        summary.total_files_processed = summary.total_files_processed.saturating_sub(self.files);
        summary.total_bytes_processed = summary.total_bytes_processed.saturating_sub(self.bytes);
    }
}

struct Rewriter<'a> {
    reader: TreeReader<'a>,
    excludes: &'a Excludes,
    sink: &'a TreeSink,
    /// Keyed by tree and where it sits: path patterns make the same tree
    /// rewrite differently elsewhere, but consecutive snapshots hold the
    /// same trees at the same paths, so each is rewritten once.
    memo: HashMap<(BlobId, PathBuf), (BlobId, Removed)>,
    /// Files and bytes below an excluded directory, by tree.
    counted: HashMap<BlobId, (u64, u64)>,
}

impl Rewriter<'_> {
    /// The tree at `at` without excluded entries: its (possibly new) id
    /// and what was removed, with paths relative to `at`.
    fn rewrite(&mut self, id: BlobId, at: &Path) -> Result<(BlobId, Removed)> {
        if let Some(done) = self.memo.get(&(id, at.to_path_buf())) {
            return Ok(done.clone());
        }
        // `at` starts at `/`: one component for the root itself.
        let depth = at.components().count().saturating_sub(1);
        crate::tree::within_depth(depth, &format_args!("tree {id}"))?;
        let tree = self.reader.read(&id)?;
        let mut out = Tree::default();
        let mut removed = Removed::default();
        for mut node in tree.nodes {
            let name = PathBuf::from(node.os_name());
            let path = at.join(&name);
            let is_dir = node.kind == NodeKind::Dir;
            if self.excludes.is_excluded(&path, is_dir) {
                let (files, bytes) = match (is_dir, node.subtree) {
                    (true, Some(sub)) => self.count(sub, depth + 1)?,
                    (true, None) => (0, 0),
                    (false, _) => (u64::from(node.kind == NodeKind::File), node.size),
                };
                removed.files += files;
                removed.bytes += bytes;
                removed.paths.push(name);
                continue;
            }
            if let (true, Some(sub)) = (is_dir, node.subtree) {
                let (new, below) = self.rewrite(sub, &path)?;
                node.subtree = Some(new);
                removed.extend_below(&name, below);
            }
            out.nodes.push(node);
        }
        let new = if removed.paths.is_empty() {
            id
        } else {
            self.save_tree(out)?
        };
        self.memo
            .insert((id, at.to_path_buf()), (new, removed.clone()));
        Ok((new, removed))
    }

    /// Files and their bytes in the tree `id`, at any depth.
    fn count(&mut self, id: BlobId, depth: usize) -> Result<(u64, u64)> {
        if let Some(&done) = self.counted.get(&id) {
            return Ok(done);
        }
        crate::tree::within_depth(depth, &format_args!("tree {id}"))?;
        let tree = self.reader.read(&id)?;
        let (mut files, mut bytes) = (0u64, 0u64);
        for node in &tree.nodes {
            match (node.kind, node.subtree) {
                (NodeKind::Dir, Some(sub)) => {
                    let (f, b) = self.count(sub, depth + 1)?;
                    files += f;
                    bytes += b;
                }
                (NodeKind::File, _) => {
                    files += 1;
                    bytes += node.size;
                }
                _ => {}
            }
        }
        self.counted.insert(id, (files, bytes));
        Ok((files, bytes))
    }

    fn save_tree(&self, tree: Tree) -> Result<BlobId> {
        self.sink.save(tree)
    }
}

/// Rewrites `snapshots` without the paths `excludes` matches (restic's
/// pattern rules, matched against paths inside the snapshot, which are the
/// absolute paths that were backed up). Trees are stored first, then each
/// new snapshot; with `forget` each original is deleted after its
/// replacement is stored. Snapshots with nothing to remove are left alone
/// and not reported.
pub fn rewrite(
    repo: &Arc<Repository>,
    index: &Arc<Index>,
    snapshots: &[(SnapshotId, Snapshot)],
    excludes: &Excludes,
    forget: bool,
    dry_run: bool,
    cancel: &AtomicBool,
) -> Result<Vec<Rewritten>> {
    let sink = TreeSink::new(repo, index, dry_run);
    let mut pending: Vec<(SnapshotId, Snapshot, Removed)> = Vec::new();
    {
        let mut rw = Rewriter {
            reader: TreeReader::new(repo, index),
            excludes,
            sink: &sink,
            memo: HashMap::new(),
            counted: HashMap::new(),
        };
        // Each tree is rewritten per path it sits at: trees listing each
        // other over and over would be expanded into every path. Measured
        // first, each distinct tree read once, such trees are damage, as
        // to restore.
        let mut extents = Extents::default();
        for (_, snap) in snapshots {
            rw.reader.measure(&snap.tree, &mut extents)?;
        }
        drop(extents);
        for (id, snap) in snapshots {
            if cancel.load(Ordering::SeqCst) {
                return Err(Error::Interrupted);
            }
            let (root, removed) = rw.rewrite(snap.tree, Path::new("/"))?;
            if removed.paths.is_empty() {
                continue;
            }
            let mut new = snap.clone();
            new.tree = root;
            new.original = Some(snap.original.unwrap_or(*id));
            removed.subtract_from(&mut new.summary);
            pending.push((*id, new, removed));
        }
    }
    // Every new tree is stored and indexed before a snapshot refers to it.
    sink.finish()?;
    // A run stopped between storing a replacement and deleting its original
    // left that replacement: running again reuses it rather than storing a
    // second copy.
    let existing = if dry_run || pending.is_empty() {
        Vec::new()
    } else {
        repo.snapshots()?
    };
    let mut out = Vec::new();
    for (id, new, removed) in pending {
        // Stopped: the snapshots not yet replaced stay as they are, and the
        // caller reports those that were.
        if cancel.load(Ordering::SeqCst) {
            break;
        }
        let replacement = if dry_run {
            None
        } else if forget {
            Some(repo.replace_snapshot_among(&id, &new, &existing)?)
        } else if let Some((twin, _)) = existing.iter().find(|(_, s)| *s == new) {
            Some(*twin)
        } else {
            Some(repo.save_snapshot(&new)?)
        };
        out.push(Rewritten {
            original: id.to_hex(),
            replacement: replacement.map(|r| r.to_hex()),
            forgotten: forget && !dry_run,
            removed: removed
                .paths
                .iter()
                .map(|p| Path::new("/").join(p).display().to_string())
                .collect(),
            removed_files: removed.files,
            removed_bytes: removed.bytes,
        });
    }
    Ok(out)
}
