//! Golden vector for Linux inode flags (repo-format.md §9): the node field
//! `inode_flags`, added within format v1 after the v1 vectors were written.
//! A repository written once by `vectors_inode_flags_generate` (as root, on
//! a file system with the flags) is checked in under
//! `tests/vectors/v1-inode-flags/repo` with `expected.json`: one snapshot of
//! a directory holding an append-only file, an immutable file and a nodump
//! directory with a plain file in it. Every later engine must read the
//! flags from the stored tree as Linux's `FS_*_FL` bits and, as root on
//! such a file system, restore them with the content.
//!
//! Same fixed key, KDF, chunker and pack size as `vectors` (v1). The
//! always-run test works on a temporary copy; the generator runs only with
//! `VAULT_WRITE_VECTORS=1` and refuses to overwrite the existing set.

use crate::support::{blake3_hex, restore_tree};
use crate::vectors::{
    GOLDEN_PASSWORD, back_up_golden, golden_key_bytes, init_golden, new_vector_set,
    open_single_snapshot, read_expected, write_expected,
};
use rustix::fs::IFlags;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The entries below the snapshot's directory: path, content (`None`: a
/// directory), `chattr` flags.
const ENTRIES: [(&str, Option<&[u8]>, u32); 4] = [
    (
        "append-only",
        Some(b"appended to, never rewritten\n" as &[u8]),
        0x20,
    ),
    ("immutable", Some(b"never changed\n" as &[u8]), 0x10),
    ("nodump", None, 0x40),
    ("nodump/plain", Some(b"no flags of its own\n" as &[u8]), 0),
];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/v1-inode-flags")
}

/// `expected.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Expected {
    password: String,
    master_key_hex: String,
    snapshot_id: String,
    /// The snapshot's path: the directory holding the entries.
    path: String,
    entries: Vec<ExpectedEntry>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ExpectedEntry {
    /// Relative to `path`.
    path: String,
    /// Plain BLAKE3 of a file's content; absent for a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
    /// The node's `inode_flags`.
    inode_flags: u32,
}

fn expected_entries() -> Vec<ExpectedEntry> {
    ENTRIES
        .iter()
        .map(|(path, content, flags)| ExpectedEntry {
            path: (*path).to_owned(),
            blake3: content.map(blake3_hex),
            inode_flags: *flags,
        })
        .collect()
}

fn flags_of(path: &Path) -> rustix::io::Result<u32> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(rustix::fs::ioctl_getflags(&fd)?.bits())
}

fn add_flags(path: &Path, flags: u32) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let current = rustix::fs::ioctl_getflags(&fd)?;
    rustix::fs::ioctl_setflags(&fd, current | IFlags::from_bits_retain(flags))
}

/// Takes immutable and append-only off every entry below `dir`, which can
/// then be removed.
fn clear_flags(dir: &Path) {
    let _ = std::process::Command::new("chattr")
        .args(["-R", "-f", "-i", "-a"])
        .arg(dir)
        .status();
}

#[test]
#[ignore = "writes tests/vectors/v1-inode-flags; run once as root with VAULT_WRITE_VECTORS=1"]
fn vectors_inode_flags_generate() {
    if std::env::var("VAULT_WRITE_VECTORS").as_deref() != Ok("1") {
        eprintln!("set VAULT_WRITE_VECTORS=1 to write tests/vectors/v1-inode-flags");
        return;
    }
    let (repo_dir, expected_path) = new_vector_set(&vectors_dir());
    let work = tempfile::Builder::new()
        .prefix("vault-golden-inode-flags-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir tree");
    for (path, content, _) in ENTRIES {
        match content {
            Some(data) => std::fs::write(tree.join(path), data).expect("write file"),
            None => std::fs::create_dir(tree.join(path)).expect("mkdir"),
        }
    }
    for (path, _, flags) in ENTRIES.iter().filter(|e| e.2 != 0) {
        add_flags(&tree.join(path), *flags).expect("chattr: needs root and ext4, xfs or btrfs");
    }

    let repo = init_golden(&repo_dir);
    let report = back_up_golden(&repo, &tree, "inode-flags", "2026-11-25T13:00:00+01:00");
    clear_flags(&tree);
    let report = report.expect("back up the golden tree");
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let expected = Expected {
        password: GOLDEN_PASSWORD.into(),
        master_key_hex: hex::encode(golden_key_bytes()),
        snapshot_id: report.snapshot_id.to_hex(),
        path: report.snapshot.paths[0].clone(),
        entries: expected_entries(),
    };
    write_expected(&expected_path, &expected);
}

#[test]
fn vectors_inode_flags_still_readable() {
    let dir = vectors_dir();
    let expected: Expected = read_expected(&dir);
    assert_eq!(expected.entries, expected_entries());

    let (_copy, repo, snapshot) = open_single_snapshot(
        &dir,
        &expected.password,
        &expected.snapshot_id,
        &expected.path,
    );

    // The stored tree: Linux's bits, in the field the spec names.
    let index = repo.load_index().expect("load index");
    for entry in &expected.entries {
        let path = format!("{}/{}", expected.path, entry.path);
        let node =
            vault_engine::restore::find_node(&repo, &index, &snapshot.tree, OsStr::new(&path))
                .expect("the entry's node");
        assert_eq!(node.inode_flags, entry.inode_flags, "{}", entry.path);
    }

    // Restored: the content always; the flags as root where the target's
    // file system has them (not tmpfs), as every other root restore.
    let target = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let report = restore_tree(&repo, &snapshot.tree, target.path());
    let restored = target.path().join(expected.path.trim_start_matches('/'));
    let flags: Vec<rustix::io::Result<u32>> = (expected.entries.iter())
        .map(|e| flags_of(&restored.join(&e.path)))
        .collect();
    let contents: Vec<Option<String>> = (expected.entries.iter())
        .map(|e| {
            e.blake3
                .as_ref()
                .map(|_| blake3_hex(&std::fs::read(restored.join(&e.path)).expect("read")))
        })
        .collect();
    clear_flags(target.path());
    let report = report.expect("restore");
    let blake3: Vec<Option<String>> = expected.entries.iter().map(|e| e.blake3.clone()).collect();
    assert_eq!(contents, blake3);
    let probe = target.path().join("probe");
    std::fs::write(&probe, b"").expect("probe");
    if !nix::unistd::geteuid().is_root() || add_flags(&probe, 0x40).is_err() {
        eprintln!(
            "NOTICE: flags not checked: needs root and a file system with them under /var/tmp"
        );
        return;
    }
    assert!(
        report.failed_entries.is_empty(),
        "{:?}",
        report.failed_entries
    );
    for (entry, flags) in expected.entries.iter().zip(flags) {
        let flags = flags.expect("read the restored flags");
        let recorded = flags & vault_engine::tree::RECORDED_INODE_FLAGS;
        assert_eq!(recorded, entry.inode_flags, "{}", entry.path);
    }
}
