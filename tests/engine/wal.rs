//! WAL archiving through the engine API, on the in-memory object store
//! (which counts requests the way an S3 store would be billed for them).
//!
//! Guards that a `wal push` costs the same however many segments were
//! archived before: it must not read the repository's index, which gains one
//! file per push until the next prune. Also that a retried push is answered
//! without storing anything, and that fetched segments are byte-exact.

use crate::support::{MEDIUM_CHUNKER, init_memory, random_bytes};
use std::sync::Arc;
use vault_engine::backend::RequestCounts;
use vault_engine::backup::{Saver, SaverStats};
use vault_engine::blob::BlobKind;
use vault_engine::compress::Compression;
use vault_engine::index::IndexBuilder;
use vault_engine::repository::{FileKind, Repository};
use vault_engine::wal::{self, PushOutcome};

fn segment_name(n: u32) -> String {
    format!("0000000100000000{n:08X}")
}

fn requests(repo: &Repository) -> RequestCounts {
    repo.backend().requests().expect("the memory store counts")
}

fn delta(after: RequestCounts, before: RequestCounts) -> RequestCounts {
    RequestCounts {
        put: after.put - before.put,
        get: after.get - before.get,
        head: after.head - before.head,
        list: after.list - before.list,
        delete: after.delete - before.delete,
    }
}

#[test]
fn a_push_costs_the_same_however_many_segments_came_before() {
    let repo = init_memory(MEDIUM_CHUNKER, 64 * 1024);
    let mut costs = Vec::new();
    for n in 1..=12 {
        let before = requests(&repo);
        let outcome = wal::push(
            &repo,
            "db",
            &segment_name(n),
            random_bytes(u64::from(n), 100_000),
            None,
        )
        .expect("push");
        assert_eq!(outcome, PushOutcome::Stored);
        costs.push(delta(requests(&repo), before));
    }
    // Every push writes its own index file, so the twelfth push would read
    // eleven of them if it loaded the index.
    let index_files = repo.index_ids().expect("list index").len();
    assert!(index_files >= 12, "{index_files} index files");
    assert_eq!(
        costs[1].get, costs[11].get,
        "GETs per push grew with the archive: {costs:?}"
    );
    assert_eq!(costs[1].list, costs[11].list, "{costs:?}");
    assert!(costs[11].get <= 2, "{:?}", costs[11]);

    // Every segment comes back byte-exact, read from where its record says
    // its blobs are: no listing, no index file read (PostgreSQL runs
    // restore_command once per segment).
    for n in 1..=12 {
        let before = requests(&repo);
        let mut out = Vec::new();
        assert!(wal::fetch(&repo, "db", &segment_name(n), &mut out).expect("fetch"));
        assert_eq!(out, random_bytes(u64::from(n), 100_000));
        let cost = delta(requests(&repo), before);
        assert_eq!(cost.list, 0, "a fetch listed objects: {cost:?}");
        let record = wal::load(&repo, "db", &segment_name(n))
            .expect("load")
            .expect("archived");
        let packs: std::collections::HashSet<_> = record.locations.iter().map(|l| l.pack).collect();
        assert_eq!(
            cost.get,
            1 + packs.len() as u64,
            "one GET for the record and one per pack: {cost:?}"
        );
    }
}

#[test]
fn a_fetch_falls_back_to_the_index_when_a_blob_has_moved() {
    let repo = init_memory(MEDIUM_CHUNKER, 1 << 20);
    let data = random_bytes(3, 80_000);
    let name = segment_name(3);
    wal::push(&repo, "db", &name, data.clone(), None).expect("push");
    let record = wal::load(&repo, "db", &name)
        .expect("load")
        .expect("archived");
    assert_eq!(record.locations.len(), record.content.len());
    let old_packs: std::collections::HashSet<_> = record.locations.iter().map(|l| l.pack).collect();
    let old_indexes = repo.index_ids().expect("list");

    // What a repacking prune does: the blobs are stored again in a new
    // pack, then the old pack and the index file naming it are deleted.
    let saver = Saver::start(
        repo.clone(),
        std::sync::Arc::new(IndexBuilder::new().finish()),
        Compression::default(),
        1,
        Arc::new(SaverStats::default()),
    );
    for chunk in repo.config().chunker.chunks(&data[..]) {
        saver
            .save(BlobKind::Data, chunk.expect("chunk"))
            .expect("save");
    }
    saver.finish().expect("finish");
    for pack in &old_packs {
        repo.backend()
            .delete(&FileKind::Pack.path(&pack.to_hex()))
            .expect("delete pack");
    }
    for id in old_indexes {
        repo.backend()
            .delete(&FileKind::Index.path(&id.to_hex()))
            .expect("delete index");
    }

    let mut out = Vec::new();
    assert!(wal::fetch(&repo, "db", &name, &mut out).expect("fetch through the index"));
    assert_eq!(out, data);
}

#[test]
fn a_retried_push_stores_nothing_and_a_different_one_is_refused() {
    let repo = init_memory(MEDIUM_CHUNKER, 64 * 1024);
    let data = random_bytes(7, 50_000);
    let name = segment_name(7);
    assert_eq!(
        wal::push(&repo, "db", &name, data.clone(), None).expect("push"),
        PushOutcome::Stored
    );
    let before = requests(&repo);
    assert_eq!(
        wal::push(&repo, "db", &name, data.clone(), None).expect("retry"),
        PushOutcome::AlreadyArchived
    );
    assert_eq!(
        delta(requests(&repo), before).put,
        0,
        "a retried push uploaded data"
    );

    let mut other = data;
    other[1000] ^= 1;
    let err = wal::push(&repo, "db", &name, other, None).expect_err("different content");
    assert!(err.to_string().contains("different content"), "{err}");
    let mut out = Vec::new();
    assert!(wal::fetch(&repo, "db", &name, &mut out).expect("fetch"));
    assert_eq!(out, random_bytes(7, 50_000), "the archived copy changed");
}

/// `copy` carries the WAL archive: every file the target lacks arrives
/// byte-exact under the target's own key, a second copy finds nothing to
/// do, and another source's stream stays behind.
#[test]
fn a_wal_stream_copies_to_another_repository_once() {
    let from = init_memory(MEDIUM_CHUNKER, 64 * 1024);
    let to = init_memory(MEDIUM_CHUNKER, 64 * 1024);
    let segments: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|n| (segment_name(n), random_bytes(u64::from(n), 300_000)))
        .collect();
    for (name, data) in &segments {
        wal::push(&from, "db", name, data.clone(), None).expect("push");
    }
    wal::push(&from, "other", &segment_name(9), b"x".to_vec(), None).expect("push");
    // One file is in the target already.
    wal::push(&to, "db", &segments[0].0, segments[0].1.clone(), None).expect("push");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    assert_eq!(
        wal::copy_stream(&from, &to, "db", &cancel).expect("copy"),
        2
    );
    assert_eq!(
        wal::copy_stream(&from, &to, "db", &cancel).expect("again"),
        0
    );
    for (name, data) in &segments {
        let mut got = Vec::new();
        assert!(wal::fetch(&to, "db", name, &mut got).expect("fetch"));
        assert_eq!(&got, data, "{name}");
    }
    assert!(wal::list(&to, "other").expect("list").is_empty());
}
