//! Tamper detection: guards that a damaged stored object (config, key file,
//! index file, snapshot, pack) is reported as an error of kind `Corrupt` (or
//! `WrongPassword` for key files) that names the object, and is never turned
//! into different data.
//!
//! Fixture: one local-backend repository per test in a temporary directory
//! (small chunks, 4 KiB packs, one snapshot of a generated tree of random,
//! text and zero-filled files). For every object of the kind under test and
//! for the first, middle and last byte, a fresh copy of the repository gets
//! that one byte flipped (lowest bit), and is then opened, read and restored.

use crate::support::{
    SMALL_CHUNKER, backup_paths, copy_dir, init_local, options, password, random_bytes, read_files,
    restore_tree, restored_path, text_bytes, write_file,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault_engine::backend::{Backend, LocalBackend};
use vault_engine::crypto::MasterKey;
use vault_engine::id::{BlobId, IndexId, PackId, SnapshotId};
use vault_engine::repository::Repository;
use vault_engine::{Error, ErrorKind};

struct Fixture {
    dir: tempfile::TempDir,
    repo_dir: PathBuf,
    key: MasterKey,
    snapshot_id: SnapshotId,
    tree: BlobId,
    /// Where the source lands under a restore target.
    snapshot_path: String,
    originals: BTreeMap<PathBuf, Vec<u8>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        write_file(&src.join("random.bin"), &random_bytes(31, 12_000));
        write_file(&src.join("text.txt"), &text_bytes(8_000));
        write_file(&src.join("sub/random.bin"), &random_bytes(32, 6_000));
        write_file(&src.join("sub/zeros.bin"), &[0; 3_000]);
        let repo_dir = dir.path().join("repo");
        let repo = init_local(&repo_dir, SMALL_CHUNKER, 4096);
        let report = backup_paths(&repo, &[&src], &options()).expect("backup");
        Self {
            key: repo.key().clone(),
            snapshot_id: report.snapshot_id,
            tree: report.snapshot.tree,
            snapshot_path: report.snapshot.paths[0].clone(),
            originals: read_files(&src),
            repo_dir,
            dir,
        }
    }

    /// Object keys under `prefix`, e.g. `data/`.
    fn objects(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = LocalBackend::new(&self.repo_dir)
            .list(prefix)
            .expect("list")
            .into_iter()
            .map(|o| o.path)
            .collect();
        keys.sort();
        assert!(!keys.is_empty(), "fixture has no {prefix} objects");
        keys
    }

    /// A copy of the repository with the lowest bit of byte `pos` of
    /// `object` flipped.
    fn tampered(&self, object: &str, pos: usize) -> tempfile::TempDir {
        let copy = tempfile::tempdir_in(self.dir.path()).expect("tempdir");
        copy_dir(&self.repo_dir, copy.path());
        let path = copy.path().join(object);
        let mut bytes = std::fs::read(&path).expect("read object");
        bytes[pos] ^= 0x01;
        std::fs::write(&path, bytes).expect("write object");
        copy
    }
}

fn backend(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(dir))
}

fn positions(len: usize) -> [usize; 3] {
    [0, len / 2, len - 1]
}

fn object_len(fx: &Fixture, object: &str) -> usize {
    std::fs::metadata(fx.repo_dir.join(object))
        .expect("object metadata")
        .len() as usize
}

/// The error must be `kind` and its message must name `object`.
fn assert_reported<T>(result: Result<T, Error>, kind: ErrorKind, object: &str) {
    let Err(err) = result else {
        panic!("damaged {object} accepted");
    };
    assert_eq!(err.kind(), kind, "wrong kind for damaged {object}: {err}");
    assert!(
        err.to_string().contains(object),
        "message does not name {object}: {err}"
    );
}

#[test]
fn config_flipped_byte_is_reported_corrupt() {
    let fx = Fixture::new();
    for pos in positions(object_len(&fx, "config")) {
        let copy = fx.tampered("config", pos);
        let by_password = Repository::open(backend(copy.path()), &password());
        assert_reported(by_password, ErrorKind::Corrupt, "config");
        let by_key = Repository::open_with_key(backend(copy.path()), fx.key.clone());
        assert_reported(by_key, ErrorKind::Corrupt, "config");
    }
}

#[test]
fn key_file_flipped_byte_is_reported_as_wrong_password_or_damage() {
    let fx = Fixture::new();
    for object in fx.objects("keys/") {
        for pos in positions(object_len(&fx, &object)) {
            let copy = fx.tampered(&object, pos);
            // A key file that no longer parses is damage (the only one:
            // nothing to try a password on). One that parses but does not
            // open cannot be told from a wrong password; the message says
            // so ("… or damaged key file").
            let opened = Repository::open(backend(copy.path()), &password());
            match &opened {
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    assert!(e.to_string().contains("vault key import"), "{e}");
                }
                _ => assert_reported(opened, ErrorKind::WrongPassword, "key file"),
            }
            // The master key itself is not in the key file: the rest of the
            // repository is intact and still opens with it.
            let repo = Repository::open_with_key(backend(copy.path()), fx.key.clone())
                .expect("open with master key");
            assert_eq!(repo.snapshots().expect("snapshots").len(), 1);
        }
    }
}

/// The only key file cut short no longer parses: that is damage (exit 5,
/// pointing at an exported key), not a wrong password to try again.
#[test]
fn the_only_key_file_truncated_is_reported_corrupt_not_wrong_password() {
    let fx = Fixture::new();
    for object in fx.objects("keys/") {
        let copy = tempfile::tempdir_in(fx.dir.path()).expect("tempdir");
        copy_dir(&fx.repo_dir, copy.path());
        let path = copy.path().join(&object);
        let bytes = std::fs::read(&path).expect("read key file");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
        let Err(err) = Repository::open(backend(copy.path()), &password()) else {
            panic!("a truncated key file opened");
        };
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains("vault key import"), "{err}");
    }
}

#[test]
fn index_flipped_byte_is_reported_corrupt() {
    let fx = Fixture::new();
    for object in fx.objects("index/") {
        let id: IndexId = object["index/".len()..].parse().expect("index id");
        for pos in positions(object_len(&fx, &object)) {
            let copy = fx.tampered(&object, pos);
            let repo = Arc::new(
                Repository::open(backend(copy.path()), &password()).expect("open repository"),
            );
            assert_reported(repo.load_index_file(&id), ErrorKind::Corrupt, &object);
            assert_reported(repo.load_index(), ErrorKind::Corrupt, &object);
            let target = tempfile::tempdir().expect("tempdir");
            assert_reported(
                restore_tree(&repo, &fx.tree, target.path()),
                ErrorKind::Corrupt,
                &object,
            );
            // A backup must not build on an index it cannot read either.
            let src = fx.dir.path().join("src");
            assert_reported(
                backup_paths(&repo, &[&src], &options()),
                ErrorKind::Corrupt,
                &object,
            );
        }
    }
}

#[test]
fn snapshot_flipped_byte_is_reported_corrupt() {
    let fx = Fixture::new();
    let object = format!("snapshots/{}", fx.snapshot_id.to_hex());
    assert_eq!(fx.objects("snapshots/"), vec![object.clone()]);
    for pos in positions(object_len(&fx, &object)) {
        let copy = fx.tampered(&object, pos);
        let repo = Repository::open(backend(copy.path()), &password()).expect("open repository");
        // Listing skips the damaged snapshot (others stay reachable; check
        // reports it); loading it by id fails naming it.
        assert!(repo.snapshots().expect("listing").is_empty());
        assert_reported(
            repo.load_snapshot(&fx.snapshot_id),
            ErrorKind::Corrupt,
            &object,
        );
    }
}

/// After a failed restore, files may be partly written, but never with
/// wrong bytes: each byte is the original or still a hole (zero).
fn assert_no_wrong_content(fx: &Fixture, root: &Path, what: &str) {
    if !root.exists() {
        return;
    }
    for (path, data) in read_files(root) {
        let original = fx
            .originals
            .get(&path)
            .unwrap_or_else(|| panic!("{what}: unexpected file {}", path.display()));
        assert_eq!(
            data.len(),
            original.len(),
            "{what}: {} size",
            path.display()
        );
        let wrong = data
            .iter()
            .zip(original)
            .position(|(got, want)| got != want && *got != 0);
        assert_eq!(
            wrong,
            None,
            "{what}: {} holds wrong content",
            path.display()
        );
    }
}

#[test]
fn pack_flipped_byte_is_reported_without_writing_wrong_content() {
    let fx = Fixture::new();
    let index = Repository::open_with_key(backend(&fx.repo_dir), fx.key.clone())
        .expect("open")
        .load_index()
        .expect("index");
    let packs = fx.objects("data/");
    assert!(packs.len() > 2, "fixture should span several packs");
    for object in packs {
        let id: PackId = object.rsplit('/').next().unwrap().parse().expect("pack id");
        // Blobs are stored back to back from offset 0; the sealed header
        // and its length follow. Restore reads only the blobs it needs (all
        // of them here: every blob belongs to the one snapshot).
        let blobs_end = index
            .blobs()
            .filter(|(_, loc)| loc.pack == id)
            .map(|(_, loc)| loc.offset as usize + loc.length as usize)
            .max()
            .expect("pack has blobs");
        for pos in positions(object_len(&fx, &object)) {
            let what = format!("{object} byte {pos}");
            let copy = fx.tampered(&object, pos);
            let repo = Repository::open_with_key(backend(copy.path()), fx.key.clone())
                .expect("open repository");
            let target = tempfile::tempdir().expect("tempdir");
            let result = restore_tree(&repo, &fx.tree, target.path());
            let restored = restored_path(target.path(), &fx.snapshot_path);
            match result {
                Err(err) => {
                    assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
                    assert!(
                        err.to_string().contains(&id.to_hex()),
                        "{what}: message does not name the pack: {err}"
                    );
                    assert_no_wrong_content(&fx, &restored, &what);
                }
                // A damaged blob costs the files using it: they are named,
                // with zeros where its content belongs, never wrong bytes.
                Ok(report) if !report.damaged_files.is_empty() => {
                    assert!(pos < blobs_end, "{what}: {report:?}");
                    for f in &report.damaged_files {
                        assert!(!f.missing, "{what}: {f:?}");
                        assert!(
                            f.error.contains(&id.to_hex()),
                            "{what}: message does not name the pack: {f:?}"
                        );
                    }
                    assert_no_wrong_content(&fx, &restored, &what);
                    // Zeros stand in for a damaged blob, so a damaged
                    // zero-filled file reads back right; any other damaged
                    // file must differ, or the report named the wrong file.
                    // (Which blob comes first in a pack varies run to run.)
                    let only_zero_files = report.damaged_files.iter().all(|f| {
                        fx.originals.iter().any(|(path, data)| {
                            Path::new(&f.path).ends_with(path) && data.iter().all(|&b| b == 0)
                        })
                    });
                    assert!(
                        only_zero_files || read_files(&restored) != fx.originals,
                        "{what}: damage reported, yet every file is right"
                    );
                }
                Ok(_) => {
                    // Only bytes restore never reads (the pack header and
                    // trailer) may go unnoticed, and then the content must
                    // be exactly right.
                    assert!(
                        pos >= blobs_end,
                        "{what}: damaged blob bytes restored without error"
                    );
                    assert!(
                        read_files(&restored) == fx.originals,
                        "{what}: restore succeeded with different content"
                    );
                }
            }
        }
    }
}
