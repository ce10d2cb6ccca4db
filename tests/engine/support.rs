//! Shared fixtures for the engine tests: repositories with a fast KDF and
//! small chunks, deterministic pseudo-random data, backup/restore shortcuts
//! and helpers that read a restored tree back for comparison. Nothing here
//! touches the real home directory or the network: every repository lives in
//! a temporary directory or in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault_engine::backend::{self, Backend, LocalBackend, ObjectBackend};
use vault_engine::backup::{self, BackupOptions, BackupProgress, BackupReport, Source};
use vault_engine::chunker::ChunkerParams;
use vault_engine::crypto::{KdfParams, Password};
use vault_engine::id::BlobId;
use vault_engine::repository::{InitOptions, Repository};
use vault_engine::restore::{self, RestoreOptions, RestoreProgress, RestoreReport};

mod forwarding;
pub use forwarding::{Forwarding, Hooks};

/// argon2id at its cheapest: key files still work, tests stay fast.
pub const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// Password of every test repository (except the golden vectors).
pub const PASSWORD: &str = "engine-test-password";

/// Smallest chunks FastCDC accepts: many blobs from little data.
pub const SMALL_CHUNKER: ChunkerParams = ChunkerParams {
    min_size: 64,
    avg_size: 256,
    max_size: 1024,
    seed: 0x0123_4567_89ab_cdef,
};

/// Chunks of a few KiB, for tests that back up hundreds of KiB.
pub const MEDIUM_CHUNKER: ChunkerParams = ChunkerParams {
    min_size: 1024,
    avg_size: 4096,
    max_size: 16384,
    seed: 0x5eed_5eed_5eed_5eed,
};

pub fn password() -> Password {
    Password::new(PASSWORD)
}

/// Initialises a repository on `backend`.
pub fn init(backend: Arc<dyn Backend>, chunker: ChunkerParams, pack_size: u32) -> Arc<Repository> {
    let options = InitOptions {
        kdf: FAST_KDF,
        chunker: Some(chunker),
        pack_size: Some(pack_size),
        master_key: None,
        hostname: "test-host".into(),
        username: "tester".into(),
        object_lock: None,
    };
    Arc::new(Repository::init(backend, &password(), options).expect("init repository"))
}

/// A local repository in `dir`.
pub fn init_local(dir: &Path, chunker: ChunkerParams, pack_size: u32) -> Arc<Repository> {
    init(Arc::new(LocalBackend::new(dir)), chunker, pack_size)
}

/// An in-memory repository.
pub fn init_memory(chunker: ChunkerParams, pack_size: u32) -> Arc<Repository> {
    init(Arc::new(ObjectBackend::memory()), chunker, pack_size)
}

/// Opens the local repository in `dir` with the test password.
pub fn open_local(dir: &Path) -> vault_engine::Result<Arc<Repository>> {
    Repository::open(Arc::new(LocalBackend::new(dir)), &password()).map(Arc::new)
}

/// Backup options with a fixed host and user.
pub fn options() -> BackupOptions {
    BackupOptions {
        hostname: "test-host".into(),
        username: "tester".into(),
        ..BackupOptions::default()
    }
}

pub fn backup_paths(
    repo: &Arc<Repository>,
    paths: &[&Path],
    options: &BackupOptions,
) -> vault_engine::Result<BackupReport> {
    let source = Source::Paths(paths.iter().map(|p| p.to_path_buf()).collect());
    backup::backup(repo, source, options, &BackupProgress::default())
}

pub fn backup_stream(
    repo: &Arc<Repository>,
    filename: &str,
    reader: Box<dyn std::io::Read + Send>,
    options: &BackupOptions,
) -> vault_engine::Result<BackupReport> {
    let source = Source::Stream {
        filename: filename.into(),
        reader,
    };
    backup::backup(repo, source, options, &BackupProgress::default())
}

/// Restores the whole tree `root` into `target` with a freshly loaded index.
pub fn restore_tree(
    repo: &Repository,
    root: &BlobId,
    target: &Path,
) -> vault_engine::Result<RestoreReport> {
    let index = repo.load_index()?;
    let options = RestoreOptions {
        target: target.to_path_buf(),
        concurrency: 2,
        ..RestoreOptions::default()
    };
    restore::restore(repo, &index, root, &options, &RestoreProgress::default())
}

/// Where snapshot path `snapshot_path` (absolute) lands under `target`.
pub fn restored_path(target: &Path, snapshot_path: &str) -> PathBuf {
    target.join(snapshot_path.trim_start_matches('/'))
}

/// SplitMix64: tiny, deterministic, good enough to make incompressible
/// test data without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    Rng(seed).bytes(len)
}

/// Highly compressible text of `len` bytes.
pub fn text_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u32;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i:05}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

pub fn write_file(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent directory");
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Every regular file below `root`, by path relative to `root`.
pub fn read_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(root).expect("below root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// Unkeyed BLAKE3, hex.
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// The distinct data blob ids `data` cuts into under `repo`'s chunker and key.
pub fn chunk_ids(repo: &Repository, data: &[u8]) -> std::collections::HashSet<BlobId> {
    repo.config()
        .chunker
        .chunks(data)
        .map(|c| repo.key().blob_id(&c.expect("in-memory read")))
        .collect()
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy target");
    for entry in std::fs::read_dir(from).expect("list source") {
        let entry = entry.expect("entry");
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}
