//! Golden vectors: guards the on-storage format (repo-format.md) against
//! accidental change. A repository written once by `vectors_generate` is
//! checked in under `tests/vectors/v1/repo`, together with
//! `tests/vectors/v1/expected.json` (what it must restore to: BLAKE3 of
//! every file, sizes, modes, mtimes, the symlink target, snapshot ids, tags
//! and times) and a README describing how it was made. Every later engine must
//! still open it with the password *and* with the raw master key, list the
//! same snapshots and restore the same bytes and metadata.
//!
//! Fixture: fixed master key (bytes 0x00..=0x3f), fixed chunker
//! (64/256/1024, seed 0x0123456789abcdef), 4 KiB packs, the cheapest argon2id
//! and the password `vault-golden-vector`, on the local backend. Snapshot one
//! is a generated tree (compressible text, pseudo-random bytes, an empty file,
//! zeros, a subdirectory and a symlink; fixed modes and mtimes), snapshot two
//! a stream. The always-run test works on a temporary copy and never writes
//! to `tests/vectors`; the generator runs only with `VAULT_WRITE_VECTORS=1`
//! and refuses to overwrite an existing vector set.

use crate::support::{blake3_hex, random_bytes, restore_tree, restored_path, text_bytes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vault_engine::ErrorKind;
use vault_engine::backend::LocalBackend;
use vault_engine::backup::{self, BackupOptions, BackupProgress, Source};
use vault_engine::chunker::ChunkerParams;
use vault_engine::crypto::{KdfParams, MasterKey, Password};
use vault_engine::repository::{InitOptions, Repository};

pub(crate) const GOLDEN_PASSWORD: &str = "vault-golden-vector";
const GOLDEN_CHUNKER: ChunkerParams = ChunkerParams {
    min_size: 64,
    avg_size: 256,
    max_size: 1024,
    seed: 0x0123_4567_89ab_cdef,
};
const GOLDEN_KDF: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};
const GOLDEN_PACK_SIZE: u32 = 4096;
const STREAM_NAME: &str = "golden-stream.bin";

/// The fixed master key: byte `i` is `i` (encryption key 0x00..=0x1f, id key
/// 0x20..=0x3f).
pub(crate) fn golden_key_bytes() -> [u8; 64] {
    std::array::from_fn(|i| u8::try_from(i).expect("below 64"))
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/v1")
}

/// `expected.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Expected {
    password: String,
    master_key_hex: String,
    repository_id: String,
    chunker: ChunkerParams,
    pack_size: u32,
    kdf: KdfParams,
    snapshots: Vec<ExpectedSnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExpectedSnapshot {
    id: String,
    /// RFC 3339 with the writer's offset.
    time: String,
    offset_seconds: i32,
    hostname: String,
    username: String,
    tags: Vec<String>,
    paths: Vec<String>,
    /// Every node below (and including) each of `paths`, by absolute
    /// snapshot path.
    entries: Vec<ExpectedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExpectedEntry {
    path: String,
    /// `file`, `dir` or `symlink`.
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
    /// Octal permission bits, e.g. `0644` (files and directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    mtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

pub(crate) fn mtime_of(meta: &std::fs::Metadata) -> jiff::Timestamp {
    let nanos = i32::try_from(meta.mtime_nsec()).expect("nanoseconds fit");
    jiff::Timestamp::new(meta.mtime(), nanos).expect("valid mtime")
}

fn entry_from_disk(snapshot_path: String, on_disk: &Path) -> ExpectedEntry {
    let meta =
        std::fs::symlink_metadata(on_disk).unwrap_or_else(|e| panic!("{}: {e}", on_disk.display()));
    let mode = Some(format!("{:04o}", meta.mode() & 0o7777));
    let mtime = mtime_of(&meta).to_string();
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(on_disk).expect("read link");
        ExpectedEntry {
            path: snapshot_path,
            kind: "symlink".into(),
            size: None,
            blake3: None,
            mode: None,
            mtime,
            target: Some(target.to_str().expect("UTF-8 target").to_owned()),
        }
    } else if meta.is_dir() {
        ExpectedEntry {
            path: snapshot_path,
            kind: "dir".into(),
            size: None,
            blake3: None,
            mode,
            mtime,
            target: None,
        }
    } else {
        let data = std::fs::read(on_disk).expect("read file");
        ExpectedEntry {
            path: snapshot_path,
            kind: "file".into(),
            size: Some(data.len() as u64),
            blake3: Some(blake3_hex(&data)),
            mode,
            mtime,
            target: None,
        }
    }
}

/// Every path at or below `root_fs`, as snapshot paths below `root_snap`.
fn collect_paths(root_fs: &Path, root_snap: &str, out: &mut BTreeSet<String>) {
    out.insert(root_snap.to_owned());
    let meta =
        std::fs::symlink_metadata(root_fs).unwrap_or_else(|e| panic!("{}: {e}", root_fs.display()));
    if meta.is_dir() {
        for entry in std::fs::read_dir(root_fs).expect("list directory") {
            let entry = entry.expect("entry");
            let name = entry.file_name();
            let name = name.to_str().expect("UTF-8 names");
            collect_paths(&entry.path(), &format!("{root_snap}/{name}"), out);
        }
    }
}

pub(crate) fn snapshot_time(rfc3339_with_offset: &str, offset_hours: i8) -> jiff::Zoned {
    let ts: jiff::Timestamp = rfc3339_with_offset.parse().expect("valid time");
    ts.to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(offset_hours)))
}

/// Builds the source tree. Modes and times are fixed so the expected
/// metadata does not depend on the umask or the clock.
fn make_golden_tree(root: &Path) {
    use crate::support::write_file;
    let base = 1_714_979_289; // 2024-05-06T07:08:09Z
    let mut nested = text_bytes(1500);
    nested.extend_from_slice(&random_bytes(0x0005_eb0d, 1500));
    let files: [(&str, Vec<u8>, u32); 5] = [
        ("compressible.txt", text_bytes(6000), 0o644),
        ("random.bin", random_bytes(0x601d, 5000), 0o600),
        ("empty", Vec::new(), 0o644),
        ("sub/nested.txt", nested, 0o640),
        ("sub/zeros.bin", vec![0u8; 2048], 0o644),
    ];
    for (i, (name, data, mode)) in files.iter().enumerate() {
        let path = root.join(name);
        write_file(&path, data);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        let t = filetime::FileTime::from_unix_time(base + 60 * i as i64, 0);
        filetime::set_file_times(&path, t, t).expect("set times");
    }
    let link = root.join("link");
    std::os::unix::fs::symlink("sub/nested.txt", &link).expect("symlink");
    let t = filetime::FileTime::from_unix_time(base + 600, 0);
    filetime::set_symlink_file_times(&link, t, t).expect("set link times");
    for (dir, mode, offset) in [("sub", 0o750, 700), ("", 0o755, 800)] {
        let path = root.join(dir);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let t = filetime::FileTime::from_unix_time(base + offset, 0);
        filetime::set_file_times(&path, t, t).expect("set dir times");
    }
}

fn stream_content() -> Vec<u8> {
    let mut data = text_bytes(2500);
    data.extend_from_slice(&random_bytes(0x57ea, 2500));
    data
}

/// The repository and `expected.json` paths of a new vector set in `dir`,
/// which is created; refuses to overwrite a set already there, since it
/// pins the format.
pub(crate) fn new_vector_set(dir: &Path) -> (PathBuf, PathBuf) {
    let repo_dir = dir.join("repo");
    let expected_path = dir.join("expected.json");
    assert!(
        !repo_dir.exists() && !expected_path.exists(),
        "refusing to overwrite the existing golden vectors in {}: they pin the format; \
         make a new version directory instead",
        dir.display()
    );
    std::fs::create_dir_all(dir).expect("create vectors dir");
    (repo_dir, expected_path)
}

/// Backs up `tree` into a golden repository as the vector sets after v1
/// do: one path, host and user `golden`, tagged `tag`, at `time` (UTC+1).
pub(crate) fn back_up_golden(
    repo: &Arc<Repository>,
    tree: &Path,
    tag: &str,
    time: &str,
) -> vault_engine::Result<backup::BackupReport> {
    backup::backup(
        repo,
        Source::Paths(vec![tree.to_owned()]),
        &BackupOptions {
            hostname: "golden".into(),
            username: "golden".into(),
            tags: vec![tag.into()],
            time: Some(snapshot_time(time, 1)),
            upload_concurrency: 1,
            ..BackupOptions::default()
        },
        &BackupProgress::default(),
    )
}

/// `dir/expected.json` of a vector set.
pub(crate) fn read_expected<T: serde::de::DeserializeOwned>(dir: &Path) -> T {
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("read expected.json"))
        .expect("parse expected.json")
}

/// Writes a vector set's `expected.json` (pretty, newline-terminated).
pub(crate) fn write_expected(path: &Path, expected: &impl Serialize) {
    let mut json = serde_json::to_string_pretty(expected).expect("serialise");
    json.push('\n');
    std::fs::write(path, json).expect("write expected.json");
}

/// A vector set's repository (`dir/repo`), copied to a temporary directory
/// and opened with `password`: it must hold one snapshot, `snapshot_id`,
/// of `path`. Returns the copy (removed when dropped), the repository and
/// the snapshot.
pub(crate) fn open_single_snapshot(
    dir: &Path,
    password: &str,
    snapshot_id: &str,
    path: &str,
) -> (
    tempfile::TempDir,
    Repository,
    vault_engine::snapshot::Snapshot,
) {
    let copy = tempfile::tempdir().expect("tempdir");
    crate::support::copy_dir(&dir.join("repo"), copy.path());
    let repo = Repository::open(
        Arc::new(LocalBackend::new(copy.path())),
        &Password::new(password),
    )
    .expect("open the golden repository");
    let mut snapshots = repo.snapshots().expect("list snapshots");
    assert_eq!(snapshots.len(), 1);
    let (id, snapshot) = snapshots.remove(0);
    assert_eq!(id.to_hex(), snapshot_id);
    assert_eq!(snapshot.paths, [path]);
    (copy, repo, snapshot)
}

/// A new repository in `repo_dir` with the golden password, master key,
/// KDF, chunker and pack size, host and user `golden`.
pub(crate) fn init_golden(repo_dir: &Path) -> Arc<Repository> {
    let repo = Repository::init(
        Arc::new(LocalBackend::new(repo_dir)),
        &Password::new(GOLDEN_PASSWORD),
        InitOptions {
            kdf: GOLDEN_KDF,
            chunker: Some(GOLDEN_CHUNKER),
            pack_size: Some(GOLDEN_PACK_SIZE),
            master_key: Some(MasterKey::from_bytes(&golden_key_bytes())),
            hostname: "golden".into(),
            username: "golden".into(),
            object_lock: None,
        },
    )
    .expect("init golden repository");
    Arc::new(repo)
}

#[test]
#[ignore = "writes tests/vectors/v1; run once with VAULT_WRITE_VECTORS=1"]
fn vectors_generate() {
    if std::env::var("VAULT_WRITE_VECTORS").as_deref() != Ok("1") {
        eprintln!("vectors_generate: set VAULT_WRITE_VECTORS=1 to write tests/vectors/v1");
        return;
    }
    let (repo_dir, expected_path) = new_vector_set(&vectors_dir());
    let work = tempfile::Builder::new()
        .prefix("vault-golden-v1-")
        .tempdir()
        .expect("tempdir");
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir tree");
    make_golden_tree(&tree);

    let repo = init_golden(&repo_dir);

    let tree_options = BackupOptions {
        hostname: "golden".into(),
        username: "golden".into(),
        tags: vec!["v1".into()],
        time: Some(snapshot_time("2024-05-06T09:30:00+02:00", 2)),
        upload_concurrency: 1,
        ..BackupOptions::default()
    };
    let first = backup::backup(
        &repo,
        Source::Paths(vec![tree.clone()]),
        &tree_options,
        &BackupProgress::default(),
    )
    .expect("back up golden tree");
    assert!(first.errors.is_empty(), "{:?}", first.errors);

    let stream_options = BackupOptions {
        tags: vec!["v1".into(), "stream".into()],
        time: Some(snapshot_time("2024-05-06T09:45:00+02:00", 2)),
        ..tree_options.clone()
    };
    let second = backup::backup(
        &repo,
        Source::Stream {
            filename: STREAM_NAME.into(),
            reader: Box::new(std::io::Cursor::new(stream_content())),
        },
        &stream_options,
        &BackupProgress::default(),
    )
    .expect("back up golden stream");

    // Entries of the tree snapshot, from the source on disk.
    let tree_snap_path = first.snapshot.paths[0].clone();
    let mut paths = BTreeSet::new();
    collect_paths(&tree, &tree_snap_path, &mut paths);
    let tree_entries = paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&tree_snap_path).expect("below root");
            let on_disk = tree.join(rel.trim_start_matches('/'));
            entry_from_disk(p, &on_disk)
        })
        .collect();

    // The stream node's mtime is the backup time; take it from the tree.
    let index = repo.load_index().expect("load index");
    let stream_path = second.snapshot.paths[0].clone();
    let node = vault_engine::restore::find_node(&repo, &index, &second.snapshot.tree, &stream_path)
        .expect("stream node");
    let data = stream_content();
    let stream_entry = ExpectedEntry {
        path: stream_path,
        kind: "file".into(),
        size: Some(data.len() as u64),
        blake3: Some(blake3_hex(&data)),
        mode: Some(format!("{:04o}", node.mode)),
        mtime: node.mtime.to_string(),
        target: None,
    };

    let describe = |report: &backup::BackupReport, entries| ExpectedSnapshot {
        id: report.snapshot_id.to_hex(),
        time: report
            .snapshot
            .time
            .timestamp()
            .display_with_offset(report.snapshot.time.offset())
            .to_string(),
        offset_seconds: report.snapshot.time.offset().seconds(),
        hostname: report.snapshot.hostname.clone(),
        username: report.snapshot.username.clone(),
        tags: report.snapshot.tags.clone(),
        paths: report.snapshot.paths.clone(),
        entries,
    };
    let expected = Expected {
        password: GOLDEN_PASSWORD.into(),
        master_key_hex: hex::encode(golden_key_bytes()),
        repository_id: repo.config().id.clone(),
        chunker: GOLDEN_CHUNKER,
        pack_size: GOLDEN_PACK_SIZE,
        kdf: GOLDEN_KDF,
        snapshots: vec![
            describe(&first, tree_entries),
            describe(&second, vec![stream_entry]),
        ],
    };
    let mut json = serde_json::to_string_pretty(&expected).expect("serialise");
    json.push('\n');
    std::fs::write(&expected_path, json).expect("write expected.json");
}

/// Checks a restored snapshot against its expected entries.
fn check_restored(label: &str, target: &Path, snap: &ExpectedSnapshot) {
    let mut found = BTreeSet::new();
    for root in &snap.paths {
        collect_paths(&restored_path(target, root), root, &mut found);
    }
    let wanted: BTreeSet<String> = snap.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(found, wanted, "{label}: restored paths differ");
    for entry in &snap.entries {
        let path = restored_path(target, &entry.path);
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("{label}: {}: {e}", path.display()));
        let what = format!("{label}: {}", entry.path);
        let mtime: jiff::Timestamp = entry.mtime.parse().expect("expected mtime");
        assert_eq!(mtime_of(&meta), mtime, "{what}: mtime");
        if let Some(mode) = &entry.mode {
            let mode = u32::from_str_radix(mode, 8).expect("octal mode");
            assert_eq!(meta.mode() & 0o7777, mode, "{what}: mode");
        }
        match entry.kind.as_str() {
            "file" => {
                assert!(meta.is_file(), "{what}: not a file");
                let data = std::fs::read(&path).expect("read restored file");
                assert_eq!(Some(data.len() as u64), entry.size, "{what}: size");
                assert_eq!(Some(blake3_hex(&data)), entry.blake3, "{what}: content");
            }
            "dir" => assert!(meta.is_dir(), "{what}: not a directory"),
            "symlink" => {
                assert!(meta.file_type().is_symlink(), "{what}: not a symlink");
                let target = std::fs::read_link(&path).expect("read link");
                assert_eq!(target.to_str(), entry.target.as_deref(), "{what}: target");
            }
            other => panic!("{what}: unknown kind {other}"),
        }
    }
}

fn check_repository(label: &str, repo: &Repository, expected: &Expected) {
    let config = repo.config();
    assert_eq!(config.version, 1, "{label}: format version");
    assert_eq!(config.id, expected.repository_id, "{label}: repository id");
    assert_eq!(config.chunker, expected.chunker, "{label}: chunker");
    assert_eq!(config.pack_size, expected.pack_size, "{label}: pack size");

    let snapshots = repo.snapshots().expect("list golden snapshots");
    let ids: Vec<String> = snapshots.iter().map(|(id, _)| id.to_hex()).collect();
    let want: Vec<String> = expected.snapshots.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, want, "{label}: snapshot ids (oldest first)");

    for ((_, snap), exp) in snapshots.iter().zip(&expected.snapshots) {
        let what = format!("{label}: snapshot {}", &exp.id[..8]);
        let time: jiff::Timestamp = exp.time.parse().expect("expected time");
        assert_eq!(snap.time.timestamp(), time, "{what}: time");
        assert_eq!(
            snap.time.offset().seconds(),
            exp.offset_seconds,
            "{what}: offset"
        );
        assert_eq!(snap.hostname, exp.hostname, "{what}: hostname");
        assert_eq!(snap.username, exp.username, "{what}: username");
        assert_eq!(snap.tags, exp.tags, "{what}: tags");
        assert_eq!(snap.paths, exp.paths, "{what}: paths");

        let target = tempfile::tempdir().expect("tempdir");
        restore_tree(repo, &snap.tree, target.path())
            .unwrap_or_else(|e| panic!("{what}: restore failed: {e}"));
        check_restored(&what, target.path(), exp);
    }
}

#[test]
fn vectors_v1_still_readable() {
    let dir = vectors_dir();
    let checked_in = dir.join("repo");
    assert!(
        checked_in.join("config").is_file(),
        "golden repository missing at {}; it is generated once (vectors_generate) and \
         checked in, never regenerated by tests",
        checked_in.display()
    );
    let expected: Expected = serde_json::from_slice(
        &std::fs::read(dir.join("expected.json")).expect("read expected.json"),
    )
    .expect("parse expected.json");
    assert_eq!(expected.master_key_hex, hex::encode(golden_key_bytes()));

    // Work on a copy so nothing the engine might write (locks, caches)
    // can ever alter the checked-in vectors.
    let copy = tempfile::tempdir().expect("tempdir");
    crate::support::copy_dir(&checked_in, copy.path());
    let backend = || Arc::new(LocalBackend::new(copy.path()));

    let err = Repository::open(backend(), &Password::new("not the golden password"))
        .expect_err("a wrong password must not open the golden repository");
    assert_eq!(err.kind(), ErrorKind::WrongPassword, "{err}");

    let by_password = Repository::open(backend(), &Password::new(expected.password.as_str()))
        .expect("open golden repository with its password");
    assert_eq!(
        *by_password.key().to_bytes(),
        golden_key_bytes(),
        "the key file must unwrap the fixed master key"
    );
    check_repository("password", &by_password, &expected);

    let by_key = Repository::open_with_key(backend(), MasterKey::from_bytes(&golden_key_bytes()))
        .expect("open golden repository with the master key");
    check_repository("master key", &by_key, &expected);
}
