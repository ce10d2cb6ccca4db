//! Micro-benchmarks of the per-byte primitives of the backup and restore
//! pipelines, each over the same 64 MiB sample (see `common.rs`), reported
//! as input bytes per second:
//!
//! - chunker: vault's streaming FastCDC, FastCDC's cut search alone, and the
//!   `fastcdc` crate's `StreamCDC` it replaced (identical cut points);
//! - hash: keyed BLAKE3 (`MasterKey::blob_id`), per ~1 MiB chunk;
//! - compress: zstd-3 and lz4 through `compress::encode`/`decode`;
//! - aead: XChaCha20-Poly1305 seal/open of ~1 MiB blobs;
//! - blob: `blob::open` (AEAD + decompress + re-hash: restore's and
//!   check's per-blob work);
//! - pack: `PackWriter` filling and finishing a 16 MiB pack;
//! - ceiling: chunk + hash + zstd-3 + seal of the whole sample on one
//!   thread: twice its throughput is the 2-core primitive ceiling of a
//!   backup (BENCHMARKS.md); with `VAULT_BENCH_TREE=DIR`, also over a
//!   sample of that tree's files, on one thread and on every core at once.
//!
//! Run: `cargo bench -p vault-engine --bench primitives`.

mod common;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vault_engine::blob::{self, BlobKind};
use vault_engine::chunker::ChunkerParams;
use vault_engine::compress::{self, Compression};
use vault_engine::crypto::MasterKey;
use vault_engine::id::BlobId;
use vault_engine::pack::PackWriter;

fn params() -> ChunkerParams {
    let mut p = ChunkerParams::generate();
    p.seed = 0x0123_4567_89ab_cdef;
    p
}

fn key() -> MasterKey {
    MasterKey::from_bytes(&std::array::from_fn(|i| i as u8))
}

fn aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind.to_byte();
    aad[1..].copy_from_slice(&id.0);
    aad
}

/// The sample cut into chunks with the default parameters.
fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
    params().chunks(data).map(Result::unwrap).collect()
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(6))
}

fn chunker(c: &mut Criterion) {
    let data = common::sample(common::SAMPLE_LEN);
    eprintln!("sample: {}", common::sample_name());
    let p = params();
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("vault_stream_64MiB", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for chunk in p.chunks(&data[..]) {
                n += black_box(chunk.unwrap()).len();
            }
            assert_eq!(n, data.len());
        });
    });
    g.bench_function("fastcdc_cut_only_64MiB", |b| {
        b.iter(|| {
            let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
                &data,
                p.min_size,
                p.avg_size,
                p.max_size,
                fastcdc::v2020::Normalization::Level1,
                p.seed,
            );
            let n: usize = cdc.map(|c| black_box(c.length)).sum();
            assert_eq!(n, data.len());
        });
    });
    g.bench_function("fastcdc_streamcdc_64MiB", |b| {
        b.iter(|| {
            let cdc = fastcdc::v2020::StreamCDC::with_level_and_seed(
                &data[..],
                p.min_size,
                p.avg_size,
                p.max_size,
                fastcdc::v2020::Normalization::Level1,
                p.seed,
            );
            let n: usize = cdc.map(|c| black_box(c.unwrap().length)).sum();
            assert_eq!(n, data.len());
        });
    });
    g.finish();
}

fn hash(c: &mut Criterion) {
    let data = common::sample(common::SAMPLE_LEN);
    let chunks = chunks(&data);
    let key = key();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("blake3_keyed_64MiB", |b| {
        b.iter(|| {
            for chunk in &chunks {
                black_box(key.blob_id(chunk));
            }
        });
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let data = common::sample(common::SAMPLE_LEN);
    let chunks = chunks(&data);
    let mut g = c.benchmark_group("compress");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for (name, comp) in [("zstd3", Compression::Zstd(3)), ("lz4", Compression::Lz4)] {
        let encoded: Vec<Vec<u8>> = chunks.iter().map(|c| compress::encode(comp, c)).collect();
        let stored: usize = encoded.iter().map(Vec::len).sum();
        eprintln!(
            "{name}: {} -> {} bytes ({:.1}% of input)",
            data.len(),
            stored,
            stored as f64 * 100.0 / data.len() as f64
        );
        g.bench_function(format!("{name}_encode_64MiB"), |b| {
            b.iter(|| {
                for chunk in &chunks {
                    black_box(compress::encode(comp, chunk));
                }
            });
        });
        g.bench_function(format!("{name}_decode_64MiB"), |b| {
            b.iter(|| {
                for (enc, chunk) in encoded.iter().zip(&chunks) {
                    black_box(compress::decode(enc, chunk.len()).unwrap());
                }
            });
        });
    }
    g.finish();
}

fn aead(c: &mut Criterion) {
    let data = common::sample(common::SAMPLE_LEN);
    let chunks = chunks(&data);
    let key = key();
    let ids: Vec<BlobId> = chunks.iter().map(|c| key.blob_id(c)).collect();
    let mut g = c.benchmark_group("aead");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("xchacha20poly1305_seal_64MiB", |b| {
        b.iter_batched(
            || chunks.clone(),
            |owned| {
                for (chunk, id) in owned.into_iter().zip(&ids) {
                    black_box(key.seal_blob(&aad(BlobKind::Data, id), chunk));
                }
            },
            BatchSize::PerIteration,
        );
    });
    let sealed: Vec<Vec<u8>> = chunks
        .iter()
        .zip(&ids)
        .map(|(c, id)| key.seal_blob(&aad(BlobKind::Data, id), c.clone()))
        .collect();
    g.bench_function("xchacha20poly1305_open_64MiB", |b| {
        b.iter(|| {
            for (s, id) in sealed.iter().zip(&ids) {
                black_box(key.open_blob(&aad(BlobKind::Data, id), s).unwrap());
            }
        });
    });
    g.finish();

    // Restore's and check's per-blob work: authenticate, decompress,
    // re-hash.
    let mut g = c.benchmark_group("blob");
    g.throughput(Throughput::Bytes(data.len() as u64));
    let zsealed: Vec<Vec<u8>> = chunks
        .iter()
        .zip(&ids)
        .map(|(c, id)| {
            key.seal_blob(
                &aad(BlobKind::Data, id),
                compress::encode(Compression::Zstd(3), c),
            )
        })
        .collect();
    g.bench_function("open_zstd3_64MiB", |b| {
        b.iter(|| {
            for ((s, id), c) in zsealed.iter().zip(&ids).zip(&chunks) {
                black_box(blob::open(&key, BlobKind::Data, id, c.len() as u32, s).unwrap());
            }
        });
    });
    g.finish();
}

fn pack(c: &mut Criterion) {
    let data = common::sample(16 * 1024 * 1024);
    let chunks = chunks(&data);
    let key = key();
    let sealed: Vec<(BlobId, u32, Vec<u8>)> = chunks
        .iter()
        .map(|c| {
            let id = key.blob_id(c);
            let s = key.seal_blob(&aad(BlobKind::Data, &id), c.clone());
            (id, c.len() as u32, s)
        })
        .collect();
    let bytes: usize = sealed.iter().map(|s| s.2.len()).sum();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("writer_16MiB", |b| {
        b.iter_batched(
            || sealed.clone(),
            |blobs| {
                let mut w = PackWriter::new();
                for (id, raw_len, s) in blobs {
                    w.add(BlobKind::Data, id, raw_len, s);
                }
                black_box(w.finish(&key))
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn ceiling(c: &mut Criterion) {
    let data = common::sample(common::SAMPLE_LEN);
    let p = params();
    let key = key();
    let mut g = c.benchmark_group("ceiling");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("chunk_hash_zstd3_seal_1thread_64MiB", |b| {
        b.iter(|| {
            for chunk in p.chunks(&data[..]) {
                let chunk = chunk.unwrap();
                let id = key.blob_id(&chunk);
                let enc = compress::encode(Compression::Zstd(3), &chunk);
                black_box(key.seal_blob(&aad(BlobKind::Data, &id), enc));
            }
        });
    });
    // The same work over a sample of a real tree (VAULT_BENCH_TREE, as
    // benches/compare.sh sets it), file by file as a backup reads it: how
    // fast zstd runs depends on the data, so this is the ceiling for that
    // tree.
    if let Some(root) = std::env::var_os("VAULT_BENCH_TREE") {
        let files = common::tree_sample(std::path::Path::new(&root), common::TREE_SAMPLE_LEN);
        let bytes: usize = files.iter().map(Vec::len).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        let one_file = |file: &Vec<u8>| {
            for chunk in p.chunks_sized(&file[..], Some(file.len() as u64)) {
                let chunk = chunk.unwrap();
                let id = key.blob_id(&chunk);
                let enc = compress::encode(Compression::Zstd(3), &chunk);
                black_box(key.seal_blob(&aad(BlobKind::Data, &id), enc));
            }
        };
        g.bench_function("chunk_hash_zstd3_seal_1thread_tree", |b| {
            b.iter(|| files.iter().for_each(one_file));
        });
        // The same files dealt out to one thread per core, all running at
        // once: on a VM, cores share caches, memory bandwidth and perhaps a
        // physical core, so this can fall short of cores x one thread.
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        g.bench_function("chunk_hash_zstd3_seal_allcores_tree", |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for t in 0..cores {
                        let files = &files;
                        s.spawn(move || files.iter().skip(t).step_by(cores).for_each(one_file));
                    }
                });
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = chunker, hash, compression, aead, pack, ceiling
}
criterion_main!(benches);
