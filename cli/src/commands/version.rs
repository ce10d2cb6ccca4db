//! `vault version`: what `restic version` prints, for bug reports and
//! scripts that check the installed build.

use crate::args::GlobalArgs;
use crate::output::{self, outln};
use anyhow::Result;
use std::process::ExitCode;

pub(crate) fn run(g: &GlobalArgs) -> Result<ExitCode> {
    let version = env!("CARGO_PKG_VERSION");
    let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);
    if g.json {
        output::print_json(&serde_json::json!({
            "version": version,
            "os": os,
            "arch": arch,
            "repository_format": vault_engine::repository::FORMAT_VERSION,
        }))?;
    } else {
        outln!(
            "vault {version} on {os}/{arch}, repository format {}",
            vault_engine::repository::FORMAT_VERSION
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
