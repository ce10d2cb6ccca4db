//! The command line as restic users type it: usage errors found before
//! anything runs (exit 2), restic's short flags, snapshot ids beside
//! filters, `--repository-file`, `--cacert`, `--limit-* 0`, and how a
//! relative time was read.

use crate::support::{Env, assert_code, assert_success, stderr};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository with two snapshots of `src` (with `src/d1/x` and
/// `src/d2/y`): the first tagged t1 of host `vm`, the second of host
/// `other`. Their ids, oldest first.
fn two_snapshots(env: &Env) -> (String, String) {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d1")).unwrap();
    std::fs::create_dir_all(src.join("d2")).unwrap();
    std::fs::write(src.join("d1/x"), b"x").unwrap();
    std::fs::write(src.join("d2/y"), b"y").unwrap();
    std::fs::write(src.join("top"), b"top").unwrap();
    let src = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", "--host", "vm", "--tag", "t1", src]));
    assert_success(&env.vault(&["backup", "--host", "other", src]));
    let snaps = env.snapshots();
    let id = |i: usize| snaps[i]["id"].as_str().unwrap().to_owned();
    (id(0), id(1))
}

/// Values clap could check but vault checked only at run time (exit 1):
/// now usage errors, exit 2, before the repository is opened.
#[test]
fn invalid_times_and_missing_or_conflicting_arguments_are_usage_errors() {
    let env = Env::new();
    let target = env.path("t");
    let target = target.to_str().unwrap();
    for args in [
        &["find", "x", "--oldest", "bogus"][..],
        &["find", "x", "--newest", "2026-13-01"],
        &["find", "x", "--oldest", "2026-13-01"],
        &["restore", "--at", "bogus", "-t", target],
        &["backup", "--time", "bogus", "/nonexistent"],
    ] {
        let out = env.vault(args);
        assert_code(&out, 2);
        assert!(
            stderr(&out).contains("cannot parse time"),
            "{args:?}: {out:?}"
        );
    }
    // A file and a command for the password: on the command line, or one
    // of them exported.
    let out = env
        .command(&[
            "snapshots",
            "--password-file",
            "f",
            "--password-command",
            "echo x",
        ])
        .env_remove("VAULT_PASSWORD_FILE")
        .output()
        .unwrap();
    assert_code(&out, 2);
    assert!(stderr(&out).contains("cannot be used with"), "{out:?}");
    let out = env.vault(&["snapshots", "--password-command", "echo x"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("--password-file is given by VAULT_PASSWORD_FILE"),
        "{out:?}"
    );
    // Exported empty, the file variable is unset: no conflict.
    let out = env
        .command(&["snapshots", "--password-command", "cat password"])
        .current_dir(env.dir.path())
        .env("VAULT_PASSWORD_FILE", "")
        .output()
        .unwrap();
    assert_success(&out);
    // Nothing to change.
    let out = env.vault(&["tag", "latest"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--add"), "{out:?}");
    // An object kind that needs an id, without one; config needs none.
    for kind in ["key", "snapshot", "index", "tree"] {
        let out = env.vault(&["cat", kind]);
        assert_code(&out, 2);
        assert!(stderr(&out).contains("<ID>"), "{kind}: {out:?}");
    }
    assert_success(&env.vault(&["cat", "config"]));
}

/// restic's `--limit-upload 0`: no limit, so that `${LIMIT:-0}` works; it
/// lifts the config's limit too.
#[test]
fn a_rate_limit_of_zero_is_no_limit() {
    let env = Env::new();
    let config = env.path("vault.toml");
    std::fs::write(
        &config,
        "[repository]\nlimit_upload = 1\nlimit_download = 1\n",
    )
    .unwrap();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::support::pseudo_random(300_000, 7)).unwrap();
    let out = env
        .command(&[
            "--limit-upload",
            "0",
            "--limit-download",
            "0",
            "backup",
            src.to_str().unwrap(),
        ])
        .env("VAULT_CONFIG", &config)
        .output()
        .unwrap();
    assert_success(&out);
    let out = env
        .command(&["snapshots"])
        .env("VAULT_LIMIT_UPLOAD", "0")
        .env("VAULT_LIMIT_DOWNLOAD", "0")
        .output()
        .unwrap();
    assert_success(&out);
}

/// Short flags restic has, where they mean the same in vault; and `-H` in
/// forget is restic's `--keep-hourly`, not the host.
#[test]
fn restic_short_flags_work() {
    let env = Env::new();
    let (first, second) = two_snapshots(&env);
    let out = env.vault(&["snapshots", "-H", "vm"]);
    assert_success(&out);
    let listed = stdout(&out);
    assert!(
        listed.contains(&first[..8]) && !listed.contains(&second[..8]),
        "{listed}"
    );
    // The compact table: no paths; each tag on its own line.
    let out = env.vault(&["snapshots", "-c"]);
    assert_success(&out);
    let listed = stdout(&out);
    assert!(listed.lines().next().unwrap().ends_with("Tags"), "{listed}");
    assert!(
        !listed.contains("Paths") && !listed.contains("/src"),
        "{listed}"
    );
    assert!(listed.contains("2 snapshots"), "{listed}");
    let out = env.vault(&["find", "-s", &second[..8], "y", "--json"]);
    assert_success(&out);
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1, "{out:?}");
    assert_eq!(found[0]["snapshot"], second.as_str(), "{out:?}");
    assert_eq!(found[0]["hits"], 1, "{out:?}");
    let out = env.vault(&["ls", "-H", "vm", "latest"]);
    assert_success(&out);
    let src = env.path("src");
    let src = src.to_str().unwrap();
    assert_success(&env.vault(&["backup", "-H", "third", "-f", src]));
    assert_eq!(env.snapshots()[2]["hostname"], "third");
    // -p: the password file.
    let out = env
        .command(&["-p", env.password_file.to_str().unwrap(), "snapshots"])
        .env_remove("VAULT_PASSWORD_FILE")
        .output()
        .unwrap();
    assert_success(&out);
    // forget -H 1: --keep-hourly 1 (as a host, forget would have no
    // policy and refuse).
    let out = env.vault(&["forget", "-H", "1", "-g", "host", "-n"]);
    assert_success(&out);
    assert_eq!(env.snapshots().len(), 3);
}

/// `snapshots ID...` lists those; `ls` takes several directories.
#[test]
fn snapshots_take_ids_and_ls_takes_several_directories() {
    let env = Env::new();
    let (first, second) = two_snapshots(&env);
    let out = env.vault(&["snapshots", &first[..8], "--json"]);
    assert_success(&out);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], first.as_str());
    let out = env.vault(&["snapshots", "latest", &first[..8]]);
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&first[..8]) && text.contains(&second[..8]),
        "{text}"
    );
    assert!(text.contains("2 snapshots"), "{text}");
    let src = env.path("src");
    let d1 = src.join("d1");
    let d2 = src.join("d2");
    let out = env.vault(&["ls", "latest", d1.to_str().unwrap(), d2.to_str().unwrap()]);
    assert_success(&out);
    let text = stdout(&out);
    let want = [d1.clone(), d1.join("x"), d2.clone(), d2.join("y")]
        .map(|p| format!("{}\n", p.display()))
        .concat();
    assert_eq!(text, want);
    // One that is not in the snapshot is named, after the others.
    let missing = src.join("nope");
    let out = env.vault(&[
        "ls",
        "latest",
        d1.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    assert!(stdout(&out).contains("/d1/x"), "{out:?}");
    assert!(
        stderr(&out).contains("holds no") && stderr(&out).contains("/nope"),
        "{out:?}"
    );
}

/// A snapshot given by id is that snapshot whatever --host/--tag/--path
/// say (restic's rule, with a warning); `latest` still obeys them.
#[test]
fn an_explicit_id_ignores_the_filters_with_a_warning() {
    let env = Env::new();
    let (first, second) = two_snapshots(&env);
    let d1 = env.path("src/d1");
    let d1 = d1.to_str().unwrap();
    let x = format!("{d1}/x");
    for args in [
        &["ls", &second[..8], "--host", "vm", d1][..],
        &["dump", &second[..8], &x, "--tag", "t1"],
        &["stats", &second[..8], "--host", "vm"],
        &["snapshots", &second[..8], "--tag", "t1"],
    ] {
        let out = env.vault(args);
        assert_success(&out);
        assert!(
            stderr(&out).contains("ignoring --host/--tag/--path"),
            "{args:?}: {out:?}"
        );
    }
    let out = env.vault(&["stats", &second[..8], "--host", "vm", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["snapshots_count"], 1);
    // Not with -q; and none without filters.
    let out = env.vault(&["-q", "ls", &second[..8], "--host", "vm", d1]);
    assert_success(&out);
    assert_eq!(stderr(&out), "");
    let out = env.vault(&["ls", &second[..8], d1]);
    assert_eq!(stderr(&out), "");
    // `latest` obeys them.
    let out = env.vault(&["ls", "latest", "--host", "vm", "--json"]);
    assert_success(&out);
    assert!(stdout(&out).contains(&first), "{out:?}");
    let out = env.vault(&["ls", "latest", "--host", "nobody"]);
    assert_code(&out, 1);
    // restore by id with a tag the snapshot lacks: restored.
    let target = env.path("r");
    let out = env.vault(&[
        "restore",
        &second[..8],
        "--tag",
        "t1",
        "-t",
        target.to_str().unwrap(),
    ]);
    assert_success(&out);
    // An id no snapshot has, with --tag: no suggestion to take it as a tag.
    let out = env.vault(&[
        "restore",
        "88072451",
        "--tag",
        "t1",
        "-t",
        target.to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("no snapshot id starts with `88072451`"),
        "{err}"
    );
    assert!(!err.contains("latest --tag 88072451"), "{err}");
}

/// `--repository-file FILE` (and VAULT_REPOSITORY_FILE): the repository
/// named by the file's first line; not together with --repo.
#[test]
fn the_repository_can_come_from_a_file() {
    let env = Env::new();
    let file = env.path("repo-url");
    std::fs::write(&file, format!("{}\n", env.repo)).unwrap();
    let file = file.to_str().unwrap();
    let out = env
        .command(&["--repository-file", file, "snapshots"])
        .env_remove("VAULT_REPOSITORY")
        .output()
        .unwrap();
    assert_success(&out);
    let out = env
        .command(&["snapshots"])
        .env_remove("VAULT_REPOSITORY")
        .env("VAULT_REPOSITORY_FILE", file)
        .output()
        .unwrap();
    assert_success(&out);
    let out = env.vault(&["--repository-file", file, "-r", &env.repo, "snapshots"]);
    assert_code(&out, 2);
    let empty = env.path("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = env
        .command(&["--repository-file", empty.to_str().unwrap(), "snapshots"])
        .env_remove("VAULT_REPOSITORY")
        .output()
        .unwrap();
    assert_code(&out, 1);
    assert!(stderr(&out).contains("is empty"), "{out:?}");
}

/// `today` and `yesterday` are midnight; the help says so, and a command
/// given one says on stderr how it read it (not with -q or --json).
#[test]
fn a_relative_time_is_midnight_and_said_how_it_was_read() {
    let env = Env::new();
    two_snapshots(&env);
    for args in [
        &["find", "--help"][..],
        &["restore", "--help"],
        &["backup", "--help"],
    ] {
        let out = env.vault(args);
        assert_success(&out);
        assert!(stdout(&out).contains("00:00 local time"), "{args:?}");
    }
    let yesterday = jiff::Zoned::now().date().yesterday().unwrap();
    let out = env.vault(&["find", "x", "--oldest", "yesterday"]);
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("--oldest yesterday read as {yesterday} 00:00:00")),
        "{err}"
    );
    let target = env.path("r");
    let out = env.vault(&["restore", "--at", "now", "-t", target.to_str().unwrap()]);
    assert_success(&out);
    assert!(stderr(&out).contains("--at now read as "), "{out:?}");
    for quiet in ["-q", "--json"] {
        let out = env.vault(&["find", "x", "--oldest", "today", quiet]);
        assert_success(&out);
        assert!(!stderr(&out).contains("read as"), "{quiet}: {out:?}");
    }
    // A time written out is not relative: nothing said.
    let out = env.vault(&["find", "x", "--oldest", "2026-01-01"]);
    assert!(!stderr(&out).contains("read as"), "{out:?}");
}

/// `stats --help` says how its file count differs from restic's.
#[test]
fn stats_help_says_the_file_count_is_of_regular_files() {
    let env = Env::uninitialised();
    let out = env.vault(&["stats", "--help"]);
    assert_success(&out);
    let help = stdout(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("`total_file_count` (File Count) counts regular files only")
            && help.contains("restic's `total_file_count` counts every entry"),
        "{help}"
    );
}

/// `--cacert FILE` trusts an in-house CA for an S3 endpoint over HTTPS. An
/// `openssl s_server` with a certificate that CA signed stands in for the
/// endpoint: without the flag the handshake fails (UnknownIssuer); with
/// it, it succeeds, and what fails is the S3 exchange with a server that
/// is no S3 server.
#[test]
fn cacert_trusts_a_private_ca() {
    let env = Env::uninitialised();
    let dir = env.path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=vault test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until it listens.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let repo = format!("s3:https://127.0.0.1:{port}/bucket/prefix");
    let run = |extra: &[&str]| {
        let mut args = vec!["snapshots", "-r", &repo];
        args.extend_from_slice(extra);
        env.command(&args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("VAULT_S3_MAX_RETRIES", "0")
            .env_remove("SSL_CERT_FILE")
            .output()
            .unwrap()
    };
    let without = run(&[]);
    let ca = dir.join("ca.pem");
    let with = run(&["--cacert", ca.to_str().unwrap()]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(!without.status.success());
    assert!(stderr(&without).contains("UnknownIssuer"), "{without:?}");
    // Past the handshake: the answer is no S3 answer.
    assert!(!with.status.success(), "{with:?}");
    assert!(
        stderr(&with).contains("opening repository") && !stderr(&with).contains("certificate"),
        "{with:?}"
    );
    // A file with no certificate in it is refused, not ignored.
    let bogus = env.path("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let out = run(&["--cacert", bogus.to_str().unwrap()]);
    assert!(stderr(&out).contains("holds no PEM certificate"), "{out:?}");
}

/// restic's `cat tree SNAPSHOT:SUBFOLDER`: the tree of a directory inside
/// a snapshot, not only its root's.
#[test]
fn cat_tree_takes_a_directory_after_the_snapshot() {
    let env = Env::new();
    let (first, _) = two_snapshots(&env);
    let src = env.path("src");
    let src = src.to_str().unwrap();
    let names = |spec: &str| -> Vec<String> {
        env.tree_nodes(spec)
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&format!("latest:{src}")), ["d1", "d2", "top"]);
    assert_eq!(names(&format!("{first}:{src}/d1/")), ["x"]);
    // The root, however it is written, is the snapshot's tree.
    let root = names("latest");
    let top = src.split('/').find(|p| !p.is_empty()).unwrap();
    assert_eq!(root, [top]);
    for spec in ["latest:", "latest:/", "latest:/."] {
        assert_eq!(names(spec), root, "{spec}");
    }
    // A file, or nothing there: a wrong argument (exit 1), not a missing
    // object (4).
    let out = env.vault(&["cat", "tree", &format!("latest:{src}/top")]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("is not a directory"), "{out:?}");
    let out = env.vault(&["cat", "tree", &format!("latest:{src}/nothing")]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("holds no"), "{out:?}");
}

/// restic's `restore SNAPSHOT:SUBFOLDER`: only that directory, its content
/// into the target, includes matched below it. It was taken for a
/// snapshot id and failed ("no snapshot id starts with ...").
#[test]
fn restore_of_a_snapshot_subfolder_puts_its_content_in_the_target() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/f"), b"f").unwrap();
    std::fs::write(src.join("a/g"), b"g").unwrap();
    std::fs::write(src.join("top"), b"top").unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let spec = format!("latest:{}/a", src.display());
    let target = env.path("t");
    let t = target.to_str().unwrap();
    assert_success(&env.vault(&["restore", &spec, "--target", t]));
    assert_eq!(walk(&target), ["b", "b/f", "g"]);
    assert_eq!(std::fs::read(target.join("b/f")).unwrap(), b"f");
    // Includes match paths below the subfolder.
    let only = env.path("only");
    assert_success(&env.vault(&[
        "restore",
        &spec,
        "--target",
        only.to_str().unwrap(),
        "--include",
        "/b",
    ]));
    assert_eq!(walk(&only), ["b", "b/f"]);
    // Not a directory, not there, or with what takes a source name: refused.
    let file = format!("latest:{}/top", src.display());
    assert_code(&env.vault(&["restore", &file, "--target", t]), 1);
    assert_code(&env.vault(&["restore", "latest:/nope", "--target", t]), 1);
}

/// The paths below `dir`, relative to it, sorted.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = crate::support::walk_entries(dir)
        .iter()
        .skip(1)
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}
