//! MariaDB (and MySQL) through mysql_async. MariaDB has no LISTEN/NOTIFY, so
//! the relay polls at its bounded interval. Numbers the relay computed
//! itself are written into SQL text; everything from rows and events is a
//! bound parameter.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, TxOpts, Value};

use super::{Failed, InboxRow, OutboxError, OutboxRow, Published, Target};

pub(crate) struct Maria {
    conn: Conn,
}

fn err(target: &Target, what: &'static str) -> impl Fn(mysql_async::Error) -> OutboxError {
    let url = target.redacted();
    move |source| OutboxError::Maria {
        what,
        url: url.clone(),
        source,
    }
}

fn text(value: Option<&str>) -> Value {
    value.map_or(Value::NULL, |s| Value::Bytes(s.as_bytes().to_vec()))
}

impl Maria {
    pub(crate) async fn connect(target: &Target) -> Result<Maria, OutboxError> {
        let url = target.expose();
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let opts = Opts::from_url(&url)
            .map_err(|e| OutboxError::Config(format!("MariaDB URL {}: {e}", target.redacted())))?;
        let mut conn = Conn::new(opts).await.map_err(err(target, "connecting"))?;
        // Timestamps the relay writes are UTC, like PostgreSQL's.
        conn.query_drop("SET time_zone = '+00:00'")
            .await
            .map_err(err(target, "connecting"))?;
        Ok(Maria { conn })
    }

    pub(crate) fn id(&self) -> u32 {
        self.conn.id()
    }

    pub(crate) async fn execute_ddl(
        &mut self,
        target: &Target,
        ddl: &[String],
    ) -> Result<(), OutboxError> {
        // DDL commits implicitly in MariaDB; each statement is idempotent.
        for statement in ddl {
            self.conn
                .query_drop(statement)
                .await
                .map_err(err(target, "creating tables"))?;
        }
        Ok(())
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
            "SELECT insertion_order, id, event_type, payload, metadata, channel \
             FROM {table} WHERE published_timestamp IS NULL AND retry_count < ?{} \
             ORDER BY insertion_order LIMIT ?",
            super::not_in(exclude)
        );
        let attempts = max_attempts.map_or(i64::from(i32::MAX), i64::from);
        type Row = (
            i64,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = self
            .conn
            .exec(sql, (attempts, limit as u64))
            .await
            .map_err(err(target, "reading the outbox"))?;
        Ok(rows
            .into_iter()
            .map(
                |(order, id, event_type, payload, metadata, channel)| OutboxRow {
                    order,
                    id,
                    event_type,
                    payload,
                    metadata,
                    channel,
                },
            )
            .collect())
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
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(&e)?;
        if !published.is_empty() {
            let mut cases = String::new();
            let mut orders = String::new();
            for (i, p) in published.iter().enumerate() {
                let _ = write!(cases, " WHEN {} THEN {}", p.order, p.seq);
                let _ = write!(orders, "{}{}", if i == 0 { "" } else { "," }, p.order);
            }
            let sql = format!(
                "UPDATE {table} SET published_timestamp = UTC_TIMESTAMP(6), feed = ?, \
                 seq = CASE insertion_order{cases} END WHERE insertion_order IN ({orders})"
            );
            tx.exec_drop(sql, (feed,)).await.map_err(&e)?;
        }
        for f in failed {
            tx.exec_drop(
                format!(
                    "UPDATE {table} SET retry_count = retry_count + 1, last_error = ? \
                     WHERE insertion_order = ?"
                ),
                (f.error.as_str(), f.order),
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
        let row: Option<(Option<i64>, Option<i64>)> = self
            .conn
            .exec_first(
                format!(
                    "SELECT CAST(SUM(retry_count < ?) AS SIGNED), CAST(SUM(retry_count >= ?) AS SIGNED) \
                     FROM {table} WHERE published_timestamp IS NULL"
                ),
                (max_attempts, max_attempts),
            )
            .await
            .map_err(err(target, "counting the backlog"))?;
        let (todo, skipped) = row.unwrap_or((None, None));
        Ok((todo.unwrap_or(0) as u64, skipped.unwrap_or(0) as u64))
    }

    pub(crate) async fn positions(
        &mut self,
        target: &Target,
        table: &str,
        sink: &str,
    ) -> Result<BTreeMap<String, i64>, OutboxError> {
        let rows: Vec<(String, i64)> = self
            .conn
            .exec(
                format!(
                    "SELECT feed, seq FROM {} WHERE sink = ?",
                    super::position_table(table)
                ),
                (sink,),
            )
            .await
            .map_err(err(target, "reading the inbox position"))?;
        Ok(rows.into_iter().collect())
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
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(&e)?;
        if !rows.is_empty() {
            let mut sql = format!(
                "INSERT INTO {table} (event_id, feed, seq, event_type, event_timestamp_us, \
                 metadata, channel, payload, event_hash) VALUES "
            );
            let mut params: Vec<Value> = Vec::with_capacity(rows.len() * 9);
            for (i, r) in rows.iter().enumerate() {
                sql.push_str(if i == 0 { "" } else { "," });
                sql.push_str("(?,?,?,?,?,?,?,?,?)");
                params.extend([
                    text(Some(&r.event_id)),
                    text(Some(&r.feed)),
                    Value::Int(r.seq),
                    text(Some(&r.event_type)),
                    Value::Int(r.timestamp_us),
                    text(Some(&r.metadata)),
                    text(r.channel.as_deref()),
                    text(r.payload.as_deref()),
                    text(Some(&r.event_hash)),
                ]);
            }
            tx.exec_drop(sql, params).await.map_err(&e)?;
        }
        if !positions.is_empty() {
            let mut sql = format!(
                "INSERT INTO {} (sink, feed, seq) VALUES ",
                super::position_table(table)
            );
            let mut params: Vec<Value> = Vec::with_capacity(positions.len() * 3);
            for (i, (feed, seq)) in positions.iter().enumerate() {
                sql.push_str(if i == 0 { "(?,?,?)" } else { ",(?,?,?)" });
                params.extend([text(Some(sink)), text(Some(feed)), Value::Int(*seq)]);
            }
            sql.push_str(" ON DUPLICATE KEY UPDATE seq = VALUES(seq)");
            tx.exec_drop(sql, params).await.map_err(&e)?;
        }
        tx.commit().await.map_err(&e)
    }
}

/// The outbox table with its index of unpublished rows.
pub(crate) fn outbox_ddl(table: &str) -> Vec<String> {
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (
    insertion_order     BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id                  CHAR(36) NOT NULL DEFAULT (UUID()),
    event_type          VARCHAR(255) NOT NULL,
    payload             LONGTEXT NOT NULL,
    metadata            LONGTEXT NULL,
    channel             VARCHAR(255) NULL,
    created_timestamp   DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    published_timestamp DATETIME(6) NULL,
    retry_count         INT NOT NULL DEFAULT 0,
    last_error          TEXT NULL,
    feed                VARCHAR(63) NULL,
    seq                 BIGINT NULL,
    UNIQUE KEY {table}_id (id),
    KEY {table}_unpublished (published_timestamp, insertion_order)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )]
}

/// The inbox table and the sink positions beside it.
pub(crate) fn inbox_ddl(table: &str) -> Vec<String> {
    let position = super::position_table(table);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
    event_id           CHAR(36) NOT NULL PRIMARY KEY,
    feed               VARCHAR(63) NOT NULL,
    seq                BIGINT NOT NULL,
    event_type         VARCHAR(255) NOT NULL,
    event_timestamp_us BIGINT NOT NULL,
    metadata           LONGTEXT NOT NULL,
    channel            VARCHAR(255) NULL,
    payload            LONGTEXT NULL,
    event_hash         CHAR(64) NOT NULL,
    received_timestamp DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    UNIQUE KEY {table}_feed_seq (feed, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {position} (
    sink VARCHAR(64) NOT NULL,
    feed VARCHAR(63) NOT NULL,
    seq  BIGINT NOT NULL,
    PRIMARY KEY (sink, feed)
) ENGINE=InnoDB"
        ),
    ]
}
