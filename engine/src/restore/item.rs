//! What a restore keeps of each entry it restores, and the hard-link
//! groups among them.

use super::report::DamagedEntry;
use crate::id::BlobId;
use crate::tree::{Node, NodeKind};
use std::path::{Path, PathBuf};

/// What a restore keeps of each entry it restores, for all of them at
/// once. A snapshot's [`Node`] is ~330 bytes before its strings: keeping
/// those took ~600 bytes an entry (600k files, 359 MiB). Only what creating
/// and finishing an entry needs is kept, and what few entries have lives
/// behind one pointer.
pub(super) struct Item {
    pub(super) path: Box<Path>,
    pub(super) kind: NodeKind,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: jiff::Timestamp,
    /// Content size of a file.
    pub(super) size: u64,
    /// Content chunks of a file, in order.
    pub(super) content: Box<[BlobId]>,
    pub(super) rare: Option<Box<Rare>>,
}

/// The parts of an [`Item`] most entries lack.
#[derive(Default)]
pub(super) struct Rare {
    pub(super) atime: Option<jiff::Timestamp>,
    /// A symlink's target, or why it has none a file system can hold.
    pub(super) link_target: Option<std::result::Result<std::ffi::OsString, &'static str>>,
    pub(super) device: Option<u64>,
    /// `(device, inode)` of a file with other hard links.
    pub(super) hardlink: Option<(u64, u64)>,
    pub(super) xattrs: Vec<crate::tree::ExtendedAttribute>,
    pub(super) inode_flags: u32,
}

impl Item {
    pub(super) fn new(path: PathBuf, node: Node) -> Self {
        let hardlink = (node.kind == NodeKind::File && node.links > 1 && node.inode != 0)
            .then_some((node.device_id, node.inode));
        let link_target = (node.kind == NodeKind::Symlink).then(|| node.usable_link_target());
        let rare = Rare {
            atime: node.atime,
            link_target,
            device: node.device,
            hardlink,
            xattrs: node.extended_attributes,
            inode_flags: node.inode_flags,
        };
        let common = rare.atime.is_none()
            && rare.link_target.is_none()
            && rare.device.is_none()
            && rare.hardlink.is_none()
            && rare.xattrs.is_empty()
            && rare.inode_flags == 0;
        Item {
            path: path.into_boxed_path(),
            kind: node.kind,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            mtime: node.mtime,
            size: node.size,
            content: node.content.unwrap_or_default().into_boxed_slice(),
            rare: (!common).then(|| Box::new(rare)),
        }
    }

    pub(super) fn hardlink(&self) -> Option<(u64, u64)> {
        self.rare.as_ref().and_then(|r| r.hardlink)
    }

    pub(super) fn inode_flags(&self) -> u32 {
        self.rare.as_ref().map_or(0, |r| r.inode_flags)
    }

    /// A symlink's target, or why it cannot be created.
    pub(super) fn link_target(&self) -> std::result::Result<&std::ffi::OsStr, &'static str> {
        match self.rare.as_ref().and_then(|r| r.link_target.as_ref()) {
            Some(Ok(target)) => Ok(target),
            Some(Err(why)) => Err(why),
            None => Err("symlink without a target"),
        }
    }

    /// The report of a symlink that cannot be created, if this is one.
    pub(super) fn damage(&self) -> Option<DamagedEntry> {
        let why = self
            .link_target()
            .err()
            .filter(|_| self.kind == NodeKind::Symlink)?;
        Some(DamagedEntry {
            path: self.path.display().to_string(),
            error: why.to_owned(),
        })
    }
}
