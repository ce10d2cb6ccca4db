//! File operations below a restore's target that never follow a symlink.
//!
//! The target is opened once (following a symlink the user gave: a path
//! typed on the command line is trusted), and every directory below it is
//! reached from that descriptor with `openat2` and `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` (on kernels before 5.6, which lack it, component by
//! component with `O_NOFOLLOW`). The entry itself is then made, opened,
//! linked or removed with an `*at` call on its last name, never following
//! that either. Whoever can write a directory inside the target (another
//! user's home, /tmp) can swap one of its directories for a symlink at any
//! moment: done by path, root's restore then wrote, chmodded, chowned or
//! deleted wherever that symlink pointed. Now the entry below it fails.
//!
//! A directory moved away mid-restore by whoever may write its parent takes
//! what is written into it along; it can only be moved where that user may
//! write already, so this redirects nothing into places they could not reach.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `openat2` has returned ENOSYS (kernel before 5.6): every later
/// lookup walks the components itself.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The restore's target, open.
pub(super) struct Beneath {
    root: PathBuf,
    fd: OwnedFd,
}

impl Beneath {
    /// Opens the target directory `root` (following it if it is a symlink).
    pub(super) fn open(root: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root: root.to_owned(),
            fd,
        })
    }

    /// Flushes the target's file system.
    pub(super) fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.fd)?)
    }

    fn relative<'p>(&self, path: &'p Path) -> io::Result<&'p Path> {
        path.strip_prefix(&self.root)
            .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))
    }

    /// Opens the directory `path` (the target or below it): `O_PATH`, as a
    /// place for `*at` calls, unless `read` (to list it).
    pub(super) fn dir(&self, path: &Path, read: bool) -> io::Result<OwnedFd> {
        let rel = self.relative(path)?;
        let access = if read { OFlags::RDONLY } else { OFlags::PATH };
        let flags = access | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if rel.as_os_str().is_empty() {
            return Ok(rustix::fs::openat(&self.fd, ".", flags, Mode::empty())?);
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), resolve) {
                Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                r => return Ok(r?),
            }
        }
        walk_dir(self.fd.as_fd(), rel, flags)
    }

    /// [`Self::dir`] of `path`'s parent (`O_PATH`), and `path`'s last name.
    pub(super) fn parent<'p>(&self, path: &'p Path) -> io::Result<(OwnedFd, &'p OsStr)> {
        let (parent, name) = split(path)?;
        Ok((self.dir(parent, false)?, name))
    }

    /// What is at `path` (below the target), not following it.
    pub(super) fn stat(&self, path: &Path) -> io::Result<Stat> {
        let (dir, name) = self.parent(path)?;
        stat_at(dir.as_fd(), name)
    }

    /// Makes the directory `path` and those missing above it (below the
    /// target), as `create_dir_all` does but never through a symlink.
    pub(super) fn make_dirs(&self, path: &Path) -> io::Result<()> {
        let mut at: Option<OwnedFd> = None;
        for part in self.relative(path)?.components() {
            let Component::Normal(name) = part else {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            };
            let dir = at.as_ref().map_or(self.fd.as_fd(), AsFd::as_fd);
            match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            at = Some(open_path_dir(dir, name)?);
        }
        Ok(())
    }
}

/// `path`'s parent and last name.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

fn open_path_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    // O_PATH with O_NOFOLLOW opens a symlink itself: it must not pass.
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::Directory {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(fd)
}

/// The lookup of [`Beneath::dir`] without `openat2`: one `O_NOFOLLOW` open
/// per component.
fn walk_dir(root: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let parts: Vec<Component<'_>> = rel.components().collect();
    let mut at: Option<OwnedFd> = None;
    for (n, part) in parts.iter().enumerate() {
        let Component::Normal(name) = part else {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        };
        let dir = at.as_ref().map_or(root, AsFd::as_fd);
        let next = if n + 1 == parts.len() {
            let fd = rustix::fs::openat(dir, *name, flags, Mode::empty())?;
            if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::Directory {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            fd
        } else {
            open_path_dir(dir, name)?
        };
        at = Some(next);
    }
    at.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The parent directory a worker used last, kept open: entries come grouped
/// by directory, and looking each one's up again cost a lookup per entry.
pub(super) struct Parents<'b> {
    beneath: &'b Beneath,
    last: Option<(PathBuf, OwnedFd)>,
}

impl<'b> Parents<'b> {
    pub(super) fn new(beneath: &'b Beneath) -> Self {
        Parents {
            beneath,
            last: None,
        }
    }

    pub(super) fn beneath(&self) -> &'b Beneath {
        self.beneath
    }

    /// The directory holding `path`, and `path`'s last name.
    pub(super) fn of<'p>(&mut self, path: &'p Path) -> io::Result<(BorrowedFd<'_>, &'p OsStr)> {
        let (parent, name) = split(path)?;
        if !matches!(&self.last, Some((last, _)) if last == parent) {
            let fd = self.beneath.dir(parent, false)?;
            self.last = Some((parent.to_owned(), fd));
        }
        let (_, fd) = self.last.as_ref().expect("set just above");
        Ok((fd.as_fd(), name))
    }
}

pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub(super) fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

pub(super) fn is_file(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
}

/// Creates a new empty file open to its owner only, replacing whatever is
/// in the way.
pub(super) fn create_file(dir: BorrowedFd<'_>, name: &OsStr, is_root: bool) -> io::Result<File> {
    let create = || {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        rustix::fs::openat(
            dir,
            name,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    };
    // Into an empty target nothing is in the way: try first, and look only
    // when something is.
    let fd = match create() {
        Err(Errno::EXIST) => {
            remove(dir, name, is_root)?;
            create()?
        }
        other => other?,
    };
    Ok(File::from(fd))
}

/// Opens an existing file to write, never a symlink.
pub(super) fn open_write(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    open_existing(dir, name, OFlags::WRONLY)
}

/// Opens `name` in `dir` as `flags` say, never following it.
fn open_existing(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> io::Result<File> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::empty(),
    )?))
}

/// Opens an existing file to read it back: never a symlink, never blocking
/// on a fifo, and (where allowed: one's own files, and root) without
/// changing its atime, which the restore applies.
pub(super) fn open_read(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let open = |more: OFlags| open_existing(dir, name, OFlags::RDONLY | OFlags::NONBLOCK | more);
    match open(OFlags::NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(OFlags::empty()),
        other => other,
    }
}

/// Opens an existing directory (never a symlink) to list it or apply its
/// metadata.
pub(super) fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    open_existing(dir, name, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Sets the mode of the entry `name` in `dir`, which must not be a symlink
/// (Linux's `fchmodat` cannot refuse to follow one before 6.6): it is
/// opened `O_PATH` without following it, and changed through
/// `/proc/self/fd`, which leads to what was opened.
pub(super) fn chmod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Symlink {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    chmod_opened(fd.as_fd(), mode)
}

/// `fchmod` for a descriptor that may be `O_PATH` (which `fchmod` refuses).
fn chmod_opened(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    match rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)) {
        Err(Errno::BADF) => Ok(rustix::fs::chmod(
            proc_path(fd, None),
            Mode::from_raw_mode(mode),
        )?),
        r => Ok(r?),
    }
}

/// `/proc/self/fd/N`, or the entry `name` in that directory: a path that
/// leads to what descriptor N holds whatever has been renamed or swapped
/// since it was opened (for calls with no `*at` form that does not follow a
/// final symlink, such as `lsetxattr`).
pub(super) fn proc_path(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> PathBuf {
    let fd = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    name.map_or_else(|| fd.clone(), |name| fd.join(name))
}

/// Opens up an existing directory this user owns but may not write (or
/// enter) to its owner (u+rwx) for the restore, as new ones are made: a
/// restore again over its own earlier output, whose 0555 or 0500
/// directories are applied now, could replace nothing in them. The
/// snapshot's mode is applied at the end, with the other directories'.
/// Someone else's directory is never changed (as root nothing needs it).
pub(super) fn open_up(dir: BorrowedFd<'_>, name: &OsStr, stat: &Stat, is_root: bool) {
    let mode = stat.st_mode & 0o7777;
    if is_root || mode & 0o700 == 0o700 || stat.st_uid != nix::unistd::geteuid().as_raw() {
        return;
    }
    if let Err(e) = chmod_at(dir, name, mode | 0o700) {
        tracing::debug!("cannot open up {} for the restore: {e}", name.display());
    }
}

/// Removes whatever `name` in `dir` is (a directory with all it holds),
/// never following a symlink; nothing there is no error.
pub(super) fn remove(dir: BorrowedFd<'_>, name: &OsStr, is_root: bool) -> io::Result<()> {
    match stat_at(dir, name) {
        Ok(stat) if is_dir(&stat) => remove_tree(dir, name, &stat, is_root),
        Ok(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr, stat: &Stat, is_root: bool) -> io::Result<()> {
    // A directory tree holding read-only directories (an earlier restore's
    // 0555 ones) cannot be emptied by its non-root owner until they are
    // opened up.
    open_up(dir, name, stat, is_root);
    let mut listed = rustix::fs::Dir::new(open_dir(dir, name)?)?;
    let mut names = Vec::new();
    for entry in listed.by_ref() {
        let entry = entry?;
        let entry_name = OsStr::from_bytes(entry.file_name().to_bytes());
        if entry_name != "." && entry_name != ".." {
            names.push(entry_name.to_owned());
        }
    }
    let inner = listed.fd()?;
    for entry_name in names {
        remove(inner, &entry_name, is_root)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_on_the_way_is_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::fs::create_dir(target.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("d/link")).unwrap();
        let beneath = Beneath::open(target.path()).unwrap();
        let below = target.path().join("d/link/x");
        // Both lookups: openat2, and the walk kernels before 5.6 get. (A
        // restore in a test running meanwhile may take the walk too: it
        // does the same.)
        for fallback in [false, true] {
            NO_OPENAT2.store(fallback, Ordering::Relaxed);
            let e = beneath.parent(&below).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
                "{e}"
            );
            assert!(beneath.make_dirs(&below).is_err());
            let file = target.path().join("d/f");
            let (dir, name) = beneath.parent(&file).unwrap();
            create_file(dir.as_fd(), name, false).unwrap();
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let link = target.path().join("d/link");
        let (dir, name) = beneath.parent(&link).unwrap();
        remove(dir.as_fd(), name, false).unwrap();
        assert!(outside.path().exists());
    }
}
