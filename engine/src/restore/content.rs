//! Content: the plan of blob writes, cut into runs of one ranged read
//! each, and the workers that fetch a run and write its blobs where they
//! belong (creating and finishing the files whose content lies in it).

use super::beneath::{self, Beneath, Parents};
use super::existing::resumable;
use super::failures::Failures;
use super::hardlinks::group_of;
use super::item::Item;
use super::made::{self, Ident, Made};
use super::metadata::{Meta, MetaRules, apply_metadata};
use super::{Overwrite, RestoreProgress};
use crate::backend::Backend;
use crate::blob;
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::Index;
use crate::repository::{FileKind, Repository};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One write of a blob's plaintext into a file.
#[derive(Clone, Copy)]
pub(super) struct Write1 {
    /// The file's item.
    pub(super) file: u32,
    /// Which of the file's chunks: the blob's id is `content[chunk]`.
    pub(super) chunk: u32,
    /// Where in the file.
    pub(super) offset: u64,
}

/// A blob to fetch and where it goes. The restore's content plan is one
/// sorted array of these, 64 bytes each: a blob written to several places
/// appears once per write, consecutively.
#[derive(Clone, Copy)]
pub(super) struct Want {
    pub(super) pack: PackId,
    pub(super) offset: u32,
    pub(super) length: u32,
    pub(super) raw_len: u32,
    pub(super) kind: crate::blob::BlobKind,
    pub(super) write: Write1,
}

/// Creates or resizes a file; returns whether it was created empty (so
/// unwritten ranges are holes reading as zeros), and what it is. `names` are the names
/// the restore gives it (its link group), when it is hard-linked.
pub(super) fn prepare_file(
    parents: &mut Parents<'_>,
    path: &Path,
    size: u64,
    overwrite: Overwrite,
    names: &[&Path],
    is_root: bool,
) -> Result<(bool, Ident)> {
    // A file restored read-only (0444) cannot be opened to write as a user
    // other than root: it is made anew instead, as files that are not
    // there. Resuming was refused outright ("Permission denied").
    // A file with hard links beyond `names` is made anew too: writing
    // through it would change the other names, which may lie outside the
    // target (a restore's own second names are linked again afterwards).
    let keep = overwrite == Overwrite::IfChanged && resumable(parents, path, names);
    let (dir, name) = parents.of(path).map_err(|e| in_dir_of(path, e))?;
    let opening = |e| Error::io(format!("opening {}", path.display()), e);
    let f = if keep {
        use std::os::unix::fs::PermissionsExt;
        let f = beneath::open_write(dir, name).map_err(opening)?;
        // Owner-only while the snapshot's content goes in, as a new file
        // is: a secret now 0600 was written under the old file's 0644 and,
        // if stopped, stayed readable. Its mode is applied at the end. Not
        // this user's file (a group-writable one): it keeps its mode.
        if let Err(e) = f.set_permissions(fs::Permissions::from_mode(0o600)) {
            tracing::debug!(
                "cannot make {} private for the restore: {e}",
                path.display()
            );
        }
        f
    } else {
        create_file(dir, name, path, is_root)?
    };
    f.set_len(size)
        .map_err(|e| Error::io(format!("resizing {}", path.display()), e))?;
    let id = made::of_fd(f.as_fd()).map_err(opening)?;
    Ok((!keep, id))
}

/// Creates the file `name` in `dir` (`path`) anew, replacing what is in
/// the way ([`beneath::create_file`]). Something still there after a
/// failure is what could not be removed: the error says so, as a
/// directory tree too deep to remove (EMFILE) was reported as "creating".
pub(super) fn create_file(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    path: &Path,
    is_root: bool,
) -> Result<fs::File> {
    beneath::create_file(dir, name, is_root).map_err(|e| {
        let doing = if beneath::stat_at(dir, name).is_ok() {
            "removing what is in the way of the snapshot's file at"
        } else {
            "creating"
        };
        Error::io(format!("{doing} {}", path.display()), e)
    })
}

/// The error of a directory on the way to `path` that cannot be opened
/// (not there, or no longer a directory: a symlink is never followed).
pub(super) fn in_dir_of(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("opening the directory of {}", path.display()), e)
}

/// What the pack workers share while restoring content.
pub(super) struct Content<'a> {
    pub(super) repo: &'a Repository,
    pub(super) index: &'a Index,
    pub(super) items: &'a [Item],
    /// By item: the file was created empty, so zero runs can stay holes.
    pub(super) fresh: &'a [bool],
    /// By item: the file's content lies in one pack, whose worker creates
    /// it and applies its metadata.
    pub(super) owned: &'a [bool],
    pub(super) rules: MetaRules,
    pub(super) written: AtomicU64,
    /// Files the target refuses are recorded here, and skipped.
    pub(super) failures: &'a Failures,
    /// By item: why part of its content could not be restored (a blob
    /// damaged or missing in the repository), and whether because it is
    /// missing; the file has zeros there.
    pub(super) damaged: Mutex<BTreeMap<usize, (String, bool)>>,
    pub(super) progress: &'a RestoreProgress,
    pub(super) is_root: bool,
    /// What the restore made of each file created before its content.
    pub(super) made: &'a Made,
}

/// A file a pack worker creates and finishes itself.
pub(super) struct OwnedFile {
    /// Writes of this pack to the file not yet done.
    pub(super) remaining: usize,
    /// The file's length so far; below its size when finished, the tail
    /// is a hole made by `set_len`.
    pub(super) len: u64,
    pub(super) created: bool,
}

impl Content<'_> {
    /// Fetches one run of blobs (writes of one pack sorted by offset, from
    /// [`into_runs`]) with one read and writes each where it belongs.
    pub(super) fn restore_run(&self, parents: &mut Parents<'_>, run: &[Want]) -> Result<()> {
        let backend: &dyn Backend = self.repo.backend().as_ref();
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let pack = first.pack;
        let path = FileKind::Pack.path(&pack.to_hex());
        let mut owned: HashMap<u32, OwnedFile> = HashMap::new();
        for w in run {
            if self.owned[w.write.file as usize] {
                owned
                    .entry(w.write.file)
                    .or_insert(OwnedFile {
                        remaining: 0,
                        len: 0,
                        created: false,
                    })
                    .remaining += 1;
            }
        }
        // Files this run writes to stay open while it is processed, but
        // never more than OPEN_FILES at once: one run of small files can
        // touch hundreds, and several runs are restored in parallel.
        const OPEN_FILES: usize = 16;
        let mut files: HashMap<u32, fs::File> = HashMap::new();
        let first = first.offset;
        let end = u64::from(last.offset) + u64::from(last.length);
        // Damage (a missing or truncated pack, a blob failing to open)
        // costs the files it touches, not the restore: they are written
        // with zeros there and reported, as restic does; everything else
        // is restored. Other errors (the store failing, a full target)
        // stop the restore.
        let span = match backend.get_range(&path, u64::from(first), end - u64::from(first)) {
            Ok(span) => Ok(span),
            Err(e) => match Error::backend(format!("pack {pack}"), e) {
                e @ Error::NotFound { .. } => Err((e.to_string(), true)),
                e @ Error::Corrupt { .. } => Err((e.to_string(), false)),
                e => return Err(e),
            },
        };
        // Consecutive wants at one offset are one blob's writes.
        for writes in run.chunk_by(|a, b| a.offset == b.offset) {
            let target = writes[0];
            let id = self.items[target.write.file as usize].content[target.write.chunk as usize];
            let from = (target.offset - first) as usize;
            let data = span.as_ref().map_err(Clone::clone).and_then(|span| {
                let stored = span
                    .get(from..from + target.length as usize)
                    .ok_or_else(|| (format!("pack {pack} is shorter than indexed"), false))?;
                blob::open(self.repo.key(), target.kind, &id, target.raw_len, stored)
                    .map_err(|e| (format!("blob {id} in pack {pack}: {e}"), false))
            });
            // A copy of the blob in another pack (two backups stored it at
            // once) stands in for a damaged or missing one.
            // The store failing there stops the restore, as it would here.
            let data = match data {
                Ok(data) => Ok(data),
                Err(why) => self.repo.other_copy(self.index, &id, &pack)?.ok_or(why),
            };
            let data = match data {
                Ok(data) => Some(data),
                Err(why) => {
                    let mut damaged = self.damaged.lock().expect("ok");
                    for w in writes {
                        damaged
                            .entry(w.write.file as usize)
                            .or_insert_with(|| why.clone());
                    }
                    None
                }
            };
            let zero = data.as_ref().is_some_and(|d| crate::zeros::is_zero(d));
            for &Want { write: w, .. } in writes {
                // A file the target refused (here or before) gets no more.
                if self.failures.is_failed(w.file as usize) {
                    continue;
                }
                let item = &self.items[w.file as usize];
                let mut own = owned.get_mut(&w.file);
                // A new file is sized with set_len: a zero range is a
                // hole that reads as zeros already. Leaving it keeps
                // files sparse. An owned file is still opened, so it
                // exists even if it is all zeros. Damaged content is
                // never written: its range stays a hole.
                let skip = data.is_none() || (zero && self.fresh[w.file as usize]);
                if skip && own.is_none() {
                    continue;
                }
                if files.len() >= OPEN_FILES && !files.contains_key(&w.file) {
                    files.clear();
                }
                let p = &item.path;
                let file = match files.entry(w.file) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let at = parents.of(p).map_err(|e| in_dir_of(p, e));
                        let opened = at.and_then(|(dir, name)| match own.as_deref_mut() {
                            Some(o) if !o.created => {
                                o.created = true;
                                // Other blobs are opened before this
                                // file's next write, and one may fail:
                                // like every file of a failed restore,
                                // it must then have its full size,
                                // holes where content is missing.
                                create_file(dir, name, p, self.is_root).and_then(|f| {
                                    // Its second names are linked to it by
                                    // name later.
                                    if item.hardlink().is_some() {
                                        let id = made::of_fd(f.as_fd()).map_err(|e| {
                                            Error::io(format!("opening {}", p.display()), e)
                                        })?;
                                        self.made.record(w.file as usize, id);
                                    }
                                    if o.remaining > 1 {
                                        f.set_len(item.size).map_err(|e| {
                                            Error::io(format!("resizing {}", p.display()), e)
                                        })?;
                                        o.len = item.size;
                                    }
                                    Ok(f)
                                })
                            }
                            _ => beneath::open_write(dir, name)
                                .map_err(|e| Error::io(format!("opening {}", p.display()), e))
                                .and_then(|f| {
                                    let made = self.made.get(w.file as usize);
                                    made::check_fd(made, f.as_fd(), p)?;
                                    Ok(f)
                                }),
                        });
                        match opened {
                            Ok(f) => v.insert(f),
                            Err(e) => {
                                self.failures.record(Some(w.file as usize), p, e)?;
                                continue;
                            }
                        }
                    }
                };
                // Where the last byte written ends in the file.
                let mut wrote_to = None;
                if let Some(data) = data.as_ref().filter(|_| !skip) {
                    let write = |r: std::ops::Range<usize>| {
                        let at = w.offset + r.start as u64;
                        file.write_all_at(&data[r.clone()], at)
                            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
                        self.written.fetch_add(r.len() as u64, Ordering::Relaxed);
                        Ok::<_, Error>(at + r.len() as u64)
                    };
                    let result = if self.fresh[w.file as usize] {
                        // Zero blocks inside a chunk stay holes too.
                        crate::zeros::data_spans(data, w.offset).try_for_each(|r| {
                            wrote_to = Some(write(r)?);
                            Ok(())
                        })
                    } else {
                        write(0..data.len()).map(|end| wrote_to = Some(end))
                    };
                    if let Err(e) = result {
                        files.remove(&w.file);
                        self.failures.record(Some(w.file as usize), p, e)?;
                        continue;
                    }
                }
                if let Some(o) = own {
                    if let Some(end) = wrote_to {
                        o.len = o.len.max(end);
                    }
                    o.remaining -= 1;
                    if o.remaining == 0 {
                        let finished = self.finish_owned(file, item, o.len);
                        files.remove(&w.file);
                        if let Err(e) = finished {
                            self.failures.record(Some(w.file as usize), p, e)?;
                        }
                    }
                }
            }
            self.progress.bytes_done.fetch_add(
                u64::from(target.raw_len) * writes.len() as u64,
                Ordering::Relaxed,
            );
        }

        Ok(())
    }

    /// Restores every run of `plan` on every core (runs rather than whole
    /// packs are the workers' tasks, so that no core waits long for the
    /// last one); stops at the first error that stops the restore, or when
    /// `cancel` is set.
    ///
    /// One worker per thread takes the next run in the plan's order until
    /// none is left, keeping its directories open (`Parents`) the whole
    /// time: rayon's split jobs each started with none open, and the
    /// restore reopened a directory for every eighth file it wrote.
    pub(super) fn restore_runs(
        &self,
        beneath: &Beneath,
        plan: &Plan,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let next = AtomicUsize::new(0);
        rayon::broadcast(|_| {
            let mut parents = Parents::new(beneath);
            while !cancel.load(Ordering::Relaxed) && first_error.lock().expect("ok").is_none() {
                let Some(run) = plan.runs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                if let Err(e) = self.restore_run(&mut parents, &plan.wants[run.clone()]) {
                    first_error.lock().expect("ok").get_or_insert(e);
                }
            }
        });
        if let Some(e) = first_error.into_inner().expect("ok") {
            return Err(e);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        Ok(())
    }

    /// Completes a file whose last write was just made: sizes a tail left
    /// as a hole (`len` is the file's length so far) and applies its
    /// metadata through the open descriptor.
    pub(super) fn finish_owned(&self, file: &fs::File, item: &Item, len: u64) -> Result<()> {
        if len < item.size {
            file.set_len(item.size)
                .map_err(|e| Error::io(format!("resizing {}", item.path.display()), e))?;
        }
        let applied = apply_metadata(Meta::File(file), item, self.rules);
        self.failures.metadata(&item.path, applied.problems);
        Ok(())
    }
}

/// Largest span one ranged read covers (unless a single blob is larger).
/// Each download thread holds one span, so this bounds restore memory:
/// reading whole 16 MiB packs on 4 threads peaked at ~165 MiB resident.
pub(super) const MAX_READ_SPAN: u64 = 4 * 1024 * 1024;
/// Unneeded bytes between two needed blobs that are read through rather
/// than split into two requests (one request costs more than this).
pub(super) const MAX_READ_GAP: u64 = 256 * 1024;

/// Splits wants sorted by pack and offset into runs, each fetched with one
/// ranged read: consecutive blobs of a pack join a run while the run stays
/// within [`MAX_READ_SPAN`] and the gap before them within
/// [`MAX_READ_GAP`]. The writes of one blob are never split.
pub(super) fn into_runs(sorted: &[Want]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (at, want) in sorted.iter().enumerate() {
        let end = u64::from(want.offset) + u64::from(want.length);
        let joins = runs.last().is_some_and(|run| {
            let (first, prev) = (&sorted[run.start], &sorted[run.end - 1]);
            let prev_end = u64::from(prev.offset) + u64::from(prev.length);
            first.pack == want.pack
                && u64::from(want.offset).saturating_sub(prev_end) <= MAX_READ_GAP
                && end.saturating_sub(u64::from(first.offset)) <= MAX_READ_SPAN
        });
        match runs.last_mut() {
            Some(run) if joins => run.end = at + 1,
            _ => runs.push(at..at + 1),
        }
    }
    runs
}

/// An item's number as a [`Write1`] holds it.
pub(super) fn idx_u32(idx: usize) -> Result<u32> {
    u32::try_from(idx)
        .map_err(|_| Error::InvalidInput("more than 4 billion entries or chunks to restore".into()))
}

/// Creates each of `files` anew or, resuming (`overwrite` if-changed, for
/// files it may keep), resizes it, on every core; returns those prepared,
/// each with whether it was created empty. A file that cannot be created
/// or sized is recorded in `failures` and left out: it gets no content.
/// `groups` are the hard-link groups of a resuming restore. What each file
/// is goes to `made`.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare_files(
    files: Vec<usize>,
    items: &[Item],
    beneath: &Beneath,
    groups: &HashMap<(u64, u64), Vec<&Path>>,
    overwrite: Overwrite,
    is_root: bool,
    failures: &Failures,
    made: &Made,
) -> Result<Vec<(usize, bool)>> {
    let prepared: Vec<Option<(usize, bool)>> = files
        .into_par_iter()
        .map_init(
            || Parents::new(beneath),
            |parents, idx| {
                let item = &items[idx];
                let names = group_of(groups, item);
                let prepared =
                    prepare_file(parents, &item.path, item.size, overwrite, names, is_root);
                match prepared {
                    Ok((fresh, id)) => {
                        made.record(idx, id);
                        Ok(Some((idx, fresh)))
                    }
                    Err(e) => failures.record(Some(idx), &item.path, e).map(|_| None),
                }
            },
        )
        .collect::<Result<_>>()?;
    Ok(prepared.into_iter().flatten().collect())
}

/// The content to fetch: every write of every blob, sorted by pack and
/// offset, cut into runs of blobs each fetched with one read.
pub(super) struct Plan {
    pub(super) wants: Vec<Want>,
    pub(super) runs: Vec<std::ops::Range<usize>>,
    /// Plain bytes to write.
    pub(super) total: u64,
    /// Plain bytes the target holds right already (if-changed).
    pub(super) skipped: u64,
}

/// Plans the content of `content_files` (those not failed): every chunk
/// but those `verified` (by file, by chunk) found right already. A blob
/// no index holds fails the restore.
pub(super) fn plan(
    index: &Index,
    items: &[Item],
    content_files: &[usize],
    verified: &[Vec<bool>],
    failures: &Failures,
) -> Result<Plan> {
    let mut wants: Vec<Want> = Vec::new();
    let (mut total, mut skipped) = (0u64, 0u64);
    for (file_no, &idx) in content_files.iter().enumerate() {
        if failures.is_failed(idx) {
            continue;
        }
        let item = &items[idx];
        let mut offset = 0u64;
        for (chunk_no, id) in item.content.iter().enumerate() {
            let loc = index.get(id).ok_or_else(|| Error::NotFound {
                object: format!("blob {id} of {} (not in any index)", item.path.display()),
            })?;
            let unchanged = verified
                .get(file_no)
                .and_then(|v| v.get(chunk_no))
                .copied()
                .unwrap_or(false);
            if unchanged {
                skipped += u64::from(loc.raw_len);
            } else {
                total += u64::from(loc.raw_len);
                wants.push(Want {
                    pack: loc.pack,
                    offset: loc.offset,
                    length: loc.length,
                    raw_len: loc.raw_len,
                    kind: loc.kind,
                    write: Write1 {
                        file: idx_u32(idx)?,
                        chunk: idx_u32(chunk_no)?,
                        offset,
                    },
                });
            }
            offset += u64::from(loc.raw_len);
        }
    }
    wants.par_sort_unstable_by(|a, b| (a.pack, a.offset).cmp(&(b.pack, b.offset)));
    let mut runs = into_runs(&wants);
    // Runs in the order of the files they write (the walk's), not of their
    // packs' ids, which is random: each worker then takes its runs from
    // one part of the tree at a time, and keeps finding their directories
    // open (`Parents`) rather than opening them again for every run.
    runs.sort_by_cached_key(|run| wants[run.clone()].iter().map(|w| w.write.file).min());
    Ok(Plan {
        wants,
        runs,
        total,
        skipped,
    })
}

/// By item: whether the file's content lies in one run of `plan` (nearly
/// every small file), whose worker then creates, writes and finishes it
/// through one descriptor: creating it beforehand, reopening it for
/// content and setting metadata by path later cost three path lookups and
/// twice the syscalls per file. (A file of zeros only, whose one blob is
/// written nowhere else, is still owned: the worker opens it even when it
/// writes nothing.) Not for a resuming restore: there a file's unchanged
/// chunks are never written, so no worker would finish it.
pub(super) fn owned_files(items: usize, content_files: &[usize], plan: &Plan) -> Vec<bool> {
    const NONE: usize = usize::MAX;
    const SEVERAL: usize = usize::MAX - 1;
    let mut run_of = vec![NONE; items];
    for (run_no, run) in plan.runs.iter().enumerate() {
        for w in &plan.wants[run.clone()] {
            let r = &mut run_of[w.write.file as usize];
            *r = if *r == NONE || *r == run_no {
                run_no
            } else {
                SEVERAL
            };
        }
    }
    let mut owned = vec![false; items];
    for &idx in content_files {
        owned[idx] = run_of[idx] < SEVERAL;
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(pack: u8, offset: u32, length: u32) -> Want {
        Want {
            pack: PackId([pack; 32]),
            offset,
            length,
            raw_len: length,
            kind: crate::blob::BlobKind::Data,
            write: Write1 {
                file: 0,
                chunk: 0,
                offset: 0,
            },
        }
    }

    fn target(offset: u32, length: u32) -> Want {
        want(0, offset, length)
    }

    fn runs_of(wants: &[Want]) -> Vec<Vec<u32>> {
        into_runs(wants)
            .into_iter()
            .map(|r| wants[r].iter().map(|t| t.offset).collect())
            .collect()
    }

    /// A restore holds one `Item` per entry and one `Want` per write at
    /// once: their size is its memory per file.
    #[test]
    fn the_plan_stays_small_per_entry() {
        assert!(
            std::mem::size_of::<Item>() <= 96,
            "{}",
            std::mem::size_of::<Item>()
        );
        assert_eq!(std::mem::size_of::<Want>(), 64);
    }

    #[test]
    fn read_runs_bound_the_span_and_skip_large_gaps() {
        const MIB: u32 = 1024 * 1024;
        // Adjacent 1 MiB blobs: four fit one 4 MiB read, the fifth starts
        // the next.
        let adjacent: Vec<Want> = (0..5).map(|i| target(i * MIB, MIB)).collect();
        assert_eq!(
            runs_of(&adjacent),
            vec![vec![0, MIB, 2 * MIB, 3 * MIB], vec![4 * MIB]]
        );
        // A small gap is read through; a large one splits the run.
        let gaps = vec![
            target(0, 1000),
            target(1000 + 100 * 1024, 1000),
            target(2 * MIB, 1000),
        ];
        assert_eq!(
            runs_of(&gaps),
            vec![vec![0, 1000 + 100 * 1024], vec![2 * MIB]]
        );
        // A blob larger than the span is read alone, whole.
        let big = vec![target(0, 10), target(10, 6 * MIB), target(10 + 6 * MIB, 10)];
        assert_eq!(runs_of(&big), vec![vec![0], vec![10], vec![10 + 6 * MIB]]);
        assert!(runs_of(&[]).is_empty());
        // A blob written to two files is one read; another pack starts a
        // new run even where its offsets would join.
        let shared = vec![
            target(0, 10),
            target(0, 10),
            target(10, 10),
            want(1, 20, 10),
        ];
        assert_eq!(runs_of(&shared), vec![vec![0, 0, 10], vec![20]]);
    }
}
