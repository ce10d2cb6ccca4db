//! Exclusive maintenance locks (repo-format.md §11.2).
//!
//! Only maintenance (forget, prune, repair) locks; backups never do, so a
//! crashed backup can never leave a lock that blocks the next cron run, and
//! a backup-only credential needs no delete permission.
//!
//! Where the store enforces create-only writes atomically (local disk, AWS
//! S3), the lock is the single object `locks/exclusive`, created with
//! `PutMode::Create`. Elsewhere (Garage ignores `If-None-Match`) a holder
//! writes `locks/<random>`, waits [`LOCK_SETTLE_MILLIS`], lists `locks/`
//! again and backs off if any other live lock exists; two contenders may
//! both back off, but two can never both proceed. A holder rewrites its lock
//! every [`LOCK_REFRESH_SECS`]; a lock not refreshed for
//! [`LOCK_STALE_SECS`] (or whose process is gone, on the same host) is
//! stale and may be removed.

use crate::backend::{Backend, BackendError, PutMode};
use crate::error::{Error, Result};
use crate::repository::{FileKind, Repository};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a held lock is rewritten.
pub const LOCK_REFRESH_SECS: u64 = 60;
/// Age after which an unrefreshed lock is stale. Hosts' clocks must agree
/// to well within this (NTP).
pub const LOCK_STALE_SECS: i64 = 300;
/// Wait between writing a lock and re-listing, for the fallback protocol.
pub const LOCK_SETTLE_MILLIS: u64 = 1500;

const EXCLUSIVE: &str = "locks/exclusive";

/// The stored lock document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// Host holding it.
    pub hostname: String,
    /// User holding it.
    pub username: String,
    /// Process id on that host.
    pub pid: u32,
    /// What it is for (`prune`, `forget`, ...).
    pub purpose: String,
    /// When it was taken (Unix seconds).
    pub created: i64,
    /// When it was last refreshed (Unix seconds).
    pub refreshed: i64,
    /// Random nonce so two holders never write identical bytes.
    pub nonce: u64,
}

impl LockInfo {
    /// Whether the lock is stale at `now`.
    #[must_use]
    pub fn is_stale(&self, now: i64, this_host: &str) -> bool {
        if now - self.refreshed > LOCK_STALE_SECS {
            return true;
        }
        // Same host: stale as soon as its process is gone.
        self.hostname == this_host && !process_alive(self.pid)
    }

    /// `host X, pid Y since T`.
    #[must_use]
    pub fn describe(&self) -> String {
        let since = jiff::Timestamp::from_second(self.created)
            .map(|t| t.to_string())
            .unwrap_or_default();
        format!(
            "{} by {}@{}, pid {} since {since}",
            self.purpose, self.username, self.hostname, self.pid
        )
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A held lock; released (deleted) on drop.
pub struct Lock {
    backend: Arc<dyn Backend>,
    path: String,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock").field("path", &self.path).finish()
    }
}

impl Lock {
    /// True once a refresh found the lock object no longer ours (another
    /// process judged it stale and took over). Holders stop deleting then.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.refresher.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        // Never delete a lock that is someone else's now.
        if !self.is_lost() {
            let _ = self.backend.delete(&self.path);
        }
    }
}

/// Every lock in the repository with its path. Unreadable lock objects are
/// reported with `None`.
pub fn list(repo: &Repository) -> Result<Vec<(String, Option<LockInfo>)>> {
    let mut out = Vec::new();
    for info in repo.list(FileKind::Lock)? {
        if info.path.contains("/probe-") {
            continue;
        }
        let parsed = match repo.backend().get(&info.path) {
            Ok(bytes) => repo
                .open_lock(&info.path, &bytes)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            Err(BackendError::NotFound(_)) => continue,
            Err(e) => return Err(Error::backend(&info.path, e)),
        };
        out.push((info.path, parsed));
    }
    Ok(out)
}

/// Takes the exclusive maintenance lock, or fails with [`Error::Locked`].
pub fn lock_exclusive(
    repo: &Repository,
    purpose: &str,
    hostname: &str,
    username: &str,
) -> Result<Lock> {
    let info = LockInfo {
        hostname: hostname.to_owned(),
        username: username.to_owned(),
        pid: std::process::id(),
        purpose: purpose.to_owned(),
        created: now(),
        refreshed: now(),
        nonce: rand::random(),
    };
    let backend = repo.backend().clone();
    let encode =
        |info: &LockInfo| repo.seal_lock(&serde_json::to_vec(info).expect("lock serialises"));
    let live_others = |own: &str| -> Result<Option<LockInfo>> {
        for (path, other) in list(repo)? {
            if path == own {
                continue;
            }
            match other {
                Some(o) if !o.is_stale(now(), hostname) => return Ok(Some(o)),
                Some(_) => {}
                // Unreadable lock: treat as held until it ages out by mtime
                // is impossible to know; be safe and refuse.
                None => {
                    return Ok(Some(LockInfo {
                        hostname: "unknown".into(),
                        username: "unknown".into(),
                        pid: 0,
                        purpose: format!("unreadable lock {path}"),
                        created: 0,
                        refreshed: now(),
                        nonce: 0,
                    }));
                }
            }
        }
        Ok(None)
    };
    let path = if backend.has_atomic_create() {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match backend.put(EXCLUSIVE, encode(&info).into(), PutMode::Create) {
                Ok(()) => break EXCLUSIVE.to_owned(),
                Err(BackendError::AlreadyExists(_)) => {
                    let holder = list(repo)?
                        .into_iter()
                        .find(|(p, _)| p == EXCLUSIVE)
                        .and_then(|(_, i)| i);
                    match holder {
                        Some(h) if h.is_stale(now(), hostname) && attempts < 3 => {
                            tracing::warn!("removing stale lock: {}", h.describe());
                            backend
                                .delete(EXCLUSIVE)
                                .map_err(|e| Error::backend(EXCLUSIVE, e))?;
                        }
                        Some(h) => {
                            return Err(Error::Locked {
                                holder: h.describe(),
                            });
                        }
                        None if attempts < 3 => {}
                        None => {
                            return Err(Error::Locked {
                                holder: format!("unreadable lock {EXCLUSIVE} (see `vault unlock`)"),
                            });
                        }
                    }
                }
                Err(e) => return Err(Error::backend(EXCLUSIVE, e)),
            }
        }
    } else {
        if let Some(o) = live_others("")? {
            return Err(Error::Locked {
                holder: o.describe(),
            });
        }
        let path = FileKind::Lock.path(&format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        ));
        backend
            .put(&path, encode(&info).into(), PutMode::Overwrite)
            .map_err(|e| Error::backend(&path, e))?;
        std::thread::sleep(Duration::from_millis(LOCK_SETTLE_MILLIS));
        if let Some(o) = live_others(&path)? {
            let _ = backend.delete(&path);
            return Err(Error::Locked {
                holder: o.describe(),
            });
        }
        path
    };
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let refresher = {
        let stop = stop.clone();
        let lost = lost.clone();
        let backend = backend.clone();
        let path = path.clone();
        let mut info = info.clone();
        // The refresher cannot borrow the repository; it keeps a key copy.
        let key = repo.key().clone();
        let sealed_for = {
            let key = key.clone();
            move |i: &LockInfo| {
                let body = serde_json::to_vec(i).expect("lock serialises");
                crate::repository::seal_lock_with(&key, &body)
            }
        };
        let still_ours = move |backend: &dyn Backend, path: &str, nonce: u64| -> bool {
            let Ok(bytes) = backend.get(path) else {
                return false;
            };
            crate::repository::open_lock_with(&key, path, &bytes)
                .ok()
                .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
                .is_some_and(|i| i.nonce == nonce)
        };
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_secs(LOCK_REFRESH_SECS));
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if !still_ours(backend.as_ref(), &path, info.nonce) {
                    tracing::error!("lock {path} was taken over; stopping maintenance");
                    lost.store(true, Ordering::SeqCst);
                    break;
                }
                info.refreshed = now();
                if let Err(e) = backend.put(&path, sealed_for(&info).into(), PutMode::Overwrite) {
                    tracing::warn!("refreshing lock {path}: {e}");
                }
            }
        })
    };
    Ok(Lock {
        backend,
        path,
        stop,
        lost,
        refresher: Some(refresher),
    })
}

/// Removes stale locks (or every lock with `all`). Returns what was removed.
pub fn unlock(repo: &Repository, all: bool, hostname: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (path, info) in list(repo)? {
        let stale = info.as_ref().is_none_or(|i| i.is_stale(now(), hostname));
        if all || stale {
            repo.backend()
                .delete(&path)
                .map_err(|e| Error::backend(&path, e))?;
            removed.push(match info {
                Some(i) => format!("{path} ({})", i.describe()),
                None => format!("{path} (unreadable)"),
            });
        }
    }
    Ok(removed)
}
