//! `herald outbox init` and `herald inbox init`: create the outbox table of
//! a configured source, or the inbox table (and its position table) of a
//! configured sink, in the service's database; with `--print`, only print
//! the DDL so a DBA can apply it (see `docs/OUTBOX.md`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, EXIT_OK};
use crate::config::NodeConfig;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Create the outbox table of a source named in the config (outbox_sources).
    Init(OutboxInitArgs),
}

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Create the inbox and position tables of a sink named in the config (inbox_sinks).
    Init(InboxInitArgs),
}

#[derive(Debug, Args)]
pub struct OutboxInitArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// The source's name in the config.
    #[arg(long)]
    pub source: String,
    /// Print the DDL instead of running it.
    #[arg(long)]
    pub print: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InboxInitArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// The sink's name in the config.
    #[arg(long)]
    pub sink: String,
    /// Print the DDL instead of running it.
    #[arg(long)]
    pub print: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run_outbox(command: OutboxCommand) -> Result<u8, CliError> {
    let OutboxCommand::Init(args) = command;
    let config = NodeConfig::load(&args.config)?;
    let (target, ddl) = runtime()?.block_on(crate::outbox::init_source(
        &config,
        &args.source,
        args.print,
    ))?;
    report(
        "outbox source",
        &args.source,
        &target,
        &ddl,
        args.print,
        args.json,
    )
}

pub fn run_inbox(command: InboxCommand) -> Result<u8, CliError> {
    let InboxCommand::Init(args) = command;
    let config = NodeConfig::load(&args.config)?;
    let (target, ddl) =
        runtime()?.block_on(crate::outbox::init_sink(&config, &args.sink, args.print))?;
    report(
        "inbox sink",
        &args.sink,
        &target,
        &ddl,
        args.print,
        args.json,
    )
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn report(
    what: &str,
    name: &str,
    target: &crate::outbox::Target,
    ddl: &[String],
    print: bool,
    json: bool,
) -> Result<u8, CliError> {
    if json {
        let value = serde_json::json!({
            "name": name,
            "database": target.backend.name(),
            "url": target.redacted(),
            "created": !print,
            "ddl": ddl,
        });
        println!("{value}");
    } else if print {
        for statement in ddl {
            println!("{statement};\n");
        }
    } else {
        println!(
            "{what} {name}: tables ready in {} ({})",
            target.backend.name(),
            target.redacted()
        );
    }
    Ok(EXIT_OK)
}
