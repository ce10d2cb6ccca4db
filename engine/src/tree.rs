//! Trees (repo-format.md §9): one JSON-encoded directory listing per tree
//! blob, nodes sorted by name. Encoding is deterministic (field order fixed
//! by the struct, no maps), so an unchanged directory encodes to the same
//! bytes and dedups to the same blob.
#![warn(clippy::indexing_slicing)]

use crate::id::BlobId;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Regular file with content.
    File,
    /// Directory with a subtree.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Block device (metadata only).
    Dev,
    /// Character device (metadata only).
    Chardev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedAttribute {
    /// Attribute name (lossy UTF-8 when the real name is not UTF-8).
    pub name: String,
    /// Exact name bytes in hex, present only when `name` is lossy, as a
    /// node's `name_raw`: two names that differ only in their non-UTF-8
    /// bytes were one lossy name, and one of them was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_raw: Option<String>,
    /// Value, base64.
    pub value: String,
}

impl ExtendedAttribute {
    /// An attribute named `name` (any bytes) with `value`.
    #[must_use]
    pub fn new(name: &std::ffi::OsStr, value: &[u8]) -> Self {
        use base64::Engine as _;
        let (name, name_raw) = encode_os(name);
        Self {
            name,
            name_raw,
            value: base64::engine::general_purpose::STANDARD.encode(value),
        }
    }

    /// The exact attribute name.
    #[must_use]
    pub fn os_name(&self) -> OsString {
        decode_os(&self.name, self.name_raw.as_ref())
    }

    /// The value, or `None` when it is not base64 (damage: readers leave
    /// that one attribute out).
    #[must_use]
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&self.value)
            .ok()
    }
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name (lossy UTF-8 when the real name is not UTF-8).
    pub name: String,
    /// Exact name bytes in hex, present only when `name` is lossy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_raw: Option<String>,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Unix permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time.
    pub mtime: jiff::Timestamp,
    /// Access time. Not recorded by default: it changes on every read and
    /// would make every directory's tree blob new on each backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<jiff::Timestamp>,
    /// Status change time.
    pub ctime: jiff::Timestamp,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name, when resolvable.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Group name, when resolvable.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Inode number (change detection and hardlinks).
    pub inode: u64,
    /// Device of the containing filesystem.
    pub device_id: u64,
    /// Content size for files.
    #[serde(default)]
    pub size: u64,
    /// Hard link count.
    #[serde(default)]
    pub links: u64,
    /// Symlink target (hex when not UTF-8 is not needed: targets are kept as
    /// lossy UTF-8 plus `linktarget_raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linktarget: Option<String>,
    /// Exact symlink target bytes in hex, present only when lossy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linktarget_raw: Option<String>,
    /// `st_rdev` of device nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u64>,
    /// Extended attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extended_attributes: Vec<ExtendedAttribute>,
    /// Linux inode flags (`chattr`), Linux's `FS_*_FL` bits, only those of
    /// [`RECORDED_INODE_FLAGS`]; omitted when none is set, so a node
    /// without any encodes exactly as before the field existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode_flags: u32,
    /// Content chunks of a file, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<BlobId>>,
    /// Tree of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
}

/// The inode flags a backup records and a restore sets (repo-format.md
/// §9): those a user sets with `chattr`. What the file system sets itself
/// (extents, inline data, encryption, verity, ...) describes how the
/// inode is stored there, not the file, and most of it cannot be set.
pub const RECORDED_INODE_FLAGS: u32 = FS_SECRM_FL
    | FS_UNRM_FL
    | FS_COMPR_FL
    | FS_SYNC_FL
    | FS_IMMUTABLE_FL
    | FS_APPEND_FL
    | FS_NODUMP_FL
    | FS_NOATIME_FL
    | FS_NOCOMP_FL
    | FS_JOURNAL_DATA_FL
    | FS_NOTAIL_FL
    | FS_DIRSYNC_FL
    | FS_TOPDIR_FL
    | FS_NOCOW_FL
    | FS_PROJINHERIT_FL;

// Linux's values (include/uapi/linux/fs.h), fixed by its ABI.
/// `chattr +s`.
pub const FS_SECRM_FL: u32 = 0x0000_0001;
/// `chattr +u`.
pub const FS_UNRM_FL: u32 = 0x0000_0002;
/// `chattr +c`.
pub const FS_COMPR_FL: u32 = 0x0000_0004;
/// `chattr +S`.
pub const FS_SYNC_FL: u32 = 0x0000_0008;
/// `chattr +i`.
pub const FS_IMMUTABLE_FL: u32 = 0x0000_0010;
/// `chattr +a`.
pub const FS_APPEND_FL: u32 = 0x0000_0020;
/// `chattr +d`.
pub const FS_NODUMP_FL: u32 = 0x0000_0040;
/// `chattr +A`.
pub const FS_NOATIME_FL: u32 = 0x0000_0080;
/// `chattr +m`.
pub const FS_NOCOMP_FL: u32 = 0x0000_0400;
/// `chattr +j`.
pub const FS_JOURNAL_DATA_FL: u32 = 0x0000_4000;
/// `chattr +t`.
pub const FS_NOTAIL_FL: u32 = 0x0000_8000;
/// `chattr +D`.
pub const FS_DIRSYNC_FL: u32 = 0x0001_0000;
/// `chattr +T`.
pub const FS_TOPDIR_FL: u32 = 0x0002_0000;
/// `chattr +C`.
pub const FS_NOCOW_FL: u32 = 0x0080_0000;
/// `chattr +P`.
pub const FS_PROJINHERIT_FL: u32 = 0x2000_0000;

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn encode_os(s: &std::ffi::OsStr) -> (String, Option<String>) {
    match s.to_str() {
        Some(utf8) => (utf8.to_owned(), None),
        None => (
            s.to_string_lossy().into_owned(),
            Some(hex::encode(s.as_bytes())),
        ),
    }
}

fn decode_os(lossy: &str, raw: Option<&String>) -> OsString {
    match raw.and_then(|r| hex::decode(r).ok()) {
        Some(bytes) => OsString::from_vec(bytes),
        None => OsString::from(lossy),
    }
}

impl Node {
    /// Sets `name`/`name_raw` from an OS file name.
    pub fn set_name(&mut self, name: &std::ffi::OsStr) {
        (self.name, self.name_raw) = encode_os(name);
    }

    /// The exact file name.
    #[must_use]
    pub fn os_name(&self) -> OsString {
        decode_os(&self.name, self.name_raw.as_ref())
    }

    /// Sets the symlink target.
    pub fn set_link_target(&mut self, target: &std::ffi::OsStr) {
        let (lossy, raw) = encode_os(target);
        self.linktarget = Some(lossy);
        self.linktarget_raw = raw;
    }

    /// The exact symlink target.
    #[must_use]
    pub fn os_link_target(&self) -> Option<OsString> {
        self.linktarget
            .as_deref()
            .map(|t| decode_os(t, self.linktarget_raw.as_ref()))
    }

    /// The target a symlink can be made with, or why none can: readers do
    /// not validate link targets when decoding a tree (repo-format.md §9),
    /// but no file system holds an empty one or one with a NUL byte (the
    /// kernel takes a C string), so such a node is damage to the one entry.
    pub fn usable_link_target(&self) -> Result<OsString, &'static str> {
        match self.os_link_target() {
            None => Err("symlink without a target"),
            Some(t) if t.is_empty() => Err("symlink with an empty target"),
            Some(t) if t.as_bytes().contains(&0) => {
                Err("symlink target holds a NUL byte, which no path can hold")
            }
            Some(t) => Ok(t),
        }
    }

    /// Backups by vault before 2026-11-24 recorded an ancestor of a
    /// backed-up path reached through a symlink as that symlink, with the
    /// children below it (repo-format.md §9). Such a node stands for the
    /// directory the backup walked: every reader (restore, `ls`, `dump`,
    /// `find`, `mount`) shows it as one, and restore creates a directory
    /// there instead of a symlink it would then write through, possibly
    /// outside its target.
    pub fn legacy_ancestor_as_dir(&mut self) {
        if self.subtree.is_some() && self.kind != NodeKind::Dir {
            if self.kind == NodeKind::Symlink {
                self.mode = 0o755;
            }
            self.kind = NodeKind::Dir;
            self.linktarget = None;
            self.linktarget_raw = None;
            self.content = None;
        }
    }

    /// A node with zeroed metadata, for stdin streams and tests.
    #[must_use]
    pub fn new(name: &str, kind: NodeKind) -> Self {
        let now = jiff::Timestamp::now();
        Self {
            name: name.to_owned(),
            name_raw: None,
            kind,
            mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
            mtime: now,
            atime: None,
            ctime: now,
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 1,
            linktarget: None,
            linktarget_raw: None,
            device: None,
            extended_attributes: Vec::new(),
            inode_flags: 0,
            content: None,
            subtree: None,
        }
    }
}

/// Deepest nesting of trees a reader follows. Linux paths are at most
/// 4 096 bytes, so a directory tree that was backed up is at most ~2 050
/// levels deep; deeper means a crafted tree, refused before it exhausts
/// the stack (repo-format.md §9).
pub const MAX_DEPTH: usize = 3000;

/// Refuses a tree `depth` levels down when that is deeper than
/// [`MAX_DEPTH`]: each level of a recursive reader is a stack frame, and a
/// crafted tree must fail as damage, not overflow the stack.
pub(crate) fn within_depth(depth: usize, below: &dyn std::fmt::Display) -> crate::Result<()> {
    if depth > MAX_DEPTH {
        return Err(crate::Error::corrupt(
            format!("tree below {below}"),
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(())
}

/// A directory listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name bytes.
    pub nodes: Vec<Node>,
}

/// A tree blob that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed tree: {0}")]
pub struct TreeError(String);

impl Tree {
    /// Sorts nodes by name so the encoding is canonical.
    pub fn sort(&mut self) {
        self.nodes.sort_by_key(Node::os_name);
    }

    /// Canonical JSON bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees serialise")
    }

    /// Decodes tree bytes. Names must be valid, unique and sorted: a tree
    /// holding both a symlink `a` and a directory `a` could otherwise make
    /// restore write through the link.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let tree: Tree = serde_json::from_slice(bytes).map_err(|e| TreeError(e.to_string()))?;
        let sorted_unique = tree
            .nodes
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.os_name() < b.os_name()));
        if !sorted_unique {
            return Err(TreeError("node names not sorted and unique".into()));
        }
        for node in &tree.nodes {
            if !is_file_name(node.name.as_bytes()) {
                return Err(TreeError(format!("invalid node name {:?}", node.name)));
            }
            let raw_ok = node
                .name_raw
                .as_ref()
                .is_none_or(|r| hex::decode(r).is_ok_and(|b| is_file_name(&b)));
            if !raw_ok {
                return Err(TreeError(format!(
                    "invalid raw node name {:?}",
                    node.name_raw.as_deref().unwrap_or_default()
                )));
            }
            // Not hex is damage (a writer only writes hex): taken as absent,
            // the lossy name would be used, a different attribute. What
            // the name holds is left to whoever sets it: the kernel refuses
            // an empty one or one with a NUL, and that one attribute fails.
            if let Some(bad) = node
                .extended_attributes
                .iter()
                .filter_map(|x| x.name_raw.as_ref())
                .find(|r| hex::decode(r).is_err())
            {
                return Err(TreeError(format!(
                    "invalid raw extended attribute name {bad:?} of {:?}",
                    node.name
                )));
            }
        }
        Ok(tree)
    }
}

/// Whether `name` can be one entry of a directory: one path component
/// (not empty, no `/`, not `.` or `..`) that the kernel accepts (no NUL,
/// which ends a C string: restoring it would fail, or create a shorter name).
fn is_file_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Most entries (files, directories, links...) a snapshot's trees may
/// expand to, counting a subtree once per place it appears. Identical
/// directories are stored once and listed from every place they appear,
/// so a few crafted tree blobs can list each other into 2^48 paths; no
/// real file system reaches this bound (ext4 counts inodes in 32 bits, and a
/// restore plans ~100 bytes per entry, 400 GiB here), so beyond it the trees
/// are damage (repo-format.md §9).
pub const MAX_ENTRIES: u64 = 1 << 32;

/// The size of a tree as walked: every subtree counted each time it
/// appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// Entries listed by the tree and, recursively, all its subtrees.
    pub(crate) entries: u64,
    /// Trees on the longest path down from it, itself included (1 for a
    /// tree without subtrees); nested `levels - 1` levels deep.
    pub(crate) levels: u32,
}

impl Extent {
    /// Whether a snapshot rooted here is beyond what readers follow:
    /// nested deeper than [`MAX_DEPTH`], or more than [`MAX_ENTRIES`].
    #[must_use]
    pub(crate) fn exceeds_limits(&self) -> bool {
        self.levels as usize > MAX_DEPTH + 1 || self.entries > MAX_ENTRIES
    }
}

/// A tree still waiting for the extents of some of its subtrees.
struct PendingExtent {
    extent: Extent,
    missing: usize,
}

/// The [`Extent`]s of trees as a walk reads them, computed once per distinct
/// tree id: a tree's extent is known as soon as those of all its subtrees
/// are, so a tree listing another one twice, which lists a third one twice,
/// and so on, is measured by reading each of them once, without expanding
/// them. About 60 bytes per distinct tree.
#[derive(Default)]
pub(crate) struct Extents {
    known: std::collections::HashMap<BlobId, Extent>,
    pending: std::collections::HashMap<BlobId, PendingExtent>,
    /// Per tree whose extent is not known yet, the trees waiting for it
    /// (one per reference).
    waiting: std::collections::HashMap<BlobId, Vec<BlobId>>,
}

impl Extents {
    /// Records tree `id` (read by the walk) with its listing. Returns the
    /// first tree whose extent became known by this and exceeds
    /// [`MAX_ENTRIES`].
    pub(crate) fn add(&mut self, id: BlobId, tree: &Tree) -> Option<(BlobId, Extent)> {
        if self.contains(&id) {
            return None;
        }
        let mut extent = Extent {
            entries: tree.nodes.len() as u64,
            levels: 1,
        };
        let mut missing = 0;
        for sub in tree.nodes.iter().filter_map(|n| n.subtree) {
            match self.known.get(&sub) {
                Some(child) => extent.include(child),
                None => {
                    missing += 1;
                    self.waiting.entry(sub).or_default().push(id);
                }
            }
        }
        if missing > 0 {
            self.pending.insert(id, PendingExtent { extent, missing });
            return None;
        }
        self.complete(id, extent)
    }

    /// [`Extents::add`] for a reader walking a snapshot (restore, `ls`,
    /// `dump`, `find`): a tree known to expand beyond [`MAX_ENTRIES`] is
    /// damage.
    pub(crate) fn add_walked(&mut self, id: BlobId, tree: &Tree) -> crate::Result<()> {
        match self.add(id, tree) {
            None => Ok(()),
            Some((id, _)) => Err(crate::Error::corrupt(
                format!("tree {id}"),
                format!(
                    "its subtrees list each other into more than {MAX_ENTRIES} entries, more than any file system holds"
                ),
            )),
        }
    }

    /// Records a tree that cannot be read as an empty one, so the trees
    /// above it are measured by what can be read.
    pub(crate) fn add_unreadable(&mut self, id: BlobId) {
        self.add(id, &Tree::default());
    }

    /// Whether tree `id` was added (its extent may not be known yet).
    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.known.contains_key(id) || self.pending.contains_key(id)
    }

    /// The extent of tree `id`, once it and everything below it was added.
    pub(crate) fn get(&self, id: &BlobId) -> Option<Extent> {
        self.known.get(id).copied()
    }

    fn complete(&mut self, id: BlobId, extent: Extent) -> Option<(BlobId, Extent)> {
        let mut oversized = None;
        let mut done = vec![(id, extent)];
        while let Some((id, extent)) = done.pop() {
            if extent.entries > MAX_ENTRIES && oversized.is_none() {
                oversized = Some((id, extent));
            }
            self.known.insert(id, extent);
            for parent in self.waiting.remove(&id).unwrap_or_default() {
                let Some(p) = self.pending.get_mut(&parent) else {
                    continue;
                };
                p.extent.include(&extent);
                p.missing -= 1;
                if p.missing == 0
                    && let Some(p) = self.pending.remove(&parent)
                {
                    done.push((parent, p.extent));
                }
            }
        }
        oversized
    }
}

impl Extent {
    /// Adds a subtree's extent to its parent's.
    fn include(&mut self, child: &Extent) {
        self.entries = self.entries.saturating_add(child.entries);
        self.levels = self.levels.max(child.levels.saturating_add(1));
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn non_utf8_names_round_trip() {
        let mut node = Node::new("x", NodeKind::File);
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
        node.set_name(name);
        let tree = Tree { nodes: vec![node] };
        let back = Tree::decode(&tree.encode()).unwrap();
        assert_eq!(back.nodes[0].os_name(), name);
    }

    /// Attribute names that are not UTF-8 keep their bytes; two that
    /// differ only there stay two. UTF-8 names are written as before.
    #[test]
    fn non_utf8_xattr_names_round_trip() {
        let mut node = Node::new("x", NodeKind::File);
        node.extended_attributes = vec![
            ExtendedAttribute::new(OsStr::from_bytes(b"user.\xfe"), b"two"),
            ExtendedAttribute::new(OsStr::from_bytes(b"user.\xff"), b"one"),
            ExtendedAttribute::new(OsStr::new("user.plain"), b"three"),
        ];
        let bytes = Tree { nodes: vec![node] }.encode();
        let json = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            json.contains(
                "{\"name\":\"user.\u{fffd}\",\"name_raw\":\"757365722efe\",\"value\":\"dHdv\"}"
            ),
            "{json}"
        );
        assert!(
            json.contains(r#"{"name":"user.plain","value":"dGhyZWU="}"#),
            "{json}"
        );
        let back = Tree::decode(&bytes).unwrap();
        let got: Vec<(OsString, Vec<u8>)> = back.nodes[0]
            .extended_attributes
            .iter()
            .map(|x| (x.os_name(), x.value_bytes().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (OsString::from_vec(b"user.\xfe".to_vec()), b"two".to_vec()),
                (OsString::from_vec(b"user.\xff".to_vec()), b"one".to_vec()),
                (OsString::from("user.plain"), b"three".to_vec()),
            ]
        );
        // A reader that does not know `name_raw` (as before it existed)
        // still reads the tree, with the lossy name.
        #[derive(Deserialize)]
        struct OldXattr {
            name: String,
            value: String,
        }
        #[derive(Deserialize)]
        struct OldNode {
            extended_attributes: Vec<OldXattr>,
        }
        #[derive(Deserialize)]
        struct OldTree {
            nodes: Vec<OldNode>,
        }
        let old: OldTree = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(old.nodes[0].extended_attributes[0].name, "user.\u{fffd}");
        assert_eq!(old.nodes[0].extended_attributes[0].value, "dHdv");
    }

    /// Inode flags round-trip under `inode_flags`, and a node without any
    /// encodes byte for byte as before the field existed (golden vectors,
    /// deduplication with older writers' trees).
    #[test]
    fn inode_flags_round_trip_and_are_absent_when_zero() {
        let mut node = Node::new("f", NodeKind::File);
        node.mtime = jiff::Timestamp::new(1_768_014_000, 0).unwrap();
        node.ctime = node.mtime;
        let plain = Tree {
            nodes: vec![node.clone()],
        }
        .encode();
        assert_eq!(
            String::from_utf8(plain.clone()).unwrap(),
            r#"{"nodes":[{"name":"f","type":"file","mode":420,"mtime":"2026-01-10T03:00:00Z","ctime":"2026-01-10T03:00:00Z","uid":0,"gid":0,"inode":0,"device_id":0,"size":0,"links":1}]}"#
        );
        assert_eq!(Tree::decode(&plain).unwrap().nodes[0].inode_flags, 0);

        node.inode_flags = FS_IMMUTABLE_FL | FS_NODUMP_FL;
        let flagged = Tree { nodes: vec![node] }.encode();
        let json = String::from_utf8(flagged.clone()).unwrap();
        assert!(json.contains(r#","inode_flags":80}"#), "{json}");
        let back = Tree::decode(&flagged).unwrap();
        assert_eq!(back.nodes[0].inode_flags, 0x10 | 0x40);
    }

    /// The recorded set is exactly the one repo-format.md §9 lists.
    #[test]
    fn recorded_inode_flags_are_the_documented_set() {
        assert_eq!(RECORDED_INODE_FLAGS, 0x2083_C4FF);
    }

    /// Readers ignore fields they do not know, on nodes and attributes:
    /// what lets a field like `name_raw` be added within format version 1.
    #[test]
    fn decode_ignores_unknown_fields() {
        let json = br#"{"nodes":[{"name":"f","type":"file","mode":420,"mtime":"2026-01-10T03:00:00Z","ctime":"2026-01-10T03:00:00Z","uid":0,"gid":0,"inode":0,"device_id":0,"extended_attributes":[{"name":"user.a","value":"dg==","future":1}],"content":[],"future":{"x":[1]}}],"future":true}"#;
        let tree = Tree::decode(json).unwrap();
        assert_eq!(tree.nodes[0].extended_attributes[0].os_name(), "user.a");
    }

    /// Timestamps as repo-format.md §0 says they are written and read.
    #[test]
    fn timestamps_are_written_and_read_as_documented() {
        let json = |t: jiff::Timestamp| serde_json::to_string(&t).unwrap();
        let at = |s: i64, n: i32| jiff::Timestamp::new(s, n).unwrap();
        assert_eq!(
            json(at(1_768_014_000, 500_000_000)),
            r#""2026-01-10T03:00:00.5Z""#
        );
        assert_eq!(json(at(1_768_014_000, 0)), r#""2026-01-10T03:00:00Z""#);
        assert_eq!(json(at(-62_135_683_200, 0)), r#""0000-12-31T00:00:00Z""#);
        assert_eq!(json(at(-63_000_000_000, 0)), r#""-000027-08-11T08:00:00Z""#);
        assert_eq!(json(jiff::Timestamp::MIN), r#""-009999-01-02T01:59:59Z""#);
        assert_eq!(
            json(jiff::Timestamp::MAX),
            r#""9999-12-30T22:00:00.999999999Z""#
        );
        let read = |s: &str| serde_json::from_str::<jiff::Timestamp>(&format!("\"{s}\""));
        let same = at(1_768_014_000, 0);
        for s in [
            "2026-01-10T03:00:00Z",
            "2026-01-10t03:00:00z",
            "2026-01-10T05:00:00+02:00",
            "+002026-01-10T03:00:00Z",
        ] {
            assert_eq!(read(s).unwrap(), same, "{s}");
        }
        assert_eq!(
            read("-000027-08-11T08:00:00Z").unwrap(),
            at(-63_000_000_000, 0)
        );
        for bad in [
            "-000000-01-01T00:00:00Z",
            "+010000-01-01T00:00:00Z",
            "-010000-01-01T00:00:00Z",
            "2026-01-10T03:00:00",
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decode_rejects_a_raw_xattr_name_that_is_not_hex() {
        let mut node = Node::new("f", NodeKind::File);
        let mut x = ExtendedAttribute::new(OsStr::new("user.a"), b"v");
        x.name_raw = Some("zz".into());
        node.extended_attributes = vec![x];
        let err = Tree::decode(&Tree { nodes: vec![node] }.encode()).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid raw extended attribute name"),
            "{err}"
        );
    }

    #[test]
    fn decode_rejects_path_traversal_names() {
        for bad in ["..", "a/b", "", "."] {
            let tree = Tree {
                nodes: vec![Node::new(bad, NodeKind::File)],
            };
            assert!(Tree::decode(&tree.encode()).is_err(), "{bad}");
        }
        let mut node = Node::new("ok", NodeKind::File);
        node.name_raw = Some(hex::encode(b"../x"));
        assert!(Tree::decode(&Tree { nodes: vec![node] }.encode()).is_err());
    }

    /// No file system name holds a NUL: restore could not create it.
    #[test]
    fn decode_rejects_nul_in_names() {
        let tree = Tree {
            nodes: vec![Node::new("a\0b", NodeKind::File)],
        };
        let err = Tree::decode(&tree.encode()).unwrap_err();
        assert!(err.to_string().contains("invalid node name"), "{err}");
        for raw in [&b"a\0b"[..], b"\0", b"x\xff\0"] {
            let mut node = Node::new("ok", NodeKind::File);
            node.name_raw = Some(hex::encode(raw));
            let err = Tree::decode(&Tree { nodes: vec![node] }.encode()).unwrap_err();
            assert!(err.to_string().contains("invalid raw node name"), "{err}");
        }
    }

    fn id(n: u32) -> BlobId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_le_bytes());
        BlobId(b)
    }

    /// A tree listing `subtrees` as directories, plus `files` files.
    fn listing(subtrees: &[BlobId], files: usize) -> Tree {
        let mut nodes: Vec<Node> = subtrees
            .iter()
            .enumerate()
            .map(|(i, sub)| {
                let mut n = Node::new(&format!("d{i}"), NodeKind::Dir);
                n.subtree = Some(*sub);
                n
            })
            .collect();
        nodes.extend((0..files).map(|i| Node::new(&format!("f{i}"), NodeKind::File)));
        Tree { nodes }
    }

    #[test]
    fn extents_count_each_appearance_in_any_read_order() {
        // Tree k lists tree k+1 twice; tree 60 holds one file: 3 * 2^60 - 2
        // entries (2 + 2 * those of the next tree), known from 61 reads,
        // whichever order they come in.
        let trees: Vec<Tree> = (0..=60u32)
            .map(|k| {
                if k == 60 {
                    listing(&[], 1)
                } else {
                    listing(&[id(k + 1), id(k + 1)], 0)
                }
            })
            .collect();
        for order in [(0..=60).collect::<Vec<u32>>(), (0..=60).rev().collect()] {
            let mut extents = Extents::default();
            let mut oversized = None;
            for k in order {
                oversized = oversized.or(extents.add(id(k), &trees[k as usize]));
            }
            let root = extents.get(&id(0)).unwrap();
            assert_eq!(
                root,
                Extent {
                    entries: (3 << 60) - 2,
                    levels: 61
                }
            );
            let (tree, extent) = oversized.unwrap();
            assert!(extent.entries > MAX_ENTRIES);
            // The first tree found beyond the bound, not necessarily the root.
            assert!(extents.get(&tree).unwrap().entries > MAX_ENTRIES);
        }
        // A chain: one entry per level.
        let mut extents = Extents::default();
        for k in 0..=MAX_DEPTH as u32 {
            extents.add(id(k), &listing(&[id(k + 1)], 0));
        }
        assert!(
            extents.get(&id(0)).is_none(),
            "the last tree is not read yet"
        );
        extents.add_unreadable(id(MAX_DEPTH as u32 + 1));
        let root = extents.get(&id(0)).unwrap();
        assert_eq!(root.levels as usize, MAX_DEPTH + 2);
        assert!(root.exceeds_limits());
        assert!(!extents.get(&id(1)).unwrap().exceeds_limits());
    }
}
