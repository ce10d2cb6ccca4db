//! What the engine's unit tests share: a repository in memory with the
//! cheapest key derivation, and a backend that is another one with a few
//! calls changed.

use crate::backend::{self, Backend, ObjectBackend};
use crate::chunker::ChunkerParams;
use crate::crypto::{KdfParams, Password};
use crate::repository::{InitOptions, Repository};
use std::sync::Arc;

// The integration tests in tests/engine share this file.
#[path = "../../tests/engine/support/forwarding.rs"]
mod forwarding;
pub(crate) use forwarding::{Forwarding, Hooks};

/// Small chunks (4 KiB average), so little data makes several.
pub(crate) const SMALL_CHUNKER: ChunkerParams = ChunkerParams {
    min_size: 1024,
    avg_size: 4096,
    max_size: 16384,
    seed: 7,
};

/// The password of every repository made here.
pub(crate) fn password() -> Password {
    Password::new("pw")
}

/// A repository in memory made with `options`, whose key derivation is
/// replaced by argon2id at its cheapest; also its backend.
#[allow(clippy::unwrap_used)]
pub(crate) fn memory_repo(options: InitOptions) -> (Arc<dyn Backend>, Arc<Repository>) {
    let backend: Arc<dyn Backend> = Arc::new(ObjectBackend::memory());
    let options = InitOptions {
        kdf: KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
        ..options
    };
    let repo = Repository::init(backend.clone(), &password(), options).unwrap();
    (backend, Arc::new(repo))
}

/// Backs up `source` into `repo` with host `h`; the new snapshot.
#[allow(clippy::unwrap_used)]
pub(crate) fn backup_source(
    repo: &Arc<Repository>,
    source: crate::backup::Source,
) -> crate::snapshot::Snapshot {
    let options = crate::backup::BackupOptions {
        hostname: "h".into(),
        ..crate::backup::BackupOptions::default()
    };
    crate::backup::backup(repo, source, &options, &Default::default())
        .unwrap()
        .snapshot
}

/// Backs up `data` as the stream file `/<filename>`; the new snapshot.
pub(crate) fn backup_stream(
    repo: &Arc<Repository>,
    filename: &str,
    data: &[u8],
) -> crate::snapshot::Snapshot {
    let source = crate::backup::Source::Stream {
        filename: filename.into(),
        reader: Box::new(std::io::Cursor::new(data.to_vec())),
    };
    backup_source(repo, source)
}
