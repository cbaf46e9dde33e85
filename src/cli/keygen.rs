//! `herald keygen`: placeholder, implemented on the identity branch.

use clap::Subcommand;

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum KeygenCommand {
    /// Placeholder.
    Ca,
}

pub fn run(_cmd: KeygenCommand) -> Result<u8, CliError> {
    Err("keygen is not built yet".into())
}
