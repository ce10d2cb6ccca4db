//! `vault repair index`: rebuild the index from the packs' own headers.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::repair;

#[derive(Debug, clap::Args)]
pub(crate) struct RepairIndexArgs {
    /// Read every pack whole and leave out blobs whose stored bytes are
    /// damaged, so that `repair snapshots` drops the files using them and
    /// the next backup stores that content again. A pack holding damaged
    /// blobs, or whose content does not match its name (another pack's
    /// bytes), is deleted once its sound blobs are stored again.
    #[arg(long)]
    read_data: bool,
}

pub(crate) fn run(g: &GlobalArgs, args: &RepairIndexArgs) -> Result<ExitCode> {
    let repo = global::open_repository_uncached(g)?;
    let _lock = super::exclusive_lock(g, &repo, "repair index")?;
    let report = repair::repair_index(&repo, args.read_data, &global::interrupted())?;
    if g.json {
        output::print_json(&report)?;
    } else {
        for p in &report.packs_unreadable {
            eprintln!(
                "vault: warning: {p}: left out of the index, its blobs lost; `vault repair snapshots --forget` drops the files that only it held, and `vault prune` removes it"
            );
        }
        for b in &report.blobs_damaged {
            eprintln!("vault: warning: {b} is damaged: left out of the index");
        }
        for p in &report.packs_salvaged {
            if report.packs_misnamed.contains(p) {
                eprintln!(
                    "vault: pack {p}: its content does not match its name (another pack's bytes copied over it, or renamed): left out of the index, its sound blobs that no other pack holds were stored again and it was deleted"
                );
            } else {
                eprintln!(
                    "vault: pack {p} held damaged blobs: its sound blobs were stored again and it was deleted"
                );
            }
        }
        if !report.blobs_damaged.is_empty() || !report.packs_misnamed.is_empty() {
            eprintln!(
                "vault: run `vault repair snapshots --forget` to drop the files whose data is lost; the next backup stores their content again"
            );
        }
        if g.quiet {
            return Ok(ExitCode::SUCCESS);
        }
        outln!(
            "indexed {} blobs in {} packs; wrote {} index files, removed {} old ones",
            report.blobs,
            report.packs_indexed,
            report.indexes_written,
            report.indexes_removed
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
