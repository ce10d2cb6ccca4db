//! The repository handle (repo-format.md §2): opens and initialises a
//! repository, holds the master key and config, and loads and saves typed
//! objects. Operations (backup, restore, check, prune) live in their own
//! modules and take a `&Repository`.

use crate::backend::{Backend, BackendError, ObjectInfo, ObjectLock, PutMode};
use crate::blob::{self, BlobKind};
use crate::chunker::ChunkerParams;
use crate::compress::{self, Compression};
use crate::crypto::{Domain, KdfParams, KeyFile, KeyFileError, MasterKey, Password};
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, KeyId, PackId, SnapshotId};
use crate::index::{Index, IndexBuilder, IndexFile};
use crate::snapshot::Snapshot;
use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Largest index, snapshot or config plaintext a reader accepts.
const MAX_OBJECT_LEN: usize = 1024 * 1024 * 1024; // 1 GiB
/// Largest sealed object a reader fetches (index file, snapshot, WAL
/// record): the largest plaintext, its compression tag and the envelope's
/// nonce and tag (repo-format.md §2.2). Every writer stays below it: the
/// compressed encoding is never longer than the raw one (§6.1).
pub const MAX_SEALED_LEN: u64 = MAX_OBJECT_LEN as u64 + 1 + 40;
/// Largest `config` a reader fetches: a few hundred bytes of JSON in
/// practice.
pub const MAX_CONFIG_LEN: u64 = 64 * 1024;
/// Largest lock object a reader fetches (a host and a user name, a purpose
/// and numbers).
pub const MAX_LOCK_LEN: u64 = 64 * 1024;
/// Largest key file a reader fetches (the key-file decoder's own cap).
pub const MAX_KEY_FILE_LEN: u64 = crate::crypto::MAX_KEY_FILE_LEN as u64;
/// Largest pack a reader fetches whole (`check --read-data`, `repair index
/// --read-data`, tree packs for the cache): blob offsets are u32, so every
/// indexed blob ends within 4 GiB, followed by at most the largest header
/// and the trailer. Packs are otherwise read by ranges.
pub const MAX_PACK_LEN: u64 =
    (1 << 32) + crate::pack::MAX_HEADER_LEN as u64 + crate::pack::TRAILER_LEN as u64;
/// Current repository format version (§13).
pub const FORMAT_VERSION: u32 = 1;
/// Default target pack size.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024; // 16 MiB

/// The repository config (§2.1), stored sealed at `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Format version.
    pub version: u32,
    /// Random repository id, hex.
    pub id: String,
    /// Chunker parameters shared by every writer.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Creation time.
    pub created: jiff::Timestamp,
    /// S3 Object Lock retention every writer applies (§11.8). Optional:
    /// absent in repositories without it, which keeps their config bytes
    /// (and the v1 golden vectors) unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
}

/// Options for [`Repository::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// argon2id parameters for the first key.
    pub kdf: KdfParams,
    /// Chunker parameters; random seed and defaults when `None`.
    pub chunker: Option<ChunkerParams>,
    /// Target pack size; [`DEFAULT_PACK_SIZE`] when `None`.
    pub pack_size: Option<u32>,
    /// Use this master key instead of a fresh one (golden vectors, key
    /// import).
    pub master_key: Option<MasterKey>,
    /// Host recorded in the key file.
    pub hostname: String,
    /// User recorded in the key file.
    pub username: String,
    /// Lock every object against deletion for this long after its upload
    /// (S3 Object Lock, §11.8). Init fails unless the store can lock.
    pub object_lock: Option<ObjectLock>,
}

/// Kinds of stored files and where they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `keys/<id>`.
    Key,
    /// `snapshots/<id>`.
    Snapshot,
    /// `index/<id>`.
    Index,
    /// `data/<2 hex>/<id>`.
    Pack,
    /// `locks/<id>`.
    Lock,
}

impl FileKind {
    /// Key prefix, with trailing slash.
    #[must_use]
    pub fn prefix(self) -> &'static str {
        match self {
            FileKind::Key => "keys/",
            FileKind::Snapshot => "snapshots/",
            FileKind::Index => "index/",
            FileKind::Pack => "data/",
            FileKind::Lock => "locks/",
        }
    }

    /// The largest object of this kind a reader fetches whole.
    #[must_use]
    pub fn max_len(self) -> u64 {
        match self {
            FileKind::Key => MAX_KEY_FILE_LEN,
            FileKind::Snapshot | FileKind::Index => MAX_SEALED_LEN,
            FileKind::Pack => MAX_PACK_LEN,
            FileKind::Lock => MAX_LOCK_LEN,
        }
    }

    /// Full key of the object named `hex`.
    #[must_use]
    pub fn path(self, hex: &str) -> String {
        match self {
            FileKind::Pack => format!("data/{}/{hex}", hex.get(..2).unwrap_or("00")),
            other => format!("{}{hex}", other.prefix()),
        }
    }
}

/// An open repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: MasterKey,
    key_id: KeyId,
    config: Config,
    /// Local copies of snapshots and index files ([`Repository::set_cache`]).
    cache: Option<crate::cache::Cache>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.backend.location())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Snapshots with their ids, oldest first.
pub type SnapshotList = Vec<(SnapshotId, Snapshot)>;

/// Parses the id at the end of an object key, only in its canonical
/// (lowercase hex) spelling: other names are not ours.
fn canonical_id<T: std::str::FromStr + std::fmt::Display>(path: &str) -> Option<T> {
    let name = path.rsplit('/').next()?;
    let id: T = name.parse().ok()?;
    (id.to_string() == name).then_some(id)
}

fn seal_object(key: &MasterKey, domain: Domain, body: &[u8], c: Compression) -> Vec<u8> {
    key.seal(domain, &compress::encode(c, body))
}

/// The first key file, snapshot or index file stored: whether a location
/// without a config holds a repository all the same.
fn first_repository_object(backend: &dyn Backend) -> Result<Option<String>> {
    for kind in [FileKind::Key, FileKind::Snapshot, FileKind::Index] {
        if let Some(first) = listed(backend, kind)?.into_iter().next() {
            return Ok(Some(first.path));
        }
    }
    Ok(None)
}

/// The objects of `kind` at `backend`, none where its directory is missing.
fn listed(backend: &dyn Backend, kind: FileKind) -> Result<Vec<crate::backend::ObjectInfo>> {
    match backend.list(kind.prefix()) {
        Ok(found) => Ok(found),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(Error::backend(kind.prefix(), e)),
    }
}

/// The key files at `backend` if they are all it holds of a repository (no
/// config, snapshot, index or pack): what an init stopped between writing
/// its key file and its config leaves, before anything was stored.
fn only_key_files(backend: &dyn Backend) -> Result<Option<Vec<String>>> {
    for kind in [FileKind::Snapshot, FileKind::Index, FileKind::Pack] {
        if !listed(backend, kind)?.is_empty() {
            return Ok(None);
        }
    }
    let keys: Vec<String> = listed(backend, FileKind::Key)?
        .into_iter()
        .map(|i| i.path)
        .collect();
    Ok((!keys.is_empty()).then_some(keys))
}

/// The master key of an interrupted init (`keys`, its only objects) that
/// `password` opens, so that init finishes with it. Key files that another
/// password made, or that are not vault's, are named rather than deleted:
/// they are somebody's.
fn interrupted_init_key(
    backend: &dyn Backend,
    keys: &[String],
    password: &Password,
) -> Result<(MasterKey, KeyId)> {
    for path in keys {
        let Ok(bytes) = backend.get(path, MAX_KEY_FILE_LEN) else {
            continue;
        };
        if let Ok(key) = KeyFile::decode(&bytes).and_then(|f| f.open(password)) {
            tracing::info!(
                "finishing an interrupted init: its key file {path} opens with this password"
            );
            return Ok((key, KeyId::of_bytes(&bytes)));
        }
    }
    Err(Error::InvalidInput(format!(
        "{} holds key files ({}) and nothing else of a repository, not even its config: what an interrupted `vault init` leaves before anything is stored. None opens with this password: run init again with the password it was given, or delete those key files and init anew; nothing was written",
        backend.location(),
        keys.join(", "),
    )))
}

/// Whether a key file that is not vault's is restic's (JSON naming its
/// scrypt derivation): a user who points vault at a restic repository is
/// told so, not that every key file is damaged.
fn is_restic_key(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v["kdf"] == "scrypt" && v["data"].is_string())
}

/// Seals a lock document with a key copy (the lock refresher thread).
pub(crate) fn seal_lock_with(key: &MasterKey, body: &[u8]) -> Vec<u8> {
    seal_object(key, Domain::Lock, body, Compression::None)
}

/// Opens a lock document with a key copy (the lock refresher thread).
pub(crate) fn open_lock_with(key: &MasterKey, path: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    open_object(key, Domain::Lock, path, sealed)
}

fn open_object(key: &MasterKey, domain: Domain, what: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let encoded = key
        .open(domain, sealed)
        .map_err(|e| Error::corrupt(what, e))?;
    compress::decode_capped(&encoded, MAX_OBJECT_LEN).map_err(|e| Error::corrupt(what, e))
}

impl Repository {
    /// Creates a repository at an empty location.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &Password,
        options: InitOptions,
    ) -> Result<Self> {
        match backend.head("config") {
            Ok(_) => {
                return Err(Error::InvalidInput(format!(
                    "a repository already exists at {}",
                    backend.location()
                )));
            }
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(Error::backend("config", e)),
        }
        // No config, but objects of a repository: one whose config was lost
        // or deleted. A new config and key beside its data would leave it
        // unreadable by either key set; never write into it.
        if password.is_empty() {
            return Err(Error::InvalidInput("empty password refused".into()));
        }
        let mut resumed = None;
        if let Some(first) = first_repository_object(backend.as_ref())? {
            resumed = match only_key_files(backend.as_ref())? {
                Some(keys) if options.master_key.is_none() => {
                    Some(interrupted_init_key(backend.as_ref(), &keys, password)?)
                }
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "{} holds no config but repository objects ({first} first): a damaged repository, not an empty location; nothing was written",
                        backend.location(),
                    )));
                }
            };
        }
        if let Some(lock) = options.object_lock {
            // Before anything is written: a bucket without Object Lock must
            // not become a repository that only claims to be locked.
            backend.set_object_lock(lock, true).map_err(|e| match e {
                BackendError::Unsupported(why) => {
                    Error::InvalidInput(format!("--object-lock-days needs S3 Object Lock: {why}"))
                }
                e => Error::backend("config", e),
            })?;
        }
        let chunker = options.chunker.unwrap_or_else(ChunkerParams::generate);
        chunker.validate().map_err(Error::InvalidInput)?;
        let (key, resumed_id) = match resumed {
            Some((key, id)) => (key, Some(id)),
            None => (options.master_key.unwrap_or_else(MasterKey::generate), None),
        };
        let mut repo_id = [0u8; 32];
        rand::fill(&mut repo_id);
        let config = Config {
            version: FORMAT_VERSION,
            id: hex::encode(repo_id),
            chunker,
            pack_size: options.pack_size.unwrap_or(DEFAULT_PACK_SIZE),
            created: jiff::Timestamp::now(),
            object_lock: options.object_lock,
        };
        let key_id = match resumed_id {
            Some(id) => id,
            None => {
                let key_file = KeyFile::wrap(
                    &key,
                    password,
                    options.kdf,
                    &options.hostname,
                    &options.username,
                    jiff::Timestamp::now().to_string(),
                );
                let key_bytes = key_file.encode();
                let key_id = KeyId::of_bytes(&key_bytes);
                let key_path = FileKind::Key.path(&key_id.to_hex());
                backend
                    .put(&key_path, key_bytes.into(), PutMode::Create)
                    .map_err(|e| Error::backend(&key_path, e))?;
                key_id
            }
        };
        let body = serde_json::to_vec(&config).expect("config serialises");
        let sealed = seal_object(&key, Domain::Config, &body, Compression::None);
        // The config goes last: its presence is what makes a repository, so
        // an interrupted init leaves no half-repository behind.
        backend
            .put("config", sealed.into(), PutMode::Create)
            .map_err(|e| Error::backend("config", e))?;
        Ok(Self {
            backend,
            key,
            key_id,
            config,
            cache: None,
        })
    }

    /// Opens a repository with a password.
    pub fn open(backend: Arc<dyn Backend>, password: &Password) -> Result<Self> {
        let sealed_config = match backend.get("config", MAX_CONFIG_LEN) {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => {
                // Repository objects without a config: a repository that
                // lost it, not an empty place to `vault init` (which
                // refuses it).
                if only_key_files(backend.as_ref())?.is_some() {
                    return Err(Error::RepositoryNotFound {
                        location: format!(
                            "{} (it holds only key files: an interrupted `vault init`, which running it again with the same password finishes)",
                            backend.location()
                        ),
                    });
                }
                if let Some(first) = first_repository_object(backend.as_ref())? {
                    return Err(Error::Corrupt {
                        object: "config".into(),
                        reason: format!(
                            "missing, though {} holds repository objects ({first} first): a damaged repository, not an empty location; restore `config` (and `keys/`, if gone) from a copy of the repository",
                            backend.location(),
                        ),
                    });
                }
                return Err(Error::RepositoryNotFound {
                    location: backend.location(),
                });
            }
            Err(e) => return Err(Error::backend("config", e)),
        };
        // borg's config is an INI file; vault's is sealed, so never text.
        if sealed_config.starts_with(b"[repository]") {
            return Err(Error::ForeignRepository { tool: "borg" });
        }
        let keys = backend
            .list(FileKind::Key.prefix())
            .map_err(|e| Error::backend("keys/", e))?;
        let listed = keys.len();
        let mut malformed = 0;
        let mut files = Vec::with_capacity(keys.len());
        for info in keys {
            // A store that fails here must not pass for a wrong password.
            let bytes = match backend.get(&info.path, MAX_KEY_FILE_LEN) {
                Ok(b) => b,
                Err(BackendError::NotFound(_)) => continue, // removed since listed
                // Larger than any key file: malformed, as one that does not
                // decode (it would be refused by the decoder anyway).
                Err(BackendError::TooLarge(why)) => {
                    tracing::warn!("skipping malformed key file {}: {why}", info.path);
                    malformed += 1;
                    continue;
                }
                Err(e) => return Err(Error::backend(&info.path, e)),
            };
            let Ok(file) = KeyFile::decode(&bytes) else {
                if is_restic_key(&bytes) {
                    return Err(Error::ForeignRepository { tool: "restic" });
                }
                tracing::warn!("skipping malformed key file {}", info.path);
                malformed += 1;
                continue;
            };
            files.push((info, bytes, file));
        }
        // Cheapest derivation first: a process that opens with a key made
        // for frequent short runs (archive_command's, with a long random
        // password and light argon2 parameters) does not pay for the
        // expensive keys of human passwords before reaching it. Every
        // file is still tried, so the order changes only the time taken.
        // No key at all is not a wrong password: someone deleted them, and
        // only an exported key brings the repository back. (Key files that
        // are there but damaged stay "wrong password or damaged key file".)
        if listed == 0 {
            return Err(Error::NotFound {
                object: "every key file (keys/; `vault key import` restores an exported key)"
                    .into(),
            });
        }
        // Key files that do not even parse are damage, not a wrong
        // password: said so, or the user would go on trying passwords.
        if files.is_empty() && malformed > 0 {
            return Err(Error::Corrupt {
                object: "keys/".into(),
                reason: format!(
                    "every key file is damaged ({malformed} malformed): restore keys/ from a copy, or `vault key import` an exported key"
                ),
            });
        }
        files.sort_by_key(|(_, _, f)| {
            let p = f.kdf_params();
            u64::from(p.memory_kib) * u64::from(p.iterations)
        });
        for (info, bytes, file) in files {
            match file.open(password) {
                Ok(key) => {
                    let key_id = KeyId::of_bytes(&bytes);
                    return Self::with_key(backend, key, key_id, &sealed_config);
                }
                Err(KeyFileError::WrongPassword) => {}
                Err(e) => tracing::warn!("skipping key file {}: {e}", info.path),
            }
        }
        Err(Error::WrongPassword)
    }

    /// Opens with an already unwrapped master key (key import, tests).
    pub fn open_with_key(backend: Arc<dyn Backend>, key: MasterKey) -> Result<Self> {
        let sealed = backend.get("config", MAX_CONFIG_LEN).map_err(|e| match e {
            BackendError::NotFound(_) => Error::RepositoryNotFound {
                location: backend.location(),
            },
            e => Error::backend("config", e),
        })?;
        Self::with_key(backend, key, KeyId([0; 32]), &sealed)
    }

    fn with_key(
        backend: Arc<dyn Backend>,
        key: MasterKey,
        key_id: KeyId,
        sealed_config: &[u8],
    ) -> Result<Self> {
        let body = open_object(&key, Domain::Config, "config", sealed_config)?;
        let config: Config =
            serde_json::from_slice(&body).map_err(|e| Error::corrupt("config", e))?;
        if config.version != FORMAT_VERSION {
            return Err(Error::InvalidInput(format!(
                "repository format version {} is not supported by this vault (supports {FORMAT_VERSION})",
                config.version
            )));
        }
        config
            .chunker
            .validate()
            .map_err(|e| Error::corrupt("config", e))?;
        if let Some(lock) = config.object_lock {
            match backend.set_object_lock(lock, false) {
                Ok(()) => {}
                // Reading a copy of a locked repository (a local mirror)
                // must work; what is written there is simply not locked.
                Err(BackendError::Unsupported(why)) => tracing::warn!(
                    "the repository asks for S3 Object Lock, but objects written now are not locked: {why}"
                ),
                Err(e) => return Err(Error::backend("config", e)),
            }
        }
        Ok(Self {
            backend,
            key,
            key_id,
            config,
            cache: None,
        })
    }

    /// How many packs restore and check read at once unless told: one per
    /// core from a local disk, where a thread never waits on the network
    /// and each extra one only holds another buffer (check at 4 on 2 cores
    /// took 115-134 MiB, at 2 the 72 MiB floor, in the same time); four
    /// from an object store, to keep requests in flight.
    #[must_use]
    pub fn read_concurrency(&self) -> usize {
        if self.backend.is_local() {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        } else {
            4
        }
    }

    /// Keeps snapshots and index files in `cache` from now on, and reads
    /// them from there (see [`crate::cache`]). Commands that must see the
    /// store's bytes (check, repair) run without one.
    pub fn set_cache(&mut self, cache: crate::cache::Cache) {
        self.cache = Some(cache);
    }

    /// The local cache, if one is set.
    pub(crate) fn cache(&self) -> Option<&crate::cache::Cache> {
        self.cache.as_ref()
    }

    /// The storage backend.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The config.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The master key.
    #[must_use]
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// The key file used to open the repository.
    #[must_use]
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Lists objects of a kind.
    pub fn list(&self, kind: FileKind) -> Result<Vec<ObjectInfo>> {
        self.backend
            .list(kind.prefix())
            .map_err(|e| Error::backend(kind.prefix(), e))
    }

    fn save_sealed(&self, kind: FileKind, domain: Domain, body: &[u8]) -> Result<String> {
        let sealed = seal_object(&self.key, domain, body, Compression::Zstd(3));
        let hex = blake3::hash(&sealed).to_hex().to_string();
        let path = kind.path(&hex);
        let sealed = Bytes::from(sealed);
        self.backend
            .put(&path, sealed.clone(), PutMode::Create)
            .or_else(|e| match e {
                // Content-addressed: the same name means the same bytes.
                BackendError::AlreadyExists(_) => Ok(()),
                e => Err(e),
            })
            .map_err(|e| Error::backend(&path, e))?;
        if let Some(cache) = &self.cache {
            cache.write(kind, &hex, &sealed);
        }
        Ok(hex)
    }

    fn load_sealed(&self, kind: FileKind, domain: Domain, hex: &str) -> Result<Vec<u8>> {
        let path = kind.path(hex);
        if let Some(sealed) = self.cache.as_ref().and_then(|c| c.read(kind, hex)) {
            return open_object(&self.key, domain, &path, &sealed);
        }
        let sealed = self
            .backend
            .get(&path, kind.max_len())
            .map_err(|e| Error::backend(&path, e))?;
        if blake3::hash(&sealed).to_hex().as_str() != hex {
            return Err(Error::corrupt(&path, "content does not match its name"));
        }
        let body = open_object(&self.key, domain, &path, &sealed)?;
        // Cached only once it opened: a copy is always one that worked.
        if let Some(cache) = &self.cache {
            cache.write(kind, hex, &sealed);
        }
        Ok(body)
    }

    /// Drops cached copies of `kind` that `listed` (the store's listing)
    /// no longer holds.
    fn prune_cache(&self, kind: FileKind, listed: &[ObjectInfo]) {
        if let Some(cache) = &self.cache {
            let names: HashSet<String> = listed
                .iter()
                .filter_map(|o| o.path.rsplit('/').next().map(str::to_owned))
                .collect();
            cache.retain(kind, &names);
        }
    }

    /// Seals a lock document (§11.2).
    pub(crate) fn seal_lock(&self, body: &[u8]) -> Vec<u8> {
        seal_object(&self.key, Domain::Lock, body, Compression::None)
    }

    /// Opens a lock document.
    pub(crate) fn open_lock(&self, path: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        open_object(&self.key, Domain::Lock, path, sealed)
    }

    /// Seals a WAL segment record (§11.7).
    pub(crate) fn seal_wal(&self, body: &[u8]) -> Vec<u8> {
        seal_object(&self.key, Domain::Wal, body, Compression::None)
    }

    /// Opens a WAL segment record.
    pub(crate) fn open_wal(&self, path: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        open_object(&self.key, Domain::Wal, path, sealed)
    }

    /// Stores an index file.
    pub fn save_index(&self, file: &IndexFile) -> Result<IndexId> {
        let hex = self.save_sealed(FileKind::Index, Domain::Index, &file.encode())?;
        Ok(hex.parse().expect("blake3 hex is a valid id"))
    }

    /// Loads one index file.
    pub fn load_index_file(&self, id: &IndexId) -> Result<IndexFile> {
        let path = FileKind::Index.path(&id.to_hex());
        let body = self.load_sealed(FileKind::Index, Domain::Index, &id.to_hex())?;
        IndexFile::decode(&body).map_err(|e| Error::corrupt(path, e))
    }

    /// Reads and decodes index files, several at a time: on an object
    /// store each is a GET, and a repository written by frequent small
    /// writers (`wal push`, hourly backups) holds hundreds or thousands of
    /// them until the next prune, which one at a time would take minutes.
    /// Results come back in the order of `ids`.
    pub(crate) fn fetch_index_files(&self, ids: &[IndexId]) -> Vec<(IndexId, Result<IndexFile>)> {
        fetch_all(ids, |id| self.load_index_file(id))
    }

    /// Ids of every stored index file.
    pub fn index_ids(&self) -> Result<Vec<IndexId>> {
        let listed = self.list(FileKind::Index)?;
        self.prune_cache(FileKind::Index, &listed);
        Ok(listed
            .iter()
            .filter_map(|o| canonical_id(&o.path))
            .collect())
    }

    /// Loads every index file into one in-memory index, skipping files
    /// that another index supersedes.
    ///
    /// A concurrent prune writes its replacement index before deleting the
    /// files it supersedes (§11.3), so an index file that vanishes between
    /// the listing and the read is answered by listing again: the new
    /// listing holds its replacement.
    pub fn load_index(&self) -> Result<Index> {
        const ATTEMPTS: usize = 4;
        let mut loaded: HashMap<IndexId, IndexFile> = HashMap::new();
        let mut attempt = 0;
        let files: Vec<(IndexId, IndexFile)> = 'listing: loop {
            attempt += 1;
            let ids = self.index_ids()?;
            let missing: Vec<IndexId> = ids
                .iter()
                .filter(|id| !loaded.contains_key(id))
                .copied()
                .collect();
            let mut vanished = false;
            for (id, file) in self.fetch_index_files(&missing) {
                match file {
                    Ok(file) => {
                        loaded.insert(id, file);
                    }
                    Err(Error::NotFound { .. }) if attempt < ATTEMPTS => vanished = true,
                    Err(e) => return Err(e),
                }
            }
            if vanished {
                continue 'listing;
            }
            // In listing order, so which copy of a blob wins is the same
            // on every load.
            break ids
                .iter()
                .filter_map(|id| Some((*id, loaded.remove(id)?)))
                .collect();
        };
        let superseded: HashSet<IndexId> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        // Each file is dropped once added, so the decoded files and the
        // index they become are not both held whole.
        let mut builder = IndexBuilder::new();
        for (id, file) in files {
            if !superseded.contains(&id) {
                builder.add_file(&file);
            }
        }
        let index = builder.finish();
        // Cached tree packs the index no longer lists were pruned away.
        if let Some(cache) = &self.cache {
            let packs: HashSet<String> = index.packs().map(|(id, _)| id.to_hex()).collect();
            cache.retain(FileKind::Pack, &packs);
        }
        Ok(index)
    }

    /// Stores a snapshot.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        let hex = self.save_sealed(FileKind::Snapshot, Domain::Snapshot, &snapshot.encode())?;
        Ok(hex.parse().expect("blake3 hex is a valid id"))
    }

    /// Stores `new` in place of the snapshot `old`: `new` first, so that a
    /// failure in between leaves both, never neither.
    pub fn replace_snapshot(&self, old: &SnapshotId, new: &Snapshot) -> Result<SnapshotId> {
        let id = self.save_snapshot(new)?;
        self.delete_snapshot(old)?;
        Ok(id)
    }

    /// [`Self::replace_snapshot`], unless one of `existing` (other than
    /// `old`) already is `new`: then only `old` is deleted. That is what an
    /// interrupted `tag` or `rewrite --forget` left (the replacement stored,
    /// the original not yet deleted), and running it again must finish that
    /// step, not store a second copy of the replacement.
    pub fn replace_snapshot_among(
        &self,
        old: &SnapshotId,
        new: &Snapshot,
        existing: &[(SnapshotId, Snapshot)],
    ) -> Result<SnapshotId> {
        match existing.iter().find(|(id, s)| id != old && s == new) {
            Some((id, _)) => {
                self.delete_snapshot(old)?;
                Ok(*id)
            }
            None => self.replace_snapshot(old, new),
        }
    }

    /// Loads a snapshot.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let path = FileKind::Snapshot.path(&id.to_hex());
        let body = self.load_sealed(FileKind::Snapshot, Domain::Snapshot, &id.to_hex())?;
        Snapshot::decode(&body).map_err(|e| Error::corrupt(path, e))
    }

    /// Every snapshot, oldest first. Damaged ones are skipped with a
    /// warning: one must not make the others unreachable (`check` reports
    /// it).
    pub fn snapshots(&self) -> Result<SnapshotList> {
        let (out, damaged) = self.snapshots_and_damaged()?;
        for (_, e) in damaged {
            tracing::warn!("skipping {e}");
        }
        Ok(out)
    }

    /// Every readable snapshot, oldest first, and the ids and errors of
    /// those that are damaged: for a caller that must tell "no such
    /// snapshot" from "it may be one of these".
    pub fn snapshots_and_damaged(&self) -> Result<(SnapshotList, Vec<(SnapshotId, Error)>)> {
        let listed = self.list(FileKind::Snapshot)?;
        self.prune_cache(FileKind::Snapshot, &listed);
        let ids: Vec<SnapshotId> = listed
            .iter()
            .filter_map(|info| canonical_id(&info.path))
            .collect();
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for (id, loaded) in fetch_all(&ids, |id| self.load_snapshot(id)) {
            match loaded {
                Ok(s) => out.push((id, s)),
                Err(e @ Error::Corrupt { .. }) => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        // A rewritten snapshot (`rewrite` without --forget, `repair
        // snapshots`) keeps its original's time: it sorts after it, so that
        // `latest` and `--at` give the rewritten one, not the original
        // still holding what was removed. Remaining ties by id, so that
        // `latest` does not depend on the order storage lists objects in.
        out.sort_by_key(|(id, s)| (s.time.timestamp(), s.original.is_some(), *id));
        Ok((out, damaged))
    }

    /// Removes a snapshot (forget).
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        let path = FileKind::Snapshot.path(&id.to_hex());
        if let Some(cache) = &self.cache {
            cache.remove(FileKind::Snapshot, &id.to_hex());
        }
        self.backend
            .delete(&path)
            .map_err(|e| Error::backend(path, e))
    }

    /// Stores a finished pack. Returns once it is durable.
    pub fn save_pack(&self, id: &PackId, bytes: Bytes) -> Result<()> {
        let path = FileKind::Pack.path(&id.to_hex());
        self.backend
            .put(&path, bytes, PutMode::Create)
            .or_else(|e| match e {
                BackendError::AlreadyExists(_) => Ok(()),
                e => Err(e),
            })
            .map_err(|e| Error::backend(&path, e))
    }

    /// Reads and verifies one blob. A blob whose pack is missing or
    /// damaged is read from another pack holding it, if the index lists
    /// one; the first location's error is returned when none works.
    pub fn read_blob(&self, index: &Index, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob_except(index, id, None)
    }

    /// Another copy of blob `id`, whose copy in pack `failed` is missing or
    /// damaged (two backups stored it at once): `None` when no other copy
    /// reads. Only the store failing is an error. For readers that read
    /// packs themselves (restore, copy, tree spans).
    pub(crate) fn other_copy(
        &self,
        index: &Index,
        id: &BlobId,
        failed: &PackId,
    ) -> Result<Option<Vec<u8>>> {
        match self.read_blob_except(index, id, Some(failed)) {
            Ok(plain) => Ok(Some(plain)),
            Err(Error::NotFound { .. } | Error::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Repository::read_blob`] from any location but those in pack
    /// `except` (which a caller already found wanting).
    fn read_blob_except(
        &self,
        index: &Index,
        id: &BlobId,
        except: Option<&PackId>,
    ) -> Result<Vec<u8>> {
        let mut first_error = None;
        for loc in index.locations(id) {
            if except == Some(&loc.pack) {
                continue;
            }
            match self.read_blob_at(id, &loc) {
                Ok(plain) => return Ok(plain),
                // Damage to one copy; another may be sound.
                Err(e @ (Error::NotFound { .. } | Error::Corrupt { .. })) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or_else(|| Error::NotFound {
            object: match except {
                Some(pack) => format!("blob {id} (in no pack but {pack})"),
                None => format!("blob {id} (not in any index)"),
            },
        }))
    }

    pub(crate) fn read_blob_at(
        &self,
        id: &BlobId,
        loc: &crate::index::BlobLocation,
    ) -> Result<Vec<u8>> {
        // A tree in a tree pack the cache holds (a walk fetched it) is read
        // from there: `mount`, path lookups and `dump` read trees one at a time.
        if loc.kind == BlobKind::Tree
            && let Some(cache) = &self.cache
        {
            let hex = loc.pack.to_hex();
            let (offset, len) = (u64::from(loc.offset), u64::from(loc.length));
            if let Some(stored) = cache.read_range(FileKind::Pack, &hex, offset, len) {
                match blob::open(&self.key, loc.kind, id, loc.raw_len, &stored) {
                    Ok(plain) => return Ok(plain),
                    Err(_) => cache.remove(FileKind::Pack, &hex),
                }
            }
        }
        let path = FileKind::Pack.path(&loc.pack.to_hex());
        let stored = self
            .backend
            .get_range(&path, u64::from(loc.offset), u64::from(loc.length))
            .map_err(|e| Error::backend(format!("pack {} (blob {})", loc.pack, id.short()), e))?;
        blob::open(&self.key, loc.kind, id, loc.raw_len, &stored)
            .map_err(|e| Error::corrupt(format!("blob {} in pack {}", id, loc.pack), e))
    }

    /// Reads and decodes a tree blob.
    pub fn read_tree(&self, index: &Index, id: &BlobId) -> Result<crate::tree::Tree> {
        let bytes = self.read_blob(index, id)?;
        crate::tree::Tree::decode(&bytes).map_err(|e| Error::corrupt(format!("tree {id}"), e))
    }

    /// Seals a blob for a pack (used by the backup pipeline).
    pub(crate) fn seal_blob(
        &self,
        kind: BlobKind,
        id: &BlobId,
        c: Compression,
        data: &[u8],
    ) -> Vec<u8> {
        blob::seal(&self.key, kind, id, c, data)
    }
}

/// A rayon pool of `threads` threads, for work that must not spread over
/// the global pool's (one per core).
pub(crate) fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        // Tree walks recurse a frame per directory level and run on these
        // threads: rayon's 2 MiB overflowed at ~1 200 levels, a depth
        // backups reach (PATH_MAX allows ~2 000). Address space only: pages
        // are committed as used.
        .stack_size(STACK_SIZE)
        .build()
        .map_err(|e| Error::InvalidInput(format!("thread pool: {e}")))
}

/// Stack of pool threads, enough for [`crate::tree::MAX_DEPTH`] levels of
/// any tree walk.
const STACK_SIZE: usize = 32 * 1024 * 1024;

/// Runs `load` over `ids`, several at once: on an object store each load is
/// a GET that waits a network round trip, not a core (index files and
/// snapshots are one object each).
pub(crate) fn fetch_all<I: Copy + Send + Sync, T: Send>(
    ids: &[I],
    load: impl Fn(&I) -> T + Sync,
) -> Vec<(I, T)> {
    const FETCHES: usize = 8;
    let one = |id: &I| (*id, load(id));
    if ids.len() < 2 {
        return ids.iter().map(one).collect();
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(FETCHES.min(ids.len()))
        .thread_name(|_| "vault-fetch".into())
        .build()
    {
        Ok(pool) => pool.install(|| ids.par_iter().map(one).collect()),
        Err(_) => ids.iter().map(one).collect(),
    }
}
