//! `vault dump`: one file of a snapshot to standard output, e.g.
//! `vault dump latest /phone.sql | psql phone_test`.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::global;
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::restore;

#[derive(Debug, clap::Args)]
pub(crate) struct DumpArgs {
    /// Snapshot: `latest` or an id prefix.
    snapshot: String,
    /// Path of the file inside the snapshot.
    path: String,
    #[command(flatten)]
    filter: FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &DumpArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (_, snap) = super::pick_snapshot(&repo, Some(&args.snapshot), None, &args.filter)?;
    let index = repo.load_index()?;
    let node = restore::find_node(&repo, &index, &snap.tree, &args.path)?;
    let mut out = std::io::stdout().lock();
    restore::dump(&repo, &index, &node, &mut out)?;
    Ok(ExitCode::SUCCESS)
}
