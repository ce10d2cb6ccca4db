//! Reading trees from an object store, on the in-memory store (which counts
//! requests the way an S3 store bills them).
//!
//! Guards that an unchanged re-backup and a restore read a snapshot's trees
//! a tree pack at a time, not one request per directory: on a local Garage
//! a 1 446-directory tree took 63 s to re-back up and 25 s to plan a
//! restore that way. Fixture: a tree of `dirs` directories of two small
//! files each, backed up twice; the request counts of the second backup and
//! of a restore must not grow with `dirs`.

use crate::support::{
    MEDIUM_CHUNKER, backup_paths, init_memory, options, restore_tree, write_file,
};
use vault_engine::Repository;
use vault_engine::backend::RequestCounts;

fn gets(repo: &Repository) -> u64 {
    let RequestCounts { get, .. } = repo.backend().requests().expect("the memory store counts");
    get
}

/// GETs of an unchanged re-backup and of a full restore of a tree of
/// `dirs` directories.
fn tree_gets(dirs: usize) -> (u64, u64) {
    let src = tempfile::tempdir().expect("tempdir");
    for d in 0..dirs {
        for f in 0..2 {
            let path = src.path().join(format!("d{}/e{d}/f{f}", d % 7));
            write_file(&path, format!("dir {d} file {f}\n").as_bytes());
        }
    }
    let repo = init_memory(MEDIUM_CHUNKER, 256 * 1024);
    backup_paths(&repo, &[src.path()], &options()).expect("first backup");
    let before = gets(&repo);
    let report = backup_paths(&repo, &[src.path()], &options()).expect("second backup");
    assert_eq!(report.snapshot.summary.files_unmodified, 2 * dirs as u64);
    let backup = gets(&repo) - before;
    let target = tempfile::tempdir().expect("tempdir");
    let before = gets(&repo);
    restore_tree(&repo, &report.snapshot.tree, target.path()).expect("restore");
    (backup, gets(&repo) - before)
}

#[test]
fn rebackup_and_restore_read_trees_a_pack_at_a_time() {
    let (backup_small, restore_small) = tree_gets(10);
    let (backup_large, restore_large) = tree_gets(120);
    // 120 directories in one tree pack: a request per directory would add
    // over a hundred GETs.
    assert!(
        backup_large <= backup_small + 2,
        "re-backup: {backup_small} GETs for 10 dirs, {backup_large} for 120"
    );
    assert!(
        restore_large <= restore_small + 4,
        "restore: {restore_small} GETs for 10 dirs, {restore_large} for 120"
    );
}
