//! Snapshots whose trees no backup writes, made with the repository's key
//! through the engine: every command reading them exits 5 (the repository
//! is damaged) naming the tree, and `check` reports them, rather than
//! failing with a plain error (1), running out of memory or running for
//! ever.

use crate::support::{Env, PASSWORD, assert_code, assert_success, stderr};
use std::sync::Arc;
use vault_engine::Repository;
use vault_engine::blob::BlobKind;
use vault_engine::crypto::Password;
use vault_engine::id::BlobId;
use vault_engine::index::{IndexFile, IndexedPack};
use vault_engine::pack::PackWriter;
use vault_engine::tree::{Node, NodeKind, Tree};

fn open(env: &Env) -> Repository {
    let store = vault_engine::backend::open_url(&env.repo, &Default::default()).unwrap();
    Repository::open(Arc::from(store), &Password::new(PASSWORD)).unwrap()
}

/// Stores `trees` (raw, tag 0) in one pack with one index file and saves a
/// snapshot of the last one, copied from the repository's first snapshot;
/// returns the snapshot's id and the root tree's.
pub(crate) fn snapshot_of(env: &Env, trees: &[Tree]) -> (String, BlobId) {
    let repo = open(env);
    let mut pack = PackWriter::new();
    let mut root = None;
    for tree in trees {
        let plain = tree.encode();
        let id = repo.key().blob_id(&plain);
        let mut aad = [0u8; 33];
        aad[0] = BlobKind::Tree.to_byte();
        aad[1..].copy_from_slice(&id.0);
        let mut encoded = vec![0u8];
        encoded.extend_from_slice(&plain);
        let sealed = repo.key().seal_blob(&aad, encoded);
        pack.add(BlobKind::Tree, id, plain.len() as u32, sealed);
        root = Some(id);
    }
    let pack = pack.finish(repo.key());
    let size = pack.bytes.len() as u64;
    repo.save_pack(&pack.id, pack.bytes.into()).unwrap();
    repo.save_index(&IndexFile {
        packs: vec![IndexedPack {
            id: pack.id,
            size,
            blobs: pack.blobs,
        }],
        ..IndexFile::default()
    })
    .unwrap();
    let root = root.unwrap();
    let mut snap = repo.snapshots().unwrap()[0].1.clone();
    snap.tree = root;
    (repo.save_snapshot(&snap).unwrap().to_string(), root)
}

/// Every reader of the crafted snapshot exits 5 naming `tree`, and check
/// reports `finding` with exit 5.
fn assert_damaged_everywhere(env: &Env, snapshot: &str, tree: &str, finding: &str) {
    let target = env.path("target");
    let target = target.to_str().unwrap();
    for args in [
        &["restore", snapshot, "--target", target][..],
        &["ls", snapshot],
        &["dump", snapshot, "/"],
        &["find", "--snapshot", snapshot, "f"],
    ] {
        let out = env.vault(args);
        assert_code(&out, 5);
        assert!(stderr(&out).contains(tree), "{args:?}: {}", stderr(&out));
    }
    let out = env.vault(&["check", "--json"]);
    assert_code(&out, 5);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(finding), "{stdout}");
}

pub(crate) fn env() -> Env {
    let env = Env::new();
    assert_success(&env.vault_stdin(
        &["backup", "--stdin", "--stdin-filename", "real"],
        b"real data",
    ));
    env
}

#[test]
fn a_tree_with_a_nul_in_a_name_is_damage_to_every_command() {
    let env = env();
    let (snapshot, root) = snapshot_of(
        &env,
        &[Tree {
            nodes: vec![Node::new("a\0b", NodeKind::File)],
        }],
    );
    assert_damaged_everywhere(&env, &snapshot, &format!("tree {root}"), "tree_damaged");
}

/// 48 trees, each listing the next twice: 2^48 paths. Refused after
/// reading each tree once.
#[test]
fn trees_listing_each_other_into_billions_of_paths_are_damage() {
    let env = env();
    let mut trees = vec![Tree {
        nodes: vec![Node::new("f", NodeKind::Fifo)],
    }];
    let repo = open(&env);
    for _ in 1..48 {
        let next = repo.key().blob_id(&trees.last().unwrap().encode());
        let dir = |name: &str| {
            let mut node = Node::new(name, NodeKind::Dir);
            node.subtree = Some(next);
            node
        };
        trees.push(Tree {
            nodes: vec![dir("a"), dir("b")],
        });
    }
    let (snapshot, _) = snapshot_of(&env, &trees);
    let why = "more than 4294967296 entries";
    assert_damaged_everywhere(&env, &snapshot, why, "tree_too_large");
    // stats, diff and rewrite too.
    let real = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id.to_string())
        .find(|id| *id != snapshot)
        .unwrap();
    for args in [
        &["stats", &snapshot][..],
        &["stats", "--mode", "raw-data", &snapshot],
        &["diff", &real, &snapshot],
        &["diff", &snapshot, &real],
        &["rewrite", "--exclude", "nothing", "--dry-run", &snapshot],
        &["rewrite", "--exclude", "f", &snapshot],
    ] {
        let out = env.vault(args);
        assert_code(&out, 5);
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
}

/// A symlink whose target holds a NUL byte cannot be made: restore makes
/// everything else, names it and exits 5; listings show it; dump refuses
/// it; check reports the node.
#[test]
fn a_symlink_target_with_a_nul_is_damage_to_that_entry() {
    let env = env();
    let mut link = Node::new("b", NodeKind::Symlink);
    link.linktarget = Some("x\0y".into());
    let (snapshot, root) = snapshot_of(
        &env,
        &[Tree {
            nodes: vec![
                Node::new("a", NodeKind::File),
                link,
                Node::new("c", NodeKind::File),
            ],
        }],
    );
    let target = env.path("target");
    let out = env.vault(&["restore", &snapshot, "--target", target.to_str().unwrap()]);
    assert_code(&out, 5);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}: not restored", target.join("b").display()))
            && err.contains("NUL"),
        "{err}"
    );
    assert!(target.join("a").is_file() && target.join("c").is_file());
    assert!(std::fs::symlink_metadata(target.join("b")).is_err());
    // Run again over what it made: the same.
    let again = env.vault(&[
        "restore",
        &snapshot,
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "if-changed",
    ]);
    assert_code(&again, 5);
    for args in [
        &["ls", &snapshot][..],
        &["find", "--snapshot", &snapshot, "b"],
    ] {
        let out = env.vault(args);
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("/b"),
            "{args:?}"
        );
    }
    let out = env.vault(&["dump", &snapshot, "/"]);
    assert_code(&out, 5);
    assert!(stderr(&out).contains("entry /b"), "{}", stderr(&out));
    let out = env.vault(&["check", "--json"]);
    assert_code(&out, 5);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("node_damaged") && stdout.contains(&format!("tree {root}")),
        "{stdout}"
    );
}

/// A file node whose size is not what its blobs hold (1 TiB over one blob
/// of 9 bytes) is damage to that file: restore never sizes it from the
/// node (a 1 TiB sparse file fills quotas), gives it its content at its
/// content's size, names it and exits 5, and restores everything else;
/// check reports the node.
#[test]
fn a_file_whose_size_is_not_its_contents_is_damage_to_that_file() {
    let env = env();
    let repo = open(&env);
    let index = repo.load_index().unwrap();
    let real = repo.read_tree(&index, &repo.snapshots().unwrap()[0].1.tree);
    let content = real.unwrap().nodes[0].content.clone();
    let file = |name: &str, size: u64| {
        let mut node = Node::new(name, NodeKind::File);
        node.size = size;
        node.content = content.clone();
        node
    };
    let (snapshot, root) = snapshot_of(
        &env,
        &[Tree {
            nodes: vec![file("a", 9), file("huge", 1 << 40), file("z", 9)],
        }],
    );
    let target = env.path("target");
    for overwrite in ["always", "if-changed"] {
        let out = env.vault(&[
            "restore",
            &snapshot,
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
            overwrite,
        ]);
        assert_code(&out, 5);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{}: its size in the snapshot (1099511627776 bytes) is not its content's (9 bytes)",
                target.join("huge").display()
            )),
            "{overwrite}: {err}"
        );
        for name in ["a", "huge", "z"] {
            assert_eq!(
                std::fs::read(target.join(name)).unwrap(),
                b"real data",
                "{overwrite}: {name}"
            );
        }
    }
    let out = env.vault(&["check", "--json"]);
    assert_code(&out, 5);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("node_damaged")
            && stdout.contains(&format!("tree {root}"))
            && stdout.contains("\\\"huge\\\": its size in the snapshot"),
        "{stdout}"
    );
}
