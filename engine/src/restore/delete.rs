//! `--delete`: what the target holds inside restored directories that the
//! snapshot does not.

use super::RestoreOptions;
use super::beneath::{self, Beneath};
use super::failures::Failures;
use super::item::Item;
use super::select::matches_include;
use crate::error::{Error, Result};
use crate::pattern::Pattern;
use crate::tree::NodeKind;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Removes, from each restored directory at or below `delete_within` that
/// the includes select whole, the entries the snapshot does not hold, and
/// returns their paths; with no `failures` to record what cannot be
/// removed in (a dry run), only returns them. No target (a dry run into
/// one not there yet) holds nothing to remove. The snapshot's entries are
/// `items` and those `kept` as the target has them (`if-newer`). Nothing
/// is judged at or below a symlink kept as a directory (`kept_links`):
/// what it leads to is another directory's, maybe restored under its own
/// name; a warning per link says so.
#[allow(clippy::too_many_arguments)]
pub(super) fn delete_extras(
    items: &[Item],
    kept: &[Item],
    options: &RestoreOptions,
    includes: &[Pattern],
    excludes: &crate::backup::Excludes,
    beneath: Option<&Beneath>,
    kept_links: &std::collections::HashSet<&Path>,
    failures: Option<&Failures>,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>> {
    let Some(beneath) = beneath else {
        return Ok(Vec::new());
    };
    let mut not_judged = std::collections::BTreeSet::new();
    // Mount points met, left alone (the target's own file system only).
    let mut mounts = std::collections::BTreeSet::new();
    let is_root = nix::unistd::geteuid().is_root();
    let mut expected: HashMap<&Path, std::collections::HashSet<&std::ffi::OsStr>> = HashMap::new();
    for item in items.iter().chain(kept) {
        if let (Some(parent), Some(name)) = (item.path.parent(), item.path.file_name()) {
            expected.entry(parent).or_default().insert(name);
        }
    }
    let mut deleted = Vec::new();
    // The target itself too, judged where the snapshot's root is within
    // `delete_within`: `SNAPSHOT:DIR` makes DIR's entries the target's.
    let restored_dirs = (items.iter().enumerate())
        .filter(|(_, item)| item.kind == NodeKind::Dir)
        .map(|(idx, item)| (Some(idx), &*item.path));
    for (idx, dir_path) in std::iter::once((None, &*options.target)).chain(restored_dirs) {
        if idx.is_some_and(|idx| failures.is_some_and(|f| f.is_failed(idx))) {
            continue;
        }
        let Ok(rel) = dir_path.strip_prefix(&options.target) else {
            continue;
        };
        let in_snapshot = Path::new("/").join(rel);
        let within = options
            .delete_within
            .iter()
            .any(|root| in_snapshot.starts_with(root));
        if !within || !matches_include(&in_snapshot, includes, &options.includes) {
            continue;
        }
        if !kept_links.is_empty()
            && let Some(link) = dir_path.ancestors().find(|dir| kept_links.contains(dir))
        {
            not_judged.insert(link.to_owned());
            continue;
        }
        let listing = |e| Error::io(format!("listing {}", dir_path.display()), e);
        // Opened never through a symlink, on the way or in its place: one
        // swapped in since the skeleton made the directory is an entry not
        // restored, and what it points to is never listed, let alone
        // emptied. A directory not there yet holds nothing to remove, and
        // a dry run has not replaced a symlink yet.
        let opened = beneath
            .dir(dir_path, true)
            .and_then(|fd| Ok(rustix::fs::Dir::new(fd)?));
        let mut listed = match (opened, failures) {
            (Ok(listed), _) => listed,
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => continue,
            (Err(e), Some(failures)) => {
                failures.record(idx, dir_path, listing(e))?;
                continue;
            }
            (Err(e), None) if beneath::is_not_followed(&e) => {
                continue;
            }
            (Err(e), None) => return Err(listing(e)),
        };
        let mut names = Vec::new();
        for entry in listed.by_ref() {
            match (entry, failures) {
                (Ok(entry), _) => {
                    let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
                    if name != "." && name != ".." {
                        names.push(name.to_owned());
                    }
                }
                (Err(e), Some(failures)) => {
                    failures.record(None, dir_path, listing(e.into()))?;
                    break;
                }
                (Err(e), None) => return Err(listing(e.into())),
            }
        }
        let dir = listed.fd().map_err(|e| listing(e.into()))?;
        // A file system mounted where the snapshot has a directory (/proc
        // in a restore of / to /) holds what the snapshot never saw.
        if dir_path != options.target
            && let Ok((parent, name)) = beneath.parent(dir_path)
            && rustix::fs::fstat(dir).ok().is_some_and(|me| {
                beneath::is_mount_point(std::os::fd::AsFd::as_fd(&parent), name, &me)
                    .unwrap_or(false)
            })
        {
            mounts.insert(dir_path.to_owned());
            continue;
        }
        for name in names {
            if expected
                .get(dir_path)
                .is_some_and(|names| names.contains(name.as_os_str()))
            {
                continue;
            }
            let path = dir_path.join(&name);
            let stat = beneath::stat_at(dir, &name).ok();
            let is_dir = stat.as_ref().is_some_and(beneath::is_dir);
            if excludes.is_excluded(&in_snapshot.join(&name), is_dir) {
                continue;
            }
            if is_dir
                && let Some(stat) = &stat
                && beneath::is_mount_point(dir, &name, stat).unwrap_or(false)
            {
                mounts.insert(path);
                continue;
            }
            if kept_links.contains(path.as_path()) {
                not_judged.insert(path.clone());
                continue;
            }
            if let Some(failures) = failures {
                tracing::info!("deleting {}", path.display());
                if let Err(e) = beneath::remove(dir, &name, is_root) {
                    let e = Error::io(
                        format!(
                            "removing {} (the snapshot does not hold it)",
                            path.display()
                        ),
                        e,
                    );
                    failures.record(None, &path, e)?;
                    continue;
                }
            }
            deleted.push(path.to_string_lossy().into_owned());
        }
    }
    warnings.extend(mounts.into_iter().map(|at| {
        format!(
            "--delete left {} alone: another file system is mounted there",
            at.display()
        )
    }));
    warnings.extend(not_judged.into_iter().map(|link| {
        format!(
            "--delete judged nothing at or below {}: a symlink kept as a directory is or leads there",
            link.display()
        )
    }));
    Ok(deleted)
}
