//! The service's own database, against the real servers: PostgreSQL at
//! 127.0.0.1:5432 (trust auth, database `test`), MariaDB at 127.0.0.1:3306
//! (root, empty password, database `test`), and SQLite files. Every test
//! uses its own tables (and, on MariaDB, its own user), so tests run in
//! parallel and again without cleaning up.
//!
//! * `*_crash_*`: a service inserts outbox rows from concurrent transactions
//!   (some rolled back) while the `herald node` process is SIGKILLed at
//!   random moments and the database connections of its relay and sink are
//!   killed on the server. Afterwards every committed row is in the feed
//!   exactly once, no rolled-back row is, each writer's rows keep their
//!   order, every row is marked with its event's feed and seq, and the
//!   node's inbox sink landed every event exactly once with its position.
//! * `*_poison_*`: rows that cannot be proclaimed are reported (in the row
//!   and in status) and skipped, or, with strict order, hold the rows behind
//!   them until fixed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, herald_bin, wait_async};
use mysql_async::prelude::Queryable;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MARIA_ROOT_URL: &str = "mysql://root@127.0.0.1:3306/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Pg,
    Maria,
    Sqlite,
}

/// A small xorshift generator: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("rng seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A service database with this test's own outbox and inbox tables.
#[derive(Clone)]
struct Service {
    db: Db,
    /// What the node connects with.
    url: String,
    /// Unique per test run: table names, MariaDB user, source name.
    tag: String,
    outbox: String,
    inbox: String,
    maria_user: Option<String>,
}

impl Service {
    async fn new(db: Db, test: &str, dir: &Path) -> Service {
        let tag = format!(
            "{test}_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let (url, maria_user) = match db {
            Db::Pg => (PG_URL.to_string(), None),
            Db::Maria => {
                // Its own user, so the test can kill exactly the node's
                // connections; with a password, to check it never shows.
                let user = format!("h{}", &tag[tag.len() - 12..]);
                let mut root = mysql_async::Conn::from_url(MARIA_ROOT_URL).await.unwrap();
                root.query_drop(format!(
                    "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'pw-{user}'"
                ))
                .await
                .unwrap();
                root.query_drop(format!("GRANT ALL ON test.* TO '{user}'@'%'"))
                    .await
                    .unwrap();
                root.disconnect().await.unwrap();
                (
                    format!("mysql://{user}:pw-{user}@127.0.0.1:3306/test"),
                    Some(user),
                )
            }
            Db::Sqlite => (
                format!("sqlite://{}", dir.join("service.db").display()),
                None,
            ),
        };
        Service {
            db,
            url,
            outbox: format!("ob_{tag}"),
            inbox: format!("ib_{tag}"),
            tag,
            maria_user,
        }
    }

    fn source(&self) -> String {
        format!("src-{}", self.tag.replace('_', "-"))
    }

    fn sink(&self) -> String {
        format!("snk-{}", self.tag.replace('_', "-"))
    }

    /// The config lines of this service's source (with `extra` settings)
    /// and sink.
    fn toml(&self, extra: &str) -> String {
        self.toml_with(&format!("url = \"{}\"", self.url), extra)
    }

    /// The same, the source's URL given by `source_url` (a `url = ...` or
    /// `url_env = ...` line).
    fn toml_with(&self, source_url: &str, extra: &str) -> String {
        format!(
            "\n[[outbox_sources]]\nname = \"{}\"\n{source_url}\ntable = \"{}\"\npoll_interval_ms = 20\n{extra}\n\n[[inbox_sinks]]\nname = \"{}\"\nurl = \"{}\"\ntable = \"{}\"\ntypes = [\"ledger.*\"]\n",
            self.source(),
            self.outbox,
            self.sink(),
            self.url,
            self.inbox
        )
    }

    async fn connect(&self) -> Conn {
        match self.db {
            Db::Pg => {
                let (client, connection) = tokio_postgres::connect(
                    "host=127.0.0.1 port=5432 user=postgres dbname=test",
                    tokio_postgres::NoTls,
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                Conn::Pg(client)
            }
            Db::Maria => Conn::Maria(mysql_async::Conn::from_url(MARIA_ROOT_URL).await.unwrap()),
            Db::Sqlite => {
                let path = self.url.strip_prefix("sqlite://").unwrap().to_string();
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(30)).unwrap();
                Conn::Sqlite(Arc::new(Mutex::new(conn)))
            }
        }
    }

    /// Drops this test's tables (and MariaDB user), so runs leave the shared
    /// `test` databases as they found them. Called when a test passed.
    async fn cleanup(&self) {
        let blk = format!("blk_{}", self.tag);
        let tables = [
            self.outbox.clone(),
            self.inbox.clone(),
            format!("{}_position", self.inbox),
            blk.clone(),
        ];
        match self.db {
            Db::Pg => {
                let Conn::Pg(c) = self.connect().await else {
                    unreachable!()
                };
                for t in &tables {
                    c.batch_execute(&format!("DROP TABLE IF EXISTS {t} CASCADE"))
                        .await
                        .unwrap();
                }
                c.batch_execute(&format!(
                    "DROP FUNCTION IF EXISTS {blk}(); DROP FUNCTION IF EXISTS {}_herald_notify()",
                    self.outbox
                ))
                .await
                .unwrap();
            }
            Db::Maria => {
                let mut root = mysql_async::Conn::from_url(MARIA_ROOT_URL).await.unwrap();
                for t in &tables {
                    root.query_drop(format!("DROP TABLE IF EXISTS {t}"))
                        .await
                        .unwrap();
                }
                if let Some(user) = &self.maria_user {
                    root.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
                        .await
                        .unwrap();
                }
            }
            Db::Sqlite => {}
        }
    }

    /// Kills the node's database sessions on the server (PostgreSQL by
    /// application name, MariaDB by user). Returns how many.
    async fn kill_sessions(&self) -> usize {
        match self.db {
            Db::Pg => {
                let Conn::Pg(c) = self.connect().await else {
                    unreachable!()
                };
                let rows = c
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1",
                        &[&format!("herald %{}", self.tag.replace('_', "-"))],
                    )
                    .await
                    .unwrap();
                rows.len()
            }
            Db::Maria => {
                let mut root = mysql_async::Conn::from_url(MARIA_ROOT_URL).await.unwrap();
                let ids: Vec<u64> = root
                    .exec(
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?",
                        (self.maria_user.clone().unwrap(),),
                    )
                    .await
                    .unwrap();
                for id in &ids {
                    let _ = root.query_drop(format!("KILL CONNECTION {id}")).await;
                }
                ids.len()
            }
            Db::Sqlite => 0,
        }
    }
}

/// One outbox row as the service writes it.
struct NewRow {
    id: String,
    event_type: String,
    payload: String,
    metadata: Option<String>,
    channel: Option<String>,
}

impl NewRow {
    fn ledger(payload: String) -> NewRow {
        NewRow {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: "ledger.entry".into(),
            payload,
            metadata: Some(r#"{"writer":"test"}"#.into()),
            channel: None,
        }
    }
}

/// An outbox row as stored.
#[derive(Debug, Clone)]
struct OutRow {
    id: String,
    published: bool,
    feed: Option<String>,
    seq: Option<i64>,
    retry_count: i64,
    last_error: Option<String>,
}

/// An inbox row as stored.
#[derive(Debug, Clone)]
struct InRow {
    event_id: String,
    feed: String,
    seq: i64,
    payload: Option<String>,
}

/// The service's own connection.
enum Conn {
    Pg(tokio_postgres::Client),
    Maria(mysql_async::Conn),
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
}

impl Conn {
    /// Inserts `rows` in one transaction, committed or rolled back.
    async fn insert(&mut self, table: &str, rows: &[NewRow], commit: bool) {
        match self {
            Conn::Pg(c) => {
                let tx = c.transaction().await.unwrap();
                let sql = format!(
                    "INSERT INTO {table} (id, event_type, payload, metadata, channel) VALUES ($1::text::uuid, $2, $3, $4, $5)"
                );
                for r in rows {
                    tx.execute(
                        &sql,
                        &[&r.id, &r.event_type, &r.payload, &r.metadata, &r.channel],
                    )
                    .await
                    .unwrap();
                }
                if commit {
                    tx.commit().await.unwrap()
                } else {
                    tx.rollback().await.unwrap()
                }
            }
            Conn::Maria(c) => {
                let mut tx = c
                    .start_transaction(mysql_async::TxOpts::default())
                    .await
                    .unwrap();
                let sql = format!(
                    "INSERT INTO {table} (id, event_type, payload, metadata, channel) VALUES (?, ?, ?, ?, ?)"
                );
                for r in rows {
                    tx.exec_drop(
                        &sql,
                        (&r.id, &r.event_type, &r.payload, &r.metadata, &r.channel),
                    )
                    .await
                    .unwrap();
                }
                if commit {
                    tx.commit().await.unwrap()
                } else {
                    tx.rollback().await.unwrap()
                }
            }
            Conn::Sqlite(c) => {
                let c = c.clone();
                let sql = format!(
                    "INSERT INTO {table} (id, event_type, payload, metadata, channel) VALUES (?1, ?2, ?3, ?4, ?5)"
                );
                let rows: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        (
                            r.id.clone(),
                            r.event_type.clone(),
                            r.payload.clone(),
                            r.metadata.clone(),
                            r.channel.clone(),
                        )
                    })
                    .collect();
                tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().unwrap();
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    for r in &rows {
                        tx.execute(&sql, rusqlite::params![r.0, r.1, r.2, r.3, r.4])
                            .unwrap();
                    }
                    if commit {
                        tx.commit().unwrap()
                    } else {
                        tx.rollback().unwrap()
                    }
                })
                .await
                .unwrap();
            }
        }
    }

    async fn execute(&mut self, sql: &str) {
        match self {
            Conn::Pg(c) => {
                c.batch_execute(sql).await.unwrap();
            }
            Conn::Maria(c) => c.query_drop(sql).await.unwrap(),
            Conn::Sqlite(c) => {
                let (c, sql) = (c.clone(), sql.to_string());
                tokio::task::spawn_blocking(move || c.lock().unwrap().execute_batch(&sql).unwrap())
                    .await
                    .unwrap()
            }
        }
    }

    async fn outbox(&mut self, table: &str) -> Vec<OutRow> {
        let id = match self {
            Conn::Pg(_) => "id::text",
            _ => "id",
        };
        let sql = format!(
            "SELECT {id}, CASE WHEN published_timestamp IS NULL THEN 0 ELSE 1 END, feed, seq, retry_count, last_error FROM {table} ORDER BY insertion_order"
        );
        match self {
            Conn::Pg(c) => c
                .query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| OutRow {
                    id: r.get(0),
                    published: r.get::<_, i32>(1) == 1,
                    feed: r.get(2),
                    seq: r.get(3),
                    retry_count: r.get::<_, i32>(4) as i64,
                    last_error: r.get(5),
                })
                .collect(),
            Conn::Maria(c) => {
                type Row = (
                    String,
                    i64,
                    Option<String>,
                    Option<i64>,
                    i64,
                    Option<String>,
                );
                let rows: Vec<Row> = c.query(sql).await.unwrap();
                rows.into_iter()
                    .map(
                        |(id, published, feed, seq, retry_count, last_error)| OutRow {
                            id,
                            published: published == 1,
                            feed,
                            seq,
                            retry_count,
                            last_error,
                        },
                    )
                    .collect()
            }
            Conn::Sqlite(c) => {
                let c = c.clone();
                tokio::task::spawn_blocking(move || {
                    let c = c.lock().unwrap();
                    let mut stmt = c.prepare(&sql).unwrap();
                    stmt.query_map([], |r| {
                        Ok(OutRow {
                            id: r.get(0)?,
                            published: r.get::<_, i64>(1)? == 1,
                            feed: r.get(2)?,
                            seq: r.get(3)?,
                            retry_count: r.get(4)?,
                            last_error: r.get(5)?,
                        })
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
                })
                .await
                .unwrap()
            }
        }
    }

    async fn inbox(&mut self, table: &str) -> Vec<InRow> {
        let id = match self {
            Conn::Pg(_) => "event_id::text",
            _ => "event_id",
        };
        let sql = format!("SELECT {id}, feed, seq, payload FROM {table} ORDER BY feed, seq");
        match self {
            Conn::Pg(c) => c
                .query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| InRow {
                    event_id: r.get(0),
                    feed: r.get(1),
                    seq: r.get(2),
                    payload: r.get(3),
                })
                .collect(),
            Conn::Maria(c) => {
                let rows: Vec<(String, String, i64, Option<String>)> = c.query(sql).await.unwrap();
                rows.into_iter()
                    .map(|(event_id, feed, seq, payload)| InRow {
                        event_id,
                        feed,
                        seq,
                        payload,
                    })
                    .collect()
            }
            Conn::Sqlite(c) => {
                let c = c.clone();
                tokio::task::spawn_blocking(move || {
                    let c = c.lock().unwrap();
                    let mut stmt = c.prepare(&sql).unwrap();
                    stmt.query_map([], |r| {
                        Ok(InRow {
                            event_id: r.get(0)?,
                            feed: r.get(1)?,
                            seq: r.get(2)?,
                            payload: r.get(3)?,
                        })
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
                })
                .await
                .unwrap()
            }
        }
    }

    /// The sink positions: (sink, feed) → seq.
    async fn positions(&mut self, table: &str) -> BTreeMap<(String, String), i64> {
        let sql = format!("SELECT sink, feed, seq FROM {table}_position");
        match self {
            Conn::Pg(c) => c
                .query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect(),
            Conn::Maria(c) => {
                let rows: Vec<(String, String, i64)> = c.query(sql).await.unwrap();
                rows.into_iter().map(|(s, f, q)| ((s, f), q)).collect()
            }
            Conn::Sqlite(c) => {
                let c = c.clone();
                tokio::task::spawn_blocking(move || {
                    let c = c.lock().unwrap();
                    let mut stmt = c.prepare(&sql).unwrap();
                    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
                        .unwrap()
                        .collect::<Result<BTreeMap<_, _>, _>>()
                        .unwrap()
                })
                .await
                .unwrap()
            }
        }
    }
}

/// A one-node cluster listening on `port`, with `extra` appended to its
/// config.
fn cluster(port: u16, extra: &str) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    herald::config::init_cluster(dir.path(), &["a".to_string()], port, 365, false)
        .expect("init cluster");
    let cluster = Cluster {
        dir,
        nodes: vec!["a".into()],
    };
    let path = cluster.config_path("a");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    cluster
}

/// The environment variable the crash tests' source reads its URL from.
const SOURCE_URL_ENV: &str = "HERALD_TEST_SOURCE_URL";

/// Runs `herald ARGS`, asserting exit 0; returns stdout.
fn herald(args: &[&str], config: &Path) -> String {
    herald_env(args, config, &[])
}

/// [`herald`] with environment variables.
fn herald_env(args: &[&str], config: &Path, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(herald_bin())
        .envs(env.iter().copied())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The node process, restarted at will, with the source URL in its
/// environment.
struct NodeProcess {
    config: PathBuf,
    log: PathBuf,
    source_url: String,
    child: Option<Child>,
}

/// Starts `herald node` as `common::spawn_node` does, with the source URL
/// in [`SOURCE_URL_ENV`].
fn spawn_node_with_url(config: &Path, log: &Path, source_url: &str) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::process::Command::new(herald_bin())
        .arg("node")
        .arg("--config")
        .arg(config)
        .env("HERALD_LOG", "info")
        .env(SOURCE_URL_ENV, source_url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

impl NodeProcess {
    fn start(config: PathBuf, log: PathBuf, source_url: String) -> NodeProcess {
        let child = Some(spawn_node_with_url(&config, &log, &source_url));
        NodeProcess {
            config,
            log,
            source_url,
            child,
        }
    }
    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }
    fn restart(&mut self) {
        self.sigkill();
        self.child = Some(spawn_node_with_url(
            &self.config,
            &self.log,
            &self.source_url,
        ));
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

async fn crash_suite(db: Db, port: u16, rows_total: usize) {
    let scratch = tempfile::tempdir().unwrap();
    let service = Service::new(db, &format!("crash_{port}"), scratch.path()).await;
    // Small batches, so a backlog makes many full batches (whose marking
    // overlaps the next batch's proclamation).
    let cluster = cluster(port, &service.toml("batch_rows = 100"));
    let config = cluster.config_path("a");
    // The tables, as an operator creates them.
    let printed = herald(
        &["outbox", "init", "--source", &service.source(), "--print"],
        &config,
    );
    assert!(printed.contains(&format!("CREATE TABLE IF NOT EXISTS {}", service.outbox)));
    let created = herald(&["outbox", "init", "--source", &service.source()], &config);
    assert!(!created.contains("pw-"), "a password leaked: {created}");
    herald(&["inbox", "init", "--sink", &service.sink()], &config);

    // A backlog waiting before the node starts: writer number WRITERS.
    const WRITERS: usize = 4;
    const BACKLOG: usize = 2_000;
    let mut backlog: Vec<(String, usize)> = Vec::new();
    {
        let mut conn = service.connect().await;
        for chunk in 0..BACKLOG / 100 {
            let rows: Vec<NewRow> = (0..100)
                .map(|k| NewRow::ledger(format!(r#"{{"w":{WRITERS},"i":{}}}"#, chunk * 100 + k)))
                .collect();
            conn.insert(&service.outbox, &rows, true).await;
            backlog.extend(
                rows.into_iter()
                    .enumerate()
                    .map(|(k, r)| (r.id, chunk * 100 + k)),
            );
        }
    }

    let mut node = NodeProcess::start(
        config.clone(),
        cluster.path().join("node.log"),
        service.url.clone(),
    );
    let mut rng = Rng::new();

    // Writers: concurrent transactions of 1 to 8 rows; one in ten rolled back.
    let per_writer = rows_total / WRITERS;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let service = service.clone();
        let mut seed = Rng(rng.below(u64::MAX) | 1);
        writers.push(tokio::spawn(async move {
            let mut conn = service.connect().await;
            let mut committed: Vec<(String, usize)> = Vec::new();
            let mut rolled_back: Vec<String> = Vec::new();
            let mut i = 0usize;
            let mut transactions = 0u64;
            while committed.len() < per_writer {
                transactions += 1;
                let n = (1 + seed.below(8) as usize).min(per_writer - committed.len());
                let commit = !transactions.is_multiple_of(10);
                let rows: Vec<NewRow> = (0..n)
                    .map(|k| NewRow::ledger(format!(r#"{{"w":{w},"i":{}}}"#, i + k)))
                    .collect();
                conn.insert(&service.outbox, &rows, commit).await;
                for (k, r) in rows.into_iter().enumerate() {
                    if commit {
                        committed.push((r.id, i + k));
                    } else {
                        rolled_back.push(r.id);
                    }
                }
                if commit {
                    i += n;
                }
            }
            (committed, rolled_back)
        }));
    }
    // Meanwhile: SIGKILL the node, or kill its database sessions.
    let mut kills = 0;
    let mut drops = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        if rng.below(3) == 0 && db != Db::Sqlite {
            drops += service.kill_sessions().await;
        } else {
            node.restart();
            kills += 1;
        }
    }
    let mut committed: HashMap<String, (usize, usize)> = HashMap::new();
    let mut rolled_back: BTreeSet<String> = BTreeSet::new();
    committed.extend(backlog.into_iter().map(|(id, i)| (id, (WRITERS, i))));
    for (w, writer) in writers.into_iter().enumerate() {
        let (c, r) = writer.await.unwrap();
        committed.extend(c.into_iter().map(|(id, i)| (id, (w, i))));
        rolled_back.extend(r);
    }
    eprintln!(
        "{db:?}: {} rows committed ({BACKLOG} before the node started), {} rolled back, {kills} node SIGKILLs, {drops} sessions killed",
        committed.len(),
        rolled_back.len()
    );
    assert!(kills >= 1, "the node was killed at least once");
    // One more kill mid-relay, then let it finish; on a server, its sessions
    // are killed once more while it runs (a session killed just before a
    // SIGKILL may never be noticed), so the loss is surely seen and logged.
    node.restart();
    if db != Db::Sqlite {
        let mut killed = 0;
        for _ in 0..50 {
            killed = service.kill_sessions().await;
            if killed > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            killed > 0,
            "the running node's sessions were found and killed"
        );
        drops += killed;
    }
    let mut conn = service.connect().await;
    let total = committed.len();
    wait_async(
        "every row published and landed",
        Duration::from_secs(60),
        || {
            let service = service.clone();
            async move {
                let mut conn = service.connect().await;
                let waiting = conn
                    .outbox(&service.outbox)
                    .await
                    .iter()
                    .filter(|r| !r.published)
                    .count();
                let landed = conn.inbox(&service.inbox).await.len();
                if waiting == 0 && landed == total {
                    Ok(())
                } else {
                    Err(format!(
                        "{waiting} rows unpublished, {landed} of {total} landed"
                    ))
                }
            }
        },
    )
    .await;
    // Status, as an operator sees it (the backlog is counted every second).
    // After the killed sessions the relay reconnects on its own schedule:
    // wait for that too, not only for the backlog.
    let status = wait_async(
        "status shows no backlog, connected",
        Duration::from_secs(10),
        || {
            let config = config.clone();
            async move {
                let status: serde_json::Value =
                    serde_json::from_str(&herald(&["status", "--json"], &config)).unwrap();
                let source = &status["outbox_sources"][0];
                if source["backlog"] == 0 && source["connected"] == true {
                    Ok(status)
                } else {
                    Err(status.to_string())
                }
            }
        },
    )
    .await;
    let source = &status["outbox_sources"][0];
    assert_eq!(source["name"], service.source());
    assert_eq!(source["connected"], true);
    assert_eq!(status["inbox_sinks"][0]["name"], service.sink());
    assert!(!status.to_string().contains("pw-"), "a password leaked");
    let text = herald(&["status"], &config);
    assert!(
        text.contains("OUTBOX SOURCE") && text.contains(&service.source()),
        "{text}"
    );
    if db != Db::Sqlite {
        let log_path = cluster.path().join("node.log");
        wait_async(
            "the lost session in the node's log",
            Duration::from_secs(20),
            || {
                let log_path = log_path.clone();
                async move {
                    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if text.contains("lost its database") {
                        Ok(())
                    } else {
                        Err("not logged yet".to_string())
                    }
                }
            },
        )
        .await;
    }
    node.sigkill();
    let node_log = std::fs::read_to_string(cluster.path().join("node.log")).unwrap_or_default();
    assert!(
        !node_log.contains("pw-"),
        "a password reached the node's log"
    );
    if db != Db::Sqlite {
        assert!(
            node_log.contains("lost its database"),
            "killed sessions are logged ({drops} killed)"
        );
    }
    eprintln!(
        "{db:?}: {} batches found rows proclaimed before a crash and only marked them",
        node_log
            .matches("already proclaimed by an earlier attempt")
            .count()
    );

    // The log: each committed row exactly once, nothing rolled back.
    let log = cluster.open("a");
    let head = log
        .heads()
        .unwrap()
        .iter()
        .find(|h| h.feed == "a")
        .unwrap()
        .seq;
    let events = log.read("a", 0..=head).unwrap();
    let mut by_row: HashMap<String, u64> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.header.event_type == "ledger.entry")
    {
        let id = e
            .header
            .meta_value("outbox.id")
            .expect("outbox.id")
            .to_string();
        assert!(
            !rolled_back.contains(&id),
            "rolled-back row {id} was proclaimed"
        );
        assert!(
            by_row.insert(id.clone(), e.header.seq).is_none(),
            "row {id} was proclaimed twice"
        );
    }
    assert_eq!(by_row.len(), total, "every committed row proclaimed once");
    for id in committed.keys() {
        assert!(by_row.contains_key(id), "committed row {id} missing");
    }
    // Each writer's rows in the order it inserted them.
    let mut per_writer: BTreeMap<usize, Vec<(usize, u64)>> = BTreeMap::new();
    for (id, (w, i)) in &committed {
        per_writer.entry(*w).or_default().push((*i, by_row[id]));
    }
    for (w, mut rows) in per_writer {
        rows.sort();
        assert!(
            rows.windows(2).all(|p| p[0].1 < p[1].1),
            "writer {w}'s rows out of order"
        );
    }
    // Every row marked with its event.
    for row in conn.outbox(&service.outbox).await {
        if rolled_back.contains(&row.id) {
            continue;
        }
        assert!(row.published);
        assert_eq!(row.feed.as_deref(), Some("a"));
        assert_eq!(row.seq, Some(by_row[&row.id] as i64), "row {}", row.id);
    }
    // The inbox: each event once, decrypted, with the position.
    let by_seq: HashMap<u64, &herald::store::StoredEvent> =
        events.iter().map(|e| (e.header.seq, e)).collect();
    let inbox = conn.inbox(&service.inbox).await;
    assert_eq!(inbox.len(), total);
    for row in &inbox {
        let event = by_seq[&(row.seq as u64)];
        assert_eq!(row.feed, "a");
        assert_eq!(row.event_id, event.header.uuid().to_string());
        let payload: serde_json::Value =
            serde_json::from_str(row.payload.as_deref().expect("decrypted")).unwrap();
        assert!(payload["w"].is_u64() && payload["i"].is_u64());
    }
    let positions = conn.positions(&service.inbox).await;
    let last = inbox.iter().map(|r| r.seq).max().unwrap();
    assert_eq!(positions[&(service.sink(), "a".to_string())], last);
    drop(conn);
    service.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_relay_and_sink_exactly_once() {
    crash_suite(Db::Pg, 17610, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_crash_relay_and_sink_exactly_once() {
    crash_suite(Db::Maria, 17611, 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_crash_relay_and_sink_exactly_once() {
    crash_suite(Db::Sqlite, 17612, 5_000).await;
}

/// Rows that cannot be proclaimed: reported and skipped (default), or
/// holding the rows behind them (strict order) until fixed.
async fn poison_suite(db: Db, port: u16) {
    let scratch = tempfile::tempdir().unwrap();
    let lax = Service::new(db, &format!("poison_{port}"), scratch.path()).await;
    let strict = Service::new(db, &format!("strict_{port}"), scratch.path()).await;
    let cluster = cluster(
        port,
        &format!(
            "{}{}",
            lax.toml("max_attempts = 2"),
            strict.toml("strict_order = true")
        ),
    );
    let config = cluster.config("a");
    for s in [&lax, &strict] {
        herald::outbox::init_source(&config, &s.source(), false)
            .await
            .unwrap();
        herald::outbox::init_sink(&config, &s.sink(), false)
            .await
            .unwrap();
    }
    let good = |n: u32| NewRow::ledger(format!(r#"{{"n":{n}}}"#));
    let bad =
        |payload: &str, event_type: &str, metadata: Option<&str>, channel: Option<&str>| NewRow {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.into(),
            payload: payload.into(),
            metadata: metadata.map(str::to_string),
            channel: channel.map(str::to_string),
        };
    let rows = vec![
        good(1),
        bad("{not json", "ledger.entry", None, None),
        good(2),
        bad("{}", "herald.genesis", None, None),
        bad("{}", "ledger.entry", None, Some("nochannel")),
        bad("{}", "ledger.entry", Some("[1,2]"), None),
        good(3),
    ];
    let reasons = [
        "payload is not valid JSON",
        "reserved",
        "nochannel",
        "JSON object",
    ];
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut conn = lax.connect().await;
    conn.insert(&lax.outbox, &rows, true).await;
    let strict_rows = vec![good(1), bad("{oops", "ledger.entry", None, None), good(2)];
    let strict_ids: Vec<String> = strict_rows.iter().map(|r| r.id.clone()).collect();
    conn.insert(&strict.outbox, &strict_rows, true).await;

    let node = herald::node::Node::start(&config).await.unwrap();
    // Lax: good rows published in order, bad ones skipped after 2 attempts.
    let outbox = wait_async("poison rows skipped", Duration::from_secs(20), || {
        let lax = lax.clone();
        async move {
            let rows = lax.connect().await.outbox(&lax.outbox).await;
            let settled = rows.iter().all(|r| r.published || r.retry_count >= 2);
            if settled {
                Ok(rows)
            } else {
                Err(format!("{rows:?}"))
            }
        }
    })
    .await;
    let by_id: HashMap<&str, &OutRow> = outbox.iter().map(|r| (r.id.as_str(), r)).collect();
    let good_seqs: Vec<i64> = [0, 2, 6]
        .iter()
        .map(|&i| {
            let r = by_id[ids[i].as_str()];
            assert!(r.published && r.last_error.is_none(), "{r:?}");
            r.seq.unwrap()
        })
        .collect();
    assert!(good_seqs.windows(2).all(|w| w[0] < w[1]), "{good_seqs:?}");
    for (i, reason) in [1, 3, 4, 5].into_iter().zip(reasons) {
        let r = by_id[ids[i].as_str()];
        assert!(!r.published && r.seq.is_none(), "{r:?}");
        assert_eq!(r.retry_count, 2, "{r:?}");
        let error = r.last_error.as_deref().unwrap_or_default();
        assert!(error.contains(reason), "{error:?} should say {reason:?}");
    }
    // Status shows the skipped rows and the last error.
    let lax_name = lax.source();
    let status = wait_async("status counts skipped rows", Duration::from_secs(5), || {
        let (node, lax_name) = (&node, &lax_name);
        async move {
            let status = node.status().await;
            let source = status
                .outbox_sources
                .iter()
                .find(|s| &s.name == lax_name)
                .cloned();
            match source {
                Some(s) if s.skipped == 4 && s.connected => Ok(s),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(
        status.last_error.is_some() && status.retries >= 8,
        "{status:?}"
    );
    assert_eq!(status.backlog, 0);

    // Strict: the bad row holds the one behind it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = conn.outbox(&strict.outbox).await;
    assert!(rows[0].published);
    assert!(!rows[1].published && rows[1].retry_count >= 1 && rows[1].last_error.is_some());
    assert!(
        !rows[2].published,
        "strict order keeps the row behind a bad one"
    );
    // Fixed by the service: both go out, in order.
    conn.execute(&format!(
        "UPDATE {} SET payload = '{{\"fixed\":true}}' WHERE id = '{}'",
        strict.outbox, strict_ids[1]
    ))
    .await;
    let rows = wait_async(
        "the fixed row and the one behind it",
        Duration::from_secs(20),
        || {
            let strict = strict.clone();
            async move {
                let rows = strict.connect().await.outbox(&strict.outbox).await;
                if rows.iter().all(|r| r.published) {
                    Ok(rows)
                } else {
                    Err(format!("{rows:?}"))
                }
            }
        },
    )
    .await;
    assert!(
        rows[0].seq < rows[1].seq && rows[1].seq < rows[2].seq,
        "{rows:?}"
    );
    node.shutdown().await;
    drop(conn);
    lax.cleanup().await;
    strict.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_poison_rows_reported_and_skipped() {
    poison_suite(Db::Pg, 17620).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_poison_rows_reported_and_skipped() {
    poison_suite(Db::Maria, 17621).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_poison_rows_reported_and_skipped() {
    poison_suite(Db::Sqlite, 17622).await;
}

/// A database that is not there: the node runs, status says so, and the
/// relay connects once it can (here: the SQLite file's table appears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_database_is_retried_without_stopping_the_node() {
    let scratch = tempfile::tempdir().unwrap();
    let service = Service::new(Db::Pg, "missing", scratch.path()).await;
    let broken = service
        .toml("")
        .replace(PG_URL, "postgres://postgres:hunter2@127.0.0.1:1/test");
    let cluster = cluster(17623, &broken);
    let config = cluster.config("a");
    let node = herald::node::Node::start(&config).await.unwrap();
    let status = wait_async("the failure in status", Duration::from_secs(10), || {
        let node = &node;
        async move {
            let s = node.status().await;
            match s.outbox_sources.first() {
                Some(src) if src.retries >= 2 => Ok(s),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let source = &status.outbox_sources[0];
    assert!(!source.connected);
    assert!(source.url.contains(":***@") && !source.url.contains("hunter2"));
    let json = serde_json::to_string(&status).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    // The node itself still works.
    node.proclaim("ledger.entry", b"{}", vec![]).await.unwrap();
    node.shutdown().await;
}

/// The window exactly-once is about, made to last: the database refuses to
/// mark rows published (a trigger of the test's), so the relay proclaims
/// rows it cannot mark, then the node stops and starts again. No row is
/// proclaimed twice; once marking works, every row is marked with the event
/// it already became, and herald's records of them are cleared.
async fn unmarked_suite(db: Db, port: u16) {
    let scratch = tempfile::tempdir().unwrap();
    let service = Service::new(db, &format!("unmarked_{port}"), scratch.path()).await;
    let cluster = cluster(port, &service.toml(""));
    let config = cluster.config("a");
    herald::outbox::init_source(&config, &service.source(), false)
        .await
        .unwrap();
    let (ob, blk) = (&service.outbox, format!("blk_{}", service.tag));
    let mut conn = service.connect().await;
    let block = match db {
        Db::Pg => format!(
            "CREATE TABLE {blk} (x INT);
             CREATE FUNCTION {blk}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF EXISTS (SELECT 1 FROM {blk}) THEN RAISE EXCEPTION 'blocked by test'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER {blk} BEFORE UPDATE ON {ob} FOR EACH ROW EXECUTE FUNCTION {blk}();"
        ),
        Db::Maria => format!("CREATE TABLE {blk} (x INT)"),
        Db::Sqlite => format!(
            "CREATE TABLE {blk} (x INT);
             CREATE TRIGGER {blk} BEFORE UPDATE ON {ob} WHEN EXISTS (SELECT 1 FROM {blk})
             BEGIN SELECT RAISE(ABORT, 'blocked by test'); END;"
        ),
    };
    conn.execute(&block).await;
    if db == Db::Maria {
        conn.execute(&format!(
            "CREATE TRIGGER {blk} BEFORE UPDATE ON {ob} FOR EACH ROW BEGIN \
             IF EXISTS (SELECT 1 FROM {blk}) THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'blocked by test'; END IF; END"
        ))
        .await;
    }
    conn.execute(&format!("INSERT INTO {blk} VALUES (1)")).await;
    let first: Vec<NewRow> = (0..50)
        .map(|i| NewRow::ledger(format!(r#"{{"i":{i}}}"#)))
        .collect();
    conn.insert(ob, &first, true).await;

    let ledger_events = |log: &herald::store::Log| -> Vec<(String, u64)> {
        let head = log
            .heads()
            .unwrap()
            .iter()
            .find(|h| h.feed == "a")
            .map_or(0, |h| h.seq);
        log.read("a", 0..=head)
            .unwrap()
            .iter()
            .filter(|e| e.header.event_type == "ledger.entry")
            .map(|e| {
                (
                    e.header.meta_value("outbox.id").unwrap().to_string(),
                    e.header.seq,
                )
            })
            .collect()
    };
    for round in 0..2 {
        let node = herald::node::Node::start(&config).await.unwrap();
        let expected = 50 + 20 * round;
        wait_async(
            "rows proclaimed but refused marking",
            Duration::from_secs(20),
            || {
                let node = &node;
                async move {
                    let events = ledger_events(node.log()).len();
                    let status = node.status().await;
                    let error = status.outbox_sources[0]
                        .last_error
                        .clone()
                        .unwrap_or_default();
                    if events >= expected && error.contains("blocked by test") {
                        Ok(())
                    } else {
                        Err(format!("{events} events, last error {error:?}"))
                    }
                }
            },
        )
        .await;
        // Retries of the unmarked rows proclaim nothing new.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ledger_events(node.log()).len(), expected, "round {round}");
        node.shutdown().await;
        let more: Vec<NewRow> = (0..20)
            .map(|i| NewRow::ledger(format!(r#"{{"j":{i}}}"#)))
            .collect();
        conn.insert(ob, &more, true).await;
    }
    // Marking works again.
    conn.execute(&format!("DELETE FROM {blk}")).await;
    let node = herald::node::Node::start(&config).await.unwrap();
    let source = service.source();
    wait_async(
        "every row marked, herald's records cleared",
        Duration::from_secs(20),
        || {
            let (node, service, source) = (&node, service.clone(), &source);
            async move {
                let rows = service.connect().await.outbox(&service.outbox).await;
                let waiting = rows.iter().filter(|r| !r.published).count();
                let records = node
                    .log()
                    .scan(&format!("herald.outbox.{source}"), None, 1000)
                    .unwrap()
                    .len();
                if waiting == 0 && records == 0 {
                    Ok(())
                } else {
                    Err(format!("{waiting} rows unmarked, {records} records"))
                }
            }
        },
    )
    .await;
    let events = ledger_events(node.log());
    let by_id: HashMap<&str, u64> = events.iter().map(|(id, seq)| (id.as_str(), *seq)).collect();
    assert_eq!(events.len(), 90, "each of the 90 rows proclaimed once");
    assert_eq!(by_id.len(), 90);
    for row in conn.outbox(ob).await {
        assert_eq!(row.seq, Some(by_id[row.id.as_str()] as i64), "{row:?}");
    }
    node.shutdown().await;
    drop(conn);
    service.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_proclaimed_but_unmarked_are_marked_not_reproclaimed() {
    unmarked_suite(Db::Pg, 17630).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_rows_proclaimed_but_unmarked_are_marked_not_reproclaimed() {
    unmarked_suite(Db::Maria, 17631).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_proclaimed_but_unmarked_are_marked_not_reproclaimed() {
    unmarked_suite(Db::Sqlite, 17632).await;
}

/// `herald bench --outbox-url`: the section is there, consistent, and the
/// run's tables are gone afterwards. (Speed is not asserted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_relay_and_sink_rates_and_cleans_up() {
    let child = std::process::Command::new(herald_bin())
        .args([
            "bench",
            "--events",
            "300",
            "--cluster-events",
            "0",
            "--sagas",
            "0",
            "--outbox-url",
            PG_URL,
            "--outbox-rows",
            "500",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outbox = &report["outbox"];
    assert_eq!(outbox["rows"], 500);
    let relay = outbox["relay_rows_per_s"].as_f64().unwrap();
    let proclaim = report["proclaim"]["events_per_s"].as_f64().unwrap();
    assert!(relay > 0.0 && outbox["sink_events_per_s"].as_f64().unwrap() > 0.0);
    let fraction = outbox["relay_fraction_of_proclaim"].as_f64().unwrap();
    assert!((fraction - relay / proclaim).abs() < 1e-9, "{outbox}");
    let Conn::Pg(client) = Service::new(Db::Pg, "bench", Path::new("/tmp"))
        .await
        .connect()
        .await
    else {
        unreachable!()
    };
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE $1",
            &[&format!("herald_bench_%_{pid}%")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the bench dropped its tables");
    // Only PostgreSQL is measured: another URL is refused, exit 2.
    let out = std::process::Command::new(herald_bin())
        .args([
            "bench",
            "--events",
            "10",
            "--cluster-events",
            "0",
            "--sagas",
            "0",
        ])
        .args(["--outbox-url", "sqlite:///tmp/x.db", "--outbox-rows", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must name PostgreSQL"));
}
