//! The write pipeline shared by backup, copy and repair: blobs in, durable
//! packs and index files out.
//!
//! ```text
//! callers --jobs--> N seal workers --full packs--> M uploaders
//!                   (hash, dedup, compress,         (lay out, name,
//!                    encrypt, add to a pack)         store)
//! ```
//!
//! A caller either hashes and deduplicates a blob itself ([`Saver::save`],
//! [`Saver::save_with_id`]) or leaves both to the workers
//! ([`Saver::submit`]), which is how backup reads files: the reading threads
//! only cut chunks, and keyed BLAKE3 runs on every core.
//!
//! Every channel is bounded, so memory is capped whatever the input: at most
//! `2·N` plaintext chunks queued, one pack being filled, one full waiting
//! for an uploader, and `M` packs being uploaded. An index file is written every `INDEX_EVERY_PACKS` uploaded packs,
//! or sooner once a pack has waited `INDEX_MAX_AGE` for one, so an interrupted
//! backup leaves its uploaded data discoverable by the next one; the final index is written by [`Saver::finish`], which returns only
//! when every accepted blob is durable and indexed.

use crate::blob::BlobKind;
use crate::buffer::BufferPool;
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::index::{IdMap, Index, IndexFile, IndexedPack};
use crate::pack::PackWriter;
use crate::repository::{FileKind, Repository};
use crate::zeros::ZeroIds;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Index files are flushed after this many packs (16 MiB packs: ~512 MiB).
const INDEX_EVERY_PACKS: usize = 32;

/// ... or once the oldest pack not yet in an index file has waited this
/// long: at 1 MB/s, 32 packs take nine minutes to upload, and a backup
/// killed before its next index file would leave all of them for the next
/// run to upload again.
const INDEX_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// For `wal push` ([`Saver::start_for_wal`]): packs uploaded under a minute
/// before their index file are not looked up in storage first (see
/// `Shared::flush_index`). A prune deletes a pack only after marking it and
/// waiting `--delete-margin`, so deleting one that young takes two prunes
/// with a margin under a minute within that minute. A push indexes its one
/// pack milliseconds after uploading it, and is spared a request per
/// segment. Backups check every pack: with `--delete-margin 0s` beside a
/// long backup, an unchecked pack deleted under it stayed indexed, and the
/// next backup deduplicated against it and reported success.
const UNCHECKED_AGE: Duration = Duration::from_secs(60);

/// Packs uploaded but not yet in a stored index file.
#[derive(Default)]
struct Unindexed {
    /// Each with when its upload ended.
    packs: Vec<(IndexedPack, Instant)>,
    /// When the first of `packs` was uploaded.
    since: Option<Instant>,
}

/// Counters the pipeline updates; readable any time for progress display.
#[derive(Debug, Default)]
pub struct SaverStats {
    /// New blobs accepted.
    pub blobs_added: AtomicU64,
    /// New tree blobs accepted.
    pub tree_blobs_added: AtomicU64,
    /// Plaintext bytes of new blobs.
    pub bytes_added: AtomicU64,
    /// Sealed bytes of new blobs.
    pub bytes_stored: AtomicU64,
    /// Packs uploaded.
    pub packs_uploaded: AtomicU64,
}

struct Job {
    kind: BlobKind,
    id: JobId,
    data: Vec<u8>,
}

enum JobId {
    /// Hashed and deduplicated by the caller: store it.
    Known(BlobId),
    /// The worker hashes, deduplicates, and sends the id back.
    Reply(Sender<BlobId>),
}

/// Stops a [`Saver`] from another thread ([`Saver::interrupter`]).
pub struct Interrupter(Arc<Shared>);

impl Interrupter {
    /// Stops the pipeline as interrupted.
    pub fn interrupt(&self) {
        self.0.fail(Error::Interrupted);
    }
}

/// The id of a blob handed to [`Saver::submit`], once a worker hashed it.
pub struct PendingId(Receiver<BlobId>);

impl PendingId {
    /// Waits for the id. Fails only if the pipeline stopped (its error is
    /// reported by [`Saver::finish`]).
    pub fn wait(self) -> Result<BlobId> {
        self.0.recv().map_err(|_| pipeline_failed())
    }

    /// The id if it is already known.
    #[must_use]
    pub fn ready(&self) -> bool {
        !self.0.is_empty()
    }
}

/// The packs being filled: data and tree blobs go to separate packs (as
/// restic does), so metadata is dense for restore and check, and an
/// unchanged re-backup that only adds a few tree blobs never writes a data
/// pack.
#[derive(Default)]
struct Filling {
    data: PackWriter,
    trees: PackWriter,
}

/// Every blob stored before or accepted by a pipeline, and which of the
/// packs stored before it deduplicated against.
///
/// Blobs stored before are looked up in the index itself rather than
/// copied into a hash set: at a million blobs such a set took 66.5 MiB
/// (hashbrown rounds its table up to a power of two), more than the
/// index's 46 MiB (`cargo bench --bench index` prints both).
struct Known {
    /// The index the pipeline started from.
    index: Arc<Index>,
    /// Per pack slot of `index`: marked for deletion. Blobs only in such
    /// packs are not reused: a new snapshot must never start depending on
    /// a pack prune may delete. (A blob's slot is that of an unmarked copy
    /// if it has one.)
    marked: Vec<bool>,
    /// Accepted by this pipeline.
    new: IdMap<BlobId, ()>,
    /// One bit per pack slot of `index`: set once a blob of it was reused.
    reused: Vec<u64>,
}

impl Known {
    fn new(index: Arc<Index>) -> Self {
        let marked: Vec<bool> = index
            .packs()
            .map(|(pack, _)| index.marked_at(&pack).is_some())
            .collect();
        let reused = vec![0; marked.len().div_ceil(64)];
        Self {
            index,
            marked,
            new: IdMap::default(),
            reused,
        }
    }

    /// Whether `id` is known; if it was stored before, notes its pack as
    /// reused.
    fn reuse(&mut self, id: &BlobId) -> bool {
        if self.new.contains_key(id) {
            return true;
        }
        let Some(slot) = self.index.pack_slot(id) else {
            return false;
        };
        if self.marked.get(slot).copied().unwrap_or(true) {
            return false;
        }
        if let Some(word) = self.reused.get_mut(slot / 64) {
            *word |= 1 << (slot % 64);
        }
        true
    }

    fn reused_packs(&self) -> Vec<PackId> {
        (self.index.packs().enumerate())
            .filter(|(slot, _)| {
                (self.reused.get(slot / 64)).is_some_and(|word| word & (1 << (slot % 64)) != 0)
            })
            .map(|(_, (pack, _))| pack)
            .collect()
    }
}

struct Shared {
    repo: Arc<Repository>,
    known: Mutex<Known>,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    unindexed: Mutex<Unindexed>,
    /// [`INDEX_MAX_AGE`], shorter in tests.
    index_max_age: Duration,
    /// Zero (check every pack), or [`UNCHECKED_AGE`] for `wal push`.
    unchecked_age: Duration,
    stats: Arc<SaverStats>,
    /// Plaintext buffers come back here once sealed.
    buffers: Arc<BufferPool>,
    /// Every pack uploaded, when the caller asked ([`Saver::record_packs`]).
    recorded: Mutex<Option<Vec<IndexedPack>>>,
    /// Pack buffers come back here once uploaded: 16 MiB buffers freed by
    /// one thread and allocated by another fragment glibc's arenas the same
    /// way chunk buffers do (see [`crate::buffer`]).
    packs: BufferPool,
    /// Zero runs (sparse and preallocated files) come in chunks of one
    /// length, all with one id.
    zero_ids: ZeroIds,
    /// Where seal workers add what they sealed. A worker adds its blob
    /// itself rather than sending it to a packing thread: that thread
    /// woke for every blob to do a push (~16k wake-ups, each a context
    /// switch on a core the workers needed, in a first backup of 52k
    /// files).
    filling: Mutex<Filling>,
    /// A pack is handed to an uploader once it holds this many bytes.
    pack_size: usize,
}

impl Shared {
    fn blob_id(&self, data: &[u8]) -> BlobId {
        self.zero_ids.blob_id(self.repo.key(), data)
    }

    /// Records `id` as stored; returns false if it already was.
    fn accept(&self, kind: BlobKind, id: BlobId, len: usize) -> bool {
        {
            let mut known = self.known.lock().expect("not poisoned");
            if known.reuse(&id) {
                return false;
            }
            known.new.insert(id, ());
        }
        let stats = &self.stats;
        stats.blobs_added.fetch_add(1, Ordering::Relaxed);
        if kind == BlobKind::Tree {
            stats.tree_blobs_added.fetch_add(1, Ordering::Relaxed);
        }
        stats.bytes_added.fetch_add(len as u64, Ordering::Relaxed);
        true
    }

    fn fail(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut slot = self.error.lock().expect("error mutex not poisoned");
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Writes the pending packs' index file. Packs uploaded before are
    /// durable; only after this are they known to other writers.
    ///
    /// Each pack is first looked up in storage: a prune beside a backup
    /// that outlived its `--delete-margin` deletes the backup's packs that no
    /// index lists yet (repo-format.md §11.3). Listing those would leave
    /// index entries that the next backup deduplicates against, saving a
    /// snapshot whose data is gone; they are left out, and the pipeline
    /// fails.
    fn flush_index(&self) -> Result<()> {
        let packs = std::mem::take(&mut *self.unindexed.lock().expect("not poisoned")).packs;
        if packs.is_empty() {
            return Ok(());
        }
        let mut present = Vec::with_capacity(packs.len());
        let mut gone = Vec::new();
        for (pack, uploaded) in packs {
            if uploaded.elapsed() < self.unchecked_age {
                present.push(pack);
                continue;
            }
            let path = FileKind::Pack.path(&pack.id.to_hex());
            match self.repo.backend().head(&path) {
                Ok(_) => present.push(pack),
                Err(e) if e.is_not_found() => gone.push(pack.id),
                Err(e) => return Err(Error::backend(path, e)),
            }
        }
        if !present.is_empty() {
            self.repo.save_index(&IndexFile {
                packs: present,
                supersedes: Vec::new(),
                marked: Vec::new(),
            })?;
        }
        match gone.first() {
            None => Ok(()),
            Some(first) => Err(Error::InvalidInput(format!(
                "{} pack(s) this backup uploaded (pack {first} first) were deleted by a prune \
                 running beside it (the backup outlived prune's --delete-margin); no snapshot \
                 was saved, run the backup again",
                gone.len()
            ))),
        }
    }
}

/// Accepts blobs, deduplicates them against the index and everything
/// accepted before, and stores the new ones.
pub struct Saver {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    /// For the packs still being filled when the workers are done.
    full: Option<Sender<PackWriter>>,
    compression: Compression,
    workers: Vec<JoinHandle<()>>,
    uploaders: Vec<JoinHandle<()>>,
}

impl Saver {
    /// Starts the pipeline. `index` is the repository's current index; its
    /// blobs are never stored again.
    pub fn start(
        repo: Arc<Repository>,
        index: Arc<Index>,
        compression: Compression,
        upload_concurrency: usize,
        stats: Arc<SaverStats>,
    ) -> Self {
        Self::start_with_ages(
            repo,
            index,
            compression,
            upload_concurrency,
            stats,
            (INDEX_MAX_AGE, Duration::ZERO),
        )
    }

    /// [`Saver::start`] for `wal push`, which indexes its pack right after
    /// uploading it: packs younger than [`UNCHECKED_AGE`] are indexed
    /// without a request to check they still exist.
    pub(crate) fn start_for_wal(
        repo: Arc<Repository>,
        index: Arc<Index>,
        stats: Arc<SaverStats>,
    ) -> Self {
        Self::start_with_ages(
            repo,
            index,
            Compression::default(),
            2,
            stats,
            (INDEX_MAX_AGE, UNCHECKED_AGE),
        )
    }

    /// [`Saver::start`] with [`INDEX_MAX_AGE`] and [`UNCHECKED_AGE`] given.
    fn start_with_ages(
        repo: Arc<Repository>,
        index: Arc<Index>,
        compression: Compression,
        upload_concurrency: usize,
        stats: Arc<SaverStats>,
        (index_max_age, unchecked_age): (Duration, Duration),
    ) -> Self {
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        let uploaders = upload_concurrency.max(1);
        let pack_size = repo.config().pack_size as usize;
        let avg_chunk = repo.config().chunker.avg_size as usize;
        let shared = Arc::new(Shared {
            repo,
            known: Mutex::new(Known::new(index)),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            unindexed: Mutex::new(Unindexed::default()),
            index_max_age,
            unchecked_age,
            stats,
            // Idle buffers only: one per worker and one per reader thread
            // covers the steady state; more would only hold memory. The
            // chunker's usual buffer is two average chunks plus one read.
            buffers: Arc::new(BufferPool::new(workers + 2, 3 * avg_chunk)),
            packs: BufferPool::new(uploaders + 2, 2 * pack_size),
            recorded: Mutex::new(None),
            zero_ids: ZeroIds::default(),
            filling: Mutex::new(Filling::default()),
            pack_size,
        });
        let (job_tx, job_rx) = bounded::<Job>(workers * 2);
        // A rendezvous, entered holding the lock on the packs being
        // filled: a full pack waits with its worker until an uploader is
        // free, and the other workers wait to add theirs, so at most
        // `uploaders + 2` packs (one filling, one full) are in memory.
        let (full_tx, full_rx) = bounded::<PackWriter>(0);
        let workers = (0..workers)
            .map(|_| {
                let rx = job_rx.clone();
                let tx = full_tx.clone();
                let shared = shared.clone();
                spawn("vault-seal", move || {
                    seal_worker(&shared, &rx, &tx, compression);
                })
            })
            .collect();
        let uploaders = (0..uploaders)
            .map(|_| {
                let rx = full_rx.clone();
                let shared = shared.clone();
                spawn("vault-upload", move || uploader(&shared, &rx))
            })
            .collect();
        Self {
            shared,
            jobs: Some(job_tx),
            full: Some(full_tx),
            compression,
            workers,
            uploaders,
        }
    }

    /// A handle that stops the pipeline from another thread (Ctrl-C while
    /// [`Saver::finish`] drains it): packs not yet uploaded are dropped,
    /// those uploaded are still indexed, and `finish` returns
    /// [`Error::Interrupted`].
    #[must_use]
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.shared.clone())
    }

    /// The pool that sealed blobs' plaintext buffers return to: feeders
    /// that take their buffers from it keep memory from fragmenting.
    #[must_use]
    pub fn buffers(&self) -> Arc<BufferPool> {
        self.shared.buffers.clone()
    }

    /// The repository.
    #[must_use]
    pub fn repo(&self) -> &Repository {
        &self.shared.repo
    }

    /// True once any stage failed; callers should stop feeding.
    #[must_use]
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Whether `id` is already stored or accepted. A caller that gets
    /// true is taken to reference it (see [`Saver::finish_reused`]).
    #[must_use]
    pub fn contains(&self, id: &BlobId) -> bool {
        self.shared.known.lock().expect("not poisoned").reuse(id)
    }

    /// Hashes `data` and stores it unless known. Returns its id.
    pub fn save(&self, kind: BlobKind, data: Vec<u8>) -> Result<BlobId> {
        let id = self.shared.blob_id(&data);
        self.save_with_id(kind, id, data)?;
        Ok(id)
    }

    /// Stores a blob whose id the caller computed.
    pub fn save_with_id(&self, kind: BlobKind, id: BlobId, data: Vec<u8>) -> Result<()> {
        if self.has_failed() {
            return Err(pipeline_failed());
        }
        if !self.shared.accept(kind, id, data.len()) {
            return Ok(());
        }
        self.send(Job {
            kind,
            id: JobId::Known(id),
            data,
        })
    }

    /// Hands `data` to the workers, which hash it, deduplicate it and store
    /// it if new; the returned handle yields its id. Blocks while the
    /// workers are busy (the queue is bounded).
    pub fn submit(&self, kind: BlobKind, data: Vec<u8>) -> Result<PendingId> {
        if self.has_failed() {
            return Err(pipeline_failed());
        }
        let (tx, rx) = bounded(1);
        self.send(Job {
            kind,
            id: JobId::Reply(tx),
            data,
        })?;
        Ok(PendingId(rx))
    }

    fn send(&self, job: Job) -> Result<()> {
        let jobs = self.jobs.as_ref().expect("save after finish");
        jobs.send(job).map_err(|_| pipeline_failed())
    }

    fn take_error(&self) -> Error {
        self.shared
            .error
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_else(|| Error::InvalidInput("write pipeline stopped".into()))
    }

    /// Drains the pipeline: every accepted blob is in a durable pack and a
    /// stored index file when this returns `Ok`.
    pub fn finish(mut self) -> Result<()> {
        self.jobs = None;
        self.join(Stage::Workers);
        // What the workers left in the packs being filled goes last.
        if let Some(full) = self.full.take() {
            let left = std::mem::take(&mut *self.shared.filling.lock().expect("not poisoned"));
            for pack in [left.data, left.trees] {
                if !pack.is_empty() && !self.has_failed() {
                    let _ = full.send(pack);
                }
            }
        }
        self.join(Stage::Uploaders);
        if self.has_failed() {
            // Index what did reach storage so a retry can reuse it.
            let _ = self.shared.flush_index();
            return Err(self.take_error());
        }
        self.shared.flush_index()
    }

    /// Waits for a stage's threads to end; one that panicked fails the
    /// pipeline.
    fn join(&mut self, stage: Stage) {
        let threads = match stage {
            Stage::Workers => &mut self.workers,
            Stage::Uploaders => &mut self.uploaders,
        };
        for t in threads.drain(..) {
            if t.join().is_err() {
                self.shared
                    .fail(Error::InvalidInput("a pipeline thread panicked".into()));
            }
        }
    }

    /// [`Saver::finish`], returning the packs stored before the pipeline
    /// started that it deduplicated against: those a snapshot of what it
    /// saved may reference besides its own (see `ensure_stored`).
    pub fn finish_reused(self) -> Result<Vec<PackId>> {
        let shared = self.shared.clone();
        self.finish()?;
        Ok(shared.known.lock().expect("not poisoned").reused_packs())
    }

    /// Keeps a list of the packs this pipeline uploads, with where each
    /// blob went, for [`Saver::finish_with_packs`]. Meant for small writes
    /// (one WAL file): the list grows with every pack.
    pub fn record_packs(&self) {
        *self.shared.recorded.lock().expect("not poisoned") = Some(Vec::new());
    }

    /// [`Saver::finish`], returning the packs uploaded since
    /// [`Saver::record_packs`] (empty if it was not called).
    pub fn finish_with_packs(self) -> Result<Vec<IndexedPack>> {
        let shared = self.shared.clone();
        self.finish()?;
        Ok(shared
            .recorded
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default())
    }

    /// The compression in use.
    #[must_use]
    pub fn compression(&self) -> Compression {
        self.compression
    }
}

enum Stage {
    Workers,
    Uploaders,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawning a pipeline thread")
}

/// Placeholder returned to feeders once a stage failed; the stage's own
/// error is kept for [`Saver::finish`], which callers must call and whose
/// error they must prefer.
fn pipeline_failed() -> Error {
    Error::InvalidInput("write pipeline stopped after an error".into())
}

fn seal_worker(shared: &Shared, rx: &Receiver<Job>, full: &Sender<PackWriter>, c: Compression) {
    for job in rx {
        if shared.failed.load(Ordering::Relaxed) {
            continue; // drain so the feeder never blocks forever
        }
        let id = match job.id {
            JobId::Known(id) => id,
            JobId::Reply(reply) => {
                let id = shared.blob_id(&job.data);
                // The caller only needs the id; it is stored (or known)
                // by the time finish() returns.
                let _ = reply.send(id);
                if !shared.accept(job.kind, id, job.data.len()) {
                    shared.buffers.give(job.data);
                    continue;
                }
                id
            }
        };
        let raw_len = u32::try_from(job.data.len()).expect("blobs are below 4 GiB");
        let sealed = shared.repo.seal_blob(job.kind, &id, c, &job.data);
        shared.buffers.give(job.data);
        shared
            .stats
            .bytes_stored
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        let mut filling = shared.filling.lock().expect("not poisoned");
        let pack = match job.kind {
            BlobKind::Data => &mut filling.data,
            BlobKind::Tree => &mut filling.trees,
        };
        pack.add(job.kind, id, raw_len, sealed);
        if pack.size() >= shared.pack_size && full.send(std::mem::take(pack)).is_err() {
            return;
        }
    }
}

/// Lays out, names and stores each full pack, and indexes the stored ones
/// every [`INDEX_EVERY_PACKS`].
fn uploader(shared: &Shared, rx: &Receiver<PackWriter>) {
    for pack in rx {
        if shared.failed.load(Ordering::Relaxed) {
            continue;
        }
        let buf = shared.packs.take(pack.size() + 64);
        let pack = pack.finish_into(shared.repo.key(), buf);
        let size = pack.bytes.len() as u64;
        let bytes = Bytes::from(pack.bytes);
        if let Err(e) = shared.repo.save_pack(&pack.id, bytes.clone()) {
            shared.fail(e);
            continue;
        }
        // The next backup walks these trees as its parent's: with a cache,
        // it finds them there instead of downloading them.
        if let Some(cache) = shared.repo.cache()
            && pack.blobs.iter().all(|b| b.kind == BlobKind::Tree)
        {
            cache.write(FileKind::Pack, &pack.id.to_hex(), &bytes);
        }
        // The backend is done with it: reuse the buffer for another pack.
        if let Ok(buf) = bytes.try_into_mut() {
            shared.packs.give(buf.into());
        }
        shared.stats.packs_uploaded.fetch_add(1, Ordering::Relaxed);
        let indexed = IndexedPack {
            id: pack.id,
            size,
            blobs: pack.blobs,
        };
        if let Some(list) = shared.recorded.lock().expect("not poisoned").as_mut() {
            list.push(indexed.clone());
        }
        let flush = {
            let mut pending = shared.unindexed.lock().expect("not poisoned");
            pending.packs.push((indexed, Instant::now()));
            let since = *pending.since.get_or_insert_with(Instant::now);
            pending.packs.len() >= INDEX_EVERY_PACKS || since.elapsed() >= shared.index_max_age
        };
        if flush && let Err(e) = shared.flush_index() {
            shared.fail(e);
        }
    }
}

/// Fails if any of `reused` (from [`Saver::finish_reused`]) is gone from
/// storage: a snapshot of what the pipeline saved would then reference
/// lost data. Backups trust the index for data stored before (as restic
/// does), so a pack deleted by hand, by a lifecycle rule or by a failing
/// disk would otherwise go unnoticed until `check`, every later backup
/// reporting success while its unchanged files point at the lost pack. One
/// listing of `data/` (a request per 1 000 packs on S3) catches it.
pub(crate) fn ensure_stored(repo: &Repository, reused: &[PackId], what: &str) -> Result<()> {
    if reused.is_empty() {
        return Ok(());
    }
    let stored = crate::check::stored_packs(repo)?;
    let missing: Vec<&PackId> = reused.iter().filter(|p| !stored.contains_key(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // A pack each of whose blobs has a copy in a stored pack (two backups
    // stored them at once) loses nothing: readers take the copy. Rare, so
    // the index is read again only here.
    let index = repo.load_index()?;
    let copied_elsewhere = |pack: &PackId| {
        let held: Vec<BlobId> = index
            .blobs()
            .filter(|(_, l)| l.pack == *pack)
            .map(|(id, _)| id)
            .collect();
        !held.is_empty()
            && held.iter().all(|id| {
                index
                    .locations(id)
                    .iter()
                    .any(|l| stored.contains_key(&l.pack))
            })
    };
    let (covered, missing): (Vec<&PackId>, Vec<&PackId>) =
        missing.into_iter().partition(|p| copied_elsewhere(p));
    for pack in covered {
        tracing::warn!(
            "pack {pack} is missing from storage, but every blob it held has a copy in another pack, which readers use; `vault repair index` drops it from the index"
        );
    }
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let more = match missing.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    Err(Error::DataLost(format!(
        "pack {first}{more}, holding data this {what} deduplicated against, is missing from \
         storage; no snapshot was saved. Run `vault repair index`, then the {what} again (it \
         stores that data anew, which also mends older snapshots of the same files), then \
         `vault check` to find snapshots still lacking data"
    )))
}

/// Where trees rewritten from existing snapshots go (`repair snapshots`,
/// `rewrite`): a [`Saver`], or on a dry run nowhere, only their ids
/// computed.
pub(crate) struct TreeSink {
    repo: Arc<Repository>,
    saver: Option<Saver>,
}

impl TreeSink {
    pub(crate) fn new(repo: &Arc<Repository>, index: &Arc<Index>, dry_run: bool) -> Self {
        let saver = (!dry_run).then(|| {
            Saver::start(
                repo.clone(),
                index.clone(),
                Compression::default(),
                2,
                Arc::new(SaverStats::default()),
            )
        });
        Self {
            repo: repo.clone(),
            saver,
        }
    }

    /// Stores `tree` (sorted first) and returns its id.
    pub(crate) fn save(&self, mut tree: crate::tree::Tree) -> Result<BlobId> {
        tree.sort();
        let bytes = tree.encode();
        match &self.saver {
            Some(s) => s.save(BlobKind::Tree, bytes),
            None => Ok(self.repo.key().blob_id(&bytes)),
        }
    }

    /// Waits until every tree is stored and indexed.
    pub(crate) fn finish(self) -> Result<()> {
        self.saver.map_or(Ok(()), Saver::finish)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::repository::InitOptions;
    use crate::test_support::memory_repo;

    /// A pipeline on a repository of 64 KiB packs that has stored `packs`
    /// blobs, each filling a pack (and so uploaded at once), and uploaded
    /// them all; also the repository's backend.
    fn uploaded(
        ages: (Duration, Duration),
        packs: usize,
    ) -> (Arc<dyn crate::backend::Backend>, Saver) {
        let (backend, repo) = memory_repo(InitOptions {
            pack_size: Some(64 * 1024),
            ..InitOptions::default()
        });
        let stats = Arc::new(SaverStats::default());
        let saver = Saver::start_with_ages(
            repo,
            Arc::new(crate::index::IndexBuilder::new().finish()),
            Compression::None,
            1,
            stats.clone(),
            ages,
        );
        for n in 0..packs {
            let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + n as u32) as u8).collect();
            saver.save(BlobKind::Data, data).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats.packs_uploaded.load(Ordering::Relaxed) < packs as u64 {
            assert!(Instant::now() < deadline, "packs were not uploaded");
            std::thread::sleep(Duration::from_millis(10));
        }
        (backend, saver)
    }

    /// The number of index files stored before `finish`, then after.
    fn index_files_written(max_age: Duration, packs: usize) -> (usize, usize) {
        let (backend, saver) = uploaded((max_age, UNCHECKED_AGE), packs);
        let count = || backend.list("index/").unwrap().len();
        let before = count();
        saver.finish().unwrap();
        (before, count())
    }

    #[test]
    fn packs_a_prune_deleted_are_left_out_of_the_index_and_fail_the_backup() {
        // Packs checked however young: here the prune's deletion is
        // simulated at once.
        let (backend, saver) = uploaded((INDEX_MAX_AGE, Duration::ZERO), 3);
        let mut packs: Vec<String> = backend
            .list("data/")
            .unwrap()
            .into_iter()
            .map(|o| o.path)
            .collect();
        packs.sort();
        backend.delete(&packs[0]).unwrap();
        let err = saver.finish().unwrap_err().to_string();
        assert!(err.contains("deleted by a prune"), "{err}");
        let index = backend.list("index/").unwrap();
        assert_eq!(index.len(), 1);
        let repo = Repository::open(backend.clone(), &crate::test_support::password()).unwrap();
        let listed: Vec<String> = repo
            .load_index()
            .unwrap()
            .packs()
            .map(|(id, _)| FileKind::Pack.path(&id.to_hex()))
            .collect();
        assert_eq!(listed.len(), 2);
        assert!(!listed.contains(&packs[0]));
    }

    /// The packs reported as reused are those of the starting index that
    /// a lookup or a deduplicated save hit, never one marked for deletion
    /// (its blobs are not reused) and never this pipeline's own; a reused
    /// pack gone from storage then fails `ensure_stored`.
    #[test]
    fn the_packs_blobs_were_reused_from_are_reported_and_must_be_stored() {
        let (_backend, repo) = memory_repo(InitOptions::default());
        let blob = |n: u8| crate::pack::PackedBlob {
            kind: BlobKind::Data,
            id: BlobId([n; 32]),
            offset: 0,
            length: 40,
            raw_len: 8,
        };
        let mut builder = crate::index::IndexBuilder::new();
        for n in 1..=4u8 {
            builder.add_pack(PackId([n; 32]), 100, &[blob(n)]);
        }
        builder.mark(PackId([3; 32]), 0);
        let saver = Saver::start(
            repo.clone(),
            Arc::new(builder.finish()),
            Compression::None,
            1,
            Arc::new(SaverStats::default()),
        );
        assert!(saver.contains(&BlobId([2; 32])));
        assert!(!saver.contains(&BlobId([3; 32])), "only in a marked pack");
        saver
            .save_with_id(BlobKind::Data, BlobId([1; 32]), vec![0; 8])
            .unwrap();
        let new = saver.save(BlobKind::Data, b"new".to_vec()).unwrap();
        assert!(saver.contains(&new));
        let mut reused = saver.finish_reused().unwrap();
        reused.sort();
        assert_eq!(reused, vec![PackId([1; 32]), PackId([2; 32])]);

        assert!(ensure_stored(&repo, &[], "backup").is_ok());
        let err = ensure_stored(&repo, &reused, "backup").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::NotFound);
        let message = err.to_string();
        assert!(message.contains(&PackId([1; 32]).to_hex()), "{message}");
        assert!(message.contains("and 1 more"), "{message}");
    }

    /// Workers fill the packs themselves: full ones go to the uploaders as
    /// they fill, and what is left in the data and the tree pack at the
    /// end is stored by `finish`, each kind in packs of its own.
    #[test]
    fn every_blob_submitted_is_stored_in_a_pack_of_its_kind() {
        let (_backend, repo) = memory_repo(InitOptions {
            pack_size: Some(64 * 1024),
            ..InitOptions::default()
        });
        let saver = Saver::start(
            repo.clone(),
            Arc::new(crate::index::IndexBuilder::new().finish()),
            Compression::None,
            2,
            Arc::new(SaverStats::default()),
        );
        let mut saved = Vec::new();
        for n in 0..45u32 {
            let data: Vec<u8> = (0..9_000u32).map(|i| (i * 13 + n * 7) as u8).collect();
            let id = saver
                .submit(BlobKind::Data, data.clone())
                .unwrap()
                .wait()
                .unwrap();
            saved.push((BlobKind::Data, id, data));
            let tree = format!("tree {n}").into_bytes();
            let id = saver.save(BlobKind::Tree, tree.clone()).unwrap();
            saved.push((BlobKind::Tree, id, tree));
        }
        saver.finish().unwrap();
        let index = repo.load_index().unwrap();
        for (kind, id, plain) in &saved {
            let locations = index.locations(id);
            assert_eq!(locations.len(), 1, "stored once");
            assert_eq!(locations[0].kind, *kind);
            assert_eq!(&repo.read_blob(&index, id).unwrap(), plain);
        }
        let kinds_of = |pack: PackId| -> Vec<BlobKind> {
            let mut kinds: Vec<BlobKind> = index
                .blobs()
                .filter(|(_, l)| l.pack == pack)
                .map(|(_, l)| l.kind)
                .collect();
            kinds.dedup();
            kinds
        };
        let packs: Vec<PackId> = index.packs().map(|(pack, _)| pack).collect();
        // Eight 9 KB blobs fill a 64 KiB pack: five full data packs, the
        // one left at the end, and one pack of trees.
        assert_eq!(packs.len(), 7, "{packs:?}");
        assert!(packs.into_iter().all(|p| kinds_of(p).len() == 1));
    }

    #[test]
    fn index_files_follow_uploads_that_waited_too_long() {
        // With the real age, 4 uploaded packs wait for the 32nd or finish.
        assert_eq!(index_files_written(INDEX_MAX_AGE, 4), (0, 1));
        // Once a pack has waited the age, an upload flushes the index.
        assert_eq!(index_files_written(Duration::ZERO, 4), (4, 4));
    }
}
