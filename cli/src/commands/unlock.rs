//! `vault unlock`: remove stale maintenance locks.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::lock;

#[derive(Debug, clap::Args)]
pub(crate) struct UnlockArgs {
    /// Remove every lock, even live ones (only if you know no maintenance runs).
    #[arg(long)]
    remove_all: bool,
}

pub(crate) fn run(g: &GlobalArgs, args: &UnlockArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let removed = lock::unlock(&repo, args.remove_all, &global::hostname())?;
    if g.json {
        output::print_json(&serde_json::json!({ "removed": removed }))?;
    } else {
        for r in &removed {
            outln!("removed lock {r}")?;
        }
        if removed.is_empty() && !g.quiet {
            outln!("no stale locks")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
