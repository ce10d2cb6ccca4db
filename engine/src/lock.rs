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
use crate::crypto::MasterKey;
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
        self.why_live(now, this_host).is_none()
    }

    /// Why the lock is not stale at `now` (`None`: it is stale): for
    /// telling a user why `unlock` left it.
    #[must_use]
    pub fn why_live(&self, now: i64, this_host: &str) -> Option<String> {
        let since_refresh = now - self.refreshed;
        if since_refresh > LOCK_STALE_SECS {
            return None;
        }
        // Same host: stale as soon as its process is gone.
        if self.hostname == this_host {
            return process_alive(self.pid)
                .then(|| format!("process {} is still running on this host", self.pid));
        }
        Some(format!(
            "refreshed {} ago by another host (stale only after {} without a refresh)",
            age(since_refresh),
            age(LOCK_STALE_SECS)
        ))
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

/// `42s`, `3m12s`, `2h5m`, `3d4h`: a lock's age as a person reads it.
fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
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
    /// To read the lock back before deleting it.
    key: MasterKey,
    nonce: u64,
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
        // Never delete a lock that is someone else's now: the refresher
        // looks only once a minute, so look again.
        let ours = !self.is_lost()
            && read_lock(self.backend.as_ref(), &self.key, &self.path)
                .is_some_and(|held| held.nonce == self.nonce);
        if ours {
            let _ = self.backend.delete(&self.path);
        }
    }
}

/// The lock document stored at `path`, if it is there and opens.
fn read_lock(backend: &dyn Backend, key: &MasterKey, path: &str) -> Option<LockInfo> {
    let bytes = backend.get(path, FileKind::Lock.max_len()).ok()?;
    crate::repository::open_lock_with(key, path, &bytes)
        .ok()
        .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
}

/// Whether `path` is a lock object's name (repo-format.md §2): the
/// exclusive lock, or 32 lowercase hex digits of the fallback protocol.
/// Nothing else under `locks/` is a lock: not the store's probe objects,
/// and not whatever else someone put there, which `unlock` must not
/// delete (a `locks/` made to point at another directory held its files).
pub fn is_lock_name(path: &str) -> bool {
    let Some(name) = path.strip_prefix(FileKind::Lock.prefix()) else {
        return false;
    };
    name == "exclusive"
        || (name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Every lock in the repository with its path. Unreadable lock objects are
/// reported with `None`. Objects under `locks/` whose names are not lock
/// names are skipped (with a warning: not ours to judge or remove).
pub fn list(repo: &Repository) -> Result<Vec<(String, Option<LockInfo>)>> {
    let mut out = Vec::new();
    for info in repo.list(FileKind::Lock)? {
        if info.path.contains("/probe-") {
            continue;
        }
        if !is_lock_name(&info.path) {
            tracing::warn!(
                "ignoring {}: not a lock name (locks/exclusive or 32 hex digits)",
                info.path
            );
            continue;
        }
        let parsed = match repo.backend().get(&info.path, FileKind::Lock.max_len()) {
            Ok(bytes) => repo
                .open_lock(&info.path, &bytes)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            Err(BackendError::NotFound(_)) => continue,
            // Larger than any lock: unreadable (repo-format.md §11.2), so
            // held by an unknown holder until `unlock` removes it.
            Err(BackendError::TooLarge(_)) => None,
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
                // Left by a process that died (kill -9, a crashed host):
                // removed, or each one would stay until `vault unlock`.
                Some(o) => {
                    tracing::warn!("removing stale lock: {}", o.describe());
                    if let Err(e) = backend.delete(&path)
                        && !e.is_not_found()
                    {
                        return Err(Error::backend(&path, e));
                    }
                }
                // Unreadable lock: whether it is stale is impossible to
                // know; be safe and refuse.
                None => return Err(Error::LockUnreadable { object: path }),
            }
        }
        Ok(None)
    };
    let path = if backend.has_atomic_create() {
        let mut attempts = 0;
        let mut took_over = false;
        loop {
            attempts += 1;
            match backend.put(EXCLUSIVE, encode(&info).into(), PutMode::Create) {
                Ok(()) if took_over => {
                    // Another process may have judged the same lock stale
                    // at the same moment: it then deletes the lock we just
                    // created, believing it the stale one, and creates its
                    // own. Both would hold it. So after a takeover, wait,
                    // and go on only if the lock is still ours; of two
                    // such contenders the one whose lock survives wins.
                    std::thread::sleep(Duration::from_millis(LOCK_SETTLE_MILLIS));
                    match read_lock(backend.as_ref(), repo.key(), EXCLUSIVE) {
                        Some(held) if held.nonce == info.nonce => break EXCLUSIVE.to_owned(),
                        held => {
                            return Err(Error::Locked {
                                holder: held.map_or_else(
                                    || "another process taking over the same stale lock".into(),
                                    |h| h.describe(),
                                ),
                            });
                        }
                    }
                }
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
                            took_over = true;
                        }
                        Some(h) => {
                            return Err(Error::Locked {
                                holder: h.describe(),
                            });
                        }
                        None if attempts < 3 => {}
                        None => {
                            return Err(Error::LockUnreadable {
                                object: EXCLUSIVE.to_owned(),
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
        // Backing off, for any reason (an unreadable lock, a failed
        // listing too), removes our own lock, or it would block the others.
        let backed_off = match live_others(&path) {
            Ok(None) => None,
            Ok(Some(o)) => Some(Error::Locked {
                holder: o.describe(),
            }),
            Err(e) => Some(e),
        };
        if let Some(e) = backed_off {
            let _ = backend.delete(&path);
            return Err(e);
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
            read_lock(backend, &key, path).is_some_and(|i| i.nonce == nonce)
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
        key: repo.key().clone(),
        nonce: info.nonce,
        path,
        stop,
        lost,
        refresher: Some(refresher),
    })
}

/// What [`unlock`] did.
#[derive(Debug, Default, Serialize)]
pub struct UnlockReport {
    /// Locks removed: `path (describe)`.
    pub removed: Vec<String>,
    /// Live locks left in place.
    pub kept: Vec<KeptLock>,
}

/// A live lock [`unlock`] left in place, and why it counts as live.
#[derive(Debug, Serialize)]
pub struct KeptLock {
    /// Its object.
    pub path: String,
    /// Its holder, purpose and times.
    #[serde(flatten)]
    pub info: LockInfo,
    /// Seconds since it was taken.
    pub age_secs: i64,
    /// Why it is not stale.
    pub reason: String,
}

impl KeptLock {
    /// `prune by user@host, pid N, taken 3m12s ago`.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "{} by {}@{}, pid {}, taken {} ago",
            self.info.purpose,
            self.info.username,
            self.info.hostname,
            self.info.pid,
            age(self.age_secs)
        )
    }
}

/// Removes stale locks (or every lock with `all`); reports what was
/// removed and which live locks were left, and why.
pub fn unlock(repo: &Repository, all: bool, hostname: &str) -> Result<UnlockReport> {
    let mut report = UnlockReport::default();
    for (path, info) in list(repo)? {
        let now = now();
        let live = match &info {
            Some(i) if !all => i.why_live(now, hostname),
            _ => None,
        };
        if let (Some(reason), Some(info)) = (live, &info) {
            report.kept.push(KeptLock {
                path,
                age_secs: now - info.created,
                info: info.clone(),
                reason,
            });
            continue;
        }
        repo.backend()
            .delete(&path)
            .map_err(|e| Error::backend(&path, e))?;
        report.removed.push(match info {
            Some(i) => format!("{path} ({})", i.describe()),
            None => format!("{path} (unreadable)"),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::InitOptions;
    use crate::test_support::{Forwarding, Hooks, password};
    use bytes::Bytes;
    use std::sync::Mutex;

    type Hook = Box<dyn FnOnce() + Send>;

    /// Storage that runs `hook` right after the first create of the
    /// exclusive lock that follows a delete of it: the moment another
    /// process racing for the same stale lock would strike.
    struct Racing {
        inner: Arc<dyn Backend>,
        deleted: AtomicBool,
        hook: Mutex<Option<Hook>>,
    }

    impl Hooks for Racing {
        fn inner(&self) -> &dyn Backend {
            self.inner.as_ref()
        }
        fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
            self.inner.put(path, data, mode)?;
            if path == EXCLUSIVE && self.deleted.load(Ordering::SeqCst) {
                let hook = self.hook.lock().unwrap().take();
                if let Some(hook) = hook {
                    hook();
                }
            }
            Ok(())
        }
        fn delete(&self, path: &str) -> Result<(), BackendError> {
            if path == EXCLUSIVE {
                self.deleted.store(true, Ordering::SeqCst);
            }
            self.inner.delete(path)
        }
    }

    fn memory_repo() -> (Arc<dyn Backend>, Arc<Repository>) {
        let (backend, repo) = crate::test_support::memory_repo(InitOptions::default());
        assert!(backend.has_atomic_create());
        (backend, repo)
    }

    fn lock_document(repo: &Repository, hostname: &str, refreshed: i64) -> Bytes {
        let info = LockInfo {
            hostname: hostname.into(),
            username: "u".into(),
            pid: 1,
            purpose: "prune".into(),
            created: refreshed,
            refreshed,
            nonce: rand::random(),
        };
        repo.seal_lock(&serde_json::to_vec(&info).unwrap()).into()
    }

    #[test]
    fn of_two_processes_taking_over_one_stale_lock_only_one_holds_it() {
        let (store, repo_b) = memory_repo();
        let stale = lock_document(&repo_b, "crashed", now() - 10 * LOCK_STALE_SECS);
        store.put(EXCLUSIVE, stale, PutMode::Create).unwrap();

        // B read the same stale lock a moment before A removed it: B now
        // deletes the lock A just created, taking it for the stale one,
        // and creates its own.
        let held_b: Arc<Mutex<Option<Result<Lock>>>> = Arc::new(Mutex::new(None));
        let hook: Hook = {
            let (store, held_b) = (store.clone(), held_b.clone());
            Box::new(move || {
                store.delete(EXCLUSIVE).unwrap();
                *held_b.lock().unwrap() = Some(lock_exclusive(&repo_b, "prune", "host-b", "u"));
            })
        };
        let racing: Arc<dyn Backend> = Arc::new(Forwarding(Racing {
            inner: store.clone(),
            deleted: AtomicBool::new(false),
            hook: Mutex::new(Some(hook)),
        }));
        let repo_a = Repository::open(racing, &password()).unwrap();
        let a = lock_exclusive(&repo_a, "prune", "host-a", "u");

        let b = held_b.lock().unwrap().take().expect("B raced");
        let b = b.expect("B holds the lock it created");
        match a {
            Err(Error::Locked { holder }) => assert!(holder.contains("host-b"), "{holder}"),
            other => panic!("A must back off, B holds the lock: {other:?}"),
        }
        // A left B's lock alone.
        let held = read_lock(store.as_ref(), repo_a.key(), EXCLUSIVE).unwrap();
        assert_eq!(held.hostname, "host-b");
        drop(b);
        assert!(
            store
                .get(EXCLUSIVE, FileKind::Lock.max_len())
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn a_lock_taken_over_is_not_deleted_by_its_former_holder() {
        let (store, repo) = memory_repo();
        let lock = lock_exclusive(&repo, "prune", "host-a", "u").unwrap();
        // Judged stale elsewhere (this holder stalled) and taken over
        // before this holder's refresher noticed.
        let other = lock_document(&repo, "host-b", now());
        store.put(EXCLUSIVE, other, PutMode::Overwrite).unwrap();
        drop(lock);
        let held = read_lock(store.as_ref(), repo.key(), EXCLUSIVE).unwrap();
        assert_eq!(held.hostname, "host-b");
    }

    /// A store without create-only writes (Garage).
    struct NoAtomicCreate(Arc<dyn Backend>);

    impl Hooks for NoAtomicCreate {
        fn inner(&self) -> &dyn Backend {
            self.0.as_ref()
        }
        fn has_atomic_create(&self) -> bool {
            false
        }
    }

    #[test]
    fn stale_locks_of_dead_processes_are_removed_not_left_to_pile_up() {
        let (store, _) = memory_repo();
        let plain: Arc<dyn Backend> = Arc::new(Forwarding(NoAtomicCreate(store.clone())));
        let repo = Repository::open(plain, &password()).unwrap();
        let stale = lock_document(&repo, "crashed", now() - 10 * LOCK_STALE_SECS);
        let left = FileKind::Lock.path(&"ab".repeat(16));
        store.put(&left, stale, PutMode::Overwrite).unwrap();
        let lock = lock_exclusive(&repo, "prune", "host-a", "u").unwrap();
        assert!(
            store
                .get(&left, FileKind::Lock.max_len())
                .unwrap_err()
                .is_not_found()
        );
        drop(lock);
        assert!(store.list("locks/").unwrap().is_empty());
    }
}
