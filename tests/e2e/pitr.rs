//! PostgreSQL point-in-time recovery against a real server: WAL archived
//! by `archive_command = 'vault wal push %p'`, a physical base backup,
//! rows committed one by one with their commit times, a restore to a time
//! between two of them, and PostgreSQL started on the restored directory
//! holding exactly the rows committed before that time. A missing segment is
//! reported by `check` and by the restore before anything is written.
//!
//! PostgreSQL runs as the `postgres` user (it refuses root), and so does
//! every vault command here (as `archive_command` would), in a work
//! directory that user owns. Needs root; without PostgreSQL (and without
//! VAULT_REQUIRE_DB=1) it prints a notice and passes trivially.

use crate::support::{assert_code, assert_success, stderr};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Pitr {
    dir: PathBuf,
    config: PathBuf,
    uid: u32,
    gid: u32,
    pg: HashMap<String, String>,
}

impl Pitr {
    fn vault(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vault"))
            .args(args)
            .env("VAULT_CONFIG", &self.config)
            .env_remove("VAULT_REPOSITORY")
            .env_remove("VAULT_PASSWORD")
            .env_remove("VAULT_PASSWORD_FILE")
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .unwrap()
    }

    fn psql(&self, port: &str, sql: &str) -> String {
        let out = Command::new(format!("{}/psql", self.pg["VAULT_TEST_PG_BIN"]))
            .args(["-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={port} user=vault_test dbname=vault_test"
            ))
            .args(["-c", sql])
            .env("PGPASSFILE", self.dir.join("pgpass-any-port"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn pg_ctl(&self, data: &Path, args: &[&str]) -> Output {
        Command::new(format!("{}/pg_ctl", self.pg["VAULT_TEST_PG_BIN"]))
            .arg("-D")
            .arg(data)
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .unwrap()
    }

    fn wal_objects(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        crate::support::walk_files(&self.dir.join("repo/wal"), &mut |p| {
            out.push(p.to_path_buf())
        });
        out.sort();
        out
    }
}

fn setup() -> Option<Pitr> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("NOTICE: the PITR test needs root (PostgreSQL runs as the postgres user)");
        return None;
    }
    let user = nix::unistd::User::from_name("postgres").ok().flatten()?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let dir = std::env::temp_dir().join(format!("vault-pitr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let vault = env!("CARGO_BIN_EXE_vault");
    let config = dir.join("vault.toml");
    let archive = format!(
        "archive_command='{vault} --config {} wal push %p'",
        config.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/start-postgres.sh"))
        .args(["", "archive_mode=on", &archive, "wal_level=replica"])
        .env("VAULT_TEST_PARENT_PID", std::process::id().to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            std::env::var_os("VAULT_REQUIRE_DB").is_none(),
            "start-postgres.sh failed: {msg}"
        );
        eprintln!("NOTICE: no PostgreSQL, skipping the PITR test: {msg}");
        return None;
    }
    let pg: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("export ")?.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('\'').to_owned()))
        })
        .collect();
    // The dump tools run as postgres too: give them their own pgpass.
    let passfile = dir.join("pgpass");
    std::fs::copy(&pg["VAULT_TEST_PG_PASSFILE"], &passfile).unwrap();
    std::fs::write(dir.join("pass"), "pitr-test-password\n").unwrap();
    // The restored server listens on another port: same password, any port.
    let line = std::fs::read_to_string(&passfile).unwrap();
    let any: String = line
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.splitn(5, ':').collect();
            if f.len() == 5 {
                f[1] = "*";
            }
            f.join(":") + "\n"
        })
        .collect();
    std::fs::write(dir.join("pgpass-any-port"), any).unwrap();
    std::fs::set_permissions(
        dir.join("pgpass-any-port"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{repo}\"\npassword_file = \"{pass}\"\n\n[[source]]\nname = \"pgdb\"\nkind = \"postgres\"\ndatabase = \"vault_test\"\nconnection = \"host=127.0.0.1 port={port} user=vault_test\"\npasswfile_placeholder = 0\nbin_dir = \"{bin}\"\n\n[notify]\nstatus_file = \"{status}\"\n",
            status = dir.join("status.json").display(),
            repo = dir.join("repo").display(),
            pass = dir.join("pass").display(),
            port = pg["VAULT_TEST_PG_PORT"],
            bin = pg["VAULT_TEST_PG_BIN"],
        )
        .replace("passwfile_placeholder = 0", &format!("passfile = \"{}\"", passfile.display())),
    )
    .unwrap();
    for p in [&dir, &passfile, &dir.join("pass"), &config] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    for (p, mode) in [
        (&dir, 0o755),
        (&passfile, 0o600),
        (&dir.join("pass"), 0o600),
        (&config, 0o600),
    ] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    Some(Pitr {
        dir,
        config,
        uid,
        gid,
        pg,
    })
}

#[test]
fn restore_to_a_second_between_two_commits_replays_exactly_up_to_it() {
    let Some(t) = setup() else { return };
    let port = t.pg["VAULT_TEST_PG_PORT"].clone();
    assert_success(&t.vault(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]));
    t.psql(
        &port,
        "CREATE TABLE events (id int primary key, at timestamptz)",
    );
    let out = t.vault(&["backup", "pgdb", "--physical"]);
    assert_success(&out);
    // One row per commit, with the commit's time; a segment switch between
    // some of them so the rows span several archived segments.
    let mut times = Vec::new();
    for i in 1..=8 {
        let at = t.psql(&port, &format!("INSERT INTO events VALUES ({i}, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"));
        times.push(at);
        if i % 3 == 0 {
            t.psql(&port, "SELECT pg_switch_wal()");
        }
        std::thread::sleep(Duration::from_millis(600));
    }
    let last = t.psql(&port, "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.psql(
        &port,
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < last
    {
        assert!(Instant::now() < deadline, "WAL {last} was never archived");
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = t.vault(&["wal", "list", "--json"]);
    assert_success(&listed);
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(list["files"].as_array().unwrap().len() >= 4, "{list}");
    assert!(list["gaps"].as_array().unwrap().is_empty(), "{list}");
    // Pushing an archived segment again: identical succeeds, different fails.
    let seg = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n.as_str().unwrap().len() == 24)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let copy = t.dir.join(&seg);
    let fetched = t.vault(&["wal", "fetch", &seg, copy.to_str().unwrap()]);
    assert_success(&fetched);
    assert_success(&t.vault(&["wal", "push", copy.to_str().unwrap()]));
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let out = t.vault(&["wal", "push", copy.to_str().unwrap()]);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    // A file the archive does not have: the clean "not found" code.
    assert_code(
        &t.vault(&[
            "wal",
            "fetch",
            "00000099.history",
            t.dir.join("h").to_str().unwrap(),
        ]),
        4,
    );

    // Restore to halfway between commit 5 and commit 6.
    let t5: jiff::Timestamp = times[4].parse().unwrap();
    let t6: jiff::Timestamp = times[5].parse().unwrap();
    let mid =
        jiff::Timestamp::from_microsecond((t5.as_microsecond() + t6.as_microsecond()) / 2).unwrap();
    let target = t.dir.join("restored");
    let out = t.vault(&[
        "restore",
        "pgdb",
        "--pitr",
        "--at",
        &mid.to_string(),
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_success(&out);
    let port2 = (port.parse::<u32>().unwrap() + 1).to_string();
    let started = t.pg_ctl(
        &target,
        &[
            "-w",
            "-t",
            "120",
            "-l",
            t.dir.join("restored.log").to_str().unwrap(),
            "-o",
            &format!("-p {port2} -c archive_mode=off"),
            "start",
        ],
    );
    let log = std::fs::read_to_string(t.dir.join("restored.log")).unwrap_or_default();
    assert!(
        started.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&started.stderr)
    );
    // Wait for recovery to reach the target and promote.
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.psql(&port2, "SELECT pg_is_in_recovery()") == "t" {
        assert!(Instant::now() < deadline, "recovery never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids = t.psql(
        &port2,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM events",
    );
    let _ = t.pg_ctl(&target, &["-m", "fast", "stop"]);
    assert_eq!(ids, "1,2,3,4,5", "restored to {mid}: {log}");

    // A missing segment: check names it, and restore refuses up front.
    let victims: Vec<PathBuf> = t
        .wal_objects()
        .into_iter()
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    let victim = &victims[victims.len() - 2];
    std::fs::remove_file(victim).unwrap();
    let out = t.vault(&["check", "--json"]);
    assert_code(&out, 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "wal_gap"),
        "{report}"
    );
    let target2 = t.dir.join("restored2");
    let out = t.vault(&[
        "restore",
        "pgdb",
        "--pitr",
        "--target",
        target2.to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("gap"), "{}", stderr(&out));
    assert!(!target2.join("PG_VERSION").exists());
    let _ = std::fs::remove_dir_all(&t.dir);
}
