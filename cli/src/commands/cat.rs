//! `vault cat`: print a decrypted repository object for debugging.

use super::FilterArgs;
use crate::args::GlobalArgs;
use crate::output::outln;
use crate::{global, output};
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
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
    /// Object id (or `latest` for snapshot); every kind but config needs
    /// one. For tree, a snapshot (`latest` or an id prefix) and, after a
    /// colon, a directory in it: `latest:/srv/www` prints that directory's
    /// tree, the snapshot alone its root's (as restic's `SNAPSHOT:SUBFOLDER`).
    /// The directory is any bytes, as file names are.
    #[arg(
        required_if_eq_any([("kind", "snapshot"), ("kind", "index"), ("kind", "key"), ("kind", "tree")]),
        value_parser = clap::value_parser!(OsString)
    )]
    id: Option<OsString>,
}

pub(crate) fn run(g: &GlobalArgs, args: &CatArgs) -> Result<ExitCode> {
    let repo = global::open_repository(g)?;
    let need_id = || -> Result<&str> {
        let id = args.id.as_deref().context("this kind needs an id")?;
        id.to_str()
            .with_context(|| format!("{} is not a valid id", id.to_string_lossy()))
    };
    let value: serde_json::Value = match args.kind {
        Kind::Config => {
            let mut v = serde_json::to_value(repo.config())?;
            // The chunker seed is a secret: it lets anyone predict cut points.
            v["chunker"]["seed"] = "[redacted]".into();
            v
        }
        Kind::Snapshot => {
            let (id, snap) =
                super::pick_snapshot(&repo, Some(need_id()?), None, &FilterArgs::default())?;
            let mut v = serde_json::to_value(&snap)?;
            v["id"] = id.to_hex().into();
            v
        }
        Kind::Tree => {
            let spec = args.id.as_deref().context("tree needs a snapshot")?;
            let (snapshot, dir) = super::split_subfolder(spec);
            let snapshot = snapshot
                .to_str()
                .with_context(|| format!("{} is not a snapshot", snapshot.to_string_lossy()))?;
            let (_, snap) =
                super::pick_snapshot(&repo, Some(snapshot), None, &FilterArgs::default())?;
            let index = repo.load_index()?;
            let tree = super::subfolder_tree(&repo, &index, &snap, snapshot, dir)?;
            serde_json::to_value(repo.read_tree(&index, &tree)?)?
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
            let bytes = repo.backend().get(
                &matches[0].path,
                vault_engine::repository::FileKind::Key.max_len(),
            )?;
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
