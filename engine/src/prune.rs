//! Prune: reclaim space no snapshot uses, safely beside running backups.
//!
//! Plan, then execute. Deletion is two-phase (repo-format.md §11.3): a
//! prune only *marks* packs that no snapshot needs; a later prune deletes a
//! marked pack once it stayed unneeded for the safety margin. Backups do not
//! deduplicate against marked packs, and a backup that started before the
//! mark and did reference one of its blobs keeps the pack alive: the next
//! prune sees the reference and unmarks it.
//!
//! Execution order, chosen so that killing prune at any instant leaves a
//! repository whose every snapshot restores:
//! 1. repack: copy still-used blobs out of sparse packs into new packs, and
//!    index them (new packs and index files only);
//! 2. write the new index files (superseding every index file read at plan
//!    time), carrying marks and dropping deleted packs;
//! 3. delete the superseded index files;
//! 4. delete packs whose mark is older than the margin (or, with
//!    `instant_delete`, every pack no snapshot needs).
//!
//! In a repository with S3 Object Lock (§11.8), packs and index files
//! whose retention has not ended are neither deleted nor repacked: they
//! stay in the new index (marked, when unused) and are reported as
//! [`PrunePlan::locked`]; a prune after the retention ends removes them.

use crate::backup::{Saver, SaverStats};
use crate::check::stored_packs;
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId};
use crate::index::{BlobLocation, Index, IndexBuilder, IndexFile, IndexedPack};
use crate::object_lock;
use crate::pack::{self, PackedBlob};
use crate::repository::{FileKind, Repository};
use crate::tree_reader::TreeReader;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default safety margin between marking and deleting a pack. Backups must
/// finish within it (a backup longer than this could reference a blob whose
/// pack is deleted under it; the backup then detects it and fails rather
/// than save a broken snapshot).
pub const DEFAULT_MARGIN_SECS: i64 = 24 * 3600;

/// Index entries per written index file.
const PACKS_PER_INDEX: usize = 4096;

/// How much unused space to tolerate in packs that are partly used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnused {
    /// Repack until at most this percentage of stored bytes is unused.
    Percent(f64),
    /// Never repack partly used packs.
    Unlimited,
}

/// Knobs for prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Unused-space tolerance.
    pub max_unused: MaxUnused,
    /// Stop repacking after this many bytes of packs.
    pub max_repack_bytes: Option<u64>,
    /// Seconds a pack stays marked before deletion.
    pub margin_secs: i64,
    /// Delete unneeded packs at once (only when no backup can be running).
    pub instant_delete: bool,
    /// Current time (Unix seconds); injectable for tests.
    pub now: i64,
    /// Set to stop (Ctrl-C): checked between blobs of the repack and
    /// between the steps and deletions that follow, each a point where the
    /// repository is consistent.
    pub cancel: Arc<AtomicBool>,
    /// Snapshots planned as if already forgotten: `forget --dry-run
    /// --prune` shows what the prune after it would do. A plan made with
    /// any must not be executed while they exist.
    pub ignore_snapshots: HashSet<crate::id::SnapshotId>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            max_unused: MaxUnused::Percent(5.0),
            max_repack_bytes: None,
            margin_secs: DEFAULT_MARGIN_SECS,
            instant_delete: false,
            now: jiff::Timestamp::now().as_second(),
            cancel: Arc::new(AtomicBool::new(false)),
            ignore_snapshots: HashSet::new(),
        }
    }
}

/// What a prune will do.
#[derive(Debug, Default, Serialize)]
pub struct PrunePlan {
    /// Snapshots whose trees were walked.
    pub snapshots: u64,
    /// Blobs still used.
    pub used_blobs: u64,
    /// Stored bytes of all packs.
    pub total_bytes: u64,
    /// Stored bytes of blobs no snapshot uses.
    pub unused_bytes: u64,
    /// Packs to delete now (marked long enough, or instant delete).
    pub delete: Vec<PackId>,
    /// Bytes freed by those deletions.
    pub delete_bytes: u64,
    /// Packs newly marked for deletion.
    pub mark: Vec<PackId>,
    /// Marked packs that are needed again and get unmarked.
    pub unmark: Vec<PackId>,
    /// Marked packs waiting for the margin.
    pub waiting: Vec<PackId>,
    /// Partly used packs to rewrite.
    pub repack: Vec<PackId>,
    /// Stored bytes of packs to repack.
    pub repack_bytes: u64,
    /// Used bytes those repacked packs hold (copied).
    pub repack_used_bytes: u64,
    /// Packs in storage that no index lists (interrupted backups).
    pub unindexed: Vec<PackId>,
    /// Packs that would be deleted or repacked now but are still under
    /// S3 Object Lock retention: kept, and marked when unused.
    pub locked: Vec<PackId>,
    /// Stored bytes of those packs.
    pub locked_bytes: u64,
    /// When the last of their retentions ends.
    pub locked_until: Option<jiff::Timestamp>,
    /// Superseded index files kept because they are still locked.
    pub locked_index_files: u64,
    #[serde(skip)]
    locked_indexes: HashSet<IndexId>,
    #[serde(skip)]
    index_ids: Vec<IndexId>,
    #[serde(skip)]
    used: HashSet<BlobId>,
    /// Used blobs whose primary copy does not read, with the pack of the
    /// sound copy kept instead (see `plan`).
    #[serde(skip)]
    served_elsewhere: HashMap<BlobId, PackId>,
    #[serde(skip)]
    keep_marks: Vec<(PackId, i64)>,
}

/// Outcome of executing a plan.
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Bytes of the packs deleted.
    pub bytes_freed: u64,
    /// Bytes of the new packs repacking wrote (the net saving is
    /// `bytes_freed` minus this).
    pub bytes_written: u64,
    /// Packs rewritten.
    pub packs_repacked: u64,
    /// Packs marked for later deletion.
    pub packs_marked: u64,
    /// Index files written.
    pub indexes_written: u64,
    /// Temporary files of interrupted writes removed (local repositories).
    pub temporaries_removed: u64,
}

/// A temporary file untouched this long belongs to a write that died: the
/// slowest upload finishes a pack in far less.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What holds blobs in use: every snapshot and every archived WAL file.
///
/// Read before the index is loaded ([`References::read`], then
/// [`used_blobs`]): a backup or `wal push` stores its index files before
/// the snapshot or record naming them, so everything listed here finds its
/// blobs in an index loaded afterwards. Loading the index first made a
/// prune beside a finishing backup refuse, naming that backup's root tree
/// as in no index.
pub struct References {
    snapshots: Vec<(crate::id::SnapshotId, crate::snapshot::Snapshot)>,
    wal: Vec<BlobId>,
}

impl References {
    /// Lists and reads every snapshot and WAL record.
    ///
    /// Strict where listing is lenient: a snapshot that cannot be read
    /// makes prune refuse, since its data would otherwise look unused and
    /// be deleted.
    pub fn read(repo: &Repository) -> Result<Self> {
        let mut snapshots = Vec::new();
        for info in repo.list(FileKind::Snapshot)? {
            let name = info.path.rsplit('/').next().unwrap_or_default();
            let id: crate::id::SnapshotId = name.parse().map_err(|_| {
                Error::InvalidInput(format!("cannot prune: unexpected object {}", info.path))
            })?;
            let snap = repo.load_snapshot(&id).map_err(|e| match e {
                // Still a damaged repository (exit 5), with the way out.
                Error::Corrupt { object, reason } => Error::Corrupt {
                    object,
                    reason: format!(
                        "{reason}; cannot prune while a snapshot is unreadable (its data would look unused): \
                         `vault repair snapshots --forget` removes it"
                    ),
                },
                e => Error::InvalidInput(format!(
                    "cannot prune: {e}; run `vault check` and `vault repair snapshots` first"
                )),
            })?;
            snapshots.push((id, snap));
        }
        // Archived WAL is data too: its blobs stay as long as its records
        // do (retention trims records; prune then reclaims their blobs).
        let wal = crate::wal::all_records(repo)
            .map_err(|e| {
                Error::InvalidInput(format!("cannot prune: {e}; run `vault check` first"))
            })?
            .into_iter()
            .flat_map(|(_, record)| record.content)
            .collect();
        Ok(References { snapshots, wal })
    }
}

/// Blobs that `refs` use, through every tree below their snapshots.
///
/// A referenced blob that no index lists makes prune refuse: the blobs
/// below a tree it cannot read cannot be known.
pub fn used_blobs(
    repo: &Repository,
    index: &Index,
    refs: References,
) -> Result<(HashSet<BlobId>, u64)> {
    let References { snapshots, wal } = refs;
    let mut used: HashSet<BlobId> = HashSet::new();
    let mut stack: Vec<BlobId> = snapshots.iter().map(|(_, s)| s.tree).collect();
    let trees = TreeReader::new(repo, index);
    while let Some(tree_id) = stack.pop() {
        if !used.insert(tree_id) {
            continue;
        }
        // A tree that cannot be read means blobs below it cannot be known:
        // pruning would risk deleting data. Refuse.
        let tree = trees.read(&tree_id).map_err(|e| {
            Error::InvalidInput(format!(
                "cannot prune: {e}; run `vault check` and `vault repair` first"
            ))
        })?;
        // Whatever its kind claims, a node's subtree and content are used:
        // an older backup recorded a symlinked ancestor as a symlink with a
        // subtree, which restore walks as a directory (restore.rs).
        for node in tree.nodes {
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
            used.extend(node.content.into_iter().flatten());
        }
    }
    used.extend(wal);
    if let Some(missing) = used.iter().find(|id| !index.contains(id)) {
        return Err(Error::InvalidInput(format!(
            "cannot prune: blob {missing} is used by a snapshot but in no index; run `vault repair index` first, then `vault repair snapshots --forget` if its pack cannot be read"
        )));
    }
    Ok((used, snapshots.len() as u64))
}

impl PrunePlan {
    /// Computes what to delete, mark and repack. The caller holds the
    /// exclusive lock.
    pub fn new(repo: &Repository, options: &PruneOptions) -> Result<Self> {
        let mut refs = References::read(repo)?;
        refs.snapshots
            .retain(|(id, _)| !options.ignore_snapshots.contains(id));
        let index_ids = repo.index_ids()?;
        let index = repo.load_index()?;
        let stored = stored_packs(repo)?;
        let (used, snapshots) = used_blobs(repo, &index, refs)?;
        let now =
            jiff::Timestamp::from_second(options.now).unwrap_or_else(|_| jiff::Timestamp::now());
        let locked: HashMap<PackId, jiff::Timestamp> =
            object_lock::locked_objects(repo, FileKind::Pack, now)?;
        let locked_indexes: HashSet<IndexId> =
            object_lock::locked_objects::<IndexId>(repo, FileKind::Index, now)?
                .into_keys()
                .filter(|id| index_ids.contains(id))
                .collect();
        let mut plan = PrunePlan {
            snapshots,
            used_blobs: used.len() as u64,
            locked_index_files: locked_indexes.len() as u64,
            locked_indexes,
            index_ids,
            ..PrunePlan::default()
        };
        // Records a pack kept only because of its lock.
        let defer = |plan: &mut PrunePlan, pack: PackId, size: u64, until: jiff::Timestamp| {
            plan.locked.push(pack);
            plan.locked_bytes += size;
            plan.locked_until = plan.locked_until.max(Some(until));
        };

        // Per pack: which of its blobs are used; whether each used blob has
        // an unmarked copy elsewhere.
        let mut by_pack: HashMap<PackId, Vec<(BlobId, BlobLocation)>> = HashMap::new();
        for (id, loc) in index.blobs() {
            by_pack.entry(loc.pack).or_default().push((id, loc));
        }
        for (id, loc) in index.duplicates() {
            by_pack.entry(loc.pack).or_default().push((*id, *loc));
        }
        // A used blob stored twice is kept where readers take it (its
        // primary copy) only if that copy reads: readers fall back to the
        // other one when it does not, and dropping that one as "unused"
        // would lose a blob a restore still reads. Such blobs are few (two
        // backups storing the same chunk at once), so each primary is read.
        let mut served_elsewhere: HashMap<BlobId, PackId> = HashMap::new();
        let mut checked: HashSet<BlobId> = HashSet::new();
        for (id, _) in index.duplicates() {
            if !used.contains(id) || !checked.insert(*id) {
                continue;
            }
            let locations = index.locations(id);
            let readable =
                |l: &BlobLocation| stored.contains_key(&l.pack) && repo.read_blob_at(id, l).is_ok();
            if locations.first().is_some_and(|primary| !readable(primary))
                && let Some(sound) = locations.iter().skip(1).find(|l| readable(l))
            {
                served_elsewhere.insert(*id, sound.pack);
            }
        }
        let mut served_unmarked: HashSet<BlobId> = by_pack
            .iter()
            .filter(|(p, _)| index.marked_at(p).is_none() && stored.contains_key(*p))
            .flat_map(|(_, blobs)| blobs.iter().map(|(id, _)| *id))
            .collect();
        for (id, pack) in &served_elsewhere {
            if index.marked_at(pack).is_some() {
                served_unmarked.remove(id);
            }
        }

        let mut candidates: Vec<(PackId, u64, u64)> = Vec::new(); // pack, size, used bytes
        for (pack, size) in index.packs() {
            let blobs = by_pack.get(&pack).map(Vec::as_slice).unwrap_or_default();
            let marked = index.marked_at(&pack);
            if !stored.contains_key(&pack) {
                continue; // already gone; the new index drops it
            }
            plan.total_bytes += size;
            // A used blob counts where readers take it from (its primary
            // location, unmarked first); its other copies (concurrent
            // backups storing the same chunk) are unused space, repacked
            // away like any. Unless the primary's pack is gone.
            let serves_here = |id: &BlobId| match served_elsewhere.get(id) {
                Some(sound) => *sound == pack,
                None => index
                    .get(id)
                    .is_none_or(|p| p.pack == pack || !stored.contains_key(&p.pack)),
            };
            // A blob takes its sealed bytes and its header entry; the rest
            // of the pack (the header's count and envelope, the trailer) is
            // used while any blob is. Counting headers as unused made packs
            // of small blobs (~40 bytes of header each) look sparse: each
            // prune repacked them into packs just as "sparse", again and
            // again, the repository growing within the delete margin.
            let stored_len = |l: &BlobLocation| u64::from(l.length) + pack::HEADER_ENTRY_LEN;
            let fixed = size.saturating_sub(blobs.iter().map(|(_, l)| stored_len(l)).sum());
            let used_blobs: u64 = blobs
                .iter()
                .filter(|(id, _)| used.contains(id) && serves_here(id))
                .map(|(_, l)| stored_len(l))
                .sum();
            let used_here = if used_blobs == 0 {
                0
            } else {
                (used_blobs + fixed).min(size)
            };
            plan.unused_bytes += size.saturating_sub(used_here);
            if let Some(at) = marked {
                // Needed if it holds a used blob with no unmarked copy.
                let needed = blobs
                    .iter()
                    .any(|(id, _)| used.contains(id) && !served_unmarked.contains(id));
                if needed {
                    plan.unmark.push(pack);
                } else if options.instant_delete || options.now - at >= options.margin_secs {
                    if let Some(until) = locked.get(&pack) {
                        defer(&mut plan, pack, size, *until);
                        plan.keep_marks.push((pack, at));
                    } else {
                        plan.delete.push(pack);
                        plan.delete_bytes += size;
                    }
                } else {
                    plan.waiting.push(pack);
                    plan.keep_marks.push((pack, at));
                }
                continue;
            }
            if used_here == 0 {
                if let Some(until) = locked.get(&pack).filter(|_| options.instant_delete) {
                    // Marked instead, like without instant delete; deleted
                    // by a prune after the retention ends.
                    defer(&mut plan, pack, size, *until);
                    plan.mark.push(pack);
                } else if options.instant_delete {
                    plan.delete.push(pack);
                    plan.delete_bytes += size;
                } else {
                    plan.mark.push(pack);
                }
            } else if used_here < size {
                candidates.push((pack, size, used_here));
            }
        }

        // Repack the sparsest packs until unused space is within bounds.
        if let MaxUnused::Percent(max) = options.max_unused {
            candidates.sort_by(|a, b| {
                let ra = (a.1 - a.2) as f64 / a.1 as f64;
                let rb = (b.1 - b.2) as f64 / b.1 as f64;
                rb.total_cmp(&ra)
            });
            // Only the unused space of partly used packs is what repacking
            // can free. Packs deleted, marked now, or marked before and
            // waiting out the margin go without it: counting theirs too
            // repacked nearly full packs on every run, each run's copies
            // adding to what the next counted.
            let size_of = |p: &PackId| stored.get(p).copied().unwrap_or(0);
            let going: u64 = plan.delete_bytes
                + plan
                    .mark
                    .iter()
                    .chain(&plan.waiting)
                    .map(size_of)
                    .sum::<u64>();
            let mut unused_left: u64 = candidates.iter().map(|(_, size, used)| size - used).sum();
            let allowed = (plan.total_bytes.saturating_sub(going) as f64 * max / 100.0) as u64;
            for (pack, size, used_here) in candidates {
                if unused_left <= allowed {
                    break;
                }
                // Copying blobs out of a locked pack frees nothing before
                // its retention ends; it only stores them twice.
                if let Some(until) = locked.get(&pack) {
                    defer(&mut plan, pack, size, *until);
                    continue;
                }
                if options
                    .max_repack_bytes
                    .is_some_and(|cap| plan.repack_bytes + size > cap)
                {
                    break;
                }
                plan.repack.push(pack);
                plan.repack_bytes += size;
                plan.repack_used_bytes += used_here;
                unused_left = unused_left.saturating_sub(size - used_here);
            }
        }

        // Packs no index lists: uploads of an interrupted (or running!)
        // backup. Marked like unused packs, never deleted at first sight.
        let indexed: HashSet<PackId> = index.packs().map(|(p, _)| p).collect();
        for (pack, size) in &stored {
            if indexed.contains(pack) {
                continue;
            }
            plan.unindexed.push(*pack);
            let due = match index.marked_at(pack) {
                Some(at) => options.instant_delete || options.now - at >= options.margin_secs,
                None => options.instant_delete,
            };
            if let Some(until) = locked.get(pack).filter(|_| due) {
                defer(&mut plan, *pack, *size, *until);
                match index.marked_at(pack) {
                    Some(at) => plan.keep_marks.push((*pack, at)),
                    None => plan.mark.push(*pack),
                }
                continue;
            }
            match index.marked_at(pack) {
                Some(at) if options.instant_delete || options.now - at >= options.margin_secs => {
                    plan.delete.push(*pack);
                    plan.delete_bytes += size;
                }
                Some(at) => plan.keep_marks.push((*pack, at)),
                None if options.instant_delete => {
                    plan.delete.push(*pack);
                    plan.delete_bytes += size;
                }
                None => plan.mark.push(*pack),
            }
        }
        plan.used = used;
        plan.served_elsewhere = served_elsewhere;
        Ok(plan)
    }

    /// Whether executing would change anything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty()
            && self.mark.is_empty()
            && self.unmark.is_empty()
            && self.repack.is_empty()
    }

    /// Applies the plan in the crash-safe order described in the module
    /// docs. `lock` is the exclusive lock the caller holds; if it is lost
    /// (taken over as stale), nothing more is deleted.
    pub fn execute(
        self,
        repo: &Arc<Repository>,
        options: &PruneOptions,
        lock: Option<&crate::lock::Lock>,
    ) -> Result<PruneReport> {
        if !options.ignore_snapshots.is_empty() {
            return Err(Error::InvalidInput(
                "a prune plan made with snapshots ignored only shows what a prune after forgetting them would do".into(),
            ));
        }
        let still_locked = || -> Result<()> {
            if options.cancel.load(Ordering::SeqCst) {
                return Err(Error::Interrupted);
            }
            match lock {
                Some(l) if l.is_lost() => Err(Error::Locked {
                    holder: "our lock was lost (taken over as stale); stopping before deleting anything more".into(),
                }),
                _ => Ok(()),
            }
        };
        // Whatever else there is to do: these are never listed, so no plan
        // names them.
        let mut report = PruneReport {
            temporaries_removed: repo
                .backend()
                .remove_stale_temporaries(STALE_TEMPORARY)
                .map_err(|e| Error::backend("temporary files", e))?,
            ..PruneReport::default()
        };
        if self.is_empty() {
            return Ok(report);
        }
        let index = repo.load_index()?;
        let repack: HashSet<PackId> = self.repack.iter().copied().collect();
        let delete: HashSet<PackId> = self.delete.iter().copied().collect();

        // 1. Repack used blobs out of sparse packs. Blobs are re-saved by id,
        // so a blob already elsewhere (unmarked) is not copied twice.
        if !repack.is_empty() {
            let mut seed = IndexBuilder::new();
            for (id, loc) in index.blobs() {
                // A blob whose primary copy does not read is stored again
                // when its sound copy's pack is repacked.
                if !repack.contains(&loc.pack)
                    && index.marked_at(&loc.pack).is_none()
                    && !self.served_elsewhere.contains_key(&id)
                {
                    seed.add_pack(
                        loc.pack,
                        0,
                        &[PackedBlob {
                            kind: loc.kind,
                            id,
                            offset: loc.offset,
                            length: loc.length,
                            raw_len: loc.raw_len,
                        }],
                    );
                }
            }
            let seed = seed.finish();
            let stats = Arc::new(SaverStats::default());
            let saver = Saver::start(
                repo.clone(),
                Arc::new(seed),
                Compression::default(),
                2,
                stats.clone(),
            );
            let _watch = crate::cancel::Watch::on_cancel(options.cancel.clone(), {
                let interrupter = saver.interrupter();
                move || interrupter.interrupt()
            });
            let mut copied = Ok(());
            for (id, loc) in index.blobs() {
                let served = self.served_elsewhere.get(&id).unwrap_or(&loc.pack);
                if (repack.contains(&loc.pack) || repack.contains(served))
                    && self.used.contains(&id)
                {
                    // Stopped here, the copies made are stored and indexed
                    // (finish, below): duplicates a later prune reclaims.
                    if options.cancel.load(Ordering::SeqCst) {
                        copied = Err(Error::Interrupted);
                        break;
                    }
                    if let Err(e) = repo
                        .read_blob(&index, &id)
                        .and_then(|data| saver.save_with_id(loc.kind, id, data))
                    {
                        copied = Err(e);
                        break;
                    }
                }
            }
            // finish first: it indexes what was uploaded, and its error
            // says why the pipeline stopped (a full disk: exit 7) where a
            // failed save only says that it did.
            saver.finish()?;
            copied?;
            still_locked()?;
            report.packs_repacked = repack.len() as u64;
            report.bytes_written = stats.bytes_stored.load(Ordering::Relaxed);
        }

        // 2. New index: every live pack except deleted ones; marks for packs
        // newly marked, repacked, or still waiting.
        let mut files: Vec<IndexFile> = Vec::new();
        let mut current = IndexFile::default();
        let mut by_pack: HashMap<PackId, (u64, Vec<PackedBlob>)> = HashMap::new();
        for (pack, size) in index.packs() {
            by_pack.insert(pack, (size, Vec::new()));
        }
        let all_locations = index.blobs().chain(index.duplicates().iter().copied());
        for (id, loc) in all_locations {
            if let Some((_, blobs)) = by_pack.get_mut(&loc.pack) {
                blobs.push(PackedBlob {
                    kind: loc.kind,
                    id,
                    offset: loc.offset,
                    length: loc.length,
                    raw_len: loc.raw_len,
                });
            }
        }
        let mut packs: Vec<(PackId, (u64, Vec<PackedBlob>))> = by_pack.into_iter().collect();
        packs.sort_by_key(|(p, _)| *p);
        let stored = stored_packs(repo)?;
        let dropped =
            |p: &PackId| delete.contains(p) || (options.instant_delete && repack.contains(p));
        for (pack, (size, blobs)) in packs {
            if dropped(&pack) {
                continue;
            }
            // A listing may lag behind writes: only drop a pack from the
            // index when a direct lookup confirms it is gone.
            if !stored.contains_key(&pack)
                && repo
                    .backend()
                    .head(&FileKind::Pack.path(&pack.to_hex()))
                    .is_err_and(|e| e.is_not_found())
            {
                continue;
            }
            current.packs.push(IndexedPack {
                id: pack,
                size,
                blobs,
            });
            if current.packs.len() >= PACKS_PER_INDEX {
                files.push(std::mem::take(&mut current));
            }
        }
        // Marks carry the time they become visible, not the start of this
        // prune, so the margin is never shortened by a long repack.
        let marked_at = jiff::Timestamp::now().as_second().max(options.now);
        let mut marks: Vec<(PackId, i64)> = self.keep_marks.clone();
        marks.extend(self.mark.iter().map(|p| (*p, marked_at)));
        marks.extend(
            self.repack
                .iter()
                .filter(|p| !delete.contains(p))
                .map(|p| (*p, marked_at)),
        );
        if options.instant_delete {
            // Repacked packs are deleted right away too.
            marks.retain(|(p, _)| !repack.contains(p));
        }
        // Newly marked: repacked packs only when they wait for a later
        // prune (with --instant-delete they go below, as deleted).
        report.packs_marked = (self.mark.len()
            + if options.instant_delete {
                0
            } else {
                self.repack.len()
            }) as u64;
        current.marked = marks;
        files.push(current);
        // Only the last file supersedes the old ones (it is written last), so
        // an interruption before it leaves the old files live.
        if let Some(last) = files.last_mut() {
            last.supersedes.clone_from(&self.index_ids);
        }
        for f in &files {
            repo.save_index(f)?;
            report.indexes_written += 1;
        }

        // 3. Old index files go only after the new ones are durable.
        still_locked()?;
        // Superseded files still under Object Lock stay: readers skip them,
        // and the next prune after their retention deletes them.
        for id in self
            .index_ids
            .iter()
            .filter(|id| !self.locked_indexes.contains(id))
        {
            let path = FileKind::Index.path(&id.to_hex());
            repo.backend()
                .delete(&path)
                .map_err(|e| Error::backend(path, e))?;
        }

        // 4. Packs.
        let mut to_delete: Vec<PackId> = self.delete.clone();
        if options.instant_delete {
            to_delete.extend(self.repack.iter().copied());
        }
        for pack in to_delete {
            still_locked()?;
            let path = FileKind::Pack.path(&pack.to_hex());
            let size = stored.get(&pack).copied().unwrap_or(0);
            repo.backend()
                .delete(&path)
                .map_err(|e| Error::backend(format!("pack {pack}"), e))?;
            report.packs_deleted += 1;
            report.bytes_freed += size;
        }
        Ok(report)
    }
}
