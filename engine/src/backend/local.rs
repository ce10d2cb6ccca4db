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
}

impl LocalBackend {
    /// A backend rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
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
        io::ErrorKind::NotFound => BackendError::NotFound(path.to_owned()),
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
        let target = self.full(path)?;
        let dir = target.parent().expect("object keys are inside the root");
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| map_err(path, e))?;
            // Make the new directory's name durable too, or a power cut
            // could lose the object along with it.
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| map_err(path, e))?;
            }
        }
        let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
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
        result.map_err(|e| map_err(path, e))
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
            return Err(BackendError::Other(format!(
                "{path}: range {offset}+{len} beyond object size {size}"
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
