//! `vault drill SOURCE`: a restore drill. Database sources: load the latest
//! dump into a scratch database, count every table's rows, drop it. File
//! sources: restore into a scratch directory (every chunk verified), count,
//! remove. Exit 0 only if the drill succeeded.

use crate::args::GlobalArgs;
use crate::config::SourceKind;
use crate::output::outln;
use crate::{global, output, sources};
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

pub(crate) fn run(g: &GlobalArgs, args: &DrillArgs) -> Result<ExitCode> {
    let config = global::config(g)?.context("vault drill needs a config file with sources")?;
    let source = config.source(&args.source).with_context(|| {
        format!(
            "no source named {:?} in {}",
            args.source,
            config.path.display()
        )
    })?;
    let repo = global::open_repository(g)?;
    // Drills exercise the dumps (or file backups), not physical base
    // backups, unless a snapshot is named.
    let (id, snap) = match &args.snapshot {
        Some(spec) => {
            let filter = super::FilterArgs {
                tags: vec![source.name().to_owned()],
                ..super::FilterArgs::default()
            };
            super::pick_snapshot(&repo, Some(spec), None, &filter)?
        }
        None => super::pick_source_snapshot(
            &repo,
            source.name(),
            None,
            false,
            &super::FilterArgs::default(),
        )?,
    };
    let index = repo.load_index()?;
    let started = std::time::Instant::now();
    let mut report = serde_json::json!({
        "source": source.name(),
        "snapshot_id": id.to_hex(),
        "snapshot_time": snap.time.timestamp().to_string(),
    });
    let outcome: Result<()> = match source.kind {
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
                let node = restore::find_node(&repo, &index, &snap.tree, &format!("/{filename}"))?;
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
                Ok(())
            })();
            let dropped = sources::drop_database(source, &scratch);
            result.and(dropped)
        }
        SourceKind::Files | SourceKind::Command => {
            let dir = tempfile_dir()?;
            let options = RestoreOptions {
                target: dir.clone(),
                concurrency: repo.read_concurrency(),
                ..RestoreOptions::default()
            };
            let result = restore::restore(
                &repo,
                &index,
                &snap.tree,
                &options,
                &RestoreProgress::default(),
            )
            .map(|r| {
                report["files"] = r.files.into();
                report["bytes"] = r.bytes_written.into();
            })
            .map_err(anyhow::Error::from);
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    };
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
    if g.json {
        output::print_json(&report)?;
    } else if let Err(e) = &outcome {
        eprintln!("vault: drill of {} FAILED: {e:#}", source.name());
    } else if !g.quiet {
        outln!(
            "drill of {} passed: snapshot {} ({}) restored in {:.1}s{}",
            source.name(),
            id.short(),
            output::local_time(&snap.time),
            report["duration_secs"].as_f64().unwrap_or(0.0),
            match report.get("rows") {
                Some(rows) => format!(
                    ", {} tables, {rows} rows",
                    report["tables"].as_array().map_or(0, Vec::len)
                ),
                None => format!(", {} files", report["files"]),
            }
        )?;
    }
    Ok(if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "vault-drill-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}
