//! Harness: a temporary repository with a password file, and helpers to run
//! `vault` against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) const PASSWORD: &str = "correct horse battery staple";

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) repo: String,
    pub(crate) password_file: PathBuf,
}

impl Env {
    /// A fresh, initialised repository (fast KDF for tests).
    pub(crate) fn new() -> Self {
        let env = Self::uninitialised();
        let out = env.vault(&["init", "--kdf-memory-mib", "8", "--kdf-iterations", "1"]);
        assert_success(&out);
        env
    }

    pub(crate) fn uninitialised() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        let repo = dir.path().join("repo").to_string_lossy().into_owned();
        Self {
            dir,
            repo,
            password_file,
        }
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
            .stdin(Stdio::null());
        cmd
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

    pub(crate) fn snapshots(&self) -> Vec<serde_json::Value> {
        self.json(&["snapshots"]).as_array().unwrap().clone()
    }

    /// Every stored object key with its size.
    pub(crate) fn objects(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        walk_files(Path::new(&self.repo), &mut |p| {
            let rel = p
                .strip_prefix(&self.repo)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::metadata(p).unwrap().len()));
        });
        out.sort();
        out
    }

    pub(crate) fn objects_under(&self, prefix: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk_files(&Path::new(&self.repo).join(prefix), &mut |p| {
            out.push(p.to_path_buf())
        });
        out.sort();
        out
    }
}

pub(crate) fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            walk_files(&e.path(), f);
        } else {
            f(&e.path());
        }
    }
}

#[track_caller]
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
