//! `vault key passwd`: change the password of the key in use: a key file
//! for the new password is added (and verified), then the old one removed.

use super::key_add::NewKeyArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::key;

#[derive(Debug, clap::Args)]
pub(crate) struct KeyPasswdArgs {
    #[command(flatten)]
    new: NewKeyArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &KeyPasswdArgs) -> Result<ExitCode> {
    let new = args.new.new_key()?;
    let repo = global::open_repository(g)?;
    let password = args.new.require_new_password()?;
    let _lock = super::exclusive_lock(g, &repo, "key passwd")?;
    global::stop_if_interrupted()?;
    let (added, removed) = key::change_password(&repo, &password, &new, &global::interrupted())
        .map_err(|e| match e {
            vault_engine::Error::Interrupted => anyhow::Error::new(e)
                .context("the password was not changed (the new key was removed again)"),
            e => e.into(),
        })?;
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "key_changed",
            "id": added.to_hex(),
            "removed": removed.to_hex(),
        }))?;
    } else if !g.quiet {
        outln!(
            "password changed: added key {}, removed key {}",
            added.short(),
            removed.short()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
