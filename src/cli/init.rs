//! `herald init`: provision a whole local cluster (keys and one config file per
//! node) in one directory. See [`crate::config::init_cluster`].

use std::path::PathBuf;

use clap::Args;

use super::keygen::{LEAF_DAYS_DEFAULT, print_written};
use super::{CliError, EXIT_OK};
use crate::config;

/// Default first listen port; node `i` listens on `base_port + i`.
pub const BASE_PORT_DEFAULT: u16 = 7400;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Cluster directory: receives keys/ and one NAME.toml per node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Node names, comma separated (e.g. a,b,c).
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// UDP port of the first node; the others follow.
    #[arg(long, default_value_t = BASE_PORT_DEFAULT)]
    pub base_port: u16,
    /// Give every node an HTTP API (`[api]`, docs/API.md): node `i` listens
    /// on TCP `127.0.0.1:(PORT + i)`. Without it, no node has one.
    #[arg(long, value_name = "PORT")]
    pub api_base_port: Option<u16>,
    /// Validity of the CA and node certificates, in days.
    #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object instead of one line per file.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InitArgs) -> Result<u8, CliError> {
    let written = config::init_cluster_with_api(
        &args.dir,
        &args.nodes,
        args.base_port,
        args.api_base_port,
        args.days,
        args.force,
    )?;
    print_written(&written, args.json);
    Ok(EXIT_OK)
}
