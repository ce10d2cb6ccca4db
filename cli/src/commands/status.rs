//! `vault status`: per configured source, the last success and failure, the
//! age of the newest backup, snapshot count, sizes and dedup ratio; and
//! which sources are stale (no backup within their `max_age`), the check a
//! cron job on this or another host runs to catch backups that stopped
//! happening at all, which no failure alert can report. Drills likewise:
//! the latest failed, or none passed within `drill_max_age`.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, notify, output, status};
use anyhow::{Result, bail};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// Call a source stale when its newest snapshot is older than DURATION
    /// (e.g. 26h); overrides the config's `max_age`.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_duration)]
    max_age: Option<std::time::Duration>,
    /// Call a source's drills overdue when none has passed within DURATION
    /// (e.g. 35d); overrides the config's `drill_max_age`.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_duration)]
    drill_max_age: Option<std::time::Duration>,
    /// Send the `on_failure` webhooks an event `backup_stale` for each
    /// stale source, and `drill_stale` for each whose drills are overdue.
    #[arg(long)]
    alert: bool,
}

pub(crate) fn run(g: &GlobalArgs, args: &StatusArgs) -> Result<ExitCode> {
    let Some(config) = global::config(g)? else {
        bail!("vault status reports on configured sources: no config file (see --config)");
    };
    let host = global::hostname();
    // Read only: a file that does not parse is left where it is (the next
    // backup sets it aside), and its lost history fails the status.
    let (file, damaged) =
        match status::StatusFile::load(&status::path(config.notify.status_file.as_deref())) {
            Ok(file) => (file, false),
            Err(e) => {
                eprintln!("vault: error: {e:#}: what it recorded cannot be shown");
                (status::StatusFile::default(), true)
            }
        };
    let repo = match global::open_repository(g) {
        Ok(repo) => repo,
        Err(e) => {
            // The check that runs on another host exists for this case too:
            // a repository it cannot open (storage down, keys revoked) says
            // nothing about whether backups still happen.
            if args.alert {
                let names: Vec<&str> = config.sources.iter().map(|s| s.name()).collect();
                notify::alert(
                    &config.notify.on_failure,
                    notify::Alert::StatusFailed,
                    &names.join(","),
                    &format!("opening the repository: {e:#}"),
                    &host,
                    &jiff::Timestamp::now().to_string(),
                );
            }
            return Err(e);
        }
    };
    let snapshots = repo.snapshots()?;
    let now = jiff::Timestamp::now();
    let mut rows = Vec::new();
    let mut any_failing = false;
    for source in &config.sources {
        let name = source.name();
        let mine: Vec<_> = snapshots
            .iter()
            .filter(|(_, s)| s.tags.iter().any(|t| t == name))
            .collect();
        let processed: u64 = mine
            .iter()
            .map(|(_, s)| s.summary.total_bytes_processed)
            .sum();
        let added: u64 = mine.iter().map(|(_, s)| s.summary.data_added).sum();
        let stored: u64 = mine.iter().map(|(_, s)| s.summary.data_added_packed).sum();
        // A postgres source's dumps say whether it is stale when it has
        // any: base backups (`--physical`) going on must not hide dumps
        // that stopped.
        let is_physical =
            |s: &vault_engine::snapshot::Snapshot| s.tags.iter().any(|t| t == "physical");
        let latest = mine
            .iter()
            .rev()
            .find(|(_, s)| !is_physical(s))
            .or_else(|| mine.last())
            .copied();
        let entry = file.sources.get(name).cloned().unwrap_or_default();
        let failing = entry.needs_attention();
        let age = latest.map(|(_, s)| now.as_second() - s.time.timestamp().as_second());
        let max_age = args
            .max_age
            .or_else(|| source.max_age(config.notify.max_age.as_deref()));
        let stale = max_age.is_some_and(|max| age.is_none_or(|age| age > max.as_secs() as i64));
        if stale && args.alert {
            let within = output::duration(max_age.unwrap_or_default().as_secs());
            let message = match latest {
                Some((_, s)) => format!(
                    "no backup within {within}: the newest is from {}",
                    s.time.timestamp()
                ),
                None => format!("no backup yet (expected within {within})"),
            };
            notify::alert(
                &config.notify.on_failure,
                notify::Alert::BackupStale,
                name,
                &message,
                &host,
                &now.to_string(),
            );
        }
        let drill = drill_state(
            &entry,
            args.drill_max_age
                .or_else(|| source.drill_max_age(config.notify.drill_max_age.as_deref())),
            now,
        );
        if drill.overdue && args.alert {
            notify::alert(
                &config.notify.on_failure,
                notify::Alert::DrillStale,
                name,
                &drill.overdue_message(),
                &host,
                &now.to_string(),
            );
        }
        any_failing |= failing || stale || drill.overdue || entry.drill_failed();
        rows.push(serde_json::json!({
            "stale": stale,
            "max_age_seconds": max_age.map(|d| d.as_secs()),
            "source": name,
            "kind": format!("{:?}", source.kind).to_lowercase(),
            "snapshots": mine.len(),
            "latest_snapshot": latest.map(|(id, _)| id.to_hex()),
            "latest_time": latest.map(|(_, s)| s.time.timestamp().to_string()),
            "age_seconds": age,
            "latest_size": latest.map(|(_, s)| s.summary.total_bytes_processed),
            "stored_bytes": stored,
            "dedup_ratio": if added > 0 { processed as f64 / added as f64 } else { 0.0 },
            "last_result": entry.last_result,
            "last_success": entry.last_success,
            "last_failure": entry.last_failure,
            "physical": entry.physical,
            "last_drill": entry.last_drill,
            "last_drill_passed": entry.last_drill_passed,
            "drill_max_age_seconds": drill.max_age.map(|d| d.as_secs()),
            "drill_overdue": drill.overdue,
        }));
    }
    if g.json {
        let mut v = serde_json::json!({ "sources": rows, "ok": !any_failing && !damaged });
        if damaged {
            // What it recorded is unknown: a monitor reading `ok` must not
            // see a healthy system.
            v["status_file_error"] = "the status file does not parse".into();
        }
        output::print_json(&v)?;
    } else if !g.quiet {
        outln!(
            "{:<20} {:<8} {:>9} {:>12} {:>10} {:>10} {:>7} {:>8}  last failure",
            "source",
            "result",
            "snapshots",
            "age",
            "size",
            "stored",
            "dedup",
            "drill"
        )?;
        for r in &rows {
            let age = r["age_seconds"].as_i64().map_or("never".to_owned(), |s| {
                output::duration(s.max(0).unsigned_abs())
            });
            // A failing base backup shows when the dumps are fine.
            let physical = &r["physical"];
            let failing = |v: &serde_json::Value| {
                matches!(v["last_result"].as_str(), Some("failure" | "incomplete"))
            };
            let shown = if !failing(r) && failing(physical) {
                physical
            } else {
                r
            };
            let result = if r["stale"].as_bool() == Some(true) {
                "stale"
            } else {
                shown["last_result"].as_str().unwrap_or("-")
            };
            let failure = shown["last_failure"]
                .as_object()
                .map(|f| {
                    format!(
                        "{} {}{}",
                        f["time"].as_str().unwrap_or(""),
                        if std::ptr::eq(shown, physical) {
                            "base backup: "
                        } else {
                            ""
                        },
                        f["error"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_default();
            // The drill column: how long ago one passed, unless the latest
            // failed or none passed within `drill_max_age`.
            let drill = if r["last_drill"]["ok"] == false {
                "failed".to_owned()
            } else if r["drill_overdue"] == true {
                "overdue".to_owned()
            } else {
                r["last_drill_passed"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or("-".to_owned(), |t| {
                        output::duration(
                            (jiff::Timestamp::now().as_second() - t.as_second())
                                .max(0)
                                .unsigned_abs(),
                        )
                    })
            };
            outln!(
                "{:<20} {:<8} {:>9} {:>12} {:>10} {:>10} {:>6.1}x {:>8}  {}",
                r["source"].as_str().unwrap_or(""),
                result,
                r["snapshots"],
                age,
                output::bytes(r["latest_size"].as_u64().unwrap_or(0)),
                output::bytes(r["stored_bytes"].as_u64().unwrap_or(0)),
                r["dedup_ratio"].as_f64().unwrap_or(0.0),
                drill,
                failure
            )?;
        }
    }
    Ok(if any_failing || damaged {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A source's drills as `vault status` judges them.
struct DrillState {
    max_age: Option<std::time::Duration>,
    /// When one last passed.
    passed: Option<jiff::Timestamp>,
    /// None passed within `max_age`.
    overdue: bool,
}

impl DrillState {
    fn overdue_message(&self) -> String {
        let within = output::duration(self.max_age.unwrap_or_default().as_secs());
        match self.passed {
            Some(t) => format!("no drill passed within {within}: the last passed at {t}"),
            None => format!("no drill has passed yet (expected within {within})"),
        }
    }
}

fn drill_state(
    entry: &status::SourceStatus,
    max_age: Option<std::time::Duration>,
    now: jiff::Timestamp,
) -> DrillState {
    let passed = entry
        .last_drill_passed
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let overdue = max_age.is_some_and(|max| {
        passed.is_none_or(|t| now.as_second() - t.as_second() > max.as_secs() as i64)
    });
    DrillState {
        max_age,
        passed,
        overdue,
    }
}
