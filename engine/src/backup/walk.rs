//! Reading the file system into nodes: metadata capture and exclusion rules.

use crate::pattern::Pattern;
use crate::tree::{ExtendedAttribute, Node, NodeKind};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

/// Exclusion patterns, mostly with restic's meaning: a pattern without `/`
/// matches a file name at any depth; one with `/` matches the whole path
/// (relative patterns may start at any depth); `x/**` matches `x` too; a
/// leading `!` includes again what an earlier pattern of the same list
/// excluded (the last pattern that matches decides; a path below an
/// excluded directory is never visited, so `!` cannot bring it back).
/// Patterns are cleaned first as restic cleans them (`a//b`, `./a`,
/// `a/./b`, `x/../a`). Vault's own: a trailing `/` matches directories
/// only (restic drops it: `cache/` excludes a file `cache` too), and globs
/// are globset's, so `[!a]` negates a class and `{a,b}` alternates (in
/// restic's Go `path.Match`, `[!a]` is a class of `!` and `a`, and braces
/// are literal).
///
/// The case-sensitive and the case-insensitive patterns are two lists, as
/// in restic: each `!` acts within its own list, and a path is excluded
/// when either list excludes it.
#[derive(Debug, Default)]
pub struct Excludes {
    exact: Vec<Rule>,
    ignoring_case: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    pattern: Pattern,
    /// `x/**` also matches `x` itself (restic's `**` may match nothing):
    /// `x`, compiled as the pattern was.
    stem: Option<Pattern>,
    dir_only: bool,
    /// Matched against the whole path, not the name.
    by_path: bool,
    /// `!pattern`: includes.
    negated: bool,
}

impl Rule {
    fn matches(&self, path: &Path, name: Option<&Path>, is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        if self.by_path {
            self.pattern.is_match(path) || self.stem.as_ref().is_some_and(|s| s.is_match(path))
        } else {
            name.is_some_and(|n| self.pattern.is_match(n))
        }
    }
}

impl Excludes {
    /// Compiles patterns, each taken as given (the lines of an exclude file
    /// are trimmed, stripped of comments and expanded by whoever reads
    /// it); empty ones are skipped. They are globs matched against the
    /// bytes of names and paths; one that is not UTF-8 names a path
    /// literally (see `crate::pattern`).
    pub fn new(patterns: &[OsString]) -> Result<Self, String> {
        let exact = rules(patterns, false)?;
        Ok(Self {
            exact,
            ignoring_case: Vec::new(),
        })
    }

    /// Adds patterns that match regardless of case (`--iexclude`), as a
    /// list of their own.
    pub fn case_insensitive(mut self, patterns: &[OsString]) -> Result<Self, String> {
        self.ignoring_case.extend(rules(patterns, true)?);
        Ok(self)
    }

    /// Whether `path` (absolute) should be skipped.
    #[must_use]
    pub fn is_excluded(&self, path: &Path, is_dir: bool) -> bool {
        let name = path.file_name().map(Path::new);
        let excludes = |rules: &[Rule]| {
            rules
                .iter()
                .rev()
                .find(|r| r.matches(path, name, is_dir))
                .is_some_and(|r| !r.negated)
        };
        excludes(&self.exact) || excludes(&self.ignoring_case)
    }
}

fn rules(patterns: &[OsString], case_insensitive: bool) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for raw in patterns {
        let raw = raw.as_bytes();
        if raw.is_empty() {
            continue;
        }
        let (negated, raw) = match raw.strip_prefix(b"!") {
            Some(rest) if !rest.is_empty() => (true, rest),
            _ => (false, raw),
        };
        let dir_only = raw.ends_with(b"/") && raw.len() > 1;
        let cleaned = crate::pattern::clean(raw);
        let pat = cleaned.strip_suffix(b"/").unwrap_or(&cleaned);
        let by_path = pat.contains(&b'/');
        let any_depth = by_path && !pat.starts_with(b"/");
        let compile = |p: &[u8]| {
            Pattern::new(p, any_depth, case_insensitive)
                .map_err(|e| format!("invalid exclude pattern {e}"))
        };
        let stem = match pat.strip_suffix(b"/**") {
            Some(stem) if !stem.is_empty() => Some(compile(stem)?),
            _ => None,
        };
        rules.push(Rule {
            pattern: compile(pat)?,
            stem,
            dir_only,
            by_path,
            negated,
        });
    }
    Ok(rules)
}

/// CACHEDIR.TAG signature (bford.info/cachedir).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Whether a directory carries a valid CACHEDIR.TAG.
#[must_use]
pub fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(dir.join(CACHEDIR_TAG)) else {
        return false;
    };
    let mut buf = [0u8; 43];
    f.read_exact(&mut buf).is_ok() && buf == CACHEDIR_SIGNATURE
}

const CACHEDIR_TAG: &str = "CACHEDIR.TAG";

/// What of a directory's content its markers keep (`--exclude-caches`,
/// `--exclude-if-present`): `None` when no marker applies, so everything;
/// else the one name kept, the marker file itself, as restic keeps it (a
/// restored tree then still carries its markers, and the next backup
/// still leaves the content out). Markers of two names in one directory
/// each exclude the other, as in restic: `Some(None)`, nothing is kept.
#[must_use]
pub(crate) fn marker_keeps(
    dir: &Path,
    exclude_caches: bool,
    markers: &[OsString],
) -> Option<Option<OsString>> {
    let mut kept: Option<Option<OsString>> = None;
    let mut applies = |name: &OsStr| {
        kept = match kept.take() {
            None => Some(Some(name.to_owned())),
            Some(Some(earlier)) if earlier == name => Some(Some(earlier)),
            Some(_) => Some(None),
        };
    };
    if exclude_caches && is_cache_dir(dir) {
        applies(OsStr::new(CACHEDIR_TAG));
    }
    for marker in markers.iter().filter(|m| has_marker(dir, m)) {
        applies(marker_name(marker));
    }
    kept
}

/// The file name of a `NAME[:HEADER]` marker.
/// Why `marker` (`NAME` or `NAME:HEADER`) cannot name a marker file: an
/// empty name (`--exclude-if-present ''`) was the directory itself, so
/// every directory counted as marked and the backup held no files; a name
/// with a `/` or `.`/`..` is no file in the directory either.
pub fn check_marker(marker: &OsStr) -> Result<(), String> {
    let name = marker_name(marker).as_bytes();
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(format!(
            "{:?} is no file name: give the name of the marker file (NAME or NAME:HEADER)",
            marker
        ));
    }
    Ok(())
}

fn marker_name(marker: &OsStr) -> &OsStr {
    let marker = marker.as_bytes();
    OsStr::from_bytes(marker.split(|&b| b == b':').next().unwrap_or_default())
}

/// A file time as the format holds it. Times outside jiff's range (years
/// -9999 to 9999, repo-format.md §0; tmpfs and ext4 hold later ones) are
/// stored as the nearest time it holds, with a problem naming the real
/// time: they were stored as 1970, silently.
fn timestamp(what: &str, secs: i64, nanos: i64, problems: &mut Vec<String>) -> jiff::Timestamp {
    let nanos = i32::try_from(nanos).unwrap_or(0);
    jiff::Timestamp::new(secs, nanos).unwrap_or_else(|_| {
        let nearest = if secs < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        };
        problems.push(format!(
            "{what} {} is outside the years -9999 to 9999 a snapshot holds; stored as {nearest}",
            civil_time(secs, nanos)
        ));
        nearest
    })
}

/// `secs.nanos` since 1970 as a proleptic Gregorian UTC date of any year
/// (`+20000-01-01T00:00:00.5Z`, `-10000-...`), for times jiff cannot hold.
fn civil_time(secs: i64, nanos: i32) -> String {
    // Howard Hinnant's days_from_civil inverse (public domain), in i128 so
    // no i64 second overflows.
    let secs = i128::from(secs);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}")
    };
    format!(
        "{year:+}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Whether a directory holds a file named `marker`, given as `NAME` or
/// `NAME:HEADER` (restic's `--exclude-if-present`): with a header, the
/// file must also start with those bytes.
#[must_use]
pub fn has_marker(dir: &Path, marker: impl AsRef<OsStr>) -> bool {
    use std::io::Read;
    let marker = marker.as_ref();
    let name = marker_name(marker);
    let header = marker.as_bytes().get(name.len() + 1..);
    let path = dir.join(name);
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
/// What of its metadata could not be recorded exactly (an extended
/// attribute that could not be read, a time out of range) is added to
/// `problems`: the node is still saved, and the backup reports it.
pub(crate) fn node_from_metadata(
    path: &Path,
    meta: &Metadata,
    names: &Names,
    problems: &mut Vec<String>,
) -> Option<Node> {
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
    node.mtime = timestamp("mtime", meta.mtime(), meta.mtime_nsec(), problems);
    node.ctime = timestamp("ctime", meta.ctime(), meta.ctime_nsec(), problems);
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
    node.extended_attributes = read_xattrs(path, problems);
    // A file's are read by the descriptor that reads its content, or taken
    // from the parent snapshot when it is unchanged (`inode_flags_of`).
    if kind == NodeKind::Dir {
        node.inode_flags = read_inode_flags(path, kind, problems);
    }
    Some(node)
}

/// The entry's inode flags (`lsattr`), only those a restore sets again
/// ([`crate::tree::RECORDED_INODE_FLAGS`]). Only files and directories:
/// the ioctl needs the entry open, and opening a device or a fifo acts on
/// it. A file system without the ioctl has no flags to lose; an entry that
/// cannot be opened (no permission, gone or swapped for a symlink since it
/// was listed) is reported by the read of its content or listing, or seen
/// by the next backup, not twice.
pub(crate) fn read_inode_flags(path: &Path, kind: NodeKind, problems: &mut Vec<String>) -> u32 {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    use std::os::fd::AsFd;
    // A directory may be reached through a symlink (an ancestor of a
    // backed-up path, recorded as the directory it leads to); DIRECTORY
    // opens nothing else. A file is never followed: what a symlink swapped
    // in since the listing leads to may be a device. NONBLOCK: nor does
    // the open wait on a fifo.
    let how = match kind {
        NodeKind::Dir => OFlags::DIRECTORY,
        _ => OFlags::NOFOLLOW,
    } | OFlags::RDONLY
        | OFlags::NONBLOCK
        | OFlags::NOCTTY
        | OFlags::CLOEXEC;
    match rustix::fs::open(path, how, Mode::empty()) {
        Ok(fd) => inode_flags_of(fd.as_fd(), problems),
        Err(Errno::ACCESS | Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => 0,
        Err(e) => {
            problems.push(format!(
                "inode flags (lsattr) not saved: {}",
                std::io::Error::from(e)
            ));
            0
        }
    }
}

/// [`read_inode_flags`] of an entry open already (a file being read).
pub(crate) fn inode_flags_of(fd: std::os::fd::BorrowedFd<'_>, problems: &mut Vec<String>) -> u32 {
    use rustix::io::Errno;
    match rustix::fs::ioctl_getflags(fd) {
        Ok(flags) => flags.bits() & crate::tree::RECORDED_INODE_FLAGS,
        Err(Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL) => 0,
        Err(e) => {
            problems.push(format!(
                "inode flags (lsattr) not saved: {}",
                std::io::Error::from(e)
            ));
            0
        }
    }
}

/// The entry's own extended attributes: a symlink's, not its target's
/// (listing and reading must both not follow it). Names are kept as bytes
/// (`name_raw` when not UTF-8). One that cannot be read is a problem; a
/// file system without attributes, or one removed since the listing, is
/// not.
fn read_xattrs(path: &Path, problems: &mut Vec<String>) -> Vec<ExtendedAttribute> {
    let unsupported = |e: &std::io::Error| e.raw_os_error() == Some(nix::libc::ENOTSUP);
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if unsupported(&e) => return Vec::new(),
        Err(e) => {
            problems.push(format!("listing its extended attributes: {e}"));
            return Vec::new();
        }
    };
    let mut out: Vec<ExtendedAttribute> = names
        .filter_map(|name| match xattr::get(path, &name) {
            Ok(value) => value.map(|v| ExtendedAttribute::new(&name, &v)),
            Err(e) if unsupported(&e) => None,
            Err(e) => {
                problems.push(format!(
                    "extended attribute {:?} not saved: {e}",
                    name.to_string_lossy()
                ));
                None
            }
        })
        .collect();
    // By name bytes, as nodes are sorted (repo-format.md §9): for UTF-8
    // names the order it always was.
    out.sort_by_key(ExtendedAttribute::os_name);
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

    /// A time jiff cannot hold is the nearest one it can, with a problem
    /// naming the real time; it was 1970, silently.
    #[test]
    fn times_out_of_range_are_clamped_and_reported() {
        let mut problems = Vec::new();
        let t = timestamp("mtime", 1_700_000_000, 5, &mut problems);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.000000005Z");
        assert!(problems.is_empty());
        let late = timestamp("mtime", 569_000_000_000, 5, &mut problems);
        assert_eq!(late, jiff::Timestamp::MAX);
        assert_eq!(late.to_string(), "9999-12-30T22:00:00.999999999Z");
        let early = timestamp("ctime", -569_000_000_000, 0, &mut problems);
        assert_eq!(early, jiff::Timestamp::MIN);
        assert_eq!(early.to_string(), "-009999-01-02T01:59:59Z");
        assert_eq!(early.as_second(), -377_705_023_201);
        assert_eq!(
            problems,
            [
                "mtime +20000-11-22T03:33:20.000000005Z is outside the years -9999 to 9999 a snapshot holds; stored as 9999-12-30T22:00:00.999999999Z",
                "ctime -16061-02-09T20:26:40Z is outside the years -9999 to 9999 a snapshot holds; stored as -009999-01-02T01:59:59Z",
            ]
        );
        // The extremes of i64 seconds neither panic nor overflow.
        let mut problems = Vec::new();
        timestamp("mtime", i64::MAX, 999_999_999, &mut problems);
        timestamp("mtime", i64::MIN, 0, &mut problems);
        assert_eq!(problems.len(), 2);
        // The date of a time jiff can hold is jiff's own.
        for secs in [0, 951_782_400, -30_610_224_000, 253_402_207_199] {
            let t = jiff::Timestamp::from_second(secs).unwrap();
            assert_eq!(civil_time(secs, 0), format!("+{t}"), "{secs}");
        }
    }

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
    fn patterns_are_cleaned_before_matching() {
        let ex = Excludes::new(&[
            "/var/tmp//qa/t/a".into(),
            "./b".into(),
            "c/./d".into(),
            "/x/d1/../e".into(),
            "!/x/d1/../e/keep".into(),
            "f//".into(),
        ])
        .unwrap();
        assert!(ex.is_excluded(Path::new("/var/tmp/qa/t/a"), false));
        assert!(ex.is_excluded(Path::new("/q/b"), false));
        assert!(ex.is_excluded(Path::new("/q/c/d"), false));
        assert!(ex.is_excluded(Path::new("/x/e"), false));
        assert!(!ex.is_excluded(Path::new("/x/d1/e"), false));
        // A trailing `/`, however written, still means directories only.
        assert!(ex.is_excluded(Path::new("/q/f"), true));
        assert!(!ex.is_excluded(Path::new("/q/f"), false));
        let ex = Excludes::new(&["/x/*".into(), "!/x/./keep".into()]).unwrap();
        assert!(!ex.is_excluded(Path::new("/x/keep"), false));
    }

    #[test]
    fn patterns_are_taken_as_given() {
        // Trimming and comments belong to exclude files, not to patterns.
        let ex = Excludes::new(&[" sp".into(), "#hash".into(), "".into()]).unwrap();
        assert!(ex.is_excluded(Path::new("/a/ sp"), false));
        assert!(!ex.is_excluded(Path::new("/a/sp"), false));
        assert!(ex.is_excluded(Path::new("/a/#hash"), false));
    }

    #[test]
    fn a_double_star_suffix_matches_the_directory_itself() {
        let ex = Excludes::new(&["x/**".into(), "/srv/y/**".into()]).unwrap();
        assert!(ex.is_excluded(Path::new("/a/x"), true));
        assert!(ex.is_excluded(Path::new("/a/x/z"), false));
        assert!(ex.is_excluded(Path::new("/srv/y"), true));
        assert!(!ex.is_excluded(Path::new("/a/srv/y"), true));
        assert!(!ex.is_excluded(Path::new("/a/xx"), true));
    }

    #[test]
    fn case_sensitive_and_insensitive_lists_negate_on_their_own() {
        let ex = Excludes::new(&["*.tmp".into()])
            .unwrap()
            .case_insensitive(&["!KEEP.TMP".into()])
            .unwrap();
        assert!(ex.is_excluded(Path::new("/a/keep.tmp"), false));
        let ex = Excludes::new(&["!keep.tmp".into()])
            .unwrap()
            .case_insensitive(&["*.TMP".into()])
            .unwrap();
        assert!(ex.is_excluded(Path::new("/a/keep.tmp"), false));
        let ex = Excludes::default()
            .case_insensitive(&["*.TMP".into(), "!KEEP.tmp".into()])
            .unwrap();
        assert!(!ex.is_excluded(Path::new("/a/keep.tmp"), false));
        assert!(ex.is_excluded(Path::new("/a/other.tmp"), false));
    }

    #[test]
    fn iexclude_ignores_case_beyond_ascii() {
        let ex = Excludes::default()
            .case_insensitive(&["ärger.txt".into(), "/Ö/*".into()])
            .unwrap();
        assert!(ex.is_excluded(Path::new("/a/ÄRGER.txt"), false));
        assert!(ex.is_excluded(Path::new("/ö/x"), false));
    }

    #[test]
    fn markers_keep_only_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(marker_keeps(d, true, &[".nobackup".into()]), None);
        std::fs::write(d.join(".nobackup"), b"").unwrap();
        assert_eq!(
            marker_keeps(d, true, &[".nobackup".into()]),
            Some(Some(".nobackup".into()))
        );
        assert_eq!(
            marker_keeps(d, false, &[".nobackup:".into(), ".nobackup".into()]),
            Some(Some(".nobackup".into()))
        );
        std::fs::write(d.join(CACHEDIR_TAG), CACHEDIR_SIGNATURE).unwrap();
        assert_eq!(marker_keeps(d, true, &[]), Some(Some(CACHEDIR_TAG.into())));
        // Each marker excludes the other, as in restic.
        assert_eq!(marker_keeps(d, true, &[".nobackup".into()]), Some(None));
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
