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
mod snapshot_fs;
mod sources;
mod status;
mod timespec;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
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
    match commands::run(cli, cancel) {
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
