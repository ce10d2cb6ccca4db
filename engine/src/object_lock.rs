//! Which stored objects are still under S3 Object Lock retention
//! (repo-format.md §11.8), so that prune and forget leave them alone.
//!
//! Every upload of a locked repository carries its own retain-until date,
//! `upload time + days`. Asking the store for each object's retention would
//! cost a request per object; the listing already holds each object's
//! `Last-Modified`, the upload time as the store saw it, so the expiry is
//! computed from it, plus [`EXPIRY_SLACK_SECS`] because the retain-until
//! date was computed from the writer's clock, not the store's.
//!
//! Deleting a locked object would not fail on a versioned bucket: a plain
//! DELETE only adds a delete marker, hiding the object while its locked
//! version keeps using space. So "locked" means "deleting it now frees
//! nothing and hides data the lock is meant to keep": prune and forget
//! defer such objects instead of relying on the store to refuse.

use crate::backend::{BackendError, ObjectInfo, ObjectLock};
use crate::error::{Error, Result};
use crate::repository::{FileKind, Repository, fetch_all};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Added to a computed expiry to cover clock differences between the
/// writer that uploaded an object and the store that dated it.
pub const EXPIRY_SLACK_SECS: i64 = 3600;

/// When the retention of `info` ends, if it has not ended at `now`.
///
/// Objects under `locks/` are never locked. An object whose upload time
/// the backend does not report counts as locked for ever: unknown is not
/// expired.
#[must_use]
pub fn locked_until(
    lock: Option<ObjectLock>,
    info: &ObjectInfo,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let lock = lock?;
    if info.path.starts_with(FileKind::Lock.prefix()) {
        return None;
    }
    let Some(written) = info.modified else {
        return Some(jiff::Timestamp::MAX);
    };
    let expiry = lock
        .retain_until(written)
        .checked_add(jiff::SignedDuration::from_secs(EXPIRY_SLACK_SECS))
        .unwrap_or(jiff::Timestamp::MAX);
    (expiry > now).then_some(expiry)
}

/// Objects of `kind` still locked at `now`, by id, with the end of their
/// retention. Empty (and no listing) when the repository is not locked.
pub fn locked_objects<T>(
    repo: &Repository,
    kind: FileKind,
    now: jiff::Timestamp,
) -> Result<HashMap<T, jiff::Timestamp>>
where
    T: std::str::FromStr + std::fmt::Display + std::hash::Hash + Eq,
{
    let lock = repo.config().object_lock;
    if lock.is_none() {
        return Ok(HashMap::new());
    }
    Ok(repo
        .list(kind)?
        .iter()
        .filter_map(|info| {
            let until = locked_until(lock, info, now)?;
            let name = info.path.rsplit('/').next()?;
            let id: T = name.parse().ok()?;
            (id.to_string() == name).then_some((id, until))
        })
        .collect())
}

/// What [`extend_retention`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Extension {
    /// Objects whose retention now ends at `until`.
    pub objects: u64,
    /// The new end of their retention: `now` + the repository's days.
    pub until: jiff::Timestamp,
}

/// Extends the retention of every object the repository holds (except
/// lock objects) to `now` + the repository's days, so that everything it
/// shows now, however long ago it was uploaded, stays protected that long.
/// Each upload is locked only from its own upload time, and backups keep
/// referring to old packs (deduplication), the config and the key files;
/// without this their protection ends while snapshots still need them.
/// `None` when the repository is not locked, or when this copy of a locked
/// one lies on storage that cannot lock (a local mirror).
pub fn extend_retention(repo: &Repository, now: jiff::Timestamp) -> Result<Option<Extension>> {
    let Some(lock) = repo.config().object_lock else {
        return Ok(None);
    };
    let until = lock.retain_until(now);
    let paths: Vec<String> = repo
        .backend()
        .list("")
        .map_err(|e| Error::backend("the repository listing", e))?
        .into_iter()
        .map(|o| o.path)
        .filter(|p| !p.starts_with(FileKind::Lock.prefix()))
        .collect();
    // The first alone: storage that cannot lock says so on it.
    if let Some(first) = paths.first() {
        match repo.backend().extend_retention(first, until) {
            Ok(()) => {}
            Err(BackendError::Unsupported(why)) => {
                tracing::warn!("object lock retention not extended: {why}");
                return Ok(None);
            }
            Err(e) => return Err(Error::backend(first, e)),
        }
    }
    let positions: Vec<usize> = (1..paths.len()).collect();
    // After the first failure (missing permission, say) the rest are
    // skipped rather than each failing the same way.
    let failed = AtomicBool::new(false);
    let results = fetch_all(&positions, |&i| {
        let path = paths.get(i)?;
        if failed.load(Ordering::Relaxed) {
            return None;
        }
        let result = repo.backend().extend_retention(path, until);
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        Some(result)
    });
    for (i, result) in results {
        if let Some(Err(e)) = result {
            return Err(Error::backend(paths.get(i).map_or("", String::as_str), e));
        }
    }
    Ok(Some(Extension {
        objects: paths.len() as u64,
        until,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::RetentionMode;

    fn info(path: &str, modified: Option<&str>) -> ObjectInfo {
        ObjectInfo {
            path: path.into(),
            size: 1,
            modified: modified.map(|m| m.parse().unwrap()),
        }
    }

    const LOCK: Option<ObjectLock> = Some(ObjectLock {
        mode: RetentionMode::Governance,
        days: 1,
    });

    #[test]
    fn locked_until_counts_days_from_the_upload_plus_slack() {
        let pack = info("data/ab/ab12", Some("2026-11-20T10:00:00Z"));
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(
            locked_until(LOCK, &pack, at("2026-11-21T10:30:00Z")),
            Some(at("2026-11-21T11:00:00Z"))
        );
        assert_eq!(locked_until(LOCK, &pack, at("2026-11-21T11:00:00Z")), None);
        assert_eq!(locked_until(None, &pack, at("2026-11-20T10:00:00Z")), None);
    }

    #[test]
    fn lock_files_are_never_locked_and_unknown_ages_always_are() {
        let now = "2030-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(locked_until(LOCK, &info("locks/x", None), now), None);
        assert_eq!(
            locked_until(LOCK, &info("index/x", None), now),
            Some(jiff::Timestamp::MAX)
        );
    }
}
