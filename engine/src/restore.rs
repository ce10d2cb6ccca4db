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

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::Index;
use crate::pattern::Pattern;
use crate::repository::Repository;
use crate::tree::{Extents, Node, NodeKind, Tree};
use crate::tree_reader::TreeReader;
use beneath::{Beneath, Parents};
use changes::Changes;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod beneath;
mod changes;
mod content;
mod delete;
mod dir_links;
mod dry_run;
mod existing;
mod failures;
mod flags;
mod item;
mod metadata;
mod report;
mod select;
mod verify;

pub use changes::ChangedEntry;
use content::{Content, Want, Write1, idx_u32, into_runs, prepare_file};
use delete::delete_extras;
use dir_links::{judge_link, kept_places, not_kept_error, replaced_warning};
use dry_run::plan_only;
use existing::{
    Compared, compare_existing, created_or_replaced, existing_chunks_ok, file_changes,
    keep_special, same_file,
};
use failures::Failures;
use item::{Item, group_of, link_groups};
use metadata::{Meta, MetaRules, Step, apply_metadata, dry_run_meta, metadata_at};
pub use report::{DamagedEntry, DamagedFile, FailedEntry, KeptLink, RestoreReport};
pub(crate) use select::content_size_mismatch;
use select::{add_ancestors, check_sizes, is_ancestor_of_include, keep_newer, matches_include};
use verify::verify_restored;

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
