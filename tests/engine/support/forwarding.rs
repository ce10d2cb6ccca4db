//! A storage backend that is another one with a few calls changed: tests
//! inject faults, refuse deletes or run a hook at a chosen moment by
//! implementing [`Hooks`] with just those calls; every other call goes to
//! [`Hooks::inner`] unchanged, the optional ones too, so the wrapper looks
//! like the backend it wraps (local or not, lockable or not).
//!
//! Shared by the engine's unit tests (engine/src/test_support.rs) and its
//! integration tests (tests/engine/support.rs), which are different crates:
//! each includes this file and names the engine's `backend` module as
//! `super::backend`. (`impl<T: Hooks> Backend for T` would be refused by
//! the orphan rule in the integration tests, hence the wrapper
//! [`Forwarding`].)

use super::backend::{Backend, BackendError, ObjectInfo, ObjectLock, PutMode, RequestCounts};
use bytes::Bytes;

/// The calls a test changes; the rest forward to [`Hooks::inner`].
pub trait Hooks: Send + Sync {
    /// Where every call not overridden goes.
    fn inner(&self) -> &dyn Backend;

    fn location(&self) -> String {
        self.inner().location()
    }
    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        self.inner().put(path, data, mode)
    }
    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError> {
        self.inner().get(path, max_len)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        self.inner().get_range(path, offset, len)
    }
    fn head(&self, path: &str) -> Result<u64, BackendError> {
        self.inner().head(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.inner().list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.inner().delete(path)
    }
    fn has_atomic_create(&self) -> bool {
        self.inner().has_atomic_create()
    }
    fn is_local(&self) -> bool {
        self.inner().is_local()
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner().requests()
    }
    fn set_object_lock(&self, lock: ObjectLock, verify: bool) -> Result<(), BackendError> {
        self.inner().set_object_lock(lock, verify)
    }
    fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, BackendError> {
        self.inner().remove_stale_temporaries(older_than)
    }
    fn extend_retention(&self, path: &str, until: jiff::Timestamp) -> Result<(), BackendError> {
        self.inner().extend_retention(path, until)
    }
}

/// `H` as a [`Backend`]; derefs to `H`, so a test reads what its hooks
/// recorded through the same handle.
pub struct Forwarding<H>(pub H);

impl<H> std::ops::Deref for Forwarding<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.0
    }
}

impl<H: Hooks> Backend for Forwarding<H> {
    fn location(&self) -> String {
        self.0.location()
    }
    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        self.0.put(path, data, mode)
    }
    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError> {
        self.0.get(path, max_len)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        self.0.get_range(path, offset, len)
    }
    fn head(&self, path: &str) -> Result<u64, BackendError> {
        self.0.head(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.0.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.0.delete(path)
    }
    fn has_atomic_create(&self) -> bool {
        self.0.has_atomic_create()
    }
    fn is_local(&self) -> bool {
        self.0.is_local()
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.0.requests()
    }
    fn set_object_lock(&self, lock: ObjectLock, verify: bool) -> Result<(), BackendError> {
        self.0.set_object_lock(lock, verify)
    }
    fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, BackendError> {
        self.0.remove_stale_temporaries(older_than)
    }
    fn extend_retention(&self, path: &str, until: jiff::Timestamp) -> Result<(), BackendError> {
        self.0.extend_retention(path, until)
    }
}
