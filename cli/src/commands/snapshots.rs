//! `vault snapshots`: list snapshots as a table or JSON.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct SnapshotsArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Only the newest N snapshots per host and paths.
    #[arg(long)]
    latest: Option<usize>,
}

pub(crate) fn run(g: &GlobalArgs, args: &SnapshotsArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let filter = args.filter.to_filter();
    let mut snaps: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| filter.matches(s))
        .collect();
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
    if g.json {
        let list: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).expect("snapshot serialises");
                v["id"] = id.to_hex().into();
                v["short_id"] = id.short().into();
                v
            })
            .collect();
        output::print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<19}  {:<16} {:<20} {:<40} {:>10}",
        "ID", "Time", "Host", "Tags", "Paths", "Size"
    );
    println!("{}", "-".repeat(120));
    for (id, s) in &snaps {
        let paths = s.paths.join(", ");
        println!(
            "{:<10} {:<19}  {:<16} {:<20} {:<40} {:>10}",
            id.short(),
            output::local_time(&s.time),
            s.hostname,
            s.tags.join(","),
            paths,
            output::bytes(s.size())
        );
    }
    println!("{} snapshots", snaps.len());
    Ok(ExitCode::SUCCESS)
}
