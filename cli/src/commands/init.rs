//! `vault init`: create a repository.

use crate::args::{GlobalArgs, KdfArgs};
use crate::global;
use crate::output::outln;
use anyhow::{Context, Result};
use std::process::ExitCode;
use vault_engine::backend::{ObjectLock, RetentionMode};
use vault_engine::repository::{InitOptions, Repository};

#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    kdf: KdfArgs,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pack_size_mib: u32,
    /// Use the chunker parameters (sizes and secret seed) of the --from-repo
    /// repository, so both cut files identically (for `vault copy`).
    #[arg(long, requires = "from_repo")]
    copy_chunker_params: bool,
    /// The repository to copy chunker parameters from.
    #[arg(long, requires = "copy_chunker_params", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    from_repo: Option<String>,
    /// Read --from-repo's password from this file (first line). Without
    /// this, VAULT_FROM_PASSWORD or --from-password-command, the new
    /// repository's password is tried.
    #[arg(long, env = "VAULT_FROM_PASSWORD_FILE")]
    from_password_file: Option<std::path::PathBuf>,
    /// Run this shell command and use its output as --from-repo's password.
    #[arg(long, env = "VAULT_FROM_PASSWORD_COMMAND", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    from_password_command: Option<String>,
    /// Lock every object against deletion and overwrite for N days after
    /// its upload (S3 Object Lock; the bucket must have it enabled).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(ObjectLock::MAX_DAYS)))]
    object_lock_days: Option<u32>,
    /// Object Lock mode: governance (an admin with
    /// s3:BypassGovernanceRetention can still delete) or compliance
    /// (nobody can, not even the account root).
    #[arg(long, default_value = "governance", requires = "object_lock_days")]
    object_lock_mode: RetentionMode,
}

pub(crate) fn run(g: &GlobalArgs, args: InitArgs) -> Result<ExitCode> {
    let url = global::repo_url(g)?;
    let backend = global::open_backend(g, &url)?;
    let kdf = args.kdf.params()?;
    let password = global::password(g, true)?;
    let chunker = match (&args.from_repo, args.copy_chunker_params) {
        (Some(from), true) => {
            let from_password = super::copy::other_password(
                args.from_password_file.as_deref(),
                "VAULT_FROM_PASSWORD",
                args.from_password_command.as_deref(),
            )?
            .unwrap_or_else(|| password.clone());
            let source = super::copy::open_other(g, from, &from_password)
                .context("reading chunker parameters from --from-repo")?;
            Some(source.config().chunker)
        }
        _ => None,
    };
    let options = InitOptions {
        kdf,
        chunker,
        pack_size: Some(args.pack_size_mib.clamp(1, 1024) * 1024 * 1024),
        hostname: global::hostname(),
        username: global::username(),
        object_lock: args.object_lock_days.map(|days| ObjectLock {
            mode: args.object_lock_mode,
            days,
        }),
        ..InitOptions::default()
    };
    let repo = Repository::init(backend, &password, options)
        .with_context(|| format!("creating repository at {url}"))?;
    if g.json {
        crate::output::print_json(&serde_json::json!({
            "message_type": "initialized",
            "id": repo.config().id,
            "repository": url,
        }))?;
    } else if !g.quiet {
        outln!(
            "created vault repository {} at {url}",
            &repo.config().id[..10]
        )?;
        if let Some(lock) = repo.config().object_lock {
            outln!(
                "every object is locked ({} mode) for {} days after its upload",
                lock.mode.header_value().to_ascii_lowercase(),
                lock.days
            )?;
        }
        outln!(
            "Keep the password safe: without it the data cannot be recovered. Consider `vault key export --paper`."
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
