//! `vault drill SOURCE`: a restore drill. Database sources: load the latest
//! dump into a scratch database, count every table's rows, drop it. File
//! sources: restore into a scratch directory (every chunk verified), count,
//! remove (device nodes, which only root can create, are noted as not
//! checked when the drill runs as another user). Exit 0 only if the drill
//! succeeded.

use crate::args::GlobalArgs;
use crate::config::SourceKind;
use crate::output::outln;
use crate::{exit, global, output, sources, status};
use anyhow::{Context, Result, bail};
use std::process::ExitCode;
use vault_engine::restore::{self, RestoreOptions, RestoreProgress};

#[derive(Debug, clap::Args)]
pub(crate) struct DrillArgs {
    /// Configured source to drill.
    source: String,
    /// Drill this snapshot instead of the latest (id prefix).
    #[arg(long)]
    snapshot: Option<String>,
}

pub(crate) fn run(
    g: &GlobalArgs,
    args: &DrillArgs,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<ExitCode> {
    let config = global::config(g)?.with_context(|| {
        format!(
            "vault drill needs a config file with sources ({})",
            global::config_whereabouts(g)
        )
    })?;
    let source = config.source(&args.source).with_context(|| {
        format!(
            "no source named {:?} in {}",
            args.source,
            config.path.display()
        )
    })?;
    let started = std::time::Instant::now();
    let mut report = serde_json::json!({ "source": source.name() });
    // Every failure past this point alerts, opening the repository and
    // finding a snapshot included: a drill with no backup to restore, or
    // a password that no longer opens the repository, is the worst drill
    // result there is.
    let outcome = drill(g, source, args, cancel, &mut report);
    // Stopped (Ctrl-C, systemd stopping it) says nothing about the
    // backups: neither passed nor failed, not recorded, not alerted.
    if let Err(e) = &outcome
        && exit::code_of(e) == exit::INTERRUPTED
    {
        eprintln!(
            "vault: drill of {} interrupted; nothing recorded",
            source.name()
        );
        return Ok(ExitCode::from(exit::INTERRUPTED));
    }
    report["duration_secs"] = started.elapsed().as_secs_f64().into();
    report["ok"] = outcome.is_ok().into();
    if let Err(e) = &outcome {
        report["error"] = format!("{e:#}").into();
        // A drill run from cron is how a team learns its backups do not
        // restore: it alerts like a failed backup.
        crate::notify::alert(
            &config.notify.on_failure,
            crate::notify::Alert::DrillFailed,
            source.name(),
            &format!("{e:#}"),
            &global::hostname(),
            &jiff::Timestamp::now().to_string(),
        );
    }
    record(config, source.name(), &report);
    if g.json {
        output::print_json(&report)?;
    } else if let Err(e) = &outcome {
        eprintln!("vault: drill of {} FAILED: {e:#}", source.name());
    } else if !g.quiet {
        outln!(
            "drill of {} passed: snapshot {} ({}) restored in {:.1}s{}",
            source.name(),
            report["snapshot_short_id"].as_str().unwrap_or_default(),
            report["snapshot_local_time"].as_str().unwrap_or_default(),
            report["duration_secs"].as_f64().unwrap_or(0.0),
            match report.get("rows") {
                Some(rows) => format!(
                    ", {} tables, {rows} rows",
                    report["tables"].as_array().map_or(0, Vec::len)
                ),
                None => format!(", {} files", report["files"]),
            }
        )?;
        if let Some(unchecked) = report["not_checked"].as_array() {
            outln!(
                "{} device node{} not checked (creating {} needs root): {}",
                unchecked.len(),
                if unchecked.len() == 1 { "" } else { "s" },
                if unchecked.len() == 1 { "it" } else { "them" },
                (unchecked.iter())
                    .take(5)
                    .filter_map(|u| u["path"].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if unchecked.len() > 5 { ", ..." } else { "" }
            )?;
        }
    }
    // The cause's exit code: 5 for damage, 12 for a wrong password, ...
    Ok(match &outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::exit::code_for(e),
    })
}

/// Records the drill in the status file, where `vault status` finds it
/// (`drill_max_age`). A status file that cannot be written costs a warning,
/// not the drill's result.
fn record(config: &crate::config::Config, source: &str, report: &serde_json::Value) {
    let path = status::path(config.notify.status_file.as_deref());
    let now = jiff::Timestamp::now().to_string();
    let ok = report["ok"] == true;
    let recorded = status::StatusFile::update(&path, |file| {
        let entry = file.sources.entry(source.to_owned()).or_default();
        entry.last_drill = Some(status::DrillRun {
            time: now.clone(),
            ok,
            snapshot: report["snapshot_id"].as_str().map(str::to_owned),
            error: report["error"].as_str().map(str::to_owned),
        });
        if ok {
            entry.last_drill_passed = Some(now.clone());
        }
    });
    if let Err(e) = recorded {
        eprintln!("vault: warning: the drill's result was not recorded: {e:#}");
    }
}

/// Restores the source's snapshot into scratch space, filling `report`.
fn drill(
    g: &GlobalArgs,
    source: &crate::config::SourceConfig,
    args: &DrillArgs,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    report: &mut serde_json::Value,
) -> Result<()> {
    let repo = global::open_repository(g)?;
    // Drills exercise the dumps (or file backups), not physical base
    // backups, unless a snapshot is named.
    let (id, snap) = match &args.snapshot {
        Some(spec) => {
            let filter = super::FilterArgs {
                tags: vec![source.name().to_owned()],
                ..super::FilterArgs::default()
            };
            super::pick_snapshot_within(&repo, spec, &filter)?
        }
        None => super::pick_source_snapshot(
            &repo,
            source.name(),
            None,
            false,
            &super::FilterArgs::default(),
        )?,
    };
    report["snapshot_id"] = id.to_hex().into();
    report["snapshot_short_id"] = id.short().into();
    report["snapshot_time"] = snap.time.timestamp().to_string().into();
    report["snapshot_local_time"] = output::local_time(&snap.time).into();
    let index = repo.load_index()?;
    match source.kind {
        SourceKind::Postgres | SourceKind::Mysql => {
            let scratch = format!(
                "vault_drill_{}_{}",
                source
                    .name()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
                std::process::id()
            );
            let result = (|| -> Result<()> {
                let filename = sources::dump_filename(source);
                let node = restore::find_node(&repo, &index, &snap.tree, format!("/{filename}"))?;
                // Without its roles the dump restores only onto this server.
                if source.globals {
                    let globals = sources::globals_filename(source);
                    let globals = restore::find_node(&repo, &index, &snap.tree, format!("/{globals}"))
                        .with_context(|| format!("the snapshot has no {globals} (globals = true): back up the source again"))?;
                    report["globals_bytes"] = globals.size.into();
                }
                sources::create_database(source, &scratch)?;
                sources::load_database(source, &scratch, &mut |out| {
                    restore::dump(&repo, &index, &node, out)?;
                    Ok(())
                })?;
                let counts = sources::table_counts(source, &scratch)?;
                if counts.is_empty() {
                    bail!("the restored database has no tables");
                }
                report["tables"] = counts
                    .iter()
                    .map(|(t, n)| serde_json::json!({"table": t, "rows": n}))
                    .collect::<Vec<_>>()
                    .into();
                report["rows"] = counts.iter().map(|(_, n)| n).sum::<u64>().into();
                // A key naming a view gets its own message, not "not
                // in the restored database".
                let views = if source.drill_min_rows.is_empty() {
                    Vec::new()
                } else {
                    sources::view_names(source, &scratch)?
                };
                expect_rows(source, &counts, &views)
            })();
            let dropped = sources::drop_database(source, &scratch);
            result.and(dropped)
        }
        SourceKind::Files | SourceKind::Command => {
            // A fresh directory only this user can enter (mkdtemp): a drill
            // runs as root from cron, and a name someone else made first
            // must not receive the restore.
            let dir = tempfile::Builder::new()
                .prefix("vault-drill-")
                .tempdir()
                .context("creating the drill's scratch directory")?;
            let options = RestoreOptions {
                target: dir.path().to_owned(),
                concurrency: repo.read_concurrency(),
                cancel,
                // Creating device nodes needs root: a drill run as another
                // user notes them as not checked, and passes if all else
                // restores. Their nodes were read from the snapshot; no
                // content of theirs is backed up.
                devices_need_root_ok: true,
                ..RestoreOptions::default()
            };
            let result = restore::restore(
                &repo,
                &index,
                &snap.tree,
                &options,
                &RestoreProgress::default(),
            );
            remove_scratch(dir);
            let r = result?;
            report["files"] = r.files.into();
            report["bytes"] = r.bytes_written.into();
            let scratch = options.target.display().to_string();
            let within = |path: &str| path.strip_prefix(&scratch).unwrap_or(path).to_owned();
            if !r.devices_not_created.is_empty() {
                report["not_checked"] = (r.devices_not_created.iter())
                    .map(|p| {
                        serde_json::json!({
                            "path": within(p),
                            "reason": "device node: creating it needs root",
                        })
                    })
                    .collect::<Vec<_>>()
                    .into();
            }
            // A restore goes on past damaged data (zeros there), past
            // malformed entries and past entries the scratch directory
            // refused; a drill that did so has failed, with restore's exit
            // code (damage first) and the first such entry named.
            let mut damage = r
                .damaged_files
                .iter()
                .map(|f| (&f.path, &f.error))
                .chain(r.damaged_entries.iter().map(|e| (&e.path, &e.error)))
                .chain(r.failed_entries.iter().map(|e| (&e.path, &e.error)));
            if let Some((path, why)) = damage.next() {
                let within = within(path);
                let damaged = r.damaged_files.len() + r.damaged_entries.len();
                let missing =
                    r.damaged_entries.is_empty() && r.damaged_files.iter().all(|f| f.missing);
                let failed = r.failed_count();
                return Err(exit::Coded {
                    code: if damaged == 0 {
                        exit::INCOMPLETE
                    } else if missing {
                        exit::MISSING
                    } else {
                        exit::DAMAGED
                    },
                    // Entries the target refused are not among those
                    // restored, or are (metadata not applied): no total.
                    message: format!(
                        "{}{} entries could not be restored intact; the first, {within}: {why}",
                        damaged as u64 + failed,
                        if failed == 0 {
                            format!(
                                " of {}",
                                r.files + r.dirs + r.others + r.damaged_entries.len() as u64
                            )
                        } else {
                            String::new()
                        },
                    ),
                }
                .into());
            }
            Ok(())
        }
    }
}

/// Checks the source's `drill_min_rows` against the restored tables: a
/// table gone or shrunk below what the team knows it holds fails the drill.
/// Only base tables are counted; a key naming one of `views` fails too,
/// saying so.
fn expect_rows(
    source: &crate::config::SourceConfig,
    counts: &[(String, u64)],
    views: &[String],
) -> Result<()> {
    // Keys may leave out the quoting the listing uses: `shifts` for
    // MySQL's backquoted name, `public.Users` for "public"."Users".
    let bare = |t: &str| t.replace(['"', '`'], "");
    let mut short = Vec::new();
    for (table, min) in &source.drill_min_rows {
        match counts
            .iter()
            .find(|(t, _)| t == table || bare(t) == bare(table))
        {
            Some((_, n)) if n >= min => {}
            Some((t, n)) => short.push(format!("{t} has {n} rows, at least {min} expected")),
            None if views.iter().any(|v| v == table || bare(v) == bare(table)) => {
                short.push(format!(
                    "{table} is a view: drill_min_rows counts the rows of tables only; name the tables it reads"
                ));
            }
            None => {
                // `calls` for `public.calls`: name the listing's spelling.
                let like: Vec<&str> = (counts.iter())
                    .filter(|(t, _)| bare(t).rsplit('.').next() == Some(bare(table).as_str()))
                    .map(|(t, _)| t.as_str())
                    .collect();
                let hint = if like.is_empty() {
                    String::new()
                } else {
                    format!("; did you mean {}?", like.join(" or "))
                };
                short.push(format!(
                    "{table} is not in the restored database ({min} rows expected){hint}"
                ));
            }
        }
    }
    if short.is_empty() {
        return Ok(());
    }
    bail!("drill_min_rows: {}", short.join("; "))
}

/// Deletes the drill's restore. Directories the snapshot holds read-only
/// (0500, 0555) stop a non-root user's removal, so they are opened up
/// first; what still cannot go is named, since it is a copy of the backed
/// up data left in the temporary directory.
fn remove_scratch(dir: tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.keep();
    if std::fs::remove_dir_all(&path).is_ok() {
        return;
    }
    let mut pending = vec![path.clone()];
    while let Some(d) = pending.pop() {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&path) {
        eprintln!(
            "vault: warning: could not delete the drill's restore {}: {e}",
            path.display()
        );
    }
}
