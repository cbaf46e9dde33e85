//! The service-database benchmark (`herald bench --outbox-url URL`), on a
//! real PostgreSQL server:
//!
//! * relay: `rows` outbox rows, inserted beforehand, relayed by the real
//!   relay (default settings) into durable signed events of a fresh node
//!   store, every row marked published with its seq. Reported beside the
//!   durable proclaim rate of the same run.
//! * sink: those events written by the real inbox sink into an inbox table
//!   of the same database, each batch with its position in one transaction.
//!
//! The tables are this run's own (named after the process id) and dropped
//! afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BenchError, Setup, rate};
use crate::config::{DbUrl, InboxSinkConfig, OutboxSourceConfig};
use crate::outbox::{Backend, Links, Target, relay, sink};

/// Longest either half of the run may take.
const OUTBOX_RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// How often progress is looked at.
const PROGRESS_POLL_MS: u64 = 20;

/// The service-database section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxReport {
    pub database: String,
    pub rows: u64,
    pub payload_bytes: usize,
    /// Rows per relay batch (the default).
    pub batch_rows: usize,
    /// Rows relayed into durable signed events and marked published, per
    /// second.
    pub relay_rows_per_s: f64,
    /// relay_rows_per_s / the same run's durable proclaim rate.
    pub relay_fraction_of_proclaim: f64,
    /// Events written into the inbox table with their positions, per second.
    pub sink_events_per_s: f64,
    /// Events per sink transaction (at most).
    pub sink_batch_events: usize,
}

/// Runs the section against PostgreSQL at `url`; `proclaim_per_s` is the
/// run's durable proclaim rate.
pub(super) fn run_outbox(
    setup: &Setup,
    url: &str,
    rows: u64,
    payload_bytes: usize,
    proclaim_per_s: f64,
) -> Result<OutboxReport, BenchError> {
    let setup_error = |e: String| BenchError::Setup(format!("outbox bench: {e}"));
    let url = DbUrl(url.to_string());
    let target = Target::resolve(Some(&url), None, "herald bench".into())
        .map_err(|e| setup_error(e.to_string()))?;
    if target.backend != Backend::Postgres {
        return Err(setup_error(format!(
            "--outbox-url must name PostgreSQL (postgres://…), not {}",
            target.redacted()
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| setup_error(e.to_string()))?;
    let suffix = std::process::id();
    let (outbox, inbox) = (
        format!("herald_bench_outbox_{suffix}"),
        format!("herald_bench_inbox_{suffix}"),
    );
    let log = Arc::new(super::open_log_at(setup, &setup.dir.join("outbox-data"))?);
    runtime.block_on(async {
        let client = connect(&target).await.map_err(setup_error)?;
        let drop_tables = format!(
            "DROP TABLE IF EXISTS {outbox}; DROP TABLE IF EXISTS {inbox}; DROP TABLE IF EXISTS {}",
            crate::outbox::position_table(&inbox)
        );
        client
            .batch_execute(&drop_tables)
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        let mut ddl = crate::outbox::outbox_ddl(Backend::Postgres, &outbox);
        ddl.extend(crate::outbox::inbox_ddl(Backend::Postgres, &inbox));
        for statement in &ddl {
            client
                .batch_execute(statement)
                .await
                .map_err(|e| setup_error(e.to_string()))?;
        }
        // The rows, as a service would have committed them.
        let pad = payload_bytes.saturating_sub(12).max(1);
        client
            .execute(
                &format!(
                    "INSERT INTO {outbox} (event_type, payload, metadata) \
                     SELECT 'bench.outbox', '{{\"pad\":\"' || repeat('x', {pad}) || '\"}}', '{{\"n\":\"' || n || '\"}}' \
                     FROM generate_series(1, $1::int8) AS n"
                ),
                &[&(rows as i64)],
            )
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        let links = Links::default();

        let source = OutboxSourceConfig {
            name: "bench".into(),
            url: Some(url.clone()),
            url_env: None,
            table: outbox.clone(),
            channel: None,
            poll_interval_ms: None,
            batch_rows: None,
            max_attempts: None,
            strict_order: false,
        };
        let spec = relay::RelaySpec::new(&source, target.clone());
        let batch_rows = spec.batch_rows;
        let (relayed, started) = (links.clone(), Instant::now());
        let task = tokio::spawn(relay::run_registered(
            log.clone(),
            spec,
            links.clone(),
            shutdown.clone(),
        ));
        wait_done(&relayed, true, rows).await.map_err(setup_error)?;
        let relay_elapsed = started.elapsed();
        let unpublished: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {outbox} WHERE published_timestamp IS NULL"),
                &[],
            )
            .await
            .map_err(|e| setup_error(e.to_string()))?
            .get(0);
        if unpublished != 0 {
            return Err(setup_error(format!("{unpublished} rows left unpublished")));
        }

        let sink_config = InboxSinkConfig {
            name: "bench".into(),
            url: Some(url.clone()),
            url_env: None,
            table: inbox.clone(),
            types: vec!["bench.*".into()],
            from: None,
        };
        let sink_spec = sink::SinkSpec::new(&sink_config, target.clone());
        let started = Instant::now();
        let sink_task = tokio::spawn(sink::run_registered(
            log.clone(),
            sink_spec,
            links.clone(),
            shutdown.clone(),
        ));
        wait_done(&links, false, rows).await.map_err(setup_error)?;
        let sink_elapsed = started.elapsed();
        let _ = shutdown_tx.send(true);
        let _ = task.await;
        let _ = sink_task.await;
        let _ = client.batch_execute(&drop_tables).await;
        let relay_rows_per_s = rate(rows as usize, relay_elapsed);
        Ok(OutboxReport {
            database: target.redacted(),
            rows,
            payload_bytes,
            batch_rows,
            relay_rows_per_s,
            relay_fraction_of_proclaim: relay_rows_per_s / proclaim_per_s.max(1.0),
            sink_events_per_s: rate(rows as usize, sink_elapsed),
            sink_batch_events: crate::outbox::SINK_BATCH_EVENTS_MAX,
        })
    })
}

async fn connect(target: &Target) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(target.expose(), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to {}: {e}", target.redacted()))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Waits until the source (or sink) named `bench` has done `rows`.
async fn wait_done(links: &Links, source: bool, rows: u64) -> Result<(), String> {
    let deadline = Instant::now() + OUTBOX_RUN_TIMEOUT;
    loop {
        let (sources, sinks) = links.snapshot(None);
        let status = if source { sources } else { sinks };
        let status = status.into_iter().next();
        if status.as_ref().is_some_and(|s| s.done >= rows) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not done after {} s: {status:?}",
                OUTBOX_RUN_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(PROGRESS_POLL_MS)).await;
    }
}
