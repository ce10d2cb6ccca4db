//! Repairs after damage: rebuild the index from the packs themselves, and
//! rewrite snapshots without the files whose data is gone.
//!
//! Both are safe to interrupt. `index`: new index files (which supersede
//! every old one) are written before any old one is deleted. `snapshots`:
//! the rewritten snapshot is saved before the original is removed.

use crate::backup::{Saver, SaverStats, TreeSink};
use crate::check::{read_pack_header, stored_packs, unreadable_blobs};
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, SnapshotId};
use crate::index::{Index, IndexFile, IndexedPack};
use crate::pack::{self, PackedBlob};
use crate::repository::{FileKind, Repository};
use crate::rewrite::Removed;
use crate::tree::{NodeKind, Tree};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// With `read_data`: packs holding damaged blobs, whose sound blobs
    /// were stored again and which were then deleted.
    pub packs_salvaged: Vec<String>,
    /// With `read_data`: blobs left out because their stored bytes fail
    /// authentication or do not hash to their id, as `pack ID: blob ID`.
    pub blobs_damaged: Vec<String>,
    /// With `read_data`: packs whose content does not hash to their name
    /// (another pack's bytes copied over it, or a pack renamed): left out
    /// of the index, their sound blobs that no other pack holds stored
    /// again, then deleted (they are also in `packs_salvaged`).
    pub packs_misnamed: Vec<String>,
    /// Old index files removed.
    pub indexes_removed: u64,
    /// New index files written.
    pub indexes_written: u64,
}

/// Rebuilds the index from every pack's header.
///
/// With `read_data`, every pack is read whole and each blob opened
/// (authenticated and hashed). A pack holding a damaged blob is salvaged,
/// as restic's `repair packs` does: its sound blobs are stored again in new
/// packs and it is deleted once the new index no longer lists it. The
/// damaged blob is then in no index, so `repair snapshots` drops the files
/// using it and the next backup stores their content anew; left indexed, it
/// would be deduplicated against forever.
///
/// `cancel` (Ctrl-C) is looked at before each pack: set, the run stops with
/// [`Error::Interrupted`] before any index is written (blobs already stored
/// again are flushed first), leaving the old index in force.
pub fn repair_index(
    repo: &Arc<Repository>,
    read_data: bool,
    cancel: &AtomicBool,
) -> Result<RepairIndexReport> {
    let mut report = RepairIndexReport::default();
    let old = repo.index_ids()?;
    let mut packs: Vec<IndexedPack> = Vec::new();
    let mut stored: Vec<_> = stored_packs(repo)?.into_iter().collect();
    stored.sort();
    // Started at the first damaged pack; its own index files are not among
    // `old`, so the rebuilt index below does not supersede them.
    let mut saver: Option<Saver> = None;
    let mut salvaged: Vec<PackId> = Vec::new();
    let mut failed_save: Option<Error> = None;
    let mut stopped = false;
    // With `read_data`: packs whose content does not hash to their name.
    let mut misnamed: Vec<PackId> = Vec::new();
    'packs: for (id, size) in stored {
        if cancel.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        let path = FileKind::Pack.path(&id.to_hex());
        let failed = |e| Error::backend(format!("pack {id}"), e);
        // Whole, to check every blob; else only the header at its end.
        let (bytes, start) = if read_data {
            (
                repo.backend()
                    .get(&path, FileKind::Pack.max_len())
                    .map_err(failed)?,
                0,
            )
        } else {
            let tail_len = pack::tail_len(size);
            let start = size - tail_len;
            (
                repo.backend()
                    .get_range(&path, start, tail_len)
                    .map_err(failed)?,
                start,
            )
        };
        let tail_start = (size - pack::tail_len(size)).saturating_sub(start);
        let header = match bytes.get(usize::try_from(tail_start).unwrap_or(usize::MAX)..) {
            Some(tail) => pack::read_header(repo.key(), size, tail).map_err(|e| e.to_string()),
            None => Err("shorter than its listed size".to_owned()),
        };
        let blobs = match header {
            Ok(blobs) => blobs,
            Err(e) => {
                report.packs_unreadable.push(format!("pack {id}: {e}"));
                continue;
            }
        };
        if !read_data {
            report.packs_indexed += 1;
            report.blobs += blobs.len() as u64;
            packs.push(IndexedPack { id, size, blobs });
            continue;
        }
        let opened = open_blobs(repo, &bytes, blobs);
        if opened.iter().all(|(_, plain)| plain.is_some()) {
            // Sound blobs under another pack's name (its bytes copied over
            // this one, or a pack renamed): indexed here, it failed every
            // `check --verify` (pack_hash) and no repair mended that. Its
            // blobs are stored again below unless a pack of its own name
            // holds them, which only the whole loop tells; then it is
            // deleted. (A damaged blob also changes the hash: salvaged
            // below as any damaged pack.)
            if PackId::of_bytes(&bytes) != id {
                misnamed.push(id);
                continue;
            }
            report.packs_indexed += 1;
            report.blobs += opened.len() as u64;
            let blobs = opened.into_iter().map(|(b, _)| b).collect();
            packs.push(IndexedPack { id, size, blobs });
            continue;
        }
        let saver = saver.get_or_insert_with(|| start_saver(repo));
        if let Err(e) = salvage(saver, id, opened, &HashSet::new(), &mut report) {
            failed_save = Some(e);
            break 'packs;
        }
        salvaged.push(id);
    }
    if !misnamed.is_empty() && failed_save.is_none() && !stopped {
        let held: HashSet<BlobId> = packs
            .iter()
            .flat_map(|p| p.blobs.iter().map(|b| b.id))
            .collect();
        for id in misnamed {
            let path = FileKind::Pack.path(&id.to_hex());
            let bytes = repo
                .backend()
                .get(&path, FileKind::Pack.max_len())
                .map_err(|e| Error::backend(format!("pack {id}"), e))?;
            let size = bytes.len() as u64;
            let tail = &bytes[(size - pack::tail_len(size)) as usize..];
            let blobs = match pack::read_header(repo.key(), size, tail) {
                Ok(blobs) => blobs,
                Err(e) => {
                    report.packs_unreadable.push(format!("pack {id}: {e}"));
                    continue;
                }
            };
            let opened = open_blobs(repo, &bytes, blobs);
            let saver = saver.get_or_insert_with(|| start_saver(repo));
            if let Err(e) = salvage(saver, id, opened, &held, &mut report) {
                failed_save = Some(e);
                break;
            }
            report.packs_misnamed.push(id.to_hex());
            salvaged.push(id);
        }
    }
    // finish first: it says why the pipeline stopped (a full disk) where a
    // failed save only says that it did.
    if let Some(saver) = saver.take() {
        saver.finish()?;
    }
    if let Some(e) = failed_save {
        return Err(e);
    }
    if stopped {
        return Err(Error::Interrupted);
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
    // No index lists them now; their sound blobs live on in new packs.
    for id in &salvaged {
        let path = FileKind::Pack.path(&id.to_hex());
        repo.backend()
            .delete(&path)
            .map_err(|e| Error::backend(path, e))?;
        report.packs_salvaged.push(id.to_hex());
    }
    Ok(report)
}

/// A saver for blobs stored again, deduplicating only among themselves.
fn start_saver(repo: &Arc<Repository>) -> Saver {
    Saver::start(
        repo.clone(),
        Arc::new(crate::index::IndexBuilder::new().finish()),
        Compression::default(),
        2,
        Arc::new(SaverStats::default()),
    )
}

/// Opens (authenticates and hashes) each blob of a whole pack: its
/// plaintext, or `None` if damaged.
fn open_blobs(
    repo: &Repository,
    bytes: &[u8],
    blobs: Vec<PackedBlob>,
) -> Vec<(PackedBlob, Option<Vec<u8>>)> {
    blobs
        .into_iter()
        .map(|b| {
            let plain = usize::try_from(b.offset)
                .ok()
                .and_then(|at| bytes.get(at..at.checked_add(b.length as usize)?))
                .and_then(|stored| {
                    crate::blob::open(repo.key(), b.kind, &b.id, b.raw_len, stored).ok()
                });
            (b, plain)
        })
        .collect()
}

/// Stores the sound blobs of pack `id` again, except those in `held`
/// (indexed in another pack); the damaged ones are reported.
fn salvage(
    saver: &Saver,
    id: PackId,
    opened: Vec<(PackedBlob, Option<Vec<u8>>)>,
    held: &HashSet<BlobId>,
    report: &mut RepairIndexReport,
) -> Result<()> {
    for (b, plain) in opened {
        match plain {
            Some(_) if held.contains(&b.id) => {}
            Some(plain) => {
                saver.save_with_id(b.kind, b.id, plain)?;
                report.blobs += 1;
            }
            None => report
                .blobs_damaged
                .push(format!("pack {id}: blob {}", b.id)),
        }
    }
    Ok(())
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
    /// Packs no index lists whose header cannot be read (truncated or
    /// damaged), as `pack ID: why`: `repair index` cannot adopt them, so
    /// their blobs count as lost; `prune` removes them.
    pub packs_ignored: Vec<String>,
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
    memo: HashMap<BlobId, (BlobId, Removed)>,
}

impl Rewriter<'_> {
    fn readable(&self, id: &BlobId) -> bool {
        self.index.contains(id) && !self.bad.contains(id)
    }

    /// Returns the (possibly new) tree id and what was removed below it,
    /// with paths relative to it. A directory whose listing is lost counts
    /// no files: what it held is unknown, so the snapshot's summary keeps
    /// counting them.
    fn rewrite(&mut self, id: BlobId) -> Result<(BlobId, Removed)> {
        if let Some(done) = self.memo.get(&id) {
            return Ok(done.clone());
        }
        let tree = self.repo.read_tree(self.index, &id)?;
        let mut out = Tree::default();
        let mut removed = Removed::default();
        for mut node in tree.nodes {
            let name = PathBuf::from(node.os_name());
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        if self.readable(&sub) && self.repo.read_tree(self.index, &sub).is_ok() {
                            let (new, below) = self.rewrite(sub)?;
                            node.subtree = Some(new);
                            removed.extend_below(&name, below);
                        } else {
                            // The listing is lost: keep an empty directory.
                            node.subtree = Some(self.save_tree(Tree::default())?);
                            removed.paths.push(name.join("*"));
                        }
                    }
                    out.nodes.push(node);
                }
                NodeKind::File if node.content.iter().flatten().any(|b| !self.readable(b)) => {
                    removed.files += 1;
                    removed.bytes += node.size;
                    removed.paths.push(name);
                }
                _ => out.nodes.push(node),
            }
        }
        let new = if removed.paths.is_empty() {
            id
        } else {
            self.save_tree(out)?
        };
        self.memo.insert(id, (new, removed.clone()));
        Ok((new, removed))
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
    let index = Arc::new(repo.load_index()?);
    // A pack no index lists (its index file lost or damaged) holds blobs
    // that would pass for lost: the snapshots using them would be cut
    // down, and with --forget the intact originals deleted. Leftovers of
    // an interrupted backup look the same; `repair index` adopts both.
    // Not a pack whose header cannot be read (truncated, damaged): `repair
    // index` cannot adopt it either, so refusing for it sent the user from
    // one command to the other forever. Its blobs are lost; it is named
    // and left for prune. A pack of a backup still running is never such
    // a pack: both backends make a pack visible only whole (a local file
    // is linked into place once written, an S3 object appears complete),
    // so its header reads and this still refuses.
    let indexed: HashSet<_> = index.packs().map(|(pack, _)| pack).collect();
    let mut unindexed: Vec<_> = stored_packs(repo)?
        .into_iter()
        .filter(|(pack, _)| !indexed.contains(pack))
        .collect();
    unindexed.sort();
    let mut adoptable = 0;
    let mut report = RepairSnapshotsReport::default();
    for (pack, size) in unindexed {
        match read_pack_header(repo, &pack, size)? {
            Some(Ok(_)) => adoptable += 1,
            Some(Err(e)) => report.packs_ignored.push(format!("pack {pack}: {e}")),
            None => {} // deleted meanwhile
        }
    }
    if adoptable > 0 {
        return Err(Error::InvalidInput(format!(
            "{adoptable} stored packs are in no index (an index file lost or damaged, or an interrupted backup): their data would be taken for lost; run `vault repair index` first, then this again"
        )));
    }
    let bad = unreadable_blobs(repo, &index, verify)?;
    let sink = TreeSink::new(repo, &index, dry_run);
    let mut pending: Vec<(SnapshotId, crate::snapshot::Snapshot, Removed)> = Vec::new();
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
            // Nothing of it can be restored or rewritten: like a snapshot
            // that cannot be read, --forget removes it (it blocks prune and
            // fails every check). It was reported as repaired and kept.
            if !rw.readable(&snap.tree) {
                let removed = forget && !dry_run;
                if removed {
                    repo.delete_snapshot(&id)?;
                }
                report.unreadable.push(UnreadableSnapshot {
                    id: id.to_hex(),
                    error: format!("its root tree {} is lost", snap.tree.short()),
                    removed,
                });
                continue;
            }
            let (root, removed) = rw.rewrite(snap.tree)?;
            if removed.paths.is_empty() {
                report.intact += 1;
            } else {
                let mut new = snap.clone();
                new.tree = root;
                new.original = Some(id);
                removed.subtract_from(&mut new.summary);
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
            removed: (removed.paths.iter())
                .map(|p| Path::new("/").join(p).display().to_string())
                .collect(),
        });
    }
    Ok(report)
}

/// Outcome of [`recover`].
#[derive(Debug, Default, Serialize)]
pub struct RecoverReport {
    /// Tree blobs the index lists.
    pub trees: u64,
    /// Trees that no snapshot and no other tree references, by id: the
    /// roots of snapshots whose snapshot object is gone (deleted, damaged,
    /// or forgotten and not yet pruned), or directories whose parent
    /// listing is lost. Each is a directory of the new snapshot.
    pub roots: Vec<String>,
    /// Trees that could not be read, as `tree ID: why`: what they list
    /// cannot be known, so their subtrees show up among the roots.
    pub unreadable: Vec<String>,
    /// The snapshot saved with the roots (absent in a dry run, or when
    /// there is nothing to recover).
    pub snapshot: Option<String>,
}

/// The directory [`recover`]'s snapshot holds its roots in.
pub const RECOVER_PATH: &str = "/recover";

/// Finds every tree no snapshot reaches and saves one snapshot holding
/// them, each as the directory `/recover/<tree id>`, tagged `recovered`
/// (restic's `recover`): what a lost or damaged snapshot object held can
/// then be browsed, restored, or kept with `tag`, and prune no longer
/// deletes it.
pub fn recover(
    repo: &Arc<Repository>,
    hostname: &str,
    username: &str,
    dry_run: bool,
) -> Result<RecoverReport> {
    use rayon::prelude::*;
    let index = Arc::new(repo.load_index()?);
    let mut trees: Vec<BlobId> = index
        .blobs()
        .filter(|(_, at)| at.kind == crate::blob::BlobKind::Tree)
        .map(|(id, _)| id)
        .collect();
    trees.sort_unstable();
    trees.dedup();
    // Every tree is read once; what it lists as subtrees is no root.
    let listed: Vec<std::result::Result<Vec<BlobId>, String>> = trees
        .par_iter()
        .map(|id| match repo.read_tree(&index, id) {
            Ok(tree) => Ok(tree.nodes.iter().filter_map(|n| n.subtree).collect()),
            Err(e) => Err(format!("tree {id}: {e}")),
        })
        .collect();
    let mut report = RecoverReport {
        trees: trees.len() as u64,
        ..RecoverReport::default()
    };
    let mut referenced = HashSet::new();
    for subtrees in listed {
        match subtrees {
            Ok(subtrees) => referenced.extend(subtrees),
            Err(e) => report.unreadable.push(e),
        }
    }
    let (snapshots, _damaged) = repo.snapshots_and_damaged()?;
    referenced.extend(snapshots.iter().map(|(_, snap)| snap.tree));
    let roots: Vec<BlobId> = trees
        .into_iter()
        .filter(|id| !referenced.contains(id))
        .collect();
    report.roots = roots.iter().map(BlobId::to_hex).collect();
    if roots.is_empty() {
        return Ok(report);
    }
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let dir = |name: &str, subtree: BlobId| {
        let mut node = crate::tree::Node::new(name, NodeKind::Dir);
        node.mode = 0o700;
        node.uid = uid;
        node.gid = gid;
        node.subtree = Some(subtree);
        node
    };
    let sink = TreeSink::new(repo, &index, dry_run);
    let holder = sink.save(Tree {
        nodes: roots.iter().map(|id| dir(&id.to_hex(), *id)).collect(),
    })?;
    let name = RECOVER_PATH.trim_start_matches('/');
    let root = sink.save(Tree {
        nodes: vec![dir(name, holder)],
    })?;
    sink.finish()?;
    if dry_run {
        return Ok(report);
    }
    let snapshot = crate::snapshot::Snapshot {
        version: 1,
        time: jiff::Zoned::now(),
        tree: root,
        paths: vec![RECOVER_PATH.to_owned()],
        hostname: hostname.to_owned(),
        username: username.to_owned(),
        uid,
        gid,
        tags: vec!["recovered".to_owned()],
        parent: None,
        original: None,
        program_version: format!("vault {}", env!("CARGO_PKG_VERSION")),
        // Trees found lying about: whoever wrote them.
        inode_flags: false,
        summary: crate::snapshot::SnapshotSummary {
            dirs_total: roots.len() as u64 + 1,
            ..crate::snapshot::SnapshotSummary::default()
        },
        extra: serde_json::Map::new(),
    };
    report.snapshot = Some(repo.save_snapshot(&snapshot)?.to_hex());
    Ok(report)
}
