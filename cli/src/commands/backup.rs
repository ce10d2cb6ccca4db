//! `vault backup`: files, standard input, or a command's output into a new
//! snapshot.

use crate::args::GlobalArgs;
use crate::config::{Config, SourceConfig, SourceKind};
use crate::output::outln;
use crate::{exit, global, notify, output, sources, status, timespec};
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vault_engine::Repository;
use vault_engine::backup::{self, BackupOptions, BackupProgress, Source};
use vault_engine::compress::Compression;

#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// Files and directories to back up, or names of configured sources
    /// (none: every configured source).
    paths: Vec<PathBuf>,
    /// Also back up the paths listed in this file, one per line (`-`:
    /// standard input; repeatable). Lines are trimmed; blank lines and
    /// lines starting with `#` are skipped; a line with `*`, `?` or `[` is
    /// a glob pattern, expanded (one matching nothing is skipped with a
    /// warning).
    #[arg(long, value_name = "FILE")]
    files_from: Vec<PathBuf>,
    /// As --files-from, but each line is a path taken as it is: no
    /// trimming, comments or patterns (only empty lines are skipped).
    #[arg(long, value_name = "FILE")]
    files_from_verbatim: Vec<PathBuf>,
    /// As --files-from-verbatim, but paths are separated by NUL bytes
    /// (`find -print0`), so names may hold newlines.
    #[arg(long, value_name = "FILE")]
    files_from_raw: Vec<PathBuf>,
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
    /// For postgres sources: a physical base backup (pg_basebackup) for
    /// point-in-time recovery with archived WAL, instead of a dump.
    #[arg(long)]
    physical: bool,
    /// Tag the snapshot (repeatable, or comma-separated).
    #[arg(long = "tag", value_delimiter = ',')]
    tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(short = 'H', long = "host")]
    host: Option<String>,
    /// Snapshot time instead of now: `YYYY-MM-DD HH:MM[:SS]` or
    /// `YYYY-MM-DD` (local time; a date is its midnight), RFC 3339 with an
    /// offset, now, today or yesterday (today and yesterday are midnight,
    /// 00:00 local time).
    #[arg(long, value_name = "TIME", value_parser = timespec::parse_arg)]
    time: Option<timespec::TimeArg>,
    /// Exclude paths matching a pattern (repeatable), taken as given.
    /// Patterns match the bytes of file names; one that is not UTF-8 names
    /// a path literally.
    #[arg(short = 'e', long = "exclude", value_parser = clap::value_parser!(OsString))]
    excludes: Vec<OsString>,
    /// Exclude paths matching a pattern, ignoring case (repeatable). These
    /// form a list of their own: a `!` pattern here re-includes only what
    /// another --iexclude pattern excluded.
    #[arg(long = "iexclude", value_parser = clap::value_parser!(OsString))]
    iexcludes: Vec<OsString>,
    /// Read exclude patterns from a file, one per line: lines are trimmed,
    /// blank and `#` lines skipped, $VAR and ${VAR} expanded (unset: empty).
    #[arg(long)]
    exclude_file: Vec<PathBuf>,
    /// Read patterns from a file as --exclude-file does, matched ignoring
    /// case as --iexclude's.
    #[arg(long)]
    iexclude_file: Vec<PathBuf>,
    /// Leave out files larger than SIZE (e.g. 500M, 2G).
    #[arg(long, value_name = "SIZE", value_parser = crate::args::parse_size)]
    exclude_larger_than: Option<u64>,
    /// Skip the content of directories containing a CACHEDIR.TAG, except
    /// the CACHEDIR.TAG itself.
    #[arg(long)]
    exclude_caches: bool,
    /// Skip the content of directories containing a file of this name,
    /// except that file; `NAME:HEADER` also requires the file to start with
    /// HEADER (repeatable).
    #[arg(long, value_name = "NAME[:HEADER]", value_parser = marker())]
    exclude_if_present: Vec<OsString>,
    /// Stay on the file system of each given path.
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Compression: zstd (default), zstd,LEVEL, lz4, none.
    #[arg(long, default_value = "zstd")]
    compression: Compression,
    /// Re-read every file even if unchanged since the parent snapshot.
    #[arg(short = 'f', long)]
    force: bool,
    /// Parent snapshot for change detection (default: newest with same host and paths).
    #[arg(long)]
    parent: Option<String>,
    /// Change detection ignores inode numbers (file systems that renumber
    /// them on every mount would otherwise re-read every file).
    #[arg(long)]
    ignore_inode: bool,
    /// Change detection ignores the status change time (ctime).
    #[arg(long)]
    ignore_ctime: bool,
    /// Save no snapshot when nothing changed since the parent snapshot.
    #[arg(long)]
    skip_if_unchanged: bool,
    /// Stop a dump, a --stdin-from-command command or a source's hook
    /// still running after DURATION (e.g. 2h) and fail its source; for
    /// configured sources, overrides their `timeout`.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_duration)]
    timeout: Option<std::time::Duration>,
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

/// How a `--files-from*` file lists its paths.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListStyle {
    /// `--files-from`: trimmed lines, `#` comments, glob patterns.
    Patterns,
    /// `--files-from-verbatim`: each line a path as it is.
    Verbatim,
    /// `--files-from-raw`: NUL-separated paths.
    Raw,
}

impl ListStyle {
    fn flag(self) -> &'static str {
        match self {
            ListStyle::Patterns => "--files-from",
            ListStyle::Verbatim => "--files-from-verbatim",
            ListStyle::Raw => "--files-from-raw",
        }
    }
}

/// The paths listed in `--files-from*` files. Lists are bytes, not text: a
/// file name need not be UTF-8.
fn listed_paths(lists: &[(ListStyle, &PathBuf)]) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for &(style, file) in lists {
        let flag = style.flag();
        let bytes = if file.as_os_str() == "-" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .with_context(|| format!("reading {flag} from standard input"))?;
            bytes
        } else {
            std::fs::read(file).with_context(|| format!("reading {flag} {}", file.display()))?
        };
        let separator = if style == ListStyle::Raw {
            b'\0'
        } else {
            b'\n'
        };
        for entry in bytes.split(|&b| b == separator) {
            let entry = match style {
                ListStyle::Patterns => {
                    let line = entry.trim_ascii();
                    if line.starts_with(b"#") {
                        continue;
                    }
                    line
                }
                ListStyle::Verbatim | ListStyle::Raw => entry,
            };
            if entry.is_empty() {
                continue;
            }
            let glob = match std::str::from_utf8(entry) {
                Ok(text) if style == ListStyle::Patterns && text.contains(['*', '?', '[']) => {
                    Some(text)
                }
                _ => None,
            };
            let Some(pattern) = glob else {
                out.push(PathBuf::from(std::ffi::OsStr::from_bytes(entry)));
                continue;
            };
            let matches = glob::glob(pattern)
                .with_context(|| format!("{flag} {}: pattern {pattern:?}", file.display()))?;
            let before = out.len();
            // An unreadable directory on the way is reported by the walk
            // when it is a path to back up; while matching, it only cannot
            // match.
            out.extend(matches.flatten());
            if out.len() == before {
                eprintln!(
                    "vault: warning: {flag} {}: {pattern:?} matches nothing, skipped",
                    file.display()
                );
            }
        }
    }
    Ok(out)
}

pub(crate) fn run(g: &GlobalArgs, args: BackupArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let lists: Vec<(ListStyle, &PathBuf)> = (args.files_from.iter())
        .map(|f| (ListStyle::Patterns, f))
        .chain(
            args.files_from_verbatim
                .iter()
                .map(|f| (ListStyle::Verbatim, f)),
        )
        .chain(args.files_from_raw.iter().map(|f| (ListStyle::Raw, f)))
        .collect();
    if !lists.is_empty() {
        if args.stdin || args.stdin_from_command {
            bail!(
                "--files-from backs up paths: it does not go with --stdin or --stdin-from-command"
            );
        }
        let listed = listed_paths(&lists)?;
        if listed.is_empty() && args.paths.is_empty() {
            bail!("--files-from lists no paths");
        }
        let mut args = args;
        args.paths.extend(listed);
        args.files_from.clear();
        args.files_from_verbatim.clear();
        args.files_from_raw.clear();
        return run(g, args, cancel);
    }
    if !args.stdin
        && !args.stdin_from_command
        && let Some(config) = global::config(g)?
        && !config.sources.is_empty()
    {
        let names: Vec<String> = args
            .paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if names.iter().all(|n| config.source(n).is_some()) {
            return run_sources(g, &args, config, &names, cancel);
        }
        // `vault backup big /srv/x` would back up ./big as a path (a
        // warning, exit 3) and never run the source.
        if let Some(name) = names
            .iter()
            .find(|n| config.source(n).is_some() && std::fs::symlink_metadata(n).is_err())
        {
            bail!(
                "{name} names a configured source, but the other arguments are paths: back up sources (`vault backup {name}`) and paths in separate runs"
            );
        }
        // `vault backup shopdb` for the source shop-db: say so, rather than
        // "nothing to back up: shopdb cannot be read".
        if let Some(typo) = names.iter().find(|n| {
            !n.contains('/') && config.source(n).is_none() && std::fs::symlink_metadata(n).is_err()
        }) {
            let known: Vec<&str> = config.sources.iter().map(SourceConfig::name).collect();
            bail!(
                "{typo} is neither a configured source ({}) nor a path",
                known.join(", ")
            );
        }
    }
    if args.physical {
        bail!("--physical backs up configured postgres sources: `vault backup SOURCE --physical`");
    }
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
            bail!(
                "nothing to back up: give paths, --stdin, --stdin-from-command, or configure sources"
            );
        }
        if !args.command.is_empty() {
            bail!("a command after `--` needs --stdin-from-command");
        }
        Source::Paths(args.paths.clone())
    };
    let repo = global::open_repository_with(g, args.dry_run)?;
    let options = options(g, &args, &repo, cancel, args.tags.clone(), Vec::new())?;
    let report = run_one(g, &repo, source, &options)?;
    print_summary(g, &report, args.dry_run, None)?;
    if let Some(t) = &args.time {
        t.note(g, "--time");
    }
    if report.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "vault: snapshot saved, but {} entries could not be read (or not all their metadata)",
            report.errors.len()
        );
        Ok(ExitCode::from(exit::INCOMPLETE))
    }
}

fn options(
    g: &GlobalArgs,
    args: &BackupArgs,
    repo: &Repository,
    cancel: Arc<AtomicBool>,
    tags: Vec<String>,
    extra_excludes: Vec<String>,
) -> Result<BackupOptions> {
    let mut excludes = args.excludes.clone();
    excludes.extend(extra_excludes.into_iter().map(OsString::from));
    for file in &args.exclude_file {
        excludes.extend(super::pattern_file(file)?);
    }
    let mut iexcludes = args.iexcludes.clone();
    for file in &args.iexclude_file {
        iexcludes.extend(super::pattern_file(file)?);
    }
    let parent = match &args.parent {
        Some(spec) => Some(super::pick_snapshot(repo, Some(spec), None, &Default::default())?.0),
        None => None,
    };
    let _ = g;
    Ok(BackupOptions {
        compression: args.compression,
        excludes,
        iexcludes,
        exclude_larger_than: args.exclude_larger_than,
        exclude_caches: args.exclude_caches,
        exclude_if_present: args.exclude_if_present.clone(),
        one_file_system: args.one_file_system,
        tags: tags.into_iter().filter(|t| !t.is_empty()).collect(),
        hostname: args.host.clone().unwrap_or_else(global::hostname),
        username: global::username(),
        time: args.time.as_ref().map(|t| t.time.clone()),
        parent,
        force: args.force,
        change_detection: backup::ChangeDetection {
            ignore_inode: args.ignore_inode,
            ignore_ctime: args.ignore_ctime,
        },
        skip_if_unchanged: args.skip_if_unchanged,
        upload_concurrency: args.upload_concurrency,
        cancel,
        command_timeout: args.timeout,
        require_files: false,
    })
}

fn run_one(
    g: &GlobalArgs,
    repo: &Arc<Repository>,
    source: Source,
    options: &BackupOptions,
) -> Result<backup::BackupReport> {
    let progress = Arc::new(BackupProgress::default());
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
    let result = backup::backup(repo, source, options, &progress);
    bar.finish();
    let report = result.context("backup failed")?;
    for e in &report.errors {
        eprintln!("vault: warning: {}: {}", e.path, e.error);
    }
    Ok(report)
}

fn duration_secs(report: &backup::BackupReport) -> f64 {
    let s = &report.snapshot.summary;
    match (s.backup_start, s.backup_end) {
        (Some(a), Some(b)) => (b - a).total(jiff::Unit::Second).unwrap_or(0.0),
        _ => 0.0,
    }
}

/// With `--json`, a configured source that saved nothing gets a line too,
/// so a script reading one object per source sees every source.
fn print_source_error(g: &GlobalArgs, source: &str, message: &str, code: u8) -> Result<()> {
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "error",
            "source": source,
            "error": { "message": message },
            "exit_code": code,
        }))?;
    }
    Ok(())
}

fn print_summary(
    g: &GlobalArgs,
    report: &backup::BackupReport,
    dry_run: bool,
    source: Option<&str>,
) -> Result<()> {
    let s = &report.snapshot.summary;
    let duration = duration_secs(report);
    if g.json {
        let mut v = serde_json::json!({
            "message_type": "summary",
            "dry_run": dry_run,
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
            // A dry run saves no snapshot: no id a script could take for one.
            "snapshot_id": (!dry_run).then(|| report.snapshot_id.to_hex()),
            "snapshot_skipped": report.skipped,
            "errors": report.errors,
        });
        if let Some(name) = source {
            v["source"] = name.into();
        }
        output::print_json(&v)?;
    } else if !g.quiet {
        if let Some(name) = source {
            outln!("source {name}:")?;
        }
        outln!(
            "Files: {} new, {} changed, {} unmodified",
            s.files_new,
            s.files_changed,
            s.files_unmodified
        )?;
        outln!(
            "Added to the repository: {} ({} stored)",
            output::bytes(s.data_added),
            output::bytes(s.data_added_packed)
        )?;
        outln!(
            "processed {} files, {} in {duration:.1}s",
            s.total_files_processed,
            output::bytes(s.total_bytes_processed)
        )?;
        if dry_run {
            outln!("dry run: nothing was written")?;
        } else if report.skipped {
            outln!(
                "nothing changed since snapshot {}: no snapshot saved",
                report.snapshot_id.short()
            )?;
        } else {
            outln!("snapshot {} saved", report.snapshot_id.short())?;
        }
    }
    Ok(())
}

/// Holds a per-source lock file so overlapping cron runs never back up the
/// same source twice at once. Released when dropped (or when the process
/// dies: the kernel drops the lock).
/// `None` when another run holds it.
fn source_lock(status_path: &std::path::Path, name: &str) -> Result<Option<std::fs::File>> {
    let dir = status_path
        .parent()
        .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf)
        .join("locks");
    status::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.lock"));
    let file = status::open_lock_file(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// `--exclude-if-present`'s value, any bytes, checked as a marker file
/// name.
fn marker() -> impl clap::builder::TypedValueParser<Value = OsString> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new()
        .try_map(|value| vault_engine::backup::check_marker(&value).map(|()| value))
}

fn run_sources(
    g: &GlobalArgs,
    args: &BackupArgs,
    config: &Config,
    names: &[String],
    cancel: Arc<AtomicBool>,
) -> Result<ExitCode> {
    let selected: Vec<&SourceConfig> = if names.is_empty() {
        config.sources.iter().collect()
    } else {
        names.iter().filter_map(|n| config.source(n)).collect()
    };
    let status_path = status::path(config.notify.status_file.as_deref());
    let host = args.host.clone().unwrap_or_else(global::hostname);
    // A repository that cannot be opened (revoked keys, an endpoint down,
    // an unmounted disk) fails every source: recorded and alerted like any
    // other failure, or cron's most common failure would be silent.
    let repo = match global::open_repository_with(g, args.dry_run) {
        Ok(repo) => repo,
        Err(e) => {
            if !args.dry_run {
                let why = format!("opening the repository: {e:#}");
                let outcomes: Vec<_> = selected
                    .iter()
                    .map(|s| (s.name().to_owned(), Err(why.clone())))
                    .collect();
                // The open failure is what to report; a status file that
                // cannot be written must not hide it.
                if let Err(re) = record(config, &status_path, &host, args.physical, &outcomes) {
                    eprintln!("vault: warning: {re:#}");
                }
            }
            for s in &selected {
                print_source_error(
                    g,
                    s.name(),
                    &format!("opening the repository: {e:#}"),
                    exit::code_of(&e),
                )?;
            }
            return Err(e);
        }
    };
    let mut failed = 0usize;
    // The exit code of the first source that failed (its kind: a failing
    // dump command, a full disk...).
    let mut first_failure: Option<u8> = None;
    let mut incomplete = 0usize;
    let mut locked = 0usize;
    let mut outcomes: Vec<(String, Result<backup::BackupReport, String>)> = Vec::new();
    for source in selected {
        let name = source.name().to_owned();
        if cancel.load(Ordering::SeqCst) {
            return interrupted(args, config, &status_path, &host, outcomes);
        }
        // The overlap lock lives beside the status file: where that cannot
        // be written (a full or read-only /var), the backup still runs,
        // and its outcome is alerted.
        let _guard = match source_lock(&status_path, &name) {
            Ok(Some(lock)) => Some(lock),
            Err(e) => {
                eprintln!(
                    "vault: warning: {e:#}: backing up source {name} without its overlap lock"
                );
                None
            }
            Ok(None) => {
                eprintln!(
                    "vault: source {name}: another vault backup of it is still running; skipped"
                );
                locked += 1;
                print_source_error(
                    g,
                    &name,
                    "skipped: another vault backup of it is still running",
                    exit::LOCKED,
                )?;
                // A failure to report: a source hung since the last run must not
                // pass for fine in the status and the heartbeat.
                outcomes.push((
                    name,
                    Err("skipped: the previous backup of this source is still running".into()),
                ));
                continue;
            }
        };
        let mut tags = vec![name.clone()];
        if args.physical {
            tags.push("physical".into());
        }
        // Split as `--tag` is: `tags = ["a, b"]` is two tags, not one no
        // selector could ever name.
        tags.extend(
            source
                .tags
                .iter()
                .flat_map(|t| t.split(','))
                .map(str::to_owned),
        );
        tags.extend(args.tags.iter().cloned());
        // `backup --timeout`, else the source's: for its dump or command
        // and for each of its hooks.
        let timeout = match args.timeout {
            Some(t) => Some(t),
            None => source
                .timeout
                .as_deref()
                .map(crate::args::parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?,
        };
        // A dry run changes nothing: it stops no service either.
        let hooks = !args.dry_run;
        let before = if hooks {
            sources::run_hook(source, sources::Hook::Before, timeout, cancel.clone())
        } else {
            Ok(())
        };
        let result = before.and_then(|()| {
            let engine_source = if args.physical {
                sources::physical_source(source)?
            } else {
                sources::backup_source(source)?
            };
            let mut opts = options(g, args, &repo, cancel.clone(), tags, source.exclude.clone())?;
            opts.exclude_caches |= source.exclude_caches;
            opts.iexcludes
                .extend(source.iexclude.iter().map(OsString::from));
            opts.exclude_if_present
                .extend(source.exclude_if_present.iter().map(OsString::from));
            if opts.exclude_larger_than.is_none()
                && let Some(size) = &source.exclude_larger_than
            {
                opts.exclude_larger_than =
                    Some(crate::args::parse_size(size).map_err(anyhow::Error::msg)?);
            }
            opts.one_file_system |= source.one_file_system;
            opts.require_files = source.kind == SourceKind::Files && !source.allow_empty;
            opts.command_timeout = timeout;
            let report = run_one(g, &repo, engine_source, &opts)?;
            if args.physical && !args.dry_run {
                ensure_wal_archived(&repo, &name, &report)?;
            }
            Ok(report)
        });
        // Whatever happened, `before` included (it may have stopped a
        // service before failing): `after` is what starts it again, so
        // Ctrl-C does not stop it; its timeout does.
        let after = if hooks {
            sources::run_hook(
                source,
                sources::Hook::After { ok: result.is_ok() },
                timeout,
                Arc::new(AtomicBool::new(false)),
            )
            .err()
        } else {
            None
        };
        if let Ok(report) = &result {
            print_summary(g, report, args.dry_run, Some(&name))?;
        }
        // The failure to report, and the error whose kind sets the exit
        // code: the backup's own first.
        let failure = match (&result, &after) {
            (Ok(_), None) => None,
            (Ok(report), Some(a)) => Some((
                a,
                format!("{a:#} (snapshot {} was saved)", report.snapshot_id.short()),
            )),
            (Err(e), None) => Some((e, format!("{e:#}"))),
            (Err(e), Some(a)) => Some((e, format!("{e:#}; then {a:#}"))),
        };
        match failure {
            None => {
                if result.as_ref().is_ok_and(|r| !r.errors.is_empty()) {
                    incomplete += 1;
                }
            }
            Some((e, message)) => {
                if result.as_ref().is_err_and(|e| {
                    e.chain().any(|c| {
                        c.downcast_ref::<vault_engine::Error>()
                            .is_some_and(|v| matches!(v, vault_engine::Error::Interrupted))
                    })
                }) {
                    let then = after.map(|a| format!("; then {a:#}")).unwrap_or_default();
                    outcomes.push((
                        name,
                        Err(format!(
                            "interrupted (SIGINT/SIGTERM) before it finished; no snapshot was saved{then}"
                        )),
                    ));
                    return interrupted(args, config, &status_path, &host, outcomes);
                }
                eprintln!("vault: error: source {name}: {message}");
                failed += 1;
                first_failure.get_or_insert(exit::code_of(e));
                print_source_error(g, &name, &message, exit::code_of(e))?;
                outcomes.push((name, Err(message)));
                continue;
            }
        }
        outcomes.push((name, result.map_err(|e| format!("{e:#}"))));
    }
    // A status file that cannot be written (its disk full) is reported,
    // but a source's failure keeps its own exit code.
    let recorded = if args.dry_run {
        Ok(())
    } else {
        record(config, &status_path, &host, args.physical, &outcomes)
    };
    if failed > 0 {
        if let Err(e) = &recorded {
            eprintln!("vault: error: the outcomes were not recorded: {e:#}");
        }
        eprintln!("vault: {failed} of {} sources failed", outcomes.len());
        return Ok(ExitCode::from(first_failure.unwrap_or(exit::FATAL)));
    }
    recorded.context("the backups were saved, but not recorded in the status file")?;
    if let Some(t) = &args.time {
        t.note(g, "--time");
    }
    if locked > 0 {
        return Ok(ExitCode::from(exit::LOCKED));
    }
    if incomplete > 0 {
        return Ok(ExitCode::from(exit::INCOMPLETE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails a base backup whose first WAL segment is not in this repository's
/// archive of the source, and removes its snapshot: without that WAL it can
/// never be restored, and as a snapshot it would count in retention. The
/// server confirmed archiving before pg_basebackup ended, so the segment
/// went elsewhere: `archive_command` is not `vault wal push` into this
/// repository and source (a runbook's `cp`, another config, a typo).
fn ensure_wal_archived(
    repo: &Repository,
    source: &str,
    report: &backup::BackupReport,
) -> Result<()> {
    let index = repo.load_index()?;
    let (start, _) = crate::pitr::base_backup_start(repo, &index, &report.snapshot)?;
    let archived = vault_engine::wal::list(repo, source)?;
    if archived.iter().any(|(name, _)| *name == start) {
        return Ok(());
    }
    let removed = match repo.delete_snapshot(&report.snapshot_id) {
        Ok(()) => "it was not kept".to_owned(),
        Err(e) => format!(
            "removing its snapshot {} failed too ({e}): forget it",
            report.snapshot_id.short()
        ),
    };
    Err(vault_engine::Error::SourceFailed(format!(
        "the base backup starts in WAL segment {start}, which is not archived in this repository for source {source}: the server's archive_command does not run `vault wal push` into it (docs/pitr.md), so this base backup could never be restored; {removed}"
    ))
    .into())
}

/// Ends a run that was interrupted (Ctrl-C, or systemd stopping it at its
/// timeout): what finished, and the source cut off, are recorded and
/// alerted like any run's, or the status would go on showing the previous
/// success.
fn interrupted(
    args: &BackupArgs,
    config: &Config,
    status_path: &std::path::Path,
    host: &str,
    outcomes: Vec<(String, Result<backup::BackupReport, String>)>,
) -> Result<ExitCode> {
    if !args.dry_run
        && let Err(e) = record(config, status_path, host, args.physical, &outcomes)
    {
        eprintln!("vault: warning: {e:#}");
    }
    Err(vault_engine::Error::Interrupted.into())
}

/// Updates the status file, sends failure alerts and, when due, the
/// success heartbeat. Base backups (`physical`) are recorded apart from a
/// source's dumps: one that works must not hide dumps that fail. Alerts go
/// out after the status file is saved, and also when it cannot be: a
/// webhook that hangs must not hold other runs waiting for the file, and a
/// status file that cannot be written must not silence an alert.
fn record(
    config: &Config,
    status_path: &std::path::Path,
    host: &str,
    physical: bool,
    outcomes: &[(String, Result<backup::BackupReport, String>)],
) -> Result<()> {
    let now = jiff::Timestamp::now();
    let now_text = now.to_string();
    // What each outcome is to alert, and to record as its failure.
    let failures: Vec<(&str, notify::Alert, String)> = outcomes
        .iter()
        .filter_map(|(name, outcome)| match outcome {
            // Exit 3: saved, but without what could not be read (a
            // permission, a vanished mount). Someone must look.
            Ok(report) => report.errors.first().map(|first| {
                let error = format!(
                    "{} entries could not be read, first {}: {}",
                    report.errors.len(),
                    first.path,
                    first.error
                );
                (name.as_str(), notify::Alert::BackupIncomplete, error)
            }),
            Err(error) => Some((name.as_str(), notify::Alert::BackupFailed, error.clone())),
        })
        .collect();
    let saved = status::StatusFile::update(status_path, |file| {
        for (name, outcome) in outcomes {
            let entry = file.sources.entry(name.clone()).or_default();
            let entry = if physical {
                &mut **entry.physical.get_or_insert_with(Box::default)
            } else {
                entry
            };
            if let Ok(report) = outcome {
                entry.last_success = Some(status::Success {
                    time: now_text.clone(),
                    snapshot: report.snapshot_id.to_hex(),
                    bytes_processed: report.snapshot.summary.total_bytes_processed,
                    bytes_added: report.snapshot.summary.data_added_packed,
                    duration_secs: duration_secs(report),
                });
                entry.last_result = Some("success".into());
            }
            if let Some((_, what, error)) = failures.iter().find(|(n, ..)| n == name) {
                entry.last_result = Some(
                    match what {
                        notify::Alert::BackupIncomplete => "incomplete",
                        _ => "failure",
                    }
                    .into(),
                );
                entry.last_failure = Some(status::Failure {
                    time: now_text.clone(),
                    error: error.clone(),
                });
            }
        }
        heartbeat_due(config, file, now)
    });
    for (name, what, error) in &failures {
        notify::alert(
            &config.notify.on_failure,
            *what,
            name,
            error,
            host,
            &now_text,
        );
    }
    // Not when the file could not be saved: the heartbeat could not be
    // recorded either, and every run would send one.
    if let Ok(true) = saved {
        let urls = if config.notify.on_success.is_empty() {
            &config.notify.on_failure
        } else {
            &config.notify.on_success
        };
        let lines: Vec<(String, String)> = outcomes
            .iter()
            .filter_map(|(n, o)| {
                let r = o.as_ref().ok()?;
                Some((
                    n.clone(),
                    format!(
                        "snapshot {}, {} processed, {} added",
                        r.snapshot_id.short(),
                        output::bytes(r.snapshot.summary.total_bytes_processed),
                        output::bytes(r.snapshot.summary.data_added_packed)
                    ),
                ))
            })
            .collect();
        // Recorded only once delivered: a heartbeat lost to a webhook
        // that was down is sent again by the next run.
        if notify::heartbeat(urls, host, &now_text, &lines) {
            status::StatusFile::update(status_path, |file| {
                file.last_heartbeat = Some(now_text.clone());
            })?;
        }
    }
    saved.map(|_| ())
}

/// Whether the success heartbeat is due: every source is fine, including
/// sources this run did not include (per-source timers run one at a time),
/// and none's latest drill failed (its backups may not restore), and a
/// period has passed since the last one. A period less 1/24 of it: a daily
/// run that ends a little earlier than yesterday's (`RandomizedDelaySec`)
/// must still send it.
fn heartbeat_due(config: &Config, file: &status::StatusFile, now: jiff::Timestamp) -> bool {
    let Some(period) = config.notify.heartbeat else {
        return false;
    };
    let all_ok = config.sources.iter().all(|s| {
        file.sources
            .get(s.name())
            .is_none_or(|e| !e.needs_attention() && !e.drill_failed())
    });
    all_ok
        && file
            .last_heartbeat
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_none_or(|last| {
                now.as_second() - last.as_second() >= period.secs() - period.secs() / 24
            })
}
