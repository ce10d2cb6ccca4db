//! `vault completion SHELL`: the shell completion script, generated from
//! the same definitions as the parser so it never lags behind it.
//! Install, e.g.: `vault completion bash > /etc/bash_completion.d/vault`.

use anyhow::Result;
use clap::CommandFactory;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct CompletionArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

pub(crate) fn run(args: &CompletionArgs) -> Result<ExitCode> {
    let mut command = crate::args::Cli::command();
    // Into memory first: `generate` panics when its writer fails (a closed
    // pipe), while a write error here is reported like any other.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "vault", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}
