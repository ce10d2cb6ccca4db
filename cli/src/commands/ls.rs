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
    /// Only list this directory (and, with --recursive, everything below).
    /// Any bytes, as file names are: it need not be UTF-8.
    #[arg(value_parser = clap::value_parser!(OsString))]
    dir: Option<OsString>,
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
    let dir = args.dir.as_deref().and_then(snapshot_dir);
    let dir = dir.as_deref();
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
    let mut found = false;
    restore::walk(&repo, &index, &snap.tree, &mut |path, node| {
        use std::io::Write;
        // Compared as bytes: DIR and the names need not be UTF-8.
        let bytes = path.as_os_str().as_bytes();
        let (show, descend) = match dir {
            None => (true, true),
            Some(d) => {
                if bytes == d {
                    (true, true)
                } else if let Some(rest) = bytes.strip_prefix(d).and_then(|r| r.strip_prefix(b"/"))
                {
                    (args.recursive || !rest.contains(&b'/'), args.recursive)
                } else {
                    // Descend only along the way to DIR.
                    (
                        false,
                        d.strip_prefix(bytes).is_some_and(|r| r.starts_with(b"/")),
                    )
                }
            }
        };
        let path_lossy = path.to_string_lossy();
        let path: &str = &path_lossy;
        if show {
            found = true;
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
    if let Some(d) = dir
        && !found
    {
        anyhow::bail!(
            "snapshot {} holds no {}",
            id.short(),
            String::from_utf8_lossy(d)
        );
    }
    Ok(ExitCode::SUCCESS)
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
