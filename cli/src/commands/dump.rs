//! `vault dump`: one file of a snapshot to standard output, e.g.
//! `vault dump latest /phone.sql | psql phone_test`, or a directory as a
//! tar stream, e.g. `vault dump latest /srv/uploads | tar -x -C /restore`.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::global;
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::tree::NodeKind;
use vault_engine::{archive, restore};

#[derive(Debug, clap::Args)]
pub(crate) struct DumpArgs {
    /// Snapshot: `latest` or an id prefix.
    snapshot: String,
    /// Path of a file inside the snapshot, or of a directory (`/` for
    /// everything), which is written as a tar archive.
    path: String,
    #[command(flatten)]
    filter: FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &DumpArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (_, snap) = super::pick_snapshot(&repo, Some(&args.snapshot), None, &args.filter)?;
    let index = repo.load_index()?;
    let mut out = std::io::stdout().lock();
    let at = format!("/{}", args.path.trim_matches('/'));
    if at == "/" {
        archive::write_tar(&repo, &index, &snap.tree, &at, None, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let node = restore::find_node(&repo, &index, &snap.tree, &at)?;
    if node.kind == NodeKind::Dir {
        archive::write_tar(&repo, &index, &snap.tree, &at, Some(&node), &mut out)?;
    } else {
        restore::dump(&repo, &index, &node, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}
