//! WAL archiving through the engine API, on the in-memory object store
//! (which counts requests the way an S3 store would be billed for them).
//!
//! Guards that a `wal push` costs the same however many segments were
//! archived before: it must not read the repository's index, which gains one
//! file per push until the next prune. Also that a retried push is answered
//! without storing anything, and that fetched segments are byte-exact.

use crate::support::{MEDIUM_CHUNKER, init_memory, random_bytes};
use vault_engine::backend::RequestCounts;
use vault_engine::repository::Repository;
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

    // Every segment comes back byte-exact.
    for n in 1..=12 {
        let mut out = Vec::new();
        assert!(wal::fetch(&repo, "db", &segment_name(n), &mut out).expect("fetch"));
        assert_eq!(out, random_bytes(u64::from(n), 100_000));
    }
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
