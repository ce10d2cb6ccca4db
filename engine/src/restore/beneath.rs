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
//!
//! One kind of symlink is followed: a trusted one ([`trusted`]: only root or
//! the restoring user could have made, renamed or swapped it) that leads to
//! a directory inside the target, such as `/lib -> usr/lib` on a usr-merged
//! system, where a backup of `/lib/foo` records `/lib` as a directory. The
//! kernel never follows it: [`Beneath::dir`] meets it as `openat2`'s ELOOP
//! (ENOTDIR in the last place) and then resolves the path itself, component
//! by component, as if the
//! target were the root (`chroot`; the kernel's `RESOLVE_IN_ROOT`): an
//! absolute link starts at the target, and `..` never leaves it. Paths
//! without a symlink never take that walk.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
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
                // A symlink on the way (ELOOP) or in its place (ENOTDIR,
                // for O_DIRECTORY with O_NOFOLLOW): followed only if
                // trusted, by the walk.
                Err(Errno::LOOP | Errno::NOTDIR) => {}
                r => return Ok(r?),
            }
        }
        let (found, _) = self.resolve(rel)?;
        if read {
            // The walk opens O_PATH: reopened to be listed.
            return Ok(rustix::fs::openat(&found, ".", flags, Mode::empty())?);
        }
        Ok(found)
    }

    /// Opens the directory `rel` (below the target, `O_PATH`) as the
    /// kernel would with the target as its root, following only trusted
    /// symlinks ([`trusted`]) and at most [`MAX_LINKS`] of them; the
    /// kernel follows none. What stands for the directories passed is a
    /// stack of descriptors from the target down: `..` pops one (the
    /// directory it was reached from), and at the target stays there.
    /// Also returns where it leads (below the target).
    fn resolve(&self, rel: &Path) -> io::Result<(OwnedFd, PathBuf)> {
        // Still to look up, the next one last.
        let mut pending: Vec<OsString> = Vec::new();
        for part in rel.components().rev() {
            let Component::Normal(name) = part else {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            };
            pending.push(name.to_owned());
        }
        let mut stack: Vec<(OsString, OwnedFd)> = Vec::new();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == "." {
                continue;
            }
            if name == ".." {
                stack.pop();
                continue;
            }
            let at = stack.last().map_or(self.fd.as_fd(), |(_, fd)| fd.as_fd());
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            // O_PATH with O_NOFOLLOW opens a symlink itself: its owner and
            // text are then those of the link checked, whatever is renamed
            // meanwhile.
            let fd = rustix::fs::openat(at, &name, flags, Mode::empty())?;
            let stat = rustix::fs::fstat(&fd)?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => stack.push((name, fd)),
                FileType::Symlink => {
                    let link = || {
                        let mut path = self.root.clone();
                        path.extend(stack.iter().map(|(name, _)| name));
                        path.join(&name)
                    };
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(NotFollowed::TooMany { link: link() }.into());
                    }
                    trusted(at, &stat)
                        .map_err(|why| NotFollowed::Untrusted { link: link(), why })?;
                    let text = rustix::fs::readlinkat(&fd, "", Vec::new())?;
                    let text = text.as_bytes();
                    if text.is_empty() {
                        return Err(io::Error::from_raw_os_error(libc::ENOENT));
                    }
                    if text.starts_with(b"/") {
                        stack.clear();
                    }
                    let parts = text.split(|&b| b == b'/').filter(|p| !p.is_empty());
                    pending.extend(parts.rev().map(|p| OsStr::from_bytes(p).to_owned()));
                }
                _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            }
        }
        let mut led_to = self.root.clone();
        led_to.extend(stack.iter().map(|(name, _)| name));
        match stack.pop() {
            Some((_, fd)) => Ok((fd, led_to)),
            None => Ok((
                rustix::fs::openat(
                    &self.fd,
                    ".",
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?,
                led_to,
            )),
        }
    }

    /// Whether the symlink `path` (below the target) leads to a directory
    /// the restore may go on into, as [`Self::dir`] follows it: `Ok` with
    /// its text and the directory it leads to (below the target), if so;
    /// else why not (an untrusted link, [`NotFollowed`], or the error of
    /// what it leads to).
    pub(super) fn followed_link(&self, path: &Path) -> io::Result<(OsString, PathBuf)> {
        let (dir, name) = self.parent(path)?;
        let text = rustix::fs::readlinkat(&dir, name, Vec::new())?;
        let (found, led_to) = self.resolve(self.relative(path)?)?;
        let found = rustix::fs::fstat(found)?;
        if !is_dir(&found) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        // A link to a directory holding it (`lib -> .`, `a/b -> ..`) would
        // put the snapshot's directory into its own ancestor.
        if path.starts_with(&led_to) {
            return Err(NotFollowed::Untrusted {
                link: path.to_owned(),
                why: format!("a link to {}, a directory that holds it", led_to.display()),
            }
            .into());
        }
        Ok((OsString::from_vec(text.into_bytes()), led_to))
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
        let mut made = self.root.clone();
        for part in self.relative(path)?.components() {
            let Component::Normal(name) = part else {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            };
            made.push(name);
            let dir = at.as_ref().map_or(self.fd.as_fd(), AsFd::as_fd);
            match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            at = Some(match open_path_dir(dir, name) {
                // A symlink there: followed only as `dir` follows it.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    self.dir(&made, false)?
                }
                r => r?,
            });
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

/// How many symlinks one lookup follows at most, as Linux's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// Why a symlink on the way to a directory below the target is not
/// followed.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotFollowed {
    /// Someone other than root and this user could have made or swapped it.
    #[error("symlink {} is {why}", link.display())]
    Untrusted { link: PathBuf, why: String },
    /// More than [`MAX_LINKS`] on the way.
    #[error("more than {MAX_LINKS} symlinks on the way, at {}", link.display())]
    TooMany { link: PathBuf },
}

impl From<NotFollowed> for io::Error {
    fn from(e: NotFollowed) -> Self {
        let kind = match e {
            NotFollowed::Untrusted { .. } => io::ErrorKind::PermissionDenied,
            NotFollowed::TooMany { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Whether a lookup failed for a symlink on the way that is not followed
/// (or a non-directory there): the path leads nowhere the restore goes.
pub(super) fn is_not_followed(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
        || e.get_ref().is_some_and(|inner| inner.is::<NotFollowed>())
}

/// Whether the symlink `link` (its `lstat`) in the directory `dir` may be
/// followed: only root or this user could have made it, renamed it or
/// swapped it, as they own it and own its directory, which no one else may
/// write. Else why not. (A sticky directory such as /tmp is writable by
/// others: they may make new names there. A POSIX ACL letting another user
/// write shows as the group write bit, the ACL's mask.)
fn trusted(dir: BorrowedFd<'_>, link: &Stat) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    let trusted_owner = |uid: u32| uid == 0 || uid == euid;
    if !trusted_owner(link.st_uid) {
        return Err(format!(
            "owned by uid {}, neither root nor the restoring user",
            link.st_uid
        ));
    }
    let parent = rustix::fs::fstat(dir).map_err(|e| format!("in a directory not read: {e}"))?;
    if !trusted_owner(parent.st_uid) {
        return Err(format!(
            "in a directory owned by uid {}, neither root nor the restoring user",
            parent.st_uid
        ));
    }
    if parent.st_mode & 0o022 != 0 {
        return Err(format!(
            "in a directory writable by group or others (mode {:o})",
            parent.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// The parent directories a worker used last, kept open: entries come
/// grouped by directory, and looking each one's up again cost a lookup per
/// entry. Many are kept, not one: a pack holds the small files of every
/// directory its backup's workers read at once, interleaved. Keeping the
/// last one only, or the last 16, a restore of a 52k-file tree reopened a
/// directory for 80%, then 24%, of the files it wrote (`openat2` and
/// `close` each time).
pub(super) struct Parents<'b> {
    beneath: &'b Beneath,
    /// Least recently used first.
    open: Vec<(PathBuf, OwnedFd)>,
    kept: usize,
}

/// Directory descriptors the [`Parents`] of all threads keep open at once,
/// beside their files: half the usual limit of 1024, whatever the number
/// of threads.
const PARENTS_KEPT_ALL: usize = 512;
/// Directories one [`Parents`] keeps open at most.
const PARENTS_KEPT: usize = 128;

impl<'b> Parents<'b> {
    pub(super) fn new(beneath: &'b Beneath) -> Self {
        let threads = rayon::current_num_threads().max(1);
        Parents {
            beneath,
            open: Vec::new(),
            kept: (PARENTS_KEPT_ALL / threads).clamp(1, PARENTS_KEPT),
        }
    }

    pub(super) fn beneath(&self) -> &'b Beneath {
        self.beneath
    }

    /// The directory holding `path`, and `path`'s last name.
    pub(super) fn of<'p>(&mut self, path: &'p Path) -> io::Result<(BorrowedFd<'_>, &'p OsStr)> {
        let (parent, name) = split(path)?;
        let parent_bytes = parent.as_os_str().as_bytes();
        let found = (self.open.iter()).rposition(|(p, _)| p.as_os_str().as_bytes() == parent_bytes);
        match found {
            Some(at) if at + 1 == self.open.len() => {}
            Some(at) => {
                let used = self.open.remove(at);
                self.open.push(used);
            }
            None => {
                let fd = self.beneath.dir(parent, false)?;
                if self.open.len() >= self.kept {
                    self.open.remove(0);
                }
                self.open.push((parent.to_owned(), fd));
            }
        }
        let (_, fd) = self.open.last().expect("found or pushed just above");
        Ok((fd.as_fd(), name))
    }
}

pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub(super) fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

pub(super) fn is_symlink(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Symlink
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
        Ok(stat) if is_dir(&stat) => {
            // Another file system mounted there (/proc, /run, a data
            // volume) is not the restore's to empty.
            if is_mount_point(dir, name, &stat)? {
                return Err(io::Error::other(format!(
                    "another file system is mounted at {}; not removed",
                    name.display()
                )));
            }
            remove_tree(dir, name, &stat, is_root)
        }
        Ok(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the directory `name` in `dir` (`stat` is its own) is a mount
/// point: on another file system than `dir`, or the root of a bind mount
/// of the same one, which only the kernel's mount-root attribute tells
/// (Linux 5.8; an older kernel does not say, and it counts as none).
pub(super) fn is_mount_point(dir: BorrowedFd<'_>, name: &OsStr, stat: &Stat) -> io::Result<bool> {
    use rustix::fs::{StatxAttributes, StatxFlags};
    if rustix::fs::fstat(dir)?.st_dev != stat.st_dev {
        return Ok(true);
    }
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    Ok(
        match rustix::fs::statx(dir, name, flags, StatxFlags::empty()) {
            Ok(x) => {
                let root = StatxAttributes::MOUNT_ROOT;
                x.stx_attributes_mask.contains(root) && x.stx_attributes.contains(root)
            }
            Err(_) => false,
        },
    )
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

    /// Files of many directories come interleaved (a pack holds them so):
    /// a directory used before others is still open when its next file
    /// comes, not looked up again. Moved away meanwhile, it is still found.
    #[test]
    fn parents_keep_several_directories_open() {
        let target = tempfile::tempdir().unwrap();
        for d in ["a", "b", "c"] {
            std::fs::create_dir(target.path().join(d)).unwrap();
        }
        let beneath = Beneath::open(target.path()).unwrap();
        let mut parents = Parents::new(&beneath);
        for d in ["a", "b", "c"] {
            parents.of(&target.path().join(d).join("x")).unwrap();
        }
        std::fs::rename(target.path().join("a"), target.path().join("moved")).unwrap();
        let y = target.path().join("a/y");
        let (dir, name) = parents.of(&y).unwrap();
        create_file(dir, name, false).unwrap();
        assert!(target.path().join("moved/y").exists());
    }

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
            // This user's link is trusted: followed, but inside the target,
            // where its absolute text leads nowhere.
            assert!(
                is_not_followed(&e) || e.kind() == io::ErrorKind::NotFound,
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

    /// The identity of what `path` is (following it).
    fn inode(path: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn a_trusted_symlink_is_resolved_as_if_the_target_were_the_root() {
        use std::os::unix::fs::symlink;
        let target = tempfile::tempdir().unwrap();
        let root = target.path();
        std::fs::create_dir_all(root.join("usr/lib/x")).unwrap();
        std::fs::write(root.join("file"), b"").unwrap();
        let links = [
            ("lib", "usr/lib"),
            // Absolute: from the target, never the host's /usr/lib.
            ("abs", "/usr/lib"),
            // `..` at the target stays there.
            ("usr/up", "../../../../usr/lib"),
            ("usr/lib/x/back", "../../.."),
            // Through a further link.
            ("chain", "lib/x"),
            ("host-etc", "/etc"),
            ("dangling", "usr/lib/missing"),
            ("tofile", "file"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
        ];
        for (link, text) in links {
            symlink(text, root.join(link)).unwrap();
        }
        let beneath = Beneath::open(root).unwrap();
        let lib = inode(&root.join("usr/lib"));
        let found = [
            ("lib", lib),
            ("abs", lib),
            ("usr/up", lib),
            ("lib/x/back", inode(root)),
            ("chain", inode(&root.join("usr/lib/x"))),
            ("abs/x/back/lib", lib),
        ];
        for fallback in [false, true] {
            NO_OPENAT2.store(fallback, Ordering::Relaxed);
            for (path, want) in found {
                let fd = beneath.dir(&root.join(path), false).unwrap();
                let stat = rustix::fs::fstat(&fd).unwrap();
                assert_eq!((stat.st_dev, stat.st_ino), want, "{path}");
            }
            // /etc is the host's, not the target's.
            for (path, errno) in [
                ("host-etc", libc::ENOENT),
                ("dangling", libc::ENOENT),
                ("tofile", libc::ENOTDIR),
            ] {
                let e = beneath.dir(&root.join(path), false).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(errno), "{path}: {e}");
            }
            let e = beneath.dir(&root.join("loop1"), false).unwrap_err();
            assert!(
                matches!(
                    e.get_ref().and_then(|e| e.downcast_ref()),
                    Some(NotFollowed::TooMany { .. })
                ),
                "{e}"
            );
            // Made through the link, where it leads.
            beneath.make_dirs(&root.join("lib/new/deeper")).unwrap();
            assert!(root.join("usr/lib/new/deeper").is_dir());
            std::fs::remove_dir_all(root.join("usr/lib/new")).unwrap();
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }
}
