//! `vault copy [SNAPSHOT...] --to REPO`: copy snapshots into a second
//! repository (local or S3, its own password and keys), sending only the
//! blobs it does not have. Snapshots already copied are skipped, so
//! repeating a copy copies nothing new, and an interrupted copy resumes
//! without uploading again what it had uploaded.

use super::FilterArgs;
use super::key_add::read_password_file;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vault_engine::Repository;
use vault_engine::compress::Compression;
use vault_engine::copy::{self, CopyOptions, CopyProgress};
use vault_engine::crypto::Password;

#[derive(Debug, clap::Args)]
pub(crate) struct CopyArgs {
    /// Snapshots to copy (`latest` or id prefixes); all when none is given.
    snapshots: Vec<String>,
    /// The target repository (a local path or an s3: URL).
    #[arg(long, env = "VAULT_TO_REPOSITORY", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    to: String,
    /// The source repository; the same as --repo.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    from_repo: Option<String>,
    /// Read the target's password from this file (first line). Without
    /// this, VAULT_TO_PASSWORD or --to-password-command, the source's
    /// password is used.
    #[arg(long, env = "VAULT_TO_PASSWORD_FILE")]
    to_password_file: Option<PathBuf>,
    /// Run this shell command and use its output as the target's password.
    #[arg(long, env = "VAULT_TO_PASSWORD_COMMAND", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    to_password_command: Option<String>,
    /// Compression of blobs stored in the target: zstd (default), zstd,LEVEL, lz4, none.
    #[arg(long, default_value = "zstd")]
    compression: Compression,
    /// Concurrent pack uploads to the target.
    #[arg(long, default_value_t = 4)]
    upload_concurrency: usize,
    /// Concurrent pack reads from the source.
    #[arg(long, default_value_t = 4)]
    download_concurrency: usize,
    #[command(flatten)]
    filter: FilterArgs,
}

/// A second repository's password: `file`, else the environment variable
/// `env`, else `command`; `None` when none is given.
pub(crate) fn other_password(
    file: Option<&Path>,
    env: &str,
    command: Option<&str>,
) -> Result<Option<Password>> {
    if let Some(file) = file {
        return read_password_file(file, "password file").map(Some);
    }
    if let Some(pw) = global::env_password(env) {
        return Ok(Some(pw));
    }
    if let Some(command) = command {
        return global::run_password_command(command).map(Some);
    }
    Ok(None)
}

/// Opens a repository at `url` with `password`, with its local cache.
pub(crate) fn open_other(g: &GlobalArgs, url: &str, password: &Password) -> Result<Repository> {
    let backend = global::open_backend(g, url)?;
    let mut repo =
        Repository::open(backend, password).with_context(|| format!("opening repository {url}"))?;
    global::attach_cache(g, &mut repo);
    Ok(repo)
}

pub(crate) fn run(g: &GlobalArgs, args: &CopyArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let mut src_g = g.clone();
    if let Some(from) = &args.from_repo {
        src_g.repo = Some(from.clone());
    }
    let src_url = global::repo_url(&src_g)?;
    let src_password = global::password(&src_g, false)?;
    let src = open_other(&src_g, &src_url, &src_password)?;
    let dst_password = other_password(
        args.to_password_file.as_deref(),
        "VAULT_TO_PASSWORD",
        args.to_password_command.as_deref(),
    )?
    .unwrap_or(src_password);
    let dst =
        Arc::new(open_other(g, &args.to, &dst_password).context("opening the target of the copy")?);

    let (all, damaged) = super::snapshots_and_damaged(&src)?;
    let selected: Vec<_> = super::pick_snapshots(&all, damaged, &args.snapshots, &args.filter)?
        .into_iter()
        .cloned()
        .collect();
    let options = CopyOptions {
        compression: args.compression,
        upload_concurrency: args.upload_concurrency.max(1),
        download_concurrency: args.download_concurrency.max(1),
        cancel: cancel.clone(),
        ..CopyOptions::default()
    };
    let progress = Arc::new(CopyProgress::default());
    let bar = {
        let p = progress.clone();
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let read2 = read.clone();
        output::Progress::start(global::show_progress(g), None, read, move || {
            read2.store(p.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
            format!(
                "read; snapshot {}/{}, {} stored",
                p.snapshots_done.load(Ordering::Relaxed),
                p.snapshots_total.load(Ordering::Relaxed),
                output::bytes(p.saver.bytes_stored.load(Ordering::Relaxed))
            )
        })
    };
    let result = copy::copy(&src, &dst, &selected, &options, &progress);
    bar.finish();
    let report = result?;
    // The WAL archive of every source whose base backups were selected
    // (and of every configured source), so a copied base backup can be
    // recovered, and to any point the source repository can reach.
    let mut wal_sources: std::collections::BTreeSet<String> = selected
        .iter()
        .filter(|(_, s)| s.tags.iter().any(|t| t == "physical"))
        .flat_map(|(_, s)| s.tags.iter().filter(|t| *t != "physical").cloned())
        .collect();
    if let Some(config) = global::config(g)? {
        wal_sources.extend(config.sources.iter().map(|s| s.name().to_owned()));
    }
    let mut wal_copied: Vec<(String, u64)> = Vec::new();
    for source in &wal_sources {
        let n = vault_engine::wal::copy_stream(&src, &dst, source, &cancel)
            .with_context(|| format!("copying the WAL archive of source {source}"))?;
        if n > 0 {
            wal_copied.push((source.clone(), n));
        }
    }
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        v["wal_files_copied"] = wal_copied.iter().map(|(_, n)| n).sum::<u64>().into();
        v["message_type"] = "summary".into();
        v["source"] = src.config().id.clone().into();
        v["target"] = dst.config().id.clone().into();
        output::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !g.quiet {
        let by_id: std::collections::HashMap<_, _> = all.iter().map(|(id, s)| (*id, s)).collect();
        let describe = |id: &vault_engine::id::SnapshotId| {
            by_id.get(id).map_or_else(String::new, |s| {
                format!(
                    "{} {} {}",
                    output::local_time(&s.time),
                    s.hostname,
                    s.paths.join(", ")
                )
            })
        };
        for s in &report.skipped {
            outln!(
                "skipped snapshot {} ({}): already in the target as {}",
                s.source.short(),
                describe(&s.source),
                s.existing.short()
            )?;
        }
        for c in &report.copied {
            outln!(
                "copied snapshot {} ({}) to {}",
                c.source.short(),
                describe(&c.source),
                c.target.short()
            )?;
        }
        outln!(
            "{} snapshots copied, {} already there; read {} blobs ({}), stored {} new blobs ({} plaintext, {} stored) in {} packs",
            report.copied.len(),
            report.skipped.len(),
            report.blobs_read,
            output::bytes(report.bytes_read),
            report.blobs_added,
            output::bytes(report.bytes_added),
            output::bytes(report.bytes_stored),
            report.packs_uploaded
        )?;
        for (source, n) in &wal_copied {
            outln!("copied {n} WAL files of source {source}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
