//! Repairs after damage: rebuild the index from the packs themselves, and
//! rewrite snapshots without the files whose data is gone.
//!
//! Both are safe to interrupt. `index`: new index files (which supersede
//! every old one) are written before any old one is deleted. `snapshots`:
//! the rewritten snapshot is saved before the original is removed.

use crate::backup::TreeSink;
use crate::check::{stored_packs, unreadable_blobs};
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::index::{Index, IndexFile, IndexedPack};
use crate::pack;
use crate::repository::{FileKind, Repository};
use crate::tree::{NodeKind, Tree};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Packs per rebuilt index file.
const PACKS_PER_INDEX: usize = 4096;

/// Outcome of `repair index`.
#[derive(Debug, Default, Serialize)]
pub struct RepairIndexReport {
    /// Packs whose header was read.
    pub packs_indexed: u64,
    /// Blobs found in them.
    pub blobs: u64,
    /// Packs whose header could not be read (their blobs are lost).
    pub packs_unreadable: Vec<String>,
    /// Old index files removed.
    pub indexes_removed: u64,
    /// New index files written.
    pub indexes_written: u64,
}

/// Rebuilds the index from every pack's header.
pub fn repair_index(repo: &Repository) -> Result<RepairIndexReport> {
    let mut report = RepairIndexReport::default();
    let old = repo.index_ids()?;
    let mut packs: Vec<IndexedPack> = Vec::new();
    let mut stored: Vec<_> = stored_packs(repo)?.into_iter().collect();
    stored.sort();
    for (id, size) in stored {
        let path = FileKind::Pack.path(&id.to_hex());
        let tail_len = pack::tail_len(size);
        let tail = repo
            .backend()
            .get_range(&path, size - tail_len, tail_len)
            .map_err(|e| Error::backend(format!("pack {id}"), e))?;
        match pack::read_header(repo.key(), size, &tail) {
            Ok(blobs) => {
                report.packs_indexed += 1;
                report.blobs += blobs.len() as u64;
                packs.push(IndexedPack { id, size, blobs });
            }
            Err(e) => report.packs_unreadable.push(format!("pack {id}: {e}")),
        }
    }
    let chunks: Vec<Vec<IndexedPack>> = if packs.is_empty() {
        vec![Vec::new()]
    } else {
        packs
            .chunks(PACKS_PER_INDEX)
            .map(<[IndexedPack]>::to_vec)
            .collect()
    };
    // Only the last file supersedes the old ones: until it is written, the
    // old files stay live, so an interruption never hides a pack.
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        repo.save_index(&IndexFile {
            packs: chunk,
            supersedes: if i == last { old.clone() } else { Vec::new() },
            marked: Vec::new(),
        })?;
        report.indexes_written += 1;
    }
    for id in &old {
        let path = FileKind::Index.path(&id.to_hex());
        repo.backend()
            .delete(&path)
            .map_err(|e| Error::backend(path, e))?;
        report.indexes_removed += 1;
    }
    Ok(report)
}

/// One rewritten snapshot.
#[derive(Debug, Serialize)]
pub struct RepairedSnapshot {
    /// The damaged original.
    pub original: String,
    /// Its replacement (absent in a dry run).
    pub replacement: Option<String>,
    /// Paths removed because their data is lost.
    pub removed: Vec<String>,
}

/// Outcome of `repair snapshots`.
#[derive(Debug, Default, Serialize)]
pub struct RepairSnapshotsReport {
    /// Snapshots that needed changes.
    pub repaired: Vec<RepairedSnapshot>,
    /// Snapshots already intact.
    pub intact: u64,
    /// Snapshot objects that cannot be read at all (they fail to decrypt
    /// or decode): nothing to rewrite, only to remove.
    pub unreadable: Vec<UnreadableSnapshot>,
}

/// A snapshot object that cannot be read.
#[derive(Debug, Serialize)]
pub struct UnreadableSnapshot {
    /// Its id.
    pub id: String,
    /// Why it cannot be read.
    pub error: String,
    /// Whether it was deleted (`--forget`, not a dry run).
    pub removed: bool,
}

struct Rewriter<'a> {
    repo: &'a Repository,
    index: &'a Index,
    bad: &'a HashSet<BlobId>,
    sink: &'a TreeSink,
    memo: HashMap<BlobId, (BlobId, Vec<PathBuf>)>,
}

impl Rewriter<'_> {
    fn readable(&self, id: &BlobId) -> bool {
        self.index.contains(id) && !self.bad.contains(id)
    }

    /// Returns the (possibly new) tree id and the removed paths below `at`.
    fn rewrite(&mut self, id: BlobId, at: &Path) -> Result<(BlobId, Vec<PathBuf>)> {
        if let Some((new, removed)) = self.memo.get(&id) {
            return Ok((*new, removed.iter().map(|p| at.join(p)).collect()));
        }
        let tree = self.repo.read_tree(self.index, &id)?;
        let mut out = Tree::default();
        let mut removed_rel: Vec<PathBuf> = Vec::new();
        for mut node in tree.nodes {
            let name = node.os_name();
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        if self.readable(&sub) && self.repo.read_tree(self.index, &sub).is_ok() {
                            let (new, below) = self.rewrite(sub, Path::new(&name))?;
                            node.subtree = Some(new);
                            removed_rel.extend(below);
                        } else {
                            // The listing is lost: keep an empty directory.
                            node.subtree = Some(self.save_tree(Tree::default())?);
                            removed_rel.push(PathBuf::from(&name).join("*"));
                        }
                    }
                    out.nodes.push(node);
                }
                NodeKind::File if node.content.iter().flatten().any(|b| !self.readable(b)) => {
                    removed_rel.push(PathBuf::from(&name));
                }
                _ => out.nodes.push(node),
            }
        }
        let new = if removed_rel.is_empty() {
            id
        } else {
            self.save_tree(out)?
        };
        self.memo.insert(id, (new, removed_rel.clone()));
        Ok((new, removed_rel.iter().map(|p| at.join(p)).collect()))
    }

    fn save_tree(&self, tree: Tree) -> Result<BlobId> {
        self.sink.save(tree)
    }
}

/// Rewrites every snapshot that references lost data, dropping the damaged
/// files (and listing them). With `forget`, the originals are removed after
/// their replacements are saved. `verify` also reads every pack to find
/// blobs that exist but are damaged.
pub fn repair_snapshots(
    repo: &Arc<Repository>,
    verify: bool,
    forget: bool,
    dry_run: bool,
) -> Result<RepairSnapshotsReport> {
    let index = repo.load_index()?;
    // A pack no index lists (its index file lost or damaged) holds blobs
    // that would pass for lost: the snapshots using them would be cut
    // down, and with --forget the intact originals deleted. Leftovers of
    // an interrupted backup look the same; `repair index` adopts both.
    let indexed: HashSet<_> = index.packs().map(|(pack, _)| pack).collect();
    let unindexed = stored_packs(repo)?
        .into_keys()
        .filter(|pack| !indexed.contains(pack))
        .count();
    if unindexed > 0 {
        return Err(Error::InvalidInput(format!(
            "{unindexed} stored packs are in no index (an index file lost or damaged, or an interrupted backup): their data would be taken for lost; run `vault repair index` first, then this again"
        )));
    }
    let bad = unreadable_blobs(repo, &index, verify)?;
    let sink = TreeSink::new(repo, &index, dry_run);
    let mut report = RepairSnapshotsReport::default();
    let mut pending: Vec<(SnapshotId, crate::snapshot::Snapshot, Vec<PathBuf>)> = Vec::new();
    {
        let mut rw = Rewriter {
            repo,
            index: &index,
            bad: &bad,
            sink: &sink,
            memo: HashMap::new(),
        };
        let (snapshots, damaged) = repo.snapshots_and_damaged()?;
        // A snapshot object that cannot be read blocks prune (its blobs
        // cannot be known) and `forget ID` (it cannot be matched): with
        // --forget it goes here, as the damaged originals do.
        for (id, error) in damaged {
            let removed = forget && !dry_run;
            if removed {
                repo.delete_snapshot(&id)?;
            }
            report.unreadable.push(UnreadableSnapshot {
                id: id.to_hex(),
                error: error.to_string(),
                removed,
            });
        }
        for (id, snap) in snapshots {
            if !rw.readable(&snap.tree) {
                report.repaired.push(RepairedSnapshot {
                    original: id.to_hex(),
                    replacement: None,
                    removed: vec!["/ (root tree lost: snapshot cannot be repaired)".into()],
                });
                continue;
            }
            let (root, removed) = rw.rewrite(snap.tree, Path::new("/"))?;
            if removed.is_empty() {
                report.intact += 1;
            } else {
                let mut new = snap.clone();
                new.tree = root;
                new.original = Some(id);
                if !new.tags.iter().any(|t| t == "repaired") {
                    new.tags.push("repaired".into());
                    new.tags.sort();
                }
                pending.push((id, new, removed));
            }
        }
    }
    sink.finish()?;
    for (id, new, removed) in pending {
        let replacement = if dry_run {
            None
        } else {
            let new_id = repo.save_snapshot(&new)?;
            if forget {
                repo.delete_snapshot(&id)?;
            }
            Some(new_id.to_hex())
        };
        report.repaired.push(RepairedSnapshot {
            original: id.to_hex(),
            replacement,
            removed: removed.iter().map(|p| p.display().to_string()).collect(),
        });
    }
    Ok(report)
}
