//! Restore: a snapshot (or part of it) back onto disk.
//!
//! Plan, then execute. The plan lists every node to create and, for file
//! content, which blob goes to which file offset, grouped by pack so each
//! pack is fetched once. Execution creates the directory skeleton and empty
//! files, writes content pack by pack in parallel (each blob authenticated
//! and re-hashed before it is written; all-zero chunks are left as holes),
//! then applies metadata: files first, directories deepest first, so
//! writing content never disturbs a restored mtime. Every file operation
//! below the target goes through `beneath`: relative to the target's
//! descriptor, never following a symlink but a trusted one that holds the
//! place of a directory of the snapshot (`/lib -> usr/lib`), which is kept
//! and restored through.

use crate::backend::Backend;
use crate::blob;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::index::Index;
use crate::pattern::Pattern;
use crate::repository::{FileKind, Repository};
use crate::tree::{Extents, Node, NodeKind, Tree};
use crate::tree_reader::TreeReader;
use beneath::{Beneath, Parents};
use changes::Changes;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod beneath;
mod changes;
mod flags;

pub use changes::ChangedEntry;

/// What to do with files that already exist at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Refuse to restore if any target file exists.
    #[default]
    Never,
    /// Rewrite every file.
    Always,
    /// Verify existing content chunk by chunk and write only what differs
    /// (resumes an interrupted restore).
    IfChanged,
    /// Replace an existing entry only where the snapshot's is newer (its
    /// mtime later than the target's, compared to the nanosecond); one as
    /// new or newer is left as it is, metadata included, as restic 0.17's
    /// `--overwrite if-newer` leaves it. Directories are not judged: they
    /// are restored into, and get the snapshot's metadata.
    IfNewer,
}

/// Knobs for a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Directory to restore into; snapshot paths are re-rooted under it.
    pub target: PathBuf,
    /// Only restore paths matching (or below) these snapshot paths/globs.
    /// A pattern not starting with `/` matches at any depth (`voicemails`
    /// selects every directory or file of that name, `app/db.sql` every
    /// such path suffix), as restic's do. Includes that select nothing fail
    /// the restore rather than restore nothing. Patterns match the bytes of
    /// names; one that is not UTF-8 names a path literally.
    pub includes: Vec<std::ffi::OsString>,
    /// Skip paths matching these patterns ([`crate::backup::Excludes`]).
    pub excludes: Vec<std::ffi::OsString>,
    /// Existing-file policy.
    pub overwrite: Overwrite,
    /// Remove what the target holds but the snapshot does not, inside the
    /// restored directories at or below these snapshot paths (give the
    /// snapshot's `paths`: the directories above them are only the way
    /// there, and stay untouched). Paths `excludes` matches are kept. Empty:
    /// remove nothing.
    pub delete_within: Vec<String>,
    /// Change nothing: report what the restore would create, write and
    /// delete (with `IfChanged`, existing files are read to tell which
    /// chunks differ). Nothing is downloaded but trees.
    pub dry_run: bool,
    /// Read every restored file back and check each chunk against the
    /// snapshot's hash before reporting success.
    pub verify: bool,
    /// Concurrent pack downloads.
    pub concurrency: usize,
    /// A device node the kernel refuses to create for want of privilege
    /// (EPERM: not root, or no CAP_MKNOD) is listed in
    /// [`RestoreReport::devices_not_created`] instead of
    /// [`RestoreReport::failed_entries`]. For a drill, which checks that a
    /// backup restores: such a node is no defect of the backup. A restore
    /// proper leaves this off: the node is missing from its target.
    pub devices_need_root_ok: bool,
    /// Stop flag.
    pub cancel: Arc<AtomicBool>,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Total content bytes planned.
    pub bytes_total: AtomicU64,
    /// Content bytes written or verified.
    pub bytes_done: AtomicU64,
}

/// Outcome of a restore.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// Files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other nodes (symlinks, devices, fifos).
    pub others: u64,
    /// Content bytes written.
    pub bytes_written: u64,
    /// Content bytes already correct (if-changed).
    pub bytes_skipped: u64,
    /// Entries left as the target has them, as new as the snapshot's or
    /// newer (if-newer).
    #[serde(skip_serializing_if = "is_zero")]
    pub kept: u64,
    /// Files and directories removed because the snapshot does not hold
    /// them (`delete_within`); a directory counts once.
    pub deleted: u64,
    /// Their paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted_paths: Vec<String>,
    /// Files read back and found identical to the snapshot (`verify`).
    pub verified_files: u64,
    /// Problems that leave every entry intact: a symlink where the
    /// snapshot has a directory replaced (`--overwrite`) rather than kept,
    /// and why ([`Self::kept_links`]); a kept one below which `--delete`
    /// judged nothing. (Owners are set only as root: as non-root they stay
    /// the restoring user's, as with restic; any other metadata not applied
    /// is a [`FailedEntry`].)
    pub warnings: Vec<String>,
    /// Symlinks found where the snapshot has a directory and kept: trusted
    /// (only root or the restoring user could have made or swapped them)
    /// and leading to a directory inside the target, as `/lib -> usr/lib`.
    /// The directory's content is restored through the link, its metadata
    /// not (what the link leads to keeps its own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_links: Vec<KeptLink>,
    /// With `--overwrite if-changed`: every entry that was not as the
    /// snapshot has it, and what of it was (in a dry run: would be)
    /// changed. Not kept for other overwrite modes, which set everything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_entries: Vec<ChangedEntry>,
    /// Entries not restored, or not intact, because the target refused
    /// them: not created, not replaced, content not written, or metadata
    /// (mode, times, extended attributes; owner as root) not applied, each
    /// with what failed; the restore went on with everything else.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_entries: Vec<FailedEntry>,
    /// Device nodes not created because that needs root
    /// ([`RestoreOptions::devices_need_root_ok`]), by path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices_not_created: Vec<String>,
    /// Files restored with zeros where their content is damaged or
    /// missing in the repository, each with why; the restore went on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_files: Vec<DamagedFile>,
    /// Entries not restored at all because their node in the snapshot is
    /// malformed (a symlink whose target no file system holds), each with
    /// why; the restore went on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_entries: Vec<DamagedEntry>,
}

/// A symlink kept where the snapshot has a directory (see
/// [`RestoreReport::kept_links`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptLink {
    /// Where the snapshot's directory belongs.
    pub path: String,
    /// The symlink's text.
    pub target: String,
}

/// An entry that could not be restored: its node is damage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedEntry {
    /// Where it belongs.
    pub path: String,
    /// What is wrong with its node.
    pub error: String,
}

/// An entry the target refused (see [`RestoreReport::failed_entries`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedEntry {
    /// Where it belongs.
    pub path: String,
    /// What failed (the path is not repeated).
    pub error: String,
    /// For a directory not created: the entries below it, not restored
    /// either and not listed one by one.
    #[serde(skip_serializing_if = "is_zero")]
    pub entries_below: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RestoreReport {
    /// How many entries [`Self::failed_entries`] stands for, those below a
    /// directory not created included.
    #[must_use]
    pub fn failed_count(&self) -> u64 {
        (self.failed_entries.iter())
            .map(|f| 1 + f.entries_below)
            .sum()
    }
}

/// A file whose content could not be restored whole.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedFile {
    /// Where it was restored.
    pub path: String,
    /// The first damaged or missing blob or pack it needed.
    pub error: String,
    /// Whether that was missing (a pack not in storage) rather than
    /// damaged.
    pub missing: bool,
    /// Whether its node's size was not its content's: it was restored with
    /// its content, at its content's size, and `error` says both.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub wrong_size: bool,
}

/// Calls `visit(path, node)` for every node below `root`, depth first,
/// parents before children; `visit` returns whether to descend into a
/// directory. `path` is absolute within the snapshot.
///
/// The subtrees of a directory are read in parallel, a few siblings at a
/// time, before those siblings are visited, and from an object store whole
/// tree packs are fetched at once (`tree_reader`): a serial walk, one
/// request per tree, spent most of a restore's planning waiting on them.
/// A subtree that fails to read fails the walk only if `visit` descends
/// into it.
///
/// Trees are untrusted: one nested deeper than [`crate::tree::MAX_DEPTH`],
/// or trees listing each other into more than [`crate::tree::MAX_ENTRIES`]
/// entries, fail the walk as damage. The latter is found from the trees
/// read (`tree::Extents`), not by expanding them: a few dozen crafted trees
/// are refused after about as many entries.
pub fn walk(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    visit: &mut dyn FnMut(&Path, Node) -> Result<bool>,
) -> Result<()> {
    fn inner(
        trees: &TreeReader<'_>,
        extents: &mut Extents,
        tree: Tree,
        prefix: &Path,
        depth: usize,
        visit: &mut dyn FnMut(&Path, Node) -> Result<bool>,
    ) -> Result<()> {
        // Each level is a stack frame: a tree nested deeper than any path
        // can be (crafted, since trees are untrusted input) must fail, not
        // overflow the stack.
        if depth > crate::tree::MAX_DEPTH {
            return Err(Error::corrupt(
                format!("tree below {}", prefix.display()),
                format!("nested deeper than {} levels", crate::tree::MAX_DEPTH),
            ));
        }
        // Nodes are handed over, not lent: a restore keeps every one, and
        // cloning them took 15-20% of its planning.
        let mut nodes = tree.nodes.into_iter().peekable();
        while nodes.peek().is_some() {
            let batch: Vec<Node> = nodes.by_ref().take(PREFETCH_TREES).collect();
            let subtrees: Vec<Option<Result<Tree>>> = batch
                .par_iter()
                .map(|node| node.subtree.as_ref().map(|sub| trees.read(sub)))
                .collect();
            for (mut node, subtree) in batch.into_iter().zip(subtrees) {
                node.legacy_ancestor_as_dir();
                let path = prefix.join(node.os_name());
                let id = node.subtree;
                let descend = visit(&path, node)?;
                if descend && let (Some(subtree), Some(id)) = (subtree, id) {
                    let subtree = subtree?;
                    extents.add_walked(id, &subtree)?;
                    inner(trees, extents, subtree, &path, depth + 1, visit)?;
                }
            }
        }
        Ok(())
    }
    let trees = TreeReader::new(repo, index);
    let mut extents = Extents::default();
    let tree = trees.read(root)?;
    extents.add_walked(*root, &tree)?;
    inner(&trees, &mut extents, tree, Path::new("/"), 0, visit)
}

/// Sibling nodes whose subtrees [`walk`] reads at once. Holding every
/// sibling's subtree (and, below it, theirs) took ~20 MiB more memory on a
/// 52k-file tree; a batch keeps it to a few trees per level.
const PREFETCH_TREES: usize = 8;

/// Finds the node at an absolute snapshot path. The path is bytes, as
/// file names are: it need not be UTF-8.
pub fn find_node(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    path: impl AsRef<std::ffi::OsStr>,
) -> Result<Node> {
    let path = path.as_ref();
    let mut tree = repo.read_tree(index, root)?;
    let parts: Vec<&[u8]> = path
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    // A wrong path given by the user (exit 1), not an object missing from
    // the repository (exit 4, which says the repository is short of data).
    let not_found = || {
        Error::InvalidInput(format!(
            "the snapshot holds no {}",
            Path::new(path).display()
        ))
    };
    for (i, part) in parts.iter().enumerate() {
        let node = tree
            .nodes
            .iter()
            .find(|n| n.os_name().as_bytes() == *part)
            .cloned()
            .ok_or_else(not_found)?;
        if i + 1 == parts.len() {
            return Ok(node);
        }
        let sub = node.subtree.ok_or_else(not_found)?;
        tree = repo.read_tree(index, &sub)?;
    }
    Err(not_found())
}

/// Writes a file node's content to `out`, verifying every chunk.
pub fn dump(repo: &Repository, index: &Index, node: &Node, out: &mut dyn Write) -> Result<u64> {
    if node.kind != NodeKind::File {
        return Err(Error::InvalidInput(format!("{} is not a file", node.name)));
    }
    let mut written = 0u64;
    for id in node.content.iter().flatten() {
        let data = repo.read_blob(index, id)?;
        out.write_all(&data)
            .map_err(|e| Error::io("writing output", e))?;
        written += data.len() as u64;
    }
    out.flush().map_err(|e| Error::io("writing output", e))?;
    Ok(written)
}

fn matches_include(path: &Path, includes: &[Pattern], raw: &[std::ffi::OsString]) -> bool {
    if raw.is_empty() {
        return true;
    }
    // A path is included when it, or one of its ancestors, matches.
    let mut p = path;
    loop {
        if includes.iter().any(|g| g.is_match(p)) {
            return true;
        }
        match p.parent() {
            Some(parent) if parent != Path::new("/") && parent != p => p = parent,
            _ => return false,
        }
    }
}

/// Adds, as items, the directories above selected items that the walk
/// passed over, so they are restored with their own metadata; parents
/// before children, as the skeleton expects.
fn add_ancestors(items: &mut Vec<Item>, mut passed: HashMap<PathBuf, Item>, target: &Path) {
    if passed.is_empty() {
        return;
    }
    let mut needed: Vec<Item> = Vec::new();
    for item in items.iter() {
        for ancestor in item.path.ancestors().skip(1) {
            if ancestor == target {
                break;
            }
            if let Some(item) = passed.remove(ancestor) {
                needed.push(item);
            }
        }
    }
    needed.sort_by_key(|i| i.path.components().count());
    needed.append(items);
    *items = needed;
}

fn is_ancestor_of_include(path: &Path, raw: &[std::ffi::OsString]) -> bool {
    raw.iter()
        .any(|inc| Path::new(inc).starts_with(path) && Path::new(inc) != path)
}

/// What a restore keeps of each entry it restores, for all of them at
/// once. A snapshot's [`Node`] is ~330 bytes before its strings: keeping
/// those took ~600 bytes an entry (600k files, 359 MiB). Only what creating
/// and finishing an entry needs is kept, and what few entries have lives
/// behind one pointer.
struct Item {
    path: Box<Path>,
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: jiff::Timestamp,
    /// Content size of a file.
    size: u64,
    /// Content chunks of a file, in order.
    content: Box<[BlobId]>,
    rare: Option<Box<Rare>>,
}

/// The parts of an [`Item`] most entries lack.
#[derive(Default)]
struct Rare {
    atime: Option<jiff::Timestamp>,
    /// A symlink's target, or why it has none a file system can hold.
    link_target: Option<std::result::Result<std::ffi::OsString, &'static str>>,
    device: Option<u64>,
    /// `(device, inode)` of a file with other hard links.
    hardlink: Option<(u64, u64)>,
    xattrs: Vec<crate::tree::ExtendedAttribute>,
    inode_flags: u32,
}

impl Item {
    fn new(path: PathBuf, node: Node) -> Self {
        let hardlink = (node.kind == NodeKind::File && node.links > 1 && node.inode != 0)
            .then_some((node.device_id, node.inode));
        let link_target = (node.kind == NodeKind::Symlink).then(|| node.usable_link_target());
        let rare = Rare {
            atime: node.atime,
            link_target,
            device: node.device,
            hardlink,
            xattrs: node.extended_attributes,
            inode_flags: node.inode_flags,
        };
        let common = rare.atime.is_none()
            && rare.link_target.is_none()
            && rare.device.is_none()
            && rare.hardlink.is_none()
            && rare.xattrs.is_empty()
            && rare.inode_flags == 0;
        Item {
            path: path.into_boxed_path(),
            kind: node.kind,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            mtime: node.mtime,
            size: node.size,
            content: node.content.unwrap_or_default().into_boxed_slice(),
            rare: (!common).then(|| Box::new(rare)),
        }
    }

    fn hardlink(&self) -> Option<(u64, u64)> {
        self.rare.as_ref().and_then(|r| r.hardlink)
    }

    fn inode_flags(&self) -> u32 {
        self.rare.as_ref().map_or(0, |r| r.inode_flags)
    }

    /// A symlink's target, or why it cannot be created.
    fn link_target(&self) -> std::result::Result<&std::ffi::OsStr, &'static str> {
        match self.rare.as_ref().and_then(|r| r.link_target.as_ref()) {
            Some(Ok(target)) => Ok(target),
            Some(Err(why)) => Err(why),
            None => Err("symlink without a target"),
        }
    }

    /// The report of a symlink that cannot be created, if this is one.
    fn damage(&self) -> Option<DamagedEntry> {
        let why = self
            .link_target()
            .err()
            .filter(|_| self.kind == NodeKind::Symlink)?;
        Some(DamagedEntry {
            path: self.path.display().to_string(),
            error: why.to_owned(),
        })
    }
}

/// One write of a blob's plaintext into a file.
#[derive(Clone, Copy)]
struct Write1 {
    /// The file's item.
    file: u32,
    /// Which of the file's chunks: the blob's id is `content[chunk]`.
    chunk: u32,
    /// Where in the file.
    offset: u64,
}

/// A blob to fetch and where it goes. The restore's content plan is one
/// sorted array of these, 64 bytes each: a blob written to several places
/// appears once per write, consecutively.
#[derive(Clone, Copy)]
struct Want {
    pack: PackId,
    offset: u32,
    length: u32,
    raw_len: u32,
    kind: crate::blob::BlobKind,
    write: Write1,
}

/// Restores a snapshot tree.
pub fn restore(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    options: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreReport> {
    // Every phase runs on one pool: threads of a second pool would each
    // grow a malloc arena of their own (~10 MiB more resident).
    let pool = crate::repository::thread_pool(options.concurrency.max(2))?;
    // Includes are cleaned as restic cleans them (Go's `filepath.Clean`):
    // `$BASE/etc` with `BASE=/srv/` selected nothing, `a/./b` likewise.
    let options = &RestoreOptions {
        includes: (options.includes.iter())
            .map(|p| std::ffi::OsString::from_vec(crate::pattern::clean(p.as_bytes())))
            .collect(),
        ..options.clone()
    };
    pool.install(|| restore_on_pool(repo, index, root, options, progress))
}

fn restore_on_pool(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    options: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreReport> {
    let includes: Vec<Pattern> = options
        .includes
        .iter()
        // Cleaned by `restore`: no trailing `/` is left to strip.
        .map(|p| {
            let pattern = p.as_bytes();
            Pattern::new(pattern, !pattern.starts_with(b"/"), false)
                .map_err(|e| Error::InvalidInput(format!("invalid include {e}")))
        })
        .collect::<Result<_>>()?;
    let excludes = crate::backup::Excludes::new(&options.excludes).map_err(Error::InvalidInput)?;

    let started = std::time::Instant::now();
    let phase = |name: &str| tracing::debug!("restore: {name} done at {:?}", started.elapsed());
    // 1. Plan: the nodes to restore.
    let mut items: Vec<Item> = Vec::new();
    // Directories passed over, for the ancestors of what a relative include
    // selects further down (known only once the walk gets there; an
    // absolute include names its ancestors up front).
    let relative = options
        .includes
        .iter()
        .any(|p| !p.as_bytes().starts_with(b"/"));
    let mut passed: HashMap<PathBuf, Item> = HashMap::new();
    let mut matched = false;
    // The first excluded path an include selects (or leads to): an include
    // that matches nothing else was emptied by --exclude, not mistyped.
    let mut excluded_match: Option<PathBuf> = None;
    walk(repo, index, root, &mut |path, node| {
        // Planning a large tree takes a while: Ctrl-C must not wait for it.
        if options.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        if excludes.is_excluded(path, node.kind == NodeKind::Dir) {
            if excluded_match.is_none()
                && !options.includes.is_empty()
                && (matches_include(path, &includes, &options.includes)
                    || is_ancestor_of_include(path, &options.includes))
            {
                excluded_match = Some(path.to_owned());
            }
            return Ok(false);
        }
        let included = matches_include(path, &includes, &options.includes);
        matched |= included;
        let selected = included
            || (node.kind == NodeKind::Dir && is_ancestor_of_include(path, &options.includes));
        let restored = options.target.join(path.strip_prefix("/").unwrap_or(path));
        if selected {
            items.push(Item::new(restored, node));
        } else if node.kind == NodeKind::Dir && relative {
            passed.insert(restored.clone(), Item::new(restored, node));
        }
        Ok(true)
    })?;
    if !options.includes.is_empty() {
        if !matched {
            let given = (options.includes.iter())
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::InvalidInput(match excluded_match {
                Some(path) => format!(
                    "--include {given} selects only what --exclude removes ({} is excluded)",
                    path.display()
                ),
                // A relative include may match below an excluded
                // directory, where the walk never looks.
                None if !options.excludes.is_empty() => format!(
                    "--include {given} matches nothing in the snapshot outside what --exclude removes"
                ),
                None => format!("--include {given} matches nothing in the snapshot"),
            }));
        }
        add_ancestors(&mut items, passed, &options.target);
    }

    // Into a missing or empty target nothing can be in the way; otherwise
    // look at every path (on every core: one stat each).
    let target_empty = fs::read_dir(&options.target).map_or(true, |mut d| d.next().is_none());
    // Every look at what the target holds goes through this, never through
    // a symlink below it; a missing target (a dry run) holds nothing.
    let existing_target = Beneath::open(&options.target).ok();
    if options.overwrite == Overwrite::Never
        && !target_empty
        && let Some(beneath) = &existing_target
    {
        let existing = items
            .par_iter()
            .find_first(|i| i.kind != NodeKind::Dir && beneath.stat(&i.path).is_ok());
        if let Some(item) = existing {
            return Err(Error::InvalidInput(format!(
                "{} already exists; pass --overwrite to replace existing files",
                item.path.display()
            )));
        }
    }

    let kept = if options.overwrite == Overwrite::IfNewer
        && !target_empty
        && let Some(beneath) = &existing_target
    {
        keep_newer(&mut items, beneath)
    } else {
        Vec::new()
    };

    // A file's size is its content's: a node claiming more than its blobs
    // hold (crafted: 1 TiB over one small blob) would have `set_len` make
    // a file of that size (sparse, but counted against quotas, and wrong).
    // Checked before anything is written: the file is restored with what
    // its content holds, and reported as damaged.
    let size_damage = check_sizes(index, &mut items);
    phase("plan");
    if options.dry_run {
        let beneath = existing_target.as_ref();
        let mut report = plan_only(
            repo, index, &items, &kept, options, &includes, &excludes, beneath,
        )?;
        report.kept = kept.len() as u64;
        report.damaged_files = size_damage;
        return Ok(report);
    }
    let mut report = RestoreReport {
        kept: kept.len() as u64,
        ..RestoreReport::default()
    };
    // The target itself not there is the restore failing, not an entry.
    fs::create_dir_all(&options.target)
        .map_err(|e| Error::io(format!("creating {}", options.target.display()), e))?;
    drop(existing_target);
    let beneath = Beneath::open(&options.target)
        .map_err(|e| Error::io(format!("opening {}", options.target.display()), e))?;
    let beneath = &beneath;
    let failures = Failures::new(items.len(), &options.target);
    let is_root = nix::unistd::geteuid().is_root();
    let changed = Changes::new(items.len(), options.overwrite == Overwrite::IfChanged);
    // How entries are judged for `changed`, before anything changes them.
    let judging = dry_run_meta();

    // 2. Skeleton: directories, empty files, links, special files.
    let mut hardlinks: HashMap<(u64, u64), usize> = HashMap::new();
    let mut fresh = vec![false; items.len()];
    // Entries the skeleton did not create (sockets, damaged symlinks): no
    // metadata to apply, and no complaints about a path that is not there.
    let mut absent = vec![false; items.len()];
    // Directories whose place a symlink to a directory holds, kept
    // (`judge_link`): restored through, but none of their metadata applied.
    let mut kept_link = vec![false; items.len()];
    let mut kept_places_found = Vec::new();
    // Files to fill with content, by item.
    let mut content_files: Vec<usize> = Vec::new();
    // Second and later names of hard-linked files, by item (first name,
    // this name): linked once the first name exists.
    let mut links: Vec<(usize, usize)> = Vec::new();
    // Directories known to exist. Items come parents first, so this is
    // nearly always a lookup; calling create_dir_all for every item cost a
    // failing mkdir and a stat per file, on this one thread.
    let mut dirs_made: std::collections::HashSet<&Path> = std::collections::HashSet::new();
    dirs_made.insert(options.target.as_path());
    // Directories that could not be made, with the number of their
    // failure: what belongs below one is skipped and counted there rather
    // than failing (and listed) once per entry.
    let mut dirs_failed: HashMap<&Path, usize> = HashMap::new();
    let below_failed = |at: usize| {
        failures.entries.lock().expect("ok")[at].entries_below += 1;
    };
    let mut parents = Parents::new(beneath);
    for (idx, item) in items.iter().enumerate() {
        if idx % 1024 == 0 && options.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let path: &Path = &item.path;
        if let Some(parent) = path.parent()
            && !dirs_made.contains(parent)
        {
            let at = match dirs_failed.get(parent) {
                Some(&at) => Some(at),
                None => match beneath.make_dirs(parent) {
                    Ok(()) => {
                        dirs_made.insert(parent);
                        None
                    }
                    Err(e) => {
                        let e = Error::io(format!("creating {}", parent.display()), e);
                        let at = failures.record(None, parent, e)?;
                        dirs_failed.insert(parent, at);
                        Some(at)
                    }
                },
            };
            if let Some(at) = at {
                failures.failed[idx].store(true, Ordering::Relaxed);
                below_failed(at);
                if item.kind == NodeKind::Dir {
                    dirs_failed.insert(path, at);
                }
                continue;
            }
        }
        // Where the entry goes: a directory on the way that is not one
        // (swapped for a symlink since it was made) fails the entry.
        let (dir, name) = match parents.of(path) {
            Ok(at) => at,
            Err(e) => {
                let e = Error::io(format!("opening the directory of {}", path.display()), e);
                let at = failures.record(Some(idx), path, e)?;
                if item.kind == NodeKind::Dir {
                    dirs_failed.insert(path, at);
                }
                continue;
            }
        };
        let replacing = |e| Error::io(format!("replacing {}", path.display()), e);
        let remove_existing = || beneath::remove(dir, name, is_root).map_err(replacing);
        let made: Result<()> = match item.kind {
            NodeKind::Dir => {
                // Never follow a symlink where a directory belongs: content
                // would land outside the target.
                let creating = |e| Error::io(format!("creating {}", path.display()), e);
                let private_dir = || {
                    rustix::fs::mkdirat(dir, name, rustix::fs::Mode::from_raw_mode(0o700))
                        .map_err(|e| creating(e.into()))
                };
                let made = match beneath::stat_at(dir, name) {
                    Ok(m) if beneath::is_dir(&m) => {
                        if changed.tracked() {
                            let found = apply_metadata(Meta::At { dir, name }, item, judging);
                            changed.mark(idx, found.changed);
                        }
                        beneath::open_up(dir, name, &m, is_root);
                        Ok(())
                    }
                    Ok(m) if beneath::is_symlink(&m) => {
                        match judge_link(beneath, path, &items, &mut kept_places_found) {
                            Ok(kept) => {
                                kept_link[idx] = true;
                                report.kept_links.push(kept);
                                Ok(())
                            }
                            Err(why) if options.overwrite == Overwrite::Never => {
                                return Err(not_kept_error(path, &why));
                            }
                            Err(why) => {
                                report.warnings.push(replaced_warning(path, &why));
                                changed.mark(idx, changes::REPLACED);
                                remove_existing().and_then(|()| private_dir())
                            }
                        }
                    }
                    Ok(_) if options.overwrite == Overwrite::Never => {
                        return Err(Error::InvalidInput(format!(
                            "{} already exists and is not a directory; pass --overwrite to replace it",
                            path.display()
                        )));
                    }
                    Ok(_) => {
                        changed.mark(idx, changes::REPLACED);
                        remove_existing().and_then(|()| private_dir())
                    }
                    Err(_) => {
                        changed.mark(idx, changes::CREATED);
                        private_dir()
                    }
                };
                match made {
                    Ok(()) => {
                        dirs_made.insert(path);
                    }
                    Err(e) => {
                        let at = failures.record(Some(idx), path, e)?;
                        dirs_failed.insert(path, at);
                    }
                }
                Ok(())
            }
            NodeKind::File => {
                if let Some(key) = item.hardlink() {
                    if let Some(&first) = hardlinks.get(&key) {
                        links.push((first, idx));
                        continue;
                    }
                    hardlinks.insert(key, idx);
                }
                content_files.push(idx);
                Ok(())
            }
            NodeKind::Symlink => {
                // A target no file system holds is damage to this entry
                // alone (what is in its place is left alone), not a
                // failure of the restore.
                let Ok(target) = item.link_target() else {
                    absent[idx] = true;
                    report.damaged_entries.extend(item.damage());
                    continue;
                };
                if keep_special(&changed, idx, (dir, name), item) {
                    continue;
                }
                remove_existing().and_then(|()| {
                    rustix::fs::symlinkat(target, dir, name).map_err(|e| {
                        Error::io(format!("creating symlink {}", path.display()), e.into())
                    })
                })
            }
            // A fifo and a device node the target refuses are alike: the
            // entry is not restored.
            NodeKind::Fifo if keep_special(&changed, idx, (dir, name), item) => continue,
            NodeKind::Fifo => remove_existing().and_then(|()| {
                let mode = rustix::fs::Mode::from_raw_mode(item.mode & 0o7777);
                rustix::fs::mknodat(dir, name, rustix::fs::FileType::Fifo, mode, 0)
                    .map_err(|e| Error::io(format!("creating fifo {}", path.display()), e.into()))
            }),
            NodeKind::Dev | NodeKind::Chardev if keep_special(&changed, idx, (dir, name), item) => {
                continue;
            }
            NodeKind::Dev | NodeKind::Chardev => {
                let kind = if item.kind == NodeKind::Dev {
                    rustix::fs::FileType::BlockDevice
                } else {
                    rustix::fs::FileType::CharacterDevice
                };
                let made = remove_existing().map(|()| {
                    rustix::fs::mknodat(
                        dir,
                        name,
                        kind,
                        rustix::fs::Mode::from_raw_mode(item.mode & 0o7777),
                        item.rare.as_ref().and_then(|r| r.device).unwrap_or(0),
                    )
                });
                match made {
                    Ok(Err(rustix::io::Errno::PERM)) if options.devices_need_root_ok => {
                        absent[idx] = true;
                        report.devices_not_created.push(path.display().to_string());
                        continue;
                    }
                    Ok(r) => r.map_err(|e| {
                        Error::io(format!("creating device node {}", path.display()), e.into())
                    }),
                    Err(e) => Err(e),
                }
            }
            NodeKind::Socket => {
                // Sockets are recreated by the program that owns them.
                absent[idx] = true;
                Ok(())
            }
        };
        if let Err(e) = made {
            failures.record(Some(idx), path, e)?;
        }
    }
    drop(parents);
    drop(dirs_made);
    drop(dirs_failed);
    drop(hardlinks);

    phase("skeleton");
    // When resuming (if-changed) every file is sized first, then what it
    // holds already is compared with the snapshot: unchanged chunks are
    // never fetched.
    let resuming = options.overwrite == Overwrite::IfChanged;
    let groups = if resuming {
        link_groups(&items)
    } else {
        HashMap::new()
    };
    // A file that cannot be created or sized is recorded and gets no
    // content: the pack workers skip it.
    let prepare = |files: Vec<usize>| -> Result<Vec<(usize, bool)>> {
        let prepared: Vec<Option<(usize, bool)>> = files
            .into_par_iter()
            .map_init(
                || Parents::new(beneath),
                |parents, idx| {
                    let item = &items[idx];
                    let names = group_of(&groups, item);
                    let prepared = prepare_file(
                        parents,
                        &item.path,
                        item.size,
                        options.overwrite,
                        names,
                        is_root,
                    );
                    match prepared {
                        Ok(fresh) => Ok(Some((idx, fresh))),
                        Err(e) => failures.record(Some(idx), &item.path, e).map(|_| None),
                    }
                },
            )
            .collect::<Result<_>>()?;
        Ok(prepared.into_iter().flatten().collect())
    };
    let verified: Vec<Vec<bool>> = if resuming {
        // What is there is read and compared first, through a read-only
        // descriptor: a file identical to the snapshot is kept as it is,
        // whatever its write permission (immutable, on a read-only mount,
        // in a read-only directory someone else owns). Only one that
        // differs is opened for writing, or made anew.
        let compared: Vec<Option<Compared>> = content_files
            .par_iter()
            .map_init(
                || Parents::new(beneath),
                |parents, &idx| {
                    let item = &items[idx];
                    let compared =
                        compare_existing(repo, index, parents, item, group_of(&groups, item));
                    let bits = file_changes(parents, item, compared.as_ref());
                    // Judged before anything is changed: rewriting a file
                    // changes its mode and times on the way, and the
                    // metadata pass reaches a hard-linked file by each of
                    // its names, the first of them finding it right.
                    if compared.is_some()
                        && let Ok((dir, name)) = parents.of(&item.path)
                    {
                        let found = apply_metadata(Meta::At { dir, name }, item, judging);
                        changed.mark(idx, found.changed);
                    }
                    changed.mark(idx, bits);
                    compared
                },
            )
            .collect();
        let differing = (content_files.iter().zip(&compared))
            .filter(|(_, c)| !c.as_ref().is_some_and(|c| c.identical))
            .map(|(&idx, _)| idx)
            .collect();
        for (idx, is_fresh) in prepare(differing)? {
            fresh[idx] = is_fresh;
        }
        content_files
            .par_iter()
            .zip(compared)
            .map_init(
                || Parents::new(beneath),
                |parents, (&idx, compared)| {
                    if failures.is_failed(idx) {
                        return Vec::new();
                    }
                    let item = &items[idx];
                    match compared {
                        // Kept, or written in place at the size it had: what
                        // was read holds.
                        Some(c) if c.identical || (!fresh[idx] && c.len == item.size) => c.chunks,
                        // Made anew or resized: what it holds now.
                        _ => existing_chunks_ok(repo, index, parents, &item.path, &item.content)
                            .unwrap_or_default(),
                    }
                },
            )
            .collect()
    } else {
        Vec::new()
    };

    // 3. Content: every write of every blob, sorted by pack and offset,
    // then cut into runs of blobs each fetched with one read.
    let mut wants: Vec<Want> = Vec::new();
    let mut total = 0u64;
    let skipped = AtomicU64::new(0);
    for (file_no, &idx) in content_files.iter().enumerate() {
        if failures.is_failed(idx) {
            continue;
        }
        let item = &items[idx];
        let mut offset = 0u64;
        for (chunk_no, id) in item.content.iter().enumerate() {
            let loc = index.get(id).ok_or_else(|| Error::NotFound {
                object: format!("blob {id} of {} (not in any index)", item.path.display()),
            })?;
            let unchanged = verified
                .get(file_no)
                .and_then(|v| v.get(chunk_no))
                .copied()
                .unwrap_or(false);
            if unchanged {
                skipped.fetch_add(u64::from(loc.raw_len), Ordering::Relaxed);
            } else {
                total += u64::from(loc.raw_len);
                wants.push(Want {
                    pack: loc.pack,
                    offset: loc.offset,
                    length: loc.length,
                    raw_len: loc.raw_len,
                    kind: loc.kind,
                    write: Write1 {
                        file: idx_u32(idx)?,
                        chunk: idx_u32(chunk_no)?,
                        offset,
                    },
                });
            }
            offset += u64::from(loc.raw_len);
        }
    }
    drop(verified);
    wants.par_sort_unstable_by(|a, b| (a.pack, a.offset).cmp(&(b.pack, b.offset)));
    let runs = into_runs(&wants);

    // A file whose content lies in one run (nearly every small file) is
    // created, written and given its metadata by that run's worker through
    // one descriptor: creating it here, reopening it for content and
    // setting metadata by path later cost three path lookups and twice the
    // syscalls per file. Runs rather than whole packs are the workers'
    // tasks so that no core waits long for the last one. Not when resuming:
    // there a file's unchanged chunks are never written, so no worker would
    // finish it.
    let mut owned = vec![false; items.len()];
    if !resuming {
        const NONE: usize = usize::MAX;
        const SEVERAL: usize = usize::MAX - 1;
        let mut run_of = vec![NONE; items.len()];
        for (run_no, run) in runs.iter().enumerate() {
            for w in &wants[run.clone()] {
                let r = &mut run_of[w.write.file as usize];
                *r = if *r == NONE || *r == run_no {
                    run_no
                } else {
                    SEVERAL
                };
            }
        }
        for &idx in &content_files {
            // Its worker creates it empty. (A file of zeros only, whose
            // one blob is written nowhere else, is still owned: the worker
            // opens it even when it writes nothing.)
            owned[idx] = run_of[idx] < SEVERAL;
            fresh[idx] = owned[idx];
        }
        // The other regular files are created (and sized) on every core:
        // for trees of small files, creating inodes is most of a restore's
        // time, nearly all of it in the kernel.
        let others = content_files
            .iter()
            .copied()
            .filter(|&idx| !owned[idx])
            .collect();
        for (idx, is_fresh) in prepare(others)? {
            fresh[idx] = is_fresh;
        }
    }
    phase("create files");
    progress.bytes_total.store(total, Ordering::Relaxed);
    let rules = MetaRules {
        is_root,
        replace_xattrs: options.overwrite != Overwrite::Never,
        only_differing: resuming,
        dry_run: false,
    };
    let content = Content {
        repo,
        index,
        items: &items,
        fresh: &fresh,
        owned: &owned,
        rules,
        written: AtomicU64::new(0),
        failures: &failures,
        damaged: Mutex::new(BTreeMap::new()),
        progress,
        is_root,
    };
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    runs.par_iter().for_each_init(
        || Parents::new(beneath),
        |parents, run| {
            if options.cancel.load(Ordering::Relaxed) || first_error.lock().expect("ok").is_some() {
                return;
            }
            if let Err(e) = content.restore_run(parents, &wants[run.clone()]) {
                first_error.lock().expect("ok").get_or_insert(e);
            }
        },
    );
    drop(wants);
    if let Some(e) = first_error.into_inner().expect("ok") {
        return Err(e);
    }
    if options.cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    report.bytes_written = content.written.load(Ordering::Relaxed);
    let damaged = content.damaged.into_inner().expect("ok");
    report.damaged_files = size_damage;
    report
        .damaged_files
        .extend(damaged.iter().map(|(&idx, (why, missing))| DamagedFile {
            path: items[idx].path.display().to_string(),
            error: why.clone(),
            missing: *missing,
            wrong_size: false,
        }));
    report.bytes_skipped = skipped.load(Ordering::Relaxed);
    // Second names of hard-linked files, now that every first name exists
    // (a first name owned by a pack worker was created just above).
    // A name already linked to its first one (a restore over its own
    // output) is left as it is.
    let mut first_parents = Parents::new(beneath);
    let mut parents = Parents::new(beneath);
    for &(first, idx) in &links {
        let (first_path, path): (&Path, &Path) = (&items[first].path, &items[idx].path);
        if failures.is_failed(first) {
            failures.failed[idx].store(true, Ordering::Relaxed);
            failures.entries.lock().expect("ok").push(FailedEntry {
                path: path.display().to_string(),
                error: format!(
                    "not linked: {}, its other name, was not restored",
                    first_path.display()
                ),
                entries_below: 0,
            });
            continue;
        }
        let linked = (first_parents.of(first_path))
            .and_then(|(from_dir, from)| {
                let (dir, name) = parents.of(path)?;
                if same_file((from_dir, from), (dir, name)) {
                    return Ok(());
                }
                changed.mark(idx, created_or_replaced((dir, name)));
                beneath::remove(dir, name, is_root)?;
                Ok(rustix::fs::linkat(
                    from_dir,
                    from,
                    dir,
                    name,
                    rustix::fs::AtFlags::empty(),
                )?)
            })
            .map_err(|e| Error::io(format!("linking {}", path.display()), e));
        if let Err(e) = linked {
            failures.record(Some(idx), path, e)?;
        }
    }
    phase("content");
    // Content is durable before the restore reports success: one syncfs of
    // the target's file system rather than an fsync per file (which cost
    // more than the writes for trees of small files).
    beneath
        .sync()
        .map_err(|e| Error::io(format!("syncing {}", options.target.display()), e))?;
    phase("sync");
    // Before the metadata: reading a file changes its atime, removing an
    // entry its directory's mtime.
    if options.verify {
        // Files known to be damaged or not written are reported already,
        // not re-read.
        let intact = |idx: &usize| !damaged.contains_key(idx) && !failures.is_failed(*idx);
        report.verified_files =
            verify_restored(repo, index, beneath, &items, &content_files, intact)?;
        phase("verify");
    }
    if !options.delete_within.is_empty() {
        let kept_paths = kept_places(&kept_places_found);
        let deleted = delete_extras(
            &items,
            &kept,
            options,
            &includes,
            &excludes,
            Some(beneath),
            &kept_paths,
            Some(&failures),
            &mut report.warnings,
        )?;
        report.deleted = deleted.len() as u64;
        report.deleted_paths = deleted;
        phase("delete");
    }

    // 4. Metadata: everything but directories (and files their pack worker
    // finished), then directories deepest first.
    let left = |idx: usize| absent[idx] || failures.is_failed(idx);
    let finish = |parents: &mut Parents<'_>, idx: usize, item: &Item, step: Step| -> Result<()> {
        match step(parents, item, rules) {
            Ok(applied) => {
                // Files and directories had theirs judged before anything
                // changed them (or what they hold).
                if !matches!(item.kind, NodeKind::File | NodeKind::Dir) {
                    changed.mark(idx, applied.changed);
                }
                failures.metadata(&item.path, applied.problems);
            }
            Err(e) => {
                failures.record(Some(idx), &item.path, e)?;
            }
        }
        Ok(())
    };
    items
        .par_iter()
        .enumerate()
        // A file if-changed found right, content and metadata, when it
        // read it (before changing anything) is not read again: a second
        // name of it shares its inode.
        .filter(|&(idx, i)| {
            let right_already = i.kind == NodeKind::File && changed.untouched(idx);
            i.kind != NodeKind::Dir && !owned[idx] && !left(idx) && !right_already
        })
        .try_for_each_init(
            || Parents::new(beneath),
            |parents, (idx, item)| finish(parents, idx, item, metadata_at),
        )?;
    // Files' inode flags once every file has the rest: `+i` on one name of
    // a hard-linked file would refuse the metadata of its other names.
    items
        .par_iter()
        .enumerate()
        .filter(|&(idx, i)| flags::deferred(i, rules) && !left(idx))
        .try_for_each_init(
            || Parents::new(beneath),
            |parents, (idx, item)| finish(parents, idx, item, flags::at),
        )?;
    let mut dirs: Vec<(usize, &Item)> = (items.iter().enumerate())
        .filter(|&(idx, i)| i.kind == NodeKind::Dir && !left(idx) && !kept_link[idx])
        .collect();
    dirs.sort_by_key(|(_, i)| std::cmp::Reverse(i.path.components().count()));
    let mut parents = Parents::new(beneath);
    for (idx, item) in dirs {
        finish(&mut parents, idx, item, metadata_at)?;
    }
    phase("metadata");
    // What was restored: an entry the target refused is not counted.
    for (idx, item) in items.iter().enumerate() {
        if left(idx) {
            continue;
        }
        match item.kind {
            NodeKind::Dir => report.dirs += 1,
            NodeKind::File => report.files += 1,
            _ => report.others += 1,
        }
    }
    report.failed_entries = failures.entries.into_inner().expect("ok");
    report.failed_entries.sort_by(|a, b| a.path.cmp(&b.path));
    report.changed_entries = changed.list(items.iter().map(|i| &*i.path));
    Ok(report)
}

/// Takes out of `items` every entry the target holds as new as the
/// snapshot's or newer (`Overwrite::IfNewer`), and every one where the
/// target has a directory and the snapshot something else, and returns
/// them: they are not restored, but they are the snapshot's names still,
/// which `--delete` must not remove. A directory of the snapshot is kept
/// (with all below it) only where the target has a newer non-directory.
fn keep_newer(items: &mut Vec<Item>, beneath: &Beneath) -> Vec<Item> {
    let newer: Vec<bool> = items
        .par_iter()
        .map(|item| {
            let Ok(stat) = beneath.stat(&item.path) else {
                return false;
            };
            let nano = u32::try_from(stat.st_mtime_nsec).unwrap_or(0);
            // `st_mtime` is i32 on some targets.
            #[allow(clippy::useless_conversion)]
            let mtime = filetime::FileTime::from_unix_time(stat.st_mtime.into(), nano);
            let as_new = mtime >= file_time(item.mtime);
            match item.kind {
                // A directory is restored into; a symlink in its place is
                // judged as a kept link or replaced; anything else there
                // as new or newer is kept, and all the snapshot has below.
                NodeKind::Dir => !beneath::is_dir(&stat) && !beneath::is_symlink(&stat) && as_new,
                // A directory's own mtime says nothing of what it holds
                // (a file edited today in an old directory): never
                // replaced by something else.
                _ if beneath::is_dir(&stat) => true,
                _ => as_new,
            }
        })
        .collect();
    // Below a directory kept as something else, nothing can be restored.
    let kept_dirs: std::collections::HashSet<&Path> = (items.iter().zip(&newer))
        .filter(|(item, keep)| **keep && item.kind == NodeKind::Dir)
        .map(|(item, _)| &*item.path)
        .collect();
    let newer: Vec<bool> = (items.iter().zip(&newer))
        .map(|(item, &keep)| {
            keep || (!kept_dirs.is_empty()
                && item.path.ancestors().skip(1).any(|a| kept_dirs.contains(a)))
        })
        .collect();
    let mut newer = newer.into_iter();
    let (kept, restored) = std::mem::take(items)
        .into_iter()
        .partition(|_| newer.next().unwrap_or(false));
    *items = restored;
    kept
}

/// Gives every file in `items` whose size differs from its content's (the
/// sum of its blobs' plain lengths in the index) its content's size, and
/// returns them as damaged files. A file with a blob the index lacks is
/// left as it is: the restore fails on that blob as missing.
fn check_sizes(index: &Index, items: &mut [Item]) -> Vec<DamagedFile> {
    items
        .par_iter_mut()
        .filter(|item| item.kind == NodeKind::File)
        .filter_map(|item| {
            let len = item.content.iter().try_fold(0u64, |len, id| {
                Some(len + u64::from(index.get(id)?.raw_len))
            })?;
            (len != item.size).then(|| {
                let error = content_size_mismatch(item.size, len);
                item.size = len;
                DamagedFile {
                    path: item.path.display().to_string(),
                    error,
                    missing: false,
                    wrong_size: true,
                }
            })
        })
        .collect()
}

/// What is wrong with a file node whose `size` is not the `content_len`
/// its blobs add up to.
pub(crate) fn content_size_mismatch(size: u64, content_len: u64) -> String {
    format!("its size in the snapshot ({size} bytes) is not its content's ({content_len} bytes)")
}

/// Reads every restored file back and compares each chunk with the id the
/// snapshot gives it (`restore --verify`); returns how many files passed.
/// What was written mostly comes back from the page cache: this catches a
/// restore that went wrong on the way to the file system, not media errors
/// the disk has yet to show.
fn verify_restored(
    repo: &Repository,
    index: &Index,
    beneath: &Beneath,
    items: &[Item],
    content_files: &[usize],
    selected: impl Fn(&usize) -> bool + Sync,
) -> Result<u64> {
    content_files
        .par_iter()
        .filter(|idx| selected(idx))
        .map_init(
            || Parents::new(beneath),
            |parents, &idx| {
                let item = &items[idx];
                let damaged = |reason: String| Error::Corrupt {
                    object: format!("restored file {}", item.path.display()),
                    reason,
                };
                let size = (parents.of(&item.path))
                    .and_then(|(dir, name)| beneath::stat_at(dir, name))
                    .map_err(|e| Error::io(format!("verifying {}", item.path.display()), e))?
                    .st_size
                    .cast_unsigned();
                if size != item.size {
                    return Err(damaged(format!(
                        "{size} bytes, the snapshot has {}",
                        item.size
                    )));
                }
                let ok = existing_chunks_ok(repo, index, parents, &item.path, &item.content)
                    .ok_or_else(|| damaged("cannot be read back".into()))?;
                match ok.iter().position(|good| !good) {
                    Some(n) => Err(damaged(format!("chunk {n} differs from the snapshot"))),
                    None => Ok(1),
                }
            },
        )
        .sum()
}

/// What a restore would do, changing nothing.
#[allow(clippy::too_many_arguments)]
fn plan_only(
    repo: &Repository,
    index: &Index,
    items: &[Item],
    kept: &[Item],
    options: &RestoreOptions,
    includes: &[Pattern],
    excludes: &crate::backup::Excludes,
    beneath: Option<&Beneath>,
) -> Result<RestoreReport> {
    let mut report = RestoreReport::default();
    let files: Vec<(usize, &Item)> = (items.iter().enumerate())
        .filter(|(_, i)| i.kind == NodeKind::File)
        .collect();
    report.dirs = items.iter().filter(|i| i.kind == NodeKind::Dir).count() as u64;
    report.files = files.len() as u64;
    // A hard-linked file's further names are linked, not written: only
    // its first name counts toward the bytes, as in a real restore.
    let mut first_names = std::collections::HashSet::new();
    let files: Vec<(usize, &Item)> = files
        .into_iter()
        .filter(|(_, i)| i.hardlink().is_none_or(|key| first_names.insert(key)))
        .collect();
    let changed = Changes::new(items.len(), options.overwrite == Overwrite::IfChanged);
    let groups = if options.overwrite == Overwrite::IfChanged {
        link_groups(items)
    } else {
        HashMap::new()
    };
    report.damaged_entries = items.iter().filter_map(Item::damage).collect();
    report.others = items
        .iter()
        .filter(|i| !matches!(i.kind, NodeKind::Dir | NodeKind::File | NodeKind::Socket))
        .count() as u64
        - report.damaged_entries.len() as u64;
    let sizes: Vec<(u64, u64)> = files
        .par_iter()
        .map_init(
            || beneath.map(Parents::new),
            |parents, &(idx, item)| {
                let content = &item.content;
                // As the restore: a file identical to the snapshot is kept, one
                // that differs is written in place where it can be (and then
                // only the chunks that differ), else made anew.
                let ok = match parents {
                    Some(parents) if options.overwrite == Overwrite::IfChanged => {
                        let names = group_of(&groups, item);
                        let compared = compare_existing(repo, index, parents, item, names);
                        changed.mark(idx, file_changes(parents, item, compared.as_ref()));
                        match compared {
                            Some(c) if c.identical || resumable(parents, &item.path, names) => {
                                c.chunks
                            }
                            _ => Vec::new(),
                        }
                    }
                    _ => Vec::new(),
                };
                let (mut write, mut skip) = (0, 0);
                for (n, id) in content.iter().enumerate() {
                    let len = index.get(id).map_or(0, |l| u64::from(l.raw_len));
                    if ok.get(n).copied().unwrap_or(false) {
                        skip += len;
                    } else {
                        write += len;
                    }
                }
                (write, skip)
            },
        )
        .collect();
    report.bytes_written = sizes.iter().map(|(w, _)| w).sum();
    report.bytes_skipped = sizes.iter().map(|(_, s)| s).sum();
    if let Some(beneath) = beneath
        && changed.tracked()
    {
        planned_changes(items, &changed, beneath, &first_names_of(items));
    }
    // Symlinks where directories belong, judged as the restore judges them.
    let mut kept_found = Vec::new();
    for (idx, item) in (items.iter().enumerate()).filter(|(_, i)| i.kind == NodeKind::Dir) {
        let Some(beneath) = beneath else { break };
        if !beneath
            .stat(&item.path)
            .is_ok_and(|m| beneath::is_symlink(&m))
        {
            continue;
        }
        match judge_link(beneath, &item.path, items, &mut kept_found) {
            Ok(kept_link) => report.kept_links.push(kept_link),
            Err(why) if options.overwrite == Overwrite::Never => {
                return Err(not_kept_error(&item.path, &why));
            }
            Err(why) => {
                changed.mark(idx, changes::REPLACED);
                report.warnings.push(format!(
                    "would replace the symlink {} with a directory, not kept: {why}",
                    item.path.display()
                ));
            }
        }
    }
    if !options.delete_within.is_empty() {
        report.deleted_paths = delete_extras(
            items,
            kept,
            options,
            includes,
            excludes,
            beneath,
            &kept_places(&kept_found),
            None,
            &mut report.warnings,
        )?;
        report.deleted = report.deleted_paths.len() as u64;
    }
    report.changed_entries = changed.list(items.iter().map(|i| &*i.path));
    Ok(report)
}

/// Whether the symlink at `path`, where the snapshot has a directory, is
/// kept and the directory restored through it ([`beneath`]: trusted, and
/// leading to a directory inside the target); else why not.
/// Not where the snapshot has entries of its own, nor where another kept
/// link is or leads: two entries of the snapshot would then land on one
/// name (one file lost, a restore that never settles), a later entry
/// could replace where the link leads, and `--delete` would judge what was
/// restored through the link against another directory of the snapshot.
/// `kept` holds the links kept so far, each with where it leads; a link
/// kept is added.
fn judge_link(
    beneath: &Beneath,
    path: &Path,
    items: &[Item],
    kept: &mut Vec<(PathBuf, PathBuf)>,
) -> std::result::Result<KeptLink, String> {
    let (text, led_to) = match beneath.followed_link(path) {
        Ok(found) => found,
        Err(e) if beneath::is_not_followed(&e) => return Err(e.to_string()),
        Err(e) => return Err(format!("it leads to no directory inside the target ({e})")),
    };
    let overlap = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    if let Some((other, _)) = kept
        .iter()
        .find(|(link, to)| overlap(to, &led_to) || overlap(link, &led_to))
    {
        return Err(format!(
            "it leads to {}, where the kept symlink {} is or leads too",
            led_to.display(),
            other.display()
        ));
    }
    if let Some(own) = items
        .iter()
        .find(|i| !i.path.starts_with(path) && i.path.starts_with(&led_to))
    {
        return Err(format!(
            "it leads to {}, where the snapshot has {} of its own",
            led_to.display(),
            own.path.display()
        ));
    }
    kept.push((path.to_owned(), led_to));
    Ok(KeptLink {
        path: path.display().to_string(),
        target: text.to_string_lossy().into_owned(),
    })
}

/// The places `--delete` leaves alone for kept links: each link's path
/// and where it leads.
fn kept_places(kept: &[(PathBuf, PathBuf)]) -> std::collections::HashSet<&Path> {
    kept.iter()
        .flat_map(|(link, to)| [link.as_path(), to.as_path()])
        .collect()
}

/// Of each hard-link group, the item whose name is made first (the
/// others are linked to it).
fn first_names_of(items: &[Item]) -> HashMap<(u64, u64), usize> {
    let mut first = HashMap::new();
    for (idx, item) in items.iter().enumerate() {
        if let Some(key) = item.hardlink() {
            first.entry(key).or_insert(idx);
        }
    }
    first
}

/// A dry run's if-changed judgement of every entry but files' content
/// (judged with the bytes to write): what is not there, what is there as
/// another kind (or another symlink, device, hard link) and would be
/// replaced, and whose metadata differs.
fn planned_changes(
    items: &[Item],
    changed: &Changes,
    beneath: &Beneath,
    first_names: &HashMap<(u64, u64), usize>,
) {
    let rules = dry_run_meta();
    items.par_iter().enumerate().for_each_init(
        || (Parents::new(beneath), Parents::new(beneath)),
        |(parents, first_parents), (idx, item)| {
            let Ok(at) = parents.of(&item.path) else {
                changed.mark(idx, changes::CREATED);
                return;
            };
            let Ok(stat) = beneath::stat_at(at.0, at.1) else {
                changed.mark(idx, changes::CREATED);
                return;
            };
            let same_kind = match item.kind {
                // A symlink kept as the directory is judged (and reported)
                // apart; its metadata is not the restore's to set.
                NodeKind::Dir if beneath::is_symlink(&stat) => return,
                NodeKind::Dir => beneath::is_dir(&stat),
                NodeKind::File => match item.hardlink().and_then(|k| first_names.get(&k)) {
                    Some(&first) if first != idx => first_parents
                        .of(&items[first].path)
                        .is_ok_and(|first| same_file(first, at)),
                    // Judged with its content.
                    _ => beneath::is_file(&stat),
                },
                NodeKind::Socket => return,
                _ => same_special(at, &stat, item),
            };
            if !same_kind {
                changed.mark(idx, changes::REPLACED);
                return;
            }
            // A further name of a hard-linked file: its metadata is its
            // first name's, judged there.
            if item.kind == NodeKind::File
                && item
                    .hardlink()
                    .and_then(|k| first_names.get(&k))
                    .is_some_and(|&first| first != idx)
            {
                return;
            }
            let applied = apply_metadata(
                Meta::At {
                    dir: at.0,
                    name: at.1,
                },
                item,
                rules,
            );
            changed.mark(idx, applied.changed);
        },
    );
}

/// What an if-changed restore changes in the file `item` given what it
/// found there ([`compare_existing`]).
fn file_changes(parents: &mut Parents<'_>, item: &Item, compared: Option<&Compared>) -> u16 {
    match compared {
        Some(c) if c.identical => 0,
        Some(c) => {
            let content = if c.chunks.iter().all(|&ok| ok) {
                0
            } else {
                changes::CONTENT
            };
            content | if c.len == item.size { 0 } else { changes::SIZE }
        }
        // Not there, or not a file it may keep (another kind, a hard
        // link to something outside the snapshot).
        None => parents
            .of(&item.path)
            .map_or(changes::CREATED, created_or_replaced),
    }
}

/// Whether something is in the way at `at`, to be replaced, or nothing.
fn created_or_replaced(at: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr)) -> u16 {
    match beneath::stat_at(at.0, at.1) {
        Ok(_) => changes::REPLACED,
        Err(_) => changes::CREATED,
    }
}

/// With if-changed ([`Changes`] tracked): whether the symlink, fifo or
/// device node already at `at` is the snapshot's, and is kept as it is;
/// else it is marked as created or replaced, as the restore will.
fn keep_special(
    changed: &Changes,
    idx: usize,
    at: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
    item: &Item,
) -> bool {
    if !changed.tracked() {
        return false;
    }
    match beneath::stat_at(at.0, at.1) {
        Ok(stat) if same_special(at, &stat, item) => true,
        _ => {
            changed.mark(idx, created_or_replaced(at));
            false
        }
    }
}

/// Whether `stat` (of the entry at `at`, not followed) is the snapshot's
/// symlink (same text), fifo or device node (same kind and number).
fn same_special(
    at: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
    stat: &rustix::fs::Stat,
    item: &Item,
) -> bool {
    use rustix::fs::FileType;
    let kind = FileType::from_raw_mode(stat.st_mode);
    let device = || item.rare.as_ref().and_then(|r| r.device).unwrap_or(0) == stat.st_rdev;
    match item.kind {
        NodeKind::Symlink if kind == FileType::Symlink => item.link_target().is_ok_and(|want| {
            rustix::fs::readlinkat(at.0, at.1, Vec::new())
                .is_ok_and(|text| text.as_bytes() == want.as_bytes())
        }),
        NodeKind::Fifo => kind == FileType::Fifo,
        NodeKind::Dev => kind == FileType::BlockDevice && device(),
        NodeKind::Chardev => kind == FileType::CharacterDevice && device(),
        _ => false,
    }
}

/// The refusal, without `--overwrite`, of a symlink not kept.
fn not_kept_error(path: &Path, why: &str) -> Error {
    Error::InvalidInput(format!(
        "{} already exists, a symlink not kept as a directory ({why}); pass --overwrite to replace it",
        path.display()
    ))
}

fn replaced_warning(path: &Path, why: &str) -> String {
    format!(
        "replaced the symlink {} with a directory, not kept: {why}",
        path.display()
    )
}

/// Removes, from each restored directory at or below `delete_within` that
/// the includes select whole, the entries the snapshot does not hold, and
/// returns their paths; with no `failures` to record what cannot be
/// removed in (a dry run), only returns them. No target (a dry run into
/// one not there yet) holds nothing to remove. The snapshot's entries are
/// `items` and those `kept` as the target has them (`if-newer`). Nothing
/// is judged at or below a symlink kept as a directory (`kept_links`):
/// what it leads to is another directory's, maybe restored under its own
/// name; a warning per link says so.
#[allow(clippy::too_many_arguments)]
fn delete_extras(
    items: &[Item],
    kept: &[Item],
    options: &RestoreOptions,
    includes: &[Pattern],
    excludes: &crate::backup::Excludes,
    beneath: Option<&Beneath>,
    kept_links: &std::collections::HashSet<&Path>,
    failures: Option<&Failures>,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>> {
    let Some(beneath) = beneath else {
        return Ok(Vec::new());
    };
    let mut not_judged = std::collections::BTreeSet::new();
    // Mount points met, left alone (the target's own file system only).
    let mut mounts = std::collections::BTreeSet::new();
    let is_root = nix::unistd::geteuid().is_root();
    let mut expected: HashMap<&Path, std::collections::HashSet<&std::ffi::OsStr>> = HashMap::new();
    for item in items.iter().chain(kept) {
        if let (Some(parent), Some(name)) = (item.path.parent(), item.path.file_name()) {
            expected.entry(parent).or_default().insert(name);
        }
    }
    let mut deleted = Vec::new();
    // The target itself too, judged where the snapshot's root is within
    // `delete_within`: `SNAPSHOT:DIR` makes DIR's entries the target's.
    let restored_dirs = (items.iter().enumerate())
        .filter(|(_, item)| item.kind == NodeKind::Dir)
        .map(|(idx, item)| (Some(idx), &*item.path));
    for (idx, dir_path) in std::iter::once((None, &*options.target)).chain(restored_dirs) {
        if idx.is_some_and(|idx| failures.is_some_and(|f| f.is_failed(idx))) {
            continue;
        }
        let Ok(rel) = dir_path.strip_prefix(&options.target) else {
            continue;
        };
        let in_snapshot = Path::new("/").join(rel);
        let within = options
            .delete_within
            .iter()
            .any(|root| in_snapshot.starts_with(root));
        if !within || !matches_include(&in_snapshot, includes, &options.includes) {
            continue;
        }
        if !kept_links.is_empty()
            && let Some(link) = dir_path.ancestors().find(|dir| kept_links.contains(dir))
        {
            not_judged.insert(link.to_owned());
            continue;
        }
        let listing = |e| Error::io(format!("listing {}", dir_path.display()), e);
        // Opened never through a symlink, on the way or in its place: one
        // swapped in since the skeleton made the directory is an entry not
        // restored, and what it points to is never listed, let alone
        // emptied. A directory not there yet holds nothing to remove, and
        // a dry run has not replaced a symlink yet.
        let opened = beneath
            .dir(dir_path, true)
            .and_then(|fd| Ok(rustix::fs::Dir::new(fd)?));
        let mut listed = match (opened, failures) {
            (Ok(listed), _) => listed,
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => continue,
            (Err(e), Some(failures)) => {
                failures.record(idx, dir_path, listing(e))?;
                continue;
            }
            (Err(e), None) if beneath::is_not_followed(&e) => {
                continue;
            }
            (Err(e), None) => return Err(listing(e)),
        };
        let mut names = Vec::new();
        for entry in listed.by_ref() {
            match (entry, failures) {
                (Ok(entry), _) => {
                    let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
                    if name != "." && name != ".." {
                        names.push(name.to_owned());
                    }
                }
                (Err(e), Some(failures)) => {
                    failures.record(None, dir_path, listing(e.into()))?;
                    break;
                }
                (Err(e), None) => return Err(listing(e.into())),
            }
        }
        let dir = listed.fd().map_err(|e| listing(e.into()))?;
        // A file system mounted where the snapshot has a directory (/proc
        // in a restore of / to /) holds what the snapshot never saw.
        if dir_path != options.target
            && let Ok((parent, _)) = beneath.parent(dir_path)
            && rustix::fs::fstat(dir).ok().is_some_and(|me| {
                beneath::is_mount_point(std::os::fd::AsFd::as_fd(&parent), &me).unwrap_or(false)
            })
        {
            mounts.insert(dir_path.to_owned());
            continue;
        }
        for name in names {
            if expected
                .get(dir_path)
                .is_some_and(|names| names.contains(name.as_os_str()))
            {
                continue;
            }
            let path = dir_path.join(&name);
            let stat = beneath::stat_at(dir, &name).ok();
            let is_dir = stat.as_ref().is_some_and(beneath::is_dir);
            if excludes.is_excluded(&in_snapshot.join(&name), is_dir) {
                continue;
            }
            if is_dir
                && let Some(stat) = &stat
                && beneath::is_mount_point(dir, stat).unwrap_or(false)
            {
                mounts.insert(path);
                continue;
            }
            if kept_links.contains(path.as_path()) {
                not_judged.insert(path.clone());
                continue;
            }
            if let Some(failures) = failures {
                tracing::info!("deleting {}", path.display());
                if let Err(e) = beneath::remove(dir, &name, is_root) {
                    let e = Error::io(
                        format!(
                            "removing {} (the snapshot does not hold it)",
                            path.display()
                        ),
                        e,
                    );
                    failures.record(None, &path, e)?;
                    continue;
                }
            }
            deleted.push(path.to_string_lossy().into_owned());
        }
    }
    warnings.extend(mounts.into_iter().map(|at| {
        format!(
            "--delete left {} alone: another file system is mounted there",
            at.display()
        )
    }));
    warnings.extend(not_judged.into_iter().map(|link| {
        format!(
            "--delete judged nothing at or below {}: a symlink kept as a directory is or leads there",
            link.display()
        )
    }));
    Ok(deleted)
}

/// What the target refused during a restore, shared by every phase.
/// One entry refused (an immutable file, a directory this user cannot
/// write, a device node as non-root) costs that entry, not the restore:
/// a restore in place stopped at the first one left every other damaged
/// file in the target as it was.
struct Failures {
    /// By item: not created, or its content not (all) written; nothing
    /// more is done with it.
    failed: Vec<AtomicBool>,
    entries: Mutex<Vec<FailedEntry>>,
    /// The restore's target, where a refusal is looked into.
    target: PathBuf,
}

impl Failures {
    fn new(items: usize, target: &Path) -> Self {
        Failures {
            failed: (0..items).map(|_| AtomicBool::new(false)).collect(),
            entries: Mutex::new(Vec::new()),
            target: target.to_owned(),
        }
    }

    fn is_failed(&self, idx: usize) -> bool {
        self.failed[idx].load(Ordering::Relaxed)
    }

    /// Records that creating, replacing or writing `path` (item `idx`, or
    /// a directory above the items) failed with `e`, and returns the
    /// record's number; fails with `e` itself when it must stop the
    /// restore ([`stops_restore`]).
    fn record(&self, idx: Option<usize>, path: &Path, e: Error) -> Result<usize> {
        if stops_restore(&e) {
            return Err(e);
        }
        // The path leads the line: the error's own mention of it goes.
        let error = match &e {
            Error::Io { context, cause } => {
                let context = context.replace(&format!(" {}", path.display()), "");
                match (cause.raw_os_error() == Some(libc::EPERM))
                    .then(|| flags::refusal_hint(&self.target, path))
                    .flatten()
                {
                    Some(hint) => format!("{context}: {cause}; {hint}"),
                    None => format!("{context}: {cause}"),
                }
            }
            e => e.to_string(),
        };
        if let Some(idx) = idx {
            self.failed[idx].store(true, Ordering::Relaxed);
        }
        let mut entries = self.entries.lock().expect("ok");
        entries.push(FailedEntry {
            path: path.display().to_string(),
            error,
            entries_below: 0,
        });
        Ok(entries.len() - 1)
    }

    /// Records metadata of `path` not applied (the entry itself is there).
    fn metadata(&self, path: &Path, problems: Vec<String>) {
        if problems.is_empty() {
            return;
        }
        self.entries.lock().expect("ok").push(FailedEntry {
            path: path.display().to_string(),
            error: format!("restored without its {}", problems.join("; ")),
            entries_below: 0,
        });
    }
}

/// Whether an error while restoring one entry stops the whole restore:
/// anything but a local file operation (the store failing, damage,
/// Ctrl-C), and among those a full disk or quota (every further write
/// would fail too) and exhausted process or system resources. Everything
/// else (EPERM, EACCES, EROFS, EEXIST, EIO, ...) is about the entry.
fn stops_restore(e: &Error) -> bool {
    match e {
        Error::Io { cause, .. } => matches!(
            cause.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
        ),
        _ => true,
    }
}

/// Every name this restore gives each hard-linked file, by (device, inode)
/// in the snapshot: the first in walk order is written, the others are
/// linked to it.
fn link_groups(items: &[Item]) -> HashMap<(u64, u64), Vec<&Path>> {
    let mut groups: HashMap<(u64, u64), Vec<&Path>> = HashMap::new();
    for item in items.iter().filter(|i| i.kind == NodeKind::File) {
        if let Some(key) = item.hardlink() {
            groups.entry(key).or_default().push(&item.path);
        }
    }
    groups
}

/// The names of `item`'s link group (itself among them), or none.
fn group_of<'a>(groups: &'a HashMap<(u64, u64), Vec<&Path>>, item: &Item) -> &'a [&'a Path] {
    item.hardlink()
        .and_then(|key| groups.get(&key))
        .map_or(&[][..], Vec::as_slice)
}

/// Creates or resizes a file; returns whether it was created empty (so
/// unwritten ranges are holes reading as zeros). `names` are the names
/// the restore gives it (its link group), when it is hard-linked.
fn prepare_file(
    parents: &mut Parents<'_>,
    path: &Path,
    size: u64,
    overwrite: Overwrite,
    names: &[&Path],
    is_root: bool,
) -> Result<bool> {
    // A file restored read-only (0444) cannot be opened to write as a user
    // other than root: it is made anew instead, as files that are not
    // there. Resuming was refused outright ("Permission denied").
    // A file with hard links beyond `names` is made anew too: writing
    // through it would change the other names, which may lie outside the
    // target (a restore's own second names are linked again afterwards).
    let keep = overwrite == Overwrite::IfChanged && resumable(parents, path, names);
    let (dir, name) = parents.of(path).map_err(|e| in_dir_of(path, e))?;
    let opening = |e| Error::io(format!("opening {}", path.display()), e);
    let f = if keep {
        use std::os::unix::fs::PermissionsExt;
        let f = beneath::open_write(dir, name).map_err(opening)?;
        // Owner-only while the snapshot's content goes in, as a new file
        // is: a secret now 0600 was written under the old file's 0644 and,
        // if stopped, stayed readable. Its mode is applied at the end. Not
        // this user's file (a group-writable one): it keeps its mode.
        if let Err(e) = f.set_permissions(fs::Permissions::from_mode(0o600)) {
            tracing::debug!(
                "cannot make {} private for the restore: {e}",
                path.display()
            );
        }
        f
    } else {
        create_file(dir, name, path, is_root)?
    };
    f.set_len(size)
        .map_err(|e| Error::io(format!("resizing {}", path.display()), e))?;
    Ok(!keep)
}

/// Creates the file `name` in `dir` (`path`) anew, replacing what is in
/// the way ([`beneath::create_file`]). Something still there after a
/// failure is what could not be removed: the error says so, as a
/// directory tree too deep to remove (EMFILE) was reported as "creating".
fn create_file(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    path: &Path,
    is_root: bool,
) -> Result<fs::File> {
    beneath::create_file(dir, name, is_root).map_err(|e| {
        let doing = if beneath::stat_at(dir, name).is_ok() {
            "removing what is in the way of the snapshot's file at"
        } else {
            "creating"
        };
        Error::io(format!("{doing} {}", path.display()), e)
    })
}

/// The error of a directory on the way to `path` that cannot be opened
/// (not there, or no longer a directory: a symlink is never followed).
fn in_dir_of(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("opening the directory of {}", path.display()), e)
}

/// Whether an if-changed restore keeps the existing file at `path` and
/// writes only the chunks that differ; any other file is made anew (see
/// [`prepare_file`]). A file with other hard links is kept only when each
/// of them is one of `names`, the names the restore links to this file
/// (its own output, restored again): writing through it then changes
/// nothing but the restore's own file.
fn resumable(parents: &mut Parents<'_>, path: &Path, names: &[&Path]) -> bool {
    let beneath = parents.beneath();
    parents.of(path).is_ok_and(|(dir, name)| {
        beneath::stat_at(dir, name).is_ok_and(|stat| keepable(beneath, &stat, names))
            && rustix::fs::accessat(
                dir,
                name,
                rustix::fs::Access::WRITE_OK,
                rustix::fs::AtFlags::empty(),
            )
            .is_ok()
    })
}

/// Whether the file `stat` describes may be kept by an if-changed restore
/// whose names for it are `names` ([`resumable`]), write access aside: a
/// regular file all of whose hard links are among `names`.
fn keepable(beneath: &Beneath, stat: &rustix::fs::Stat, names: &[&Path]) -> bool {
    let links_within = || {
        let own = names.iter().filter(|name| {
            beneath
                .stat(name)
                .is_ok_and(|m| (m.st_dev, m.st_ino) == (stat.st_dev, stat.st_ino))
        });
        // `st_nlink` is u32 on some targets (aarch64).
        #[allow(clippy::useless_conversion)]
        let links = u64::from(stat.st_nlink);
        own.count() as u64 == links
    };
    beneath::is_file(stat) && (stat.st_nlink == 1 || links_within())
}

/// What an if-changed restore found in a file already there.
struct Compared {
    /// By chunk: whether the file holds it already.
    chunks: Vec<bool>,
    /// The file's length.
    len: u64,
    /// Whether it is the snapshot's file: every chunk there, and nothing
    /// more.
    identical: bool,
}

/// Reads the file at `item`'s path, if one the restore may keep
/// ([`keepable`]), and compares it with the snapshot's. Opened read-only:
/// a file that needs no writing is never opened for writing.
fn compare_existing(
    repo: &Repository,
    index: &Index,
    parents: &mut Parents<'_>,
    item: &Item,
    names: &[&Path],
) -> Option<Compared> {
    let beneath = parents.beneath();
    let mut f = open_to_read(parents, &item.path).ok()?;
    let stat = rustix::fs::fstat(&f).ok()?;
    if !keepable(beneath, &stat, names) {
        return None;
    }
    let len = file_len(&stat);
    let chunks = chunks_ok(repo, index, &mut f, &item.content)?;
    Some(Compared {
        identical: len == item.size && chunks.iter().all(|&ok| ok),
        len,
        chunks,
    })
}

fn file_len(stat: &rustix::fs::Stat) -> u64 {
    u64::try_from(stat.st_size).unwrap_or(0)
}

/// Opens an existing file below the target to read it back
/// ([`beneath::open_read`]).
fn open_to_read(parents: &mut Parents<'_>, path: &Path) -> std::io::Result<fs::File> {
    let (dir, name) = parents.of(path)?;
    beneath::open_read(dir, name)
}

/// Whether two entries (each a directory and a name in it) are names of
/// one file (neither followed if a symlink).
fn same_file(
    a: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
    b: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
) -> bool {
    match (beneath::stat_at(a.0, a.1), beneath::stat_at(b.0, b.1)) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
}

/// For if-changed restores: which chunks of an existing file already hold
/// the right content.
fn existing_chunks_ok(
    repo: &Repository,
    index: &Index,
    parents: &mut Parents<'_>,
    path: &Path,
    content: &[BlobId],
) -> Option<Vec<bool>> {
    chunks_ok(repo, index, &mut open_to_read(parents, path).ok()?, content)
}

/// Which chunks of `content` the file `f` holds, read from its start.
fn chunks_ok(
    repo: &Repository,
    index: &Index,
    f: &mut fs::File,
    content: &[BlobId],
) -> Option<Vec<bool>> {
    let mut out = Vec::with_capacity(content.len());
    for id in content {
        let len = index.get(id)?.raw_len as usize;
        let mut buf = vec![0u8; len];
        if f.read_exact(&mut buf).is_err() {
            out.push(false);
            continue;
        }
        out.push(repo.key().blob_id(&buf) == *id);
    }
    Some(out)
}

/// What the pack workers share while restoring content.
struct Content<'a> {
    repo: &'a Repository,
    index: &'a Index,
    items: &'a [Item],
    /// By item: the file was created empty, so zero runs can stay holes.
    fresh: &'a [bool],
    /// By item: the file's content lies in one pack, whose worker creates
    /// it and applies its metadata.
    owned: &'a [bool],
    rules: MetaRules,
    written: AtomicU64,
    /// Files the target refuses are recorded here, and skipped.
    failures: &'a Failures,
    /// By item: why part of its content could not be restored (a blob
    /// damaged or missing in the repository), and whether because it is
    /// missing; the file has zeros there.
    damaged: Mutex<BTreeMap<usize, (String, bool)>>,
    progress: &'a RestoreProgress,
    is_root: bool,
}

/// A file a pack worker creates and finishes itself.
struct OwnedFile {
    /// Writes of this pack to the file not yet done.
    remaining: usize,
    /// The file's length so far; below its size when finished, the tail
    /// is a hole made by `set_len`.
    len: u64,
    created: bool,
}

impl Content<'_> {
    /// Fetches one run of blobs (writes of one pack sorted by offset, from
    /// [`into_runs`]) with one read and writes each where it belongs.
    fn restore_run(&self, parents: &mut Parents<'_>, run: &[Want]) -> Result<()> {
        let backend: &dyn Backend = self.repo.backend().as_ref();
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let pack = first.pack;
        let path = FileKind::Pack.path(&pack.to_hex());
        let mut owned: HashMap<u32, OwnedFile> = HashMap::new();
        for w in run {
            if self.owned[w.write.file as usize] {
                owned
                    .entry(w.write.file)
                    .or_insert(OwnedFile {
                        remaining: 0,
                        len: 0,
                        created: false,
                    })
                    .remaining += 1;
            }
        }
        // Files this run writes to stay open while it is processed, but
        // never more than OPEN_FILES at once: one run of small files can
        // touch hundreds, and several runs are restored in parallel.
        const OPEN_FILES: usize = 16;
        let mut files: HashMap<u32, fs::File> = HashMap::new();
        let first = first.offset;
        let end = u64::from(last.offset) + u64::from(last.length);
        // Damage (a missing or truncated pack, a blob failing to open)
        // costs the files it touches, not the restore: they are written
        // with zeros there and reported, as restic does; everything else
        // is restored. Other errors (the store failing, a full target)
        // stop the restore.
        let span = match backend.get_range(&path, u64::from(first), end - u64::from(first)) {
            Ok(span) => Ok(span),
            Err(e) => match Error::backend(format!("pack {pack}"), e) {
                e @ Error::NotFound { .. } => Err((e.to_string(), true)),
                e @ Error::Corrupt { .. } => Err((e.to_string(), false)),
                e => return Err(e),
            },
        };
        // Consecutive wants at one offset are one blob's writes.
        for writes in run.chunk_by(|a, b| a.offset == b.offset) {
            let target = writes[0];
            let id = self.items[target.write.file as usize].content[target.write.chunk as usize];
            let from = (target.offset - first) as usize;
            let data = span.as_ref().map_err(Clone::clone).and_then(|span| {
                let stored = span
                    .get(from..from + target.length as usize)
                    .ok_or_else(|| (format!("pack {pack} is shorter than indexed"), false))?;
                blob::open(self.repo.key(), target.kind, &id, target.raw_len, stored)
                    .map_err(|e| (format!("blob {id} in pack {pack}: {e}"), false))
            });
            // A copy of the blob in another pack (two backups stored it at
            // once) stands in for a damaged or missing one.
            // The store failing there stops the restore, as it would here.
            let data = match data {
                Ok(data) => Ok(data),
                Err(why) => self.repo.other_copy(self.index, &id, &pack)?.ok_or(why),
            };
            let data = match data {
                Ok(data) => Some(data),
                Err(why) => {
                    let mut damaged = self.damaged.lock().expect("ok");
                    for w in writes {
                        damaged
                            .entry(w.write.file as usize)
                            .or_insert_with(|| why.clone());
                    }
                    None
                }
            };
            let zero = data.as_ref().is_some_and(|d| crate::zeros::is_zero(d));
            for &Want { write: w, .. } in writes {
                // A file the target refused (here or before) gets no more.
                if self.failures.is_failed(w.file as usize) {
                    continue;
                }
                let item = &self.items[w.file as usize];
                let mut own = owned.get_mut(&w.file);
                // A new file is sized with set_len: a zero range is a
                // hole that reads as zeros already. Leaving it keeps
                // files sparse. An owned file is still opened, so it
                // exists even if it is all zeros. Damaged content is
                // never written: its range stays a hole.
                let skip = data.is_none() || (zero && self.fresh[w.file as usize]);
                if skip && own.is_none() {
                    continue;
                }
                if files.len() >= OPEN_FILES && !files.contains_key(&w.file) {
                    files.clear();
                }
                let p = &item.path;
                let file = match files.entry(w.file) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let at = parents.of(p).map_err(|e| in_dir_of(p, e));
                        let opened = at.and_then(|(dir, name)| match own.as_deref_mut() {
                            Some(o) if !o.created => {
                                o.created = true;
                                // Other blobs are opened before this
                                // file's next write, and one may fail:
                                // like every file of a failed restore,
                                // it must then have its full size,
                                // holes where content is missing.
                                create_file(dir, name, p, self.is_root).and_then(|f| {
                                    if o.remaining > 1 {
                                        f.set_len(item.size).map_err(|e| {
                                            Error::io(format!("resizing {}", p.display()), e)
                                        })?;
                                        o.len = item.size;
                                    }
                                    Ok(f)
                                })
                            }
                            _ => beneath::open_write(dir, name)
                                .map_err(|e| Error::io(format!("opening {}", p.display()), e)),
                        });
                        match opened {
                            Ok(f) => v.insert(f),
                            Err(e) => {
                                self.failures.record(Some(w.file as usize), p, e)?;
                                continue;
                            }
                        }
                    }
                };
                // Where the last byte written ends in the file.
                let mut wrote_to = None;
                if let Some(data) = data.as_ref().filter(|_| !skip) {
                    let write = |r: std::ops::Range<usize>| {
                        let at = w.offset + r.start as u64;
                        file.write_all_at(&data[r.clone()], at)
                            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
                        self.written.fetch_add(r.len() as u64, Ordering::Relaxed);
                        Ok::<_, Error>(at + r.len() as u64)
                    };
                    let result = if self.fresh[w.file as usize] {
                        // Zero blocks inside a chunk stay holes too.
                        crate::zeros::data_spans(data, w.offset).try_for_each(|r| {
                            wrote_to = Some(write(r)?);
                            Ok(())
                        })
                    } else {
                        write(0..data.len()).map(|end| wrote_to = Some(end))
                    };
                    if let Err(e) = result {
                        files.remove(&w.file);
                        self.failures.record(Some(w.file as usize), p, e)?;
                        continue;
                    }
                }
                if let Some(o) = own {
                    if let Some(end) = wrote_to {
                        o.len = o.len.max(end);
                    }
                    o.remaining -= 1;
                    if o.remaining == 0 {
                        let finished = self.finish_owned(file, item, o.len);
                        files.remove(&w.file);
                        if let Err(e) = finished {
                            self.failures.record(Some(w.file as usize), p, e)?;
                        }
                    }
                }
            }
            self.progress.bytes_done.fetch_add(
                u64::from(target.raw_len) * writes.len() as u64,
                Ordering::Relaxed,
            );
        }

        Ok(())
    }

    /// Completes a file whose last write was just made: sizes a tail left
    /// as a hole (`len` is the file's length so far) and applies its
    /// metadata through the open descriptor.
    fn finish_owned(&self, file: &fs::File, item: &Item, len: u64) -> Result<()> {
        if len < item.size {
            file.set_len(item.size)
                .map_err(|e| Error::io(format!("resizing {}", item.path.display()), e))?;
        }
        let applied = apply_metadata(Meta::File(file), item, self.rules);
        self.failures.metadata(&item.path, applied.problems);
        Ok(())
    }
}

/// Largest span one ranged read covers (unless a single blob is larger).
/// Each download thread holds one span, so this bounds restore memory:
/// reading whole 16 MiB packs on 4 threads peaked at ~165 MiB resident.
const MAX_READ_SPAN: u64 = 4 * 1024 * 1024;
/// Unneeded bytes between two needed blobs that are read through rather
/// than split into two requests (one request costs more than this).
const MAX_READ_GAP: u64 = 256 * 1024;

/// Splits wants sorted by pack and offset into runs, each fetched with one
/// ranged read: consecutive blobs of a pack join a run while the run stays
/// within [`MAX_READ_SPAN`] and the gap before them within
/// [`MAX_READ_GAP`]. The writes of one blob are never split.
fn into_runs(sorted: &[Want]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (at, want) in sorted.iter().enumerate() {
        let end = u64::from(want.offset) + u64::from(want.length);
        let joins = runs.last().is_some_and(|run| {
            let (first, prev) = (&sorted[run.start], &sorted[run.end - 1]);
            let prev_end = u64::from(prev.offset) + u64::from(prev.length);
            first.pack == want.pack
                && u64::from(want.offset).saturating_sub(prev_end) <= MAX_READ_GAP
                && end.saturating_sub(u64::from(first.offset)) <= MAX_READ_SPAN
        });
        match runs.last_mut() {
            Some(run) if joins => run.end = at + 1,
            _ => runs.push(at..at + 1),
        }
    }
    runs
}

/// An item's number as a [`Write1`] holds it.
fn idx_u32(idx: usize) -> Result<u32> {
    u32::try_from(idx)
        .map_err(|_| Error::InvalidInput("more than 4 billion entries or chunks to restore".into()))
}

/// Where [`apply_metadata`] applies: an entry by its name in its
/// directory (never following it if a symlink), or a file or directory
/// already open.
#[derive(Clone, Copy)]
enum Meta<'a> {
    At {
        dir: std::os::fd::BorrowedFd<'a>,
        name: &'a std::ffi::OsStr,
    },
    File(&'a fs::File),
}

/// How [`apply_metadata`] treats what it finds.
#[derive(Clone, Copy)]
struct MetaRules {
    /// Owners are set only as root.
    is_root: bool,
    /// Entries may predate the restore (`--overwrite`): extended attributes
    /// the snapshot does not hold are removed, or a restore in place would
    /// keep a stale ACL granting access the snapshot does not.
    replace_xattrs: bool,
    /// Entries may be kept as they are (`IfChanged`): what already matches
    /// is not set again. A file kept because it is identical may refuse
    /// every change (immutable, on a read-only mount); one whose metadata
    /// matches as well is then no error.
    only_differing: bool,
    /// Nothing is set: what differs is only found (a dry run of
    /// if-changed). Implies `only_differing`.
    dry_run: bool,
}

/// What an if-changed restore finds different, setting nothing.
fn dry_run_meta() -> MetaRules {
    MetaRules {
        is_root: nix::unistd::geteuid().is_root(),
        replace_xattrs: true,
        only_differing: true,
        dry_run: true,
    }
}

/// Attribute namespaces a restore owns. `security.*` belongs to the system
/// (SELinux labels, file capabilities) and is never removed.
const RESTORED_XATTRS: [&str; 3] = ["user.", "trusted.", "system.posix_acl_"];

/// Applies `item`'s metadata to what the restore made at its path: a file
/// or directory through a descriptor opened without following a symlink,
/// anything else by its name in its directory, never following it. What is
/// there and cannot be opened as what the snapshot has (swapped for a
/// symlink since it was made) fails the entry.
fn metadata_at(parents: &mut Parents<'_>, item: &Item, rules: MetaRules) -> Result<Applied> {
    let path = &item.path;
    let (dir, name) = parents.of(path).map_err(|e| in_dir_of(path, e))?;
    let opened = match item.kind {
        NodeKind::Dir => match beneath::open_dir(dir, name) {
            // Another user's directory one may enter but not list (0711,
            // restored by non-root): its metadata is read and, where it
            // differs, set by name, never following it, as a fifo's is.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                return Ok(apply_metadata(Meta::At { dir, name }, item, rules));
            }
            other => other,
        },
        NodeKind::File => open_file_at(dir, name),
        _ => return Ok(apply_metadata(Meta::At { dir, name }, item, rules)),
    };
    let file = opened.map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    Ok(apply_metadata(Meta::File(&file), item, rules))
}

/// What the metadata pass does to one entry: [`metadata_at`], or
/// [`flags::at`] in the pass after every file's metadata.
type Step = fn(&mut Parents<'_>, &Item, MetaRules) -> Result<Applied>;

/// The regular file `name` in `dir`, opened without following it.
fn open_file_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> std::io::Result<fs::File> {
    let f = beneath::open_read(dir, name)?;
    if beneath::is_file(&rustix::fs::fstat(&f)?) {
        Ok(f)
    } else {
        Err(std::io::Error::other("no longer a regular file"))
    }
}

/// Where [`apply_metadata`] reads and writes extended attributes: an open
/// file, or an entry not open through /proc/self/fd (the xattr crate's path
/// calls do not follow the last name, and the directory is the one opened).
enum Xattrs<'a> {
    File(&'a fs::File),
    Path(PathBuf),
}

impl<'a> Xattrs<'a> {
    fn of(at: Meta<'a>) -> Self {
        match at {
            Meta::File(f) => Xattrs::File(f),
            Meta::At { dir, name } => Xattrs::Path(beneath::proc_path(dir, Some(name))),
        }
    }

    fn list(&self) -> std::io::Result<xattr::XAttrs> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.list_xattr(),
            Xattrs::Path(p) => xattr::list(p),
        }
    }

    fn get(&self, name: &std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.get_xattr(name),
            Xattrs::Path(p) => xattr::get(p, name),
        }
    }

    fn set(&self, name: &std::ffi::OsStr, value: &[u8]) -> std::io::Result<()> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.set_xattr(name, value),
            Xattrs::Path(p) => xattr::set(p, name, value),
        }
    }

    fn remove(&self, name: &std::ffi::OsStr) -> std::io::Result<()> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.remove_xattr(name),
            Xattrs::Path(p) => xattr::remove(p, name),
        }
    }
}

/// What an entry has now, of what [`apply_metadata`] sets.
struct Current {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, i64),
    atime: (i64, i64),
}

impl Current {
    fn of(at: Meta<'_>) -> Option<Self> {
        let stat = match at {
            Meta::File(f) => rustix::fs::fstat(f),
            Meta::At { dir, name } => {
                rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            }
        }
        .ok()?;
        Some(Current {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode,
            mtime: (
                stat.st_mtime,
                i64::try_from(stat.st_mtime_nsec).unwrap_or(0),
            ),
            atime: (
                stat.st_atime,
                i64::try_from(stat.st_atime_nsec).unwrap_or(0),
            ),
        })
    }
}

/// What [`apply_metadata`] did: what could not be applied (each "what:
/// why"), which leaves the entry not restored intact, and what it set
/// (with `only_differing`, what differed; [`changes`] bits).
#[derive(Default)]
struct Applied {
    problems: Vec<String>,
    changed: u16,
}

/// Applies an entry's metadata (with `rules.dry_run`, only finds what
/// differs), its inode flags last ([`flags`]).
fn apply_metadata(at: Meta<'_>, item: &Item, rules: MetaRules) -> Applied {
    let mut applied = apply_metadata_but_flags(at, item, rules);
    flags::apply(at, item, rules, &mut applied);
    applied
}

fn apply_metadata_but_flags(at: Meta<'_>, item: &Item, rules: MetaRules) -> Applied {
    use std::os::unix::fs::PermissionsExt;
    let mut problems = Vec::new();
    let mut changed = 0;
    let symlink = item.kind == NodeKind::Symlink;
    let xattrs = item.rare.as_ref().map_or(&[][..], |r| &r.xattrs[..]);
    let attrs = Xattrs::of(at);
    // What is there now, when only what differs is applied.
    let current = if rules.only_differing || rules.dry_run {
        Current::of(at)
    } else {
        None
    };
    if rules.replace_xattrs {
        for name in attrs.list().into_iter().flatten() {
            let text = name.to_string_lossy();
            let stale = RESTORED_XATTRS.iter().any(|ns| text.starts_with(ns))
                && !xattrs.iter().any(|x| x.os_name() == name);
            if !stale {
                continue;
            }
            changed |= changes::XATTRS;
            if !rules.dry_run
                && let Err(e) = attrs.remove(&name)
            {
                problems.push(format!("removal of the xattr {text}: {e}"));
            }
        }
    }
    let same_owner = current
        .as_ref()
        .is_some_and(|m| (m.uid, m.gid) == (item.uid, item.gid));
    // Changing the owner clears set-id bits: the mode is set again after.
    let chown = rules.is_root && !same_owner;
    if chown {
        changed |= changes::OWNER;
    }
    if chown && !rules.dry_run {
        let (uid, gid) = (
            Some(rustix::fs::Uid::from_raw(item.uid)),
            Some(rustix::fs::Gid::from_raw(item.gid)),
        );
        let r = match at {
            Meta::File(f) => rustix::fs::fchown(f, uid, gid),
            Meta::At { dir, name } => {
                rustix::fs::chownat(dir, name, uid, gid, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            }
        };
        if let Err(e) = r {
            problems.push(format!("owner (chown): {}", std::io::Error::from(e)));
        }
    }
    let mode_differs = (current.as_ref()).is_none_or(|m| m.mode & 0o7777 != item.mode & 0o7777);
    if !symlink && mode_differs {
        changed |= changes::MODE;
    }
    // Changing the owner cleared set-id bits: the mode is set again.
    let same_mode = !mode_differs && !chown;
    if !symlink && !same_mode && !rules.dry_run {
        let r = match at {
            Meta::File(f) => f.set_permissions(fs::Permissions::from_mode(item.mode)),
            Meta::At { dir, name } => beneath::chmod_at(dir, name, item.mode & 0o7777),
        };
        if let Err(e) = r {
            problems.push(format!("mode (chmod): {e}"));
        }
    }
    for xattr in xattrs {
        if let Some(value) = xattr.value_bytes() {
            // The exact name (`name_raw`), not the lossy one: two names
            // differing only in non-UTF-8 bytes were one, the last value.
            let name = xattr.os_name();
            if current.is_some() && attrs.get(&name).ok().flatten().is_some_and(|v| v == value) {
                continue;
            }
            changed |= changes::XATTRS;
            if rules.dry_run {
                continue;
            }
            if let Err(e) = attrs.set(&name, &value) {
                problems.push(format!("xattr {}: {e}", xattr.name));
            }
        }
    }
    let mtime = file_time(item.mtime);
    let atime = item
        .rare
        .as_ref()
        .and_then(|r| r.atime)
        .map_or(mtime, file_time);
    let same_times = current.as_ref().is_some_and(|m| {
        let same = |t: filetime::FileTime, (s, ns): (i64, i64)| {
            (t.unix_seconds(), i64::from(t.nanoseconds())) == (s, ns)
        };
        same(mtime, m.mtime) && same(atime, m.atime)
    });
    if same_times {
        return Applied { problems, changed };
    }
    // atime alone differs after any read: only mtime counts as a change.
    if (current.as_ref())
        .is_none_or(|m| (mtime.unix_seconds(), i64::from(mtime.nanoseconds())) != m.mtime)
    {
        changed |= changes::TIMES;
    }
    if rules.dry_run {
        return Applied { problems, changed };
    }
    let r = match at {
        Meta::File(f) => filetime::set_file_handle_times(f, Some(atime), Some(mtime)),
        Meta::At { dir, name } => {
            let spec = |t: filetime::FileTime| rustix::fs::Timespec {
                tv_sec: t.unix_seconds(),
                tv_nsec: t.nanoseconds().into(),
            };
            let times = rustix::fs::Timestamps {
                last_access: spec(atime),
                last_modification: spec(mtime),
            };
            rustix::fs::utimensat(dir, name, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(Into::into)
        }
    };
    if let Err(e) = r {
        problems.push(format!("times: {e}"));
    }
    Applied { problems, changed }
}

/// A timestamp as the kernel takes it: seconds rounded down and
/// non-negative nanoseconds. jiff rounds seconds toward zero, so a time
/// before 1970 with a fraction (`1960-06-01T12:00:00.25Z`) has a negative
/// nanosecond part, to be borrowed from the second below.
fn file_time(t: jiff::Timestamp) -> filetime::FileTime {
    let (second, nano) = (t.as_second(), t.subsec_nanosecond());
    if nano < 0 {
        filetime::FileTime::from_unix_time(second - 1, (nano + 1_000_000_000).unsigned_abs())
    } else {
        filetime::FileTime::from_unix_time(second, nano.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_keep_their_fraction() {
        for (text, second, nano) in [
            ("1960-06-01T12:00:00.123456789Z", -302_443_200, 123_456_789),
            ("1969-12-31T23:59:59.5Z", -1, 500_000_000),
            ("1901-01-01T00:00:00Z", -2_177_452_800, 0),
            ("2026-01-10T03:00:00.25Z", 1_768_014_000, 250_000_000),
        ] {
            let t = file_time(text.parse().unwrap());
            assert_eq!(
                (t.unix_seconds(), t.nanoseconds()),
                (second, nano),
                "{text}"
            );
        }
    }

    /// A full disk stops the restore (every further write would fail
    /// too); an entry refused costs that entry alone.
    #[test]
    fn a_full_disk_stops_the_restore_and_a_refused_entry_does_not() {
        let io = |errno| Error::io("writing /t/f", std::io::Error::from_raw_os_error(errno));
        for errno in [libc::ENOSPC, libc::EDQUOT, libc::EMFILE] {
            assert!(stops_restore(&io(errno)), "{errno}");
        }
        for errno in [libc::EPERM, libc::EACCES, libc::EROFS, libc::EEXIST] {
            assert!(!stops_restore(&io(errno)), "{errno}");
        }
        assert!(stops_restore(&Error::Interrupted));
        let failures = Failures::new(1, Path::new("/t"));
        let err = failures
            .record(Some(0), Path::new("/t/f"), io(libc::ENOSPC))
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NoSpace);
        failures
            .record(Some(0), Path::new("/t/f"), io(libc::EPERM))
            .unwrap();
        assert!(failures.is_failed(0));
        let entries = failures.entries.into_inner().unwrap();
        assert_eq!(entries.len(), 1);
        // The path is named once, in front, not again in the error.
        assert_eq!(entries[0].path, "/t/f");
        assert!(
            entries[0].error.starts_with("writing: "),
            "{}",
            entries[0].error
        );
    }

    fn want(pack: u8, offset: u32, length: u32) -> Want {
        Want {
            pack: PackId([pack; 32]),
            offset,
            length,
            raw_len: length,
            kind: crate::blob::BlobKind::Data,
            write: Write1 {
                file: 0,
                chunk: 0,
                offset: 0,
            },
        }
    }

    fn target(offset: u32, length: u32) -> Want {
        want(0, offset, length)
    }

    fn runs_of(wants: &[Want]) -> Vec<Vec<u32>> {
        into_runs(wants)
            .into_iter()
            .map(|r| wants[r].iter().map(|t| t.offset).collect())
            .collect()
    }

    /// A restore holds one `Item` per entry and one `Want` per write at
    /// once: their size is its memory per file.
    #[test]
    fn the_plan_stays_small_per_entry() {
        assert!(
            std::mem::size_of::<Item>() <= 96,
            "{}",
            std::mem::size_of::<Item>()
        );
        assert_eq!(std::mem::size_of::<Want>(), 64);
    }

    #[test]
    fn read_runs_bound_the_span_and_skip_large_gaps() {
        const MIB: u32 = 1024 * 1024;
        // Adjacent 1 MiB blobs: four fit one 4 MiB read, the fifth starts
        // the next.
        let adjacent: Vec<Want> = (0..5).map(|i| target(i * MIB, MIB)).collect();
        assert_eq!(
            runs_of(&adjacent),
            vec![vec![0, MIB, 2 * MIB, 3 * MIB], vec![4 * MIB]]
        );
        // A small gap is read through; a large one splits the run.
        let gaps = vec![
            target(0, 1000),
            target(1000 + 100 * 1024, 1000),
            target(2 * MIB, 1000),
        ];
        assert_eq!(
            runs_of(&gaps),
            vec![vec![0, 1000 + 100 * 1024], vec![2 * MIB]]
        );
        // A blob larger than the span is read alone, whole.
        let big = vec![target(0, 10), target(10, 6 * MIB), target(10 + 6 * MIB, 10)];
        assert_eq!(runs_of(&big), vec![vec![0], vec![10], vec![10 + 6 * MIB]]);
        assert!(runs_of(&[]).is_empty());
        // A blob written to two files is one read; another pack starts a
        // new run even where its offsets would join.
        let shared = vec![
            target(0, 10),
            target(0, 10),
            target(10, 10),
            want(1, 20, 10),
        ];
        assert_eq!(runs_of(&shared), vec![vec![0, 0, 10], vec![20]]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod verify_tests {
    use super::*;
    use crate::repository::InitOptions;
    use crate::test_support::{SMALL_CHUNKER, backup_stream, memory_repo};

    /// Trees are untrusted input: one nested deeper than any real path
    /// fails the walk with damage instead of overflowing the stack.
    #[test]
    fn trees_nested_beyond_max_depth_are_refused() {
        let (_, repo) = memory_repo(InitOptions::default());
        let index = std::sync::Arc::new(repo.load_index().unwrap());
        let sink = crate::backup::TreeSink::new(&repo, &index, false);
        let mut id = sink.save(Tree::default()).unwrap();
        for _ in 0..=crate::tree::MAX_DEPTH + 1 {
            let mut dir = Node::new("d", NodeKind::Dir);
            dir.subtree = Some(id);
            id = sink.save(Tree { nodes: vec![dir] }).unwrap();
        }
        sink.finish().unwrap();
        let index = repo.load_index().unwrap();
        let mut seen = 0usize;
        let err = walk(&repo, &index, &id, &mut |_, _| {
            seen += 1;
            Ok(true)
        })
        .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains("nested deeper"), "{err}");
        assert!(seen > crate::tree::MAX_DEPTH, "{seen}");
    }

    /// Ctrl-C during planning stops the restore before anything is made.
    #[test]
    fn a_cancelled_restore_stops_while_planning() {
        let (_, repo) = memory_repo(InitOptions::default());
        let root = backup_stream(&repo, "f", b"planned, never written").tree;
        let index = repo.load_index().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = RestoreOptions {
            target: dir.path().join("target"),
            cancel: Arc::new(AtomicBool::new(true)),
            concurrency: 2,
            ..RestoreOptions::default()
        };
        let err = restore(&repo, &index, &root, &options, &RestoreProgress::default()).unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert!(!options.target.exists());
    }

    #[test]
    fn read_back_finds_a_changed_byte_and_a_wrong_size() {
        let (_, repo) = memory_repo(InitOptions {
            chunker: Some(SMALL_CHUNKER),
            ..InitOptions::default()
        });
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let root = backup_stream(&repo, "f", &data).tree;
        let index = repo.load_index().unwrap();
        let node = find_node(&repo, &index, &root, "/f").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(node.content.as_ref().unwrap().len() > 2, "several chunks");
        let items = [Item::new(path.clone(), node)];
        let files = [0];
        let beneath = Beneath::open(dir.path()).unwrap();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(
            verify_restored(&repo, &index, &beneath, &items, &files, |_| true).unwrap(),
            1
        );
        let mut changed = data.clone();
        changed[30_000] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        let err = verify_restored(&repo, &index, &beneath, &items, &files, |_| true).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("differs"), "{err}");
        std::fs::write(&path, &data[..49_999]).unwrap();
        let err = verify_restored(&repo, &index, &beneath, &items, &files, |_| true).unwrap_err();
        assert!(err.to_string().contains("49999 bytes"), "{err}");
    }

    /// A snapshot from before ancestors were followed through symlinks: a
    /// symlink node with a subtree. Walked as a directory (never a symlink
    /// restore could write through), and what is below it stays used.
    #[test]
    fn a_legacy_symlink_with_children_is_a_directory_and_keeps_its_data() {
        use crate::backup::{Saver, SaverStats};
        use crate::blob::BlobKind;
        let (_, repo) = memory_repo(InitOptions::default());
        let snap = backup_stream(&repo, "f", b"below the symlink");
        let index = std::sync::Arc::new(repo.load_index().unwrap());
        let f = find_node(&repo, &index, &snap.tree, "/f").unwrap();
        let data = f.content.clone().unwrap();
        let mut alias = f.clone();
        alias.name = "alias".into();
        alias.kind = NodeKind::Symlink;
        alias.mode = 0o777;
        alias.linktarget = Some("/elsewhere".into());
        alias.content = None;
        alias.subtree = Some(snap.tree);
        let saver = Saver::start(
            repo.clone(),
            index.clone(),
            crate::compress::Compression::default(),
            1,
            std::sync::Arc::new(SaverStats::default()),
        );
        let root = saver
            .save(BlobKind::Tree, Tree { nodes: vec![alias] }.encode())
            .unwrap();
        saver.finish().unwrap();
        let mut legacy = snap.clone();
        legacy.tree = root;
        repo.save_snapshot(&legacy).unwrap();
        repo.delete_snapshot(&repo.snapshots().unwrap()[0].0)
            .unwrap();
        let index = repo.load_index().unwrap();

        let mut seen = Vec::new();
        walk(&repo, &index, &root, &mut |path, node| {
            seen.push((path.to_path_buf(), node.kind, node.linktarget.clone()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (PathBuf::from("/alias"), NodeKind::Dir, None),
                (PathBuf::from("/alias/f"), NodeKind::File, None),
            ]
        );
        let (used, _) = crate::prune::used_blobs(
            &repo,
            &index,
            crate::prune::References::read(&repo).unwrap(),
        )
        .unwrap();
        assert!(
            data.iter().all(|id| used.contains(id)),
            "prune would delete it"
        );
    }
}
