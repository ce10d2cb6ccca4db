//! `vault key import FILE`: disaster recovery. Opens the repository with a
//! master key from `vault key export --paper` (when every key file is lost,
//! or every password forgotten), checks it decrypts the config, and adds a
//! key file for a new password.

use super::key_add::NewKeyArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use vault_engine::key::{self, paper};

#[derive(Debug, clap::Args)]
pub(crate) struct KeyImportArgs {
    /// The paper key file (`-` for standard input).
    file: PathBuf,
    /// The new password comes from --new-password-file, else from the usual
    /// password options (VAULT_PASSWORD, --password-file, --password-command),
    /// else a prompt.
    #[command(flatten)]
    new: NewKeyArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &KeyImportArgs) -> Result<ExitCode> {
    let new = args.new.new_key()?;
    let mut text = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the paper key from standard input")?;
    } else {
        std::fs::File::open(&args.file)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("reading {}", args.file.display()))?;
    }
    let paper = paper::decode(&text)?;
    let url = global::repo_url(g)?;
    let backend = global::open_backend(g, &url)?;
    let password = match args.new.new_password_file {
        Some(_) => args.new.require_new_password()?,
        None => global::password(g, true)?,
    };
    global::stop_if_interrupted()?;
    let (repo, id) = key::import(backend, &paper, &password, &new)
        .with_context(|| format!("importing the key into {url}"))?;
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "key_imported",
            "repository": repo.config().id,
            "id": id.to_hex(),
        }))?;
    } else if !g.quiet {
        outln!(
            "the key opens repository {}; added key {} for the new password",
            &repo.config().id[..10],
            id.short()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
