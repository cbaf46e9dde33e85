//! `herald publish`: proclaim events into the node's local log: one event
//! (`--data` given inline, from a file with `@FILE`, or from stdin with
//! `-`), many copies of it (`--count`), or a stream of events read from
//! stdin (`--ndjson`, see [`super::ndjson`]).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::ndjson::{self, Outcome};
use super::{CliError, EXIT_OK, EXIT_PROBLEMS, parse_meta};
use crate::api::publish::minify_json;
use crate::config::NodeConfig;
use crate::core::limits::PAYLOAD_PLAINTEXT_BYTES_MAX;
use crate::core::verify::Draft;
use crate::node::client::{ClientRequest, ClientResponse, NodeClient};
use crate::store::{Log, Pending, Receipt};

/// Events per submitted batch for `--count`.
pub const PUBLISH_BATCH_EVENTS: usize = 256;
/// Batches in flight for `--count` (keeps sealing and fsync overlapped).
pub const PUBLISH_BATCHES_IN_FLIGHT: usize = 4;
/// Most bytes `--data @FILE` or `--data -` reads (4 MiB). The payload
/// limit (1 MiB) applies to the compact JSON, which may be smaller than
/// the text read (indentation, line breaks); beyond this no JSON text can
/// compact to a payload herald accepts in practice, and reading stops.
pub const DATA_INPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Event type, e.g. `donation.received`.
    #[arg(long = "type", required_unless_present = "ndjson")]
    pub event_type: Option<String>,
    /// Payload: a JSON document (stored in compact form); `@FILE` reads it
    /// from FILE, `-` from stdin.
    #[arg(long, value_name = "JSON|@FILE|-", required_unless_present = "ndjson")]
    pub data: Option<String>,
    /// Channel whose key encrypts the payload (default: the config's; with
    /// --ndjson, of the lines that name none).
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
    /// Read events from stdin, one JSON object per line
    /// ({"type":..,"data":..,"meta":{..}}), and print one receipt per line
    /// (JSON) as each batch is durable.
    #[arg(long, conflicts_with_all = ["event_type", "data", "meta", "count"])]
    pub ndjson: bool,
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
    if args.ndjson {
        let config = NodeConfig::load(&args.config)?;
        return match ndjson::run(&config, args.channel)? {
            Outcome::Done => Ok(EXIT_OK),
            Outcome::Refused(why) => {
                eprintln!(
                    "herald: error: {why}; every line before it is durable and its receipt \
                     printed, nothing from this line on was published"
                );
                Ok(EXIT_PROBLEMS)
            }
        };
    }
    let (Some(event_type), Some(data)) = (args.event_type.as_deref(), args.data.as_deref()) else {
        return Err("--type and --data are required without --ndjson".into());
    };
    let payload = read_payload(data)?;
    let meta = parse_meta(&args.meta)?;
    // Validate before touching the store, so bad input writes nothing.
    let draft = Draft::new(event_type, 1, meta, payload.clone())
        .map_err(|e| format!("{}: {e}", data_source(data)))?;
    let config = NodeConfig::load(&args.config)?;
    if crate::store::is_locked(&config.data_dir) {
        // The node (or another publisher) holds the store: go through it.
        return publish_via_node(&config, &args, event_type, payload);
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

/// How an error names where `--data` came from.
fn data_source(data: &str) -> String {
    match data {
        "-" => "--data - (stdin)".to_string(),
        d if d.starts_with('@') => format!("--data {d}"),
        _ => "--data".to_string(),
    }
}

/// The payload `--data` gives: the JSON document inline, in the file
/// `@FILE`, or on stdin (`-`), validated and stored compactly (whitespace
/// outside strings removed, otherwise as given, as the HTTP API stores
/// `data`). Refuses a payload over the 1 MiB limit, naming both sizes.
fn read_payload(data: &str) -> Result<Vec<u8>, CliError> {
    let source = data_source(data);
    let text: Vec<u8> = match data {
        "-" => read_bounded(std::io::stdin().lock(), &source)?,
        d if d.starts_with('@') => {
            let path = Path::new(&d[1..]);
            let file = std::fs::File::open(path)
                .map_err(|e| format!("{source}: cannot open {}: {e}", path.display()))?;
            if let Ok(meta) = file.metadata()
                && meta.len() > DATA_INPUT_BYTES_MAX as u64
            {
                return Err(too_large(&source, &meta.len().to_string()).into());
            }
            read_bounded(file, &source)?
        }
        d => d.as_bytes().to_vec(),
    };
    let json: Box<serde_json::value::RawValue> =
        serde_json::from_slice(&text).map_err(|e| format!("{source} is not valid JSON: {e}"))?;
    let payload = minify_json(json.get());
    if payload.len() > PAYLOAD_PLAINTEXT_BYTES_MAX {
        return Err(format!(
            "{source}: the payload is {} bytes (compact JSON), over the limit of \
             {PAYLOAD_PLAINTEXT_BYTES_MAX} bytes (1 MiB); nothing was written",
            payload.len()
        )
        .into());
    }
    Ok(payload)
}

/// Reads all of `input`, refusing more than [`DATA_INPUT_BYTES_MAX`].
fn read_bounded(input: impl Read, source: &str) -> Result<Vec<u8>, CliError> {
    let mut text = Vec::new();
    input
        .take(DATA_INPUT_BYTES_MAX as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{source}: cannot read: {e}"))?;
    if text.len() > DATA_INPUT_BYTES_MAX {
        return Err(too_large(source, "more than that").into());
    }
    Ok(text)
}

fn too_large(source: &str, found: &str) -> String {
    format!(
        "{source}: the input is {found} bytes, over the {DATA_INPUT_BYTES_MAX} bytes \
         `herald publish` reads (DATA_INPUT_BYTES_MAX; a payload may be at most \
         {PAYLOAD_PLAINTEXT_BYTES_MAX} bytes, 1 MiB); nothing was written"
    )
}

/// Publishes through the running node's client endpoint, printing receipts
/// as the node reports them durable.
fn publish_via_node(
    config: &NodeConfig,
    args: &PublishArgs,
    event_type: &str,
    payload: Vec<u8>,
) -> Result<u8, CliError> {
    let request = ClientRequest::Publish {
        event_type: event_type.to_string(),
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
