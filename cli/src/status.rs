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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SourceStatus {
    pub(crate) last_success: Option<Success>,
    pub(crate) last_failure: Option<Failure>,
    /// "success" or "failure": the outcome of the latest run.
    pub(crate) last_result: Option<String>,
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

    /// Writes atomically (temp file + rename).
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
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
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
