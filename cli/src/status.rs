//! The status file: per source, the last success and the last failure with
//! its reason, for `vault status`, monitoring and the heartbeat.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Success {
    pub(crate) time: String,
    pub(crate) snapshot: String,
    pub(crate) bytes_processed: u64,
    pub(crate) bytes_added: u64,
    pub(crate) duration_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub(crate) time: String,
    pub(crate) error: String,
}

/// One run of `vault drill`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DrillRun {
    pub(crate) time: String,
    pub(crate) ok: bool,
    /// The snapshot restored, when the drill got as far as picking one.
    pub(crate) snapshot: Option<String>,
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SourceStatus {
    pub(crate) last_success: Option<Success>,
    pub(crate) last_failure: Option<Failure>,
    /// "success", "incomplete" (saved without entries that could not be
    /// read) or "failure": the outcome of the latest run (but a base
    /// backup's, under `physical`).
    pub(crate) last_result: Option<String>,
    /// The latest drill, passed or failed.
    pub(crate) last_drill: Option<DrillRun>,
    /// When a drill last passed: what `drill_max_age` is measured from.
    pub(crate) last_drill_passed: Option<String>,
    /// `backup --physical` runs of a postgres source, kept apart from its
    /// dumps: a base backup that works must not hide a dump that fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) physical: Option<Box<SourceStatus>>,
}

impl SourceStatus {
    /// Whether the latest run needs someone to look: it failed or was
    /// incomplete.
    pub(crate) fn needs_attention(&self) -> bool {
        matches!(self.last_result.as_deref(), Some("failure" | "incomplete"))
            || self.physical.as_ref().is_some_and(|p| p.needs_attention())
    }

    /// Whether the latest drill failed: the backups may not restore.
    pub(crate) fn drill_failed(&self) -> bool {
        self.last_drill.as_ref().is_some_and(|d| !d.ok)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StatusFile {
    #[serde(default)]
    pub(crate) sources: BTreeMap<String, SourceStatus>,
    pub(crate) last_heartbeat: Option<String>,
}

/// Where the status file lives: the config's `status_file`, else
/// `$XDG_STATE_HOME/vault/status.json` (`~/.local/state/vault/status.json`).
pub(crate) fn path(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    state_dir().join("status.json")
}

/// vault's local state: `$XDG_STATE_HOME/vault` (`~/.local/state/vault`).
pub(crate) fn state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("vault")
}

impl StatusFile {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        match read_private(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading status file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading status file {}", path.display())),
        }
    }

    /// Like [`StatusFile::load`], but a file that does not parse (a crash
    /// or a full disk can leave it empty) is renamed to `NAME.damaged` and
    /// replaced by an empty one, with the warning returned: a backup must
    /// still record and alert its outcome. A file that cannot be read (a
    /// symlink, which vault refuses to follow) is an error: setting it
    /// aside would hide what someone put there.
    pub(crate) fn load_or_set_aside(path: &Path) -> Result<(Self, Option<String>)> {
        let bytes = match read_private(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Self::default(), None));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading status file {}", path.display()));
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(file) => Ok((file, None)),
            Err(e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".damaged");
                let moved = match std::fs::rename(path, &aside) {
                    Ok(()) => format!("; moved to {}", Path::new(&aside).display()),
                    Err(_) => String::new(),
                };
                Ok((
                    Self::default(),
                    Some(format!(
                        "reading status file {}: {e}{moved}; starting a new status file",
                        path.display()
                    )),
                ))
            }
        }
    }

    /// Changes the status file under an exclusive lock (`NAME.lock` beside
    /// it): load, `change`, save. vault runs that end at once (per-source
    /// timers, a drill beside a backup) each keep their update; without
    /// the lock the last to save dropped the others', so a failed source
    /// could read `success`. `change` must be quick (no webhooks): other
    /// runs wait for the lock. A file that does not parse is set aside
    /// with a warning, as in [`StatusFile::load_or_set_aside`].
    pub(crate) fn update<T>(path: &Path, change: impl FnOnce(&mut Self) -> T) -> Result<T> {
        let _lock = lock(path)?;
        let (mut file, damaged) = Self::load_or_set_aside(path)?;
        if let Some(warning) = damaged {
            eprintln!("vault: warning: {warning}");
        }
        let out = change(&mut file);
        file.save(path)?;
        Ok(out)
    }

    /// Writes atomically (temp file + rename).
    fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Waits for the exclusive lock on the status file at `path` (held on
/// `NAME.lock`, since the file itself is replaced on every save). Released
/// when the returned file is dropped, or by the kernel when the process
/// dies.
fn lock(path: &Path) -> Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    if let Some(dir) = lock_path.parent() {
        create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        warn_if_shared(dir);
    }
    let file = open_lock_file(&lock_path)?;
    file.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(file)
}

/// Warns when `dir`, where the status file and the overlap locks live, is
/// writable by other users (a configured `status_file` in /tmp): vault
/// refuses the symlinks they could put there, but they can still replace
/// the status file or hold a lock.
fn warn_if_shared(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(dir)
        && meta.mode() & 0o022 != 0
    {
        eprintln!(
            "vault: warning: the status file's directory {} is writable by other users, \
             who can replace the status file or hold its locks; keep it in a directory \
             only vault's user can write (status_file in the config)",
            dir.display()
        );
    }
}

/// Creates `dir` and its missing parents `0700`, whatever the umask: what
/// vault keeps there (status, overlap locks, request counts) is its user's
/// business, and a lock file another user can open is one they can hold
/// forever. A directory that exists keeps its mode: its owner chose it.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Opens (creating it `0600`, whatever the umask) the lock file at `path`
/// for `flock`. Whoever can write its directory could otherwise put a
/// symlink there (and root would create or open any file through it), a
/// FIFO (an open that never returns) or a hard link to a file of root's: a
/// symlink is refused, never followed, and the file
/// must be a regular file with no other name. A lock file of this user's
/// that an earlier vault left open to others is made `0600`.
pub(crate) fn open_lock_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "lock file {} is a symbolic link: vault does not follow one there \
                 (someone else may have put it there); remove it",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("opening {}", path.display())),
        })?;
    let meta = file
        .metadata()
        .with_context(|| format!("opening {}", path.display()))?;
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "lock file {} {why}: not used as a lock (someone else may have put it there); \
             remove it",
            path.display()
        )
    };
    if !meta.is_file() {
        return Err(refuse("is not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(refuse("has other names (hard links)"));
    }
    // Only this user's own: root must not change the mode of a file a
    // user who shares the directory made.
    if meta.mode() & 0o077 != 0 && meta.uid() == nix::unistd::geteuid().as_raw() {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok(file)
}

/// Reads the state file at `path`, refusing a symlink there (the error
/// says so) rather than following it: vault runs as root, and a state
/// file in a directory others can write must not make it read theirs.
pub(crate) fn read_private(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::other(
                "it is a symbolic link, which vault does not follow there \
                 (someone else may have put it there); remove it",
            ),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Replaces `path` with `bytes` through a temporary file and a rename, so
/// readers never see half a file. The temporary file is created under a
/// random name with `O_EXCL` (`tempfile`), never through whatever another
/// user may have put at a name they could guess, and `0600` whatever the
/// umask (a file that was there keeps its permission bits, so an admin who
/// opened it to a monitoring user keeps that). The rename replaces a
/// symlink at `path` itself, never its target.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    create_private_dir(dir)?;
    let mut prefix = path.file_name().unwrap_or_default().to_owned();
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    if let Ok(old) = std::fs::symlink_metadata(path)
        && old.is_file()
        && old.uid() == nix::unistd::geteuid().as_raw()
    {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o644))?;
    }
    // Durable before the rename, or a crash can leave the new name on an
    // empty file; dropped (and removed) when writing fails.
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
