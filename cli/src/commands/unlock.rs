//! `vault unlock`: remove stale maintenance locks, and say which live ones
//! were left and why.

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
    let report = lock::unlock(&repo, args.remove_all, &global::hostname())?;
    if g.json {
        output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &report.removed {
        outln!("removed lock {r}")?;
    }
    // Not silenced by --quiet: a lock left in place is why the next
    // prune will still fail, and "no stale locks" alone hid that.
    for k in &report.kept {
        outln!(
            "kept lock {} ({}): still live, {}; use --remove-all if you are sure no vault process on {} still uses it",
            k.path,
            k.describe(),
            k.reason,
            k.info.hostname
        )?;
    }
    if report.removed.is_empty() && report.kept.is_empty() && !g.quiet {
        outln!("no locks")?;
    }
    Ok(ExitCode::SUCCESS)
}
