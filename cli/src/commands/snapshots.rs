//! `vault snapshots`: list snapshots as a table or JSON.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::id::SnapshotId;
use vault_engine::retention::{GroupBy, GroupKey};
use vault_engine::snapshot::Snapshot;

#[derive(Debug, clap::Args)]
pub(crate) struct SnapshotsArgs {
    /// Only these snapshots (`latest` or id prefixes) [default: every
    /// snapshot passing --host/--tag/--path].
    #[arg(value_name = "ID")]
    snapshots: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Only the newest N snapshots per host and paths.
    #[arg(long)]
    latest: Option<usize>,
    /// List snapshots in groups by any of host,paths,tags.
    #[arg(short = 'g', long)]
    group_by: Option<GroupBy>,
    /// A narrower table: id, time, host and tags (one a line), as restic's
    /// --compact.
    #[arg(short = 'c', long)]
    compact: bool,
}

/// A group's key (none without --group-by) and its snapshots, oldest first.
type Group<'a> = (Option<GroupKey>, Vec<&'a (SnapshotId, Snapshot)>);

pub(crate) fn run(g: &GlobalArgs, args: &SnapshotsArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (all, damaged) = super::snapshots_and_damaged(&repo)?;
    let mut snaps: Vec<_> = super::pick_snapshots(&all, damaged, &args.snapshots, &args.filter)?
        .into_iter()
        .cloned()
        .collect();
    // Oldest first, as without ids, whatever order they were given in.
    snaps.sort_by_key(|(_, s)| s.time.timestamp());
    if let Some(n) = args.latest {
        let mut seen: std::collections::HashMap<(String, Vec<String>), usize> =
            std::collections::HashMap::new();
        let mut keep = vec![false; snaps.len()];
        for (i, (_, s)) in snaps.iter().enumerate().rev() {
            let c = seen
                .entry((s.hostname.clone(), s.paths.clone()))
                .or_default();
            if *c < n {
                keep[i] = true;
                *c += 1;
            }
        }
        let mut it = keep.into_iter();
        snaps.retain(|_| it.next().unwrap_or(false));
    }
    let groups: Vec<Group<'_>> = match args.group_by {
        None => vec![(None, snaps.iter().collect())],
        Some(by) => {
            let mut groups: Vec<Group<'_>> = Vec::new();
            for entry in &snaps {
                let key = by.key(&entry.1.hostname, &entry.1.paths, &entry.1.tags);
                match groups.iter_mut().find(|(k, _)| k.as_ref() == Some(&key)) {
                    Some((_, members)) => members.push(entry),
                    None => groups.push((Some(key), vec![entry])),
                }
            }
            groups
        }
    };
    if g.json {
        let as_json = |list: &[&(SnapshotId, Snapshot)]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|(id, s)| {
                    let mut v = serde_json::to_value(s).expect("snapshot serialises");
                    v["id"] = id.to_hex().into();
                    v["short_id"] = id.short().into();
                    v
                })
                .collect()
        };
        if args.group_by.is_none() {
            output::print_json(&as_json(&snaps.iter().collect::<Vec<_>>()))?;
        } else {
            // As restic prints grouped snapshots.
            let list: Vec<serde_json::Value> = groups
                .iter()
                .map(|(key, members)| {
                    serde_json::json!({ "group_key": key, "snapshots": as_json(members) })
                })
                .collect();
            output::print_json(&list)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for (n, (key, members)) in groups.iter().enumerate() {
        if let Some(key) = key {
            if n > 0 {
                outln!()?;
            }
            outln!("snapshots for ({key}):")?;
        }
        if args.compact {
            print_compact(members)?;
        } else {
            print_table(members)?;
        }
    }
    outln!("{} snapshots", snaps.len())?;
    Ok(ExitCode::SUCCESS)
}

/// restic's `snapshots --compact`: no paths or sizes, each tag on a line of
/// its own.
fn print_compact(snaps: &[&(SnapshotId, Snapshot)]) -> Result<()> {
    let host_width = (snaps.iter().map(|(_, s)| s.hostname.chars().count()))
        .max()
        .unwrap_or(0)
        .max(4);
    outln!("{:<10} {:<19}  {:<host_width$}  Tags", "ID", "Time", "Host")?;
    let rule = "-".repeat(10 + 1 + 19 + 2 + host_width + 2 + 4);
    outln!("{rule}")?;
    for (id, s) in snaps {
        let mut tags = s.tags.iter();
        let line = format!(
            "{:<10} {:<19}  {:<host_width$}  {}",
            id.short(),
            output::local_time(&s.time),
            s.hostname,
            tags.next().map_or("", String::as_str)
        );
        outln!("{}", line.trim_end())?;
        for tag in tags {
            outln!("{:<w$}{tag}", "", w = 10 + 1 + 19 + 2 + host_width + 2)?;
        }
    }
    outln!("{rule}")?;
    Ok(())
}

fn print_table(snaps: &[&(SnapshotId, Snapshot)]) -> Result<()> {
    outln!(
        "{:<10} {:<19}  {:<16} {:<20} {:<40} {:>10}",
        "ID",
        "Time",
        "Host",
        "Tags",
        "Paths",
        "Size"
    )?;
    outln!("{}", "-".repeat(120))?;
    for (id, s) in snaps {
        let paths = s.paths.join(", ");
        outln!(
            "{:<10} {:<19}  {:<16} {:<20} {:<40} {:>10}",
            id.short(),
            output::local_time(&s.time),
            s.hostname,
            s.tags.join(","),
            paths,
            output::bytes(s.size())
        )?;
    }
    Ok(())
}
