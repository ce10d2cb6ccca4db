//! What a restore reports.

use super::ChangedEntry;
use super::item::Item;
use crate::tree::NodeKind;

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
    /// ([`RestoreOptions::devices_need_root_ok`](super::RestoreOptions::devices_need_root_ok)), by path.
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

pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RestoreReport {
    /// Counts what was restored of `items`: an entry `left` (not made, or
    /// refused by the target) is not counted.
    pub(super) fn count(&mut self, items: &[Item], left: impl Fn(usize) -> bool) {
        for (idx, item) in items.iter().enumerate() {
            if left(idx) {
                continue;
            }
            match item.kind {
                NodeKind::Dir => self.dirs += 1,
                NodeKind::File => self.files += 1,
                _ => self.others += 1,
            }
        }
    }

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
