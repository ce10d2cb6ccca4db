//! Point-in-time recovery for PostgreSQL: the newest base backup before the
//! target time, unpacked into the target directory, plus `recovery.signal`
//! and the recovery settings (`restore_command = 'vault wal fetch %f %p'`,
//! `recovery_target_time`) so that starting PostgreSQL there replays the
//! archived WAL up to that second. Recovery settings that came with the
//! base backup are removed first (docs/pitr.md). The WAL chain is checked first: a gap
//! after the base backup's start is reported before anything is written.
//!
//! Timelines: every PITR that is started and promoted forks a new timeline
//! and archives its `.history` file. The timeline to recover along is the
//! one that was current at the target time (the last whose history file was
//! archived before it; `--timeline` overrides), written out as
//! `recovery_target_timeline`, and the base backup must lie on its path.

use crate::args::GlobalArgs;
use crate::config::{SourceConfig, SourceKind};
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result, bail};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use vault_engine::{Repository, restore, wal};

/// Start segment and timeline of a base backup snapshot, from the
/// `backup_label` at the head of its tar.
pub(crate) fn base_backup_start(
    repo: &Repository,
    index: &vault_engine::index::Index,
    snap: &vault_engine::snapshot::Snapshot,
) -> Result<(String, u32)> {
    let node = restore::find_node(repo, index, &snap.tree, "/base.tar")?;
    let first = node
        .content
        .as_ref()
        .and_then(|c| c.first())
        .context("empty base backup")?;
    let head = repo.read_blob(index, first)?;
    let label =
        wal::backup_label_from_tar(&head).context("no backup_label at the start of base.tar")?;
    wal::parse_backup_label(&label).context("unreadable backup_label")
}

/// Timeline 1 (or any timeline without an archived history file) as a
/// one-step path.
fn plain_path(tli: u32) -> Vec<(u32, u64)> {
    vec![(tli, 0)]
}

pub(crate) fn restore(
    g: &GlobalArgs,
    repo: &Repository,
    source: &SourceConfig,
    at: Option<&str>,
    timeline: Option<u32>,
    keep_archiving: bool,
    target: &Path,
) -> Result<ExitCode> {
    if source.kind != SourceKind::Postgres {
        bail!(
            "--pitr needs a postgres source; {} is not one",
            source.name()
        );
    }
    let config_path = global::config(g)?
        .map(|c| c.path.clone())
        .context("--pitr writes a restore_command that needs the config file")?;
    let at_time = at.map(crate::timespec::parse).transpose()?;
    let index = repo.load_index()?;
    let names: Vec<String> = wal::list(repo, source.name())?
        .into_iter()
        .map(|(n, _)| n)
        .collect();

    // Which timeline to recover along. PostgreSQL's default, 'latest',
    // follows the newest timeline even to a time before it forked off, and
    // silently misses what its parent committed after the fork point.
    let timelines = wal::timelines(repo, source.name())?;
    let chosen: Option<&wal::Timeline> = match timeline {
        Some(n) => timelines.iter().find(|t| t.timeline == n),
        None => wal::timeline_at(&timelines, at_time.as_ref().map(jiff::Zoned::timestamp)),
    };

    // The newest base backup before --at from which that timeline can be
    // reached: taken on it or on an ancestor before the path left it.
    let mut candidates = repo.snapshots()?;
    candidates.reverse();
    let mut picked = None;
    for (id, snap) in candidates {
        if !snap.tags.iter().any(|t| t == source.name())
            || !snap.tags.iter().any(|t| t == "physical")
            || at_time
                .as_ref()
                .is_some_and(|t| snap.time.timestamp() > t.timestamp())
        {
            continue;
        }
        let (start, start_tli) = base_backup_start(repo, &index, &snap)?;
        let (_, start_seg) = wal::position(&start).context("bad start segment")?;
        let path = match (chosen, timeline) {
            (Some(t), _) => t.path(),
            (None, Some(n)) => plain_path(n),
            (None, None) => plain_path(start_tli),
        };
        if let Some(chain) = wal::chain(&names, &path, start_tli, start_seg) {
            picked = Some((id, snap, start, start_tli, path, chain));
            break;
        }
    }
    let Some((id, snap, start, start_tli, path, chain)) = picked else {
        bail!(
            "no physical snapshot of source {}{} from which timeline {} can be reached",
            source.name(),
            at_time
                .as_ref()
                .map(|t| format!(" at or before {t}"))
                .unwrap_or_default(),
            chosen
                .map(|t| t.timeline)
                .or(timeline)
                .map_or_else(|| "of the backup".to_owned(), |t| t.to_string())
        );
    };
    let recovery_tli = path.last().map_or(1, |(t, _)| *t);

    // The WAL chain from the base backup on, along that path, must be
    // unbroken: a gap stops recovery short of the target.
    if !names.iter().any(|n| n == &start) {
        bail!(
            "the WAL segment {start} where base backup {} starts is not archived: recovery cannot begin",
            id.short()
        );
    }
    if let Some((tli, first, count)) = chain.gaps.first() {
        bail!(
            "WAL archive has a gap: {count} segment(s) missing on timeline {tli} from {first}; recovery from base backup {} would stop there. Nothing was written.",
            id.short()
        );
    }

    // Unpack the base backup.
    if target.exists() && std::fs::read_dir(target)?.next().is_some() {
        bail!("{} is not empty", target.display());
    }
    std::fs::create_dir_all(target)?;
    let node = restore::find_node(repo, &index, &snap.tree, "/base.tar")?;
    let mut tar = vault_engine::backup::child_command("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(target)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tar")?;
    let mut stdin = tar.stdin.take().expect("piped");
    let written = restore::dump(repo, &index, &node, &mut stdin);
    drop(stdin);
    let out = tar.wait_with_output()?;
    written?;
    if !out.status.success() {
        bail!(
            "unpacking the base backup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    // Recovery settings.
    let vault = std::env::current_exe().context("locating the vault binary")?;
    let restore_command = format!(
        "{} --config {} wal fetch --source {} %f %p",
        vault.display(),
        config_path.display(),
        source.name()
    );
    let mut settings = format!(
        "\n# written by vault restore --pitr from snapshot {}\nrestore_command = '{}'\n",
        id.short(),
        restore_command.replace('\'', "''")
    );
    // Always explicit: the timeline chosen above, never 'latest'.
    settings.push_str(&format!("recovery_target_timeline = '{recovery_tli}'\n"));
    if !keep_archiving {
        settings.push_str(
            "# off: this cluster's own WAL must not join the source's archive \
             (vault restore --pitr --keep-archiving keeps it)\narchive_mode = 'off'\n",
        );
    }
    if let Some(t) = &at_time {
        let ts = t.timestamp().display_with_offset(t.offset()).to_string();
        settings.push_str(&format!(
            "recovery_target_time = '{ts}'\nrecovery_target_action = 'promote'\n"
        ));
    }
    let auto = target.join("postgresql.auto.conf");
    let inherited = match std::fs::read_to_string(&auto) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", auto.display())),
    };
    // PostgreSQL takes the last value of each setting, but an old target
    // this restore sets nothing for would survive and stop recovery there.
    let (kept, removed) = without_recovery_settings(&inherited);
    for line in &removed {
        eprintln!(
            "vault: removed from the restored postgresql.auto.conf (it came with the base backup): {line}"
        );
    }
    std::fs::write(&auto, format!("{kept}{settings}"))
        .with_context(|| format!("writing {}", auto.display()))?;
    let written: Vec<&str> = settings.lines().filter_map(setting_name).collect();
    warn_about_recovery_settings(&target.join("postgresql.conf"), &written);
    std::fs::write(target.join("recovery.signal"), b"")?;
    // PostgreSQL insists on owning a 0700 data directory: match the owner
    // of the restored files.
    let owner =
        std::fs::metadata(target.join("PG_VERSION")).context("base backup has no PG_VERSION")?;
    for p in [
        target.to_path_buf(),
        auto.clone(),
        target.join("recovery.signal"),
    ] {
        let _ = std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid()));
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))?;
    if g.json {
        output::print_json(&serde_json::json!({
            "message_type": "pitr",
            "snapshot_id": id.to_hex(),
            "base_backup_time": snap.time.timestamp().to_string(),
            "start_segment": start,
            "base_backup_timeline": start_tli,
            "timeline": recovery_tli,
            "wal_files": chain.segments,
            "target": target,
        }))?;
    } else if !g.quiet {
        outln!(
            "restored base backup {} ({}) into {}; {} archived WAL segments follow it on timeline {recovery_tli}. Start PostgreSQL on it to recover{}.",
            id.short(),
            output::local_time(&snap.time),
            target.display(),
            chain.segments,
            at.map(|a| format!(" to {a}")).unwrap_or_default()
        )?;
        if !keep_archiving {
            outln!(
                "WAL archiving is off in the restored cluster (archive_mode = 'off' in postgresql.auto.conf); if it replaces the primary, remove that line, or restore with --keep-archiving."
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a PostgreSQL setting steers archive recovery: where it stops
/// (every `recovery_target*`) and where WAL comes from.
fn is_recovery_setting(name: &str) -> bool {
    name.starts_with("recovery_target") || name == "restore_command"
}

/// The name of the setting a line of a PostgreSQL configuration file
/// assigns (`name = value`, `name value`), lowercased as PostgreSQL
/// compares them; `None` for comments and blank lines.
fn setting_name(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    let rest = rest.trim_start();
    (!name.is_empty() && !rest.is_empty() && !rest.starts_with('#')).then_some(name)
}

/// `text` without the lines that set a recovery setting, and those lines.
fn without_recovery_settings(text: &str) -> (String, Vec<&str>) {
    let mut kept = String::with_capacity(text.len());
    let mut removed = Vec::new();
    for line in text.split_inclusive('\n') {
        if setting_name(line).is_some_and(|n| is_recovery_setting(&n.to_ascii_lowercase())) {
            removed.push(line.trim_end());
        } else {
            kept.push_str(line);
        }
    }
    (kept, removed)
}

/// Warns about recovery settings in the restored `postgresql.conf` that
/// the ones vault wrote to `postgresql.auto.conf` (`written`) do not
/// override. They are left alone: `postgresql.conf` is the administrator's
/// file, and often a copy of the production one.
fn warn_about_recovery_settings(conf: &Path, written: &[&str]) {
    let Ok(text) = std::fs::read_to_string(conf) else {
        return;
    };
    for line in text.lines() {
        let Some(name) = setting_name(line).map(str::to_ascii_lowercase) else {
            continue;
        };
        if is_recovery_setting(&name) && !written.contains(&name.as_str()) {
            eprintln!(
                "vault: warning: {} sets {:?}, which applies to this recovery too; remove it unless that is intended",
                conf.display(),
                line.trim()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_recovery_settings_are_removed_and_others_kept() {
        let text = "# Do not edit this file manually!\n\
                    archive_mode = 'on'\n\
                    recovery_target_time = '2024-05-01 12:00:00+00'\n\
                    Recovery_Target_Action='promote'\n\
                    recovery_target_timeline 'latest'\n\
                    \x20 restore_command = 'cp /archive/%f \"%p\"'\n\
                    recovery_end_command = 'true'\n\
                    # recovery_target_name = 'commented out'\n\
                    recovery_target_xid = '1234'";
        let (kept, removed) = without_recovery_settings(text);
        assert_eq!(
            kept,
            "# Do not edit this file manually!\n\
             archive_mode = 'on'\n\
             recovery_end_command = 'true'\n\
             # recovery_target_name = 'commented out'\n"
        );
        assert_eq!(
            removed,
            [
                "recovery_target_time = '2024-05-01 12:00:00+00'",
                "Recovery_Target_Action='promote'",
                "recovery_target_timeline 'latest'",
                "  restore_command = 'cp /archive/%f \"%p\"'",
                "recovery_target_xid = '1234'",
            ]
        );
        assert_eq!(setting_name("recovery_target"), None);
        assert_eq!(
            setting_name("recovery_target = ''"),
            Some("recovery_target")
        );
    }
}
