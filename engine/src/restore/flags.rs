//! Linux inode flags (`chattr`) given back to restored files and
//! directories (repo-format.md §9.1). They come after everything else of
//! an entry: `+i` refuses any later change to its content, owner, mode,
//! attributes and times, `+a` most of them. A directory's are set with its
//! other metadata (deepest first, after all it holds); a file's in a pass
//! of their own after every file's metadata, since `+i` on one name of a
//! hard-linked file would refuse the metadata of its other names.
//!
//! Only as root, as owners: `+i` and `+a` take `CAP_LINUX_IMMUTABLE`. A
//! restore only adds the snapshot's flags and clears none: a snapshot by an
//! engine that did not record flags does not say the entry had none, and
//! an immutable entry stays so until its owner says otherwise.

use super::beneath::{Beneath, Parents};
use super::changes;
use super::item::Item;
use super::made::Ident;
use super::metadata::{Applied, Meta, MetaRules, open_made_file};
use crate::error::Result;
use crate::tree::{FS_APPEND_FL, FS_IMMUTABLE_FL, NodeKind};
use rustix::fs::IFlags;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Whether the flags of `item` wait for the pass after every file's
/// metadata ([`at`]) instead of being set with the rest of it.
pub(super) fn deferred(item: &Item, rules: MetaRules) -> bool {
    item.kind == NodeKind::File && item.inode_flags() != 0 && rules.is_root && !rules.dry_run
}

/// Sets the inode flags of a file [`deferred`] to this pass.
pub(super) fn at(
    parents: &mut Parents<'_>,
    item: &Item,
    made: Option<Ident>,
    rules: MetaRules,
) -> Result<Applied> {
    let file = open_made_file(parents, item, made)?;
    let mut applied = Applied::default();
    set(Meta::File(&file), item, rules, &mut applied);
    Ok(applied)
}

/// Adds `item`'s inode flags to what the restore made at `at` (with
/// `rules.dry_run`, only finds whether they are missing), unless they wait
/// for a later pass ([`deferred`]).
pub(super) fn apply(at: Meta<'_>, item: &Item, rules: MetaRules, applied: &mut Applied) {
    if !deferred(item, rules) {
        set(at, item, rules, applied);
    }
}

fn set(at: Meta<'_>, item: &Item, rules: MetaRules, applied: &mut Applied) {
    let wanted = item.inode_flags() & crate::tree::RECORDED_INODE_FLAGS;
    if wanted == 0 || !rules.is_root || !matches!(item.kind, NodeKind::File | NodeKind::Dir) {
        return;
    }
    let opened: OwnedFd;
    let fd: BorrowedFd<'_> = match at {
        Meta::File(f) => f.as_fd(),
        Meta::At { dir, name } => match open_at(dir, name) {
            Ok(fd) => {
                opened = fd;
                opened.as_fd()
            }
            Err(e) => {
                applied.problems.push(problem(e));
                return;
            }
        },
    };
    let current = match rustix::fs::ioctl_getflags(fd) {
        Ok(flags) => flags.bits(),
        Err(e) => {
            applied.problems.push(problem(e));
            return;
        }
    };
    if current & wanted == wanted {
        return;
    }
    applied.changed |= changes::FLAGS;
    if rules.dry_run {
        return;
    }
    // The flags the file system keeps (extents, inline data) go back as
    // they are: ext4 refuses to clear some.
    if let Err(e) = rustix::fs::ioctl_setflags(fd, IFlags::from_bits_retain(current | wanted)) {
        applied.problems.push(problem(e));
    }
}

/// An entry a dry run names, opened to read its flags without following
/// it (nor waiting, were it swapped for a fifo).
fn open_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> rustix::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let how = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    rustix::fs::openat(dir, name, how | OFlags::CLOEXEC, Mode::empty())
}

/// A file system without the flags (tmpfs has only a few) refuses them:
/// the entry is not restored whole, as when it refuses an attribute.
fn problem(e: rustix::io::Errno) -> String {
    format!("inode flags (chattr): {}", std::io::Error::from(e))
}

/// Why the target refused `path` with EPERM, when an inode flag is the
/// reason: the entry, or the directory it is in, is immutable or
/// append-only. A restore never clears those itself (whoever set them
/// meant the entry to stay), so the message says what would.
pub(super) fn refusal_hint(target: &Path, path: &Path) -> Option<String> {
    let beneath = Beneath::open(target).ok()?;
    let entry = flags_of(&beneath, path).and_then(|f| hint(f, path, "it"));
    entry.or_else(|| {
        let dir = path.parent().filter(|d| *d != target)?;
        flags_of(&beneath, dir)
            .and_then(|f| hint(f, dir, &format!("its directory {}", dir.display())))
    })
}

fn flags_of(beneath: &Beneath, path: &Path) -> Option<u32> {
    let (dir, name) = beneath.parent(path).ok()?;
    let fd = open_at(dir.as_fd(), name).ok()?;
    rustix::fs::ioctl_getflags(&fd).ok().map(|f| f.bits())
}

fn hint(flags: u32, path: &Path, what: &str) -> Option<String> {
    let (adjective, letter) = if flags & FS_IMMUTABLE_FL != 0 {
        ("immutable", 'i')
    } else if flags & FS_APPEND_FL != 0 {
        ("append-only", 'a')
    } else {
        return None;
    };
    Some(format!(
        "{what} is {adjective} (`lsattr` shows `{letter}`): `chattr -{letter} {}` lets a restore change it",
        path.display()
    ))
}
