//! `forget` and `prune` end to end: reasons, refusals, two-phase deletion,
//! space actually reclaimed, locks (exit 11), and prune killed at random
//! points or running beside a backup never losing a kept snapshot.

use crate::support::{Env, assert_code, assert_success, pseudo_random, stderr};
use std::process::Stdio;
use std::time::Duration;

/// Seven daily snapshots, each adding a distinct 300 KB file.
fn daily_repo() -> (Env, std::path::PathBuf) {
    let env = Env::new();
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

#[test]
fn forget_without_policy_is_refused() {
    let (env, _) = daily_repo();
    let out = env.vault(&["forget"]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("no retention policy"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.snapshots().len(), 7);
}

#[test]
fn forget_dry_run_reports_reasons_and_removes_nothing() {
    let (env, _) = daily_repo();
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

#[test]
fn forget_prune_instant_delete_shrinks_and_kept_snapshots_restore() {
    let (env, _) = daily_repo();
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

#[test]
fn prune_marks_first_and_deletes_after_the_margin() {
    let (env, _) = daily_repo();
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

#[test]
fn backup_referencing_a_marked_blob_keeps_its_pack_alive() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), pseudo_random(400_000, 42)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    // Drop the only snapshot: its pack becomes unused and gets marked.
    let id = env.snapshots()[0]["id"].as_str().unwrap().to_owned();
    std::fs::remove_file(std::path::Path::new(&env.repo).join("snapshots").join(&id)).unwrap();
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

#[test]
fn held_lock_exits_11_naming_the_holder_and_stale_locks_are_cleared() {
    let (env, _) = daily_repo();
    let lock = std::path::Path::new(&env.repo).join("locks/exclusive");
    // Catch a prune while it holds the lock, and freeze it there.
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
        for _ in 0..20_000 {
            if lock.exists() {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
                caught = lock.exists();
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
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
    let out = env.vault(&["prune"]);
    assert_code(&out, 11);
    let err = stderr(&out);
    assert!(
        err.contains("locked") && err.contains(&format!("pid {}", holder.id())),
        "{err}"
    );
    // unlock leaves a live lock alone.
    assert_success(&env.vault(&["unlock"]));
    assert!(lock.exists());
    // Kill the holder: its lock is now stale (same host, process gone) and
    // the next prune takes over.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(lock.exists());
    assert_success(&env.vault(&["prune"]));
    assert!(!lock.exists());
}

/// Kill `prune --instant-delete --max-unused 0` at many points; every kept
/// snapshot must still restore and check must pass (possibly after the next
/// prune finishes the job).
#[test]
fn prune_killed_at_random_points_never_loses_a_kept_snapshot() {
    for seed in 0..8u64 {
        let (env, src) = daily_repo();
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
        std::thread::sleep(Duration::from_millis(seed * 37 % 300));
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

/// A backup and a prune at the same time, with many relative timings: both
/// the new snapshot and every kept one restore afterwards.
#[test]
fn backup_beside_prune_finishes_and_everything_restores() {
    for round in 0..4u64 {
        let (env, src) = daily_repo();
        assert_success(&env.vault(&["forget", "--keep-last", "4"]));
        std::fs::write(src.join("new.bin"), pseudo_random(2_000_000, 1000 + round)).unwrap();
        let backup = env
            .command(&["backup", src.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(round * 40));
        let prune = env.vault(&["prune", "--max-unused", "0"]);
        assert_success(&prune);
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
