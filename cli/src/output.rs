//! Human and JSON output helpers, and the progress display.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// `println!` that returns an error instead of panicking when standard
/// output fails (a full disk behind `vault ls latest > file`, a closed
/// pipe): `outln!("{x}")?`. The error is the `std::io::Error` under the
/// context "writing output", so `exit` finds it in the chain: a full disk
/// exits 7, a closed pipe ends the command quietly with 0.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::written({
            use ::std::io::Write as _;
            ::std::writeln!(::std::io::stdout().lock(), $($arg)*)
        })
    };
}
pub(crate) use outln;

/// The outcome of a write to standard output, under the context that says so.
pub(crate) fn written(result: std::io::Result<()>) -> anyhow::Result<()> {
    anyhow::Context::context(result, "writing output")
}

/// An output error as the engine's I/O error, for output written from an
/// engine callback (a tree walk, a diff, a find): the `std::io::Error`
/// keeps its kind and OS error, so a full disk still exits 7 and a closed
/// pipe still ends the command quietly.
pub(crate) fn engine_error(e: anyhow::Error) -> vault_engine::Error {
    let cause = match e.downcast::<std::io::Error>() {
        Ok(io) => io,
        Err(e) => match e
            .downcast_ref::<serde_json::Error>()
            .and_then(serde_json::Error::io_error_kind)
        {
            Some(kind) => std::io::Error::from(kind),
            None => std::io::Error::other(format!("{e:#}")),
        },
    };
    vault_engine::Error::Io {
        context: "writing output".into(),
        cause,
    }
}

/// Prints a value as one line of JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    // Serialised first: a `serde_json::Error` from writing does not keep
    // the `std::io::Error` in its source chain, where `exit` looks for a
    // full disk or a closed pipe.
    let line = serde_json::to_string(value)?;
    outln!("{line}")
}

/// Writes `text` to stdout as it is, without a newline.
pub(crate) fn print_raw(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    written(std::io::stdout().lock().write_all(text.as_bytes()))
}

/// One JSON array written to stdout element by element, one element per
/// line: a whole run's results form one document (as restic's `find
/// --json` prints them) while none of them is held in memory, which a
/// search matching millions of entries needs.
#[derive(Default)]
pub(crate) struct JsonArray {
    len: u64,
}

impl JsonArray {
    /// Writes `value` as the next element.
    pub(crate) fn push<T: serde::Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        // Serialised first, as in `print_json`.
        let text = serde_json::to_string(value)?;
        self.next()?;
        print_raw(&text)
    }

    /// Starts the next element, which the caller then writes with
    /// [`print_raw`] (an object holding an array of its own).
    pub(crate) fn next(&mut self) -> anyhow::Result<()> {
        self.len += 1;
        print_raw(if self.len == 1 { "[\n" } else { ",\n" })
    }

    /// Closes the array (`[]` when nothing was pushed), without a newline.
    pub(crate) fn close(self) -> anyhow::Result<()> {
        print_raw(if self.len == 0 { "[]" } else { "\n]" })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

/// `1.5 GiB`-style sizes.
pub(crate) fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// A coarse age or duration for tables: `45m`, `26h`, `9d`.
pub(crate) fn duration(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 86_400 * 2 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86_400)
    }
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
