//! The corruption suite: damage a real repository in one way at a time and
//! check that `vault check` (or `check --verify` where plain check cannot
//! see it) exits 1 and names the object and the hurt snapshots/paths; and
//! that `repair index` restores a healthy repository where data survives.
//! Every case runs on local disk and on S3 (objects are damaged through
//! the engine's backend, as a faulty disk or store would).

use crate::support::{
    Backend, Env, assert_code, assert_success, key_name, packs_of_kind, pseudo_random, stderr,
};
use std::path::{Path, PathBuf};

/// A repository with two snapshots of a tree with distinct files.
fn damaged_fixture(backend: Backend) -> (Env, PathBuf) {
    let env = Env::on(backend);
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

backend_test!(healthy_repository_passes_verify_with_nothing_reported);
fn healthy_repository_passes_verify_with_nothing_reported(backend: Backend) {
    let (env, _) = damaged_fixture(backend);
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 0, "{v}");
    assert!(v["blobs_verified"].as_u64().unwrap() >= 5);
    assert_eq!(v["packs_verified"], v["packs"]);
}

backend_test!(verify_subsets_cover_every_pack_exactly_once);
fn verify_subsets_cover_every_pack_exactly_once(backend: Backend) {
    let env = Env::with_small_packs(backend);
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

backend_test!(flipped_byte_in_data_pack_is_found_by_verify_with_affected_paths);
fn flipped_byte_in_data_pack_is_found_by_verify_with_affected_paths(backend: Backend) {
    let (env, src) = damaged_fixture(backend);
    // The biggest data pack: byte 100 of a small one may be its header.
    let sizes = env.sizes_under("data");
    let pack = packs_of_kind(&env, "data")
        .into_iter()
        .max_by_key(|p| sizes[p])
        .unwrap();
    env.flip(&pack, 100);
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 5);
    let errs = errors(&v);
    let pack_name = key_name(&pack).to_owned();
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
    assert_code(&out, 5);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pack_name));

    // repair snapshots drops the hurt files; the rest restores.
    let before = env.snapshots();
    assert_success(&env.vault(&["repair", "snapshots", "--forget"]));
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 2);
    assert!(
        snaps
            .iter()
            .all(|s| s["tags"].as_array().unwrap().contains(&"repaired".into()))
    );
    // Its summary (Size in `snapshots`) no longer counts the dropped file.
    let total = |s: &serde_json::Value, what: &str| s["summary"][what].as_u64().unwrap();
    for (old, new) in before.iter().zip(&snaps) {
        assert_eq!(
            total(new, "total_files_processed"),
            total(old, "total_files_processed") - 1,
            "{new}"
        );
        assert!(
            total(new, "total_bytes_processed") < total(old, "total_bytes_processed"),
            "{new}"
        );
    }
    let target = env.path("after-repair");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let root = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(root.join("later.txt")).unwrap(),
        b"second snapshot"
    );

    // Healing: the damaged blob is still indexed, so a backup would
    // deduplicate against it forever. repair index --read-data salvages
    // the pack (its sound blobs stored again, the pack deleted); the next
    // backup then stores the lost content anew and everything verifies.
    let out = env.vault(&["repair", "index", "--read-data"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains(&format!("pack {pack_name} held damaged blobs")),
        "{}",
        stderr(&out)
    );
    assert!(
        !env.objects_under("data").contains(&pack),
        "salvaged pack deleted"
    );
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    restore_matches(&env, &src);
}

backend_test!(flipped_byte_in_index_is_found_and_repair_index_heals_it);
fn flipped_byte_in_index_is_found_and_repair_index_heals_it(backend: Backend) {
    let (env, src) = damaged_fixture(backend);
    let index = env.objects_under("index").remove(0);
    env.flip(&index, 50);
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 5);
    let name = key_name(&index).to_owned();
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

backend_test!(deleted_index_is_found_and_repair_index_heals_it);
fn deleted_index_is_found_and_repair_index_heals_it(backend: Backend) {
    let (env, src) = damaged_fixture(backend);
    for index in env.objects_under("index") {
        env.delete_object(&index);
    }
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 5);
    assert!(
        errors(&v).iter().any(|f| f["kind"] == "blob_missing"),
        "{v}"
    );
    // Its data is all there, in packs no index lists: repair snapshots
    // must not take it for lost (it cut every file and, with --forget,
    // deleted the intact originals).
    let before = env.objects_under("snapshots");
    let out = env.vault(&["repair", "snapshots", "--forget"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("run `vault repair index` first"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.objects_under("snapshots"), before);
    assert_success(&env.vault(&["repair", "index"]));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    restore_matches(&env, &src);
}

backend_test!(flipped_byte_in_snapshot_is_named);
fn flipped_byte_in_snapshot_is_named(backend: Backend) {
    let (env, _) = damaged_fixture(backend);
    let snap = env.objects_under("snapshots").remove(0);
    env.flip(&snap, 40);
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 5);
    let name = key_name(&snap).to_owned();
    assert!(
        errors(&v)
            .iter()
            .any(|f| f["kind"] == "snapshot_damaged"
                && f["object"].as_str().unwrap().contains(&name)),
        "{v}"
    );
}

backend_test!(flipped_byte_in_tree_pack_is_found_by_plain_check);
fn flipped_byte_in_tree_pack_is_found_by_plain_check(backend: Backend) {
    let (env, _) = damaged_fixture(backend);
    let packs = packs_of_kind(&env, "tree");
    assert!(!packs.is_empty());
    for p in &packs {
        env.flip(p, 30);
    }
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 5);
    let errs = errors(&v);
    let tree = errs
        .iter()
        .find(|f| f["kind"] == "tree_damaged")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(tree["object"].as_str().unwrap().starts_with("tree "));
    assert!(!tree["affected"].as_array().unwrap().is_empty());
}

backend_test!(truncated_and_deleted_packs_are_found_by_plain_check);
fn truncated_and_deleted_packs_are_found_by_plain_check(backend: Backend) {
    let (env, src) = damaged_fixture(backend);
    let mut packs = packs_of_kind(&env, "data");
    assert!(!packs.is_empty());
    let victim = packs.remove(0);
    let name = key_name(&victim).to_owned();
    let bytes = env.read_object(&victim);
    env.write_object(&victim, &bytes[..bytes.len() / 2]);
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 5);
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
    env.delete_object(&victim);
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 5);
    let f = errors(&v)
        .into_iter()
        .find(|f| f["kind"] == "pack_missing")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(f["object"].as_str().unwrap().contains(&name));
    assert!(!f["affected"].as_array().unwrap().is_empty());
}

/// Snapshots whose root tree is lost (its pack deleted) cannot be repaired:
/// `repair snapshots --forget` removes them, as it removes snapshots that
/// cannot be read, and check and prune are clean again. They used to be
/// reported as repaired and kept, failing every check and prune.
#[test]
fn repair_snapshots_forget_removes_snapshots_whose_root_tree_is_lost() {
    let (env, src) = damaged_fixture(Backend::Local);
    for pack in packs_of_kind(&env, "tree") {
        env.delete_object(&pack);
    }
    std::fs::write(src.join("third.txt"), b"a root tree of its own").unwrap();
    assert_success(&env.vault(&["repair", "index"]));
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let dry = env.json(&["repair", "snapshots", "--forget", "--dry-run"]);
    let unreadable = dry["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 2, "{dry}");
    assert!(
        unreadable
            .iter()
            .all(|u| u["removed"] == false && u["error"].as_str().unwrap().contains("root tree")),
        "{dry}"
    );
    assert_eq!(env.snapshots().len(), 3);
    let done = env.json(&["repair", "snapshots", "--forget"]);
    assert_eq!(done["unreadable"].as_array().unwrap().len(), 2, "{done}");
    assert_eq!(env.snapshots().len(), 1);
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert_success(&env.vault(&["prune"]));
    restore_matches(&env, &src);
}

backend_test!(a_backup_refuses_to_reference_a_pack_lost_from_storage);
/// A data pack lost from storage after it was indexed (deleted by hand, a
/// lifecycle rule, a failing disk): the next backup, whose unchanged files
/// would keep pointing at it, exits 4 naming the pack and saves no
/// snapshot, also with `--skip-if-unchanged` (which would otherwise report
/// the parent as a good backup). After `repair index` a backup stores that
/// content anew, which mends the older snapshots too (same content, same
/// blob ids).
fn a_backup_refuses_to_reference_a_pack_lost_from_storage(backend: Backend) {
    let (env, src) = damaged_fixture(backend);
    let src_arg = src.to_str().unwrap();
    let victim = packs_of_kind(&env, "data").remove(0);
    let name = key_name(&victim).to_owned();
    env.delete_object(&victim);
    let snapshots = env.snapshots().len();
    for extra in [None, Some("--skip-if-unchanged")] {
        let mut args = vec!["backup", src_arg];
        args.extend(extra);
        let out = env.vault(&args);
        assert_code(&out, 4);
        let err = stderr(&out);
        assert!(
            err.contains(&name) && err.contains("missing from storage"),
            "{err}"
        );
        assert!(err.contains("vault repair index"), "{err}");
        assert_eq!(env.snapshots().len(), snapshots, "no snapshot saved");
    }
    assert_success(&env.vault(&["repair", "index"]));
    assert_success(&env.vault(&["backup", src_arg]));
    restore_matches(&env, &src);
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(env.snapshots().len(), snapshots + 1);
}

/// A `vault tag` killed after it wrote the changed snapshot but before it
/// deleted the old one leaves both (made here by putting the old snapshot
/// file back): check warns, naming both, exits 0; once one is forgotten the
/// warning is gone.
#[test]
fn a_snapshot_left_twice_by_an_interrupted_tag_is_warned_about() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"content").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let old_key = env.objects_under("snapshots").pop().unwrap();
    let old_bytes = env.read_object(&old_key);
    assert_success(&env.vault(&["tag", "latest", "--add", "kept"]));
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 0);
    let twin = |v: &serde_json::Value| {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "snapshot_twin")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(twin(&v).is_empty(), "{v}");
    env.write_object(&old_key, &old_bytes);
    let (code, v) = check_json(&env, &[]);
    assert_eq!(code, 0, "a warning: {v}");
    let found = twin(&v);
    assert_eq!(found.len(), 1, "{v}");
    assert_eq!(found[0]["severity"], "warning");
    let old_id = key_name(&old_key);
    assert!(
        found[0]["message"].as_str().unwrap().contains(&old_id[..8]),
        "{found:?}"
    );
    assert_success(&env.vault(&["forget", old_id]));
    let (_, v) = check_json(&env, &[]);
    assert!(twin(&v).is_empty(), "{v}");
}

/// Backs `src` up again as a backup running beside the first would: blind
/// to its index, so every blob is stored a second time, in other packs.
fn back_up_again_unseen(env: &Env, src: &Path) {
    let indexes: Vec<(String, Vec<u8>)> = env
        .objects_under("index")
        .into_iter()
        .map(|k| {
            let bytes = env.read_object(&k);
            env.delete_object(&k);
            (k, bytes)
        })
        .collect();
    assert_success(&env.vault(&["backup", src.to_str().unwrap(), "--force"]));
    for (k, bytes) in &indexes {
        env.write_object(k, bytes);
    }
}

backend_test!(a_blob_stored_twice_survives_the_loss_of_either_pack);
/// Two backups that ran at once (simulated: the second saw no index) store
/// the same blobs in two packs. Losing either pack loses nothing: restore,
/// dump and `repair snapshots` read the other copy, and check reports the
/// lost pack without naming any snapshot or file it hurts.
fn a_blob_stored_twice_survives_the_loss_of_either_pack(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = pseudo_random(3_000_000, 7);
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("small"), b"small file").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let first = env.snapshots()[0]["id"].as_str().unwrap().to_owned();
    let first_data = packs_of_kind(&env, "data");
    back_up_again_unseen(&env, &src);
    let data = packs_of_kind(&env, "data");
    assert_eq!(data.len(), 2 * first_data.len(), "{data:?}");
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");

    for pack in data {
        let bytes = env.read_object(&pack);
        env.delete_object(&pack);
        let target = env.path(&format!("restore-{}", rand_suffix()));
        assert_success(&env.vault(&["restore", &first, "--target", target.to_str().unwrap()]));
        let root = target.join(src.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(root.join("big")).unwrap(), big, "{pack}");
        let out = env.vault(&["dump", &first, &format!("{}/small", src.display())]);
        assert_success(&out);
        assert_eq!(out.stdout, b"small file");
        let (code, v) = check_json(&env, &[]);
        assert_eq!(code, 5, "{v}");
        let errs = errors(&v);
        assert_eq!(errs.len(), 1, "{v}");
        assert_eq!(errs[0]["kind"], "pack_missing", "{v}");
        assert_eq!(errs[0]["affected"].as_array().map_or(0, Vec::len), 0, "{v}");
        // Nothing for repair snapshots to cut.
        let out = env.vault(&["repair", "snapshots", "--dry-run"]);
        assert_success(&out);
        // A copy reads the other copy too.
        let target = Env::new();
        let out = env
            .command(&["copy", "--to", &target.repo, "--to-password-file"])
            .arg(&target.password_file)
            .output()
            .unwrap();
        assert_success(&out);
        let restored = target.path("copied");
        let copied = target.snapshots()[0]["id"].as_str().unwrap().to_owned();
        assert_success(&target.vault(&[
            "restore",
            &copied,
            "--target",
            restored.to_str().unwrap(),
        ]));
        let root = restored.join(src.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(root.join("big")).unwrap(), big, "{pack}");
        // Nor does a backup refuse to reuse data whose pack is lost while
        // another copy is stored.
        assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
        env.write_object(&pack, &bytes);
    }
}

/// A pack deleted while `check --verify` runs (a prune beside it) was
/// listed but never read: it is reported, not counted as verified.
#[test]
fn a_pack_deleted_during_verify_is_reported_not_verified() {
    let env = Env::with_small_packs(Backend::Local);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Files below the average chunk size: one blob each whatever the
    // repository's chunker seed, so at least three 1 MiB packs.
    for i in 0..6u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(600_000, 11 + i)).unwrap();
    }
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let mut data = packs_of_kind(&env, "data");
    data.sort();
    assert!(data.len() >= 3, "{data:?}");
    // Packs are verified in id order, one at a time at 256 KiB/s: the last
    // is read some 10 s after the start.
    let child = env
        .command(&[
            "check",
            "--verify",
            "--json",
            "--concurrency",
            "1",
            "--limit-download",
            "256",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let last = data.last().unwrap();
    env.delete_object(last);
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 5);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errs = errors(&v);
    assert!(
        errs.iter().any(|f| f["kind"] == "pack_missing"
            && f["object"].as_str().unwrap().ends_with(key_name(last))
            && f["message"]
                .as_str()
                .unwrap()
                .contains("while the check ran")),
        "{v}"
    );
    assert_eq!(v["packs_verified"], v["packs"].as_u64().unwrap() - 1, "{v}");
    assert_eq!(v["ok"], false, "{v}");
}

/// A repository of 1 MiB packs holding six distinct files, backed up twice.
fn several_packs_fixture(backend: Backend) -> (Env, PathBuf) {
    let env = Env::with_small_packs(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(700_000, i)).unwrap();
    }
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    std::fs::write(src.join("later.txt"), b"second snapshot").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    (env, src)
}

/// `check --quiet` prints errors only: the blobs a prune leaves unused
/// (below `--max-unused`) were a warning in every weekly cron mail.
#[test]
fn quiet_check_prints_errors_but_not_warnings() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), pseudo_random(200_000, 1)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    std::fs::write(src.join("a"), pseudo_random(200_000, 2)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_success(&env.vault(&["forget", "--keep-last", "1"]));
    let out = env.vault(&["check"]);
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("[blobs_unused]"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = env.vault(&["check", "--quiet"]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    // An error still shows.
    env.delete_object(&env.largest_pack());
    let out = env.vault(&["check", "--quiet"]);
    assert_code(&out, 5);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("error:"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// No finding but blobs prune leaves unused (below its unused-space
/// tolerance).
fn assert_clean(v: &serde_json::Value) {
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["kind"] == "blobs_unused"),
        "{v}"
    );
}

/// The data packs of the first backup (the biggest), biggest first: not
/// the small one holding only `later.txt`.
fn big_data_packs(env: &Env) -> Vec<String> {
    let sizes = env.sizes_under("data");
    let mut packs = packs_of_kind(env, "data");
    packs.sort_by_key(|p| std::cmp::Reverse(sizes[p]));
    packs.truncate(packs.len() - 1);
    packs
}

/// Restores `snapshot` and checks that every file it holds is identical to
/// its source, returning how many of the six big files it holds.
fn restored_files_match(env: &Env, src: &Path, snapshot: &str) -> usize {
    let target = env.path(&format!("restore-{}", rand_suffix()));
    assert_success(&env.vault(&["restore", snapshot, "--target", target.to_str().unwrap()]));
    let root = target.join(src.strip_prefix("/").unwrap());
    let mut held = 0;
    for i in 0..6u64 {
        let path = root.join(format!("f{i}"));
        if path.exists() {
            assert_eq!(std::fs::read(&path).unwrap(), pseudo_random(700_000, i));
            held += 1;
        }
    }
    assert_eq!(
        std::fs::read(root.join("later.txt")).unwrap(),
        b"second snapshot"
    );
    held
}

/// The README recipe after a data pack is truncated: `repair index
/// --read-data`, `repair snapshots --forget`, `backup`, then `prune`. The
/// pack's header cannot be read, so `repair index` leaves it unindexed;
/// `repair snapshots` refused while any pack was unindexed and `prune`
/// refused while a snapshot used its blobs, each sending the user to `repair
/// index`, which could not help: the recipe never finished.
fn truncated_pack_repair_sequence_completes(backend: Backend, cut: fn(usize) -> usize) {
    let (env, src) = several_packs_fixture(backend);
    let packs = big_data_packs(&env);
    assert!(packs.len() >= 3, "{packs:?}");
    let victim = packs[1].clone();
    let name = key_name(&victim).to_owned();
    let bytes = env.read_object(&victim);
    env.write_object(&victim, &bytes[..cut(bytes.len())]);

    let out = env.vault(&["repair", "index", "--read-data"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&name) && err.contains("`vault repair snapshots --forget`"),
        "{err}"
    );
    assert!(env.objects_under("data").contains(&victim), "not deleted");

    let out = env.vault(&["repair", "snapshots", "--forget"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(err.contains(&name) && err.contains("ignored"), "{err}");
    let repaired = env.snapshots();
    assert_eq!(repaired.len(), 2);
    // The files the other packs hold survive, identical.
    let latest = repaired
        .iter()
        .max_by_key(|s| s["time"].as_str().unwrap().to_owned())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let survived = restored_files_match(&env, &src, &latest);
    assert!((1..6).contains(&survived), "{survived} files survived");

    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_success(&env.vault(&["prune"]));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert!(errors(&v).is_empty(), "{v}");
    assert_eq!(restored_files_match(&env, &src, "latest"), 6);
    // Removed as any pack in no index (here without the delete margin).
    assert_success(&env.vault(&["prune", "--instant-delete"]));
    assert!(!env.objects_under("data").contains(&victim));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert_clean(&v);
    assert_eq!(restored_files_match(&env, &src, &latest), survived);
}

backend_test!(pack_cut_by_100_bytes_repair_sequence_completes);
fn pack_cut_by_100_bytes_repair_sequence_completes(backend: Backend) {
    truncated_pack_repair_sequence_completes(backend, |len| len - 100);
}

backend_test!(pack_cut_in_half_repair_sequence_completes);
fn pack_cut_in_half_repair_sequence_completes(backend: Backend) {
    truncated_pack_repair_sequence_completes(backend, |len| len / 2);
}

/// A pack that lost its index file still blocks `repair snapshots` (its
/// data would be taken for lost) beside a truncated one, which does not.
#[test]
fn repair_snapshots_still_refuses_for_an_adoptable_pack_beside_an_unreadable_one() {
    let (env, _) = several_packs_fixture(Backend::Local);
    let packs = big_data_packs(&env);
    let bytes = env.read_object(&packs[1]);
    env.write_object(&packs[1], &bytes[..bytes.len() / 2]);
    assert_success(&env.vault(&["repair", "index"]));
    for index in env.objects_under("index") {
        env.delete_object(&index);
    }
    let before = env.objects_under("snapshots");
    let out = env.vault(&["repair", "snapshots", "--forget"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("run `vault repair index` first"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.objects_under("snapshots"), before);
}

backend_test!(pack_overwritten_by_another_is_salvaged_by_repair_index_read_data);
/// A pack whose bytes were replaced by another pack's (`cp data/B data/A`):
/// its blobs are valid copies, so `repair index --read-data` indexed them
/// under the wrong name and `check --verify` kept reporting `pack_hash`
/// after the whole recipe. Now the pack is left out and deleted (B holds
/// all its blobs), A's own lost blobs are dropped by `repair snapshots`,
/// and after a backup everything verifies.
fn pack_overwritten_by_another_is_salvaged_by_repair_index_read_data(backend: Backend) {
    let (env, src) = several_packs_fixture(backend);
    let packs = big_data_packs(&env);
    assert!(packs.len() >= 3, "{packs:?}");
    let (a, b) = (packs[1].clone(), packs[2].clone());
    env.write_object(&a, &env.read_object(&b));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 5, "{v}");

    let out = env.vault(&["repair", "index", "--read-data"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(key_name(&a)) && err.contains("does not match its name"),
        "{err}"
    );
    assert!(
        !env.objects_under("data").contains(&a),
        "misnamed pack kept"
    );
    assert!(env.objects_under("data").contains(&b));
    assert_success(&env.vault(&["repair", "snapshots", "--forget"]));
    let survived = restored_files_match(&env, &src, "latest");
    assert!((1..6).contains(&survived), "{survived} files survived");
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_success(&env.vault(&["prune"]));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert_clean(&v);
    assert_eq!(restored_files_match(&env, &src, "latest"), 6);
}

/// A pack renamed (its bytes under another name, the original gone) holds
/// the only copies of its blobs: `repair index --read-data` stores them
/// again before deleting it, so nothing readable is lost.
#[test]
fn renamed_pack_blobs_are_kept_by_repair_index_read_data() {
    let (env, src) = several_packs_fixture(Backend::Local);
    let packs = big_data_packs(&env);
    let a = packs[1].clone();
    let bytes = env.read_object(&a);
    env.delete_object(&a);
    // Same directory, another name.
    let last = if a.ends_with('0') { "1" } else { "0" };
    let renamed = format!("{}{last}", &a[..a.len() - 1]);
    env.write_object(&renamed, &bytes);
    let out = env.vault(&["repair", "index", "--read-data"]);
    assert_success(&out);
    assert!(!env.objects_under("data").contains(&renamed));
    let (code, v) = check_json(&env, &["--verify"]);
    assert_eq!(code, 0, "{v}");
    assert_clean(&v);
    assert_eq!(restored_files_match(&env, &src, "latest"), 6);
}

/// Prune keeps the copy of a used blob that reads: when the copy readers
/// take first is damaged (not missing), the other one, which restores read
/// instead, was taken for unused and deleted. Either copy damaged, in turn.
#[test]
fn prune_keeps_the_sound_copy_of_a_blob_whose_primary_is_damaged() {
    for victim in 0..2 {
        let env = Env::new();
        let src = env.path("src");
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..6u64 {
            std::fs::write(src.join(format!("f{i}")), pseudo_random(300_000, 40 + i)).unwrap();
        }
        assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
        back_up_again_unseen(&env, &src);
        let mut data = packs_of_kind(&env, "data");
        data.sort();
        assert_eq!(data.len(), 2, "{data:?}");
        let pack = &data[victim];
        let mut bytes = env.read_object(pack);
        bytes[500_000..500_016].copy_from_slice(b"XXXXXXXXXXXXXXXX");
        env.write_object(pack, &bytes);
        let restore = |name: &str| {
            let target = env.path(name);
            assert_success(&env.vault(&[
                "restore",
                "latest",
                "--target",
                target.to_str().unwrap(),
            ]));
            let root = target.join(src.strip_prefix("/").unwrap());
            for i in 0..6u64 {
                assert_eq!(
                    std::fs::read(root.join(format!("f{i}"))).unwrap(),
                    pseudo_random(300_000, 40 + i),
                    "victim {victim}, f{i}"
                );
            }
        };
        restore("before");
        assert_success(&env.vault(&["prune", "--instant-delete"]));
        restore("after");
    }
}
