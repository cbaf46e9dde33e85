//! `herald query`: a synchronous, deadline-bound question to a service,
//! asked through the running node; the answer is signed by the responder
//! and verified by the node.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{CliError, EXIT_OK, EXIT_PROBLEMS};
use crate::audit::verify::format_timestamp;
use crate::config::NodeConfig;
use crate::core::query::{QueryOutcome, QueryStatus};
use crate::node::client::{ClientRequest, ClientResponse};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The node's config file (the node must be running).
    #[arg(long)]
    pub config: PathBuf,
    /// The service to ask.
    #[arg(long)]
    pub to: String,
    /// The query type, e.g. `identity.verify_donor` or `herald.head`.
    #[arg(long = "type")]
    pub query_type: String,
    /// The question: a JSON document.
    #[arg(long)]
    pub data: String,
    /// How long to wait for the answer (e.g. `2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Correlation id carried to the responder and back.
    #[arg(long, default_value = "")]
    pub correlation_id: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: QueryArgs) -> Result<u8, CliError> {
    let value: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| format!("--data is not valid JSON: {e}"))?;
    let config = NodeConfig::load(&args.config)?;
    let request = ClientRequest::Query {
        target: args.to.clone(),
        query_type: args.query_type.clone(),
        payload: serde_json::to_vec(&value)?,
        correlation_id: args.correlation_id.clone(),
        timeout_ms: args.timeout.as_millis().min(u32::MAX as u128) as u32,
    };
    let outcome =
        super::ask_running_node(&args.config, &config, &request, "a query", |r| match r {
            ClientResponse::Query(o) => Some(o),
            _ => None,
        })?;
    print_outcome(&outcome, args.json)?;
    Ok(if outcome.status == QueryStatus::Success {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    })
}

/// The stable name of a status, as printed and in JSON.
pub fn status_name(status: QueryStatus) -> &'static str {
    match status {
        QueryStatus::Success => "success",
        QueryStatus::NotFound => "not_found",
        QueryStatus::Error => "error",
        QueryStatus::NoHandler => "no_handler",
        QueryStatus::Timeout => "timeout",
        QueryStatus::Unreachable => "unreachable",
    }
}

fn print_outcome(o: &QueryOutcome, json: bool) -> Result<(), CliError> {
    let payload = serde_json::from_slice::<serde_json::Value>(&o.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&o.payload).into_owned())
    });
    if json {
        let value = serde_json::json!({
            "id": uuid::Uuid::from_bytes(o.request_id),
            "source": o.responder,
            "correlation_id": o.correlation_id,
            "status": status_name(o.status),
            "payload": payload,
            "timestamp": format_timestamp(o.timestamp_us),
            "signed_by_responder": o.signed_by_responder,
        });
        println!("{value}");
    } else {
        println!(
            "{} from {}{}: {}",
            status_name(o.status),
            o.responder,
            if o.signed_by_responder {
                " (signed)"
            } else {
                ""
            },
            payload
        );
    }
    Ok(())
}
