//! Reading the file system into nodes: metadata capture and exclusion rules.

use crate::pattern::Pattern;
use crate::tree::{ExtendedAttribute, Node, NodeKind};
use base64::Engine as _;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

/// Exclusion patterns, with restic's meaning: a pattern without `/` matches
/// a file name at any depth; one with `/` matches the whole path (relative
/// patterns may start at any depth); a trailing `/` matches directories
/// only; a leading `!` includes again what an earlier pattern excluded (the
/// last pattern that matches decides; a path below an excluded directory
/// is never visited, so `!` cannot bring it back).
#[derive(Debug, Default)]
pub struct Excludes {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    pattern: Pattern,
    dir_only: bool,
    /// Matched against the whole path, not the name.
    by_path: bool,
    /// `!pattern`: includes.
    negated: bool,
}

impl Excludes {
    /// Compiles patterns. They are globs matched against the bytes of
    /// names and paths; one that is not UTF-8 names a path literally (see
    /// [`crate::pattern`]).
    pub fn new(patterns: &[OsString]) -> Result<Self, String> {
        Self::default().with(patterns, false)
    }

    /// Adds patterns that match regardless of case (`--iexclude`).
    pub fn case_insensitive(self, patterns: &[OsString]) -> Result<Self, String> {
        self.with(patterns, true)
    }

    fn with(mut self, patterns: &[OsString], case_insensitive: bool) -> Result<Self, String> {
        for raw in patterns {
            let raw = raw.as_bytes();
            let raw = match std::str::from_utf8(raw) {
                Ok(text) => text.trim().as_bytes(),
                Err(_) => raw.trim_ascii(),
            };
            if raw.is_empty() || raw.starts_with(b"#") {
                continue;
            }
            let (negated, raw) = match raw.strip_prefix(b"!") {
                Some(rest) if !rest.is_empty() => (true, rest),
                _ => (false, raw),
            };
            let dir_only = raw.ends_with(b"/") && raw.len() > 1;
            let mut pat = raw;
            while pat.ends_with(b"/") {
                pat = pat.get(..pat.len() - 1).unwrap_or_default();
            }
            let by_path = pat.contains(&b'/');
            let pattern = Pattern::new(pat, by_path && !pat.starts_with(b"/"), case_insensitive)
                .map_err(|e| format!("invalid exclude pattern {e}"))?;
            self.rules.push(Rule {
                pattern,
                dir_only,
                by_path,
                negated,
            });
        }
        Ok(self)
    }

    /// Whether `path` (absolute) should be skipped.
    #[must_use]
    pub fn is_excluded(&self, path: &Path, is_dir: bool) -> bool {
        let name = path.file_name().map(Path::new);
        self.rules
            .iter()
            .rev()
            .find(|r| {
                (is_dir || !r.dir_only)
                    && if r.by_path {
                        r.pattern.is_match(path)
                    } else {
                        name.is_some_and(|n| r.pattern.is_match(n))
                    }
            })
            .is_some_and(|r| !r.negated)
    }
}

/// CACHEDIR.TAG signature (bford.info/cachedir).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Whether a directory carries a valid CACHEDIR.TAG.
#[must_use]
pub fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(dir.join("CACHEDIR.TAG")) else {
        return false;
    };
    let mut buf = [0u8; 43];
    f.read_exact(&mut buf).is_ok() && buf == CACHEDIR_SIGNATURE
}

fn timestamp(secs: i64, nanos: i64) -> jiff::Timestamp {
    let nanos = i32::try_from(nanos).unwrap_or(0);
    jiff::Timestamp::new(secs, nanos).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Whether a directory holds a file named `marker`, given as `NAME` or
/// `NAME:HEADER` (restic's `--exclude-if-present`): with a header, the
/// file must also start with those bytes.
#[must_use]
pub fn has_marker(dir: &Path, marker: impl AsRef<OsStr>) -> bool {
    use std::io::Read;
    let marker = marker.as_ref().as_bytes();
    let (name, header) = match marker.iter().position(|&b| b == b':') {
        Some(at) => (marker.get(..at).unwrap_or_default(), marker.get(at + 1..)),
        None => (marker, None),
    };
    let path = dir.join(OsStr::from_bytes(name));
    let Some(header) = header else {
        return std::fs::symlink_metadata(&path).is_ok();
    };
    let Ok(file) = std::fs::File::open(&path) else {
        return false;
    };
    let mut start = Vec::with_capacity(header.len());
    file.take(header.len() as u64)
        .read_to_end(&mut start)
        .is_ok_and(|_| start == header)
}

/// Caches uid/gid → name lookups.
#[derive(Default)]
pub(crate) struct Names {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

impl Names {
    fn user(&self, uid: u32) -> String {
        let mut cache = self.users.lock().expect("not poisoned");
        cache
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_default()
            })
            .clone()
    }

    fn group(&self, gid: u32) -> String {
        let mut cache = self.groups.lock().expect("not poisoned");
        cache
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_default()
            })
            .clone()
    }
}

/// Builds a node (without content or subtree) from a path's metadata.
pub(crate) fn node_from_metadata(path: &Path, meta: &Metadata, names: &Names) -> Option<Node> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        NodeKind::File
    } else if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_block_device() {
        NodeKind::Dev
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        return None;
    };
    let mut node = Node::new("x", kind);
    if let Some(name) = path.file_name() {
        node.set_name(name);
    }
    node.mode = meta.mode() & 0o7777;
    node.mtime = timestamp(meta.mtime(), meta.mtime_nsec());
    node.ctime = timestamp(meta.ctime(), meta.ctime_nsec());
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.user = names.user(meta.uid());
    node.group = names.group(meta.gid());
    node.inode = meta.ino();
    node.device_id = meta.dev();
    node.links = meta.nlink();
    if kind == NodeKind::File {
        node.size = meta.size();
    }
    if matches!(kind, NodeKind::Dev | NodeKind::Chardev) {
        node.device = Some(meta.rdev());
    }
    if kind == NodeKind::Symlink
        && let Ok(target) = std::fs::read_link(path)
    {
        node.set_link_target(target.as_os_str());
    }
    node.extended_attributes = read_xattrs(path);
    Some(node)
}

/// The entry's own extended attributes: a symlink's, not its target's
/// (listing and reading must both not follow it).
fn read_xattrs(path: &Path) -> Vec<ExtendedAttribute> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<ExtendedAttribute> = names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some(ExtendedAttribute {
                name: name.to_string_lossy().into_owned(),
                value: base64::engine::general_purpose::STANDARD.encode(value),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Which metadata must match the parent snapshot's for a file to be reused
/// without reading it. Size and mtime always count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeDetection {
    /// Ignore the inode number: file systems that renumber on every mount
    /// (FUSE, some network file systems) would otherwise re-read all files.
    pub ignore_inode: bool,
    /// Ignore the status change time (changed by chmod, chown, link count).
    pub ignore_ctime: bool,
}

/// Whether a file can be reused from the parent snapshot without reading:
/// same type, size, mtime, ctime and inode (as restic compares), minus what
/// `detection` ignores.
#[must_use]
pub(crate) fn unchanged(old: &Node, new: &Node, detection: ChangeDetection) -> bool {
    old.kind == NodeKind::File
        && new.kind == NodeKind::File
        && old.size == new.size
        && old.mtime == new.mtime
        && (detection.ignore_ctime || old.ctime == new.ctime)
        && (detection.ignore_inode || old.inode == new.inode)
        && old.content.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_names_paths_and_dirs() {
        let ex = Excludes::new(&[
            "*.tmp".into(),
            "cache/".into(),
            "/srv/skip".into(),
            "a/b".into(),
        ])
        .unwrap();
        assert!(ex.is_excluded(Path::new("/x/y/z.tmp"), false));
        assert!(ex.is_excluded(Path::new("/x/cache"), true));
        assert!(!ex.is_excluded(Path::new("/x/cache"), false));
        assert!(ex.is_excluded(Path::new("/srv/skip"), true));
        assert!(!ex.is_excluded(Path::new("/other/srv/skip"), true));
        assert!(ex.is_excluded(Path::new("/q/a/b"), false));
        assert!(!ex.is_excluded(Path::new("/q/a/bc"), false));
        assert!(!ex.is_excluded(Path::new("/x/y/Z.TMP"), false));
    }

    #[test]
    fn a_negated_pattern_includes_again_and_the_last_match_decides() {
        let ex = Excludes::new(&[
            "*.log".into(),
            "!app.log".into(),
            "/srv/data/*".into(),
            "!/srv/data/keep".into(),
        ])
        .unwrap();
        assert!(ex.is_excluded(Path::new("/x/other.log"), false));
        assert!(!ex.is_excluded(Path::new("/x/app.log"), false));
        assert!(ex.is_excluded(Path::new("/srv/data/tmp"), true));
        assert!(!ex.is_excluded(Path::new("/srv/data/keep"), true));
        // Order matters: an exclusion after the negation wins again.
        let ex = Excludes::new(&["!app.log".into(), "*.log".into()]).unwrap();
        assert!(ex.is_excluded(Path::new("/x/app.log"), false));
    }

    #[test]
    fn case_insensitive_patterns_ignore_case_and_others_keep_it() {
        let ex = Excludes::new(&["*.log".into()])
            .unwrap()
            .case_insensitive(&["*.jpg".into(), "photos/raw/".into()])
            .unwrap();
        assert!(ex.is_excluded(Path::new("/a/IMG_1.JPG"), false));
        assert!(ex.is_excluded(Path::new("/a/Photos/RAW"), true));
        assert!(ex.is_excluded(Path::new("/a/x.log"), false));
        assert!(!ex.is_excluded(Path::new("/a/X.LOG"), false));
    }

    #[test]
    fn excludes_match_names_that_are_not_utf8() {
        let bytes = |b: &[u8]| OsStr::from_bytes(b).to_owned();
        let ex = Excludes::new(&["*.tmp".into(), bytes(b"/srv/\xff"), bytes(b"\xfe/")]).unwrap();
        assert!(ex.is_excluded(Path::new(&bytes(b"/x/\xff.tmp")), false));
        assert!(ex.is_excluded(Path::new(&bytes(b"/srv/\xff")), false));
        assert!(!ex.is_excluded(Path::new(&bytes(b"/srv/\xfe")), false));
        assert!(ex.is_excluded(Path::new(&bytes(b"/a/\xfe")), true));
        assert!(!ex.is_excluded(Path::new(&bytes(b"/a/\xfe")), false));
        let err = Excludes::new(&[bytes(b"*\xff")]).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(bytes(b"\xffmark")), b"").unwrap();
        assert!(has_marker(dir.path(), bytes(b"\xffmark")));
    }

    #[test]
    fn markers_match_by_name_and_optional_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".nobackup"), b"").unwrap();
        std::fs::write(dir.path().join("TAG"), b"Signature: yes\n").unwrap();
        assert!(has_marker(dir.path(), ".nobackup"));
        assert!(!has_marker(dir.path(), ".absent"));
        assert!(has_marker(dir.path(), "TAG:Signature: yes"));
        assert!(!has_marker(dir.path(), "TAG:Signature: no"));
        assert!(!has_marker(dir.path(), ".nobackup:x"));
    }

    #[test]
    fn change_detection_can_ignore_inode_and_ctime() {
        let mut old = Node::new("f", NodeKind::File);
        old.size = 3;
        old.inode = 7;
        old.content = Some(Vec::new());
        let mut new = old.clone();
        new.inode = 8;
        new.ctime = jiff::Timestamp::from_second(5).unwrap();
        let strict = ChangeDetection::default();
        assert!(unchanged(&old, &old, strict));
        assert!(!unchanged(&old, &new, strict));
        let lax = ChangeDetection {
            ignore_inode: true,
            ignore_ctime: false,
        };
        assert!(!unchanged(&old, &new, lax));
        let laxer = ChangeDetection {
            ignore_inode: true,
            ignore_ctime: true,
        };
        assert!(unchanged(&old, &new, laxer));
        new.size = 4;
        assert!(!unchanged(&old, &new, laxer));
    }
}
