//! `check` of a repository with many snapshots of the same tree, on the
//! in-memory object store (which counts requests).
//!
//! Guards that trees shared by snapshots are read once: walking each
//! snapshot on its own cost one GET per directory per snapshot, which on
//! S3 made checking a month of daily snapshots thirty times slower than
//! checking one.

use crate::support::{MEDIUM_CHUNKER, backup_paths, init_memory, options, write_file};
use vault_engine::check::{self, CheckOptions, CheckProgress};
use vault_engine::repository::Repository;

fn check_gets(repo: &Repository) -> u64 {
    let before = repo.backend().requests().expect("counted").get;
    let report = check::check(
        repo,
        &CheckOptions {
            verify: None,
            concurrency: 2,
            cancel: Default::default(),
        },
        &CheckProgress::default(),
    )
    .expect("check runs");
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.severity != check::Severity::Error),
        "{:?}",
        report.findings
    );
    repo.backend().requests().expect("counted").get - before
}

#[test]
fn trees_shared_by_snapshots_are_read_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    const DIRS: usize = 30;
    for d in 0..DIRS {
        write_file(
            &dir.path().join(format!("d{d}/file.txt")),
            format!("contents of directory {d}\n").as_bytes(),
        );
    }
    let repo = init_memory(MEDIUM_CHUNKER, 64 * 1024);
    backup_paths(&repo, &[dir.path()], &options()).expect("first backup");
    let one = check_gets(&repo);
    for _ in 0..4 {
        backup_paths(&repo, &[dir.path()], &options()).expect("unchanged backup");
    }
    let five = check_gets(&repo);
    // Four more snapshot files (and at most a few index files); reading the
    // trees again would add four times the 31 directories' tree blobs.
    assert!(
        five - one <= 8,
        "check of five snapshots did {five} GETs, of one {one}"
    );
}
