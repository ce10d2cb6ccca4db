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
        // Unmounted from outside (fusermount -u, umount).
        session.join().context("serving the mount")?;
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
