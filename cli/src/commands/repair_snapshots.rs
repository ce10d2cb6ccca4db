//! `vault repair snapshots`: rewrite snapshots without files whose data is
//! lost, so the rest stays restorable.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::repair;

#[derive(Debug, clap::Args)]
pub(crate) struct RepairSnapshotsArgs {
    /// Remove the damaged originals once their repaired copies are saved.
    #[arg(long)]
    forget: bool,
    /// Skip reading every pack (only missing packs and blobs are detected).
    #[arg(long)]
    no_verify: bool,
    /// Show what would change without writing.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

pub(crate) fn run(g: &GlobalArgs, args: &RepairSnapshotsArgs) -> Result<ExitCode> {
    let repo = global::open_repository_uncached(g)?;
    let _lock = super::exclusive_lock(g, &repo, "repair snapshots")?;
    global::stop_if_interrupted()?;
    let report = repair::repair_snapshots(&repo, !args.no_verify, args.forget, args.dry_run)?;
    if g.json {
        output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    for p in &report.packs_ignored {
        eprintln!(
            "vault: warning: {p}: ignored, in no index and its header unreadable (`vault repair index` cannot adopt it): its blobs count as lost; `vault prune` removes it"
        );
    }
    for u in &report.unreadable {
        if u.removed {
            outln!(
                "snapshot {} cannot be read ({}): removed",
                &u.id[..8],
                u.error
            )?;
        } else {
            outln!(
                "snapshot {} cannot be read ({}): `--forget` removes it",
                &u.id[..8],
                u.error
            )?;
        }
    }
    for r in &report.repaired {
        match &r.replacement {
            Some(new) => outln!(
                "snapshot {} -> {} (tagged repaired), removed:",
                &r.original[..8],
                &new[..8]
            )?,
            None => outln!("snapshot {} would lose:", &r.original[..8])?,
        }
        for p in &r.removed {
            outln!("    {p}")?;
        }
    }
    outln!(
        "{} snapshots repaired, {} intact, {} unreadable",
        report.repaired.len(),
        report.intact,
        report.unreadable.len()
    )?;
    Ok(ExitCode::SUCCESS)
}
