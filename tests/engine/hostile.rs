//! Hostile repositories: objects written by someone holding the master key
//! (or a buggy writer) that are sealed and hash to their ids, yet describe
//! what no backup produces. Every reader must refuse them as damage
//! (`ErrorKind::Corrupt`, exit 5) naming the object, and `check` must report
//! them, rather than fail some other way, run out of memory or run forever.
//!
//! Fixtures: an in-memory repository with one real stream backup (for a
//! snapshot to copy), plus blobs stored by hand ([`store`]: one pack, one
//! index file, with any encoding) and snapshots pointing at crafted trees.

use crate::support::{MEDIUM_CHUNKER, init_memory, options};
use std::path::PathBuf;
use std::sync::Arc;
use vault_engine::ErrorKind;
use vault_engine::blob::BlobKind;
use vault_engine::check::{self, CheckOptions, CheckProgress, CheckReport, VerifySubset};
use vault_engine::find::{self, FindOptions};
use vault_engine::id::{BlobId, PackId};
use vault_engine::index::{IndexFile, IndexedPack};
use vault_engine::mount::BlobCache;
use vault_engine::pack::{PackWriter, PackedBlob};
use vault_engine::repository::Repository;
use vault_engine::restore;
use vault_engine::tree::{MAX_DEPTH, Node, NodeKind, Tree};

/// A blob to store: kind, plaintext, and its encoding (`tag || payload`).
struct Blob {
    kind: BlobKind,
    plain: Vec<u8>,
    encoded: Vec<u8>,
}

impl Blob {
    /// A tree stored raw (tag 0).
    fn tree(tree: &Tree) -> Self {
        Self::raw(BlobKind::Tree, tree.encode())
    }

    /// `plain` stored raw (tag 0).
    fn raw(kind: BlobKind, plain: Vec<u8>) -> Self {
        let mut encoded = vec![0u8];
        encoded.extend_from_slice(&plain);
        Self {
            kind,
            plain,
            encoded,
        }
    }

    fn id(&self, repo: &Repository) -> BlobId {
        repo.key().blob_id(&self.plain)
    }
}

/// Stores `blobs` in one pack with one index file; returns their ids.
/// Seals `blob` as a pack stores it: its id and sealed bytes.
fn seal(repo: &Repository, blob: &Blob) -> (BlobId, Vec<u8>) {
    let id = blob.id(repo);
    let mut aad = [0u8; 33];
    aad[0] = blob.kind.to_byte();
    aad[1..].copy_from_slice(&id.0);
    (id, repo.key().seal_blob(&aad, blob.encoded.clone()))
}

fn store(repo: &Repository, blobs: &[Blob]) -> Vec<BlobId> {
    let mut pack = PackWriter::new();
    let mut ids = Vec::new();
    for blob in blobs {
        let (id, sealed) = seal(repo, blob);
        pack.add(blob.kind, id, blob.plain.len() as u32, sealed);
        ids.push(id);
    }
    let pack = pack.finish(repo.key());
    save_indexed(repo, pack.id, pack.bytes, pack.blobs);
    ids
}

/// Stores a pack and an index file listing `blobs` in it.
fn save_indexed(repo: &Repository, id: PackId, bytes: Vec<u8>, blobs: Vec<PackedBlob>) {
    let size = bytes.len() as u64;
    repo.save_pack(&id, bytes.into()).expect("save pack");
    repo.save_index(&IndexFile {
        packs: vec![IndexedPack { id, size, blobs }],
        ..IndexFile::default()
    })
    .expect("save index");
}

/// A repository holding one real snapshot (its tree is replaced by
/// [`snapshot`]).
fn repo() -> Arc<Repository> {
    let repo = init_memory(MEDIUM_CHUNKER, 1 << 20);
    crate::support::backup_stream(&repo, "stream", Box::new(&b"a real backup"[..]), &options())
        .expect("backup");
    repo
}

/// Saves a snapshot of tree `root`.
fn snapshot(repo: &Repository, root: BlobId) -> String {
    let mut snap = repo.snapshots().expect("snapshots")[0].1.clone();
    snap.tree = root;
    repo.save_snapshot(&snap)
        .expect("save snapshot")
        .to_string()
}

fn dir(name: &str, subtree: BlobId) -> Node {
    let mut node = Node::new(name, NodeKind::Dir);
    node.subtree = Some(subtree);
    node
}

fn check(repo: &Repository, verify: bool) -> CheckReport {
    check::check(
        repo,
        &CheckOptions {
            verify: verify.then_some(VerifySubset::All),
            concurrency: 2,
            cancel: Default::default(),
        },
        &CheckProgress::default(),
    )
    .expect("check runs")
}

/// The error findings of a check, as `(kind, object)`.
fn errors(report: &CheckReport) -> Vec<(&'static str, String)> {
    report
        .findings
        .iter()
        .filter(|f| f.severity == check::Severity::Error)
        .map(|f| (f.kind, f.object.clone()))
        .collect()
}

#[track_caller]
fn assert_damaged<T: std::fmt::Debug>(result: vault_engine::Result<T>, object: &str, why: &str) {
    let err = result.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(message.contains(object), "{message} names {object}");
    assert!(message.contains(why), "{message} says {why}");
}

fn walk_all(repo: &Repository, root: &BlobId) -> vault_engine::Result<u64> {
    let index = repo.load_index()?;
    let mut seen = 0u64;
    restore::walk(repo, &index, root, &mut |_, _| {
        seen += 1;
        // Without a bound the crafted trees below would take for ever.
        assert!(seen < 1_000_000, "the walk went on expanding");
        Ok(true)
    })?;
    Ok(seen)
}

fn restore_into(repo: &Repository, root: &BlobId) -> vault_engine::Result<restore::RestoreReport> {
    let target = tempfile::tempdir().expect("tempdir");
    crate::support::restore_tree(repo, root, &target.path().join("out"))
}

fn dump(
    repo: &Repository,
    root: &BlobId,
) -> vault_engine::Result<vault_engine::archive::ArchiveStats> {
    let index = repo.load_index()?;
    vault_engine::archive::write_tar(
        repo,
        &index,
        root,
        std::path::Path::new("/"),
        None,
        &mut std::io::sink(),
    )
}

fn find_all(
    repo: &Repository,
    root: &BlobId,
    pattern: &str,
) -> vault_engine::Result<Vec<find::Match>> {
    let index = repo.load_index()?;
    let mut found = Vec::new();
    let options = FindOptions {
        patterns: vec![pattern.into()],
        ..FindOptions::default()
    };
    find::find(repo, &index, root, &options, &mut |m| {
        found.push(m.clone());
        assert!(found.len() < 1_000_000, "find went on expanding");
        Ok(())
    })?;
    Ok(found)
}

/// repo-format.md §6.1: a zstd frame may not declare a window above 16 MiB.
/// Readers decompressing a blob in one shot never allocate the window, but
/// the format says they refuse it, as the streaming reader of objects does.
#[test]
fn a_blob_whose_zstd_window_exceeds_16_mib_is_damaged() {
    let repo = repo();
    let plain = b"content behind a 32 MiB window".to_vec();
    // A zstd frame: no single segment, Window_Descriptor exponent 15
    // (2^25 bytes), then the content as one raw last block.
    let mut encoded = vec![1u8, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 15 << 3];
    let block = (plain.len() as u32) << 3 | 1;
    encoded.extend_from_slice(&block.to_le_bytes()[..3]);
    encoded.extend_from_slice(&plain);
    let blob = Blob {
        kind: BlobKind::Data,
        plain: plain.clone(),
        encoded,
    };
    let id = store(&repo, &[blob])[0];
    let index = repo.load_index().unwrap();
    let pack = index.get(&id).unwrap().pack;
    let err = repo.read_blob(&index, &id).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("blob {id} in pack {pack}")),
        "{message}"
    );
    assert!(message.contains("window"), "{message}");
    let report = check(&repo, true);
    assert!(
        errors(&report).contains(&("blob_damaged", format!("pack {pack}"))),
        "{:?}",
        report.findings
    );
}

/// `check --verify` opens each blob where it lies in the pack it read,
/// sparing a copy. A blob the index lays inside another must still be
/// judged by the bytes the pack stores there: here a raw blob's plaintext
/// is a whole sealed blob, and the index places that inner blob inside the
/// outer one. Once the outer blob is opened in place those bytes are the
/// inner envelope, which opens cleanly, though a restore reading it from
/// storage finds only ciphertext.
#[test]
fn verify_judges_a_blob_laid_inside_another_by_the_stored_bytes() {
    let repo = repo();
    let raw = |plain: Vec<u8>| Blob::raw(BlobKind::Data, plain);
    let inner = raw(b"a blob no pack stores where the index says".to_vec());
    let (inner_id, inner_sealed) = seal(&repo, &inner);
    let outer = raw(inner_sealed.clone());
    let (outer_id, outer_sealed) = seal(&repo, &outer);
    let mut writer = PackWriter::new();
    writer.add(
        BlobKind::Data,
        outer_id,
        outer.plain.len() as u32,
        outer_sealed,
    );
    let pack = writer.finish(repo.key());
    let mut blobs = pack.blobs.clone();
    // After the outer envelope's 24-byte nonce and its raw tag byte.
    let offset = blobs[0].offset + 24 + 1;
    blobs.push(PackedBlob {
        kind: BlobKind::Data,
        id: inner_id,
        offset,
        length: inner_sealed.len() as u32,
        raw_len: inner.plain.len() as u32,
    });
    save_indexed(&repo, pack.id, pack.bytes, blobs);
    let report = check(&repo, true);
    assert!(
        errors(&report).contains(&("blob_damaged", format!("pack {}", pack.id))),
        "{:?}",
        report.findings
    );
    // The backup's blobs and the outer one are sound, the inner one not.
    assert_eq!(report.blobs_verified, report.blobs - 1);
}

/// A NUL cannot be part of a file name: such a tree is damage to every
/// reader, and `check` says so, naming the tree.
#[test]
fn a_tree_with_a_nul_in_a_name_is_damaged_everywhere() {
    let mut lossy = Node::new("a\0b", NodeKind::File);
    lossy.content = Some(Vec::new());
    let mut raw = Node::new("ok", NodeKind::File);
    raw.name_raw = Some("6100ff".into());
    raw.content = Some(Vec::new());
    for node in [lossy, raw] {
        let repo = repo();
        let root = store(&repo, &[Blob::tree(&Tree { nodes: vec![node] })])[0];
        snapshot(&repo, root);
        let tree = format!("tree {root}");
        let invalid = "invalid";
        assert_damaged(walk_all(&repo, &root), &tree, invalid);
        assert_damaged(restore_into(&repo, &root), &tree, invalid);
        assert_damaged(dump(&repo, &root), &tree, invalid);
        assert_damaged(find_all(&repo, &root, "*"), &tree, invalid);
        let index = repo.load_index().unwrap();
        assert_damaged(
            BlobCache::new(1 << 20).load_tree(&repo, &index, &root),
            &tree,
            invalid,
        );
        let report = check(&repo, false);
        assert!(
            errors(&report).contains(&("tree_damaged", tree.clone())),
            "{:?}",
            report.findings
        );
    }
}

/// A chain of `levels` trees, each listing the next as its one directory.
/// Returns the root of every suffix: `roots[k]` heads `levels - k` trees.
fn chain(repo: &Repository, levels: usize) -> Vec<BlobId> {
    let mut blobs = vec![Blob::tree(&Tree::default())];
    let mut roots = vec![blobs[0].id(repo)];
    while roots.len() < levels {
        let tree = Tree {
            nodes: vec![dir("d", *roots.last().unwrap())],
        };
        blobs.push(Blob::tree(&tree));
        roots.push(blobs.last().unwrap().id(repo));
    }
    store(repo, &blobs);
    roots.reverse();
    roots
}

/// `check` refuses what restore refuses: trees nested deeper than
/// MAX_DEPTH levels below the snapshot's root, and nothing less deep.
#[test]
fn check_reports_trees_nested_deeper_than_readers_follow() {
    let repo = repo();
    let roots = chain(&repo, MAX_DEPTH + 2);
    let (too_deep, deepest_allowed) = (roots[0], roots[1]);
    walk_all(&repo, &deepest_allowed).expect("MAX_DEPTH levels are walked");
    assert_damaged(walk_all(&repo, &too_deep), "tree below", "nested deeper");
    let report = check(&repo, false);
    assert!(errors(&report).is_empty(), "{:?}", report.findings);

    let allowed = snapshot(&repo, deepest_allowed);
    let report = check(&repo, false);
    assert!(
        errors(&report).is_empty(),
        "{allowed}: {:?}",
        report.findings
    );
    let deep = snapshot(&repo, too_deep);
    let report = check(&repo, false);
    assert_eq!(
        errors(&report),
        [("tree_too_deep", format!("snapshot {deep}"))],
        "{:?}",
        report.findings
    );
    let finding = &report.findings[0];
    assert!(
        finding.message.contains(&too_deep.to_string()),
        "{}",
        finding.message
    );
    assert_eq!(finding.affected.len(), 1);
}

/// Trees `0..levels`, tree k listing tree k+1 twice (as `a` and `b`), the
/// last one a file: `3 * 2^(levels-1) - 2` entries from `levels` blobs.
fn doubling(repo: &Repository, levels: usize) -> BlobId {
    let mut file = Node::new("f", NodeKind::File);
    file.content = Some(Vec::new());
    doubling_of(repo, levels, file, false)
}

/// [`doubling`] with `leaf` as the last tree's one node; with `trailing`,
/// each tree but the last also lists, after `a` and `b`, a directory `z`
/// of its own (so that no tree's size is known before both of its
/// references were followed).
fn doubling_of(repo: &Repository, levels: usize, leaf: Node, trailing: bool) -> BlobId {
    let mut blobs = vec![Blob::tree(&Tree { nodes: vec![leaf] })];
    for level in 1..levels {
        let next = blobs.last().unwrap().id(repo);
        let mut nodes = vec![dir("a", next), dir("b", next)];
        if trailing {
            let own = Blob::tree(&Tree {
                nodes: vec![Node::new(&format!("level {level}"), NodeKind::Fifo)],
            });
            nodes.push(dir("z", own.id(repo)));
            blobs.push(own);
        }
        blobs.push(Blob::tree(&Tree { nodes }));
    }
    let root = blobs.last().unwrap().id(repo);
    store(repo, &blobs);
    root
}

/// Identical directories share one tree: a reader must expand them, but a
/// few dozen trees listing each other twice expand to 2^48 paths. Readers
/// stop once the trees they read are known to exceed 2^32 entries, after
/// reading each tree once; `check` reports the snapshot.
#[test]
fn trees_listing_each_other_into_billions_of_entries_are_refused_early() {
    let repo = repo();
    // Shared subtrees within the bound are walked in full.
    let shared = doubling(&repo, 10);
    assert_eq!(walk_all(&repo, &shared).unwrap(), 3 * (1 << 9) - 2);
    snapshot(&repo, shared);
    let report = check(&repo, false);
    assert!(errors(&report).is_empty(), "{:?}", report.findings);

    let root = doubling(&repo, 48);
    let why = "more than 4294967296 entries";
    assert_damaged(walk_all(&repo, &root), "tree ", why);
    let index = repo.load_index().unwrap();
    let mut seen = 0;
    let _ = restore::walk(&repo, &index, &root, &mut |_, _| {
        seen += 1;
        Ok(true)
    });
    assert!(
        seen < 200,
        "refused after reading the 48 trees, not {seen} entries"
    );
    assert_damaged(restore_into(&repo, &root), "tree ", why);
    assert_damaged(dump(&repo, &root), "tree ", why);
    assert_damaged(find_all(&repo, &root, "f"), "tree ", why);
    let sid = snapshot(&repo, root);
    let report = check(&repo, false);
    assert_eq!(
        errors(&report),
        [("tree_too_large", format!("snapshot {sid}"))],
        "{:?}",
        report.findings
    );
}

/// Before 2026-11-24 an ancestor reached through a symlink was recorded as
/// that symlink, with a subtree: restore and `ls` show a directory there,
/// and so must `find` and `mount`.
#[test]
fn find_and_mount_show_a_legacy_symlink_with_children_as_a_directory() {
    let repo = repo();
    let mut file = Node::new("f", NodeKind::File);
    file.content = Some(Vec::new());
    let below = Blob::tree(&Tree { nodes: vec![file] });
    let mut alias = dir("alias", below.id(&repo));
    alias.kind = NodeKind::Symlink;
    alias.mode = 0o777;
    alias.linktarget = Some("/elsewhere".into());
    let top = Blob::tree(&Tree { nodes: vec![alias] });
    let root = store(&repo, &[below, top])[1];

    let found = find_all(&repo, &root, "*").unwrap();
    let found: Vec<(String, NodeKind, u32)> = found
        .into_iter()
        .map(|m| (m.path, m.kind, m.mode))
        .collect();
    assert_eq!(
        found,
        [
            ("/alias".to_owned(), NodeKind::Dir, 0o755),
            ("/alias/f".to_owned(), NodeKind::File, 0o644)
        ]
    );
    let index = repo.load_index().unwrap();
    let listing = BlobCache::new(1 << 20)
        .load_tree(&repo, &index, &root)
        .unwrap();
    let alias = &listing.nodes[0];
    assert_eq!((alias.kind, alias.mode), (NodeKind::Dir, 0o755));
    assert_eq!(alias.linktarget, None);
    // As restore and ls see it.
    let mut walked = Vec::new();
    restore::walk(&repo, &index, &root, &mut |path, node| {
        walked.push((PathBuf::from(path), node.kind));
        Ok(true)
    })
    .unwrap();
    assert_eq!(
        walked,
        [
            (PathBuf::from("/alias"), NodeKind::Dir),
            (PathBuf::from("/alias/f"), NodeKind::File)
        ]
    );
}

/// A `dir` node without a subtree is an empty directory (repo-format.md
/// §9): check passes it, and restore makes the directory.
#[test]
fn a_directory_without_a_subtree_is_an_empty_directory() {
    let repo = repo();
    let root = store(
        &repo,
        &[Blob::tree(&Tree {
            nodes: vec![Node::new("empty", NodeKind::Dir)],
        })],
    )[0];
    snapshot(&repo, root);
    let report = check(&repo, true);
    assert!(errors(&report).is_empty(), "{:?}", report.findings);
    let target = tempfile::tempdir().unwrap();
    crate::support::restore_tree(&repo, &root, target.path()).unwrap();
    assert!(target.path().join("empty").is_dir());
}

/// stats, diff and rewrite recurse a frame per level too: a tree nested
/// deeper than MAX_DEPTH is damage to them, not a stack overflow.
#[test]
fn stats_diff_and_rewrite_refuse_trees_nested_deeper_than_readers_follow() {
    let repo = repo();
    let roots = chain(&repo, MAX_DEPTH + 2);
    let (too_deep, allowed) = (roots[0], roots[1]);
    let id: vault_engine::id::SnapshotId = snapshot(&repo, too_deep).parse().unwrap();
    let snap = repo.load_snapshot(&id).unwrap();
    let index = std::sync::Arc::new(repo.load_index().unwrap());
    let deep = [(id, snap.clone())];
    assert_damaged(
        vault_engine::stats::stats(&repo, &index, &deep),
        "tree",
        "nested deeper",
    );
    let mut changes = 0;
    let mut emit = |_: &vault_engine::diff::Change| {
        changes += 1;
        Ok(())
    };
    assert_damaged(
        vault_engine::diff::diff(
            &repo,
            &index,
            &allowed,
            &too_deep,
            Default::default(),
            &mut emit,
        ),
        "tree below",
        "nested deeper",
    );
    let excludes = vault_engine::backup::Excludes::new(&["nothing".into()]).unwrap();
    assert_damaged(
        vault_engine::rewrite::rewrite(
            &repo,
            &index,
            &deep,
            &excludes,
            false,
            true,
            &Default::default(),
        ),
        "tree below",
        "nested deeper",
    );
    // One level less deep is walked by all three.
    let fine: vault_engine::id::SnapshotId = snapshot(&repo, allowed).parse().unwrap();
    let fine = [(fine, repo.load_snapshot(&fine).unwrap())];
    vault_engine::stats::stats(&repo, &index, &fine).expect("stats");
    vault_engine::rewrite::rewrite(
        &repo,
        &index,
        &fine,
        &excludes,
        false,
        true,
        &Default::default(),
    )
    .expect("rewrite");
}

/// Decoding does not validate link targets (repo-format.md §9), but no
/// file system holds one with a NUL byte or an empty one: such a symlink
/// is damage to itself alone. Restore makes everything else and reports
/// it, dump refuses it naming it, the listings show it, and `check`
/// reports the node.
#[test]
fn a_symlink_whose_target_no_file_system_holds_is_damage_to_that_entry() {
    let repo = repo();
    let file = |name: &str| {
        let mut node = Node::new(name, NodeKind::File);
        node.content = Some(Vec::new());
        node
    };
    let link = |name: &str, target: &str, raw: Option<&[u8]>| {
        let mut node = Node::new(name, NodeKind::Symlink);
        node.linktarget = Some(target.into());
        node.linktarget_raw = raw.map(hex::encode);
        node
    };
    let nodes = vec![
        file("a"),
        link("b", "x\0y", None),
        link("c", "x", Some(b"\xff\0/etc")),
        link("d", "", None),
        link("e", "fine", None),
        file("f"),
    ];
    let root = store(&repo, &[Blob::tree(&Tree { nodes })])[0];
    snapshot(&repo, root);

    let target = tempfile::tempdir().unwrap();
    let out = target.path().join("out");
    let report = crate::support::restore_tree(&repo, &root, &out).expect("restore goes on");
    let damaged: Vec<(String, String)> = report
        .damaged_entries
        .iter()
        .map(|e| (e.path.clone(), e.error.clone()))
        .collect();
    let at = |name: &str| out.join(name).display().to_string();
    assert_eq!(
        damaged,
        [
            (
                at("b"),
                "symlink target holds a NUL byte, which no path can hold".into()
            ),
            (
                at("c"),
                "symlink target holds a NUL byte, which no path can hold".into()
            ),
            (at("d"), "symlink with an empty target".into()),
        ]
    );
    assert!(out.join("a").is_file() && out.join("f").is_file());
    assert_eq!(
        std::fs::read_link(out.join("e")).unwrap(),
        PathBuf::from("fine")
    );
    for name in ["b", "c", "d"] {
        assert!(std::fs::symlink_metadata(out.join(name)).is_err(), "{name}");
    }
    assert_eq!((report.files, report.others), (2, 1));
    // The dry run says so too.
    let index = repo.load_index().unwrap();
    let options = restore::RestoreOptions {
        target: target.path().join("dry"),
        dry_run: true,
        concurrency: 2,
        ..Default::default()
    };
    let dry = restore::restore(&repo, &index, &root, &options, &Default::default()).unwrap();
    assert_eq!(dry.damaged_entries.len(), 3);
    assert_eq!(dry.others, 1);

    assert_damaged(dump(&repo, &root), "entry /b", "NUL byte");
    assert_eq!(walk_all(&repo, &root).unwrap(), 6);
    assert_eq!(find_all(&repo, &root, "*").unwrap().len(), 6);
    let listing = BlobCache::new(1 << 20)
        .load_tree(&repo, &index, &root)
        .unwrap();
    assert_eq!(listing.nodes.len(), 6);

    let tree = format!("tree {root}");
    let report = check(&repo, true);
    assert_eq!(
        errors(&report),
        [
            ("node_damaged", tree.clone()),
            ("node_damaged", tree.clone()),
            ("node_damaged", tree)
        ],
        "{:?}",
        report.findings
    );
    assert!(
        report.findings[0].message.contains("\"b\""),
        "{}",
        report.findings[0].message
    );
}

/// stats, diff and rewrite expand shared subtrees too (stats used to copy
/// the hard links below a tree into every tree above it): trees listing
/// each other into more than 2^32 entries are damage to them, as to
/// restore, found from each tree read once.
#[test]
fn stats_diff_and_rewrite_refuse_trees_listing_each_other_into_billions_of_entries() {
    use vault_engine::id::SnapshotId;
    let repo = repo();
    let mut linked = Node::new("f", NodeKind::File);
    (linked.links, linked.inode, linked.size) = (2, 7, 100);
    linked.content = Some(Vec::new());
    let why = "more than 4294967296 entries";
    let load = |root: BlobId| {
        let id: SnapshotId = snapshot(&repo, root).parse().unwrap();
        [(id, repo.load_snapshot(&id).unwrap())]
    };

    // Within the bound, shared subtrees count once per place, a hard-linked
    // inode's bytes once.
    let shared = doubling_of(&repo, 10, linked.clone(), false);
    let index = repo.load_index().unwrap();
    let report = vault_engine::stats::stats(&repo, &index, &load(shared)).unwrap();
    let size = &report.restore_size;
    assert_eq!(
        (size.total_file_count, size.total_dir_count, size.total_size),
        (1 << 9, (1 << 10) - 2, 100)
    );

    for (root, label) in [
        (doubling(&repo, 48), "plain"),
        (
            doubling_of(&repo, 48, linked.clone(), true),
            "hard links, trailing",
        ),
    ] {
        let index = std::sync::Arc::new(repo.load_index().unwrap());
        let snaps = load(root);
        let err = vault_engine::stats::stats(&repo, &index, &snaps).map(|_| ());
        assert_damaged(err, "tree ", why);

        for (a, b) in [(shared, root), (root, shared)] {
            let mut changes = 0u64;
            let mut emit = |_: &vault_engine::diff::Change| {
                changes += 1;
                if changes > 1_000_000 {
                    return Err(vault_engine::Error::InvalidInput(format!(
                        "{label}: the diff went on expanding"
                    )));
                }
                Ok(())
            };
            let diffed =
                vault_engine::diff::diff(&repo, &index, &a, &b, Default::default(), &mut emit);
            assert_damaged(diffed, "tree ", why);
        }

        for pattern in ["nothing", "f"] {
            let excludes = vault_engine::backup::Excludes::new(&[pattern.into()]).unwrap();
            let rewritten = vault_engine::rewrite::rewrite(
                &repo,
                &index,
                &snaps,
                &excludes,
                false,
                true,
                &Default::default(),
            );
            assert_damaged(rewritten, "tree ", why);
        }
    }
}

/// `copy` applies the limits of every other reader: a snapshot whose trees
/// nest deeper than MAX_DEPTH, or list each other into 2^48 paths, is
/// damage, not copied on (it was, with exit 0); one level less deep is
/// copied.
#[test]
fn copy_refuses_trees_beyond_what_readers_follow() {
    use vault_engine::copy::{self, CopyOptions, CopyProgress};
    let repo = repo();
    let roots = chain(&repo, MAX_DEPTH + 2);
    let (too_deep, allowed) = (roots[0], roots[1]);
    let bomb = doubling(&repo, 48);
    let copy_of = |root: BlobId| {
        let id: vault_engine::id::SnapshotId = snapshot(&repo, root).parse().unwrap();
        let snap = repo.load_snapshot(&id).unwrap();
        let target = init_memory(MEDIUM_CHUNKER, 1 << 20);
        let result = copy::copy(
            &repo,
            &target,
            &[(id, snap)],
            &CopyOptions::default(),
            &CopyProgress::default(),
        );
        (id, result, target)
    };
    let (id, result, target) = copy_of(too_deep);
    assert_damaged(result, &format!("snapshot {id}"), "levels");
    assert!(target.snapshots().unwrap().is_empty());
    let (id, result, target) = copy_of(bomb);
    assert_damaged(result, "tree", "entries");
    assert!(target.snapshots().unwrap().is_empty(), "{id}");
    let (_, result, target) = copy_of(allowed);
    result.expect("copy of MAX_DEPTH levels");
    assert_eq!(target.snapshots().unwrap().len(), 1);
}
