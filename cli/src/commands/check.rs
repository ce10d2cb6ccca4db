//! `vault check`: prove the repository is restorable and locate damage.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{exit, global, output};
use anyhow::Result;
use std::process::ExitCode;
use std::sync::Arc;
use vault_engine::check::{self, CheckOptions, CheckProgress, Severity, VerifySubset};

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Also download every pack and authenticate, decompress and re-hash every blob.
    #[arg(long, alias = "read-data")]
    verify: bool,
    /// Verify only a subset of packs: N/M (the Nth of M deterministic slices) or P%.
    #[arg(long, alias = "read-data-subset", value_name = "N/M|P%")]
    verify_subset: Option<VerifySubset>,
    /// Concurrent pack downloads when verifying [default: one per core on
    /// a local disk, 4 on an object store].
    #[arg(long)]
    concurrency: Option<usize>,
}

pub(crate) fn run(g: &GlobalArgs, args: &CheckArgs) -> Result<ExitCode> {
    let repo = global::open_repository_uncached(g)?;
    let verify = match (args.verify, args.verify_subset) {
        (_, Some(subset)) => Some(subset),
        (true, None) => Some(VerifySubset::All),
        (false, None) => None,
    };
    let options = CheckOptions {
        verify,
        concurrency: args.concurrency.unwrap_or_else(|| repo.read_concurrency()),
        cancel: crate::global::interrupted(),
    };
    let progress = Arc::new(CheckProgress::default());
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bar = {
        let (p, t, d) = (progress.clone(), total.clone(), done.clone());
        output::Progress::start(
            global::show_progress(g) && verify.is_some(),
            Some(total),
            done,
            move || {
                use std::sync::atomic::Ordering::Relaxed;
                t.store(p.packs_total.load(Relaxed), Relaxed);
                d.store(p.packs_done.load(Relaxed), Relaxed);
                format!("packs, {} read", output::bytes(p.bytes_read.load(Relaxed)))
            },
        )
    };
    let result = check::check(&repo, &options, &progress);
    bar.finish();
    let report = result?;
    let errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = report.findings.len() - errors;
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        v["message_type"] = "check".into();
        v["errors"] = errors.into();
        v["warnings"] = warnings.into();
        v["ok"] = (errors == 0).into();
        output::print_json(&v)?;
    } else {
        // `--quiet` prints only errors: a weekly `check --quiet` from cron
        // mails when something is wrong, not each week that a prune left
        // blobs unused below its `--max-unused`.
        for f in (report.findings.iter()).filter(|f| !g.quiet || f.severity == Severity::Error) {
            let label = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            outln!("{label}: {}: {} [{}]", f.object, f.message, f.kind)?;
            const SHOWN: usize = 20;
            for a in f.affected.iter().take(SHOWN) {
                outln!("    affects snapshot {} {}", a.snapshot, a.path)?;
            }
            if f.affected.len() > SHOWN {
                outln!("    ... and {} more (see --json)", f.affected.len() - SHOWN)?;
            }
        }
        if !g.quiet {
            outln!(
                "checked {} snapshots, {} packs, {} blobs{}: {errors} errors, {warnings} warnings",
                report.snapshots,
                report.packs,
                report.blobs,
                if verify.is_some() {
                    format!(
                        "; verified {} packs, {} blobs, {}",
                        report.packs_verified,
                        report.blobs_verified,
                        output::bytes(report.bytes_verified)
                    )
                } else {
                    String::new()
                }
            )?;
        }
    }
    Ok(if errors > 0 {
        ExitCode::from(exit::DAMAGED)
    } else {
        ExitCode::SUCCESS
    })
}
