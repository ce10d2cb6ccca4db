//! `vault cat`: print a decrypted repository object for debugging.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result, bail};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Config,
    Snapshot,
    Index,
    Key,
    Tree,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CatArgs {
    /// Object kind.
    #[arg(value_enum)]
    kind: Kind,
    /// Object id (or `latest` for snapshot; snapshot id for tree); every
    /// kind but config needs one.
    #[arg(required_if_eq_any([("kind", "snapshot"), ("kind", "index"), ("kind", "key"), ("kind", "tree")]))]
    id: Option<String>,
}

pub(crate) fn run(g: &GlobalArgs, args: &CatArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let need_id = || args.id.as_deref().context("this kind needs an id");
    let value: serde_json::Value = match args.kind {
        Kind::Config => {
            let mut v = serde_json::to_value(repo.config())?;
            // The chunker seed is a secret: it lets anyone predict cut points.
            v["chunker"]["seed"] = "[redacted]".into();
            v
        }
        Kind::Snapshot | Kind::Tree => {
            let (id, snap) =
                super::pick_snapshot(&repo, Some(need_id()?), None, &FilterArgs::default())?;
            if matches!(args.kind, Kind::Tree) {
                let index = repo.load_index()?;
                serde_json::to_value(repo.read_tree(&index, &snap.tree)?)?
            } else {
                let mut v = serde_json::to_value(&snap)?;
                v["id"] = id.to_hex().into();
                v
            }
        }
        Kind::Index => {
            let id = need_id()?
                .parse()
                .context("index id must be 64 hex characters")?;
            let file = repo.load_index_file(&id)?;
            serde_json::json!({
                "packs": file.packs.iter().map(|p| serde_json::json!({
                    "id": p.id.to_hex(),
                    "size": p.size,
                    "blobs": p.blobs.iter().map(|b| serde_json::json!({
                        "id": b.id.to_hex(), "type": b.kind, "offset": b.offset,
                        "length": b.length, "uncompressed_length": b.raw_len,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "supersedes": file.supersedes.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
            })
        }
        Kind::Key => {
            let id = need_id()?;
            let infos = repo.list(vault_engine::repository::FileKind::Key)?;
            let matches: Vec<_> = infos
                .iter()
                .filter(|i| i.path.rsplit('/').next().is_some_and(|n| n.starts_with(id)))
                .collect();
            if matches.len() != 1 {
                bail!("key id {id} matches {} keys", matches.len());
            }
            let bytes = repo.backend().get(&matches[0].path)?;
            serde_json::from_slice(&bytes)?
        }
    };
    if g.json {
        output::print_json(&value)?;
    } else {
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
