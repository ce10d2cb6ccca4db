//! Maintenance beside a backup that finishes under it. Backups take no
//! lock, so `check` and prune must read a repository that changes while
//! they read it: a snapshot stored between their listing of snapshots and
//! their loading of the index must not look damaged.
//!
//! Fixture: a `Backend` wrapper over `LocalBackend` that runs one more
//! backup, through a second handle on the same directory, at the chosen
//! moment: when the index is listed (before the fix, check and prune
//! loaded the index first and then found this backup's snapshot naming
//! blobs in no index they had loaded).

use crate::support::{
    Forwarding, Hooks, SMALL_CHUNKER, backup_paths, init, open_local, options, write_file,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vault_engine::backend::{Backend, BackendError, LocalBackend, ObjectInfo};
use vault_engine::check::{self, CheckOptions, CheckProgress, Severity};
use vault_engine::prune::{PruneOptions, PrunePlan};

/// Runs `hook` once, right after `index/` is first listed: what it stores
/// is missing from that listing.
struct BackupOnIndexList {
    inner: LocalBackend,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Hooks for BackupOnIndexList {
    fn inner(&self) -> &dyn Backend {
        &self.inner
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let listed = self.inner.list(prefix);
        if prefix.starts_with("index") {
            let hook = self.hook.lock().expect("hook").take();
            if let Some(hook) = hook {
                hook();
            }
        }
        listed
    }
}

/// A repository in `dir` with one backup, and a handle on it that backs up
/// `late` through a second handle when the index is first listed.
fn repository_with_a_late_backup(
    dir: &Path,
) -> (Arc<vault_engine::repository::Repository>, PathBuf) {
    let repo_dir = dir.join("repo");
    let early = dir.join("early");
    write_file(&early.join("a"), &crate::support::random_bytes(1, 50_000));
    let first = init(Arc::new(LocalBackend::new(&repo_dir)), SMALL_CHUNKER, 4096);
    backup_paths(&first, &[&early], &options()).expect("first backup");
    let late = dir.join("late");
    write_file(&late.join("b"), &crate::support::random_bytes(2, 50_000));
    let (hook_repo, hook_src) = (repo_dir.clone(), late.clone());
    let backend = Forwarding(BackupOnIndexList {
        inner: LocalBackend::new(&repo_dir),
        hook: Mutex::new(Some(Box::new(move || {
            let other = open_local(&hook_repo).expect("second handle");
            backup_paths(&other, &[&hook_src], &options()).expect("late backup");
        }))),
    });
    let repo =
        vault_engine::repository::Repository::open(Arc::new(backend), &crate::support::password())
            .expect("open");
    (Arc::new(repo), late)
}

#[test]
fn check_beside_a_finishing_backup_reports_no_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, _) = repository_with_a_late_backup(dir.path());
    let report = check::check(
        &repo,
        &CheckOptions {
            verify: None,
            concurrency: 2,
            cancel: Default::default(),
        },
        &CheckProgress::default(),
    )
    .expect("check runs");
    let errors: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn prune_beside_a_finishing_backup_plans_without_refusing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repo, _) = repository_with_a_late_backup(dir.path());
    let plan = PrunePlan::new(&repo, &PruneOptions::default()).expect("prune plans");
    assert_eq!(plan.snapshots, 1, "the late snapshot was listed after");
}
