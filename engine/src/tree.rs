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
    /// Attribute name.
    pub name: String,
    /// Value, base64.
    pub value: String,
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
    /// Content chunks of a file, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<BlobId>>,
    /// Tree of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
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
            if node.name.is_empty()
                || node.name.contains('/')
                || node.name == "."
                || node.name == ".."
            {
                return Err(TreeError(format!("invalid node name {:?}", node.name)));
            }
            let raw_ok = node.name_raw.as_ref().is_none_or(|r| {
                hex::decode(r)
                    .is_ok_and(|b| !b.is_empty() && !b.contains(&b'/') && b != b".." && b != b".")
            });
            if !raw_ok {
                return Err(TreeError("invalid raw node name".into()));
            }
        }
        Ok(tree)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_names_round_trip() {
        let mut node = Node::new("x", NodeKind::File);
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
        node.set_name(name);
        let tree = Tree { nodes: vec![node] };
        let back = Tree::decode(&tree.encode()).unwrap();
        assert_eq!(back.nodes[0].os_name(), name);
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
}
