//! `vault forget`: remove snapshots by a GFS retention policy, with the
//! reason for every decision; `--prune` reclaims the space afterwards.

use super::FilterArgs;
use super::prune::PruneArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use vault_engine::id::SnapshotId;
use vault_engine::lock;
use vault_engine::object_lock;
use vault_engine::repository::FileKind;
use vault_engine::retention::{self, Count, GroupBy, KeepPolicy, RetentionDuration, SnapshotMeta};

/// A count: N, or -1 / `unlimited` for all.
fn parse_count(s: &str) -> Result<Count, String> {
    if s.trim() == "-1" {
        return Ok(Count::Unlimited);
    }
    s.parse::<Count>().map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct PolicyArgs {
    /// Keep the N newest snapshots (-1 or `unlimited`: all).
    #[arg(short = 'l', long, value_parser = parse_count, allow_hyphen_values = true)]
    pub(crate) keep_last: Option<Count>,
    /// Keep the newest snapshot of each of the N newest hours.
    #[arg(short = 'H', long, value_parser = parse_count, allow_hyphen_values = true)]
    pub(crate) keep_hourly: Option<Count>,
    /// Keep the newest snapshot of each of the N newest days.
    #[arg(short = 'd', long, value_parser = parse_count, allow_hyphen_values = true)]
    pub(crate) keep_daily: Option<Count>,
    /// Keep the newest snapshot of each of the N newest ISO weeks.
    #[arg(short = 'w', long, value_parser = parse_count, allow_hyphen_values = true)]
    pub(crate) keep_weekly: Option<Count>,
    /// Keep the newest snapshot of each of the N newest months.
    #[arg(short = 'm', long, value_parser = parse_count, allow_hyphen_values = true)]
    pub(crate) keep_monthly: Option<Count>,
    /// Keep the newest snapshot of each of the N newest years.
    #[arg(short = 'y', long, value_parser = parse_count, allow_hyphen_values = true)]
    pub(crate) keep_yearly: Option<Count>,
    /// Keep snapshots newer than the latest minus DURATION (e.g. 1y2m3d4h).
    #[arg(long)]
    pub(crate) keep_within: Option<RetentionDuration>,
    /// Keep hourly snapshots within DURATION of the latest.
    #[arg(long)]
    pub(crate) keep_within_hourly: Option<RetentionDuration>,
    /// Keep daily snapshots within DURATION of the latest.
    #[arg(long)]
    pub(crate) keep_within_daily: Option<RetentionDuration>,
    /// Keep weekly snapshots within DURATION of the latest.
    #[arg(long)]
    pub(crate) keep_within_weekly: Option<RetentionDuration>,
    /// Keep monthly snapshots within DURATION of the latest.
    #[arg(long)]
    pub(crate) keep_within_monthly: Option<RetentionDuration>,
    /// Keep yearly snapshots within DURATION of the latest.
    #[arg(long)]
    pub(crate) keep_within_yearly: Option<RetentionDuration>,
    /// Keep snapshots with these tags (a,b = both; repeat for either).
    #[arg(long)]
    pub(crate) keep_tag: Vec<String>,
}

impl PolicyArgs {
    pub(crate) fn to_policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            within_hourly: self.keep_within_hourly,
            within_daily: self.keep_within_daily,
            within_weekly: self.keep_within_weekly,
            within_monthly: self.keep_within_monthly,
            within_yearly: self.keep_within_yearly,
            tags: self
                .keep_tag
                .iter()
                .map(|l| vault_engine::snapshot::tag_list(l))
                .collect(),
        }
    }
}

/// Which snapshots a retention job covers (besides the command's filter).
enum Select {
    /// Those of one configured source (tagged with its name).
    Source(String),
    /// Those of no configured source.
    NoSource,
}

impl Select {
    fn matches(&self, tags: &[String], sources: &[String]) -> bool {
        match self {
            Select::Source(name) => tags.contains(name),
            Select::NoSource => !tags.iter().any(|t| sources.contains(t)),
        }
    }
}

#[derive(Debug, clap::Args)]
// -H is --keep-hourly here, as in restic's forget; --host has no short flag.
#[command(mut_arg("hosts", |a| a.short(None)))]
pub(crate) struct ForgetArgs {
    /// Remove exactly these snapshots (`latest` or id prefixes) instead of
    /// applying a policy.
    snapshots: Vec<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Group snapshots by any of host,paths,tags ('' for no grouping).
    #[arg(short = 'g', long, default_value = "host,paths")]
    group_by: GroupBy,
    /// Show what would be removed, and why each snapshot is kept.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Run prune afterwards.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_args: PruneArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &ForgetArgs) -> Result<ExitCode> {
    if !args.snapshots.is_empty() {
        if !args.policy.to_policy().is_empty() {
            return Err(crate::exit::Coded {
                code: crate::exit::USAGE,
                message: "give snapshots to remove or a retention policy, not both".to_owned(),
            }
            .into());
        }
        return forget_named(g, args);
    }
    // Jobs: a policy over the filtered snapshots of one configured source
    // each. With no flags, each source's policy from the config; with
    // flags, theirs over every source alone, and over the snapshots of no
    // source. Sources are never grouped together: two sources can share
    // host and paths (every base backup is `/base.tar`, two dumps can have
    // one file name), and one group would keep only the newest of either.
    let config = global::config(g)?;
    let sources: Vec<String> = config
        .iter()
        .flat_map(|c| &c.sources)
        .map(|s| s.name().to_owned())
        .collect();
    let mut jobs: Vec<(Select, KeepPolicy)> = Vec::new();
    // Sources whose retention table has no rule (`retention = {}`): they
    // opt out of the default and keep every snapshot. A policy without
    // rules never removes anything, as restic refuses one, and it must not
    // stop forget for the other sources either.
    let mut keep_all: Vec<&str> = Vec::new();
    let flags = args.policy.to_policy();
    if flags.is_empty() {
        if let Some(config) = &config {
            for source in &config.sources {
                match source.policy(config.retention.as_ref())? {
                    Some(policy) if policy.is_empty() => keep_all.push(source.name()),
                    Some(policy) => {
                        jobs.push((Select::Source(source.name().to_owned()), policy));
                    }
                    None => {}
                }
            }
            if config.sources.is_empty()
                && let Some(r) = &config.retention
            {
                jobs.push((Select::NoSource, r.to_policy()?));
            }
        }
        if jobs.iter().all(|(_, p)| p.is_empty()) {
            let empty = if keep_all.is_empty() {
                String::new()
            } else {
                format!(
                    " (the retention of {} has no rule: it keeps every snapshot)",
                    keep_all.join(", ")
                )
            };
            return Err(crate::exit::Coded {
                code: crate::exit::USAGE,
                message: format!(
                    "no retention policy given (e.g. --keep-daily 7, or [retention] in the config){empty}: refusing to forget snapshots without one"
                ),
            }
            .into());
        }
        if !g.json && !g.quiet {
            for name in &keep_all {
                outln!("source {name}: its retention has no rule, every snapshot is kept")?;
            }
        }
    } else {
        for name in &sources {
            jobs.push((Select::Source(name.clone()), flags.clone()));
        }
        jobs.push((Select::NoSource, flags));
    }
    let filter = args.filter.to_filter();
    let repo = global::open_repository(g)?;
    let held = super::maintenance_lock(g, &repo, "forget", args.dry_run)?;
    let all = repo.snapshots()?;
    // Snapshots still under S3 Object Lock are not removed: deleting one
    // would only hide it (the store keeps the locked version), and its
    // data must stay restorable as long as the lock promises (§11.8).
    let locked: HashMap<SnapshotId, jiff::Timestamp> =
        object_lock::locked_objects(&repo, FileKind::Snapshot, jiff::Timestamp::now())?;
    let mut kept_locked = 0usize;
    let mut plans = Vec::new();
    for (select, policy) in &jobs {
        // Newest first: of snapshots with the same time, retention counts
        // the one given first as newer (restic's stable order), and
        // `latest` names the last of `all`; so `--keep-last 1` keeps it.
        let metas: Vec<SnapshotMeta> = all
            .iter()
            .rev()
            .filter(|(_, s)| filter.matches(s) && select.matches(&s.tags, &sources))
            .map(|(id, s)| SnapshotMeta {
                id: id.to_hex(),
                time: s.time.clone(),
                hostname: s.hostname.clone(),
                paths: s.paths.clone(),
                tags: s.tags.clone(),
            })
            .collect();
        if metas.is_empty() {
            continue;
        }
        let source = match select {
            Select::Source(s) => Some(s.as_str()),
            Select::NoSource => None,
        };
        let what = source.map_or(String::new(), |s| format!(" of source {s}"));
        plans.extend(
            retention::apply(&metas, policy, args.group_by, jiff::Timestamp::now())
                .with_context(|| format!("applying the retention policy{what}"))?
                .into_iter()
                .map(|plan| (source, plan)),
        );
    }
    let mut removed = 0usize;
    let mut would_remove = HashSet::new();
    if g.json {
        let groups: Vec<serde_json::Value> = plans
            .iter()
            .map(|(source, p)| {
                let entry = |d: &retention::Decision| {
                    serde_json::json!({
                        "id": d.snapshot.id,
                        "short_id": &d.snapshot.id[..8],
                        "time": d.snapshot.time.timestamp().display_with_offset(d.snapshot.time.offset()).to_string(),
                        "hostname": d.snapshot.hostname,
                        "paths": d.snapshot.paths,
                        "tags": d.snapshot.tags,
                        "reasons": d.reasons,
                    })
                };
                serde_json::json!({
                    "source": source,
                    "host": p.key.hostname,
                    "paths": p.key.paths,
                    "tags": p.key.tags,
                    "keep": p.keep.iter().map(entry).collect::<Vec<_>>(),
                    "remove": p.remove.iter().map(entry).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::print_json(&groups)?;
    }
    for (source, p) in &plans {
        if !g.json && !g.quiet {
            match source {
                Some(source) => outln!("snapshots of source {source} for {}:", p.key)?,
                None => outln!("snapshots for {}:", p.key)?,
            }
            for d in &p.keep {
                let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
                outln!(
                    "  keep   {}  {}  {}",
                    &d.snapshot.id[..8],
                    output::local_time(&d.snapshot.time),
                    reasons.join(", ")
                )?;
            }
            for d in &p.remove {
                let id: SnapshotId = d.snapshot.id.parse()?;
                match locked.get(&id) {
                    Some(until) => outln!(
                        "  locked {}  {}  under object lock until {}, kept",
                        &d.snapshot.id[..8],
                        output::local_time(&d.snapshot.time),
                        until.strftime("%Y-%m-%d %H:%M:%S UTC")
                    )?,
                    None => outln!(
                        "  remove {}  {}",
                        &d.snapshot.id[..8],
                        output::local_time(&d.snapshot.time)
                    )?,
                }
            }
        }
        for d in &p.remove {
            let id: SnapshotId = d.snapshot.id.parse()?;
            if locked.contains_key(&id) {
                kept_locked += 1;
            } else if args.dry_run {
                would_remove.insert(id);
            } else {
                global::stop_after(|| format!("{removed} snapshots removed"))?;
                repo.delete_snapshot(&id)?;
                removed += 1;
            }
        }
    }
    if !g.json && !g.quiet {
        let would: usize = plans.iter().map(|(_, p)| p.remove.len()).sum::<usize>() - kept_locked;
        if args.dry_run {
            outln!("dry run: would remove {would} snapshots")?;
        } else {
            outln!("removed {removed} snapshots")?;
        }
        if kept_locked > 0 {
            outln!(
                "kept {kept_locked} snapshots the policy would remove: still under object lock (forget again once it ends)"
            )?;
        }
    }
    after_forget(g, &repo, args, held.as_ref(), would_remove)?;
    Ok(ExitCode::SUCCESS)
}

/// What follows removing snapshots: WAL no kept base backup needs goes,
/// then prune if asked. A dry run shows the plan of that prune, with the
/// snapshots it would have removed (`would_remove`) left out.
fn after_forget(
    g: &GlobalArgs,
    repo: &std::sync::Arc<vault_engine::Repository>,
    args: &ForgetArgs,
    held: Option<&lock::Lock>,
    would_remove: HashSet<SnapshotId>,
) -> Result<()> {
    if args.dry_run {
        if args.prune {
            super::prune::print_plan_after_forget(g, repo, &args.prune_args, would_remove)?;
        }
        return Ok(());
    }
    if let Some(config) = global::config(g)? {
        trim_wal(g, repo, config)?;
    }
    if args.prune {
        super::prune::prune_locked(g, repo, &args.prune_args, held)?;
    }
    Ok(())
}

/// `vault forget ID...`: removes the named snapshots, as `restic forget
/// ID` does; those still under object lock are kept and reported.
fn forget_named(g: &GlobalArgs, args: &ForgetArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let held = super::maintenance_lock(g, &repo, "forget", args.dry_run)?;
    let (all, damaged) = super::snapshots_and_damaged(&repo)?;
    let chosen: Vec<SnapshotId> =
        super::pick_snapshots(&all, damaged, &args.snapshots, &args.filter)?
            .into_iter()
            .map(|(id, _)| *id)
            .collect();
    let locked: HashMap<SnapshotId, jiff::Timestamp> =
        object_lock::locked_objects(&repo, FileKind::Snapshot, jiff::Timestamp::now())?;
    let mut removed = Vec::new();
    for id in &chosen {
        if let Some(until) = locked.get(id) {
            if !g.quiet {
                eprintln!(
                    "snapshot {} is under object lock until {}, kept",
                    id.short(),
                    until.strftime("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            continue;
        }
        if !args.dry_run {
            global::stop_after(|| format!("{} snapshots removed", removed.len()))?;
            repo.delete_snapshot(id)?;
        }
        removed.push(*id);
    }
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "forget",
            "dry_run": args.dry_run,
            "removed": removed.iter().map(SnapshotId::to_hex).collect::<Vec<_>>(),
        }))?;
    } else if !g.quiet {
        for id in &removed {
            outln!("  remove {}", id.short())?;
        }
        let verb = if args.dry_run {
            "dry run: would remove"
        } else {
            "removed"
        };
        outln!("{verb} {} snapshots", removed.len())?;
    }
    let would_remove = if args.dry_run {
        removed.into_iter().collect()
    } else {
        HashSet::new()
    };
    after_forget(g, &repo, args, held.as_ref(), would_remove)?;
    Ok(ExitCode::SUCCESS)
}

/// Drops archived WAL older than the oldest kept base backup of each
/// postgres source: every kept base backup keeps the segments it needs to
/// become consistent and to reach the next one (all later segments).
fn trim_wal(
    g: &GlobalArgs,
    repo: &vault_engine::Repository,
    config: &crate::config::Config,
) -> Result<()> {
    let snapshots = repo.snapshots()?;
    let mut index = None;
    for source in config
        .sources
        .iter()
        .filter(|s| s.kind == crate::config::SourceKind::Postgres)
    {
        let oldest = snapshots.iter().find(|(_, s)| {
            s.tags.iter().any(|t| t == source.name()) && s.tags.iter().any(|t| t == "physical")
        });
        let Some((_, snap)) = oldest else { continue };
        if index.is_none() {
            index = Some(repo.load_index()?);
        }
        let index = index.as_ref().expect("loaded above");
        let (start, _) = crate::pitr::base_backup_start(repo, index, snap)?;
        let trimmed = vault_engine::wal::trim(repo, source.name(), &start, jiff::Timestamp::now())?;
        if g.quiet || g.json {
            continue;
        }
        if !trimmed.removed.is_empty() {
            outln!(
                "removed {} archived WAL files of {} older than its oldest base backup ({start})",
                trimmed.removed.len(),
                source.name()
            )?;
        }
        if !trimmed.locked.is_empty() {
            outln!(
                "kept {} archived WAL files of {} older than its oldest base backup: still under object lock",
                trimmed.locked.len(),
                source.name()
            )?;
        }
    }
    Ok(())
}
