//! Finding files by name or path in snapshots, as `restic find` does.
//!
//! A pattern without `/` is a glob matched against each entry's name (`*.log`,
//! `notes-202?.txt`); a pattern with `/` is matched against the entry's whole
//! path in the snapshot, which starts with `/` (`/home/*/notes.txt`). There `*`
//! and `?` do not cross a `/`, `**` does. A path pattern that does not start
//! with `/` may match at any depth, as if it started with `**/`. Every kind
//! of entry can match, directories included; a directory that matches is
//! still searched.
//!
//! Snapshots share most of their trees. A [`Finder`] searching several of
//! them remembers, per directory tree, the matches found below it, and does
//! not read that tree (or anything under it) again when a later snapshot
//! holds it unchanged.
#![warn(clippy::indexing_slicing, clippy::unwrap_used)]

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::index::Index;
use crate::pattern::{self, PatternSet};
use crate::repository::Repository;
use crate::tree::{Extents, MAX_DEPTH, Node, NodeKind};
use crate::tree_reader::TreeReader;
use serde::Serialize;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    /// Glob patterns; an entry matching any of them is reported. They
    /// match the bytes of names and paths; one that is not UTF-8 names an
    /// entry literally (see `crate::pattern`).
    pub patterns: Vec<std::ffi::OsString>,
    /// Match regardless of case.
    pub ignore_case: bool,
    /// Only entries modified at or after this time (restic's `--oldest`).
    pub oldest: Option<jiff::Timestamp>,
    /// Only entries modified at or before this time (restic's `--newest`).
    pub newest: Option<jiff::Timestamp>,
}

/// One entry found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    /// Absolute path in the snapshot (lossy UTF-8), without a trailing `/`.
    pub path: String,
    /// Kind of entry.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Content size (0 for anything but files).
    pub size: u64,
    /// Modification time.
    pub mtime: jiff::Timestamp,
    /// Permission and special bits.
    pub mode: u32,
    /// Access time, where the backup recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atime: Option<jiff::Timestamp>,
    /// Status change time.
    pub ctime: jiff::Timestamp,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name, when it was resolvable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Group name, when it was resolvable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Inode number (0: not recorded).
    #[serde(skip_serializing_if = "is_zero")]
    pub inode: u64,
    /// Device of the containing file system (0: not recorded).
    #[serde(skip_serializing_if = "is_zero")]
    pub device_id: u64,
    /// Hard link count (0: not recorded).
    #[serde(skip_serializing_if = "is_zero")]
    pub links: u64,
    /// A symlink's target (lossy UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linktarget: Option<String>,
}

/// restic omits these fields when zero (`omitempty`).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Match {
    fn new(node: &Node, path: String) -> Self {
        Self {
            path,
            kind: node.kind,
            size: node.size,
            mtime: node.mtime,
            mode: node.mode,
            atime: node.atime,
            ctime: node.ctime,
            uid: node.uid,
            gid: node.gid,
            user: node.user.clone(),
            group: node.group.clone(),
            inode: node.inode,
            device_id: node.device_id,
            links: node.links,
            linktarget: node.linktarget.clone(),
        }
    }

    /// This match, whose path is relative to `dir`, with its path under `dir`.
    fn under(&self, dir: &str) -> Self {
        Self {
            path: child_path(dir, &self.path),
            ..self.clone()
        }
    }
}

/// `dir/name`, where `dir` is `/` or an absolute path without a trailing
/// `/`, or a relative path.
fn child_path(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// `dir/name` as bytes, as [`child_path`].
fn child_path_raw(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.ends_with(b"/") {
        [dir, name].concat()
    } else {
        [dir, b"/", name].concat()
    }
}

/// Compiled patterns: by name, and by path.
struct Patterns {
    names: PatternSet,
    paths: PatternSet,
    /// `--ignore-case`: patterns were lower-cased by Unicode's rules, and
    /// so is every name and path before matching (as restic's `find -i`
    /// lower-cases both); the globs' own case folding covers ASCII only.
    fold: bool,
}

impl Patterns {
    fn new(options: &FindOptions) -> Result<Self> {
        if options.patterns.is_empty() {
            return Err(Error::InvalidInput("find: no pattern given".into()));
        }
        let mut names = Vec::new();
        let mut paths = Vec::new();
        for raw in &options.patterns {
            // `/src/a/` names the directory `/src/a`: paths have no trailing `/`.
            let folded;
            let mut pattern = if options.ignore_case {
                folded = pattern::fold_case(raw.as_bytes());
                &folded[..]
            } else {
                raw.as_bytes()
            };
            while let Some(rest) = pattern.strip_suffix(b"/") {
                pattern = rest;
            }
            if pattern.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "invalid pattern {raw:?}: it matches nothing"
                )));
            }
            let (set, any_depth) = if !pattern.contains(&b'/') {
                (&mut names, false)
            } else {
                (&mut paths, !pattern.starts_with(b"/"))
            };
            let compiled = pattern::compile(pattern, any_depth, options.ignore_case)
                .map_err(|e| Error::InvalidInput(format!("invalid pattern {e}")))?;
            set.push(compiled);
        }
        let build = |set: Vec<pattern::Compiled>| {
            PatternSet::new(set).map_err(|e| Error::InvalidInput(format!("invalid patterns: {e}")))
        };
        Ok(Self {
            names: build(names)?,
            paths: build(paths)?,
            fold: options.ignore_case,
        })
    }

    fn is_match(&self, name: impl AsRef<[u8]>, path: impl AsRef<[u8]>) -> bool {
        let (name, path) = (name.as_ref(), path.as_ref());
        if self.fold {
            let (name, path) = (pattern::fold_case(name), pattern::fold_case(path));
            return self.names.is_match(&name)
                || (!self.paths.is_empty() && self.paths.is_match(&path));
        }
        self.names.is_match(name) || (!self.paths.is_empty() && self.paths.is_match(path))
    }
}

/// A directory's matches are remembered only when it has at most this many
/// below it: enough for the needle-in-a-haystack searches `find` is for,
/// while a pattern matching nearly everything (`*`) keeps nothing.
const MEMO_MATCHES_PER_DIR: usize = 64;
/// Directories remembered: ~64 bytes each when nothing matched below them
/// (most of them), so at most ~16 MiB.
const MEMO_DIRS: usize = 256 * 1024;
/// Matches remembered across all directories (~100 bytes each).
const MEMO_MATCHES: usize = 64 * 1024;

/// Searches snapshot trees; reuse one for several snapshots of a
/// repository.
///
/// Why it remembers matches per directory: consecutive snapshots mostly
/// hold the same directory trees, and reading a tree (a fetch, decryption,
/// decoding) is the whole cost of a search. Remembering for each directory
/// tree the matches found below it, with paths relative to it, lets a later
/// snapshot skip every unchanged directory, while output still streams as
/// trees are read. Memory is bounded (`MEMO_DIRS`, `MEMO_MATCHES`):
/// once full, further directories are simply read again. The one
/// `TreeReader` is kept across snapshots too, so on an object store a
/// tree pack fetched for one snapshot also serves the next ones while it
/// stays cached.
pub struct Finder<'a> {
    trees: TreeReader<'a>,
    patterns: Patterns,
    /// Entries modified outside `oldest..=newest` are not matches (their
    /// subtrees are still searched).
    oldest: Option<jiff::Timestamp>,
    newest: Option<jiff::Timestamp>,
    /// Relative matches below a directory tree, by [`Finder::memo_key`].
    memo: HashMap<[u8; 32], Vec<Match>>,
    /// Matches held in `memo`.
    memo_matches: usize,
    /// What the trees read expand to: trees listing each other into more
    /// entries than any file system holds are refused, not searched for
    /// ever (as restore does).
    extents: Extents,
}

impl<'a> Finder<'a> {
    /// Compiles the patterns; fails on an invalid one, or none.
    pub fn new(repo: &'a Repository, index: &'a Index, options: &FindOptions) -> Result<Self> {
        Ok(Self {
            trees: TreeReader::new(repo, index),
            patterns: Patterns::new(options)?,
            oldest: options.oldest,
            newest: options.newest,
            memo: HashMap::new(),
            memo_matches: 0,
            extents: Extents::default(),
        })
    }

    /// Searches the snapshot whose root tree is `tree`, calling `on_match`
    /// for each entry found, in path order; returns how many were found.
    pub fn find(
        &mut self,
        tree: &BlobId,
        on_match: &mut dyn FnMut(&Match) -> Result<()>,
    ) -> Result<u64> {
        let (count, _) = self.search(tree, "/", b"/", 0, on_match)?;
        Ok(count)
    }

    /// Under name patterns only, what is found below a tree does not depend
    /// on where the tree is, and the tree id is the key. Path patterns
    /// depend on the directory's path as well: the key then hashes both
    /// (its exact bytes: two names can read the same in lossy UTF-8).
    fn memo_key(&self, tree: &BlobId, raw_dir: &[u8]) -> [u8; 32] {
        if self.patterns.paths.is_empty() {
            return tree.0;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&tree.0);
        hasher.update(raw_dir);
        *hasher.finalize().as_bytes()
    }

    /// Searches the directory tree `tree` at path `dir`. Returns how many
    /// matches it reported and, when there are at most
    /// [`MEMO_MATCHES_PER_DIR`], those matches with paths relative to `dir`
    /// (for the parent to remember). `raw_dir` is `dir` as the exact bytes
    /// patterns match, `depth` the nesting of `tree` below the snapshot's
    /// root tree.
    fn search(
        &mut self,
        tree: &BlobId,
        dir: &str,
        raw_dir: &[u8],
        depth: usize,
        on_match: &mut dyn FnMut(&Match) -> Result<()>,
    ) -> Result<(u64, Option<Vec<Match>>)> {
        // A frame per level: refuse what restore refuses rather than
        // overflow the stack.
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(
                format!("tree below {dir}"),
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let key = self.memo_key(tree, raw_dir);
        if let Some(found) = self.memo.get(&key) {
            for m in found {
                on_match(&m.under(dir))?;
            }
            return Ok((found.len() as u64, Some(found.clone())));
        }
        let mut listing = self.trees.read(tree)?;
        self.extents.add_walked(*tree, &listing)?;
        let mut count = 0u64;
        let mut relative = Some(Vec::new());
        for node in &mut listing.nodes {
            // Shown and searched as restore and `ls` see it.
            node.legacy_ancestor_as_dir();
            let node = &*node;
            let path = child_path(dir, &node.name);
            let name = node.os_name();
            let raw_path = child_path_raw(raw_dir, name.as_bytes());
            let in_time = self.oldest.is_none_or(|o| node.mtime >= o)
                && self.newest.is_none_or(|n| node.mtime <= n);
            if in_time && self.patterns.is_match(name.as_bytes(), &raw_path) {
                let found = Match::new(node, path.clone());
                on_match(&found)?;
                count += 1;
                keep(
                    &mut relative,
                    vec![Match {
                        path: node.name.clone(),
                        ..found
                    }],
                );
            }
            if node.kind == NodeKind::Dir
                && let Some(subtree) = &node.subtree
            {
                let (below, matches) =
                    self.search(subtree, &path, &raw_path, depth + 1, on_match)?;
                count += below;
                match matches {
                    Some(matches) if relative.is_some() => keep(
                        &mut relative,
                        matches.iter().map(|m| m.under(&node.name)).collect(),
                    ),
                    _ => relative = None,
                }
            }
        }
        if let Some(found) = &relative
            && self.memo.len() < MEMO_DIRS
            && self.memo_matches + found.len() <= MEMO_MATCHES
        {
            self.memo_matches += found.len();
            self.memo.insert(key, found.clone());
        }
        Ok((count, relative))
    }
}

/// Adds `more` to `relative` unless that makes too many to remember (then
/// nothing is kept).
fn keep(relative: &mut Option<Vec<Match>>, more: Vec<Match>) {
    if let Some(list) = relative {
        if list.len() + more.len() > MEMO_MATCHES_PER_DIR {
            *relative = None;
        } else {
            list.extend(more);
        }
    }
}

/// Searches one snapshot's tree (see [`Finder`] to search several).
pub fn find(
    repo: &Repository,
    index: &Index,
    tree: &BlobId,
    options: &FindOptions,
    on_match: &mut dyn FnMut(&Match) -> Result<()>,
) -> Result<u64> {
    Finder::new(repo, index, options)?.find(tree, on_match)
}

/// What `find --blob`, `--tree` and `--pack` look for: object ids, or hex
/// prefixes of them (as restic takes them).
#[derive(Debug, Clone, Default)]
pub struct ObjectQuery {
    /// Data blobs: found in the files whose content lists them.
    pub blobs: Vec<String>,
    /// Trees: found as the directories they list (the root as `/`).
    pub trees: Vec<String>,
}

/// The kind of object an [`ObjectMatch`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    /// A data blob, part of a file's content.
    Blob,
    /// A tree, a directory's listing.
    Tree,
}

/// One place an object is found in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectMatch {
    /// What it is.
    pub object_type: ObjectType,
    /// Its id.
    pub id: BlobId,
    /// The file holding the blob, or the directory the tree lists (lossy
    /// UTF-8).
    pub path: String,
    /// For a blob, the tree listing the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_tree: Option<BlobId>,
}

/// Whether `id` is a hex object id or a prefix of one.
#[must_use]
pub fn is_id_prefix(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Searches snapshot trees for the places objects are used: which files
/// hold a data blob, where a tree is. Reuse one for several snapshots: a
/// tree with nothing found at or below it is not read again.
pub struct ObjectFinder<'a> {
    trees: TreeReader<'a>,
    blobs: Vec<String>,
    tree_ids: Vec<String>,
    /// Trees nothing sought is at or below (32 bytes each, fewer than the
    /// index's entries).
    barren: std::collections::HashSet<BlobId>,
    /// As [`Finder`]'s: trees listing each other into more entries than
    /// any file system holds are refused.
    extents: Extents,
}

impl<'a> ObjectFinder<'a> {
    /// Fails on an id that is not hex, or no id at all.
    pub fn new(repo: &'a Repository, index: &'a Index, query: &ObjectQuery) -> Result<Self> {
        if query.blobs.is_empty() && query.trees.is_empty() {
            return Err(Error::InvalidInput("find: no object id given".into()));
        }
        let ids = |list: &[String]| -> Result<Vec<String>> {
            list.iter()
                .map(|id| {
                    if is_id_prefix(id) {
                        Ok(id.to_ascii_lowercase())
                    } else {
                        Err(Error::InvalidInput(format!(
                            "{id:?} is not an object id (hex, up to 64 characters)"
                        )))
                    }
                })
                .collect()
        };
        Ok(Self {
            trees: TreeReader::new(repo, index),
            blobs: ids(&query.blobs)?,
            tree_ids: ids(&query.trees)?,
            barren: std::collections::HashSet::new(),
            extents: Extents::default(),
        })
    }

    /// Searches the snapshot whose root tree is `tree`, calling `on_match`
    /// for each place found, in path order; returns how many were found.
    pub fn find(
        &mut self,
        tree: &BlobId,
        on_match: &mut dyn FnMut(&ObjectMatch) -> Result<()>,
    ) -> Result<u64> {
        let mut count = 0;
        if sought(&self.tree_ids, tree) {
            on_match(&ObjectMatch {
                object_type: ObjectType::Tree,
                id: *tree,
                path: "/".into(),
                parent_tree: None,
            })?;
            count += 1;
        }
        Ok(count + self.search(tree, "/", 0, on_match)?)
    }

    fn search(
        &mut self,
        tree: &BlobId,
        dir: &str,
        depth: usize,
        on_match: &mut dyn FnMut(&ObjectMatch) -> Result<()>,
    ) -> Result<u64> {
        if self.barren.contains(tree) {
            return Ok(0);
        }
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(
                format!("tree below {dir}"),
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let mut listing = self.trees.read(tree)?;
        self.extents.add_walked(*tree, &listing)?;
        let mut count = 0u64;
        for node in &mut listing.nodes {
            node.legacy_ancestor_as_dir();
            let node = &*node;
            let path = child_path(dir, &node.name);
            if node.kind == NodeKind::File && !self.blobs.is_empty() {
                // Each blob sought once per file, though the file may
                // list it many times (a run of zeros): restic 0.14 prints
                // a line per listing, thousands of identical ones for a
                // sparse image. Every distinct blob, not only the first
                // found (what restic's first `find --blob` did): searching for
                // several blobs, or a pack's, each must be placed.
                let mut reported: Vec<BlobId> = Vec::new();
                for id in node.content.iter().flatten() {
                    if sought(&self.blobs, id) && !reported.contains(id) {
                        reported.push(*id);
                        on_match(&ObjectMatch {
                            object_type: ObjectType::Blob,
                            id: *id,
                            path: path.clone(),
                            parent_tree: Some(*tree),
                        })?;
                        count += 1;
                    }
                }
            }
            if node.kind == NodeKind::Dir
                && let Some(subtree) = &node.subtree
            {
                if sought(&self.tree_ids, subtree) {
                    on_match(&ObjectMatch {
                        object_type: ObjectType::Tree,
                        id: *subtree,
                        path: path.clone(),
                        parent_tree: None,
                    })?;
                    count += 1;
                }
                count += self.search(subtree, &path, depth + 1, on_match)?;
            }
        }
        if count == 0 {
            self.barren.insert(*tree);
        }
        Ok(count)
    }
}

/// Whether `id` is one of `prefixes` (lower-case hex) or starts with one.
fn sought(prefixes: &[String], id: &BlobId) -> bool {
    if prefixes.is_empty() {
        return false;
    }
    let hex = id.to_hex();
    prefixes.iter().any(|p| hex.starts_with(p.as_str()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backup::Source;
    use crate::repository::InitOptions;
    use std::path::Path;
    use std::sync::Arc;

    fn options(patterns: &[&str], ignore_case: bool) -> FindOptions {
        FindOptions {
            patterns: patterns.iter().map(|p| (*p).into()).collect(),
            ignore_case,
            ..FindOptions::default()
        }
    }

    #[test]
    fn names_and_paths_match_as_documented() {
        let p = Patterns::new(&options(&["*.log", "/src/a/*.txt", "b/*.md"], false)).unwrap();
        assert!(p.is_match("x.log", "/deep/down/x.log"));
        assert!(!p.is_match("x.LOG", "/x.LOG"));
        assert!(p.is_match("y.txt", "/src/a/y.txt"));
        assert!(!p.is_match("y.txt", "/src/a/sub/y.txt"), "* crosses no /");
        assert!(!p.is_match("y.txt", "/other/src/a/y.txt"), "anchored at /");
        assert!(
            p.is_match("r.md", "/any/where/b/r.md"),
            "relative: any depth"
        );
        assert!(p.is_match("r.md", "/b/r.md"));
        assert!(!p.is_match("r.md", "/ab/r.md"));
        let i = Patterns::new(&options(&["*.log", "/SRC/*"], true)).unwrap();
        assert!(i.is_match("X.LOG", "/X.LOG"));
        assert!(i.is_match("a", "/src/a"));
        // Unicode, both ways round, as restic's `find -i` lower-cases both.
        let u = Patterns::new(&options(&["ärger*", "/DÉJÀ/*"], true)).unwrap();
        assert!(u.is_match("ÄRGER.txt", "/x/ÄRGER.txt"));
        assert!(u.is_match("vu", "/déjà/vu"));
        assert!(!u.is_match("ärmel", "/x/ärmel"));
        assert!(Patterns::new(&options(&[], false)).is_err());
        assert!(Patterns::new(&options(&["/"], false)).is_err());
        assert!(Patterns::new(&options(&["a[b"], false)).is_err());
    }

    fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Backs up `root` (twice, with a change between) and searches both
    /// snapshots with one finder, then each with a fresh one.
    #[test]
    fn finds_in_several_snapshots_with_and_without_memo() {
        let (_, repo) = crate::test_support::memory_repo(InitOptions::default());
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        write(&root.join("a/one.log"), b"1");
        write(&root.join("a/b/two.log"), b"22");
        write(&root.join("c/three.txt"), b"333");
        let backup = |repo: &Arc<Repository>| {
            crate::test_support::backup_source(repo, Source::Paths(vec![root.clone()])).tree
        };
        let first = backup(&repo);
        write(&root.join("c/four.log"), b"4444");
        let second = backup(&repo);
        let index = repo.load_index().unwrap();
        let prefix = root.to_string_lossy().into_owned();
        let expect = |names: &[&str]| -> Vec<String> {
            names.iter().map(|n| format!("{prefix}/{n}")).collect()
        };

        let collect = |finder: &mut Finder<'_>, tree: &BlobId| {
            let mut found = Vec::new();
            let n = finder
                .find(tree, &mut |m| {
                    found.push(m.clone());
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, found.len() as u64);
            found
        };
        let paths = |found: &[Match]| found.iter().map(|m| m.path.clone()).collect::<Vec<_>>();
        for patterns in [&["*.LOG"][..], &["**/*.log"][..]] {
            let opts = options(patterns, true);
            let fresh =
                |tree: &BlobId| collect(&mut Finder::new(&repo, &index, &opts).unwrap(), tree);
            let (fresh_first, fresh_second) = (fresh(&first), fresh(&second));
            assert_eq!(paths(&fresh_first), expect(&["a/b/two.log", "a/one.log"]));
            assert_eq!(
                paths(&fresh_second),
                expect(&["a/b/two.log", "a/one.log", "c/four.log"])
            );
            let sizes: Vec<u64> = fresh_second.iter().map(|m| m.size).collect();
            assert_eq!(sizes, [2, 1, 4]);
            assert!(fresh_second.iter().all(|m| m.kind == NodeKind::File));

            // One finder for both: `a` comes from memory for the second
            // snapshot, and all of the first one when repeated.
            let mut finder = Finder::new(&repo, &index, &opts).unwrap();
            assert_eq!(collect(&mut finder, &first), fresh_first);
            assert!(finder.memo.contains_key(&finder.memo_key(&first, b"/")));
            assert_eq!(collect(&mut finder, &second), fresh_second);
            assert_eq!(collect(&mut finder, &first), fresh_first);
        }

        let mut dirs = Vec::new();
        find(
            &repo,
            &index,
            &second,
            &options(&["b", "c/"], false),
            &mut |m| {
                dirs.push((m.path.clone(), m.kind));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            dirs,
            [
                (format!("{prefix}/a/b"), NodeKind::Dir),
                (format!("{prefix}/c"), NodeKind::Dir)
            ]
        );
        let none = find(
            &repo,
            &index,
            &second,
            &options(&["nothing"], false),
            &mut |_| panic!("nothing matches"),
        )
        .unwrap();
        assert_eq!(none, 0);
    }

    /// A file is reported once for each distinct blob sought in it, not
    /// once per listing of a blob (a run of zeros lists one blob many
    /// times), nor only for the first blob found (which would hide the
    /// other blobs sought as if no file held them).
    #[test]
    fn object_finder_reports_each_sought_blob_once_per_file() {
        let (_, repo) = crate::test_support::memory_repo(InitOptions {
            chunker: Some(crate::test_support::SMALL_CHUNKER),
            ..InitOptions::default()
        });
        let mut data = vec![0u8; 200_000];
        data.extend((0..60_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let snapshot = crate::test_support::backup_stream(&repo, "data.bin", &data);
        let index = repo.load_index().unwrap();
        let node = crate::restore::find_node(&repo, &index, &snapshot.tree, "/data.bin").unwrap();
        let content = node.content.clone().unwrap();
        let zeros = *content.first().unwrap();
        assert!(
            content.iter().filter(|id| **id == zeros).count() > 1,
            "the zeros are one blob listed several times"
        );
        let last = *content.last().unwrap();
        assert_ne!(last, zeros);

        let query = ObjectQuery {
            blobs: vec![zeros.to_hex(), last.to_hex()[..10].to_owned()],
            trees: Vec::new(),
        };
        let mut found = Vec::new();
        let n = ObjectFinder::new(&repo, &index, &query)
            .unwrap()
            .find(&snapshot.tree, &mut |m| {
                found.push((m.id, m.path.clone()));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            found,
            [
                (zeros, "/data.bin".to_owned()),
                (last, "/data.bin".to_owned())
            ]
        );
        assert_eq!(n, 2);
    }
}
