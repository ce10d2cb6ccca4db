//! `vault backup`: files, standard input, or a command's output into a new
//! snapshot.

use crate::args::GlobalArgs;
use crate::{exit, global, output, timespec};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vault_engine::backup::{self, BackupOptions, BackupProgress, Source};
use vault_engine::compress::Compression;

#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// Files and directories to back up.
    paths: Vec<PathBuf>,
    /// Back up standard input as one file.
    #[arg(long, conflicts_with = "stdin_from_command")]
    stdin: bool,
    /// File name for --stdin/--stdin-from-command data in the snapshot.
    #[arg(long, default_value = "stdin")]
    stdin_filename: String,
    /// Run the command after `--` and back up its standard output; the
    /// snapshot fails if the command exits non-zero.
    #[arg(long)]
    stdin_from_command: bool,
    /// Tag the snapshot (repeatable, or comma-separated).
    #[arg(long = "tag", value_delimiter = ',')]
    tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long = "host")]
    host: Option<String>,
    /// Snapshot time instead of now ("YYYY-MM-DD HH:MM:SS" local, or RFC 3339).
    #[arg(long)]
    time: Option<String>,
    /// Exclude paths matching a pattern (repeatable).
    #[arg(short = 'e', long = "exclude")]
    excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line.
    #[arg(long)]
    exclude_file: Vec<PathBuf>,
    /// Skip directories containing a CACHEDIR.TAG.
    #[arg(long)]
    exclude_caches: bool,
    /// Stay on the file system of each given path.
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Compression: zstd (default), zstd,LEVEL, lz4, none.
    #[arg(long, default_value = "zstd")]
    compression: Compression,
    /// Re-read every file even if unchanged since the parent snapshot.
    #[arg(long)]
    force: bool,
    /// Parent snapshot for change detection (default: newest with same host and paths).
    #[arg(long)]
    parent: Option<String>,
    /// Concurrent pack uploads.
    #[arg(long, default_value_t = 4)]
    upload_concurrency: usize,
    /// Do everything except writing to the repository.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// The command for --stdin-from-command.
    #[arg(last = true)]
    command: Vec<std::ffi::OsString>,
}

pub(crate) fn run(g: &GlobalArgs, args: BackupArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let source = if args.stdin_from_command {
        let Some((program, rest)) = args.command.split_first() else {
            bail!("--stdin-from-command needs a command after `--`");
        };
        if !args.paths.is_empty() {
            bail!("--stdin-from-command takes no paths");
        }
        Source::Command {
            filename: args.stdin_filename.clone(),
            program: program.clone(),
            args: rest.to_vec(),
            env: Vec::new(),
        }
    } else if args.stdin {
        if !args.paths.is_empty() {
            bail!("--stdin takes no paths");
        }
        Source::Stream {
            filename: args.stdin_filename.clone(),
            reader: Box::new(std::io::stdin()),
        }
    } else {
        if args.paths.is_empty() {
            bail!("nothing to back up: give paths, --stdin or --stdin-from-command");
        }
        if !args.command.is_empty() {
            bail!("a command after `--` needs --stdin-from-command");
        }
        Source::Paths(args.paths.clone())
    };
    let mut excludes = args.excludes.clone();
    for file in &args.exclude_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading exclude file {}", file.display()))?;
        excludes.extend(text.lines().map(str::to_owned));
    }
    let repo = global::open_repository_with(g, args.dry_run)?;
    let parent = match &args.parent {
        Some(spec) => {
            let snaps = repo.snapshots()?;
            let found = vault_engine::snapshot::select(&snaps, spec, &Default::default())?;
            Some(found.0)
        }
        None => None,
    };
    let options = BackupOptions {
        compression: args.compression,
        excludes,
        exclude_caches: args.exclude_caches,
        one_file_system: args.one_file_system,
        tags: args
            .tags
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect(),
        hostname: args.host.clone().unwrap_or_else(global::hostname),
        username: global::username(),
        time: args.time.as_deref().map(timespec::parse).transpose()?,
        parent,
        force: args.force,
        upload_concurrency: args.upload_concurrency,
        cancel,
    };
    let progress = BackupProgress::default();
    let progress = Arc::new(progress);
    let bar = {
        let p = progress.clone();
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done_clone = done.clone();
        output::Progress::start(global::show_progress(g), None, done, move || {
            done_clone.store(p.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
            format!(
                "{} files, {} new, {} errors",
                p.files.load(Ordering::Relaxed),
                output::bytes(p.saver.bytes_added.load(Ordering::Relaxed)),
                p.errors.load(Ordering::Relaxed)
            )
        })
    };
    let result = backup::backup(&repo, source, &options, &progress);
    bar.finish();
    let report = result.context("backup failed")?;
    for e in &report.errors {
        eprintln!("vault: warning: {}: {}", e.path, e.error);
    }
    let s = &report.snapshot.summary;
    let duration = match (s.backup_start, s.backup_end) {
        (Some(a), Some(b)) => (b - a).total(jiff::Unit::Second).unwrap_or(0.0),
        _ => 0.0,
    };
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "summary",
            "dry_run": args.dry_run,
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs_total": s.dirs_total,
            "data_blobs": s.data_blobs,
            "tree_blobs": s.tree_blobs,
            "data_added": s.data_added,
            "data_added_packed": s.data_added_packed,
            "total_files_processed": s.total_files_processed,
            "total_bytes_processed": s.total_bytes_processed,
            "total_duration": duration,
            "snapshot_id": report.snapshot_id.to_hex(),
            "errors": report.errors,
        }))?;
    } else if !g.quiet {
        println!(
            "Files: {} new, {} changed, {} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        );
        println!(
            "Added to the repository: {} ({} stored)",
            output::bytes(s.data_added),
            output::bytes(s.data_added_packed)
        );
        println!(
            "processed {} files, {} in {duration:.1}s",
            s.total_files_processed,
            output::bytes(s.total_bytes_processed)
        );
        if args.dry_run {
            println!("dry run: nothing was written");
        } else {
            println!("snapshot {} saved", report.snapshot_id.short());
        }
    }
    if report.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "vault: snapshot saved, but {} entries could not be read",
            report.errors.len()
        );
        Ok(ExitCode::from(exit::INCOMPLETE))
    }
}
