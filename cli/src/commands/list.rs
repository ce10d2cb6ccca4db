//! `vault list`: the ids of one kind of repository object, one per line, as
//! `restic list` prints them (scripts that count snapshots or packs use it).

use crate::args::GlobalArgs;
use crate::global;
use crate::output::{self, outln};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::blob::BlobKind;
use vault_engine::repository::FileKind;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Snapshots,
    Index,
    Packs,
    Keys,
    Locks,
    /// Every blob of the index, as `data ID` or `tree ID`.
    Blobs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// What to list.
    #[arg(value_enum)]
    kind: Kind,
}

pub(crate) fn run(g: &GlobalArgs, args: &ListArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let file_kind = match args.kind {
        Kind::Snapshots => FileKind::Snapshot,
        Kind::Index => FileKind::Index,
        Kind::Packs => FileKind::Pack,
        Kind::Keys => FileKind::Key,
        Kind::Locks => FileKind::Lock,
        Kind::Blobs => {
            let index = repo.load_index()?;
            let mut blobs: Vec<_> = index
                .blobs()
                .map(|(id, at)| (id.to_hex(), kind_name(at.kind)))
                .collect();
            blobs.sort_unstable();
            if g.json {
                let rows: Vec<_> = blobs
                    .iter()
                    .map(|(id, kind)| serde_json::json!({"type": kind, "id": id}))
                    .collect();
                output::print_json(&rows)?;
            } else {
                for (id, kind) in &blobs {
                    outln!("{kind} {id}")?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    // Only names of an object's canonical form (64 hex; a lock's are its
    // own, repo-format.md §2): a leftover temporary file or a stranger's
    // file in the directory is no object.
    let mut ids: Vec<String> = repo
        .list(file_kind)?
        .into_iter()
        .filter_map(|info| {
            let name = info.path.rsplit('/').next()?;
            let canonical = match file_kind {
                FileKind::Lock => vault_engine::lock::is_lock_name(&info.path),
                _ => {
                    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                }
            };
            canonical.then(|| name.to_owned())
        })
        .collect();
    ids.sort_unstable();
    if g.json {
        output::print_json(&ids)?;
    } else {
        for id in &ids {
            outln!("{id}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Data => "data",
        BlobKind::Tree => "tree",
    }
}
