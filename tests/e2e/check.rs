//! The corruption suite: damage a real repository in one way at a time and
//! check that `vault check` (or `check --verify` where plain check cannot
//! see it) exits 1 and names the object and the hurt snapshots/paths; and
//! that `repair index` restores a healthy repository where data survives.

use crate::support::{Env, assert_code, assert_success, pseudo_random};
use std::path::{Path, PathBuf};

/// A repository with two snapshots of a tree with distinct files.
fn damaged_fixture() -> (Env, PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("voicemail")).unwrap();
    for i in 0..4u64 {
        std::fs::write(
            src.join(format!("voicemail/msg{i}.wav")),
            pseudo_random(600_000, i),
        )
        .unwrap();
    }
    std::fs::write(src.join("notes.txt"), b"short note").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    std::fs::write(src.join("later.txt"), b"second snapshot").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    (env, src)
}

fn check_json(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let out = env.vault(&all);
    let code = out.status.code().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (code, v)
}

fn errors(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .cloned()
        .collect()
}

/// Packs holding data (not trees), found through the index.
fn packs_of_kind(env: &Env, kind: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for idx in env.objects_under("index") {
        let id = idx.file_name().unwrap().to_string_lossy().into_owned();
        let v = env.json(&["cat", "index", &id]);
        for p in v["packs"].as_array().unwrap() {
            if p["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"] == kind)
            {
                let pid = p["id"].as_str().unwrap();
                out.push(Path::new(&env.repo).join("data").join(&pid[..2]).join(pid));
            }
        }
    }
    out
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

fn restore_matches(env: &Env, src: &Path) {
    let target = env.path(&format!("restore-{}", rand_suffix()));
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let root = target.join(src.strip_prefix("/").unwrap());
    for i in 0..4u64 {
        assert_eq!(
            std::fs::read(root.join(format!("voicemail/msg{i}.wav"))).unwrap(),
            pseudo_random(600_000, i)
        );
    }
    assert_eq!(
        std::fs::read(root.join("later.txt")).unwrap(),
        b"second snapshot"
    );
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn healthy_repository_passes_verify_with_nothing_reported() {
    let (env, _) = damaged_fixture();
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 0, "{v}");
    assert!(v["blobs_verified"].as_u64().unwrap() >= 5);
    assert_eq!(v["packs_verified"], v["packs"]);
}

#[test]
fn verify_subsets_cover_every_pack_exactly_once() {
    let env = Env::uninitialised();
    assert_success(&env.vault(&[
        "init",
        "--kdf-memory-mib",
        "8",
        "--kdf-iterations",
        "1",
        "--pack-size-mib",
        "1",
    ]));
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(700_000, i)).unwrap();
    }
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let (_, all) = check_json(&env, &["--verify"]);
    let total = all["packs"].as_u64().unwrap();
    assert!(total >= 6, "{all}");
    let mut sum = 0;
    for k in 1..=3 {
        let (code, v) = check_json(&env, &["--verify-subset", &format!("{k}/3")]);
        assert_eq!(code, 0);
        sum += v["packs_verified"].as_u64().unwrap();
    }
    assert_eq!(sum, total);
    let (_, v) = check_json(&env, &["--verify-subset", "50%"]);
    assert_eq!(v["packs_verified"].as_u64().unwrap(), total.div_ceil(2));
}

#[test]
fn flipped_byte_in_data_pack_is_found_by_verify_with_affected_paths() {
    let (env, src) = damaged_fixture();
    let pack = packs_of_kind(&env, "data").remove(0);
    flip(&pack, 100);
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 1);
    let errs = errors(&v);
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    let damaged = errs
        .iter()
        .find(|f| f["kind"] == "blob_damaged")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(damaged["object"].as_str().unwrap().contains(&pack_name));
    let affected = damaged["affected"].as_array().unwrap();
    assert!(!affected.is_empty(), "{v}");
    assert!(affected.iter().all(|a| {
        a["path"]
            .as_str()
            .unwrap()
            .starts_with(src.to_str().unwrap())
    }));
    // Both snapshots share the file, so both are named.
    let snaps: std::collections::HashSet<&str> = affected
        .iter()
        .map(|a| a["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(snaps.len(), 2, "{v}");
    // Human output names the pack too.
    let out = env.vault(&["check", "--verify"]);
    assert_code(&out, 1);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pack_name));

    // repair snapshots drops the hurt files; the rest restores.
    assert_success(&env.vault(&["repair", "snapshots", "--forget"]));
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 2);
    assert!(
        snaps
            .iter()
            .all(|s| s["tags"].as_array().unwrap().contains(&"repaired".into()))
    );
    let target = env.path("after-repair");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let root = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(root.join("later.txt")).unwrap(),
        b"second snapshot"
    );
}

#[test]
fn flipped_byte_in_index_is_found_and_repair_index_heals_it() {
    let (env, src) = damaged_fixture();
    let index = env.objects_under("index").remove(0);
    flip(&index, 50);
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 1);
    let name = index.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        errors(&v)
            .iter()
            .any(|f| f["kind"] == "index_damaged" && f["object"].as_str().unwrap().contains(&name)),
        "{v}"
    );
    assert_success(&env.vault(&["repair", "index"]));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    restore_matches(&env, &src);
}

#[test]
fn deleted_index_is_found_and_repair_index_heals_it() {
    let (env, src) = damaged_fixture();
    for index in env.objects_under("index") {
        std::fs::remove_file(index).unwrap();
    }
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 1);
    assert!(
        errors(&v).iter().any(|f| f["kind"] == "blob_missing"),
        "{v}"
    );
    assert_success(&env.vault(&["repair", "index"]));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    restore_matches(&env, &src);
}

#[test]
fn flipped_byte_in_snapshot_is_named() {
    let (env, _) = damaged_fixture();
    let snap = env.objects_under("snapshots").remove(0);
    flip(&snap, 40);
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 1);
    let name = snap.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        errors(&v)
            .iter()
            .any(|f| f["kind"] == "snapshot_damaged"
                && f["object"].as_str().unwrap().contains(&name)),
        "{v}"
    );
}

#[test]
fn flipped_byte_in_tree_pack_is_found_by_plain_check() {
    let (env, _) = damaged_fixture();
    let packs = packs_of_kind(&env, "tree");
    assert!(!packs.is_empty());
    for p in &packs {
        flip(p, 30);
    }
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 1);
    let errs = errors(&v);
    let tree = errs
        .iter()
        .find(|f| f["kind"] == "tree_damaged")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(tree["object"].as_str().unwrap().starts_with("tree "));
    assert!(!tree["affected"].as_array().unwrap().is_empty());
}

#[test]
fn truncated_and_deleted_packs_are_found_by_plain_check() {
    let (env, src) = damaged_fixture();
    let mut packs = packs_of_kind(&env, "data");
    assert!(!packs.is_empty());
    let victim = packs.remove(0);
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 1);
    let f = errors(&v)
        .into_iter()
        .find(|f| f["kind"] == "pack_size")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(f["object"].as_str().unwrap().contains(&name));
    assert!(
        f["affected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["path"].as_str().unwrap().contains(src.to_str().unwrap()))
    );
    std::fs::remove_file(&victim).unwrap();
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 1);
    let f = errors(&v)
        .into_iter()
        .find(|f| f["kind"] == "pack_missing")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(f["object"].as_str().unwrap().contains(&name));
    assert!(!f["affected"].as_array().unwrap().is_empty());
}
