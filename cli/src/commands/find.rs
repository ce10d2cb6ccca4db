//! `vault find PATTERN...`: entries matching glob patterns in every snapshot
//! (or the ones selected), as `restic find` prints them: per snapshot with
//! matches, a header, then mode, size, mtime and path of each entry.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::timespec::{self, TimeArg};
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::find::{FindOptions, Finder, Match};
use vault_engine::id::SnapshotId;
use vault_engine::snapshot::Snapshot;

#[derive(Debug, clap::Args)]
pub(crate) struct FindArgs {
    /// Glob patterns. Without `/`: matched against names (`*.log`). With
    /// `/`: against the whole path in the snapshot (`/home/*/notes.txt`;
    /// `*` stays within a directory, `**` crosses them); one not starting
    /// with `/` may match at any depth. Patterns match the bytes of names;
    /// one that is not UTF-8 names an entry literally.
    #[arg(value_name = "PATTERN", required = true, value_parser = clap::value_parser!(std::ffi::OsString))]
    patterns: Vec<std::ffi::OsString>,
    /// Only search this snapshot: `latest` or an id prefix (repeatable)
    /// [default: every snapshot].
    #[arg(short = 's', long = "snapshot", value_name = "ID")]
    snapshots: Vec<String>,
    #[command(flatten)]
    filter: super::FilterArgs,
    /// Match names and paths regardless of case.
    #[arg(short = 'i', long)]
    ignore_case: bool,
    /// Only snapshots taken at or after TIME: "YYYY-MM-DD HH:MM[:SS]" or
    /// "YYYY-MM-DD" (local time; a date is its midnight), RFC 3339 with an
    /// offset, now, today or yesterday (today and yesterday are midnight,
    /// 00:00 local time).
    #[arg(long, value_name = "TIME", value_parser = timespec::parse_arg)]
    oldest: Option<TimeArg>,
    /// Only snapshots taken at or before TIME (as --oldest: yesterday is
    /// yesterday's midnight, so `--newest today` ends before today).
    #[arg(long, value_name = "TIME", value_parser = timespec::parse_arg)]
    newest: Option<TimeArg>,
}

/// The snapshots to search, oldest first.
fn selected(
    snaps: &[(SnapshotId, Snapshot)],
    damaged: Vec<(SnapshotId, vault_engine::Error)>,
    args: &FindArgs,
) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let mut chosen = super::pick_snapshots(snaps, damaged, &args.snapshots, &args.filter)?;
    chosen.sort_by_key(|(_, s)| s.time.timestamp());
    let time = |t: &Option<TimeArg>| t.as_ref().map(|t| t.time.timestamp());
    let (oldest, newest) = (time(&args.oldest), time(&args.newest));
    chosen.retain(|(_, s)| {
        let t = s.time.timestamp();
        oldest.is_none_or(|o| t >= o) && newest.is_none_or(|n| t <= n)
    });
    Ok(chosen.into_iter().cloned().collect())
}

fn print_line(line: std::fmt::Arguments<'_>) -> vault_engine::Result<()> {
    outln!("{line}").map_err(output::engine_error)
}

pub(crate) fn run(g: &GlobalArgs, args: &FindArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (snaps, damaged) = super::snapshots_and_damaged(&repo)?;
    let chosen = selected(&snaps, damaged, args)?;
    let index = repo.load_index()?;
    let options = FindOptions {
        patterns: args.patterns.clone(),
        ignore_case: args.ignore_case,
    };
    // One finder for every snapshot: it reads each distinct directory tree
    // once rather than once per snapshot holding it.
    let mut finder = Finder::new(&repo, &index, &options)?;
    let mut total = 0u64;
    for (id, snap) in &chosen {
        let mut header = false;
        let earlier = total > 0;
        total += finder.find(&snap.tree, &mut |m: &Match| {
            if g.json {
                let mut v = serde_json::to_value(m).map_err(|e| output::engine_error(e.into()))?;
                v["message_type"] = "match".into();
                v["snapshot"] = id.to_hex().into();
                return output::print_json(&v).map_err(output::engine_error);
            }
            if !header {
                header = true;
                if earlier {
                    print_line(format_args!(""))?;
                }
                print_line(format_args!(
                    "Found matching entries in snapshot {} from {}",
                    id.short(),
                    output::local_time(&snap.time)
                ))?;
            }
            print_line(format_args!(
                "{} {:>12} {} {}",
                super::ls::mode_string(m.kind, m.mode),
                m.size,
                output::local_time(&m.mtime.to_zoned(jiff::tz::TimeZone::UTC)),
                m.path
            ))
        })?;
    }
    if total == 0 && !g.json && !g.quiet {
        outln!("no matches")?;
    }
    for (flag, t) in [("--oldest", &args.oldest), ("--newest", &args.newest)] {
        if let Some(t) = t {
            t.note(g, flag);
        }
    }
    Ok(ExitCode::SUCCESS)
}
