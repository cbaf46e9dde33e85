//! `herald tail`: print the events a node holds in arrival order from a start
//! point and, with `--follow`, keep printing new ones as they arrive.
//!
//! Reads the store read-only, so it works beside a running node (which holds
//! the write lock) and never takes that lock or writes a consumer cursor.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use rusqlite::Connection;

use super::log::print_event;
use super::{CliError, EXIT_OK};
use crate::config::NodeConfig;
use crate::core::crypto::ChannelKey;
use crate::core::event::{EventHeader, glob_match};
use crate::core::limits::TIMESTAMP_US_MAX;
use crate::store::StartFrom;

/// How often `--follow` asks the store whether anything was committed.
pub const TAIL_POLL_MS: u64 = 100;
/// Rows read from the store per query.
const TAIL_PAGE_EVENTS: usize = 1000;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Only events whose type matches this pattern (`*` and `?` wildcards).
    #[arg(long = "type", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// Only events of this feed.
    #[arg(long)]
    pub feed: Option<String>,
    /// Where to begin: `start`, `now`, or an RFC 3339 timestamp (from the
    /// first event, in arrival order, stamped at or after it).
    #[arg(long, value_name = "start|now|TIMESTAMP", default_value = "start", value_parser = parse_from)]
    pub from: StartFrom,
    /// After catching up, keep printing new events until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Parses `--from`: `start`, `now` or an RFC 3339 timestamp.
fn parse_from(text: &str) -> Result<StartFrom, String> {
    match text {
        "start" => return Ok(StartFrom::Start),
        "now" => return Ok(StartFrom::Now),
        _ => {}
    }
    let bad = |reason: String| {
        format!(
            "{text:?} is not start, now or an RFC 3339 timestamp (like 2025-01-31T12:00:00Z): {reason}"
        )
    };
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| bad(e.to_string()))?;
    let us = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad("it is before 1970".into()))?
        .as_micros();
    match u64::try_from(us) {
        Ok(us) if us <= TIMESTAMP_US_MAX => Ok(StartFrom::Timestamp(us)),
        _ => Err(bad("it is too far in the future".into())),
    }
}

pub fn run(args: TailArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    let keys: Vec<ChannelKey> = config.load_channel_keys()?;
    // Read-only: works beside a running node and never takes its lock.
    let conn = super::open_store_read_only(&args.config, &config)?;
    let mut tail = Tail {
        after: crate::store::position_for(&conn, args.from)?,
        conn,
        keys,
        args,
        out: std::io::stdout().lock(),
    };
    if !tail.args.follow {
        while tail.print_page()? {}
        return Ok(EXIT_OK);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stop = shutdown_signal()?;
        tail.follow(stop).await
    })
}

struct Tail<W: Write> {
    conn: Connection,
    keys: Vec<ChannelKey>,
    args: TailArgs,
    out: W,
    /// Events after this arrival are printed next.
    after: u64,
}

impl<W: Write> Tail<W> {
    /// Prints the selected events of one page; `false` once caught up.
    fn print_page(&mut self) -> Result<bool, CliError> {
        let page = crate::store::read_arrivals_from(&self.conn, self.after, TAIL_PAGE_EVENTS)?;
        for event in &page {
            if selected(&self.args, &event.header) {
                print_event(&mut self.out, event, &self.keys, self.args.json)?;
            }
            self.after = event.arrival;
        }
        self.out.flush()?;
        Ok(page.len() == TAIL_PAGE_EVENTS)
    }

    /// Catches up, then prints what arrives until `stop` resolves, checking
    /// `PRAGMA data_version` (which changes when another connection commits)
    /// every [`TAIL_POLL_MS`]. A closed stdout ends it at the next write.
    async fn follow(&mut self, stop: impl Future<Output = ()>) -> Result<u8, CliError> {
        let mut stop = std::pin::pin!(stop);
        // Read before catching up, so a commit during the catch-up is seen.
        let mut version = data_version(&self.conn)?;
        let mut more = true;
        loop {
            while more {
                tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(EXIT_OK),
                    _ = std::future::ready(()) => {}
                }
                more = self.print_page()?;
            }
            tokio::select! {
                _ = &mut stop => return Ok(EXIT_OK),
                _ = tokio::time::sleep(Duration::from_millis(TAIL_POLL_MS)) => {}
            }
            let now = data_version(&self.conn)?;
            if now != version {
                tracing::debug!(after = self.after, "store changed; reading new events");
                version = now;
                more = true;
            }
        }
    }
}

fn data_version(conn: &Connection) -> Result<i64, CliError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

fn selected(args: &TailArgs, h: &EventHeader) -> bool {
    args.pattern
        .as_deref()
        .is_none_or(|p| glob_match(p, &h.event_type))
        && args.feed.as_deref().is_none_or(|f| f == h.author)
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere). Must be called inside
/// the runtime.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parses_keywords_and_rfc3339() {
        assert_eq!(parse_from("start"), Ok(StartFrom::Start));
        assert_eq!(parse_from("now"), Ok(StartFrom::Now));
        assert_eq!(
            parse_from("1970-01-01T00:00:01.000002Z"),
            Ok(StartFrom::Timestamp(1_000_002))
        );
        let err = parse_from("yesterday").unwrap_err();
        assert!(err.contains("\"yesterday\""), "{err}");
        assert!(parse_from("1969-12-31T23:59:59Z").is_err());
    }
}
