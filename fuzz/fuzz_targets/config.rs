//! Opening a repository whose `config` object is the fuzz input, with the
//! fixed key. Two ways per input: stored as is (the stored object; must never
//! panic), and sealed with the fixed key first, so the fuzzer reaches what
//! `open` does after authentication (decompression, JSON, version and
//! chunker checks). Either way `open_with_key` may fail but must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use vault_engine::backend::{Backend, ObjectBackend, PutMode};
use vault_engine::Repository;
use vault_fuzz::{key, seal, AAD_CONFIG};

fn backend() -> Arc<dyn Backend> {
    // One in-memory store (and its tokio runtime) for the whole run.
    static BACKEND: OnceLock<Arc<ObjectBackend>> = OnceLock::new();
    BACKEND.get_or_init(|| Arc::new(ObjectBackend::memory())).clone()
}

fn open_with_config(config: Vec<u8>) -> bool {
    let backend = backend();
    backend
        .put("config", config.into(), PutMode::Overwrite)
        .expect("in-memory put");
    Repository::open_with_key(backend, key().clone()).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let _ = open_with_config(data.to_vec());
    if open_with_config(seal(AAD_CONFIG, data)) {
        // Only a valid `tag || config JSON` plaintext may open.
        assert!(!data.is_empty());
    }
});
