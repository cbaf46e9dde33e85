//! `herald saga`: start sagas through the running node, show their state
//! from the node's store, and rebuild a saga's timeline offline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::{CliError, EXIT_OK, EXIT_PROBLEMS};
use crate::audit::verify::format_timestamp;
use crate::config::NodeConfig;
use crate::node::client::{ClientRequest, ClientResponse};
use crate::saga::{Saga, SagaDefinition, SagaStatus};

/// Most sagas `herald saga list` prints unless told otherwise.
pub const LIST_LIMIT_DEFAULT: usize = 100;
/// How often `saga start --wait` looks at the saga's state.
pub const WAIT_POLL_MS: u64 = 100;

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Start a saga on the running node (it orchestrates) and print its id.
    Start(StartArgs),
    /// Show one saga's state and steps from the node's store.
    Status(StatusArgs),
    /// List the node's sagas, newest first.
    List(ListArgs),
    /// Rebuild a saga's timeline offline from a verified export.
    History(HistoryArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The orchestrating node's config file (the node must be running).
    #[arg(long)]
    pub config: PathBuf,
    /// The saga definition (TOML; see docs/SAGAS.md).
    #[arg(long)]
    pub definition: PathBuf,
    /// The saga's input: a JSON document handed to every step.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Wait until the saga ends (at most this long) and print how it ended;
    /// exit 0 completed, 1 compensated or failed.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The saga id.
    pub id: Uuid,
    /// The orchestrating node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The orchestrating node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Only sagas with this status (in_progress, compensating, completed,
    /// compensated, failed).
    #[arg(long)]
    pub status: Option<SagaStatus>,
    /// Most sagas to print.
    #[arg(long, default_value_t = LIST_LIMIT_DEFAULT)]
    pub limit: usize,
    /// Print JSON (one array).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The saga id.
    pub id: Uuid,
    /// An export (`herald export`) of any node that holds the saga's events.
    #[arg(long)]
    pub export: PathBuf,
    /// The CA, revocation list and channel keys (with channel keys the
    /// timeline shows payloads too).
    #[command(flatten)]
    pub keys: super::verify::AuditKeys,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: SagaCommand) -> Result<u8, CliError> {
    match command {
        SagaCommand::Start(args) => start(args),
        SagaCommand::Status(args) => status(args),
        SagaCommand::List(args) => list(args),
        SagaCommand::History(args) => history(args),
    }
}

fn start(args: StartArgs) -> Result<u8, CliError> {
    let text = std::fs::read_to_string(&args.definition)
        .map_err(|e| format!("cannot read {}: {e}", args.definition.display()))?;
    // Check locally first so a bad file gets a precise error without a node.
    SagaDefinition::from_toml(&text).map_err(|e| format!("{}: {e}", args.definition.display()))?;
    serde_json::from_str::<serde_json::Value>(&args.data)
        .map_err(|e| format!("--data is not valid JSON: {e}"))?;
    let config = NodeConfig::load(&args.config)?;
    let request = ClientRequest::StartSaga {
        definition: text,
        input: args.data.clone(),
    };
    let id = super::ask_running_node(
        &args.config,
        &config,
        &request,
        "a saga start",
        |r| match r {
            ClientResponse::SagaStarted(id) => Some(id),
            _ => None,
        },
    )?;
    let id = Uuid::parse_str(&id).map_err(|e| format!("the node sent a bad saga id: {e}"))?;
    let Some(wait) = args.wait else {
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::json!({ "saga_id": id }))?;
        } else {
            writeln!(out, "{id}")?;
        }
        return Ok(EXIT_OK);
    };
    let saga = wait_for_end(&config.data_dir, id, wait)?;
    print_saga(&saga, args.json)?;
    Ok(match saga.status {
        SagaStatus::Completed => EXIT_OK,
        SagaStatus::InProgress | SagaStatus::Compensating => {
            return Err(format!(
                "saga {id} is still {} after {}",
                saga.status.as_str(),
                humantime::format_duration(wait)
            )
            .into());
        }
        SagaStatus::Compensated | SagaStatus::Failed => EXIT_PROBLEMS,
    })
}

/// Polls the store until the saga is terminal or `wait` passes.
fn wait_for_end(data_dir: &Path, id: Uuid, wait: Duration) -> Result<Saga, CliError> {
    let deadline = Instant::now() + wait;
    loop {
        let saga = load(data_dir, id)?;
        if saga.is_terminal() || Instant::now() >= deadline {
            return Ok(saga);
        }
        std::thread::sleep(Duration::from_millis(WAIT_POLL_MS));
    }
}

fn load(data_dir: &Path, id: Uuid) -> Result<Saga, CliError> {
    let conn = crate::store::open_read_only(data_dir)?;
    crate::saga::orchestrator::load(&conn, id)?
        .ok_or_else(|| format!("no saga {id} in {}", data_dir.display()).into())
}

fn status(args: StatusArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    // Says so if the node never ran, rather than that the saga is unknown.
    drop(super::open_store_read_only(&args.config, &config)?);
    let saga = load(&config.data_dir, args.id)?;
    print_saga(&saga, args.json)?;
    Ok(EXIT_OK)
}

fn print_saga(saga: &Saga, json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(saga)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "saga {}  {}  {}",
        saga.id,
        saga.saga_type,
        saga.status.as_str()
    )?;
    writeln!(
        out,
        "  started {} by {}, deadline {}{}",
        format_timestamp(saga.started_at_us),
        saga.initiator,
        format_timestamp(saga.deadline_us),
        saga.ended_at_us
            .map(|t| format!(", ended {}", format_timestamp(t)))
            .unwrap_or_default()
    )?;
    for (i, (def, step)) in saga.definition.steps.iter().zip(&saga.steps).enumerate() {
        writeln!(
            out,
            "  {i}  {:<24} {:<10} {:<20} attempt {}{}{}",
            def.name,
            def.service,
            step.status.as_str(),
            step.attempt,
            step.reason
                .as_deref()
                .map(|r| format!("  reason: {r}"))
                .unwrap_or_default(),
            if step.completed_late {
                "  (completed late)"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

fn list(args: ListArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    let conn = super::open_store_read_only(&args.config, &config)?;
    let sagas = crate::saga::orchestrator::list(&conn, args.status, args.limit)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let rows: Vec<serde_json::Value> = sagas
            .iter()
            .map(|s| {
                serde_json::json!({
                    "saga_id": s.id,
                    "saga_type": s.saga_type,
                    "status": s.status.as_str(),
                    "started_at_us": s.started_at_us,
                    "ended_at_us": s.ended_at_us,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(rows))?;
        return Ok(EXIT_OK);
    }
    for s in &sagas {
        writeln!(
            out,
            "{}  {:<12} {:<28} {}",
            s.id,
            s.status.as_str(),
            s.saga_type,
            format_timestamp(s.started_at_us)
        )?;
    }
    Ok(EXIT_OK)
}

fn history(args: HistoryArgs) -> Result<u8, CliError> {
    let options = args.keys.options(args.json)?;
    let history = crate::audit::saga_history::rebuild(&args.export, &options, args.id)?;
    if history.entries.is_empty() {
        return Err(format!(
            "no verified event of saga {} in {}",
            args.id,
            args.export.display()
        )
        .into());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "saga_id": history.saga_id,
                "export_valid": history.report.valid,
                "problems": history.report.problems_total,
                "entries": history.entries,
            })
        )?;
    } else {
        writeln!(
            out,
            "saga {}: {} signed events, export {}",
            history.saga_id,
            history.entries.len(),
            if history.report.valid {
                "verified".to_string()
            } else {
                format!(
                    "has {} problems (see herald verify)",
                    history.report.problems_total
                )
            }
        )?;
        for e in &history.entries {
            writeln!(
                out,
                "  {}  {:>3}#{:<6} {}",
                format_timestamp(e.timestamp_us),
                e.author,
                e.seq,
                e.describe()
            )?;
            if let Some(detail) = e.detail() {
                writeln!(out, "      {detail}")?;
            }
        }
    }
    Ok(if history.report.valid {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    })
}
