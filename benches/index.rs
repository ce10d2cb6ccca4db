//! The in-memory index at one million blobs (about 1 TiB of 1 MiB chunks):
//! lookups of present and absent ids, building it from index files, and its
//! memory (printed: resident-set growth while building, per blob), and what
//! a backup's write pipeline adds on top of it when started over it
//! (printed likewise).
//!
//! Run: `cargo bench -p vault-engine --bench index`.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vault_engine::blob::BlobKind;
use vault_engine::id::{BlobId, PackId};
use vault_engine::index::{Index, IndexFile, IndexedPack};
use vault_engine::pack::PackedBlob;

const BLOBS: usize = 1_000_000;
const PER_PACK: usize = 16;

fn id_from(bytes: &[u8]) -> [u8; 32] {
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[..32]);
    id
}

/// One million blobs in 16-blob packs (1 MiB chunks in 16 MiB packs), as
/// the index files of 32 packs a backup writes.
fn files() -> Vec<IndexFile> {
    let random = common::random_bytes(BLOBS * 32 + (BLOBS / PER_PACK + 1) * 32, 11);
    let mut packs = Vec::new();
    for p in 0..BLOBS.div_ceil(PER_PACK) {
        let id = PackId(id_from(&random[(BLOBS + p) * 32..]));
        let blobs = (p * PER_PACK..((p + 1) * PER_PACK).min(BLOBS))
            .enumerate()
            .map(|(i, b)| PackedBlob {
                kind: BlobKind::Data,
                id: BlobId(id_from(&random[b * 32..])),
                offset: (i as u32) * 1_000_000,
                length: 1_000_000,
                raw_len: 1_048_576,
            })
            .collect();
        packs.push(IndexedPack {
            id,
            size: 16_000_000 + 4096,
            blobs,
        });
    }
    packs
        .chunks(32)
        .map(|p| IndexFile {
            packs: p.to_vec(),
            supersedes: Vec::new(),
            marked: Vec::new(),
        })
        .collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn index(c: &mut Criterion) {
    let files = files();
    let present: Vec<BlobId> = files
        .iter()
        .flat_map(|f| f.packs.iter().flat_map(|p| p.blobs.iter().map(|b| b.id)))
        .step_by(7)
        .take(100_000)
        .collect();
    let absent: Vec<BlobId> = common::random_bytes(100_000 * 32, 99)
        .chunks(32)
        .map(|c| BlobId(id_from(c)))
        .collect();
    let before = rss_bytes();
    let index = Index::from_files(files.iter());
    let after = rss_bytes();
    assert_eq!(index.len(), BLOBS);
    eprintln!(
        "index of {BLOBS} blobs: resident set grew by {:.1} MiB ({:.1} bytes per blob)",
        (after.saturating_sub(before)) as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / BLOBS as f64
    );

    // The saver deduplicates against the index: what it holds beside it.
    let index = std::sync::Arc::new(index);
    let before = rss_bytes();
    let saver = vault_engine::backup::Saver::start(
        common::new_repo(),
        index.clone(),
        vault_engine::compress::Compression::None,
        1,
        std::sync::Arc::default(),
    );
    let after = rss_bytes();
    saver.finish().unwrap();
    eprintln!(
        "write pipeline over it: resident set grew by {:.1} MiB",
        (after.saturating_sub(before)) as f64 / 1048576.0,
    );

    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(present.len() as u64));
    g.bench_function("get_present_of_1M", |b| {
        b.iter(|| {
            for id in &present {
                black_box(index.get(id).unwrap());
            }
        });
    });
    g.bench_function("contains_absent_of_1M", |b| {
        b.iter(|| {
            for id in &absent {
                assert!(!index.contains(black_box(id)));
            }
        });
    });
    g.throughput(Throughput::Elements(BLOBS as u64));
    g.sample_size(10);
    g.bench_function("build_1M_from_files", |b| {
        b.iter(|| black_box(Index::from_files(files.iter())).len());
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(5));
    targets = index
}
criterion_main!(benches);
