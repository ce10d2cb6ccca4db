//! Subcommands: one file each, each with its own `Args` and `run`.

mod backup;
mod cache;
mod cat;
mod check;
mod completion;
mod copy;
mod diff;
mod drill;
mod dump;
mod extend_retention;
mod find;
mod forget;
mod init;
mod key_add;
mod key_export;
mod key_import;
mod key_list;
mod key_passwd;
mod key_remove;
mod list;
mod ls;
mod mount;
mod prune;
mod recover;
mod repair_index;
mod repair_snapshots;
mod restore;
mod rewrite;
mod snapshots;
mod stats;
mod status;
mod tag;
mod unlock;
mod version;
mod wal;

use crate::args::Cli;
use anyhow::Result;
use clap::Subcommand;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a new repository.
    Init(init::InitArgs),
    /// Back up files, standard input, or a command's output.
    Backup(backup::BackupArgs),
    /// List snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// List files in a snapshot.
    Ls(ls::LsArgs),
    /// Find files by name or path pattern in snapshots, or where objects
    /// are used (--blob, --tree, --pack).
    Find(find::FindArgs),
    /// Restore a snapshot.
    ///
    /// An entry the target refuses (an immutable file, a directory this
    /// user cannot write, a device node as non-root, an extended attribute
    /// or mode that cannot be set) is named on stderr and skipped, and the
    /// restore goes on; it then exits 3, and `--json` lists them in
    /// `failed_entries`. As non-root, owners stay the restoring user's
    /// (not an error). Data damaged or missing in the repository: its files
    /// are named and restored with zeros there, exit 5 (4 if only missing).
    /// A full disk (7), the storage failing (8) or Ctrl-C (130) stop the
    /// restore at once; run it again with `--overwrite if-changed` to
    /// finish it.
    Restore(restore::RestoreArgs),
    /// Write a file of a snapshot to standard output, or a directory as a tar
    /// (or zip) stream.
    Dump(dump::DumpArgs),
    /// Browse every snapshot as a read-only filesystem (FUSE), in the
    /// foreground until Ctrl-C.
    Mount(mount::MountArgs),
    /// Print a repository object (config, snapshot, index, key, tree) as JSON.
    Cat(cat::CatArgs),
    /// List the ids of one kind of repository object (snapshots, index,
    /// packs, keys, locks, blobs), one per line.
    List(list::ListArgs),
    /// Save a snapshot (tagged recovered) of every directory tree no
    /// snapshot reaches: what a lost or damaged snapshot object held.
    Recover(recover::RecoverArgs),
    /// Check the repository's structure, and with --verify its data.
    Check(check::CheckArgs),
    /// Repair a damaged repository.
    ///
    /// After `check --verify` finds damage: `repair index --read-data`
    /// (rebuilds the index; a pack whose header cannot be read, truncated
    /// or damaged, is left out and its blobs are lost), then `repair
    /// snapshots --forget` (drops the files whose data is lost; it ignores
    /// such packs, naming them), then `backup` to store that content again.
    /// `prune` removes the unreadable packs as any pack in no index: marked
    /// first, deleted after the delete margin.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Remove snapshots by a retention policy (GFS), optionally pruning.
    Forget(forget::ForgetArgs),
    /// Reclaim space that no snapshot uses.
    Prune(prune::PruneCmdArgs),
    /// Store snapshots anew without paths matching patterns (leaked
    /// secrets, data that must go); --forget deletes the originals.
    Rewrite(rewrite::RewriteArgs),
    /// Add, remove or set tags of snapshots.
    Tag(tag::TagArgs),
    /// Remove stale locks.
    Unlock(unlock::UnlockArgs),
    /// Extend the S3 Object Lock retention of everything a locked
    /// repository holds to now + its days (prune does it too).
    ExtendRetention(extend_retention::ExtendRetentionArgs),
    /// Per configured source: last success and failure, age, sizes.
    Status(status::StatusArgs),
    /// Restore drill: load the latest backup of a source into a scratch
    /// database or directory, check it, clean up.
    Drill(drill::DrillArgs),
    /// PostgreSQL WAL archiving for point-in-time recovery.
    #[command(subcommand)]
    Wal(wal::WalCommand),
    /// Manage the repository's passwords (key files) and its master key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Copy snapshots to another repository (its own password and keys).
    Copy(copy::CopyArgs),
    /// Show what changed between two snapshots.
    Diff(diff::DiffArgs),
    /// Sizes, deduplication and compression of snapshots and the repository.
    ///
    /// In restore-size mode, `total_file_count` (File Count) counts regular
    /// files only; directories and other entries (symlinks, devices, fifos,
    /// sockets) are counted apart (`total_dir_count`, `total_other_count`).
    /// restic's `total_file_count` counts every entry: the sum of the three.
    Stats(stats::StatsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
    /// Print vault's version, platform and repository format version.
    Version,
    /// List the local caches of object-store repositories; --cleanup removes unused ones.
    Cache(cache::CacheArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// List key files; the one in use is marked (`current` in --json).
    List(key_list::KeyListArgs),
    /// Add a password (a new key file for the same master key).
    Add(key_add::KeyAddArgs),
    /// Remove a key file (never the last; the one in use only with --force).
    Remove(key_remove::KeyRemoveArgs),
    /// Change the password in use (adds a key file, removes the old one).
    Passwd(key_passwd::KeyPasswdArgs),
    /// Print the master key in a printable form with checks, to keep offline.
    Export(key_export::KeyExportArgs),
    /// Regain access with an exported master key; adds a key file for a new password.
    Import(key_import::KeyImportArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum RepairCommand {
    /// Rebuild the index from the packs.
    Index(repair_index::RepairIndexArgs),
    /// Drop files whose data is lost from snapshots.
    Snapshots(repair_snapshots::RepairSnapshotsArgs),
}

pub(crate) fn run(cli: Cli, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Backup(a) => backup::run(g, a, cancel),
        Command::Snapshots(a) => snapshots::run(g, &a),
        Command::Ls(a) => ls::run(g, &a),
        Command::Find(a) => find::run(g, &a),
        Command::Restore(a) => restore::run(g, &a, cancel),
        Command::Dump(a) => dump::run(g, &a, cancel),
        Command::Mount(a) => mount::run(g, &a, cancel),
        Command::Cat(a) => cat::run(g, &a),
        Command::List(a) => list::run(g, &a),
        Command::Recover(a) => recover::run(g, &a),
        Command::Check(a) => check::run(g, &a),
        Command::Forget(a) => forget::run(g, &a),
        Command::Prune(a) => prune::run(g, &a),
        Command::Rewrite(a) => rewrite::run(g, &a),
        Command::Tag(a) => tag::run(g, &a),
        Command::Unlock(a) => unlock::run(g, &a),
        Command::ExtendRetention(a) => extend_retention::run(g, &a),
        Command::Status(a) => status::run(g, &a),
        Command::Drill(a) => drill::run(g, &a, cancel),
        Command::Key(KeyCommand::List(a)) => key_list::run(g, &a),
        Command::Key(KeyCommand::Add(a)) => key_add::run(g, &a),
        Command::Key(KeyCommand::Remove(a)) => key_remove::run(g, &a),
        Command::Key(KeyCommand::Passwd(a)) => key_passwd::run(g, &a),
        Command::Key(KeyCommand::Export(a)) => key_export::run(g, &a),
        Command::Key(KeyCommand::Import(a)) => key_import::run(g, &a),
        Command::Copy(a) => copy::run(g, &a, cancel),
        Command::Diff(a) => diff::run(g, &a),
        Command::Stats(a) => stats::run(g, &a),
        Command::Completion(a) => completion::run(&a),
        Command::Version => version::run(g),
        Command::Cache(a) => cache::run(g, &a),
        Command::Wal(c) => wal::run(g, &c),
        Command::Repair(RepairCommand::Index(a)) => repair_index::run(g, &a),
        Command::Repair(RepairCommand::Snapshots(a)) => repair_snapshots::run(g, &a),
    }
}

/// `--host/--tag/--path` as accepted by commands that pick snapshots.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only snapshots of this host (repeatable).
    #[arg(short = 'H', long = "host")]
    pub(crate) hosts: Vec<String>,
    /// Only snapshots with these tags (a,b = both; repeat for either).
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Only snapshots including this path (repeatable).
    #[arg(long = "path", value_parser = clap::value_parser!(std::ffi::OsString))]
    pub(crate) paths: Vec<std::ffi::OsString>,
}

impl FilterArgs {
    pub(crate) fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.paths.is_empty()
    }

    /// The filter that picks the snapshot `spec` names, as restic applies
    /// it: to `latest`, not to an id, which names its snapshot whatever the
    /// filter (a script passing `--host` to every command, given an id).
    fn for_spec(&self, spec: &str) -> vault_engine::snapshot::SnapshotFilter {
        if spec == "latest" {
            self.to_filter()
        } else {
            FilterArgs::default().to_filter()
        }
    }

    /// Says (once per command) that the filter does not apply to the ids
    /// among `specs`, as restic does.
    fn warn_if_ignored<'a>(&self, specs: impl IntoIterator<Item = &'a str>) {
        if !self.is_empty() && specs.into_iter().any(|s| s != "latest") {
            tracing::warn!(
                "ignoring --host/--tag/--path, as explicit snapshot ids are given (they still apply to `latest`)"
            );
        }
    }

    pub(crate) fn to_filter(&self) -> vault_engine::snapshot::SnapshotFilter {
        vault_engine::snapshot::SnapshotFilter {
            hosts: self.hosts.clone(),
            tags: self.tags.clone(),
            // A snapshot records its paths as lossy UTF-8 (repo-format.md):
            // a path that is not UTF-8 is compared as it was recorded.
            paths: (self.paths.iter())
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        }
    }
}

/// The patterns of an exclude file, one a line (`\n` or `\r\n`), as bytes:
/// a file name in it need not be UTF-8. As restic reads its exclude
/// files: each line is trimmed of white space, blank lines and lines
/// starting with `#` are skipped, and `$NAME`/`${NAME}` is replaced by that
/// environment variable ([`expand_env`]). Patterns given on the command
/// line or in the config are taken as they are.
pub(crate) fn pattern_file(file: &std::path::Path) -> Result<Vec<std::ffi::OsString>> {
    use anyhow::Context;
    use std::os::unix::ffi::OsStrExt;
    let bytes =
        std::fs::read(file).with_context(|| format!("reading exclude file {}", file.display()))?;
    Ok(bytes
        .split(|&b| b == b'\n')
        .map(|line| match std::str::from_utf8(line) {
            Ok(text) => text.trim().as_bytes(),
            Err(_) => line.trim_ascii(),
        })
        .filter(|line| !line.is_empty() && !line.starts_with(b"#"))
        .map(|line| {
            std::ffi::OsStr::from_bytes(&expand_env(line, |name| std::env::var_os(name))).to_owned()
        })
        .collect())
}

/// `line` with environment variables expanded as restic expands the lines
/// of its exclude files (Go's `os.Expand`): `$NAME` (letters, digits, `_`)
/// and `${NAME}` become the value, an unset variable the empty string;
/// `$$` is `$`; `$` before anything else, or at the end, stays; `${}` and
/// an unclosed `${` are dropped; `$1`, `$*` and the like name one-character
/// variables (in practice unset).
fn expand_env(
    line: &[u8],
    lookup: impl Fn(&std::ffi::OsStr) -> Option<std::ffi::OsString>,
) -> Vec<u8> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let value = |name: &[u8]| -> Vec<u8> {
        if name == b"$" {
            return b"$".to_vec();
        }
        // A name the environment cannot hold is unset.
        if name.is_empty() || name.contains(&b'=') || name.contains(&0) {
            return Vec::new();
        }
        lookup(std::ffi::OsStr::from_bytes(name))
            .map(OsStringExt::into_vec)
            .unwrap_or_default()
    };
    let special = |b: u8| b"*#$@!?-0123456789".contains(&b);
    let word = |b: u8| b == b'_' || b.is_ascii_alphanumeric();
    let mut out = Vec::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.iter().position(|&b| b == b'$') {
        out.extend_from_slice(rest.get(..at).unwrap_or_default());
        let after = rest.get(at + 1..).unwrap_or_default();
        let (replacement, used) = match after {
            [] => (b"$".to_vec(), 0),
            [b'{', c, b'}', ..] if special(*c) => (value(&[*c]), 3),
            [b'{', inner @ ..] => match inner.iter().position(|&b| b == b'}') {
                Some(0) => (Vec::new(), 2),
                Some(end) => (value(inner.get(..end).unwrap_or_default()), end + 2),
                None => (Vec::new(), 1),
            },
            [c, ..] if special(*c) => (value(&[*c]), 1),
            _ => {
                let len = after.iter().take_while(|&&b| word(b)).count();
                if len == 0 {
                    (b"$".to_vec(), 0)
                } else {
                    (value(after.get(..len).unwrap_or_default()), len)
                }
            }
        };
        out.extend_from_slice(&replacement);
        rest = after.get(used..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    out
}

/// The exclusive maintenance lock for `purpose`, except on a dry run,
/// which changes nothing.
pub(crate) fn maintenance_lock(
    g: &crate::args::GlobalArgs,
    repo: &vault_engine::Repository,
    purpose: &str,
    dry_run: bool,
) -> Result<Option<vault_engine::lock::Lock>> {
    if dry_run {
        return Ok(None);
    }
    exclusive_lock(g, repo, purpose).map(Some)
}

/// Takes the exclusive maintenance lock; while another command holds it,
/// retries for up to `--retry-lock` (as restic's flag does), so cron jobs
/// that can overlap (a nightly forget, a weekly prune) wait their turn
/// instead of failing with exit 11.
pub(crate) fn exclusive_lock(
    g: &crate::args::GlobalArgs,
    repo: &vault_engine::Repository,
    purpose: &str,
) -> Result<vault_engine::lock::Lock> {
    let deadline = g.retry_lock.map(|d| std::time::Instant::now() + d);
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        match vault_engine::lock::lock_exclusive(
            repo,
            purpose,
            &crate::global::hostname(),
            &crate::global::username(),
        ) {
            Err(
                e @ (vault_engine::Error::Locked { .. }
                | vault_engine::Error::LockUnreadable { .. }),
            ) => {
                let now = std::time::Instant::now();
                match deadline {
                    Some(deadline) if now < deadline => {
                        tracing::info!("{e}; retrying");
                        std::thread::sleep(pause.min(deadline - now));
                        pause = (pause * 2).min(std::time::Duration::from_secs(30));
                    }
                    _ => {
                        // An unreadable lock has no age to judge: it is never
                        // taken over as stale (repo-format.md §11.2).
                        let how = if matches!(e, vault_engine::Error::LockUnreadable { .. }) {
                            "a lock object that cannot be read (damaged, or not written by this repository's key) is never taken over as stale; `vault unlock` removes it".to_owned()
                        } else {
                            format!(
                                "a lock not refreshed for {} minutes is stale and taken over; if its holder is gone for good (a crashed host), `vault unlock` removes it now",
                                vault_engine::lock::LOCK_STALE_SECS / 60
                            )
                        };
                        return Err(anyhow::Error::from(e).context(format!(
                            "cannot take the repository's lock for {purpose}: {how}"
                        )));
                    }
                }
            }
            // A full repository disk fails the lock first: no maintenance
            // command can free space then, so say how to get out.
            Err(e) if e.kind() == vault_engine::ErrorKind::NoSpace => {
                return Err(anyhow::Error::from(e).context(
                    "the repository's storage is full: vault needs a few KB to take its lock; free a little space there by hand, then `vault forget --prune` and `vault prune --instant-delete` reclaim what snapshots no longer use",
                ));
            }
            other => return Ok(other?),
        }
    }
}

/// Every readable snapshot, oldest first, and the errors of the damaged
/// ones (each warned about, as `Repository::snapshots` does): for a command
/// that picks snapshots by id, where a damaged one may be the one asked for
/// (see [`unmatched`]).
pub(crate) fn snapshots_and_damaged(
    repo: &vault_engine::Repository,
) -> Result<(
    vault_engine::repository::SnapshotList,
    Vec<(vault_engine::id::SnapshotId, vault_engine::Error)>,
)> {
    let (snaps, damaged) = repo.snapshots_and_damaged()?;
    for (_, e) in &damaged {
        tracing::warn!("skipping {e}");
    }
    Ok((snaps, damaged))
}

/// The snapshots `specs` name (`latest` or id prefixes), each once, in the
/// order given; with none, every snapshot passing `filter`, oldest first.
/// `damaged` are the snapshots that could not be read (from
/// [`snapshots_and_damaged`]): a spec that matches none of `all` but could
/// be one of them fails as a damaged repository (see [`unmatched`]).
pub(crate) fn pick_snapshots<'a>(
    all: &'a [(
        vault_engine::id::SnapshotId,
        vault_engine::snapshot::Snapshot,
    )],
    damaged: Vec<(vault_engine::id::SnapshotId, vault_engine::Error)>,
    specs: &[String],
    filter: &FilterArgs,
) -> Result<
    Vec<&'a (
        vault_engine::id::SnapshotId,
        vault_engine::snapshot::Snapshot,
    )>,
> {
    if specs.is_empty() {
        let filter = filter.to_filter();
        return Ok(all.iter().filter(|(_, s)| filter.matches(s)).collect());
    }
    filter.warn_if_ignored(specs.iter().map(String::as_str));
    let mut chosen: Vec<&(
        vault_engine::id::SnapshotId,
        vault_engine::snapshot::Snapshot,
    )> = Vec::new();
    for spec in specs {
        let found = match vault_engine::snapshot::select(all, spec, &filter.for_spec(spec)) {
            Ok(found) => found,
            Err(e @ vault_engine::snapshot::SelectError::NoMatch(_)) => {
                return Err(unmatched(e.to_string(), Some(spec), damaged));
            }
            Err(e) => return Err(e.into()),
        };
        if !chosen.iter().any(|(id, _)| *id == found.0) {
            chosen.push(found);
        }
    }
    Ok(chosen)
}

/// Resolves `latest`, an id prefix, or `--at TIME` to one snapshot; the
/// filter applies to `latest` and `--at`, not to an id (as restic's, with
/// a warning).
pub(crate) fn pick_snapshot(
    repo: &vault_engine::Repository,
    spec: Option<&str>,
    at: Option<&crate::timespec::TimeArg>,
    filter: &FilterArgs,
) -> Result<(
    vault_engine::id::SnapshotId,
    vault_engine::snapshot::Snapshot,
)> {
    match (spec, at) {
        (Some(spec), None) => {
            filter.warn_if_ignored([spec]);
            pick(repo, Some(spec), None, &filter.for_spec(spec))
        }
        _ => pick(repo, spec, at, &filter.to_filter()),
    }
}

/// The snapshot `spec` names among those `filter` passes, even for an id:
/// for a filter the command sets itself (a drill's source), not the user.
pub(crate) fn pick_snapshot_within(
    repo: &vault_engine::Repository,
    spec: &str,
    filter: &FilterArgs,
) -> Result<(
    vault_engine::id::SnapshotId,
    vault_engine::snapshot::Snapshot,
)> {
    pick(repo, Some(spec), None, &filter.to_filter())
}

fn pick(
    repo: &vault_engine::Repository,
    spec: Option<&str>,
    at: Option<&crate::timespec::TimeArg>,
    filter: &vault_engine::snapshot::SnapshotFilter,
) -> Result<(
    vault_engine::id::SnapshotId,
    vault_engine::snapshot::Snapshot,
)> {
    let (snaps, damaged) = snapshots_and_damaged(repo)?;
    match at {
        Some(at) => {
            let time = &at.time;
            match vault_engine::snapshot::select_at(&snaps, time.timestamp(), filter)? {
                Some(found) => Ok(found.clone()),
                None => {
                    // Say which instant `--at` was read as (a bare date is
                    // its midnight) and where the history starts.
                    let oldest = snaps
                        .iter()
                        .filter(|(_, s)| filter.matches(s))
                        .map(|(_, s)| &s.time)
                        .min_by_key(|t| t.timestamp())
                        .map_or("there are none".to_owned(), |t| {
                            format!("the oldest is from {}", crate::output::local_time(t))
                        });
                    Err(unmatched(
                        format!(
                            "no snapshot at or before {} (read as {}); {oldest}",
                            at.text,
                            at.read_as()
                        ),
                        None,
                        damaged,
                    ))
                }
            }
        }
        None => {
            let spec = spec.unwrap_or("latest");
            match vault_engine::snapshot::select(&snaps, spec, filter) {
                Ok(found) => Ok(found.clone()),
                Err(e @ vault_engine::snapshot::SelectError::NoMatch(_)) => {
                    Err(unmatched(e.to_string(), Some(spec), damaged))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// The error for a snapshot asked for (`spec`: `latest` or an id prefix;
/// `None` for a time) that no readable snapshot matches, `missing` saying
/// so. If one of the `damaged` snapshots could be it, that is a damaged
/// repository (exit 5) naming it, not a missing snapshot: any of them could
/// be `latest` or the one at a time (their time and tags are unreadable),
/// but only one whose id starts with an id prefix could be that.
fn unmatched(
    missing: String,
    spec: Option<&str>,
    damaged: Vec<(vault_engine::id::SnapshotId, vault_engine::Error)>,
) -> anyhow::Error {
    let prefix = spec.filter(|s| *s != "latest").map(str::to_ascii_lowercase);
    let could_be = |(id, _): &(vault_engine::id::SnapshotId, vault_engine::Error)| match &prefix {
        None => true,
        Some(prefix) => id.to_hex().starts_with(prefix.as_str()),
    };
    match damaged.into_iter().find(could_be) {
        Some((_, e)) => anyhow::Error::from(e).context(format!(
            "{missing}, and a snapshot that could be it is unreadable"
        )),
        None => anyhow::anyhow!(missing),
    }
}

/// The newest snapshot of a configured source (at or before `at`), either
/// its physical base backups or everything else.
pub(crate) fn pick_source_snapshot(
    repo: &vault_engine::Repository,
    source: &str,
    at: Option<&crate::timespec::TimeArg>,
    physical: bool,
    filter: &FilterArgs,
) -> Result<(
    vault_engine::id::SnapshotId,
    vault_engine::snapshot::Snapshot,
)> {
    use anyhow::Context;
    let mut filter = filter.to_filter();
    filter.tags.push(source.to_owned());
    let at = at.map(|a| &a.time);
    let snapshots = repo.snapshots()?;
    let is_physical = |s: &vault_engine::snapshot::Snapshot| s.tags.iter().any(|t| t == "physical");
    // Base backups of a source with no dump: say so, rather than that the
    // source has no snapshot at all.
    let mine = || snapshots.iter().filter(|(_, s)| filter.matches(s));
    let only_physical =
        !physical && mine().any(|(_, s)| is_physical(s)) && mine().all(|(_, s)| is_physical(s));
    snapshots
        .into_iter()
        .rev()
        .filter(|(_, s)| filter.matches(s))
        .filter(|(_, s)| is_physical(s) == physical)
        .find(|(_, s)| {
            at.as_ref()
                .is_none_or(|t| s.time.timestamp() <= t.timestamp())
        })
        .with_context(|| {
            format!(
                "no {}snapshot of source {source}{}{}",
                if physical { "physical " } else { "" },
                at.map(|t| format!(" at or before {t}")).unwrap_or_default(),
                if only_physical {
                    " other than physical base backups (`vault backup SOURCE --physical`), which this does not load: `vault restore SOURCE --pitr` restores them"
                } else {
                    ""
                }
            )
        })
}

/// `SNAPSHOT[:DIR]` split at its first colon (a snapshot spec has none).
pub(crate) fn split_subfolder(spec: &OsStr) -> (&OsStr, Option<&OsStr>) {
    let bytes = spec.as_bytes();
    match bytes.iter().position(|&b| b == b':') {
        Some(i) => (
            OsStr::from_bytes(&bytes[..i]),
            Some(OsStr::from_bytes(&bytes[i + 1..])),
        ),
        None => (spec, None),
    }
}

/// Whether DIR names the snapshot's root: empty, `/`, `.` and the like.
pub(crate) fn is_root(dir: &OsStr) -> bool {
    dir.as_bytes()
        .split(|&b| b == b'/')
        .all(|p| p.is_empty() || p == b".")
}

/// The tree of `dir` in `snap` (named `spec` in messages), or its root
/// tree where `dir` is none or names the root: `SNAPSHOT:DIR` of `cat
/// tree` and `restore`.
pub(crate) fn subfolder_tree(
    repo: &vault_engine::Repository,
    index: &vault_engine::index::Index,
    snap: &vault_engine::snapshot::Snapshot,
    spec: &str,
    dir: Option<&OsStr>,
) -> anyhow::Result<vault_engine::id::BlobId> {
    match dir {
        Some(dir) if !is_root(dir) => {
            let node = vault_engine::restore::find_node(repo, index, &snap.tree, dir)?;
            match node.subtree {
                Some(subtree) if node.kind == vault_engine::tree::NodeKind::Dir => Ok(subtree),
                _ => anyhow::bail!(
                    "{} in snapshot {spec} is not a directory",
                    std::path::Path::new(dir).display()
                ),
            }
        }
        _ => Ok(snap.tree),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;

    fn expand(line: &str) -> String {
        let env = |name: &OsStr| match name.to_str() {
            Some("HOME") => Some(OsString::from("/home/u")),
            Some("E") => Some(OsString::from("e")),
            _ => None,
        };
        String::from_utf8(expand_env(line.as_bytes(), env)).expect("UTF-8")
    }

    /// Each case as restic 0.14 expanded it in an exclude file.
    #[test]
    fn exclude_file_lines_expand_the_environment_as_restic_does() {
        assert_eq!(expand("$HOME/.cache"), "/home/u/.cache");
        assert_eq!(expand("${HOME}/x"), "/home/u/x");
        assert_eq!(expand("a${E}b$E"), "aebe");
        assert_eq!(expand("$NOPE/x"), "/x");
        assert_eq!(expand("d$$"), "d$");
        assert_eq!(expand("f$"), "f$");
        assert_eq!(expand("g$.x"), "g$.x");
        assert_eq!(expand("h${}x"), "hx");
        assert_eq!(expand("i${"), "i");
        assert_eq!(expand("j${NOPE"), "jNOPE");
        assert_eq!(expand("e$1"), "e");
        assert_eq!(expand("${$}"), "$");
        assert_eq!(expand("plain"), "plain");
    }

    #[test]
    fn exclude_file_lines_are_trimmed_and_comments_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ex");
        std::fs::write(&file, b"  *.tmp \r\n\n# note\n  #also\n\xff.bin\n").expect("write");
        let got = pattern_file(&file).expect("read");
        let want: Vec<OsString> = vec!["*.tmp".into(), OsStr::from_bytes(b"\xff.bin").into()];
        assert_eq!(got, want);
    }
}
