//! Interrupted and failing backups: guards that a backup whose storage fails
//! or that is cancelled returns an error, writes no snapshot, leaves the
//! repository readable (earlier snapshots still restore), and that the next
//! backup succeeds and reuses the packs whose index was flushed.
//!
//! Fixtures: a local-backend repository in a temporary directory with small
//! chunks and 2 KiB packs, so a few hundred KB make dozens of packs; one good
//! snapshot is taken first. Faults come from `FaultyBackend`, a `Backend`
//! wrapper over `LocalBackend` that fails the Nth matching put or every put
//! after the Nth; cancellation from a `Read` source that sets
//! `BackupOptions.cancel` after some bytes.

use crate::support::{
    Forwarding, Hooks, SMALL_CHUNKER, backup_paths, backup_stream, chunk_ids, init_local,
    open_local, options, random_bytes, read_files, restore_tree, restored_path, text_bytes,
    write_file,
};
use bytes::Bytes;
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vault_engine::backend::{Backend, BackendError, LocalBackend, PutMode};
use vault_engine::backup::BackupReport;
use vault_engine::id::PackId;
use vault_engine::repository::Repository;
use vault_engine::{Error, ErrorKind};

/// Polls `done` for up to 20 seconds.
fn wait_for(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Which puts fail.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Only the `n`th (1-based) put whose key starts with `prefix`.
    FailNth { n: usize, prefix: &'static str },
    /// Every put after the first `n` (any key).
    FailAfter { n: usize },
}

/// A local backend whose puts fail according to a plan.
struct FaultyBackend {
    inner: LocalBackend,
    plan: Plan,
    counted: AtomicUsize,
    failures: AtomicUsize,
    /// When set, a failing put waits (up to 20 s) for this flag first.
    gate: Option<Arc<AtomicBool>>,
}

impl FaultyBackend {
    fn new(root: &Path, plan: Plan) -> Arc<Forwarding<Self>> {
        Self::gated(root, plan, None)
    }

    fn gated(root: &Path, plan: Plan, gate: Option<Arc<AtomicBool>>) -> Arc<Forwarding<Self>> {
        Arc::new(Forwarding(Self {
            inner: LocalBackend::new(root),
            plan,
            counted: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            gate,
        }))
    }

    fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }
}

impl Hooks for FaultyBackend {
    fn inner(&self) -> &dyn Backend {
        &self.inner
    }

    fn location(&self) -> String {
        format!("faulty:{}", self.inner.location())
    }

    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        let fail = match self.plan {
            Plan::FailNth { n, prefix } => {
                path.starts_with(prefix) && self.counted.fetch_add(1, Ordering::SeqCst) + 1 == n
            }
            Plan::FailAfter { n } => self.counted.fetch_add(1, Ordering::SeqCst) >= n,
        };
        if fail {
            if let Some(gate) = &self.gate {
                wait_for(|| gate.load(Ordering::SeqCst));
            }
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(BackendError::Other(format!("{path}: injected failure")));
        }
        self.inner.put(path, data, mode)
    }
}

/// A repository with one good snapshot of a small tree `a`, and a larger
/// tree `b` (about 50 packs) to back up under faults.
struct Fixture {
    dir: tempfile::TempDir,
    repo_dir: PathBuf,
    repo: Arc<Repository>,
    a: PathBuf,
    b: PathBuf,
    first: BackupReport,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo_dir = dir.path().join("repo");
        let repo = init_local(&repo_dir, SMALL_CHUNKER, 2048);
        let a = dir.path().join("a");
        write_file(&a.join("random.bin"), &random_bytes(41, 8_000));
        write_file(&a.join("text.txt"), &text_bytes(4_000));
        let b = dir.path().join("b");
        write_file(&b.join("one.bin"), &random_bytes(42, 60_000));
        write_file(&b.join("sub/two.bin"), &random_bytes(43, 60_000));
        let first = backup_paths(&repo, &[&a], &options()).expect("first backup");
        Self {
            dir,
            repo_dir,
            repo,
            a,
            b,
            first,
        }
    }

    /// The repository through `backend`, opened with the master key.
    fn through(&self, backend: Arc<dyn Backend>) -> Arc<Repository> {
        Arc::new(Repository::open_with_key(backend, self.repo.key().clone()).expect("open"))
    }

    /// Distinct data chunks of tree `b`.
    fn b_chunks(&self) -> HashSet<vault_engine::id::BlobId> {
        let mut ids = HashSet::new();
        for data in read_files(&self.b).values() {
            ids.extend(chunk_ids(&self.repo, data));
        }
        ids
    }

    /// Snapshots are unchanged and the first one still restores intact.
    fn assert_still_readable(&self) {
        let repo = open_local(&self.repo_dir).expect("reopen repository");
        let ids: Vec<_> = repo
            .snapshots()
            .expect("list snapshots")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec![self.first.snapshot_id], "a snapshot was written");
        let target = tempfile::tempdir_in(self.dir.path()).expect("tempdir");
        restore_tree(&repo, &self.first.snapshot.tree, target.path()).expect("restore");
        let restored = read_files(&restored_path(target.path(), &self.first.snapshot.paths[0]));
        assert!(restored == read_files(&self.a), "earlier snapshot differs");
    }

    /// Backs up `b` through the healthy backend and checks that exactly the
    /// chunks not yet indexed were stored, and that it restores.
    fn retry_b(&self) -> BackupReport {
        let repo = open_local(&self.repo_dir).expect("reopen repository");
        let index = repo.load_index().expect("index");
        let chunks = self.b_chunks();
        let indexed = chunks.iter().filter(|id| index.contains(id)).count();
        assert!(indexed > 0, "nothing of the failed backup was reusable");
        let old_packs: HashSet<PackId> = index.packs().map(|(id, _)| id).collect();

        let report = backup_paths(&repo, &[&self.b], &options()).expect("retry backup");
        assert_eq!(
            report.snapshot.summary.data_blobs as usize,
            chunks.len() - indexed,
            "the retry must store exactly the chunks not yet indexed ({} of {})",
            chunks.len() - indexed,
            chunks.len()
        );
        let index = repo.load_index().expect("index after retry");
        assert!(index.duplicates().is_empty(), "a blob was stored twice");
        let packs: HashSet<PackId> = index.packs().map(|(id, _)| id).collect();
        assert!(old_packs.is_subset(&packs), "indexed packs disappeared");

        let target = tempfile::tempdir_in(self.dir.path()).expect("tempdir");
        restore_tree(&repo, &report.snapshot.tree, target.path()).expect("restore retry");
        let restored = read_files(&restored_path(target.path(), &report.snapshot.paths[0]));
        assert!(restored == read_files(&self.b), "retried snapshot differs");
        report
    }
}

/// Stored pack ids and indexed pack ids.
fn packs_stored_and_indexed(repo_dir: &Path) -> (HashSet<PackId>, HashSet<PackId>) {
    let repo = open_local(repo_dir).expect("reopen repository");
    let stored = repo
        .backend()
        .list("data/")
        .expect("list packs")
        .iter()
        .map(|o| o.path.rsplit('/').next().unwrap().parse().expect("pack id"))
        .collect();
    let indexed = repo
        .load_index()
        .expect("index")
        .packs()
        .map(|(id, _)| id)
        .collect();
    (stored, indexed)
}

/// The backup failed because storage failed, and says so.
fn assert_storage_failure(err: &Error) {
    assert_eq!(err.kind(), ErrorKind::Backend, "unexpected error: {err:?}");
    assert!(err.to_string().contains("injected failure"), "{err}");
}

#[test]
fn backup_failing_nth_pack_upload_returns_error_and_writes_no_snapshot() {
    let fx = Fixture::new();
    let faulty = FaultyBackend::new(
        &fx.repo_dir,
        Plan::FailNth {
            n: 3,
            prefix: "data/",
        },
    );
    let err = backup_paths(&fx.through(faulty.clone()), &[&fx.b], &options())
        .expect_err("backup through failing storage must fail");
    assert_storage_failure(&err);
    assert_eq!(faulty.failures(), 1);
    fx.assert_still_readable();

    // Index writes still work, so every pack that did reach storage was
    // indexed when the pipeline drained.
    let (stored, indexed) = packs_stored_and_indexed(&fx.repo_dir);
    assert_eq!(stored, indexed, "uploaded packs left unindexed");
    fx.retry_b();
}

#[test]
fn backup_with_storage_failing_after_n_puts_reuses_flushed_packs() {
    let fx = Fixture::new();
    let index_files_before = fx.repo.index_ids().expect("index ids").len();
    // The saver flushes an index file every 32 packs (INDEX_EVERY_PACKS in
    // backup/saver.rs): 40 puts let one such flush through, then storage
    // fails for good, including the final index write.
    let faulty = FaultyBackend::new(&fx.repo_dir, Plan::FailAfter { n: 40 });
    let err = backup_paths(&fx.through(faulty.clone()), &[&fx.b], &options())
        .expect_err("backup through failing storage must fail");
    assert_storage_failure(&err);
    assert!(faulty.failures() >= 1);
    fx.assert_still_readable();

    let repo = open_local(&fx.repo_dir).expect("reopen");
    assert_eq!(
        repo.index_ids().expect("index ids").len(),
        index_files_before + 1,
        "expected exactly the one mid-backup index flush"
    );
    // Packs uploaded after that flush are unreferenced until a prune.
    let (stored, indexed) = packs_stored_and_indexed(&fx.repo_dir);
    assert!(indexed.is_subset(&stored), "index names missing packs");
    assert!(stored.len() > indexed.len(), "expected unindexed packs");
    fx.retry_b();
}

/// Streams `data`, setting `cancel` once `cancel_after` bytes were read.
struct CancellingReader {
    data: Vec<u8>,
    pos: usize,
    cancel_after: usize,
    cancel: Arc<AtomicBool>,
}

impl Read for CancellingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.cancel_after {
            self.cancel.store(true, Ordering::SeqCst);
        }
        let n = buf.len().min(4096).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn backup_cancelled_mid_stream_returns_interrupted_and_writes_no_snapshot() {
    let fx = Fixture::new();
    let data = random_bytes(44, 200_000);
    let cancel = Arc::new(AtomicBool::new(false));
    let reader = CancellingReader {
        data: data.clone(),
        pos: 0,
        cancel_after: 100_000,
        cancel: cancel.clone(),
    };
    let cancelling = vault_engine::backup::BackupOptions {
        cancel: cancel.clone(),
        ..options()
    };
    let err = backup_stream(&fx.repo, "stream.bin", Box::new(reader), &cancelling)
        .expect_err("a cancelled backup must fail");
    assert!(matches!(err, Error::Interrupted), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Interrupted);
    assert!(cancel.load(Ordering::SeqCst));
    fx.assert_still_readable();

    // What was accepted before the cancel is uploaded and indexed.
    let (stored, indexed) = packs_stored_and_indexed(&fx.repo_dir);
    assert_eq!(stored, indexed, "uploaded packs left unindexed");
    let repo = open_local(&fx.repo_dir).expect("reopen");
    let index = repo.load_index().expect("index");
    let chunks = chunk_ids(&repo, &data);
    let indexed_chunks = chunks.iter().filter(|id| index.contains(id)).count();
    assert!(
        indexed_chunks > 0,
        "nothing of the cancelled backup was kept"
    );

    let reader = Box::new(std::io::Cursor::new(data.clone()));
    let report = backup_stream(&repo, "stream.bin", reader, &options()).expect("retry");
    assert_eq!(
        report.snapshot.summary.data_blobs as usize,
        chunks.len() - indexed_chunks
    );
    let target = tempfile::tempdir().expect("tempdir");
    restore_tree(&repo, &report.snapshot.tree, target.path()).expect("restore");
    let restored = std::fs::read(target.path().join("stream.bin")).expect("read restored");
    assert!(restored == data, "restored stream differs");
}

/// Streams `data`; at the end of input it opens `gate` (letting the
/// backend's held-back failing put fail) and waits until the failure
/// happened and the saver has seen it before reporting the end.
struct WaitForFailureReader {
    data: std::io::Cursor<Vec<u8>>,
    gate: Arc<AtomicBool>,
    backend: Arc<Forwarding<FaultyBackend>>,
}

impl Read for WaitForFailureReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(buf)?;
        if n == 0 {
            self.gate.store(true, Ordering::SeqCst);
            wait_for(|| self.backend.failures() > 0);
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(n)
    }
}

#[test]
fn backup_failing_after_last_cancel_check_reports_storage_error() {
    let fx = Fixture::new();
    // A stream whose last chunk is cut exactly at the end of the chunker's
    // buffer (a run of zeros is cut at max_size), so the chunker asks for
    // more input only after every chunk went through the cancel check. The
    // first pack upload is held back until then and fails while the reader
    // still holds the end of input: the next thing the walk does is save the
    // stream's tree blob. (A slow remote failing while the walk saves the
    // directory trees at the end of a backup hits the same path.)
    let mut data = random_bytes(45, 16_000);
    data.extend_from_slice(&[0; 8192]);
    let mut end = 0;
    let mut cut_at = None;
    for chunk in SMALL_CHUNKER.chunks(&data[..]) {
        let chunk = chunk.expect("in-memory read");
        end += chunk.len();
        if chunk.len() == SMALL_CHUNKER.max_size as usize && chunk.iter().all(|&b| b == 0) {
            cut_at = Some(end);
        }
    }
    data.truncate(cut_at.expect("zeros are cut at max_size"));

    let gate = Arc::new(AtomicBool::new(false));
    let faulty = FaultyBackend::gated(
        &fx.repo_dir,
        Plan::FailNth {
            n: 1,
            prefix: "data/",
        },
        Some(gate.clone()),
    );
    let reader = WaitForFailureReader {
        data: std::io::Cursor::new(data),
        gate,
        backend: faulty.clone(),
    };
    let err = backup_stream(
        &fx.through(faulty.clone()),
        "stream.bin",
        Box::new(reader),
        &options(),
    )
    .expect_err("backup through failing storage must fail");
    assert_eq!(faulty.failures(), 1);
    fx.assert_still_readable();
    // The caller (and the CLI's exit code) must learn that storage failed.
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("injected failure"), "{err}");
}
