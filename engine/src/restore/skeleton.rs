//! The skeleton: directories, symlinks, fifos and device nodes made in
//! walk order (parents first), and which files get content and which are
//! further names of a hard-linked one.

use super::beneath::{self, Beneath, Parents};
use super::changes::{self, Changes};
use super::dir_links::{judge_link, not_kept_error, replaced_warning};
use super::existing::keep_special;
use super::failures::Failures;
use super::item::Item;
use super::made::{self, Made};
use super::metadata::{Meta, MetaRules, apply_metadata};
use super::report::RestoreReport;
use super::{Overwrite, RestoreOptions};
use crate::error::{Error, Result};
use crate::tree::NodeKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// What the skeleton leaves for the phases after it, by item where a
/// vector.
pub(super) struct Skeleton {
    /// Files to fill with content.
    pub(super) content_files: Vec<usize>,
    /// Second and later names of hard-linked files: (first name, this
    /// name), linked once the first name exists.
    pub(super) links: Vec<(usize, usize)>,
    /// Entries the skeleton did not create (sockets, damaged symlinks): no
    /// metadata to apply, and no complaints about a path that is not there.
    pub(super) absent: Vec<bool>,
    /// Directories whose place a symlink to a directory holds, kept
    /// (`judge_link`): restored through, but none of their metadata applied.
    pub(super) kept_link: Vec<bool>,
    /// Each kept link with where it leads.
    pub(super) kept_places: Vec<(PathBuf, PathBuf)>,
}

/// Makes the skeleton of `items` below `beneath`. What the target refuses
/// is recorded in `failures`; kept links, warnings, damaged symlinks and
/// device nodes not made go to `report`. `judging` is how an if-changed
/// restore (`changed` tracked) judges a directory already there.
#[allow(clippy::too_many_arguments)]
pub(super) fn make(
    items: &[Item],
    beneath: &Beneath,
    options: &RestoreOptions,
    failures: &Failures,
    made: &Made,
    changed: &Changes,
    judging: MetaRules,
    is_root: bool,
    report: &mut RestoreReport,
) -> Result<Skeleton> {
    let mut hardlinks: HashMap<(u64, u64), usize> = HashMap::new();
    let mut absent = vec![false; items.len()];
    let mut kept_link = vec![false; items.len()];
    let mut kept_places_found = Vec::new();
    let mut content_files: Vec<usize> = Vec::new();
    let mut links: Vec<(usize, usize)> = Vec::new();
    // Directories known to exist. Items come parents first, so this is
    // nearly always a lookup; calling create_dir_all for every item cost a
    // failing mkdir and a stat per file, on this one thread.
    let mut dirs_made: std::collections::HashSet<&Path> = std::collections::HashSet::new();
    dirs_made.insert(options.target.as_path());
    // Directories that could not be made, with the number of their
    // failure: what belongs below one is skipped and counted there rather
    // than failing (and listed) once per entry.
    let mut dirs_failed: HashMap<&Path, usize> = HashMap::new();
    let below_failed = |at: usize| {
        failures.entries.lock().expect("ok")[at].entries_below += 1;
    };
    let mut parents = Parents::new(beneath);
    for (idx, item) in items.iter().enumerate() {
        if idx % 1024 == 0 && options.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let path: &Path = &item.path;
        if let Some(parent) = path.parent()
            && !dirs_made.contains(parent)
        {
            let at = match dirs_failed.get(parent) {
                Some(&at) => Some(at),
                None => match beneath.make_dirs(parent) {
                    Ok(()) => {
                        dirs_made.insert(parent);
                        None
                    }
                    Err(e) => {
                        let e = Error::io(format!("creating {}", parent.display()), e);
                        let at = failures.record(None, parent, e)?;
                        dirs_failed.insert(parent, at);
                        Some(at)
                    }
                },
            };
            if let Some(at) = at {
                failures.failed[idx].store(true, Ordering::Relaxed);
                below_failed(at);
                if item.kind == NodeKind::Dir {
                    dirs_failed.insert(path, at);
                }
                continue;
            }
        }
        // Where the entry goes: a directory on the way that is not one
        // (swapped for a symlink since it was made) fails the entry.
        let (dir, name) = match parents.of(path) {
            Ok(at) => at,
            Err(e) => {
                let e = Error::io(format!("opening the directory of {}", path.display()), e);
                let at = failures.record(Some(idx), path, e)?;
                if item.kind == NodeKind::Dir {
                    dirs_failed.insert(path, at);
                }
                continue;
            }
        };
        let replacing = |e| Error::io(format!("replacing {}", path.display()), e);
        let remove_existing = || beneath::remove(dir, name, is_root).map_err(replacing);
        let outcome: Result<()> = match item.kind {
            NodeKind::Dir => {
                // Never follow a symlink where a directory belongs: content
                // would land outside the target.
                let creating = |e| Error::io(format!("creating {}", path.display()), e);
                let private_dir = || {
                    rustix::fs::mkdirat(dir, name, rustix::fs::Mode::from_raw_mode(0o700))
                        .map_err(|e| creating(e.into()))
                };
                let outcome = match beneath::stat_at(dir, name) {
                    Ok(m) if beneath::is_dir(&m) => {
                        if changed.tracked() {
                            let found = apply_metadata(Meta::At { dir, name }, item, judging);
                            changed.mark(idx, found.changed);
                        }
                        beneath::open_up(dir, name, &m, is_root);
                        Ok(())
                    }
                    Ok(m) if beneath::is_symlink(&m) => {
                        match judge_link(beneath, path, items, &mut kept_places_found) {
                            Ok(kept) => {
                                kept_link[idx] = true;
                                report.kept_links.push(kept);
                                Ok(())
                            }
                            Err(why) if options.overwrite == Overwrite::Never => {
                                return Err(not_kept_error(path, &why));
                            }
                            Err(why) => {
                                report.warnings.push(replaced_warning(path, &why));
                                changed.mark(idx, changes::REPLACED);
                                remove_existing().and_then(|()| private_dir())
                            }
                        }
                    }
                    Ok(_) if options.overwrite == Overwrite::Never => {
                        return Err(Error::InvalidInput(format!(
                            "{} already exists and is not a directory; pass --overwrite to replace it",
                            path.display()
                        )));
                    }
                    Ok(_) => {
                        changed.mark(idx, changes::REPLACED);
                        remove_existing().and_then(|()| private_dir())
                    }
                    Err(_) => {
                        changed.mark(idx, changes::CREATED);
                        private_dir()
                    }
                };
                match outcome {
                    Ok(()) => {
                        dirs_made.insert(path);
                        if let Ok(m) = beneath::stat_at(dir, name)
                            && beneath::is_dir(&m)
                            && let Ok(id) = made::of_at(dir, name)
                        {
                            made.record(idx, id);
                        }
                    }
                    Err(e) => {
                        let at = failures.record(Some(idx), path, e)?;
                        dirs_failed.insert(path, at);
                    }
                }
                Ok(())
            }
            NodeKind::File => {
                if let Some(key) = item.hardlink() {
                    if let Some(&first) = hardlinks.get(&key) {
                        links.push((first, idx));
                        continue;
                    }
                    hardlinks.insert(key, idx);
                }
                content_files.push(idx);
                Ok(())
            }
            NodeKind::Symlink => {
                // A target no file system holds is damage to this entry
                // alone (what is in its place is left alone), not a
                // failure of the restore.
                let Ok(target) = item.link_target() else {
                    absent[idx] = true;
                    report.damaged_entries.extend(item.damage());
                    continue;
                };
                if keep_special(changed, idx, (dir, name), item) {
                    continue;
                }
                remove_existing().and_then(|()| {
                    rustix::fs::symlinkat(target, dir, name).map_err(|e| {
                        Error::io(format!("creating symlink {}", path.display()), e.into())
                    })
                })
            }
            // A fifo and a device node the target refuses are alike: the
            // entry is not restored.
            NodeKind::Fifo if keep_special(changed, idx, (dir, name), item) => continue,
            NodeKind::Fifo => remove_existing().and_then(|()| {
                let mode = rustix::fs::Mode::from_raw_mode(item.mode & 0o7777);
                rustix::fs::mknodat(dir, name, rustix::fs::FileType::Fifo, mode, 0)
                    .map_err(|e| Error::io(format!("creating fifo {}", path.display()), e.into()))
            }),
            NodeKind::Dev | NodeKind::Chardev if keep_special(changed, idx, (dir, name), item) => {
                continue;
            }
            NodeKind::Dev | NodeKind::Chardev => {
                let kind = if item.kind == NodeKind::Dev {
                    rustix::fs::FileType::BlockDevice
                } else {
                    rustix::fs::FileType::CharacterDevice
                };
                let outcome = remove_existing().map(|()| {
                    rustix::fs::mknodat(
                        dir,
                        name,
                        kind,
                        rustix::fs::Mode::from_raw_mode(item.mode & 0o7777),
                        item.rare.as_ref().and_then(|r| r.device).unwrap_or(0),
                    )
                });
                match outcome {
                    Ok(Err(rustix::io::Errno::PERM)) if options.devices_need_root_ok => {
                        absent[idx] = true;
                        report.devices_not_created.push(path.display().to_string());
                        continue;
                    }
                    Ok(r) => r.map_err(|e| {
                        Error::io(format!("creating device node {}", path.display()), e.into())
                    }),
                    Err(e) => Err(e),
                }
            }
            NodeKind::Socket => {
                // Sockets are recreated by the program that owns them.
                absent[idx] = true;
                Ok(())
            }
        };
        if let Err(e) = outcome {
            failures.record(Some(idx), path, e)?;
        }
    }
    Ok(Skeleton {
        content_files,
        links,
        absent,
        kept_link,
        kept_places: kept_places_found,
    })
}
