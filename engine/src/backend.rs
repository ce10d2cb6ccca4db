//! Storage backends: a narrow, byte-level contract (repo-format.md §2, §11).
//!
//! A backend stores whole objects under slash-separated keys. It knows
//! nothing about encryption, packs or ids. The contract is the intersection
//! of what local disks and S3-compatible stores guarantee: whole-object
//! writes (no append, no rename visible to callers), reads of whole objects
//! or byte ranges, listing by prefix, deletion. Listing may lag behind
//! writes on some stores; the engine never relies on a fresh listing for
//! correctness, only for discovery.

mod limit;
mod local;
mod object;
mod object_lock;
mod stall;

pub use limit::RateLimited;
pub use local::LocalBackend;
pub use object::{ObjectBackend, S3Options, redact_url};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How `put` treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace any existing object.
    Overwrite,
    /// Fail with [`BackendError::AlreadyExists`] if the object exists, where
    /// the backend can guarantee it atomically (see
    /// [`Backend::has_atomic_create`]); otherwise behaves as `Overwrite`.
    Create,
}

/// An object found by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key, relative to the repository root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// When the store last wrote the object (S3 `Last-Modified`, file
    /// mtime), if the backend reports it. Object Lock expiry is computed
    /// from it (repo-format.md §11.8).
    pub modified: Option<jiff::Timestamp>,
}

/// S3 Object Lock retention mode (repo-format.md §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete or
    /// shorten the retention; everyone else cannot.
    Governance,
    /// Nobody, not even the account root, can delete the object version
    /// before the retention ends.
    Compliance,
}

impl RetentionMode {
    /// The value of the `x-amz-object-lock-mode` header.
    #[must_use]
    pub fn header_value(self) -> &'static str {
        match self {
            RetentionMode::Governance => "GOVERNANCE",
            RetentionMode::Compliance => "COMPLIANCE",
        }
    }
}

impl std::str::FromStr for RetentionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(RetentionMode::Governance),
            "compliance" => Ok(RetentionMode::Compliance),
            _ => Err(format!(
                "unknown object lock mode {s:?} (expected governance or compliance)"
            )),
        }
    }
}

/// Retention that every object written from now on must carry: locked
/// against deletion and overwrite until `days` days after its upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    /// Retention mode.
    pub mode: RetentionMode,
    /// Retention period in days, counted from each object's upload.
    pub days: u32,
}

impl ObjectLock {
    /// Longest retention accepted, as a sanity bound (about 100 years;
    /// AWS accepts retain-until dates far in the future, but a typo here
    /// would make a bucket undeletable for a lifetime in compliance mode).
    pub const MAX_DAYS: u32 = 36_500;

    /// The retain-until time of an object written at `written`.
    #[must_use]
    pub fn retain_until(&self, written: jiff::Timestamp) -> jiff::Timestamp {
        written
            .checked_add(jiff::SignedDuration::from_hours(i64::from(self.days) * 24))
            .unwrap_or(jiff::Timestamp::MAX)
    }
}

/// A storage failure, classified so callers know whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("object {0} does not exist")]
    NotFound(String),
    /// `PutMode::Create` found the object already present.
    #[error("object {0} already exists")]
    AlreadyExists(String),
    /// The device or bucket quota is full.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The backend or store lacks a feature the repository needs (S3
    /// Object Lock).
    #[error("{0}")]
    Unsupported(String),
    /// A ranged read reached past the object's end: the object is shorter
    /// than the index says, damaged rather than unavailable.
    #[error("{0}")]
    Truncated(String),
    /// The object is larger than any object of its kind may be: damaged
    /// (or planted), and refused unread.
    #[error("{0}")]
    TooLarge(String),
    /// Failed after retries or failed permanently (permissions, bad request).
    #[error("{0}")]
    Other(String),
    /// Not attempted: the command was stopped (Ctrl-C, SIGTERM) while the
    /// transfer waited for its turn.
    #[error("interrupted")]
    Interrupted,
}

impl BackendError {
    /// True for [`BackendError::NotFound`].
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound(_))
    }

    /// The refusal of `path`, of `size` bytes, over `max_len`.
    pub(crate) fn too_large(path: &str, size: u64, max_len: u64) -> Self {
        BackendError::TooLarge(format!(
            "{path} holds {size} bytes, more than the {max_len} an object of its kind may have"
        ))
    }

    /// True for [`BackendError::NoSpace`].
    #[must_use]
    pub fn is_no_space(&self) -> bool {
        matches!(self, BackendError::NoSpace(_))
    }
}

/// Requests a backend sent to its store, by kind, for cost reports: object
/// stores bill writes and listings (PUT, POST, LIST: "class A") apart from
/// reads (GET, HEAD: "class B"). Counts are of requests vault issued,
/// including its own retries; retries inside the HTTP client are not seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCounts {
    /// PUT object, and the create/part/complete/abort calls of multipart
    /// uploads.
    pub put: u64,
    /// GET object (whole or a range).
    pub get: u64,
    /// HEAD object (size checks after every upload).
    pub head: u64,
    /// LIST pages (up to 1000 keys each).
    pub list: u64,
    /// DELETE object.
    pub delete: u64,
}

impl RequestCounts {
    /// Every request.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.put + self.get + self.head + self.list + self.delete
    }
}

/// The storage contract. Every method is blocking and safe to call from many
/// threads at once.
pub trait Backend: Send + Sync {
    /// Human-readable location, for messages. Never contains credentials.
    fn location(&self) -> String;

    /// Stores `data` at `path` atomically: readers see either nothing or
    /// the whole object. Returns only once the object is durable (fsynced
    /// locally, acknowledged by the store remotely).
    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError>;

    /// Reads a whole object of at most `max_len` bytes: the largest its
    /// kind may have (repo-format.md §2.2). A larger object is refused with
    /// [`BackendError::TooLarge`] before its bytes are read, so a hostile
    /// store cannot make the reader allocate gigabytes for a lock.
    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError>;

    /// Reads `len` bytes at `offset`. A range past the end of the object is
    /// an error, never a short read.
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError>;

    /// Size of an object.
    fn head(&self, path: &str) -> Result<u64, BackendError>;

    /// Every object whose key starts with `prefix` (recursively), in no
    /// particular order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;

    /// Removes an object. Removing a missing object succeeds.
    fn delete(&self, path: &str) -> Result<(), BackendError>;

    /// Whether `PutMode::Create` is enforced atomically by this backend.
    fn has_atomic_create(&self) -> bool;

    /// Whether reads are served by a local file system, without network
    /// round trips to hide behind more concurrent requests.
    fn is_local(&self) -> bool {
        false
    }

    /// Requests sent so far, where each costs money (object stores); `None`
    /// for a local directory.
    fn requests(&self) -> Option<RequestCounts> {
        None
    }

    /// From now on, every object written (except under `locks/`, which
    /// are transient) carries `lock`'s retention, counted from its upload,
    /// and `put` fails unless the store confirms the retention was applied.
    /// With `verify`, first checks that the store can lock at all (S3:
    /// Object Lock enabled on the bucket) and fails with
    /// [`BackendError::Unsupported`] otherwise.
    ///
    /// Backends without object locking return
    /// [`BackendError::Unsupported`], the default.
    fn set_object_lock(&self, lock: ObjectLock, verify: bool) -> Result<(), BackendError> {
        let _ = (lock, verify);
        Err(BackendError::Unsupported(format!(
            "{} cannot lock objects (S3 Object Lock needs an S3 bucket created with Object Lock enabled)",
            self.location()
        )))
    }

    /// Removes the temporary files of writes that never finished (a
    /// process killed mid-upload) not modified for `older_than`; returns
    /// how many. Only a local directory has such files: an object store
    /// never shows a partial upload.
    fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, BackendError> {
        let _ = older_than;
        Ok(0)
    }

    /// Moves the retention of the stored object `path` to `until` with the
    /// mode set by [`Backend::set_object_lock`], which must have succeeded.
    /// Only ever used to extend it (repo-format.md §11.8).
    fn extend_retention(&self, path: &str, until: jiff::Timestamp) -> Result<(), BackendError> {
        let _ = until;
        Err(BackendError::Unsupported(format!(
            "{}: {path}: this backend cannot lock objects",
            self.location()
        )))
    }
}

/// Opens a backend from a repository URL: a local path, `local:PATH`,
/// `s3:https://host/bucket/prefix`, `s3:http://127.0.0.1:port/bucket/prefix`
/// or `s3://bucket/prefix` (AWS).
pub fn open_url(url: &str, s3: &S3Options) -> Result<Box<dyn Backend>, BackendError> {
    if let Some(rest) = url.strip_prefix("s3:") {
        return Ok(Box::new(ObjectBackend::s3(rest, s3)?));
    }
    if url.starts_with("memory:") {
        return Ok(Box::new(ObjectBackend::memory()));
    }
    // `https://host/bucket` is not a path: taken as one, init made a local
    // directory named after the URL while the user thought the backups
    // went offsite. (`local:` still takes any path.)
    if let Some((scheme, _)) = url.split_once("://")
        && !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(BackendError::Other(format!(
            "unsupported repository URL {}: S3-compatible stores are s3:https://HOST/BUCKET/PREFIX or s3://BUCKET/PREFIX; a local path needs no scheme (or local:PATH)",
            redact_url(url)
        )));
    }
    let path = url.strip_prefix("local:").unwrap_or(url);
    Ok(Box::new(LocalBackend::new(path)))
}

/// Wraps a backend so that nothing is written or deleted: `--dry-run`.
/// Reads pass through, so commands plan against the real repository.
///
/// What the dry run pretended to write or delete is remembered by path
/// (sizes only, never data), so that `head` answers as the real store
/// would have: a backup confirms each uploaded pack with `head` before
/// indexing it, and an object it never wrote would look deleted by a
/// prune.
pub struct DryRun {
    inner: std::sync::Arc<dyn Backend>,
    /// Path -> size written, or `None` once deleted.
    pretended: std::sync::Mutex<std::collections::HashMap<String, Option<u64>>>,
}

impl DryRun {
    /// A dry-run view of `inner`.
    pub fn new(inner: std::sync::Arc<dyn Backend>) -> Self {
        Self {
            inner,
            pretended: std::sync::Mutex::default(),
        }
    }

    fn pretended(&self, path: &str) -> Option<Option<u64>> {
        self.pretended
            .lock()
            .expect("not poisoned")
            .get(path)
            .copied()
    }

    fn pretend(&self, path: &str, size: Option<u64>) {
        self.pretended
            .lock()
            .expect("not poisoned")
            .insert(path.to_owned(), size);
    }
}

impl Backend for DryRun {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, path: &str, data: Bytes, _mode: PutMode) -> Result<(), BackendError> {
        self.pretend(path, Some(data.len() as u64));
        Ok(())
    }
    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError> {
        match self.pretended(path) {
            // Written only in pretence: its bytes were never kept.
            Some(_) => Err(BackendError::NotFound(path.to_owned())),
            None => self.inner.get(path, max_len),
        }
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        match self.pretended(path) {
            Some(_) => Err(BackendError::NotFound(path.to_owned())),
            None => self.inner.get_range(path, offset, len),
        }
    }
    fn head(&self, path: &str) -> Result<u64, BackendError> {
        match self.pretended(path) {
            Some(Some(size)) => Ok(size),
            Some(None) => Err(BackendError::NotFound(path.to_owned())),
            None => self.inner.head(path),
        }
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.pretend(path, None);
        Ok(())
    }
    fn has_atomic_create(&self) -> bool {
        self.inner.has_atomic_create()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn set_object_lock(&self, lock: ObjectLock, verify: bool) -> Result<(), BackendError> {
        self.inner.set_object_lock(lock, verify)
    }
}
