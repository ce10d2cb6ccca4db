//! Request counts of the last operation on each repository, for `vault
//! stats`: object stores bill per request, and users budget for it.
//!
//! Every backend a command opens is registered here; when the command ends
//! (successfully or not: failed requests are billed too) its counts are
//! written to `$XDG_STATE_HOME/vault/requests.json`, keyed by the
//! repository's location (which never holds credentials). Recording is
//! best effort: a command never fails because its counts could not be kept.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vault_engine::backend::{Backend, RequestCounts};

static OPENED: Mutex<Vec<Arc<dyn Backend>>> = Mutex::new(Vec::new());

/// One command's requests to one repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Operation {
    pub(crate) command: String,
    pub(crate) finished: String,
    pub(crate) success: bool,
    pub(crate) requests: RequestCounts,
}

fn path() -> PathBuf {
    crate::status::state_dir().join("requests.json")
}

/// Counts the requests `backend` makes from now on.
pub(crate) fn track(backend: &Arc<dyn Backend>) {
    if backend.requests().is_some() {
        OPENED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::clone(backend));
    }
}

/// Requests made so far by this process, per repository location.
fn totals() -> BTreeMap<String, RequestCounts> {
    let mut out: BTreeMap<String, RequestCounts> = BTreeMap::new();
    let opened = OPENED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for backend in opened.iter() {
        let Some(c) = backend.requests() else {
            continue;
        };
        let sum = out.entry(backend.location()).or_default();
        sum.put += c.put;
        sum.get += c.get;
        sum.head += c.head;
        sum.list += c.list;
        sum.delete += c.delete;
    }
    out
}

/// Requests made so far by this process to the repository at `location`.
pub(crate) fn so_far(location: &str) -> Option<RequestCounts> {
    totals().remove(location)
}

/// The last recorded operation on the repository at `location`.
pub(crate) fn last(location: &str) -> Option<Operation> {
    let bytes = crate::status::read_private(&path()).ok()?;
    let mut all: BTreeMap<String, Operation> = serde_json::from_slice(&bytes).ok()?;
    all.remove(location)
}

/// Records this process's requests, per repository, as each one's last
/// operation.
pub(crate) fn record(command: &str, success: bool) {
    let totals = totals();
    if totals.is_empty() {
        return;
    }
    let path = path();
    let mut all: BTreeMap<String, Operation> = crate::status::read_private(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let finished = jiff::Timestamp::now().to_string();
    for (location, requests) in totals {
        all.insert(
            location,
            Operation {
                command: command.to_owned(),
                finished: finished.clone(),
                success,
                requests,
            },
        );
    }
    let written = serde_json::to_vec_pretty(&all)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::status::write_atomic(&path, &bytes));
    if let Err(e) = written {
        tracing::debug!("not recording request counts in {}: {e}", path.display());
    }
}
