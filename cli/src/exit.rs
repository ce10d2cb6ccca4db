//! The one table from outcomes to exit codes, documented in README and in
//! `vault --help`.

use std::process::ExitCode;
use vault_engine::ErrorKind;

/// Any fatal error not listed below.
pub(crate) const FATAL: u8 = 1;
/// A usage error clap cannot see: what is missing may come from the
/// config file (a forget without any retention rule). Nothing was done.
pub(crate) const USAGE: u8 = 2;
/// Done, but not wholly: a backup saved without some files it could not
/// read (or with entries missing some metadata: an unreadable extended
/// attribute, a time out of range), or a restore (or drill) that could not write some entries into
/// the target (not created, replaced, written, or given their metadata)
/// and restored everything else.
pub(crate) const INCOMPLETE: u8 = 3;
/// An object the command needs is missing from the repository (also a WAL
/// file `vault wal fetch` is asked for and the archive does not have).
pub(crate) const MISSING: u8 = 4;
/// The repository is damaged: stored data failed authentication or
/// decoding, or `check` found errors.
pub(crate) const DAMAGED: u8 = 5;
/// A backup source failed: its command exited non-zero, or its input could
/// not be read. Nothing of it was saved.
pub(crate) const SOURCE_FAILED: u8 = 6;
/// No space left (or quota exhausted) where vault writes: the repository's
/// disk, a restore target, the output.
pub(crate) const NO_SPACE: u8 = 7;
/// The storage kept failing after retries (unreachable, refusing, erroring).
pub(crate) const STORAGE: u8 = 8;
/// No repository at the given location (or another tool's there).
pub(crate) const NO_REPOSITORY: u8 = 10;
/// The repository is locked by another process.
pub(crate) const LOCKED: u8 = 11;
/// Wrong password.
pub(crate) const WRONG_PASSWORD: u8 = 12;
/// Interrupted by a signal.
pub(crate) const INTERRUPTED: u8 = 130;
/// `vault wal fetch` failed for any reason other than "not archived".
/// PostgreSQL takes every `restore_command` exit status up to 125 for "this
/// file is not in the archive" and ends recovery there, promoting with the
/// rest of the WAL never replayed; above 125 it aborts recovery instead
/// (`wait_result_is_any_signal` in its `RestoreArchivedFile`). 143 (128 +
/// SIGTERM) would read as a shutdown request, so 255.
pub(crate) const ABORT_RECOVERY: u8 = 255;

pub(crate) const HELP: &str = "\
Exit codes:
  0    success
  1    fatal error (nothing or not everything was saved)
  2    usage error: an unknown flag, a missing or invalid argument (nothing was done)
  3    some files could not be read (backup: the snapshot is saved without them,
       or without some of their metadata) or written (restore: everything else
       is restored); listed on stderr
  4    an object is missing from the repository
  5    the repository is damaged (data fails authentication, or check found errors)
  6    a backup source failed (its command exited non-zero, or it could not be read)
  7    no space left on a disk or quota vault writes to
  8    the storage kept failing after retries
  10   repository does not exist (or the location holds a restic or borg one)
  11   repository is locked
  12   wrong password
  130  interrupted (SIGINT/SIGTERM)
  255  vault wal fetch failed, other than 'not archived' (PostgreSQL then stops recovery)";

/// A failure whose exit code the command decided: an outcome made of many
/// engine findings rather than one error (a drill whose restore met
/// damaged files).
#[derive(Debug)]
pub(crate) struct Coded {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

pub(crate) fn code_for(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(code_of(err))
}

/// The exit code for an error: the one a [`Coded`] failure in its chain
/// names, else by the kind of the engine error in its chain, else a local disk that is full, else [`FATAL`].
pub(crate) fn code_of(err: &anyhow::Error) -> u8 {
    if let Some(c) = err.chain().find_map(|e| e.downcast_ref::<Coded>()) {
        return c.code;
    }
    if let Some(e) = err
        .chain()
        .find_map(|e| e.downcast_ref::<vault_engine::Error>())
    {
        return match e.kind() {
            ErrorKind::RepositoryNotFound => NO_REPOSITORY,
            ErrorKind::Locked => LOCKED,
            ErrorKind::WrongPassword => WRONG_PASSWORD,
            ErrorKind::Interrupted => INTERRUPTED,
            ErrorKind::NotFound => MISSING,
            ErrorKind::Corrupt => DAMAGED,
            ErrorKind::SourceFailed => SOURCE_FAILED,
            ErrorKind::NoSpace => NO_SPACE,
            ErrorKind::Backend => STORAGE,
            _ => FATAL,
        };
    }
    let full = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    });
    if full { NO_SPACE } else { FATAL }
}

pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let epipe = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<vault_engine::Error>().is_some_and(|v| {
                matches!(v, vault_engine::Error::Io { cause, .. } if cause.kind() == std::io::ErrorKind::BrokenPipe)
            })
    });
    // Only vault's own output: a pipe to a child (a database client) that
    // closed is that child's failure, never a quiet success.
    epipe && stdout_reader_gone()
}

/// Whether standard output is a pipe whose reader has gone (`vault ... |
/// head`): poll reports POLLERR on the write end of such a pipe.
fn stdout_reader_gone() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
}
