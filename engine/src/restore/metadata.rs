//! Owner, mode, extended attributes and times, applied to what the
//! restore made (or, for if-changed, only found different).

use super::beneath::{self, Beneath, Parents};
use super::changes::{self, Changes};
use super::content::in_dir_of;
use super::failures::Failures;
use super::flags;
use super::item::Item;
use super::made::{self, Ident, Made};
use crate::error::{Error, Result};
use crate::tree::NodeKind;
use rayon::prelude::*;
use std::fs;
use std::path::PathBuf;

/// Where [`apply_metadata`] applies: an entry by its name in its
/// directory (never following it if a symlink), or a file or directory
/// already open.
#[derive(Clone, Copy)]
pub(super) enum Meta<'a> {
    At {
        dir: std::os::fd::BorrowedFd<'a>,
        name: &'a std::ffi::OsStr,
    },
    File(&'a fs::File),
}

/// How [`apply_metadata`] treats what it finds.
#[derive(Clone, Copy)]
pub(super) struct MetaRules {
    /// Owners are set only as root.
    pub(super) is_root: bool,
    /// Entries may predate the restore (`--overwrite`): extended attributes
    /// the snapshot does not hold are removed, or a restore in place would
    /// keep a stale ACL granting access the snapshot does not.
    pub(super) replace_xattrs: bool,
    /// Entries may be kept as they are (`IfChanged`): what already matches
    /// is not set again. A file kept because it is identical may refuse
    /// every change (immutable, on a read-only mount); one whose metadata
    /// matches as well is then no error.
    pub(super) only_differing: bool,
    /// Nothing is set: what differs is only found (a dry run of
    /// if-changed). Implies `only_differing`.
    pub(super) dry_run: bool,
}

/// What an if-changed restore finds different, setting nothing.
pub(super) fn dry_run_meta() -> MetaRules {
    MetaRules {
        is_root: nix::unistd::geteuid().is_root(),
        replace_xattrs: true,
        only_differing: true,
        dry_run: true,
    }
}

/// Attribute namespaces a restore owns. `security.*` belongs to the system
/// (SELinux labels, file capabilities) and is never removed.
pub(super) const RESTORED_XATTRS: [&str; 3] = ["user.", "trusted.", "system.posix_acl_"];

/// Applies `item`'s metadata to what the restore made at its path: a file
/// or directory through a descriptor opened without following a symlink,
/// anything else by its name in its directory, never following it. What is
/// there and cannot be opened as what the snapshot has (swapped for a
/// symlink since it was made) fails the entry.
pub(super) fn metadata_at(
    parents: &mut Parents<'_>,
    item: &Item,
    made: Option<Ident>,
    rules: MetaRules,
) -> Result<Applied> {
    if item.kind == NodeKind::File {
        let file = open_made_file(parents, item, made)?;
        return Ok(apply_metadata(Meta::File(&file), item, rules));
    }
    let path = &item.path;
    let (dir, name) = parents.of(path).map_err(|e| in_dir_of(path, e))?;
    let opened = match item.kind {
        NodeKind::Dir => match beneath::open_dir(dir, name) {
            // Another user's directory one may enter but not list (0711,
            // restored by non-root): its metadata is read and, where it
            // differs, set by name, never following it, as a fifo's is.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                if made.is_some() {
                    let found = made::of_at(dir, name)
                        .map_err(|e| Error::io(format!("checking {}", path.display()), e))?;
                    made::check(made, found, path)?;
                }
                return Ok(apply_metadata(Meta::At { dir, name }, item, rules));
            }
            other => other,
        },
        _ => return Ok(apply_metadata(Meta::At { dir, name }, item, rules)),
    };
    let file = opened.map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    made::check_fd(made, std::os::fd::AsFd::as_fd(&file), path)?;
    Ok(apply_metadata(Meta::File(&file), item, rules))
}

/// What the metadata pass does to one entry: [`metadata_at`], or
/// [`flags::at`] in the pass after every file's metadata. Each is given
/// what the restore made at the entry's path, if it recorded that
/// ([`Made`]), and applies nothing to anything else found there.
pub(super) type Step = fn(&mut Parents<'_>, &Item, Option<Ident>, MetaRules) -> Result<Applied>;

/// The regular file at `item`'s path, opened without following it, when
/// it is what the restore made there (`made`, if recorded).
pub(super) fn open_made_file(
    parents: &mut Parents<'_>,
    item: &Item,
    made: Option<Ident>,
) -> Result<fs::File> {
    let path = &item.path;
    let (dir, name) = parents.of(path).map_err(|e| in_dir_of(path, e))?;
    let file =
        open_file_at(dir, name).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    made::check_fd(made, std::os::fd::AsFd::as_fd(&file), path)?;
    Ok(file)
}

/// The regular file `name` in `dir`, opened without following it.
pub(super) fn open_file_at(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> std::io::Result<fs::File> {
    let f = beneath::open_read(dir, name)?;
    if beneath::is_file(&rustix::fs::fstat(&f)?) {
        Ok(f)
    } else {
        Err(std::io::Error::other("no longer a regular file"))
    }
}

/// Where [`apply_metadata`] reads and writes extended attributes: an open
/// file, or an entry not open through /proc/self/fd (the xattr crate's path
/// calls do not follow the last name, and the directory is the one opened).
pub(super) enum Xattrs<'a> {
    File(&'a fs::File),
    Path(PathBuf),
}

impl<'a> Xattrs<'a> {
    pub(super) fn of(at: Meta<'a>) -> Self {
        match at {
            Meta::File(f) => Xattrs::File(f),
            Meta::At { dir, name } => Xattrs::Path(beneath::proc_path(dir, Some(name))),
        }
    }

    pub(super) fn list(&self) -> std::io::Result<xattr::XAttrs> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.list_xattr(),
            Xattrs::Path(p) => xattr::list(p),
        }
    }

    pub(super) fn get(&self, name: &std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.get_xattr(name),
            Xattrs::Path(p) => xattr::get(p, name),
        }
    }

    pub(super) fn set(&self, name: &std::ffi::OsStr, value: &[u8]) -> std::io::Result<()> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.set_xattr(name, value),
            Xattrs::Path(p) => xattr::set(p, name, value),
        }
    }

    pub(super) fn remove(&self, name: &std::ffi::OsStr) -> std::io::Result<()> {
        use xattr::FileExt;
        match self {
            Xattrs::File(f) => f.remove_xattr(name),
            Xattrs::Path(p) => xattr::remove(p, name),
        }
    }
}

/// What an entry has now, of what [`apply_metadata`] sets.
pub(super) struct Current {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mode: u32,
    pub(super) mtime: (i64, i64),
    pub(super) atime: (i64, i64),
}

impl Current {
    pub(super) fn of(at: Meta<'_>) -> Option<Self> {
        let stat = match at {
            Meta::File(f) => rustix::fs::fstat(f),
            Meta::At { dir, name } => {
                rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            }
        }
        .ok()?;
        Some(Current {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode,
            mtime: (
                stat.st_mtime,
                i64::try_from(stat.st_mtime_nsec).unwrap_or(0),
            ),
            atime: (
                stat.st_atime,
                i64::try_from(stat.st_atime_nsec).unwrap_or(0),
            ),
        })
    }
}

/// What [`apply_metadata`] did: what could not be applied (each "what:
/// why"), which leaves the entry not restored intact, and what it set
/// (with `only_differing`, what differed; [`changes`] bits).
#[derive(Default)]
pub(super) struct Applied {
    pub(super) problems: Vec<String>,
    pub(super) changed: u16,
}

/// Applies an entry's metadata (with `rules.dry_run`, only finds what
/// differs), its inode flags last ([`flags`]).
pub(super) fn apply_metadata(at: Meta<'_>, item: &Item, rules: MetaRules) -> Applied {
    let mut applied = apply_metadata_but_flags(at, item, rules);
    flags::apply(at, item, rules, &mut applied);
    applied
}

pub(super) fn apply_metadata_but_flags(at: Meta<'_>, item: &Item, rules: MetaRules) -> Applied {
    use std::os::unix::fs::PermissionsExt;
    let mut problems = Vec::new();
    let mut changed = 0;
    let symlink = item.kind == NodeKind::Symlink;
    let xattrs = item.rare.as_ref().map_or(&[][..], |r| &r.xattrs[..]);
    let attrs = Xattrs::of(at);
    // What is there now, when only what differs is applied.
    let current = if rules.only_differing || rules.dry_run {
        Current::of(at)
    } else {
        None
    };
    if rules.replace_xattrs {
        for name in attrs.list().into_iter().flatten() {
            let text = name.to_string_lossy();
            let stale = RESTORED_XATTRS.iter().any(|ns| text.starts_with(ns))
                && !xattrs.iter().any(|x| x.os_name() == name);
            if !stale {
                continue;
            }
            changed |= changes::XATTRS;
            if !rules.dry_run
                && let Err(e) = attrs.remove(&name)
            {
                problems.push(format!("removal of the xattr {text}: {e}"));
            }
        }
    }
    let same_owner = current
        .as_ref()
        .is_some_and(|m| (m.uid, m.gid) == (item.uid, item.gid));
    // Changing the owner clears set-id bits: the mode is set again after.
    let chown = rules.is_root && !same_owner;
    if chown {
        changed |= changes::OWNER;
    }
    if chown && !rules.dry_run {
        let (uid, gid) = (
            Some(rustix::fs::Uid::from_raw(item.uid)),
            Some(rustix::fs::Gid::from_raw(item.gid)),
        );
        let r = match at {
            Meta::File(f) => rustix::fs::fchown(f, uid, gid),
            Meta::At { dir, name } => {
                rustix::fs::chownat(dir, name, uid, gid, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            }
        };
        if let Err(e) = r {
            problems.push(format!("owner (chown): {}", std::io::Error::from(e)));
        }
    }
    let mode_differs = (current.as_ref()).is_none_or(|m| m.mode & 0o7777 != item.mode & 0o7777);
    if !symlink && mode_differs {
        changed |= changes::MODE;
    }
    // Changing the owner cleared set-id bits: the mode is set again.
    let same_mode = !mode_differs && !chown;
    if !symlink && !same_mode && !rules.dry_run {
        let r = match at {
            Meta::File(f) => f.set_permissions(fs::Permissions::from_mode(item.mode)),
            Meta::At { dir, name } => beneath::chmod_at(dir, name, item.mode & 0o7777),
        };
        if let Err(e) = r {
            problems.push(format!("mode (chmod): {e}"));
        }
    }
    for xattr in xattrs {
        if let Some(value) = xattr.value_bytes() {
            // The exact name (`name_raw`), not the lossy one: two names
            // differing only in non-UTF-8 bytes were one, the last value.
            let name = xattr.os_name();
            if current.is_some() && attrs.get(&name).ok().flatten().is_some_and(|v| v == value) {
                continue;
            }
            changed |= changes::XATTRS;
            if rules.dry_run {
                continue;
            }
            if let Err(e) = attrs.set(&name, &value) {
                problems.push(format!("xattr {}: {e}", xattr.name));
            }
        }
    }
    let mtime = file_time(item.mtime);
    let atime = item
        .rare
        .as_ref()
        .and_then(|r| r.atime)
        .map_or(mtime, file_time);
    let same_times = current.as_ref().is_some_and(|m| {
        let same = |t: filetime::FileTime, (s, ns): (i64, i64)| {
            (t.unix_seconds(), i64::from(t.nanoseconds())) == (s, ns)
        };
        same(mtime, m.mtime) && same(atime, m.atime)
    });
    if same_times {
        return Applied { problems, changed };
    }
    // atime alone differs after any read: only mtime counts as a change.
    if (current.as_ref())
        .is_none_or(|m| (mtime.unix_seconds(), i64::from(mtime.nanoseconds())) != m.mtime)
    {
        changed |= changes::TIMES;
    }
    if rules.dry_run {
        return Applied { problems, changed };
    }
    let r = match at {
        Meta::File(f) => filetime::set_file_handle_times(f, Some(atime), Some(mtime)),
        Meta::At { dir, name } => {
            let spec = |t: filetime::FileTime| rustix::fs::Timespec {
                tv_sec: t.unix_seconds(),
                tv_nsec: t.nanoseconds().into(),
            };
            let times = rustix::fs::Timestamps {
                last_access: spec(atime),
                last_modification: spec(mtime),
            };
            rustix::fs::utimensat(dir, name, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(Into::into)
        }
    };
    if let Err(e) = r {
        problems.push(format!("times: {e}"));
    }
    Applied { problems, changed }
}

/// A timestamp as the kernel takes it: seconds rounded down and
/// non-negative nanoseconds. jiff rounds seconds toward zero, so a time
/// before 1970 with a fraction (`1960-06-01T12:00:00.25Z`) has a negative
/// nanosecond part, to be borrowed from the second below.
pub(super) fn file_time(t: jiff::Timestamp) -> filetime::FileTime {
    let (second, nano) = (t.as_second(), t.subsec_nanosecond());
    if nano < 0 {
        filetime::FileTime::from_unix_time(second - 1, (nano + 1_000_000_000).unsigned_abs())
    } else {
        filetime::FileTime::from_unix_time(second, nano.unsigned_abs())
    }
}

/// The metadata pass: everything but directories (and files their pack
/// worker finished, `owned`), then files' inode flags, then directories
/// deepest first, so that setting an entry's metadata never disturbs its
/// directory's times. Entries `left` (not made, or failed) are skipped, as
/// are directories whose place a kept symlink holds (`kept_link`) and
/// files an if-changed restore found right when it read them. What is not
/// applied is recorded in `failures`.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_all(
    items: &[Item],
    beneath: &Beneath,
    rules: MetaRules,
    changed: &Changes,
    failures: &Failures,
    made: &Made,
    left: impl Fn(usize) -> bool + Sync,
    owned: &[bool],
    kept_link: &[bool],
) -> Result<()> {
    let finish = |parents: &mut Parents<'_>, idx: usize, item: &Item, step: Step| -> Result<()> {
        match step(parents, item, made.get(idx), rules) {
            Ok(applied) => {
                // Files and directories had theirs judged before anything
                // changed them (or what they hold).
                if !matches!(item.kind, NodeKind::File | NodeKind::Dir) {
                    changed.mark(idx, applied.changed);
                }
                failures.metadata(&item.path, applied.problems);
            }
            Err(e) => {
                failures.record(Some(idx), &item.path, e)?;
            }
        }
        Ok(())
    };
    items
        .par_iter()
        .enumerate()
        // A file if-changed found right, content and metadata, when it
        // read it (before changing anything) is not read again: a second
        // name of it shares its inode.
        .filter(|&(idx, i)| {
            let right_already = i.kind == NodeKind::File && changed.untouched(idx);
            i.kind != NodeKind::Dir && !owned[idx] && !left(idx) && !right_already
        })
        .try_for_each_init(
            || Parents::new(beneath),
            |parents, (idx, item)| finish(parents, idx, item, metadata_at),
        )?;
    // Files' inode flags once every file has the rest: `+i` on one name of
    // a hard-linked file would refuse the metadata of its other names.
    items
        .par_iter()
        .enumerate()
        .filter(|&(idx, i)| flags::deferred(i, rules) && !left(idx))
        .try_for_each_init(
            || Parents::new(beneath),
            |parents, (idx, item)| finish(parents, idx, item, flags::at),
        )?;
    let mut dirs: Vec<(usize, &Item)> = (items.iter().enumerate())
        .filter(|&(idx, i)| i.kind == NodeKind::Dir && !left(idx) && !kept_link[idx])
        .collect();
    dirs.sort_by_key(|(_, i)| std::cmp::Reverse(i.path.components().count()));
    let mut parents = Parents::new(beneath);
    for (idx, item) in dirs {
        finish(&mut parents, idx, item, metadata_at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_keep_their_fraction() {
        for (text, second, nano) in [
            ("1960-06-01T12:00:00.123456789Z", -302_443_200, 123_456_789),
            ("1969-12-31T23:59:59.5Z", -1, 500_000_000),
            ("1901-01-01T00:00:00Z", -2_177_452_800, 0),
            ("2026-01-10T03:00:00.25Z", 1_768_014_000, 250_000_000),
        ] {
            let t = file_time(text.parse().unwrap());
            assert_eq!(
                (t.unix_seconds(), t.nanoseconds()),
                (second, nano),
                "{text}"
            );
        }
    }
}
