//! PostgreSQL point-in-time recovery against a real server, on both
//! backends: WAL archived by `archive_command = 'vault wal push %p'`, a
//! physical base backup, rows committed one by one with their commit times,
//! a restore to a time between two of them, and PostgreSQL started on the
//! restored directory holding exactly the rows committed before that time.
//! That restored server goes on, archiving, on timeline 2; restores to
//! times on timeline 1 (before and after the fork point) and on timeline 2
//! each hold exactly their rows. A missing segment is reported by `check`
//! and by the restore before anything is written.
//!
//! PostgreSQL runs as the `postgres` user (it refuses root), and so does
//! every vault command here (as `archive_command` would), in a work
//! directory that user owns. Needs root; without PostgreSQL (and without
//! VAULT_REQUIRE_DB=1) it prints a notice and passes trivially. The exit
//! codes of `wal fetch` are also checked without PostgreSQL, on segments
//! of made-up bytes.

use crate::support::{
    Backend, Env, S3Server, assert_code, assert_success, pseudo_random, random_hex, s3, stderr,
};
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
    /// The repository's storage, opened directly (to damage it).
    store: Box<dyn vault_engine::backend::Backend>,
}

impl Drop for Pitr {
    /// The data directories, WAL archive and restores: ~450 MB a test,
    /// which every run left in the temporary directory.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL server started on a restored directory, stopped on drop.
struct Restored<'a> {
    t: &'a Pitr,
    data: PathBuf,
    port: String,
}

impl Drop for Restored<'_> {
    fn drop(&mut self) {
        let _ = self.t.pg_ctl(&self.data, &["-m", "fast", "-w", "stop"]);
    }
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

    /// Commits row `id` and returns its commit time (UTC, microseconds).
    fn commit(&self, port: &str, id: u32) -> jiff::Timestamp {
        let at = self.psql(port, &format!("INSERT INTO events VALUES ({id}, clock_timestamp()) RETURNING to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"));
        at.parse().unwrap()
    }

    fn rows(&self, port: &str) -> String {
        self.psql(
            port,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM events",
        )
    }

    /// Switches to a new segment and waits until the server has archived
    /// everything up to it.
    fn archive_all(&self, port: &str) {
        let last = self.psql(port, "SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql(
            port,
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        ) < last
        {
            assert!(Instant::now() < deadline, "WAL {last} was never archived");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `vault restore pgdb --pitr [--at AT] --target DIR`; its JSON report.
    fn restore(&self, at: Option<jiff::Timestamp>, dir: &str) -> serde_json::Value {
        self.restore_with(at, dir, &[])
    }

    /// [`Pitr::restore`] with more arguments.
    fn restore_with(
        &self,
        at: Option<jiff::Timestamp>,
        dir: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let out = self.restore_output(at, dir, extra);
        assert_success(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// [`Pitr::restore_with`], whatever its outcome.
    fn restore_output(&self, at: Option<jiff::Timestamp>, dir: &str, extra: &[&str]) -> Output {
        let target = self.dir.join(dir);
        let at = at.map(|a| a.to_string());
        let mut args = vec!["--json", "restore", "pgdb", "--pitr"];
        args.extend(extra);
        if let Some(at) = &at {
            args.extend(["--at", at]);
        }
        args.extend(["--target", target.to_str().unwrap()]);
        self.vault(&args)
    }

    /// `pg_ctl start` on a restored directory, whatever the outcome: the
    /// server (stopped when dropped, should it run), pg_ctl's output and
    /// the server log's path.
    fn pg_start(&self, dir: &str, port: &str, options: &str) -> (Restored<'_>, Output, PathBuf) {
        let data = self.dir.join(dir);
        let log = self.dir.join(format!("{dir}.log"));
        let started = self.pg_ctl(
            &data,
            &[
                "-w",
                "-t",
                "120",
                "-l",
                log.to_str().unwrap(),
                "-o",
                &format!("-p {port} {options}"),
                "start",
            ],
        );
        let server = Restored {
            t: self,
            data,
            port: port.to_owned(),
        };
        (server, started, log)
    }

    /// Starts PostgreSQL on a restored directory and waits until recovery
    /// has reached its target and the server is promoted.
    fn start(&self, dir: &str, port: &str, options: &str) -> Restored<'_> {
        let (server, started, log) = self.pg_start(dir, port, options);
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            started.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&started.stderr),
            text()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql(port, "SELECT pg_is_in_recovery()") == "t" {
            assert!(
                Instant::now() < deadline,
                "recovery never finished: {}",
                text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// Restores to `at`, starts a server on it, and returns its rows and
    /// the timeline the restore chose.
    fn rows_at(&self, at: jiff::Timestamp, dir: &str, port: &str) -> (String, u64) {
        let report = self.restore(Some(at), dir);
        // No `-c archive_mode=off`: the restore turns archiving off, or
        // this promoted test server would push its own timeline into the
        // archive the source still writes.
        let server = self.start(dir, port, "");
        assert_eq!(self.psql(&server.port, "SHOW archive_mode"), "off");
        let rows = self.rows(&server.port);
        drop(server);
        (rows, report["timeline"].as_u64().unwrap())
    }
}

fn mid(a: jiff::Timestamp, b: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_microsecond((a.as_microsecond() + b.as_microsecond()) / 2).unwrap()
}

fn setup(backend: Backend) -> Option<Pitr> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("NOTICE: the PITR test needs root (PostgreSQL runs as the postgres user)");
        return None;
    }
    let user = nix::unistd::User::from_name("postgres").ok().flatten()?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let dir = std::env::temp_dir().join(format!(
        "vault-pitr-{}-{}",
        std::process::id(),
        random_hex()
    ));
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
    // The vault processes run as postgres, several from the server's
    // archive_command: the S3 credentials reach them through files named
    // in the config, as they would in production.
    let server: Option<&S3Server> = (backend == Backend::S3).then(s3);
    let (url, s3_settings) = match server {
        None => (
            dir.join("repo").to_string_lossy().into_owned(),
            String::new(),
        ),
        Some(server) => {
            let (id, secret) = (dir.join("s3-key-id"), dir.join("s3-secret"));
            std::fs::write(&id, format!("{}\n", server.access_key_id)).unwrap();
            std::fs::write(&secret, format!("{}\n", server.secret_access_key)).unwrap();
            for p in [&id, &secret] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
                std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .unwrap();
            }
            (
                server.url(&format!("pitr-{}", random_hex())),
                format!(
                    "access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\nregion = \"{}\"\n",
                    id.display(),
                    secret.display(),
                    server.region
                ),
            )
        }
    };
    let store = vault_engine::backend::open_url(
        &url,
        &server.map_or_else(Default::default, S3Server::options),
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{repo}\"\npassword_file = \"{pass}\"\n{s3_settings}\n[[source]]\nname = \"pgdb\"\nkind = \"postgres\"\ndatabase = \"vault_test\"\nconnection = \"host=127.0.0.1 port={port} user=vault_test\"\npasswfile_placeholder = 0\nbin_dir = \"{bin}\"\n\n[notify]\nstatus_file = \"{status}\"\n",
            status = dir.join("status.json").display(),
            repo = url,
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
        store,
    })
}

/// [`setup`], then a repository, the `events` table and a physical base
/// backup; the test server's port.
fn with_base_backup(backend: Backend) -> Option<(Pitr, String)> {
    let t = setup(backend)?;
    let port = t.pg["VAULT_TEST_PG_PORT"].clone();
    assert_success(&t.vault(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]));
    t.psql(
        &port,
        "CREATE TABLE events (id int primary key, at timestamptz)",
    );
    assert_success(&t.vault(&["backup", "pgdb", "--physical"]));
    Some((t, port))
}

/// The storage key of an archived WAL file.
fn wal_key(store: &dyn vault_engine::backend::Backend, name: &str) -> String {
    store
        .list("wal/")
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .find(|k| k.ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("{name} is not archived"))
}

backend_test!(restore_to_a_time_between_two_commits_on_either_timeline_replays_exactly_up_to_it);
fn restore_to_a_time_between_two_commits_on_either_timeline_replays_exactly_up_to_it(
    backend: Backend,
) {
    let Some((t, port)) = with_base_backup(backend) else {
        return;
    };
    let port_tl2 = (port.parse::<u32>().unwrap() + 1).to_string();
    let port_check = (port.parse::<u32>().unwrap() + 2).to_string();
    // One row per commit, with the commit's time; a segment switch between
    // some of them so the rows span several archived segments.
    let mut times = vec![jiff::Timestamp::UNIX_EPOCH];
    for i in 1..=8 {
        times.push(t.commit(&port, i));
        if i % 3 == 0 {
            t.psql(&port, "SELECT pg_switch_wal()");
        }
        std::thread::sleep(Duration::from_millis(600));
    }
    t.archive_all(&port);
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

    // Restore to halfway between commit 5 and commit 6, and keep that
    // server as a new primary: it archives 00000002.history and goes on on
    // timeline 2 (--keep-archiving: archive_command as in the base backup),
    // while the original server stays on timeline 1 with rows 6 to 8.
    let report = t.restore_with(Some(mid(times[5], times[6])), "tl2", &["--keep-archiving"]);
    assert_eq!(report["timeline"], 1, "{report}");
    let start = report["start_segment"].as_str().unwrap().to_owned();
    let tl2 = t.start("tl2", &port_tl2, "");
    assert_eq!(t.rows(&port_tl2), "1,2,3,4,5");
    let wal_file = t.psql(&port_tl2, "SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(wal_file.starts_with("00000002"), "{wal_file}");
    let mut tl2_times = HashMap::new();
    for i in 101..=104 {
        tl2_times.insert(i, t.commit(&port_tl2, i));
        std::thread::sleep(Duration::from_millis(600));
    }
    t.archive_all(&port_tl2);
    drop(tl2);

    // Both timelines are listed, the fork with them, and neither list nor
    // check sees a gap where timeline 2 begins mid-way.
    let listed = t.vault(&["wal", "list", "--json"]);
    assert_success(&listed);
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list["timelines"], serde_json::json!([1, 2]), "{list}");
    assert_eq!(list["histories"][0]["timeline"], 2, "{list}");
    assert_eq!(list["histories"][0]["parent"], 1, "{list}");
    assert!(list["gaps"].as_array().unwrap().is_empty(), "{list}");
    let files: Vec<&str> = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(files.contains(&"00000002.history"), "{list}");
    assert!(
        files
            .iter()
            .any(|f| f.len() == 24 && f.starts_with("00000002")),
        "{list}"
    );
    let out = t.vault(&["check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "wal_gap"),
        "{report}"
    );
    assert_success(&out);

    // On timeline 1 before the fork point.
    assert_eq!(
        t.rows_at(mid(times[2], times[3]), "t0", &port_check),
        ("1,2".to_owned(), 1)
    );
    // On timeline 1 after the fork point but before timeline 2 existed:
    // what the database held then. Following the newest timeline (what
    // PostgreSQL does by default) would give 1 to 5.
    assert_eq!(
        t.rows_at(mid(times[6], times[7]), "t1", &port_check),
        ("1,2,3,4,5,6".to_owned(), 1)
    );
    // On timeline 2.
    assert_eq!(
        t.rows_at(mid(tl2_times[&102], tl2_times[&103]), "t2", &port_check),
        ("1,2,3,4,5,101,102".to_owned(), 2)
    );

    // A missing segment on the path to timeline 2 (before the fork): check
    // names it, and restore refuses up front.
    let (tli, seg) = vault_engine::wal::position(&start).unwrap();
    let victim = vault_engine::wal::segment_name(tli, seg + 1);
    t.store.delete(&wal_key(&*t.store, &victim)).unwrap();
    let out = t.vault(&["check", "--json"]);
    // 5: check found errors.
    assert_code(&out, 5);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "wal_gap"),
        "{report}"
    );
    let target = t.dir.join("after-gap");
    let out = t.vault(&[
        "restore",
        "pgdb",
        "--pitr",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("gap"), "{}", stderr(&out));
    assert!(!target.join("PG_VERSION").exists());
}

/// `vault wal fetch` is PostgreSQL's `restore_command`, and PostgreSQL
/// reads any exit status up to 125 as "not archived": it ends recovery
/// there and promotes. Only a file the archive lacks may exit 4; damage, a
/// wrong password, a missing repository, an unreadable config or a bad
/// command line exit 255, and leave no partial file behind.
#[test]
fn wal_fetch_fails_above_125_unless_the_file_is_not_archived() {
    let env = Env::new();
    let name = "000000010000000000000003";
    let segment = env.path(name);
    std::fs::write(&segment, pseudo_random(256 * 1024, 3)).unwrap();
    assert_success(&env.vault(&["wal", "push", "--source", "pgdb", segment.to_str().unwrap()]));
    std::fs::create_dir(env.path("pg_wal")).unwrap();
    let dest = env.path("pg_wal/RECOVERYXLOG");
    let dest_arg = dest.to_str().unwrap();
    let fetch = |extra: &[&str], file: &str| {
        let mut args = vec!["wal", "fetch", "--source", "pgdb"];
        args.extend_from_slice(extra);
        args.extend([file, dest_arg]);
        env.vault(&args)
    };
    assert_success(&fetch(&[], name));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&segment).unwrap()
    );
    std::fs::remove_file(&dest).unwrap();
    assert_code(&fetch(&[], "000000010000000000000004"), 4);
    assert_code(&fetch(&[], "00000002.history"), 4);

    let left_behind = || {
        let names: Vec<_> = std::fs::read_dir(env.path("pg_wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "left in pg_wal: {names:?}");
    };
    assert_code(&fetch(&["--no-such-flag"], name), 255);
    assert_code(&fetch(&["--config", "/nonexistent/vault.toml"], name), 255);
    let wrong = env.path("wrong-password");
    std::fs::write(&wrong, "not the password\n").unwrap();
    assert_code(
        &env.command(&["wal", "fetch", "--source", "pgdb", name, dest_arg])
            .env("VAULT_PASSWORD_FILE", &wrong)
            .output()
            .unwrap(),
        255,
    );
    assert_code(
        &env.command(&["wal", "fetch", "--source", "pgdb", name, dest_arg])
            .env("VAULT_REPOSITORY", env.path("moved-away"))
            .output()
            .unwrap(),
        255,
    );
    left_behind();
    // The record fails authentication once the fetch has created its
    // temporary file.
    let key = wal_key(env.store(), name);
    env.flip(&key, 40);
    let out = fetch(&[], name);
    assert_code(&out, 255);
    assert!(stderr(&out).contains(name), "{}", stderr(&out));
    left_behind();
}

/// A segment that is archived but cannot be fetched (its record is
/// damaged) stops PostgreSQL's recovery with an error. Before, `wal fetch`
/// exited 5 there, PostgreSQL took the segment for the end of the archive
/// and promoted without the commits in it and after it.
#[test]
fn a_segment_that_fails_to_fetch_stops_recovery_instead_of_promoting() {
    let Some((t, port)) = with_base_backup(Backend::Local) else {
        return;
    };
    t.commit(&port, 1);
    // Where recovery finds the commit, past the end of the base backup.
    let victim = t.psql(&port, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    t.psql(&port, "SELECT pg_switch_wal()");
    t.commit(&port, 2);
    t.archive_all(&port);
    t.restore(None, "damaged");
    let key = wal_key(&*t.store, &victim);
    let mut bytes = t.store.get(&key, u64::MAX).unwrap().to_vec();
    bytes[40] ^= 0x40;
    t.store
        .put(
            &key,
            bytes.into(),
            vault_engine::backend::PutMode::Overwrite,
        )
        .unwrap();

    let restore_port = (port.parse::<u32>().unwrap() + 3).to_string();
    let (_server, started, log) = t.pg_start("damaged", &restore_port, "");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !started.status.success(),
        "PostgreSQL promoted without segment {victim}: {log}"
    );
    assert!(
        log.contains(&format!("could not restore file \"{victim}\"")),
        "{log}"
    );
    assert!(t.dir.join("damaged/recovery.signal").exists());
}

/// A base backup of a cluster that was itself restored carries that
/// restore's recovery settings in `postgresql.auto.conf` (here set with
/// `ALTER SYSTEM`, which the running server ignores). A restore to the end
/// of the archive used to append its own settings after them: PostgreSQL
/// kept the old `recovery_target_name`, stopped there and promoted without
/// row 3. Settings in `postgresql.conf` are left alone, with a warning.
#[test]
fn recovery_settings_that_came_with_the_base_backup_do_not_steer_the_restore() {
    let Some((t, port)) = with_base_backup(Backend::Local) else {
        return;
    };
    t.psql(&port, "ALTER SYSTEM SET recovery_target_name = 'old'");
    t.psql(&port, "ALTER SYSTEM SET recovery_target_action = 'promote'");
    t.psql(&port, "ALTER SYSTEM SET restore_command = 'false'");
    let conf = std::path::Path::new(&t.pg["VAULT_TEST_PG_DATA"]).join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("recovery_target_inclusive = on\n");
    std::fs::write(&conf, text).unwrap();
    assert_success(&t.vault(&["backup", "pgdb", "--physical"]));
    t.commit(&port, 1);
    t.commit(&port, 2);
    t.psql(&port, "SELECT pg_create_restore_point('old')");
    t.commit(&port, 3);
    t.archive_all(&port);

    let out = t.restore_output(None, "end", &[]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("recovery_target_name = 'old'"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("postgresql.conf sets \"recovery_target_inclusive = on\""),
        "{}",
        stderr(&out)
    );
    let auto = std::fs::read_to_string(t.dir.join("end/postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("recovery_target_name"), "{auto}");
    assert_eq!(auto.matches("restore_command").count(), 1, "{auto}");
    let port_end = (port.parse::<u32>().unwrap() + 4).to_string();
    let server = t.start("end", &port_end, "");
    assert_eq!(t.rows(&server.port), "1,2,3");
}

/// PostgreSQL runs `restore_command` through `/bin/sh` from the data
/// directory. A config given by a relative path with a space in it used to
/// be written as given, unquoted: no fetch could find it.
#[test]
fn restore_command_works_with_a_relative_config_path_with_a_space() {
    let Some((t, port)) = with_base_backup(Backend::Local) else {
        return;
    };
    t.commit(&port, 1);
    t.commit(&port, 2);
    t.archive_all(&port);
    let dir = t.dir.join("my conf");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&t.config, dir.join("vault.toml")).unwrap();
    for p in [&dir, &dir.join("vault.toml")] {
        std::os::unix::fs::chown(p, Some(t.uid), Some(t.gid)).unwrap();
    }
    t.restore_with(None, "relative", &["--config", "my conf/vault.toml"]);
    let auto = std::fs::read_to_string(t.dir.join("relative/postgresql.auto.conf")).unwrap();
    let conf = dir.canonicalize().unwrap();
    assert!(
        auto.contains(&format!("--config ''{}/vault.toml''", conf.display())),
        "{auto}"
    );
    let port_rel = (port.parse::<u32>().unwrap() + 6).to_string();
    let server = t.start("relative", &port_rel, "");
    assert_eq!(t.rows(&server.port), "1,2");
}

/// With `--at`, only the WAL up to the target is needed: a gap after it
/// does not refuse the restore (a warning says recovery needs the target
/// before the gap), and a target after the newest archived segment is
/// warned about, naming it. Without `--at`, a gap still refuses.
#[test]
fn restore_at_a_time_before_a_gap_works_and_a_time_after_the_archive_is_warned_about() {
    let Some((t, port)) = with_base_backup(Backend::Local) else {
        return;
    };
    let mut times = vec![jiff::Timestamp::UNIX_EPOCH];
    let mut victim = String::new();
    for i in 1..=5 {
        times.push(t.commit(&port, i));
        if i == 4 {
            victim = t.psql(&port, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
        }
        std::thread::sleep(Duration::from_millis(300));
        if i >= 3 {
            t.psql(&port, "SELECT pg_switch_wal()");
        }
    }
    t.archive_all(&port);
    let files = t.vault(&["wal", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&files.stdout).unwrap();
    let newest = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str().filter(|f| f.len() == 24))
        .max()
        .unwrap()
        .to_owned();
    let out = t.restore_output(Some(jiff::Timestamp::now()), "later", &[]);
    assert_success(&out);
    assert!(
        stderr(&out).contains(&format!("newest archived WAL segment, {newest}")),
        "{}",
        stderr(&out)
    );
    // Rows 1 to 3 share a segment; 4 and 5 each have one of their own.
    // Without the segment holding row 4, recovery still reaches a time
    // between rows 2 and 3.
    t.store.delete(&wal_key(&*t.store, &victim)).unwrap();
    let out = t.restore_output(None, "to-the-end", &[]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("gap"), "{}", stderr(&out));
    let out = t.restore_output(Some(mid(times[2], times[3])), "before-gap", &[]);
    assert_success(&out);
    assert!(
        stderr(&out).contains(&format!("from {victim}")),
        "{}",
        stderr(&out)
    );
    let port_gap = (port.parse::<u32>().unwrap() + 5).to_string();
    let server = t.start("before-gap", &port_gap, "");
    assert_eq!(t.rows(&server.port), "1,2");
}

/// `--keep-archiving` keeps the old server's `archive_command`, which names
/// the old host's files. On a new host the new primary then archives
/// nothing, and only PostgreSQL's log says so. The restore shows the
/// command and names what this host lacks: here the password file that
/// the config named, moved away (this host gives its own). Without
/// `--keep-archiving`, archiving is off and nothing is said.
#[test]
fn keep_archiving_shows_archive_command_and_the_files_it_needs_that_are_missing() {
    let Some((t, port)) = with_base_backup(Backend::Local) else {
        return;
    };
    t.commit(&port, 1);
    t.archive_all(&port);
    let out = t.restore_output(None, "test-copy", &[]);
    assert_success(&out);
    assert!(
        !stderr(&out).contains("archive_command"),
        "{}",
        stderr(&out)
    );

    let (pass, new_pass) = (t.dir.join("pass"), t.dir.join("new-pass"));
    std::fs::rename(&pass, &new_pass).unwrap();
    let new_pass = new_pass.to_str().unwrap();
    let out = t.restore_output(
        None,
        "primary",
        &["--keep-archiving", "--password-file", new_pass],
    );
    assert_success(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "archive_command = '{} --config {} wal push %p'",
            env!("CARGO_BIN_EXE_vault"),
            t.config.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "needs files this host does not have: {} (password_file in {})",
            pass.display(),
            t.config.display()
        )),
        "{err}"
    );
    let auto = std::fs::read_to_string(t.dir.join("primary/postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("archive_mode"), "{auto}");
}

/// `restore_command` carries no credentials and PostgreSQL runs it with
/// its own environment: S3 credentials the restore found only in `AWS_*`
/// variables are warned about (without printing them), before anything
/// is written; credentials from the config's key files are not.
#[test]
fn pitr_restore_warns_when_s3_credentials_come_only_from_the_environment() {
    if !Backend::S3.available() {
        return;
    }
    let env = Env::on(Backend::S3);
    let server = env.server.clone().unwrap();
    let source = "[[source]]\nname = \"pgdb\"\nkind = \"postgres\"\ndatabase = \"x\"\n";
    let (id, secret) = (env.path("s3-id"), env.path("s3-secret"));
    for (file, value) in [
        (&id, &server.access_key_id),
        (&secret, &server.secret_access_key),
    ] {
        std::fs::write(file, format!("{value}\n")).unwrap();
        crate::support::private(file);
    }
    let with_files = format!(
        "[repository]\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n{source}",
        id.display(),
        secret.display()
    );
    for (text, warned) in [(source.to_owned(), true), (with_files, false)] {
        let config = env.path("vault.toml");
        std::fs::write(&config, text).unwrap();
        crate::support::private(&config);
        let target = env.path("target");
        let out = env
            .command(&[
                "restore",
                "pgdb",
                "--pitr",
                "--target",
                target.to_str().unwrap(),
            ])
            .env("VAULT_CONFIG", &config)
            .output()
            .unwrap();
        // No base backup: the restore fails after the checks.
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("no physical snapshot"), "{err}");
        assert_eq!(
            err.contains(
                "the S3 credentials came from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in this command's environment"
            ),
            warned,
            "{err}"
        );
        assert!(!err.contains(&server.secret_access_key), "{err}");
        assert!(!target.exists());
    }
}

/// `wal list` names its source positionally (as it always did) or with
/// `--source`, as `wal push` and `wal fetch` do.
#[test]
fn wal_list_takes_the_source_positionally_or_with_source() {
    let env = Env::new();
    let name = "000000010000000000000007";
    let segment = env.path(name);
    std::fs::write(&segment, pseudo_random(4096, 7)).unwrap();
    assert_success(&env.vault(&["wal", "push", "--source", "pgdb", segment.to_str().unwrap()]));
    for args in [
        &["wal", "list", "pgdb"][..],
        &["wal", "list", "--source", "pgdb"],
    ] {
        let out = env.vault(args);
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(name),
            "{args:?}"
        );
    }
    assert_code(&env.vault(&["wal", "list", "pgdb", "--source", "other"]), 2);
}

/// `check` names a base backup whose first WAL segment is not archived
/// (deleted here; before `backup --physical` refused them, archived
/// elsewhere): it could never be recovered.
#[test]
fn check_reports_a_base_backup_whose_first_wal_segment_is_not_archived() {
    let Some((t, _port)) = with_base_backup(Backend::Local) else {
        return;
    };
    let check = || {
        let out = t.vault(&["check", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let missing = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "base_backup_wal_missing")
            .count();
        (out.status.code(), missing)
    };
    assert_eq!(check(), (Some(0), 0));
    for o in t.store.list("wal/").unwrap() {
        t.store.delete(&o.path).unwrap();
    }
    assert_eq!(check(), (Some(5), 1));
}

/// With a config, `wal push --source` refuses a name no postgres source
/// has: a typo in archive_command would otherwise archive "successfully"
/// where no restore looks.
#[test]
fn wal_push_refuses_a_source_the_config_does_not_have() {
    let env = Env::new();
    let config = env.path("vault.toml");
    std::fs::write(
        &config,
        "[[source]]\nname = \"pgdb\"\nkind = \"postgres\"\ndatabase = \"app\"\n",
    )
    .unwrap();
    let segment = env.path("000000010000000000000007");
    std::fs::write(&segment, pseudo_random(4096, 7)).unwrap();
    let push = |source: &str| {
        env.command(&["wal", "push", "--source", source, segment.to_str().unwrap()])
            .env("VAULT_CONFIG", &config)
            .output()
            .unwrap()
    };
    let out = push("pgbd");
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("no postgres source named \"pgbd\""),
        "{}",
        stderr(&out)
    );
    assert!(env.objects_under("wal").is_empty());
    assert_success(&push("pgdb"));
    assert!(!env.objects_under("wal").is_empty());
}

/// A base backup whose WAL went elsewhere (`archive_command` left at a
/// runbook's `cp`, or another repository) can never be restored: the backup
/// fails (exit 6), naming archive_command, and keeps no snapshot of it.
#[test]
fn a_base_backup_whose_wal_is_archived_elsewhere_fails_and_is_not_kept() {
    let Some((t, port)) = with_base_backup(Backend::Local) else {
        return;
    };
    let physical = || {
        let out = t.vault(&["snapshots", "--tag", "physical", "--json"]);
        assert_success(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(physical(), 1);
    t.psql(&port, "ALTER SYSTEM SET archive_command = 'true'");
    t.psql(&port, "SELECT pg_reload_conf()");
    let out = t.vault(&["backup", "pgdb", "--physical"]);
    assert_code(&out, 6);
    assert!(
        stderr(&out).contains("archive_command") && stderr(&out).contains("not archived"),
        "{}",
        stderr(&out)
    );
    assert_eq!(physical(), 1, "the unrestorable base backup was kept");
    // A drill loads dumps; with base backups only it says so.
    let out = t.vault(&["drill", "pgdb"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("other than physical base backups"),
        "{}",
        stderr(&out)
    );
    // A dump that works does not hide the failing base backups: they are
    // recorded apart.
    assert_success(&t.vault(&["backup", "pgdb"]));
    assert_success(&t.vault(&["drill", "pgdb"]));
    let out = t.vault(&["status", "--json"]);
    assert_code(&out, 1);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &status["sources"][0];
    assert_eq!(row["last_result"], "success", "{status}");
    assert_eq!(row["physical"]["last_result"], "failure", "{status}");
    t.psql(&port, "ALTER SYSTEM RESET archive_command");
    t.psql(&port, "SELECT pg_reload_conf()");
    assert_success(&t.vault(&["backup", "pgdb", "--physical"]));
    assert_eq!(physical(), 2);
    assert_success(&t.vault(&["status"]));
    // Staleness is the dumps': a fresh base backup does not reset it.
    std::thread::sleep(Duration::from_secs(3));
    assert_success(&t.vault(&["backup", "pgdb", "--physical"]));
    let out = t.vault(&["status", "--json", "--max-age", "3s"]);
    assert_code(&out, 1);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["sources"][0]["stale"], true, "{status}");
}
