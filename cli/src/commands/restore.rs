//! `vault restore`: write a snapshot back to disk.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{exit, global, output};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use vault_engine::restore::{self, Overwrite, RestoreOptions, RestoreProgress};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OverwriteArg {
    Never,
    Always,
    IfChanged,
    IfNewer,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// Snapshot: `latest` (default), an id prefix, or a configured source
    /// name (its latest snapshot, or the one --at picks). `SNAPSHOT:DIR`
    /// restores only DIR, its content into the target (restic's
    /// SNAPSHOT:SUBFOLDER; --include/--exclude then match paths below DIR).
    snapshot: Option<String>,
    /// Restore the newest snapshot at or before this time instead:
    /// `YYYY-MM-DD HH:MM[:SS]` or `YYYY-MM-DD` (local time; a date is its
    /// midnight), RFC 3339 with an offset, now, today or yesterday (today
    /// and yesterday are midnight, 00:00 local time).
    #[arg(long, value_name = "TIME", value_parser = crate::timespec::parse_arg)]
    at: Option<crate::timespec::TimeArg>,
    /// Directory to restore into (paths are re-rooted under it).
    #[arg(short, long, required_unless_present = "into_database")]
    target: Option<PathBuf>,
    /// For a database source: create this database and load the dump into it.
    #[arg(long, conflicts_with = "target")]
    into_database: Option<String>,
    /// Point-in-time recovery of a postgres source: write the newest base
    /// backup before --at into --target with recovery settings, so starting
    /// PostgreSQL there replays archived WAL up to --at.
    #[arg(long, requires = "target")]
    pitr: bool,
    /// With --pitr: recover along this timeline instead of the one that was
    /// current at --at (the newest without --at).
    #[arg(long, requires = "pitr")]
    timeline: Option<u32>,
    /// With --pitr: keep the source's WAL archiving in the restored cluster
    /// (for a cluster that replaces the lost primary). Without it
    /// archive_mode is off there: a restore test that promotes would push
    /// its own timeline into the production archive, and a later restore
    /// to the newest timeline would follow the test's history. Prints the
    /// archive_command the cluster keeps, and the files it names that this
    /// host lacks.
    #[arg(long, requires = "pitr")]
    keep_archiving: bool,
    /// Only restore these snapshot paths (and what is below them). Globs
    /// match the bytes of names; a path that is not UTF-8 is taken
    /// literally.
    #[arg(short, long = "include", value_parser = clap::value_parser!(std::ffi::OsString))]
    includes: Vec<std::ffi::OsString>,
    /// Skip paths matching these patterns.
    #[arg(short, long = "exclude", value_parser = clap::value_parser!(std::ffi::OsString))]
    excludes: Vec<std::ffi::OsString>,
    /// Existing files: never (refuse), always, if-changed (verify and fix),
    /// if-newer (replace only what the snapshot has newer, by mtime).
    #[arg(long, value_enum, default_value = "never", num_args = 0..=1, default_missing_value = "always")]
    overwrite: OverwriteArg,
    /// Remove files and directories the snapshot does not hold from the
    /// restored directories (inside the backed-up paths; excluded paths are
    /// kept), so the target ends up as the snapshot was. Needs --overwrite.
    #[arg(long)]
    delete: bool,
    /// Change nothing: print what would be restored, written and deleted.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Read every restored file back and check it against the snapshot.
    #[arg(long, conflicts_with = "dry_run")]
    verify: bool,
    /// Concurrent pack downloads [default: one per core on a local disk, 4
    /// on an object store].
    #[arg(long)]
    concurrency: Option<usize>,
    /// As root, restore even into a target another user could change
    /// (see "Restore" in the README): that user could swap the target for
    /// a symlink before the restore opens it and make root write or chmod
    /// files anywhere.
    #[arg(long)]
    allow_unsafe_target: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &RestoreArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let code = restore_picked(g, args, cancel)?;
    // Once it ran: how `--at yesterday` was read, in case that is not the
    // day's end the user meant.
    if let Some(at) = &args.at {
        at.note(g, "--at");
    }
    Ok(code)
}

fn restore_picked(g: &GlobalArgs, args: &RestoreArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let filter = args.filter.clone();
    let mut spec = args.snapshot.as_deref();
    let source = match (global::config(g)?, spec) {
        (Some(config), Some(name)) => config.source(name),
        _ => None,
    };
    // restic's SNAPSHOT:SUBFOLDER: that directory's content becomes the
    // target's.
    let mut subfolder = None;
    if let (None, Some(whole)) = (source, spec)
        && let Some((snapshot, dir)) = whole.split_once(':')
    {
        spec = Some(snapshot);
        subfolder = Some(dir);
    }
    if subfolder.is_some() && (args.pitr || args.into_database.is_some()) {
        return Err(crate::exit::Coded {
            code: crate::exit::USAGE,
            message: "SNAPSHOT:DIR: --pitr and --into-database take a source name".to_owned(),
        }
        .into());
    }
    if args.pitr {
        let source = source.with_context(|| match spec {
            Some(name) => format!(
                "--pitr needs a configured postgres source: {}",
                global::no_such_source(g, name)
            ),
            None => format!(
                "--pitr needs the name of a configured postgres source, as `vault restore SOURCE --pitr` ({})",
                global::config_whereabouts(g)
            ),
        })?;
        return crate::pitr::restore(
            g,
            &repo,
            source,
            args.at.as_ref(),
            args.timeline,
            args.keep_archiving,
            &args.target.clone().context("--target")?,
        );
    }
    let picked = if let Some(source) = source {
        super::pick_source_snapshot(&repo, source.name(), args.at.as_ref(), false, &filter)?
    } else {
        if let (Some(at), Some(name)) = (&args.at, spec) {
            if name == "latest" {
                bail!("give either a snapshot id or --at, not both");
            }
            // Likely a source name, on a machine without the config.
            bail!(
                "{}; --at picks a snapshot by time, for a source name, not a snapshot id: to pick by tag instead, give `--tag {name} --at \"{}\"` without `{name}`",
                global::no_such_source(g, name),
                at.text
            );
        }
        super::pick_snapshot(&repo, spec, args.at.as_ref(), &filter)
            .map_err(|e| unknown_name(g, spec, &filter, e))?
    };
    let (id, snap) = picked;
    let index = repo.load_index()?;
    if let Some(database) = &args.into_database {
        let source = source.with_context(|| {
            format!(
                "--into-database needs a configured database source name, e.g. `vault restore phone-db --into-database phone_restored` ({})",
                global::config_whereabouts(g)
            )
        })?;
        return restore_database(g, &repo, &index, &snap, &id, source, database);
    }
    let target = args.target.clone().context("--target is required")?;
    if args.delete && args.overwrite == OverwriteArg::Never {
        bail!(
            "--delete makes the target what the snapshot was: give --overwrite (always), --overwrite if-changed or --overwrite if-newer too"
        );
    }
    if !args.dry_run && !args.allow_unsafe_target && nix::unistd::geteuid().is_root() {
        // Made first, so that what is checked is what the restore uses: a
        // target another user makes after the check would be used as it is.
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        if let Some(why) = unsafe_target(&target)? {
            bail!(
                "not restoring as root into {}: {why}, who could swap the target or a directory \
                 on the way to it for a symlink before the restore opens it and make root write \
                 files anywhere; \
                 restore into a directory only root can change, then move what you need, \
                 or pass --allow-unsafe-target",
                target.display()
            );
        }
    }
    let root = super::subfolder_tree(
        &repo,
        &index,
        &snap,
        spec.unwrap_or("latest"),
        subfolder.map(std::ffi::OsStr::new),
    )?;
    let options = RestoreOptions {
        target: target.clone(),
        includes: args.includes.clone(),
        excludes: args.excludes.clone(),
        overwrite: match args.overwrite {
            OverwriteArg::Never => Overwrite::Never,
            OverwriteArg::Always => Overwrite::Always,
            OverwriteArg::IfChanged => Overwrite::IfChanged,
            OverwriteArg::IfNewer => Overwrite::IfNewer,
        },
        delete_within: if args.delete {
            delete_within(&snap.paths, subfolder)
        } else {
            Vec::new()
        },
        dry_run: args.dry_run,
        verify: args.verify,
        concurrency: args.concurrency.unwrap_or_else(|| repo.read_concurrency()),
        cancel,
        // A device node this user may not create is an entry not restored
        // (exit 3); only a drill notes it as not checked.
        devices_need_root_ok: false,
    };
    let progress = Arc::new(RestoreProgress::default());
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bar = {
        let (p, t, d) = (progress.clone(), total.clone(), done.clone());
        output::Progress::start(global::show_progress(g), Some(total), done, move || {
            use std::sync::atomic::Ordering::Relaxed;
            t.store(p.bytes_total.load(Relaxed), Relaxed);
            d.store(p.bytes_done.load(Relaxed), Relaxed);
            String::new()
        })
    };
    let result = restore::restore(&repo, &index, &root, &options, &progress);
    bar.finish();
    if let Err(vault_engine::Error::Interrupted) = &result
        && !args.dry_run
    {
        // Files may stand at full size with unwritten ranges: say how to
        // finish without fetching again what is already there.
        eprintln!(
            "vault: the restore into {} is incomplete; run it again with `--overwrite if-changed` to finish it, writing only what is missing",
            target.display()
        );
    }
    let report = result.with_context(|| format!("restoring snapshot {}", id.short()))?;
    for w in &report.warnings {
        eprintln!("vault: warning: {w}");
    }
    // A disaster restore to / goes through /lib -> usr/lib: said, as what
    // it leads to got the content but none of the directory's metadata.
    let keep = if args.dry_run { "would keep" } else { "kept" };
    for link in &report.kept_links {
        eprintln!(
            "vault: {keep} directory symlink {} -> {}",
            link.path, link.target
        );
    }
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        v["message_type"] = "summary".into();
        v["snapshot_id"] = id.to_hex().into();
        v["dry_run"] = args.dry_run.into();
        output::print_json(&v)?;
    } else if !g.quiet {
        if args.dry_run || g.verbose > 0 {
            let verb = if args.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            for path in &report.deleted_paths {
                outln!("{verb} {path}")?;
            }
            print_changed(&report.changed_entries, args.dry_run, g.verbose)?;
        }
        outln!(
            "{}snapshot {} ({}) to {}: {} files, {} dirs, {} {}{}{}{}{}{}",
            if args.dry_run {
                "dry run: nothing changed; would restore "
            } else {
                "restored "
            },
            id.short(),
            output::local_time(&snap.time),
            target.display(),
            report.files,
            report.dirs,
            output::bytes(report.bytes_written),
            if args.dry_run { "to write" } else { "written" },
            if report.bytes_skipped > 0 {
                format!(", {} already correct", output::bytes(report.bytes_skipped))
            } else {
                String::new()
            },
            changed_counts(&report.changed_entries, args.dry_run),
            if report.kept > 0 {
                format!(", {} kept (as new or newer in the target)", report.kept)
            } else {
                String::new()
            },
            if args.delete {
                let verb = if args.dry_run { "to delete" } else { "deleted" };
                format!(", {} {verb}", report.deleted)
            } else {
                String::new()
            },
            if args.verify {
                format!("; {} files read back and verified", report.verified_files)
            } else {
                String::new()
            }
        )?;
    }
    let failed = report.failed_count();
    if failed > 0 {
        // A directory not created names the entries below it in one line;
        // beyond SHOWN lines (a read-only target refuses everything) the
        // rest are counted, and --json lists every one.
        const SHOWN: usize = 20;
        for f in report.failed_entries.iter().take(SHOWN) {
            let below = match f.entries_below {
                0 => String::new(),
                n => format!(" (nor the {n} entries below it)"),
            };
            eprintln!("vault: error: {}: {}{below}", f.path, f.error);
        }
        if report.failed_entries.len() > SHOWN {
            eprintln!(
                "vault: error: ... and {} more (`--json` lists every one)",
                report.failed_entries.len() - SHOWN
            );
        }
        let rest = if report.files + report.dirs + report.others > 0 {
            "; everything else was restored"
        } else {
            ""
        };
        eprintln!(
            "vault: {failed} entries could not be restored, or not intact: the target refused them{rest}"
        );
    }
    if !report.damaged_entries.is_empty() {
        for e in &report.damaged_entries {
            eprintln!(
                "vault: error: {}: not restored: its entry in the snapshot is damaged ({})",
                e.path, e.error
            );
        }
        eprintln!(
            "vault: {} entries could not be restored; everything else was (`vault check` names the damage)",
            report.damaged_entries.len()
        );
    }
    if !report.damaged_files.is_empty() {
        for f in &report.damaged_files {
            if f.wrong_size {
                eprintln!(
                    "vault: error: {}: {}: restored with its content, at its content's size",
                    f.path, f.error
                );
            } else {
                eprintln!(
                    "vault: error: {}: restored with zeros where its data is damaged or missing ({})",
                    f.path, f.error
                );
            }
        }
        eprintln!(
            "vault: {} files could not be restored intact; everything else was (`vault check --verify` names the damage, `vault repair index --read-data` and `vault repair snapshots --forget` clear it)",
            report.damaged_files.len()
        );
        // 4 when only missing objects are to blame, as for other commands.
        let code = if report.damaged_entries.is_empty()
            && report.damaged_files.iter().all(|f| f.missing)
        {
            exit::MISSING
        } else {
            exit::DAMAGED
        };
        return Ok(ExitCode::from(code));
    }
    if !report.damaged_entries.is_empty() {
        return Ok(ExitCode::from(exit::DAMAGED));
    }
    // Damage in the repository (above) says more than a target refusing
    // entries, and wins.
    if failed > 0 {
        return Ok(ExitCode::from(exit::INCOMPLETE));
    }
    Ok(ExitCode::SUCCESS)
}

/// The backed-up paths `--delete` works within, as a restore of the
/// snapshot's directory `dir` (`SNAPSHOT:DIR`, whose content becomes the
/// target's) sees them: a backed-up path at or above `dir` makes all of it
/// the snapshot's (the target's own entries too), one below `dir` the part
/// of it there, and one beside it nothing. The directories above a
/// backed-up path are only the way to it, as in a whole restore.
fn delete_within(paths: &[String], dir: Option<&str>) -> Vec<String> {
    let Some(dir) = dir.filter(|d| !super::is_root(std::ffi::OsStr::new(d))) else {
        return paths.to_vec();
    };
    let dir = Path::new("/").join(dir);
    (paths.iter())
        .filter_map(|path| {
            if dir.starts_with(path) {
                Some("/".to_owned())
            } else {
                let below = Path::new(path).strip_prefix(&dir).ok()?;
                Some(Path::new("/").join(below).to_string_lossy().into_owned())
            }
        })
        .collect()
}

/// A snapshot argument that matched no snapshot id and names no configured
/// source: say both, since on a new machine without the config a source
/// name ("no snapshot matches pgmain") looked like a missing backup.
/// Other failures (damage, an ambiguous prefix, storage) pass unchanged.
fn unknown_name(
    g: &GlobalArgs,
    spec: Option<&str>,
    filter: &FilterArgs,
    e: anyhow::Error,
) -> anyhow::Error {
    let Some(name) = spec.filter(|s| *s != "latest") else {
        return e;
    };
    let plain = e.chain().all(|c| {
        c.downcast_ref::<vault_engine::Error>().is_none()
            && c.downcast_ref::<vault_engine::snapshot::SelectError>()
                .is_none()
    });
    if !plain {
        return e;
    }
    // --host/--tag/--path do not apply to an id: no snapshot at all has
    // it. A name that could be a tag (not an id's hex) may have been meant
    // as one; with --tag given already, the user picks by tag and knows.
    let as_tag = if filter.tags.is_empty() && !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!(
            "; to restore the newest snapshot tagged {name}, give `latest --tag {name}` in place of `{name}`"
        )
    } else {
        String::new()
    };
    anyhow::anyhow!(
        "no snapshot id starts with `{name}`, and {}{as_tag}",
        global::no_such_source(g, name)
    )
}

fn restore_database(
    g: &GlobalArgs,
    repo: &vault_engine::Repository,
    index: &vault_engine::index::Index,
    snap: &vault_engine::snapshot::Snapshot,
    id: &vault_engine::id::SnapshotId,
    source: &crate::config::SourceConfig,
    database: &str,
) -> Result<ExitCode> {
    let filename = crate::sources::dump_filename(source);
    let node = restore::find_node(repo, index, &snap.tree, format!("/{filename}"))
        .with_context(|| format!("snapshot {} holds no {filename}", id.short()))?;
    crate::sources::create_database(source, database).map_err(|e| {
        if format!("{e:#}").contains("exists") {
            e.context(format!(
                "database {database} exists already: a restore loads only into a database it creates; give a new name, or drop that one first"
            ))
        } else {
            e
        }
    })?;
    let mut written = 0u64;
    let loaded = crate::sources::load_database(source, database, &mut |out| {
        written = restore::dump(repo, index, &node, out)?;
        Ok(())
    });
    if let Err(e) = loaded {
        // CREATE DATABASE above succeeded, so this run made the database
        // and nothing but this load has been in it: dropping it again
        // loses nothing, and spares the retry "already exists" (and an
        // application pointed at it a partial copy).
        return Err(match crate::sources::drop_database(source, database) {
            Ok(()) => e.context(format!(
                "database {database}, created by this restore, was dropped again, partly loaded; fix the cause and run the restore again"
            )),
            Err(dropping) => e.context(format!(
                "database {database} was created by this restore and is left partly loaded, as dropping it failed ({dropping:#}): drop it ({}) before running the restore again",
                crate::sources::drop_statement(source, database)
            )),
        });
    }
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "summary",
            "snapshot_id": id.to_hex(),
            "database": database,
            "bytes": written,
        }))?;
    } else if !g.quiet {
        outln!(
            "loaded {} ({}) from snapshot {} ({}) into database {database}",
            filename,
            output::bytes(written),
            id.short(),
            output::local_time(&snap.time)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Why another user could change where a restore into `target` writes
/// while it runs, if one could: the target itself, or a directory on the
/// way to it (as given, and with symlinks resolved: a target that is a
/// symlink is followed, as restic follows it), is owned by a user other
/// than root, or writable by others. A directory on the way that is
/// writable by all but sticky (/tmp) is safe when what it holds on the way
/// is root's: no one else may rename or remove it. The target itself must
/// not be writable by others even so: they could make names in it first.
fn unsafe_target(target: &std::path::Path) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let absolute =
        std::path::absolute(target).with_context(|| format!("resolving {}", target.display()))?;
    let resolved =
        std::fs::canonicalize(target).with_context(|| format!("resolving {}", target.display()))?;
    let by_whom = |meta: &std::fs::Metadata| {
        let mode = meta.mode();
        if meta.uid() != 0 {
            Some(format!("is owned by uid {}", meta.uid()))
        } else if mode & 0o002 != 0 {
            Some("is writable by every user".to_owned())
        } else if mode & 0o020 != 0 && meta.gid() != 0 {
            Some(format!("is writable by group gid {}", meta.gid()))
        } else {
            None
        }
    };
    for path in [&absolute, &resolved] {
        // Each directory on the way, with the entry it holds on the way.
        let mut dir = std::path::PathBuf::from("/");
        for part in path.components().skip(1) {
            let entry = dir.join(part);
            let (Ok(meta), Ok(held)) = (std::fs::metadata(&dir), std::fs::symlink_metadata(&entry))
            else {
                // `..`, or gone meanwhile: the resolved path is checked.
                dir = entry;
                continue;
            };
            let sticky = meta.mode() & 0o1000 != 0;
            if let Some(why) = by_whom(&meta)
                && !(sticky && meta.uid() == 0 && held.uid() == 0)
            {
                return Ok(Some(format!("{} {why}", dir.display())));
            }
            dir = entry;
        }
    }
    let meta =
        std::fs::metadata(&resolved).with_context(|| format!("reading {}", resolved.display()))?;
    Ok(by_whom(&meta).map(|why| format!("{} {why}", resolved.display())))
}

/// With `--overwrite if-changed`, what was not as the snapshot has it:
/// every entry changed (`updated PATH (content, mode)`, `replaced PATH`),
/// and with `-vv` also every one created. A dry run says what it would do.
fn print_changed(
    changed: &[vault_engine::restore::ChangedEntry],
    dry_run: bool,
    verbose: u8,
) -> anyhow::Result<()> {
    for entry in changed {
        let line = match &entry.changes[..] {
            ["created"] if verbose < 2 => continue,
            ["created"] if dry_run => format!("would restore {}", entry.path),
            ["created"] => format!("restored {}", entry.path),
            ["replaced"] if dry_run => format!("would replace {}", entry.path),
            ["replaced"] => format!("replaced {}", entry.path),
            what => format!(
                "{} {} ({})",
                if dry_run { "would update" } else { "updated" },
                entry.path,
                what.join(", ")
            ),
        };
        outln!("{line}")?;
    }
    Ok(())
}

/// The summary's count of entries changed and created (if-changed).
fn changed_counts(changed: &[vault_engine::restore::ChangedEntry], dry_run: bool) -> String {
    if changed.is_empty() {
        return String::new();
    }
    let created = changed.iter().filter(|e| e.changes == ["created"]).count();
    let (updated, made) = if dry_run {
        ("to update", "to create")
    } else {
        ("updated", "created")
    };
    let changed = changed.len() - created;
    let entries = if changed == 1 { "entry" } else { "entries" };
    format!(", {changed} {entries} {updated}, {created} {made}")
}

#[cfg(test)]
mod tests {
    use super::delete_within;

    #[test]
    fn delete_within_a_subfolder_is_rerooted_at_it() {
        let paths = [
            "/srv/a".to_owned(),
            "/srv/b/c".to_owned(),
            "/etc".to_owned(),
        ];
        let within = |dir| delete_within(&paths, dir);
        assert_eq!(within(None), paths);
        assert_eq!(within(Some("/")), paths);
        // At or below a backed-up path: all of DIR.
        assert_eq!(within(Some("/srv/a")), ["/"]);
        assert_eq!(within(Some("srv/a/x/")), ["/"]);
        // Above backed-up paths: what lies below DIR of them.
        assert_eq!(within(Some("/srv")), ["/a", "/b/c"]);
        assert_eq!(within(Some("./srv/b")), ["/c"]);
        // Beside them, or a name sharing only a prefix: nothing.
        assert!(within(Some("/home")).is_empty());
        assert!(within(Some("/srv/ab")).is_empty());
    }
}
