//! Repository operations: several passwords (key files) for one repository,
//! paper export and import of the master key, copying snapshots to a second
//! repository with its own password, diff and stats. On local disk and S3.

use crate::support::{
    Backend, Env, assert_code, assert_success, packs_of_kind, pseudo_random, stderr,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const FAST_KDF: [&str; 4] = ["--kdf-memory-mib", "8", "--kdf-iterations", "1"];

/// Writes a password file in the test directory.
fn password_file(env: &Env, name: &str, password: &str) -> PathBuf {
    let path = env.path(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    crate::support::private(&path);
    path
}

/// Runs vault with another password file.
fn vault_as(env: &Env, password_file: &Path, args: &[&str]) -> Output {
    env.command(args)
        .env("VAULT_PASSWORD_FILE", password_file)
        .output()
        .unwrap()
}

fn json_as(env: &Env, password_file: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = vault_as(env, password_file, &all);
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn add_key(env: &Env, new_password: &Path) -> String {
    add_key_with(env, new_password, &[])
}

fn add_key_with(env: &Env, new_password: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "key",
        "add",
        "--new-password-file",
        new_password.to_str().unwrap(),
    ];
    args.extend(FAST_KDF);
    args.extend(extra);
    args.push("--json");
    let out = env.vault(&args);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// The id of the key that `password` opens, from `key list --json`.
fn current_key(env: &Env, password: &Path) -> String {
    let keys = json_as(env, password, &["key", "list"]);
    let current: Vec<_> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .collect();
    assert_eq!(current.len(), 1, "exactly one current key: {keys}");
    current[0]["id"].as_str().unwrap().to_owned()
}

fn key_count(env: &Env) -> usize {
    env.json(&["key", "list"]).as_array().unwrap().len()
}

/// A small tree: text files, a 600 KB incompressible file (several
/// chunks with small chunker settings do not matter here: one chunk is
/// fine), a subdirectory and a symlink.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(root.join("b.txt"), b"bravo\n").unwrap();
    std::fs::write(root.join("sub/big.bin"), pseudo_random(600_000, 7)).unwrap();
    std::fs::write(root.join("sub/deeper/c.txt"), b"charlie\n").unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
}

/// Every entry below `root`: relative path → file content, link target or
/// `dir`.
fn scan(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, b"dir".to_vec());
                walk(root, &path, out);
            } else if meta.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn restored(env: &Env, password: &Path, target: &str, src: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let target = env.path(target);
    assert_success(&vault_as(
        env,
        password,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ));
    scan(&target.join(src.strip_prefix("/").unwrap()))
}

backend_test!(three_keys_each_open_and_a_removed_one_fails_with_12);
fn three_keys_each_open_and_a_removed_one_fails_with_12(backend: Backend) {
    let env = Env::on(backend);
    let first = env.password_file.clone();
    let second = password_file(&env, "pw2", "second password");
    let third = password_file(&env, "pw3", "third password");
    let id2 = add_key(&env, &second);
    let id3 = add_key_with(&env, &third, &["--kdf-lanes", "2"]);
    assert_eq!(key_count(&env), 3);
    // Each password opens the repository, through its own key file.
    let id1 = current_key(&env, &first);
    assert_eq!(current_key(&env, &second), id2);
    assert_eq!(current_key(&env, &third), id3);
    assert!(id1 != id2 && id2 != id3 && id1 != id3);
    let keys = env.json(&["key", "list"]);
    for k in keys.as_array().unwrap() {
        assert!(k["created"].as_str().is_some_and(|c| !c.is_empty()), "{k}");
        assert!(
            k["hostname"].is_string() && k["username"].is_string(),
            "{k}"
        );
        // Four argon2 lanes unless asked otherwise.
        let lanes = if k["id"] == id3.as_str() { 2 } else { 4 };
        assert_eq!(k["kdf"]["parallelism"], lanes, "{k}");
    }

    // The key in use is refused without --force.
    let out = env.vault(&["key", "remove", &id1]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));

    // Removing the second key (by prefix): its password no longer opens.
    let out = env.vault(&["key", "remove", &id2[..8]]);
    assert_success(&out);
    assert_eq!(key_count(&env), 2);
    assert_code(&vault_as(&env, &second, &["snapshots"]), 12);
    assert_success(&vault_as(&env, &first, &["snapshots"]));
    assert_success(&vault_as(&env, &third, &["snapshots"]));

    // Never the last key, even with --force.
    assert_success(&vault_as(&env, &third, &["key", "remove", &id1, "--force"]));
    assert_code(&env.vault(&["snapshots"]), 12);
    let out = vault_as(&env, &third, &["key", "remove", &id3, "--force"]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("last key"), "{}", stderr(&out));
    assert_success(&vault_as(&env, &third, &["snapshots"]));
    // Unknown ids are an error, not a silent success.
    // 4: no such object.
    assert_code(&vault_as(&env, &third, &["key", "remove", "00000000"]), 4);
}

backend_test!(passwd_replaces_the_key_in_use);
fn passwd_replaces_the_key_in_use(backend: Backend) {
    let env = Env::on(backend);
    let old = env.password_file.clone();
    let new = password_file(&env, "new", "a new password");
    let before = current_key(&env, &old);
    let mut args = vec![
        "key",
        "passwd",
        "--new-password-file",
        new.to_str().unwrap(),
    ];
    args.extend(FAST_KDF);
    assert_success(&env.vault(&args));
    assert_code(&vault_as(&env, &old, &["snapshots"]), 12);
    assert_ne!(current_key(&env, &new), before);
    assert_eq!(
        json_as(&env, &new, &["key", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

backend_test!(paper_key_restores_access_after_every_key_is_lost);
fn paper_key_restores_access_after_every_key_is_lost(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    make_tree(&src);
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let paper = env.path("paper.txt");
    assert_success(&env.vault(&[
        "key",
        "export",
        "--paper",
        "--output",
        paper.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&paper).unwrap();
    let config = env.json(&["cat", "config"]);
    assert!(
        text.contains(&config["id"].as_str().unwrap()[..8]),
        "the paper names the repository"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&paper).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "paper key file is private");
    }

    // Disaster: every key object is gone.
    let keys = env.objects_under("keys");
    assert!(!keys.is_empty());
    for key in &keys {
        env.delete_object(key);
    }
    // Not "wrong password" (12): no key is left to try, and the way back
    // is an exported one.
    let out = env.vault(&["snapshots"]);
    assert_code(&out, 4);
    assert!(stderr(&out).contains("key import"), "{}", stderr(&out));

    let new = password_file(&env, "new", "after the disaster");
    let import = |file: &Path| {
        let mut args = vec![
            "key",
            "import",
            file.to_str().unwrap(),
            "--new-password-file",
            new.to_str().unwrap(),
        ];
        args.extend(FAST_KDF);
        env.vault(&args)
    };
    // A mistyped digit is caught and its line named.
    let line = text.lines().find(|l| l.starts_with("key 2:")).unwrap();
    let digit = line.chars().nth(7).unwrap();
    let other = if digit == '0' { '1' } else { '0' };
    let typo = format!("{}{other}{}", &line[..7], &line[8..]);
    let bad = env.path("bad.txt");
    std::fs::write(&bad, text.replace(line, &typo)).unwrap();
    let out = import(&bad);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("key 2"), "{}", stderr(&out));
    assert!(env.objects_under("keys").is_empty(), "nothing written");

    assert_success(&import(&paper));
    assert_eq!(env.objects_under("keys").len(), 1);
    let snaps = json_as(&env, &new, &["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(restored(&env, &new, "r", &src), scan(&src));
    assert_code(&env.vault(&["snapshots"]), 12);

    // A paper key of another repository does not open this one.
    let other = Env::on(backend);
    let out = other.vault(&[
        "key",
        "import",
        paper.to_str().unwrap(),
        "--kdf-memory-mib",
        "8",
        "--kdf-iterations",
        "1",
    ]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("does not decrypt"),
        "{}",
        stderr(&out)
    );
}

/// A second repository with its own password, chunking like `source`.
fn copy_target(source: &Env, backend: Backend) -> Env {
    let target = Env::uninitialised_on(backend);
    std::fs::write(&target.password_file, "the offsite password\n").unwrap();
    let mut args = vec![
        "init",
        "--copy-chunker-params",
        "--from-repo",
        &source.repo,
        "--from-password-file",
        source.password_file.to_str().unwrap(),
    ];
    args.extend(FAST_KDF);
    assert_success(&target.vault(&args));
    target
}

fn copy_to(source: &Env, target: &Env, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "copy",
        "--to",
        &target.repo,
        "--to-password-file",
        target.password_file.to_str().unwrap(),
    ];
    args.extend(extra);
    source.json(&args)
}

backend_test!(copy_to_a_second_repository_restores_identically_and_twice_adds_nothing);
fn copy_to_a_second_repository_restores_identically_and_twice_adds_nothing(backend: Backend) {
    let source = Env::on(backend);
    let src = source.path("src");
    make_tree(&src);
    assert_success(&source.vault(&["backup", src.to_str().unwrap(), "--tag", "first"]));
    std::fs::write(src.join("a.txt"), b"alpha, changed\n").unwrap();
    std::fs::write(src.join("new.txt"), b"new file\n").unwrap();
    assert_success(&source.vault(&["backup", src.to_str().unwrap()]));
    let target = copy_target(&source, backend);
    // The target's password is not the source's.
    assert_success(&target.vault(&["snapshots"]));
    assert_code(
        &target
            .command(&["snapshots"])
            .env("VAULT_PASSWORD_FILE", &source.password_file)
            .output()
            .unwrap(),
        12,
    );

    let report = copy_to(&source, &target, &[]);
    assert_eq!(report["copied"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["blobs_added"].as_u64().unwrap() > 0);
    if backend == Backend::S3 {
        // Both repositories of a copy use the local cache.
        let caches = source.json(&["cache"]);
        assert_eq!(caches["caches"].as_array().unwrap().len(), 2, "{caches}");
    }
    let source_snaps = source.snapshots();
    let target_snaps = target.snapshots();
    assert_eq!(target_snaps.len(), 2);
    for (s, t) in source_snaps.iter().zip(&target_snaps) {
        // The copy marker: the source snapshot's id.
        assert_eq!(t["original"], s["id"]);
        for field in ["time", "hostname", "username", "paths", "tags", "summary"] {
            assert_eq!(t.get(field), s.get(field), "{field}");
        }
        assert_ne!(t["tree"], s["tree"], "ids are keyed per repository");
    }
    assert_success(&target.vault(&["check", "--verify"]));
    assert_eq!(
        restored(&target, &target.password_file, "r", &src),
        scan(&src)
    );

    // Copying again copies nothing and uploads nothing.
    let data_before = target.objects_under("data");
    let snaps_before = target.objects_under("snapshots");
    let again = copy_to(&source, &target, &[]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);
    assert_eq!(again["blobs_read"], 0);
    assert_eq!(again["blobs_added"], 0);
    assert_eq!(target.objects_under("data"), data_before);
    assert_eq!(target.objects_under("snapshots"), snaps_before);

    // A new snapshot: only it is copied, and only the changed file is read
    // from the source (the rest is known from the earlier copy).
    std::fs::write(src.join("b.txt"), b"bravo, changed\n").unwrap();
    assert_success(&source.vault(&["backup", src.to_str().unwrap()]));
    let third = copy_to(&source, &target, &["latest"]);
    assert_eq!(third["copied"].as_array().unwrap().len(), 1, "{third}");
    assert_eq!(third["blobs_read"], 1, "{third}");
    assert_eq!(
        restored(&target, &target.password_file, "r3", &src),
        scan(&src)
    );
    assert_success(&target.vault(&["check"]));

    // Same chunker parameters: backing up the same files directly into the
    // target finds every chunk already there.
    let direct = target.json(&["backup", "--force", src.to_str().unwrap()]);
    assert_eq!(direct["data_blobs"], 0, "{direct}");
}

/// A local repository with one snapshot of `make_tree`, copied to a
/// second one: the source, the backed-up directory and the target.
fn backed_up_and_copied() -> (Env, std::path::PathBuf, Env) {
    let source = Env::new();
    let src = source.path("src");
    make_tree(&src);
    assert_success(&source.vault(&["backup", src.to_str().unwrap()]));
    let target = copy_target(&source, Backend::Local);
    copy_to(&source, &target, &[]);
    (source, src, target)
}

/// A target data pack lost after a copy: the next copy, which matches the
/// unchanged files to that pack's blobs through the earlier copy without
/// reading them, exits 4 naming the pack and writes no snapshot. After
/// `repair index` on the target the copy stores that data again.
#[test]
fn a_copy_refuses_to_reference_a_target_pack_lost_from_storage() {
    let (source, src, target) = backed_up_and_copied();
    let lost = packs_of_kind(&target, "data");
    assert_eq!(lost.len(), 1);
    target.delete_object(&lost[0]);
    std::fs::write(src.join("new.txt"), b"new file\n").unwrap();
    assert_success(&source.vault(&["backup", src.to_str().unwrap()]));
    let copy = |target: &Env| {
        source
            .command(&["copy", "--to", &target.repo, "--to-password-file"])
            .arg(&target.password_file)
            .output()
            .unwrap()
    };
    let out = copy(&target);
    assert_code(&out, 4);
    let err = stderr(&out);
    let name = lost[0].rsplit('/').next().unwrap();
    assert!(
        err.contains(name) && err.contains("missing from storage"),
        "{err}"
    );
    assert_eq!(target.snapshots().len(), 1, "no snapshot written");
    assert_success(&target.vault(&["repair", "index"]));
    assert_success(&copy(&target));
    assert_eq!(target.snapshots().len(), 2);
    assert_success(&target.vault(&["check", "--verify"]));
    assert_eq!(
        restored(&target, &target.password_file, "r", &src),
        scan(&src)
    );
}

/// A target that lost the tree pack of a copied snapshot (then `repair
/// index`): the next copy stores that snapshot's trees again from the
/// intact source instead of skipping it as already there, which mends the
/// earlier copy (same ids) without writing a second one.
#[test]
fn a_copy_whose_root_tree_the_target_lost_is_copied_again() {
    let (source, src, target) = backed_up_and_copied();
    for pack in packs_of_kind(&target, "tree") {
        target.delete_object(&pack);
    }
    assert_success(&target.vault(&["repair", "index"]));
    assert_code(&target.vault(&["check"]), 5);
    let again = copy_to(&source, &target, &[]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["skipped"].as_array().unwrap().len(), 1, "{again}");
    assert!(again["blobs_added"].as_u64().unwrap() > 0, "{again}");
    assert_eq!(target.snapshots().len(), 1);
    assert_success(&target.vault(&["check", "--verify"]));
    assert_eq!(
        restored(&target, &target.password_file, "r", &src),
        scan(&src)
    );
}

#[test]
fn interrupted_copy_resumes_without_uploading_again() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let source = Env::new();
    let src = source.path("big");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..24 {
        std::fs::write(src.join(format!("f{i:02}")), pseudo_random(1_500_000, i)).unwrap();
    }
    assert_success(&source.vault(&["backup", src.to_str().unwrap(), "--compression", "none"]));
    let target = Env::uninitialised();
    let mut args = vec!["init", "--pack-size-mib", "1"];
    args.extend(FAST_KDF);
    assert_success(&target.vault(&args));

    let child = source
        .command(&[
            "copy",
            "--to",
            &target.repo,
            "--to-password-file",
            target.password_file.to_str().unwrap(),
            "--compression",
            "none",
            "--upload-concurrency",
            "1",
            "--download-concurrency",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while target.objects_under("data").len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        eprintln!("NOTICE: the copy finished before the interrupt; nothing to resume");
        return;
    }
    assert_code(&out, 130);
    assert!(
        target.snapshots().is_empty(),
        "no snapshot from the interrupted copy"
    );
    let uploaded = target.objects_under("data");
    assert!(!uploaded.is_empty());
    assert!(
        !target.objects_under("index").is_empty(),
        "uploads were indexed"
    );

    let report = copy_to(&source, &target, &["--compression", "none"]);
    assert_eq!(report["copied"].as_array().unwrap().len(), 1);
    let total = 24 * 1_500_000;
    assert!(
        report["bytes_added"].as_u64().unwrap() < total,
        "the rerun stored again what was uploaded: {report}"
    );
    let after = target.objects_under("data");
    assert!(uploaded.iter().all(|k| after.contains(k)));
    assert_success(&target.vault(&["check", "--verify"]));
    assert_eq!(
        restored(&target, &target.password_file, "r", &src),
        scan(&src)
    );
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert_success(out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

backend_test!(diff_and_stats_report_changes_and_sizes);
fn diff_and_stats_report_changes_and_sizes(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    make_tree(&src);
    std::os::unix::fs::symlink("a.txt", src.join("ln2")).unwrap();
    let first = env.json(&["backup", src.to_str().unwrap()]);
    std::fs::write(src.join("a.txt"), b"alpha, changed\n").unwrap();
    std::fs::remove_file(src.join("ln2")).unwrap();
    std::os::unix::fs::symlink("e.txt", src.join("ln2")).unwrap();
    std::fs::remove_file(src.join("b.txt")).unwrap();
    std::fs::write(src.join("e.txt"), b"echo\n").unwrap();
    std::fs::remove_file(src.join("link")).unwrap();
    std::fs::create_dir(src.join("link")).unwrap();
    std::fs::write(src.join("link/inner"), b"inner\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let c = src.join("sub/deeper/c.txt");
        std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let second = env.json(&["backup", src.to_str().unwrap()]);
    let a = first["snapshot_id"].as_str().unwrap()[..8].to_owned();
    let b = second["snapshot_id"].as_str().unwrap()[..8].to_owned();
    let root = src.to_str().unwrap();

    let lines = json_lines(&env.vault(&["diff", &a, &b, "--json"]));
    let (stats, changes) = lines.split_last().unwrap();
    let got: Vec<(String, String)> = changes
        .iter()
        .map(|c| {
            assert_eq!(c["message_type"], "change");
            (
                c["modifier"].as_str().unwrap().to_owned(),
                c["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("M", "/a.txt"),
        ("-", "/b.txt"),
        ("+", "/e.txt"),
        ("T", "/link/"),
        ("+", "/link/inner"),
        ("M", "/ln2"),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), format!("{root}{p}")))
    .collect();
    assert_eq!(got, want);
    assert_eq!(stats["message_type"], "statistics");
    assert_eq!(stats["changed_files"], 1);
    // The retargeted symlink counts too, apart from files.
    assert_eq!(stats["changed_others"], 1);
    assert_eq!(stats["type_changed"], 1);
    assert_eq!(stats["added"]["files"], 2);
    assert_eq!(stats["removed"]["files"], 1);
    assert!(stats["added"]["data_blobs"].as_u64().unwrap() >= 3);
    assert!(stats["removed"]["data_blobs"].as_u64().unwrap() >= 2);

    // --metadata adds the permission change, as `U`.
    let meta = json_lines(&env.vault(&["diff", &a, &b, "--metadata", "--json"]));
    let c = format!("{root}/sub/deeper/c.txt");
    let u = meta
        .iter()
        .find(|l| l["path"] == c.as_str())
        .expect("c.txt reported with --metadata");
    assert_eq!(u["modifier"], "U");
    assert!(u["what"].as_array().unwrap().contains(&"mode".into()));
    // The same snapshot twice: nothing.
    let same = json_lines(&env.vault(&["diff", &b, &b, "--json"]));
    assert_eq!(same.len(), 1);
    // Human output, restic's layout.
    let out = env.vault(&["diff", &a, &b]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("M    {root}/a.txt")), "{text}");
    assert!(text.contains(&format!("-    {root}/b.txt")), "{text}");

    // stats, restore-size: both snapshots' logical bytes and files.
    let size_of = |s: &serde_json::Value| s["total_bytes_processed"].as_u64().unwrap();
    let files_of = |s: &serde_json::Value| s["total_files_processed"].as_u64().unwrap();
    let rs = env.json(&["stats"]);
    assert_eq!(rs["mode"], "restore-size");
    assert_eq!(rs["snapshots_count"], 2);
    assert_eq!(
        rs["total_size"].as_u64().unwrap(),
        size_of(&first) + size_of(&second)
    );
    assert_eq!(
        rs["total_file_count"].as_u64().unwrap(),
        files_of(&first) + files_of(&second)
    );
    let latest = env.json(&["stats", "latest"]);
    assert_eq!(latest["snapshots_count"], 1);
    assert_eq!(latest["total_size"].as_u64().unwrap(), size_of(&second));

    // raw-data: the big file is shared, so dedup saves; sizes add up.
    let raw = env.json(&["stats", "--mode", "raw-data"]);
    assert_eq!(raw["mode"], "raw-data");
    let blobs = raw["total_blob_count"].as_u64().unwrap();
    assert_eq!(
        blobs,
        raw["data_blob_count"].as_u64().unwrap() + raw["tree_blob_count"].as_u64().unwrap()
    );
    assert!(raw["dedup_ratio"].as_f64().unwrap() > 1.5, "{raw}");
    assert!(raw["compression_ratio"].as_f64().unwrap() > 0.9, "{raw}");
    assert!(raw["total_size"].as_u64().unwrap() > 600_000);
    assert_eq!(raw["missing_blobs"], 0);
    let repo = &raw["repository"];
    assert_eq!(repo["snapshots"], 2);
    assert_eq!(repo["objects"]["snapshots"]["count"], 2);
    assert_eq!(repo["objects"]["keys"]["count"], 1);
    assert_eq!(repo["objects"]["config"]["count"], 1);
    assert!(repo["objects"]["data"]["count"].as_u64().unwrap() >= 2);
    let listed: u64 = env.objects().iter().map(|(_, size)| size).sum();
    assert_eq!(repo["total_bytes"].as_u64().unwrap(), listed);
    // Every indexed blob is referenced here, so the totals agree.
    assert_eq!(repo["index"]["blobs"].as_u64().unwrap(), blobs);

    // Requests of the last operation: what an object store bills.
    let before: std::collections::HashSet<String> =
        env.objects().into_iter().map(|(k, _)| k).collect();
    std::fs::write(env.path("src/c.bin"), pseudo_random(3_000_000, 77)).unwrap();
    assert_success(&env.vault(&["backup", env.path("src").to_str().unwrap()]));
    let created = env
        .objects()
        .into_iter()
        .filter(|(k, _)| !before.contains(k))
        .count() as u64;
    let after_backup = env.json(&["stats", "latest"]);
    let last = &after_backup["last_operation"];
    match backend {
        Backend::Local => assert!(last.is_null(), "{last}"),
        Backend::S3 => {
            assert_eq!(last["command"], "backup", "{last}");
            assert_eq!(last["success"], true, "{last}");
            let r = &last["requests"];
            let n = |k: &str| r[k].as_u64().unwrap();
            // Every new object was PUT and its size checked with a HEAD;
            // the repository was listed; the lock was released (DELETE).
            assert!(created >= 3, "{created}");
            assert!(n("put") >= created, "{r} for {created} new objects");
            assert!(n("head") >= created, "{r}");
            assert!(n("list") >= 1 && n("get") >= 1 && n("delete") >= 1, "{r}");
            // The stats command counts its own requests too.
            assert!(
                after_backup["requests_this_command"]["get"]
                    .as_u64()
                    .unwrap()
                    >= 1
            );
            // A failed operation is recorded as such.
            let failed = env.vault(&["restore", "ffffffff", "--target", "/nonexistent"]);
            assert!(!failed.status.success());
            let again = env.json(&["stats", "latest"]);
            assert_eq!(again["last_operation"]["command"], "restore");
            assert_eq!(again["last_operation"]["success"], false);
            // And the human-readable form names it.
            let text = env.vault(&["stats", "latest"]);
            let text = String::from_utf8_lossy(&text.stdout).into_owned();
            assert!(
                text.contains("Requests of the last operation (`vault stats`"),
                "{text}"
            );
        }
    }
}

backend_test!(tag_adds_removes_and_sets_tags_and_forget_keeps_tagged);
fn tag_adds_removes_and_sets_tags_and_forget_keeps_tagged(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    make_tree(&src);
    let src_arg = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", "--tag", "daily", src_arg]));
    std::fs::write(src.join("a.txt"), b"alpha, changed\n").unwrap();
    assert_success(&env.vault(&["backup", "--tag", "daily", src_arg]));
    let before = env.snapshots();
    let (old_first, second) = (
        before[0]["id"].as_str().unwrap().to_owned(),
        before[1]["id"].as_str().unwrap().to_owned(),
    );
    let tags_of = |snaps: &[serde_json::Value], id: &str| -> Vec<String> {
        let s = snaps
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {snaps:?}"));
        s["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };

    // Nothing to do (a usage error), an unknown snapshot: refused, nothing
    // changes.
    let out = env.vault(&["tag", "latest"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("<--add <ADD>|--remove <REMOVE>|--set <SET>>"),
        "{}",
        stderr(&out)
    );
    assert!(
        !env.vault(&["tag", "ffffffff", "--add", "x"])
            .status
            .success()
    );
    assert_eq!(env.snapshots(), before);

    // Mark the older snapshot to keep: it is stored anew, the old document
    // goes, and its content is untouched.
    let changed = json_lines(&env.vault(&["--json", "tag", &old_first[..8], "--add", "keep"]));
    assert_eq!(changed[0]["old_snapshot"], old_first.as_str());
    let first = changed[0]["new_snapshot"].as_str().unwrap().to_owned();
    assert_ne!(first, old_first);
    assert_eq!(changed[1]["changed_snapshots"], 1);
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 2);
    assert_eq!(tags_of(&snaps, &first), ["daily", "keep"]);
    assert_eq!(tags_of(&snaps, &second), ["daily"]);
    let cat = env.json(&["cat", "snapshot", &first]);
    assert_eq!(cat["original"], old_first.as_str(), "{cat}");
    assert_eq!(cat["tree"], before[0]["tree"], "{cat}");
    let listed = env.vault(&["ls", &first[..8]]);
    assert_success(&listed);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("a.txt"));

    // forget --keep-last 1 --keep-tag keep keeps both.
    let out = env.vault(&["forget", "--keep-last", "1", "--keep-tag", "keep"]);
    assert_success(&out);
    assert_eq!(env.snapshots().len(), 2);

    // Remove a tag from every snapshot carrying it (no ids: the filter).
    let out = env.vault(&["tag", "--tag", "daily", "--remove", "daily"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("modified 2 snapshots"));
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 2);
    let mut all: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| tags_of(&snaps, s["id"].as_str().unwrap()))
        .collect();
    all.sort();
    assert_eq!(all, [vec![], vec!["keep".to_owned()]]);

    // Set replaces; the same change again changes nothing.
    assert_success(&env.vault(&["tag", "latest", "--set", "x,y"]));
    let out = env.vault(&["tag", "latest", "--set", "y,x"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("modified 0 snapshots"));
    let snaps = env.snapshots();
    let latest = snaps.last().unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(tags_of(&snaps, &latest), ["x", "y"]);
    // The retagged snapshots still hold all their data.
    assert_success(&env.vault(&["check", "--verify"]));
    assert!(env.locks().is_empty(), "{:?}", env.locks());
}

/// Bytes of every pack in the repository.
fn pack_bytes(env: &Env) -> u64 {
    env.sizes_under("data/").values().sum()
}

backend_test!(rewrite_removes_excluded_paths_and_prune_frees_their_data);
fn rewrite_removes_excluded_paths_and_prune_frees_their_data(backend: Backend) {
    let env = Env::on(backend);
    let password = password_file(&env, "pass", crate::support::PASSWORD);
    let src = env.path("src");
    make_tree(&src);
    // An incompressible secret, and a directory that should never have
    // been backed up.
    std::fs::write(src.join("sub/secret.key"), pseudo_random(300_000, 99)).unwrap();
    std::fs::create_dir_all(src.join("cache/x")).unwrap();
    std::fs::write(src.join("cache/x/blob"), pseudo_random(200_000, 98)).unwrap();
    std::fs::write(src.join("cache/y"), b"yankee\n").unwrap();
    let src_arg = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", src_arg]));
    std::fs::write(src.join("a.txt"), b"alpha, changed\n").unwrap();
    assert_success(&env.vault(&["backup", src_arg]));
    let before = env.snapshots();
    let cache = format!("{src_arg}/cache");
    let excludes = ["--exclude", "secret.key", "--exclude", cache.as_str()];

    // Nothing to remove, or no pattern: refused or a no-op.
    let out = env.vault(&["rewrite"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing to remove"),
        "{}",
        stderr(&out)
    );
    let out = env.vault(&["rewrite", "--exclude", "no-such-name"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rewrote 0 snapshots"));

    // A dry run names what would go and writes nothing.
    let mut args = vec!["rewrite", "--dry-run"];
    args.extend(excludes);
    let out = env.vault(&args);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("would rewrite 2 snapshots"), "{text}");
    assert!(
        text.contains(&format!("{src_arg}/sub/secret.key")),
        "{text}"
    );
    assert!(text.contains(&format!("  {cache}\n")), "{text}");
    assert!(text.contains("would lose 3 files"), "{text}");
    assert_eq!(env.snapshots(), before);

    // The latest only, keeping the original: three snapshots, the new one
    // naming the original. Then the original goes by name (`forget ID`).
    let original = before[1]["id"].as_str().unwrap().to_owned();
    let mut args = vec!["rewrite", "latest"];
    args.extend(excludes);
    assert_success(&env.vault(&args));
    let three = env.snapshots();
    assert_eq!(three.len(), 3);
    let new = three
        .iter()
        .find(|s| before.iter().all(|b| b["id"] != s["id"]))
        .unwrap();
    let cat = env.json(&["cat", "snapshot", new["id"].as_str().unwrap()]);
    assert_eq!(cat["original"], original.as_str());
    // Same time as its original, and still `latest`: the original holds
    // what the rewrite removed.
    let ls = env.vault(&["ls", "latest"]);
    assert_success(&ls);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("secret.key"),
        "latest is the original"
    );
    let out = env.vault(&["forget", &original[..8], "--keep-last", "1"]);
    assert!(stderr(&out).contains("not both"), "{}", stderr(&out));
    assert_eq!(env.snapshots().len(), 3);
    let out = env.vault(&["forget", &original[..8]]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1 snapshots"));
    assert_eq!(env.snapshots().len(), 2);

    // Every snapshot, forgetting the originals: the first is rewritten, the
    // rewritten latest has nothing left to remove. Two are left, none with
    // the excluded paths, everything else intact.
    let mut args = vec!["--json", "rewrite", "--forget"];
    args.extend(excludes);
    let lines = json_lines(&env.vault(&args));
    let rewritten: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message_type"] == "rewritten")
        .collect();
    assert_eq!(rewritten.len(), 1, "{lines:?}");
    for r in &rewritten {
        assert_eq!(r["removed_files"], 3, "{r}");
        assert_eq!(r["removed_bytes"], 300_000 + 200_000 + 7, "{r}");
        assert_eq!(r["forgotten"], true);
    }
    let after = env.snapshots();
    assert_eq!(after.len(), 2, "{after:?}");
    for s in &before {
        assert!(
            after.iter().all(|a| a["id"] != s["id"]),
            "{} still there",
            s["id"]
        );
    }
    let find = env.vault(&["find", "secret.key", "blob"]);
    assert_success(&find);
    assert!(String::from_utf8_lossy(&find.stdout).contains("no matches"));
    let mut expected = scan(&src);
    expected.retain(|p, _| !p.starts_with("cache") && !p.ends_with("secret.key"));
    assert_eq!(restored(&env, &password, "restore", &src), expected);

    // prune then frees the excluded data for good.
    let before_prune = pack_bytes(&env);
    let out = env.vault(&["prune", "--max-unused", "0", "--instant-delete"]);
    assert_success(&out);
    let freed = before_prune - pack_bytes(&env);
    assert!(freed >= 500_000, "prune freed only {freed} bytes");
    assert_success(&env.vault(&["check", "--verify"]));
    assert!(env.locks().is_empty(), "{:?}", env.locks());
}

backend_test!(copy_carries_the_wal_archive_of_copied_base_backups);
/// A copied base backup comes with its source's WAL archive: without it the
/// copy could not even be brought to a consistent state.
fn copy_carries_the_wal_archive_of_copied_base_backups(backend: Backend) {
    let source = Env::on(backend);
    let mut segments = Vec::new();
    for n in 1..=2u64 {
        let path = source.path(&format!("pg_wal/00000001000000000000000{n}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, pseudo_random(200_000, n)).unwrap();
        assert_success(&source.vault(&["wal", "push", "--source", "db", path.to_str().unwrap()]));
        segments.push(path);
    }
    // Stands in for a base backup: tagged as `backup --physical` tags one.
    let base = source.path("base.tar");
    std::fs::write(&base, b"base backup").unwrap();
    assert_success(&source.vault(&[
        "backup",
        base.to_str().unwrap(),
        "--tag",
        "db",
        "--tag",
        "physical",
    ]));
    let target = copy_target(&source, backend);
    let report = copy_to(&source, &target, &[]);
    assert_eq!(report["wal_files_copied"], 2, "{report}");
    for path in &segments {
        let name = path.file_name().unwrap().to_str().unwrap();
        let out = target.path(&format!("fetched-{name}"));
        assert_success(&target.vault(&[
            "wal",
            "fetch",
            "--source",
            "db",
            name,
            out.to_str().unwrap(),
        ]));
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(path).unwrap());
    }
    let again = copy_to(&source, &target, &[]);
    assert_eq!(again["wal_files_copied"], 0, "{again}");
}

/// The repository of `env`, opened in this process (to hold a lock).
fn open_here(env: &Env) -> vault_engine::Repository {
    let backend = vault_engine::backend::open_url(&env.repo, &Default::default()).unwrap();
    let password = vault_engine::crypto::Password::new(crate::support::PASSWORD);
    vault_engine::Repository::open(backend.into(), &password).unwrap()
}

#[test]
fn unlock_names_the_live_locks_it_leaves_and_why() {
    let env = Env::new();
    let repo = open_here(&env);
    // Held by another host: live until it misses its refreshes.
    let held =
        vault_engine::lock::lock_exclusive(&repo, "prune", "far-away-host", "alice").unwrap();
    let out = env.vault(&["unlock"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("kept lock locks/")
            && text.contains("prune by alice@far-away-host")
            && text.contains(&format!("pid {}", std::process::id()))
            && text.contains("taken ")
            && text.contains("still live")
            && text.contains("--remove-all"),
        "{text}"
    );
    assert!(!text.contains("no stale locks"), "{text}");
    assert_eq!(env.locks().len(), 1);
    let json = env.json(&["unlock"]);
    assert_eq!(json["kept"][0]["hostname"], "far-away-host");
    assert_eq!(json["kept"][0]["purpose"], "prune");
    assert!(json["kept"][0]["age_secs"].is_i64(), "{json}");
    assert_eq!(json["removed"].as_array().unwrap().len(), 0);
    drop(held);
    // Held on this host by a process that is still running.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let held = vault_engine::lock::lock_exclusive(&repo, "forget", host.trim(), "bob").unwrap();
    let text = String::from_utf8(env.vault(&["unlock"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "process {} is still running on this host",
            std::process::id()
        )),
        "{text}"
    );
    assert_eq!(env.locks().len(), 1);
    // --remove-all removes it, and says so.
    let text = String::from_utf8(env.vault(&["unlock", "--remove-all"]).stdout).unwrap();
    assert!(text.contains("removed lock locks/"), "{text}");
    assert!(env.locks().is_empty());
    drop(held);
}

backend_test!(list_prints_the_ids_of_each_kind_of_object);
/// `vault list KIND` prints what is stored, one id per line, as `restic
/// list` does: compared with the store's own listing, and for blobs with
/// the index (`cat index`).
fn list_prints_the_ids_of_each_kind_of_object(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/a"), pseudo_random(300_000, 7)).unwrap();
    std::fs::write(src.join("b"), b"small").unwrap();
    let src = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", src]));
    assert_success(&env.vault(&["backup", "--tag", "again", src]));
    let ids = |kind: &str| -> Vec<String> {
        let out = env.vault(&["list", kind]);
        assert_success(&out);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let stored = |prefix: &str| -> Vec<String> {
        let mut names: Vec<String> = env
            .objects_under(prefix)
            .iter()
            .map(|k| crate::support::key_name(k).to_owned())
            .filter(|n| n.len() == 64)
            .collect();
        names.sort();
        names
    };
    for (kind, prefix, count) in [
        ("snapshots", "snapshots", Some(2)),
        ("index", "index", None),
        ("packs", "data", None),
        ("keys", "keys", Some(1)),
    ] {
        let listed = ids(kind);
        assert_eq!(listed, stored(prefix), "{kind}");
        assert!(!listed.is_empty(), "{kind}");
        if let Some(n) = count {
            assert_eq!(listed.len(), n, "{kind}");
        }
    }
    assert!(ids("locks").is_empty());
    // A stranger's file among the snapshots is no object.
    env.write_object("snapshots/notes.txt", b"x");
    assert_eq!(ids("snapshots").len(), 2);

    // Blobs: every one the index files name, with its type.
    let mut from_index = Vec::new();
    for index in ids("index") {
        let file = env.json(&["cat", "index", &index]);
        for pack in file["packs"].as_array().unwrap() {
            for blob in pack["blobs"].as_array().unwrap() {
                from_index.push(format!(
                    "{} {}",
                    blob["type"].as_str().unwrap(),
                    blob["id"].as_str().unwrap()
                ));
            }
        }
    }
    from_index.sort();
    from_index.dedup();
    let mut blobs = ids("blobs");
    blobs.sort();
    assert_eq!(blobs, from_index);
    assert!(blobs.iter().any(|b| b.starts_with("data ")));
    assert!(blobs.iter().any(|b| b.starts_with("tree ")));
    // --json: the same, as an array.
    let json = env.json(&["list", "snapshots"]);
    let json: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(json, ids("snapshots"));

    // Locks by their own names (it listed none: not 64 hex digits).
    let fallback = "0123456789abcdef0123456789abcdef";
    env.write_object("locks/exclusive", b"{}");
    env.write_object(&format!("locks/{fallback}"), b"{}");
    env.write_object("locks/notes.txt", b"x");
    assert_eq!(ids("locks"), [fallback, "exclusive"]);
}

backend_test!(recover_saves_what_a_lost_snapshot_object_held);
/// A snapshot object deleted by hand (or damaged and removed by `repair
/// snapshots --forget`) leaves its trees and data unreachable: `vault
/// recover` saves a snapshot holding them, restorable, and a prune after
/// it keeps them.
fn recover_saves_what_a_lost_snapshot_object_held(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/a"), pseudo_random(200_000, 11)).unwrap();
    std::fs::write(src.join("b"), b"first").unwrap();
    let src_str = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", src_str]));
    let lost = env.snapshots()[0].clone();
    std::fs::write(src.join("b"), b"second").unwrap();
    assert_success(&env.vault(&["backup", src_str]));
    // Nothing unreachable yet.
    let report = env.json(&["recover"]);
    assert_eq!(report["roots"].as_array().unwrap().len(), 0, "{report}");
    assert!(report["snapshot"].is_null());

    env.delete_object(&format!("snapshots/{}", lost["id"].as_str().unwrap()));
    let lost_tree = lost["tree"].as_str().unwrap();
    // A dry run names the root and writes nothing.
    let before = env.objects();
    let out = env.vault(&["recover", "--dry-run"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&format!("/recover/{lost_tree}")), "{text}");
    assert_eq!(env.objects(), before);

    let report = env.json(&["recover"]);
    let roots: Vec<&str> = report["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(roots, [lost_tree], "{report}");
    let recovered = report["snapshot"].as_str().unwrap().to_owned();
    let snap = env
        .snapshots()
        .into_iter()
        .find(|s| s["id"] == recovered.as_str())
        .unwrap();
    assert_eq!(snap["tags"], serde_json::json!(["recovered"]));
    assert_eq!(snap["paths"], serde_json::json!(["/recover"]));
    // Run again: the recovered snapshot reaches it now.
    let again = env.json(&["recover"]);
    assert_eq!(again["roots"].as_array().unwrap().len(), 0, "{again}");

    // Prune keeps it; the lost snapshot's files come back whole.
    assert_success(&env.vault(&["prune"]));
    assert_success(&env.vault(&["check", "--verify"]));
    let target = env.path("target");
    assert_success(&env.vault(&[
        "restore",
        &recovered[..8],
        "--target",
        target.to_str().unwrap(),
    ]));
    let restored = target
        .join("recover")
        .join(lost_tree)
        .join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("b")).unwrap(), b"first");
    assert_eq!(
        std::fs::read(restored.join("d/a")).unwrap(),
        pseudo_random(200_000, 11)
    );
}

/// restic's other two stats modes. Two snapshots: the first of `a/b/f`
/// ("hi\n"), a symlink and `t` ("top\n"); the second adds copies of both
/// (`dup`, `a/t2`), two empty files, and changes `t` ("changed\n"). restic
/// 0.14 counts this same tree as files-by-contents 4 files, 15 B, and
/// blobs-per-file 3 blobs, 2 files, 15 B (walking the older snapshot first).
#[test]
fn stats_counts_files_by_contents_and_blobs_per_file() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/f"), b"hi\n").unwrap();
    std::os::unix::fs::symlink("f", src.join("a/b/l")).unwrap();
    std::fs::write(src.join("t"), b"top\n").unwrap();
    let src_arg = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", "--time", "2026-01-09 02:30:00", src_arg]));
    std::fs::write(src.join("dup"), b"hi\n").unwrap();
    std::fs::write(src.join("a/t2"), b"top\n").unwrap();
    std::fs::write(src.join("e1"), b"").unwrap();
    std::fs::write(src.join("e2"), b"").unwrap();
    std::fs::write(src.join("t"), b"changed\n").unwrap();
    assert_success(&env.vault(&["backup", "--time", "2026-01-10 02:30:00", src_arg]));

    // Distinct contents: "hi\n", "top\n", "changed\n" and the empty one.
    let v = env.json(&["stats", "--mode", "files-by-contents"]);
    assert_eq!(v["mode"], "files-by-contents", "{v}");
    assert_eq!(v["total_file_count"], 4, "{v}");
    assert_eq!(v["total_size"], 15, "{v}");
    assert_eq!(v["snapshots_count"], 2, "{v}");
    // The latest alone: the same four contents.
    let v = env.json(&["stats", "--mode", "files-by-contents", "latest"]);
    assert_eq!(
        (v["total_file_count"].as_u64(), v["total_size"].as_u64()),
        (Some(4), Some(15))
    );
    // The first alone: two.
    let first = env.snapshots()[0]["id"].as_str().unwrap().to_owned();
    let v = env.json(&["stats", "--mode", "files-by-contents", &first]);
    assert_eq!(
        (v["total_file_count"].as_u64(), v["total_size"].as_u64()),
        (Some(2), Some(7))
    );

    // The blobs of the first file of each content, once per path: a/b/f
    // and t (both of its versions); an empty file has none.
    let v = env.json(&["stats", "--mode", "blobs-per-file"]);
    assert_eq!(v["mode"], "blobs-per-file", "{v}");
    assert_eq!(v["total_blob_count"], 3, "{v}");
    assert_eq!(v["total_file_count"], 2, "{v}");
    assert_eq!(v["total_size"], 15, "{v}");

    let out = env.vault(&["stats", "--mode", "files-by-contents"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Stats in files-by-contents mode:"), "{text}");
    assert!(text.contains("Total File Count:  4"), "{text}");
    let out = env.vault(&["stats", "--mode", "blobs-per-file"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Total Blob Count:  3"), "{text}");
    assert!(text.contains("Total File Count:  2"), "{text}");
}
