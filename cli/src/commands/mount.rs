//! `vault mount DIR`: every snapshot as a read-only filesystem (FUSE),
//! served in the foreground until Ctrl-C, SIGTERM or `fusermount -u DIR`.
//!
//! Like the other read commands it takes no lock and writes nothing to
//! storage. The index and the snapshot list are read once, at mount time.

use crate::args::GlobalArgs;
use crate::global;
use crate::snapshot_fs::SnapshotFs;
use anyhow::{Context, Result, bail};
use fuser::{Config, MountOption, SessionACL};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the foreground loop looks for a signal or an outside unmount.
const POLL_MILLIS: u64 = 100;

#[derive(Debug, clap::Args)]
pub(crate) struct MountArgs {
    /// Empty directory to mount on.
    mountpoint: PathBuf,
    /// Let other users (and root) see the mount; needs `user_allow_other`
    /// in /etc/fuse.conf unless run as root. The kernel then checks file
    /// permissions as recorded in the snapshots.
    #[arg(long)]
    allow_other: bool,
    /// Memory for decrypted chunks, in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(8..=65536))]
    cache_mib: u32,
}

pub(crate) fn run(g: &GlobalArgs, args: &MountArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let mountpoint = &args.mountpoint;
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let repo = global::open_repository(g)?;
    let snapshots = repo.snapshots().context("listing snapshots")?;
    let index = repo.load_index().context("loading the index")?;
    let sources: Vec<String> = global::config(g)?
        .map(|c| c.sources.iter().map(|s| s.name().to_owned()).collect())
        .unwrap_or_default();
    let cache_size = usize::try_from(args.cache_mib)? * 1024 * 1024;
    let fs = SnapshotFs::new(repo, index, cache_size, &snapshots, &sources);

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("vault".into()),
        MountOption::Subtype("vault".into()),
        // Set-id bits and device nodes in a backup must never grant
        // anything on this machine.
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    if args.allow_other {
        config.acl = SessionACL::All;
        // Other users see only what the backed-up permissions allowed them.
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    // Reads from S3 wait on the network: serve a few at once.
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    if !g.quiet {
        eprintln!(
            "vault: {} snapshots mounted read-only at {}; Ctrl-C or `fusermount -u {}` to unmount",
            snapshots.len(),
            mountpoint.display(),
            mountpoint.display()
        );
    }
    while !cancel.load(Ordering::SeqCst) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(POLL_MILLIS));
    }
    if session.guard.is_finished() {
        // Unmounted from outside (fusermount -u, umount). Dropping the
        // session would unmount once more and fuser warn that it failed
        // (EINVAL: no longer a mount point). So: the serving thread's
        // outcome first, then that unmount by hand, its failure an error
        // only while the file system is still mounted there.
        let mut session = session;
        let served = std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())));
        served
            .join()
            .map_err(|_| anyhow::anyhow!("the thread serving the mount panicked"))?
            .context("serving the mount")?;
        if let Err(e) = session.umount_and_join()
            && is_fuse_mounted(mountpoint)
        {
            return Err(e).with_context(|| format!("unmounting {}", mountpoint.display()));
        }
    } else {
        session
            .umount_and_join()
            .with_context(|| format!("unmounting {}", mountpoint.display()))?;
    }
    if !g.quiet {
        eprintln!("vault: unmounted {}", mountpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a FUSE file system is mounted at `dir`, by /proc/self/mountinfo
/// (the mount point is its fifth field, with spaces and the like escaped
/// as `\040`; the type follows ` - `); when that cannot be read, true, so
/// that a failure is reported rather than hidden.
fn is_fuse_mounted(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(dir), Ok(info)) = (
        std::fs::canonicalize(dir),
        std::fs::read("/proc/self/mountinfo"),
    ) else {
        return true;
    };
    let dir = dir.as_os_str().as_bytes();
    info.split(|&b| b == b'\n').any(|line| {
        let mut fields = line.split(|&b| b == b' ');
        fields.nth(4).is_some_and(|field| unescape(field) == dir)
            && fields
                .skip_while(|f| *f != b"-")
                .nth(1)
                .is_some_and(|kind| kind.starts_with(b"fuse"))
    })
}

/// A mountinfo field with its `\NNN` octal escapes decoded.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        let code = field
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(br"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(br"/x\134y"), br"/x\y");
        assert_eq!(unescape(br"/plain\09"), br"/plain\09");
        assert!(!is_fuse_mounted(std::path::Path::new("/proc")));
    }
}
