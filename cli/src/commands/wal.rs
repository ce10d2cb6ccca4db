//! `vault wal push|fetch|list`: PostgreSQL WAL archiving into the
//! repository, for point-in-time recovery.
//!
//! `archive_command = 'vault wal push %p'` exits 0 only once the segment is
//! durable; pushing an identical segment again succeeds, a different one
//! fails loudly. `restore_command = 'vault wal fetch %f %p'` exits
//! [`exit::MISSING`] (4) for files the archive does not have (PostgreSQL
//! probes for history files and future segments), and
//! [`exit::ABORT_RECOVERY`] (255, set in `main.rs`) for every other
//! failure, so that PostgreSQL stops recovery instead of ending it there.

use crate::args::GlobalArgs;
use crate::config::{Config, SourceKind};
use crate::output::outln;
use crate::{exit, global, output};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use vault_engine::wal;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum WalCommand {
    /// Archive one WAL file (archive_command = 'vault wal push %p').
    Push {
        /// Path of the WAL file (%p).
        path: PathBuf,
        /// Source the WAL belongs to (default: the only postgres source).
        #[arg(long)]
        source: Option<String>,
    },
    /// Restore one WAL file (restore_command = 'vault wal fetch %f %p').
    #[command(after_help = FETCH_EXIT_CODES)]
    Fetch {
        /// WAL file name (%f).
        name: String,
        /// Where to write it (%p).
        path: PathBuf,
        #[arg(long)]
        source: Option<String>,
    },
    /// List archived WAL files, timelines and gaps.
    List {
        /// Source (default: the only postgres source).
        #[arg(value_name = "SOURCE", conflicts_with = "source")]
        positional: Option<String>,
        /// The same, as push and fetch take it.
        #[arg(long)]
        source: Option<String>,
    },
}

const FETCH_EXIT_CODES: &str = "\
Exit codes (PostgreSQL reads these; they differ from other commands'):
  0    the file is written to the path
  4    the archive does not have this file: PostgreSQL takes that as the end
       of the archived WAL (it also asks for files that never existed)
  255  any other failure (storage unreachable, damaged data, wrong password,
       unreadable config, bad arguments): PostgreSQL aborts recovery and does
       not start, instead of promoting without the rest of the WAL. Fix the
       cause and start it again.";

/// The postgres source WAL belongs to.
pub(crate) fn wal_source(config: Option<&Config>, given: Option<&str>) -> Result<String> {
    if let Some(name) = given {
        return Ok(name.to_owned());
    }
    let config =
        config.context("no --source given and no config file to find the postgres source in")?;
    let pg: Vec<&str> = config
        .sources
        .iter()
        .filter(|s| s.kind == SourceKind::Postgres)
        .map(|s| s.name())
        .collect();
    match pg.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => bail!("no postgres source in {}", config.path.display()),
        _ => bail!("several postgres sources: pass --source NAME"),
    }
}

pub(crate) fn run(g: &GlobalArgs, cmd: &WalCommand) -> Result<ExitCode> {
    let config = global::config(g)?;
    match cmd {
        WalCommand::Push { path, source } => {
            // A name no configured source has (a typo in archive_command)
            // would archive "successfully" where no restore looks.
            if let (Some(config), Some(name)) = (config, source.as_deref())
                && !config
                    .sources
                    .iter()
                    .any(|s| s.kind == SourceKind::Postgres && s.name() == name)
            {
                bail!(
                    "no postgres source named {name:?} in {}: WAL archived under that name would be found by no restore (a typo in archive_command?)",
                    config.path.display()
                );
            }
            let source = wal_source(config, source.as_deref())?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("WAL path has no file name")?
                .to_owned();
            let data =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let modified = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| jiff::Timestamp::try_from(t).ok());
            let repo = global::open_repository(g)?;
            let outcome = wal::push(&repo, &source, &name, data, modified)
                .with_context(|| format!("archiving {name}"))?;
            if !g.quiet && g.verbose > 0 {
                eprintln!("vault: {name}: {outcome:?}");
            }
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Fetch { name, path, source } => {
            let source = wal_source(config, source.as_deref())?;
            if !wal::is_valid_name(name) {
                bail!("{name:?} is not a WAL file name");
            }
            let repo = global::open_repository(g)?;
            let tmp = TempFile(path.with_extension("vault-tmp"));
            let mut file = std::fs::File::create(&tmp.0)
                .with_context(|| format!("creating {}", tmp.0.display()))?;
            let found = wal::fetch(&repo, &source, name, &mut file)?;
            if !found {
                eprintln!("vault: WAL file {name} is not in the archive");
                return Ok(ExitCode::from(exit::MISSING));
            }
            file.sync_all()
                .with_context(|| format!("writing {}", tmp.0.display()))?;
            std::fs::rename(&tmp.0, path).with_context(|| format!("writing {}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::List { positional, source } => {
            let source = wal_source(config, source.as_deref().or(positional.as_deref()))?;
            let repo = global::open_repository(g)?;
            let files = wal::list(&repo, &source)?;
            let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
            let gaps = wal::gaps(&names);
            let mut timelines: Vec<u32> = names
                .iter()
                .filter_map(|n| wal::position(n).map(|p| p.0))
                .collect();
            let histories = wal::timelines(&repo, &source)?;
            timelines.extend(histories.iter().map(|t| t.timeline));
            timelines.sort_unstable();
            timelines.dedup();
            if g.json {
                output::print_json(&serde_json::json!({
                    "source": source,
                    "files": names,
                    "timelines": timelines,
                    "histories": histories.iter().map(|t| serde_json::json!({
                        "timeline": t.timeline,
                        "parent": t.parents.last().map(|p| p.parent),
                        "switch_lsn": t.parents.last().map(|p| format!("{:X}/{:X}", p.switch_lsn >> 32, p.switch_lsn & 0xFFFF_FFFF)),
                        "reason": t.parents.last().map(|p| p.reason.clone()),
                        "archived": t.born.to_string(),
                    })).collect::<Vec<_>>(),
                    "gaps": gaps.iter().map(|(t, f, c)| serde_json::json!({"timeline": t, "first_missing": f, "count": c})).collect::<Vec<_>>(),
                }))?;
            } else {
                for n in &names {
                    outln!("{n}")?;
                }
                outln!("{} files on timelines {timelines:?}", names.len())?;
                for t in &histories {
                    if let Some(p) = t.parents.last() {
                        outln!(
                            "timeline {} forked from timeline {} at {:X}/{:X} ({}), archived {}",
                            t.timeline,
                            p.parent,
                            p.switch_lsn >> 32,
                            p.switch_lsn & 0xFFFF_FFFF,
                            p.reason,
                            output::local_time(&t.born.to_zoned(jiff::tz::TimeZone::system()))
                        )?;
                    }
                }
                for (t, f, c) in &gaps {
                    outln!("GAP: {c} segment(s) missing on timeline {t} from {f}")?;
                }
            }
            Ok(if gaps.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// A partly written file, removed when dropped: a failed fetch leaves
/// nothing in PostgreSQL's `pg_wal` (after a rename the remove finds
/// nothing).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
