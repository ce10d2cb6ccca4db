//! `vault find PATTERN...`: entries matching glob patterns in every snapshot
//! (or the ones selected), as `restic find` prints them: per snapshot with
//! matches, a header, then mode, size, mtime and path of each entry. With
//! `--blob`, `--tree` or `--pack` the arguments are object ids, and what is
//! printed is where they are used, as restic prints it.
//!
//! `--json` prints one JSON array for the whole run, in restic's shape: for
//! patterns, `{"matches": [...], "hits": N, "snapshot": ID}` per snapshot
//! with matches; for object ids, one element per place an object is found.

use crate::args::GlobalArgs;
use crate::output::outln;
use crate::timespec::{self, TimeArg};
use crate::{global, output};
use anyhow::Result;
use std::process::ExitCode;
use vault_engine::find::{FindOptions, Finder, Match, ObjectFinder, ObjectMatch, ObjectQuery};
use vault_engine::id::{BlobId, SnapshotId};
use vault_engine::snapshot::Snapshot;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("object").args(["blob", "tree", "pack"])))]
pub(crate) struct FindArgs {
    /// Glob patterns. Without `/`: matched against names (`*.log`). With
    /// `/`: against the whole path in the snapshot (`/home/*/notes.txt`;
    /// `*` stays within a directory, `**` crosses them); one not starting
    /// with `/` may match at any depth. Patterns match the bytes of names;
    /// one that is not UTF-8 names an entry literally.
    /// With --blob, --tree or --pack: object ids, or hex prefixes of them.
    #[arg(value_name = "PATTERN", required = true, value_parser = clap::value_parser!(std::ffi::OsString))]
    patterns: Vec<std::ffi::OsString>,
    /// The arguments are data blob ids: print the files (and the tree
    /// listing each) that hold them, per snapshot: each blob once per file
    /// holding it, however many times the file lists it.
    #[arg(long)]
    blob: bool,
    /// The arguments are tree ids: print the directories they list (`/`
    /// for a snapshot's root), per snapshot.
    #[arg(long)]
    tree: bool,
    /// The arguments are pack ids: find the blobs the index places in
    /// them, data blobs as --blob and trees as --tree do.
    #[arg(long)]
    pack: bool,
    /// With --blob, --tree or --pack: also print the pack each object found
    /// is stored in, with its offset and lengths.
    #[arg(long, requires = "object")]
    show_pack_id: bool,
    /// Only search this snapshot: `latest` or an id prefix (repeatable)
    /// [default: every snapshot].
    #[arg(short = 's', long = "snapshot", value_name = "ID")]
    snapshots: Vec<String>,
    #[command(flatten)]
    filter: super::FilterArgs,
    /// Match names and paths regardless of case.
    #[arg(short = 'i', long, conflicts_with = "object")]
    ignore_case: bool,
    /// Only entries modified at or after TIME (restic's --oldest; pick
    /// snapshots with -s or --tag/--host/--path): `YYYY-MM-DD HH:MM[:SS]`
    /// or `YYYY-MM-DD` (local time; a date is its midnight), RFC 3339 with
    /// an offset, now, today or yesterday (today and yesterday are
    /// midnight, 00:00 local time).
    #[arg(short = 'O', long, value_name = "TIME", value_parser = timespec::parse_arg, conflicts_with = "object")]
    oldest: Option<TimeArg>,
    /// Only entries modified at or before TIME (as --oldest: yesterday is
    /// yesterday's midnight, so `--newest today` ends before today).
    #[arg(short = 'N', long, value_name = "TIME", value_parser = timespec::parse_arg, conflicts_with = "object")]
    newest: Option<TimeArg>,
}

/// The snapshots to search, oldest first.
fn selected(
    snaps: &[(SnapshotId, Snapshot)],
    damaged: Vec<(SnapshotId, vault_engine::Error)>,
    args: &FindArgs,
) -> Result<Vec<(SnapshotId, Snapshot)>> {
    let mut chosen = super::pick_snapshots(snaps, damaged, &args.snapshots, &args.filter)?;
    chosen.sort_by_key(|(_, s)| s.time.timestamp());
    Ok(chosen.into_iter().cloned().collect())
}

fn print_line(line: std::fmt::Arguments<'_>) -> vault_engine::Result<()> {
    outln!("{line}").map_err(output::engine_error)
}

pub(crate) fn run(g: &GlobalArgs, args: &FindArgs) -> Result<ExitCode> {
    let ids = if args.blob || args.tree || args.pack {
        Some(object_ids(args)?)
    } else {
        None
    };
    let repo = global::open_repository(g)?;
    let (snaps, damaged) = super::snapshots_and_damaged(&repo)?;
    let chosen = selected(&snaps, damaged, args)?;
    let index = repo.load_index()?;
    if let Some(ids) = ids {
        find_objects(g, args, &index, &repo, &chosen, ids)?;
        note_times(g, args);
        return Ok(ExitCode::SUCCESS);
    }
    let options = FindOptions {
        patterns: args.patterns.clone(),
        ignore_case: args.ignore_case,
        oldest: args.oldest.as_ref().map(|t| t.time.timestamp()),
        newest: args.newest.as_ref().map(|t| t.time.timestamp()),
    };
    // One finder for every snapshot: it reads each distinct directory tree
    // once rather than once per snapshot holding it.
    let mut finder = Finder::new(&repo, &index, &options)?;
    // --json: restic's shape, one array of the snapshots with matches,
    // each `{"matches": [...], "hits": N, "snapshot": ID}`.
    let mut groups = g.json.then(output::JsonArray::default);
    let mut total = 0u64;
    for (id, snap) in &chosen {
        let mut header = false;
        let earlier = total > 0;
        let mut matches = output::JsonArray::default();
        let found = finder.find(&snap.tree, &mut |m: &Match| {
            if let Some(groups) = &mut groups {
                return json_match(groups, &mut matches, m).map_err(output::engine_error);
            }
            if !header {
                header = true;
                if earlier {
                    print_line(format_args!(""))?;
                }
                print_line(format_args!(
                    "Found matching entries in snapshot {} from {}",
                    id.short(),
                    output::local_time(&snap.time)
                ))?;
            }
            print_line(format_args!(
                "{} {:>12} {} {}",
                super::ls::mode_string(m.kind, m.mode),
                m.size,
                output::local_time(&m.mtime.to_zoned(jiff::tz::TimeZone::UTC)),
                m.path
            ))
        });
        // A search failing midway (a tree missing or damaged) still closes
        // what --json printed, so that stdout stays one JSON value; the
        // error follows on stderr. The group's hits are those printed.
        let hits = match &found {
            Ok(hits) => *hits,
            Err(_) => matches.len(),
        };
        total += hits;
        // The group json_match opened.
        if matches.len() > 0 {
            matches.close()?;
            output::print_raw(&format!(
                ",\"hits\":{hits},\"snapshot\":\"{}\"}}",
                id.to_hex()
            ))?;
        }
        if let Err(e) = found {
            if let Some(groups) = groups {
                groups.close()?;
                outln!()?;
            }
            return Err(e.into());
        }
    }
    if let Some(groups) = groups {
        groups.close()?;
        outln!()?;
    } else if total == 0 && !g.quiet {
        outln!("no matches")?;
    }
    note_times(g, args);
    Ok(ExitCode::SUCCESS)
}

/// One match of `find PATTERN --json` as restic prints it (its field
/// names, and its `permissions` string), the snapshot's group opened
/// before its first.
fn json_match(
    groups: &mut output::JsonArray,
    matches: &mut output::JsonArray,
    m: &Match,
) -> Result<()> {
    if matches.len() == 0 {
        groups.next()?;
        output::print_raw("{\"matches\":")?;
    }
    let mut v = serde_json::to_value(m)?;
    v["permissions"] = super::ls::mode_string(m.kind, m.mode).into();
    matches.push(&v)
}

fn note_times(g: &GlobalArgs, args: &FindArgs) {
    for (flag, t) in [("--oldest", &args.oldest), ("--newest", &args.newest)] {
        if let Some(t) = t {
            t.note(g, flag);
        }
    }
}

/// The ids given with --blob, --tree or --pack, checked before anything
/// is opened: one that is not hex is a usage error (exit 2).
fn object_ids(args: &FindArgs) -> Result<Vec<String>> {
    args.patterns
        .iter()
        .map(|p| match p.to_str() {
            Some(id) if vault_engine::find::is_id_prefix(id) => Ok(id.to_ascii_lowercase()),
            _ => Err(crate::exit::Coded {
                code: 2,
                message: format!(
                    "{} is not an object id: give ids or hex prefixes of them",
                    p.to_string_lossy()
                ),
            }
            .into()),
        })
        .collect()
}

/// `find --blob/--tree/--pack`: where the objects are used, snapshot by
/// snapshot, as restic prints it; with --show-pack-id, then where each
/// object found is stored.
fn find_objects(
    g: &GlobalArgs,
    args: &FindArgs,
    index: &vault_engine::index::Index,
    repo: &vault_engine::Repository,
    chosen: &[(SnapshotId, Snapshot)],
    ids: Vec<String>,
) -> Result<()> {
    let mut query = ObjectQuery::default();
    if args.pack {
        // The index says what each pack holds.
        let mut unknown: Vec<&str> = ids.iter().map(String::as_str).collect();
        for (blob, loc) in index.blobs() {
            let pack = loc.pack.to_hex();
            if let Some(pos) = ids.iter().position(|p| pack.starts_with(p.as_str())) {
                unknown.retain(|u| *u != ids[pos]);
                match loc.kind {
                    vault_engine::blob::BlobKind::Data => query.blobs.push(blob.to_hex()),
                    vault_engine::blob::BlobKind::Tree => query.trees.push(blob.to_hex()),
                }
            }
        }
        if !unknown.is_empty() {
            anyhow::bail!(
                "no pack {} in the index (`vault repair index` indexes packs it lacks)",
                unknown.join(", ")
            );
        }
    } else if args.blob {
        query.blobs = ids;
    } else {
        query.trees = ids;
    }
    let mut finder = ObjectFinder::new(repo, index, &query)?;
    // --json: restic's shape, one array of every place found. restic
    // prints --show-pack-id's lines after it as text, which no JSON reader
    // takes; here each place lists the packs holding its object instead.
    let mut places = g.json.then(output::JsonArray::default);
    let mut total = 0u64;
    // The objects found, in the order first found, for --show-pack-id.
    let mut found: Vec<BlobId> = Vec::new();
    let mut result = Ok(());
    for (id, snap) in chosen {
        let time = snap
            .time
            .timestamp()
            .display_with_offset(snap.time.offset())
            .to_string();
        let found = finder.find(&snap.tree, &mut |m: &ObjectMatch| {
            if let Some(places) = &mut places {
                let mut v = serde_json::to_value(m).map_err(|e| output::engine_error(e.into()))?;
                v["snapshot"] = id.to_hex().into();
                v["time"] = time.as_str().into();
                if args.show_pack_id {
                    v["packs"] = index
                        .locations(&m.id)
                        .iter()
                        .map(|loc| {
                            serde_json::json!({
                                "pack_id": loc.pack.to_hex(),
                                "offset": loc.offset,
                                "length": loc.length,
                                "uncompressed_length": loc.raw_len,
                            })
                        })
                        .collect();
                }
                return places.push(&v).map_err(output::engine_error);
            }
            if args.show_pack_id && !found.contains(&m.id) {
                found.push(m.id);
            }
            let kind = match m.object_type {
                vault_engine::find::ObjectType::Blob => "blob",
                vault_engine::find::ObjectType::Tree => "tree",
            };
            print_line(format_args!("Found {kind} {}", m.id.to_hex()))?;
            match &m.parent_tree {
                Some(parent) => {
                    print_line(format_args!(" ... in file {}", m.path))?;
                    print_line(format_args!("     (tree {})", parent.to_hex()))?;
                }
                None => print_line(format_args!(" ... path {}", m.path))?,
            }
            print_line(format_args!(
                " ... in snapshot {} ({})",
                id.short(),
                output::local_time(&snap.time)
            ))
        });
        match found {
            Ok(n) => total += n,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // As for patterns: what --json printed is closed before an error.
    if let Some(places) = places {
        places.close()?;
        outln!()?;
        return Ok(result?);
    }
    result?;
    for id in &found {
        for loc in index.locations(id) {
            outln!("Object belongs to pack {}", loc.pack.to_hex())?;
            outln!(
                " ... Pack {}: <Blob ({}) {}, offset {}, length {}, uncompressed length {}>",
                loc.pack.short(),
                match loc.kind {
                    vault_engine::blob::BlobKind::Data => "data",
                    vault_engine::blob::BlobKind::Tree => "tree",
                },
                id.short(),
                loc.offset,
                loc.length,
                loc.raw_len
            )?;
        }
    }
    if total == 0 && !g.quiet {
        outln!("no matches")?;
    }
    Ok(())
}
