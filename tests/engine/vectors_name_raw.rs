//! Golden vector for names that are not UTF-8 (repo-format.md §9): the
//! extended attribute's `name_raw` field, added within format v1 after the
//! v1 vectors were written, and a node's `name_raw`. A repository written
//! once by `vectors_name_raw_generate` is checked in under
//! `tests/vectors/v1-name-raw/repo` with `expected.json`: one snapshot of a
//! file named `caf\xe9.txt` carrying three attributes, two of whose names
//! (`user.caf\xe8`, `user.caf\xe9`) read the same in lossy UTF-8, so only
//! `name_raw` keeps them apart. Every later engine must read the exact
//! name bytes from the stored tree and restore the file under its exact
//! name, with its content and every attribute under its exact name.
//!
//! Same fixed key, KDF, chunker and pack size as `vectors` (v1). The
//! always-run test works on a temporary copy; the generator runs only with
//! `VAULT_WRITE_VECTORS=1` and refuses to overwrite the existing set.

use crate::support::{blake3_hex, restore_tree};
use crate::vectors::{
    GOLDEN_PASSWORD, back_up_golden, golden_key_bytes, init_golden, mtime_of, new_vector_set,
    open_single_snapshot, read_expected, write_expected,
};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file's name: Latin-1 `café.txt`.
const FILE_NAME: &[u8] = b"caf\xe9.txt";
const CONTENT: &[u8] = b"a file whose name and attribute names are not UTF-8\n";
const MODE: u32 = 0o640;
/// 2024-05-06T07:08:09Z, as the v1 vectors' first file.
const MTIME_SECS: i64 = 1_714_979_289;

/// The attributes: names as bytes, sorted as the writer sorts them. The
/// first two are both `user.caf\u{fffd}` in lossy UTF-8.
fn attributes() -> [(&'static [u8], &'static [u8]); 3] {
    [
        (b"user.caf\xe8", b"e-grave, Latin-1"),
        (b"user.caf\xe9", b"e-acute, Latin-1 \x00\xff"),
        (b"user.plain", b"a UTF-8 name"),
    ]
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/v1-name-raw")
}

/// `expected.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Expected {
    password: String,
    master_key_hex: String,
    snapshot_id: String,
    /// The snapshot's path: the directory holding the file.
    path: String,
    file: ExpectedFile,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExpectedFile {
    /// The file name's bytes.
    name_hex: String,
    size: u64,
    /// Plain BLAKE3 of the content.
    blake3: String,
    /// Octal permission bits.
    mode: String,
    mtime: String,
    /// Sorted by name bytes.
    xattrs: Vec<ExpectedXattr>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ExpectedXattr {
    name_hex: String,
    value_hex: String,
}

fn expected_xattrs() -> Vec<ExpectedXattr> {
    attributes()
        .iter()
        .map(|(name, value)| ExpectedXattr {
            name_hex: hex::encode(name),
            value_hex: hex::encode(value),
        })
        .collect()
}

#[test]
#[ignore = "writes tests/vectors/v1-name-raw; run once with VAULT_WRITE_VECTORS=1"]
fn vectors_name_raw_generate() {
    if std::env::var("VAULT_WRITE_VECTORS").as_deref() != Ok("1") {
        eprintln!("set VAULT_WRITE_VECTORS=1 to write tests/vectors/v1-name-raw");
        return;
    }
    let (repo_dir, expected_path) = new_vector_set(&vectors_dir());
    let work = tempfile::Builder::new()
        .prefix("vault-golden-name-raw-")
        .tempdir()
        .expect("tempdir");
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir tree");
    let file = tree.join(OsStr::from_bytes(FILE_NAME));
    std::fs::write(&file, CONTENT).expect("write file");
    for (name, value) in attributes() {
        xattr::set(&file, OsStr::from_bytes(name), value).expect("set attribute");
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(MODE)).expect("chmod");
    let t = filetime::FileTime::from_unix_time(MTIME_SECS, 0);
    filetime::set_file_times(&file, t, t).expect("set times");

    let repo = init_golden(&repo_dir);
    let report = back_up_golden(&repo, &tree, "name-raw", "2026-11-25T10:00:00+01:00")
        .expect("back up the golden tree");
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let meta = std::fs::metadata(&file).expect("stat");
    let expected = Expected {
        password: GOLDEN_PASSWORD.into(),
        master_key_hex: hex::encode(golden_key_bytes()),
        snapshot_id: report.snapshot_id.to_hex(),
        path: report.snapshot.paths[0].clone(),
        file: ExpectedFile {
            name_hex: hex::encode(FILE_NAME),
            size: CONTENT.len() as u64,
            blake3: blake3_hex(CONTENT),
            mode: format!("{:04o}", meta.mode() & 0o7777),
            mtime: mtime_of(&meta).to_string(),
            xattrs: expected_xattrs(),
        },
    };
    write_expected(&expected_path, &expected);
}

#[test]
fn vectors_name_raw_still_readable() {
    let dir = vectors_dir();
    let expected: Expected = read_expected(&dir);
    assert_eq!(expected.file.xattrs, expected_xattrs());
    let name = hex::decode(&expected.file.name_hex).expect("hex name");
    assert_eq!(name, FILE_NAME);

    let (_copy, repo, snapshot) = open_single_snapshot(
        &dir,
        &expected.password,
        &expected.snapshot_id,
        &expected.path,
    );

    // The stored tree: the exact bytes, in the fields the spec names.
    let index = repo.load_index().expect("load index");
    let path = [expected.path.as_bytes(), b"/", &name].concat();
    let node =
        vault_engine::restore::find_node(&repo, &index, &snapshot.tree, OsStr::from_bytes(&path))
            .expect("the file's node");
    assert_eq!(node.os_name().as_bytes(), FILE_NAME);
    assert_eq!(
        node.name_raw.as_deref(),
        Some(expected.file.name_hex.as_str())
    );
    let stored: Vec<ExpectedXattr> = node
        .extended_attributes
        .iter()
        .map(|x| ExpectedXattr {
            name_hex: hex::encode(x.os_name().as_bytes()),
            value_hex: hex::encode(x.value_bytes().expect("base64 value")),
        })
        .collect();
    assert_eq!(stored, expected.file.xattrs);
    let raw: Vec<Option<&str>> = node
        .extended_attributes
        .iter()
        .map(|x| x.name_raw.as_deref())
        .collect();
    assert_eq!(
        raw,
        [Some("757365722e636166e8"), Some("757365722e636166e9"), None],
        "name_raw only for the names that are not UTF-8"
    );

    // Restored: the exact name, content, mode, mtime and attributes.
    let target = tempfile::tempdir().expect("tempdir");
    let report = restore_tree(&repo, &snapshot.tree, target.path()).expect("restore");
    assert!(
        report.failed_entries.is_empty(),
        "{:?}",
        report.failed_entries
    );
    let restored = target
        .path()
        .join(expected.path.trim_start_matches('/'))
        .join(OsStr::from_bytes(&name));
    let data = std::fs::read(&restored).expect("the file under its exact name");
    assert_eq!(data.len() as u64, expected.file.size);
    assert_eq!(blake3_hex(&data), expected.file.blake3);
    let meta = std::fs::metadata(&restored).expect("stat");
    assert_eq!(format!("{:04o}", meta.mode() & 0o7777), expected.file.mode);
    assert_eq!(mtime_of(&meta).to_string(), expected.file.mtime);
    let mut on_disk: Vec<ExpectedXattr> = xattr::list(&restored)
        .expect("list attributes")
        .filter(|n| n.as_bytes().starts_with(b"user."))
        .map(|n| ExpectedXattr {
            value_hex: hex::encode(xattr::get(&restored, &n).expect("get").expect("present")),
            name_hex: hex::encode(n.as_bytes()),
        })
        .collect();
    on_disk.sort_by(|a, b| a.name_hex.cmp(&b.name_hex));
    assert_eq!(on_disk, expected.file.xattrs);
}
