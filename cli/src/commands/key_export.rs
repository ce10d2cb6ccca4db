//! `vault key export --paper`: the master key in a printable form with
//! checks, to keep offline. It restores access when every password and key
//! file is lost (`vault key import`). It is written only to standard output
//! or to a new file readable by its owner alone, never to logs.

use crate::args::GlobalArgs;
use crate::global;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use vault_engine::key::paper;

#[derive(Debug, clap::Args)]
pub(crate) struct KeyExportArgs {
    /// Printable text with a check per line (the only format; accepted for
    /// borg's spelling).
    #[arg(long)]
    paper: bool,
    /// Write to this new file (mode 0600) instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub(crate) fn run(g: &GlobalArgs, args: &KeyExportArgs) -> Result<ExitCode> {
    let _ = args.paper; // the only format
    let repo = global::open_repository(g)?;
    let text = paper::encode(repo.key(), &repo.config().id)?;
    let json_line;
    let body: &str = if g.json {
        json_line = serde_json::to_string(&serde_json::json!({
            "message_type": "paper_key",
            "repository": repo.config().id,
            "paper": text.as_str(),
        }))? + "\n";
        &json_line
    } else {
        &text
    };
    match &args.output {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
            if !g.quiet && !g.json {
                eprintln!(
                    "wrote the paper key of repository {} to {}; keep it offline",
                    &repo.config().id[..10],
                    path.display()
                );
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(body.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
