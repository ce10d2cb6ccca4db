//! The engine's public error type.
//!
//! Modules keep small local error enums; this is the one matchable error at
//! the API edge. Each variant maps to an [`ErrorKind`] that the CLI turns into
//! an exit code. Messages never contain secrets (passwords, keys, argv).

use crate::backend::BackendError;

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The coarse category of an [`Error`]: what a caller (or a cron script)
/// can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The password does not open any key of the repository.
    WrongPassword,
    /// There is no repository at the given location.
    RepositoryNotFound,
    /// An object that should exist is missing.
    NotFound,
    /// Stored data failed authentication or decoding.
    Corrupt,
    /// An exclusive lock is held by someone else.
    Locked,
    /// A storage operation failed after retries.
    Backend,
    /// A backup source (a file, a dump command) failed.
    SourceFailed,
    /// The disk or quota is full.
    NoSpace,
    /// The operation was interrupted by a signal.
    Interrupted,
    /// The caller asked for something invalid.
    InvalidInput,
    /// A local I/O error.
    Io,
}

/// An error from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No key file could be opened with the password.
    #[error("wrong password or damaged key file")]
    WrongPassword,
    /// The repository's `config` object is absent.
    #[error(
        "no repository at {location}: check the URL and its prefix (`vault init` would create a new, empty repository there)"
    )]
    RepositoryNotFound {
        /// Where we looked.
        location: String,
    },
    /// The location holds another tool's repository.
    #[error(
        "a {tool} repository, not a vault one: vault cannot read it (keep {tool} for it; `vault init` a new location for vault's backups)"
    )]
    ForeignRepository {
        /// The tool whose repository it is: `restic`, `borg`.
        tool: &'static str,
    },
    /// A referenced object is missing.
    #[error("{object} not found")]
    NotFound {
        /// The object, e.g. `pack 3f2a…` or `snapshot 1a2b3c4d`.
        object: String,
    },
    /// Data that a snapshot being written would reference is gone from
    /// storage (the message says what and what to do).
    #[error("{0}")]
    DataLost(String),
    /// An object failed authentication, hashing or decoding.
    #[error("{object} is damaged: {reason}")]
    Corrupt {
        /// The damaged object.
        object: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The repository is locked for exclusive maintenance.
    #[error("repository is locked: {holder}")]
    Locked {
        /// Who holds the lock, e.g. `host X, pid Y since T`.
        holder: String,
    },
    /// A lock object that cannot be read (damaged, or sealed with another
    /// key) holds the repository: it is never taken over as stale (its age
    /// is unknown), only `vault unlock` removes it.
    #[error("repository is locked: unreadable lock {object}")]
    LockUnreadable {
        /// The lock object.
        object: String,
    },
    /// Storage failed.
    #[error("storage error on {object}: {cause}")]
    Backend {
        /// The object being read or written.
        object: String,
        /// The backend's error. Shown in this error's message and so not
        /// also its `source()` (a field named `source` would be): a chain
        /// printed whole (`{:#}`) showed it twice.
        cause: BackendError,
    },
    /// A source could not be read completely.
    #[error("{0}")]
    SourceFailed(String),
    /// A signal stopped the operation.
    #[error("interrupted")]
    Interrupted,
    /// Invalid arguments or options.
    #[error("{0}")]
    InvalidInput(String),
    /// A local file operation failed.
    #[error("{context}: {cause}")]
    Io {
        /// What we were doing, including the path.
        context: String,
        /// The OS error, shown in the message (not a `source()`, as above).
        cause: std::io::Error,
    },
}

impl Error {
    /// The category of this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::WrongPassword => ErrorKind::WrongPassword,
            Error::RepositoryNotFound { .. } | Error::ForeignRepository { .. } => {
                ErrorKind::RepositoryNotFound
            }
            Error::NotFound { .. } | Error::DataLost(_) => ErrorKind::NotFound,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Locked { .. } | Error::LockUnreadable { .. } => ErrorKind::Locked,
            Error::Backend { cause: source, .. } => {
                if source.is_no_space() {
                    ErrorKind::NoSpace
                } else if source.is_not_found() {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Backend
                }
            }
            Error::SourceFailed(_) => ErrorKind::SourceFailed,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Io { cause: source, .. } => {
                if source.raw_os_error() == Some(libc::ENOSPC)
                    || source.raw_os_error() == Some(libc::EDQUOT)
                {
                    ErrorKind::NoSpace
                } else {
                    ErrorKind::Io
                }
            }
        }
    }

    pub(crate) fn corrupt(object: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause: source,
        }
    }

    pub(crate) fn backend(object: impl Into<String>, source: BackendError) -> Self {
        if matches!(source, BackendError::Interrupted) {
            return Error::Interrupted;
        }
        if source.is_not_found() {
            return Error::NotFound {
                object: object.into(),
            };
        }
        if let BackendError::Truncated(why) | BackendError::TooLarge(why) = source {
            return Error::Corrupt {
                object: object.into(),
                reason: why,
            };
        }
        Error::Backend {
            object: object.into(),
            cause: source,
        }
    }
}
