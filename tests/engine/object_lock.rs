//! Prune in a repository with S3 Object Lock (repo-format.md §11.8):
//! packs and index files under retention are kept (and reported), the
//! repository stays consistent, and they go once the retention ends.
//!
//! Fixture: `WormMemory`, the in-memory store behind a wrapper that does
//! what a locked S3 bucket does to vault: it accepts the retention, and
//! refuses to delete an object before `upload time + days` on its clock
//! (which the test moves forward). Every refused delete is recorded, so a
//! test can assert that prune never even tried one. The real store is
//! exercised by tests/e2e/object_lock.rs against moto.

use crate::support::{
    FAST_KDF, Forwarding, Hooks, SMALL_CHUNKER, backup_paths, options, password, random_bytes,
    restore_tree, write_file,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use vault_engine::backend::{
    Backend, BackendError, LocalBackend, ObjectBackend, ObjectLock, RetentionMode,
};
use vault_engine::check::{CheckOptions, CheckProgress};
use vault_engine::prune::{MaxUnused, PruneOptions, PrunePlan};
use vault_engine::repository::{FileKind, InitOptions, Repository};
use vault_engine::{ErrorKind, check};

const DAY_SECS: i64 = 24 * 3600;

struct WormMemory {
    inner: ObjectBackend,
    lock: Mutex<Option<ObjectLock>>,
    /// Seconds added to the real clock.
    offset_secs: AtomicI64,
    refused: Mutex<Vec<String>>,
}

impl WormMemory {
    /// An empty store, as a backend.
    fn new() -> Forwarding<Self> {
        Forwarding(Self {
            inner: ObjectBackend::memory(),
            lock: Mutex::new(None),
            offset_secs: AtomicI64::new(0),
            refused: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(
                self.offset_secs.load(Ordering::SeqCst),
            ))
            .unwrap()
    }

    fn is_locked(&self, path: &str) -> bool {
        let Some(lock) = *self.lock.lock().unwrap() else {
            return false;
        };
        if path.starts_with("locks/") {
            return false;
        }
        let Ok(found) = self.inner.list(path) else {
            return false;
        };
        found
            .iter()
            .filter(|o| o.path == path)
            .any(|o| lock.retain_until(o.modified.unwrap()) > self.now())
    }
}

impl Hooks for WormMemory {
    fn inner(&self) -> &dyn Backend {
        &self.inner
    }
    fn location(&self) -> String {
        "worm-memory:".into()
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        if self.is_locked(path) {
            self.refused.lock().unwrap().push(path.to_owned());
            return Err(BackendError::Other(format!(
                "{path}: AccessDenied: object is WORM protected"
            )));
        }
        self.inner.delete(path)
    }
    fn set_object_lock(&self, lock: ObjectLock, _verify: bool) -> Result<(), BackendError> {
        *self.lock.lock().unwrap() = Some(lock);
        Ok(())
    }
}

fn init_locked(backend: Arc<dyn Backend>, days: u32) -> vault_engine::Result<Arc<Repository>> {
    let options = InitOptions {
        kdf: FAST_KDF,
        chunker: Some(SMALL_CHUNKER),
        pack_size: Some(4096),
        hostname: "test-host".into(),
        username: "tester".into(),
        object_lock: Some(ObjectLock {
            mode: RetentionMode::Compliance,
            days,
        }),
        ..InitOptions::default()
    };
    Repository::init(backend, &password(), options).map(Arc::new)
}

fn prune_options(now: jiff::Timestamp) -> PruneOptions {
    PruneOptions {
        max_unused: MaxUnused::Percent(0.0),
        instant_delete: true,
        now: now.as_second(),
        ..PruneOptions::default()
    }
}

fn assert_checks_clean(repo: &Repository) {
    let report = check::check(
        repo,
        &CheckOptions {
            verify: Some(check::VerifySubset::All),
            concurrency: 2,
            cancel: Default::default(),
        },
        &CheckProgress::default(),
    )
    .unwrap();
    assert!(!report.has_errors(), "{:#?}", report.findings);
}

fn stored(repo: &Repository, kind: FileKind) -> usize {
    repo.list(kind).unwrap().len()
}

#[test]
fn prune_keeps_locked_packs_and_deletes_them_once_the_retention_ends() {
    let dir = tempfile::tempdir().unwrap();
    let worm = Arc::new(WormMemory::new());
    let repo = init_locked(worm.clone(), 1).unwrap();
    assert_eq!(
        repo.config().object_lock.map(|l| l.days),
        Some(1),
        "the retention is recorded in the config"
    );

    let src = dir.path().join("src");
    write_file(&src.join("old"), &random_bytes(1, 60_000));
    let first = backup_paths(&repo, &[&src], &options()).unwrap();
    std::fs::remove_file(src.join("old")).unwrap();
    write_file(&src.join("new"), &random_bytes(2, 60_000));
    let second = backup_paths(&repo, &[&src], &options()).unwrap();
    // The first snapshot goes (its own retention bypassed, as an admin
    // with a governance bypass would); its packs become unused.
    worm.inner
        .delete(&FileKind::Snapshot.path(&first.snapshot_id.to_hex()))
        .unwrap();
    let packs_before = stored(&repo, FileKind::Pack);
    let indexes_before = stored(&repo, FileKind::Index);

    // Within the retention: nothing unused can go, not even with instant
    // delete and 0% unused allowed.
    let plan = PrunePlan::new(&repo, &prune_options(worm.now())).unwrap();
    assert!(plan.delete.is_empty(), "{plan:?}");
    assert!(plan.repack.is_empty(), "{plan:?}");
    assert!(
        !plan.locked.is_empty(),
        "unused packs are reported as locked"
    );
    assert!(plan.locked_bytes > 0);
    let until = plan.locked_until.expect("a retention end is reported");
    let expected = worm.now().as_second() + DAY_SECS;
    assert!(
        (until.as_second() - expected).abs() <= 3600 + 60,
        "locked until {until}, expected about now + 1 day (+ slack)"
    );
    assert_eq!(plan.locked_index_files as usize, indexes_before);
    let report = plan
        .execute(&repo, &prune_options(worm.now()), None)
        .unwrap();
    assert_eq!(report.packs_deleted, 0);
    assert!(
        worm.refused.lock().unwrap().is_empty(),
        "prune tried to delete a locked object"
    );
    assert_eq!(stored(&repo, FileKind::Pack), packs_before);
    // The superseded index files stay (locked), the new one supersedes
    // them, and the repository is whole.
    assert_eq!(stored(&repo, FileKind::Index), indexes_before + 1);
    assert_checks_clean(&repo);
    let target = dir.path().join("restore-1");
    restore_tree(&repo, &second.snapshot.tree, &target).unwrap();

    // Two days later every retention has ended: prune reclaims the space.
    worm.offset_secs.store(2 * DAY_SECS, Ordering::SeqCst);
    let plan = PrunePlan::new(&repo, &prune_options(worm.now())).unwrap();
    assert!(plan.locked.is_empty(), "{plan:?}");
    assert_eq!(plan.locked_index_files, 0);
    assert!(!plan.delete.is_empty(), "{plan:?}");
    let report = plan
        .execute(&repo, &prune_options(worm.now()), None)
        .unwrap();
    assert!(report.packs_deleted > 0);
    assert!(
        worm.refused.lock().unwrap().is_empty(),
        "prune tried to delete a locked object"
    );
    assert!(stored(&repo, FileKind::Pack) < packs_before);
    // Every superseded file is gone: what is left is the new index, plus
    // the one the repack's saver wrote for its new packs.
    let saver_files = usize::from(report.packs_repacked > 0);
    assert_eq!(stored(&repo, FileKind::Index), 1 + saver_files);
    assert_checks_clean(&repo);
    let target = dir.path().join("restore-2");
    restore_tree(&repo, &second.snapshot.tree, &target).unwrap();
}

#[test]
fn init_with_object_lock_refuses_stores_that_cannot_lock() {
    let dir = tempfile::tempdir().unwrap();
    for backend in [
        Arc::new(LocalBackend::new(dir.path().join("repo"))) as Arc<dyn Backend>,
        Arc::new(ObjectBackend::memory()),
    ] {
        let err = init_locked(backend.clone(), 7).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("Object Lock"), "{err}");
        // Refused before anything was written.
        assert!(backend.list("").unwrap().is_empty());
    }
}

#[test]
fn wal_trim_keeps_segments_still_under_retention() {
    let worm = Arc::new(WormMemory::new());
    let repo = init_locked(worm.clone(), 1).unwrap();
    let name = |n: u32| format!("0000000100000000{n:08X}");
    for n in 1..=3 {
        vault_engine::wal::push(
            &repo,
            "db",
            &name(n),
            random_bytes(u64::from(n), 20_000),
            None,
        )
        .unwrap();
    }
    // The oldest kept base backup starts in segment 3: 1 and 2 may go, but
    // not while their retention lasts.
    let trimmed = vault_engine::wal::trim(&repo, "db", &name(3), worm.now()).unwrap();
    assert!(trimmed.removed.is_empty(), "{trimmed:?}");
    assert_eq!(trimmed.locked, [name(1), name(2)]);
    assert!(
        worm.refused.lock().unwrap().is_empty(),
        "trim tried to delete a locked segment"
    );
    assert_eq!(vault_engine::wal::list(&repo, "db").unwrap().len(), 3);

    worm.offset_secs.store(2 * DAY_SECS, Ordering::SeqCst);
    let trimmed = vault_engine::wal::trim(&repo, "db", &name(3), worm.now()).unwrap();
    assert_eq!(trimmed.removed, [name(1), name(2)]);
    assert!(trimmed.locked.is_empty());
    let left: Vec<String> = vault_engine::wal::list(&repo, "db")
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(left, [name(3)]);
}

#[test]
fn retention_is_not_extended_on_storage_that_cannot_lock() {
    // WormMemory takes the lock setting but has no way to extend one, like
    // a local copy of a locked repository: the extension says so by
    // returning nothing, instead of failing the prune that runs it.
    let worm = Arc::new(WormMemory::new());
    let repo = init_locked(worm.clone(), 1).unwrap();
    let done = vault_engine::object_lock::extend_retention(&repo, worm.now()).unwrap();
    assert!(done.is_none());
    // An unlocked repository has nothing to extend either.
    let plain = crate::support::init_memory(SMALL_CHUNKER, 4096);
    assert!(
        vault_engine::object_lock::extend_retention(&plain, jiff::Timestamp::now())
            .unwrap()
            .is_none()
    );
}
