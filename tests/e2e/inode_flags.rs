//! Linux inode flags (`chattr`: immutable, append-only, nodump, ...) are
//! saved in the tree node's `inode_flags` and restored last on each entry,
//! as root only (repo-format.md §9, §9.1). They were neither, silently.
//!
//! Root only, on a file system that has the flags: the trees live under
//! /var/tmp (ext4 or xfs on most systems; tmpfs, where /tmp often is, has
//! only a few). Where `chattr` is refused the test prints a NOTICE and
//! passes. Everything made immutable or append-only is made mutable again
//! before its directory is removed ([`FlagDir`]).

use crate::support::{Env, as_unprivileged, assert_code, assert_success, is_root, stderr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary directory under /var/tmp whose entries may carry flags:
/// `chattr -R -i -a` before it is removed, or no test could remove it.
struct FlagDir(tempfile::TempDir);

impl FlagDir {
    /// `None`, with a NOTICE, when not root or where `chattr +i` and
    /// `lsattr` do not work.
    fn new() -> Option<Self> {
        if !is_root() {
            eprintln!("NOTICE: skipping: inode flags need root (CAP_LINUX_IMMUTABLE)");
            return None;
        }
        let dir = FlagDir(tempfile::tempdir_in("/var/tmp").ok()?);
        let probe = dir.path("probe");
        std::fs::write(&probe, b"").unwrap();
        let works = chattr("+i", &probe) && attrs(&probe).contains('i');
        chattr("-i", &probe);
        if !works {
            eprintln!("NOTICE: skipping: `chattr +i` or `lsattr` does not work under /var/tmp");
            return None;
        }
        std::fs::remove_file(&probe).unwrap();
        Some(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }
}

impl Drop for FlagDir {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .args(["-R", "-f", "-i", "-a"])
            .arg(self.0.path())
            .status();
    }
}

fn chattr(change: &str, path: &Path) -> bool {
    Command::new("chattr")
        .arg(change)
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The flag letters `lsattr -d` shows for `path` (`-` for each unset).
fn attrs(path: &Path) -> String {
    let out = Command::new("lsattr").arg("-d").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Of `attrs`, only the letters these tests set.
fn tested(path: &Path) -> String {
    attrs(path)
        .chars()
        .filter(|c| "iadA".contains(*c))
        .collect()
}

/// The source: an immutable file with a second name, an append-only log,
/// a no-atime file, a nodump directory, and a plain file in it.
fn make_source(dir: &FlagDir) -> PathBuf {
    let src = dir.path("src");
    std::fs::create_dir_all(src.join("nodump")).unwrap();
    std::fs::write(src.join("locked"), b"immutable").unwrap();
    std::fs::hard_link(src.join("locked"), src.join("locked-too")).unwrap();
    std::fs::write(src.join("log"), b"append only").unwrap();
    std::fs::write(src.join("noatime"), b"no atime").unwrap();
    std::fs::write(src.join("nodump/plain"), b"plain").unwrap();
    for (change, rel) in [
        ("+i", "locked"),
        ("+a", "log"),
        ("+A", "noatime"),
        ("+d", "nodump"),
    ] {
        assert!(chattr(change, &src.join(rel)), "chattr {change} {rel}");
    }
    src
}

/// `vault restore latest --target TARGET EXTRA...`.
fn restore(env: &Env, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.vault(&args)
}

/// The source's entries with flags, and the `lsattr` letter of each.
const ENTRIES: [(&str, &str); 5] = [
    ("locked", "i"),
    ("locked-too", "i"),
    ("log", "a"),
    ("noatime", "A"),
    ("nodump", "d"),
];

/// Backed up as `inode_flags` (Linux's bits), restored with their flags
/// and content into a fresh target; a restore over them with
/// `--overwrite always` is refused the immutable and append-only ones,
/// saying so and how to clear them, and repairs the rest.
#[test]
fn inode_flags_are_backed_up_and_restored() {
    let Some(dir) = FlagDir::new() else {
        return;
    };
    let env = Env::new();
    let src = make_source(&dir);
    let out = env.vault(&["backup", src.to_str().unwrap()]);
    assert_success(&out);
    let nodes = env.tree_nodes(&format!("latest:{}", src.display()));
    let flags: Vec<(&str, u64)> = nodes
        .iter()
        .map(|n| {
            let name = n["name"].as_str().unwrap();
            (name, n["inode_flags"].as_u64().unwrap_or(0))
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("locked", 0x10),
            ("locked-too", 0x10),
            ("log", 0x20),
            ("noatime", 0x80),
            ("nodump", 0x40)
        ]
    );
    let plain = env.tree_nodes(&format!("latest:{}/nodump", src.display()));
    assert!(plain[0].get("inode_flags").is_none(), "{plain:?}");

    let target = dir.path("r");
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_success(&restore(&env, &target, &[]));
    for (rel, letter) in ENTRIES {
        assert_eq!(tested(&restored.join(rel)), letter, "{rel}");
        if rel != "nodump" {
            assert_eq!(
                std::fs::read(restored.join(rel)).unwrap(),
                std::fs::read(src.join(rel)).unwrap(),
                "{rel}"
            );
        }
    }
    assert_eq!(tested(&restored.join("nodump/plain")), "");
    assert_eq!(
        std::fs::read(restored.join("nodump/plain")).unwrap(),
        b"plain"
    );
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    assert_eq!(
        inode(&restored.join("locked")),
        inode(&restored.join("locked-too"))
    );

    // Over what it restored: the immutable and append-only entries refuse
    // to be replaced, and are named with the flag and its remedy.
    std::fs::write(restored.join("nodump/plain"), b"CORRUPT").unwrap();
    let out = restore(&env, &target, &["--overwrite", "always"]);
    assert_code(&out, 3);
    let err = stderr(&out);
    for (rel, adjective, letter) in [("locked", "immutable", 'i'), ("log", "append-only", 'a')] {
        let path = restored.join(rel);
        assert!(
            err.contains(&format!(
                "it is {adjective} (`lsattr` shows `{letter}`): `chattr -{letter} {}`",
                path.display()
            )),
            "{rel}: {err}"
        );
        assert_eq!(tested(&path), letter.to_string(), "{rel}");
    }
    assert_eq!(
        std::fs::read(restored.join("nodump/plain")).unwrap(),
        b"plain"
    );
}

/// `--overwrite if-changed` finds a flag gone and adds it again (a dry
/// run reports it only); as non-root, flags are not restored, silently,
/// as owners are not.
#[test]
fn inode_flags_are_repaired_in_place_and_left_out_by_non_root() {
    let Some(dir) = FlagDir::new() else {
        return;
    };
    let env = Env::new();
    let src = make_source(&dir);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = dir.path("r");
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_success(&restore(&env, &target, &[]));
    assert!(chattr("-d", &restored.join("nodump")));
    let out = restore(
        &env,
        &target,
        &["--overwrite", "if-changed", "--dry-run", "-v"],
    );
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "would update {} (flags)",
            restored.join("nodump").display()
        )),
        "{text}"
    );
    assert_eq!(tested(&restored.join("nodump")), "");
    let out = restore(&env, &target, &["--overwrite", "if-changed", "-v"]);
    assert_success(&out);
    assert_eq!(tested(&restored.join("nodump")), "d");

    // As nobody, into a directory nobody owns.
    let parent = dir.path("nobodys");
    std::fs::create_dir_all(&parent).unwrap();
    for p in [dir.0.path(), parent.as_path()] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let target = parent.join("r");
    let mut cmd = env.command(&["restore", "latest", "--target", target.to_str().unwrap()]);
    as_unprivileged(&env, &mut cmd);
    let out = cmd.output().unwrap();
    assert_success(&out);
    let restored = target.join(src.strip_prefix("/").unwrap());
    for (rel, _) in ENTRIES {
        assert_eq!(tested(&restored.join(rel)), "", "{rel}");
    }
    assert_eq!(std::fs::read(restored.join("log")).unwrap(), b"append only");
}

/// An unchanged file's flags come from the parent snapshot (no open and
/// ioctl per file: a third more time for an unchanged re-backup), which
/// says it recorded them; changing a file's flags changes its ctime, so the
/// next backup reads them again.
#[test]
fn an_unchanged_file_keeps_its_flags_and_a_changed_one_is_read_again() {
    let Some(dir) = FlagDir::new() else {
        return;
    };
    let env = Env::new();
    let src = make_source(&dir);
    let flags_of = |name: &str| {
        let nodes = env.tree_nodes(&format!("latest:{}", src.display()));
        let node = nodes.iter().find(|n| n["name"] == name).unwrap();
        node["inode_flags"].as_u64().unwrap_or(0)
    };
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_eq!(env.snapshots()[0]["inode_flags"], true);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_eq!((flags_of("locked"), flags_of("log")), (0x10, 0x20));
    assert!(chattr("-a", &src.join("log")));
    let out = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(out["files_unmodified"].as_u64(), Some(4), "{out}");
    assert_eq!((flags_of("locked"), flags_of("log")), (0x10, 0));
}
