//! `vault rewrite`: store snapshots anew without paths that should never
//! have been backed up, as `restic rewrite --exclude` does. `--forget`
//! deletes the originals; `vault prune` then frees the data.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Result, bail};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use vault_engine::backup::Excludes;
use vault_engine::id::SnapshotId;
use vault_engine::repository::FileKind;
use vault_engine::snapshot::Snapshot;
use vault_engine::{object_lock, rewrite};

#[derive(Debug, clap::Args)]
pub(crate) struct RewriteArgs {
    /// Snapshots (`latest` or id prefixes); every snapshot passing
    /// --host/--tag/--path when none is given.
    snapshots: Vec<String>,
    /// Remove paths matching a pattern (repeatable; the rules of `backup
    /// --exclude`, matched against the backed-up absolute paths).
    #[arg(short = 'e', long = "exclude", value_parser = clap::value_parser!(std::ffi::OsString))]
    excludes: Vec<std::ffi::OsString>,
    /// Read patterns from a file, one per line (as `backup --exclude-file`:
    /// trimmed, blank and `#` lines skipped, $VAR expanded).
    #[arg(long)]
    exclude_file: Vec<PathBuf>,
    /// Delete each original once its rewritten snapshot is stored.
    #[arg(long)]
    forget: bool,
    /// Show what would be removed without writing anything.
    #[arg(short = 'n', long)]
    dry_run: bool,
    #[command(flatten)]
    filter: super::FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &RewriteArgs) -> Result<ExitCode> {
    let mut patterns = args.excludes.clone();
    for file in &args.exclude_file {
        patterns.extend(super::pattern_file(file)?);
    }
    if patterns.iter().all(|p| p.is_empty()) {
        bail!("nothing to remove: give --exclude or --exclude-file");
    }
    let excludes = Excludes::new(&patterns).map_err(anyhow::Error::msg)?;
    let repo = global::open_repository(g)?;
    // Exclusive: a prune running meanwhile could delete trees and data the
    // rewritten snapshots reuse. A dry run writes nothing and needs none.
    let _lock = super::maintenance_lock(g, &repo, "rewrite", args.dry_run)?;
    let (all, damaged) = super::snapshots_and_damaged(&repo)?;
    let chosen: Vec<(SnapshotId, Snapshot)> =
        super::pick_snapshots(&all, damaged, &args.snapshots, &args.filter)?
            .into_iter()
            .cloned()
            .collect();
    if args.forget && !args.dry_run {
        // A locked original cannot be deleted, only hidden: refuse before
        // writing anything rather than leave the data it should remove.
        let locked: HashMap<SnapshotId, jiff::Timestamp> =
            object_lock::locked_objects(&repo, FileKind::Snapshot, jiff::Timestamp::now())?;
        if let Some((id, until)) = chosen
            .iter()
            .find_map(|(id, _)| locked.get(id).map(|u| (id, u)))
        {
            bail!(
                "snapshot {} is under object lock until {}: it cannot be forgotten before then (nothing was written)",
                id.short(),
                until.strftime("%Y-%m-%d %H:%M:%S UTC")
            );
        }
    }
    let index = std::sync::Arc::new(repo.load_index()?);
    let report = rewrite::rewrite(
        &repo,
        &index,
        &chosen,
        &excludes,
        args.forget,
        args.dry_run,
        &global::interrupted(),
    )
    .map_err(|e| match e {
        vault_engine::Error::Interrupted => anyhow::Error::new(e)
            .context("stopped after 0 snapshots rewritten; the rest is unchanged"),
        e => e.into(),
    })?;
    let result = print_report(g, args, &report);
    // Stopped by a signal: `report` holds the snapshots replaced before it.
    global::stop_after(|| format!("{} snapshots rewritten", report.len()))?;
    result
}

fn print_report(
    g: &GlobalArgs,
    args: &RewriteArgs,
    report: &[rewrite::Rewritten],
) -> Result<ExitCode> {
    if g.json {
        for r in report {
            let mut v = serde_json::to_value(r)?;
            v["message_type"] = "rewritten".into();
            output::print_json(&v)?;
        }
        output::print_json(&serde_json::json!({
            "message_type": "summary",
            "rewritten_snapshots": report.len(),
            "dry_run": args.dry_run,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if g.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    for r in report {
        let short = r.original.get(..8).unwrap_or(&r.original);
        match &r.replacement {
            Some(new) => outln!(
                "snapshot {short} -> {}{}: removed {} files ({})",
                new.get(..8).unwrap_or(new),
                if r.forgotten {
                    " (original deleted)"
                } else {
                    ""
                },
                r.removed_files,
                output::bytes(r.removed_bytes)
            )?,
            None => outln!(
                "snapshot {short} would lose {} files ({}):",
                r.removed_files,
                output::bytes(r.removed_bytes)
            )?,
        }
        for p in &r.removed {
            outln!("  {p}")?;
        }
    }
    let verb = if args.dry_run {
        "would rewrite"
    } else {
        "rewrote"
    };
    outln!("{verb} {} snapshots", report.len())?;
    if !args.dry_run && !report.is_empty() {
        if args.forget {
            outln!(
                "run `vault prune --max-unused 0` to free the removed data (the default 5% may leave a small file inside a pack still in use)"
            )?;
        } else {
            outln!(
                "the originals are kept: `vault forget` them (or rerun with --forget), then `vault prune --max-unused 0`"
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
