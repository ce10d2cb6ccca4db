//! What the restore made (or kept) at each entry's path, by identity.
//! A later step that reaches an entry by its name again (writing a file
//! created earlier, linking a second name to a first, the metadata pass)
//! checks that it finds that same inode: in a directory another user can
//! write (a home directory restored in place as root), they could have
//! put a file of their own there meanwhile, which would otherwise get the
//! snapshot's content, owner and mode, set-id bits included.

use crate::error::{Error, Result};
use rustix::fs::{AtFlags, Statx, StatxFlags};
use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The identity of an inode: device, inode number and birth time (in
/// nanoseconds; 0 where the file system keeps none). The birth time tells
/// apart a file made in place of one removed, which file systems often
/// give the freed inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ident([u64; 3]);

/// By item: the identity of what the restore made at its path; none
/// recorded (inode 0) for an entry reached only through a descriptor the
/// restore holds, and for symlinks, fifos and device nodes, which are
/// given their metadata by name.
pub(super) struct Made {
    ids: Vec<[AtomicU64; 3]>,
}

fn ident(x: &Statx) -> Ident {
    let btime = if x.stx_mask & StatxFlags::BTIME.bits() != 0 {
        let nanos =
            i128::from(x.stx_btime.tv_sec) * 1_000_000_000 + i128::from(x.stx_btime.tv_nsec);
        nanos as u64
    } else {
        0
    };
    let dev = (u64::from(x.stx_dev_major) << 32) | u64::from(x.stx_dev_minor);
    Ident([dev, x.stx_ino, btime])
}

const WANTED: StatxFlags = StatxFlags::INO.union(StatxFlags::BTIME);

/// What the open file or directory `fd` is.
pub(super) fn of_fd(fd: BorrowedFd<'_>) -> std::io::Result<Ident> {
    Ok(ident(&rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH,
        WANTED,
    )?))
}

/// What `name` in `dir` is, not following it.
pub(super) fn of_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<Ident> {
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    Ok(ident(&rustix::fs::statx(dir, name, flags, WANTED)?))
}

impl Made {
    pub(super) fn new(items: usize) -> Self {
        Made {
            ids: (0..items)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
        }
    }

    /// Records that item `idx` is the inode `ident`.
    pub(super) fn record(&self, idx: usize, ident: Ident) {
        for (slot, value) in self.ids[idx].iter().zip(ident.0) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// What was recorded for item `idx`, if anything.
    pub(super) fn get(&self, idx: usize) -> Option<Ident> {
        let [dev, ino, btime] = &self.ids[idx];
        let ino = ino.load(Ordering::Relaxed);
        (ino != 0).then(|| {
            Ident([
                dev.load(Ordering::Relaxed),
                ino,
                btime.load(Ordering::Relaxed),
            ])
        })
    }
}

/// Fails when `found` at `path` is not the inode `expected` (when one was
/// recorded): something else was put in its place during the restore, and
/// is left as it is.
pub(super) fn check(expected: Option<Ident>, found: Ident, path: &Path) -> Result<()> {
    match expected {
        Some(want) if want != found => Err(Error::io(
            format!("checking {}", path.display()),
            std::io::Error::other(
                "something else was put in its place during the restore; left as it is",
            ),
        )),
        _ => Ok(()),
    }
}

/// [`check`] of the open `fd`; failing to tell what it is fails too.
pub(super) fn check_fd(expected: Option<Ident>, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    if expected.is_none() {
        return Ok(());
    }
    let found = of_fd(fd).map_err(|e| Error::io(format!("checking {}", path.display()), e))?;
    check(expected, found, path)
}

#[cfg(test)]
mod tests {
    use super::super::beneath::{Beneath, Parents};
    use super::super::hardlinks::link_names;
    use super::super::item::Item;
    use super::super::metadata::{MetaRules, metadata_at};
    use super::*;
    use crate::tree::{Node, NodeKind};
    use std::os::unix::fs::PermissionsExt;

    fn file_item(path: &Path, mode: u32) -> Item {
        let mut node = Node::new("f", NodeKind::File);
        node.mode = mode;
        Item::new(path.to_owned(), node)
    }

    fn rules() -> MetaRules {
        MetaRules {
            is_root: false,
            replace_xattrs: false,
            only_differing: false,
            dry_run: false,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    /// A file put in place of one the restore made (by a user who can
    /// write the directory) gets none of the snapshot's metadata: here a
    /// set-uid mode, which as root would come with the snapshot's owner.
    #[test]
    fn metadata_is_not_applied_to_a_file_put_in_place_of_the_one_made() {
        let dir = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(dir.path()).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "made by the restore").unwrap();
        let made = Made::new(1);
        made.record(0, of_path(&path));
        let item = file_item(&path, 0o4755);

        // Swapped: another inode now has the name.
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut parents = Parents::new(&beneath);
        let err = metadata_at(&mut parents, &item, made.get(0), rules())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("put in its place"), "{err}");
        assert_eq!(mode_of(&path), 0o644);

        // What the restore made, found again, gets it.
        std::fs::rename(dir.path().join("moved"), &path).unwrap();
        metadata_at(&mut parents, &item, made.get(0), rules()).unwrap();
        assert_eq!(mode_of(&path), 0o4755);
    }

    /// A second name of a hard-linked file is linked to what the restore
    /// made of the first, never to a file put in its place: not even one
    /// given the freed inode number of the first (its birth time differs).
    #[test]
    fn a_second_name_is_not_linked_to_a_file_put_in_place_of_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(dir.path()).unwrap();
        let (first, second) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&first, "made by the restore").unwrap();
        let items = [file_item(&first, 0o644), file_item(&second, 0o644)];
        let made = Made::new(2);
        made.record(0, of_path(&first));
        // Past the file system's clock tick (a few ms): a new inode made in
        // the same tick as a removed one, with its number, is not told
        // apart (no inode generation is read).
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::remove_file(&first).unwrap();
        std::fs::write(&first, "someone else's").unwrap();
        if made.get(0) == Some(of_path(&first)) {
            eprintln!("NOTICE: skipped, this file system keeps no birth time and reused the inode");
            return;
        }
        let failures = super::super::failures::Failures::new(2, dir.path());
        let changed = super::super::changes::Changes::new(2, false);
        link_names(
            &items,
            &[(0, 1)],
            &beneath,
            &failures,
            &made,
            &changed,
            false,
        )
        .unwrap();
        assert!(failures.is_failed(1));
        assert!(!second.exists());
        let entries = failures.entries.into_inner().unwrap();
        assert!(entries[0].error.contains("put in its place"), "{entries:?}");

        // The first name as the restore made it: linked.
        let made = Made::new(2);
        made.record(0, of_path(&first));
        let failures = super::super::failures::Failures::new(2, dir.path());
        link_names(
            &items,
            &[(0, 1)],
            &beneath,
            &failures,
            &made,
            &changed,
            false,
        )
        .unwrap();
        assert!(!failures.is_failed(1));
        assert_eq!(std::fs::read(&second).unwrap(), b"someone else's");
    }

    fn of_path(path: &Path) -> Ident {
        let dir = std::fs::File::open(path.parent().unwrap()).unwrap();
        of_at(std::os::fd::AsFd::as_fd(&dir), path.file_name().unwrap()).unwrap()
    }

    #[test]
    fn only_a_recorded_identity_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let found = of_path(dir.path());
        let path = Path::new("/x");
        check(None, found, path).unwrap();
        check(Some(found), found, path).unwrap();
        let Ident([dev, ino, btime]) = found;
        check(Some(Ident([dev, ino + 1, btime])), found, path).unwrap_err();
        check(Some(Ident([dev, ino, btime + 1])), found, path).unwrap_err();
    }
}
