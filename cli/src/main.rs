//! The `vault` command: parses arguments, runs one command, and maps the
//! outcome to an exit code a cron script can rely on (see `exit.rs`).
//!
//! Standard output is written through `output::outln!`, never `println!`,
//! which panics when the output fails (a full disk, a closed pipe): the
//! failure is an error like any other, with its exit code.

#![deny(clippy::print_stdout)]

mod args;
mod commands;
mod config;
mod exit;
mod global;
mod notify;
mod output;
mod pitr;
mod requests;
mod snapshot_fs;
mod sources;
mod status;
mod timespec;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Before parsing, a guess: only for a command line that does not parse.
    let wal_fetch = is_wal_fetch(std::env::args_os().skip(1));
    let matches = match empty_env_as_unset(args::Cli::command()).try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(&e, wal_fetch),
    };
    let cli = match args::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return usage_error(&e, wal_fetch),
    };
    // "backup", "key add", "wal push": the operation `vault stats` reports.
    let mut command = Vec::new();
    let mut sub = matches.subcommand();
    while let Some((name, m)) = sub {
        command.push(name);
        sub = m.subcommand();
    }
    let command = command.join(" ");
    let wal_fetch = command == "wal fetch";
    if wal_fetch {
        // A panic exits 101, which PostgreSQL would read as "not archived".
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::exit(i32::from(exit::ABORT_RECOVERY));
        }));
    }
    let filter = match cli.global.verbose {
        0 if cli.global.quiet => "error",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VAULT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        // No colour codes in cron mail and log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let cancel = global::install_interrupt_handler();
    let result = global::settle_interrupt(commands::run(cli, cancel), &command);
    let success = matches!(&result, Ok(code) if *code == ExitCode::SUCCESS);
    requests::record(&command, success);
    match result {
        Ok(code) => code,
        Err(err) => {
            // Never for wal fetch: a success there says the file is in place.
            if !wal_fetch && exit::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("vault: error: {err:#}");
            if wal_fetch {
                // Only a file the archive does not have may end recovery
                // (wal.rs returns that as Ok); anything else must stop it.
                ExitCode::from(exit::ABORT_RECOVERY)
            } else {
                exit::code_for(&err)
            }
        }
    }
}

/// Whether the arguments run `vault wal fetch`, PostgreSQL's
/// `restore_command`: decided before parsing, since a command line that
/// does not parse (a flag this version lacks) must stop recovery too.
fn is_wal_fetch(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let mut args = args.skip_while(|a| a.to_str() != Some("wal"));
    args.next().is_some() && args.any(|a| a.to_str() == Some("fetch"))
}

/// `cmd` with every option that an environment variable also sets left
/// unset when that variable is exported empty, as restic takes an empty
/// variable: a script template's `export VAULT_PASSWORD_FILE=` must not
/// fail every command with a usage error before the password order (and
/// the next source of a password) applies. An empty value given on the
/// command line is still refused.
fn empty_env_as_unset(mut cmd: clap::Command) -> clap::Command {
    let empty: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.is_empty())
        })
        .map(|a| a.get_id().clone())
        .collect();
    for id in empty {
        cmd = cmd.mut_arg(id, |a| a.env(None::<&'static str>));
    }
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, empty_env_as_unset);
    }
    cmd
}

/// Prints a usage error (or help) and exits as clap would, except for
/// `wal fetch`, where any error must stop PostgreSQL's recovery.
fn usage_error(e: &clap::Error, wal_fetch: bool) -> ExitCode {
    if wal_fetch && e.use_stderr() {
        let _ = e.print();
        return ExitCode::from(exit::ABORT_RECOVERY);
    }
    if e.kind() == clap::error::ErrorKind::ArgumentConflict {
        let _ = e.print();
        // A flag that was not typed but exported: say where it came from.
        let message = e.to_string();
        for (flag, var) in [
            ("--password-file", "VAULT_PASSWORD_FILE"),
            ("--password-command", "VAULT_PASSWORD_COMMAND"),
            ("--repo", "VAULT_REPOSITORY"),
            ("--repository-file", "VAULT_REPOSITORY_FILE"),
        ] {
            let exported = std::env::var_os(var).is_some_and(|v| !v.is_empty());
            if exported && message.contains(&format!("'{flag} ")) {
                eprintln!("note: {flag} is given by {var} in the environment");
            }
        }
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    e.exit()
}
