//! Restores onto a target where a symlink holds the place of a directory
//! the snapshot has, as `/lib -> usr/lib` on a usr-merged system: a backup
//! of `/lib/foo` records `/lib` as a directory, stat'ed through the link.
//! A trusted link (root's, in a directory only root may write) that leads
//! to a directory inside the target is kept and restored through; any
//! other is replaced under the `--overwrite` rules, as before, and the
//! message says why it was not kept.
//!
//! Fixtures are made in each test: a source whose `lib` is a symlink to
//! `real`, backed up as `SRC/lib/NAME`, and a target laid out like a
//! usr-merged system at the place the snapshot re-roots `SRC` to. Root
//! only (links and directories owned by nobody; the trust rule is about
//! owners).

use crate::support::{Env, assert_code, assert_success, is_root, random_hex, stderr};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

const NOBODY: u32 = 65534;

/// A backup of `src/lib/NAME` where `src/lib -> real`: `NAME/file` and
/// `NAME/sub/inner`, `real` (the snapshot's `lib`) mode 0700. Returns
/// where `src` lands in `target`, made as root's 0755 directory.
fn backup_through_link(env: &Env, name: &str, target: &Path) -> PathBuf {
    let src = env.path("src");
    let real = src.join("real");
    std::fs::create_dir_all(real.join(name).join("sub")).unwrap();
    std::fs::write(real.join(name).join("file"), b"restored").unwrap();
    std::fs::write(real.join(name).join("sub/inner"), b"inner").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    symlink("real", src.join("lib")).unwrap();
    let backed_up = src.join("lib").join(name);
    assert_success(&env.vault(&["backup", backed_up.to_str().unwrap()]));
    let at = target.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&at).unwrap();
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
    at
}

/// `at/usr/lib` (0755) holding `old`, and `at/lib -> text`.
fn usr_merged(at: &Path, text: &str) {
    std::fs::create_dir_all(at.join("usr/lib")).unwrap();
    std::fs::set_permissions(at.join("usr/lib"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(at.join("usr/lib/old"), b"not the snapshot's").unwrap();
    symlink(text, at.join("lib")).unwrap();
}

fn restore(env: &Env, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.vault(&args)
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).unwrap().is_symlink()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// `lib -> usr/lib`, root's: kept with every overwrite policy (and
/// without one), `usr/lib/NAME` restored, the snapshot's 0700 for `lib`
/// not applied to `usr/lib`, nothing else there touched; again with
/// if-changed nothing replaced; `--delete` judges nothing through the link
/// and says so; a dry run and `--verify` agree.
#[test]
fn root_restore_keeps_a_trusted_directory_symlink_and_restores_through_it() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (the trust rule is about owners)");
        return;
    }
    let env = Env::new();
    let target = env.path("target");
    let at = backup_through_link(&env, "foo", &target);
    usr_merged(&at, "usr/lib");
    let (lib, restored) = (at.join("lib"), at.join("usr/lib/foo"));

    let out = restore(&env, &target, &["--dry-run", "--overwrite", "always"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains(&format!(
            "would keep directory symlink {} -> usr/lib",
            lib.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!restored.exists(), "a dry run changed nothing");

    for extra in [
        &[][..],
        &["--overwrite", "always"],
        &["--overwrite", "if-changed", "--verify"],
    ] {
        let out = restore(&env, &target, extra);
        assert_success(&out);
        assert!(
            stderr(&out).contains(&format!(
                "kept directory symlink {} -> usr/lib",
                lib.display()
            )),
            "{extra:?}: {}",
            stderr(&out)
        );
        assert!(is_symlink(&lib), "{extra:?}: the link replaced");
        assert_eq!(std::fs::read(restored.join("file")).unwrap(), b"restored");
        assert_eq!(std::fs::read(restored.join("sub/inner")).unwrap(), b"inner");
        assert_eq!(
            std::fs::read(at.join("usr/lib/old")).unwrap(),
            b"not the snapshot's"
        );
        assert_eq!(
            mode(&at.join("usr/lib")),
            0o755,
            "the snapshot's lib mode applied through the link"
        );
    }

    // Again: nothing replaced, nothing written.
    let inode = std::fs::metadata(restored.join("file")).unwrap().ino();
    let out = restore(&env, &target, &["--overwrite", "if-changed"]);
    assert_success(&out);
    assert!(is_symlink(&lib));
    assert_eq!(
        std::fs::metadata(restored.join("file")).unwrap().ino(),
        inode
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already correct"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // --delete: an extra entry in the restored directory, reached through
    // the link, is not judged.
    std::fs::write(restored.join("extra"), b"below the link").unwrap();
    for dry in [true, false] {
        let mut args = vec!["--overwrite", "if-changed", "--delete"];
        if dry {
            args.push("--dry-run");
        }
        let out = restore(&env, &target, &args);
        assert_success(&out);
        assert!(
            stderr(&out).contains(&format!(
                "warning: --delete judged nothing at or below {}: a symlink kept as a directory is or leads there",
                lib.display()
            )),
            "dry run {dry}: {}",
            stderr(&out)
        );
        assert!(restored.join("extra").exists(), "deleted through the link");
        assert!(at.join("usr/lib/old").exists());
        assert!(is_symlink(&lib));
    }
}

/// `lib -> /usr/lib` in a target that is not /: resolved from the target
/// (`TARGET/usr/lib`), as when the system is booted, never the host's.
#[test]
fn root_restore_resolves_an_absolute_symlink_inside_the_target() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (the trust rule is about owners)");
        return;
    }
    let env = Env::new();
    let target = env.path("target");
    // A name no host has in /usr/lib.
    let name = format!("vault-dirlink-{}", random_hex());
    let at = backup_through_link(&env, &name, &target);
    std::fs::create_dir_all(target.join("usr/lib")).unwrap();
    symlink("/usr/lib", at.join("lib")).unwrap();

    let out = restore(&env, &target, &["--overwrite", "always"]);
    assert_success(&out);
    assert!(is_symlink(&at.join("lib")), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(target.join("usr/lib").join(&name).join("file")).unwrap(),
        b"restored"
    );
    assert!(
        !Path::new("/usr/lib").join(&name).exists(),
        "the host's /usr/lib written"
    );
}

/// A link nobody owns, or one in a directory nobody may write: not kept.
/// Without --overwrite the restore refuses, saying why; with it the link
/// is replaced by the directory, nothing is written where it pointed, and
/// a warning says why.
#[test]
fn root_restore_replaces_an_untrusted_directory_symlink_and_says_why() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (a link nobody owns)");
        return;
    }
    for nobodys_link in [true, false] {
        let env = Env::new();
        let target = env.path("target");
        let at = backup_through_link(&env, "foo", &target);
        usr_merged(&at, "usr/lib");
        let lib = at.join("lib");
        let why = if nobodys_link {
            std::os::unix::fs::lchown(&lib, Some(NOBODY), Some(NOBODY)).unwrap();
            "owned by uid 65534"
        } else {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o777)).unwrap();
            "in a directory writable by group or others"
        };

        let out = restore(&env, &target, &["--allow-unsafe-target"]);
        assert_code(&out, 1);
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert!(is_symlink(&lib));

        let out = restore(
            &env,
            &target,
            &["--allow-unsafe-target", "--overwrite", "always"],
        );
        assert_success(&out);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "replaced the symlink {} with a directory",
                lib.display()
            )) && err.contains(why),
            "{why}: {err}"
        );
        assert!(std::fs::symlink_metadata(&lib).unwrap().is_dir());
        assert_eq!(std::fs::read(lib.join("foo/file")).unwrap(), b"restored");
        assert!(
            !at.join("usr/lib/foo").exists(),
            "{why}: written through the link"
        );
    }
}

/// A trusted link whose text goes through an untrusted one, or climbs
/// with `..` above the target towards a directory outside it: neither is
/// followed out of the target; the link is replaced, and the message says
/// why.
#[test]
fn root_restore_follows_no_untrusted_link_and_no_dotdot_out_of_the_target() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (a link nobody owns)");
        return;
    }
    let env = Env::new();
    let target = env.path("target");
    let at = backup_through_link(&env, "foo", &target);
    std::fs::create_dir_all(at.join("usr/lib")).unwrap();
    symlink("hop/lib", at.join("lib")).unwrap();
    let hop = at.join("hop");
    symlink("usr", &hop).unwrap();
    std::os::unix::fs::lchown(&hop, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = restore(&env, &target, &["--overwrite", "always"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("symlink {} is owned by uid 65534", hop.display())),
        "{err}"
    );
    assert!(!is_symlink(&at.join("lib")));
    assert!(
        !at.join("usr/lib/foo").exists(),
        "written through the untrusted link"
    );

    // `..` enough to climb from `at` to / and back down to a directory
    // outside the target: from the target's root it leads to nothing.
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let up = "../".repeat(at.components().count() + 2);
    let text = format!("{up}{}", outside.strip_prefix("/").unwrap().display());
    std::fs::remove_dir_all(at.join("lib")).unwrap();
    symlink(&text, at.join("lib")).unwrap();
    let out = restore(&env, &target, &["--overwrite", "always"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("leads to no directory inside the target"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "written outside"
    );
    assert!(!is_symlink(&at.join("lib")));
}

/// A trusted link to a directory that holds it (`lib -> .`) is not kept:
/// the snapshot's directory would land in its own ancestor, whose entries
/// `--delete` would then judge against it. It is replaced, as an untrusted
/// one is, and the ancestor's entries stay.
#[test]
fn root_restore_keeps_no_link_to_a_directory_holding_it() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (the trust rule is about owners)");
        return;
    }
    let env = Env::new();
    let target = env.path("target");
    let at = backup_through_link(&env, "foo", &target);
    std::fs::write(at.join("beside"), b"the ancestor's").unwrap();
    symlink(".", at.join("lib")).unwrap();
    let out = restore(&env, &target, &["--overwrite", "if-changed", "--delete"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(err.contains("a directory that holds it"), "{err}");
    assert!(!is_symlink(&at.join("lib")));
    assert_eq!(std::fs::read(at.join("lib/foo/file")).unwrap(), b"restored");
    assert!(!at.join("foo").exists(), "restored into the ancestor");
    assert_eq!(std::fs::read(at.join("beside")).unwrap(), b"the ancestor's");
}

/// A trusted link is not kept where the snapshot has entries of its own
/// at or below where it leads (a snapshot of a system from before the
/// usr merge, restored onto a merged one): `lib/foo` and `usr/lib/foo`
/// would land on one file (one lost, a restore that never settles),
/// `usr/lib` as a file would replace where the link leads, and `--delete`
/// would remove what was restored through the link. The link is replaced
/// (with `--overwrite`), the message says why, and every file of the
/// snapshot is there afterwards.
#[test]
fn root_restore_keeps_no_link_leading_where_the_snapshot_has_entries() {
    if !is_root() {
        eprintln!("NOTICE: skipping: needs root (the trust rule is about owners)");
        return;
    }
    for usr_lib_is_a_file in [false, true] {
        let env = Env::new();
        let src = env.path("src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::create_dir_all(src.join("usr")).unwrap();
        std::fs::write(src.join("lib/foo"), b"lib's").unwrap();
        if usr_lib_is_a_file {
            std::fs::write(src.join("usr/lib"), b"a file").unwrap();
        } else {
            std::fs::create_dir(src.join("usr/lib")).unwrap();
            std::fs::write(src.join("usr/lib/foo"), b"usr/lib's").unwrap();
            std::fs::write(src.join("usr/lib/other"), b"other").unwrap();
        }
        assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
        let target = env.path("target");
        std::fs::create_dir_all(target.join("usr/lib")).unwrap();
        symlink("usr/lib", target.join("lib")).unwrap();
        let spec = format!("latest:{}", src.display());
        let t = target.to_str().unwrap();
        let run = |extra: &[&str]| {
            let mut args = vec!["restore", &spec, "--target", t, "--overwrite", "always"];
            args.extend_from_slice(extra);
            env.vault(&args)
        };
        let dry = run(&["--delete", "--dry-run"]);
        assert_success(&dry);
        let out = run(&["--delete"]);
        assert_success(&out);
        let err = stderr(&out);
        assert!(err.contains("where the snapshot has"), "{err}");
        assert!(!is_symlink(&target.join("lib")), "{err}");
        assert_eq!(std::fs::read(target.join("lib/foo")).unwrap(), b"lib's");
        if usr_lib_is_a_file {
            assert_eq!(std::fs::read(target.join("usr/lib")).unwrap(), b"a file");
        } else {
            assert_eq!(
                std::fs::read(target.join("usr/lib/foo")).unwrap(),
                b"usr/lib's"
            );
            assert_eq!(
                std::fs::read(target.join("usr/lib/other")).unwrap(),
                b"other"
            );
        }
        // Settled: a dry run of if-changed finds nothing to do.
        let again = env.json(&[
            "restore",
            &spec,
            "--target",
            t,
            "--overwrite",
            "if-changed",
            "--dry-run",
        ]);
        assert!(again.get("changed_entries").is_none(), "{again}");
    }
}
