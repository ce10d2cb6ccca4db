//! What a restore over an existing tree (`--overwrite if-changed`) found
//! different from the snapshot and changed, entry by entry: the user
//! repairing a tree wants to know what was wrong, not only how many bytes
//! were written (a line appended to `passwd` and a setuid bit cleared
//! write no content at all).

use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};

/// Not there: made.
pub(super) const CREATED: u16 = 1;
/// Something else there (another kind of entry, another symlink target,
/// another device, a file linked elsewhere): removed and made anew.
pub(super) const REPLACED: u16 = 1 << 1;
/// Some of a file's content rewritten.
pub(super) const CONTENT: u16 = 1 << 2;
/// A file's length set.
pub(super) const SIZE: u16 = 1 << 3;
pub(super) const OWNER: u16 = 1 << 4;
pub(super) const MODE: u16 = 1 << 5;
/// Extended attributes (POSIX ACLs among them) set or removed.
pub(super) const XATTRS: u16 = 1 << 6;
pub(super) const TIMES: u16 = 1 << 7;
/// Inode flags (`chattr`) added.
pub(super) const FLAGS: u16 = 1 << 8;

/// The words the report uses, by bit.
const NAMES: [(u16, &str); 9] = [
    (CREATED, "created"),
    (REPLACED, "replaced"),
    (CONTENT, "content"),
    (SIZE, "size"),
    (OWNER, "owner"),
    (MODE, "mode"),
    (XATTRS, "xattrs"),
    (TIMES, "times"),
    (FLAGS, "flags"),
];

/// An entry the restore changed (or, in a dry run, would change), and
/// what of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangedEntry {
    pub path: String,
    /// Among `created`, `replaced`, `content`, `size`, `owner`, `mode`,
    /// `xattrs`, `times`, `flags`.
    pub changes: Vec<&'static str>,
}

/// Per entry (by item), what was changed: marked from every worker.
/// Tracked only when asked (if-changed); otherwise marking costs nothing
/// and the list is empty.
pub(super) struct Changes(Vec<AtomicU16>);

impl Changes {
    pub(super) fn new(items: usize, tracked: bool) -> Self {
        Changes(if tracked {
            (0..items).map(|_| AtomicU16::new(0)).collect()
        } else {
            Vec::new()
        })
    }

    pub(super) fn tracked(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether entry `idx` was found as the snapshot has it, in all that
    /// was judged of it (tracked only).
    pub(super) fn untouched(&self, idx: usize) -> bool {
        self.0
            .get(idx)
            .is_some_and(|at| at.load(Ordering::Relaxed) == 0)
    }

    pub(super) fn mark(&self, idx: usize, bits: u16) {
        if bits != 0
            && let Some(at) = self.0.get(idx)
        {
            at.fetch_or(bits, Ordering::Relaxed);
        }
    }

    /// The changed entries, in the items' order.
    pub(super) fn list<'a>(&self, paths: impl Iterator<Item = &'a Path>) -> Vec<ChangedEntry> {
        (self.0.iter().zip(paths))
            .filter_map(|(bits, path)| {
                let mut bits = bits.load(Ordering::Relaxed);
                // Made anew: its metadata and content are all new, which
                // says nothing about what was wrong before.
                for whole in [CREATED, REPLACED] {
                    if bits & whole != 0 {
                        bits = whole;
                    }
                }
                (bits != 0).then(|| ChangedEntry {
                    path: path.display().to_string(),
                    changes: NAMES
                        .iter()
                        .filter(|(bit, _)| bits & bit != 0)
                        .map(|&(_, name)| name)
                        .collect(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_entries_are_listed_with_their_changes_in_order() {
        let changes = Changes::new(3, true);
        changes.mark(0, MODE);
        changes.mark(2, TIMES);
        changes.mark(2, CONTENT | SIZE);
        let paths = [Path::new("/a"), Path::new("/b"), Path::new("/c")];
        let list = changes.list(paths.into_iter());
        assert_eq!(list.len(), 2);
        assert_eq!(
            (list[0].path.as_str(), &list[0].changes[..]),
            ("/a", &["mode"][..])
        );
        assert_eq!(list[1].changes, ["content", "size", "times"]);
        changes.mark(1, CREATED | MODE | TIMES);
        let list = changes.list(paths.into_iter());
        assert_eq!(list[1].changes, ["created"]);
        let untracked = Changes::new(3, false);
        untracked.mark(1, CREATED);
        assert!(untracked.list(paths.into_iter()).is_empty());
    }
}
