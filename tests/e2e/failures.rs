//! Bad input gets a clear error, a distinct exit code, and nothing lost:
//! wrong password, missing repository, unreadable files, failing dump
//! commands, and tampered storage; each on local disk and on S3.

use crate::support::{
    Backend, Env, assert_code, assert_success, is_root, key_name, pseudo_random, stderr,
};
use std::os::unix::fs::PermissionsExt;

backend_test!(wrong_password_exits_12_and_writes_nothing);
fn wrong_password_exits_12_and_writes_nothing(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let before = env.objects();
    std::fs::write(&env.password_file, "not the password\n").unwrap();
    let out = env.vault(&["backup", src.to_str().unwrap()]);
    assert_code(&out, 12);
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("not the password"));
    assert_eq!(env.objects(), before);
    assert_code(&env.vault(&["snapshots"]), 12);
}

backend_test!(missing_repository_exits_10);
fn missing_repository_exits_10(backend: Backend) {
    let env = Env::uninitialised_on(backend);
    let out = env.vault(&["snapshots"]);
    assert_code(&out, 10);
    // A wrong prefix typed during a recovery must not read as "create one".
    assert!(
        stderr(&out).contains("check the URL and its prefix")
            && stderr(&out).contains("`vault init` would create a new, empty repository"),
        "{}",
        stderr(&out)
    );
}

// Pointed at a restic or a borg repository (the migrating user's slip),
// vault says whose it is, exits 10, and writes nothing: it used to call
// restic's key files damaged (exit 5, "`vault key import`...") and borg's
// key files missing.
backend_test!(another_tools_repository_is_named_and_left_alone);
fn another_tools_repository_is_named_and_left_alone(backend: Backend) {
    type Objects<'a> = Vec<(&'a str, &'a [u8])>;
    // The objects each tool starts with, as `restic init` and `borg init`
    // write them (bodies shortened: vault must not need to read them).
    let restic_key = br#"{"created":"2026-11-25T02:29:03Z","username":"root","hostname":"vm","kdf":"scrypt","N":32768,"r":8,"p":4,"salt":"c3s2Wx1q","data":"xnjHxCRQ"}"#;
    let restic_key_name = format!("keys/{}", "ab".repeat(32));
    let tools: [(&str, Objects<'_>); 2] = [
        (
            "restic",
            vec![
                ("config", &[0x5a; 200][..]),
                (restic_key_name.as_str(), &restic_key[..]),
            ],
        ),
        (
            "borg",
            vec![
                (
                    "config",
                    b"[repository]\nversion = 1\nsegments_per_dir = 1000\n",
                ),
                ("README", b"This is a Borg Backup repository.\n"),
            ],
        ),
    ];
    for (tool, objects) in tools {
        let env = Env::uninitialised_on(backend);
        for (key, bytes) in &objects {
            env.write_object(key, bytes);
        }
        let before = env.objects();
        for args in [&["snapshots"][..], &["backup", "/etc/hostname"]] {
            let out = env.vault(args);
            assert_code(&out, 10);
            assert!(
                stderr(&out).contains(&format!("a {tool} repository, not a vault one")),
                "{}",
                stderr(&out)
            );
        }
        assert_eq!(env.objects(), before, "{tool}");
    }
}

/// A new machine restoring with only the repository URL and password has
/// no config: a source name given to `restore` answered "no snapshot
/// matches pgmain", as if the backups were gone, and with `--at` "give
/// either a snapshot id or --at". The errors now say that no source of
/// that name is configured, that no config file was read, and how to pick
/// by tag instead (which works).
#[test]
fn a_source_name_without_a_config_says_no_config_was_read() {
    if std::path::Path::new("/etc/vault/vault.toml").exists() {
        eprintln!("NOTICE: /etc/vault/vault.toml exists, skipping");
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    assert_success(&env.vault(&["backup", "--tag", "files", src.to_str().unwrap()]));
    let target = env.path("target");
    let target = target.to_str().unwrap();
    let no_config = |args: &[&str]| {
        let out = env
            .command(args)
            .env_remove("VAULT_CONFIG")
            .output()
            .unwrap();
        assert_code(&out, 1);
        stderr(&out)
    };
    let err = no_config(&["restore", "pgmain", "--target", target]);
    assert!(
        err.contains("no snapshot id starts with `pgmain`")
            && err.contains(
                "no source `pgmain` is configured (no config file was read: give --config"
            )
            && err.contains("`latest --tag pgmain`"),
        "{err}"
    );
    let err = no_config(&["restore", "files", "--at", "now", "--target", target]);
    assert!(
        err.contains("no source `files` is configured (no config file was read")
            && err.contains("`--tag files --at \"now\"`"),
        "{err}"
    );
    let err = no_config(&["restore", "pgmain", "--pitr", "--target", target]);
    assert!(
        err.contains("--pitr needs a configured postgres source: no source `pgmain` is configured (no config file was read"),
        "{err}"
    );
    let err = no_config(&["drill", "pgmain"]);
    assert!(err.contains("no config file was read"), "{err}");
    // With a config that lacks the source, the message names the file.
    let config = env.path("vault.toml");
    std::fs::write(&config, "").unwrap();
    let out = env
        .command(&["restore", "pgmain", "--target", target])
        .env("VAULT_CONFIG", &config)
        .output()
        .unwrap();
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains(&format!(
            "no source `pgmain` is configured in {}",
            config.display()
        )),
        "{}",
        stderr(&out)
    );
    // What the messages suggest works.
    for args in [
        &["restore", "latest", "--tag", "files", "--target", target][..],
        &[
            "restore",
            "--tag",
            "files",
            "--at",
            "now",
            "--target",
            target,
            "--overwrite",
        ],
    ] {
        assert_success(
            &env.command(args)
                .env_remove("VAULT_CONFIG")
                .output()
                .unwrap(),
        );
    }
    assert!(
        std::path::Path::new(target)
            .join(src.strip_prefix("/").unwrap())
            .join("f")
            .exists()
    );
}

/// A local repository path that is a file, or runs through one: opening
/// it finds no repository (10), creating one there says why.
#[test]
fn a_file_in_place_of_a_repository_is_no_repository() {
    let env = Env::uninitialised();
    let file = env.path("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    for repo in [file.clone(), file.join("sub")] {
        let out = env
            .command(&["snapshots"])
            .env("VAULT_REPOSITORY", &repo)
            .output()
            .unwrap();
        assert_code(&out, 10);
        let out = env.init_at(&repo, &[]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("not a directory") || stderr(&out).contains("Not a directory"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

/// Credentials put into a repository URL are refused, and the refusal
/// does not repeat them.
#[test]
fn credentials_in_a_repository_url_are_refused_without_repeating_them() {
    let env = Env::uninitialised();
    let out = env
        .command(&["snapshots"])
        .env(
            "VAULT_REPOSITORY",
            "s3:http://KEYID:S3CR3T-VALUE@127.0.0.1:9/bucket/p",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("credentials do not belong"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("S3CR3T-VALUE"), "{}", stderr(&out));
}

backend_test!(init_refuses_a_repository_that_lost_its_config);
/// A repository whose config was deleted is damaged, not empty: init
/// must not write a new config and key beside its data.
fn init_refuses_a_repository_that_lost_its_config(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    env.delete_object("config");
    let before = env.objects();
    let out = env.vault(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("holds no config but repository objects"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.objects(), before);
    // Other commands call it damaged (exit 5), not "no repository here,
    // run init" (exit 10).
    let out = env.vault(&["snapshots"]);
    assert_code(&out, 5);
    assert!(
        stderr(&out).contains("a damaged repository, not an empty location"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("vault init"), "{}", stderr(&out));
    // Its key files gone too: still damaged, by its snapshots.
    for key in env.objects_under("keys") {
        env.delete_object(&key);
    }
    let out = env.vault(&["snapshots"]);
    assert_code(&out, 5);
    assert!(stderr(&out).contains("snapshots/"), "{}", stderr(&out));
}

backend_test!(an_interrupted_init_is_finished_by_running_it_again);
/// init killed between its key file and its config leaves key files only:
/// running it again with the same password finishes it with that key;
/// another password is refused, naming the files. It used to be refused as
/// a damaged repository, and every command sent the user to a copy of
/// `config` that never existed.
fn an_interrupted_init_is_finished_by_running_it_again(backend: Backend) {
    let env = Env::on(backend);
    // What the stop leaves: the key file written, the config not.
    env.delete_object("config");
    let keys = env.objects_under("keys");
    assert_eq!(keys.len(), 1);
    let out = env.vault(&["snapshots"]);
    assert_code(&out, 10);
    assert!(
        stderr(&out).contains("interrupted `vault init`"),
        "{}",
        stderr(&out)
    );

    let other = env.path("other-password");
    std::fs::write(&other, "not the one\n").unwrap();
    crate::support::private(&other);
    let before = env.objects();
    let out = env
        .command(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"])
        .env("VAULT_PASSWORD_FILE", &other)
        .output()
        .unwrap();
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("None opens with this password"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&keys[0]), "{}", stderr(&out));
    assert_eq!(env.objects(), before);

    assert_success(&env.vault(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]));
    assert_eq!(
        env.objects_under("keys"),
        keys,
        "a second key file was written"
    );
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_success(&env.vault(&["check", "--verify"]));
}

backend_test!(init_refuses_an_existing_repository);
fn init_refuses_an_existing_repository(backend: Backend) {
    let env = Env::on(backend);
    let before = env.objects();
    let out = env.vault(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("already exists"));
    assert_eq!(env.objects(), before);
}

backend_test!(failing_dump_command_records_no_snapshot);
fn failing_dump_command_records_no_snapshot(backend: Backend) {
    let env = Env::on(backend);
    let out = env.vault(&[
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "seq 1 100000; echo 'pg_dump: error: connection failed' >&2; exit 1",
    ]);
    // 6: a backup source failed.
    assert_code(&out, 6);
    assert!(stderr(&out).contains("no snapshot"), "{}", stderr(&out));
    assert!(env.snapshots().is_empty());
    let out = env.vault(&[
        "backup",
        "--stdin-from-command",
        "--",
        "/nonexistent/pg_dump",
    ]);
    assert_code(&out, 6);
    assert!(env.snapshots().is_empty());
    // A command that succeeds without output is saved, with a warning: a
    // dump writing to a file instead of stdout looks like that.
    let out = env.vault(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "db.sql",
        "--",
        "true",
    ]);
    assert_success(&out);
    assert!(
        stderr(&out)
            .contains("wrote nothing to standard output; the snapshot holds an empty db.sql"),
        "{}",
        stderr(&out)
    );
}

backend_test!(unreadable_file_is_skipped_and_backup_exits_3);
fn unreadable_file_is_skipped_and_backup_exits_3(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok"), b"readable").unwrap();
    std::fs::write(src.join("secret"), b"unreadable").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = env.command(&["backup", src.to_str().unwrap()]);
    if is_root() {
        // Root reads everything: run vault as nobody over files nobody owns.
        use std::os::unix::process::CommandExt;
        for p in [env.dir.path().to_path_buf(), src.clone()] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&env.password_file, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        if env.is_local() {
            let status = std::process::Command::new("chown")
                .args(["-R", "65534:65534", &env.repo])
                .status()
                .unwrap();
            assert!(status.success());
        }
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_code(&out, 3);
    assert!(stderr(&out).contains("secret"), "{}", stderr(&out));
    let ls = env.vault(&["ls", "latest"]);
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(listing.contains("/ok"));
    assert!(!listing.contains("/secret"));
}

backend_test!(tampered_objects_fail_with_an_error_naming_them);
/// Flip one byte of each kind of stored object: the next read fails with an
/// integrity error naming the object and never returns wrong data.
fn tampered_objects_fail_with_an_error_naming_them(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::support::pseudo_random(200_000, 9)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let target = env.path("r");
    for prefix in ["data", "index", "snapshots"] {
        let victim = env.objects_under(prefix).remove(0);
        let original = env.read_object(&victim);
        let mut bytes = original.clone();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        env.write_object(&victim, &bytes);
        let _ = std::fs::remove_dir_all(&target);
        // Without the local cache, whose verified copies of index files and
        // snapshots would stand in for damaged ones in the store.
        let out = env.vault(&[
            "restore",
            "latest",
            "--no-cache",
            "--target",
            target.to_str().unwrap(),
        ]);
        // 5: the repository is damaged.
        assert_code(&out, 5);
        let err = stderr(&out);
        let name = key_name(&victim).to_owned();
        assert!(
            err.contains(&name[..8]) && err.contains("damaged"),
            "{prefix}: {err}"
        );
        // Nothing wrong was written: the file is absent or not yet filled.
        let restored = target.join(src.strip_prefix("/").unwrap()).join("f");
        if let Ok(got) = std::fs::read(&restored) {
            assert_ne!(got, bytes);
            assert!(
                got.iter().all(|&b| b == 0) || got == crate::support::pseudo_random(200_000, 9)
            );
        }
        env.write_object(&victim, &original);
    }
    // The config and key files: a flipped byte means the repository cannot
    // be opened, with a clear message.
    let original = env.read_object("config");
    let mut bytes = original.clone();
    bytes[30] ^= 0x01;
    env.write_object("config", &bytes);
    let out = env.vault(&["snapshots"]);
    assert_code(&out, 5);
    assert!(
        stderr(&out).contains("config is damaged"),
        "{}",
        stderr(&out)
    );
    env.write_object("config", &original);
    assert_success(&env.vault(&["snapshots"]));
}

backend_test!(a_missing_pack_exits_4_naming_it);
/// A pack deleted from the store: restore fails with 4 (an object is
/// missing) and names it.
fn a_missing_pack_exits_4_naming_it(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), pseudo_random(300_000, 4)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    // The file's pack, the largest (the other holds the trees, which on S3
    // the local cache would still serve).
    let sizes = env.sizes_under("data");
    let victim = sizes.keys().max_by_key(|k| sizes[*k]).unwrap().clone();
    std::fs::write(src.join("g"), b"in another pack").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    env.delete_object(&victim);
    let target = env.path("r");
    let out = env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_code(&out, 4);
    assert!(
        stderr(&out).contains(&key_name(&victim)[..8]),
        "{}",
        stderr(&out)
    );
    // What the missing pack did not hold is restored.
    let root = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(root.join("g")).unwrap(), b"in another pack");
    // The directory as a tar stream: 4 as well.
    let out = env.vault(&["dump", "latest", src.to_str().unwrap()]);
    assert_code(&out, 4);
}

backend_test!(a_restore_goes_on_past_damaged_data_and_names_the_files_it_hurt);
/// A damaged blob costs the file that needs it, not the restore: every
/// other file is restored intact, the hurt one is named (zeros where its
/// data is damaged), and the exit code is 5.
fn a_restore_goes_on_past_damaged_data_and_names_the_files_it_hurt(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(400_000, i)).unwrap();
    }
    assert_success(&env.vault(&["backup", "--compression", "none", src.to_str().unwrap()]));
    let sizes = env.sizes_under("data");
    let pack = sizes.keys().max_by_key(|k| sizes[*k]).unwrap().clone();
    // Inside the third of six 400 KB blobs (the header is at the end).
    let mut bytes = env.read_object(&pack);
    bytes[1_000_000] ^= 0x40;
    env.write_object(&pack, &bytes);
    let target = env.path("r");
    let out = env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_code(&out, 5);
    let err = stderr(&out);
    assert!(
        err.contains("1 files could not be restored intact"),
        "{err}"
    );
    let root = target.join(src.strip_prefix("/").unwrap());
    let mut hurt = Vec::new();
    for i in 0..6u64 {
        let name = format!("f{i}");
        if std::fs::read(root.join(&name)).unwrap() != pseudo_random(400_000, i) {
            hurt.push(name);
        }
    }
    assert_eq!(hurt.len(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: restored with zeros",
            root.join(&hurt[0]).display()
        )),
        "{err}"
    );

    // With --verify, the files known to be hurt are not read back again
    // (which failed the whole restore): the five others are verified.
    let verified = env.path("verified");
    let out = env.vault(&[
        "restore",
        "latest",
        "--verify",
        "--json",
        "--target",
        verified.to_str().unwrap(),
    ]);
    assert_code(&out, 5);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified_files"], 5, "{report}");
    assert_eq!(
        report["damaged_files"].as_array().unwrap().len(),
        1,
        "{report}"
    );

    // The directory as a tar stream: the same damage, the same code.
    let out = env.vault(&["dump", "latest", src.to_str().unwrap()]);
    assert_code(&out, 5);

    // A truncated pack is damage too (5), not the store failing (8).
    env.write_object(&pack, &bytes[..bytes.len() / 2]);
    let target = env.path("r2");
    let out = env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_code(&out, 5);
    assert!(stderr(&out).contains("shorter than"), "{}", stderr(&out));
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` (with a notice) where mounting needs a root the test lacks.
    fn mount(dir: std::path::PathBuf, size: &str) -> Option<Self> {
        std::fs::create_dir_all(&dir).unwrap();
        // Root's alone (a tmpfs is 1777 by default): root refuses to
        // restore into a directory every user may write.
        let mounted = is_root()
            && std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("NOTICE: skipped, mounting a {size} tmpfs needs root");
        }
        mounted.then_some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
/// The repository's disk fills up during a backup: exit 7, no snapshot,
/// and the repository stays sound (check passes, a smaller backup then
/// works). A restore target that fills up: exit 7 too.
fn a_full_disk_exits_7_and_loses_nothing() {
    let env = Env::new();
    let Some(disk) = SmallDisk::mount(env.path("small"), "4m") else {
        return;
    };
    let repo = disk.0.join("repo");
    let on_small = |args: &[&str]| {
        env.command(args)
            .env("VAULT_REPOSITORY", &repo)
            .output()
            .unwrap()
    };
    assert_success(&env.init_at(&repo, &[]));
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("big{i}")), pseudo_random(3_000_000, i)).unwrap();
    }
    let out = on_small(&["backup", "--compression", "none", src.to_str().unwrap()]);
    assert_code(&out, 7);
    assert!(stderr(&out).contains("no space"), "{}", stderr(&out));
    let listed = on_small(&["snapshots", "--json"]);
    assert_success(&listed);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    assert_success(&on_small(&["check"]));
    let small = env.path("small-src");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(small.join("note"), b"fits").unwrap();
    assert_success(&on_small(&["backup", small.to_str().unwrap()]));
    // Full to the last byte: maintenance cannot even take its lock, and
    // says how to get out.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let out = on_small(&["forget", "--keep-last", "1", "--prune"]);
    assert_code(&out, 7);
    assert!(
        stderr(&out).contains("free a little space"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&filler).unwrap();
    assert_success(&on_small(&["forget", "--keep-last", "1", "--prune"]));

    // Restoring 9 MB into 4 MB.
    assert_success(&env.vault(&["backup", "--compression", "none", src.to_str().unwrap()]));
    let Some(target) = SmallDisk::mount(env.path("target"), "4m") else {
        return;
    };
    let out = env.vault(&["restore", "latest", "--target", target.0.to_str().unwrap()]);
    assert_code(&out, 7);

    // Copying 9 MB into a repository on 4 MB: the full disk too, not
    // "write pipeline stopped" (exit 1).
    let Some(copy_disk) = SmallDisk::mount(env.path("copy"), "4m") else {
        return;
    };
    let to = copy_disk.0.join("repo");
    // Small packs: uploads fail while blobs are still being copied.
    assert_success(&env.init_at(&to, &["--pack-size-mib", "1"]));
    let out = env
        .command(&[
            "copy",
            "--to",
            to.to_str().unwrap(),
            "--compression",
            "none",
        ])
        .output()
        .unwrap();
    assert_code(&out, 7);
    assert!(stderr(&out).contains("no space"), "{}", stderr(&out));
}

/// A prune whose repacking fills the repository's disk: exit 7 naming the
/// full disk (it said "write pipeline stopped", exit 1), and the
/// repository stays sound.
#[test]
fn a_prune_repacking_onto_a_full_disk_exits_7() {
    let env = Env::new();
    let Some(disk) = SmallDisk::mount(env.path("small"), "24m") else {
        return;
    };
    let repo = disk.0.join("repo");
    let on_small = |args: &[&str]| {
        env.command(args)
            .env("VAULT_REPOSITORY", &repo)
            .output()
            .unwrap()
    };
    assert_success(&env.init_at(&repo, &["--pack-size-mib", "1"]));
    // Pairs of small files (one chunk each) stored side by side in the
    // same packs; the snapshot keeping one of each pair leaves those packs
    // partly used, to be repacked.
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..80u64 {
        for (name, seed) in [("keep", 2 * i), ("drop", 2 * i + 1)] {
            let data = pseudo_random(100_000, seed);
            std::fs::write(src.join(format!("f{i:03}-{name}")), data).unwrap();
        }
    }
    assert_success(&on_small(&[
        "backup",
        "--compression",
        "none",
        src.to_str().unwrap(),
    ]));
    for i in 0..80u64 {
        std::fs::remove_file(src.join(format!("f{i:03}-drop"))).unwrap();
    }
    assert_success(&on_small(&[
        "backup",
        "--compression",
        "none",
        src.to_str().unwrap(),
    ]));
    assert_success(&on_small(&["forget", "--keep-last", "1"]));
    // Leave under a pack's worth of room.
    let stat = nix::sys::statvfs::statvfs(&disk.0).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    std::fs::write(disk.0.join("filler"), vec![1u8; (free - 600_000) as usize]).unwrap();
    let out = on_small(&["prune", "--max-unused", "0"]);
    assert_code(&out, 7);
    assert!(stderr(&out).contains("no space"), "{}", stderr(&out));
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    assert_success(&on_small(&["check", "--verify"]));
}

#[test]
/// Output to a full disk (`/dev/full`): 7 and one clear line, whether the
/// command prints lines (cat, key list, snapshots, stats, diff, JSON), walks
/// a tree printing as it goes (ls, find) or streams through its own writer
/// (dump); never a panic.
fn output_to_a_full_disk_exits_7() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), pseudo_random(100_000, 3)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    std::fs::write(src.join("g"), b"second").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    std::fs::write(src.join("h"), b"third").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let first = env.snapshots()[0]["id"].as_str().unwrap().to_owned();
    let file = src.join("f");
    for args in [
        vec!["cat", "config"],
        vec!["key", "list"],
        vec!["dump", "latest", file.to_str().unwrap()],
        vec!["snapshots"],
        // More than stdout's line buffer holds, in one line.
        vec!["snapshots", "--json"],
        vec!["ls", "latest"],
        vec!["find", "f"],
        vec!["stats"],
        vec!["diff", &first, "latest"],
        vec!["check"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = env.command(&args).stdout(full).output().unwrap();
        assert_code(&out, 7);
        let err = stderr(&out);
        assert!(err.contains("No space left"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if args[0] != "dump" {
            assert!(
                err.contains("vault: error: writing output: No space left on device"),
                "{args:?}: {err}"
            );
        }
    }
    // The repository is untouched and unlocked.
    assert_eq!(env.snapshots().len(), 3);
    assert_success(&env.vault(&["check"]));
}

#[test]
/// Output to a pipe whose reader is gone (`vault snapshots | head -0`): the
/// command stops quietly with 0, as other Unix tools do; never a panic.
fn output_to_a_closed_pipe_ends_quietly() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), pseudo_random(100_000, 5)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    for args in [
        vec!["snapshots"],
        vec!["snapshots", "--json"],
        vec!["stats"],
        vec!["ls", "latest"],
        vec!["key", "list"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = env.command(&args).stdout(writer).output().unwrap();
        assert_success(&out);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("error"), "{args:?}: {err}");
    }
}

backend_test!(naming_a_damaged_snapshot_exits_5_and_changes_nothing);
/// `forget ID`, `tag ID`, `stats ID` with the id of a snapshot that exists
/// but cannot be read: 5 (the repository is damaged) naming it, like
/// `restore ID`, not "no snapshot matches" (1); and nothing is forgotten or
/// tagged, not even the readable snapshots named with it. An id that no
/// snapshot, damaged or not, has is still "no snapshot matches".
fn naming_a_damaged_snapshot_exits_5_and_changes_nothing(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"first").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    std::fs::write(src.join("f"), b"second").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let ids: Vec<String> = env
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    let (damaged, good) = (&ids[0], &ids[1]);
    let key = format!("snapshots/{damaged}");
    let len = env.read_object(&key).len();
    env.flip(&key, len / 2);
    let before = env.objects_under("snapshots");
    assert_eq!(before.len(), 2);

    // Without the local cache, whose verified copy would stand in for the
    // damaged snapshot in the store.
    for args in [
        vec!["forget", damaged.as_str()],
        vec!["forget", &damaged[..8]],
        vec!["forget", good.as_str(), &damaged[..8]],
        vec!["tag", "--add", "x", damaged.as_str()],
        vec!["tag", "--add", "x", good.as_str(), &damaged[..10]],
        vec!["stats", &damaged[..8]],
        vec!["ls", &damaged[..8]],
    ] {
        let mut all = vec!["--no-cache"];
        all.extend(&args);
        let out = env.vault(&all);
        assert_code(&out, 5);
        let err = stderr(&out);
        assert!(
            err.contains(&damaged[..8]) && err.contains("damaged"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert_eq!(env.objects_under("snapshots"), before);
    let readable = env.json(&["--no-cache", "snapshots"]);
    let readable = readable.as_array().unwrap();
    assert_eq!(readable.len(), 1);
    assert_eq!(readable[0]["id"].as_str().unwrap(), good);
    assert!(
        readable[0]["tags"]
            .as_array()
            .is_none_or(|tags| tags.iter().all(|t| t != "x")),
        "{readable:?}"
    );

    // An id neither snapshot has: no snapshot matches (1), damaged or not.
    let first = "0123456789abcdef"
        .chars()
        .find(|c| !ids.iter().any(|id| id.starts_with(*c)))
        .unwrap();
    let unknown = first.to_string().repeat(8);
    for args in [vec!["forget", &unknown], vec!["ls", &unknown]] {
        let mut all = vec!["--no-cache"];
        all.extend(&args);
        let out = env.vault(&all);
        assert_code(&out, 1);
        assert!(
            stderr(&out).contains("no snapshot matches"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(env.objects_under("snapshots"), before);

    // Prune refuses (5: its data would look unused) and names the way out,
    // which works: repair snapshots --forget removes the unreadable object
    // (a dry run only reports it), and prune goes ahead.
    let out = env.vault(&["--no-cache", "prune"]);
    assert_code(&out, 5);
    assert!(
        stderr(&out).contains("repair snapshots --forget"),
        "{}",
        stderr(&out)
    );
    let dry = env.json(&["--no-cache", "repair", "snapshots", "--forget", "--dry-run"]);
    assert_eq!(dry["unreadable"][0]["removed"], false, "{dry}");
    assert_eq!(env.objects_under("snapshots"), before);
    let done = env.json(&["--no-cache", "repair", "snapshots", "--forget"]);
    assert_eq!(
        done["unreadable"][0]["id"].as_str().unwrap(),
        damaged,
        "{done}"
    );
    assert_eq!(done["unreadable"][0]["removed"], true, "{done}");
    assert_eq!(env.objects_under("snapshots").len(), 1);
    assert_success(&env.vault(&["--no-cache", "prune"]));
    assert_success(&env.vault(&["--no-cache", "check"]));
}

backend_test!(backing_up_only_missing_paths_fails_with_6_and_saves_nothing);
/// An unmounted volume or a typo in a crontab: when not one path can be
/// read, the backup fails (6) instead of saving an empty snapshot that
/// `forget --keep-last` would count. One readable path is enough for a
/// snapshot, with 3 for the rest.
fn backing_up_only_missing_paths_fails_with_6_and_saves_nothing(backend: Backend) {
    let env = Env::on(backend);
    let missing = env.path("not-mounted");
    let also = env.path("typo");
    let out = env.vault(&["backup", missing.to_str().unwrap(), also.to_str().unwrap()]);
    assert_code(&out, 6);
    assert!(
        stderr(&out).contains("nothing to back up"),
        "{}",
        stderr(&out)
    );
    assert!(env.snapshots().is_empty());
    let present = env.path("present");
    std::fs::create_dir_all(&present).unwrap();
    std::fs::write(present.join("f"), b"data").unwrap();
    let out = env.vault(&[
        "backup",
        missing.to_str().unwrap(),
        present.to_str().unwrap(),
    ]);
    assert_code(&out, 3);
    assert_eq!(env.snapshots().len(), 1);
}

/// Starts `vault ARGS` with a password command that waits, signals it with
/// SIGINT while it waits (so the signal lands after vault installed its
/// handler, and before the command's work), and returns its output.
fn interrupted_while_opening(env: &Env, args: &[&str]) -> std::process::Output {
    let started = env.path("password-asked");
    let _ = std::fs::remove_file(&started);
    let command = format!(
        "touch {}; sleep 1; cat {}",
        started.display(),
        env.password_file.display()
    );
    let child = env
        .command(args)
        .env_remove("VAULT_PASSWORD_FILE")
        .env("VAULT_PASSWORD_COMMAND", command)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(started.exists(), "vault never asked for the password");
    crate::support::interrupt(child)
}

#[test]
fn key_add_interrupted_exits_130_and_adds_no_key() {
    let env = Env::new();
    let new_password = env.path("new-password");
    std::fs::write(&new_password, "another password\n").unwrap();
    crate::support::private(&new_password);
    let keys = env.objects_under("keys");
    let out = interrupted_while_opening(
        &env,
        &[
            "key",
            "add",
            "--new-password-file",
            new_password.to_str().unwrap(),
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
        ],
    );
    assert_code(&out, 130);
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(env.objects_under("keys"), keys, "a key was added");
    assert!(env.locks().is_empty());
    assert_success(&env.vault(&["check"]));
}

#[test]
fn repair_index_interrupted_exits_130_and_keeps_the_old_index() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), pseudo_random(100_000, 3)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let index = env.objects_under("index");
    let out = interrupted_while_opening(&env, &["repair", "index"]);
    assert_code(&out, 130);
    assert_eq!(env.objects_under("index"), index, "the index was rewritten");
    assert!(env.locks().is_empty(), "{:?}", env.locks());
    assert_success(&env.vault(&["check"]));
    // Not interrupted, it does its work.
    assert_success(&env.vault(&["repair", "index"]));
    assert_ne!(env.objects_under("index"), index);
}

/// forget, tag and rewrite stopped by a signal before their first change
/// change nothing (exit 130, saying so). They used to say "stopping
/// cleanly" and then remove, retag or rewrite every snapshot chosen.
#[test]
fn snapshot_changes_stop_at_a_signal() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret.key"), b"k").unwrap();
    for i in 0..3 {
        std::fs::write(src.join("a"), format!("{i}")).unwrap();
        assert_success(&env.vault(&["backup", src.to_str().unwrap(), "--tag", "nightly"]));
    }
    let before = env.objects_under("snapshots");
    let first = before[0].rsplit('/').next().unwrap().to_owned();
    for args in [
        &["forget", "--keep-last", "1"][..],
        &["forget", &first],
        &["tag", "--set", "oops"],
        &["rewrite", "--exclude", "*.key", "--forget"],
        &["rewrite", "--exclude", "*.key"],
    ] {
        let out = interrupted_while_opening(&env, args);
        assert_code(&out, 130);
        assert!(
            stderr(&out).contains("stopped after 0 snapshots"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(
            env.objects_under("snapshots"),
            before,
            "{args:?} changed snapshots"
        );
    }
    assert!(env.locks().is_empty(), "{:?}", env.locks());
}

/// `tag` and `rewrite --forget` store each replacement, then delete its
/// original. Stopped in between, both are left; running the command again
/// deletes the original and keeps that replacement. It used to store a
/// second copy of the replacement, which forget then counted twice.
#[test]
fn a_rerun_after_a_stop_between_store_and_delete_stores_no_second_copy() {
    for args in [
        &["tag", "--set", "oops"][..],
        &["rewrite", "--exclude", "*.key", "--forget"],
    ] {
        let env = Env::new();
        let src = env.path("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("secret.key"), b"k").unwrap();
        assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
        let original = env.objects_under("snapshots");
        // What the stop leaves: the same change made in a copy of the
        // repository gives the replacement, which joins the original.
        let copy = env.path("copy");
        let status = std::process::Command::new("cp")
            .args(["-a", &env.repo, copy.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = env
            .command(args)
            .env("VAULT_REPOSITORY", &copy)
            .output()
            .unwrap();
        assert_success(&out);
        let replacement: Vec<String> = std::fs::read_dir(copy.join("snapshots"))
            .unwrap()
            .map(|e| format!("snapshots/{}", e.unwrap().file_name().to_str().unwrap()))
            .collect();
        assert_eq!(replacement.len(), 1);
        // Everything the change stored (rewrite's new trees too), nothing
        // it deleted.
        let status = std::process::Command::new("cp")
            .args(["-a", "-n", &format!("{}/.", copy.display()), &env.repo])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(env.objects_under("snapshots").len(), 2);
        assert_success(&env.vault(args));
        assert_eq!(
            env.objects_under("snapshots"),
            replacement,
            "{args:?}, from {original:?}"
        );
        let check = env.vault(&["check"]);
        assert_success(&check);
        assert!(!stderr(&check).contains("twin"), "{}", stderr(&check));
    }
}

/// Every command: once the handler said "stopping cleanly", the exit code
/// is 130, also for a command that had nothing left to stop.
#[test]
fn a_command_that_ran_to_its_end_after_a_signal_exits_130() {
    let env = Env::new();
    for args in [&["snapshots"][..], &["key", "list"], &["unlock"]] {
        let out = interrupted_while_opening(&env, args);
        assert_code(&out, 130);
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    }
}

backend_test!(an_unreadable_lock_is_named_as_such_and_unlock_removes_it);
/// A lock object that cannot be read is never taken over as stale
/// (repo-format.md §11.2): the message said a lock not refreshed for 5
/// minutes is taken over, which never happens to this one. It says what it
/// is and that `vault unlock` removes it, which it does.
fn an_unreadable_lock_is_named_as_such_and_unlock_removes_it(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    if env.is_local() {
        std::fs::create_dir_all(std::path::Path::new(&env.repo).join("locks")).unwrap();
    }
    env.write_object("locks/exclusive", &pseudo_random(200, 3));
    let out = env.vault(&["forget", "--keep-last", "5"]);
    assert_code(&out, 11);
    let err = stderr(&out);
    assert!(
        err.contains("unreadable lock locks/exclusive")
            && err.contains("never taken over as stale")
            && err.contains("`vault unlock` removes it"),
        "{err}"
    );
    assert!(!err.contains("not refreshed"), "{err}");
    assert_success(&env.vault(&["unlock"]));
    assert!(env.locks().is_empty(), "{:?}", env.locks());
    assert_success(&env.vault(&["forget", "--keep-last", "5"]));
}
