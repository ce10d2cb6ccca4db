//! Stopping work from outside while it blocks: Ctrl-C (a shared flag the
//! CLI's signal handler sets) or a deadline. Work that checks the flag
//! between steps needs none of this; it is for work that waits on something
//! else (a child process's output, uploads draining under a rate limit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a [`Watch`] asks of its callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Stop: the cancel flag was set.
    Cancelled,
    /// Stop: the deadline passed.
    TimedOut,
    /// Still running a grace period after one of the above: stop for good
    /// (SIGKILL where the first was SIGTERM).
    Force,
}

/// Calls its callback from its own thread when the cancel flag is set or
/// the deadline passes, and once more with [`Stop::Force`] if it is still
/// not dropped a grace period later. Polls every 100 ms; dropping it ends
/// the thread within one poll, and no call starts after the drop returns.
pub(crate) struct Watch {
    done: Arc<AtomicBool>,
}

/// How long a stopped child has to exit before [`Stop::Force`].
pub(crate) const GRACE: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(100);

impl Watch {
    /// Calls `on_cancel` once if `cancel` is set before the drop.
    pub(crate) fn on_cancel(
        cancel: Arc<AtomicBool>,
        on_cancel: impl FnOnce() + Send + 'static,
    ) -> Self {
        let mut once = Some(on_cancel);
        Self::start(cancel, None, move |stop| {
            if stop == Stop::Cancelled
                && let Some(f) = once.take()
            {
                f();
            }
        })
    }

    /// Calls `on_stop(Cancelled | TimedOut)` when `cancel` is set or
    /// `deadline` passes, then `on_stop(Force)` after [`GRACE`] if still
    /// not dropped.
    pub(crate) fn start(
        cancel: Arc<AtomicBool>,
        deadline: Option<Instant>,
        mut on_stop: impl FnMut(Stop) + Send + 'static,
    ) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let until = done.clone();
        // Detached: it notices `done` within one poll and ends.
        let _ = std::thread::Builder::new()
            .name("vault-cancel".into())
            .spawn(move || {
                let why = loop {
                    if until.load(Ordering::SeqCst) {
                        return;
                    }
                    if cancel.load(Ordering::SeqCst) {
                        break Stop::Cancelled;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break Stop::TimedOut;
                    }
                    std::thread::sleep(POLL);
                };
                on_stop(why);
                let forced = Instant::now() + GRACE;
                while Instant::now() < forced {
                    if until.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(POLL);
                }
                if !until.load(Ordering::SeqCst) {
                    on_stop(Stop::Force);
                }
            });
        Self { done }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recorder() -> (Arc<Mutex<Vec<Stop>>>, impl FnMut(Stop) + Send + 'static) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        (seen, move |s| log.lock().unwrap().push(s))
    }

    #[test]
    fn deadline_fires_timed_out_and_not_cancelled() {
        let (seen, f) = recorder();
        let w = Watch::start(
            Arc::new(AtomicBool::new(false)),
            Some(Instant::now() + Duration::from_millis(50)),
            f,
        );
        std::thread::sleep(Duration::from_millis(400));
        drop(w);
        assert_eq!(*seen.lock().unwrap(), vec![Stop::TimedOut]);
    }

    #[test]
    fn cancel_fires_and_drop_before_anything_fires_nothing() {
        let cancel = Arc::new(AtomicBool::new(false));
        let (seen, f) = recorder();
        drop(Watch::start(cancel.clone(), None, f));
        cancel.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        assert!(seen.lock().unwrap().is_empty());

        let (seen, f) = recorder();
        let w = Watch::start(cancel, Some(Instant::now() + Duration::from_secs(60)), f);
        std::thread::sleep(Duration::from_millis(300));
        drop(w);
        assert_eq!(*seen.lock().unwrap(), vec![Stop::Cancelled]);
    }
}
