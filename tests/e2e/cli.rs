//! The command line itself: shell completion scripts, listings.

use crate::support::{Env, assert_success};

#[test]
fn completion_scripts_cover_every_command_and_load_in_bash() {
    let env = Env::uninitialised();
    let out = env.vault(&["completion", "bash"]);
    assert_success(&out);
    let script = String::from_utf8(out.stdout).unwrap();
    for command in [
        "backup",
        "restore",
        "find",
        "tag",
        "rewrite",
        "extend-retention",
    ] {
        assert!(script.contains(command), "no {command} in the bash script");
    }
    // bash accepts it and registers the completion function.
    let path = env.path("vault.bash");
    std::fs::write(&path, &script).unwrap();
    let loaded = std::process::Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p vault", path.display()),
        ])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("_vault"));
    for shell in ["zsh", "fish"] {
        let out = env.vault(&["completion", shell]);
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("rewrite"),
            "{shell}"
        );
    }
    assert!(!env.vault(&["completion", "tcsh"]).status.success());
}

#[test]
fn snapshots_group_by_lists_each_group_under_its_key() {
    let env = Env::new();
    for (dir, tag) in [("etc", "a"), ("srv", "a"), ("etc", "b")] {
        let path = env.path(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("f"), tag).unwrap();
        let out = env.vault(&["backup", path.to_str().unwrap(), "--tag", tag]);
        assert_success(&out);
    }
    let grouped = env.json(&["snapshots", "--group-by", "paths"]);
    let groups = grouped.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{grouped}");
    let sizes: Vec<usize> = groups
        .iter()
        .map(|g| g["snapshots"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [2, 1]);
    let etc = env.path("etc").to_str().unwrap().to_owned();
    assert_eq!(groups[0]["group_key"]["paths"][0], etc.as_str());
    assert!(groups[0]["group_key"].get("hostname").is_none());
    let by_tags = env.json(&["snapshots", "--group-by", "tags,paths"]);
    assert_eq!(by_tags.as_array().unwrap().len(), 3);
    let text = env.vault(&["snapshots", "-g", "paths"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("snapshots for (path [{etc}]):")),
        "{text}"
    );
    assert!(text.contains("3 snapshots"));
    // Without grouping: one flat list, as before.
    assert_eq!(env.snapshots().len(), 3);
    let bad = env.vault(&["snapshots", "--group-by", "colour"]);
    assert!(!bad.status.success());
}

#[test]
fn ls_takes_the_root_and_directories_with_a_trailing_slash() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/f"), b"x").unwrap();
    std::fs::write(src.join("top"), b"y").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let listing = |args: &[&str]| {
        let out = env.vault(args);
        assert_success(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let root = listing(&["ls", "latest"]);
    assert!(!root.is_empty());
    for dir in ["/", "//"] {
        assert_eq!(listing(&["ls", "latest", dir]), root, "ls latest {dir}");
    }
    assert_eq!(
        listing(&["ls", "latest", "/", "--recursive"]),
        listing(&["ls", "latest", "--recursive"])
    );
    // A directory with and without its trailing slash, by snapshot id too.
    let id = env.snapshots()[0]["short_id"].as_str().unwrap().to_owned();
    let sub = src.join("sub");
    let sub = sub.to_str().unwrap();
    let plain = listing(&["ls", &id, sub]);
    assert!(plain.lines().any(|l| l.ends_with("/sub/f")), "{plain}");
    assert_eq!(listing(&["ls", &id, &format!("{sub}/")]), plain);
    assert_eq!(listing(&["ls", "latest", &format!("{sub}/")]), plain);
}

#[test]
fn a_password_file_others_can_read_is_warned_about_once() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let file = env.password_file.to_str().unwrap().to_owned();
    let chmod = |mode| {
        std::fs::set_permissions(&env.password_file, std::fs::Permissions::from_mode(mode))
            .unwrap();
    };
    for (mode, who) in [(0o644, "every user"), (0o640, "its group")] {
        chmod(mode);
        let out = env.vault(&["snapshots"]);
        assert_success(&out);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.matches("warning").count(), 1, "{err}");
        assert!(
            err.contains(&format!("password file {file} is readable by {who}"))
                && err.contains(&format!("chmod 600 {file}")),
            "{err}"
        );
    }
    chmod(0o600);
    let out = env.vault(&["snapshots"]);
    assert_success(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    // Standard input is no file to protect.
    let password = std::fs::read(&env.password_file).unwrap();
    let out = env
        .command(&["snapshots"])
        .env("VAULT_PASSWORD_FILE", "/dev/stdin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&password)?;
            child.wait_with_output()
        })
        .unwrap();
    assert_success(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

/// restic's order: a password file or command given for this command
/// beats an exported `VAULT_PASSWORD` (one exported password, a file for
/// the other repository), and a file and a command at once are refused.
#[test]
fn a_password_file_beats_an_exported_password_and_not_both_file_and_command() {
    let env = Env::new();
    let out = env
        .command(&["snapshots"])
        .env("VAULT_PASSWORD", "not this one")
        .output()
        .unwrap();
    assert_success(&out);
    // With no file or command, the exported password is used (and here is
    // wrong: exit 12).
    let out = env
        .command(&["snapshots"])
        .env_remove("VAULT_PASSWORD_FILE")
        .env("VAULT_PASSWORD", "not this one")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{out:?}");
    // A usage error (exit 2), the exported file counting as given.
    let out = env
        .command(&["snapshots", "--password-command", "echo x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{out:?}"
    );
}

/// A password command that prints nothing (a secret store still locked, a
/// variable unset under cron) is said to be that, exit 1 as for one that
/// fails, not "wrong password" (12), which only a password tried earns.
#[test]
fn a_password_command_printing_nothing_is_not_a_wrong_password() {
    let env = Env::new();
    let run = |command: &str| {
        env.command(&["snapshots"])
            .env_remove("VAULT_PASSWORD_FILE")
            .env("VAULT_PASSWORD_COMMAND", command)
            .output()
            .unwrap()
    };
    for (command, said) in [
        ("true", "the password command printed nothing"),
        (
            "echo",
            "the password command printed nothing on its first line",
        ),
        (
            "printf '\\n%s\\n' later",
            "printed nothing on its first line",
        ),
    ] {
        let out = run(command);
        assert_eq!(out.status.code(), Some(1), "{command}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{command}: {err}");
        assert!(!err.contains("wrong password"), "{command}: {err}");
    }
    // As for one that fails.
    let out = run("exit 3");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password command failed"),
        "{out:?}"
    );
    // A password it does print, and wrong, is a wrong password.
    assert_eq!(run("echo nope").status.code(), Some(12));
    let right = format!("cat '{}'", env.password_file.display());
    assert!(run(&right).status.success());
}

/// File names are bytes: one that is not UTF-8 can be given on the command
/// line wherever a path inside a snapshot is, and names exactly that file
/// (not another whose name reads the same in lossy UTF-8).
#[test]
fn a_file_name_that_is_not_utf8_can_be_dumped_listed_restored_and_found() {
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let name = OsStr::from_bytes(b"caf\xff.txt");
    // The same lossy UTF-8 name, `caf\u{FFFD}.txt`, from another byte.
    let twin = OsStr::from_bytes(b"caf\xfe.txt");
    std::fs::write(src.join(name), b"the 0xff file").unwrap();
    std::fs::write(src.join(twin), b"the 0xfe file").unwrap();
    std::fs::write(src.join("plain"), b"plain").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let path: OsString = src.join(name).into_os_string();
    let run = |args: &[&OsStr]| env.command(&[]).args(args).output().unwrap();

    let out = run(&["dump".as_ref(), "latest".as_ref(), &path]);
    assert_success(&out);
    assert_eq!(out.stdout, b"the 0xff file");

    let out = run(&["ls".as_ref(), "latest".as_ref(), &path]);
    assert_success(&out);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.ends_with("caf\u{FFFD}.txt\n"), "{listed}");

    // `restore latest` into `dir` with `flag PATTERN`; where the source
    // directory lands.
    let restore = |dir: &str, flag: &str, pattern: &OsStr| {
        let target = env.path(dir);
        let out = run(&[
            "restore".as_ref(),
            "latest".as_ref(),
            "--target".as_ref(),
            target.as_os_str(),
            flag.as_ref(),
            pattern,
        ]);
        assert_success(&out);
        target.join(src.strip_prefix("/").unwrap())
    };
    let restored = restore("restored", "--include", &path);
    assert_eq!(
        std::fs::read(restored.join(name)).unwrap(),
        b"the 0xff file"
    );
    assert!(!restored.join(twin).exists());
    assert!(!restored.join("plain").exists());

    // A name given literally to find and to exclude.
    let out = run(&["find".as_ref(), name, "--json".as_ref()]);
    assert_success(&out);
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found[0]["hits"], 1, "{found}");
    let restored = restore("excluded", "--exclude", name);
    assert!(!restored.join(name).exists());
    assert_eq!(
        std::fs::read(restored.join(twin)).unwrap(),
        b"the 0xfe file"
    );

    // A glob cannot be compiled from bytes that are not UTF-8: said so.
    let out = run(&["find".as_ref(), OsStr::from_bytes(b"*\xff*")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not UTF-8"),
        "{out:?}"
    );
}

/// An exported but empty variable (`export VAULT_PASSWORD_FILE=` in a
/// script template) is as if unset, as restic takes it: the password order
/// goes on to the next source instead of failing with a usage error. An
/// empty value given on the command line is still refused.
#[test]
fn empty_exported_variables_are_unset_and_empty_flags_are_refused() {
    use crate::support::PASSWORD;
    let env = Env::new();
    let out = env
        .command(&["snapshots"])
        .env("VAULT_PASSWORD_FILE", "")
        .env("VAULT_PASSWORD_COMMAND", "")
        .env("VAULT_CONFIG", "")
        .env("VAULT_CACHE_DIR", "")
        .env("VAULT_LIMIT_UPLOAD", "")
        .env("VAULT_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_success(&out);
    // An empty file variable beside a command: the command is used.
    let out = env
        .command(&["snapshots"])
        .env("VAULT_PASSWORD_FILE", "")
        .env("VAULT_PASSWORD_COMMAND", format!("echo '{PASSWORD}'"))
        .output()
        .unwrap();
    assert_success(&out);
    // An empty VAULT_PASSWORD is none either: here, no password at all.
    let out = env
        .command(&["snapshots"])
        .env("VAULT_PASSWORD_FILE", "")
        .env("VAULT_PASSWORD", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no password"),
        "{out:?}"
    );
    // An empty repository variable: the default repository, not "".
    let out = env
        .command(&["snapshots"])
        .env("VAULT_REPOSITORY", "")
        .env("XDG_DATA_HOME", env.path("data"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&env.path("data/vault/repo").display().to_string()),
        "{out:?}"
    );
    for flag in ["--password-file", "--password-command", "--repo"] {
        let out = env.vault(&["snapshots", flag, ""]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("a value is required"),
            "{flag}: {out:?}"
        );
    }
}

/// `vault version` (restic's spelling beside `--version`) needs no
/// repository and no password.
#[test]
fn version_needs_no_repository() {
    let env = Env::uninitialised();
    let out = env
        .command(&["version"])
        .env("VAULT_REPOSITORY", env.path("nowhere"))
        .env_remove("VAULT_PASSWORD_FILE")
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("vault {} on linux/", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let json = env.json(&["version"]);
    assert_eq!(json["repository_format"], 1);
}
