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
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading status file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading status file {}", path.display())),
        }
    }

    /// Like [`StatusFile::load`], but a file that does not parse (a crash
    /// or a full disk can leave it empty) is renamed to `NAME.damaged` and
    /// replaced by an empty one, with the warning returned: a backup must
    /// still record and alert its outcome.
    pub(crate) fn load_or_set_aside(path: &Path) -> (Self, Option<String>) {
        match Self::load(path) {
            Ok(file) => (file, None),
            Err(e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".damaged");
                let moved = match std::fs::rename(path, &aside) {
                    Ok(()) => format!("; moved to {}", Path::new(&aside).display()),
                    Err(_) => String::new(),
                };
                (
                    Self::default(),
                    Some(format!("{e:#}{moved}; starting a new status file")),
                )
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
        let (mut file, damaged) = Self::load_or_set_aside(path);
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
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(file)
}

/// Replaces `path` with `bytes` through a temporary file and a rename, so
/// readers never see half a file. The temporary name is unique per process:
/// several vault processes may end at once.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    // Durable before the rename, or a crash can leave the new name on an
    // empty file; and no temporary left behind when writing fails.
    let written = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
