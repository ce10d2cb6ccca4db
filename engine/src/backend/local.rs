//! The local-disk backend. Writes go to a temporary file in the target
//! directory, are fsynced, then published with a hard link (create-only,
//! atomic: `link` fails if the name exists) or a rename (overwrite), and the
//! directory is fsynced so the name survives a power cut.
//!
//! Below the root nothing is reached through a symlink (repo-format.md
//! §11.5): whoever may write the repository directory (a share mounted from
//! untrusted storage) could otherwise point `locks/` or `data/` at any
//! directory, and `unlock` or a backup run by root would delete or write
//! there. Every access therefore walks from a descriptor of the root, one
//! component at a time, with `O_NOFOLLOW`. The root itself may be a symlink:
//! that is the user's choice, not the storage's.

use super::{Backend, BackendError, ObjectInfo, PutMode};
use bytes::Bytes;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// Repository in a local directory.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    /// Modes for new directories and files, from the root's (see
    /// [`LocalBackend::modes`]).
    modes: std::sync::OnceLock<(u32, u32)>,
}

/// Why an access stopped: a symlink below the root, refused.
#[derive(Debug)]
struct SymlinkRefused(String);

impl std::fmt::Display for SymlinkRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is a symlink; vault does not follow symlinks inside a repository",
            self.0
        )
    }
}

impl std::error::Error for SymlinkRefused {}

fn symlink_refused(rel: &str) -> io::Error {
    io::Error::other(SymlinkRefused(rel.to_owned()))
}

fn is_refused_symlink(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<SymlinkRefused>())
}

/// Opens the directory `name` in `dir` without following a symlink.
fn open_subdir(dir: &OwnedFd, name: &str, rel: &str) -> io::Result<OwnedFd> {
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(fd),
        Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    Err(symlink_refused(rel))
                }
                _ => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn is_symlink(dir: &OwnedFd, name: &str) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

fn modified(st: &rustix::fs::Stat) -> Option<jiff::Timestamp> {
    #[allow(clippy::useless_conversion)] // c_long is i64 on 64-bit targets only
    let secs = i64::from(st.st_mtime);
    jiff::Timestamp::new(secs, i32::try_from(st.st_mtime_nsec).ok()?).ok()
}

impl LocalBackend {
    /// A backend rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            modes: std::sync::OnceLock::new(),
        }
    }

    /// Modes of new directories and files: private to the owner (0700,
    /// 0600), as restic's. Key files let whoever reads them guess passwords
    /// offline; with the umask's 0644 every local user could. A root the
    /// administrator made group-accessible (a repository shared by root's
    /// backups and the postgres user's `wal push`) passes its group bits
    /// on: read to files, read/write/search to directories. A root that
    /// does not exist yet is created 0700.
    fn modes(&self) -> io::Result<(u32, u32)> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        if let Some(modes) = self.modes.get() {
            return Ok(*modes);
        }
        let root_mode = match fs::metadata(&self.root) {
            Ok(m) if !m.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "exists and is not a directory",
                ));
            }
            Ok(m) => m.mode(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.root)?;
                0o700
            }
            Err(e) => return Err(e),
        };
        // The set-group-id bit too: new directories then keep the shared
        // group, as the root's do.
        let modes = (0o700 | (root_mode & 0o2070), 0o600 | (root_mode & 0o040));
        Ok(*self.modes.get_or_init(|| modes))
    }

    /// The directories and the name of an object's key.
    fn split(path: &str) -> Result<(Vec<&str>, &str), BackendError> {
        // Keys come from the engine, but refuse anything that would escape
        // the root all the same.
        if path
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty())
        {
            return Err(BackendError::Other(format!("invalid object key {path:?}")));
        }
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        Ok((parts, name))
    }

    /// The root, which may itself be a symlink.
    fn open_root(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// The directory `dirs` below the root, every component a real
    /// directory. With `create`, missing ones are made with mode `create`.
    fn open_dirs(&self, dirs: &[&str], create: Option<u32>) -> io::Result<OwnedFd> {
        let mut fd = self.open_root()?;
        let mut rel = String::new();
        for name in dirs {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(name);
            fd = match (open_subdir(&fd, name, &rel), create) {
                (Ok(sub), _) => sub,
                (Err(e), Some(mode)) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&fd, *name, Mode::from_raw_mode(mode)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let sub = open_subdir(&fd, name, &rel)?;
                    // Exactly that mode, whatever the umask took away (a
                    // group that must write there, under umask 022).
                    let _ = rustix::fs::fchmod(&sub, Mode::from_raw_mode(mode));
                    // Make the new directory's name durable too, or a power
                    // cut could lose the object along with it.
                    rustix::fs::fsync(&fd)?;
                    sub
                }
                (Err(e), _) => return Err(e),
            };
        }
        Ok(fd)
    }

    /// Opens object `name` in `dir` for reading: a regular file, not a
    /// symlink (nor a FIFO that would block the read forever).
    fn open_object(dir: &OwnedFd, name: &str, rel: &str) -> io::Result<(File, u64)> {
        let fd = match rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) if is_symlink(dir, name) => {
                return Err(symlink_refused(rel));
            }
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::other(format!("{rel} is not a regular file")));
        }
        Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
    }
}

fn map_err(path: &str, e: io::Error) -> BackendError {
    match e.kind() {
        // A path through a file (`--repo /etc/hosts`) holds no object.
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
            BackendError::NotFound(path.to_owned())
        }
        io::ErrorKind::AlreadyExists => BackendError::AlreadyExists(path.to_owned()),
        _ if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
            BackendError::NoSpace(format!("{path}: {e}"))
        }
        _ => BackendError::Other(format!("{path}: {e}")),
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        use std::os::unix::fs::PermissionsExt;
        let (dirs, name) = Self::split(path)?;
        let dir_path = self.root.join(dirs.join("/"));
        // As map_err, except that on a write "not found" or "not a
        // directory" is a place that cannot hold the repository, not a
        // missing object.
        let cannot_write = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                BackendError::Other(format!("{}: {e}", self.root.display()))
            }
            // Name the directory: the object's key alone does not say
            // where the user lacks the right to write.
            io::ErrorKind::PermissionDenied => {
                BackendError::Other(format!("cannot write in {}: {e}", dir_path.display()))
            }
            _ => map_err(path, e),
        };
        let (dir_mode, file_mode) = self.modes().map_err(cannot_write)?;
        let dir = self
            .open_dirs(&dirs, Some(dir_mode))
            .map_err(cannot_write)?;
        let tmp = format!(".tmp-{:016x}", rand::random::<u64>());
        let result = (|| {
            let fd = rustix::fs::openat(
                &dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(file_mode),
            )?;
            let mut f = File::from(fd);
            f.set_permissions(fs::Permissions::from_mode(file_mode))?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            // Neither publishes through a symlink at the target's name:
            // `link` fails on any existing name, `rename` replaces the link.
            match mode {
                PutMode::Create => {
                    rustix::fs::linkat(&dir, tmp.as_str(), &dir, name, AtFlags::empty())?;
                }
                PutMode::Overwrite => rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)?,
            }
            rustix::fs::fsync(&dir)?;
            Ok(())
        })();
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        result.map_err(cannot_write)
    }

    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError> {
        let (dirs, name) = Self::split(path)?;
        let dir = self.open_dirs(&dirs, None).map_err(|e| map_err(path, e))?;
        let (f, size) = Self::open_object(&dir, name, path).map_err(|e| map_err(path, e))?;
        // From the metadata, before reading: a sparse file of terabytes
        // costs the attacker nothing and the reader all its memory.
        if size > max_len {
            return Err(BackendError::too_large(path, size, max_len));
        }
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        // And never more than that, if it grows while being read.
        f.take(max_len.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| map_err(path, e))?;
        if buf.len() as u64 > max_len {
            return Err(BackendError::too_large(path, buf.len() as u64, max_len));
        }
        Ok(Bytes::from(buf))
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let (dirs, name) = Self::split(path)?;
        let dir = self.open_dirs(&dirs, None).map_err(|e| map_err(path, e))?;
        let (mut f, size) = Self::open_object(&dir, name, path).map_err(|e| map_err(path, e))?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(BackendError::Truncated(format!(
                "{path} is shorter than expected: reading {len} bytes at {offset} of {size}"
            )));
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| map_err(path, e))?;
        let len =
            usize::try_from(len).map_err(|_| BackendError::Other("range too large".into()))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).map_err(|e| map_err(path, e))?;
        Ok(Bytes::from(buf))
    }

    fn head(&self, path: &str) -> Result<u64, BackendError> {
        let (dirs, name) = Self::split(path)?;
        let dir = self.open_dirs(&dirs, None).map_err(|e| map_err(path, e))?;
        let (_, size) = Self::open_object(&dir, name, path).map_err(|e| map_err(path, e))?;
        Ok(size)
    }

    fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, BackendError> {
        // `put` writes `.tmp-<random>` beside the object, then links or
        // renames it into place; a kill in between leaves it forever.
        let mut removed = 0;
        let cutoff = std::time::SystemTime::now()
            .checked_sub(older_than)
            .and_then(|t| jiff::Timestamp::try_from(t).ok());
        self.walk("", &mut |dir, name, _, st| {
            let stale = cutoff.is_some_and(|cutoff| modified(st).is_some_and(|m| m <= cutoff));
            if name.starts_with(".tmp-")
                && stale
                && rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_ok()
            {
                removed += 1;
            }
        })?;
        Ok(removed)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let mut out = Vec::new();
        self.walk(prefix, &mut |_, name, rel, st| {
            if !name.starts_with(".tmp-") {
                out.push(ObjectInfo {
                    path: rel.to_owned(),
                    size: u64::try_from(st.st_size).unwrap_or(0),
                    modified: modified(st),
                });
            }
        })?;
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), BackendError> {
        let (dirs, name) = Self::split(path)?;
        let dir = match self.open_dirs(&dirs, None) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(map_err(path, e)),
        };
        if is_symlink(&dir, name) {
            return Err(map_err(path, symlink_refused(path)));
        }
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(map_err(path, e.into())),
        }
    }

    fn has_atomic_create(&self) -> bool {
        true
    }

    fn is_local(&self) -> bool {
        true
    }
}

impl LocalBackend {
    /// Calls `found(dir, name, key, stat)` for every regular file below
    /// `prefix` (recursively), never entering a symlinked directory: those,
    /// and symlinks or other non-files among the objects, are skipped with
    /// a warning, as the storage's doing rather than the repository's.
    fn walk(
        &self,
        prefix: &str,
        found: &mut dyn FnMut(&OwnedFd, &str, &str, &rustix::fs::Stat),
    ) -> Result<(), BackendError> {
        let start: Vec<&str> = prefix.split('/').filter(|c| !c.is_empty()).collect();
        if start.iter().any(|c| *c == ".." || *c == ".") {
            return Err(BackendError::Other(format!("invalid prefix {prefix:?}")));
        }
        let top = match self.open_dirs(&start, None) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
            Err(e) if is_refused_symlink(&e) => {
                tracing::warn!("{}: skipped: {e}", self.root.display());
                return Ok(());
            }
            Err(e) => return Err(map_err(prefix, e)),
        };
        let mut stack = vec![(top, start.join("/"))];
        while let Some((fd, rel_dir)) = stack.pop() {
            let dir = Dir::read_from(&fd).map_err(|e| map_err(prefix, e.into()))?;
            for entry in dir {
                let entry = entry.map_err(|e| map_err(prefix, e.into()))?;
                let Ok(name) = entry.file_name().to_str() else {
                    tracing::warn!(
                        "{}: skipped a name in {rel_dir}/ that is not UTF-8",
                        self.root.display()
                    );
                    continue;
                };
                if name == "." || name == ".." {
                    continue;
                }
                let rel = if rel_dir.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel_dir}/{name}")
                };
                let st = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    // Deleted (a released lock, a renamed temporary file)
                    // between reading the directory and looking at it.
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(map_err(prefix, e.into())),
                };
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => match open_subdir(&fd, name, &rel) {
                        Ok(sub) => stack.push((sub, rel)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) if is_refused_symlink(&e) => {
                            tracing::warn!("{}: skipped: {e}", self.root.display());
                        }
                        Err(e) => return Err(map_err(prefix, e)),
                    },
                    FileType::RegularFile => found(&fd, name, &rel, &st),
                    FileType::Symlink => tracing::warn!(
                        "{}: skipped {rel}: a symlink; vault does not follow symlinks inside a repository",
                        self.root.display()
                    ),
                    _ => {
                        tracing::warn!("{}: skipped {rel}: not a regular file", self.root.display())
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn objects_are_private_unless_the_root_is_shared_with_a_group() {
        let dir = tempfile::tempdir().unwrap();
        // A root vault creates: everything private to the owner.
        let root = dir.path().join("repo");
        let backend = LocalBackend::new(&root);
        backend
            .put("keys/k", Bytes::from_static(b"key"), PutMode::Create)
            .unwrap();
        backend
            .put("data/ab/p", Bytes::from_static(b"pack"), PutMode::Create)
            .unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("keys/k")), 0o600);
        assert_eq!(mode(&root.join("data")), 0o700);
        assert_eq!(mode(&root.join("data/ab")), 0o700);
        assert_eq!(mode(&root.join("data/ab/p")), 0o600);

        // A root made group-writable and set-group-id: directories the
        // group may write, files it may read, whatever the umask.
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o2770)).unwrap();
        let backend = LocalBackend::new(&shared);
        backend
            .put("data/cd/p", Bytes::from_static(b"pack"), PutMode::Create)
            .unwrap();
        assert_eq!(mode(&shared.join("data")), 0o2770);
        assert_eq!(mode(&shared.join("data/cd")), 0o2770);
        assert_eq!(mode(&shared.join("data/cd/p")), 0o640);
    }
}
