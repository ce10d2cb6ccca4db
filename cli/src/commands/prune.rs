//! `vault prune`: reclaim space no snapshot uses (two-phase: mark now,
//! delete on a later prune after the safety margin).

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Result, bail};
use std::process::ExitCode;
use std::sync::Arc;
use vault_engine::Repository;
use vault_engine::lock;
use vault_engine::prune::{MaxUnused, PruneOptions, PrunePlan};

fn parse_max_unused(s: &str) -> Result<MaxUnused, String> {
    if s == "unlimited" {
        return Ok(MaxUnused::Unlimited);
    }
    let p: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("invalid --max-unused {s:?}: use a percentage or `unlimited`"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("--max-unused {s:?} must be within 0-100%"));
    }
    Ok(MaxUnused::Percent(p))
}

fn parse_duration_secs(s: &str) -> Result<i64, String> {
    let d = crate::args::parse_duration(s)?;
    i64::try_from(d.as_secs()).map_err(|_| format!("duration {s:?} is too long"))
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PruneArgs {
    /// Tolerated unused space in partly used packs before repacking them
    /// (percent, or `unlimited` to never repack; 0 repacks everything).
    #[arg(long, default_value = "5%", value_parser = parse_max_unused)]
    max_unused: MaxUnused,
    /// Repack at most this much per run (e.g. 2G).
    #[arg(long, value_parser = crate::args::parse_size)]
    max_repack_size: Option<u64>,
    /// Delete unneeded packs now instead of marking them (only when no backup can be running).
    #[arg(long)]
    instant_delete: bool,
    /// How long a pack stays marked before a later prune deletes it (e.g. 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration_secs)]
    delete_margin: i64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PruneCmdArgs {
    #[command(flatten)]
    prune: PruneArgs,
    /// Show what would be removed and repacked.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

pub(crate) fn run(g: &GlobalArgs, args: &PruneCmdArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    if args.dry_run {
        let plan = PrunePlan::new(&repo, &options(&args.prune))?;
        print_plan(g, &plan, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lock = super::exclusive_lock(g, &repo, "prune")?;
    prune_locked(g, &repo, &args.prune, Some(&lock))?;
    Ok(ExitCode::SUCCESS)
}

/// `forget --dry-run --prune`: the plan of the prune that would follow,
/// with the snapshots the forget would remove left out, as restic shows it.
pub(crate) fn print_plan_after_forget(
    g: &GlobalArgs,
    repo: &Repository,
    args: &PruneArgs,
    forgotten: std::collections::HashSet<vault_engine::id::SnapshotId>,
) -> Result<()> {
    let options = PruneOptions {
        ignore_snapshots: forgotten,
        ..options(args)
    };
    print_plan(g, &PrunePlan::new(repo, &options)?, true)
}

fn options(args: &PruneArgs) -> PruneOptions {
    PruneOptions {
        max_unused: args.max_unused,
        max_repack_bytes: args.max_repack_size,
        margin_secs: args.delete_margin,
        instant_delete: args.instant_delete,
        cancel: crate::global::interrupted(),
        ..PruneOptions::default()
    }
}

fn print_plan(g: &GlobalArgs, plan: &PrunePlan, dry_run: bool) -> Result<()> {
    if g.json {
        let mut v = serde_json::to_value(plan)?;
        v["message_type"] = "prune_plan".into();
        v["dry_run"] = dry_run.into();
        return output::print_json(&v);
    }
    if g.quiet {
        return Ok(());
    }
    outln!(
        "{} snapshots use {} blobs; {} of {} stored is unused",
        plan.snapshots,
        plan.used_blobs,
        output::bytes(plan.unused_bytes),
        output::bytes(plan.total_bytes)
    )?;
    let verb = if dry_run { "would" } else { "will" };
    outln!(
        "{verb} delete {} packs ({}), mark {} unused packs, repack {} packs ({}, {} still used), unmark {}; {} marked packs wait for the margin",
        plan.delete.len(),
        output::bytes(plan.delete_bytes),
        plan.mark.len(),
        plan.repack.len(),
        output::bytes(plan.repack_bytes),
        output::bytes(plan.repack_used_bytes),
        plan.unmark.len(),
        plan.waiting.len()
    )?;
    if let Some(until) = plan.locked_until {
        outln!(
            "{} packs ({}) still under object lock until {}, kept",
            plan.locked.len(),
            output::bytes(plan.locked_bytes),
            until.strftime("%Y-%m-%d %H:%M:%S UTC")
        )?;
    }
    if plan.locked_index_files > 0 {
        outln!(
            "{} superseded index files still under object lock, kept",
            plan.locked_index_files
        )?;
    }
    Ok(())
}

/// Runs prune; the caller holds the exclusive lock.
pub(crate) fn prune_locked(
    g: &GlobalArgs,
    repo: &Arc<Repository>,
    args: &PruneArgs,
    lock: Option<&lock::Lock>,
) -> Result<()> {
    let options = options(args);
    if options.margin_secs < 0 {
        bail!("--delete-margin must not be negative");
    }
    let plan = PrunePlan::new(repo, &options)?;
    print_plan(g, &plan, false)?;
    let report = plan.execute(repo, &options, lock)?;
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        v["message_type"] = "prune".into();
        output::print_json(&v)?;
    } else if !g.quiet {
        let mut line = format!(
            "deleted {} packs ({})",
            report.packs_deleted,
            output::bytes(report.bytes_freed)
        );
        if report.packs_repacked > 0 {
            line.push_str(&format!(
                ", repacked {} into {} of new packs",
                report.packs_repacked,
                output::bytes(report.bytes_written)
            ));
        }
        if report.packs_marked > 0 {
            line.push_str(&format!(
                ", marked {} for deletion by a prune after the margin",
                report.packs_marked
            ));
        }
        outln!("{line}")?;
        if report.temporaries_removed > 0 {
            outln!(
                "removed {} temporary files left by interrupted writes",
                report.temporaries_removed
            )?;
        }
    }
    // What is left is what snapshots need: keep it locked as long as a
    // fresh upload would be (repo-format.md §11.8).
    if !super::extend_retention::extend(g, repo)? && !g.quiet {
        eprintln!("vault: object lock retention not extended: this storage cannot lock objects");
    }
    Ok(())
}
