//! `herald log`: print the events a node holds, decrypted where it can.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, EXIT_OK};
use crate::audit::verify::format_timestamp;
use crate::config::NodeConfig;
use crate::core::crypto::ChannelKey;
use crate::core::event::{Encryption, EventHeader, glob_match};
use crate::core::verify::decrypt_payload;
use crate::store::StoredEvent;

/// Rows read from the store per query.
const LOG_PAGE_EVENTS: usize = 1000;

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Only events whose type matches this pattern (`*` and `?` wildcards).
    #[arg(long = "type", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Only events of this feed.
    #[arg(long)]
    pub feed: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: LogArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    let keys: Vec<ChannelKey> = config.load_channel_keys()?;
    // Read-only: works beside a running node and never takes its lock.
    let conn = super::open_store_read_only(&args.config, &config)?;
    let mut out = std::io::stdout().lock();
    let mut after = 0u64;
    loop {
        let page = crate::store::read_arrivals_from(&conn, after, LOG_PAGE_EVENTS)?;
        let Some(last) = page.last() else { break };
        after = last.arrival;
        for event in &page {
            if !selected(&args, &event.header) {
                continue;
            }
            print_event(&mut out, event, &keys, args.json)?;
        }
    }
    Ok(EXIT_OK)
}

fn selected(args: &LogArgs, h: &EventHeader) -> bool {
    args.pattern
        .as_deref()
        .is_none_or(|p| glob_match(p, &h.event_type))
        && args.feed.as_deref().is_none_or(|f| f == h.author)
}

/// The JSON form of a stored event, shared by `log` and later `tail`.
pub fn event_json(event: &StoredEvent, keys: &[ChannelKey]) -> serde_json::Value {
    let h = &event.header;
    let payload = crate::core::codec::decode_envelope(&event.envelope)
        .ok()
        .and_then(|(env, _)| env.payload);
    let key_id_hex = match &h.payload.encryption {
        Encryption::Plain => None,
        Encryption::XChaCha20Poly1305 { key_id, .. } => Some(hex::encode(key_id)),
    };
    let (channel, readable) = match &h.payload.encryption {
        Encryption::Plain => (None, payload.clone()),
        Encryption::XChaCha20Poly1305 { key_id, .. } => {
            let name = keys
                .iter()
                .find(|k| &k.id() == key_id)
                .map(|k| k.name().to_string());
            let plain = payload
                .as_deref()
                .and_then(|p| decrypt_payload(h, p, keys).ok());
            (
                Some(name.unwrap_or_else(|| format!("unknown:{}", hex::encode(key_id)))),
                plain,
            )
        }
    };
    let data = readable.map(|bytes| {
        if h.is_genesis() {
            serde_json::json!({
                "certificate_sha256": hex::encode(crate::core::crypto::sha256(&[&bytes])),
                "certificate_bytes": bytes.len(),
            })
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        }
    });
    let meta: serde_json::Map<String, serde_json::Value> = h
        .meta
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "arrival": event.arrival,
        "feed": h.author,
        "seq": h.seq,
        "id": h.uuid(),
        "type": h.event_type,
        "schema_version": h.schema_version,
        "timestamp": format_timestamp(h.timestamp_us),
        "hash": hex::encode(event.hash),
        "meta": meta,
        "channel": channel,
        "key_id": key_id_hex,
        "data": data,
    })
}

pub(crate) fn print_event(
    out: &mut impl Write,
    event: &StoredEvent,
    keys: &[ChannelKey],
    json: bool,
) -> std::io::Result<()> {
    let value = event_json(event, keys);
    if json {
        return writeln!(out, "{value}");
    }
    let data = match &value["data"] {
        serde_json::Value::Null => "<encrypted: no key for this channel>".to_string(),
        v => v.to_string(),
    };
    writeln!(
        out,
        "{} {}/{} {} {}",
        value["timestamp"].as_str().unwrap_or_default(),
        event.header.author,
        event.header.seq,
        event.header.event_type,
        data
    )
}
