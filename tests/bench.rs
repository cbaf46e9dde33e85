//! `herald bench` as a script runs it: a small run with `--json`, checking
//! that every section the README and docs/CLI.md promise is there and holds
//! figures that make sense. Speed itself is never asserted here (see the
//! README's performance section for why).

mod common;

use std::process::Command;

use common::herald_bin;
use serde_json::Value;

fn number(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// The CPU split of one workload: shares of known roles that sum to one.
fn assert_cpu_split(split: &Value, must_have: &[&str]) {
    assert!(number(split, "cpu_s") > 0.0, "{split}");
    let shares = split["shares"].as_object().expect("shares");
    let sum: f64 = shares.values().filter_map(Value::as_f64).sum();
    assert!((sum - 1.0).abs() < 1e-6, "shares sum to {sum}: {split}");
    for role in shares.keys() {
        assert!(
            [
                "signatures",
                "commit",
                "wal-checkpoint",
                "wal-sync",
                "seal",
                "network",
                "other"
            ]
            .contains(&role.as_str()),
            "unknown role {role}"
        );
    }
    for role in must_have {
        assert!(shares.contains_key(*role), "no {role} share in {split}");
    }
}

#[test]
fn a_small_bench_run_reports_every_section_as_json() {
    let out = Command::new(herald_bin())
        .args([
            "bench",
            "--events",
            "3000",
            "--cluster-events",
            "900",
            "--cluster-runs",
            "2",
            "--sagas",
            "6",
            "--http-events",
            "600",
            "--json",
        ])
        .output()
        .expect("run herald bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");

    for ceiling in ["sign_per_s", "batch_verify_per_s", "single_verify_per_s"] {
        assert!(number(&report, &format!("ceiling.{ceiling}")) > 0.0);
    }

    assert_eq!(number(&report, "proclaim.events"), 3000.0);
    let proclaimed = number(&report, "proclaim.events_per_s");
    let fraction = number(&report, "proclaim.fraction_of_sign_ceiling");
    let sign = number(&report, "ceiling.sign_per_s");
    assert!((fraction - proclaimed / sign).abs() < 1e-9, "{report}");
    assert!(
        number(&report, "proclaim.latency_us_p50") <= number(&report, "proclaim.latency_us_p99")
    );
    assert!(number(&report, "proclaim.bytes_on_disk_per_event") > 256.0);
    assert_cpu_split(&report["proclaim"]["cpu"], &["seal", "commit"]);

    assert_eq!(report["verify"]["valid"], Value::Bool(true));
    // The export holds the feed's genesis besides the proclaimed events.
    assert_eq!(number(&report, "verify.events"), 3001.0);
    // Proofs come from the proclaim run's feed (genesis + 3000 events); each
    // was verified against the checkpoint, and none is longer than ⌈log2 n⌉.
    // The storage ceiling stores rows of the run's envelope size.
    assert!(number(&report, "ceiling.storage_per_s") > 0.0);
    assert!(number(&report, "ceiling.storage_row_bytes") > 256.0);
    let storage_fraction = number(&report, "proclaim.fraction_of_storage_ceiling");
    let expected = proclaimed / number(&report, "ceiling.storage_per_s");
    assert!((storage_fraction - expected).abs() < 1e-9, "{report}");
    assert_eq!(number(&report, "prove.feed_size"), 3001.0);
    assert_eq!(number(&report, "prove.proofs"), 3001.0);
    assert!(number(&report, "prove.proofs_per_s") > 0.0);
    assert!(number(&report, "prove.proofs_per_s_one_thread") > 0.0);
    assert!(number(&report, "prove.threads") >= 1.0);
    assert_eq!(number(&report, "prove.log2_bound"), 12.0);
    assert!(
        number(&report, "prove.max_proof_hashes") <= 12.0,
        "{report}"
    );

    let cluster = &report["cluster"];
    let runs = cluster["runs"].as_array().expect("cluster runs");
    let names: Vec<&str> = runs.iter().filter_map(|r| r["scenario"].as_str()).collect();
    assert_eq!(names, ["one-publisher", "all-publish"]);
    let ceiling = number(cluster, "topology_ceiling_per_s");
    for run in runs.iter().chain(std::iter::once(&cluster["half_rate"])) {
        let rate = number(run, "events_per_s");
        assert!(rate > 0.0, "{run}");
        assert!(
            (number(run, "fraction_of_topology_ceiling") - rate / ceiling).abs() < 1e-9,
            "{run}"
        );
        assert!(number(run, "latency_us_p50") <= number(run, "latency_us_p99"));
        assert_cpu_split(&run["cpu"], &["commit", "network"]);
    }
    // Each saturating scenario ran twice; the report is the median run (the
    // lower of two) and lists both rates in run order.
    for run in runs {
        let rates: Vec<f64> = run["runs_events_per_s"]
            .as_array()
            .expect("the rate of every run")
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert_eq!(rates.len(), 2, "{run}");
        assert_eq!(number(run, "events_per_s"), rates[0].min(rates[1]), "{run}");
    }
    assert_eq!(
        cluster["half_rate"]["runs_events_per_s"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        cluster["half_rate"]["scenario"].as_str(),
        Some("one-publisher-half-rate")
    );
    // Half of the one-publisher run's events, at about half its rate.
    assert_eq!(number(&cluster["half_rate"], "events"), 450.0);
    assert!(number(cluster, "peak_rss_mb_all_nodes") > 0.0);

    let sagas = &report["sagas"];
    assert_eq!(number(sagas, "sagas"), 6.0);
    assert!(number(sagas, "sagas_per_s") > 0.0);
    assert_eq!(report["scale"], Value::Null, "--scale was not asked for");

    // The HTTP API section: the same node over HTTP and directly.
    let http = &report["http"];
    assert_eq!(number(http, "events"), 600.0);
    let (direct, batch) = (
        number(http, "direct_events_per_s"),
        number(http, "http_batch_events_per_s"),
    );
    assert!(direct > 0.0 && batch > 0.0, "{http}");
    assert!((number(http, "http_batch_fraction_of_direct") - batch / direct).abs() < 1e-9);
    // Every event the run wrote (both batch runs, and the genesis) reached
    // the one SSE subscriber.
    assert_eq!(number(http, "sse_events"), 1201.0, "{http}");
    assert!(number(http, "sse_events_per_s") > 0.0);
    assert_eq!(number(http, "paced_events"), 600.0);
    for path in ["direct_single", "http_single"] {
        assert!(
            number(http, &format!("{path}_us_p50")) <= number(http, &format!("{path}_us_p99")),
            "{http}"
        );
    }
    assert_eq!(
        number(http, "http_single_p99_overhead_us"),
        number(http, "http_single_us_p99") - number(http, "direct_single_us_p99")
    );
}

#[test]
fn cluster_runs_out_of_range_are_a_usage_error() {
    for runs in ["0", "10"] {
        let out = Command::new(herald_bin())
            .args(["bench", "--cluster-runs", runs])
            .output()
            .expect("run herald bench");
        assert_eq!(out.status.code(), Some(2), "--cluster-runs {runs}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--cluster-runs"), "{stderr}");
    }
}
