//! Human and JSON output helpers, and the progress display.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Prints a value as one line of JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `1.5 GiB`-style sizes.
pub(crate) fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// Local time for tables.
pub(crate) fn local_time(z: &jiff::Zoned) -> String {
    z.timestamp()
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A background progress bar driven by polling counters.
pub(crate) struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Draws `bytes` (and optional `total`) with a message computed by
    /// `message` every 200 ms. Hidden when `enabled` is false.
    pub(crate) fn start(
        enabled: bool,
        total: Option<Arc<AtomicU64>>,
        done: Arc<AtomicU64>,
        message: impl Fn() -> String + Send + 'static,
    ) -> Self {
        let bar = if enabled {
            let bar = ProgressBar::new(0);
            let style = if total.is_some() {
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {bytes} {bytes_per_sec} {msg}"
            };
            bar.set_style(ProgressStyle::with_template(style).expect("valid template"));
            bar
        } else {
            ProgressBar::hidden()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = enabled.then(|| {
            let bar = bar.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(t) = &total {
                        bar.set_length(t.load(Ordering::Relaxed));
                    }
                    bar.set_position(done.load(Ordering::Relaxed));
                    bar.set_message(message());
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        });
        Self { bar, stop, thread }
    }

    pub(crate) fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}
