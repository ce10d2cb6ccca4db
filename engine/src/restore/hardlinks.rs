//! Hard-linked files: the names the restore gives each, and the further
//! names linked to the first once it exists.

use super::beneath::{self, Beneath, Parents};
use super::changes::Changes;
use super::existing::{created_or_replaced, same_file};
use super::failures::Failures;
use super::item::Item;
use super::made::{self, Made};
use super::report::FailedEntry;
use crate::error::{Error, Result};
use crate::tree::NodeKind;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Every name this restore gives each hard-linked file, by (device, inode)
/// in the snapshot: the first in walk order is written, the others are
/// linked to it.
pub(super) fn link_groups(items: &[Item]) -> HashMap<(u64, u64), Vec<&Path>> {
    let mut groups: HashMap<(u64, u64), Vec<&Path>> = HashMap::new();
    for item in items.iter().filter(|i| i.kind == NodeKind::File) {
        if let Some(key) = item.hardlink() {
            groups.entry(key).or_default().push(&item.path);
        }
    }
    groups
}

/// The names of `item`'s link group (itself among them), or none.
pub(super) fn group_of<'a>(
    groups: &'a HashMap<(u64, u64), Vec<&Path>>,
    item: &Item,
) -> &'a [&'a Path] {
    item.hardlink()
        .and_then(|key| groups.get(&key))
        .map_or(&[][..], Vec::as_slice)
}

/// Of each hard-link group, the item whose name is made first (the
/// others are linked to it).
pub(super) fn first_names_of(items: &[Item]) -> HashMap<(u64, u64), usize> {
    let mut first = HashMap::new();
    for (idx, item) in items.iter().enumerate() {
        if let Some(key) = item.hardlink() {
            first.entry(key).or_insert(idx);
        }
    }
    first
}

/// Links each further name of a hard-linked file to its first (`links`:
/// (first name, this name) by item), now that every first name exists. A
/// name already linked to its first one (a restore over its own output)
/// is left as it is; one whose first name was not restored is recorded as
/// not linked.
pub(super) fn link_names(
    items: &[Item],
    links: &[(usize, usize)],
    beneath: &Beneath,
    failures: &Failures,
    made: &Made,
    changed: &Changes,
    is_root: bool,
) -> Result<()> {
    let mut first_parents = Parents::new(beneath);
    let mut parents = Parents::new(beneath);
    for &(first, idx) in links {
        let (first_path, path): (&Path, &Path) = (&items[first].path, &items[idx].path);
        if failures.is_failed(first) {
            failures.failed[idx].store(true, Ordering::Relaxed);
            failures.entries.lock().expect("ok").push(FailedEntry {
                path: path.display().to_string(),
                error: format!(
                    "not linked: {}, its other name, was not restored",
                    first_path.display()
                ),
                entries_below: 0,
            });
            continue;
        }
        let linked = (first_parents.of(first_path))
            .map_err(|e| Error::io(format!("linking {}", path.display()), e))
            .and_then(|(from_dir, from)| {
                // Linked to what the restore made of the first name, not
                // to what another user may have put there since.
                let first_id = made::of_at(from_dir, from)
                    .map_err(|e| Error::io(format!("linking {}", path.display()), e))?;
                made::check(made.get(first), first_id, first_path)?;
                made.record(idx, first_id);
                let linking = |e| Error::io(format!("linking {}", path.display()), e);
                let (dir, name) = parents.of(path).map_err(linking)?;
                if same_file((from_dir, from), (dir, name)) {
                    return Ok(());
                }
                changed.mark(idx, created_or_replaced((dir, name)));
                beneath::remove(dir, name, is_root).map_err(linking)?;
                rustix::fs::linkat(from_dir, from, dir, name, rustix::fs::AtFlags::empty())
                    .map_err(|e| linking(e.into()))
            });
        if let Err(e) = linked {
            failures.record(Some(idx), path, e)?;
        }
    }
    Ok(())
}
