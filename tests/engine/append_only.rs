//! Backups need no delete permission and take no lock: a backup through a
//! backend that refuses every delete (a put-only credential) succeeds and
//! restores; maintenance through it fails clearly instead.
//!
//! Fixture: a `Backend` wrapper over `LocalBackend` whose `delete` always
//! errors, as an S3 key without `s3:DeleteObject` would.

use crate::support::{
    Forwarding, Hooks, SMALL_CHUNKER, backup_paths, init, options, restore_tree, write_file,
};
use std::path::Path;
use std::sync::Arc;
use vault_engine::backend::{Backend, BackendError, LocalBackend};

struct NoDelete(LocalBackend);

impl Hooks for NoDelete {
    fn inner(&self) -> &dyn Backend {
        &self.0
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        Err(BackendError::Other(format!(
            "{path}: access denied (no delete permission)"
        )))
    }
}

#[test]
fn backup_with_a_put_only_credential_succeeds_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = init(
        Arc::new(Forwarding(NoDelete(LocalBackend::new(&repo_dir)))),
        SMALL_CHUNKER,
        4096,
    );
    let src = dir.path().join("src");
    write_file(&src.join("a"), &crate::support::random_bytes(1, 100_000));
    write_file(&src.join("b/c"), b"nested");
    let first = backup_paths(&repo, &[&src], &options()).expect("backup without delete rights");
    write_file(&src.join("a"), &crate::support::random_bytes(2, 100_000));
    backup_paths(&repo, &[&src], &options()).expect("second backup without delete rights");
    let target = dir.path().join("restore");
    restore_tree(&repo, &first.snapshot.tree, &target).unwrap();
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(restored.join("a")).unwrap(),
        crate::support::random_bytes(1, 100_000)
    );
    assert_eq!(std::fs::read(restored.join("b/c")).unwrap(), b"nested");
    // No lock object was left behind (backups take none).
    assert!(
        !Path::new(&repo_dir).join("locks").exists()
            || std::fs::read_dir(repo_dir.join("locks"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn maintenance_without_delete_rights_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(
        Arc::new(Forwarding(NoDelete(LocalBackend::new(
            dir.path().join("repo"),
        )))),
        SMALL_CHUNKER,
        4096,
    );
    let src = dir.path().join("src");
    write_file(&src.join("a"), b"x");
    let report = backup_paths(&repo, &[&src], &options()).unwrap();
    let err = repo.delete_snapshot(&report.snapshot_id).unwrap_err();
    assert!(err.to_string().contains("no delete permission"), "{err}");
}
