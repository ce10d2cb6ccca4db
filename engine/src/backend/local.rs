//! The local-disk backend. Writes go to a temporary file in the target
//! directory, are fsynced, then published with a hard link (create-only,
//! atomic: `link` fails if the name exists) or a rename (overwrite), and the
//! directory is fsynced so the name survives a power cut.

use super::{Backend, BackendError, ObjectInfo, PutMode};
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Repository in a local directory.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    /// Modes for new directories and files, from the root's (see
    /// [`LocalBackend::modes`]).
    modes: std::sync::OnceLock<(u32, u32)>,
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

    fn full(&self, path: &str) -> Result<PathBuf, BackendError> {
        // Keys come from the engine, but refuse anything that would escape
        // the root all the same.
        if path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(BackendError::Other(format!("invalid object key {path:?}")));
        }
        Ok(self.root.join(path))
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let target = self.full(path)?;
        let dir = target.parent().expect("object keys are inside the root");
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
                BackendError::Other(format!("cannot write in {}: {e}", dir.display()))
            }
            _ => map_err(path, e),
        };
        let (dir_mode, file_mode) = self.modes().map_err(cannot_write)?;
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
                .create(dir)
                .map_err(cannot_write)?;
            // Exactly that mode, whatever the umask took away (a group
            // that must write there, under umask 022). Object keys are at
            // most two directories deep (`data/ab/...`).
            for new in [Some(dir), dir.parent()].into_iter().flatten() {
                if new != self.root.as_path() && new.starts_with(&self.root) {
                    let _ = fs::set_permissions(new, fs::Permissions::from_mode(dir_mode));
                }
            }
            // Make the new directory's name durable too, or a power cut
            // could lose the object along with it.
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| map_err(path, e))?;
            }
        }
        let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file_mode)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(file_mode))?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            match mode {
                PutMode::Create => fs::hard_link(&tmp, &target)?,
                PutMode::Overwrite => fs::rename(&tmp, &target)?,
            }
            sync_dir(dir)
        })();
        let _ = fs::remove_file(&tmp);
        result.map_err(cannot_write)
    }

    fn get(&self, path: &str) -> Result<Bytes, BackendError> {
        let full = self.full(path)?;
        fs::read(full)
            .map(Bytes::from)
            .map_err(|e| map_err(path, e))
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let full = self.full(path)?;
        let mut f = File::open(full).map_err(|e| map_err(path, e))?;
        let size = f.metadata().map_err(|e| map_err(path, e))?.len();
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
        let full = self.full(path)?;
        fs::metadata(full)
            .map(|m| m.len())
            .map_err(|e| map_err(path, e))
    }

    fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, BackendError> {
        // `put` writes `.tmp-<random>` beside the object, then links or
        // renames it into place; a kill in between leaves it forever.
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(map_err(&dir.display().to_string(), e)),
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                let stale = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= older_than);
                if entry.file_name().to_string_lossy().starts_with(".tmp-")
                    && stale
                    && fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let mut out = Vec::new();
        let start = self.root.join(prefix);
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(map_err(prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| map_err(prefix, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") {
                    continue;
                }
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Deleted (a released lock, a renamed temporary file)
                    // between reading the directory and looking at it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(map_err(prefix, e)),
                };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if let Ok(rel) = entry.path().strip_prefix(&self.root) {
                    out.push(ObjectInfo {
                        path: rel.to_string_lossy().replace('\\', "/"),
                        size: meta.len(),
                        modified: meta
                            .modified()
                            .ok()
                            .and_then(|t| jiff::Timestamp::try_from(t).ok()),
                    });
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), BackendError> {
        let full = self.full(path)?;
        match fs::remove_file(full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err(path, e)),
        }
    }

    fn has_atomic_create(&self) -> bool {
        true
    }

    fn is_local(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

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
