//! Storage that someone else can write (a share from untrusted storage:
//! the provider of the threat model, repo-format.md §12): symlinks inside
//! the repository, names that are not the repository's, objects far larger
//! than their kind may be. vault, run as root, must not follow the
//! symlinks (deleting or writing where they point), must not delete what
//! is not its own, and must not read an oversized object whole. And a
//! repository URL whose query would have become part of the prefix.

use crate::support::{Env, assert_code, assert_success, stderr};
use std::os::unix::fs::symlink;
use std::path::Path;

/// Every file below `dir`, with its contents.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    crate::support::walk_files(dir, &mut |p| {
        let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        out.push((rel, std::fs::read(p).unwrap()));
    });
    out.sort();
    out
}

/// A directory of someone else's files, some with the names vault gives
/// lock objects.
fn victim(env: &Env) -> std::path::PathBuf {
    let victim = env.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    for name in ["shadow", "exclusive", "0123456789abcdef0123456789abcdef"] {
        std::fs::write(victim.join(name), format!("precious {name}")).unwrap();
    }
    victim
}

/// `locks` replaced by a symlink to another directory: unlock deleted
/// every file there ("removed lock locks/shadow (unreadable)"), exit 0, and
/// forget wrote its lock there.
#[test]
fn a_symlinked_locks_directory_is_not_followed() {
    let env = Env::new();
    let victim = victim(&env);
    let before = contents(&victim);
    let locks = Path::new(&env.repo).join("locks");
    let _ = std::fs::remove_dir_all(&locks);
    symlink(&victim, &locks).unwrap();
    for args in [&["unlock"][..], &["unlock", "--remove-all"]] {
        let out = env.vault(args);
        assert_success(&out);
        assert!(!stderr(&out).contains("removed"), "{}", stderr(&out));
        assert_eq!(contents(&victim), before, "{args:?}: {}", stderr(&out));
    }
    let out = env.vault(&["forget", "--keep-last", "1"]);
    assert!(!out.status.success(), "forget took a lock through the link");
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    assert_eq!(contents(&victim), before);
}

/// `data` replaced by a symlink to a copy of it elsewhere: the backup
/// wrote its packs there, as root.
#[test]
fn a_symlinked_data_directory_is_not_written_through() {
    let env = Env::new();
    assert_success(&env.vault_stdin(&["backup", "--stdin", "--stdin-filename", "a"], b"first"));
    let data = Path::new(&env.repo).join("data");
    let elsewhere = env.path("elsewhere");
    std::fs::rename(&data, &elsewhere).unwrap();
    symlink(&elsewhere, &data).unwrap();
    let before = contents(&elsewhere);
    let out = env.vault_stdin(
        &["backup", "--stdin", "--stdin-filename", "b"],
        b"second, other content",
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    assert_eq!(contents(&elsewhere), before);
    // A symlinked pack shard or object is not read either: check names it
    // as missing rather than verifying someone else's file.
    std::fs::remove_file(&data).unwrap();
    std::fs::rename(&elsewhere, &data).unwrap();
    assert_success(&env.vault(&["check", "--read-data"]));
    let shard = std::fs::read_dir(&data)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let moved = env.path("shard");
    std::fs::rename(&shard, &moved).unwrap();
    symlink(&moved, &shard).unwrap();
    let out = env.vault(&["check", "--read-data"]);
    assert!(!out.status.success(), "{}", stderr(&out));
}

/// Only lock objects are removed by unlock: `locks/exclusive` and 32 hex
/// digits (repo-format.md §2). Anything else there is not vault's.
#[test]
fn unlock_removes_lock_objects_only() {
    let env = Env::new();
    let locks = Path::new(&env.repo).join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(locks.join("notes"), b"not a lock").unwrap();
    let garbage = "fedcba9876543210fedcba9876543210";
    std::fs::write(locks.join(garbage), b"unreadable lock").unwrap();
    let out = env.vault(&["unlock"]);
    assert_success(&out);
    assert!(locks.join("notes").exists(), "{}", stderr(&out));
    assert!(!locks.join(garbage).exists(), "{}", stderr(&out));
    let out = env.vault(&["unlock", "--remove-all"]);
    assert_success(&out);
    assert!(locks.join("notes").exists(), "{}", stderr(&out));
}

/// A query or fragment in an S3 URL became part of the prefix (a
/// directory `p?token=X` in the bucket), and was echoed in messages.
#[test]
fn s3_urls_with_a_query_or_fragment_are_refused_without_echoing_it() {
    let env = Env::uninitialised();
    for url in [
        "s3:http://127.0.0.1:9/bucket/p?token=SeCrEt",
        "s3:http://127.0.0.1:9/bucket/p#SeCrEt",
        "s3://bucket/p?X-Amz-Security-Token=SeCrEt",
    ] {
        let out = env
            .command(&["snapshots"])
            .env("VAULT_REPOSITORY", url)
            .output()
            .unwrap();
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("invalid S3 URL"), "{url}: {err}");
        assert!(
            err.contains("query") || err.contains("fragment"),
            "{url}: {err}"
        );
        assert!(!err.contains("SeCrEt"), "{url}: {err}");
    }
}
