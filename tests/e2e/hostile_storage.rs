//! Storage that someone else can write (a share from untrusted storage:
//! the provider of the threat model, repo-format.md §12): symlinks inside
//! the repository, names that are not the repository's, objects far larger
//! than their kind may be. vault, run as root, must not follow the
//! symlinks (deleting or writing where they point), must not delete what
//! is not its own, and must not read an oversized object whole. And a
//! repository URL whose query would have become part of the prefix.

use crate::support::{Backend, Env, assert_code, assert_success, stderr};
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

/// `vault ARGS` limited to 4 GiB of address space: enough to run, not
/// enough to read a 6 GiB object whole.
fn limited(env: &Env, args: &[&str]) -> std::process::Output {
    let mut cmd = env.command(&[]);
    cmd.env("VAULT_REPOSITORY", &env.repo);
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_vault"))
        .args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.stdin(std::process::Stdio::null()).output().unwrap()
}

/// Makes `key` a sparse file of 6 GiB: nothing on disk, everything to a
/// reader that believes its size.
fn sparse(env: &Env, key: &str) {
    let path = Path::new(&env.repo).join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(6 << 30).unwrap();
}

/// Objects larger than their kind may be are refused from their size,
/// unread: they were read whole (GBs of memory, or an abort under a
/// memory limit).
#[test]
fn oversized_objects_are_refused_unread() {
    let env = Env::new();
    assert_success(&env.vault_stdin(&["backup", "--stdin", "--stdin-filename", "a"], b"data"));
    // A key file beside the real one: skipped as malformed.
    sparse(&env, &format!("keys/{}", "0".repeat(64)));
    let out = limited(&env, &["snapshots"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("skipping malformed key file"),
        "{}",
        stderr(&out)
    );
    // A lock: unreadable, so removed by unlock.
    sparse(&env, "locks/exclusive");
    let out = limited(&env, &["unlock"]);
    assert_success(&out);
    assert!(!Path::new(&env.repo).join("locks/exclusive").exists());
    // An index file: damage.
    let index = format!("index/{}", "1".repeat(64));
    sparse(&env, &index);
    let out = limited(&env, &["ls", "latest"]);
    assert_code(&out, 5);
    assert!(stderr(&out).contains(&index), "{}", stderr(&out));
    std::fs::remove_file(Path::new(&env.repo).join(&index)).unwrap();
    // The config: damage.
    sparse(&env, "config");
    let out = limited(&env, &["snapshots"]);
    assert_code(&out, 5);
    assert!(stderr(&out).contains("config"), "{}", stderr(&out));
    assert!(stderr(&out).contains("more than"), "{}", stderr(&out));
}

// On either store: a local object's size comes from its metadata, an S3
// object's from the announced Content-Length, both before the body is read.
backend_test!(objects_over_their_kinds_limit_are_damage_on_either_store);
fn objects_over_their_kinds_limit_are_damage_on_either_store(backend: Backend) {
    let env = Env::on(backend);
    assert_success(&env.vault_stdin(&["backup", "--stdin", "--stdin-filename", "a"], b"data"));
    // A lock of 64 KiB + 1: unreadable, so held, until unlock removes it.
    env.write_object("locks/exclusive", &vec![0; 64 * 1024 + 1]);
    let out = env.vault(&["forget", "--keep-last", "1"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_success(&env.vault(&["unlock"]));
    assert!(env.locks().is_empty());
    // A config of 64 KiB + 1: damage naming it, before anything else.
    let config = env.read_object("config");
    let mut big = config.clone();
    big.resize(64 * 1024 + 1, 0);
    env.write_object("config", &big);
    let out = env.vault(&["snapshots"]);
    assert_code(&out, 5);
    assert!(stderr(&out).contains("config"), "{}", stderr(&out));
    assert!(stderr(&out).contains("65537 bytes"), "{}", stderr(&out));
    env.write_object("config", &config);
    assert_success(&env.vault(&["snapshots"]));
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
