//! `vault tag`: add, remove or replace the tags of snapshots, as `restic
//! tag` does (e.g. `--add keep` on a snapshot that `forget --keep-tag keep`
//! must never remove). A snapshot document is immutable and named by its
//! hash, so each changed snapshot is stored anew, with `original` naming
//! the first one, and the old document is deleted.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Result, bail};
use std::collections::HashMap;
use std::process::ExitCode;
use vault_engine::id::SnapshotId;
use vault_engine::object_lock;
use vault_engine::repository::FileKind;
use vault_engine::snapshot::TagChange;

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("change").args(["add", "remove", "set"]).required(true).multiple(true))]
pub(crate) struct TagArgs {
    /// Snapshots (`latest` or id prefixes); every snapshot passing
    /// --host/--tag/--path when none is given.
    snapshots: Vec<String>,
    /// Add this tag (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    add: Vec<String>,
    /// Remove this tag (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    remove: Vec<String>,
    /// Replace all tags with these (repeatable, or comma-separated; an
    /// empty value removes every tag).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["add", "remove"])]
    set: Option<Vec<String>>,
    #[command(flatten)]
    filter: super::FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &TagArgs) -> Result<ExitCode> {
    let change = TagChange {
        set: args.set.clone(),
        add: args.add.clone(),
        remove: args.remove.clone(),
    };
    let repo = global::open_repository(g)?;
    // Exclusive, like forget: a snapshot deleted under a concurrent
    // forget or prune would be lost or resurrected.
    let _lock = super::exclusive_lock(g, &repo, "tag")?;
    let (all, damaged) = super::snapshots_and_damaged(&repo)?;
    let chosen = super::pick_snapshots(&all, damaged, &args.snapshots, &args.filter)?;
    // A snapshot under S3 Object Lock cannot be replaced: deleting it would
    // only hide the locked version, and the repository would show one
    // snapshot where the lock keeps two (repo-format.md §11.8).
    let locked: HashMap<SnapshotId, jiff::Timestamp> =
        object_lock::locked_objects(&repo, FileKind::Snapshot, jiff::Timestamp::now())?;
    let mut changed = 0usize;
    for (id, snapshot) in chosen {
        let Some(new) = change.rewrite(id, snapshot) else {
            continue;
        };
        if let Some(until) = locked.get(id) {
            bail!(
                "snapshot {} is under object lock until {}: its tags cannot change before then ({changed} snapshots changed so far)",
                id.short(),
                until.strftime("%Y-%m-%d %H:%M:%S UTC")
            );
        }
        global::stop_after(|| format!("{changed} snapshots changed"))?;
        let new_id = repo.replace_snapshot_among(id, &new, &all)?;
        changed += 1;
        if g.json {
            output::print_json(&serde_json::json!({
                "message_type": "changed",
                "old_snapshot": id.to_hex(),
                "new_snapshot": new_id.to_hex(),
                "tags": new.tags,
            }))?;
        } else if !g.quiet {
            outln!(
                "snapshot {} -> {}: tags {}",
                id.short(),
                new_id.short(),
                if new.tags.is_empty() {
                    "(none)".to_owned()
                } else {
                    new.tags.join(",")
                }
            )?;
        }
    }
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "summary",
            "changed_snapshots": changed,
        }))?;
    } else if !g.quiet {
        outln!("modified {changed} snapshots")?;
    }
    Ok(ExitCode::SUCCESS)
}
