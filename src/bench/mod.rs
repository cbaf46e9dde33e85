//! The benchmark harness behind `herald bench`.
//!
//! Every figure is reported beside a ceiling measured in the same run on the
//! same machine, because absolute numbers on a shared 2-core machine drift:
//! the Ed25519 signing and batch-verification rates on all cores bound what
//! durable proclaim and offline verification can reach.

pub mod cluster;
pub mod cpu;
pub mod http;
pub mod netem;
pub mod outbox;
pub mod sagas;
pub mod scale;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::audit::export::export_store;
use crate::audit::verify::{AuditOptions, audit_export};
use crate::clock;
use crate::core::verify::Draft;
use crate::identity::{NodeIdentity, TrustAnchor};
use crate::store::{Log, LogOptions, Pending};

/// Events per submitted batch in the proclaim benchmark.
pub const BENCH_BATCH_EVENTS: usize = 256;
/// Batches in flight in the proclaim benchmark.
pub const BENCH_BATCHES_IN_FLIGHT: usize = 16;
/// Validity of the benchmark's scratch certificates, in days: past the
/// nodes' 30-day expiry warning, so runs do not log it.
pub const BENCH_CERT_DAYS: u32 = 365;
/// Signatures per ceiling measurement.
pub const CEILING_SIGNATURES: usize = 40_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub events: u64,
    /// Events for each cluster scenario (0 skips the cluster).
    pub cluster_events: u64,
    /// Runs of each saturating cluster scenario; the median run is reported.
    pub cluster_runs: u32,
    /// Events for the scale run (0 skips it).
    pub scale_events: u64,
    /// Three-step sagas across the cluster (0 skips them).
    pub sagas: u64,
    pub payload_bytes: usize,
    pub progress: bool,
    /// `Wan` also runs the one-publisher cluster scenario through the WAN
    /// profile (50 ms round trip, 1 % loss).
    pub network: cluster::Network,
    /// PostgreSQL for the service-database section (`None` skips it).
    pub outbox_url: Option<String>,
    /// Outbox rows relayed (and events sunk) in that section.
    pub outbox_rows: u64,
    /// Events per batch-publish run of the HTTP API section (0 skips it).
    pub http_events: u64,
}

/// One run's figures. Rates are per second; latencies in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub ceiling: Ceiling,
    pub proclaim: Proclaim,
    pub verify: OfflineVerify,
    pub prove: Prove,
    pub cluster: Option<cluster::ClusterReport>,
    pub sagas: Option<sagas::SagaReport>,
    pub scale: Option<scale::ScaleReport>,
    /// The service-database section (`--outbox-url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<outbox::OutboxReport>,
    /// The HTTP API section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<http::HttpReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub os: String,
    pub arch: String,
    pub herald_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Ed25519 signatures per second on all cores.
    pub sign_per_s: f64,
    /// Ed25519 batch-verified signatures per second on all cores.
    pub batch_verify_per_s: f64,
    /// Single (non-batch) verifications per second on all cores.
    pub single_verify_per_s: f64,
    /// Storage: rows of `storage_row_bytes` (the proclaim run's average
    /// stored envelope) inserted into one plain SQLite table (WAL,
    /// `synchronous=FULL`) per second, `BENCH_BATCH_EVENTS` rows per commit
    /// and fsync. Once events need no signature of their own, this is the
    /// ceiling of durable proclaim.
    pub storage_per_s: f64,
    pub storage_row_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Proclaim {
    pub events: u64,
    pub payload_bytes: usize,
    pub events_per_s: f64,
    pub mb_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    /// events_per_s / sign_per_s.
    pub fraction_of_sign_ceiling: f64,
    /// events_per_s / storage_per_s.
    pub fraction_of_storage_ceiling: f64,
    pub bytes_on_disk_per_event: f64,
    /// Where the run's CPU time went, by thread role.
    pub cpu: cpu::CpuSplit,
}

/// Inclusion proofs generated from the proclaim run's store (its feed's
/// tree tiles in SQLite), each verified against the feed's checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Prove {
    /// Leaves of the proved feed's tree.
    pub feed_size: u64,
    pub proofs: u64,
    /// Proofs generated per second on every core (`threads`, one read
    /// connection each), reading tiles through SQLite and hashing.
    pub proofs_per_s: f64,
    pub threads: usize,
    /// The same on one thread.
    pub proofs_per_s_one_thread: f64,
    /// The longest proof generated, in hashes, and ⌈log2 feed_size⌉.
    pub max_proof_hashes: usize,
    pub log2_bound: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OfflineVerify {
    pub events: u64,
    pub events_per_s: f64,
    /// events_per_s / batch_verify_per_s.
    pub fraction_of_batch_verify_ceiling: f64,
    pub valid: bool,
}

/// Errors that stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Log(#[from] crate::store::LogError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Export(#[from] crate::audit::export::ExportError),
    #[error(transparent)]
    Audit(#[from] crate::audit::verify::AuditError),
    #[error(transparent)]
    Draft(#[from] crate::core::verify::DraftError),
    #[error("storage ceiling: sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Runs every benchmark in a scratch directory under `work_dir`.
pub fn run(options: &BenchOptions, work_dir: &Path) -> Result<BenchReport, BenchError> {
    cpu::name_pool_threads();
    let machine = Machine {
        cores: rayon::current_num_threads(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        herald_version: env!("CARGO_PKG_VERSION").into(),
    };
    // The ceiling is measured before and after the workloads and the higher
    // figure kept, so a noisy neighbour during one measurement cannot make
    // herald look closer to the ceiling than it is.
    let before = measure_ceiling();
    let setup = provision(work_dir)?;
    let proclaim = bench_proclaim(options, &setup)?;
    let verify = bench_verify(&setup, work_dir, options.progress)?;
    let prove = bench_prove(&setup)?;
    let storage_row_bytes = average_envelope_bytes(&setup)?;
    let storage_per_s = measure_storage_ceiling(work_dir, storage_row_bytes)?;
    let cluster_run = if options.cluster_events > 0 {
        Some(cluster::run_cluster(
            work_dir,
            options.cluster_events,
            options.cluster_runs,
            options.payload_bytes,
            storage_per_s,
            options.network,
        )?)
    } else {
        None
    };
    let sagas = if options.sagas > 0 {
        Some(sagas::run_sagas(work_dir, options.sagas)?)
    } else {
        None
    };
    let after = measure_ceiling();
    let ceiling = Ceiling {
        sign_per_s: before.sign_per_s.max(after.sign_per_s),
        batch_verify_per_s: before.batch_verify_per_s.max(after.batch_verify_per_s),
        single_verify_per_s: before.single_verify_per_s.max(after.single_verify_per_s),
        storage_per_s,
        storage_row_bytes,
    };
    let proclaim = Proclaim {
        fraction_of_sign_ceiling: proclaim.events_per_s / ceiling.sign_per_s,
        fraction_of_storage_ceiling: proclaim.events_per_s / ceiling.storage_per_s.max(1.0),
        ..proclaim
    };
    let verify = OfflineVerify {
        fraction_of_batch_verify_ceiling: verify.events_per_s / ceiling.batch_verify_per_s,
        ..verify
    };
    let cluster = cluster_run.map(|c| rescale_cluster(c, &ceiling));
    let scale = if options.scale_events > 0 {
        Some(scale::run_scale(
            work_dir,
            options.scale_events,
            options.payload_bytes,
        )?)
    } else {
        None
    };
    let outbox = match &options.outbox_url {
        Some(url) => Some(outbox::run_outbox(
            &setup,
            url,
            options.outbox_rows,
            options.payload_bytes,
            proclaim.events_per_s,
        )?),
        None => None,
    };
    let http = if options.http_events > 0 {
        Some(http::run_http(
            work_dir,
            options.http_events,
            options.payload_bytes,
        )?)
    } else {
        None
    };
    Ok(BenchReport {
        http,
        outbox,
        machine,
        ceiling,
        proclaim,
        verify,
        prove,
        cluster,
        sagas,
        scale,
    })
}

/// Recomputes the cluster fractions against the final ceilings.
fn rescale_cluster(mut c: cluster::ClusterReport, ceiling: &Ceiling) -> cluster::ClusterReport {
    c.topology_ceiling_per_s = cluster::topology_ceiling(ceiling.storage_per_s, c.nodes);
    let wan = c.wan.as_mut().map(|w| &mut w.run);
    for run in c
        .runs
        .iter_mut()
        .chain(std::iter::once(&mut c.half_rate))
        .chain(wan)
    {
        run.fraction_of_topology_ceiling = run.events_per_s / c.topology_ceiling_per_s;
    }
    c
}

/// Sign and verify rates on all cores: the ceiling herald is measured against.
pub fn measure_ceiling() -> Ceiling {
    let key = SigningKey::from_bytes(&clock::random_bytes::<32>());
    let vk = key.verifying_key();
    let messages: Vec<[u8; 58]> = (0..CEILING_SIGNATURES)
        .map(|i| {
            let mut m = [0u8; 58];
            m[..8].copy_from_slice(&(i as u64).to_le_bytes());
            m
        })
        .collect();
    let start = Instant::now();
    let signatures: Vec<Signature> = messages.par_iter().map(|m| key.sign(m)).collect();
    let sign_per_s = rate(CEILING_SIGNATURES, start.elapsed());

    let start = Instant::now();
    let ok = messages
        .par_chunks(crate::core::limits::VERIFY_BATCH_EVENTS)
        .zip(signatures.par_chunks(crate::core::limits::VERIFY_BATCH_EVENTS))
        .all(|(ms, ss)| {
            let refs: Vec<&[u8]> = ms.iter().map(|m| m.as_slice()).collect();
            let keys: Vec<VerifyingKey> = vec![vk; ms.len()];
            ed25519_dalek::verify_batch(&refs, ss, &keys).is_ok()
        });
    let batch_verify_per_s = rate(CEILING_SIGNATURES, start.elapsed());
    debug_assert!(ok);

    let single = CEILING_SIGNATURES / 4;
    let start = Instant::now();
    let _ = messages[..single]
        .par_iter()
        .zip(&signatures[..single])
        .all(|(m, s)| ed25519_dalek::Verifier::verify(&vk, m, s).is_ok());
    let single_verify_per_s = rate(single, start.elapsed());
    Ceiling {
        sign_per_s,
        batch_verify_per_s,
        single_verify_per_s,
        storage_per_s: 0.0,
        storage_row_bytes: 0,
    }
}

/// Rows the storage ceiling inserts.
pub const STORAGE_CEILING_ROWS: usize = 100_000;

/// The storage ceiling (see [`Ceiling::storage_per_s`]), in a scratch
/// database under `work_dir`.
fn measure_storage_ceiling(work_dir: &Path, row_bytes: usize) -> Result<f64, BenchError> {
    let path = work_dir.join("storage-ceiling.db");
    let _ = std::fs::remove_file(&path);
    let conn = rusqlite::Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE rows (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
    let row = vec![0x5au8; row_bytes];
    let start = Instant::now();
    let mut conn = conn;
    for batch in 0..STORAGE_CEILING_ROWS.div_ceil(BENCH_BATCH_EVENTS) {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO rows (k, v) VALUES (?1, ?2)")?;
            for i in 0..BENCH_BATCH_EVENTS {
                insert.execute(rusqlite::params![
                    (batch * BENCH_BATCH_EVENTS + i) as i64,
                    row
                ])?;
            }
        }
        tx.commit()?;
    }
    let elapsed = start.elapsed();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(work_dir.join(format!("storage-ceiling.db{suffix}")));
    }
    Ok(rate(
        STORAGE_CEILING_ROWS.div_ceil(BENCH_BATCH_EVENTS) * BENCH_BATCH_EVENTS,
        elapsed,
    ))
}

/// The average stored row of the proclaim run's feed: its blobs, plus 16
/// bytes for its integer columns (`store::rows`).
fn average_envelope_bytes(setup: &Setup) -> Result<usize, BenchError> {
    let conn = crate::store::open_read_only(&setup.dir.join("data"))?;
    let average: f64 = conn.query_row(
        "SELECT COALESCE(AVG(16 + LENGTH(id) + COALESCE(LENGTH(nonce), 0)
             + COALESCE(LENGTH(payload), 0) + COALESCE(LENGTH(meta), 0)
             + COALESCE(LENGTH(signature), 0)), 0)
         FROM event_rows WHERE seq > 0",
        [],
        |r| r.get(0),
    )?;
    Ok(average.round() as usize)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A provisioned single node in the scratch directory.
struct Setup {
    dir: std::path::PathBuf,
}

fn provision(work_dir: &Path) -> Result<Setup, BenchError> {
    let keys = work_dir.join("keys");
    crate::identity::create_ca(&keys, BENCH_CERT_DAYS, true)?;
    crate::identity::issue_node(&keys, "bench", BENCH_CERT_DAYS, true)?;
    crate::identity::create_channel(&keys, "default", true)?;
    Ok(Setup {
        dir: work_dir.to_path_buf(),
    })
}

/// The benchmark node's trust anchor and identity.
fn bench_identity(setup: &Setup) -> Result<(TrustAnchor, NodeIdentity), BenchError> {
    let keys = setup.dir.join("keys");
    let trust = TrustAnchor::load(&keys.join("ca.crt"), None)?;
    let identity = NodeIdentity::load(
        "bench",
        &keys.join("bench.key"),
        &keys.join("bench.crt"),
        &trust,
        clock::now_us(),
    )?;
    Ok((trust, identity))
}

fn open_log(setup: &Setup) -> Result<Log, BenchError> {
    open_log_at(setup, &setup.dir.join("data"))
}

/// The benchmark node's log with its store in `data_dir`.
fn open_log_at(setup: &Setup, data_dir: &Path) -> Result<Log, BenchError> {
    let keys = setup.dir.join("keys");
    let (trust, identity) = bench_identity(setup)?;
    let channel = crate::identity::load_channel_key("default", &keys.join("channel-default.key"))?;
    Ok(Log::open_with(LogOptions {
        data_dir: data_dir.to_path_buf(),
        identity,
        trust,
        channels: vec![channel],
        default_channel: "default".into(),
        recover_own_feed: false,
        event_format: crate::core::limits::FORMAT_VERSION,
    })?)
}

fn bar(enabled: bool, len: u64, what: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!("{what:<10} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Durable proclaim: batches submitted with several in flight; latency is
/// from submission to the receipt (durable), counted per event.
fn bench_proclaim(options: &BenchOptions, setup: &Setup) -> Result<Proclaim, BenchError> {
    let log = open_log(setup)?;
    let channel = log.channel(None)?;
    let payload = vec![0x5au8; options.payload_bytes];
    let draft = Draft::new("bench.event", 1, Vec::new(), payload)?;
    let progress = bar(options.progress, options.events, "proclaim");
    let mut latencies_us: Vec<u64> = Vec::with_capacity(options.events as usize);
    let mut in_flight: std::collections::VecDeque<(Instant, usize, Pending)> = Default::default();
    let mut remaining = options.events;
    let cpu_before = cpu::Snapshot::take();
    let start = Instant::now();
    while remaining > 0 || !in_flight.is_empty() {
        while remaining > 0 && in_flight.len() < BENCH_BATCHES_IN_FLIGHT {
            let n = remaining.min(BENCH_BATCH_EVENTS as u64) as usize;
            let drafts = (0..n)
                .map(|_| (draft.clone(), Arc::clone(&channel)))
                .collect();
            in_flight.push_back((Instant::now(), n, log.submit(drafts)?));
            remaining -= n as u64;
        }
        if let Some((submitted, n, pending)) = in_flight.pop_front() {
            pending.wait()?;
            let latency = submitted.elapsed().as_micros() as u64;
            latencies_us.extend(std::iter::repeat_n(latency, n));
            progress.inc(n as u64);
        }
    }
    let elapsed = start.elapsed();
    // Before the writer's threads stop, or their time would be missing.
    let cpu = cpu::Snapshot::take().since(&cpu_before);
    progress.finish_and_clear();
    log.close();
    // After close the WAL is checkpointed into the database file.
    let db_bytes = dir_bytes(&setup.dir.join("data"));
    latencies_us.sort_unstable();
    let events_per_s = rate(options.events as usize, elapsed);
    Ok(Proclaim {
        events: options.events,
        payload_bytes: options.payload_bytes,
        events_per_s,
        mb_per_s: events_per_s * options.payload_bytes as f64 / 1e6,
        latency_us_p50: percentile(&latencies_us, 0.50),
        latency_us_p99: percentile(&latencies_us, 0.99),
        latency_us_p999: percentile(&latencies_us, 0.999),
        fraction_of_sign_ceiling: 0.0, // filled in against the final ceiling
        fraction_of_storage_ceiling: 0.0,
        bytes_on_disk_per_event: db_bytes as f64 / options.events.max(1) as f64,
        cpu,
    })
}

fn bench_verify(
    setup: &Setup,
    work_dir: &Path,
    progress: bool,
) -> Result<OfflineVerify, BenchError> {
    let keys = setup.dir.join("keys");
    let export_path = work_dir.join("bench.hrld");
    {
        let (_, identity) = bench_identity(setup)?;
        let conn = crate::store::open_read_only(&setup.dir.join("data"))?;
        export_store(
            &conn,
            "bench",
            &identity.signing_key,
            clock::now_us(),
            &export_path,
        )?;
    }
    let options = AuditOptions {
        trust: TrustAnchor::load(&keys.join("ca.crt"), None)?,
        channel_keys: Vec::new(),
        progress,
    };
    let start = Instant::now();
    let report = audit_export(&export_path, &options)?;
    let elapsed = start.elapsed();
    let events_per_s = rate(report.events as usize, elapsed);
    Ok(OfflineVerify {
        events: report.events,
        events_per_s,
        fraction_of_batch_verify_ceiling: 0.0, // filled in against the final ceiling
        valid: report.valid,
    })
}

/// Most proofs one bench run generates.
pub const BENCH_PROOFS_MAX: u64 = 20_000;

fn bench_prove(setup: &Setup) -> Result<Prove, BenchError> {
    use crate::core::merkle;
    use crate::store::tree::TileReader;
    let failed = |what: String| BenchError::Setup(what);
    let data = setup.dir.join("data");
    let conn = crate::store::open_read_only(&data)?;
    let checkpoint = crate::store::read_checkpoint(&conn, "bench")?
        .ok_or_else(|| failed("the bench feed has no checkpoint".into()))?;
    let size = checkpoint.size;
    let proofs = BENCH_PROOFS_MAX.min(size);
    // A fixed pseudo-random walk over the leaves (no OS randomness needed).
    let index = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % size;
    // Proofs `from..to` of the walk on one read connection, each with a
    // fresh reader: no tile is cached from one proof to the next.
    let prove_range = |conn: &rusqlite::Connection, from: u64, to: u64| {
        (from..to)
            .map(|i| {
                merkle::inclusion_proof(&mut TileReader::new(conn, "bench"), index(i), size)
                    .map_err(|e| failed(format!("inclusion proof: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let start = Instant::now();
    let generated = prove_range(&conn, 0, proofs)?;
    let one_thread = start.elapsed();
    // The same proofs again on every core, one read connection each, as a
    // node serving proofs would.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let connections = (0..threads)
        .map(|_| crate::store::open_read_only(&data))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let per_thread = proofs.div_ceil(threads);
    let parallel: Vec<Result<Vec<Vec<_>>, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(t, conn)| {
                let from = (t as u64 * per_thread).min(proofs);
                let to = (from + per_thread).min(proofs);
                scope.spawn(move || prove_range(&conn, from, to))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(failed("a proof thread panicked".into())))
            })
            .collect()
    });
    let all_cores = start.elapsed();
    let parallel: Vec<Vec<_>> = parallel.into_iter().collect::<Result<Vec<_>, _>>()?;
    if parallel.concat() != generated {
        return Err(failed("proofs made on several threads differ".into()));
    }
    let mut reader = TileReader::new(&conn, "bench");
    let mut max_proof_hashes = 0;
    for (i, proof) in generated.iter().enumerate() {
        let leaf = merkle::subtree_root(&mut reader, index(i as u64), index(i as u64) + 1)
            .map_err(|e| failed(format!("leaf: {e}")))?;
        merkle::verify_inclusion(&leaf, index(i as u64), size, proof, &checkpoint.root)
            .map_err(|e| failed(format!("a generated proof does not verify: {e}")))?;
        max_proof_hashes = max_proof_hashes.max(proof.len());
    }
    Ok(Prove {
        feed_size: size,
        proofs,
        proofs_per_s: rate(proofs as usize, all_cores),
        threads: threads as usize,
        proofs_per_s_one_thread: rate(proofs as usize, one_thread),
        max_proof_hashes,
        log2_bound: (64 - (size.max(1) - 1).leading_zeros()) as usize,
    })
}

/// The value at quantile `q` of sorted samples.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_picks_the_nearest_rank() {
        let samples: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 0.5), 500);
        assert_eq!(percentile(&samples, 0.99), 990);
        assert_eq!(percentile(&samples, 0.999), 999);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
