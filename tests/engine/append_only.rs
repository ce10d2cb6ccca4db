//! Backups need no delete permission and take no lock: a backup through a
//! backend that refuses every delete (a put-only credential) succeeds and
//! restores; maintenance through it fails clearly instead.
//!
//! Fixture: a `Backend` wrapper over `LocalBackend` whose `delete` always
//! errors, as an S3 key without `s3:DeleteObject` would.

use crate::support::{SMALL_CHUNKER, backup_paths, init, options, restore_tree, write_file};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use vault_engine::backend::{Backend, BackendError, LocalBackend, ObjectInfo, PutMode};

struct NoDelete(LocalBackend);

impl Backend for NoDelete {
    fn location(&self) -> String {
        self.0.location()
    }
    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        self.0.put(path, data, mode)
    }
    fn get(&self, path: &str) -> Result<Bytes, BackendError> {
        self.0.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        self.0.get_range(path, offset, len)
    }
    fn head(&self, path: &str) -> Result<u64, BackendError> {
        self.0.head(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.0.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        Err(BackendError::Other(format!(
            "{path}: access denied (no delete permission)"
        )))
    }
    fn has_atomic_create(&self) -> bool {
        self.0.has_atomic_create()
    }
}

#[test]
fn backup_with_a_put_only_credential_succeeds_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = init(
        Arc::new(NoDelete(LocalBackend::new(&repo_dir))),
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
        Arc::new(NoDelete(LocalBackend::new(dir.path().join("repo")))),
        SMALL_CHUNKER,
        4096,
    );
    let src = dir.path().join("src");
    write_file(&src.join("a"), b"x");
    let report = backup_paths(&repo, &[&src], &options()).unwrap();
    let err = repo.delete_snapshot(&report.snapshot_id).unwrap_err();
    assert!(err.to_string().contains("no delete permission"), "{err}");
}
