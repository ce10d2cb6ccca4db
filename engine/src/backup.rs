//! Backup: a source (file trees, a stream, a command's output) into a
//! snapshot.
//!
//! The walk runs on the calling thread: it reads files, cuts chunks and
//! hashes them, and hands new chunks to the [`Saver`] pipeline, which seals,
//! packs and uploads them on other threads. Files unchanged since the parent
//! snapshot (same size, mtime, ctime and inode) are not read again. The
//! snapshot is written last, after [`Saver::finish`] has made every blob it
//! references durable and indexed (repo-format.md §11).

mod saver;
mod walk;

pub use saver::{Saver, SaverStats};
pub use walk::Excludes;

use crate::blob::BlobKind;
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::index::Index;
use crate::repository::Repository;
use crate::snapshot::{Snapshot, SnapshotSummary};
use crate::tree::{Node, NodeKind, Tree};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use walk::Names;

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
        }
    }
}

/// Knobs for one backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Compression for new blobs.
    pub compression: Compression,
    /// Exclude patterns.
    pub excludes: Vec<String>,
    /// Skip directories holding a CACHEDIR.TAG.
    pub exclude_caches: bool,
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
    /// Concurrent pack uploads.
    pub upload_concurrency: usize,
    /// Set to stop the backup; it then flushes what it uploaded and fails
    /// with [`Error::Interrupted`].
    pub cancel: Arc<AtomicBool>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            compression: Compression::default(),
            excludes: Vec::new(),
            exclude_caches: false,
            one_file_system: false,
            tags: Vec::new(),
            hostname: String::new(),
            username: String::new(),
            time: None,
            parent: None,
            force: false,
            upload_concurrency: 2,
            cancel: Arc::new(AtomicBool::new(false)),
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
}

#[derive(Default)]
struct Counters {
    files_new: u64,
    files_changed: u64,
    files_unmodified: u64,
    dirs: u64,
    files: u64,
    bytes: u64,
}

struct Walker<'a> {
    repo: &'a Repository,
    index: &'a Index,
    saver: &'a Saver,
    options: &'a BackupOptions,
    excludes: Excludes,
    names: Names,
    progress: &'a BackupProgress,
    errors: Mutex<Vec<SourceError>>,
    counters: Counters,
    root_dev: Option<u64>,
}

/// Runs a backup and writes its snapshot.
pub fn backup(
    repo: &Arc<Repository>,
    source: Source,
    options: &BackupOptions,
    progress: &BackupProgress,
) -> Result<BackupReport> {
    let start = jiff::Timestamp::now();
    let index_ids_at_start: std::collections::HashSet<crate::id::IndexId> =
        repo.index_ids()?.into_iter().collect();
    let index = repo.load_index()?;
    let excludes = Excludes::new(&options.excludes).map_err(Error::InvalidInput)?;
    let paths = snapshot_paths(&source)?;
    let parent = find_parent(repo, options, &paths)?;
    let parent_tree = match &parent {
        Some((_, snap)) => repo.read_tree(&index, &snap.tree).ok(),
        None => None,
    };
    let saver = Saver::start(
        repo.clone(),
        &index,
        options.compression,
        options.upload_concurrency,
        progress.saver.clone(),
    );
    let mut walker = Walker {
        repo,
        index: &index,
        saver: &saver,
        options,
        excludes,
        names: Names::default(),
        progress,
        errors: Mutex::new(Vec::new()),
        counters: Counters::default(),
        root_dev: None,
    };
    let walked = match source {
        Source::Paths(list) => walker.save_paths(&list, parent_tree.as_ref()),
        Source::Stream { filename, reader } => walker.save_stream(&filename, reader),
        Source::Command {
            filename,
            program,
            args,
            env,
        } => walker.save_command(&filename, &program, &args, &env),
    };
    let counters = std::mem::take(&mut walker.counters);
    let errors = std::mem::take(&mut *walker.errors.lock().expect("not poisoned"));
    drop(walker);
    // Even a failed walk drains the pipeline, so what was uploaded gets
    // indexed and the next backup can reuse it.
    let finished = saver.finish();
    let root = match (walked, finished) {
        (Err(Error::Interrupted), _) => return Err(Error::Interrupted),
        (_, Err(e)) | (Err(e), Ok(())) => return Err(e),
        (Ok(root), Ok(())) => root,
    };
    ensure_not_pruned_under_us(repo, &index_ids_at_start, &root)?;
    let stats = &progress.saver;
    let time = options.time.clone().unwrap_or_else(jiff::Zoned::now);
    let mut tags = options.tags.clone();
    tags.sort();
    tags.dedup();
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
        summary: SnapshotSummary {
            backup_start: Some(start),
            backup_end: Some(jiff::Timestamp::now()),
            files_new: counters.files_new,
            files_changed: counters.files_changed,
            files_unmodified: counters.files_unmodified,
            dirs_total: counters.dirs,
            data_blobs: stats.blobs_added.load(Ordering::Relaxed)
                - stats.tree_blobs_added.load(Ordering::Relaxed),
            tree_blobs: stats.tree_blobs_added.load(Ordering::Relaxed),
            data_added: stats.bytes_added.load(Ordering::Relaxed),
            data_added_packed: stats.bytes_stored.load(Ordering::Relaxed),
            total_files_processed: counters.files,
            total_bytes_processed: counters.bytes,
            errors: errors.len() as u64,
        },
    };
    let snapshot_id = repo.save_snapshot(&snapshot)?;
    Ok(BackupReport {
        snapshot_id,
        snapshot,
        errors,
    })
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
            if filename.is_empty() || filename.contains('/') {
                return Err(Error::InvalidInput(format!(
                    "invalid stdin file name {filename:?}"
                )));
            }
            vec![format!("/{filename}")]
        }
    };
    paths.sort();
    paths.dedup();
    Ok(paths)
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
}

fn find_child<'t>(tree: Option<&'t Tree>, name: &OsStr) -> Option<&'t Node> {
    tree?.nodes.iter().find(|n| n.os_name() == name)
}

impl Walker<'_> {
    fn record_error(&self, path: &Path, error: impl std::fmt::Display) {
        tracing::warn!("{}: {error}", path.display());
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().expect("not poisoned").push(SourceError {
            path: path.display().to_string(),
            error: error.to_string(),
        });
    }

    fn check_cancel(&self) -> Result<()> {
        if self.options.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        if self.saver.has_failed() {
            // Surface the pipeline's error via finish().
            return Err(Error::InvalidInput("write pipeline failed".into()));
        }
        Ok(())
    }

    fn parent_subtree(&self, node: Option<&Node>) -> Option<Tree> {
        let id = node?.subtree?;
        self.repo.read_tree(self.index, &id).ok()
    }

    fn save_tree(&self, mut tree: Tree) -> Result<BlobId> {
        tree.sort();
        let bytes = tree.encode();
        if bytes.len() > crate::compress::MAX_BLOB_LEN {
            return Err(Error::InvalidInput(format!(
                "a directory listing of {} entries exceeds the format's {} byte tree limit",
                tree.nodes.len(),
                crate::compress::MAX_BLOB_LEN
            )));
        }
        self.saver.save(BlobKind::Tree, bytes)
    }

    fn save_paths(&mut self, list: &[PathBuf], parent: Option<&Tree>) -> Result<BlobId> {
        let mut root = VirtualDir::default();
        for p in list {
            let abs = absolute(p)?;
            let components: Vec<OsString> = abs
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(n) => Some(n.to_os_string()),
                    _ => None,
                })
                .collect();
            if components.is_empty() {
                // Backing up "/" itself: walk it as the root directory.
                let meta = std::fs::symlink_metadata("/").map_err(|e| Error::io("reading /", e))?;
                self.root_dev = Some(std::os::unix::fs::MetadataExt::dev(&meta));
                let tree = self.read_dir_tree(Path::new("/"), parent)?;
                return self.save_tree(tree);
            }
            root.insert(&components, &abs);
        }
        let tree = self.save_virtual(&root, Path::new("/"), parent)?;
        self.save_tree(tree)
    }

    fn save_virtual(&mut self, dir: &VirtualDir, at: &Path, parent: Option<&Tree>) -> Result<Tree> {
        let mut tree = Tree::default();
        for (name, entry) in &dir.children {
            let path = at.join(name);
            let parent_node = find_child(parent, name);
            match entry {
                VirtualEntry::Leaf(full) => {
                    let meta = match std::fs::symlink_metadata(full) {
                        Ok(m) => m,
                        Err(e) => {
                            self.record_error(full, e);
                            continue;
                        }
                    };
                    self.root_dev = Some(std::os::unix::fs::MetadataExt::dev(&meta));
                    if let Some(node) = self.save_entry(full, meta, parent_node)? {
                        tree.nodes.push(node);
                    }
                }
                VirtualEntry::Dir(sub) => {
                    let meta = match std::fs::symlink_metadata(&path) {
                        Ok(m) => m,
                        Err(e) => {
                            self.record_error(&path, e);
                            continue;
                        }
                    };
                    let Some(mut node) = walk::node_from_metadata(&path, &meta, &self.names) else {
                        continue;
                    };
                    let parent_sub = self.parent_subtree(parent_node);
                    let subtree = self.save_virtual(sub, &path, parent_sub.as_ref())?;
                    node.subtree = Some(self.save_tree(subtree)?);
                    tree.nodes.push(node);
                }
            }
        }
        Ok(tree)
    }

    fn read_dir_tree(&mut self, dir: &Path, parent: Option<&Tree>) -> Result<Tree> {
        let mut tree = Tree::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.record_error(dir, e);
                return Ok(tree);
            }
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in entries {
            match entry {
                Ok(e) => names.push(e.file_name()),
                Err(e) => self.record_error(dir, e),
            }
        }
        names.sort();
        for name in names {
            self.check_cancel()?;
            let path = dir.join(&name);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.record_error(&path, e);
                    continue;
                }
            };
            if self.excludes.is_excluded(&path, meta.is_dir()) {
                continue;
            }
            if let Some(node) = self.save_entry(&path, meta, find_child(parent, &name))? {
                tree.nodes.push(node);
            }
        }
        Ok(tree)
    }

    fn save_entry(
        &mut self,
        path: &Path,
        meta: std::fs::Metadata,
        parent_node: Option<&Node>,
    ) -> Result<Option<Node>> {
        let Some(mut node) = walk::node_from_metadata(path, &meta, &self.names) else {
            return Ok(None);
        };
        match node.kind {
            NodeKind::File => {
                self.counters.files += 1;
                self.counters.bytes += node.size;
                if let Some(old) = parent_node
                    && !self.options.force
                    && walk::unchanged(old, &node)
                    && old
                        .content
                        .as_ref()
                        .is_some_and(|c| c.iter().all(|id| self.saver.contains(id)))
                {
                    node.content.clone_from(&old.content);
                    self.counters.files_unmodified += 1;
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    self.progress.bytes.fetch_add(node.size, Ordering::Relaxed);
                    return Ok(Some(node));
                }
                let file = match std::fs::File::open(path) {
                    Ok(f) => f,
                    Err(e) => {
                        self.record_error(path, e);
                        self.counters.files -= 1;
                        self.counters.bytes -= node.size;
                        return Ok(None);
                    }
                };
                match self.save_content(file) {
                    Ok((content, size)) => {
                        // Record what was read, which may differ from the
                        // stat size if the file changed under us.
                        self.counters.bytes = self.counters.bytes - node.size + size;
                        node.size = size;
                        node.content = Some(content);
                    }
                    Err(ContentError::Read(e)) => {
                        self.record_error(path, e);
                        self.counters.files -= 1;
                        self.counters.bytes -= node.size;
                        return Ok(None);
                    }
                    Err(ContentError::Engine(e)) => return Err(e),
                }
                if parent_node.is_some() {
                    self.counters.files_changed += 1;
                } else {
                    self.counters.files_new += 1;
                }
                self.progress.files.fetch_add(1, Ordering::Relaxed);
            }
            NodeKind::Dir => {
                self.counters.dirs += 1;
                let dev = std::os::unix::fs::MetadataExt::dev(&meta);
                let crosses =
                    self.options.one_file_system && self.root_dev.is_some_and(|d| d != dev);
                let tree = if crosses || (self.options.exclude_caches && walk::is_cache_dir(path)) {
                    Tree::default()
                } else {
                    let parent_sub = self.parent_subtree(parent_node);
                    self.read_dir_tree(path, parent_sub.as_ref())?
                };
                node.subtree = Some(self.save_tree(tree)?);
            }
            _ => {}
        }
        Ok(Some(node))
    }

    fn save_content(
        &self,
        reader: impl Read,
    ) -> std::result::Result<(Vec<BlobId>, u64), ContentError> {
        let mut content = Vec::new();
        let mut size = 0u64;
        for chunk in self.repo.config().chunker.chunks(reader) {
            self.check_cancel().map_err(ContentError::Engine)?;
            let chunk = chunk.map_err(ContentError::Read)?;
            size += chunk.len() as u64;
            self.progress
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            content.push(
                self.saver
                    .save(BlobKind::Data, chunk)
                    .map_err(ContentError::Engine)?,
            );
        }
        Ok((content, size))
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

    fn save_stream(&mut self, filename: &str, reader: Box<dyn Read + Send>) -> Result<BlobId> {
        let (content, size) = self.save_content(reader).map_err(|e| match e {
            ContentError::Read(e) => Error::SourceFailed(format!("reading standard input: {e}")),
            ContentError::Engine(e) => e,
        })?;
        self.counters.files = 1;
        self.counters.files_new = 1;
        self.counters.bytes = size;
        let node = self.stream_node(filename, content, size);
        self.save_tree(Tree { nodes: vec![node] })
    }

    fn save_command(
        &mut self,
        filename: &str,
        program: &OsStr,
        args: &[OsString],
        env: &[(OsString, OsString)],
    ) -> Result<BlobId> {
        let shown = Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned();
        let mut child = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::SourceFailed(format!("starting `{shown}`: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // Pass the command's messages through, keeping the tail so a
        // failure can say why (e.g. "pg_dump: error: database does not exist").
        let stderr_tail = {
            let mut stderr = child.stderr.take().expect("stderr is piped");
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
                String::from_utf8_lossy(&tail)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_owned())
            })
        };
        let result = self.save_content(stdout);
        let (content, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
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
        let last_message = stderr_tail.join().ok().flatten();
        if !status.success() {
            let why = last_message.map(|m| format!(": {m}")).unwrap_or_default();
            return Err(Error::SourceFailed(format!(
                "command `{shown}` failed ({status}){why}; no snapshot was saved"
            )));
        }
        self.counters.files = 1;
        self.counters.files_new = 1;
        self.counters.bytes = size;
        let node = self.stream_node(filename, content, size);
        self.save_tree(Tree { nodes: vec![node] })
    }
}

enum ContentError {
    Read(std::io::Error),
    Engine(Error),
}
