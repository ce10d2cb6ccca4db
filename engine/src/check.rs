//! Checking a repository: structure (every snapshot's trees and blobs are
//! indexed and their packs exist with the indexed sizes) and, optionally,
//! data (every pack downloaded, its name re-hashed, its header compared to
//! the index, and every blob authenticated, decompressed and re-hashed).
//!
//! Findings name the damaged object and, for damaged or missing blobs, the
//! snapshots and file paths they hurt, so a user knows what is lost.

use crate::backend::BackendError;
use crate::blob;
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use crate::index::{Index, IndexFile};
use crate::pack;
use crate::repository::{FileKind, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{Extents, MAX_DEPTH, MAX_ENTRIES, NodeKind};
use crate::tree_reader::TreeReader;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which packs `--verify` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VerifySubset {
    /// Every pack.
    All,
    /// Slice `n` (1-based) of `of` deterministic slices: a pack belongs to
    /// slice `(first 8 id bytes as u64 LE) % of + 1`, so the slices
    /// partition the packs and stay stable as packs are added.
    Slice {
        /// Which slice, 1..=of.
        n: u32,
        /// How many slices.
        of: u32,
    },
    /// A random share of the packs, in percent (0, 100].
    Percent(f64),
}

impl VerifySubset {
    /// Whether `pack` is in this subset (`Percent` is decided by the caller).
    #[must_use]
    pub fn contains(&self, pack: &PackId) -> bool {
        match *self {
            VerifySubset::All | VerifySubset::Percent(_) => true,
            VerifySubset::Slice { n, of } => {
                let mut first = [0u8; 8];
                first.copy_from_slice(&pack.0[..8]);
                u64::from_le_bytes(first) % u64::from(of) + 1 == u64::from(n)
            }
        }
    }
}

impl std::str::FromStr for VerifySubset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage {s:?}"))?;
            if p > 0.0 && p <= 100.0 {
                return Ok(VerifySubset::Percent(p));
            }
            return Err(format!("percentage {s:?} must be in (0, 100]"));
        }
        let (n, of) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid subset {s:?}: use N/M or P%"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("invalid subset {s:?}"))?;
        let of: u32 = of
            .trim()
            .parse()
            .map_err(|_| format!("invalid subset {s:?}"))?;
        if of == 0 || n == 0 || n > of {
            return Err(format!("invalid subset {s:?}: need 1 <= N <= M"));
        }
        Ok(VerifySubset::Slice { n, of })
    }
}

/// Knobs for a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Read data; `None` checks structure only.
    pub verify: Option<VerifySubset>,
    /// Concurrent pack downloads when verifying.
    pub concurrency: usize,
    /// Set to stop: reading packs stops at the next pack, and the check
    /// fails with [`Error::Interrupted`] instead of reporting on what it
    /// did not read.
    pub cancel: Arc<AtomicBool>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data is missing or damaged: exit 1.
    Error,
    /// Harmless but worth knowing (orphaned packs, unused blobs).
    Warning,
}

/// A file or tree hurt by damage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Affected {
    /// Snapshot id.
    pub snapshot: String,
    /// Path inside the snapshot.
    pub path: String,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Machine-readable kind, e.g. `pack_missing`, `blob_damaged`.
    pub kind: &'static str,
    /// The damaged object, e.g. `pack 3f2a…` or `index 9b1c…`.
    pub object: String,
    /// What is wrong.
    pub message: String,
    /// Files and trees that cannot be restored because of it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub affected: Vec<Affected>,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct CheckProgress {
    /// Packs to read.
    pub packs_total: AtomicU64,
    /// Packs read.
    pub packs_done: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
}

/// Outcome of a check.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Everything found, errors first.
    pub findings: Vec<Finding>,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Packs in storage.
    pub packs: u64,
    /// Blobs indexed.
    pub blobs: u64,
    /// Packs whose data was read.
    pub packs_verified: u64,
    /// Blobs authenticated and re-hashed.
    pub blobs_verified: u64,
    /// Bytes downloaded for verification.
    pub bytes_verified: u64,
}

impl CheckReport {
    /// Whether any error (not warning) was found.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    fn error(&mut self, kind: &'static str, object: String, message: String) {
        self.findings.push(Finding {
            severity: Severity::Error,
            kind,
            object,
            message,
            affected: Vec::new(),
        });
    }

    fn warning(&mut self, kind: &'static str, object: String, message: String) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            kind,
            object,
            message,
            affected: Vec::new(),
        });
    }
}

/// A finding from reading one pack, with the blobs it makes unreadable.
type PackFinding = (Finding, Vec<BlobId>);

/// Why a blob cannot be read: keyed by blob, pointing at a finding.
type BadBlobs = HashMap<BlobId, usize>;

/// Copies of blobs that cannot be read, by blob and pack, pointing at the
/// finding that says why.
type Broken = HashMap<(BlobId, PackId), usize>;

/// The blobs of which no copy can be read: a blob stored in two packs (two
/// backups stored it at once) is read from the other when one is lost, so
/// only losing both loses it. Each points at its first location's finding.
fn unreachable(index: &Index, broken: &Broken) -> BadBlobs {
    let mut out = BadBlobs::new();
    for (id, _) in broken.keys() {
        if out.contains_key(id) {
            continue;
        }
        let locations = index.locations(id);
        if locations
            .iter()
            .all(|l| broken.contains_key(&(*id, l.pack)))
            && let Some(f) = locations.first().and_then(|l| broken.get(&(*id, l.pack)))
        {
            out.insert(*id, *f);
        }
    }
    out
}

/// Lists packs in storage with their sizes.
pub fn stored_packs(repo: &Repository) -> Result<HashMap<PackId, u64>> {
    Ok(repo
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|o| Some((o.path.rsplit('/').next()?.parse().ok()?, o.size)))
        .collect())
}

/// Reads the header at the end of a stored pack: its blobs, or why it
/// cannot be read (truncated, damaged); `None` if the pack is gone.
pub(crate) fn read_pack_header(
    repo: &Repository,
    id: &PackId,
    size: u64,
) -> Result<Option<std::result::Result<Vec<pack::PackedBlob>, String>>> {
    let path = FileKind::Pack.path(&id.to_hex());
    let tail_len = pack::tail_len(size);
    let tail = match repo.backend().get_range(&path, size - tail_len, tail_len) {
        Ok(tail) => tail,
        Err(e) if e.is_not_found() => return Ok(None),
        // Shorter than listed: cut while this ran.
        Err(BackendError::Truncated(e)) => return Ok(Some(Err(e))),
        Err(e) => return Err(Error::backend(format!("pack {id}"), e)),
    };
    Ok(Some(
        pack::read_header(repo.key(), size, &tail).map_err(|e| e.to_string()),
    ))
}

/// Loads every readable index file, reporting damaged ones.
fn load_indexes(
    repo: &Repository,
    report: &mut CheckReport,
) -> Result<(Index, Vec<(IndexId, IndexFile)>)> {
    let mut files = Vec::new();
    for (id, file) in repo.fetch_index_files(&repo.index_ids()?) {
        match file {
            Ok(f) => files.push((id, f)),
            Err(e) => report.error(
                "index_damaged",
                format!("index {id}"),
                format!("{e} (run `vault repair index`)"),
            ),
        }
    }
    let superseded: HashSet<IndexId> = files
        .iter()
        .flat_map(|(_, f)| f.supersedes.iter().copied())
        .collect();
    let index = Index::from_files(
        files
            .iter()
            .filter(|(id, _)| !superseded.contains(id))
            .map(|(_, f)| f),
    );
    Ok((index, files))
}

/// Runs a check.
pub fn check(
    repo: &Repository,
    options: &CheckOptions,
    progress: &CheckProgress,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();

    // Keys decode (each is tried at open; here we only report damage).
    for info in repo.list(FileKind::Key)? {
        match repo.backend().get(&info.path, FileKind::Key.max_len()) {
            Ok(bytes) => {
                if let Err(e) = crate::crypto::KeyFile::decode(&bytes) {
                    report.error("key_damaged", info.path.clone(), e.to_string());
                }
            }
            Err(e) => report.error("key_unreadable", info.path.clone(), e.to_string()),
        }
    }

    // Snapshots, listed before the index is loaded: a backup writes its
    // snapshot only once its index files are stored, so every snapshot
    // listed here finds its blobs in the index loaded next. Loading the
    // index first reported a backup finishing beside the check as blobs
    // missing from every index.
    let snapshot_ids: Vec<SnapshotId> = repo
        .list(FileKind::Snapshot)?
        .iter()
        .filter_map(|o| o.path.rsplit('/').next()?.parse().ok())
        .collect();
    let mut snapshots: Vec<(SnapshotId, Snapshot)> = Vec::new();
    for id in snapshot_ids {
        match repo.load_snapshot(&id) {
            Ok(s) => snapshots.push((id, s)),
            // Forgotten since it was listed.
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
            Err(e) => report.error("snapshot_damaged", format!("snapshot {id}"), e.to_string()),
        }
    }
    report.snapshots = snapshots.len() as u64;
    let (index, _) = load_indexes(repo, &mut report)?;
    // Packs are listed after the index: a pack indexed by an index file
    // stored between the two listings would otherwise look missing.
    let stored = stored_packs(repo)?;
    report.packs = stored.len() as u64;
    report.blobs = index.len() as u64;

    // Indexed packs exist with the indexed size; entries fit inside.
    let mut pack_findings: HashMap<PackId, usize> = HashMap::new();
    for (pack, size) in index.packs() {
        match stored.get(&pack) {
            None => {
                report.error(
                    "pack_missing",
                    format!("pack {pack}"),
                    "indexed pack is missing from storage".into(),
                );
                pack_findings.insert(pack, report.findings.len() - 1);
            }
            Some(&actual) if actual != size => {
                report.error(
                    "pack_size",
                    format!("pack {pack}"),
                    format!("stored size {actual} differs from indexed size {size} (truncated or replaced)"),
                );
                pack_findings.insert(pack, report.findings.len() - 1);
            }
            Some(_) => {}
        }
    }
    let mut broken = Broken::new();
    for (id, loc) in index.blobs().chain(index.duplicates().iter().copied()) {
        if let Some(&f) = pack_findings.get(&loc.pack) {
            broken.insert((id, loc.pack), f);
        }
    }
    let mut bad = unreachable(&index, &broken);
    for (id, dup) in index.duplicates() {
        if let Some(first) = index.get(id)
            && first.raw_len != dup.raw_len
        {
            report.error(
                "blob_conflict",
                format!("blob {id}"),
                format!(
                    "indexed in packs {} and {} with different lengths",
                    first.pack, dup.pack
                ),
            );
        }
    }
    let indexed: HashSet<PackId> = index.packs().map(|(p, _)| p).collect();
    for (pack, size) in &stored {
        if !indexed.contains(pack) {
            // One small read per such pack, which are few: a pack that
            // cannot be adopted is not pointed to `repair index`.
            let message = match read_pack_header(repo, pack, *size)? {
                Some(Err(e)) => format!(
                    "pack is not in any index and its header cannot be read ({e}): its blobs are lost; `vault prune` removes it"
                ),
                _ => "pack is not in any index (a backup still running, or left by an interrupted one; `vault prune` removes it, `vault repair index` adopts it)".into(),
            };
            report.warning("pack_unindexed", format!("pack {pack}"), message);
        }
    }

    let roots: Vec<BlobId> = snapshots.iter().map(|(_, s)| s.tree).collect();

    // Data, and the walk of every tree beside it on the same pool: the walk
    // is one thread's work (decoding trees), which reading packs alone would
    // leave a core idle for. If the data turns out damaged the walk's answer
    // is dropped and the slow walk below names what the damage reaches.
    let pool = crate::repository::thread_pool(options.concurrency.max(1))?;
    // What each snapshot's trees expand to, measured from the trees read.
    let mut extents = Extents::default();
    // Symlink nodes whose target no file system holds, by tree.
    let mut bad_nodes = BadNodes::new();
    let (verified, scanned) = pool.install(|| {
        rayon::join(
            || {
                options
                    .verify
                    .map(|subset| {
                        verify_packs(repo, &index, &stored, subset, progress, &options.cancel)
                    })
                    .transpose()
            },
            || {
                scan_trees(
                    repo,
                    &index,
                    &bad,
                    roots.into_iter(),
                    &mut extents,
                    &mut bad_nodes,
                )
            },
        )
    });
    let mut scanned = scanned;
    if let Some(verified) = verified? {
        report.packs_verified = verified.packs;
        report.blobs_verified = verified.blobs;
        report.bytes_verified = verified.bytes;
        for (finding, pack, blobs) in verified.findings {
            report.findings.push(finding);
            let f = report.findings.len() - 1;
            for b in blobs {
                broken.entry((b, pack)).or_insert(f);
            }
        }
        let before = bad.len();
        bad = unreachable(&index, &broken);
        if bad.len() > before {
            scanned = None;
        }
    }
    let mut affected: BTreeMap<usize, Vec<Affected>> = BTreeMap::new();
    // Something is wrong (damaged data, or the walk stopped): walk each
    // snapshot on its own to name every snapshot and path the damage
    // reaches.
    let walk_each = scanned.is_none();
    let mut used = scanned.unwrap_or_default();
    for (sid, snap) in snapshots.iter().filter(|_| walk_each) {
        let mut stack: Vec<(BlobId, PathBuf)> = vec![(snap.tree, PathBuf::from("/"))];
        let mut seen_here: HashSet<BlobId> = HashSet::new();
        while let Some((tree_id, path)) = stack.pop() {
            if !seen_here.insert(tree_id) {
                continue;
            }
            used.insert(tree_id);
            let finding = blob_problem(&index, &bad, &tree_id, &mut report, "tree");
            if let Some(f) = finding {
                extents.add_unreadable(tree_id);
                affected.entry(f).or_default().push(Affected {
                    snapshot: sid.short(),
                    path: path.display().to_string(),
                });
                continue;
            }
            let tree = match repo.read_tree(&index, &tree_id) {
                Ok(t) => t,
                Err(e) => {
                    extents.add_unreadable(tree_id);
                    report.error("tree_damaged", format!("tree {tree_id}"), e.to_string());
                    let f = report.findings.len() - 1;
                    bad.insert(tree_id, f);
                    affected.entry(f).or_default().push(Affected {
                        snapshot: sid.short(),
                        path: path.display().to_string(),
                    });
                    continue;
                }
            };
            extents.add(tree_id, &tree);
            find_bad_nodes(&index, tree_id, &tree, &mut bad_nodes);
            for node in &tree.nodes {
                let child = path.join(node.os_name());
                // A non-directory with a subtree: an older backup's
                // symlinked ancestor, walked as a directory (restore.rs).
                if let (false, Some(sub)) = (node.kind == NodeKind::Dir, node.subtree) {
                    stack.push((sub, child.clone()));
                }
                if node.kind == NodeKind::Dir {
                    // Without a subtree it is an empty directory
                    // (repo-format.md §9), as restore makes it.
                    if let Some(sub) = node.subtree {
                        stack.push((sub, child));
                    }
                    continue;
                }
                for id in node.content.iter().flatten() {
                    used.insert(*id);
                    if let Some(f) = blob_problem(&index, &bad, id, &mut report, "data") {
                        let list = affected.entry(f).or_default();
                        let entry = Affected {
                            snapshot: sid.short(),
                            path: child.display().to_string(),
                        };
                        if !list.contains(&entry) {
                            list.push(entry);
                        }
                    }
                }
            }
        }
    }
    report_extents(&snapshots, &extents, &mut report);
    report_twins(&snapshots, &mut report);
    for (tree, nodes) in bad_nodes {
        for (name, why) in nodes {
            report.error(
                "node_damaged",
                format!("tree {tree}"),
                format!("{name:?}: {why}"),
            );
        }
    }
    // Archived WAL: every record decodes, its blobs are sound, and each
    // stream's segments form an unbroken chain.
    let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match repo.backend().list("wal/") {
        Ok(objects) => {
            for o in objects {
                let (dir, name) = o.path.rsplit_once('/').unwrap_or(("wal", &o.path));
                streams
                    .entry(dir.to_owned())
                    .or_default()
                    .push(name.to_owned());
                let record = repo
                    .backend()
                    .get(&o.path, crate::repository::MAX_SEALED_LEN)
                    .map_err(|e| Error::backend(&o.path, e))
                    .and_then(|sealed| repo.open_wal(&o.path, &sealed))
                    .and_then(|body| {
                        serde_json::from_slice::<crate::wal::WalRecord>(&body)
                            .map_err(|e| Error::corrupt(&o.path, e))
                    });
                match record {
                    Ok(record) => {
                        for id in &record.content {
                            used.insert(*id);
                            if let Some(f) = blob_problem(&index, &bad, id, &mut report, "data") {
                                affected.entry(f).or_default().push(Affected {
                                    snapshot: "wal".into(),
                                    path: o.path.clone(),
                                });
                            }
                        }
                    }
                    Err(e) => report.error("wal_damaged", o.path.clone(), e.to_string()),
                }
            }
        }
        Err(e) => report.error("wal_unreadable", "wal/".into(), e.to_string()),
    }
    for (dir, names) in &streams {
        for (tli, first, count) in crate::wal::gaps(names) {
            report.error(
                "wal_gap",
                format!("{dir}/{first}"),
                format!("{count} WAL segment(s) missing on timeline {tli} starting at {first}: point-in-time recovery cannot pass this point"),
            );
        }
    }
    // A base backup is restorable only from its first WAL segment on:
    // archived elsewhere (archive_command a runbook's `cp`, another
    // repository), it could never be recovered, which nothing else shows.
    for (sid, snap) in snapshots
        .iter()
        .filter(|(_, s)| s.tags.iter().any(|t| t == "physical"))
    {
        let Some(start) = base_backup_start(repo, &index, snap) else {
            continue; // unreadable: reported by the walk above
        };
        // Tags are sorted: the source is whichever has a stream holding it.
        let archived = snap.tags.iter().filter(|t| *t != "physical").any(|t| {
            streams
                .get(&crate::wal::stream_dir(repo, t))
                .is_some_and(|names| names.contains(&start))
        });
        if !archived {
            report.error(
                "base_backup_wal_missing",
                format!("snapshot {sid}"),
                format!("its first WAL segment {start} is not archived under its source: point-in-time recovery from this base backup cannot begin (`vault forget` it once a newer base backup is restorable)"),
            );
        }
    }
    for (f, list) in affected {
        if let Some(finding) = report.findings.get_mut(f) {
            finding.affected = list;
        }
    }
    // Blobs in packs a prune already marked are expected to be unused:
    // they go when the margin has passed.
    let unused = index
        .blobs()
        .filter(|(id, loc)| !used.contains(id) && index.marked_at(&loc.pack).is_none())
        .count();
    if unused > 0 {
        report.warning(
            "blobs_unused",
            format!("{unused} blobs"),
            format!(
                "{unused} indexed blobs are not used by any snapshot (`vault prune` reclaims them; `--max-unused 0` also those in packs that are still mostly used)"
            ),
        );
    }
    report
        .findings
        .sort_by_key(|f| f.severity != Severity::Error);
    Ok(report)
}

/// Walks every tree reachable from `roots` once, however many snapshots
/// share it (consecutive snapshots share nearly all their trees, so walking
/// each one on its own read every tree blob once per snapshot: on an object
/// store, one GET per directory per snapshot). Returns the blobs used, or
/// `None` at the first tree or blob that is missing, damaged or unreadable;
/// the caller then walks snapshot by snapshot to report where.
fn scan_trees(
    repo: &Repository,
    index: &Index,
    bad: &BadBlobs,
    roots: impl Iterator<Item = BlobId>,
    extents: &mut Extents,
    bad_nodes: &mut BadNodes,
) -> Option<HashSet<BlobId>> {
    let sound = |id: &BlobId| index.contains(id) && !bad.contains_key(id);
    let mut trees: HashSet<BlobId> = HashSet::new();
    let mut used: HashSet<BlobId> = HashSet::new();
    let mut stack: Vec<BlobId> = roots.collect();
    let reader = TreeReader::new(repo, index);
    while let Some(tree_id) = stack.pop() {
        // Trees are tracked apart from data blobs: a file whose bytes equal
        // a tree's encoding has the same id, and must not stop the walk.
        if !trees.insert(tree_id) {
            continue;
        }
        if !sound(&tree_id) {
            return None;
        }
        used.insert(tree_id);
        let tree = reader.read(&tree_id).ok()?;
        extents.add(tree_id, &tree);
        find_bad_nodes(index, tree_id, &tree, bad_nodes);
        for node in &tree.nodes {
            if node.kind == NodeKind::Dir {
                stack.push(node.subtree?);
                continue;
            }
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
            for id in node.content.iter().flatten() {
                if !sound(id) {
                    return None;
                }
                used.insert(*id);
            }
        }
    }
    Some(used)
}

/// Nodes that are damage to themselves alone, by tree: name and why.
type BadNodes = BTreeMap<BlobId, BTreeMap<String, String>>;

/// Adds the nodes of `tree` restore cannot make as they say: symlinks
/// whose target is empty or holds a NUL byte, and files whose `size` is
/// not the sum of their blobs' plain lengths (a file with a blob `index`
/// lacks is reported as that blob missing). Decoding a tree validates
/// neither (repo-format.md §9).
fn find_bad_nodes(index: &Index, id: BlobId, tree: &crate::tree::Tree, bad_nodes: &mut BadNodes) {
    // A symlink with a subtree is a directory (restore.rs): its target is
    // never used.
    for node in tree.nodes.iter().filter(|n| n.subtree.is_none()) {
        let why = match node.kind {
            NodeKind::Symlink => match node.usable_link_target() {
                Err(why) => format!("{why}: restore leaves it out, dump refuses it"),
                Ok(_) => continue,
            },
            NodeKind::File => {
                let content_len = node.content.iter().flatten().try_fold(0u64, |len, id| {
                    Some(len + u64::from(index.get(id)?.raw_len))
                });
                match content_len {
                    Some(len) if len != node.size => format!(
                        "{}: restore gives it its content's size",
                        crate::restore::content_size_mismatch(node.size, len)
                    ),
                    _ => continue,
                }
            }
            _ => continue,
        };
        bad_nodes
            .entry(id)
            .or_default()
            .insert(node.os_name().to_string_lossy().into_owned(), why);
    }
}

/// Snapshots stored twice: by an interrupted `tag` or `rewrite --forget`
/// (those write the changed snapshot before deleting the one it replaces,
/// so a kill between the two leaves both), or by a `copy` made before and
/// after its source snapshot was tagged (a copy with other tags is another
/// snapshot, as in restic). `forget` then counts two points in time. Twins
/// hold the same tree and time, and one was made from the other (its
/// `original` is the other's id) or both from a third (the same
/// `original`). A `rewrite` that keeps its original on purpose changed the
/// tree, so it is not a twin.
fn report_twins(snapshots: &[(SnapshotId, Snapshot)], report: &mut CheckReport) {
    let origin = |(id, s): &(SnapshotId, Snapshot)| s.original.unwrap_or(*id);
    type Twins<'a> = Vec<&'a (SnapshotId, Snapshot)>;
    let mut groups: HashMap<(BlobId, jiff::Timestamp, SnapshotId), Twins<'_>> = HashMap::new();
    for entry in snapshots {
        groups
            .entry((entry.1.tree, entry.1.time.timestamp(), origin(entry)))
            .or_default()
            .push(entry);
    }
    let mut twins: Vec<Twins<'_>> = groups.into_values().filter(|g| g.len() > 1).collect();
    twins.sort_by_key(|g| g.first().map(|(id, _)| *id));
    for group in twins {
        let named: Vec<String> = group
            .iter()
            .map(|(id, s)| match s.tags.as_slice() {
                [] => format!("{} (no tags)", id.short()),
                tags => format!("{} (tags: {})", id.short(), tags.join(", ")),
            })
            .collect();
        report.warning(
            "snapshot_twin",
            format!("snapshot {}", group[0].0),
            format!(
                "snapshots {} are one snapshot stored twice, its tags changed in between (a `vault tag` or `rewrite --forget` interrupted between writing the new one and deleting the old, or a `copy` made before and after the source was tagged): `forget` counts each; keep the one whose tags you want and `vault forget` the other",
                named.join(", "),
            ),
        );
    }
}

/// Reports snapshots whose trees restore, `ls` and `dump` refuse: nested
/// deeper than [`MAX_DEPTH`] levels, or listing each other into more than
/// [`MAX_ENTRIES`] entries (a few crafted trees, each listing the next one
/// twice, expand to more paths than any file system holds; the walks of
/// this check read each tree once and would not notice). Measured over the
/// trees that could be read.
fn report_extents(
    snapshots: &[(SnapshotId, Snapshot)],
    extents: &Extents,
    report: &mut CheckReport,
) {
    for (sid, snap) in snapshots {
        let Some(extent) = extents.get(&snap.tree).filter(|e| e.exceeds_limits()) else {
            continue;
        };
        let levels = extent.levels.saturating_sub(1);
        let (kind, message) = if levels as usize > MAX_DEPTH {
            (
                "tree_too_deep",
                format!(
                    "tree {} nests trees {levels} levels deep, deeper than the {MAX_DEPTH} readers follow (no path is that long): restore, ls and dump refuse it",
                    snap.tree
                ),
            )
        } else {
            (
                "tree_too_large",
                format!(
                    "tree {} expands to {} entries, more than the {MAX_ENTRIES} any file system holds (its trees list each other over and over): restore, ls and dump refuse it",
                    snap.tree, extent.entries
                ),
            )
        };
        report.error(kind, format!("snapshot {sid}"), message);
        if let Some(finding) = report.findings.last_mut() {
            finding.affected.push(Affected {
                snapshot: sid.short(),
                path: "/".into(),
            });
        }
    }
}

/// The WAL segment a base backup snapshot starts in, from the
/// `backup_label` at the head of its `base.tar`; `None` if unreadable.
fn base_backup_start(repo: &Repository, index: &Index, snap: &Snapshot) -> Option<String> {
    let node = crate::restore::find_node(repo, index, &snap.tree, "/base.tar").ok()?;
    let first = node.content.as_ref()?.first()?;
    let head = repo.read_blob(index, first).ok()?;
    let label = crate::wal::backup_label_from_tar(&head)?;
    crate::wal::parse_backup_label(&label).map(|(start, _)| start)
}

/// Returns the finding index explaining why `id` cannot be read, adding a
/// `blob_missing` finding for unindexed blobs.
fn blob_problem(
    index: &Index,
    bad: &BadBlobs,
    id: &BlobId,
    report: &mut CheckReport,
    what: &str,
) -> Option<usize> {
    if let Some(&f) = bad.get(id) {
        return Some(f);
    }
    if index.contains(id) {
        return None;
    }
    // One finding per missing blob, shared by every file referencing it.
    let object = format!("{what} blob {id}");
    if let Some(pos) = report.findings.iter().position(|f| f.object == object) {
        return Some(pos);
    }
    report.error(
        "blob_missing",
        object,
        "referenced but not in any index".into(),
    );
    Some(report.findings.len() - 1)
}

/// What reading the packs found.
struct Verified {
    /// With the pack each is about.
    findings: Vec<(Finding, PackId, Vec<BlobId>)>,
    packs: u64,
    blobs: u64,
    bytes: u64,
}

/// Reads and checks the packs of `subset` on the current rayon pool.
fn verify_packs(
    repo: &Repository,
    index: &Index,
    stored: &HashMap<PackId, u64>,
    subset: VerifySubset,
    progress: &CheckProgress,
    cancel: &AtomicBool,
) -> Result<Verified> {
    // Index entries grouped by pack, to compare with each pack's header;
    // every copy of a blob, for readers fall back to the others.
    let mut expected: HashMap<PackId, Vec<(BlobId, crate::index::BlobLocation)>> = HashMap::new();
    for (id, loc) in index.blobs().chain(index.duplicates().iter().copied()) {
        expected.entry(loc.pack).or_default().push((id, loc));
    }
    let mut packs: Vec<PackId> = stored
        .keys()
        .copied()
        .filter(|p| subset.contains(p))
        .collect();
    packs.sort();
    if let VerifySubset::Percent(p) = subset {
        use rand::seq::SliceRandom;
        packs.shuffle(&mut rand::rng());
        let keep = ((packs.len() as f64) * p / 100.0).ceil() as usize;
        packs.truncate(keep.max(1).min(packs.len()));
    }
    progress
        .packs_total
        .store(packs.len() as u64, Ordering::Relaxed);
    let found: Mutex<Vec<(Finding, PackId, Vec<BlobId>)>> = Mutex::new(Vec::new());
    let blobs_verified = AtomicU64::new(0);
    let packs_verified = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    packs.par_iter().for_each(|pack| {
        if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
            return;
        }
        let entries = expected.get(pack).map(Vec::as_slice).unwrap_or_default();
        let size = stored.get(pack).copied().unwrap_or(0);
        match verify_pack(repo, pack, size, entries) {
            Ok((mut findings, ok)) => {
                // A pack no index lists serves no reader: its damage (a
                // truncated pack `repair index` left out, waiting for prune)
                // loses nothing more than check reports as missing blobs,
                // and its pack_unindexed warning says what to do.
                if entries.is_empty() {
                    for (f, _) in &mut findings {
                        f.severity = Severity::Warning;
                    }
                }
                // A pack that vanished was not read.
                if let Some(ok) = ok {
                    blobs_verified.fetch_add(ok, Ordering::Relaxed);
                    packs_verified.fetch_add(1, Ordering::Relaxed);
                    progress.bytes_read.fetch_add(size, Ordering::Relaxed);
                }
                found
                    .lock()
                    .expect("ok")
                    .extend(findings.into_iter().map(|(f, blobs)| (f, *pack, blobs)));
            }
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                fatal.lock().expect("ok").get_or_insert(e);
            }
        }
        progress.packs_done.fetch_add(1, Ordering::Relaxed);
    });
    if let Some(e) = fatal.into_inner().expect("ok") {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    Ok(Verified {
        findings: found.into_inner().expect("ok"),
        packs: packs_verified.load(Ordering::Relaxed),
        blobs: blobs_verified.load(Ordering::Relaxed),
        bytes: progress.bytes_read.load(Ordering::Relaxed),
    })
}

/// How far ahead of the blob being opened a pack is hashed: a multiple of
/// BLAKE3's 1 KiB chunks large enough for its widest SIMD batch, small
/// enough to stay in cache until the blobs in it are opened.
const HASH_STEP: usize = 64 * 1024;

/// Reads one pack and checks it; returns findings with the blobs each one
/// makes unreadable, and the number of sound blobs (none when the pack
/// vanished and was not read).
fn verify_pack(
    repo: &Repository,
    pack: &PackId,
    size: u64,
    entries: &[(BlobId, crate::index::BlobLocation)],
) -> Result<(Vec<PackFinding>, Option<u64>)> {
    let path = FileKind::Pack.path(&pack.to_hex());
    let object = format!("pack {pack}");
    let err = |kind: &'static str, message: String| Finding {
        severity: Severity::Error,
        kind,
        object: object.clone(),
        message,
        affected: Vec::new(),
    };
    let bytes = match repo.backend().get(&path, FileKind::Pack.max_len()) {
        Ok(b) => b,
        // Listed moments ago, so deleted since: by a prune beside this
        // check, a lifecycle rule, a failing disk. Nothing was verified,
        // and its blobs are lost unless copied elsewhere (a prune's).
        Err(e) if e.is_not_found() => {
            let finding = err(
                "pack_missing",
                "deleted from storage while the check ran (a prune beside it?): not verified; run the check again".into(),
            );
            return Ok((
                vec![(finding, entries.iter().map(|(id, _)| *id).collect())],
                None,
            ));
        }
        Err(e) => return Err(Error::backend(object, e)),
    };
    // Owned, so each blob is opened where it lies: check keeps neither
    // ciphertext nor plaintext, and copying each blob out first cost a pass
    // over the pack's memory and an allocation per blob.
    let mut bytes = Vec::from(bytes);
    let mut findings = Vec::new();
    let tail_start = bytes.len() - pack::tail_len(size.min(bytes.len() as u64)) as usize;
    let header = pack::read_header(repo.key(), bytes.len() as u64, &bytes[tail_start..]);
    match &header {
        Err(e) => findings.push((err("pack_header", e.to_string()), Vec::new())),
        Ok(blobs) if !entries.is_empty() => {
            let in_header: HashSet<(BlobId, u32, u32)> =
                blobs.iter().map(|b| (b.id, b.offset, b.length)).collect();
            let missing: Vec<BlobId> = entries
                .iter()
                .filter(|(id, loc)| !in_header.contains(&(*id, loc.offset, loc.length)))
                .map(|(id, _)| *id)
                .collect();
            if !missing.is_empty() {
                findings.push((
                    err(
                        "pack_header_mismatch",
                        format!(
                            "{} indexed blobs are not where the pack header says",
                            missing.len()
                        ),
                    ),
                    Vec::new(),
                ));
            }
        }
        Ok(_) => {}
    }
    // Blobs in pack order, so the pack's name is hashed in the same pass,
    // each blob's bytes just before they are overwritten. A blob the index
    // lays over another (the same pack indexed twice, a damaged index) is
    // opened from a copy: the other's opening must find its bytes intact.
    let span = |(_, loc): &(BlobId, crate::index::BlobLocation)| {
        let start = loc.offset as usize;
        (start, start + loc.length as usize)
    };
    let mut order: Vec<&(BlobId, crate::index::BlobLocation)> = entries.iter().collect();
    order.sort_by_key(|e| span(e));
    let mut hasher = blake3::Hasher::new();
    let mut hashed = 0;
    // The furthest any blob before reaches.
    let mut reach = 0;
    let mut scratch = Vec::new();
    let mut copy = Vec::new();
    let mut ok = 0u64;
    let mut damaged = Vec::new();
    for (n, entry) in order.iter().enumerate() {
        let (id, loc) = entry;
        let (start, end) = span(entry);
        let overlaps = start < reach || order.get(n + 1).is_some_and(|next| span(next).0 < end);
        reach = reach.max(end);
        let stored = match bytes.get_mut(start..end) {
            None => None,
            Some(stored) if overlaps => {
                copy.clear();
                copy.extend_from_slice(stored);
                Some(copy.as_mut_slice())
            }
            Some(_) => {
                if end > hashed {
                    // In whole steps: BLAKE3 hashes 16 chunks at once only
                    // when handed whole aligned runs of them; a blob's
                    // ragged ends went through its one-chunk path.
                    let to = end.next_multiple_of(HASH_STEP).min(bytes.len());
                    hasher.update(&bytes[hashed..to]);
                    hashed = to;
                }
                bytes.get_mut(start..end)
            }
        };
        let sound = stored.is_some_and(|stored| {
            blob::verify_in_place(repo.key(), loc.kind, id, loc.raw_len, stored, &mut scratch)
                .is_ok()
        });
        if sound {
            ok += 1;
        } else {
            damaged.push(*id);
        }
    }
    hasher.update(&bytes[hashed..]);
    // The unkeyed BLAKE3 of `PackId::of_bytes`, over the bytes as read.
    if PackId(*hasher.finalize().as_bytes()) != *pack {
        findings.insert(
            0,
            (
                err(
                    "pack_hash",
                    "content does not match its name (altered, or replaced)".into(),
                ),
                Vec::new(),
            ),
        );
    }
    if !damaged.is_empty() {
        findings.push((
            err(
                "blob_damaged",
                format!(
                    "{} blobs fail authentication or do not match their ids",
                    damaged.len()
                ),
            ),
            damaged,
        ));
    }
    Ok((findings, Some(ok)))
}

/// Blobs that cannot be restored: unindexed ones are found by callers; this
/// returns blobs whose every copy lies in a pack that is missing or
/// truncated, and, when `verify`, fails authentication or hashing.
pub fn unreadable_blobs(repo: &Repository, index: &Index, verify: bool) -> Result<HashSet<BlobId>> {
    let stored = stored_packs(repo)?;
    // The finding numbers do not matter here.
    let mut broken = Broken::new();
    for (id, loc) in index.blobs().chain(index.duplicates().iter().copied()) {
        let sound = stored
            .get(&loc.pack)
            .is_some_and(|&size| u64::from(loc.offset) + u64::from(loc.length) <= size);
        if !sound {
            broken.insert((id, loc.pack), 0);
        }
    }
    if verify {
        let progress = CheckProgress::default();
        let pool = crate::repository::thread_pool(repo.read_concurrency())?;
        let verified = pool.install(|| {
            let never = AtomicBool::new(false);
            verify_packs(repo, index, &stored, VerifySubset::All, &progress, &never)
        })?;
        for (_, pack, blobs) in verified.findings {
            broken.extend(blobs.into_iter().map(|b| ((b, pack), 0)));
        }
    }
    Ok(unreachable(index, &broken).into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_partition_packs() {
        let packs: Vec<PackId> = (0..500u32)
            .map(|i| PackId::of_bytes(&i.to_le_bytes()))
            .collect();
        for of in [1u32, 3, 10] {
            for p in &packs {
                let hits = (1..=of)
                    .filter(|n| VerifySubset::Slice { n: *n, of }.contains(p))
                    .count();
                assert_eq!(hits, 1);
            }
        }
    }

    #[test]
    fn parse_subsets() {
        assert_eq!(
            "1/10".parse::<VerifySubset>().unwrap(),
            VerifySubset::Slice { n: 1, of: 10 }
        );
        assert_eq!(
            "5%".parse::<VerifySubset>().unwrap(),
            VerifySubset::Percent(5.0)
        );
        for bad in ["0/10", "11/10", "1/0", "0%", "101%", "x"] {
            assert!(bad.parse::<VerifySubset>().is_err(), "{bad}");
        }
    }
}
