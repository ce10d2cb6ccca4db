//! `vault key list`: the key files, the one in use marked `current`.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::key;

#[derive(Debug, clap::Args)]
pub(crate) struct KeyListArgs {}

pub(crate) fn run(g: &GlobalArgs, _args: &KeyListArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let keys = key::list(&repo)?;
    if g.json {
        let list: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                let mut v = serde_json::to_value(k).expect("key info serialises");
                v["short_id"] = k.id.short().into();
                v
            })
            .collect();
        output::print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        " {:<10} {:<12} {:<20} {:<20} {:>8}",
        "ID",
        "User",
        "Host",
        "Created",
        "KDF"
    )?;
    outln!("{}", "-".repeat(76))?;
    for k in &keys {
        let created = k
            .created
            .parse::<jiff::Timestamp>()
            .map(|t| output::local_time(&t.to_zoned(jiff::tz::TimeZone::UTC)))
            .unwrap_or_else(|_| k.created.clone());
        let kdf = k.kdf.map_or_else(
            || "invalid".to_owned(),
            |p| {
                format!(
                    "{}M/{}/{}",
                    p.memory_kib / 1024,
                    p.iterations,
                    p.parallelism
                )
            },
        );
        outln!(
            "{}{:<10} {:<12} {:<20} {:<20} {:>8}",
            if k.current { "*" } else { " " },
            k.id.short(),
            k.username,
            k.hostname,
            created,
            kdf
        )?;
        if let Some(e) = &k.error {
            outln!("   (unusable: {e})")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
