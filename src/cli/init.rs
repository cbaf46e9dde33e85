//! `herald init`: placeholder, implemented on the identity branch.

use clap::Args;

use super::CliError;

#[derive(Debug, Args)]
pub struct InitArgs {}

pub fn run(_args: InitArgs) -> Result<u8, CliError> {
    Err("init is not built yet".into())
}
