//! Entries the target refused: recorded, and the restore goes on, unless
//! the error stops every further write too.

use super::flags;
use super::report::FailedEntry;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the target refused during a restore, shared by every phase.
/// One entry refused (an immutable file, a directory this user cannot
/// write, a device node as non-root) costs that entry, not the restore:
/// a restore in place stopped at the first one left every other damaged
/// file in the target as it was.
pub(super) struct Failures {
    /// By item: not created, or its content not (all) written; nothing
    /// more is done with it.
    pub(super) failed: Vec<AtomicBool>,
    pub(super) entries: Mutex<Vec<FailedEntry>>,
    /// The restore's target, where a refusal is looked into.
    pub(super) target: PathBuf,
}

impl Failures {
    pub(super) fn new(items: usize, target: &Path) -> Self {
        Failures {
            failed: (0..items).map(|_| AtomicBool::new(false)).collect(),
            entries: Mutex::new(Vec::new()),
            target: target.to_owned(),
        }
    }

    pub(super) fn is_failed(&self, idx: usize) -> bool {
        self.failed[idx].load(Ordering::Relaxed)
    }

    /// Records that creating, replacing or writing `path` (item `idx`, or
    /// a directory above the items) failed with `e`, and returns the
    /// record's number; fails with `e` itself when it must stop the
    /// restore ([`stops_restore`]).
    pub(super) fn record(&self, idx: Option<usize>, path: &Path, e: Error) -> Result<usize> {
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
    pub(super) fn metadata(&self, path: &Path, problems: Vec<String>) {
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
pub(super) fn stops_restore(e: &Error) -> bool {
    match e {
        Error::Io { cause, .. } => matches!(
            cause.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
