//! `vault cache`: the local copies of object stores' snapshots, index files
//! and tree packs, one directory per repository; `--cleanup` removes those
//! no command has used for a while.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result};
use std::process::ExitCode;
use vault_engine::cache;

#[derive(Debug, clap::Args)]
pub(crate) struct CacheArgs {
    /// Remove the caches of repositories not used for --max-age days.
    #[arg(long)]
    cleanup: bool,
    /// Days without use after which --cleanup removes a cache.
    #[arg(long, default_value_t = 30, requires = "cleanup")]
    max_age: u32,
}

pub(crate) fn run(g: &GlobalArgs, args: &CacheArgs) -> Result<ExitCode> {
    let Some(base) = global::cache_base(g) else {
        anyhow::bail!(
            "no cache directory: set --cache-dir, VAULT_CACHE_DIR, XDG_CACHE_HOME or HOME"
        );
    };
    let dirs = cache::list(&base).with_context(|| format!("reading {}", base.display()))?;
    let cutoff = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(
            i64::from(args.max_age) * 24,
        ))
        .unwrap_or(jiff::Timestamp::MIN);
    let mut removed = Vec::new();
    if args.cleanup {
        for dir in &dirs {
            if dir.last_used.is_none_or(|t| t < cutoff) {
                cache::remove(dir).with_context(|| format!("removing {}", dir.path.display()))?;
                removed.push(dir.repository_id.clone());
            }
        }
    }
    if g.json {
        output::print_json(&serde_json::json!({
            "path": base,
            "caches": dirs,
            "removed": removed,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if g.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}", base.display())?;
    if dirs.is_empty() {
        outln!("no caches")?;
    }
    for dir in &dirs {
        let used = dir.last_used.map_or_else(
            || "never".to_owned(),
            |t| output::local_time(&t.to_zoned(jiff::tz::TimeZone::system())),
        );
        let note = if removed.contains(&dir.repository_id) {
            "  (removed)"
        } else {
            ""
        };
        outln!(
            "  {}  {:>10}  last used {used}{note}",
            &dir.repository_id[..8],
            output::bytes(dir.bytes)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
