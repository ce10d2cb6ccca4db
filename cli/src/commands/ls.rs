//! `vault ls`: list the files of a snapshot.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::restore;
use vault_engine::tree::NodeKind;

#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// Snapshot: `latest` or an id prefix.
    snapshot: String,
    /// Only list this directory (and, with --recursive, everything below).
    dir: Option<String>,
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

pub(crate) fn run(g: &GlobalArgs, args: &LsArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (id, snap) = super::pick_snapshot(&repo, Some(&args.snapshot), None, &args.filter)?;
    let index = repo.load_index()?;
    let dir = args.dir.as_deref().map(|d| {
        let d = d.trim_end_matches('/');
        if d.starts_with('/') {
            d.to_owned()
        } else {
            format!("/{d}")
        }
    });
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
        let path_lossy = path.to_string_lossy();
        let path: &str = &path_lossy;
        let (show, descend) = match dir.as_deref() {
            None | Some("") => (true, true),
            Some(d) => {
                if path == d {
                    (true, true)
                } else if let Some(rest) = path.strip_prefix(d).and_then(|r| r.strip_prefix('/')) {
                    (args.recursive || !rest.contains('/'), args.recursive)
                } else {
                    // Descend only along the way to DIR.
                    (false, d.starts_with(&format!("{path}/")))
                }
            }
        };
        if show {
            let line = if g.json {
                serde_json::json!({
                    "message_type": "node",
                    "struct_type": "node",
                    "name": node.name,
                    "type": node.kind,
                    "path": path,
                    "uid": node.uid,
                    "gid": node.gid,
                    "size": node.size,
                    "mode": node.mode,
                    "mtime": node.mtime.to_string(),
                })
                .to_string()
            } else if args.long {
                format!(
                    "{}{:04o} {:>8} {:>8} {:>12} {} {}",
                    kind_char(node.kind),
                    node.mode,
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
                    path
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
    Ok(ExitCode::SUCCESS)
}
