//! Bad input gets a clear error, a distinct exit code, and nothing lost:
//! wrong password, missing repository, unreadable files, failing dump
//! commands, and tampered storage; each on local disk and on S3.

use crate::support::{Backend, Env, assert_code, assert_success, is_root, key_name, stderr};
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
    assert!(stderr(&out).contains("vault init"), "{}", stderr(&out));
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
    assert_code(&out, 1);
    assert!(stderr(&out).contains("no snapshot"), "{}", stderr(&out));
    assert!(env.snapshots().is_empty());
    let out = env.vault(&[
        "backup",
        "--stdin-from-command",
        "--",
        "/nonexistent/pg_dump",
    ]);
    assert_code(&out, 1);
    assert!(env.snapshots().is_empty());
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
        assert_code(&out, 1);
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
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("config is damaged"),
        "{}",
        stderr(&out)
    );
    env.write_object("config", &original);
    assert_success(&env.vault(&["snapshots"]));
}
