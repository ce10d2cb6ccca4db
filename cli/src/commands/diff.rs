//! `vault diff SNAP1 SNAP2`: what changed between two snapshots, as restic
//! prints it: `+` added, `-` removed, `M` content modified, `T` type
//! changed, `U` metadata only (with `--metadata`), then a summary.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::diff::{self, DiffOptions, DiffSide};

#[derive(Debug, clap::Args)]
pub(crate) struct DiffArgs {
    /// The older snapshot: `latest` or an id prefix.
    first: String,
    /// The newer snapshot: `latest` or an id prefix.
    second: String,
    /// Also report mode, owner, mtime and extended-attribute changes.
    #[arg(long)]
    metadata: bool,
    #[command(flatten)]
    filter: super::FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &DiffArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (id_a, a) = super::pick_snapshot(&repo, Some(&args.first), None, &args.filter)?;
    let (id_b, b) = super::pick_snapshot(&repo, Some(&args.second), None, &args.filter)?;
    let index = repo.load_index()?;
    if !g.json && !g.quiet {
        outln!("comparing snapshot {} to {}:\n", id_a.short(), id_b.short())?;
    }
    let options = DiffOptions {
        metadata: args.metadata,
    };
    let stats = diff::diff(&repo, &index, &a.tree, &b.tree, options, &mut |change| {
        if g.json {
            let mut v = serde_json::to_value(change).expect("change serialises");
            v["message_type"] = "change".into();
            output::print_json(&v).map_err(output::engine_error)?;
        } else {
            outln!("{}    {}", change.modifier.symbol(), change.path)
                .map_err(output::engine_error)?;
        }
        Ok(())
    })?;
    if g.json {
        let mut v = serde_json::to_value(&stats)?;
        v["message_type"] = "statistics".into();
        v["source_snapshot"] = id_a.to_hex().into();
        v["target_snapshot"] = id_b.to_hex().into();
        output::print_json(&v)?;
    } else if !g.quiet {
        let side = |s: &DiffSide| (s.files, s.dirs, s.others, s.data_blobs, s.tree_blobs);
        let (af, ad, ao, adb, atb) = side(&stats.added);
        let (rf, rd, ro, rdb, rtb) = side(&stats.removed);
        outln!()?;
        outln!(
            "Files:       {af:5} new, {rf:5} removed, {:5} changed",
            stats.changed_files
        )?;
        outln!("Dirs:        {ad:5} new, {rd:5} removed")?;
        outln!(
            "Others:      {ao:5} new, {ro:5} removed, {:5} changed",
            stats.changed_others
        )?;
        if stats.type_changed > 0 {
            outln!("Type changes: {:4}", stats.type_changed)?;
        }
        if args.metadata {
            outln!("Metadata only: {:3} changed", stats.metadata_changed)?;
        }
        outln!("Data Blobs:  {adb:5} new, {rdb:5} removed")?;
        outln!("Tree Blobs:  {atb:5} new, {rtb:5} removed")?;
        outln!("  Added:   {}", output::bytes(stats.added.bytes))?;
        outln!("  Removed: {}", output::bytes(stats.removed.bytes))?;
    }
    Ok(ExitCode::SUCCESS)
}
