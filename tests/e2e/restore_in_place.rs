//! Restoring over a target that holds entries already: which of them
//! `--overwrite if-newer` replaces, and what `--delete` removes when
//! `SNAPSHOT:DIR` makes a directory's content the target's. Each test
//! backs up a small tree, lays out by hand what the target holds before the
//! restore (times set with `filetime`), and checks the target after it.

use crate::support::{Env, assert_success, nest_dirs, stderr, with_open_file_limit};
use filetime::FileTime;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The time every backed-up entry carries.
const SNAPSHOT_SECS: i64 = 1_700_000_000;

fn set_mtime(path: &Path, secs: i64) {
    let t = FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// restic 0.17's `--overwrite if-newer`: an entry is replaced only where
/// the snapshot's mtime is later than the target's; one as new (same
/// mtime) or newer is left as it is, mode included; a missing one is
/// created.
#[test]
fn if_newer_replaces_only_what_the_snapshot_has_newer() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for name in ["newer", "older", "same", "missing"] {
        std::fs::write(src.join(name), format!("snapshot {name}")).unwrap();
    }
    std::os::unix::fs::symlink("snapshot-target", src.join("link")).unwrap();
    for name in ["newer", "older", "same", "missing", "link"] {
        set_mtime(&src.join(name), SNAPSHOT_SECS);
    }
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));

    let target = env.path("t");
    let root = target.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&root).unwrap();
    for name in ["newer", "older", "same"] {
        std::fs::write(root.join(name), "local").unwrap();
        std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::os::unix::fs::symlink("local-target", root.join("link")).unwrap();
    set_mtime(&root.join("newer"), SNAPSHOT_SECS + 100);
    set_mtime(&root.join("older"), SNAPSHOT_SECS - 100);
    set_mtime(&root.join("same"), SNAPSHOT_SECS);
    set_mtime(&root.join("link"), SNAPSHOT_SECS + 100);

    let t = target.to_str().unwrap();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "if-newer",
        ];
        args.extend_from_slice(extra);
        env.json(&args)
    };
    let dry = restore(&["--dry-run"]);
    assert_eq!(
        (dry["files"].as_u64(), dry["kept"].as_u64()),
        (Some(2), Some(3)),
        "{dry}"
    );
    assert_eq!(std::fs::read(root.join("older")).unwrap(), b"local");

    let report = restore(&[]);
    assert_eq!(
        (report["files"].as_u64(), report["kept"].as_u64()),
        (Some(2), Some(3)),
        "{report}"
    );
    for kept in ["newer", "same"] {
        let path = root.join(kept);
        assert_eq!(std::fs::read(&path).unwrap(), b"local", "{kept}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{kept}: mode reapplied"
        );
    }
    assert_eq!(
        std::fs::read_link(root.join("link")).unwrap(),
        Path::new("local-target")
    );
    for restored in ["older", "missing"] {
        let path = root.join(restored);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            format!("snapshot {restored}").as_bytes()
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            FileTime::from_last_modification_time(&meta).unix_seconds(),
            SNAPSHOT_SECS
        );
    }
    // Kept entries are the snapshot's names still: --delete leaves them.
    std::fs::write(root.join("extra"), "not in the snapshot").unwrap();
    let report = restore(&["--delete"]);
    assert_eq!(report["deleted"], 1, "{report}");
    assert!(!root.join("extra").exists());
    assert_eq!(std::fs::read(root.join("newer")).unwrap(), b"local");
}

/// `restore SNAPSHOT:DIR --delete` judges the target against DIR's content:
/// an extra entry at the target's top level and one deeper go, DIR's files
/// come back, nothing outside the target is touched, and a dry run lists
/// the same deletions. It was refused (exit 2): the target's own entries,
/// DIR's, were judged by nothing.
#[test]
fn delete_with_a_subfolder_judges_the_target_against_its_content() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("a/sub")).unwrap();
    std::fs::write(src.join("a/f"), "f").unwrap();
    std::fs::write(src.join("a/sub/g"), "g").unwrap();
    std::fs::write(src.join("top"), "top").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));

    let target = env.path("t");
    let t = target.to_str().unwrap();
    let spec = format!("latest:{}/a", src.display());
    assert_success(&env.vault(&["restore", &spec, "--target", t]));
    std::fs::write(target.join("f"), "changed").unwrap();
    std::fs::write(target.join("extra"), "x").unwrap();
    std::fs::create_dir(target.join("extra-dir")).unwrap();
    std::fs::write(target.join("sub/extra"), "x").unwrap();
    let beside = env.path("beside");
    std::fs::write(&beside, "beside the target").unwrap();

    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", &spec, "--target", t, "--overwrite", "always"];
        args.push("--delete");
        args.extend_from_slice(extra);
        env.json(&args)
    };
    let listed = |report: &serde_json::Value| {
        let mut paths: Vec<String> = (report["deleted_paths"].as_array().unwrap().iter())
            .map(|p| {
                let p = Path::new(p.as_str().unwrap());
                p.strip_prefix(&target).unwrap().display().to_string()
            })
            .collect();
        paths.sort();
        paths
    };
    let deletions = ["extra", "extra-dir", "sub/extra"];
    let dry = restore(&["--dry-run"]);
    assert_eq!(listed(&dry), deletions, "{dry}");
    assert!(target.join("extra").exists() && target.join("sub/extra").exists());

    let report = restore(&[]);
    assert_eq!(listed(&report), deletions, "{report}");
    assert_eq!(
        crate::support::walk_entries(&target).len(),
        4,
        "t, f, sub, sub/g"
    );
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"f");
    assert_eq!(std::fs::read(target.join("sub/g")).unwrap(), b"g");
    assert_eq!(std::fs::read(&beside).unwrap(), b"beside the target");

    // DIR above the backed-up path: the directories on the way there are
    // not the snapshot's to judge, what is below it is.
    let above = env.path("above");
    let a = above.to_str().unwrap();
    let parent = format!("latest:{}", src.parent().unwrap().display());
    assert_success(&env.vault(&["restore", &parent, "--target", a]));
    let name = src.file_name().unwrap();
    std::fs::write(above.join("on-the-way"), "x").unwrap();
    std::fs::write(above.join(name).join("extra"), "x").unwrap();
    let out = env.json(&[
        "restore",
        &parent,
        "--target",
        a,
        "--overwrite",
        "always",
        "--delete",
    ]);
    assert_eq!(out["deleted"], 1, "{out}");
    assert!(above.join("on-the-way").exists());
    assert!(!above.join(name).join("extra").exists());
}

/// A directory tree where the snapshot has a file is removed before the
/// file is made. Removing one 1 100 levels deep holds a descriptor per
/// level and runs out of them under `ulimit -n 1024` (EMFILE, which stops
/// the restore): the error said "creating" the file, a step never begun.
/// Should the removal stop holding one per level, the restore succeeds,
/// and the test accepts that too.
#[test]
fn a_tree_too_deep_to_remove_is_named_as_a_removal() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x"), "file").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("t");
    let x = target.join(src.strip_prefix("/").unwrap()).join("x");
    std::fs::create_dir_all(&x).unwrap();
    nest_dirs(&x, 1100);
    let vault = env.command(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "always",
    ]);
    let out = with_open_file_limit(&vault, 1024).output().unwrap();
    if out.status.success() {
        assert_eq!(std::fs::read(&x).unwrap(), b"file");
    } else {
        let err = stderr(&out);
        assert!(
            err.contains("removing") && !err.contains("creating"),
            "{err}"
        );
        assert!(err.contains(&*x.to_string_lossy()), "{err}");
    }
}

/// `--overwrite if-changed` names each entry it finds different and what
/// of it, and its dry run names the same ones: a line appended to a file
/// (no chunk to write, only its size), a cleared setuid bit, a removed
/// extended attribute, a symlink pointed elsewhere and a deleted fifo. What
/// is as the snapshot has it is not named, and a second run names nothing.
#[test]
fn if_changed_names_what_it_changes_and_its_dry_run_the_same() {
    use std::collections::BTreeMap;
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("passwd"), "root:x:0:0::/root:/bin/bash\n").unwrap();
    std::fs::write(src.join("suid"), "x").unwrap();
    std::fs::set_permissions(src.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(src.join("attr"), "abc").unwrap();
    xattr::set(src.join("attr"), "user.a", b"1").unwrap();
    std::fs::write(src.join("same"), "same").unwrap();
    std::fs::write(src.join("h1"), "linked").unwrap();
    std::fs::hard_link(src.join("h1"), src.join("h2")).unwrap();
    std::os::unix::fs::symlink("passwd", src.join("link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("t");
    let t = target.to_str().unwrap();
    assert_success(&env.vault(&["restore", "latest", "--target", t]));

    let root = target.join(src.strip_prefix("/").unwrap());
    let mut passwd = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("passwd"))
        .unwrap();
    std::io::Write::write_all(&mut passwd, b"evil:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o755)).unwrap();
    xattr::remove(root.join("attr"), "user.a").unwrap();
    std::fs::remove_file(root.join("link")).unwrap();
    std::os::unix::fs::symlink("suid", root.join("link")).unwrap();
    std::fs::remove_file(root.join("fifo")).unwrap();
    // One inode, two names: named once, by its first name.
    std::fs::set_permissions(root.join("h2"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let changed = |dry: bool| -> BTreeMap<String, Vec<String>> {
        let mut args = vec![
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            "if-changed",
        ];
        if dry {
            args.push("--dry-run");
        }
        let report = env.json(&args);
        let entries = report["changed_entries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                let path = e["path"].as_str().unwrap();
                let name = Path::new(path).file_name().unwrap().to_string_lossy();
                let what = e["changes"].as_array().unwrap().iter();
                (
                    name.into_owned(),
                    what.map(|w| w.as_str().unwrap().to_owned()).collect(),
                )
            })
            .collect()
    };
    let want: BTreeMap<String, Vec<String>> = [
        ("attr", vec!["xattrs"]),
        ("fifo", vec!["created"]),
        ("h1", vec!["mode"]),
        ("link", vec!["replaced"]),
        ("passwd", vec!["size", "times"]),
        ("suid", vec!["mode"]),
        // Its entries changed by hand above, not by the restore.
        ("src", vec!["times"]),
    ]
    .into_iter()
    .map(|(name, what)| {
        (
            name.to_owned(),
            what.into_iter().map(str::to_owned).collect(),
        )
    })
    .collect();
    assert_eq!(changed(true), want, "dry run");
    assert_eq!(changed(false), want, "restore");
    assert_eq!(changed(false), BTreeMap::new(), "a second restore");
    assert_eq!(
        std::fs::read(root.join("passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/bash\n"
    );

    // The text output: a line per entry, created ones only with -vv.
    std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = env.vault(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-changed",
        "-v",
    ]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let suid = root.join("suid");
    assert!(
        text.contains(&format!("updated {} (mode)", suid.display())),
        "{text}"
    );
    assert!(text.contains("1 entry updated, 0 created"), "{text}");
}

/// Unmounts what a test mounted, whatever the test's outcome.
struct Mounted(Vec<std::path::PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for at in &self.0 {
            let _ = std::process::Command::new("umount").arg(at).status();
        }
    }
}

/// `--delete` leaves other file systems mounted in the target alone: a
/// restore of `/` to `/` must not empty /proc, /run or a data volume the
/// backup never saw (nor one mounted on a directory the snapshot has, nor
/// a bind mount of a directory of the target's own file system).
#[test]
fn delete_leaves_mounted_file_systems_alone() {
    if !crate::support::is_root() {
        eprintln!("NOTICE: skipped, mounting needs root");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/a"), "a").unwrap();
    std::fs::write(src.join("f"), "f").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("t");
    let t = target.to_str().unwrap();
    assert_success(&env.vault(&["restore", "latest", "--target", t]));
    let root = target.join(src.strip_prefix("/").unwrap());
    let extra = root.join("volume");
    std::fs::create_dir(&extra).unwrap();
    let mut mounted = Mounted(Vec::new());
    for at in [&extra, &root.join("data")] {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        if !status.success() {
            eprintln!("NOTICE: skipped, cannot mount a tmpfs here");
            return;
        }
        mounted.0.push(at.clone());
        std::fs::write(at.join("precious"), "not in the snapshot").unwrap();
    }
    // A bind mount of a directory of the same file system: same device
    // number as its parent, told apart only by the mount-root attribute.
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), "not in the snapshot").unwrap();
    let bound = root.join("bound");
    std::fs::create_dir(&bound).unwrap();
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .args([&outside, &bound])
        .status()
        .unwrap();
    assert!(status.success(), "mount --bind");
    mounted.0.push(bound.clone());
    std::fs::write(root.join("stray"), "not in the snapshot").unwrap();

    let out = env.vault(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-changed",
        "--delete",
    ]);
    assert_success(&out);
    let err = stderr(&out);
    for at in [&extra, &root.join("data"), &bound] {
        assert_eq!(
            std::fs::read(at.join("precious")).unwrap(),
            b"not in the snapshot",
            "{}",
            at.display()
        );
        assert!(
            err.contains(&format!(
                "--delete left {} alone: another file system is mounted there",
                at.display()
            )),
            "{err}"
        );
    }
    assert!(!root.join("stray").exists(), "{err}");
    assert_eq!(std::fs::read(root.join("data/a")).unwrap(), b"a");
    drop(mounted);
}

/// `--overwrite if-newer` where the target holds another kind of entry:
/// an old directory holding a file edited today is not replaced by the
/// snapshot's symlink (a directory's mtime says nothing of what it holds),
/// and a newer file where the snapshot has a directory is kept, with what
/// the snapshot has below that directory.
#[test]
fn if_newer_replaces_no_directory_and_keeps_a_newer_file_in_place_of_one() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("conf")).unwrap();
    std::fs::write(src.join("conf/x"), "snapshot").unwrap();
    std::os::unix::fs::symlink("conf", src.join("current")).unwrap();
    for name in ["conf/x", "conf", "current"] {
        set_mtime(&src.join(name), SNAPSHOT_SECS);
    }
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("t");
    let root = target.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(root.join("current")).unwrap();
    std::fs::write(root.join("current/work.txt"), "written today").unwrap();
    set_mtime(&root.join("current"), SNAPSHOT_SECS - 1000);
    std::fs::write(root.join("conf"), "my newer notes").unwrap();
    set_mtime(&root.join("conf"), SNAPSHOT_SECS + 1000);
    let t = target.to_str().unwrap();
    let report = env.json(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-newer",
    ]);
    assert_eq!(report["kept"].as_u64(), Some(3), "{report}");
    assert_eq!(
        std::fs::read(root.join("current/work.txt")).unwrap(),
        b"written today"
    );
    assert_eq!(std::fs::read(root.join("conf")).unwrap(), b"my newer notes");
}

/// A dry run says when a restore would remove a directory, and how much
/// it holds, to put the snapshot's file or symlink in its place (an
/// `--overwrite always` restore over a tree where a file became a
/// directory took it silently).
#[test]
fn a_dry_run_names_a_directory_it_would_replace_and_what_it_holds() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("report"), "the snapshot's file").unwrap();
    std::os::unix::fs::symlink("elsewhere", src.join("link")).unwrap();
    std::fs::write(src.join("same"), "same").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("t");
    let t = target.to_str().unwrap();
    assert_success(&env.vault(&["restore", "latest", "--target", t]));
    let root = target.join(src.strip_prefix("/").unwrap());
    std::fs::remove_file(root.join("report")).unwrap();
    std::fs::create_dir_all(root.join("report/sub")).unwrap();
    std::fs::write(root.join("report/sub/work"), "edited since").unwrap();
    std::fs::write(root.join("report/notes"), "edited since").unwrap();
    std::fs::remove_file(root.join("link")).unwrap();
    std::fs::create_dir(root.join("link")).unwrap();

    for overwrite in ["always", "if-changed"] {
        let out = env.vault(&[
            "restore",
            "latest",
            "--target",
            t,
            "--overwrite",
            overwrite,
            "--dry-run",
        ]);
        assert_success(&out);
        let err = stderr(&out);
        for (path, held, kind) in [("report", 3, "file"), ("link", 0, "symlink")] {
            let line = format!(
                "would remove the directory {} and the {held} entries below it, to put the snapshot's {kind} there",
                root.join(path).display()
            );
            assert!(err.contains(&line), "{overwrite}: {err}");
        }
        assert!(!err.contains("same"), "{err}");
        assert_eq!(
            std::fs::read(root.join("report/sub/work")).unwrap(),
            b"edited since"
        );
    }
}
