//! `check` of a repository with many snapshots of the same tree, on the
//! in-memory object store (which counts requests).
//!
//! Guards that trees shared by snapshots are read once: walking each
//! snapshot on its own cost one GET per directory per snapshot, which on
//! S3 made checking a month of daily snapshots thirty times slower than
//! checking one.

use crate::support::{MEDIUM_CHUNKER, backup_paths, init_memory, options, write_file};
use vault_engine::check::{self, CheckOptions, CheckProgress};
use vault_engine::id::SnapshotId;
use vault_engine::repository::Repository;
use vault_engine::snapshot::Snapshot;

/// A structural check of `repo` (no data read).
fn run_check(repo: &Repository) -> check::CheckReport {
    check::check(
        repo,
        &CheckOptions {
            verify: None,
            concurrency: 2,
            cancel: Default::default(),
        },
        &CheckProgress::default(),
    )
    .expect("check runs")
}

fn check_gets(repo: &Repository) -> u64 {
    let before = repo.backend().requests().expect("counted").get;
    let report = run_check(repo);
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

/// `tag` and `rewrite --forget` write the changed snapshot, then delete the
/// old one; killed between the two they leave both, and `forget` would
/// count one point in time twice. check names such twins; a snapshot that
/// `rewrite` made with another tree and kept beside its original is not
/// one.
#[test]
fn snapshots_left_twice_by_an_interrupted_tag_are_reported_as_twins() {
    use vault_engine::snapshot::TagChange;
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(&dir.path().join("f"), b"content");
    let repo = init_memory(MEDIUM_CHUNKER, 64 * 1024);
    backup_paths(&repo, &[dir.path()], &options()).expect("backup");
    let twins = |repo: &Repository| {
        run_check(repo)
            .findings
            .into_iter()
            .filter(|f| f.kind == "snapshot_twin")
            .collect::<Vec<_>>()
    };
    assert!(twins(&repo).is_empty());
    let (id, snap) = repo
        .snapshots()
        .expect("list")
        .into_iter()
        .next()
        .expect("one");
    // A rewrite kept beside its original: another tree, not a twin.
    write_file(&dir.path().join("g"), b"more");
    backup_paths(&repo, &[dir.path()], &options()).expect("second backup");
    let (_, second) = repo.snapshots().expect("list").pop().expect("two");
    let mut rewritten = snap.clone();
    rewritten.tree = second.tree;
    rewritten.original = Some(id);
    repo.save_snapshot(&rewritten).expect("save");
    assert!(twins(&repo).is_empty());
    // `tag --add kept`, killed before it deleted the old snapshot.
    let tag = |name: &str, id: &SnapshotId, snap: &Snapshot| {
        let change = TagChange {
            add: vec![name.into()],
            ..TagChange::default()
        };
        let tagged = change.rewrite(id, snap).expect("changes");
        (repo.save_snapshot(&tagged).expect("save"), tagged)
    };
    let (new, tagged) = tag("kept", &id, &snap);
    let found = twins(&repo);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, check::Severity::Warning);
    let message = &found[0].message;
    assert!(
        message.contains(&format!("{} (no tags)", id.short()))
            && message.contains(&format!("{} (tags: kept)", new.short())),
        "{message}"
    );
    // The new one tagged again and killed likewise: three of one snapshot,
    // one finding.
    let (newer, _) = tag("again", &new, &tagged);
    let found = twins(&repo);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.contains(&newer.short()), "{found:?}");
}
