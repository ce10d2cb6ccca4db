//! The read-only filesystem `vault mount` serves through FUSE:
//!
//! ```text
//! snapshots/<time>/...          every snapshot, plus `latest` (a symlink)
//! sources/<source>/<time>/...   snapshots of each configured source, + latest
//! hosts/<host>/<time>/...       by host, + latest
//! tags/<tag>/<time>/...         by tag, + latest
//! ids/<short id>/...            by snapshot id
//! ```
//!
//! `<time>` is the snapshot time in UTC to the second
//! (`vault_engine::mount::snapshot_names`). The directories above the
//! snapshots are fixed at mount time. Below them, every appearance of a
//! snapshot is its own inode tree, built lazily: a directory's tree blob is
//! read the first time it is looked into. Inodes are never forgotten (they
//! are small, and a kernel `forget` only means it dropped its cache).
//! Hard links show as separate inodes. File reads go through the engine's
//! [`FileContent`] and a shared [`BlobCache`], so memory stays bounded
//! whatever the file sizes.

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};
use vault_engine::Repository;
use vault_engine::id::{BlobId, SnapshotId};
use vault_engine::index::Index;
use vault_engine::mount::{BlobCache, FileContent, snapshot_names};
use vault_engine::snapshot::Snapshot;
use vault_engine::tree::{Node, NodeKind};

/// Snapshot contents never change: the kernel may cache them for long.
const CONTENT_TTL: Duration = Duration::from_secs(3600);
/// The listing directories are fixed too, but keep them short in case
/// they are ever refreshed.
const LISTING_TTL: Duration = Duration::from_secs(1);
const BLOCK_SIZE: u32 = 4096;

/// One inode.
struct Inode {
    attr: FileAttr,
    parent: u64,
    body: Body,
    /// The node's extended attributes (base64 values, as stored), whatever
    /// its kind: directories and symlinks carry ACLs and SELinux labels.
    xattrs: Vec<vault_engine::tree::ExtendedAttribute>,
}

enum Body {
    /// A fixed directory (the listings above the snapshots), children
    /// sorted by name.
    Listing(Vec<(OsString, u64)>),
    /// A directory inside a snapshot; children loaded on first use,
    /// sorted by name bytes as the tree is.
    Tree {
        tree: BlobId,
        children: Option<Vec<(OsString, u64)>>,
    },
    /// A symlink (`latest`, or one in a snapshot).
    Symlink(OsString),
    /// A file in a snapshot.
    File {
        node: Box<Node>,
        content: OnceLock<Arc<FileContent>>,
    },
    /// Devices, fifos, sockets: attributes only.
    Special,
}

/// The mounted filesystem.
pub(crate) struct SnapshotFs {
    repo: Arc<Repository>,
    index: Index,
    cache: BlobCache,
    inodes: RwLock<Vec<Inode>>,
    uid: u32,
    gid: u32,
}

fn system_time(t: jiff::Timestamp) -> SystemTime {
    SystemTime::from(t)
}

/// A name usable as one path component: listings are keyed by hosts and
/// tags, which are free text.
fn component(name: &str) -> Option<OsString> {
    let name = name.replace('/', "_");
    (!name.is_empty() && name != "." && name != "..").then(|| OsString::from(name))
}

/// Linux's `new_encode_dev`: the 32-bit device number FUSE carries.
fn encode_rdev(device: u64) -> u32 {
    let major = nix::sys::stat::major(device);
    let minor = nix::sys::stat::minor(device);
    let encoded = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12);
    u32::try_from(encoded).unwrap_or(0)
}

impl SnapshotFs {
    /// Builds the listings for `snapshots` (sorted oldest first);
    /// `sources` are the configured source names, whose snapshots carry
    /// the name as a tag.
    pub(crate) fn new(
        repo: Arc<Repository>,
        index: Index,
        cache_size: usize,
        snapshots: &[(SnapshotId, Snapshot)],
        sources: &[String],
    ) -> Self {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let fs = Self {
            repo,
            index,
            cache: BlobCache::new(cache_size),
            inodes: RwLock::new(Vec::new()),
            uid,
            gid,
        };
        fs.build_listings(snapshots, sources);
        fs
    }

    fn listing_attr(&self, ino: u64, kind: FileType, size: u64, mtime: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: if kind == FileType::Directory {
                0o555
            } else {
                0o777
            },
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// Adds an inode; its number is its place in the table plus one, so
    /// the first is FUSE's root, 1.
    fn push(
        inodes: &mut Vec<Inode>,
        parent: u64,
        make: impl FnOnce(u64) -> (FileAttr, Body),
    ) -> u64 {
        let ino = inodes.len() as u64 + 1;
        let (attr, body) = make(ino);
        inodes.push(Inode {
            attr,
            parent,
            body,
            xattrs: Vec::new(),
        });
        ino
    }

    fn build_listings(&self, snapshots: &[(SnapshotId, Snapshot)], sources: &[String]) {
        let names = snapshot_names(snapshots);
        let newest = snapshots
            .last()
            .map_or_else(SystemTime::now, |(_, s)| system_time(s.time.timestamp()));
        let mut inodes = self.inodes.write().expect("inode table lock");
        let root = Self::push(&mut inodes, 1, |ino| {
            (
                self.listing_attr(ino, FileType::Directory, 0, newest),
                Body::Listing(Vec::new()),
            )
        });

        // A directory of snapshots (`members` are indexes into
        // `snapshots`), with `latest` pointing at the newest.
        let snapshot_dir = |inodes: &mut Vec<Inode>, parent: u64, members: &[usize]| -> u64 {
            let dir = Self::push(inodes, parent, |ino| {
                (
                    self.listing_attr(ino, FileType::Directory, 0, newest),
                    Body::Listing(Vec::new()),
                )
            });
            let mut children = Vec::new();
            for &i in members {
                let (_, snap) = &snapshots[i];
                let child = self.push_snapshot_root(inodes, dir, snap);
                children.push((OsString::from(&names[i]), child));
            }
            if let Some(&last) = members.last() {
                let target = OsString::from(&names[last]);
                let mtime = system_time(snapshots[last].1.time.timestamp());
                let link = Self::push(inodes, dir, |ino| {
                    (
                        self.listing_attr(ino, FileType::Symlink, target.len() as u64, mtime),
                        Body::Symlink(target),
                    )
                });
                children.push((OsString::from("latest"), link));
            }
            Self::set_listing(inodes, dir, children);
            dir
        };
        // A directory of snapshot directories, one per key.
        let grouped = |inodes: &mut Vec<Inode>, groups: BTreeMap<OsString, Vec<usize>>| -> u64 {
            let dir = Self::push(inodes, root, |ino| {
                (
                    self.listing_attr(ino, FileType::Directory, 0, newest),
                    Body::Listing(Vec::new()),
                )
            });
            let children = groups
                .into_iter()
                .map(|(name, members)| (name, snapshot_dir(inodes, dir, &members)))
                .collect();
            Self::set_listing(inodes, dir, children);
            dir
        };

        let all: Vec<usize> = (0..snapshots.len()).collect();
        let by_snapshots = snapshot_dir(&mut inodes, root, &all);
        let mut by_source: BTreeMap<OsString, Vec<usize>> = BTreeMap::new();
        for source in sources {
            let Some(name) = component(source) else {
                continue;
            };
            let members = all
                .iter()
                .copied()
                .filter(|&i| snapshots[i].1.tags.iter().any(|t| t == source))
                .collect();
            by_source.insert(name, members);
        }
        let mut by_host: BTreeMap<OsString, Vec<usize>> = BTreeMap::new();
        let mut by_tag: BTreeMap<OsString, Vec<usize>> = BTreeMap::new();
        for (i, (_, snap)) in snapshots.iter().enumerate() {
            if let Some(host) = component(&snap.hostname) {
                by_host.entry(host).or_default().push(i);
            }
            for tag in &snap.tags {
                if let Some(tag) = component(tag) {
                    by_tag.entry(tag).or_default().push(i);
                }
            }
        }
        let sources_dir = grouped(&mut inodes, by_source);
        let hosts_dir = grouped(&mut inodes, by_host);
        let tags_dir = grouped(&mut inodes, by_tag);

        let ids_dir = Self::push(&mut inodes, root, |ino| {
            (
                self.listing_attr(ino, FileType::Directory, 0, newest),
                Body::Listing(Vec::new()),
            )
        });
        let mut ids = Vec::new();
        for (id, snap) in snapshots {
            let short = OsString::from(id.short());
            // Two ids sharing 8 hex digits are unlikely but possible: the
            // later one is shown in full.
            let name = if ids.iter().any(|(n, _)| *n == short) {
                OsString::from(id.to_hex())
            } else {
                short
            };
            let child = self.push_snapshot_root(&mut inodes, ids_dir, snap);
            ids.push((name, child));
        }
        Self::set_listing(&mut inodes, ids_dir, ids);

        Self::set_listing(
            &mut inodes,
            root,
            vec![
                ("hosts".into(), hosts_dir),
                ("ids".into(), ids_dir),
                ("snapshots".into(), by_snapshots),
                ("sources".into(), sources_dir),
                ("tags".into(), tags_dir),
            ],
        );
    }

    fn set_listing(inodes: &mut [Inode], dir: u64, mut children: Vec<(OsString, u64)>) {
        children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let inode = &mut inodes[usize_of(dir) - 1];
        inode.body = Body::Listing(children);
    }

    fn push_snapshot_root(&self, inodes: &mut Vec<Inode>, parent: u64, snap: &Snapshot) -> u64 {
        let mtime = system_time(snap.time.timestamp());
        Self::push(inodes, parent, |ino| {
            (
                self.listing_attr(ino, FileType::Directory, 0, mtime),
                Body::Tree {
                    tree: snap.tree,
                    children: None,
                },
            )
        })
    }

    /// The inode for one node of a snapshot tree.
    fn node_inode(&self, ino: u64, node: &Node) -> (FileAttr, Body) {
        let (kind, body, size) = match node.kind {
            NodeKind::Dir => (
                FileType::Directory,
                Body::Tree {
                    tree: node.subtree.unwrap_or(BlobId([0; 32])),
                    children: if node.subtree.is_some() {
                        None
                    } else {
                        Some(Vec::new())
                    },
                },
                0,
            ),
            NodeKind::File => {
                // The chunks' sizes are what a read returns; the recorded
                // size is the fallback when a chunk is in no index (reads
                // then fail with EIO).
                let size = node
                    .content
                    .iter()
                    .flatten()
                    .map(|id| self.index.get(id).map(|l| u64::from(l.raw_len)))
                    .sum::<Option<u64>>()
                    .unwrap_or(node.size);
                (
                    FileType::RegularFile,
                    Body::File {
                        node: Box::new(node.clone()),
                        content: OnceLock::new(),
                    },
                    size,
                )
            }
            NodeKind::Symlink => {
                let target = node.os_link_target().unwrap_or_default();
                let len = target.len() as u64;
                (FileType::Symlink, Body::Symlink(target), len)
            }
            NodeKind::Dev => (FileType::BlockDevice, Body::Special, 0),
            NodeKind::Chardev => (FileType::CharDevice, Body::Special, 0),
            NodeKind::Fifo => (FileType::NamedPipe, Body::Special, 0),
            NodeKind::Socket => (FileType::Socket, Body::Special, 0),
        };
        let mtime = system_time(node.mtime);
        let attr = FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime.map_or(mtime, system_time),
            mtime,
            ctime: system_time(node.ctime),
            crtime: mtime,
            kind,
            perm: u16::try_from(node.mode & 0o7777).unwrap_or(0),
            nlink: if kind == FileType::Directory {
                2
            } else {
                u32::try_from(node.links.max(1)).unwrap_or(u32::MAX)
            },
            uid: node.uid,
            gid: node.gid,
            rdev: node.device.map_or(0, encode_rdev),
            blksize: BLOCK_SIZE,
            flags: 0,
        };
        (attr, body)
    }

    /// The children of a directory inode, loading its tree on first use.
    fn children(&self, ino: u64) -> Result<Vec<(OsString, u64)>, Errno> {
        let tree_id = {
            let inodes = self.inodes.read().expect("inode table lock");
            match &inode(&inodes, ino)?.body {
                Body::Listing(children) => return Ok(children.clone()),
                Body::Tree {
                    children: Some(children),
                    ..
                } => return Ok(children.clone()),
                Body::Tree { tree, .. } => *tree,
                _ => return Err(Errno::ENOTDIR),
            }
        };
        // Read without holding the table lock: other requests go on.
        let tree = self
            .cache
            .load_tree(&self.repo, &self.index, &tree_id)
            .map_err(|e| {
                tracing::warn!("reading tree {}: {e}", tree_id.short());
                Errno::EIO
            })?;
        let mut inodes = self.inodes.write().expect("inode table lock");
        // Another request may have loaded it meanwhile.
        if let Body::Tree {
            children: Some(children),
            ..
        } = &inode(&inodes, ino)?.body
        {
            return Ok(children.clone());
        }
        let mut children = Vec::with_capacity(tree.nodes.len());
        for node in &tree.nodes {
            let child = Self::push(&mut inodes, ino, |child| self.node_inode(child, node));
            inode_mut(&mut inodes, child)?
                .xattrs
                .clone_from(&node.extended_attributes);
            children.push((node.os_name(), child));
        }
        if let Body::Tree { children: slot, .. } = &mut inode_mut(&mut inodes, ino)?.body {
            *slot = Some(children.clone());
        }
        Ok(children)
    }

    fn attr(&self, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        let inodes = self.inodes.read().expect("inode table lock");
        let inode = inode(&inodes, ino)?;
        let ttl = match inode.body {
            Body::Listing(_) => LISTING_TTL,
            _ => CONTENT_TTL,
        };
        Ok((inode.attr, ttl))
    }

    fn content(&self, ino: u64) -> Result<Arc<FileContent>, Errno> {
        let inodes = self.inodes.read().expect("inode table lock");
        match &inode(&inodes, ino)?.body {
            Body::File { node, content } => {
                if let Some(c) = content.get() {
                    return Ok(c.clone());
                }
                let built = FileContent::new(&self.index, node).map_err(|e| {
                    tracing::warn!("{e}");
                    Errno::EIO
                })?;
                Ok(content.get_or_init(|| Arc::new(built)).clone())
            }
            Body::Listing(_) | Body::Tree { .. } => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Names as their exact bytes (`name_raw` first), values decoded.
    fn xattrs(&self, ino: u64) -> Result<Vec<(OsString, Vec<u8>)>, Errno> {
        let inodes = self.inodes.read().expect("inode table lock");
        Ok(inode(&inodes, ino)?
            .xattrs
            .iter()
            .filter_map(|x| Some((x.os_name(), x.value_bytes()?)))
            .collect())
    }
}

fn usize_of(ino: u64) -> usize {
    usize::try_from(ino).unwrap_or(usize::MAX)
}

fn inode(inodes: &[Inode], ino: u64) -> Result<&Inode, Errno> {
    inodes
        .get(usize_of(ino).wrapping_sub(1))
        .ok_or(Errno::ENOENT)
}

fn inode_mut(inodes: &mut [Inode], ino: u64) -> Result<&mut Inode, Errno> {
    inodes
        .get_mut(usize_of(ino).wrapping_sub(1))
        .ok_or(Errno::ENOENT)
}

/// Replies to an xattr request of `size` bytes with `data`.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        reply.error(Errno::E2BIG);
        return;
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.children(parent.0).and_then(|children| {
            let at = children
                .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
                .map_err(|_| Errno::ENOENT)?;
            self.attr(children[at].1)
        });
        match found {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inodes = self.inodes.read().expect("inode table lock");
        match inode(&inodes, ino.0).map(|i| &i.body) {
            // A target no file system holds (a damaged node) is an error
            // to read, as damaged content is.
            Ok(Body::Symlink(target)) if target.is_empty() || target.as_bytes().contains(&0) => {
                tracing::warn!(
                    "symlink inode {}: its node in the snapshot is damaged (empty target or NUL byte)",
                    ino.0
                );
                reply.error(Errno::EIO);
            }
            Ok(Body::Symlink(target)) => reply.data(target.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The mount is read-only, so the kernel refuses writes before they
        // get here. Content never changes: let the page cache keep it.
        match self.content(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush.
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Asked only without `default_permissions` (no --allow-other): then
        // only the mounting user (and root) may use the mount and may read
        // everything in it, as `open` allows; only writing is refused.
        match self.attr(ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = self.content(ino.0).and_then(|content| {
            content
                .read_at(&self.repo, &self.index, &self.cache, offset, size as usize)
                .map_err(|e| {
                    tracing::warn!("reading inode {}: {e}", ino.0);
                    Errno::EIO
                })
        });
        match data {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let children = match self.children(ino.0) {
            Ok(c) => c,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let inodes = self.inodes.read().expect("inode table lock");
        let parent = inode(&inodes, ino.0).map_or(1, |i| i.parent);
        let dots = [
            (ino.0, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        let entries = dots
            .into_iter()
            .chain(children.into_iter().map(|(name, child)| {
                let kind = inode(&inodes, child).map_or(FileType::RegularFile, |i| i.attr.kind);
                (child, kind, name)
            }));
        // An entry's offset is where the next readdir resumes.
        for (i, (child, kind, name)) in entries.enumerate().skip(usize_of(offset)) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino.0) {
            Ok(attrs) => match attrs.iter().find(|(n, _)| n == name) {
                Some((_, value)) => reply_xattr(reply, size, value),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino.0) {
            Ok(attrs) => {
                let mut names = Vec::new();
                for (name, _) in attrs {
                    names.extend_from_slice(name.as_bytes());
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            Err(e) => reply.error(e),
        }
    }

    /// No ioctls: "not a terminal", which is what the callers (Python's
    /// `open()` asks whether a file is a TTY) expect, instead of fuser's
    /// default ENOSYS with a warning on stderr for every such open.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}
