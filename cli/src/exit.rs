//! The one table from outcomes to exit codes, documented in README and in
//! `vault --help`.

use std::process::ExitCode;
use vault_engine::ErrorKind;

/// Any fatal error not listed below.
pub(crate) const FATAL: u8 = 1;
/// Backup saved, but some files could not be read.
pub(crate) const INCOMPLETE: u8 = 3;
/// No repository at the given location.
pub(crate) const NO_REPOSITORY: u8 = 10;
/// The repository is locked by another process.
pub(crate) const LOCKED: u8 = 11;
/// Wrong password.
pub(crate) const WRONG_PASSWORD: u8 = 12;
/// Interrupted by a signal.
pub(crate) const INTERRUPTED: u8 = 130;

pub(crate) const HELP: &str = "\
Exit codes:
  0    success
  1    fatal error (nothing or not everything was saved)
  3    backup saved, but some files could not be read (listed on stderr)
  10   repository does not exist
  11   repository is locked
  12   wrong password
  130  interrupted (SIGINT/SIGTERM)";

pub(crate) fn code_for(err: &anyhow::Error) -> ExitCode {
    let code = err
        .chain()
        .find_map(|e| e.downcast_ref::<vault_engine::Error>())
        .map_or(FATAL, |e| match e.kind() {
            ErrorKind::RepositoryNotFound => NO_REPOSITORY,
            ErrorKind::Locked => LOCKED,
            ErrorKind::WrongPassword => WRONG_PASSWORD,
            ErrorKind::Interrupted => INTERRUPTED,
            _ => FATAL,
        });
    ExitCode::from(code)
}

pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<vault_engine::Error>().is_some_and(|v| {
                matches!(v, vault_engine::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
            })
    })
}
