//! `vault mount`: the FUSE view of every snapshot, checked through the
//! kernel like any program would read it.
//!
//! Each test backs up a tree made here (a file of several chunks, an empty
//! file, a symlink, nested directories with their own modes and mtimes),
//! changes it, backs up again, starts `vault mount` in the background and
//! waits for the listing to appear. The mounted snapshot is compared with
//! a `vault restore` of the same snapshot (`diff -r` plus modes, mtimes and
//! link targets); reads at random offsets are compared with the original
//! bytes. SIGINT must unmount, exit 0 and leave the mount point empty.
//!
//! Without /dev/fuse, or where mounting is not permitted (a container
//! without CAP_SYS_ADMIN and no fusermount), the tests print a NOTICE and
//! pass.

use crate::support::{Backend, Env, assert_success, pseudo_random};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const BIG_LEN: usize = 7_000_000;

/// A running `vault mount`; dropping it stops the process and detaches
/// the mount, so a failed assertion leaves nothing mounted behind.
struct Mounted {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl Mounted {
    /// Starts `vault mount` and waits until the listing shows. `None` when
    /// this machine cannot mount FUSE filesystems.
    fn start(env: &Env, config: &Path) -> Option<Self> {
        if !Path::new("/dev/fuse").exists() {
            eprintln!("NOTICE: /dev/fuse is missing; skipping the mount test");
            return None;
        }
        let mountpoint = env.path("mnt");
        fs::create_dir_all(&mountpoint).unwrap();
        let log = env.path("mount.log");
        let child = env
            .command(&["mount", mountpoint.to_str().unwrap()])
            .env("VAULT_CONFIG", config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut mounted = Self {
            child: Some(child),
            mountpoint,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if mounted.mountpoint.join("snapshots").is_dir() {
                return Some(mounted);
            }
            if let Some(status) = mounted.child.as_mut().unwrap().try_wait().unwrap() {
                mounted.child = None;
                let log = mounted.log_text();
                let not_permitted = ["Operation not permitted", "Permission denied", "fusermount"];
                if not_permitted.iter().any(|m| log.contains(m)) {
                    eprintln!("NOTICE: mounting is not permitted here; skipping ({log})");
                    return None;
                }
                panic!("vault mount exited with {status} before mounting:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear within 60 s:\n{}",
                mounted.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, then the exit status (within 30 s).
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        self.wait()
    }

    /// The exit status, within 30 s.
    fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "vault mount did not exit after SIGINT:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*path))
}

/// The tree to back up; `second` adds the changes of the second backup.
fn make_tree(root: &Path, second: bool) {
    fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    fs::write(root.join("big.bin"), pseudo_random(BIG_LEN, 7)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("nested/deeper/deepest/leaf.txt"), b"leaf\n").unwrap();
    let changing = if second {
        "second version\n"
    } else {
        "first\n"
    };
    fs::write(root.join("nested/changing.txt"), changing).unwrap();
    if second {
        fs::write(root.join("nested/added.txt"), b"only in the second\n").unwrap();
    } else {
        std::os::unix::fs::symlink("nested/deeper/deepest/leaf.txt", root.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    }
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(
        root.join("nested/deeper"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    // Attributes on a directory (default ACLs live there) and a file.
    xattr::set(root.join("nested"), "user.dir", b"on a directory").unwrap();
    xattr::set(root.join("empty"), "user.file", b"on a file").unwrap();
    // Names that are not UTF-8, differing only there: getxattr and
    // listxattr answer with their exact bytes.
    for (name, value) in [(&b"user.\xff"[..], &b"one"[..]), (b"user.\xfe", b"two")] {
        xattr::set(root.join("empty"), OsStr::from_bytes(name), value).unwrap();
    }
    let when = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    for p in ["big.bin", "nested/deeper/deepest/leaf.txt", "nested/deeper"] {
        filetime::set_symlink_file_times(root.join(p), when, when).unwrap();
    }
}

/// Every path below `root`, relative, sorted.
fn paths(root: &Path) -> Vec<PathBuf> {
    fn inner(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                inner(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    inner(root, root, &mut out);
    out.sort();
    out
}

/// Content (`diff -r` without following links), then per entry: type,
/// permission bits, mtime of files and directories, link targets.
fn assert_same_tree(mounted: &Path, restored: &Path) {
    let diff = std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(mounted)
        .arg(restored)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r {} {}:\n{}{}",
        mounted.display(),
        restored.display(),
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    let entries = paths(restored);
    assert_eq!(paths(mounted), entries);
    for rel in entries {
        let m = fs::symlink_metadata(mounted.join(&rel)).unwrap();
        let r = fs::symlink_metadata(restored.join(&rel)).unwrap();
        assert_eq!(m.file_type(), r.file_type(), "{}", rel.display());
        if !m.is_dir() {
            assert_eq!(m.len(), r.len(), "size of {}", rel.display());
        }
        if m.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(mounted.join(&rel)).unwrap(),
                fs::read_link(restored.join(&rel)).unwrap()
            );
            continue;
        }
        assert_eq!(
            m.mode() & 0o7777,
            r.mode() & 0o7777,
            "mode of {}",
            rel.display()
        );
        let xattrs = |p: &Path| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            let mut all: Vec<_> = xattr::list(p)
                .unwrap()
                .map(|n| (n.as_bytes().to_vec(), xattr::get(p, &n).unwrap()))
                .collect();
            all.sort();
            all
        };
        assert_eq!(
            xattrs(&mounted.join(&rel)),
            xattrs(&restored.join(&rel)),
            "xattrs of {}",
            rel.display()
        );
        assert_eq!(m.uid(), r.uid(), "uid of {}", rel.display());
        assert_eq!(m.gid(), r.gid(), "gid of {}", rel.display());
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (r.mtime(), r.mtime_nsec()),
            "mtime of {}",
            rel.display()
        );
    }
}

/// Names in a listing directory, `latest` left out, sorted (oldest
/// first, as names are times).
fn snapshot_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "latest")
        .collect();
    names.sort();
    names
}

fn os_error(result: std::io::Result<impl Sized>) -> i32 {
    match result {
        Ok(_) => panic!("a write to the mount succeeded"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

/// Two backups of a configured source, mounted; returns the environment,
/// the data directory, the config and the running mount.
fn backed_up_and_mounted(backend: Backend) -> Option<(Env, PathBuf, Mounted)> {
    let env = Env::on(backend);
    let data = env.path("data");
    make_tree(&data, false);
    let config = env.path("vault.toml");
    fs::write(
        &config,
        format!(
            // The status file (and the per-source lock beside it) in this
            // test's directory: tests running at once must not share them.
            "[[source]]\nname = \"home\"\nkind = \"files\"\npaths = [\"{}\"]\n\n\
             [notify]\nstatus_file = \"{}\"\n",
            data.display(),
            env.path("state/status.json").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup"];
        args.extend_from_slice(extra);
        let out = env
            .command(&args)
            .env("VAULT_CONFIG", &config)
            .output()
            .unwrap();
        assert_success(&out);
    };
    backup(&[]);
    make_tree(&data, true);
    backup(&["--tag", "second"]);
    let mounted = Mounted::start(&env, &config)?;
    Some((env, data, mounted))
}

backend_test!(mount_shows_snapshots_as_restore_writes_them);

fn mount_shows_snapshots_as_restore_writes_them(backend: Backend) {
    let Some((env, data, mut mounted)) = backed_up_and_mounted(backend) else {
        return;
    };
    let mnt = mounted.mountpoint.clone();
    let inside = data.strip_prefix("/").unwrap();
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 2);

    let names = snapshot_dirs(&mnt.join("snapshots"));
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        fs::read_link(mnt.join("snapshots/latest")).unwrap(),
        PathBuf::from(&names[1])
    );

    // Each snapshot as mounted equals its restore.
    for (i, snap) in snaps.iter().enumerate() {
        let id = snap["id"].as_str().unwrap();
        let target = env.path(&format!("restored-{i}"));
        let out = env.vault(&["restore", id, "--target", target.to_str().unwrap()]);
        assert_success(&out);
        assert_same_tree(
            &mnt.join("snapshots").join(&names[i]).join(inside),
            &target.join(inside),
        );
        assert_same_tree(
            &mnt.join("ids").join(&id[..8]).join(inside),
            &target.join(inside),
        );
    }
    let latest = mnt.join("snapshots/latest").join(inside);
    assert_eq!(
        fs::read(latest.join("nested/changing.txt")).unwrap(),
        b"second version\n"
    );
    let empty = latest.join("empty");
    let mut xattr_names: Vec<Vec<u8>> = xattr::list(&empty)
        .unwrap()
        .map(|n| n.as_bytes().to_vec())
        .filter(|n| n.starts_with(b"user."))
        .collect();
    xattr_names.sort();
    assert_eq!(
        xattr_names,
        [&b"user.file"[..], b"user.\xfe", b"user.\xff"],
        "listxattr"
    );
    assert_eq!(
        xattr::get(&empty, OsStr::from_bytes(b"user.\xff"))
            .unwrap()
            .as_deref(),
        Some(&b"one"[..]),
        "getxattr"
    );
    assert!(latest.join("nested/added.txt").is_file());
    let first = mnt.join("snapshots").join(&names[0]).join(inside);
    assert_eq!(
        fs::read(first.join("nested/changing.txt")).unwrap(),
        b"first\n"
    );
    assert!(!first.join("nested/added.txt").exists());
    // A terminal check (TCGETS, as Python's open() makes) is "not a
    // terminal", without a warning in the log.
    let file = fs::File::open(latest.join("nested/changing.txt")).unwrap();
    assert_eq!(
        nix::sys::termios::tcgetattr(&file).unwrap_err(),
        nix::errno::Errno::ENOTTY
    );
    drop(file);
    assert!(
        !mounted.log_text().contains("Not Implemented"),
        "{}",
        mounted.log_text()
    );

    // The other listings.
    let host = snaps[0]["hostname"].as_str().unwrap();
    assert_eq!(snapshot_dirs(&mnt.join("hosts").join(host)), names);
    assert_eq!(snapshot_dirs(&mnt.join("sources/home")), names);
    assert_eq!(
        fs::read_link(mnt.join("sources/home/latest")).unwrap(),
        PathBuf::from(&names[1])
    );
    assert_eq!(
        snapshot_dirs(&mnt.join("tags/second")),
        vec![names[1].clone()]
    );
    assert_eq!(
        fs::read(
            mnt.join("tags/second/latest")
                .join(inside)
                .join("nested/changing.txt")
        )
        .unwrap(),
        b"second version\n"
    );
    assert_eq!(snapshot_dirs(&mnt.join("tags/home")), names);

    // Read-only.
    let erofs = libc::EROFS;
    assert_eq!(os_error(fs::write(latest.join("new-file"), b"x")), erofs);
    assert_eq!(
        os_error(
            fs::OpenOptions::new()
                .append(true)
                .open(latest.join("empty"))
        ),
        erofs
    );
    assert_eq!(os_error(fs::create_dir(latest.join("new-dir"))), erofs);
    assert_eq!(os_error(fs::remove_file(latest.join("big.bin"))), erofs);
    assert_eq!(
        os_error(fs::set_permissions(
            latest.join("big.bin"),
            fs::Permissions::from_mode(0o777)
        )),
        erofs
    );

    // SIGINT unmounts and exits 0.
    let status = mounted.interrupt();
    assert!(status.success(), "{status}: {}", mounted.log_text());
    assert!(!is_mounted(&mnt), "still mounted after exit");
    assert_eq!(
        fs::read_dir(&mnt).unwrap().count(),
        0,
        "mount point not empty"
    );
}

backend_test!(mount_reads_at_any_offset_across_chunks);

fn mount_reads_at_any_offset_across_chunks(backend: Backend) {
    let Some((_env, data, mut mounted)) = backed_up_and_mounted(backend) else {
        return;
    };
    let inside = data.strip_prefix("/").unwrap();
    let want = pseudo_random(BIG_LEN, 7);
    let path = mounted
        .mountpoint
        .join("snapshots/latest")
        .join(inside)
        .join("big.bin");
    let mut file = fs::File::open(&path).unwrap();
    assert_eq!(file.metadata().unwrap().len(), BIG_LEN as u64);
    // Deterministic "random" ranges: up to 2.5 MiB long, so many span
    // several of the ~1 MiB chunks; some run past the end of the file.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    for _ in 0..40 {
        let offset = next(BIG_LEN as u64 + 1000);
        let len = usize::try_from(next(2_500_000)).unwrap() + 1;
        file.seek(SeekFrom::Start(offset)).unwrap();
        let mut got = Vec::new();
        (&mut file).take(len as u64).read_to_end(&mut got).unwrap();
        let start = usize::try_from(offset).unwrap().min(BIG_LEN);
        let end = (start + len).min(BIG_LEN);
        assert_eq!(
            got.len(),
            end - start,
            "length at offset {offset} len {len}"
        );
        assert!(
            got == want[start..end],
            "bytes differ at offset {offset} len {len}"
        );
    }
    // A second reader, positioned reads through a fresh handle.
    let other = fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&other, &mut buf, 3_333_333).unwrap();
    assert!(buf == want[3_333_333..3_333_333 + 4096]);
    drop((file, other));
    // Unmounted from outside, vault notices and exits 0.
    let mnt = mounted.mountpoint.clone();
    let unmounted = ["fusermount3", "fusermount", "umount"].iter().any(|tool| {
        let mut cmd = std::process::Command::new(tool);
        if *tool != "umount" {
            cmd.arg("-u");
        }
        cmd.arg(&mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(unmounted, "no tool could unmount {}", mnt.display());
    let status = mounted.wait();
    assert!(status.success(), "{status}: {}", mounted.log_text());
    assert!(!is_mounted(&mnt));
    // Quietly: fuser's second unmount of what is gone failed with EINVAL
    // and warned "Unmount failed".
    let log = mounted.log_text();
    assert!(log.contains("vault: unmounted"), "{log}");
    assert!(
        !log.contains("Unmount failed") && !log.contains("WARN"),
        "{log}"
    );
}

/// A symlink whose target holds a NUL byte (a crafted snapshot, as in
/// hostile.rs): reading that link fails with EIO, as damaged content does,
/// and everything else in the snapshot reads; the mount goes on serving.
#[test]
fn a_symlink_target_with_a_nul_reads_as_an_io_error() {
    use vault_engine::tree::{Node, NodeKind, Tree};
    let env = crate::hostile::env();
    let mut link = Node::new("b", NodeKind::Symlink);
    link.linktarget = Some("x\0y".into());
    let mut fine = Node::new("c", NodeKind::Symlink);
    fine.linktarget = Some("a".into());
    let (snapshot, _) = crate::hostile::snapshot_of(
        &env,
        &[Tree {
            nodes: vec![Node::new("a", NodeKind::File), link, fine],
        }],
    );
    let config = env.path("vault.toml");
    fs::write(
        &config,
        format!(
            "[notify]\nstatus_file = \"{}\"\n",
            env.path("state/status.json").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let Some(mut mounted) = Mounted::start(&env, &config) else {
        return;
    };
    let dir = mounted.mountpoint.join("ids").join(&snapshot[..8]);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    let err = fs::read_link(dir.join("b")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(nix::errno::Errno::EIO as i32),
        "{err}"
    );
    assert_eq!(fs::read_link(dir.join("c")).unwrap(), PathBuf::from("a"));
    assert_eq!(fs::read(dir.join("a")).unwrap(), b"");
    assert!(mounted.interrupt().success(), "{}", mounted.log_text());
}
