//! The whole backup pipeline and `check --verify`, on an in-memory backend
//! so no disk or network is involved: backup of a 256 MiB stream (walker
//! thread chunks and hashes, seal workers compress and encrypt, packer,
//! uploaders), then a data check of the result. Compare with
//! `ceiling/chunk_hash_zstd3_seal_1thread_64MiB` in `primitives` times the
//! number of cores: the ratio is how much of the hardware the pipeline uses.
//!
//! Run: `cargo bench -p vault-engine --bench pipeline`.

mod common;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vault_engine::Repository;
use vault_engine::backend::{Backend, BackendError, ObjectInfo, PutMode};
use vault_engine::backup::{self, BackupOptions, BackupProgress, Source};
use vault_engine::check::{self, CheckOptions, CheckProgress, VerifySubset};
use vault_engine::chunker::ChunkerParams;
use vault_engine::crypto::{KdfParams, Password};
use vault_engine::repository::InitOptions;

const STREAM_LEN: usize = 256 * 1024 * 1024;

/// Objects in a map; nothing touches the disk.
#[derive(Default)]
struct Memory(Mutex<BTreeMap<String, Bytes>>);

impl Backend for Memory {
    fn location(&self) -> String {
        "memory".into()
    }
    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        let mut m = self.0.lock().unwrap();
        if mode == PutMode::Create && m.contains_key(path) {
            return Err(BackendError::AlreadyExists(path.into()));
        }
        m.insert(path.into(), data);
        Ok(())
    }
    fn get(&self, path: &str) -> Result<Bytes, BackendError> {
        self.0
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(path.into()))
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let all = self.get(path)?;
        Ok(all.slice(offset as usize..(offset + len) as usize))
    }
    fn head(&self, path: &str) -> Result<u64, BackendError> {
        Ok(self.get(path)?.len() as u64)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                path: k.clone(),
                size: v.len() as u64,
                modified: None,
            })
            .collect())
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.0.lock().unwrap().remove(path);
        Ok(())
    }
    fn has_atomic_create(&self) -> bool {
        true
    }
}

fn new_repo() -> Arc<Repository> {
    let mut chunker = ChunkerParams::generate();
    chunker.seed = 0x0123_4567_89ab_cdef;
    Arc::new(
        Repository::init(
            Arc::new(Memory::default()),
            &Password::new("bench"),
            InitOptions {
                kdf: KdfParams {
                    memory_kib: 64,
                    iterations: 1,
                    parallelism: 1,
                },
                chunker: Some(chunker),
                ..InitOptions::default()
            },
        )
        .unwrap(),
    )
}

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
            let repo = new_repo();
            backup_stream(&repo, &data);
            repo
        });
    });
    let repo = new_repo();
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
