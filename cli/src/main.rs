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
        // No colour codes in cron mail and log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let cancel = global::install_interrupt_handler();
    let result = commands::run(cli, cancel);
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
