//! Interrupted backups (SIGINT and SIGKILL mid-way) leave a readable
//! repository; the next backup completes and reuses what was uploaded (on
//! local disk and on S3). Also: memory stays bounded while streaming a
//! large input (local only: the bound is the pipeline's, and 1.5 GiB
//! through the test store would only make the suite slower).

use crate::support::{Backend, Env, assert_code, assert_success, interrupt};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn big_tree(env: &Env, files: usize) -> std::path::PathBuf {
    let src = env.path("big");
    std::fs::create_dir_all(&src).unwrap();
    // Incompressible content from the kernel: fast even in debug builds.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq -w 0 {}); do head -c 2000000 /dev/urandom > f$i; done",
            files - 1
        ))
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(status.success());
    src
}

fn interrupt_midway(
    env: &Env,
    src: &std::path::Path,
    signal: nix::sys::signal::Signal,
) -> std::process::Output {
    let child = env
        .command(&["backup", src.to_str().unwrap(), "--compression", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait until a few packs are durable, then signal.
    while env.objects_under("data").len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    child.wait_with_output().unwrap()
}

backend_test!(sigint_mid_backup_exits_130_and_next_backup_reuses_uploads);
fn sigint_mid_backup_exits_130_and_next_backup_reuses_uploads(backend: Backend) {
    let env = Env::with_small_packs(backend);
    let early = env.path("early");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::write(early.join("a"), b"before").unwrap();
    assert_success(&env.vault(&["backup", early.to_str().unwrap()]));
    let src = big_tree(&env, 60);
    let out = interrupt_midway(&env, &src, nix::sys::signal::Signal::SIGINT);
    assert_code(&out, 130);
    assert_eq!(
        env.snapshots().len(),
        1,
        "no snapshot from the interrupted run"
    );
    // Uploaded packs were indexed on the way out.
    assert!(!env.objects_under("index").is_empty());
    let target = env.path("r1");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let summary = env.json(&["backup", src.to_str().unwrap(), "--compression", "none"]);
    let added = summary["data_added"].as_u64().unwrap();
    let total = summary["total_bytes_processed"].as_u64().unwrap();
    assert!(
        added < total,
        "resumed backup re-uploaded everything: {added} of {total}"
    );
    let target = env.path("r2");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    let restored = target.join(src.strip_prefix("/").unwrap());
    for i in ["00", "30", "59"] {
        let name = format!("f{i}");
        assert_eq!(
            std::fs::read(restored.join(&name)).unwrap(),
            std::fs::read(src.join(&name)).unwrap()
        );
    }
}

backend_test!(sigkill_mid_backup_leaves_repository_readable);
fn sigkill_mid_backup_leaves_repository_readable(backend: Backend) {
    let env = Env::with_small_packs(backend);
    let early = env.path("early");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::write(early.join("a"), b"before").unwrap();
    assert_success(&env.vault(&["backup", early.to_str().unwrap()]));
    let src = big_tree(&env, 40);
    let out = interrupt_midway(&env, &src, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(out.status.code(), None, "killed by signal");
    assert_eq!(env.snapshots().len(), 1);
    let target = env.path("r1");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    assert_eq!(
        std::fs::read(target.join(early.strip_prefix("/").unwrap()).join("a")).unwrap(),
        b"before"
    );
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_eq!(env.snapshots().len(), 2);
    let target = env.path("r2");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
}

/// Peak RSS while backing up a 1.5 GiB stream stays far below the input size.
#[test]
fn streaming_a_large_input_keeps_memory_bounded() {
    let env = Env::new();
    let mut child = env
        .command(&[
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "big.raw",
            "--",
            "sh",
            "-c",
            "head -c 1536M /dev/urandom",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kib = peak_kib.max(kib);
                }
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    assert!(peak_kib > 0, "could not read VmHWM");
    assert!(
        peak_kib < 400 * 1024,
        "peak RSS {peak_kib} KiB for a 1.5 GiB stream"
    );
    let snaps = env.snapshots();
    assert_eq!(
        snaps[0]["summary"]["total_bytes_processed"],
        1536u64 * 1024 * 1024
    );
}

/// Ctrl-C while the walk is done and the pipeline drains uploads held to
/// --limit-upload: it ran them all, saved the snapshot and exited 0 after
/// saying it was stopping.
#[test]
fn sigint_while_uploads_drain_exits_130_without_a_snapshot() {
    let env = Env::with_small_packs(Backend::Local);
    let src = big_tree(&env, 6);
    let child = env.spawn(&[
        "backup",
        src.to_str().unwrap(),
        "--compression",
        "none",
        "--limit-upload",
        "1000",
    ]);
    // At 1000 KiB/s the 12 MB take ~12 s; the reads end long before.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.objects_under("data").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = interrupt(child);
    assert_code(&out, 130);
    assert!(env.snapshots().is_empty());
    assert_success(&env.vault(&["check"]));
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
}

/// Ctrl-C during a copy whose uploads wait for their turn under
/// --limit-upload: the upload in flight returns at once and the next one,
/// its slot still ahead, is never sent (before, each waited its slot out:
/// 10 s a pack here); the index of what was sent is written. Exit 130, no
/// snapshot written.
#[test]
fn sigint_during_a_rate_limited_copy_sends_nothing_more() {
    let env = Env::new();
    let src = big_tree(&env, 3);
    assert_success(&env.vault(&["backup", src.to_str().unwrap(), "--compression", "none"]));
    let target = env.path("target");
    assert_success(&env.init_at(&target, &["--pack-size-mib", "1"]));
    let target_str = target.to_str().unwrap();
    let password = env.password_file.to_str().unwrap();
    let child = env.spawn(&[
        "copy",
        "--to",
        target_str,
        "--to-password-file",
        password,
        "--limit-upload",
        "100",
    ]);
    // At 100 KiB/s each 1 MiB pack books a 10 s slot; the first is sent at
    // once and the second waits for its slot.
    let objects = |dir: &str| {
        let mut n = 0;
        crate::support::walk_files(&target.join(dir), &mut |p| {
            n += usize::from(p.file_name().is_some_and(|f| f.len() == 64));
        });
        n
    };
    let packs = || objects("data");
    let deadline = Instant::now() + Duration::from_secs(60);
    while packs() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = packs();
    assert!(sent > 0, "no pack was uploaded");
    let out = interrupt(child);
    assert_code(&out, 130);
    assert_eq!(packs(), sent, "a pack was sent after the interrupt");
    // What was sent is indexed, for the next copy to reuse: the stopping
    // copy's index file is not held back with the packs.
    assert_eq!(objects("index"), 1, "the uploaded packs were not indexed");
    let snapshots = env
        .command(&["snapshots", "--json"])
        .env("VAULT_REPOSITORY", &target)
        .output()
        .unwrap();
    assert_success(&snapshots);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&snapshots.stdout).unwrap(),
        serde_json::json!([])
    );
}

/// Starts `backup --stdin-from-command sh -c COMMAND`, waits until
/// `sleep MARKER` runs, interrupts the backup (exit 130, no snapshot), and
/// says whether that `sleep` was still running 5 s later (killing it then).
fn sleep_outlives_an_interrupted_command_source(env: &Env, command: &str, marker: &str) -> bool {
    let child = env.spawn(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "command.out",
        "--",
        "sh",
        "-c",
        command,
    ]);
    let running = || crate::support::sleep_running(marker);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(running(), "the command never started");
    let out = interrupt(child);
    assert_code(&out, 130);
    assert!(env.snapshots().is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = running();
    crate::support::kill_sleep(marker);
    survived
}

/// Ctrl-C during a command source stops the command and what it started,
/// instead of waiting for it to end and saving its output.
#[test]
fn sigint_stops_a_running_command_source_and_its_children() {
    let env = Env::new();
    let marker = "31.4159";
    let command = format!("echo start; sleep {marker}; echo end");
    assert!(
        !sleep_outlives_an_interrupted_command_source(&env, &command, marker),
        "sleep {marker} outlived the backup"
    );
}

/// A process the command started that ignores SIGTERM goes too: vault
/// stops reading at Ctrl-C and abandons the command, so the group gets
/// SIGKILL after its SIGTERM. It used to get only the SIGTERM (the watch
/// that escalated after a grace period was dropped with the command), so
/// it ran on after the backup ended.
#[test]
fn sigint_kills_a_command_child_that_ignores_sigterm() {
    let env = Env::new();
    let marker = "27.1828";
    // `sleep` inherits the ignored SIGTERM; `cat` keeps the backup reading.
    let command = format!("trap '' TERM; sleep {marker} & cat /dev/zero");
    assert!(
        !sleep_outlives_an_interrupted_command_source(&env, &command, marker),
        "sleep {marker}, ignoring SIGTERM, outlived the backup"
    );
}

/// Ctrl-C stops a drill: its restore ends, its scratch directory goes, it
/// exits 130, and nothing is recorded (an interrupted drill neither passed
/// nor failed). The drill's restore used to ignore the signal, run to its
/// end and record a pass.
#[test]
fn sigint_stops_a_drill_and_records_nothing() {
    let env = Env::new();
    let src = big_tree(&env, 6);
    let status = env.path("state/status.json");
    let config = env.path("vault.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nlimit_download = 512\n\n[[source]]\nname = \"tree\"\nkind = \"files\"\npaths = [\"{}\"]\n\n[notify]\nstatus_file = \"{}\"\n",
            src.display(),
            status.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut cmd = env.command(args);
        cmd.env("VAULT_CONFIG", &config)
            .env("TMPDIR", env.path("tmp"));
        cmd
    };
    std::fs::create_dir_all(env.path("tmp")).unwrap();
    assert_success(&run(&["backup", "--compression", "none"]).output().unwrap());
    let before = std::fs::read(&status).unwrap();
    // 12 MB at 512 KiB/s: well before the end.
    let child = run(&["drill", "tree"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let out = interrupt(child);
    assert_code(&out, 130);
    assert_eq!(
        std::fs::read_dir(env.path("tmp")).unwrap().count(),
        0,
        "the drill's restore was left behind"
    );
    assert_eq!(
        std::fs::read(&status).unwrap(),
        before,
        "the drill was recorded"
    );
}

/// An interrupted restore exits 130 and says how to finish it; running it
/// again with `--overwrite if-changed` completes the tree without
/// rewriting what is already there.
#[test]
fn interrupted_restore_says_how_to_resume_and_resuming_completes_it() {
    let env = Env::with_small_packs(Backend::Local);
    let src = big_tree(&env, 6);
    assert_success(&env.vault(&["backup", src.to_str().unwrap(), "--compression", "none"]));
    let target = env.path("restore");
    // 12 MB at 512 KiB/s: stopped well before the end.
    let child = env.spawn(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--limit-download",
        "512",
    ]);
    // Signalled once a file is part-written, however slowly this machine
    // got there: a fixed sleep let a loaded CI runner signal before the
    // first file existed.
    let restored = target.join(src.strip_prefix("/").unwrap());
    let in_progress = || {
        std::fs::read_dir(&restored).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                std::fs::read(entry.path()).ok() != std::fs::read(src.join(entry.file_name())).ok()
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !in_progress() {
        assert!(Instant::now() < deadline, "no file was begun");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = interrupt(child);
    assert_code(&out, 130);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--overwrite if-changed"), "{err}");
    // What it left unfinished is its owner's only: the source's files and
    // directories are 0644 and 0755, applied once restored.
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
    };
    assert_eq!(mode(&restored) & 0o077, 0, "{:o}", mode(&restored));
    let mut unfinished = 0;
    for entry in std::fs::read_dir(&restored).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if std::fs::read(&path).unwrap() != std::fs::read(src.join(name)).unwrap() {
            unfinished += 1;
            assert_eq!(mode(&path) & 0o077, 0, "{path:?}: {:o}", mode(&path));
        }
    }
    assert!(unfinished > 0, "the restore finished before the signal");
    let out = env.vault(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "if-changed",
        "--json",
    ]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["bytes_skipped"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(mode(&restored), mode(&src), "{:o}", mode(&restored));
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(
            std::fs::read(restored.join(&name)).unwrap(),
            std::fs::read(src.join(&name)).unwrap(),
            "{name:?}"
        );
        assert_eq!(
            mode(&restored.join(&name)),
            mode(&src.join(&name)),
            "{name:?}"
        );
    }
}

/// A restore in place (`--overwrite if-changed`) of a file that is 0600 in
/// the snapshot and 0644 on disk writes the new content owner-only: it was
/// written under the old 0644, and an interrupted restore left the secret
/// readable by every user.
#[test]
fn a_file_rewritten_in_place_is_private_until_its_mode_is_applied() {
    let env = Env::with_small_packs(Backend::Local);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("secret.db");
    let public = crate::support::pseudo_random(12 << 20, 1);
    std::fs::write(&file, &public).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_success(&env.vault(&["backup", "--tag", "a", src.to_str().unwrap()]));
    let secret = crate::support::pseudo_random(12 << 20, 2);
    std::fs::write(&file, &secret).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = ["backup", "--tag", "b", "--compression", "none"];
    assert_success(&env.vault(&[&args[..], &[src.to_str().unwrap()]].concat()));
    let target = env.path("r");
    let t = target.to_str().unwrap();
    assert_success(&env.vault(&["restore", "latest", "--tag", "a", "--target", t]));
    let restored = target.join(file.strip_prefix("/").unwrap());
    let mode = || std::fs::metadata(&restored).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(), 0o644);
    let child = env.spawn(&[
        "restore",
        "latest",
        "--tag",
        "b",
        "--target",
        t,
        "--overwrite",
        "if-changed",
        "--limit-download",
        "512",
    ]);
    // Signalled once some of the secret is on disk.
    let begun = || {
        let now = std::fs::read(&restored).unwrap();
        now.chunks(1 << 16)
            .zip(secret.chunks(1 << 16))
            .any(|(a, b)| a == b)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !begun() {
        assert!(Instant::now() < deadline, "no secret content was written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = interrupt(child);
    assert_code(&out, 130);
    assert_eq!(mode() & 0o077, 0, "{:o}", mode());
}

/// `dump` stops at SIGTERM with 130: it used to say "stopping cleanly" and
/// stream to the last byte, then exit 0.
#[test]
fn sigterm_stops_a_dump_with_130() {
    use std::io::Read;
    let env = Env::new();
    let data = env.path("big.bin");
    std::fs::write(&data, crate::support::pseudo_random(40 << 20, 7)).unwrap();
    assert_success(&env.vault(&["backup", data.to_str().unwrap()]));
    let mut child = env
        .command(&["dump", "latest", data.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A slow reader: the whole file would take ~10 s to come through.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
            std::thread::sleep(Duration::from_millis(15));
        }
        total
    });
    std::thread::sleep(Duration::from_secs(1));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let read = reader.join().unwrap();
    assert_code(&out, 130);
    assert!(read < 40 << 20, "the dump went on to the end");
}

/// `check --verify` stops at the next pack on SIGINT (exit 130): it used to
/// read every pack to the end, report on them, and only then exit 130.
#[test]
fn sigint_stops_check_verify_at_the_next_pack() {
    let env = Env::with_small_packs(Backend::Local);
    let src = big_tree(&env, 6);
    assert_success(&env.vault(&["backup", src.to_str().unwrap(), "--compression", "none"]));
    // 12 MB at 512 KiB/s: stopped well before the end.
    let child = env.spawn(&["check", "--verify", "--limit-download", "512"]);
    std::thread::sleep(Duration::from_millis(2500));
    let out = interrupt(child);
    assert_code(&out, 130);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("had run to its end"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "{out:?}"
    );
}
