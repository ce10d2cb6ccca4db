//! `vault key remove ID`: delete one key file. Never the last one; never
//! the one in use without `--force`.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::key;

#[derive(Debug, clap::Args)]
pub(crate) struct KeyRemoveArgs {
    /// The key's id, or a unique prefix of it (`vault key list`).
    id: String,
    /// Also remove the key that opened the repository (another must remain).
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(g: &GlobalArgs, args: &KeyRemoveArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    // Two removals at once could each leave only the other's key.
    let _lock = super::exclusive_lock(g, &repo, "key remove")?;
    let id = key::resolve(&repo, &args.id)?;
    global::stop_if_interrupted()?;
    key::remove(&repo, &id, args.force)?;
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "key_removed",
            "id": id.to_hex(),
        }))?;
    } else if !g.quiet {
        outln!("removed key {}", id.short())?;
    }
    Ok(ExitCode::SUCCESS)
}
