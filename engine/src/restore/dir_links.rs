//! Symlinks found where the snapshot has a directory: which are kept and
//! restored through (`/lib -> usr/lib`), and what is said of the others.

use super::beneath::{self, Beneath};
use super::item::Item;
use super::report::KeptLink;
use crate::error::Error;
use std::path::{Path, PathBuf};

/// Whether the symlink at `path`, where the snapshot has a directory, is
/// kept and the directory restored through it ([`beneath`]: trusted, and
/// leading to a directory inside the target); else why not.
/// Not where the snapshot has entries of its own, nor where another kept
/// link is or leads: two entries of the snapshot would then land on one
/// name (one file lost, a restore that never settles), a later entry
/// could replace where the link leads, and `--delete` would judge what was
/// restored through the link against another directory of the snapshot.
/// `kept` holds the links kept so far, each with where it leads; a link
/// kept is added.
pub(super) fn judge_link(
    beneath: &Beneath,
    path: &Path,
    items: &[Item],
    kept: &mut Vec<(PathBuf, PathBuf)>,
) -> std::result::Result<KeptLink, String> {
    let (text, led_to) = match beneath.followed_link(path) {
        Ok(found) => found,
        Err(e) if beneath::is_not_followed(&e) => return Err(e.to_string()),
        Err(e) => return Err(format!("it leads to no directory inside the target ({e})")),
    };
    let overlap = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    if let Some((other, _)) = kept
        .iter()
        .find(|(link, to)| overlap(to, &led_to) || overlap(link, &led_to))
    {
        return Err(format!(
            "it leads to {}, where the kept symlink {} is or leads too",
            led_to.display(),
            other.display()
        ));
    }
    if let Some(own) = items
        .iter()
        .find(|i| !i.path.starts_with(path) && i.path.starts_with(&led_to))
    {
        return Err(format!(
            "it leads to {}, where the snapshot has {} of its own",
            led_to.display(),
            own.path.display()
        ));
    }
    kept.push((path.to_owned(), led_to));
    Ok(KeptLink {
        path: path.display().to_string(),
        target: text.to_string_lossy().into_owned(),
    })
}

/// The places `--delete` leaves alone for kept links: each link's path
/// and where it leads.
pub(super) fn kept_places(kept: &[(PathBuf, PathBuf)]) -> std::collections::HashSet<&Path> {
    kept.iter()
        .flat_map(|(link, to)| [link.as_path(), to.as_path()])
        .collect()
}

/// The refusal, without `--overwrite`, of a symlink not kept.
pub(super) fn not_kept_error(path: &Path, why: &str) -> Error {
    Error::InvalidInput(format!(
        "{} already exists, a symlink not kept as a directory ({why}); pass --overwrite to replace it",
        path.display()
    ))
}

pub(super) fn replaced_warning(path: &Path, why: &str) -> String {
    format!(
        "replaced the symlink {} with a directory, not kept: {why}",
        path.display()
    )
}
