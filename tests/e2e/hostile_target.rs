//! Restores as root into a target holding directories another user may
//! write (their home, /tmp; `--allow-unsafe-target`): a directory below
//! the target swapped for a symlink, before the restore or while it runs,
//! never leads a write, link, chmod, chown or delete outside the target.
//!
//! The swap during a restore is made at a known moment, not by timing:
//! the target lives on a tmpfs on which every open waits for this test's
//! answer (fanotify permission events), and the first open below the
//! directory to swap is answered only once the swap is made. Root only.

use crate::support::{Env, TmpfsMount, assert_code, assert_success, is_root, stderr};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const NOBODY: u32 = 65534;

/// Answers every open on the mount at `mount` until dropped; before
/// answering the first one at or below `watched`, runs `swap`.
struct SwapOnOpen {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl SwapOnOpen {
    /// `None` where the kernel offers no fanotify permission events.
    fn new(mount: &Path, watched: PathBuf, swap: impl FnOnce() + Send + 'static) -> Option<Self> {
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC,
        )
        .inspect_err(|e| eprintln!("NOTICE: skipping: no fanotify here ({e})"))
        .ok()?;
        group
            .mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
                MaskFlags::FAN_OPEN_PERM,
                None,
                Some(mount),
            )
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut swap = Some(swap);
            while !stopping.load(Ordering::Relaxed) {
                let events = match group.read_events() {
                    Ok(events) => events,
                    Err(nix::errno::Errno::EAGAIN) => {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        continue;
                    }
                    Err(e) => panic!("reading fanotify events: {e}"),
                };
                for event in events {
                    let Some(fd) = event.fd() else { continue };
                    // Where the open leads; no open of this thread's own on
                    // the mount, which would wait for itself.
                    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                        .unwrap_or_default();
                    if path.starts_with(&watched)
                        && let Some(swap) = swap.take()
                    {
                        swap();
                    }
                    group
                        .write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW))
                        .unwrap();
                }
            }
            swap.is_none()
        });
        Some(SwapOnOpen {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops answering (the mark goes with the group); returns whether the
    /// swap was made.
    fn finish(mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("once").join().unwrap()
    }
}

impl Drop for SwapOnOpen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Mode, owner and names of a directory and of what it holds, to compare.
fn state(dir: &Path) -> Vec<(String, u32, u32, u32)> {
    let mut out = Vec::new();
    for entry in crate::support::walk_entries(dir) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let name = entry.strip_prefix(dir).unwrap().display().to_string();
        out.push((name, meta.mode(), meta.uid(), meta.gid()));
    }
    out.sort();
    out
}

/// A snapshot of `src`: `h1`, and `userdir/` (nobody's, 0711) holding
/// `sub/` (uid 1234, 0750) with eight files and `h2`, a second name of
/// `h1`. Returns where `userdir` lands in `target`.
fn backup_userdir(env: &Env, src: &Path, target: &Path) -> PathBuf {
    let sub = src.join("userdir/sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(src.join("h1"), b"hard-linked").unwrap();
    std::fs::hard_link(src.join("h1"), sub.join("h2")).unwrap();
    for n in 0..8 {
        std::fs::write(sub.join(format!("f{n:02}")), format!("file {n}")).unwrap();
    }
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&sub, Some(1234), Some(1234)).unwrap();
    let userdir = src.join("userdir");
    std::fs::set_permissions(&userdir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&userdir, Some(NOBODY), Some(NOBODY)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    target.join(src.strip_prefix("/").unwrap()).join("userdir")
}

/// A directory standing for /etc: `sub/` with `precious` in it, root's.
fn victim(at: &Path) -> Vec<(String, u32, u32, u32)> {
    std::fs::create_dir_all(at.join("sub")).unwrap();
    std::fs::write(at.join("sub/precious"), b"keep me").unwrap();
    std::fs::write(at.join("h2"), b"not to be replaced").unwrap();
    state(at)
}

fn restore(env: &Env, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--allow-unsafe-target",
    ];
    args.extend_from_slice(extra);
    env.vault(&args)
}

/// nobody swaps their directory for a symlink to a root directory while
/// root's restore is writing into it (at the first file created below
/// it). By path, the restore went on through the symlink: files created
/// and a hard link made in the victim, its `precious` file deleted
/// (`--delete`), its mode and owners set to the snapshot's directories'.
/// Now what is reached through the symlink fails, named (exit 3): the
/// hard link, the listing for `--delete`, both directories' metadata (a
/// file whose worker still holds the directory nobody moved away goes
/// there, where nobody could write anyway); the victim is as it was.
#[test]
fn root_restore_never_follows_a_directory_swapped_for_a_symlink_mid_restore() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (tmpfs, fanotify, another user's directory)");
        return;
    }
    let env = Env::new();
    let mount = TmpfsMount::new(&env.path("mnt"));
    let target = mount.0.join("target");
    let userdir = backup_userdir(&env, &env.path("src"), &target);
    // nobody's home, there before the restore.
    std::fs::create_dir_all(&userdir).unwrap();
    std::os::unix::fs::chown(&userdir, Some(NOBODY), Some(NOBODY)).unwrap();
    let victim_dir = mount.0.join("victim");
    let before = victim(&victim_dir);

    let swap = {
        let (userdir, victim_dir) = (userdir.clone(), victim_dir.clone());
        let moved = mount.0.join("moved");
        move || {
            std::fs::rename(&userdir, moved).unwrap();
            std::os::unix::fs::symlink(&victim_dir, &userdir).unwrap();
        }
    };
    let Some(swapper) = SwapOnOpen::new(&mount.0, userdir.join("sub"), swap) else {
        return;
    };
    let out = restore(
        &env,
        &target,
        &["--overwrite", "always", "--delete", "--concurrency", "1"],
    );
    assert!(
        swapper.finish(),
        "the restore opened nothing below userdir/sub"
    );
    assert_eq!(state(&victim_dir), before, "{}", stderr(&out));
    assert_code(&out, 3);
    let err = stderr(&out);
    for entry in ["userdir/sub/h2", "userdir/sub:", "userdir:"] {
        assert!(err.contains(entry), "{entry} not named: {err}");
    }
    assert!(
        std::fs::symlink_metadata(&userdir).unwrap().is_symlink(),
        "left in place: it is not the restore's to judge"
    );
}

/// Symlinks put in every place beforehand, where the snapshot has a
/// directory and where it has a file and a hard link: with `--overwrite
/// always` each is replaced, never followed, and `--delete` empties
/// nothing it pointed to; without, the restore refuses (exit 1) and
/// changes nothing.
#[test]
fn root_restore_replaces_symlinks_planted_below_the_target() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (another user's directory)");
        return;
    }
    let env = Env::new();
    let target = env.path("target");
    let userdir = backup_userdir(&env, &env.path("src"), &target);
    std::fs::create_dir_all(&userdir).unwrap();
    std::os::unix::fs::chown(&userdir, Some(NOBODY), Some(NOBODY)).unwrap();
    let victim_dir = env.path("victim");
    let before = victim(&victim_dir);
    for link in ["sub", "sub-extra"] {
        std::os::unix::fs::symlink(victim_dir.join("sub"), userdir.join(link)).unwrap();
    }
    let out = restore(&env, &target, &[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(state(&victim_dir), before);

    let out = restore(&env, &target, &["--overwrite", "always", "--delete"]);
    assert_success(&out);
    assert_eq!(state(&victim_dir), before);
    let sub = userdir.join("sub");
    assert!(std::fs::symlink_metadata(&sub).unwrap().is_dir());
    assert_eq!(std::fs::read(sub.join("h2")).unwrap(), b"hard-linked");
    assert_eq!(std::fs::metadata(&sub).unwrap().uid(), 1234);
    assert!(
        !userdir.join("sub-extra").exists(),
        "the extra symlink deleted"
    );

    // Where files and a hard link's second name belong, resuming.
    for (file, to) in [("h2", "h2"), ("f00", "sub/precious")] {
        std::fs::remove_file(sub.join(file)).unwrap();
        std::os::unix::fs::symlink(victim_dir.join(to), sub.join(file)).unwrap();
    }
    let out = restore(&env, &target, &["--overwrite", "if-changed", "--delete"]);
    assert_success(&out);
    assert_eq!(state(&victim_dir), before);
    assert_eq!(std::fs::read(sub.join("f00")).unwrap(), b"file 0");
    assert!(std::fs::symlink_metadata(sub.join("h2")).unwrap().is_file());
}
