//! Which of the snapshot's entries a restore restores: includes and their
//! ancestors, entries kept by if-newer, sizes checked against content.

use super::beneath::{self, Beneath};
use super::item::Item;
use super::metadata::file_time;
use super::report::DamagedFile;
use super::{RestoreOptions, walk};
use crate::backup::Excludes;
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::Index;
use crate::pattern::Pattern;
use crate::repository::Repository;
use crate::tree::NodeKind;
use rayon::prelude::*;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// The snapshot's entries below `root` that `options` selects, parents
/// first: what `includes` match (or lead to), less what `excludes` match,
/// with the directories above a relative include's matches. Includes that
/// select nothing fail, saying whether the excludes emptied them.
pub(super) fn entries(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    options: &RestoreOptions,
    includes: &[Pattern],
    excludes: &Excludes,
) -> Result<Vec<Item>> {
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
                && (matches_include(path, includes, &options.includes)
                    || is_ancestor_of_include(path, &options.includes))
            {
                excluded_match = Some(path.to_owned());
            }
            return Ok(false);
        }
        let included = matches_include(path, includes, &options.includes);
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
    Ok(items)
}

pub(super) fn matches_include(
    path: &Path,
    includes: &[Pattern],
    raw: &[std::ffi::OsString],
) -> bool {
    if raw.is_empty() {
        return true;
    }
    // A path is included when it, or one of its ancestors, matches.
    let mut p = path;
    loop {
        if includes.iter().any(|g| g.is_match(p)) {
            return true;
        }
        match p.parent() {
            Some(parent) if parent != Path::new("/") && parent != p => p = parent,
            _ => return false,
        }
    }
}

/// Adds, as items, the directories above selected items that the walk
/// passed over, so they are restored with their own metadata; parents
/// before children, as the skeleton expects.
pub(super) fn add_ancestors(
    items: &mut Vec<Item>,
    mut passed: HashMap<PathBuf, Item>,
    target: &Path,
) {
    if passed.is_empty() {
        return;
    }
    let mut needed: Vec<Item> = Vec::new();
    for item in items.iter() {
        for ancestor in item.path.ancestors().skip(1) {
            if ancestor == target {
                break;
            }
            if let Some(item) = passed.remove(ancestor) {
                needed.push(item);
            }
        }
    }
    needed.sort_by_key(|i| i.path.components().count());
    needed.append(items);
    *items = needed;
}

pub(super) fn is_ancestor_of_include(path: &Path, raw: &[std::ffi::OsString]) -> bool {
    raw.iter()
        .any(|inc| Path::new(inc).starts_with(path) && Path::new(inc) != path)
}

/// Takes out of `items` every entry the target holds as new as the
/// snapshot's or newer (`Overwrite::IfNewer`), and every one where the
/// target has a directory and the snapshot something else, and returns
/// them: they are not restored, but they are the snapshot's names still,
/// which `--delete` must not remove. A directory of the snapshot is kept
/// (with all below it) only where the target has a newer non-directory.
pub(super) fn keep_newer(items: &mut Vec<Item>, beneath: &Beneath) -> Vec<Item> {
    let newer: Vec<bool> = items
        .par_iter()
        .map(|item| {
            let Ok(stat) = beneath.stat(&item.path) else {
                return false;
            };
            let nano = u32::try_from(stat.st_mtime_nsec).unwrap_or(0);
            // `st_mtime` is i32 on some targets.
            #[allow(clippy::useless_conversion)]
            let mtime = filetime::FileTime::from_unix_time(stat.st_mtime.into(), nano);
            let as_new = mtime >= file_time(item.mtime);
            match item.kind {
                // A directory is restored into; a symlink in its place is
                // judged as a kept link or replaced; anything else there
                // as new or newer is kept, and all the snapshot has below.
                NodeKind::Dir => !beneath::is_dir(&stat) && !beneath::is_symlink(&stat) && as_new,
                // A directory's own mtime says nothing of what it holds
                // (a file edited today in an old directory): never
                // replaced by something else.
                _ if beneath::is_dir(&stat) => true,
                _ => as_new,
            }
        })
        .collect();
    // Below a directory kept as something else, nothing can be restored.
    let kept_dirs: std::collections::HashSet<&Path> = (items.iter().zip(&newer))
        .filter(|(item, keep)| **keep && item.kind == NodeKind::Dir)
        .map(|(item, _)| &*item.path)
        .collect();
    let newer: Vec<bool> = (items.iter().zip(&newer))
        .map(|(item, &keep)| {
            keep || (!kept_dirs.is_empty()
                && item.path.ancestors().skip(1).any(|a| kept_dirs.contains(a)))
        })
        .collect();
    let mut newer = newer.into_iter();
    let (kept, restored) = std::mem::take(items)
        .into_iter()
        .partition(|_| newer.next().unwrap_or(false));
    *items = restored;
    kept
}

/// Gives every file in `items` whose size differs from its content's (the
/// sum of its blobs' plain lengths in the index) its content's size, and
/// returns them as damaged files. A file with a blob the index lacks is
/// left as it is: the restore fails on that blob as missing.
pub(super) fn check_sizes(index: &Index, items: &mut [Item]) -> Vec<DamagedFile> {
    items
        .par_iter_mut()
        .filter(|item| item.kind == NodeKind::File)
        .filter_map(|item| {
            let len = item.content.iter().try_fold(0u64, |len, id| {
                Some(len + u64::from(index.get(id)?.raw_len))
            })?;
            (len != item.size).then(|| {
                let error = content_size_mismatch(item.size, len);
                item.size = len;
                DamagedFile {
                    path: item.path.display().to_string(),
                    error,
                    missing: false,
                    wrong_size: true,
                }
            })
        })
        .collect()
}

/// What is wrong with a file node whose `size` is not the `content_len`
/// its blobs add up to.
pub(crate) fn content_size_mismatch(size: u64, content_len: u64) -> String {
    format!("its size in the snapshot ({size} bytes) is not its content's ({content_len} bytes)")
}
