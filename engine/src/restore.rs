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
use beneath::Beneath;
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
mod hardlinks;
mod item;
mod made;
mod metadata;
mod report;
mod select;
mod skeleton;
mod verify;

pub use changes::ChangedEntry;
use content::Content;
use delete::delete_extras;
use dir_links::kept_places;
use dry_run::plan_only;
use failures::Failures;
use hardlinks::link_groups;
use metadata::{MetaRules, dry_run_meta};
pub use report::{DamagedEntry, DamagedFile, FailedEntry, KeptLink, RestoreReport};
pub(crate) use select::content_size_mismatch;
use select::{check_sizes, keep_newer};
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
    let mut items = select::entries(repo, index, root, options, &includes, &excludes)?;

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
    let made = made::Made::new(items.len());
    let is_root = nix::unistd::geteuid().is_root();
    let changed = Changes::new(items.len(), options.overwrite == Overwrite::IfChanged);
    // How entries are judged for `changed`, before anything changes them.
    let judging = dry_run_meta();

    // 2. Skeleton: directories, empty files, links, special files.
    let skeleton::Skeleton {
        content_files,
        links,
        absent,
        kept_link,
        kept_places: kept_places_found,
    } = skeleton::make(
        &items,
        beneath,
        options,
        &failures,
        &made,
        &changed,
        judging,
        is_root,
        &mut report,
    )?;
    phase("skeleton");
    let mut fresh = vec![false; items.len()];
    // When resuming (if-changed) what each file holds already is compared
    // with the snapshot first: chunks it holds are never fetched.
    let resuming = options.overwrite == Overwrite::IfChanged;
    let groups = if resuming {
        link_groups(&items)
    } else {
        HashMap::new()
    };
    let verified = if resuming {
        existing::compare_files(
            repo,
            index,
            &items,
            &content_files,
            beneath,
            &groups,
            &changed,
            judging,
            &failures,
            &made,
            is_root,
            &mut fresh,
        )?
    } else {
        Vec::new()
    };

    // 3. Content.
    let plan = content::plan(index, &items, &content_files, &verified, &failures)?;
    drop(verified);
    let owned = if resuming {
        vec![false; items.len()]
    } else {
        content::owned_files(items.len(), &content_files, &plan)
    };
    if !resuming {
        // An owned file is created empty by its worker.
        for &idx in &content_files {
            fresh[idx] = owned[idx];
        }
        // The other regular files are created (and sized) on every core:
        // for trees of small files, creating inodes is most of a restore's
        // time, nearly all of it in the kernel.
        let others = (content_files.iter().copied())
            .filter(|&idx| !owned[idx])
            .collect();
        let prepared = content::prepare_files(
            others,
            &items,
            beneath,
            &groups,
            options.overwrite,
            is_root,
            &failures,
            &made,
        )?;
        for (idx, is_fresh) in prepared {
            fresh[idx] = is_fresh;
        }
    }
    phase("create files");
    progress.bytes_total.store(plan.total, Ordering::Relaxed);
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
        made: &made,
    };
    content.restore_runs(beneath, &plan, &options.cancel)?;
    let skipped = plan.skipped;
    drop(plan);
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
    report.bytes_skipped = skipped;
    hardlinks::link_names(&items, &links, beneath, &failures, &made, &changed, is_root)?;
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

    // 4. Metadata.
    let left = |idx: usize| absent[idx] || failures.is_failed(idx);
    metadata::apply_all(
        &items, beneath, rules, &changed, &failures, &made, left, &owned, &kept_link,
    )?;
    phase("metadata");
    report.count(&items, left);
    report.failed_entries = failures.entries.into_inner().expect("ok");
    report.failed_entries.sort_by(|a, b| a.path.cmp(&b.path));
    report.changed_entries = changed.list(items.iter().map(|i| &*i.path));
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod verify_tests {
    use super::item::Item;
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
