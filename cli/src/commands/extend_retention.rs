//! `vault extend-retention`: move the S3 Object Lock retention of
//! everything a locked repository holds to now + its days. `prune` does the
//! same after pruning; this is for running it more often than prune.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Result, bail};
use std::process::ExitCode;
use vault_engine::{Repository, object_lock};

#[derive(Debug, clap::Args)]
pub(crate) struct ExtendRetentionArgs {}

pub(crate) fn run(g: &GlobalArgs, _args: &ExtendRetentionArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    if repo.config().object_lock.is_none() {
        bail!(
            "this repository is not locked: only one made with `vault init --object-lock-days N` has a retention to extend"
        );
    }
    // Exclusive, like prune: an object a concurrent prune deletes between
    // the listing and its extension would fail the run.
    let _lock = super::exclusive_lock(g, &repo, "extend-retention")?;
    if !extend(g, &repo)? {
        bail!(
            "the storage of this copy of a locked repository cannot lock objects: nothing was extended"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Extends the retention of a locked repository's objects and says so;
/// nothing for an unlocked one, or one on storage that cannot lock (then
/// `false`). The caller holds the exclusive lock.
pub(crate) fn extend(g: &GlobalArgs, repo: &Repository) -> Result<bool> {
    let Some(done) = object_lock::extend_retention(repo, jiff::Timestamp::now())? else {
        return Ok(repo.config().object_lock.is_none());
    };
    if g.json {
        let mut v = serde_json::to_value(&done)?;
        v["message_type"] = "retention_extended".into();
        output::print_json(&v)?;
    } else if !g.quiet {
        outln!(
            "object lock of {} objects extended until {}",
            done.objects,
            done.until.strftime("%Y-%m-%d %H:%M:%S UTC")
        )?;
    }
    Ok(true)
}
