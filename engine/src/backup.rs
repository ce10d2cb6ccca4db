//! Backup: a source (file trees, a stream, a command's output) into a
//! snapshot.
//!
//! ```text
//! walker --file tasks--> R readers --chunks--> Saver (hash, dedup, compress,
//!   |                      |                   encrypt, pack, upload)
//!   |                      '--chunk ids--.
//!   '--directories (post-order)--> finalizer: waits for each file's ids and
//!                                   each subdirectory's tree, saves the tree
//! ```
//!
//! The walker (the calling thread) lists directories and reads metadata.
//! Files unchanged since the parent snapshot (same size, mtime, ctime and
//! inode) are not read again; the others become tasks for a few reader
//! threads, which open them, cut chunks and hand each chunk to the [`Saver`]
//! pipeline without waiting: its workers hash, deduplicate, compress and
//! encrypt on every core. So many small files are read in parallel, and no
//! single thread hashes everything. The finalizer thread assembles each
//! directory's tree once its files' chunk ids are known, children before
//! parents. Every queue is bounded. The snapshot is written last, after
//! [`Saver::finish`] has made every blob it references durable and indexed
//! (repo-format.md §11).

mod saver;
mod walk;

pub use saver::{PendingId, Saver, SaverStats};
pub(crate) use saver::{TreeSink, ensure_stored};
pub use walk::{ChangeDetection, Excludes, check_marker};

use crate::blob::BlobKind;
use crate::cancel::{Stop, Watch};
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::repository::Repository;
use crate::snapshot::{Snapshot, SnapshotSummary};
use crate::tree::{Node, NodeKind, Tree};
use crate::tree_reader::TreeReader;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use walk::Names;

/// File tasks queued for the readers.
const FILE_QUEUE: usize = 64;
/// Finished directory listings queued for the finalizer.
const DIR_QUEUE: usize = 256;
/// Chunk ids a reader leaves outstanding per file before it waits.
const MAX_OUTSTANDING: usize = 32;

/// What to back up.
pub enum Source {
    /// Files and directories, by absolute or relative path.
    Paths(Vec<PathBuf>),
    /// A byte stream (stdin) stored as one file named `filename`.
    Stream {
        /// Name of the file in the snapshot.
        filename: String,
        /// The data.
        reader: Box<dyn Read + Send>,
    },
    /// A command's standard output, stored as one file. A non-zero exit
    /// fails the backup.
    Command {
        /// Name of the file in the snapshot.
        filename: String,
        /// Program to run.
        program: OsString,
        /// Its arguments.
        args: Vec<OsString>,
        /// Extra environment for the child only (e.g. `PGPASSFILE`).
        env: Vec<(OsString, OsString)>,
    },
    /// Several commands' outputs, each stored as one file, in one snapshot
    /// (a database dump beside its server's roles): run one after the
    /// other, as [`Source::Command`]; any failing fails the backup.
    Commands(Vec<CommandFile>),
}

/// One command of [`Source::Commands`]: the fields of [`Source::Command`].
#[derive(Clone)]
pub struct CommandFile {
    /// Name of the file in the snapshot.
    pub filename: String,
    /// Program to run.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment for the child only.
    pub env: Vec<(OsString, OsString)>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Paths(p) => f.debug_tuple("Paths").field(p).finish(),
            Source::Stream { filename, .. } => write!(f, "Stream({filename})"),
            // Never print argv or environment: they may hold secrets.
            Source::Command {
                filename, program, ..
            } => write!(f, "Command({program:?} -> {filename})"),
            Source::Commands(list) => {
                let shown: Vec<String> = list
                    .iter()
                    .map(|c| format!("{:?} -> {}", c.program, c.filename))
                    .collect();
                write!(f, "Commands({})", shown.join(", "))
            }
        }
    }
}

/// Knobs for one backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Compression for new blobs.
    pub compression: Compression,
    /// Exclude patterns ([`Excludes`]; bytes, since file names are).
    pub excludes: Vec<std::ffi::OsString>,
    /// Exclude patterns matched regardless of case.
    pub iexcludes: Vec<std::ffi::OsString>,
    /// Leave out files larger than this many bytes.
    pub exclude_larger_than: Option<u64>,
    /// Skip the content of directories holding a CACHEDIR.TAG, except the
    /// CACHEDIR.TAG itself.
    pub exclude_caches: bool,
    /// Skip the content of directories holding a file of one of these
    /// names (`NAME` or `NAME:HEADER`, see `walk::has_marker`); like
    /// `exclude_caches`, the directory is kept with that file only.
    pub exclude_if_present: Vec<std::ffi::OsString>,
    /// Do not cross file-system boundaries below each given path.
    pub one_file_system: bool,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Host name for the snapshot.
    pub hostname: String,
    /// User name for the snapshot.
    pub username: String,
    /// Snapshot time; now when `None`.
    pub time: Option<jiff::Zoned>,
    /// Parent snapshot for change detection; chosen automatically when
    /// `None` (newest with the same host and paths).
    pub parent: Option<SnapshotId>,
    /// Re-read every file even if unchanged.
    pub force: bool,
    /// Which metadata change detection compares.
    pub change_detection: ChangeDetection,
    /// Save no snapshot when nothing changed since the parent (same root
    /// tree, no unreadable entries); the report then names the parent.
    pub skip_if_unchanged: bool,
    /// Concurrent pack uploads.
    pub upload_concurrency: usize,
    /// Set to stop the backup; it then flushes what it uploaded and fails
    /// with [`Error::Interrupted`].
    pub cancel: Arc<AtomicBool>,
    /// A [`Source::Command`] still running after this long is stopped
    /// (SIGTERM to its process group, SIGKILL 10 s later) and fails: a dump
    /// hung on a lock would otherwise hold its source until someone looks.
    pub command_timeout: Option<std::time::Duration>,
    /// Fail, saving no snapshot, when the paths held not one file (an
    /// unmounted volume's empty mount point): that snapshot would count
    /// in retention and push out the last real ones.
    pub require_files: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            compression: Compression::default(),
            excludes: Vec::new(),
            iexcludes: Vec::new(),
            exclude_larger_than: None,
            exclude_caches: false,
            exclude_if_present: Vec::new(),
            one_file_system: false,
            tags: Vec::new(),
            hostname: String::new(),
            username: String::new(),
            time: None,
            parent: None,
            force: false,
            change_detection: ChangeDetection::default(),
            skip_if_unchanged: false,
            upload_concurrency: 2,
            cancel: Arc::new(AtomicBool::new(false)),
            command_timeout: None,
            require_files: false,
        }
    }
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct BackupProgress {
    /// Files finished.
    pub files: AtomicU64,
    /// Bytes of file content processed (read or reused).
    pub bytes: AtomicU64,
    /// Entries that failed.
    pub errors: AtomicU64,
    /// Pipeline counters.
    pub saver: Arc<SaverStats>,
}

/// A file that could not be backed up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceError {
    /// Path.
    pub path: String,
    /// Why.
    pub error: String,
}

/// Result of a backup.
#[derive(Debug)]
pub struct BackupReport {
    /// The new snapshot's id.
    pub snapshot_id: SnapshotId,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Entries skipped because they could not be read.
    pub errors: Vec<SourceError>,
    /// Nothing changed since the parent and `skip_if_unchanged` was set: no
    /// snapshot was saved, `snapshot_id` is the parent's and `snapshot` the
    /// one that would have been saved.
    pub skipped: bool,
}

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
}

/// What the walker, readers and finalizer share.
struct Ctx<'a> {
    repo: &'a Repository,
    /// The parent snapshot's trees (from an object store, a tree pack at a
    /// time: one request per directory made an unchanged re-backup of a
    /// 1 446-directory tree from a local Garage take 63 s).
    trees: TreeReader<'a>,
    saver: &'a Saver,
    options: &'a BackupOptions,
    progress: &'a BackupProgress,
    errors: Mutex<Vec<SourceError>>,
    counters: Counters,
    /// The first error of the readers or the finalizer; the walker stops.
    failure: Mutex<Option<Error>>,
    stop: AtomicBool,
    /// The parent snapshot's trees record inode flags
    /// ([`Snapshot::inode_flags`]): an unchanged file's are taken from
    /// there, not read again (an open and an ioctl per file: a third more
    /// time for an unchanged re-backup of 52k files).
    parent_has_flags: bool,
}

/// A file's content as a reader produced it: ids, some still being hashed.
enum ContentId {
    Id(BlobId),
    Pending(PendingId),
}

enum FileOutcome {
    Content {
        ids: Vec<ContentId>,
        size: u64,
        /// Its inode flags, read through the descriptor that read it.
        inode_flags: u32,
        /// The file found at the path when it was opened, if it was not
        /// the one listed (replaced by a rename): its own metadata.
        replaced: Option<Box<Node>>,
    },
    /// Could not be read: reported, and left out of the snapshot.
    Unreadable(std::io::Error),
}

struct FileTask {
    path: PathBuf,
    size: u64,
    /// `(st_dev, st_ino)` when the walk listed it: the file read must be
    /// that one.
    identity: (u64, u64),
    reply: Sender<Result<FileOutcome>>,
}

/// A directory entry whose node may still wait for content or a subtree.
enum PendingNode {
    Ready(Node),
    File {
        node: Node,
        path: PathBuf,
        changed: bool,
        outcome: Receiver<Result<FileOutcome>>,
    },
    Dir {
        node: Node,
        subtree: Receiver<Result<BlobId>>,
    },
}

/// A listed directory, for the finalizer.
struct PendingDir {
    /// The directory, for the error if its listing cannot be stored.
    path: PathBuf,
    nodes: Vec<PendingNode>,
    reply: Sender<Result<BlobId>>,
}

struct Walker<'c, 'a> {
    ctx: &'c Ctx<'a>,
    excludes: Excludes,
    names: Names,
    /// Each given path (absolute) and the device it is on. With
    /// `--one-file-system` a directory is entered only when it is on the
    /// device of the deepest given path above it, so a mount point named
    /// among the paths (`-x / /home`) is backed up while others are not.
    devices: Vec<(PathBuf, u64)>,
    tasks: Sender<FileTask>,
    dirs: Sender<PendingDir>,
}

/// Runs a backup and writes its snapshot.
pub fn backup(
    repo: &Arc<Repository>,
    source: Source,
    options: &BackupOptions,
    progress: &BackupProgress,
) -> Result<BackupReport> {
    // As restic: if not one of the paths can be read (an unmounted volume,
    // a typo in a crontab), fail. A snapshot of nothing would count as a
    // backup in `forget --keep-last` and push out the real ones.
    if let Source::Paths(list) = &source
        && let Some(Err(error)) = list
            .iter()
            .map(std::fs::symlink_metadata)
            .reduce(|a, b| a.or(b))
    {
        let shown: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::SourceFailed(format!(
            "nothing to back up: {} cannot be read ({error})",
            shown.join(", ")
        )));
    }
    let start = jiff::Timestamp::now();
    let index_ids_at_start: std::collections::HashSet<crate::id::IndexId> =
        repo.index_ids()?.into_iter().collect();
    let index = Arc::new(repo.load_index()?);
    let excludes = Excludes::new(&options.excludes)
        .and_then(|e| e.case_insensitive(&options.iexcludes))
        .map_err(Error::InvalidInput)?;
    let paths = snapshot_paths(&source)?;
    let parent = find_parent(repo, options, &paths)?;
    let parent_tree = match &parent {
        Some((_, snap)) => repo.read_tree(&index, &snap.tree).ok(),
        None => None,
    };
    let saver = Saver::start(
        repo.clone(),
        index.clone(),
        options.compression,
        options.upload_concurrency,
        progress.saver.clone(),
    );
    // Ctrl-C also while the walk is done and `finish` drains the pipeline
    // (uploads held to --limit-upload could take minutes): it ran to the
    // end and saved the snapshot, exit 0, after saying it was stopping.
    let _watch = Watch::on_cancel(options.cancel.clone(), {
        let interrupter = saver.interrupter();
        move || interrupter.interrupt()
    });
    let ctx = Ctx {
        repo,
        trees: TreeReader::new(repo, &index),
        saver: &saver,
        options,
        progress,
        errors: Mutex::new(Vec::new()),
        counters: Counters::default(),
        failure: Mutex::new(None),
        stop: AtomicBool::new(false),
        parent_has_flags: parent.as_ref().is_some_and(|(_, snap)| snap.inode_flags),
    };
    let walked = match source {
        Source::Paths(list) => save_paths(&ctx, excludes, &list, parent_tree.as_ref()),
        Source::Stream { filename, reader } => ctx.save_stream(&filename, reader),
        Source::Command {
            filename,
            program,
            args,
            env,
        } => ctx
            .command_node(&filename, &program, &args, &env)
            .and_then(|node| ctx.save_tree(Tree { nodes: vec![node] })),
        Source::Commands(list) => list
            .iter()
            .map(|c| ctx.command_node(&c.filename, &c.program, &c.args, &c.env))
            .collect::<Result<Vec<_>>>()
            .and_then(|nodes| {
                let mut tree = Tree { nodes };
                tree.sort();
                ctx.save_tree(tree)
            }),
    };
    let Ctx {
        counters, errors, ..
    } = ctx;
    let errors = errors.into_inner().expect("not poisoned");
    // Even a failed walk drains the pipeline, so what was uploaded gets
    // indexed and the next backup can reuse it.
    let finished = saver.finish_reused();
    let (root, reused) = match (walked, finished) {
        (Err(Error::Interrupted), _) => return Err(Error::Interrupted),
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
        (Ok(root), Ok(reused)) => (root, reused),
    };
    if options.require_files && counters.files.load(Ordering::Relaxed) == 0 {
        let unread = errors.first().map_or(String::new(), |first| {
            format!(
                " ({} entries could not be read, first {}: {})",
                errors.len(),
                first.path,
                first.error
            )
        });
        let verb = if paths.len() == 1 { "holds" } else { "hold" };
        return Err(Error::SourceFailed(format!(
            "nothing to back up: {} {verb} no files{unread}; no snapshot was saved",
            paths.join(", ")
        )));
    }
    let unchanged_parent = parent
        .as_ref()
        .filter(|(_, snap)| options.skip_if_unchanged && errors.is_empty() && snap.tree == root)
        .map(|(id, _)| *id);
    ensure_not_pruned_under_us(repo, &index_ids_at_start, &root)?;
    ensure_stored(repo, &reused, "backup")?;
    let stats = &progress.saver;
    let time = options.time.clone().unwrap_or_else(jiff::Zoned::now);
    let tags = crate::snapshot::stored_tags(&options.tags);
    let snapshot = Snapshot {
        version: 1,
        time,
        tree: root,
        paths,
        hostname: options.hostname.clone(),
        username: options.username.clone(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        tags,
        parent: parent.map(|(id, _)| id),
        original: None,
        program_version: format!("vault {}", env!("CARGO_PKG_VERSION")),
        inode_flags: true,
        summary: SnapshotSummary {
            backup_start: Some(start),
            backup_end: Some(jiff::Timestamp::now()),
            files_new: counters.files_new.into_inner(),
            files_changed: counters.files_changed.into_inner(),
            files_unmodified: counters.files_unmodified.into_inner(),
            dirs_total: counters.dirs.into_inner(),
            data_blobs: stats.blobs_added.load(Ordering::Relaxed)
                - stats.tree_blobs_added.load(Ordering::Relaxed),
            tree_blobs: stats.tree_blobs_added.load(Ordering::Relaxed),
            data_added: stats.bytes_added.load(Ordering::Relaxed),
            data_added_packed: stats.bytes_stored.load(Ordering::Relaxed),
            total_files_processed: counters.files.into_inner(),
            total_bytes_processed: counters.bytes.into_inner(),
            errors: errors.len() as u64,
        },
        extra: serde_json::Map::new(),
    };
    if let Some(parent_id) = unchanged_parent {
        return Ok(BackupReport {
            snapshot_id: parent_id,
            snapshot,
            errors,
            skipped: true,
        });
    }
    let snapshot_id = repo.save_snapshot(&snapshot)?;
    Ok(BackupReport {
        snapshot_id,
        snapshot,
        errors,
        skipped: false,
    })
}

/// Opens the regular file the walk listed at `path` as `identity`. Between
/// the listing and the open, whoever can write the directory may put a
/// symlink there (to a file only root can read, which a backup as root
/// would then store under the unprivileged owner's name) or a FIFO (a read
/// that never returns): `O_NOFOLLOW` refuses the symlink, `O_NONBLOCK`
/// keeps the open from waiting, and what was opened must be a regular
/// file. Another regular file (an application replacing it by rename,
/// logrotate) is read: returns the file, its metadata, and whether it is
/// such a replacement (whose metadata is then recorded instead of the
/// listed file's).
fn open_listed(
    path: &Path,
    identity: (u64, u64),
) -> std::io::Result<(std::fs::File, std::fs::Metadata, bool)> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                std::io::Error::other("replaced by a symlink while the backup ran; not followed")
            }
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "replaced by something other than a file while the backup ran; not read",
        ));
    }
    let replaced = (meta.dev(), meta.ino()) != identity;
    Ok((file, meta, replaced))
}

/// Largest tree blob: the format's limit, small in unit tests so that
/// they can reach it with a few hundred files.
const TREE_LIMIT: usize = if cfg!(test) {
    64 * 1024
} else {
    crate::compress::MAX_BLOB_LEN
};

/// Whether a file's size or times moved between two looks at it (borg's
/// "file changed while we backed it up").
fn changed_while_read(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (
        before.size(),
        before.mtime(),
        before.mtime_nsec(),
        before.ctime(),
        before.ctime_nsec(),
    ) != (
        after.size(),
        after.mtime(),
        after.mtime_nsec(),
        after.ctime(),
        after.ctime_nsec(),
    )
}

/// A prune that ran while we backed up may have deleted a pack we
/// deduplicated against (only possible if this backup outlived the prune
/// safety margin, or with `--instant-delete`). Detect that before saving the
/// snapshot, so a snapshot never references missing data.
fn ensure_not_pruned_under_us(
    repo: &Repository,
    at_start: &std::collections::HashSet<crate::id::IndexId>,
    root: &BlobId,
) -> Result<()> {
    let now = repo.index_ids()?;
    let mut maintenance_ran = false;
    for id in now.iter().filter(|id| !at_start.contains(id)) {
        if let Ok(file) = repo.load_index_file(id)
            && !file.supersedes.is_empty()
        {
            maintenance_ran = true;
        }
    }
    if !maintenance_ran {
        return Ok(());
    }
    let index = repo.load_index()?;
    let stored = crate::check::stored_packs(repo)?;
    let present = |id: &BlobId| index.get(id).is_some_and(|l| stored.contains_key(&l.pack));
    let mut stack = vec![*root];
    let mut seen = std::collections::HashSet::new();
    while let Some(tree_id) = stack.pop() {
        if !seen.insert(tree_id) {
            continue;
        }
        let missing = || {
            Error::InvalidInput(
                "a prune running beside this backup removed data it deduplicated against; no snapshot was saved, run the backup again".into(),
            )
        };
        if !present(&tree_id) {
            return Err(missing());
        }
        let tree = repo.read_tree(&index, &tree_id)?;
        for node in tree.nodes {
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

fn absolute(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
    // Normalise `.`/`..` lexically, as the user named the path.
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn snapshot_paths(source: &Source) -> Result<Vec<String>> {
    let mut paths = match source {
        Source::Paths(list) => {
            if list.is_empty() {
                return Err(Error::InvalidInput(
                    "nothing to back up: no paths given".into(),
                ));
            }
            list.iter()
                .map(|p| Ok(absolute(p)?.to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>>>()?
        }
        Source::Stream { filename, .. } | Source::Command { filename, .. } => {
            vec![stream_path(filename)?]
        }
        Source::Commands(list) => {
            let paths = list
                .iter()
                .map(|c| stream_path(&c.filename))
                .collect::<Result<Vec<_>>>()?;
            let distinct: std::collections::HashSet<&String> = paths.iter().collect();
            if paths.is_empty() || distinct.len() != paths.len() {
                return Err(Error::InvalidInput(format!(
                    "commands need distinct file names, not {paths:?}"
                )));
            }
            paths
        }
    };
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The snapshot path of a stream's or command's file.
fn stream_path(filename: &str) -> Result<String> {
    if filename.is_empty() || filename.contains('/') || filename == "." || filename == ".." {
        return Err(Error::InvalidInput(format!(
            "invalid stdin file name {filename:?}: give a file name without `/` (the stream is \
             stored as /NAME at the snapshot's root; tag or name the snapshot to tell streams \
             apart)"
        )));
    }
    Ok(format!("/{filename}"))
}

fn find_parent(
    repo: &Repository,
    options: &BackupOptions,
    paths: &[String],
) -> Result<Option<(SnapshotId, Snapshot)>> {
    if options.force {
        return Ok(None);
    }
    if let Some(id) = options.parent {
        return Ok(Some((id, repo.load_snapshot(&id)?)));
    }
    Ok(repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, s)| s.hostname == options.hostname && s.paths == paths))
}

/// The directories above the backed-up paths, built so the snapshot mirrors
/// absolute paths (`/srv/x` restores to `TARGET/srv/x`).
#[derive(Default)]
struct VirtualDir {
    children: BTreeMap<OsString, VirtualEntry>,
}

enum VirtualEntry {
    Leaf(PathBuf),
    Dir(VirtualDir),
}

impl VirtualDir {
    fn insert(&mut self, components: &[OsString], full: &Path) {
        let Some((first, rest)) = components.split_first() else {
            return;
        };
        if rest.is_empty() {
            self.children
                .insert(first.clone(), VirtualEntry::Leaf(full.to_path_buf()));
            return;
        }
        let entry = self
            .children
            .entry(first.clone())
            .or_insert_with(|| VirtualEntry::Dir(VirtualDir::default()));
        if let VirtualEntry::Dir(dir) = entry {
            dir.insert(rest, full);
        }
        // A leaf already covers everything below it.
    }

    /// The given paths at or below this directory.
    fn leaves(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        for entry in self.children.values() {
            match entry {
                VirtualEntry::Leaf(full) => out.push(full.as_path()),
                VirtualEntry::Dir(dir) => out.extend(dir.leaves()),
            }
        }
        out
    }
}

/// Compares a node's name with an OS name without allocating in the usual
/// case (a UTF-8 name, stored as is).
fn cmp_name(node: &Node, name: &OsStr) -> std::cmp::Ordering {
    match &node.name_raw {
        None => node.name.as_bytes().cmp(name.as_bytes()),
        Some(_) => node.os_name().as_os_str().cmp(name),
    }
}

/// The parent snapshot's node of the same name (trees are sorted by name).
fn find_child<'t>(tree: Option<&'t Tree>, name: &OsStr) -> Option<&'t Node> {
    let nodes = &tree?.nodes;
    let i = nodes.binary_search_by(|n| cmp_name(n, name)).ok()?;
    nodes.get(i)
}

/// Whether nodes are in canonical order already (the walker lists names
/// sorted), so [`Tree::sort`] and its allocations can be skipped.
fn is_sorted(tree: &Tree) -> bool {
    tree.nodes.windows(2).all(|w| match w {
        [a, b] if a.name_raw.is_none() && b.name_raw.is_none() => {
            a.name.as_bytes() < b.name.as_bytes()
        }
        [a, b] => a.os_name() < b.os_name(),
        _ => true,
    })
}

/// Stops the walk on the first error of a reader or the finalizer.
fn stopped() -> Error {
    Error::InvalidInput("backup stopped after an error".into())
}

/// Walks `list`, reading files on reader threads and assembling trees on a
/// finalizer thread. Returns the root tree's id.
fn save_paths(
    ctx: &Ctx<'_>,
    excludes: Excludes,
    list: &[PathBuf],
    parent: Option<&Tree>,
) -> Result<BlobId> {
    let readers = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .clamp(2, 4);
    std::thread::scope(|scope| {
        let (task_tx, task_rx) = bounded::<FileTask>(FILE_QUEUE);
        let (dir_tx, dir_rx) = bounded::<PendingDir>(DIR_QUEUE);
        for _ in 0..readers {
            let rx = task_rx.clone();
            std::thread::Builder::new()
                .name("vault-read".into())
                .spawn_scoped(scope, move || {
                    for task in rx {
                        let read = ctx.read_file(&task.path, task.size, task.identity);
                        let _ = task.reply.send(read);
                    }
                })
                .map_err(|e| Error::io("starting a reader thread", e))?;
        }
        drop(task_rx);
        let finalizer = std::thread::Builder::new()
            .name("vault-tree".into())
            .spawn_scoped(scope, move || {
                for dir in dir_rx {
                    let result = ctx.finalize(&dir.path, dir.nodes).map_err(|e| ctx.fail(e));
                    let _ = dir.reply.send(result);
                }
            })
            .map_err(|e| Error::io("starting the tree thread", e))?;
        let mut walker = Walker {
            ctx,
            excludes,
            names: Names::default(),
            devices: Vec::new(),
            tasks: task_tx,
            dirs: dir_tx,
        };
        let walked = walker.save_paths(list, parent);
        // Closing the queues lets the readers and the finalizer finish.
        drop(walker);
        let root = walked.and_then(|root| root.recv().unwrap_or_else(|_| Err(stopped())));
        let _ = finalizer.join();
        root.map_err(|e| match e {
            Error::Interrupted => Error::Interrupted,
            e => ctx
                .failure
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or(e),
        })
    })
}

impl Ctx<'_> {
    fn record_error(&self, path: &Path, error: impl std::fmt::Display) {
        // The report carries it, and the CLI prints every one as a warning:
        // a warning here too printed each twice.
        tracing::info!("{}: {error}", path.display());
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().expect("not poisoned").push(SourceError {
            path: path.display().to_string(),
            error: error.to_string(),
        });
    }

    /// [`walk::node_from_metadata`], reporting what of the entry's metadata
    /// could not be saved exactly: counted as an entry not read whole
    /// (exit 3), while the entry itself is saved.
    fn node_from_metadata(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        names: &walk::Names,
    ) -> Option<Node> {
        let mut problems = Vec::new();
        let node = walk::node_from_metadata(path, meta, names, &mut problems);
        for problem in problems {
            self.record_error(path, problem);
        }
        node
    }

    /// Stops the walk on a finalizer error: keeps the first one for
    /// [`save_paths`] to return, and passes a placeholder up the trees.
    fn fail(&self, e: Error) -> Error {
        if matches!(e, Error::Interrupted) {
            return e;
        }
        self.stop.store(true, Ordering::SeqCst);
        let mut slot = self.failure.lock().expect("not poisoned");
        if slot.is_none() {
            *slot = Some(e);
        }
        stopped()
    }

    fn check_cancel(&self) -> Result<()> {
        if self.options.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        if self.saver.has_failed() {
            // Surface the pipeline's error via finish().
            return Err(Error::InvalidInput("write pipeline failed".into()));
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        Ok(())
    }

    fn save_tree(&self, tree: Tree) -> Result<BlobId> {
        self.save_tree_within_limit(tree)?
            .map_err(|too_large| Error::InvalidInput(format!("{too_large}; nothing was saved")))
    }

    /// Saves a tree, or says why it cannot be one blob (the format's
    /// `MAX_BLOB_LEN`: ~550 000 entries with long names).
    fn save_tree_within_limit(
        &self,
        mut tree: Tree,
    ) -> Result<std::result::Result<BlobId, String>> {
        if !is_sorted(&tree) {
            tree.sort();
        }
        let bytes = tree.encode();
        if bytes.len() > TREE_LIMIT {
            return Ok(Err(format!(
                "a directory listing of {} entries exceeds the format's {TREE_LIMIT} byte tree limit",
                tree.nodes.len(),
            )));
        }
        self.saver.save(BlobKind::Tree, bytes).map(Ok)
    }

    /// A reader's work: cut a file into chunks and hand them to the saver.
    fn read_file(&self, path: &Path, size: u64, identity: (u64, u64)) -> Result<FileOutcome> {
        self.check_cancel()?;
        let (file, before, replaced) = match open_listed(path, identity) {
            Ok(opened) => opened,
            Err(e) => return Ok(FileOutcome::Unreadable(e)),
        };
        let replaced = replaced
            .then(|| self.node_from_metadata(path, &before, &walk::Names::default()))
            .flatten()
            .map(Box::new);
        match self.save_content(&file, Some(size)) {
            Ok((ids, size)) => {
                // The node keeps the metadata from before the read, so the
                // next backup sees the change and reads the file again.
                if let Ok(after) = file.metadata()
                    && changed_while_read(&before, &after)
                {
                    tracing::warn!(
                        "{}: changed while it was read; saved as read (it may mix old and new content; the next backup reads it again)",
                        path.display()
                    );
                }
                let mut problems = Vec::new();
                let inode_flags =
                    walk::inode_flags_of(std::os::fd::AsFd::as_fd(&file), &mut problems);
                for problem in problems {
                    self.record_error(path, problem);
                }
                Ok(FileOutcome::Content {
                    ids,
                    size,
                    inode_flags,
                    replaced,
                })
            }
            Err(ContentError::Read(e)) => Ok(FileOutcome::Unreadable(e)),
            Err(ContentError::Engine(e)) => Err(e),
        }
    }

    /// Cuts a stream into chunks and submits them; ids are left pending
    /// (at most [`MAX_OUTSTANDING`] at a time) so reading never waits for
    /// hashing except to bound memory.
    fn save_content(
        &self,
        reader: impl Read,
        size_hint: Option<u64>,
    ) -> std::result::Result<(Vec<ContentId>, u64), ContentError> {
        let mut content = Vec::new();
        let mut outstanding: VecDeque<usize> = VecDeque::new();
        let mut size = 0u64;
        let chunks = self.repo.config().chunker.chunks_sized(reader, size_hint);
        for chunk in chunks.with_buffers(self.saver.buffers()) {
            self.check_cancel().map_err(ContentError::Engine)?;
            let chunk = chunk.map_err(ContentError::Read)?;
            size += chunk.len() as u64;
            self.progress
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let pending = self
                .saver
                .submit(BlobKind::Data, chunk)
                .map_err(ContentError::Engine)?;
            outstanding.push_back(content.len());
            content.push(ContentId::Pending(pending));
            while let Some(&first) = outstanding.front() {
                let ready = matches!(&content[first], ContentId::Pending(p) if p.ready());
                if !ready && outstanding.len() <= MAX_OUTSTANDING {
                    break;
                }
                outstanding.pop_front();
                resolve(&mut content[first]).map_err(ContentError::Engine)?;
            }
        }
        Ok((content, size))
    }

    /// The finalizer's work: a directory's tree once every entry is known.
    fn finalize(&self, path: &Path, nodes: Vec<PendingNode>) -> Result<BlobId> {
        let mut tree = Tree::default();
        tree.nodes.reserve(nodes.len());
        let counters = &self.counters;
        for pending in nodes {
            match pending {
                PendingNode::Ready(node) => tree.nodes.push(node),
                PendingNode::Dir { mut node, subtree } => {
                    node.subtree = Some(subtree.recv().unwrap_or_else(|_| Err(stopped()))?);
                    tree.nodes.push(node);
                }
                PendingNode::File {
                    mut node,
                    path,
                    changed,
                    outcome,
                } => match outcome.recv().unwrap_or_else(|_| Err(stopped()))? {
                    FileOutcome::Content {
                        ids,
                        size,
                        inode_flags,
                        replaced,
                    } => {
                        if let Some(found) = replaced {
                            node = *found;
                        }
                        node.inode_flags = inode_flags;
                        let ids = ids
                            .into_iter()
                            .map(|mut c| resolve(&mut c))
                            .collect::<Result<Vec<_>>>()?;
                        // Record what was read, which may differ from the
                        // stat size if the file changed under us.
                        counters.bytes.fetch_add(size, Ordering::Relaxed);
                        counters.bytes.fetch_sub(node.size, Ordering::Relaxed);
                        node.size = size;
                        node.content = Some(ids);
                        // One line per file at -vv, as restic prints them.
                        if changed {
                            counters.files_changed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("modified  {}", path.display());
                        } else {
                            counters.files_new.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("new       {}", path.display());
                        }
                        self.progress.files.fetch_add(1, Ordering::Relaxed);
                        tree.nodes.push(node);
                    }
                    FileOutcome::Unreadable(e) => {
                        self.record_error(&path, e);
                        counters.files.fetch_sub(1, Ordering::Relaxed);
                        counters.bytes.fetch_sub(node.size, Ordering::Relaxed);
                    }
                },
            }
        }
        // A directory too large for one tree costs its own entries, not
        // the backup: it is saved empty and reported (exit 3), as an
        // unreadable one would be.
        match self.save_tree_within_limit(tree)? {
            Ok(id) => Ok(id),
            Err(too_large) => {
                self.record_error(path, format!("{too_large}; saved as an empty directory"));
                self.save_tree(Tree::default())
            }
        }
    }

    fn stream_node(&self, filename: &str, content: Vec<BlobId>, size: u64) -> Node {
        let mut node = Node::new(filename, NodeKind::File);
        node.mode = 0o600;
        node.uid = nix::unistd::getuid().as_raw();
        node.gid = nix::unistd::getgid().as_raw();
        node.size = size;
        node.content = Some(content);
        node
    }

    /// Saves a whole stream as one file; returns its tree.
    fn save_stream_content(
        &self,
        filename: &str,
        reader: impl Read,
    ) -> std::result::Result<BlobId, ContentError> {
        let (content, size) = self.save_content(reader, None)?;
        let content = content
            .into_iter()
            .map(|mut c| resolve(&mut c))
            .collect::<Result<Vec<_>>>()
            .map_err(ContentError::Engine)?;
        self.counters.files.store(1, Ordering::Relaxed);
        self.counters.files_new.store(1, Ordering::Relaxed);
        self.counters.bytes.store(size, Ordering::Relaxed);
        let node = self.stream_node(filename, content, size);
        self.save_tree(Tree { nodes: vec![node] })
            .map_err(ContentError::Engine)
    }

    fn save_stream(&self, filename: &str, reader: Box<dyn Read + Send>) -> Result<BlobId> {
        self.save_stream_content(filename, reader)
            .map_err(|e| match e {
                ContentError::Read(e) => {
                    Error::SourceFailed(format!("reading standard input: {e}"))
                }
                ContentError::Engine(e) => e,
            })
    }

    /// Runs a command, saving its output as the file `filename`; returns
    /// its node.
    fn command_node(
        &self,
        filename: &str,
        program: &OsStr,
        args: &[OsString],
        env: &[(OsString, OsString)],
    ) -> Result<Node> {
        let shown = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let mut child = child_command(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Its own process group, so that Ctrl-C stops the command and
            // whatever it started (`sh -c '... | gzip'`), through the watch
            // below, and not only vault.
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::SourceFailed(format!("starting `{shown}`: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // The group's id is the child's pid (`process_group(0)`).
        let group = i32::try_from(child.id()).map(|pid| nix::unistd::Pid::from_raw(-pid));
        let timed_out = Arc::new(AtomicBool::new(false));
        let deadline = self
            .options
            .command_timeout
            .map(|t| std::time::Instant::now() + t);
        let watch = Watch::start(self.options.cancel.clone(), deadline, {
            let timed_out = timed_out.clone();
            move |stop| {
                use nix::sys::signal::Signal;
                if stop == Stop::TimedOut {
                    timed_out.store(true, Ordering::SeqCst);
                }
                let signal = match stop {
                    Stop::Force => Signal::SIGKILL,
                    Stop::Cancelled | Stop::TimedOut => Signal::SIGTERM,
                };
                if let Ok(group) = group {
                    let _ = nix::sys::signal::kill(group, signal);
                }
            }
        });
        let timeout_error = || {
            let after = self.options.command_timeout.unwrap_or_default();
            Error::SourceFailed(format!(
                "command `{shown}` was still running after {}s, its timeout, and was stopped; no snapshot was saved",
                after.as_secs()
            ))
        };
        let stderr_tail = pass_stderr_through(child.stderr.take().expect("stderr is piped"));
        let stdout = Stoppable {
            inner: stdout,
            stop: [timed_out.clone(), self.options.cancel.clone()],
        };
        // The tree is saved only after the exit status is known.
        let result = self.save_content(stdout, None).and_then(|(content, size)| {
            let ids = content
                .into_iter()
                .map(|mut c| resolve(&mut c))
                .collect::<Result<Vec<_>>>()
                .map_err(ContentError::Engine)?;
            Ok((ids, size))
        });
        let (content, size) = match result {
            Ok(v) => v,
            Err(e) => {
                // Reading stops at Ctrl-C or the timeout, possibly before
                // the watch has signalled the group, and the command is
                // abandoned: the watch, which would have sent SIGKILL after
                // its grace period, goes with it. So the group gets SIGTERM,
                // a moment for its handlers, then SIGKILL for members that
                // ignore SIGTERM, all before the child is waited for: until
                // then it holds the group's id, which cannot be reused.
                if let Ok(group) = group {
                    use nix::sys::signal::{Signal, kill};
                    let _ = kill(group, Signal::SIGTERM);
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let _ = kill(group, Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                drop(watch);
                if timed_out.load(Ordering::SeqCst) {
                    return Err(timeout_error());
                }
                self.check_cancel()?;
                return Err(match e {
                    ContentError::Read(e) => {
                        Error::SourceFailed(format!("reading output of `{shown}`: {e}"))
                    }
                    ContentError::Engine(e) => e,
                });
            }
        };
        let status = child
            .wait()
            .map_err(|e| Error::SourceFailed(format!("waiting for `{shown}`: {e}")))?;
        // The group's pid may be reused once waited for: no signal after this.
        drop(watch);
        let last_message = stderr_tail.join().ok().flatten();
        self.check_cancel()?;
        if timed_out.load(Ordering::SeqCst) {
            return Err(timeout_error());
        }
        if !status.success() {
            let why = last_message.map(|m| format!(": {m}")).unwrap_or_default();
            return Err(Error::SourceFailed(format!(
                "command `{shown}` failed ({status}){why}; no snapshot was saved"
            )));
        }
        if size == 0 {
            // Saved (some commands rightly print nothing), but a dump that
            // wrote its data elsewhere or to stderr looks exactly like this.
            tracing::warn!(
                "command `{shown}` succeeded but wrote nothing to standard output; the snapshot holds an empty {filename}"
            );
        }
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        self.counters.files_new.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(self.stream_node(filename, content, size))
    }
}

/// A command's standard output that stops blocking once a stop flag is set
/// (its timeout passed, or Ctrl-C): stopping the command's process group
/// does not close the pipe when something it started left the group
/// (`setsid`, a daemonizing ssh) and holds it, and reading to the end
/// would wait for that process however long it lives.
struct Stoppable {
    inner: std::process::ChildStdout,
    stop: [Arc<AtomicBool>; 2],
}

impl Read for Stoppable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        loop {
            if self.stop.iter().any(|s| s.load(Ordering::SeqCst)) {
                return Err(std::io::Error::other("the command was stopped"));
            }
            let mut fds = [PollFd::new(self.inner.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u16)) {
                // Nothing yet: look at the flags again.
                Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                // Data, or the end (POLLHUP): read says which.
                Ok(_) => return self.inner.read(buf),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Environment variables holding vault's own secrets: its repository
/// password and the object store's secret key.
const SECRET_ENV: [&str; 8] = [
    "VAULT_PASSWORD",
    "VAULT_FROM_PASSWORD",
    "VAULT_TO_PASSWORD",
    // Commands that print a password often carry a token themselves.
    "VAULT_PASSWORD_COMMAND",
    "VAULT_FROM_PASSWORD_COMMAND",
    "VAULT_TO_PASSWORD_COMMAND",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// A command for a child process (a dump, a database client) without
/// vault's secrets in its environment: a `command` source running `env`,
/// or any program logging its environment, would otherwise have written
/// the repository password into the backup. What a child needs, it gets
/// from its own configuration (a passfile, a defaults file).
#[must_use]
pub fn child_command(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for name in SECRET_ENV {
        cmd.env_remove(name);
    }
    cmd
}

/// Passes a child's messages through to vault's stderr, keeping the tail
/// so that a failure can say why (e.g. "pg_dump: error: database does not
/// exist"): the thread returns [`failure_reason`] of it.
fn pass_stderr_through(
    mut stderr: std::process::ChildStderr,
) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            let _ = std::io::Write::write_all(&mut std::io::stderr(), chunk);
            tail.extend_from_slice(chunk);
            if tail.len() > 2048 {
                tail.drain(..tail.len() - 2048);
            }
        }
        failure_reason(&String::from_utf8_lossy(&tail))
    })
}

/// Runs a command to its end for its effect (a source's `before` or
/// `after` hook), as a [`Source::Command`] runs: without vault's secrets
/// ([`child_command`]), in its own process group, stopped (SIGTERM, then
/// SIGKILL after a grace period) when `cancel` is set or `timeout` passes.
/// Its standard output goes to vault's standard error, so that it never
/// mixes into `--json` output. `what` names it in errors.
///
/// # Errors
///
/// [`Error::SourceFailed`] naming `what`, the program, its exit status and
/// the last error line it wrote, or its timeout; [`Error::Interrupted`]
/// when `cancel` stopped it.
pub fn run_command(
    what: &str,
    program: &OsStr,
    args: &[OsString],
    env: &[(OsString, OsString)],
    timeout: Option<std::time::Duration>,
    cancel: Arc<AtomicBool>,
) -> Result<()> {
    let shown = Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned();
    let stdout = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map_err(|e| Error::SourceFailed(format!("starting {what} `{shown}`: {e}")))?;
    let mut child = child_command(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::SourceFailed(format!("starting {what} `{shown}`: {e}")))?;
    let group = i32::try_from(child.id()).map(|pid| nix::unistd::Pid::from_raw(-pid));
    let stopped = Arc::new(Mutex::new(None));
    let watch = Watch::start(cancel, timeout.map(|t| std::time::Instant::now() + t), {
        let stopped = stopped.clone();
        move |stop| {
            use nix::sys::signal::Signal;
            let signal = match stop {
                Stop::Force => Signal::SIGKILL,
                Stop::Cancelled | Stop::TimedOut => {
                    *stopped.lock().expect("not poisoned") = Some(stop);
                    Signal::SIGTERM
                }
            };
            if let Ok(group) = group {
                let _ = nix::sys::signal::kill(group, signal);
            }
        }
    });
    let stderr_tail = pass_stderr_through(child.stderr.take().expect("stderr is piped"));
    let status = child
        .wait()
        .map_err(|e| Error::SourceFailed(format!("waiting for {what} `{shown}`: {e}")));
    // The group's pid may be reused once waited for: no signal after this.
    drop(watch);
    // A hook that starts a service may leave it holding the pipe: wait
    // for its stderr a little, not until the service ends.
    let waited = std::time::Instant::now();
    while !stderr_tail.is_finished() && waited.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let last_message = if stderr_tail.is_finished() {
        stderr_tail.join().ok().flatten()
    } else {
        None
    };
    let status = status?;
    match *stopped.lock().expect("not poisoned") {
        Some(Stop::Cancelled) => return Err(Error::Interrupted),
        Some(_) => {
            return Err(Error::SourceFailed(format!(
                "{what} `{shown}` was still running after {}s, its timeout, and was stopped",
                timeout.unwrap_or_default().as_secs()
            )));
        }
        None => {}
    }
    if !status.success() {
        let why = last_message.map(|m| format!(": {m}")).unwrap_or_default();
        return Err(Error::SourceFailed(format!(
            "{what} `{shown}` failed ({status}){why}"
        )));
    }
    Ok(())
}

/// What a failed command's stderr says about why: its last line naming an
/// error (`pg_dump: error: ... FATAL: password authentication failed`),
/// with the last line after it if there is one (`Is the server running on
/// that host...?`); else its last line. The very last line alone was often
/// only a remark ("password retrieved from file ...").
fn failure_reason(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let last = lines.last()?;
    let error = lines.iter().rposition(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("error") || l.contains("fatal")
    });
    Some(match error {
        Some(i) if i + 1 < lines.len() => format!("{} ({last})", lines[i]),
        Some(i) => lines[i].to_owned(),
        None => (*last).to_owned(),
    })
}

/// Turns a pending id into the id, waiting for it if needed.
fn resolve(c: &mut ContentId) -> Result<BlobId> {
    let id = match std::mem::replace(c, ContentId::Id(BlobId([0; 32]))) {
        ContentId::Id(id) => id,
        ContentId::Pending(p) => p.wait()?,
    };
    *c = ContentId::Id(id);
    Ok(id)
}

impl Walker<'_, '_> {
    fn parent_subtree(&self, node: Option<&Node>) -> Option<Tree> {
        let id = node?.subtree?;
        self.ctx.trees.read(&id).ok()
    }

    /// Hands a listed directory to the finalizer; returns where its tree id
    /// will arrive.
    fn finish_dir(&self, dir: &Path, nodes: Vec<PendingNode>) -> Result<Receiver<Result<BlobId>>> {
        let (tx, rx) = bounded(1);
        self.dirs
            .send(PendingDir {
                path: dir.to_path_buf(),
                nodes,
                reply: tx,
            })
            .map_err(|_| stopped())?;
        Ok(rx)
    }

    fn save_paths(
        &mut self,
        list: &[PathBuf],
        parent: Option<&Tree>,
    ) -> Result<Receiver<Result<BlobId>>> {
        let mut root = VirtualDir::default();
        let mut whole_root = false;
        for p in list {
            let abs = absolute(p)?;
            // A path that cannot be read is reported when the walk reaches
            // it; it has no device to stay on.
            if let Ok(meta) = std::fs::symlink_metadata(&abs) {
                let dev = std::os::unix::fs::MetadataExt::dev(&meta);
                self.devices.push((abs.clone(), dev));
            }
            let components: Vec<OsString> = abs
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(n) => Some(n.to_os_string()),
                    _ => None,
                })
                .collect();
            if components.is_empty() {
                whole_root = true;
            } else {
                root.insert(&components, &abs);
            }
        }
        if whole_root {
            // Backing up "/" itself: walk it as the root directory; every
            // other path lies below it.
            return self.read_dir_tree(Path::new("/"), parent);
        }
        self.save_virtual(&root, Path::new("/"), parent)
    }

    /// The device of the deepest given path at or above `path`.
    fn device_above(&self, path: &Path) -> Option<u64> {
        self.devices
            .iter()
            .filter(|(given, _)| path.starts_with(given))
            .max_by_key(|(given, _)| given.as_os_str().len())
            .map(|&(_, dev)| dev)
    }

    fn save_virtual(
        &mut self,
        dir: &VirtualDir,
        at: &Path,
        parent: Option<&Tree>,
    ) -> Result<Receiver<Result<BlobId>>> {
        let mut nodes = Vec::new();
        for (name, entry) in &dir.children {
            let path = at.join(name);
            let parent_node = find_child(parent, name);
            match entry {
                VirtualEntry::Leaf(full) => {
                    let meta = match std::fs::symlink_metadata(full) {
                        Ok(m) => m,
                        Err(e) => {
                            self.ctx.record_error(full, e);
                            continue;
                        }
                    };
                    if let Some(node) = self.save_entry(full, meta, parent_node)? {
                        nodes.push(node);
                    }
                }
                VirtualEntry::Dir(sub) => {
                    // An ancestor of a path to back up is the directory it
                    // leads to, even through a symlink (`/var/run` ->
                    // `/run`): recorded as the symlink, it was a symlink node
                    // with children, which prune did not follow (deleting
                    // their data) and restore recreated as a symlink it then
                    // wrote through.
                    let meta = match std::fs::metadata(&path) {
                        Ok(m) => m,
                        Err(e) => {
                            // Name the paths the user gave, and where the
                            // way to them ends.
                            for leaf in sub.leaves() {
                                let error = format!("{e} (at {})", path.display());
                                self.ctx.record_error(leaf, error);
                            }
                            continue;
                        }
                    };
                    let Some(node) = self.ctx.node_from_metadata(&path, &meta, &self.names) else {
                        continue;
                    };
                    let parent_sub = self.parent_subtree(parent_node);
                    let subtree = self.save_virtual(sub, &path, parent_sub.as_ref())?;
                    nodes.push(PendingNode::Dir { node, subtree });
                }
            }
        }
        self.finish_dir(at, nodes)
    }

    fn read_dir_tree(
        &mut self,
        dir: &Path,
        parent: Option<&Tree>,
    ) -> Result<Receiver<Result<BlobId>>> {
        self.read_dir_tree_keeping(dir, parent, None)
    }

    /// Saves a directory; with `keep` (see [`walk::marker_keeps`]), only the
    /// entry of that name, if any.
    fn read_dir_tree_keeping(
        &mut self,
        dir: &Path,
        parent: Option<&Tree>,
        keep: Option<&Option<OsString>>,
    ) -> Result<Receiver<Result<BlobId>>> {
        let mut nodes = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.ctx.record_error(dir, e);
                return self.finish_dir(dir, nodes);
            }
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => names.push(e.file_name()),
                Err(e) => self.ctx.record_error(dir, e),
            }
        }
        if let Some(keep) = keep {
            names.retain(|name| keep.as_ref() == Some(name));
        }
        names.sort();
        nodes.reserve(names.len());
        for name in names {
            self.ctx.check_cancel()?;
            let path = dir.join(&name);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.ctx.record_error(&path, e);
                    continue;
                }
            };
            if self.excludes.is_excluded(&path, meta.is_dir())
                || (meta.is_file()
                    && self
                        .ctx
                        .options
                        .exclude_larger_than
                        .is_some_and(|max| meta.len() > max))
            {
                continue;
            }
            if let Some(node) = self.save_entry(&path, meta, find_child(parent, &name))? {
                nodes.push(node);
            }
        }
        self.finish_dir(dir, nodes)
    }

    fn save_entry(
        &mut self,
        path: &Path,
        meta: std::fs::Metadata,
        parent_node: Option<&Node>,
    ) -> Result<Option<PendingNode>> {
        let Some(mut node) = self.ctx.node_from_metadata(path, &meta, &self.names) else {
            return Ok(None);
        };
        let ctx = self.ctx;
        match node.kind {
            NodeKind::File => {
                ctx.counters.files.fetch_add(1, Ordering::Relaxed);
                ctx.counters.bytes.fetch_add(node.size, Ordering::Relaxed);
                if let Some(old) = parent_node
                    && !ctx.options.force
                    && walk::unchanged(old, &node, ctx.options.change_detection)
                    && old
                        .content
                        .as_ref()
                        .is_some_and(|c| c.iter().all(|id| ctx.saver.contains(id)))
                {
                    node.content.clone_from(&old.content);
                    // Changing them changes the ctime: an unchanged
                    // file's are the parent's, when it recorded them (a
                    // snapshot by a vault before inode flags has none for
                    // flags set before it).
                    node.inode_flags =
                        if ctx.parent_has_flags && !ctx.options.change_detection.ignore_ctime {
                            old.inode_flags
                        } else {
                            let mut problems = Vec::new();
                            let flags = walk::read_inode_flags(path, NodeKind::File, &mut problems);
                            for problem in problems {
                                ctx.record_error(path, problem);
                            }
                            flags
                        };
                    ctx.counters
                        .files_unmodified
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("unchanged {}", path.display());
                    ctx.progress.files.fetch_add(1, Ordering::Relaxed);
                    ctx.progress.bytes.fetch_add(node.size, Ordering::Relaxed);
                    return Ok(Some(PendingNode::Ready(node)));
                }
                let (reply, outcome) = bounded(1);
                self.tasks
                    .send(FileTask {
                        path: path.to_path_buf(),
                        size: node.size,
                        identity: (
                            std::os::unix::fs::MetadataExt::dev(&meta),
                            std::os::unix::fs::MetadataExt::ino(&meta),
                        ),
                        reply,
                    })
                    .map_err(|_| stopped())?;
                Ok(Some(PendingNode::File {
                    node,
                    path: path.to_path_buf(),
                    changed: parent_node.is_some(),
                    outcome,
                }))
            }
            NodeKind::Dir => {
                ctx.counters.dirs.fetch_add(1, Ordering::Relaxed);
                let dev = std::os::unix::fs::MetadataExt::dev(&meta);
                let crosses = ctx.options.one_file_system
                    && self.device_above(path).is_some_and(|d| d != dev);
                let subtree = if crosses {
                    self.finish_dir(path, Vec::new())?
                } else {
                    let keep = walk::marker_keeps(
                        path,
                        ctx.options.exclude_caches,
                        &ctx.options.exclude_if_present,
                    );
                    let parent_sub = self.parent_subtree(parent_node);
                    self.read_dir_tree_keeping(path, parent_sub.as_ref(), keep.as_ref())?
                };
                Ok(Some(PendingNode::Dir { node, subtree }))
            }
            _ => Ok(Some(PendingNode::Ready(node))),
        }
    }
}

enum ContentError {
    Read(std::io::Error),
    Engine(Error),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn identity(path: &Path) -> (u64, u64) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.dev(), meta.ino())
    }

    /// A directory whose listing exceeds the tree limit (64 KiB in unit
    /// tests, 256 MiB for real: ~550 000 long names) is saved empty and
    /// reported; the rest of the backup is saved.
    #[test]
    fn a_directory_too_large_for_one_tree_is_saved_empty_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge");
        std::fs::create_dir(&huge).unwrap();
        for i in 0..400 {
            std::fs::write(huge.join(format!("{i:04}{}", "n".repeat(200))), b"").unwrap();
        }
        std::fs::write(dir.path().join("kept"), b"kept").unwrap();
        let (_, repo) = crate::test_support::memory_repo(crate::repository::InitOptions::default());
        let options = BackupOptions {
            hostname: "h".into(),
            ..BackupOptions::default()
        };
        let report = backup(
            &repo,
            Source::Paths(vec![dir.path().to_path_buf()]),
            &options,
            &BackupProgress::default(),
        )
        .unwrap();
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].path, huge.display().to_string());
        assert!(
            report.errors[0].error.contains("tree limit"),
            "{:?}",
            report.errors
        );
        let index = repo.load_index().unwrap();
        let root = dir.path().display().to_string();
        let kept =
            crate::restore::find_node(&repo, &index, &report.snapshot.tree, format!("{root}/kept"));
        assert!(kept.is_ok());
        let emptied =
            crate::restore::find_node(&repo, &index, &report.snapshot.tree, format!("{root}/huge"))
                .unwrap();
        let listing = repo.read_tree(&index, &emptied.subtree.unwrap()).unwrap();
        assert!(listing.nodes.is_empty());
    }

    #[test]
    fn a_failed_commands_reason_is_its_error_line() {
        let pg = "pg_dump: error: connection to server at \"127.0.0.1\", port 5 failed: FATAL:  password authentication failed for user \"u\"\npassword retrieved from file \"/p\"\n";
        assert_eq!(
            failure_reason(pg).unwrap(),
            "pg_dump: error: connection to server at \"127.0.0.1\", port 5 failed: FATAL:  password authentication failed for user \"u\" (password retrieved from file \"/p\")"
        );
        assert_eq!(
            failure_reason("warming up\nmysqldump: Got error: 1049: Unknown database 'x'\n\n")
                .unwrap(),
            "mysqldump: Got error: 1049: Unknown database 'x'"
        );
        assert_eq!(failure_reason("first\nsecond\n").unwrap(), "second");
        assert_eq!(failure_reason("  \n"), None);
    }

    #[test]
    fn a_listed_file_swapped_before_its_read_is_never_followed_or_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"listed").unwrap();
        let listed = identity(&path);
        // Made while `f` exists, so it cannot reuse its inode number.
        let other = dir.path().join("other");
        std::fs::write(&other, b"renamed over").unwrap();
        let (_, _, replaced) = open_listed(&path, listed).unwrap();
        assert!(!replaced);

        // A symlink to a file the owner of the directory may not read.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let err = open_listed(&path, listed).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");

        // A FIFO: refused at once instead of a read that never returns.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = open_listed(&path, listed).unwrap_err();
        assert!(err.to_string().contains("other than a file"), "{err}");

        // Another regular file, renamed over it: read, with its own
        // metadata to record.
        std::fs::remove_file(&path).unwrap();
        std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::rename(&other, &path).unwrap();
        let (mut file, meta, replaced) = open_listed(&path, listed).unwrap();
        assert!(replaced, "a different file");
        assert_eq!((meta.dev(), meta.ino()), identity(&path));
        assert_eq!(meta.mode() & 0o777, 0o600);
        let mut content = String::new();
        std::io::Read::read_to_string(&mut file, &mut content).unwrap();
        assert_eq!(content, "renamed over");
    }
}
