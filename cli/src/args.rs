//! Top-level arguments: global flags shared by every command.

use crate::commands::Command;
use clap::{Args, Parser};
use std::path::PathBuf;

/// vault: encrypted, deduplicated backups of file trees and databases to
/// local disk or S3-compatible storage.
#[derive(Debug, Parser)]
#[command(name = "vault", version, after_help = crate::exit::HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args, Clone)]
pub(crate) struct GlobalArgs {
    /// Repository: a local path, s3:https://HOST/BUCKET/PREFIX or s3://BUCKET/PREFIX
    /// [default: ~/.local/share/vault/repo].
    #[arg(short = 'r', long = "repo", env = "VAULT_REPOSITORY", global = true)]
    pub(crate) repo: Option<String>,
    /// Read the password from this file (first line).
    #[arg(long, env = "VAULT_PASSWORD_FILE", global = true)]
    pub(crate) password_file: Option<PathBuf>,
    /// Run this shell command and use its output as the password.
    #[arg(long, env = "VAULT_PASSWORD_COMMAND", global = true)]
    pub(crate) password_command: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Print only errors; no progress.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Configuration file [default: /etc/vault/vault.toml when it exists].
    #[arg(long, env = "VAULT_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Allow plain HTTP to a non-loopback S3 endpoint.
    #[arg(long, global = true)]
    pub(crate) allow_http: bool,
}
