//! `herald export`: write a self-contained audit bundle of every feed.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, EXIT_OK};
use crate::audit::export::export_store;
use crate::clock;
use crate::config::NodeConfig;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Where to write the export.
    #[arg(long)]
    pub out: PathBuf,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExportArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    let (_, identity) = config.load_identity(clock::now_us())?;
    // Read-only snapshot: works while the node runs.
    let conn = super::open_store_read_only(&args.config, &config)?;
    let summary = export_store(
        &conn,
        &config.service,
        &identity.signing_key,
        clock::now_us(),
        &args.out,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "exported {} events of {} feeds ({} fork records, {} bytes) to {}",
            summary.events,
            summary.feeds,
            summary.forks,
            summary.bytes,
            summary.path.display()
        );
    }
    Ok(EXIT_OK)
}
