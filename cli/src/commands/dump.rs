//! `vault dump`: one file of a snapshot to standard output, e.g.
//! `vault dump latest /phone.sql | psql phone_test`, or a directory as a
//! tar stream, e.g. `vault dump latest /srv/uploads | tar -x -C /restore`
//! (or a zip one, `--archive zip`, as restic's).

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::global;
use anyhow::Result;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vault_engine::tree::NodeKind;
use vault_engine::{archive, restore};

/// The archive a directory is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Archive {
    /// Mode, owner, mtime, extended attributes, hard links, symlinks,
    /// devices and fifos.
    Tar,
    /// Mode, mtime and symlinks (as restic's zip); no owners, extended
    /// attributes or hard links (a copy each), and devices, fifos and
    /// sockets are left out.
    Zip,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DumpArgs {
    /// Snapshot: `latest` or an id prefix.
    snapshot: String,
    /// Path of a file inside the snapshot, or of a directory (`/` for
    /// everything), which is written as an archive (--archive). Any bytes,
    /// as file names are: it need not be UTF-8.
    #[arg(value_parser = clap::value_parser!(OsString))]
    path: OsString,
    /// The archive a directory is written as; a file is written as it is.
    #[arg(short = 'a', long, value_enum, default_value = "tar")]
    archive: Archive,
    #[command(flatten)]
    filter: FilterArgs,
}

pub(crate) fn run(g: &GlobalArgs, args: &DumpArgs, cancel: Arc<AtomicBool>) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let (_, snap) = super::pick_snapshot(&repo, Some(&args.snapshot), None, &args.filter)?;
    let index = repo.load_index()?;
    let mut out = Cancellable {
        out: std::io::stdout().lock(),
        cancel: &cancel,
    };
    let mut at = args.path.as_bytes();
    while let Some(rest) = at.strip_prefix(b"/") {
        at = rest;
    }
    while let Some(rest) = at.strip_suffix(b"/") {
        at = rest;
    }
    let at = PathBuf::from(OsStr::from_bytes(&[b"/", at].concat()));
    let write = match args.archive {
        Archive::Tar => archive::write_tar,
        Archive::Zip => archive::write_zip,
    };
    let written = if at == Path::new("/") {
        write(&repo, &index, &snap.tree, &at, None, &mut out).map(drop)
    } else {
        let node = restore::find_node(&repo, &index, &snap.tree, &at)?;
        if node.kind == NodeKind::Dir {
            write(&repo, &index, &snap.tree, &at, Some(&node), &mut out).map(drop)
        } else {
            restore::dump(&repo, &index, &node, &mut out).map(drop)
        }
    };
    // Stopped by Ctrl-C or SIGTERM: exit 130, never 0 for a cut-off stream.
    if cancel.load(Ordering::Relaxed) {
        return Err(vault_engine::Error::Interrupted.into());
    }
    written?;
    Ok(ExitCode::SUCCESS)
}

/// Output that stops taking bytes once the command is interrupted: dump
/// streams until its last byte otherwise, gigabytes after a SIGTERM.
struct Cancellable<'a, W> {
    out: W,
    cancel: &'a AtomicBool,
}

impl<W: Write> Write for Cancellable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: write_all retries on that.
            return Err(std::io::Error::other("interrupted"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
