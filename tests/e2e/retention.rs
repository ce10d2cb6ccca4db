//! `forget` and `prune` end to end: reasons, refusals, two-phase deletion,
//! space actually reclaimed, locks (exit 11), and prune killed at random
//! points or running beside a backup never losing a kept snapshot; each on
//! local disk (atomic create-only lock) and on S3 (on Garage, which ignores
//! conditional writes, the write-list-wait lock protocol).

use crate::support::{Backend, Env, assert_code, assert_success, interrupt, pseudo_random, stderr};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Seven daily snapshots, each adding a distinct 300 KB file.
fn daily_repo(backend: Backend) -> (Env, std::path::PathBuf) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for day in 1..=7u64 {
        std::fs::write(
            src.join(format!("day{day}.bin")),
            pseudo_random(300_000, day),
        )
        .unwrap();
        let time = format!("2026-03-{day:02} 03:00:00");
        assert_success(&env.vault(&["backup", src.to_str().unwrap(), "--time", &time]));
        std::fs::remove_file(src.join(format!("day{day}.bin"))).unwrap();
    }
    (env, src)
}

fn repo_bytes(env: &Env) -> u64 {
    env.objects()
        .iter()
        .filter(|(p, _)| p.starts_with("data/"))
        .map(|(_, s)| s)
        .sum()
}

backend_test!(forget_without_policy_is_refused);
fn forget_without_policy_is_refused(backend: Backend) {
    let (env, _) = daily_repo(backend);
    // A usage error (2), as a missing argument is: nothing was done.
    let out = env.vault(&["forget"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("no retention policy"),
        "{}",
        stderr(&out)
    );
    let out = env.vault(&["forget", "latest", "--keep-last", "1"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("not both"), "{}", stderr(&out));
    assert_eq!(env.snapshots().len(), 7);
}

backend_test!(forget_dry_run_reports_reasons_and_removes_nothing);
fn forget_dry_run_reports_reasons_and_removes_nothing(backend: Backend) {
    let (env, _) = daily_repo(backend);
    let v = env.json(&[
        "forget",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "1",
        "--dry-run",
    ]);
    let group = &v.as_array().unwrap()[0];
    let keep = group["keep"].as_array().unwrap();
    let remove = group["remove"].as_array().unwrap();
    assert_eq!(keep.len() + remove.len(), 7);
    assert_eq!(
        keep[0]["reasons"],
        serde_json::json!(["daily snapshot", "weekly snapshot"])
    );
    assert!(
        keep.iter()
            .all(|k| !k["reasons"].as_array().unwrap().is_empty())
    );
    assert_eq!(env.snapshots().len(), 7);
    // Human output shows the reasons too.
    let out = env.vault(&["forget", "--keep-daily", "3", "--dry-run"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("daily snapshot") && text.contains("would remove 4"),
        "{text}"
    );
}

backend_test!(forget_prune_instant_delete_shrinks_and_kept_snapshots_restore);
fn forget_prune_instant_delete_shrinks_and_kept_snapshots_restore(backend: Backend) {
    let (env, _) = daily_repo(backend);
    let before = repo_bytes(&env);
    let out = env.vault(&[
        "forget",
        "--keep-last",
        "2",
        "--prune",
        "--instant-delete",
        "--max-unused",
        "0",
    ]);
    assert_success(&out);
    assert_eq!(env.snapshots().len(), 2);
    let after = repo_bytes(&env);
    // Five snapshots each referenced one distinct 300 KB file.
    assert!(before - after >= 5 * 290_000, "{before} -> {after}");
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["findings"].as_array().unwrap().len(),
        0,
        "healthy after forget+prune: {v}"
    );
    for (i, snap) in env.snapshots().iter().enumerate() {
        let target = env.path(&format!("r{i}"));
        let id = snap["short_id"].as_str().unwrap();
        assert_success(&env.vault(&["restore", id, "--target", target.to_str().unwrap()]));
    }
}

fn check_verify(env: &Env) -> (i32, serde_json::Value) {
    let out = env.vault(&["check", "--verify", "--json"]);
    (
        out.status.code().unwrap(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

backend_test!(prune_marks_first_and_deletes_after_the_margin);
fn prune_marks_first_and_deletes_after_the_margin(backend: Backend) {
    let (env, _) = daily_repo(backend);
    let before = repo_bytes(&env);
    assert_success(&env.vault(&["forget", "--keep-last", "3"]));
    // First prune only marks: nothing is deleted yet.
    let v = env.json(&["prune"]);
    assert_eq!(v["packs_deleted"], 0, "{v}");
    assert!(v["packs_marked"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(repo_bytes(&env), before);
    // A second prune within the margin still waits.
    let v = env.json(&["prune"]);
    assert_eq!(v["packs_deleted"], 0, "{v}");
    // After the margin (here: zero), the marked packs go.
    let v = env.json(&["prune", "--delete-margin", "0s"]);
    assert!(v["packs_deleted"].as_u64().unwrap() >= 1, "{v}");
    assert!(repo_bytes(&env) < before - 4 * 290_000);
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
}

/// A snapshot of a few bytes from stdin at 10:00 on day `day` of January
/// 2025, tagged `tag`.
fn day_snapshot(env: &Env, day: u32, tag: Option<&str>) {
    let time = format!("2025-01-0{day} 10:00:00");
    let mut args = vec!["backup", "--stdin", "--time", &time];
    args.extend(tag.iter().flat_map(|t| ["--tag", t]));
    assert_success(&env.vault_stdin(&args, format!("day {day}").as_bytes()));
}

/// `--keep-tag ''` keeps the snapshots without tags, as in restic and as
/// docs/retention.md says; it used to be read as an empty list, which
/// matches every snapshot, so nothing was ever forgotten. Also in the
/// config's `keep_tag`.
#[test]
fn keep_tag_empty_keeps_only_untagged_snapshots() {
    let env = Env::new();
    let snapshot = |day: u32, tag: Option<&str>| day_snapshot(&env, day, tag);
    let tags_left = |env: &Env| -> Vec<serde_json::Value> {
        env.snapshots().iter().map(|s| s["tags"].clone()).collect()
    };
    snapshot(1, None);
    snapshot(2, Some("release"));
    snapshot(3, None);
    assert_success(&env.vault(&["forget", "--keep-tag", ""]));
    assert_eq!(
        tags_left(&env),
        [serde_json::json!([]), serde_json::json!([])],
        "only the untagged ones stay"
    );
    snapshot(4, Some("release"));
    let config = env.path("vault.toml");
    std::fs::write(&config, "[retention]\nkeep_tag = [\"\"]\n").unwrap();
    let out = env
        .command(&["forget"])
        .env("VAULT_CONFIG", &config)
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(env.snapshots().len(), 2, "{}", stderr(&out));
}

/// Tags read as restic reads them. `--tag ''` selects the snapshots without
/// tags (it selected every snapshot, so `forget --tag '' --keep-last 1`
/// forgot tagged ones it should not have looked at), and white space
/// around a comma is not part of a tag (`--tag "nightly, keep"` stored
/// ` keep`, which `--keep-tag keep` then did not protect).
#[test]
fn tags_are_trimmed_and_an_empty_tag_filter_selects_untagged_snapshots() {
    let env = Env::new();
    let snapshot = |day: u32, tag: Option<&str>| day_snapshot(&env, day, tag);
    snapshot(1, Some("nightly, keep"));
    snapshot(2, Some("nightly"));
    snapshot(3, None);
    snapshot(4, None);
    let tags: Vec<serde_json::Value> = env.snapshots().iter().map(|s| s["tags"].clone()).collect();
    assert_eq!(tags[0], serde_json::json!(["keep", "nightly"]));
    let count = |args: &[&str]| {
        let mut all = vec!["snapshots"];
        all.extend(args);
        env.json(&all).as_array().unwrap().len()
    };
    assert_eq!(count(&["--tag", ""]), 2);
    assert_eq!(count(&["--tag", "nightly, keep"]), 1);

    // Only the untagged ones are considered: the older is forgotten, the
    // tagged ones are not touched.
    assert_success(&env.vault(&["forget", "--tag", "", "--keep-last", "1"]));
    assert_eq!(env.snapshots().len(), 3);
    assert_eq!(count(&["--tag", ""]), 1);
    // The spaced tag protects its snapshot.
    assert_success(&env.vault(&["forget", "--keep-tag", " keep", "--keep-last", "1"]));
    let times: Vec<String> = env
        .snapshots()
        .iter()
        .map(|s| s["time"].as_str().unwrap()[..10].to_owned())
        .collect();
    assert_eq!(times, ["2025-01-01", "2025-01-04"]);
    // `tag` trims what it adds.
    assert_success(&env.vault(&["tag", "--tag", "keep", "--add", "p, q"]));
    assert_eq!(
        env.snapshots()[0]["tags"],
        serde_json::json!(["keep", "nightly", "p", "q"])
    );
}

/// Snapshots of one source at the same time (a backfill with a date-only
/// `--time`): `forget --keep-last 1` keeps the one `latest` names, so
/// `latest` still gives the same data afterwards.
#[test]
fn keep_last_keeps_the_snapshot_latest_names_among_equal_times() {
    let env = Env::new();
    for n in 1..=4 {
        let args = [
            "backup",
            "--stdin",
            "--stdin-filename",
            "x.sql",
            "--time",
            "2025-05-05",
        ];
        assert_success(&env.vault_stdin(&args, format!("v{n}").as_bytes()));
    }
    let dump_latest = |env: &Env| env.vault(&["dump", "latest", "/x.sql"]).stdout;
    let before = dump_latest(&env);
    let latest_id = env.snapshots().last().unwrap()["id"].clone();
    assert_success(&env.vault(&["forget", "--keep-last", "1"]));
    let left = env.snapshots();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], latest_id);
    assert_eq!(dump_latest(&env), before);
}

backend_test!(prune_counts_pack_headers_as_used);
/// A pack's header (about 40 bytes per blob) belongs to its blobs: counted
/// as unused, a repository of small files that never forgot anything
/// looked 8% unused, and every prune repacked the same data again.
fn prune_counts_pack_headers_as_used(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..300u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(400, i)).unwrap();
    }
    assert_success(&env.vault(&["backup", "-q", src.to_str().unwrap()]));
    let before = repo_bytes(&env);
    for _ in 0..2 {
        let v = env.json(&["prune"]);
        assert_eq!(v["packs_repacked"], 0, "{v}");
        assert_eq!(v["packs_marked"], 0, "{v}");
    }
    assert_eq!(repo_bytes(&env), before);
}

/// `forget --dry-run --prune` shows the plan of the prune that would
/// follow, as if the snapshots it would remove were gone, and changes
/// nothing; the real run then does what it showed.
#[test]
fn forget_dry_run_with_prune_shows_the_prune_that_would_follow() {
    let (env, _) = daily_repo(Backend::Local);
    let before = (env.snapshots().len(), repo_bytes(&env));
    let policy = ["forget", "--keep-last", "3", "--prune"];
    let out = env.vault(&[&policy[..], &["--dry-run"]].concat());
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("3 snapshots use"), "{text}");
    let marked = |text: &str, word: &str| -> u64 {
        let at = text.find(word).unwrap_or_else(|| panic!("{text}")) + word.len();
        text[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let would = marked(&text, "would delete 0 packs (0 B), mark ");
    assert!(would >= 1, "{text}");
    assert_eq!((env.snapshots().len(), repo_bytes(&env)), before);
    let out = env.vault(&policy);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(marked(&text, ", marked "), would, "{text}");
}

backend_test!(prunes_in_a_row_do_not_repack_what_the_first_left);
/// Marked packs waiting out the margin are not unused space repacking can
/// free: counting them, every prune repacked nearly full packs again and
/// the repository grew with each run.
fn prunes_in_a_row_do_not_repack_what_the_first_left(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(src.join(format!("r{}", i % 4)), pseudo_random(20_000, i)).unwrap();
        assert_success(&env.vault(&["backup", "-q", src.to_str().unwrap()]));
    }
    assert_success(&env.vault(&["forget", "--keep-last", "2"]));
    let first = env.json(&["prune"]);
    assert!(first["packs_marked"].as_u64().unwrap() >= 1, "{first}");
    let after_first = repo_bytes(&env);
    for _ in 0..2 {
        let v = env.json(&["prune"]);
        assert_eq!(v["packs_repacked"], 0, "{v}");
        assert_eq!(v["packs_marked"], 0, "{v}");
        assert_eq!(repo_bytes(&env), after_first);
    }
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
}

backend_test!(backup_referencing_a_marked_blob_keeps_its_pack_alive);
fn backup_referencing_a_marked_blob_keeps_its_pack_alive(backend: Backend) {
    let env = Env::on(backend);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), pseudo_random(400_000, 42)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    // Drop the only snapshot: its pack becomes unused and gets marked.
    let id = env.snapshots()[0]["id"].as_str().unwrap().to_owned();
    env.delete_object(&format!("snapshots/{id}"));
    let v = env.json(&["prune"]);
    assert!(v["packs_marked"].as_u64().unwrap() >= 1);
    // A new backup of the same data must not depend on the marked pack: it
    // stores the data again, so deleting the marked pack loses nothing.
    let s = env.json(&["backup", src.to_str().unwrap()]);
    assert!(s["data_added"].as_u64().unwrap() >= 400_000, "{s}");
    let v = env.json(&["prune", "--delete-margin", "0s"]);
    assert!(v["packs_deleted"].as_u64().unwrap() >= 1, "{v}");
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
    let target = env.path("r");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
}

backend_test!(held_lock_exits_11_naming_the_holder_and_stale_locks_are_cleared);
fn held_lock_exits_11_naming_the_holder_and_stale_locks_are_cleared(backend: Backend) {
    let (env, _) = daily_repo(backend);
    // Catch a prune while it holds the lock, and freeze it there. Locally
    // the lock lives for milliseconds; on S3 listing costs a request.
    let poll = match backend {
        Backend::Local => Duration::from_micros(50),
        Backend::S3 => Duration::from_millis(2),
    };
    let mut holder = None;
    for _ in 0..50 {
        let child = env
            .command(&["prune", "--max-unused", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut caught = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !env.locks().is_empty() {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
                caught = !env.locks().is_empty();
                break;
            }
            std::thread::sleep(poll);
        }
        if caught {
            holder = Some(child);
            break;
        }
        let mut child = child;
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        child.wait().unwrap();
    }
    let mut holder = holder.expect("never caught prune holding its lock");
    let held = env.locks();
    // Where the store honours create-only writes (local disk) the lock is
    // one well-known object; elsewhere (Garage) one object per holder.
    let atomic = held == ["locks/exclusive"];
    if env.is_local() {
        assert!(atomic, "{held:?}");
    }
    let out = env.vault(&["prune"]);
    assert_code(&out, 11);
    let err = stderr(&out);
    assert!(
        err.contains("locked") && err.contains(&format!("pid {}", holder.id())),
        "{err}"
    );
    assert!(err.contains("`vault unlock`"), "{err}");
    // --retry-lock waits for the lock, up to its limit.
    let started = Instant::now();
    assert_code(&env.vault(&["prune", "--retry-lock", "2s"]), 11);
    assert!(started.elapsed() >= Duration::from_secs(2));
    // unlock leaves a live lock alone.
    assert_success(&env.vault(&["unlock"]));
    assert_eq!(env.locks(), held);
    // A prune waiting for the lock goes ahead once the holder is gone
    // (killed: its lock is stale, same host and process gone).
    let waiting = env
        .command(&["prune", "--retry-lock", "5m"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_success(&waiting.wait_with_output().unwrap());
    // The stale lock was taken over (the well-known object) or removed (a
    // per-holder one), and the prune's own released: none is left.
    assert!(env.locks().is_empty(), "{:?}", env.locks());
}

backend_test!(prune_killed_at_random_points_never_loses_a_kept_snapshot);
/// Kill `prune --instant-delete --max-unused 0` at many points; every kept
/// snapshot must still restore and check must pass (possibly after the next
/// prune finishes the job).
fn prune_killed_at_random_points_never_loses_a_kept_snapshot(backend: Backend) {
    // On S3 a prune spends its first 1.5 s settling its lock (Garage has
    // no conditional writes), and every step is a request: kill later, and
    // at fewer points to keep the suite quick.
    let seeds = match backend {
        Backend::Local => 8,
        Backend::S3 => 5,
    };
    let kill_after = |seed: u64| match backend {
        Backend::Local => seed * 37 % 300,
        Backend::S3 => 1300 + seed * 331 % 1500,
    };
    for seed in 0..seeds {
        let (env, src) = daily_repo(backend);
        assert_success(&env.vault(&["forget", "--keep-last", "3"]));
        let kept: Vec<String> = env
            .snapshots()
            .iter()
            .map(|s| s["short_id"].as_str().unwrap().to_owned())
            .collect();
        let mut child = env
            .command(&["prune", "--instant-delete", "--max-unused", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(kill_after(seed)));
        let _ = child.kill();
        child.wait().unwrap();
        let verify_all = |stage: &str| {
            for (i, id) in kept.iter().enumerate() {
                let target = env.path(&format!("r-{stage}-{i}"));
                let out = env.vault(&["restore", id, "--target", target.to_str().unwrap()]);
                assert_success(&out);
                let day = 5 + i as u64;
                let file = target
                    .join(src.strip_prefix("/").unwrap())
                    .join(format!("day{day}.bin"));
                assert_eq!(
                    std::fs::read(file).unwrap(),
                    pseudo_random(300_000, day),
                    "seed {seed}"
                );
            }
        };
        verify_all("killed");
        assert_success(&env.vault(&["prune", "--instant-delete", "--max-unused", "0"]));
        let (code, v) = check_verify(&env);
        assert_eq!(code, 0, "seed {seed}: {v}");
        verify_all("after");
    }
}

backend_test!(backup_beside_prune_finishes_and_everything_restores);
/// A backup and a prune at the same time, with many relative timings: both
/// the new snapshot and every kept one restore afterwards.
fn backup_beside_prune_finishes_and_everything_restores(backend: Backend) {
    for round in 0..4u64 {
        let (env, src) = daily_repo(backend);
        assert_success(&env.vault(&["forget", "--keep-last", "4"]));
        std::fs::write(src.join("new.bin"), pseudo_random(2_000_000, 1000 + round)).unwrap();
        let spawn = |args: &[&str]| {
            env.command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let backup_args = ["backup", src.to_str().unwrap()];
        let prune_args = ["prune", "--max-unused", "0"];
        let (backup, prune) = match backend {
            Backend::Local => {
                let backup = spawn(&backup_args);
                std::thread::sleep(Duration::from_millis(round * 40));
                (backup, spawn(&prune_args))
            }
            // A prune on Garage settles its lock for 1.5 s before working:
            // start it first so the two overlap.
            Backend::S3 => {
                let prune = spawn(&prune_args);
                std::thread::sleep(Duration::from_millis(1200 + round * 150));
                (spawn(&backup_args), prune)
            }
        };
        let prune = prune.wait_with_output().unwrap();
        assert!(
            prune.status.success(),
            "{}",
            String::from_utf8_lossy(&prune.stderr)
        );
        let out = backup.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A later prune after the margin must not break the new snapshot.
        assert_success(&env.vault(&["prune", "--delete-margin", "0s"]));
        let (code, v) = check_verify(&env);
        assert_eq!(code, 0, "round {round}: {v}");
        let target = env.path("latest");
        assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
        let restored = target.join(src.strip_prefix("/").unwrap()).join("new.bin");
        assert_eq!(
            std::fs::read(restored).unwrap(),
            pseudo_random(2_000_000, 1000 + round)
        );
        assert_eq!(env.snapshots().len(), 5);
    }
}

/// Ctrl-C during a prune's repack (its uploads held to --limit-upload)
/// stops it: exit 130, nothing deleted, every snapshot still whole. It
/// said it was stopping and then ran to the end.
#[test]
fn sigint_stops_a_prune_during_its_repack() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        std::fs::write(src.join(name), pseudo_random(3_000_000, i as u64)).unwrap();
    }
    assert_success(&env.vault(&["backup", "--compression", "none", src.to_str().unwrap()]));
    std::fs::remove_file(src.join("c")).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    assert_success(&env.vault(&["forget", "--keep-last", "1"]));
    let packs_before = env.objects_under("data");
    // 6 MB still used in the one data pack: at 300 KiB/s, ~20 s to repack.
    let child = env.spawn(&[
        "prune",
        "--max-unused",
        "0",
        "--instant-delete",
        "--limit-upload",
        "300",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let out = interrupt(child);
    assert_code(&out, 130);
    let packs_after = env.objects_under("data");
    assert!(
        packs_before.iter().all(|p| packs_after.contains(p)),
        "a pack was deleted"
    );
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
    let target = env.path("r");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
}

/// Two prunes with `--delete-margin 0s` beside a running backup delete
/// packs it uploaded and has not indexed yet. That backup fails; it must
/// not leave those packs in an index file, or the next backup would
/// deduplicate against them and report success for data that is gone.
#[test]
fn packs_deleted_under_a_backup_are_not_indexed_and_the_next_backup_stores_them_again() {
    let env = Env::with_small_packs(Backend::Local);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), pseudo_random(6_000_000, 77)).unwrap();
    // ~6 s at 1000 KiB/s: packs are uploaded one by one, indexed at the end.
    let backup = env.spawn(&[
        "backup",
        src.to_str().unwrap(),
        "--limit-upload",
        "1000",
        "--compression",
        "none",
    ]);
    // The prunes start once a pack is uploaded, however slow the machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.objects_under("data").is_empty() {
        assert!(Instant::now() < deadline, "no pack was uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..2 {
        assert_success(&env.vault(&["prune", "--delete-margin", "0s"]));
    }
    let first = backup.wait_with_output().unwrap();
    assert!(!first.status.success(), "the backup lost packs under it");
    assert!(env.snapshots().is_empty());
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
    let target = env.path("r");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    assert_eq!(
        std::fs::read(target.join(src.strip_prefix("/").unwrap()).join("big.bin")).unwrap(),
        pseudo_random(6_000_000, 77)
    );
}

/// A local repository keeps the temporary file of a write killed half-way
/// (`.tmp-*`, never listed); prune removes those untouched for an hour and
/// leaves a fresh one, which may be a running backup's.
#[test]
fn prune_removes_temporary_files_of_writes_that_died() {
    let env = Env::new();
    let dir = std::path::Path::new(&env.repo).join("data/ab");
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join(".tmp-00000000deadbeef");
    let fresh = dir.join(".tmp-00000000cafef00d");
    std::fs::write(&stale, vec![7u8; 100_000]).unwrap();
    std::fs::write(&fresh, vec![7u8; 100_000]).unwrap();
    let two_hours_ago =
        filetime::FileTime::from_unix_time(jiff::Timestamp::now().as_second() - 7200, 0);
    filetime::set_file_mtime(&stale, two_hours_ago).unwrap();
    let v = env.json(&["prune"]);
    assert_eq!(v["temporaries_removed"], 1, "{v}");
    assert!(!stale.exists());
    assert!(fresh.exists());
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
}

/// Two backups storing the same new data at once both upload it: the
/// second copy is unused space, which prune reports and reclaims (it
/// counted every copy of a used blob as used and never removed them).
#[test]
fn prune_reclaims_copies_that_concurrent_backups_stored_twice() {
    let env = Env::with_small_packs(Backend::Local);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("shared.bin"), pseudo_random(3_000_000, 5)).unwrap();
    // Both start before either has indexed anything: ~3 s each.
    let backups: Vec<_> = (0..2)
        .map(|_| {
            env.spawn(&[
                "backup",
                src.to_str().unwrap(),
                "--compression",
                "none",
                "--limit-upload",
                "1000",
            ])
        })
        .collect();
    for b in backups {
        let out = b.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let data_bytes = |env: &Env| -> u64 {
        env.objects()
            .iter()
            .filter(|(p, _)| p.starts_with("data/"))
            .map(|(_, s)| s)
            .sum()
    };
    assert!(data_bytes(&env) > 5_500_000, "both backups stored the data");
    let plan = env.json(&["prune", "--dry-run"]);
    assert!(
        plan["unused_bytes"].as_u64().unwrap_or(0) > 2_500_000,
        "the second copy is unused: {plan}"
    );
    let out = env.vault(&["prune", "--instant-delete"]);
    assert_success(&out);
    // Nothing waits for a later prune, so nothing is said to.
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = said.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("deleted") && !summary.contains("marked"),
        "{said}"
    );
    assert!(data_bytes(&env) < 3_500_000, "{}", data_bytes(&env));
    let (code, v) = check_verify(&env);
    assert_eq!(code, 0, "{v}");
    let target = env.path("r");
    assert_success(&env.vault(&["restore", "latest", "--target", target.to_str().unwrap()]));
    assert_eq!(
        std::fs::read(
            target
                .join(src.strip_prefix("/").unwrap())
                .join("shared.bin")
        )
        .unwrap(),
        pseudo_random(3_000_000, 5)
    );
}

/// `retention = {}` on a source opts it out of the default policy: forget
/// keeps every snapshot of it and still applies the others' policies. A
/// policy without rules never removes anything; when no source has one,
/// forget refuses as it does without any policy.
#[test]
fn an_empty_retention_table_keeps_that_source_and_forgets_the_others() {
    let env = Env::new();
    let config = env.path("vault.toml");
    let write = |text: &str| std::fs::write(&config, text).unwrap();
    let forget = |extra: &[&str]| {
        let mut args = vec!["forget"];
        args.extend_from_slice(extra);
        env.command(&args)
            .env("VAULT_CONFIG", &config)
            .output()
            .unwrap()
    };
    let sources = r#"
[[source]]
name = "archive"
kind = "command"
command = ["echo", "archive"]
retention = {}

[[source]]
name = "app"
kind = "command"
command = ["echo", "app"]
"#;
    write(&format!("[retention]\nkeep_last = 1\n{sources}"));
    for day in 1..=3 {
        let time = format!("2026-03-{day:02} 03:00:00");
        let out = env
            .command(&["backup", "--time", &time])
            .env("VAULT_CONFIG", &config)
            .output()
            .unwrap();
        assert_success(&out);
    }
    let tagged = |tag: &str| {
        env.snapshots()
            .iter()
            .filter(|s| s["tags"].as_array().unwrap().iter().any(|t| t == tag))
            .count()
    };
    let out = forget(&[]);
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("source archive: its retention has no rule"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(tagged("app"), 1);
    assert_eq!(tagged("archive"), 3);

    // No source with a rule: refused, naming the empty table; nothing goes.
    write(sources);
    let out = forget(&[]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("no retention policy") && stderr(&out).contains("archive"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tagged("archive"), 3);
}
