//! What the target already holds, judged against the snapshot: files an
//! if-changed restore may keep and which of their chunks are right, and
//! symlinks, fifos and devices that are the snapshot's already.

use super::Overwrite;
use super::beneath::{self, Beneath, Parents};
use super::changes::{self, Changes};
use super::content::prepare_files;
use super::failures::Failures;
use super::hardlinks::group_of;
use super::item::Item;
use super::made::{self, Ident, Made};
use super::metadata::{Meta, MetaRules, apply_metadata};
use crate::error::Result;
use crate::id::BlobId;
use crate::index::Index;
use crate::repository::Repository;
use crate::tree::NodeKind;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What an if-changed restore changes in the file `item` given what it
/// found there ([`compare_existing`]).
pub(super) fn file_changes(
    parents: &mut Parents<'_>,
    item: &Item,
    compared: Option<&Compared>,
) -> u16 {
    match compared {
        Some(c) if c.identical => 0,
        Some(c) => {
            let content = if c.chunks.iter().all(|&ok| ok) {
                0
            } else {
                changes::CONTENT
            };
            content | if c.len == item.size { 0 } else { changes::SIZE }
        }
        // Not there, or not a file it may keep (another kind, a hard
        // link to something outside the snapshot).
        None => parents
            .of(&item.path)
            .map_or(changes::CREATED, created_or_replaced),
    }
}

/// Whether something is in the way at `at`, to be replaced, or nothing.
pub(super) fn created_or_replaced(at: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr)) -> u16 {
    match beneath::stat_at(at.0, at.1) {
        Ok(_) => changes::REPLACED,
        Err(_) => changes::CREATED,
    }
}

/// With if-changed ([`Changes`] tracked): whether the symlink, fifo or
/// device node already at `at` is the snapshot's, and is kept as it is;
/// else it is marked as created or replaced, as the restore will.
pub(super) fn keep_special(
    changed: &Changes,
    idx: usize,
    at: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
    item: &Item,
) -> bool {
    if !changed.tracked() {
        return false;
    }
    match beneath::stat_at(at.0, at.1) {
        Ok(stat) if same_special(at, &stat, item) => true,
        _ => {
            changed.mark(idx, created_or_replaced(at));
            false
        }
    }
}

/// Whether `stat` (of the entry at `at`, not followed) is the snapshot's
/// symlink (same text), fifo or device node (same kind and number).
pub(super) fn same_special(
    at: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
    stat: &rustix::fs::Stat,
    item: &Item,
) -> bool {
    use rustix::fs::FileType;
    let kind = FileType::from_raw_mode(stat.st_mode);
    let device = || item.rare.as_ref().and_then(|r| r.device).unwrap_or(0) == stat.st_rdev;
    match item.kind {
        NodeKind::Symlink if kind == FileType::Symlink => item.link_target().is_ok_and(|want| {
            rustix::fs::readlinkat(at.0, at.1, Vec::new())
                .is_ok_and(|text| text.as_bytes() == want.as_bytes())
        }),
        NodeKind::Fifo => kind == FileType::Fifo,
        NodeKind::Dev => kind == FileType::BlockDevice && device(),
        NodeKind::Chardev => kind == FileType::CharacterDevice && device(),
        _ => false,
    }
}

/// Whether an if-changed restore keeps the existing file at `path` and
/// writes only the chunks that differ; any other file is made anew (see
/// [`prepare_file`](super::content::prepare_file)). A file with other hard links is kept only when each
/// of them is one of `names`, the names the restore links to this file
/// (its own output, restored again): writing through it then changes
/// nothing but the restore's own file.
pub(super) fn resumable(parents: &mut Parents<'_>, path: &Path, names: &[&Path]) -> bool {
    let beneath = parents.beneath();
    parents.of(path).is_ok_and(|(dir, name)| {
        beneath::stat_at(dir, name).is_ok_and(|stat| keepable(beneath, &stat, names))
            && rustix::fs::accessat(
                dir,
                name,
                rustix::fs::Access::WRITE_OK,
                rustix::fs::AtFlags::empty(),
            )
            .is_ok()
    })
}

/// Whether the file `stat` describes may be kept by an if-changed restore
/// whose names for it are `names` ([`resumable`]), write access aside: a
/// regular file all of whose hard links are among `names`.
pub(super) fn keepable(beneath: &Beneath, stat: &rustix::fs::Stat, names: &[&Path]) -> bool {
    let links_within = || {
        let own = names.iter().filter(|name| {
            beneath
                .stat(name)
                .is_ok_and(|m| (m.st_dev, m.st_ino) == (stat.st_dev, stat.st_ino))
        });
        // `st_nlink` is u32 on some targets (aarch64).
        #[allow(clippy::useless_conversion)]
        let links = u64::from(stat.st_nlink);
        own.count() as u64 == links
    };
    beneath::is_file(stat) && (stat.st_nlink == 1 || links_within())
}

/// What an if-changed restore found in a file already there.
pub(super) struct Compared {
    /// By chunk: whether the file holds it already.
    pub(super) chunks: Vec<bool>,
    /// The file's length.
    pub(super) len: u64,
    /// Whether it is the snapshot's file: every chunk there, and nothing
    /// more.
    pub(super) identical: bool,
    /// What the file is.
    pub(super) ident: Ident,
}

/// Reads the file at `item`'s path, if one the restore may keep
/// ([`keepable`]), and compares it with the snapshot's. Opened read-only:
/// a file that needs no writing is never opened for writing.
pub(super) fn compare_existing(
    repo: &Repository,
    index: &Index,
    parents: &mut Parents<'_>,
    item: &Item,
    names: &[&Path],
) -> Option<Compared> {
    let beneath = parents.beneath();
    let mut f = open_to_read(parents, &item.path).ok()?;
    let stat = rustix::fs::fstat(&f).ok()?;
    if !keepable(beneath, &stat, names) {
        return None;
    }
    let len = file_len(&stat);
    let chunks = chunks_ok(repo, index, &mut f, &item.content)?;
    Some(Compared {
        identical: len == item.size && chunks.iter().all(|&ok| ok),
        len,
        chunks,
        ident: made::of_fd(f.as_fd()).ok()?,
    })
}

pub(super) fn file_len(stat: &rustix::fs::Stat) -> u64 {
    u64::try_from(stat.st_size).unwrap_or(0)
}

/// Opens an existing file below the target to read it back
/// ([`beneath::open_read`]).
pub(super) fn open_to_read(parents: &mut Parents<'_>, path: &Path) -> std::io::Result<fs::File> {
    let (dir, name) = parents.of(path)?;
    beneath::open_read(dir, name)
}

/// Whether two entries (each a directory and a name in it) are names of
/// one file (neither followed if a symlink).
pub(super) fn same_file(
    a: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
    b: (std::os::fd::BorrowedFd<'_>, &std::ffi::OsStr),
) -> bool {
    match (beneath::stat_at(a.0, a.1), beneath::stat_at(b.0, b.1)) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
}

/// For if-changed restores: which chunks of an existing file already hold
/// the right content.
pub(super) fn existing_chunks_ok(
    repo: &Repository,
    index: &Index,
    parents: &mut Parents<'_>,
    path: &Path,
    content: &[BlobId],
) -> Option<Vec<bool>> {
    chunks_ok(repo, index, &mut open_to_read(parents, path).ok()?, content)
}

/// Which chunks of `content` the file `f` holds, read from its start.
pub(super) fn chunks_ok(
    repo: &Repository,
    index: &Index,
    f: &mut fs::File,
    content: &[BlobId],
) -> Option<Vec<bool>> {
    let mut out = Vec::with_capacity(content.len());
    for id in content {
        let len = index.get(id)?.raw_len as usize;
        let mut buf = vec![0u8; len];
        if f.read_exact(&mut buf).is_err() {
            out.push(false);
            continue;
        }
        out.push(repo.key().blob_id(&buf) == *id);
    }
    Some(out)
}

/// For an if-changed restore: reads each of `content_files` the target
/// holds already and compares it with the snapshot, marking in `changed`
/// what differs (judged with `judging` before anything is changed: writing
/// a file changes its mode and times on the way, and the metadata pass
/// reaches a hard-linked file by each of its names, the first of them
/// finding it right); then makes anew or resizes each that differs (its
/// `fresh` set when made empty), and returns, by file, which chunks hold
/// the snapshot's content.
///
/// Read through a read-only descriptor first: a file identical to the
/// snapshot is kept as it is, whatever its write permission (immutable, on
/// a read-only mount, in a read-only directory someone else owns). Only
/// one that differs is opened for writing, or made anew.
#[allow(clippy::too_many_arguments)]
pub(super) fn compare_files(
    repo: &Repository,
    index: &Index,
    items: &[Item],
    content_files: &[usize],
    beneath: &Beneath,
    groups: &HashMap<(u64, u64), Vec<&Path>>,
    changed: &Changes,
    judging: MetaRules,
    failures: &Failures,
    made: &Made,
    is_root: bool,
    fresh: &mut [bool],
) -> Result<Vec<Vec<bool>>> {
    let compared: Vec<Option<Compared>> = content_files
        .par_iter()
        .map_init(
            || Parents::new(beneath),
            |parents, &idx| {
                let item = &items[idx];
                let compared = compare_existing(repo, index, parents, item, group_of(groups, item));
                let bits = file_changes(parents, item, compared.as_ref());
                if let Some(c) = &compared {
                    made.record(idx, c.ident);
                }
                if compared.is_some()
                    && let Ok((dir, name)) = parents.of(&item.path)
                {
                    let found = apply_metadata(Meta::At { dir, name }, item, judging);
                    changed.mark(idx, found.changed);
                }
                changed.mark(idx, bits);
                compared
            },
        )
        .collect();
    let differing = (content_files.iter().zip(&compared))
        .filter(|(_, c)| !c.as_ref().is_some_and(|c| c.identical))
        .map(|(&idx, _)| idx)
        .collect();
    let prepared = prepare_files(
        differing,
        items,
        beneath,
        groups,
        Overwrite::IfChanged,
        is_root,
        failures,
        made,
    )?;
    for (idx, is_fresh) in prepared {
        fresh[idx] = is_fresh;
    }
    let fresh = &*fresh;
    Ok(content_files
        .par_iter()
        .zip(compared)
        .map_init(
            || Parents::new(beneath),
            |parents, (&idx, compared)| {
                if failures.is_failed(idx) {
                    return Vec::new();
                }
                let item = &items[idx];
                match compared {
                    // Kept, or written in place at the size it had: what
                    // was read holds.
                    Some(c) if c.identical || (!fresh[idx] && c.len == item.size) => c.chunks,
                    // Made anew or resized: what it holds now.
                    _ => existing_chunks_ok(repo, index, parents, &item.path, &item.content)
                        .unwrap_or_default(),
                }
            },
        )
        .collect())
}
