//! S3 Object Lock (ransomware resistance, issue #8) against a real S3
//! implementation that enforces it: moto's server (Garage has no Object
//! Lock), started by `scripts/start-moto.sh` with a bucket created with
//! Object Lock enabled and one without.
//!
//! The retention actually stored on each object, and the store's refusal to
//! delete a locked version, are read with boto3 (a short python snippet),
//! not through vault, so a vault that only believed it locked would fail.
//! Without `moto_server` the tests print a NOTICE and pass, unless
//! `VAULT_REQUIRE_S3` is set (CI), where they fail.

use crate::support::{Env, S3Server, assert_success, pseudo_random, script, stderr};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

struct Moto {
    lock: S3Server,
    plain: S3Server,
}

fn moto() -> Option<&'static Moto> {
    static MOTO: OnceLock<Option<Moto>> = OnceLock::new();
    MOTO.get_or_init(|| {
        let found = Command::new("sh")
            .args(["-c", "command -v moto_server && python3 -c 'import boto3'"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("VAULT_REQUIRE_S3").is_none_or(|v| v.is_empty()),
                "VAULT_REQUIRE_S3 is set but moto_server/boto3 are missing (pip install 'moto[server]')"
            );
            eprintln!("NOTICE: skipping the Object Lock tests: moto_server is not installed");
            return None;
        }
        let out = Command::new("bash")
            .arg(script("start-moto.sh"))
            .env("VAULT_MOTO_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "start-moto.sh failed");
        let vars: HashMap<String, String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let server = |bucket: &str| S3Server {
            bucket: vars[bucket].clone(),
            ..S3Server::from_vars(&vars)
        };
        Some(Moto {
            lock: server("VAULT_TEST_LOCK_BUCKET"),
            plain: server("VAULT_TEST_PLAIN_BUCKET"),
        })
    })
    .as_ref()
}

/// Runs a boto3 snippet against `server`; `s3`, `bucket` and `prefix` are
/// defined for it. Returns its stdout.
fn boto3(server: &S3Server, env: &Env, code: &str) -> String {
    let prefix = env
        .repo
        .rsplit_once(&format!("/{}/", server.bucket))
        .map(|(_, p)| p.to_owned())
        .unwrap();
    let program = format!(
        "import sys, json, datetime, boto3, botocore\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name=sys.argv[4])\n\
         bucket, prefix = sys.argv[2], sys.argv[3]\n{code}"
    );
    let out = Command::new("python3")
        .args([
            "-c",
            &program,
            &server.endpoint,
            &server.bucket,
            &prefix,
            &server.region,
        ])
        .env("AWS_ACCESS_KEY_ID", &server.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_access_key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn init(env: &Env, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"];
    args.extend_from_slice(extra);
    env.vault(&args)
}

fn two_backups(env: &Env) {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("old"), pseudo_random(300_000, 1)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
    std::fs::remove_file(src.join("old")).unwrap();
    std::fs::write(src.join("new"), pseudo_random(300_000, 2)).unwrap();
    assert_success(&env.vault(&["backup", src.to_str().unwrap()]));
}

#[test]
fn locked_repository_keeps_its_history_through_forget_and_prune() {
    let Some(moto) = moto() else { return };
    let env = Env::uninitialised_on_server(&moto.lock);
    assert_success(&init(&env, &["--object-lock-days", "1"]));
    two_backups(&env);

    // Every object vault wrote carries its own retention, about now + 1 day.
    let listed = boto3(
        &moto.lock,
        &env,
        "now = datetime.datetime.now(datetime.timezone.utc)\n\
         for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix + '/'):\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       h = s3.head_object(Bucket=bucket, Key=o['Key'])\n\
         \x20       until = h.get('ObjectLockRetainUntilDate')\n\
         \x20       hours = (until - now).total_seconds() / 3600 if until else -1\n\
         \x20       print(o['Key'][len(prefix) + 1:], h.get('ObjectLockMode'), round(hours, 2))\n",
    );
    let mut kinds = std::collections::BTreeSet::new();
    for line in listed.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (key, mode, hours) = (parts[0], parts[1], parts[2].parse::<f64>().unwrap());
        if key.starts_with("locks/") {
            continue;
        }
        kinds.insert(key.split('/').next().unwrap().to_owned());
        assert_eq!(mode, "GOVERNANCE", "{key}: {line}");
        assert!((23.0..=24.1).contains(&hours), "{key} locked for {hours} h");
    }
    for kind in ["config", "keys", "data", "index", "snapshots"] {
        assert!(kinds.contains(kind), "no locked {kind} object in {listed}");
    }

    // forget keeps snapshots still under lock, and says so.
    let out = env.vault(&["forget", "--keep-last", "1"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("under object lock until"), "{text}");
    assert!(text.contains("removed 0 snapshots"), "{text}");
    assert_eq!(env.snapshots().len(), 2);

    // Hide the older snapshot as an attacker (or an admin) with plain
    // DELETE rights could: a delete marker. Its packs now look unused.
    let oldest = env.snapshots()[0]["id"].as_str().unwrap().to_owned();
    env.delete_object(&format!("snapshots/{oldest}"));
    let packs_before = env.objects_under("data/").len();
    let out = env.vault(&["prune", "--instant-delete", "--max-unused", "0"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("still under object lock until") && text.contains(", kept"),
        "{text}"
    );
    assert!(text.contains("deleted 0 packs"), "{text}");
    assert_eq!(env.objects_under("data/").len(), packs_before);
    assert_success(&env.vault(&["check", "--verify"]));

    // The store itself refuses to destroy a locked version.
    let refused = boto3(
        &moto.lock,
        &env,
        "key = next(o['Key'] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + '/data/')['Contents'])\n\
         version = s3.head_object(Bucket=bucket, Key=key)['VersionId']\n\
         try:\n\
         \x20   s3.delete_object(Bucket=bucket, Key=key, VersionId=version)\n\
         \x20   print('deleted')\n\
         except botocore.exceptions.ClientError as e:\n\
         \x20   print('refused', e.response['Error']['Code'])\n",
    );
    assert!(refused.starts_with("refused"), "{refused}");
    // And the hidden snapshot's locked version is still there to recover.
    let versions = boto3(
        &moto.lock,
        &env,
        &format!(
            "v = s3.list_object_versions(Bucket=bucket, Prefix=prefix + '/snapshots/{oldest}')\n\
             print(len(v.get('Versions', [])), len(v.get('DeleteMarkers', [])))\n"
        ),
    );
    assert_eq!(versions.trim(), "1 1", "{versions}");
}

#[test]
fn a_bucket_without_object_lock_is_refused_and_unlocked_repositories_prune_normally() {
    let Some(moto) = moto() else { return };
    let env = Env::uninitialised_on_server(&moto.plain);
    let out = init(&env, &["--object-lock-days", "1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Object Lock is not enabled on this bucket"),
        "{}",
        stderr(&out)
    );
    assert!(env.objects_under("").is_empty(), "nothing was written");

    // Regression: without a lock, forget and prune delete at once.
    assert_success(&init(&env, &[]));
    two_backups(&env);
    let out = env.vault(&["forget", "--keep-last", "1"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1 snapshots"));
    let packs_before = env.objects_under("data/").len();
    let out = env.vault(&["prune", "--instant-delete", "--max-unused", "0"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("object lock"), "{text}");
    assert!(env.objects_under("data/").len() < packs_before, "{text}");
    assert_success(&env.vault(&["check", "--verify"]));
}

#[test]
fn local_repositories_refuse_object_lock() {
    let env = Env::uninitialised();
    let out = init(&env, &["--object-lock-days", "7"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot lock objects"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn storing_an_object_that_is_already_there_keeps_its_own_retention() {
    use vault_engine::backend::{Backend, ObjectBackend, ObjectLock, PutMode, RetentionMode};
    let Some(moto) = moto() else { return };
    let spec = format!(
        "{}/{}/e2e-{}",
        moto.lock.endpoint,
        moto.lock.bucket,
        crate::support::random_hex()
    );
    let backend = ObjectBackend::s3(&spec, &moto.lock.options()).unwrap();
    let lock = ObjectLock {
        mode: RetentionMode::Governance,
        days: 1,
    };
    backend.set_object_lock(lock, true).unwrap();
    let bytes = b"content-addressed".to_vec();
    backend
        .put("index/aa", bytes.clone().into(), PutMode::Create)
        .unwrap();
    // Later, the same content-addressed object is saved again (a repack or
    // a retried upload). Where the store honours If-None-Match the second
    // PUT is refused and the object keeps its first, shorter retention,
    // which is not an error; where it does not (moto, as the probe finds),
    // the PUT stores a new version with a new retention.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    backend
        .put("index/aa", bytes.into(), PutMode::Create)
        .unwrap();
    // Lock files carry no retention: they must stay removable.
    backend
        .put("locks/x", b"l".to_vec().into(), PutMode::Overwrite)
        .unwrap();
    backend.delete("locks/x").unwrap();
}

/// Every object's Object Lock mode and retain-until (Unix seconds), by
/// key relative to the repository, as the store reports them.
fn retentions(moto: &Moto, env: &Env) -> std::collections::BTreeMap<String, (String, i64)> {
    boto3(
        &moto.lock,
        env,
        "for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix + '/'):\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       h = s3.head_object(Bucket=bucket, Key=o['Key'])\n\
         \x20       until = h.get('ObjectLockRetainUntilDate')\n\
         \x20       print(o['Key'][len(prefix) + 1:], h.get('ObjectLockMode'), int(until.timestamp()) if until else -1)\n",
    )
    .lines()
    .map(|line| {
        let parts: Vec<&str> = line.split_whitespace().collect();
        (
            parts[0].to_owned(),
            (parts[1].to_owned(), parts[2].parse().unwrap()),
        )
    })
    .collect()
}

#[test]
fn extend_retention_and_prune_move_every_objects_lock_forward() {
    let Some(moto) = moto() else { return };
    let env = Env::uninitialised_on_server(&moto.lock);
    assert_success(&init(&env, &["--object-lock-days", "1"]));
    two_backups(&env);
    let before = retentions(moto, &env);
    let stored: Vec<&String> = before.keys().filter(|k| !k.starts_with("locks/")).collect();
    assert!(stored.len() >= 6, "{before:?}");

    // Retain-until dates are whole seconds: after two seconds an extension
    // to now + 1 day lies later than every upload's own date.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = env.vault(&["extend-retention"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "object lock of {} objects extended until",
            stored.len()
        )),
        "{text}"
    );
    let after = retentions(moto, &env);
    for key in &stored {
        let (mode, until) = &after[*key];
        assert_eq!(mode, "GOVERNANCE", "{key}");
        assert!(
            *until > before[*key].1,
            "{key}: {until} not after {:?}",
            before[*key]
        );
    }
    // No lock object is left behind by the command's own repository lock.
    assert!(after.keys().all(|k| !k.starts_with("locks/")), "{after:?}");
    // The data is still whole.
    assert_success(&env.vault(&["check", "--verify"]));
    // A locked snapshot cannot be retagged: its replacement would hide it.
    let out = env.vault(&["tag", "latest", "--add", "keep"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is under object lock until"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.snapshots().len(), 2);

    // prune extends what it keeps, after pruning.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = env.vault(&["prune"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("objects extended until"), "{text}");
    let pruned = retentions(moto, &env);
    for (key, (_, until)) in pruned.iter().filter(|(k, _)| !k.starts_with("locks/")) {
        if let Some((_, earlier)) = after.get(key) {
            assert!(until > earlier, "{key}: {until} not after {earlier}");
        }
    }
}

#[test]
fn extend_retention_refuses_an_unlocked_repository() {
    let env = Env::new();
    let out = env.vault(&["extend-retention"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("this repository is not locked"),
        "{}",
        stderr(&out)
    );
}
