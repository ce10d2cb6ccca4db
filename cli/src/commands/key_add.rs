//! `vault key add`: another password for the repository (a new key file
//! wrapping the same master key; no data is rewritten). Also the flags and
//! the new-password prompt the other `vault key` commands share.

use crate::args::{GlobalArgs, KdfArgs};
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result, bail};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use vault_engine::crypto::Password;
use vault_engine::key::{self, NewKey};

/// How to get the new password and how hard to derive its key.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NewKeyArgs {
    /// Read the new password from this file (first line) instead of asking.
    #[arg(long, env = "VAULT_NEW_PASSWORD_FILE")]
    pub(crate) new_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) kdf: KdfArgs,
}

impl NewKeyArgs {
    pub(crate) fn new_key(&self) -> Result<NewKey> {
        Ok(NewKey {
            kdf: self.kdf.params()?,
            hostname: global::hostname(),
            username: global::username(),
        })
    }

    /// The new password: `--new-password-file`, else a prompt (twice) on a
    /// terminal, else `None`.
    pub(crate) fn new_password(&self) -> Result<Option<Password>> {
        if let Some(file) = &self.new_password_file {
            return read_password_file(file, "new password file").map(Some);
        }
        if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            let pw = rpassword::prompt_password("enter new password: ")?;
            let again = rpassword::prompt_password("enter new password again: ")?;
            if again != pw {
                bail!("passwords do not match");
            }
            return Ok(Some(Password::new(pw)));
        }
        Ok(None)
    }

    /// The new password, or an error saying how to give one.
    pub(crate) fn require_new_password(&self) -> Result<Password> {
        self.new_password()?.context(
            "no new password: pass --new-password-file FILE (or run on a terminal to be asked)",
        )
    }
}

/// The first line of a password file (without `\r\n`).
pub(crate) fn read_password_file(path: &std::path::Path, what: &str) -> Result<Password> {
    global::warn_if_shared(path, what);
    let text = std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Password::new(line.to_vec()))
}

#[derive(Debug, clap::Args)]
pub(crate) struct KeyAddArgs {
    #[command(flatten)]
    new: NewKeyArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &KeyAddArgs) -> Result<ExitCode> {
    let new = args.new.new_key()?;
    let repo = global::open_repository(g)?;
    let password = args.new.require_new_password()?;
    global::stop_if_interrupted()?;
    let id = key::add(&repo, &password, &new)?;
    // Stopped while the key was written: take it back, so that exit 130
    // means no key was added.
    if let Err(stop) = global::stop_if_interrupted() {
        return Err(match key::remove(&repo, &id, true) {
            Ok(()) => stop.context(format!("key {} was added and removed again", id.short())),
            Err(e) => stop.context(format!(
                "key {} was added, and removing it again failed ({e}): `vault key remove {}` removes it",
                id.short(),
                id.short()
            )),
        });
    }
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "key_added",
            "id": id.to_hex(),
        }))?;
    } else if !g.quiet {
        outln!("added key {}", id.short())?;
    }
    Ok(ExitCode::SUCCESS)
}
