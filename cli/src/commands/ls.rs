//! `vault ls`: list the files of a snapshot.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::{global, output};
use anyhow::Result;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use vault_engine::restore;
use vault_engine::tree::NodeKind;

#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// Snapshot: `latest` or an id prefix.
    snapshot: String,
    /// Only list these directories (and, with --recursive, everything
    /// below them), or files. Any bytes, as file names are: they need not
    /// be UTF-8.
    #[arg(value_name = "DIR", value_parser = clap::value_parser!(OsString))]
    dirs: Vec<OsString>,
    /// List recursively below DIR.
    #[arg(long)]
    recursive: bool,
    /// Long listing: mode, owner, size, mtime.
    #[arg(short, long)]
    long: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

pub(super) fn kind_char(kind: NodeKind) -> char {
    match kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Dev => 'b',
        NodeKind::Chardev => 'c',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::File => '-',
    }
}

/// `-rwxr-x---`, as `ls -l` shows a mode, with setuid, setgid and sticky
/// bits as `s`/`S` and `t`/`T`.
pub(super) fn mode_string(kind: NodeKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind_char(kind));
    for (shift, special, mark) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 0o7;
        s.push(if bits & 0o4 != 0 { 'r' } else { '-' });
        s.push(if bits & 0o2 != 0 { 'w' } else { '-' });
        s.push(match (mode & special != 0, bits & 0o1 != 0) {
            (true, true) => mark,
            (true, false) => mark.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// DIR as the paths `walk` reports it: absolute, without empty or `.`
/// parts; `None` for the snapshot's root (`/`, `//`, `.`), listed as
/// without DIR.
fn snapshot_dir(dir: &OsStr) -> Option<Vec<u8>> {
    let parts: Vec<&[u8]> = dir
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    (!parts.is_empty()).then(|| [b"/".as_slice(), &parts.join(&b'/')].concat())
}

pub(crate) fn run(g: &GlobalArgs, args: &LsArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (id, snap) = super::pick_snapshot(&repo, Some(&args.snapshot), None, &args.filter)?;
    let index = repo.load_index()?;
    // None: the whole snapshot (no DIR, or its root among them).
    let dirs: Option<Vec<Vec<u8>>> = args.dirs.iter().map(|d| snapshot_dir(d)).collect();
    let dirs = dirs.filter(|d| !d.is_empty());
    let mut found = vec![false; dirs.as_ref().map_or(0, Vec::len)];
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "snapshot",
            "id": id.to_hex(),
            "short_id": id.short(),
            "time": snap.time.timestamp().display_with_offset(snap.time.offset()).to_string(),
            "paths": snap.paths,
            "hostname": snap.hostname,
            "tags": snap.tags,
        }))?;
    }
    let mut stdout = std::io::stdout().lock();
    restore::walk(&repo, &index, &snap.tree, &mut |path, node| {
        use std::io::Write;
        // Compared as bytes: DIR and the names need not be UTF-8.
        let bytes = path.as_os_str().as_bytes();
        let (show, descend) = match &dirs {
            None => (true, true),
            // Listed if under any DIR (as restic lists), once.
            Some(dirs) => dirs.iter().zip(found.iter_mut()).fold(
                (false, false),
                |(show, descend), (d, found)| {
                    let (s, more) = placement(bytes, d, args.recursive);
                    *found |= s;
                    (show || s, descend || more)
                },
            ),
        };
        let path_lossy = path.to_string_lossy();
        let path: &str = &path_lossy;
        if show {
            let target = node
                .os_link_target()
                .map(|t| t.to_string_lossy().into_owned());
            let line = if g.json {
                let mut v = serde_json::json!({
                    "message_type": "node",
                    "struct_type": "node",
                    "name": node.name,
                    "type": node.kind,
                    "path": path,
                    "uid": node.uid,
                    "gid": node.gid,
                    "size": node.size,
                    "mode": node.mode,
                    "permissions": mode_string(node.kind, node.mode),
                    "mtime": node.mtime.to_string(),
                    "ctime": node.ctime.to_string(),
                    "inode": node.inode,
                    "links": node.links,
                });
                if let Some(target) = &target {
                    v["linktarget"] = target.as_str().into();
                }
                v.to_string()
            } else if args.long {
                format!(
                    "{} {:>8} {:>8} {:>12} {} {}{}",
                    mode_string(node.kind, node.mode),
                    if node.user.is_empty() {
                        node.uid.to_string()
                    } else {
                        node.user.clone()
                    },
                    if node.group.is_empty() {
                        node.gid.to_string()
                    } else {
                        node.group.clone()
                    },
                    node.size,
                    output::local_time(&node.mtime.to_zoned(jiff::tz::TimeZone::UTC)),
                    path,
                    target.map(|t| format!(" -> {t}")).unwrap_or_default()
                )
            } else {
                path.to_owned()
            };
            writeln!(stdout, "{line}").map_err(|e| vault_engine::Error::Io {
                context: "writing output".into(),
                cause: e,
            })?;
        }
        Ok(descend)
    })?;
    // As `dump` of a missing path: an empty listing would read as an empty
    // directory.
    let missing: Vec<String> = (dirs.iter().flatten().zip(&found))
        .filter(|(_, found)| !**found)
        .map(|(d, _)| String::from_utf8_lossy(d).into_owned())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!("snapshot {} holds no {}", id.short(), missing.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// For the entry at `path`: whether it is listed for DIR `dir` (DIR itself,
/// an entry directly in it, or with `recursive` any below it), and whether
/// the walk goes on below it (below DIR with `recursive`, or along the way
/// to DIR).
fn placement(path: &[u8], dir: &[u8], recursive: bool) -> (bool, bool) {
    if path == dir {
        (true, true)
    } else if let Some(rest) = path.strip_prefix(dir).and_then(|r| r.strip_prefix(b"/")) {
        (recursive || !rest.contains(&b'/'), recursive)
    } else {
        (
            false,
            dir.strip_prefix(path).is_some_and(|r| r.starts_with(b"/")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(mode_string(NodeKind::File, 0o644), "-rw-r--r--");
        assert_eq!(mode_string(NodeKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(NodeKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(NodeKind::File, 0o2640), "-rw-r-S---");
        assert_eq!(mode_string(NodeKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(NodeKind::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn dir_is_normalised_and_the_root_is_no_dir() {
        let dir = |d: &str| snapshot_dir(OsStr::new(d));
        for root in ["/", "//", ".", "/./", ""] {
            assert_eq!(dir(root), None, "{root:?}");
        }
        assert_eq!(dir("/a/b/").as_deref(), Some(&b"/a/b"[..]));
        assert_eq!(dir("a//b").as_deref(), Some(&b"/a/b"[..]));
        assert_eq!(dir("/a/./b").as_deref(), Some(&b"/a/b"[..]));
        assert_eq!(
            snapshot_dir(OsStr::from_bytes(b"/a/\xff/")).as_deref(),
            Some(&b"/a/\xff"[..])
        );
    }
}
