//! PostgreSQL through tokio-postgres. An insert into an outbox table fires a
//! statement-level trigger that `pg_notify`s the relay, which listens on its
//! own connection, so a row is noticed at once rather than at the next poll.
//! Batches travel as arrays (`unnest`), one statement per batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::{DB_CALL_TIMEOUT_MS, Failed, InboxRow, OutboxError, OutboxRow, Published, Target};

/// A connection, the task that drives it, and the wake-up its NOTIFYs ring.
pub(crate) struct Pg {
    client: tokio_postgres::Client,
    pub pid: i32,
    pub notify: Arc<tokio::sync::Notify>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn err(target: &Target, what: &'static str) -> impl Fn(tokio_postgres::Error) -> OutboxError {
    let url = target.redacted();
    move |source| OutboxError::Postgres {
        what,
        url: url.clone(),
        message: describe(&source),
        source,
    }
}

/// tokio-postgres shows a server error as just "db error": the server's
/// message (and the cause of a connection failure) are one level down.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl Pg {
    pub(crate) async fn connect(target: &Target, listen: Option<&str>) -> Result<Pg, OutboxError> {
        let mut config: tokio_postgres::Config = target
            .expose()
            .parse()
            .map_err(err(target, "parsing the URL"))?;
        config.application_name(&target.app_name);
        config.connect_timeout(Duration::from_millis(DB_CALL_TIMEOUT_MS));
        let (client, mut connection) = config
            .connect(NoTls)
            .await
            .map_err(err(target, "connecting"))?;
        let notify = Arc::new(tokio::sync::Notify::new());
        let ring = notify.clone();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => ring.notify_one(),
                    Some(Ok(_)) => {}
                    // The connection ended: wake the relay so its next call
                    // fails and it reconnects.
                    Some(Err(_)) | None => {
                        ring.notify_one();
                        return;
                    }
                }
            }
        });
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(err(target, "connecting"))?
            .get(0);
        // The relay reads "the first unpublished rows in order". Marked rows
        // leave dead entries in the partial index until VACUUM, and with
        // stale statistics the planner picks a bitmap scan that visits
        // every one of them and sorts, on every batch (25 ms at 50,000
        // marked rows, measured). An ordered index scan stops after
        // `LIMIT` live rows (0.5 ms): bitmap scans are off for herald's own
        // sessions, which only run the queries in this file.
        client
            .batch_execute("SET enable_bitmapscan = off")
            .await
            .map_err(err(target, "connecting"))?;
        if let Some(channel) = listen {
            client
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .map_err(err(target, "listening for inserts"))?;
        }
        Ok(Pg {
            client,
            pid,
            notify,
            driver,
        })
    }

    pub(crate) async fn execute_ddl(
        &mut self,
        target: &Target,
        ddl: &[String],
    ) -> Result<(), OutboxError> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(err(target, "creating tables"))?;
        for statement in ddl {
            tx.batch_execute(statement)
                .await
                .map_err(err(target, "creating tables"))?;
        }
        tx.commit().await.map_err(err(target, "creating tables"))
    }

    pub(crate) async fn fetch(
        &mut self,
        target: &Target,
        table: &str,
        limit: usize,
        max_attempts: Option<u32>,
        exclude: &[i64],
    ) -> Result<Vec<OutboxRow>, OutboxError> {
        let sql = format!(
            "SELECT insertion_order, id::text, event_type, payload, metadata, channel \
             FROM {table} WHERE published_timestamp IS NULL AND retry_count < $1 \
             AND NOT (insertion_order = ANY($3::int8[])) \
             ORDER BY insertion_order LIMIT $2"
        );
        let attempts = max_attempts.map_or(i32::MAX, |a| a as i32);
        let rows = self
            .client
            .query(&sql, &[&attempts, &(limit as i64), &exclude])
            .await
            .map_err(err(target, "reading the outbox"))?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    order: r.try_get(0)?,
                    id: r.try_get(1)?,
                    event_type: r.try_get(2)?,
                    payload: r.try_get(3)?,
                    metadata: r.try_get(4)?,
                    channel: r.try_get(5)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(err(target, "reading the outbox"))
    }

    pub(crate) async fn mark(
        &mut self,
        target: &Target,
        table: &str,
        feed: &str,
        published: &[Published],
        failed: &[Failed],
    ) -> Result<(), OutboxError> {
        let e = err(target, "marking rows published");
        let tx = self.client.transaction().await.map_err(&e)?;
        if !published.is_empty() {
            let orders: Vec<i64> = published.iter().map(|p| p.order).collect();
            let seqs: Vec<i64> = published.iter().map(|p| p.seq).collect();
            tx.execute(
                &format!(
                    "UPDATE {table} AS t SET published_timestamp = now(), feed = $1, seq = u.seq \
                     FROM unnest($2::int8[], $3::int8[]) AS u(o, seq) \
                     WHERE t.insertion_order = u.o"
                ),
                &[&feed, &orders, &seqs],
            )
            .await
            .map_err(&e)?;
        }
        if !failed.is_empty() {
            let orders: Vec<i64> = failed.iter().map(|f| f.order).collect();
            let errors: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
            tx.execute(
                &format!(
                    "UPDATE {table} AS t SET retry_count = t.retry_count + 1, last_error = u.e \
                     FROM unnest($1::int8[], $2::text[]) AS u(o, e) \
                     WHERE t.insertion_order = u.o"
                ),
                &[&orders, &errors],
            )
            .await
            .map_err(&e)?;
        }
        tx.commit().await.map_err(&e)
    }

    pub(crate) async fn counts(
        &mut self,
        target: &Target,
        table: &str,
        max_attempts: u32,
    ) -> Result<(u64, u64), OutboxError> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE retry_count < $1), \
                            count(*) FILTER (WHERE retry_count >= $1) \
                     FROM {table} WHERE published_timestamp IS NULL"
                ),
                &[&(max_attempts as i32)],
            )
            .await
            .map_err(err(target, "counting the backlog"))?;
        let (todo, skipped): (i64, i64) = (row.get(0), row.get(1));
        Ok((todo as u64, skipped as u64))
    }

    pub(crate) async fn positions(
        &mut self,
        target: &Target,
        table: &str,
        sink: &str,
    ) -> Result<BTreeMap<String, i64>, OutboxError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT feed, seq FROM {} WHERE sink = $1",
                    super::position_table(table)
                ),
                &[&sink],
            )
            .await
            .map_err(err(target, "reading the inbox position"))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(err(target, "reading the inbox position"))
    }

    pub(crate) async fn land(
        &mut self,
        target: &Target,
        table: &str,
        sink: &str,
        rows: &[InboxRow],
        positions: &BTreeMap<String, i64>,
    ) -> Result<(), OutboxError> {
        let e = err(target, "writing the inbox");
        let tx = self.client.transaction().await.map_err(&e)?;
        if !rows.is_empty() {
            let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
            let feeds: Vec<&str> = rows.iter().map(|r| r.feed.as_str()).collect();
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
            let times: Vec<i64> = rows.iter().map(|r| r.timestamp_us).collect();
            let metas: Vec<&str> = rows.iter().map(|r| r.metadata.as_str()).collect();
            let channels: Vec<Option<&str>> = rows.iter().map(|r| r.channel.as_deref()).collect();
            let payloads: Vec<Option<&str>> = rows.iter().map(|r| r.payload.as_deref()).collect();
            let hashes: Vec<&str> = rows.iter().map(|r| r.event_hash.as_str()).collect();
            tx.execute(
                &format!(
                    "INSERT INTO {table} (event_id, feed, seq, event_type, event_timestamp_us, \
                                          metadata, channel, payload, event_hash) \
                     SELECT i::uuid, f, s, t, ts, m, c, p, h FROM unnest( \
                        $1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], \
                        $6::text[], $7::text[], $8::text[], $9::text[]) \
                        AS u(i, f, s, t, ts, m, c, p, h)"
                ),
                &[
                    &ids, &feeds, &seqs, &types, &times, &metas, &channels, &payloads, &hashes,
                ],
            )
            .await
            .map_err(&e)?;
        }
        if !positions.is_empty() {
            let feeds: Vec<&str> = positions.keys().map(String::as_str).collect();
            let seqs: Vec<i64> = positions.values().copied().collect();
            tx.execute(
                &format!(
                    "INSERT INTO {} (sink, feed, seq) SELECT $1, f, s FROM unnest($2::text[], $3::int8[]) AS u(f, s) \
                     ON CONFLICT (sink, feed) DO UPDATE SET seq = excluded.seq",
                    super::position_table(table)
                ),
                &[&sink, &feeds, &seqs],
            )
            .await
            .map_err(&e)?;
        }
        tx.commit().await.map_err(&e)
    }
}

/// The outbox table, its index of unpublished rows, and the trigger that
/// wakes the relay.
pub(crate) fn outbox_ddl(table: &str) -> Vec<String> {
    let channel = super::notify_channel(table);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
    insertion_order     BIGSERIAL PRIMARY KEY,
    id                  UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    event_type          TEXT NOT NULL,
    payload             TEXT NOT NULL,
    metadata            TEXT,
    channel             TEXT,
    created_timestamp   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_timestamp TIMESTAMPTZ,
    retry_count         INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    feed                TEXT,
    seq                 BIGINT
)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {table}_unpublished ON {table} (insertion_order) WHERE published_timestamp IS NULL"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {channel}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$"
        ),
        format!("DROP TRIGGER IF EXISTS {channel} ON {table}"),
        format!(
            "CREATE TRIGGER {channel} AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {channel}_notify()"
        ),
    ]
}

/// The inbox table and the sink positions beside it.
pub(crate) fn inbox_ddl(table: &str) -> Vec<String> {
    let position = super::position_table(table);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
    event_id           UUID PRIMARY KEY,
    feed               TEXT NOT NULL,
    seq                BIGINT NOT NULL,
    event_type         TEXT NOT NULL,
    event_timestamp_us BIGINT NOT NULL,
    metadata           TEXT NOT NULL,
    channel            TEXT,
    payload            TEXT,
    event_hash         TEXT NOT NULL,
    received_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (feed, seq)
)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {position} (
    sink TEXT NOT NULL,
    feed TEXT NOT NULL,
    seq  BIGINT NOT NULL,
    PRIMARY KEY (sink, feed)
)"
        ),
    ]
}
