//! `vault restore`: write a snapshot back to disk.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::{global, output};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use vault_engine::restore::{self, Overwrite, RestoreOptions, RestoreProgress};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OverwriteArg {
    Never,
    Always,
    IfChanged,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// Snapshot: `latest` (default) or an id prefix.
    snapshot: Option<String>,
    /// Restore the newest snapshot at or before this time instead.
    #[arg(long, conflicts_with = "snapshot")]
    at: Option<String>,
    /// Directory to restore into (paths are re-rooted under it).
    #[arg(short, long)]
    target: PathBuf,
    /// Only restore these snapshot paths (and what is below them).
    #[arg(short, long = "include")]
    includes: Vec<String>,
    /// Skip paths matching these patterns.
    #[arg(short, long = "exclude")]
    excludes: Vec<String>,
    /// Existing files: never (refuse), always, if-changed (verify and fix).
    #[arg(long, value_enum, default_value = "never", num_args = 0..=1, default_missing_value = "always")]
    overwrite: OverwriteArg,
    /// Concurrent pack downloads.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[command(flatten)]
    filter: FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &RestoreArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (id, snap) = super::pick_snapshot(
        &repo,
        args.snapshot.as_deref(),
        args.at.as_deref(),
        &args.filter,
    )?;
    let index = repo.load_index()?;
    let options = RestoreOptions {
        target: args.target.clone(),
        includes: args.includes.clone(),
        excludes: args.excludes.clone(),
        overwrite: match args.overwrite {
            OverwriteArg::Never => Overwrite::Never,
            OverwriteArg::Always => Overwrite::Always,
            OverwriteArg::IfChanged => Overwrite::IfChanged,
        },
        concurrency: args.concurrency,
        cancel,
    };
    let progress = Arc::new(RestoreProgress::default());
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bar = {
        let (p, t, d) = (progress.clone(), total.clone(), done.clone());
        output::Progress::start(global::show_progress(g), Some(total), done, move || {
            use std::sync::atomic::Ordering::Relaxed;
            t.store(p.bytes_total.load(Relaxed), Relaxed);
            d.store(p.bytes_done.load(Relaxed), Relaxed);
            String::new()
        })
    };
    let result = restore::restore(&repo, &index, &snap.tree, &options, &progress);
    bar.finish();
    let report = result.with_context(|| format!("restoring snapshot {}", id.short()))?;
    for w in &report.warnings {
        eprintln!("vault: warning: {w}");
    }
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        v["message_type"] = "summary".into();
        v["snapshot_id"] = id.to_hex().into();
        output::print_json(&v)?;
    } else if !g.quiet {
        println!(
            "restored snapshot {} ({}) to {}: {} files, {} dirs, {} written{}",
            id.short(),
            output::local_time(&snap.time),
            args.target.display(),
            report.files,
            report.dirs,
            output::bytes(report.bytes_written),
            if report.bytes_skipped > 0 {
                format!(", {} already correct", output::bytes(report.bytes_skipped))
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
