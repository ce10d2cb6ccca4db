//! The configuration file (`/etc/vault/vault.toml`, `$VAULT_CONFIG` or
//! `--config`): repository, default retention, sources and notifications,
//! so that `vault backup && vault forget` from cron needs no flags.
//!
//! Parsing is strict: unknown keys, missing fields and unknown kinds are
//! errors that name the file, the line and what was expected.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use toml::Spanned;
use vault_engine::retention::{Count, KeepPolicy, RetentionDuration};

pub(crate) const DEFAULT_PATH: &str = "/etc/vault/vault.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) repository: RepositoryConfig,
    #[serde(default)]
    pub(crate) retention: Option<RetentionConfig>,
    #[serde(default, rename = "source")]
    pub(crate) sources: Vec<SourceConfig>,
    #[serde(default)]
    pub(crate) notify: NotifyConfig,
    #[serde(skip)]
    pub(crate) path: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepositoryConfig {
    /// Local path or S3 URL.
    pub(crate) url: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) password_command: Option<String>,
    /// File holding the S3 access key id (first line).
    pub(crate) access_key_id_file: Option<PathBuf>,
    /// File holding the S3 secret access key (first line).
    pub(crate) secret_access_key_file: Option<PathBuf>,
    pub(crate) region: Option<String>,
    /// Path-style requests (default for custom endpoints); false selects
    /// virtual-hosted style.
    pub(crate) path_style: Option<bool>,
    #[serde(default)]
    pub(crate) allow_http: bool,
    /// KiB/s, as `--limit-upload` (which wins when given); 0 is no limit.
    pub(crate) limit_upload: Option<u64>,
    /// KiB/s, as `--limit-download`; 0 is no limit.
    pub(crate) limit_download: Option<u64>,
}

/// A list of webhook URLs, or one URL as a string. Without the second
/// form, `on_failure = "https://..."` (an easy slip) failed every command
/// with a type error that quoted the URL, and its token, into cron mail;
/// a value of any other shape is refused without quoting it.
fn webhooks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(url)) => Ok(vec![url]),
        Ok(OneOrMany::Many(urls)) => Ok(urls),
        Err(_) => Err(serde::de::Error::custom(
            "expected a webhook URL or a list of them (\"https://...\" or [\"https://...\"])",
        )),
    }
}

/// A retention count: a number, -1, or "unlimited".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum CountValue {
    Number(i64),
    Text(String),
}

impl CountValue {
    fn to_count(&self) -> Result<Count> {
        match self {
            CountValue::Number(-1) => Ok(Count::Unlimited),
            CountValue::Number(n) => {
                Ok(Count::Limited(u32::try_from(*n).with_context(|| {
                    format!("invalid count {n}: use N, -1 or \"unlimited\"")
                })?))
            }
            CountValue::Text(s) => s
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid count {s:?}: {e}")),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetentionConfig {
    keep_last: Option<CountValue>,
    keep_hourly: Option<CountValue>,
    keep_daily: Option<CountValue>,
    keep_weekly: Option<CountValue>,
    keep_monthly: Option<CountValue>,
    keep_yearly: Option<CountValue>,
    keep_within: Option<String>,
    keep_within_hourly: Option<String>,
    keep_within_daily: Option<String>,
    keep_within_weekly: Option<String>,
    keep_within_monthly: Option<String>,
    keep_within_yearly: Option<String>,
    #[serde(default)]
    keep_tag: Vec<String>,
}

impl RetentionConfig {
    pub(crate) fn to_policy(&self) -> Result<KeepPolicy> {
        let count = |c: &Option<CountValue>| c.as_ref().map(CountValue::to_count).transpose();
        let dur = |d: &Option<String>| -> Result<Option<RetentionDuration>> {
            d.as_deref()
                .map(|s| {
                    s.parse()
                        .map_err(|e| anyhow::anyhow!("invalid duration {s:?}: {e}"))
                })
                .transpose()
        };
        Ok(KeepPolicy {
            last: count(&self.keep_last)?,
            hourly: count(&self.keep_hourly)?,
            daily: count(&self.keep_daily)?,
            weekly: count(&self.keep_weekly)?,
            monthly: count(&self.keep_monthly)?,
            yearly: count(&self.keep_yearly)?,
            within: dur(&self.keep_within)?,
            within_hourly: dur(&self.keep_within_hourly)?,
            within_daily: dur(&self.keep_within_daily)?,
            within_weekly: dur(&self.keep_within_weekly)?,
            within_monthly: dur(&self.keep_within_monthly)?,
            within_yearly: dur(&self.keep_within_yearly)?,
            tags: self
                .keep_tag
                .iter()
                .map(|l| vault_engine::snapshot::tag_list(l))
                .collect(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SourceKind {
    Postgres,
    Mysql,
    Files,
    Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DumpFormat {
    /// Plain SQL: restorable with psql, dedups well.
    #[default]
    Plain,
    /// `pg_dump -Fc -Z0`: custom format without compression.
    Custom,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceConfig {
    pub(crate) name: Spanned<String>,
    pub(crate) kind: SourceKind,
    // postgres / mysql
    pub(crate) database: Option<String>,
    /// libpq connection string (postgres); never a password.
    pub(crate) connection: Option<String>,
    /// PGPASSFILE for the dump process (postgres).
    pub(crate) passfile: Option<PathBuf>,
    #[serde(default)]
    pub(crate) format: DumpFormat,
    /// Client defaults file with credentials (mysql).
    pub(crate) defaults_file: Option<PathBuf>,
    /// Also store roles and tablespaces (`pg_dumpall --globals-only`) beside
    /// the dump (postgres).
    #[serde(default)]
    pub(crate) globals: bool,
    /// Directory holding pg_dump/psql or mariadb-dump/mariadb.
    pub(crate) bin_dir: Option<PathBuf>,
    // files
    #[serde(default)]
    pub(crate) paths: Vec<PathBuf>,
    #[serde(default)]
    pub(crate) exclude: Vec<String>,
    #[serde(default)]
    pub(crate) iexclude: Vec<String>,
    #[serde(default)]
    pub(crate) exclude_caches: bool,
    #[serde(default)]
    pub(crate) exclude_if_present: Vec<String>,
    /// A size such as "500M" (`parse_size`), checked when loading.
    pub(crate) exclude_larger_than: Option<String>,
    #[serde(default)]
    pub(crate) one_file_system: bool,
    /// Save a snapshot even when the paths hold no file; otherwise that
    /// fails the source (an unmounted volume looks exactly like this).
    #[serde(default)]
    pub(crate) allow_empty: bool,
    // command
    #[serde(default)]
    pub(crate) command: Vec<String>,
    pub(crate) filename: Option<String>,
    // common
    /// Run before the backup (argv, no shell); failing fails the source.
    #[serde(default)]
    pub(crate) before: Vec<String>,
    /// Run after the backup, whether it worked or not (argv, no shell).
    #[serde(default)]
    pub(crate) after: Vec<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    pub(crate) retention: Option<RetentionConfig>,
    /// A duration such as "3h" (`parse_duration`): a dump, command or hook
    /// still running then is stopped and the source fails.
    pub(crate) timeout: Option<String>,
    /// A duration such as "26h": `vault status` calls the source stale
    /// when its newest snapshot is older (default: `[notify] max_age`).
    pub(crate) max_age: Option<String>,
    /// A duration such as "35d": `vault status` calls the source's drills
    /// overdue when none has passed within it (default: `[notify]
    /// drill_max_age`; none: drills are not expected).
    pub(crate) drill_max_age: Option<String>,
    /// `vault drill` fails unless each of these tables (as `vault drill`
    /// lists them: `public.users`, or `users` for MySQL) has at least
    /// this many rows (database sources).
    #[serde(default)]
    pub(crate) drill_min_rows: std::collections::BTreeMap<String, u64>,
}

impl SourceConfig {
    pub(crate) fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// How old its newest snapshot may be before `vault status` calls the
    /// source stale (its `max_age`, else `default`); checked when loading.
    pub(crate) fn max_age(&self, default: Option<&str>) -> Option<std::time::Duration> {
        let text = self.max_age.as_deref().or(default)?;
        crate::args::parse_duration(text).ok()
    }

    /// How long ago a drill of the source must have passed before `vault
    /// status` calls its drills overdue (its `drill_max_age`, else
    /// `default`); checked when loading.
    pub(crate) fn drill_max_age(&self, default: Option<&str>) -> Option<std::time::Duration> {
        let text = self.drill_max_age.as_deref().or(default)?;
        crate::args::parse_duration(text).ok()
    }

    /// The retention for this source: its own, else the default.
    pub(crate) fn policy(&self, default: Option<&RetentionConfig>) -> Result<Option<KeepPolicy>> {
        self.retention
            .as_ref()
            .or(default)
            .map(RetentionConfig::to_policy)
            .transpose()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Heartbeat {
    Daily,
    Weekly,
    Monthly,
}

impl Heartbeat {
    pub(crate) fn secs(self) -> i64 {
        match self {
            Heartbeat::Daily => 86_400,
            Heartbeat::Weekly => 7 * 86_400,
            Heartbeat::Monthly => 30 * 86_400,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotifyConfig {
    /// Webhooks POSTed on any failure.
    #[serde(default, deserialize_with = "webhooks")]
    pub(crate) on_failure: Vec<String>,
    /// Webhooks for the periodic success summary (default: on_failure's).
    #[serde(default, deserialize_with = "webhooks")]
    pub(crate) on_success: Vec<String>,
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) status_file: Option<PathBuf>,
    /// Default of each source's `max_age`.
    pub(crate) max_age: Option<String>,
    /// Default of each source's `drill_max_age`.
    pub(crate) drill_max_age: Option<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

/// Refuses secret-bearing files that every user can read.
pub(crate) fn ensure_private(path: &Path, what: &str) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        bail!(
            "{what} {} is readable by every user; it holds secrets: run `chmod o-rwx {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

impl Config {
    /// Finds the config: `--config`/`VAULT_CONFIG` (must exist), else the
    /// default path if present.
    pub(crate) fn discover(explicit: Option<&Path>) -> Result<Option<Config>> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(None),
        };
        Config::load(&path).map(Some)
    }

    pub(crate) fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(&text, s.start));
            anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
        })?;
        config.path = path.to_path_buf();
        config.validate(&text)?;
        Ok(config)
    }

    fn validate(&self, text: &str) -> Result<()> {
        let at = |s: &SourceConfig| {
            format!(
                "{}:{}",
                self.path.display(),
                line_of(text, s.name.span().start)
            )
        };
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            let name = s.name();
            if name.is_empty() || name.contains(['/', ',', ' ']) || name == "latest" {
                bail!(
                    "{}: invalid source name {name:?} (no '/', ',', spaces, not \"latest\")",
                    at(s)
                );
            }
            if !seen.insert(name.to_owned()) {
                bail!("{}: duplicate source name {name:?}", at(s));
            }
            let need = |field: &str, present: bool| -> Result<()> {
                if present {
                    Ok(())
                } else {
                    bail!(
                        "{}: source {name:?} of kind {:?} needs `{field}`",
                        at(s),
                        s.kind
                    )
                }
            };
            let forbid = |field: &str, present: bool| -> Result<()> {
                if present {
                    bail!(
                        "{}: `{field}` does not apply to source {name:?} of kind {:?}",
                        at(s),
                        s.kind
                    )
                }
                Ok(())
            };
            let db = s.database.is_some();
            match s.kind {
                SourceKind::Postgres => {
                    need("database", db)?;
                    forbid("defaults_file", s.defaults_file.is_some())?;
                    if s.connection.as_deref().is_some_and(|c| {
                        // libpq decodes a URI's query keys: `pass%77ord=`
                        // is a password too.
                        percent_encoding::percent_decode_str(c)
                            .decode_utf8_lossy()
                            .to_ascii_lowercase()
                            .contains("password")
                            || (crate::sources::is_pg_uri(c)
                                && crate::sources::pg_uri_has_password(c))
                    }) {
                        bail!(
                            "{}: source {name:?}: no password in `connection`; put it in a PGPASSFILE and set `passfile`",
                            at(s)
                        );
                    }
                }
                SourceKind::Mysql => {
                    need("database", db)?;
                    forbid("connection", s.connection.is_some())?;
                    forbid("passfile", s.passfile.is_some())?;
                }
                SourceKind::Files => {
                    need("paths", !s.paths.is_empty())?;
                    for marker in &s.exclude_if_present {
                        vault_engine::backup::check_marker(marker.as_ref()).map_err(|e| {
                            anyhow::anyhow!("{}: source {name:?}: exclude_if_present: {e}", at(s))
                        })?;
                    }
                    if let Some(size) = &s.exclude_larger_than {
                        crate::args::parse_size(size).map_err(|e| {
                            anyhow::anyhow!("{}: source {name:?}: exclude_larger_than: {e}", at(s))
                        })?;
                    }
                    forbid("database", db)?;
                    forbid("command", !s.command.is_empty())?;
                }
                SourceKind::Command => {
                    need("command", !s.command.is_empty())?;
                    forbid("database", db)?;
                    forbid("paths", !s.paths.is_empty())?;
                }
            }
            // Options of some kinds only: elsewhere they would do nothing.
            let databases = [SourceKind::Postgres, SourceKind::Mysql];
            for (field, present, kinds, which) in [
                ("globals", s.globals, &databases[..1], "postgres"),
                (
                    "allow_empty",
                    s.allow_empty,
                    &[SourceKind::Files][..],
                    "files",
                ),
                (
                    "drill_min_rows",
                    !s.drill_min_rows.is_empty(),
                    &databases[..],
                    "databases",
                ),
            ] {
                if present && !kinds.contains(&s.kind) {
                    bail!(
                        "{}: `{field}` does not apply to source {name:?} of kind {:?} (only to {which})",
                        at(s),
                        s.kind
                    );
                }
            }
            let hooks = !s.before.is_empty() || !s.after.is_empty();
            if s.timeout.is_some() && s.kind == SourceKind::Files && !hooks {
                bail!(
                    "{}: `timeout` does not apply to source {name:?} of kind {:?} (only to dumps, commands and hooks)",
                    at(s),
                    s.kind
                );
            }
            for (field, value) in [
                ("timeout", &s.timeout),
                ("max_age", &s.max_age),
                ("drill_max_age", &s.drill_max_age),
            ] {
                if let Some(d) = value {
                    crate::args::parse_duration(d)
                        .map_err(|e| anyhow::anyhow!("{}: source {name:?}: {field}: {e}", at(s)))?;
                }
            }
            if let Some(r) = s.retention.as_ref() {
                r.to_policy()
                    .with_context(|| format!("{}: retention of source {name:?}", at(s)))?;
            }
        }
        if let Some(r) = &self.retention {
            r.to_policy()
                .with_context(|| format!("{}: [retention]", self.path.display()))?;
        }
        for (field, value) in [
            ("max_age", &self.notify.max_age),
            ("drill_max_age", &self.notify.drill_max_age),
        ] {
            if let Some(d) = value {
                crate::args::parse_duration(d).map_err(|e| {
                    anyhow::anyhow!("{}: [notify] {field}: {e}", self.path.display())
                })?;
            }
        }
        for (field, urls) in [
            ("on_failure", &self.notify.on_failure),
            ("on_success", &self.notify.on_success),
        ] {
            for url in urls {
                crate::notify::check_url(url).map_err(|e| {
                    anyhow::anyhow!("{}: [notify] {field}: {e}", self.path.display())
                })?;
            }
        }
        let has_secrets = !self.notify.on_failure.is_empty() || !self.notify.on_success.is_empty();
        if has_secrets {
            ensure_private(&self.path, "config file (webhook URLs are credentials)")?;
        }
        Ok(())
    }

    pub(crate) fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Config::load(&path)
    }

    #[test]
    fn unknown_keys_name_file_and_line() {
        let err = parse("[repository]\nurl = \"/x\"\n\n[[source]]\nname = \"a\"\nkind = \"files\"\npaths = [\"/x\"]\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vault.toml:8") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn a_password_in_a_postgres_uri_is_refused_like_one_in_key_value_form() {
        let source = |conn: &str| {
            format!(
                "[[source]]\nname = \"db\"\nkind = \"postgres\"\ndatabase = \"shop\"\nconnection = \"{conn}\"\n"
            )
        };
        for bad in [
            "host=h password=x",
            "postgresql://u:secret@127.0.0.1:5432/shop",
            "postgres://u:s@h",
            // libpq decodes query keys.
            "postgresql://u@127.0.0.1:5432/app?pass%77ord=secret",
            "postgresql://u@h/app?sslmode=require&%70assword=secret",
        ] {
            let err = parse(&source(bad)).unwrap_err().to_string();
            assert!(err.contains("no password"), "{bad}: {err}");
        }
        for good in [
            "postgresql://u@127.0.0.1:5432",
            "postgres://h/db?sslmode=require",
        ] {
            parse(&source(good)).unwrap();
        }
    }

    #[test]
    fn unknown_kind_and_missing_fields_are_explained() {
        let err = parse("[[source]]\nname = \"a\"\nkind = \"oracle\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vault.toml:3") && err.contains("postgres"),
            "{err}"
        );
        let err = parse("\n[[source]]\nname = \"db\"\nkind = \"postgres\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vault.toml:3") && err.contains("needs `database`"),
            "{err}"
        );
        let err = parse(
            "[[source]]\nname = \"f\"\nkind = \"files\"\npaths = [\"/x\"]\nexclude_larger_than = \"lots\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("vault.toml:2") && err.contains("exclude_larger_than"),
            "{err}"
        );
    }

    #[test]
    fn retention_overrides_and_counts() {
        let c = parse(
            "[retention]\nkeep_daily = 7\nkeep_monthly = \"unlimited\"\n[[source]]\nname = \"a\"\nkind = \"files\"\npaths = [\"/x\"]\nretention = { keep_last = 3, keep_yearly = -1 }\n",
        )
        .unwrap();
        let p = c.sources[0].policy(c.retention.as_ref()).unwrap().unwrap();
        assert_eq!(p.last, Some(Count::Limited(3)));
        assert_eq!(p.yearly, Some(Count::Unlimited));
        assert_eq!(p.daily, None);
        let d = c.retention.as_ref().unwrap().to_policy().unwrap();
        assert_eq!(d.monthly, Some(Count::Unlimited));
    }

    #[test]
    fn world_readable_config_with_webhooks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.toml");
        std::fs::write(&path, "[notify]\non_failure = [\"http://127.0.0.1/x\"]\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("readable by every user"), "{err}");
    }
}
