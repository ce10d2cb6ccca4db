//! Bandwidth limits (`--limit-upload`, `--limit-download`): a backup from a
//! database server must not fill the uplink its users need.
//!
//! Transfers are scheduled one after another on a shared timeline: an
//! object of `n` bytes books `n / rate` seconds after every booking before
//! it, may start when its slot starts, and returns no earlier than its slot
//! ends. However many threads upload or download, the bytes moved by any
//! point in time never exceed `rate × elapsed` plus the object in progress.
//! Within one object the store's client sends at full speed: the limit holds
//! on average over each object (packs are 16 MiB unless the repository was
//! made with another `--pack-size-mib`), not per packet.
//!
//! Lock objects are exempt: a few hundred bytes each, and a lock refresh
//! queued behind pack uploads at a low rate could arrive after the lock
//! counts as stale (five minutes), letting a prune elsewhere take over.
//!
//! Waits end early once the stop flag ([`RateLimited::stop_on`]) is set:
//! at a low rate a 16 MiB pack's slot lasts many seconds, and Ctrl-C would
//! otherwise wait out every booked slot. A pack whose slot has not started
//! is not sent (fails as interrupted); anything else is sent at once, since
//! a stopping command still writes what makes its work reusable (the index
//! of the packs it uploaded, §11.1). A transfer already sent returns at
//! once.

use super::{Backend, BackendError, ObjectInfo, ObjectLock, PutMode, RequestCounts};
use crate::repository::FileKind;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One direction's schedule.
#[derive(Debug)]
struct Schedule {
    bytes_per_sec: u64,
    /// When the last booked slot ends.
    booked_until: Mutex<Option<Instant>>,
}

impl Schedule {
    fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            booked_until: Mutex::new(None),
        }
    }

    /// Books a slot for `bytes`, returning its start and end. A slot never
    /// starts in the past: idle time is not saved up for a later burst.
    fn book(&self, bytes: u64) -> (Instant, Instant) {
        #[allow(clippy::cast_precision_loss)]
        let length = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut booked = self
            .booked_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let start = booked.map_or(now, |b| b.max(now));
        let end = start + length;
        *booked = Some(end);
        (start, end)
    }

    /// Runs `transfer` of `bytes` within a booked slot. If `stop` is set
    /// before the slot starts, a `droppable` transfer is not run at all and
    /// any other runs at once.
    fn run<T>(
        &self,
        bytes: u64,
        stop: Option<&AtomicBool>,
        droppable: bool,
        transfer: impl FnOnce() -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let (start, end) = self.book(bytes);
        if !sleep_until(start, stop) && droppable {
            return Err(BackendError::Interrupted);
        }
        let out = transfer();
        sleep_until(end, stop);
        out
    }

    /// Books and waits out a slot for `bytes` already moved (a download's
    /// size is known only once it arrived).
    fn account(&self, bytes: u64, stop: Option<&AtomicBool>) {
        let (_, end) = self.book(bytes);
        sleep_until(end, stop);
    }
}

fn is_lock(path: &str) -> bool {
    path.starts_with(FileKind::Lock.prefix())
}

/// Sleeps until `when`, or until `stop` is set (looked at every 50 ms).
/// Returns false if stopped.
fn sleep_until(when: Instant, stop: Option<&AtomicBool>) -> bool {
    const POLL: Duration = Duration::from_millis(50);
    loop {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return false;
        }
        let now = Instant::now();
        if when <= now {
            return true;
        }
        std::thread::sleep((when - now).min(POLL));
    }
}

/// A backend whose transfers are held to the given rates.
pub struct RateLimited {
    inner: Arc<dyn Backend>,
    upload: Option<Schedule>,
    download: Option<Schedule>,
    stop: Option<Arc<AtomicBool>>,
}

impl RateLimited {
    /// Limits `inner` to `upload` and `download` bytes per second (`None`:
    /// unlimited).
    #[must_use]
    pub fn new(inner: Arc<dyn Backend>, upload: Option<u64>, download: Option<u64>) -> Self {
        Self {
            inner,
            upload: upload.map(Schedule::new),
            download: download.map(Schedule::new),
            stop: None,
        }
    }

    /// Ends waits early once `stop` (the Ctrl-C flag) is set.
    #[must_use]
    pub fn stop_on(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn downloaded(
        &self,
        path: &str,
        got: Result<Bytes, BackendError>,
    ) -> Result<Bytes, BackendError> {
        if let (Some(schedule), Ok(bytes)) = (&self.download, &got)
            && !is_lock(path)
        {
            schedule.account(bytes.len() as u64, self.stop.as_deref());
        }
        got
    }
}

impl Backend for RateLimited {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, path: &str, data: Bytes, mode: PutMode) -> Result<(), BackendError> {
        match &self.upload {
            Some(schedule) if !is_lock(path) => {
                let pack = path.starts_with(FileKind::Pack.prefix());
                schedule.run(data.len() as u64, self.stop.as_deref(), pack, || {
                    self.inner.put(path, data, mode)
                })
            }
            _ => self.inner.put(path, data, mode),
        }
    }
    fn get(&self, path: &str, max_len: u64) -> Result<Bytes, BackendError> {
        self.downloaded(path, self.inner.get(path, max_len))
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        self.downloaded(path, self.inner.get_range(path, offset, len))
    }
    fn head(&self, path: &str) -> Result<u64, BackendError> {
        self.inner.head(path)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), BackendError> {
        self.inner.delete(path)
    }
    fn has_atomic_create(&self) -> bool {
        self.inner.has_atomic_create()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn set_object_lock(&self, lock: ObjectLock, verify: bool) -> Result<(), BackendError> {
        self.inner.set_object_lock(lock, verify)
    }
    fn extend_retention(&self, path: &str, until: jiff::Timestamp) -> Result<(), BackendError> {
        self.inner.extend_retention(path, until)
    }
    fn remove_stale_temporaries(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, BackendError> {
        self.inner.remove_stale_temporaries(older_than)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ObjectBackend;

    #[test]
    fn slots_follow_one_another_and_never_start_in_the_past() {
        let schedule = Schedule::new(1000);
        let (s1, e1) = schedule.book(500);
        let (s2, e2) = schedule.book(1000);
        assert_eq!(e1 - s1, Duration::from_millis(500));
        assert_eq!(s2, e1);
        assert_eq!(e2 - s2, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(1600));
        let (s3, _) = schedule.book(1);
        assert!(s3 >= Instant::now() - Duration::from_millis(50));
    }

    /// Stopped, a transfer sent in its slot returns without waiting the
    /// slot out, and one whose slot lies ahead is not sent. Each slot here
    /// lasts an hour: without the stop flag this test would not end.
    #[test]
    fn a_stop_ends_the_waits() {
        let inner: Arc<dyn Backend> = Arc::new(ObjectBackend::memory());
        let stop = Arc::new(AtomicBool::new(false));
        let limited = RateLimited::new(inner.clone(), Some(1), Some(1)).stop_on(stop.clone());
        let hour = Bytes::from(vec![0; 3600]);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::SeqCst);
            });
            limited
                .put("data/a", hour.clone(), PutMode::Create)
                .unwrap();
        });
        assert!(inner.head("data/a").is_ok());
        let err = limited
            .put("data/b", hour.clone(), PutMode::Create)
            .unwrap_err();
        assert!(matches!(err, BackendError::Interrupted), "{err}");
        assert!(inner.head("data/b").unwrap_err().is_not_found());
        // What a stopping command writes last (the index of the packs it
        // sent) goes out at once, its slot ahead or not.
        limited.put("index/i", hour, PutMode::Create).unwrap();
        assert!(inner.head("index/i").is_ok());
        assert_eq!(limited.get("data/a", u64::MAX).unwrap().len(), 3600);
    }

    #[test]
    fn transfers_from_several_threads_share_one_rate() {
        // 4 threads x 2 objects of 25 kB at 200 kB/s: at least 1 s in all
        // (a lower bound: a slow machine only adds time).
        let inner: Arc<dyn Backend> = Arc::new(ObjectBackend::memory());
        let limited = Arc::new(RateLimited::new(inner, Some(200_000), Some(200_000)));
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4 {
                let limited = &limited;
                s.spawn(move || {
                    for n in 0..2 {
                        let data = Bytes::from(vec![t as u8; 25_000]);
                        limited
                            .put(&format!("o/{t}-{n}"), data, PutMode::Create)
                            .unwrap();
                    }
                });
            }
        });
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        for t in 0..4 {
            assert_eq!(
                limited.get(&format!("o/{t}-0"), u64::MAX).unwrap().len(),
                25_000
            );
        }
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
        // Lock objects book no time: they never wait behind packs.
        let busy = RateLimited::new(Arc::new(ObjectBackend::memory()), Some(1000), Some(1000));
        let booked =
            |schedule: &Option<Schedule>| *schedule.as_ref().unwrap().booked_until.lock().unwrap();
        busy.put("data/x", Bytes::from(vec![0; 10]), PutMode::Create)
            .unwrap();
        let (up, down) = (booked(&busy.upload), booked(&busy.download));
        busy.put(
            "locks/exclusive",
            Bytes::from(vec![0; 500]),
            PutMode::Overwrite,
        )
        .unwrap();
        busy.get("locks/exclusive", u64::MAX).unwrap();
        assert_eq!((booked(&busy.upload), booked(&busy.download)), (up, down));
        busy.get("data/x", u64::MAX).unwrap();
        assert_ne!(booked(&busy.download), down);
        // Unlimited directions are left alone.
        let inner: Arc<dyn Backend> = Arc::new(ObjectBackend::memory());
        let uploads_only = RateLimited::new(inner, Some(1), None);
        assert!(
            uploads_only
                .get("missing", u64::MAX)
                .unwrap_err()
                .is_not_found()
        );
    }
}
