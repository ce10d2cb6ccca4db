//! Point-in-time recovery for PostgreSQL: the newest base backup before the
//! target time, unpacked into the target directory, plus `recovery.signal`
//! and the recovery settings (`restore_command = 'vault wal fetch %f %p'`,
//! `recovery_target_time`) so that starting PostgreSQL there replays the
//! archived WAL up to that second. Recovery settings that came with the
//! base backup are removed first (docs/pitr.md). The WAL chain is checked
//! before anything is written: a gap after the base backup's start refuses
//! a restore to the end of the archive; with a target time it is a warning
//! (the WAL up to the target may all lie before it), and so is a target
//! after the newest archived segment.
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
use std::path::{Path, PathBuf};
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
    at: Option<&crate::timespec::TimeArg>,
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
    let fetch = FetchCommand::new(g, source.name())?;
    warn_about_credentials_from_the_environment(g)?;
    let at_time = at.map(|a| a.time.clone());
    let at = at.map(|a| a.text.as_str());
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
        let Some(at) = at else {
            bail!(
                "WAL archive has a gap: {count} segment(s) missing on timeline {tli} from {first}; recovery from base backup {} would stop there. Nothing was written.",
                id.short()
            );
        };
        // The WAL needed to reach the target may all lie before the gap,
        // and if it does not, PostgreSQL (13 and later) refuses to start
        // rather than promote short of the target.
        eprintln!(
            "vault: warning: WAL archive has a gap: {count} segment(s) missing on timeline {tli} from {first}. Recovery from base backup {} reaches {at} only if that time lies before the gap; otherwise PostgreSQL stops with FATAL \"recovery ended before configured recovery target was reached\" and does not start.",
            id.short()
        );
    }
    if let (Some(at_time), Some(last)) = (&at_time, &chain.last) {
        // Nothing committed after the target is archived yet: PostgreSQL
        // would replay all of it and refuse to start, short of the target.
        // Not refused: the server being recovered may still archive more.
        if let Some(record) = wal::load(repo, source.name(), last)? {
            let written = record.modified.unwrap_or(record.pushed);
            if written < at_time.timestamp() {
                eprintln!(
                    "vault: warning: {} is after the newest archived WAL segment, {last} (written {}). PostgreSQL stops with FATAL \"recovery ended before configured recovery target was reached\" unless WAL after that time is archived before it gets there.",
                    at.unwrap_or_default(),
                    output::local_time(&written.to_zoned(jiff::tz::TimeZone::system()))
                );
            }
        }
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
    let mut settings = format!(
        "\n# written by vault restore --pitr from snapshot {}\nrestore_command = {}\n",
        id.short(),
        conf_quote(&fetch.command)
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
    if keep_archiving {
        warn_about_archive_command(target);
    }
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
    if owner.uid() != nix::unistd::geteuid().as_raw() {
        for (path, what, mode) in &fetch.needs {
            if !can_access(path, owner.uid(), owner.gid(), *mode) {
                eprintln!(
                    "vault: warning: PostgreSQL runs restore_command as the owner of {} (uid {}), who cannot {} {what} {}: every WAL fetch would fail and recovery stop. Make it {}able to that user, or give it a config of its own.",
                    target.display(),
                    owner.uid(),
                    if *mode == EXECUTE { "run" } else { "read" },
                    path.display(),
                    if *mode == EXECUTE { "execut" } else { "read" },
                );
            }
        }
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

/// With `--keep-archiving`, the restored cluster archives with the
/// `archive_command` of the server the base backup came from, which names
/// that host's files: on a new host the config or password file it names
/// is missing, and the new primary archives nothing, which only
/// PostgreSQL's log says. Shows the command (settings that look like
/// secrets hidden) and names those files.
fn warn_about_archive_command(data: &Path) {
    let Some((command, file)) = configured_setting(data, "archive_command") else {
        eprintln!(
            "vault: warning: --keep-archiving: neither {} nor postgresql.auto.conf (nor a file they include) sets archive_command: unless this host's server configuration sets one, the restored cluster archives no WAL",
            data.join("postgresql.conf").display()
        );
        return;
    };
    eprintln!(
        "vault: warning: --keep-archiving: once promoted, the restored cluster archives WAL with archive_command = {} (from {}), run by PostgreSQL as its own user with its own environment",
        conf_quote(&hide_secrets(&command)),
        file.display()
    );
    let missing = archive_command_needs(&command)
        .into_iter()
        .filter(|(path, _)| !path.exists())
        .map(|(path, why)| format!("{} ({why})", path.display()))
        .collect::<Vec<_>>();
    if !missing.is_empty() {
        eprintln!(
            "vault: warning: archive_command needs files this host does not have: {}. Recreate them before starting the server, or change archive_command (docs/pitr.md, \"On a new host\"): otherwise no WAL is archived, and only PostgreSQL's log says so.",
            missing.join(", ")
        );
    }
}

/// The value PostgreSQL takes for `name` from a data directory's own
/// configuration, and the file it is set in: the last assignment in
/// `postgresql.conf` with the files it includes (`include`,
/// `include_if_exists`, `include_dir`), then `postgresql.auto.conf`.
fn configured_setting(data: &Path, name: &str) -> Option<(String, PathBuf)> {
    let mut found = None;
    for file in ["postgresql.conf", "postgresql.auto.conf"] {
        read_setting(&data.join(file), name, 0, &mut found);
    }
    found
}

fn read_setting(file: &Path, name: &str, depth: u32, found: &mut Option<(String, PathBuf)>) {
    // PostgreSQL's own limit on nested includes.
    if depth > 10 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    let dir = file.parent().unwrap_or_else(|| Path::new("/"));
    for line in text.lines() {
        let Some(setting) = setting_name(line).map(str::to_ascii_lowercase) else {
            continue;
        };
        let Some(value) = setting_value(line) else {
            continue;
        };
        match setting.as_str() {
            "include" | "include_if_exists" => {
                read_setting(&dir.join(value), name, depth + 1, found)
            }
            "include_dir" => {
                let Ok(entries) = std::fs::read_dir(dir.join(&value)) else {
                    continue;
                };
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.ends_with(".conf") && !n.starts_with('.'))
                    })
                    .collect();
                files.sort();
                for f in files {
                    read_setting(&f, name, depth + 1, found);
                }
            }
            s if s == name => *found = Some((value, file.to_path_buf())),
            _ => {}
        }
    }
}

/// The value of a `name = value` (or `name value`) line of a PostgreSQL
/// configuration file: a quoted string unquoted (`''` and backslash
/// escapes), else the word up to a space or `#`.
fn setting_value(line: &str) -> Option<String> {
    let name = setting_name(line)?;
    let rest = line.trim_start()[name.len()..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    let Some(quoted) = rest.strip_prefix('\'') else {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '#')
            .unwrap_or(rest.len());
        return Some(rest[..end].to_owned());
    };
    let mut value = String::new();
    let mut chars = quoted.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                value.push('\'');
            }
            '\'' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// The words `/bin/sh` would make of a command line (quotes and
/// backslashes; no expansions), for reading file names out of it.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() || c == ';' || c == '&' || c == '|' => {
                words.extend(word.take());
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// Files an `archive_command` needs on this host, each with why: every
/// absolute path in it (`--opt=PATH` and `VAR=PATH` included), and for a
/// vault command its config (`--config`, else the default one) and the
/// password and S3 key files that config names.
fn archive_command_needs(command: &str) -> Vec<(PathBuf, String)> {
    let words = shell_words(command);
    let mut needs: Vec<(PathBuf, String)> = Vec::new();
    let mut add = |path: PathBuf, why: String| {
        if !needs.iter().any(|(p, _)| *p == path) {
            needs.push((path, why));
        }
    };
    let mut config = None;
    // The program: the first word that is no `VAR=value` and no wrapper.
    let runs_vault = words
        .iter()
        .find(|w| !w.contains('=') && !["env", "exec", "nice", "ionice"].contains(&w.as_str()))
        .is_some_and(|w| w.rsplit('/').next() == Some("vault"));
    for (i, word) in words.iter().enumerate() {
        let value = match word.split_once('=') {
            Some((key, value)) if key.starts_with("--") || !key.contains('/') => value,
            _ => word.as_str(),
        };
        if word == "--config" {
            config = words.get(i + 1).map(PathBuf::from);
        } else if let Some(path) = word.strip_prefix("--config=") {
            config = Some(PathBuf::from(path));
        }
        if value.starts_with('/') && !value.contains('%') {
            add(PathBuf::from(value), "named in archive_command".into());
        }
    }
    if runs_vault {
        let config = config.unwrap_or_else(|| {
            add(
                PathBuf::from(crate::config::DEFAULT_PATH),
                "the config vault reads without --config, unless VAULT_CONFIG is set for the server".into(),
            );
            PathBuf::from(crate::config::DEFAULT_PATH)
        });
        if let Ok(loaded) = crate::config::Config::load(&config) {
            let repository = &loaded.repository;
            for (file, key) in [
                (&repository.password_file, "password_file"),
                (&repository.access_key_id_file, "access_key_id_file"),
                (&repository.secret_access_key_file, "secret_access_key_file"),
            ] {
                if let Some(file) = file {
                    add(file.clone(), format!("{key} in {}", config.display()));
                }
            }
        }
    }
    needs
}

/// `command` with the values of `NAME=VALUE` words whose name looks like
/// a secret's (PGPASSWORD, AWS_SECRET_ACCESS_KEY, ...) replaced, for
/// printing.
fn hide_secrets(command: &str) -> String {
    let secret = |name: &str| {
        let name = name.trim_start_matches('-').to_ascii_uppercase();
        ["PASSWORD", "SECRET", "TOKEN", "PASSWD"]
            .iter()
            .any(|s| name.contains(s))
            && !name.ends_with("FILE")
    };
    command
        .split(' ')
        .map(|word| match word.split_once('=') {
            Some((name, _)) if secret(name) => format!("{name}=<hidden>"),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `restore_command` carries no credentials, and PostgreSQL runs it with
/// its own environment (systemd's is clean): S3 credentials that this
/// restore found only in `AWS_*` variables are not there for the fetches,
/// and recovery stops at the first one. Said before anything is written;
/// the credentials themselves are never printed.
fn warn_about_credentials_from_the_environment(g: &GlobalArgs) -> Result<()> {
    if !global::repo_url(g)?.starts_with("s3:") {
        return Ok(());
    }
    let config = global::config(g)?;
    let repository = config.map(|c| &c.repository);
    let from_env: Vec<&str> = [
        (
            "AWS_ACCESS_KEY_ID",
            repository.and_then(|r| r.access_key_id_file.as_ref()),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            repository.and_then(|r| r.secret_access_key_file.as_ref()),
        ),
    ]
    .into_iter()
    .filter(|(var, file)| file.is_none() && std::env::var_os(var).is_some_and(|v| !v.is_empty()))
    .map(|(var, _)| var)
    .collect();
    if from_env.is_empty() {
        return Ok(());
    }
    eprintln!(
        "vault: warning: the S3 credentials came from {} in this command's environment, which restore_command does not carry (it holds no secret): PostgreSQL started by systemd, or in any other clean environment, cannot fetch WAL. Put them in files named by access_key_id_file and secret_access_key_file under [repository] in {}, readable by the user PostgreSQL runs as (docs/pitr.md, \"On a new host\").",
        from_env.join(" and "),
        config.map_or_else(
            || crate::config::DEFAULT_PATH.into(),
            |c| c.path.display().to_string()
        )
    );
    Ok(())
}

/// The `restore_command` that `restore --pitr` writes, and the files it
/// needs.
struct FetchCommand {
    /// The shell command line, with PostgreSQL's `%f` and `"%p"`.
    command: String,
    /// Files the user running it must be able to read (or run: `EXECUTE`).
    needs: Vec<(PathBuf, &'static str, u32)>,
}

const READ: u32 = 0o4;
const EXECUTE: u32 = 0o1;

impl FetchCommand {
    /// PostgreSQL runs the command from the data directory, as its own
    /// user, with its own environment: every path is made absolute, and
    /// what came from this command line (`--repo` or `--repository-file`,
    /// `--password-file`, `--allow-http`, `--cacert`) is carried over. Never a password: one given through
    /// `VAULT_PASSWORD` or `--password-command` is not, and the fetch must
    /// find one in the config.
    fn new(g: &GlobalArgs, source: &str) -> Result<Self> {
        let config = global::config(g)?
            .context("--pitr writes a restore_command that needs the config file")?;
        let config_path = std::fs::canonicalize(&config.path)
            .with_context(|| format!("locating {}", config.path.display()))?;
        let vault = std::env::current_exe().context("locating the vault binary")?;
        let mut needs = vec![
            (vault.clone(), "the vault binary", EXECUTE),
            (config_path.clone(), "the config file", READ),
        ];
        let mut args = vec![
            utf8(&vault)?.to_owned(),
            "--config".to_owned(),
            utf8(&config_path)?.to_owned(),
        ];
        // --repository-file is carried over as the URL it holds.
        let given = if g.repo.is_some() || g.repository_file.is_some() {
            Some(global::repo_url(g)?)
        } else {
            None
        };
        if let Some(repo) = &given {
            if vault_engine::backend::redact_url(repo) != *repo {
                bail!(
                    "the repository URL holds credentials, which vault does not write into restore_command: give them in the config file"
                );
            }
            let repo = if repo.starts_with("s3:") || repo.starts_with("memory:") {
                repo.clone()
            } else {
                let local = repo.strip_prefix("local:").unwrap_or(repo);
                let path = std::path::absolute(local)
                    .with_context(|| format!("locating repository {local}"))?;
                utf8(&path)?.to_owned()
            };
            args.extend(["--repo".to_owned(), repo]);
        }
        if let Some(file) = &g.password_file {
            let file = std::fs::canonicalize(file)
                .with_context(|| format!("locating {}", file.display()))?;
            args.extend(["--password-file".to_owned(), utf8(&file)?.to_owned()]);
            needs.push((file, "the password file", READ));
        } else if let Some(file) = &config.repository.password_file {
            needs.push((file.clone(), "the password file", READ));
        }
        for file in [
            &config.repository.access_key_id_file,
            &config.repository.secret_access_key_file,
        ]
        .into_iter()
        .flatten()
        {
            needs.push((file.clone(), "the S3 key file", READ));
        }
        if g.allow_http {
            args.push("--allow-http".to_owned());
        }
        for file in &g.cacert {
            let file = std::fs::canonicalize(file)
                .with_context(|| format!("locating {}", file.display()))?;
            args.extend(["--cacert".to_owned(), utf8(&file)?.to_owned()]);
            needs.push((file, "the CA certificate file", READ));
        }
        args.extend(["wal", "fetch", "--source", source].map(str::to_owned));
        Ok(Self {
            command: shell_command(&args),
            needs,
        })
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "{} is not UTF-8, which restore_command needs",
            path.display()
        )
    })
}

/// `args` as one `/bin/sh` command line followed by `%f "%p"` (quoted as
/// PostgreSQL's documentation shows). Each argument is single-quoted
/// unless it is plainly safe, and `%` is doubled: PostgreSQL replaces
/// `%f`, `%p`, `%r` and `%%` before the shell sees the line.
fn shell_command(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.,:=@+".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect();
    format!("{} %f \"%p\"", quoted.join(" ").replace('%', "%%"))
}

/// A value for a PostgreSQL configuration file: single-quoted, with `'`
/// doubled and `\` escaped (the file's parser reads backslash escapes).
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', "''"))
}

/// Whether user `uid` (primary group `gid`) may read or run (`mode`:
/// [`READ`] or [`EXECUTE`]) `path`, judged by permission bits (no ACLs),
/// including search permission on every directory above it.
fn can_access(path: &Path, uid: u32, gid: u32, mode: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let groups: Vec<u32> = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .and_then(|u| {
            let name = std::ffi::CString::new(u.name).ok()?;
            nix::unistd::getgrouplist(&name, gid.into()).ok()
        })
        .map_or_else(
            || vec![gid],
            |g| g.into_iter().map(|g| g.as_raw()).collect(),
        );
    let allowed = |p: &Path, mode: u32| {
        std::fs::metadata(p).is_ok_and(|m| {
            let bits = m.permissions().mode();
            let shift = if m.uid() == uid {
                6
            } else if groups.contains(&m.gid()) {
                3
            } else {
                0
            };
            (bits >> shift) & mode == mode
        })
    };
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    path.ancestors().skip(1).all(|dir| allowed(dir, EXECUTE)) && allowed(&path, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `command` as PostgreSQL would: `%f`, `%p` and `%%` replaced,
    /// then `sh -c`, here with `printf` in front to list the words.
    fn words_as_run(command: &str) -> Vec<String> {
        let mut line = String::new();
        let mut chars = command.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                line.push(c);
                continue;
            }
            match chars.next() {
                Some('f') => line.push_str("000000010000000000000003"),
                Some('p') => line.push_str("pg_wal/RECOVERYXLOG"),
                Some('%') => line.push('%'),
                other => panic!("stray %{other:?} in {command}"),
            }
        }
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {line}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn restore_command_quotes_every_argument_for_the_shell_and_postgresql() {
        let args: Vec<String> = [
            "/opt/my vault/bin/vault",
            "--config",
            "/etc/vault/it's 100%.toml",
            "--repo",
            "s3:https://host/bucket/prefix",
            "wal",
            "fetch",
            "--source",
            "db;$(touch /tmp/pwned)`id`\\\"",
        ]
        .map(str::to_owned)
        .to_vec();
        let command = shell_command(&args);
        assert_eq!(
            command,
            r#"'/opt/my vault/bin/vault' --config '/etc/vault/it'\''s 100%%.toml' --repo s3:https://host/bucket/prefix wal fetch --source 'db;$(touch /tmp/pwned)`id`\"' %f "%p""#
        );
        let mut expected = args;
        expected.extend(["000000010000000000000003", "pg_wal/RECOVERYXLOG"].map(str::to_owned));
        assert_eq!(words_as_run(&command), expected);
        assert_eq!(conf_quote(r"a'b\c"), r"'a''b\\c'");
    }

    #[test]
    fn access_is_judged_by_the_other_users_permission_bits_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vault.toml");
        std::fs::write(&file, "").unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        // A user with no passwd entry: only "other" bits apply to it.
        let stranger = |m| can_access(&file, 54_321, 54_321, m);
        mode(dir.path(), 0o755).unwrap();
        mode(&file, 0o600).unwrap();
        assert!(!stranger(READ));
        mode(&file, 0o644).unwrap();
        assert!(stranger(READ));
        assert!(!stranger(EXECUTE));
        mode(dir.path(), 0o750).unwrap();
        assert!(!stranger(READ));
        assert!(can_access(&file, 0, 0, READ));
    }

    #[test]
    fn archive_command_is_read_through_includes_and_the_files_it_needs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("conf.d")).unwrap();
        std::fs::write(
            data.join("postgresql.conf"),
            "archive_command = 'first'\ninclude 'extra.conf' # more\ninclude_dir = 'conf.d'\n",
        )
        .unwrap();
        std::fs::write(data.join("extra.conf"), "archive_command = 'second'\n").unwrap();
        let old_config = dir.path().join("old host/vault.toml");
        std::fs::write(
            data.join("conf.d/10-archive.conf"),
            format!(
                "archive_command = 'PGPASSWORD=s3cr3t /usr/local/bin/vault --config ''{}'' wal push %p'\n",
                old_config.display()
            ),
        )
        .unwrap();
        std::fs::write(data.join("conf.d/.hidden.conf"), "archive_command = 'no'\n").unwrap();
        let (command, file) = configured_setting(&data, "archive_command").unwrap();
        assert_eq!(file, data.join("conf.d/10-archive.conf"));
        assert!(
            command.contains(&format!("--config '{}'", old_config.display())),
            "{command}"
        );
        assert!(!hide_secrets(&command).contains("s3cr3t"));
        let needs = archive_command_needs(&command);
        let paths: Vec<&Path> = needs.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            paths,
            [Path::new("/usr/local/bin/vault"), old_config.as_path()]
        );

        // A config that is there: the files it names are needed too.
        std::fs::create_dir_all(old_config.parent().unwrap()).unwrap();
        std::fs::write(
            &old_config,
            "[repository]\npassword_file = \"/etc/vault/archive-pass\"\n",
        )
        .unwrap();
        let needs = archive_command_needs(&command);
        assert_eq!(needs[2].0, Path::new("/etc/vault/archive-pass"));
        assert!(needs[2].1.contains("password_file in"), "{needs:?}");

        // ALTER SYSTEM wins; `vault` without --config reads the default.
        std::fs::write(
            data.join("postgresql.auto.conf"),
            "archive_command = 'vault --password-file=/x/pass wal push \"%p\"'\n",
        )
        .unwrap();
        let (command, _) = configured_setting(&data, "archive_command").unwrap();
        let needs = archive_command_needs(&command);
        let paths: Vec<&Path> = needs.iter().map(|(p, _)| p.as_path()).collect();
        assert!(
            paths.starts_with(&[Path::new("/x/pass"), Path::new(crate::config::DEFAULT_PATH)]),
            "{paths:?}"
        );
        assert_eq!(hide_secrets(&command), command);
        assert_eq!(
            shell_words(r#"a 'b c'"d\"e" f\ g;h"#),
            ["a", "b cd\"e", "f g", "h"]
        );
        assert_eq!(setting_value(r"x = 'it''s \'q\''"), Some("it's 'q'".into()));
        assert_eq!(setting_value("x on # c"), Some("on".into()));
    }

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
