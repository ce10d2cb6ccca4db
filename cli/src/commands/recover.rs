//! `vault recover`: save a snapshot of every tree no snapshot reaches, so
//! what a lost or damaged snapshot object held can be restored again.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::repair;

#[derive(Debug, clap::Args)]
pub(crate) struct RecoverArgs {
    /// Show what would be recovered without writing.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

pub(crate) fn run(g: &GlobalArgs, args: &RecoverArgs) -> Result<ExitCode> {
    let repo = global::open_repository_uncached(g)?;
    // Exclusive: a backup running beside it has trees no snapshot reaches
    // yet, which are not lost.
    let _lock = super::exclusive_lock(g, &repo, "recover")?;
    global::stop_if_interrupted()?;
    let report = repair::recover(
        &repo,
        &global::hostname(),
        &global::username(),
        args.dry_run,
    )?;
    if g.json {
        output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    for u in &report.unreadable {
        eprintln!("vault: warning: {u}: cannot be read; the directories it lists show up as roots");
    }
    outln!(
        "{} trees, {} not reached by any snapshot",
        report.trees,
        report.roots.len()
    )?;
    for root in &report.roots {
        outln!("    {}/{root}", repair::RECOVER_PATH)?;
    }
    match (&report.snapshot, report.roots.is_empty()) {
        (_, true) => outln!("nothing to recover")?,
        (Some(id), false) => outln!(
            "snapshot {} saved (tagged recovered): `vault ls {}` lists it, `vault restore {} --target DIR` restores it",
            &id[..8],
            &id[..8],
            &id[..8]
        )?,
        (None, false) => outln!("dry run: no snapshot saved")?,
    }
    Ok(ExitCode::SUCCESS)
}
