//! Configured sources turned into backup sources, and database restores:
//! pg_dump / mariadb-dump streamed into the engine (never a temp file), and
//! dumps streamed back into psql / mariadb.
//!
//! Passwords never appear in argv: PostgreSQL reads them from a PGPASSFILE
//! (`passfile`), MySQL/MariaDB from a client defaults file
//! (`defaults_file`), and both files must not be world-readable.

use crate::config::{DumpFormat, SourceConfig, SourceKind, ensure_private};
use anyhow::{Context, Result, bail};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use vault_engine::backup::{CommandFile, Source};

/// The file name a dump source gets inside its snapshot.
pub(crate) fn dump_filename(s: &SourceConfig) -> String {
    match s.kind {
        SourceKind::Postgres if s.format == DumpFormat::Custom => format!("{}.dump", s.name()),
        SourceKind::Postgres | SourceKind::Mysql => format!("{}.sql", s.name()),
        SourceKind::Command => s.filename.clone().unwrap_or_else(|| s.name().to_owned()),
        SourceKind::Files => String::new(),
    }
}

/// The file beside a postgres source's dump with `globals = true`: roles
/// and tablespaces (`pg_dumpall --globals-only`).
pub(crate) fn globals_filename(s: &SourceConfig) -> String {
    format!("{}-globals.sql", s.name())
}

fn program(s: &SourceConfig, candidates: &[&str]) -> OsString {
    let find = |name: &str| -> Option<PathBuf> {
        match &s.bin_dir {
            Some(dir) => Some(dir.join(name)).filter(|p| p.exists()),
            None => std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.exists())
            }),
        }
    };
    candidates
        .iter()
        .find_map(|c| find(c))
        .map_or_else(|| OsString::from(candidates[0]), PathBuf::into_os_string)
}

fn pg_conninfo(s: &SourceConfig, database: &str) -> String {
    let base = s.connection.clone().unwrap_or_default();
    if is_pg_uri(&base) {
        // A URI takes the database as a parameter; appended `dbname='x'`
        // became part of its port or path.
        let encoded: String = database
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let joint = if base.contains('?') { '&' } else { '?' };
        return format!("{base}{joint}dbname={encoded}");
    }
    // libpq conninfo values may be quoted; database names are validated or
    // come from the config.
    format!(
        "{base} dbname='{}'",
        database.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Whether a libpq connection string is in URI form.
pub(crate) fn is_pg_uri(connection: &str) -> bool {
    connection.starts_with("postgresql://") || connection.starts_with("postgres://")
}

/// Whether a URI-form connection string carries a password in its user
/// part (`postgresql://user:secret@host`), which would reach pg_dump's argv.
pub(crate) fn pg_uri_has_password(connection: &str) -> bool {
    let Some(rest) = connection.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

fn pg_env(s: &SourceConfig) -> Result<Vec<(OsString, OsString)>> {
    match &s.passfile {
        Some(f) => {
            ensure_private(f, "PGPASSFILE")?;
            Ok(vec![("PGPASSFILE".into(), f.clone().into_os_string())])
        }
        None => Ok(Vec::new()),
    }
}

fn my_defaults(s: &SourceConfig) -> Result<Vec<OsString>> {
    match &s.defaults_file {
        Some(f) => {
            ensure_private(f, "MySQL defaults file")?;
            let mut arg = OsString::from("--defaults-file=");
            arg.push(f);
            Ok(vec![arg])
        }
        None => Ok(Vec::new()),
    }
}

/// What to back up for a configured source.
pub(crate) fn backup_source(s: &SourceConfig) -> Result<Source> {
    let filename = dump_filename(s);
    Ok(match s.kind {
        SourceKind::Files => Source::Paths(s.paths.clone()),
        SourceKind::Command => {
            let (program, args) = s.command.split_first().context("empty command")?;
            Source::Command {
                filename,
                program: program.into(),
                args: args.iter().map(OsString::from).collect(),
                env: Vec::new(),
            }
        }
        SourceKind::Postgres => {
            let database = s.database.as_deref().context("database")?;
            let env = pg_env(s)?;
            let mut args: Vec<OsString> = vec!["--no-password".into()];
            match s.format {
                // Plain SQL: uncompressed text dedups across days.
                DumpFormat::Plain => args.push("--format=plain".into()),
                // Custom format compresses by default, which would defeat
                // content-defined chunking: force it off.
                DumpFormat::Custom => {
                    args.push("--format=custom".into());
                    args.push("--compress=0".into());
                }
            }
            args.push("--dbname".into());
            args.push(pg_conninfo(s, database).into());
            let mut commands = vec![CommandFile {
                filename,
                program: program(s, &["pg_dump"]),
                args,
                env: env.clone(),
            }];
            // pg_dump leaves out roles and tablespaces, without which a
            // restore onto a fresh server fails on the first owner: they
            // go beside the dump, in the same snapshot.
            if s.globals {
                commands.push(CommandFile {
                    filename: globals_filename(s),
                    program: program(s, &["pg_dumpall"]),
                    args: vec![
                        "--globals-only".into(),
                        "--no-password".into(),
                        "--dbname".into(),
                        pg_conninfo(s, database).into(),
                        // Its connection's database is ignored: this one.
                        "--database".into(),
                        database.into(),
                    ],
                    env,
                });
            }
            Source::Commands(commands)
        }
        SourceKind::Mysql => {
            let database = s.database.as_deref().context("database")?;
            let mut args = my_defaults(s)?;
            for a in [
                "--single-transaction",
                "--quick",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
            ] {
                args.push(a.into());
            }
            args.push(database.into());
            Source::Command {
                filename,
                program: program(s, &["mariadb-dump", "mysqldump"]),
                args,
                env: Vec::new(),
            }
        }
    })
}

/// A source's hooks, as borgmatic's before_backup/after_backup.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hook {
    /// Before its backup; failing fails the source unsaved.
    Before,
    /// After its backup (and after `before`), whether that worked or not.
    After { ok: bool },
}

/// Runs the source's `before` or `after` command, if it has one: an argv,
/// no shell, with VAULT_SOURCE (and for `after` VAULT_RESULT = ok|failed)
/// and without vault's secrets, stopped at `timeout` or, `before` only,
/// when `cancel` is set.
pub(crate) fn run_hook(
    s: &SourceConfig,
    hook: Hook,
    timeout: Option<std::time::Duration>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    let (argv, what) = match hook {
        Hook::Before => (&s.before, "before hook"),
        Hook::After { .. } => (&s.after, "after hook"),
    };
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut env: Vec<(OsString, OsString)> = vec![("VAULT_SOURCE".into(), s.name().into())];
    if let Hook::After { ok } = hook {
        env.push((
            "VAULT_RESULT".into(),
            if ok { "ok" } else { "failed" }.into(),
        ));
    }
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    vault_engine::backup::run_command(what, program.as_ref(), &args, &env, timeout, cancel)?;
    Ok(())
}

/// Database names we create: letters, digits and underscores only, so
/// they need no quoting anywhere.
pub(crate) fn validate_db_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("database name {name:?}: use letters, digits and underscores (at most 63)");
    }
    Ok(())
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{what} failed ({}): {}", out.status, err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn psql(s: &SourceConfig, database: &str) -> Result<Command> {
    let mut cmd = vault_engine::backup::child_command(program(s, &["psql"]));
    cmd.args([
        "--no-password",
        "--no-psqlrc",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-X",
        "--dbname",
    ])
    .arg(pg_conninfo(s, database))
    .envs(pg_env(s)?);
    Ok(cmd)
}

fn mariadb(s: &SourceConfig) -> Result<Command> {
    let mut cmd = vault_engine::backup::child_command(program(s, &["mariadb", "mysql"]));
    cmd.args(my_defaults(s)?);
    Ok(cmd)
}

/// Creates database `target` for source `s`.
pub(crate) fn create_database(s: &SourceConfig, target: &str) -> Result<()> {
    validate_db_name(target)?;
    match s.kind {
        SourceKind::Postgres => run_checked(
            psql(s, "postgres")?.args(["-c", &format!("CREATE DATABASE \"{target}\"")]),
            "psql (create database)",
        ),
        SourceKind::Mysql => run_checked(
            mariadb(s)?.args(["-e", &format!("CREATE DATABASE `{target}`")]),
            "mariadb (create database)",
        ),
        _ => bail!("source {} is not a database", s.name()),
    }
    .map(|_| ())
}

/// Drops database `target` (drills clean up after themselves, and so does
/// a restore whose load failed).
pub(crate) fn drop_database(s: &SourceConfig, target: &str) -> Result<()> {
    validate_db_name(target)?;
    let sql = drop_statement(s, target);
    match s.kind {
        SourceKind::Postgres => run_checked(
            psql(s, "postgres")?.args(["-c", &sql]),
            "psql (drop database)",
        ),
        SourceKind::Mysql => run_checked(mariadb(s)?.args(["-e", &sql]), "mariadb (drop database)"),
        _ => bail!("source {} is not a database", s.name()),
    }
    .map(|_| ())
}

/// The SQL that drops database `target` (a validated name) of source `s`.
pub(crate) fn drop_statement(s: &SourceConfig, target: &str) -> String {
    match s.kind {
        SourceKind::Mysql => format!("DROP DATABASE IF EXISTS `{target}`"),
        _ => format!("DROP DATABASE IF EXISTS \"{target}\""),
    }
}

/// Streams a dump into database `target` via the client; `write` produces
/// the dump bytes into the client's stdin.
pub(crate) fn load_database(
    s: &SourceConfig,
    target: &str,
    write: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    validate_db_name(target)?;
    let mut cmd = match (s.kind, s.format) {
        (SourceKind::Postgres, DumpFormat::Plain) => psql(s, target)?,
        (SourceKind::Postgres, DumpFormat::Custom) => {
            let mut c = vault_engine::backup::child_command(program(s, &["pg_restore"]));
            c.args(["--no-password", "--exit-on-error", "--no-owner", "--dbname"])
                .arg(pg_conninfo(s, target))
                .envs(pg_env(s)?);
            c
        }
        (SourceKind::Mysql, _) => {
            let mut c = mariadb(s)?;
            c.arg(target);
            c
        }
        _ => bail!("source {} is not a database", s.name()),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the database client")?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let fed = write(&mut stdin);
    drop(stdin);
    let out = child
        .wait_with_output()
        .context("waiting for the database client")?;
    // Unless the repository could not give the dump whole: then the client
    // failed on a cut-off input ("input file is too short"), and the cause
    // to report, with its exit code (5 or 4), is the damage.
    let damaged = fed.as_ref().is_err_and(|e| {
        e.chain()
            .filter_map(|e| e.downcast_ref::<vault_engine::Error>())
            .any(|e| {
                matches!(
                    e.kind(),
                    vault_engine::ErrorKind::Corrupt | vault_engine::ErrorKind::NotFound
                )
            })
    });
    if damaged && let Err(e) = fed {
        return Err(e.context(format!(
            "loading the dump into {target} stopped: the repository could not give it whole"
        )));
    }
    // Otherwise the client's failure first: it stops reading at its first
    // error (ON_ERROR_STOP, --exit-on-error), so feeding it then fails with
    // a broken pipe that says nothing, and that must never pass for the
    // closed stdout of `vault ... | head`, which ends a command quietly.
    if !out.status.success() {
        bail!(
            "loading the dump into {target} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Err(e) = fed {
        bail!("feeding the dump to the database client: {e:#}");
    }
    Ok(())
}

/// Base tables of `target` with exact row counts. Views are not counted:
/// their rows are the tables' rows again (a view over a table doubled its
/// count), and a view of another database's tables is no part of this one.
/// PostgreSQL's `pg_tables` lists plain and partitioned tables only (no
/// views, materialized views or foreign tables); MySQL's
/// `information_schema.tables` lists views too, and MariaDB its sequences.
pub(crate) fn table_counts(s: &SourceConfig, target: &str) -> Result<Vec<(String, u64)>> {
    let tables = relation_names(
        s,
        target,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        "('BASE TABLE', 'SYSTEM VERSIONED')",
        "tables",
    )?;
    let mut out = Vec::new();
    for table in tables {
        let query = format!("SELECT count(*) FROM {table}");
        let text = match s.kind {
            SourceKind::Postgres => {
                run_checked(psql(s, target)?.args(["-At", "-c", &query]), "psql (count)")?
            }
            _ => run_checked(
                mariadb(s)?.args(["-N", "-B", target, "-e", &query]),
                "mariadb (count)",
            )?,
        };
        let n: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("row count of {table}: {text:?}"))?;
        out.push((table, n));
    }
    Ok(out)
}

/// Views (and PostgreSQL's materialized views) of `target`, named as
/// [`table_counts`] names tables: to tell a `drill_min_rows` key naming
/// one that only tables are counted.
pub(crate) fn view_names(s: &SourceConfig, target: &str) -> Result<Vec<String>> {
    relation_names(
        s,
        target,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(viewname) FROM pg_views WHERE schemaname NOT IN ('pg_catalog', 'information_schema') UNION ALL SELECT quote_ident(schemaname) || '.' || quote_ident(matviewname) FROM pg_matviews ORDER BY 1",
        "('VIEW')",
        "views",
    )
}

/// The quoted names of `target`'s relations: PostgreSQL's as `postgres_sql`
/// lists them, MySQL's of the `information_schema` table types in
/// `mysql_types` (an SQL list); `what` names them in errors.
fn relation_names(
    s: &SourceConfig,
    target: &str,
    postgres_sql: &str,
    mysql_types: &str,
    what: &str,
) -> Result<Vec<String>> {
    validate_db_name(target)?;
    let text = match s.kind {
        SourceKind::Postgres => run_checked(
            psql(s, target)?.args(["-At", "-c", postgres_sql]),
            &format!("psql (list {what})"),
        )?,
        SourceKind::Mysql => run_checked(
            mariadb(s)?.args([
                "-N",
                "-B",
                "-e",
                &format!("SELECT CONCAT('`', table_name, '`') FROM information_schema.tables WHERE table_schema = '{target}' AND table_type IN {mysql_types} ORDER BY 1"),
            ]),
            &format!("mariadb (list {what})"),
        )?,
        _ => bail!("source {} is not a database", s.name()),
    };
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A physical base backup (`pg_basebackup` as a tar stream, WAL excluded:
/// it comes from the archive) of a postgres source.
pub(crate) fn physical_source(s: &SourceConfig) -> Result<Source> {
    if s.kind != SourceKind::Postgres {
        bail!(
            "--physical needs a postgres source; {} is not one",
            s.name()
        );
    }
    let database = s.database.as_deref().unwrap_or("postgres");
    // The base backup holds no WAL (it comes from the archive): without
    // archiving it can never be restored, and nothing would say so until
    // the day it is needed.
    let archive_mode = run_checked(
        psql(s, database)?.args(["-At", "-c", "SHOW archive_mode"]),
        "psql (archive_mode)",
    )?;
    if archive_mode.trim() == "off" {
        return Err(vault_engine::Error::SourceFailed(
            "archive_mode is off on the server: a base backup without archived WAL can never be restored; set archive_mode = on and archive_command = 'vault wal push %p' (docs/pitr.md), restart PostgreSQL, then back up".into(),
        )
        .into());
    }
    let args: Vec<OsString> = vec![
        "--pgdata=-".into(),
        "--format=tar".into(),
        "--wal-method=none".into(),
        "--checkpoint=fast".into(),
        "--no-password".into(),
        "--dbname".into(),
        pg_conninfo(s, database).into(),
    ];
    Ok(Source::Command {
        filename: "base.tar".into(),
        program: program(s, &["pg_basebackup"]),
        args,
        env: pg_env(s)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_connection(connection: &str) -> SourceConfig {
        let text = format!(
            "name = \"db\"\nkind = \"postgres\"\ndatabase = \"shop\"\nconnection = \"{connection}\"\n"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn the_database_joins_a_uri_as_a_parameter_and_key_value_as_a_pair() {
        assert_eq!(
            pg_conninfo(&with_connection("postgresql://u@127.0.0.1:5432"), "shop"),
            "postgresql://u@127.0.0.1:5432?dbname=shop"
        );
        assert_eq!(
            pg_conninfo(&with_connection("postgres://h?sslmode=require"), "a b"),
            "postgres://h?sslmode=require&dbname=a%20b"
        );
        assert_eq!(
            pg_conninfo(&with_connection("host=h port=5"), "it's"),
            "host=h port=5 dbname='it\\'s'"
        );
    }
}
