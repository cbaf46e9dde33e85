//! `herald bench`: throughput and latency against the signature ceiling
//! measured in the same run.

use std::io::IsTerminal;

use clap::Args;

use super::{CliError, EXIT_OK};
use crate::bench::cluster::Network;
use crate::bench::{BenchOptions, BenchReport, run as run_bench};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events to proclaim (and then verify offline).
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Events per cluster scenario (three nodes on loopback); 0 skips it.
    #[arg(long, default_value_t = 60_000)]
    pub cluster_events: u64,
    /// Runs of each saturating cluster scenario (one publisher, all
    /// publishing), alternating; the median run is reported, as
    /// nats-jetstream.sh reports the median of its runs. 1 to 9.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=crate::bench::cluster::CLUSTER_RUNS_MAX as i64))]
    pub cluster_runs: u32,
    /// Three-step sagas across the three-node cluster; 0 skips them.
    #[arg(long, default_value_t = 500)]
    pub sagas: u64,
    /// Also measure at scale: fill one log with this many events, then time
    /// re-opening it, verify its export (memory growth) and a fresh peer's
    /// catch-up. 0 (the default) skips it; 1000000 takes a few minutes.
    #[arg(long, default_value_t = 0)]
    pub scale: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// `wan` also runs the one-publisher cluster scenario with a UDP proxy
    /// between the nodes (50 ms round trip, 1 % loss each way) and reports
    /// its rate as a fraction of the loopback rate of the same run.
    #[arg(long, value_enum, default_value_t = Network::Loopback)]
    pub network: Network,
    /// Also measure the outbox relay and the inbox sink against this
    /// PostgreSQL database (e.g. postgres://postgres@127.0.0.1/test); the
    /// run creates and drops its own tables there.
    #[arg(long)]
    pub outbox_url: Option<String>,
    /// Rows relayed (and events written by the sink) with --outbox-url.
    #[arg(long, default_value_t = 100_000)]
    pub outbox_rows: u64,
    /// Events per batch-publish run of the HTTP API section (one node with
    /// its API on loopback: batch publish against the same node's direct
    /// proclaim, one SSE subscriber, single-event latency); 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    pub http_events: u64,
}

pub fn run(args: BenchArgs) -> Result<u8, CliError> {
    if args.payload > crate::core::limits::PAYLOAD_PLAINTEXT_BYTES_MAX {
        return Err(format!(
            "--payload {} is over the limit of {} bytes",
            args.payload,
            crate::core::limits::PAYLOAD_PLAINTEXT_BYTES_MAX
        )
        .into());
    }
    if args.events == 0 {
        return Err("--events must be at least 1".into());
    }
    if args.network == Network::Wan && args.cluster_events == 0 {
        return Err("--network wan needs the cluster scenarios (--cluster-events above 0)".into());
    }
    if let Some(url) = &args.outbox_url
        && crate::outbox::Backend::of(url).ok() != Some(crate::outbox::Backend::Postgres)
    {
        return Err(format!(
            "--outbox-url must name PostgreSQL (postgres://…), not {}",
            crate::config::redact_url(url)
        )
        .into());
    }
    let scratch = tempfile::Builder::new().prefix("herald-bench-").tempdir()?;
    let options = BenchOptions {
        events: args.events,
        cluster_events: args.cluster_events,
        cluster_runs: args.cluster_runs,
        scale_events: args.scale,
        sagas: args.sagas,
        payload_bytes: args.payload,
        progress: !args.json && std::io::stderr().is_terminal(),
        network: args.network,
        outbox_url: args.outbox_url,
        outbox_rows: args.outbox_rows,
        http_events: args.http_events,
    };
    let report = run_bench(&options, scratch.path())?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(EXIT_OK)
}

fn print_table(r: &BenchReport) {
    println!(
        "herald bench {} on {} cores ({} {})",
        r.machine.herald_version, r.machine.cores, r.machine.os, r.machine.arch
    );
    println!();
    println!("{:<34} {:>14} {:>12}", "measure", "rate", "of ceiling");
    println!(
        "{:<34} {:>12.0}/s {:>12}",
        "ceiling: Ed25519 sign", r.ceiling.sign_per_s, "1.00"
    );
    println!(
        "{:<34} {:>12.0}/s {:>12}",
        "ceiling: Ed25519 batch verify", r.ceiling.batch_verify_per_s, "1.00"
    );
    println!(
        "{:<34} {:>12.0}/s {:>12}",
        "       (single verify)", r.ceiling.single_verify_per_s, "-"
    );
    println!(
        "{:<34} {:>12.0}/s {:>12}   ({} B rows, {} per commit and fsync)",
        "ceiling: SQLite insert+fsync",
        r.ceiling.storage_per_s,
        "1.00",
        r.ceiling.storage_row_bytes,
        crate::bench::BENCH_BATCH_EVENTS
    );
    println!(
        "{:<34} {:>12.0}/s {:>12.2}   ({:.2} of the storage ceiling)",
        format!("durable proclaim ({} B payload)", r.proclaim.payload_bytes),
        r.proclaim.events_per_s,
        r.proclaim.fraction_of_sign_ceiling,
        r.proclaim.fraction_of_storage_ceiling
    );
    println!(
        "{:<34} {:>12.0}/s {:>12.2}",
        "offline verify (export)", r.verify.events_per_s, r.verify.fraction_of_batch_verify_ceiling
    );
    println!(
        "{:<34} {:>12.0}/s   ({} threads; {:.0}/s on one; feed of {} events, {} proofs, at most {} hashes, ⌈log2 n⌉ = {})",
        "inclusion proofs (from tiles)",
        r.prove.proofs_per_s,
        r.prove.threads,
        r.prove.proofs_per_s_one_thread,
        r.prove.feed_size,
        r.prove.proofs,
        r.prove.max_proof_hashes,
        r.prove.log2_bound
    );
    println!();
    println!(
        "proclaim: {} events, {:.1} MB/s payload, latency call-to-durable p50 {} us, p99 {} us, p999 {} us, {:.0} bytes on disk per event",
        r.proclaim.events,
        r.proclaim.mb_per_s,
        r.proclaim.latency_us_p50,
        r.proclaim.latency_us_p99,
        r.proclaim.latency_us_p999,
        r.proclaim.bytes_on_disk_per_event
    );
    println!(
        "proclaim CPU ({:.1} s): {}",
        r.proclaim.cpu.cpu_s,
        r.proclaim.cpu.describe()
    );
    if let Some(c) = &r.cluster {
        println!();
        println!(
            "cluster: {} nodes on loopback (QUIC, mutual TLS, fsync); topology ceiling {:.0}/s = storage ceiling / {} (every node stores every event on this one machine)",
            c.nodes, c.topology_ceiling_per_s, c.nodes
        );
        println!(
            "{:<26} {:>8} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "scenario", "events", "events/s", "of ceil.", "p50 us", "p99 us", "p999 us"
        );
        for run in c.runs.iter().chain(std::iter::once(&c.half_rate)) {
            println!(
                "{:<26} {:>8} {:>12.0} {:>10.2} {:>10} {:>10} {:>10}",
                run.scenario,
                run.events,
                run.events_per_s,
                run.fraction_of_topology_ceiling,
                run.latency_us_p50,
                run.latency_us_p99,
                run.latency_us_p999
            );
        }
        for run in c.runs.iter().filter(|r| r.runs_events_per_s.len() > 1) {
            let rates: Vec<String> = run
                .runs_events_per_s
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect();
            println!(
                "{}: median of {} runs shown ({}/s, in the order run)",
                run.scenario,
                rates.len(),
                rates.join(", ")
            );
        }
        for run in c.runs.iter().chain(std::iter::once(&c.half_rate)) {
            println!(
                "{} CPU ({:.1} s): {}",
                run.scenario,
                run.cpu.cpu_s,
                run.cpu.describe()
            );
        }
        println!(
            "peak resident memory of the process running all three nodes: {:.0} MB",
            c.peak_rss_mb_all_nodes
        );
        if let Some(w) = &c.wan {
            println!(
                "wan ({} ms round trip, {:.0} % loss each way, UDP proxy between every pair): \
                 {} events at {:.0}/s = {:.2} of loopback; latency p50 {} us, p99 {} us",
                w.rtt_ms,
                w.loss * 100.0,
                w.run.events,
                w.run.events_per_s,
                w.fraction_of_loopback,
                w.run.latency_us_p50,
                w.run.latency_us_p99
            );
        }
    }
    if let Some(s) = &r.sagas {
        println!();
        println!(
            "sagas: {} three-step sagas across the three nodes ({} in flight): {:.0} sagas/s, \
             start-to-completed p50 {:.1} ms, p99 {:.1} ms, {:.1} signed events per saga",
            s.sagas,
            s.in_flight,
            s.sagas_per_s,
            s.latency_us_p50 as f64 / 1000.0,
            s.latency_us_p99 as f64 / 1000.0,
            s.events_per_saga
        );
    }
    if let Some(s) = &r.scale {
        println!();
        println!(
            "scale: {} events ({:.0} MB store): filled at {:.0}/s; store re-opened in {:.1} ms; \
             export verified at {:.0}/s with {:.1} MB resident growth; a fresh peer caught up at {:.0}/s",
            s.events,
            s.store_bytes as f64 / 1e6,
            s.fill_events_per_s,
            s.reopen_ms,
            s.verify_events_per_s,
            s.verify_rss_growth_mb,
            s.catch_up_events_per_s
        );
    }
    if let Some(o) = &r.outbox {
        println!();
        println!(
            "service database ({}): {} rows of {} B payload; relay {:.0} rows/s into durable signed events, marked published ({:.2} of durable proclaim, {} rows per batch); sink {:.0} events/s into the inbox with positions ({} per transaction)",
            o.database,
            o.rows,
            o.payload_bytes,
            o.relay_rows_per_s,
            o.relay_fraction_of_proclaim,
            o.batch_rows,
            o.sink_events_per_s,
            o.sink_batch_events
        );
    }
    if let Some(h) = &r.http {
        print_http(h);
    }
    println!(
        "verify: {} events, result {}",
        r.verify.events,
        if r.verify.valid { "valid" } else { "INVALID" }
    );
}

fn print_http(h: &crate::bench::http::HttpReport) {
    println!();
    println!(
        "HTTP API (one node, loopback, {} B payload): {} events per run",
        h.payload_bytes, h.events
    );
    println!(
        "  batch publish, JSON arrays of {} ({} requests in flight): {:.0}/s = {:.2} of the same node's direct proclaim ({:.0}/s)",
        h.batch_events,
        h.requests_in_flight,
        h.http_batch_events_per_s,
        h.http_batch_fraction_of_direct,
        h.direct_events_per_s
    );
    println!(
        "  CPU per event: direct {:.2} us ({}); HTTP batches {:.2} us ({})",
        h.direct_cpu_us_per_event,
        h.direct_cpu.describe(),
        h.http_batch_cpu_us_per_event,
        h.http_batch_cpu.describe()
    );
    println!(
        "  SSE, one subscriber from the start: {} events at {:.0}/s",
        h.sse_events, h.sse_events_per_s
    );
    println!(
        "  single events at {}/s ({} each), call to durable: HTTP p50 {} us, p99 {} us; direct p50 {} us, p99 {} us; HTTP p99 overhead {} us",
        h.paced_rate_per_s,
        h.paced_events,
        h.http_single_us_p50,
        h.http_single_us_p99,
        h.direct_single_us_p50,
        h.direct_single_us_p99,
        h.http_single_p99_overhead_us
    );
}
