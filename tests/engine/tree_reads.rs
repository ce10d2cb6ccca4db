//! Reading trees from an object store, on the in-memory store (which counts
//! requests the way an S3 store bills them).
//!
//! Guards that an unchanged re-backup, a restore, check, prune's walk,
//! stats, diff and copy read a snapshot's trees a tree pack at a time, not
//! one request per directory: on a local Garage a 1 446-directory tree took
//! 63 s to re-back up and 25 s to plan a restore that way. Fixture: a tree
//! of `dirs` directories of two small files each, backed up three times (one
//! file changed the third time); the GETs of each operation must not grow
//! with `dirs`.

use crate::support::{
    MEDIUM_CHUNKER, backup_paths, init_memory, options, restore_tree, write_file,
};
use vault_engine::Repository;
use vault_engine::backend::RequestCounts;
use vault_engine::check::{self, CheckOptions, CheckProgress};

fn gets(repo: &Repository) -> u64 {
    let RequestCounts { get, .. } = repo.backend().requests().expect("the memory store counts");
    get
}

/// GETs of each operation over a tree of `dirs` directories: an unchanged
/// re-backup, a full restore, a structural check, prune's walk, stats, a
/// diff, a copy to another repository.
fn tree_gets(dirs: usize) -> [u64; 7] {
    let src = tempfile::tempdir().expect("tempdir");
    for d in 0..dirs {
        for f in 0..2 {
            let path = src.path().join(format!("d{}/e{d}/f{f}", d % 7));
            write_file(&path, format!("dir {d} file {f}\n").as_bytes());
        }
    }
    let repo = init_memory(MEDIUM_CHUNKER, 256 * 1024);
    backup_paths(&repo, &[src.path()], &options()).expect("first backup");
    let counted = |op: &dyn Fn()| {
        let before = gets(&repo);
        op();
        gets(&repo) - before
    };
    let backup = counted(&|| {
        let report = backup_paths(&repo, &[src.path()], &options()).expect("second backup");
        assert_eq!(report.snapshot.summary.files_unmodified, 2 * dirs as u64);
    });
    let restore = counted(&|| {
        let target = tempfile::tempdir().expect("tempdir");
        let snapshots = repo.snapshots().expect("snapshots");
        let (_, snap) = snapshots.last().expect("a snapshot");
        restore_tree(&repo, &snap.tree, target.path()).expect("restore");
    });
    let check = counted(&|| {
        let options = CheckOptions {
            verify: None,
            concurrency: 2,
            cancel: Default::default(),
        };
        let report = check::check(&repo, &options, &CheckProgress::default()).expect("check");
        assert!(!report.has_errors(), "{:?}", report.findings);
    });
    let prune = counted(&|| {
        let index = repo.load_index().expect("index");
        let (used, _) = vault_engine::prune::used_blobs(
            &repo,
            &index,
            vault_engine::prune::References::read(&repo).expect("references"),
        )
        .expect("used blobs");
        assert!(used.len() > dirs);
    });
    let stats = counted(&|| {
        let index = repo.load_index().expect("index");
        let snapshots = repo.snapshots().expect("snapshots");
        vault_engine::stats::stats(&repo, &index, &snapshots).expect("stats");
    });
    // One file changed: the diff compares one path, but sizes what each
    // snapshot reaches by walking both.
    write_file(&src.path().join("d0/e0/f0"), b"changed\n");
    backup_paths(&repo, &[src.path()], &options()).expect("third backup");
    let diff = counted(&|| {
        let index = repo.load_index().expect("index");
        let snapshots = repo.snapshots().expect("snapshots");
        let (first, last) = (&snapshots[0].1, &snapshots[snapshots.len() - 1].1);
        let mut changes = 0usize;
        let options = vault_engine::diff::DiffOptions::default();
        vault_engine::diff::diff(&repo, &index, &first.tree, &last.tree, options, &mut |_| {
            changes += 1;
            Ok(())
        })
        .expect("diff");
        assert_eq!(changes, 1);
    });
    // Copying reads the source's trees (the GETs counted are the source's).
    let target = init_memory(MEDIUM_CHUNKER, 256 * 1024);
    let copy = counted(&|| {
        let snapshots = repo.snapshots().expect("snapshots");
        let options = vault_engine::copy::CopyOptions::default();
        let progress = vault_engine::copy::CopyProgress::default();
        vault_engine::copy::copy(&repo, &target, &snapshots, &options, &progress).expect("copy");
    });
    assert_eq!(target.snapshots().expect("copied").len(), 3);
    [backup, restore, check, prune, stats, diff, copy]
}

#[test]
fn walks_read_trees_a_pack_at_a_time() {
    let small = tree_gets(10);
    let large = tree_gets(120);
    // 120 directories in one tree pack: a request per directory would add
    // over a hundred GETs to each.
    let ops = [
        "re-backup",
        "restore",
        "check",
        "prune walk",
        "stats",
        "diff",
        "copy",
    ];
    for ((op, s), l) in ops.iter().zip(small).zip(large) {
        assert!(l <= s + 4, "{op}: {s} GETs for 10 dirs, {l} for 120");
    }
}
