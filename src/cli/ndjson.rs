//! `herald publish --ndjson`: events read from stdin, one JSON object per
//! line (the event object of the HTTP API, `docs/API.md`), proclaimed in
//! input order, in batches, with one receipt per line printed (NDJSON) as
//! each batch becomes durable.
//!
//! A pipeline of three bounded stages, so a producer of any length runs in
//! flat memory and is held back (its writes to the pipe block) when herald
//! falls behind:
//!
//! * a reader thread parses lines (each at most [`NDJSON_LINE_BYTES_MAX`])
//!   into batches of at most [`NDJSON_BATCH_EVENTS`] events and
//!   [`NDJSON_BATCH_BYTES_MAX`] bytes, closing a batch early whenever the
//!   input has nothing more buffered (the next read may wait for the
//!   producer, and what was read must not wait with it); at most
//!   [`NDJSON_BATCHES_QUEUED`] batches wait for the publisher;
//! * the publisher keeps at most [`NDJSON_BATCHES_IN_FLIGHT`] batches
//!   proclaimed but not yet receipted, through the running node's client
//!   endpoint ([`ClientRequest::PublishStream`]) or, when no node runs, in
//!   the store itself;
//! * receipts are printed in input order, one line each, and stdout is
//!   flushed after every batch.
//!
//! A line that is not an event herald accepts stops the run before that
//! line is published: every line before it is durable and its receipt
//! printed, nothing from it on is published, and the error names the line
//! and the field.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, mpsc};

use super::CliError;
use crate::api::input::decode_json;
use crate::api::publish::{EventInput, minify_json};
use crate::config::NodeConfig;
use crate::net::{self, NetError};
use crate::node::client::{
    CLIENT_STREAM_BATCH_BYTES_MAX, CLIENT_STREAM_BATCH_EVENTS_MAX, ClientRequest, ClientResponse,
    NodeClient, PublishBatch, WireDraft,
};
use crate::store::{Log, Pending, Receipt};

/// Longest input line, in bytes, without its line feed (4 MiB: a payload at
/// the 1 MiB limit as `data_base64`, or as JSON with room for escapes).
pub const NDJSON_LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes read from stdin at a time (in one read).
pub const NDJSON_READ_BUFFER_BYTES: usize = 256 * 1024;
/// Most events in one batch (one commit, one `PublishBatch` frame).
pub const NDJSON_BATCH_EVENTS: usize = CLIENT_STREAM_BATCH_EVENTS_MAX;
/// A batch is closed before its events pass this many bytes
/// ([`WireDraft::weight_bytes`]); a batch always takes its first event.
pub const NDJSON_BATCH_BYTES_MAX: usize = CLIENT_STREAM_BATCH_BYTES_MAX;
/// Batches parsed ahead of the publisher; beyond this the reader stops
/// reading stdin.
pub const NDJSON_BATCHES_QUEUED: usize = 1;
/// Batches proclaimed and not yet receipted; beyond this the publisher
/// waits for the oldest to become durable.
pub const NDJSON_BATCHES_IN_FLIGHT: usize = 4;

/// An event read from an input line.
#[derive(Debug)]
pub struct LineEvent {
    /// Its line number in the input (from 1, blank lines counted).
    pub line: u64,
    pub draft: WireDraft,
}

/// What the reader hands the publisher.
#[derive(Debug)]
pub enum Item {
    /// Events of consecutive lines, in order; never empty.
    Batch(Vec<LineEvent>),
    /// The input stops here; always the last item.
    Stop(NdjsonError),
}

/// Why reading the input stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum NdjsonError {
    /// A line is not an event herald accepts (`field`: the field at fault,
    /// when it is one field).
    #[error("line {line}: {message}")]
    Line {
        line: u64,
        field: Option<String>,
        message: String,
    },
    /// A line is over [`NDJSON_LINE_BYTES_MAX`].
    #[error(
        "line {line} is longer than {limit} bytes (NDJSON_LINE_BYTES_MAX); a payload may be at most 1 MiB"
    )]
    TooLong { line: u64, limit: usize },
    /// Stdin could not be read.
    #[error("reading stdin at line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
}

impl NdjsonError {
    fn field(line: u64, field: &str, message: impl std::fmt::Display) -> NdjsonError {
        NdjsonError::Line {
            line,
            field: Some(field.to_string()),
            message: format!("field {field}: {message}"),
        }
    }

    /// Whether the input was at fault (exit 1) rather than reading it (exit 2).
    fn refuses_input(&self) -> bool {
        !matches!(self, NdjsonError::Read { .. })
    }
}

/// How a run ended, when it could run.
#[derive(Debug)]
pub enum Outcome {
    /// Every line was published and receipted.
    Done,
    /// A line was refused (by this tool or by the node): everything before
    /// it is durable and receipted.
    Refused(String),
}

/// Publishes stdin's lines through the running node of `config`, or into
/// its store when no node runs. `channel` is the channel of lines that name
/// none (`None`: the node's default).
pub fn run(config: &NodeConfig, channel: Option<String>) -> Result<Outcome, CliError> {
    let items = spawn_reader(std::io::stdin(), channel)?;
    let out = std::io::stdout().lock();
    if crate::store::is_locked(&config.data_dir) {
        via_node(config, items, out)
    } else {
        into_store(config, items, out)
    }
}

/// Starts the reader thread on `input`. It is a plain thread, not a task:
/// it may sit in a read of stdin when the run ends, and the process exits
/// without waiting for it.
pub fn spawn_reader<R: Read + Send + 'static>(
    input: R,
    channel: Option<String>,
) -> std::io::Result<mpsc::Receiver<Item>> {
    let (tx, rx) = mpsc::channel(NDJSON_BATCHES_QUEUED);
    std::thread::Builder::new()
        .name("ndjson-reader".into())
        .spawn(move || {
            let input = BufReader::with_capacity(NDJSON_READ_BUFFER_BYTES, input);
            read_batches(input, channel.as_deref(), &tx);
        })?;
    Ok(rx)
}

/// Reads `input` to its end (or its first bad line) into batches on `tx`.
fn read_batches<R: Read>(mut input: BufReader<R>, channel: Option<&str>, tx: &mpsc::Sender<Item>) {
    let mut batch: Vec<LineEvent> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    let mut line: u64 = 0;
    // Hands the batch over (blocking while the publisher is behind); false
    // once nobody listens.
    let flush = |batch: &mut Vec<LineEvent>, batch_bytes: &mut usize| -> bool {
        *batch_bytes = 0;
        batch.is_empty() || tx.blocking_send(Item::Batch(std::mem::take(batch))).is_ok()
    };
    loop {
        line += 1;
        let event = match next_line(&mut input, &mut buf, line) {
            Ok(false) => break,
            Ok(true) if buf.iter().all(u8::is_ascii_whitespace) => None,
            Ok(true) => match parse_line(&buf, line, channel) {
                Ok(draft) => Some(draft),
                Err(e) => {
                    stop(tx, &mut batch, e);
                    return;
                }
            },
            Err(e) => {
                stop(tx, &mut batch, e);
                return;
            }
        };
        if let Some(draft) = event {
            let weight = draft.weight_bytes();
            if !batch.is_empty()
                && batch_bytes + weight > NDJSON_BATCH_BYTES_MAX
                && !flush(&mut batch, &mut batch_bytes)
            {
                return;
            }
            batch.push(LineEvent { line, draft });
            batch_bytes += weight;
        }
        // Full, or the next read may wait for the producer: what was read
        // must not wait with it.
        if (batch.len() >= NDJSON_BATCH_EVENTS || input.buffer().is_empty())
            && !flush(&mut batch, &mut batch_bytes)
        {
            return;
        }
    }
    flush(&mut batch, &mut batch_bytes);
}

/// Hands over what was read before the stop, then the stop.
fn stop(tx: &mpsc::Sender<Item>, batch: &mut Vec<LineEvent>, e: NdjsonError) {
    if !batch.is_empty()
        && tx
            .blocking_send(Item::Batch(std::mem::take(batch)))
            .is_err()
    {
        return;
    }
    let _ = tx.blocking_send(Item::Stop(e));
}

/// Reads the next line into `buf`, without its line end (`\n` or `\r\n`);
/// false at the end of the input. Never holds more than
/// [`NDJSON_LINE_BYTES_MAX`] + 1 bytes of a line.
fn next_line<R: Read>(
    input: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    line: u64,
) -> Result<bool, NdjsonError> {
    buf.clear();
    let n = input
        .by_ref()
        .take(NDJSON_LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|source| NdjsonError::Read { line, source })?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > NDJSON_LINE_BYTES_MAX {
        return Err(NdjsonError::TooLong {
            line,
            limit: NDJSON_LINE_BYTES_MAX,
        });
    }
    Ok(true)
}

/// Parses one line as the HTTP API's event object (`type`, `data` or
/// `data_base64`, `meta`, `channel`, `schema_version`; nothing else) and
/// checks it as the node will (type, metadata, payload size).
pub fn parse_line(text: &[u8], line: u64, channel: Option<&str>) -> Result<WireDraft, NdjsonError> {
    // serde would take an array for a struct, field by position: refuse
    // anything but an object, as a person reading the line would.
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(NdjsonError::Line {
            line,
            field: None,
            message: "not a JSON object; each line is one event, like \
                      {\"type\":\"t\",\"data\":{..}}"
                .into(),
        });
    }
    let input: EventInput = decode_json(text, "").map_err(|e| {
        let message = match e.message.strip_prefix("the body is ") {
            Some(rest) => rest.to_string(),
            None => e.message.clone(),
        };
        // The decoder counts lines within the text it was given: always 1.
        let message = message.replace(" at line 1 column ", " at column ");
        let field = e.field.filter(|f| !f.is_empty() && f != "body");
        NdjsonError::Line {
            line,
            field,
            message,
        }
    })?;
    let payload = match (input.data, input.data_base64) {
        (Some(json), None) => minify_json(json.get()),
        (None, Some(text)) => BASE64
            .decode(text.as_bytes())
            .map_err(|e| NdjsonError::field(line, "data_base64", format!("not base64: {e}")))?,
        (Some(_), Some(_)) => {
            return Err(NdjsonError::field(
                line,
                "data",
                "give the payload as data (JSON) or as data_base64 (bytes), not both",
            ));
        }
        (None, None) => {
            return Err(NdjsonError::field(
                line,
                "data",
                "missing; give the payload as data (JSON) or as data_base64 (bytes)",
            ));
        }
    };
    let draft = WireDraft {
        event_type: input.event_type.into_owned(),
        schema_version: input.schema_version,
        payload,
        meta: input
            .meta
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        channel: input
            .channel
            .map(std::borrow::Cow::into_owned)
            .or_else(|| channel.map(str::to_owned)),
    };
    draft
        .check()
        .map_err(|e| NdjsonError::field(line, e.field, e.message))?;
    Ok(draft)
}

/// A receipt line: the input line's event is durable in `feed` at `seq`.
#[derive(Serialize)]
struct LineReceipt<'a> {
    line: u64,
    feed: &'a str,
    seq: u64,
    id: uuid::Uuid,
    hash: String,
}

fn print_receipt(
    out: &mut impl Write,
    line: u64,
    feed: &str,
    receipt: &Receipt,
) -> std::io::Result<()> {
    let receipt = LineReceipt {
        line,
        feed,
        seq: receipt.seq,
        id: receipt.id,
        hash: hex::encode(receipt.hash),
    };
    serde_json::to_writer(&mut *out, &receipt)?;
    out.write_all(b"\n")
}

/// The outcome once the reader stopped at `e`.
fn stopped(e: NdjsonError) -> Result<Outcome, CliError> {
    if e.refuses_input() {
        Ok(Outcome::Refused(e.to_string()))
    } else {
        Err(e.into())
    }
}

// ---------------------------------------------------------------------------
// No node running: proclaim into the store directly.

/// Proclaims the batches into the store of `config` (taking its lock),
/// printing each batch's receipts as it becomes durable.
fn into_store(
    config: &NodeConfig,
    mut items: mpsc::Receiver<Item>,
    out: impl Write,
) -> Result<Outcome, CliError> {
    let log = Log::open(config)?;
    let mut out = std::io::BufWriter::new(out);
    let mut in_flight: VecDeque<(Pending, Vec<u64>)> = VecDeque::new();
    let mut end: Option<Result<Outcome, CliError>> = None;
    while end.is_none() {
        // Wait for input only when nothing is in flight; otherwise take
        // what is ready, and print the oldest batch's receipts when nothing
        // is (or when the in-flight bound is reached).
        let item = if in_flight.is_empty() {
            items.blocking_recv()
        } else if in_flight.len() >= NDJSON_BATCHES_IN_FLIGHT {
            print_oldest(&mut in_flight, &mut out, log.service())?;
            continue;
        } else {
            match items.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    print_oldest(&mut in_flight, &mut out, log.service())?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        let events = match item {
            None => {
                end = Some(Ok(Outcome::Done));
                break;
            }
            Some(Item::Stop(e)) => {
                end = Some(stopped(e));
                break;
            }
            Some(Item::Batch(events)) => events,
        };
        let mut lines = Vec::with_capacity(events.len());
        let mut proclamations = Vec::with_capacity(events.len());
        for event in events {
            match event.draft.into_proclamation(&log) {
                Ok(p) => {
                    lines.push(event.line);
                    proclamations.push(p);
                }
                Err(e) => {
                    let e = NdjsonError::field(event.line, e.field, e.message);
                    end = Some(Ok(Outcome::Refused(e.to_string())));
                    break;
                }
            }
        }
        if !proclamations.is_empty() {
            in_flight.push_back((log.submit(proclamations)?, lines));
        }
    }
    while !in_flight.is_empty() {
        print_oldest(&mut in_flight, &mut out, log.service())?;
    }
    log.close();
    end.unwrap_or(Ok(Outcome::Done))
}

/// Waits for the oldest in-flight batch and prints its receipts.
fn print_oldest(
    in_flight: &mut VecDeque<(Pending, Vec<u64>)>,
    out: &mut impl Write,
    feed: &str,
) -> Result<(), CliError> {
    let Some((pending, lines)) = in_flight.pop_front() else {
        return Ok(());
    };
    let receipts = pending.wait()?;
    for (line, receipt) in lines.iter().zip(&receipts) {
        print_receipt(out, *line, feed, receipt)?;
    }
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Node running: stream the batches through its client endpoint.

/// A batch sent to the node and not yet fully receipted; its permit is one
/// of the [`NDJSON_BATCHES_IN_FLIGHT`] slots, freed when it is dropped.
struct SentBatch {
    lines: Vec<u64>,
    /// How many of `lines` are receipted.
    next: usize,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// How the printer's side of the stream ended (the node finished it).
#[derive(Default)]
struct Answers {
    /// The node refused a line (`Rejected`), rendered.
    refused: Option<String>,
    /// The node failed the request (`Error`).
    failed: Option<String>,
}

fn via_node(
    config: &NodeConfig,
    mut items: mpsc::Receiver<Item>,
    out: impl Write,
) -> Result<Outcome, CliError> {
    // Two workers: while one waits on a slow stdout, the other keeps the
    // QUIC connection alive (keep-alives, flow control).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = NodeClient::connect(config).await?;
        let answer = tokio::select! {
            answer = stream(&client, &config.service, &mut items, out) => Some(answer),
            () = super::node::wait_for_signal() => None,
        };
        // Close on every path (done, refused, failed, stdout gone,
        // interrupted), so the node stops proclaiming for this tool at once
        // and frees its slot.
        client.finish().await;
        answer.unwrap_or_else(|| {
            Err(
                "interrupted; every receipt printed is durable, the node stops \
                 proclaiming the rest"
                    .into(),
            )
        })
    })
}

/// Streams the batches to the node and prints the receipts it answers, in
/// order, until the input ends (or stops) and every batch sent is receipted.
async fn stream(
    client: &NodeClient,
    feed: &str,
    items: &mut mpsc::Receiver<Item>,
    out: impl Write,
) -> Result<Outcome, CliError> {
    let (mut send, mut recv) = client.open_stream(&ClientRequest::PublishStream).await?;
    let permits = Arc::new(Semaphore::new(NDJSON_BATCHES_IN_FLIGHT));
    // Never full: a batch is queued here only with a permit.
    let (sent_tx, mut sent_rx) = mpsc::channel::<SentBatch>(NDJSON_BATCHES_IN_FLIGHT);
    // Set by the printer when the node will take no more batches.
    let stop = Notify::new();

    let sender = async {
        let mut stopped_at: Option<NdjsonError> = None;
        let mut write_error: Option<NetError> = None;
        loop {
            let item = tokio::select! {
                biased;
                () = stop.notified() => break,
                item = items.recv() => item,
            };
            let events = match item {
                None => break,
                Some(Item::Stop(e)) => {
                    stopped_at = Some(e);
                    break;
                }
                Some(Item::Batch(events)) => events,
            };
            let permit = tokio::select! {
                biased;
                () = stop.notified() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let lines: Vec<u64> = events.iter().map(|e| e.line).collect();
            let batch = PublishBatch {
                events: events.into_iter().map(|e| e.draft).collect(),
            };
            // Queued before the frame goes out, so the printer knows the
            // lines before their receipts can arrive.
            let sent = SentBatch {
                lines,
                next: 0,
                _permit: permit,
            };
            if sent_tx.send(sent).await.is_err() {
                break;
            }
            if let Err(e) = net::write_frame(&mut send, &batch).await {
                write_error = Some(e);
                break;
            }
        }
        // The end of the input: the node answers what it has, then ends.
        let _ = send.finish();
        drop(sent_tx);
        (stopped_at, write_error)
    };

    let printer = async {
        let mut out = std::io::BufWriter::new(out);
        let mut pending: VecDeque<SentBatch> = VecDeque::new();
        let mut answers = Answers::default();
        let mut receipted: u64 = 0;
        let result: Result<(), CliError> = async {
            while let Some(frame) = net::read_frame::<ClientResponse>(&mut recv).await? {
                match frame {
                    ClientResponse::Receipts(receipts) => {
                        for receipt in receipts {
                            let line = sent_line(&mut pending, &mut sent_rx, true)
                                .ok_or("the node sent more receipts than events were sent to it")?;
                            print_receipt(&mut out, line, feed, &receipt.into())?;
                            receipted += 1;
                        }
                        out.flush()?;
                    }
                    ClientResponse::Rejected {
                        event,
                        field,
                        message,
                    } => {
                        let line = sent_line(&mut pending, &mut sent_rx, false);
                        let Some(line) = line.filter(|_| event == receipted) else {
                            return Err(format!(
                                "the node refused event {event} of the stream, \
                                 but {receipted} are receipted"
                            )
                            .into());
                        };
                        let e = NdjsonError::field(line, &field, message);
                        answers.refused = Some(e.to_string());
                        stop.notify_one();
                    }
                    ClientResponse::Error(e) => {
                        answers.failed = Some(e);
                        stop.notify_one();
                    }
                    _ => return Err("unexpected answer to a streamed publish".into()),
                }
            }
            Ok(())
        }
        .await;
        stop.notify_one();
        if result.is_err() {
            // The sender may wait on flow control the node no longer
            // gives: closing the connection ends its write.
            client.close();
        }
        let unreceipted = sent_line(&mut pending, &mut sent_rx, false).is_some();
        result.map(|()| (answers, unreceipted))
    };

    let ((stopped_at, write_error), printed) = tokio::join!(sender, printer);
    let (answers, unreceipted) = printed?;
    if let Some(e) = answers.failed {
        return Err(
            format!("the node failed the publish: {e}; every receipt printed is durable").into(),
        );
    }
    if let Some(refused) = answers.refused {
        return Ok(Outcome::Refused(refused));
    }
    if let Some(e) = write_error {
        return Err(
            format!("sending events to the node: {e}; every receipt printed is durable").into(),
        );
    }
    if unreceipted {
        return Err(
            "the node ended the publish before it receipted every event sent; \
                    every receipt printed is durable"
                .into(),
        );
    }
    match stopped_at {
        Some(e) => stopped(e),
        None => Ok(Outcome::Done),
    }
}

/// The line of the next event sent and not yet receipted (`consume`: mark
/// it receipted, freeing its batch's slot after its last line).
fn sent_line(
    pending: &mut VecDeque<SentBatch>,
    sent: &mut mpsc::Receiver<SentBatch>,
    consume: bool,
) -> Option<u64> {
    loop {
        if let Some(batch) = pending.front_mut() {
            if let Some(&line) = batch.lines.get(batch.next) {
                if consume {
                    batch.next += 1;
                    if batch.next == batch.lines.len() {
                        pending.pop_front();
                    }
                }
                return Some(line);
            }
            pending.pop_front();
            continue;
        }
        pending.push_back(sent.try_recv().ok()?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<Item> {
        let mut rx = spawn_reader(std::io::Cursor::new(input.to_vec()), None).unwrap();
        let mut items = Vec::new();
        while let Some(item) = rx.blocking_recv() {
            items.push(item);
        }
        items
    }

    fn lines_of(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .flat_map(|i| match i {
                Item::Batch(events) => events.iter().map(|e| e.line).collect(),
                Item::Stop(_) => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn lines_become_drafts_like_the_http_api_events() {
        let d = parse_line(
            br#"{"type":"a.b","data":{ "z": 1, "a": [1, 2] },"meta":{"k":"v"}}"#,
            1,
            Some("ops"),
        )
        .unwrap();
        assert_eq!(d.event_type, "a.b");
        assert_eq!(d.payload, br#"{"z":1,"a":[1,2]}"#, "compact, order kept");
        assert_eq!(d.meta, [("k".to_string(), "v".to_string())]);
        assert_eq!(d.channel.as_deref(), Some("ops"), "the default channel");
        assert_eq!(d.schema_version, 1);
        let d = parse_line(
            br#"{"type":"t","data":"text","channel":"x","schema_version":3}"#,
            1,
            Some("ops"),
        )
        .unwrap();
        assert_eq!(d.payload, br#""text""#, "a string is stored as JSON text");
        assert_eq!((d.channel.as_deref(), d.schema_version), (Some("x"), 3));
        let d = parse_line(br#"{"type":"t","data_base64":"AAH/"}"#, 1, None).unwrap();
        assert_eq!(d.payload, [0, 1, 255]);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_field() {
        let cases: [(&[u8], Option<&str>, &str); 8] = [
            (br#"{"data":1}"#, Some("type"), "missing field `type`"),
            (br#"{"type":7,"data":1}"#, Some("type"), "invalid type"),
            (
                br#"{"type":"t","data":1,"colour":"red"}"#,
                Some("colour"),
                "unknown field",
            ),
            (br#"{"type":"t"}"#, Some("data"), "missing"),
            (br#"{"type":"herald.x","data":1}"#, Some("type"), "reserved"),
            (
                br#"{"type":"t","data_base64":"***"}"#,
                Some("data_base64"),
                "not base64",
            ),
            (br#"{"type":"t","data":1"#, None, "not valid JSON"),
            (br#"[1]"#, None, "not a JSON object"),
        ];
        for (text, field, needle) in cases {
            let e = parse_line(text, 7, None).unwrap_err();
            let NdjsonError::Line {
                line,
                field: ref found,
                ref message,
            } = e
            else {
                panic!("{e}");
            };
            assert_eq!(line, 7);
            assert_eq!(found.as_deref(), field, "{message}");
            let text = e.to_string();
            assert!(text.starts_with("line 7: "), "{text}");
            assert!(text.contains(needle), "{text}");
            if let Some(field) = field {
                assert!(text.contains(&format!("field {field}")), "{text}");
            }
        }
    }

    #[test]
    fn the_reader_skips_blank_lines_and_stops_at_the_first_bad_one() {
        let items = read_all(b"{\"type\":\"t\",\"data\":1}\r\n\n  \n{\"type\":\"t\",\"data\":2}\n{\"type\":\"\",\"data\":3}\n{\"type\":\"t\",\"data\":4}\n");
        assert_eq!(
            lines_of(&items),
            [1, 4],
            "lines before the bad one, numbered as read"
        );
        match items.last() {
            Some(Item::Stop(e)) => assert!(e.to_string().starts_with("line 5: field type"), "{e}"),
            other => panic!("{other:?}"),
        }
        // No final line feed: the last line still counts.
        let items = read_all(b"{\"type\":\"t\",\"data\":1}\n{\"type\":\"t\",\"data\":2}");
        assert_eq!(lines_of(&items), [1, 2]);
        assert!(read_all(b"").is_empty());
    }

    #[test]
    fn batches_are_bounded_by_events_and_bytes() {
        let mut input = Vec::new();
        for _ in 0..(NDJSON_BATCH_EVENTS * 2 + 3) {
            input.extend_from_slice(b"{\"type\":\"t\",\"data\":1}\n");
        }
        let items = read_all(&input);
        assert!(items.iter().all(|i| match i {
            Item::Batch(events) => !events.is_empty() && events.len() <= NDJSON_BATCH_EVENTS,
            Item::Stop(_) => false,
        }));
        assert_eq!(lines_of(&items).len(), NDJSON_BATCH_EVENTS * 2 + 3);

        // Payloads of 300 KB: at most three to a batch of 1 MiB.
        let big = format!("{{\"type\":\"t\",\"data\":\"{}\"}}\n", "x".repeat(300_000));
        let items = read_all(big.repeat(7).as_bytes());
        assert_eq!(lines_of(&items), (1..=7).collect::<Vec<_>>());
        for item in &items {
            let Item::Batch(events) = item else { panic!() };
            let bytes: usize = events.iter().map(|e| e.draft.weight_bytes()).sum();
            assert!(bytes <= NDJSON_BATCH_BYTES_MAX, "{bytes}");
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_holding_it() {
        let mut input = b"{\"type\":\"t\",\"data\":1}\n".to_vec();
        input.extend(std::iter::repeat_n(b' ', NDJSON_LINE_BYTES_MAX + 10));
        input.extend_from_slice(b"\n{\"type\":\"t\",\"data\":3}\n");
        let items = read_all(&input);
        assert_eq!(lines_of(&items), [1]);
        match items.last() {
            Some(Item::Stop(e @ NdjsonError::TooLong { line: 2, .. })) => {
                assert!(e.to_string().contains("NDJSON_LINE_BYTES_MAX"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Exactly at the limit (blank, so skipped): fine.
        let mut input = vec![b' '; NDJSON_LINE_BYTES_MAX];
        input.extend_from_slice(b"\n{\"type\":\"t\",\"data\":2}\n");
        assert_eq!(lines_of(&read_all(&input)), [2]);
    }
}
