//! Shared bench input: a 64 MiB sample that compresses like real files, and
//! a sample of a real tree's files ([`tree_sample`], for the ceiling that
//! `benches/compare.sh` measures on its corpus).
//!
//! With `VAULT_BENCH_SAMPLE=FILE` the sample is the first 64 MiB of that file
//! (repeated if shorter). Without it the sample is generated: 3/4 text-like bytes (words
//! drawn from a small vocabulary, compressing about 4:1 with zstd-3, like
//! HTML and source) and 1/4 pseudo-random bytes (like compressed or machine
//! code sections), in 64 KiB runs.

#![allow(dead_code)]

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vault_engine::Repository;
use vault_engine::backend::{Backend, BackendError, ObjectInfo, PutMode};
use vault_engine::chunker::ChunkerParams;
use vault_engine::crypto::{KdfParams, Password};
use vault_engine::repository::InitOptions;

/// Size of the standard sample.
pub const SAMPLE_LEN: usize = 64 * 1024 * 1024;

/// Deterministic xorshift bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "fn",
        "let",
        "mut",
        "impl",
        "struct",
        "<div class=\"item\">",
        "</div>",
        "pub",
        "self",
        "return",
        "match",
        "Some",
        "None",
        "Result",
        "Vec<u8>",
        "&str",
        "where",
        "trait",
        "{",
        "}",
        "(",
        ")",
        ";",
        "::",
        "->",
        "=>",
        "<a href=\"../index.html\">",
        "</a>",
        "usize",
        "u64",
        "iter",
        "map",
        "collect",
        "unwrap",
        "clone",
        "into",
        "String",
        "docblock",
        "<span>",
        "</span>",
        "\n",
        "\n    ",
        "0x1f",
        "42",
        "data",
        "buffer",
    ];
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let w = WORDS[(s % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        if s & 0x300 != 0 {
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

/// The standard sample, `len` bytes.
pub fn sample(len: usize) -> Vec<u8> {
    if let Ok(path) = std::env::var("VAULT_BENCH_SAMPLE") {
        let mut data = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        assert!(!data.is_empty(), "{path} is empty");
        data.truncate(len);
        let base = data.clone();
        while data.len() < len {
            let take = (len - data.len()).min(base.len());
            data.extend_from_slice(&base[..take]);
        }
        return data;
    }
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        let run = (64 * 1024).min(len - out.len());
        if i % 4 == 3 {
            out.extend(random_bytes(run, i + 1));
        } else {
            out.extend(text_bytes(run, i + 1));
        }
        i += 1;
    }
    out
}

/// Where the sample came from, for bench output.
pub fn sample_name() -> String {
    std::env::var("VAULT_BENCH_SAMPLE")
        .unwrap_or_else(|_| "synthetic (3/4 text, 1/4 random)".into())
}

/// Most bytes [`tree_sample`] reads.
pub const TREE_SAMPLE_LEN: u64 = 256 * 1024 * 1024;

/// Files of the tree at `root`, as a backup reads them: every n-th regular
/// file in path order (n chosen so at most `limit` bytes are read), each
/// kept whole, so small files stay small chunks and the sample compresses
/// like the tree.
pub fn tree_sample(root: &std::path::Path, limit: u64) -> Vec<Vec<u8>> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                walk(&entry.path(), out);
            } else if meta.is_file() {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files.sort();
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let stride = usize::try_from(total.div_ceil(limit.max(1))).map_or(1, |s| s.max(1));
    let mut read = 0u64;
    let mut out = Vec::new();
    for (path, _) in files.iter().step_by(stride) {
        if read >= limit {
            break;
        }
        if let Ok(data) = std::fs::read(path) {
            read += data.len() as u64;
            out.push(data);
        }
    }
    out
}

/// Objects in a map; nothing touches the disk.
#[derive(Default)]
pub struct Memory(Mutex<BTreeMap<String, Bytes>>);

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
    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError> {
        let all = self
            .0
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(path.into()))?;
        if all.len() as u64 > max_len {
            return Err(BackendError::TooLarge(path.into()));
        }
        Ok(all)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        let all = self.get(path, u64::MAX)?;
        Ok(all.slice(offset as usize..(offset + len) as usize))
    }
    fn head(&self, path: &str) -> Result<u64, BackendError> {
        Ok(self.get(path, u64::MAX)?.len() as u64)
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

/// A repository on [`Memory`] with a fast key derivation and a fixed
/// chunker seed.
pub fn new_repo() -> Arc<Repository> {
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
