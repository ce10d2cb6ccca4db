//! `restore --verify`: restored files read back and checked.

use super::beneath::{self, Beneath, Parents};
use super::existing::existing_chunks_ok;
use super::item::Item;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::repository::Repository;
use rayon::prelude::*;

/// Reads every restored file back and compares each chunk with the id the
/// snapshot gives it (`restore --verify`); returns how many files passed.
/// What was written mostly comes back from the page cache: this catches a
/// restore that went wrong on the way to the file system, not media errors
/// the disk has yet to show.
pub(super) fn verify_restored(
    repo: &Repository,
    index: &Index,
    beneath: &Beneath,
    items: &[Item],
    content_files: &[usize],
    selected: impl Fn(&usize) -> bool + Sync,
) -> Result<u64> {
    content_files
        .par_iter()
        .filter(|idx| selected(idx))
        .map_init(
            || Parents::new(beneath),
            |parents, &idx| {
                let item = &items[idx];
                let damaged = |reason: String| Error::Corrupt {
                    object: format!("restored file {}", item.path.display()),
                    reason,
                };
                let size = (parents.of(&item.path))
                    .and_then(|(dir, name)| beneath::stat_at(dir, name))
                    .map_err(|e| Error::io(format!("verifying {}", item.path.display()), e))?
                    .st_size
                    .cast_unsigned();
                if size != item.size {
                    return Err(damaged(format!(
                        "{size} bytes, the snapshot has {}",
                        item.size
                    )));
                }
                let ok = existing_chunks_ok(repo, index, parents, &item.path, &item.content)
                    .ok_or_else(|| damaged("cannot be read back".into()))?;
                match ok.iter().position(|good| !good) {
                    Some(n) => Err(damaged(format!("chunk {n} differs from the snapshot"))),
                    None => Ok(1),
                }
            },
        )
        .sum()
}
