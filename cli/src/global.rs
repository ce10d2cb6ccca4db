//! Shared plumbing for commands: where the repository is, how to get the
//! password, opening the repository, and the interrupt flag.

use crate::args::GlobalArgs;
use crate::config::Config;
use anyhow::{Context, Result, bail};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vault_engine::Repository;
use vault_engine::backend::{self, Backend, S3Options};
use vault_engine::cache::Cache;
use vault_engine::crypto::Password;

/// Sets a flag on SIGINT/SIGTERM so long operations stop cleanly (flushing
/// what they uploaded); a second signal exits at once.
pub(crate) fn install_interrupt_handler() -> Arc<AtomicBool> {
    let flag = interrupted();
    let handler_flag = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
        }
        eprintln!("vault: interrupted, stopping cleanly (press again to abort at once)");
    });
    flag
}

/// The flag Ctrl-C and SIGTERM set, for code reached without it passed down
/// (prune, also from `forget --prune`).
pub(crate) fn interrupted() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// `Err(Interrupted)` (exit 130) once Ctrl-C or SIGTERM came: for
/// commands that do not watch the flag themselves, before each step that
/// changes the repository, so a stopped command changes nothing more.
pub(crate) fn stop_if_interrupted() -> Result<()> {
    if interrupted().load(Ordering::SeqCst) {
        return Err(vault_engine::Error::Interrupted.into());
    }
    Ok(())
}

/// [`stop_if_interrupted`] for a command that changes snapshots one at a
/// time: the error says how many it had changed (`done`, e.g. "3 snapshots
/// removed"), so the user knows where it stopped.
pub(crate) fn stop_after(done: impl FnOnce() -> String) -> Result<()> {
    stop_if_interrupted()
        .map_err(|e| e.context(format!("stopped after {}; the rest is unchanged", done())))
}

/// The outcome of a command that may have been signalled: one that ran to
/// its end after Ctrl-C or SIGTERM (its last step was past stopping) still
/// exits 130, never 0, since the handler told the user it was stopping.
/// `mount` is exempt: Ctrl-C is how it ends.
pub(crate) fn settle_interrupt(result: Result<ExitCode>, command: &str) -> Result<ExitCode> {
    match result {
        Ok(code)
            if code == ExitCode::SUCCESS
                && command != "mount"
                && interrupted().load(Ordering::SeqCst) =>
        {
            Err(anyhow::Error::new(vault_engine::Error::Interrupted)
                .context("the command had run to its end when it stopped"))
        }
        // Storage failing while the command stopped retrying it because of
        // the signal: the signal is what ended it (130), not the store (8).
        Err(e)
            if command != "mount"
                && interrupted().load(Ordering::SeqCst)
                && crate::exit::code_of(&e) == crate::exit::STORAGE =>
        {
            Err(anyhow::Error::new(vault_engine::Error::Interrupted).context(format!("{e:#}")))
        }
        other => other,
    }
}

static CONFIG: std::sync::OnceLock<Result<Option<Config>, String>> = std::sync::OnceLock::new();

/// The configuration file, loaded once: `--config`/`VAULT_CONFIG`, else
/// `/etc/vault/vault.toml` if it exists.
pub(crate) fn config(global: &GlobalArgs) -> Result<Option<&'static Config>> {
    let loaded = CONFIG
        .get_or_init(|| Config::discover(global.config.as_deref()).map_err(|e| format!("{e:#}")));
    match loaded {
        Ok(c) => Ok(c.as_ref()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Where configured sources come from, for errors about a source name:
/// the file read, or that none was (a new machine restoring with only the
/// repository URL and password has none, and must be told so).
pub(crate) fn config_whereabouts(global: &GlobalArgs) -> String {
    match config(global) {
        Ok(Some(c)) => format!("sources are read from {}", c.path.display()),
        _ => format!(
            "no config file was read: give --config PATH or set VAULT_CONFIG ({} does not exist)",
            crate::config::DEFAULT_PATH
        ),
    }
}

/// "no source `NAME` is configured", and where sources were looked for.
pub(crate) fn no_such_source(global: &GlobalArgs, name: &str) -> String {
    match config(global) {
        Ok(Some(c)) => format!("no source `{name}` is configured in {}", c.path.display()),
        _ => format!(
            "no source `{name}` is configured ({})",
            config_whereabouts(global)
        ),
    }
}

/// The repository URL: `--repo`/`VAULT_REPOSITORY`, else the first line of
/// `--repository-file`/`VAULT_REPOSITORY_FILE`, else the config file's,
/// else the local default `$XDG_DATA_HOME/vault/repo`
/// (`~/.local/share/vault/repo`).
pub(crate) fn repo_url(global: &GlobalArgs) -> Result<String> {
    if let Some(repo) = &global.repo {
        return Ok(repo.clone());
    }
    if let Some(file) = &global.repository_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading repository file {}", file.display()))?;
        let repo = text.lines().next().unwrap_or_default().trim();
        if repo.is_empty() {
            bail!("repository file {} is empty", file.display());
        }
        return Ok(repo.to_owned());
    }
    if let Some(url) = config(global)?.and_then(|c| c.repository.url.clone()) {
        return Ok(url);
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share")))
        .context("no repository given: pass --repo or set VAULT_REPOSITORY (a local path or s3:https://HOST/BUCKET/PREFIX)")?;
    Ok(data_home.join("vault/repo").to_string_lossy().into_owned())
}

fn first_line(path: &std::path::Path, what: &str) -> Result<String> {
    crate::config::ensure_private(path, what)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// Opens the storage at `url`; its requests are counted for `vault stats`.
pub(crate) fn open_backend(global: &GlobalArgs, url: &str) -> Result<Arc<dyn Backend>> {
    let mut options = S3Options {
        allow_http: global.allow_http,
        // An interrupted command must not wait out the retry window.
        stop: Some(interrupted()),
        ca_certificates: (global.cacert.iter())
            .map(|f| std::fs::read(f).with_context(|| format!("reading --cacert {}", f.display())))
            .collect::<Result<_>>()?,
        ..S3Options::default()
    };
    let from_config = config(global)?.map(|c| &c.repository);
    if let Some(repo) = from_config {
        options.allow_http |= repo.allow_http;
        options.region.clone_from(&repo.region);
        options.virtual_hosted_style = repo.path_style == Some(false);
        if let Some(f) = &repo.access_key_id_file {
            options.access_key_id = Some(first_line(f, "access key id file")?);
        }
        if let Some(f) = &repo.secret_access_key_file {
            warn_if_shared(f, "secret access key file");
            options.secret_access_key = Some(first_line(f, "secret access key file")?);
        }
    }
    let mut backend: Arc<dyn Backend> = backend::open_url(url, &options)
        .with_context(|| format!("opening storage at {}", backend::redact_url(url)))?
        .into();
    crate::requests::track(&backend);
    let upload = rate_limit(
        global.limit_upload,
        from_config.and_then(|r| r.limit_upload),
    );
    let download = rate_limit(
        global.limit_download,
        from_config.and_then(|r| r.limit_download),
    );
    if upload.is_some() || download.is_some() {
        backend =
            Arc::new(backend::RateLimited::new(backend, upload, download).stop_on(interrupted()));
    }
    Ok(backend)
}

/// A rate limit in bytes/s from KiB/s given on the command line (or its
/// variable), else in the config; 0 is none (restic's, for `--limit-upload
/// ${LIMIT:-0}`), and given on the command line it lifts the config's too.
fn rate_limit(flag: Option<u64>, config: Option<u64>) -> Option<u64> {
    flag.or(config)
        .filter(|&kib| kib > 0)
        .map(|kib| kib.saturating_mul(1024))
}

/// The password from, in order (restic's): `--password-file` or
/// `--password-command` (or their variables; both at once is refused),
/// `VAULT_PASSWORD`, the config's `password_file` or `password_command`, or
/// a prompt on a terminal. What is given for this one command beats what is
/// exported for every command.
pub(crate) fn password(global: &GlobalArgs, confirm: bool) -> Result<Password> {
    // Both at once is a usage error, refused when parsing (args.rs).
    let from_config = || -> Result<_> {
        let repository = config(global)?.map(|c| &c.repository);
        Ok((
            repository.and_then(|r| r.password_file.clone()),
            repository.and_then(|r| r.password_command.clone()),
        ))
    };
    let (password_file, password_command) =
        if global.password_file.is_some() || global.password_command.is_some() {
            (
                global.password_file.clone(),
                global.password_command.clone(),
            )
        } else if let Some(pw) = env_password("VAULT_PASSWORD") {
            return Ok(pw);
        } else {
            from_config()?
        };
    if let Some(file) = &password_file {
        if global.password_file.is_none() {
            crate::config::ensure_private(file, "password file")?;
        }
        warn_if_shared(file, "password file");
        let text = std::fs::read(file)
            .with_context(|| format!("reading password file {}", file.display()))?;
        let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return Ok(Password::new(line.to_vec()));
    }
    if let Some(command) = &password_command {
        return run_password_command(command);
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let pw = rpassword::prompt_password("enter password for repository: ")?;
        if confirm {
            let again = rpassword::prompt_password("enter password again: ")?;
            if again != pw {
                bail!("passwords do not match");
            }
        }
        return Ok(Password::new(pw));
    }
    bail!(
        "no password: set VAULT_PASSWORD_FILE, VAULT_PASSWORD_COMMAND or VAULT_PASSWORD, or run on a terminal"
    )
}

/// A password exported in the variable `name`; an empty one is none (as
/// restic takes it), so the next source of a password applies. The bytes
/// as they are: a password need not be UTF-8.
pub(crate) fn env_password(name: &str) -> Option<Password> {
    use std::os::unix::ffi::OsStringExt;
    std::env::var_os(name)
        .filter(|pw| !pw.is_empty())
        .map(|pw| Password::new(pw.into_vec()))
}

/// Warns, once per file and process, when a file holding a secret can be
/// read by its group or by everyone, as ssh does for a private key. Only a
/// warning: refusing would break cron jobs that worked until now. `-` and
/// anything but a regular file (a pipe, a terminal) are left alone.
pub(crate) fn warn_if_shared(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::MetadataExt;
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    if path.as_os_str() == "-" {
        return;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return; // reading it says why
    };
    let mode = meta.mode() & 0o777;
    if !meta.is_file() || mode & 0o044 == 0 {
        return;
    }
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned.iter().any(|p| p == path) {
        return;
    }
    warned.push(path.to_owned());
    let who = if mode & 0o004 != 0 {
        "every user"
    } else {
        "its group"
    };
    eprintln!(
        "vault: warning: {what} {} is readable by {who} (mode {mode:04o}); it holds a secret: run `chmod 600 {}`",
        path.display(),
        path.display()
    );
}

/// Opens the repository named by the global flags.
pub(crate) fn open_repository(global: &GlobalArgs) -> Result<Arc<Repository>> {
    open_repository_with(global, false)
}

/// Opens the repository; with `dry_run`, writes and deletes are discarded.
pub(crate) fn open_repository_with(global: &GlobalArgs, dry_run: bool) -> Result<Arc<Repository>> {
    open(global, dry_run, !dry_run)
}

/// Opens the repository without the local cache: for commands that must
/// judge what the store itself holds (check, repair).
pub(crate) fn open_repository_uncached(global: &GlobalArgs) -> Result<Arc<Repository>> {
    open(global, false, false)
}

fn open(global: &GlobalArgs, dry_run: bool, cached: bool) -> Result<Arc<Repository>> {
    let url = repo_url(global)?;
    let mut backend = open_backend(global, &url)?;
    if dry_run {
        backend = Arc::new(backend::DryRun::new(backend));
    }
    let password = password(global, false)?;
    let mut repo = Repository::open(backend, &password)
        .with_context(|| format!("opening repository {}", backend::redact_url(&url)))?;
    if cached {
        attach_cache(global, &mut repo);
    }
    Ok(Arc::new(repo))
}

/// Gives `repo` its local cache, unless it is on a local disk (its own
/// cache) or `--no-cache` was given. A cache that cannot be opened is
/// warned about and done without.
pub(crate) fn attach_cache(global: &GlobalArgs, repo: &mut Repository) {
    if global.no_cache || repo.backend().is_local() {
        return;
    }
    let Some(base) = cache_base(global) else {
        return;
    };
    match Cache::open(&base, &repo.config().id) {
        Ok(cache) => repo.set_cache(cache),
        Err(e) => tracing::warn!(
            "cache {} cannot be used ({e}); going on without it",
            base.display()
        ),
    }
}

/// The cache directory: `--cache-dir`, else `$XDG_CACHE_HOME/vault`, else
/// `~/.cache/vault`.
pub(crate) fn cache_base(global: &GlobalArgs) -> Option<PathBuf> {
    if let Some(dir) = &global.cache_dir {
        return Some(dir.clone());
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
    Some(xdg.or_else(home)?.join("vault"))
}

pub(crate) fn hostname() -> String {
    nix_hostname().unwrap_or_else(|| "localhost".into())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

pub(crate) fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into())
}

/// Whether to draw progress bars: a terminal, and neither --quiet nor --json.
pub(crate) fn show_progress(global: &GlobalArgs) -> bool {
    !global.quiet && !global.json && std::io::stderr().is_terminal()
}

/// Runs a password command (`sh -c`) and takes the first line it prints.
/// It starts without the repositories' passwords in its environment (a
/// copy's command for one repository must not see the other's); cloud
/// credentials stay, since fetching a password from a secret store may
/// need them.
pub(crate) fn run_password_command(command: &str) -> Result<Password> {
    let mut cmd = std::process::Command::new("sh");
    for name in ["VAULT_PASSWORD", "VAULT_FROM_PASSWORD", "VAULT_TO_PASSWORD"] {
        cmd.env_remove(name);
    }
    let out = cmd
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the password command")?;
    if !out.status.success() {
        bail!("password command failed ({})", out.status);
    }
    let line = out.stdout.split(|&b| b == b'\n').next().unwrap_or_default();
    // Tried as a password, nothing would read as "wrong password" and send
    // the user hunting for a typo, when the command (a secret store not
    // unlocked, a variable unset in cron) is what failed. Exit 1, as for a
    // command that exits non-zero; restic refuses it too.
    if line.is_empty() {
        bail!(
            "the password command printed nothing{}",
            if out.stdout.is_empty() {
                ""
            } else {
                " on its first line"
            }
        );
    }
    Ok(Password::new(line.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::rate_limit;

    #[test]
    fn a_rate_limit_of_zero_is_none_and_the_flag_wins() {
        assert_eq!(rate_limit(None, None), None);
        assert_eq!(rate_limit(Some(0), None), None);
        assert_eq!(rate_limit(None, Some(0)), None);
        assert_eq!(rate_limit(Some(0), Some(100)), None);
        assert_eq!(rate_limit(None, Some(100)), Some(100 * 1024));
        assert_eq!(rate_limit(Some(2), Some(100)), Some(2048));
    }
}
