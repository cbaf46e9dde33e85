//! `herald publish`: proclaim events into the node's local log.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, EXIT_OK, parse_meta};
use crate::config::NodeConfig;
use crate::core::verify::Draft;
use crate::node::client::{ClientRequest, ClientResponse, NodeClient};
use crate::store::{Log, Pending, Receipt};

/// Events per submitted batch for `--count`.
pub const PUBLISH_BATCH_EVENTS: usize = 256;
/// Batches in flight for `--count` (keeps sealing and fsync overlapped).
pub const PUBLISH_BATCHES_IN_FLIGHT: usize = 4;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Event type, e.g. `donation.received`.
    #[arg(long = "type")]
    pub event_type: String,
    /// Payload: a JSON document (stored in compact form).
    #[arg(long)]
    pub data: String,
    /// Channel whose key encrypts the payload (default: the config's).
    #[arg(long)]
    pub channel: Option<String>,
    /// Metadata entry `key=value` (repeatable), e.g. `correlation_id=42`.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Proclaim this many events with the same content (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_count, allow_negative_numbers = true)]
    pub count: u64,
    /// Print one JSON object per receipt.
    #[arg(long)]
    pub json: bool,
}

/// `--count`: a whole number of events, at least 1. Zero is a usage error
/// whether or not the node runs (proclaiming nothing is never what was meant).
fn parse_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("must be a whole number of events, 1 or more".into()),
    }
}

pub fn run(args: PublishArgs) -> Result<u8, CliError> {
    let value: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| format!("--data is not valid JSON: {e}"))?;
    let payload = serde_json::to_vec(&value)?;
    let meta = parse_meta(&args.meta)?;
    // Validate before touching the store, so bad input writes nothing.
    let draft = Draft::new(&args.event_type, 1, meta, payload)?;
    let config = NodeConfig::load(&args.config)?;
    if crate::store::is_locked(&config.data_dir) {
        // The node (or another publisher) holds the store: go through it.
        return publish_via_node(&config, &args, draft_payload(&args)?);
    }
    let log = Log::open(&config)?;
    let channel = log.channel(args.channel.as_deref())?;
    let mut out = std::io::stdout().lock();
    let mut in_flight: VecDeque<Pending> = VecDeque::new();
    let mut remaining = args.count;
    while remaining > 0 || !in_flight.is_empty() {
        while remaining > 0 && in_flight.len() < PUBLISH_BATCHES_IN_FLIGHT {
            let n = remaining.min(PUBLISH_BATCH_EVENTS as u64);
            let drafts = (0..n).map(|_| (draft.clone(), channel.clone())).collect();
            in_flight.push_back(log.submit(drafts)?);
            remaining -= n;
        }
        if let Some(pending) = in_flight.pop_front() {
            for receipt in pending.wait()? {
                print_receipt(&mut out, log.service(), &receipt, args.json)?;
            }
        }
    }
    log.close();
    Ok(EXIT_OK)
}

fn draft_payload(args: &PublishArgs) -> Result<Vec<u8>, CliError> {
    let value: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| format!("--data is not valid JSON: {e}"))?;
    Ok(serde_json::to_vec(&value)?)
}

/// Publishes through the running node's client endpoint, printing receipts
/// as the node reports them durable.
fn publish_via_node(
    config: &NodeConfig,
    args: &PublishArgs,
    payload: Vec<u8>,
) -> Result<u8, CliError> {
    let request = ClientRequest::Publish {
        event_type: args.event_type.clone(),
        payload,
        meta: parse_meta(&args.meta)?,
        channel: args.channel.clone(),
        count: args.count,
    };
    // Two workers: while one waits on a slow stdout, the other keeps the
    // QUIC connection alive (keep-alives, flow control).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = NodeClient::connect(config).await?;
        let mut out = std::io::stdout().lock();
        // A failed stdout write, kept as the io::Error it is so a closed
        // stdout (`herald publish ... | head`) ends quietly as documented.
        let mut stdout_error: Option<std::io::Error> = None;
        let request = client.request(&request, |r| match r {
            ClientResponse::Receipts(receipts) => {
                for r in receipts {
                    if let Err(e) = print_receipt(&mut out, &config.service, &r.into(), args.json) {
                        let text = format!("writing receipts to stdout: {e}");
                        stdout_error = Some(e);
                        return Err(text);
                    }
                }
                Ok(())
            }
            ClientResponse::Error(e) => Err(e),
            _ => Err("unexpected answer to a publish".into()),
        });
        let answer = tokio::select! {
            answer = request => Some(answer),
            () = super::node::wait_for_signal() => None,
        };
        // Close on every path (done, failed, stdout gone, interrupted), so
        // the node stops proclaiming for this tool at once and frees its slot.
        client.finish().await;
        if let Some(e) = stdout_error {
            return Err(e.into());
        }
        match answer {
            Some(answer) => Ok::<_, CliError>(answer?),
            None => Err(
                "interrupted; every receipt printed is durable, the node stops \
                 proclaiming the rest"
                    .into(),
            ),
        }
    })?;
    Ok(EXIT_OK)
}

fn print_receipt(
    out: &mut impl Write,
    feed: &str,
    receipt: &Receipt,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let line = serde_json::json!({
            "feed": feed,
            "seq": receipt.seq,
            "id": receipt.id,
            "hash": hex::encode(receipt.hash),
        });
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "proclaimed {feed}/{} id {} hash {}",
            receipt.seq,
            receipt.id,
            hex::encode(receipt.hash)
        )
    }
}
