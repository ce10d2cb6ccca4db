//! Differences between two snapshots, as `restic diff` reports them: each
//! added (`+`), removed (`-`), content-modified (`M`), type-changed (`T`)
//! and, on request, metadata-only changed (`U`) path, and how many blobs
//! and bytes only one side references.
//!
//! Trees are compared name by name; a directory whose subtree id is the same
//! on both sides is identical and not descended into. A file's content
//! changed when its list of content blobs differs.

use crate::error::Result;
use crate::id::BlobId;
use crate::index::Index;
use crate::repository::Repository;
use crate::tree::{Extents, Node, NodeKind, Tree};
use crate::tree_reader::TreeReader;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::HashSet;

/// Knobs for a diff.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// Also report metadata changes (mode, owner, mtime, extended
    /// attributes) of paths whose content did not change (`U`).
    pub metadata: bool,
}

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Modifier {
    /// Only in the second snapshot.
    #[serde(rename = "+")]
    Added,
    /// Only in the first snapshot.
    #[serde(rename = "-")]
    Removed,
    /// Content (or link target, or device number) changed.
    #[serde(rename = "M")]
    Modified,
    /// The kind changed (e.g. a file became a directory).
    #[serde(rename = "T")]
    TypeChanged,
    /// Only metadata changed (with [`DiffOptions::metadata`]).
    #[serde(rename = "U")]
    Metadata,
}

impl Modifier {
    /// The one-letter marker restic prints.
    #[must_use]
    pub fn symbol(self) -> char {
        match self {
            Modifier::Added => '+',
            Modifier::Removed => '-',
            Modifier::Modified => 'M',
            Modifier::TypeChanged => 'T',
            Modifier::Metadata => 'U',
        }
    }
}

/// One changed path.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Absolute path in the snapshot; directories end with `/`.
    pub path: String,
    /// How it changed.
    pub modifier: Modifier,
    /// For `M`, `T` and `U`: what differs (`content`, `type`, `mode`,
    /// `owner`, `mtime`, `xattrs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
}

/// Counts for one side of a diff.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffSide {
    /// Files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, fifos, sockets.
    pub others: u64,
    /// Data blobs referenced only by this side.
    pub data_blobs: u64,
    /// Tree blobs referenced only by this side.
    pub tree_blobs: u64,
    /// Plaintext bytes of the blobs referenced only by this side.
    pub bytes: u64,
}

/// Summary of a diff.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffStats {
    /// Files whose content changed (`M`).
    pub changed_files: u64,
    /// Symlinks whose target and devices whose number changed (`M`).
    pub changed_others: u64,
    /// Paths whose type changed (`T`).
    pub type_changed: u64,
    /// Paths with only metadata changes (`U`).
    pub metadata_changed: u64,
    /// What the second snapshot adds.
    pub added: DiffSide,
    /// What the first snapshot had that the second does not.
    pub removed: DiffSide,
}

struct Differ<'a> {
    trees: &'a TreeReader<'a>,
    options: DiffOptions,
    stats: DiffStats,
    emit: &'a mut dyn FnMut(&Change) -> Result<()>,
}

fn child_path(parent: &str, node: &Node) -> String {
    let mut p = format!("{}/{}", parent.trim_end_matches('/'), node.name);
    if node.kind == NodeKind::Dir {
        p.push('/');
    }
    p
}

/// What differs in content-like fields of two nodes of the same kind.
fn content_changed(a: &Node, b: &Node) -> bool {
    match a.kind {
        NodeKind::File => a.content != b.content,
        NodeKind::Symlink => a.linktarget != b.linktarget || a.linktarget_raw != b.linktarget_raw,
        NodeKind::Dev | NodeKind::Chardev => a.device != b.device,
        NodeKind::Dir | NodeKind::Fifo | NodeKind::Socket => false,
    }
}

fn metadata_changes(a: &Node, b: &Node) -> Vec<&'static str> {
    let mut what = Vec::new();
    if a.mode != b.mode {
        what.push("mode");
    }
    if a.uid != b.uid || a.gid != b.gid || a.user != b.user || a.group != b.group {
        what.push("owner");
    }
    if a.mtime != b.mtime {
        what.push("mtime");
    }
    if xattrs(a) != xattrs(b) {
        what.push("xattrs");
    }
    what
}

/// A node's extended attributes as names and values are on disk: by name
/// bytes (`name_raw` first), not by how a writer spelled them.
fn xattrs(node: &Node) -> Vec<(std::ffi::OsString, Option<Vec<u8>>)> {
    node.extended_attributes
        .iter()
        .map(|x| (x.os_name(), x.value_bytes()))
        .collect()
}

impl Differ<'_> {
    fn tree(&self, id: Option<&BlobId>) -> Result<Tree> {
        match id {
            Some(id) => self.trees.read(id),
            None => Ok(Tree::default()),
        }
    }

    fn count(side: &mut DiffSide, kind: NodeKind) {
        match kind {
            NodeKind::File => side.files += 1,
            NodeKind::Dir => side.dirs += 1,
            _ => side.others += 1,
        }
    }

    /// Reports `node` and everything below it as added or removed.
    fn one_sided(&mut self, parent: &str, node: &Node, modifier: Modifier) -> Result<()> {
        crate::tree::within_depth(parent.matches('/').count(), &parent)?;
        let path = child_path(parent, node);
        let side = if modifier == Modifier::Added {
            &mut self.stats.added
        } else {
            &mut self.stats.removed
        };
        Self::count(side, node.kind);
        (self.emit)(&Change {
            path: path.clone(),
            modifier,
            what: Vec::new(),
        })?;
        if node.kind == NodeKind::Dir && node.subtree.is_some() {
            let tree = self.tree(node.subtree.as_ref())?;
            for child in &tree.nodes {
                self.one_sided(&path, child, modifier)?;
            }
        }
        Ok(())
    }

    fn compare(&mut self, parent: &str, a: &Tree, b: &Tree) -> Result<()> {
        crate::tree::within_depth(parent.matches('/').count(), &parent)?;
        let (mut i, mut j) = (0, 0);
        loop {
            let order = match (a.nodes.get(i), b.nodes.get(j)) {
                (None, None) => return Ok(()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => x.os_name().cmp(&y.os_name()),
            };
            match order {
                Ordering::Less => {
                    let node = &a.nodes[i];
                    self.one_sided(parent, node, Modifier::Removed)?;
                    i += 1;
                }
                Ordering::Greater => {
                    let node = &b.nodes[j];
                    self.one_sided(parent, node, Modifier::Added)?;
                    j += 1;
                }
                Ordering::Equal => {
                    let (x, y) = (&a.nodes[i], &b.nodes[j]);
                    self.compare_nodes(parent, x, y)?;
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    fn compare_nodes(&mut self, parent: &str, a: &Node, b: &Node) -> Result<()> {
        if a.kind != b.kind {
            self.stats.type_changed += 1;
            (self.emit)(&Change {
                path: child_path(parent, b),
                modifier: Modifier::TypeChanged,
                what: vec!["type"],
            })?;
            // What was below a directory is gone, or new below it.
            for (node, modifier) in [(a, Modifier::Removed), (b, Modifier::Added)] {
                if node.kind == NodeKind::Dir {
                    let path = child_path(parent, node);
                    let tree = self.tree(node.subtree.as_ref())?;
                    for child in &tree.nodes {
                        self.one_sided(&path, child, modifier)?;
                    }
                }
            }
            return Ok(());
        }
        let meta = if self.options.metadata {
            metadata_changes(a, b)
        } else {
            Vec::new()
        };
        let path = child_path(parent, b);
        if content_changed(a, b) {
            if a.kind == NodeKind::File {
                self.stats.changed_files += 1;
            } else {
                self.stats.changed_others += 1;
            }
            let mut what = vec!["content"];
            what.extend(meta);
            (self.emit)(&Change {
                path: path.clone(),
                modifier: Modifier::Modified,
                what,
            })?;
        } else if !meta.is_empty() {
            self.stats.metadata_changed += 1;
            (self.emit)(&Change {
                path: path.clone(),
                modifier: Modifier::Metadata,
                what: meta,
            })?;
        }
        if a.kind == NodeKind::Dir && a.subtree != b.subtree {
            let ta = self.tree(a.subtree.as_ref())?;
            let tb = self.tree(b.subtree.as_ref())?;
            self.compare(&path, &ta, &tb)?;
        }
        Ok(())
    }
}

/// Every blob (trees and content) reachable from `root`, each tree read
/// once and measured into `extents`.
fn reachable(
    reader: &TreeReader<'_>,
    root: &BlobId,
    extents: &mut Extents,
) -> Result<(HashSet<BlobId>, HashSet<BlobId>)> {
    let mut trees = HashSet::new();
    let mut data = HashSet::new();
    let mut stack = vec![*root];
    while let Some(id) = stack.pop() {
        if !trees.insert(id) {
            continue;
        }
        let tree = reader.read(&id)?;
        extents.add_walked(id, &tree)?;
        for node in tree.nodes {
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
            data.extend(node.content.into_iter().flatten());
        }
    }
    Ok((trees, data))
}

/// Compares the trees `a` (older) and `b` (newer), calling `emit` for every
/// change in path order, and returns the summary.
pub fn diff(
    repo: &Repository,
    index: &Index,
    a: &BlobId,
    b: &BlobId,
    options: DiffOptions,
    emit: &mut dyn FnMut(&Change) -> Result<()>,
) -> Result<DiffStats> {
    let trees = TreeReader::new(repo, index);
    // Every tree of both sides is read anyway (for the blob counts): read
    // them first, so trees listing each other into more entries than any
    // file system holds are refused as damage, as restore refuses them,
    // before the comparison expands a side it reports whole.
    let mut extents = Extents::default();
    let (trees_a, data_a) = reachable(&trees, a, &mut extents)?;
    let (trees_b, data_b) = reachable(&trees, b, &mut extents)?;
    drop(extents);
    let mut differ = Differ {
        trees: &trees,
        options,
        stats: DiffStats::default(),
        emit,
    };
    if a != b {
        let ta = differ.tree(Some(a))?;
        let tb = differ.tree(Some(b))?;
        differ.compare("/", &ta, &tb)?;
    }
    let mut stats = differ.stats;
    let size = |id: &BlobId| index.get(id).map_or(0, |l| u64::from(l.raw_len));
    for (side, trees_x, data_x, trees_y, data_y) in [
        (&mut stats.added, &trees_b, &data_b, &trees_a, &data_a),
        (&mut stats.removed, &trees_a, &data_a, &trees_b, &data_b),
    ] {
        for id in trees_x.difference(trees_y) {
            side.tree_blobs += 1;
            side.bytes += size(id);
        }
        for id in data_x.difference(data_y) {
            side.data_blobs += 1;
            side.bytes += size(id);
        }
    }
    Ok(stats)
}
