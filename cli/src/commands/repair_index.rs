//! `vault repair index`: rebuild the index from the packs' own headers.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::repair;

#[derive(Debug, clap::Args)]
pub(crate) struct RepairIndexArgs {}

pub(crate) fn run(g: &GlobalArgs, _args: &RepairIndexArgs) -> Result<ExitCode> {
    let repo = global::open_repository_uncached(g)?;
    let _lock = vault_engine::lock::lock_exclusive(
        &repo,
        "repair index",
        &global::hostname(),
        &global::username(),
    )?;
    let report = repair::repair_index(&repo)?;
    if g.json {
        output::print_json(&report)?;
    } else {
        for p in &report.packs_unreadable {
            eprintln!("vault: warning: {p}");
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
