//! The whole backup pipeline and `check --verify`, on an in-memory backend
//! so no disk or network is involved: backup of a 256 MiB stream (walker
//! thread chunks and hashes, seal workers compress and encrypt, packer,
//! uploaders), then a data check of the result. Compare with
//! `ceiling/chunk_hash_zstd3_seal_1thread_64MiB` in `primitives` times the
//! number of cores: the ratio is how much of the hardware the pipeline uses.
//!
//! Run: `cargo bench -p vault-engine --bench pipeline`.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use vault_engine::Repository;
use vault_engine::backup::{self, BackupOptions, BackupProgress, Source};
use vault_engine::check::{self, CheckOptions, CheckProgress, VerifySubset};

const STREAM_LEN: usize = 256 * 1024 * 1024;

fn backup_stream(repo: &Arc<Repository>, data: &Arc<Vec<u8>>) {
    struct Shared(Arc<Vec<u8>>, usize);
    impl std::io::Read for Shared {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }
    let report = backup::backup(
        repo,
        Source::Stream {
            filename: "stream".into(),
            reader: Box::new(Shared(data.clone(), 0)),
        },
        &BackupOptions::default(),
        &BackupProgress::default(),
    )
    .unwrap();
    assert_eq!(
        report.snapshot.summary.total_bytes_processed,
        data.len() as u64
    );
}

fn pipeline(c: &mut Criterion) {
    let data = Arc::new(common::sample(STREAM_LEN));
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("backup_stream_256MiB_memory_backend", |b| {
        b.iter_with_large_drop(|| {
            let repo = common::new_repo();
            backup_stream(&repo, &data);
            repo
        });
    });
    let repo = common::new_repo();
    backup_stream(&repo, &data);
    g.bench_function("check_verify_256MiB_memory_backend", |b| {
        b.iter(|| {
            let report = check::check(
                &repo,
                &CheckOptions {
                    verify: Some(VerifySubset::All),
                    concurrency: 4,
                    cancel: Default::default(),
                },
                &CheckProgress::default(),
            )
            .unwrap();
            assert!(!report.has_errors());
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(10));
    targets = pipeline
}
criterion_main!(benches);
