//! `herald demo`, the service's own database: a ledger service commits a
//! donation and its outbox row in one transaction of its own SQLite file;
//! its node relays the row as a signed event; the reports node receives it
//! over QUIC and its inbox sink writes it into the reports service's own
//! SQLite table. A transaction the ledger rolls back never leaves. No
//! server needed (docs/OUTBOX.md shows the same with PostgreSQL).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::CliError;
use crate::config::{DbUrl, InboxSinkConfig, NodeConfig, OutboxSourceConfig};

/// The two services of this part.
const SERVICES: [&str; 2] = ["ledger", "reports"];
/// How long the demo waits for the row to arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often it looks.
const POLL_MS: u64 = 50;

/// Runs this part in `dir/outbox`; returns whether every expectation held.
pub fn run_outbox(dir: &Path) -> Result<bool, CliError> {
    let dir = dir.join("outbox");
    let configs = provision(&dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ledger_config, reports_config) = (&configs[0].1, &configs[1].1);
    let (_, ddl) = runtime.block_on(crate::outbox::init_source(
        ledger_config,
        "ledger-db",
        false,
    ))?;
    println!(
        "   herald outbox init: {} statements in ledger-service.db; herald inbox init: reports-service.db",
        ddl.len()
    );
    runtime.block_on(crate::outbox::init_sink(
        reports_config,
        "reports-db",
        false,
    ))?;
    let ledger_db = dir.join("ledger-service.db");
    let reports_db = dir.join("reports-service.db");
    let (donation_id, row_id, rolled_back_id) = service_transactions(&ledger_db)?;

    let mut nodes = Vec::new();
    for (service, (path, _)) in SERVICES.iter().zip(&configs) {
        nodes.push((*service, super::demo_live::spawn_node(path, &dir, service)?));
    }
    let watched = runtime.block_on(watch(&reports_db, &configs[1].0, &donation_id));
    for (service, child) in nodes.iter_mut() {
        super::demo_live::stop_gracefully(service, child);
    }
    let (arrived, sink) = watched?;
    let mut ok = true;
    match &arrived {
        Some((event_id, feed, seq, payload)) => {
            println!(
                "   reports-service.db herald_inbox: event {event_id} ({feed}/{seq}) {payload}"
            );
        }
        None => println!("   reports-service.db herald_inbox: nothing after {ARRIVAL_TIMEOUT:?}"),
    }
    if let Some(sink) = &sink {
        println!(
            "   herald status on reports: inbox sink {} {} ({} written, last error {})",
            sink.name,
            if sink.connected { "connected" } else { "down" },
            sink.done,
            sink.last_error.as_deref().unwrap_or("none")
        );
    }
    ok &= expect(
        arrived.as_ref().is_some_and(|(_, feed, _, payload)| {
            feed == "ledger" && payload.contains(&donation_id)
        }),
        "the donation reached the reports service's own table, decrypted, through the reports node",
    );
    let marked = published_as(&ledger_db, &row_id)?;
    if let Some((feed, seq)) = &marked {
        println!("   ledger-service.db herald_outbox: row {row_id} published as {feed}/{seq}");
    }
    ok &= expect(
        marked.is_some()
            && arrived
                .as_ref()
                .zip(marked.as_ref())
                .is_some_and(|(a, m)| a.2 == m.1),
        "the outbox row is marked published with the event's sequence number",
    );
    ok &= expect(
        published_as(&ledger_db, &rolled_back_id)?.is_none()
            && !relayed(&configs[0].1, &rolled_back_id)?,
        "the rolled-back transaction's row was never proclaimed",
    );
    Ok(ok)
}

fn expect(condition: bool, what: &str) -> bool {
    println!("   [{}] {what}", if condition { "ok" } else { "FAILED" });
    condition
}

/// Two nodes on free loopback ports: ledger with an outbox source, reports
/// with an inbox sink, each in its service's own SQLite file.
fn provision(dir: &Path) -> Result<Vec<(PathBuf, NodeConfig)>, CliError> {
    let names: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    crate::config::init_cluster(dir, &names, 7400, 365, true)?;
    let ports = [free_port()?, free_port()?];
    let mut configs = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let path = dir.join(format!("{service}.toml"));
        let mut config = NodeConfig::load(&path)?;
        config.listen = ports[i];
        for peer in &mut config.peers {
            peer.address = ports[1 - i];
        }
        let url = |file: &str| Some(DbUrl(format!("sqlite://{}", dir.join(file).display())));
        if *service == "ledger" {
            config.outbox_sources = vec![OutboxSourceConfig {
                name: "ledger-db".into(),
                url: url("ledger-service.db"),
                url_env: None,
                table: crate::config::OUTBOX_TABLE_DEFAULT.into(),
                channel: None,
                poll_interval_ms: Some(50),
                batch_rows: None,
                max_attempts: None,
                strict_order: false,
            }];
        } else {
            config.inbox_sinks = vec![InboxSinkConfig {
                name: "reports-db".into(),
                url: url("reports-service.db"),
                url_env: None,
                table: crate::config::INBOX_TABLE_DEFAULT.into(),
                types: vec!["donation.*".into()],
                from: None,
            }];
        }
        std::fs::write(&path, config.to_toml())?;
        configs.push((path.clone(), NodeConfig::load(&path)?));
    }
    println!(
        "   ledger (outbox source ledger-service.db) and reports (inbox sink reports-service.db) on ports {} and {}",
        ports[0].port(),
        ports[1].port()
    );
    Ok(configs)
}

fn free_port() -> std::io::Result<std::net::SocketAddr> {
    std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// Waits until the reports service's inbox holds the donation; returns the
/// row and the reports node's sink status.
async fn watch(
    reports_db: &Path,
    reports_config: &Path,
    donation_id: &str,
) -> Result<
    (
        Option<(String, String, i64, String)>,
        Option<crate::outbox::DbLinkStatus>,
    ),
    CliError,
> {
    let arrived = wait_for_inbox(reports_db, donation_id).await;
    let (_, client) = super::demo_live::client(reports_config).await?;
    let status = super::demo_live::status(&client).await;
    client.finish().await;
    Ok((arrived, status?.inbox_sinks.into_iter().next()))
}

/// The ledger service's own transactions: the donation and its outbox row
/// commit together; a second transaction is rolled back. Returns the
/// donation id, its outbox row id and the rolled-back row's id.
fn service_transactions(db: &Path) -> Result<(String, String, String), CliError> {
    let mut conn = Connection::open(db)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS donations (id TEXT PRIMARY KEY, donor TEXT NOT NULL, cents INTEGER NOT NULL)",
    )?;
    let donation_id = format!("D-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO donations (id, donor, cents) VALUES (?1, 'Ada', 5000)",
        [&donation_id],
    )?;
    let payload = format!(r#"{{"donation":"{donation_id}","donor":"Ada","cents":5000}}"#);
    let row_id: String = tx.query_row(
        "INSERT INTO herald_outbox (event_type, payload, metadata) VALUES ('donation.received', ?1, '{\"correlation_id\":\"campaign-7\"}') RETURNING id",
        [&payload],
        |r| r.get(0),
    )?;
    tx.commit()?;
    println!(
        "   ledger service: one transaction wrote donation {donation_id} and outbox row {row_id}"
    );
    let tx = conn.transaction()?;
    let rolled_back_id: String = tx.query_row(
        "INSERT INTO herald_outbox (event_type, payload) VALUES ('donation.received', '{\"donation\":\"never\"}') RETURNING id",
        [],
        |r| r.get(0),
    )?;
    tx.rollback()?;
    println!("   ledger service: another transaction wrote row {rolled_back_id} and rolled back");
    Ok((donation_id, row_id, rolled_back_id))
}

/// Waits until the reports service's inbox holds the donation: (event id,
/// feed, seq, payload).
async fn wait_for_inbox(db: &Path, donation_id: &str) -> Option<(String, String, i64, String)> {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    let pattern = format!("%{donation_id}%");
    while Instant::now() < deadline {
        let found = Connection::open(db).ok().and_then(|conn| {
            conn.query_row(
                "SELECT event_id, feed, seq, payload FROM herald_inbox WHERE payload LIKE ?1",
                [&pattern],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .ok()
            .flatten()
        });
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    None
}

/// The (feed, seq) a row was marked published as.
fn published_as(db: &Path, row_id: &str) -> Result<Option<(String, i64)>, CliError> {
    let conn = Connection::open(db)?;
    Ok(conn
        .query_row(
            "SELECT feed, seq FROM herald_outbox WHERE id = ?1 AND published_timestamp IS NOT NULL",
            params![row_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Whether the ledger's feed (its store, read after the node stopped) holds
/// an event relayed from row `row_id`.
fn relayed(ledger: &NodeConfig, row_id: &str) -> Result<bool, CliError> {
    let conn = crate::store::open_read_only(&ledger.data_dir)?;
    let mut after = 0;
    loop {
        let events = crate::store::read_arrivals_from(&conn, after, 1000)?;
        let Some(last) = events.last() else {
            return Ok(false);
        };
        after = last.arrival;
        if events
            .iter()
            .any(|e| e.header.meta_value(crate::outbox::relay::META_ROW_ID) == Some(row_id))
        {
            return Ok(true);
        }
    }
}
