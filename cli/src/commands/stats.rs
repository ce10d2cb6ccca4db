//! `vault stats`: restore size, raw data, files by contents or blobs per
//! file of some or all snapshots (restic's four modes), totals
//! of the whole repository, and the requests the last operation on it sent
//! to its object store (what a per-request bill counts).

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output, requests};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Logical bytes and files a restore would write.
    RestoreSize,
    /// Regular files counted once per distinct content, wherever and however
    /// often they appear (all empty files are one), and their size.
    FilesByContents,
    /// The data blobs of those files, counted once per path: blobs, paths,
    /// plaintext size.
    BlobsPerFile,
    /// Distinct blobs referenced: plaintext and stored size, dedup and compression ratios.
    RawData,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    /// Snapshots (`latest` or id prefixes); all when none is given.
    snapshots: Vec<String>,
    /// What to count.
    #[arg(long, value_enum, default_value = "restore-size")]
    mode: Mode,
    #[command(flatten)]
    filter: FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &StatsArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let location = repo.backend().location();
    // Read before this command records itself as the last operation.
    let last = requests::last(&location);
    let (all, damaged) = super::snapshots_and_damaged(&repo)?;
    let chosen: Vec<_> = super::pick_snapshots(&all, damaged, &args.snapshots, &args.filter)?
        .into_iter()
        .cloned()
        .collect();
    let index = repo.load_index()?;
    let options = stats::StatsOptions {
        files_by_contents: args.mode == Mode::FilesByContents,
        blobs_per_file: args.mode == Mode::BlobsPerFile,
    };
    let report = stats::stats_with(&repo, &index, &chosen, options)?;
    let mode = match args.mode {
        Mode::RestoreSize => "restore-size",
        Mode::FilesByContents => "files-by-contents",
        Mode::BlobsPerFile => "blobs-per-file",
        Mode::RawData => "raw-data",
    };
    let by_contents = report.files_by_contents.clone().unwrap_or_default();
    let per_file = report.blobs_per_file.clone().unwrap_or_default();
    if g.json {
        let mut v = match args.mode {
            Mode::RestoreSize => serde_json::to_value(&report.restore_size)?,
            Mode::FilesByContents => serde_json::to_value(&by_contents)?,
            Mode::BlobsPerFile => serde_json::to_value(&per_file)?,
            Mode::RawData => {
                let mut v = serde_json::to_value(&report.raw_data)?;
                v["restore_size"] = report.restore_size.total_size.into();
                v
            }
        };
        v["message_type"] = "stats".into();
        v["mode"] = mode.into();
        v["snapshots_count"] = report.snapshots_count.into();
        v["repository"] = serde_json::to_value(&report.repository)?;
        v["last_operation"] = serde_json::to_value(&last)?;
        v["requests_this_command"] = serde_json::to_value(requests::so_far(&location))?;
        output::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("Stats in {mode} mode:")?;
    outln!("     Snapshots processed:  {}", report.snapshots_count)?;
    match args.mode {
        Mode::RestoreSize => {
            let r = &report.restore_size;
            outln!("        Total File Count:  {}", r.total_file_count)?;
            outln!("         Total Dir Count:  {}", r.total_dir_count)?;
            outln!("              Total Size:  {}", output::bytes(r.total_size))?;
        }
        Mode::FilesByContents => {
            let r = &by_contents;
            outln!("        Total File Count:  {}", r.total_file_count)?;
            outln!("              Total Size:  {}", output::bytes(r.total_size))?;
        }
        Mode::BlobsPerFile => {
            let r = &per_file;
            outln!("        Total Blob Count:  {}", r.total_blob_count)?;
            outln!("        Total File Count:  {}", r.total_file_count)?;
            outln!("              Total Size:  {}", output::bytes(r.total_size))?;
            if r.missing_blobs > 0 {
                outln!(
                    "           Missing Blobs:  {} (run `vault check`)",
                    r.missing_blobs
                )?;
            }
        }
        Mode::RawData => {
            let r = &report.raw_data;
            outln!(
                "        Total Blob Count:  {} ({} data, {} tree)",
                r.total_blob_count,
                r.data_blob_count,
                r.tree_blob_count
            )?;
            outln!(
                " Total Uncompressed Size:  {}",
                output::bytes(r.total_uncompressed_size)
            )?;
            outln!("       Total Stored Size:  {}", output::bytes(r.total_size))?;
            outln!(
                "            Restore Size:  {}",
                output::bytes(report.restore_size.total_size)
            )?;
            outln!("    Deduplication Ratio:  {:.2}x", r.dedup_ratio)?;
            outln!("      Compression Ratio:  {:.2}x", r.compression_ratio)?;
            if r.missing_blobs > 0 {
                outln!(
                    "           Missing Blobs:  {} (run `vault check`)",
                    r.missing_blobs
                )?;
            }
        }
    }
    let repo_totals = &report.repository;
    outln!()?;
    outln!("Repository:")?;
    for (kind, c) in &repo_totals.objects {
        outln!(
            "  {kind:<10} {:>8} objects  {:>12}",
            c.count,
            output::bytes(c.bytes)
        )?;
    }
    outln!(
        "  {:<10} {:>8} objects  {:>12}",
        "total",
        repo_totals.objects.values().map(|c| c.count).sum::<u64>(),
        output::bytes(repo_totals.total_bytes)
    )?;
    let ix = &repo_totals.index;
    outln!(
        "  index: {} blobs in {} packs, {} plaintext, {} stored ({:.2}x){}",
        ix.blobs,
        ix.packs,
        output::bytes(ix.uncompressed_bytes),
        output::bytes(ix.stored_bytes),
        ix.compression_ratio,
        if ix.unindexed_packs > 0 {
            format!("; {} unindexed packs", ix.unindexed_packs)
        } else {
            String::new()
        }
    )?;
    if let Some(op) = &last {
        let r = &op.requests;
        outln!()?;
        outln!(
            "Requests of the last operation (`vault {}`, {}, finished {}):",
            op.command,
            if op.success { "succeeded" } else { "failed" },
            op.finished
        )?;
        outln!(
            "  {} in all: {} PUT, {} GET, {} HEAD, {} LIST, {} DELETE",
            r.total(),
            r.put,
            r.get,
            r.head,
            r.list,
            r.delete
        )?;
    }
    if let Some(r) = requests::so_far(&location) {
        outln!("  (this `vault stats` sent {} so far)", r.total())?;
    }
    Ok(ExitCode::SUCCESS)
}
