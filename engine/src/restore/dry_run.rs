//! A dry run: what a restore would create, write, change and delete,
//! changing nothing.

use super::beneath::{self, Beneath, Parents};
use super::changes::{self, Changes};
use super::delete::delete_extras;
use super::dir_links::{judge_link, kept_places, not_kept_error};
use super::existing::{compare_existing, file_changes, resumable, same_file, same_special};
use super::hardlinks::{first_names_of, group_of, link_groups};
use super::item::Item;
use super::metadata::{Meta, apply_metadata, dry_run_meta};
use super::report::RestoreReport;
use super::{Overwrite, RestoreOptions};
use crate::error::Result;
use crate::index::Index;
use crate::pattern::Pattern;
use crate::repository::Repository;
use crate::tree::NodeKind;
use rayon::prelude::*;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a restore would do, changing nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_only(
    repo: &Repository,
    index: &Index,
    items: &[Item],
    kept: &[Item],
    options: &RestoreOptions,
    includes: &[Pattern],
    excludes: &crate::backup::Excludes,
    beneath: Option<&Beneath>,
) -> Result<RestoreReport> {
    let mut report = RestoreReport::default();
    let files: Vec<(usize, &Item)> = (items.iter().enumerate())
        .filter(|(_, i)| i.kind == NodeKind::File)
        .collect();
    report.dirs = items.iter().filter(|i| i.kind == NodeKind::Dir).count() as u64;
    report.files = files.len() as u64;
    // A hard-linked file's further names are linked, not written: only
    // its first name counts toward the bytes, as in a real restore.
    let mut first_names = std::collections::HashSet::new();
    let files: Vec<(usize, &Item)> = files
        .into_iter()
        .filter(|(_, i)| i.hardlink().is_none_or(|key| first_names.insert(key)))
        .collect();
    let changed = Changes::new(items.len(), options.overwrite == Overwrite::IfChanged);
    let groups = if options.overwrite == Overwrite::IfChanged {
        link_groups(items)
    } else {
        HashMap::new()
    };
    report.damaged_entries = items.iter().filter_map(Item::damage).collect();
    report.others = items
        .iter()
        .filter(|i| !matches!(i.kind, NodeKind::Dir | NodeKind::File | NodeKind::Socket))
        .count() as u64
        - report.damaged_entries.len() as u64;
    let sizes: Vec<(u64, u64)> = files
        .par_iter()
        .map_init(
            || beneath.map(Parents::new),
            |parents, &(idx, item)| {
                let content = &item.content;
                // As the restore: a file identical to the snapshot is kept, one
                // that differs is written in place where it can be (and then
                // only the chunks that differ), else made anew.
                let ok = match parents {
                    Some(parents) if options.overwrite == Overwrite::IfChanged => {
                        let names = group_of(&groups, item);
                        let compared = compare_existing(repo, index, parents, item, names);
                        changed.mark(idx, file_changes(parents, item, compared.as_ref()));
                        match compared {
                            Some(c) if c.identical || resumable(parents, &item.path, names) => {
                                c.chunks
                            }
                            _ => Vec::new(),
                        }
                    }
                    _ => Vec::new(),
                };
                let (mut write, mut skip) = (0, 0);
                for (n, id) in content.iter().enumerate() {
                    let len = index.get(id).map_or(0, |l| u64::from(l.raw_len));
                    if ok.get(n).copied().unwrap_or(false) {
                        skip += len;
                    } else {
                        write += len;
                    }
                }
                (write, skip)
            },
        )
        .collect();
    report.bytes_written = sizes.iter().map(|(w, _)| w).sum();
    report.bytes_skipped = sizes.iter().map(|(_, s)| s).sum();
    if let Some(beneath) = beneath
        && changed.tracked()
    {
        planned_changes(items, &changed, beneath, &first_names_of(items));
    }
    // A directory where the snapshot has something else is removed, with
    // all it holds, to put that there: said, as the change list of
    // if-changed says only "replaced".
    if let Some(beneath) = beneath {
        let mut replaced: Vec<(&Item, u64)> = items
            .par_iter()
            .filter(|i| !matches!(i.kind, NodeKind::Dir | NodeKind::Socket))
            .filter_map(|item| {
                let stat = beneath.stat(&item.path).ok()?;
                beneath::is_dir(&stat).then(|| (item, entries_below(beneath, &item.path)))
            })
            .collect();
        replaced.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        report.warnings.extend(replaced.into_iter().map(|(item, held)| {
            format!(
                "would remove the directory {} and the {held} entries below it, to put the snapshot's {} there",
                item.path.display(),
                kind_name(item.kind)
            )
        }));
    }
    // Symlinks where directories belong, judged as the restore judges them.
    let mut kept_found = Vec::new();
    for (idx, item) in (items.iter().enumerate()).filter(|(_, i)| i.kind == NodeKind::Dir) {
        let Some(beneath) = beneath else { break };
        if !beneath
            .stat(&item.path)
            .is_ok_and(|m| beneath::is_symlink(&m))
        {
            continue;
        }
        match judge_link(beneath, &item.path, items, &mut kept_found) {
            Ok(kept_link) => report.kept_links.push(kept_link),
            Err(why) if options.overwrite == Overwrite::Never => {
                return Err(not_kept_error(&item.path, &why));
            }
            Err(why) => {
                changed.mark(idx, changes::REPLACED);
                report.warnings.push(format!(
                    "would replace the symlink {} with a directory, not kept: {why}",
                    item.path.display()
                ));
            }
        }
    }
    if !options.delete_within.is_empty() {
        report.deleted_paths = delete_extras(
            items,
            kept,
            options,
            includes,
            excludes,
            beneath,
            &kept_places(&kept_found),
            None,
            &mut report.warnings,
        )?;
        report.deleted = report.deleted_paths.len() as u64;
    }
    report.changed_entries = changed.list(items.iter().map(|i| &*i.path));
    Ok(report)
}

/// A dry run's if-changed judgement of every entry but files' content
/// (judged with the bytes to write): what is not there, what is there as
/// another kind (or another symlink, device, hard link) and would be
/// replaced, and whose metadata differs.
pub(super) fn planned_changes(
    items: &[Item],
    changed: &Changes,
    beneath: &Beneath,
    first_names: &HashMap<(u64, u64), usize>,
) {
    let rules = dry_run_meta();
    items.par_iter().enumerate().for_each_init(
        || (Parents::new(beneath), Parents::new(beneath)),
        |(parents, first_parents), (idx, item)| {
            let Ok(at) = parents.of(&item.path) else {
                changed.mark(idx, changes::CREATED);
                return;
            };
            let Ok(stat) = beneath::stat_at(at.0, at.1) else {
                changed.mark(idx, changes::CREATED);
                return;
            };
            let same_kind = match item.kind {
                // A symlink kept as the directory is judged (and reported)
                // apart; its metadata is not the restore's to set.
                NodeKind::Dir if beneath::is_symlink(&stat) => return,
                NodeKind::Dir => beneath::is_dir(&stat),
                NodeKind::File => match item.hardlink().and_then(|k| first_names.get(&k)) {
                    Some(&first) if first != idx => first_parents
                        .of(&items[first].path)
                        .is_ok_and(|first| same_file(first, at)),
                    // Judged with its content.
                    _ => beneath::is_file(&stat),
                },
                NodeKind::Socket => return,
                _ => same_special(at, &stat, item),
            };
            if !same_kind {
                changed.mark(idx, changes::REPLACED);
                return;
            }
            // A further name of a hard-linked file: its metadata is its
            // first name's, judged there.
            if item.kind == NodeKind::File
                && item
                    .hardlink()
                    .and_then(|k| first_names.get(&k))
                    .is_some_and(|&first| first != idx)
            {
                return;
            }
            let applied = apply_metadata(
                Meta::At {
                    dir: at.0,
                    name: at.1,
                },
                item,
                rules,
            );
            changed.mark(idx, applied.changed);
        },
    );
}

/// How many entries the directory `path` holds, all levels below it
/// counted; what cannot be listed counts as nothing.
fn entries_below(beneath: &Beneath, path: &Path) -> u64 {
    let Ok(fd) = beneath.dir(path, true) else {
        return 0;
    };
    let Ok(listed) = rustix::fs::Dir::new(fd) else {
        return 0;
    };
    let mut count = 0;
    for entry in listed.flatten() {
        let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        count += 1;
        if entry.file_type() == rustix::fs::FileType::Directory {
            count += entries_below(beneath, &path.join(name));
        }
    }
    count
}

/// The word for an entry of `kind`, as a sentence names it.
fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Dir => "directory",
        NodeKind::Symlink => "symlink",
        NodeKind::Dev => "block device",
        NodeKind::Chardev => "character device",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
    }
}
