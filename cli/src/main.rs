//! The `vault` command: parses arguments, runs one command, and maps the
//! outcome to an exit code a cron script can rely on (see `exit.rs`).

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
    let matches = args::Cli::command().get_matches();
    let cli = args::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // "backup", "key add", "wal push": the operation `vault stats` reports.
    let mut command = Vec::new();
    let mut sub = matches.subcommand();
    while let Some((name, m)) = sub {
        command.push(name);
        sub = m.subcommand();
    }
    let command = command.join(" ");
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
        .with_target(false)
        .without_time()
        .init();
    let cancel = global::install_interrupt_handler();
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stdout_failure::install();
        commands::run(cli, cancel)
    })) {
        Ok(result) => result,
        Err(panic) => match stdout_failure::code() {
            Some(code) => return ExitCode::from(code),
            None => std::panic::resume_unwind(panic),
        },
    };
    let success = matches!(&result, Ok(code) if *code == ExitCode::SUCCESS);
    requests::record(&command, success);
    match result {
        Ok(code) => code,
        Err(err) => {
            if exit::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("vault: error: {err:#}");
            exit::code_for(&err)
        }
    }
}

/// `println!` panics when standard output fails: a full disk behind
/// `vault dump > file`, a closed pipe. Such a panic becomes an error
/// message and an exit code (7 for a full disk, 0 for a closed pipe, as
/// for the commands that write through `writeln!`), after unwinding, so the
/// repository's lock is still released. Any other panic stays a panic.
mod stdout_failure {
    use std::sync::OnceLock;

    static CODE: OnceLock<u8> = OnceLock::new();

    pub(crate) fn install() {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or_default();
            // The message std's print macros panic with.
            let Some(error) = message.strip_prefix("failed printing to stdout: ") else {
                return default(info);
            };
            let code = if error.contains("Broken pipe") {
                0
            } else {
                eprintln!("vault: error: writing output: {error}");
                if error.contains("No space left") || error.contains("quota") {
                    crate::exit::NO_SPACE
                } else {
                    crate::exit::FATAL
                }
            };
            let _ = CODE.set(code);
        }));
    }

    /// The exit code, if standard output failed.
    pub(crate) fn code() -> Option<u8> {
        CODE.get().copied()
    }
}
