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
    #[arg(short = 'r', long = "repo", env = "VAULT_REPOSITORY", global = true,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub(crate) repo: Option<String>,
    /// Read the repository (as --repo takes it) from this file; not with
    /// --repo.
    #[arg(
        long,
        value_name = "FILE",
        env = "VAULT_REPOSITORY_FILE",
        global = true,
        conflicts_with = "repo"
    )]
    pub(crate) repository_file: Option<PathBuf>,
    /// Read the password from this file (first line). Not with
    /// --password-command.
    #[arg(
        short = 'p',
        long,
        env = "VAULT_PASSWORD_FILE",
        global = true,
        conflicts_with = "password_command"
    )]
    pub(crate) password_file: Option<PathBuf>,
    /// Run this shell command and use the first line of its output as the
    /// password (a command that fails or prints nothing: exit 1).
    #[arg(long, env = "VAULT_PASSWORD_COMMAND", global = true,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub(crate) password_command: Option<String>,
    /// When the repository is locked by another maintenance command, retry
    /// for up to DURATION (e.g. 5m) before failing with exit 11.
    #[arg(long, value_name = "DURATION", global = true, value_parser = parse_duration)]
    pub(crate) retry_lock: Option<std::time::Duration>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Print only errors; no progress.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// More log output (-v info, -vv debug; backup then names each file as
    /// new, modified or unchanged). VAULT_LOG (e.g. `debug`, `trace`,
    /// `vault_engine=debug`) overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Configuration file [default: /etc/vault/vault.toml when it exists].
    #[arg(long, env = "VAULT_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Trust the certificates in this PEM file as roots too, besides the
    /// system's, for an S3 endpoint whose certificate a private CA signed
    /// (repeatable). SSL_CERT_FILE=FILE works too, read in place of the
    /// system's certificate store.
    #[arg(long, value_name = "FILE", env = "VAULT_CACERT", global = true)]
    pub(crate) cacert: Vec<PathBuf>,
    /// Allow plain HTTP to a non-loopback S3 endpoint.
    #[arg(long, global = true)]
    pub(crate) allow_http: bool,
    /// Where to keep local copies of an object store's snapshots and index
    /// files [default: $XDG_CACHE_HOME/vault or ~/.cache/vault].
    #[arg(long, env = "VAULT_CACHE_DIR", global = true)]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Download snapshots and index files every time instead of keeping
    /// local copies.
    #[arg(long, global = true)]
    pub(crate) no_cache: bool,
    /// Upload at most this many KiB/s (averaged over each object); 0 is
    /// unlimited (as restic's, also over the config's `limit_upload`).
    #[arg(
        long,
        value_name = "KIB_PER_SEC",
        env = "VAULT_LIMIT_UPLOAD",
        global = true
    )]
    pub(crate) limit_upload: Option<u64>,
    /// Download at most this many KiB/s (averaged over each object); 0 is
    /// unlimited.
    #[arg(
        long,
        value_name = "KIB_PER_SEC",
        env = "VAULT_LIMIT_DOWNLOAD",
        global = true
    )]
    pub(crate) limit_download: Option<u64>,
}

/// A duration such as `24h`, `90m`, `2d 12h` or `1w` (a day is 24 hours
/// here: these are timeouts and margins, not calendar dates).
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let invalid = |e: jiff::Error| format!("invalid duration {s:?}: {e} (e.g. 90m, 24h, 2d)");
    let span: jiff::Span = s.trim().parse().map_err(invalid)?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(invalid)?;
    std::time::Duration::try_from(d).map_err(|_| format!("duration {s:?} is negative"))
}

/// A byte size: a number with an optional binary unit (`k`, `m`, `g`, `t`,
/// optionally followed by `b` or `ib`; `500M` is 500 MiB).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult: u64 = match s[i..]
                .to_ascii_lowercase()
                .trim_end_matches("ib")
                .trim_end_matches('b')
            {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("invalid size {s:?}")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// How hard to derive a new key file's key from its password (argon2id).
/// The parameters are stored in the key file, so any of them opens it.
#[derive(Debug, Clone, Args)]
pub(crate) struct KdfArgs {
    /// argon2id memory, in MiB.
    #[arg(long, default_value_t = 64)]
    kdf_memory_mib: u32,
    /// argon2id passes.
    #[arg(long, default_value_t = 3)]
    kdf_iterations: u32,
    /// argon2id lanes, computed on all cores at once.
    #[arg(long, default_value_t = vault_engine::crypto::KdfParams::default().parallelism)]
    kdf_lanes: u32,
}

impl KdfArgs {
    pub(crate) fn params(&self) -> vault_engine::Result<vault_engine::crypto::KdfParams> {
        let kdf = vault_engine::crypto::KdfParams {
            memory_kib: self.kdf_memory_mib.saturating_mul(1024),
            iterations: self.kdf_iterations,
            parallelism: self.kdf_lanes,
        };
        vault_engine::key::validate_kdf(&kdf)?;
        Ok(kdf)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units_and_refuse_overflow() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1 TB"), Ok(1 << 40));
        assert!(parse_size("12x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
