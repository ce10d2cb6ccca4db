//! Harness: a temporary repository with a password file, and helpers to run
//! `vault` against it.
//!
//! A repository lives on one of two backends ([`Backend`]): a local
//! directory, or a fresh random prefix in an S3 bucket. Tests that make
//! sense on both are written once, as `fn NAME(backend: Backend)`, and
//! declared with [`backend_test!`], which defines the tests `NAME::local`
//! and `NAME::s3`. The S3 server is, in order:
//! `VAULT_TEST_S3_ENDPOINT` (+ `VAULT_TEST_S3_BUCKET`, `AWS_*`) if set, else
//! a single-node Garage started once per test binary by
//! `scripts/start-garage.sh` (stopped when the test binary exits). If
//! `garage` is not installed the S3 variants print a notice and pass,
//! unless `VAULT_REQUIRE_S3` is set (CI), where they fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use vault_engine::backend::S3Options;

pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// Runs the function `NAME(backend: Backend)` as two tests, `NAME::local`
/// and `NAME::s3` (a module and a function may share a name):
///
/// ```ignore
/// backend_test!(round_trip);
/// fn round_trip(backend: Backend) {
///     let env = Env::on(backend);
/// }
/// ```
macro_rules! backend_test {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn local() {
                super::$name($crate::support::Backend::Local);
            }

            #[test]
            fn s3() {
                if $crate::support::Backend::S3.available() {
                    super::$name($crate::support::Backend::S3);
                }
            }
        }
    )+};
}

/// Where a test repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A directory in the test's temporary directory.
    Local,
    /// A fresh random prefix in the test S3 bucket.
    S3,
}

impl Backend {
    /// Whether the backend can be used; for S3 without a server (and
    /// without `VAULT_REQUIRE_S3`) prints why the test is skipped.
    pub(crate) fn available(self) -> bool {
        match self {
            Backend::Local => true,
            Backend::S3 => {
                if s3_server().is_some() {
                    return true;
                }
                eprintln!(
                    "NOTICE: skipping the S3 variant: garage is not installed and \
                     VAULT_TEST_S3_ENDPOINT is not set (set VAULT_REQUIRE_S3=1 to fail instead)"
                );
                false
            }
        }
    }
}

/// An S3-compatible server for the tests.
#[derive(Debug, Clone)]
pub(crate) struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) region: String,
    /// Started by `scripts/garage-cluster.sh` (exports `GARAGE_DIR`): a
    /// Garage, known to ignore conditional writes.
    pub(crate) is_garage: bool,
}

impl S3Server {
    /// Environment for a `vault` process talking to this server.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env("AWS_REGION", &self.region)
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
    }

    pub(crate) fn options(&self) -> S3Options {
        S3Options {
            region: Some(self.region.clone()),
            access_key_id: Some(self.access_key_id.clone()),
            secret_access_key: Some(self.secret_access_key.clone()),
            ..S3Options::default()
        }
    }

    /// A repository URL for `prefix` in the test bucket.
    pub(crate) fn url(&self, prefix: &str) -> String {
        format!("s3:{}/{}/{prefix}", self.endpoint, self.bucket)
    }

    /// From `export` lines of `scripts/garage-cluster.sh` or the
    /// environment.
    pub(crate) fn from_vars(vars: &HashMap<String, String>) -> Self {
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} is not set for the S3 test server"))
        };
        Self {
            endpoint: get("VAULT_TEST_S3_ENDPOINT")
                .trim_end_matches('/')
                .to_owned(),
            bucket: vars
                .get("VAULT_TEST_S3_BUCKET")
                .cloned()
                .unwrap_or_else(|| "vault-test".into()),
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            region: vars
                .get("AWS_REGION")
                .cloned()
                .unwrap_or_else(|| "garage".into()),
            is_garage: vars.contains_key("GARAGE_DIR"),
        }
    }
}

/// The `garage` binary, if installed.
pub(crate) fn garage_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("GARAGE_BIN").filter(|b| !b.is_empty()) {
        return Some(bin.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("garage"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let cargo_bin = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/garage");
        cargo_bin.is_file().then_some(cargo_bin)
    })
}

pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

/// Runs a `scripts/garage-*.sh` script that prints `export K=V` lines, tied
/// to this process (its servers stop when the test binary exits).
pub(crate) fn run_export_script(name: &str, args: &[&str]) -> HashMap<String, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name))
        .args(args)
        .env("VAULT_GARAGE_PARENT_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(bin) = garage_binary() {
        cmd.env("GARAGE_BIN", bin);
    }
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{name} failed: {:?}", out.status);
    eprintln!("{name}: ready in {:.1?}", started.elapsed());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The S3 server for this test binary, started on first use.
pub(crate) fn s3_server() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if std::env::var_os("VAULT_TEST_S3_ENDPOINT").is_some_and(|v| !v.is_empty()) {
                let vars: HashMap<String, String> = std::env::vars().collect();
                return Some(S3Server::from_vars(&vars));
            }
            if garage_binary().is_none() {
                assert!(
                    std::env::var_os("VAULT_REQUIRE_S3").is_none_or(|v| v.is_empty()),
                    "VAULT_REQUIRE_S3 is set but garage is not installed \
                     (cargo install garage --locked --no-default-features --features bundled-libs,sqlite) \
                     and VAULT_TEST_S3_ENDPOINT is not set"
                );
                return None;
            }
            Some(S3Server::from_vars(&run_export_script(
                "start-garage.sh",
                &[],
            )))
        })
        .as_ref()
}

/// A random lowercase hex string.
pub(crate) fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    /// The repository URL (`VAULT_REPOSITORY`).
    pub(crate) repo: String,
    pub(crate) password_file: PathBuf,
    pub(crate) backend: Backend,
    /// The server of an S3 repository.
    pub(crate) server: Option<S3Server>,
    store: OnceLock<Box<dyn vault_engine::backend::Backend>>,
}

impl Env {
    /// A fresh, initialised local repository (fast KDF for tests).
    pub(crate) fn new() -> Self {
        Self::on(Backend::Local)
    }

    /// A fresh, initialised repository on `backend`.
    pub(crate) fn on(backend: Backend) -> Self {
        let env = Self::uninitialised_on(backend);
        assert_success(&env.init_at(&env.repo, &[]));
        env
    }

    /// A fresh repository on `backend` with 1 MiB packs, so that a few MB
    /// of data span several packs uploaded one after another.
    pub(crate) fn with_small_packs(backend: Backend) -> Self {
        let env = Self::uninitialised_on(backend);
        assert_success(&env.init_at(&env.repo, &["--pack-size-mib", "1"]));
        env
    }

    /// `vault init` (fast KDF for tests, then `extra`) of the repository
    /// at `repo`, which need not be this environment's own.
    pub(crate) fn init_at(&self, repo: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Output {
        let mut args = vec!["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"];
        args.extend_from_slice(extra);
        self.command(&args)
            .env("VAULT_REPOSITORY", repo)
            .output()
            .unwrap()
    }

    /// A fresh local location with no repository.
    #[allow(dead_code)]
    pub(crate) fn uninitialised() -> Self {
        Self::uninitialised_on(Backend::Local)
    }

    /// A fresh location with no repository on `backend`.
    pub(crate) fn uninitialised_on(backend: Backend) -> Self {
        match backend {
            Backend::Local => Self::at(backend, None),
            Backend::S3 => Self::at(backend, Some(s3().clone())),
        }
    }

    /// A fresh random prefix with no repository on another S3 server.
    pub(crate) fn uninitialised_on_server(server: &S3Server) -> Self {
        Self::at(Backend::S3, Some(server.clone()))
    }

    fn at(backend: Backend, server: Option<S3Server>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        // As a careful admin keeps it: vault warns about a shared one.
        private(&password_file);
        let repo = match &server {
            None => dir.path().join("repo").to_string_lossy().into_owned(),
            Some(server) => server.url(&format!("e2e-{}", random_hex())),
        };
        Self {
            dir,
            repo,
            password_file,
            backend,
            server,
            store: OnceLock::new(),
        }
    }

    /// The repository URL with the S3 endpoint replaced (to go through a
    /// proxy or another node).
    pub(crate) fn repo_via(&self, endpoint: &str) -> String {
        let server = self.server.as_ref().expect("an S3 repository");
        self.repo.replacen(&server.endpoint, endpoint, 1)
    }

    pub(crate) fn is_local(&self) -> bool {
        self.backend == Backend::Local
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vault"));
        cmd.args(args)
            .env("VAULT_REPOSITORY", &self.repo)
            .env("VAULT_PASSWORD_FILE", &self.password_file)
            .env_remove("VAULT_PASSWORD")
            .env_remove("VAULT_PASSWORD_COMMAND")
            // Local state (request counts, status) stays with the test.
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            // So is the cache of snapshots and index files.
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env_remove("VAULT_CACHE_DIR")
            .stdin(Stdio::null());
        if let Some(server) = &self.server {
            server.apply(&mut cmd);
        }
        cmd
    }

    /// `vault ARGS` started with its output captured, for a test to signal
    /// ([`interrupt`]).
    pub(crate) fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub(crate) fn vault(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub(crate) fn vault_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.vault(&all);
        assert_success(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(text.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("invalid JSON from vault {args:?}: {e}\n{text}"))
    }

    /// The nodes `vault cat tree SPEC` prints (SPEC: `SNAPSHOT[:DIR]`).
    pub(crate) fn tree_nodes(&self, spec: &str) -> Vec<serde_json::Value> {
        let out = self.vault(&["cat", "tree", spec]);
        assert_success(&out);
        let tree: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        tree["nodes"].as_array().unwrap().clone()
    }

    pub(crate) fn snapshots(&self) -> Vec<serde_json::Value> {
        self.json(&["snapshots"]).as_array().unwrap().clone()
    }

    /// The repository's storage, opened directly through the engine (no
    /// `vault` process), to inspect or tamper with objects on any backend.
    pub(crate) fn store(&self) -> &dyn vault_engine::backend::Backend {
        self.store
            .get_or_init(|| {
                let options = self
                    .server
                    .as_ref()
                    .map_or_else(S3Options::default, S3Server::options);
                vault_engine::backend::open_url(&self.repo, &options).unwrap()
            })
            .as_ref()
    }

    /// Every stored object key with its size. Locally this walks the
    /// directory itself, temporary files included.
    pub(crate) fn objects(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        match self.backend {
            Backend::Local => walk_files(Path::new(&self.repo), &mut |p| {
                let rel = p
                    .strip_prefix(&self.repo)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::metadata(p).unwrap().len()));
            }),
            Backend::S3 => {
                for info in self.store().list("").unwrap() {
                    out.push((info.path, info.size));
                }
            }
        }
        out.sort();
        out
    }

    /// Keys of the objects under `prefix` (`data`, `index`, ...), sorted.
    pub(crate) fn objects_under(&self, prefix: &str) -> Vec<String> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        self.objects()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(&prefix))
            .collect()
    }

    /// Size of each object under `prefix`, by key.
    pub(crate) fn sizes_under(&self, prefix: &str) -> HashMap<String, u64> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        self.objects()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect()
    }

    /// The key of the largest pack: in a small repository, the data pack
    /// rather than the tree pack beside it.
    pub(crate) fn largest_pack(&self) -> String {
        self.sizes_under("data")
            .into_iter()
            .max_by_key(|(_, size)| *size)
            .unwrap()
            .0
    }

    /// Lock objects (not the conditional-create probes).
    pub(crate) fn locks(&self) -> Vec<String> {
        match self.backend {
            // Cheap enough to poll every few microseconds.
            Backend::Local => {
                let mut out = Vec::new();
                walk_files(&Path::new(&self.repo).join("locks"), &mut |p| {
                    out.push(format!(
                        "locks/{}",
                        p.file_name().unwrap().to_string_lossy()
                    ));
                });
                out.retain(|k| !k.contains("probe-") && !k.contains("/.tmp-"));
                out
            }
            Backend::S3 => self
                .objects_under("locks")
                .into_iter()
                .filter(|k| !k.contains("probe-"))
                .collect(),
        }
    }

    pub(crate) fn read_object(&self, key: &str) -> Vec<u8> {
        self.store().get(key, u64::MAX).unwrap().to_vec()
    }

    pub(crate) fn write_object(&self, key: &str, bytes: &[u8]) {
        match self.backend {
            // Behind the backend's back, as a disk fault would.
            Backend::Local => {
                let path = Path::new(&self.repo).join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Backend::S3 => self
                .store()
                .put(
                    key,
                    bytes.to_vec().into(),
                    vault_engine::backend::PutMode::Overwrite,
                )
                .unwrap(),
        }
    }

    pub(crate) fn delete_object(&self, key: &str) {
        self.store().delete(key).unwrap();
    }

    /// Flips one bit of the byte at `at` (clamped) of an object.
    pub(crate) fn flip(&self, key: &str, at: usize) {
        let mut bytes = self.read_object(key);
        let at = at.min(bytes.len() - 1);
        bytes[at] ^= 0x40;
        self.write_object(key, &bytes);
    }
}

/// The S3 server; only called for S3 environments, which exist only when
/// [`Backend::available`] said so.
pub(crate) fn s3() -> &'static S3Server {
    s3_server().expect("S3 environment without an S3 server")
}

/// The last path component of an object key.
pub(crate) fn key_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// `dir` and every entry below it, directories too; symlinks are listed,
/// never followed.
pub(crate) fn walk_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk_entries(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `levels` directories `d`, each in the one before, below `at`, and a
/// file `b` at the bottom; made by relative steps: the whole path is too
/// long for one system call.
pub(crate) fn nest_dirs(at: &Path, levels: usize) {
    let status = Command::new("sh")
        .arg("-c")
        .arg("i=0; while [ $i -lt $0 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo bottom > b")
        .arg(levels.to_string())
        .current_dir(at)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `cmd`, with its environment, run under `ulimit -n LIMIT`.
pub(crate) fn with_open_file_limit(cmd: &Command, limit: u32) -> Command {
    let mut limited = Command::new("sh");
    limited
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => limited.env(k, v),
            None => limited.env_remove(k),
        };
    }
    limited
}

pub(crate) fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let Ok(e) = e else { continue };
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk_files(&e.path(), f);
        } else {
            f(&e.path());
        }
    }
}

/// `chmod 600`: only the owner may read it.
pub(crate) fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[track_caller]
/// Ctrl-C: sends SIGINT to `child` and waits for it.
pub(crate) fn interrupt(child: std::process::Child) -> Output {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    child.wait_with_output().unwrap()
}

pub(crate) fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "vault failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
pub(crate) fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Deterministic pseudo-random bytes.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `cmd` as nobody when the tests run as root (root may write where
/// the snapshot forbids it, and create device nodes), with what vault
/// needs made readable to nobody; as another user, as that user.
pub(crate) fn as_unprivileged(env: &Env, cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    if !is_root() {
        return;
    }
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        &env.password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let home = env.path("nobody-home");
    std::fs::create_dir_all(&home).unwrap();
    for p in [&env.repo, home.to_str().unwrap()] {
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534", p])
            .status()
            .unwrap();
        assert!(status.success());
    }
    cmd.env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .uid(65534)
        .gid(65534);
}

/// Keys of the packs holding only blobs of `kind`, found through the index.
pub(crate) fn packs_of_kind(env: &Env, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    for idx in env.objects_under("index") {
        let v = env.json(&["cat", "index", key_name(&idx)]);
        for p in v["packs"].as_array().unwrap() {
            if p["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["type"] == kind)
            {
                let pid = p["id"].as_str().unwrap();
                out.push(format!("data/{}/{pid}", &pid[..2]));
            }
        }
    }
    out
}

/// Whether a `sleep MARKER` a test's command started is running (the
/// marker is an unusual duration, e.g. `31.4159`).
pub(crate) fn sleep_running(marker: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", &format!("sleep {marker}")])
        .output()
        .unwrap()
        .status
        .success()
}

/// Kills every `sleep MARKER` a test's command started.
pub(crate) fn kill_sleep(marker: &str) {
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("sleep {marker}")])
        .status();
}

/// A tmpfs mounted at `at` for the life of the value (root only).
pub(crate) struct TmpfsMount(pub(crate) PathBuf);

impl TmpfsMount {
    pub(crate) fn new(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert_success(&out);
        Self(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
