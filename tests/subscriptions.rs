//! Durable subscriptions through the library API, on a real store: patterns,
//! arrival order, resuming a cursor, start points, the at-least-once runner,
//! waiting for new events, and events ingested from another feed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use herald::store::{
    LogError, SUBSCRIPTION_RETRY_MS, StartFrom, StoredEvent, Subscription, SubscriptionError,
    run_subscription,
};

/// Everything the subscription delivers from its position to the end of the
/// log, in batches of `max`.
fn drain(sub: &mut Subscription, max: usize) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    loop {
        let batch = sub.next_batch(max).unwrap();
        assert!(batch.len() <= max, "a batch holds at most max events");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn arrivals(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.arrival).collect()
}

fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.header.seq).collect()
}

#[test]
fn two_consumers_each_see_exactly_their_events_in_arrival_order() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let types = [
        "donation.received",
        "volunteer.signed_up",
        "donation.refunded",
        "volunteer.left",
        "donation.received",
        "audit.note",
        "volunteer.signed_up",
    ];
    let receipts: Vec<_> = types
        .iter()
        .map(|t| log.proclaim(t, b"{}", vec![]).unwrap())
        .collect();
    let expect = |prefix: &str| -> Vec<u64> {
        types
            .iter()
            .zip(&receipts)
            .filter(|(t, _)| t.starts_with(prefix))
            .map(|(_, r)| r.seq)
            .collect()
    };

    let mut donations = log
        .subscribe("donations", "donation.*", StartFrom::Start)
        .unwrap();
    let mut volunteers = log
        .subscribe("volunteers", "volunteer.*", StartFrom::Start)
        .unwrap();
    let got_d = drain(&mut donations, 2);
    let got_v = drain(&mut volunteers, 1);
    assert_eq!(seqs(&got_d), expect("donation."));
    assert_eq!(seqs(&got_v), expect("volunteer."));
    assert!(
        got_d
            .iter()
            .all(|e| e.header.event_type.starts_with("donation."))
    );
    for got in [&got_d, &got_v] {
        let a = arrivals(got);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "arrival order: {a:?}");
    }
    // The read position ends past the last row scanned, matching or not.
    let last = log.read_arrivals(0, 100).unwrap().last().unwrap().arrival;
    assert_eq!(donations.position(), last);
    assert_eq!(donations.committed(), 0, "next_batch does not commit");
}

#[test]
fn a_resubscribed_consumer_resumes_exactly_after_its_cursor() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    for i in 0..6 {
        log.proclaim("job.queued", format!("{i}").as_bytes(), vec![])
            .unwrap();
    }
    let mut sub = log.subscribe("worker", "job.*", StartFrom::Start).unwrap();
    let first = sub.next_batch(4).unwrap();
    assert_eq!(seqs(&first), vec![1, 2, 3, 4]);
    // Handled two of the four; the other two were read but not committed.
    sub.commit(first[1].arrival).unwrap();
    assert_eq!(sub.committed(), first[1].arrival);
    let ahead = sub.position() + 1;
    match sub.commit(ahead) {
        Err(LogError::Subscription(SubscriptionError::CommitAhead { arrival, .. })) => {
            assert_eq!(arrival, ahead)
        }
        other => panic!("committing past what was read must fail, got {other:?}"),
    }
    // Commits never move the cursor back.
    sub.commit(first[0].arrival).unwrap();
    assert_eq!(sub.committed(), first[1].arrival);
    drop(sub);

    for i in 6..8 {
        log.proclaim("job.queued", format!("{i}").as_bytes(), vec![])
            .unwrap();
    }
    let mut sub = log.subscribe("worker", "job.*", StartFrom::Stored).unwrap();
    assert_eq!(sub.position(), first[1].arrival);
    let rest = drain(&mut sub, 3);
    assert_eq!(
        seqs(&rest),
        vec![3, 4, 5, 6, 7, 8],
        "uncommitted 3 and 4 are redelivered, nothing committed is, nothing is lost"
    );
    drop(sub);

    // Resuming under another pattern is refused and names both.
    let err = log
        .subscribe("worker", "mail.*", StartFrom::Stored)
        .err()
        .expect("a changed pattern is refused");
    let text = err.to_string();
    assert!(text.contains("job.*") && text.contains("mail.*"), "{text}");

    // An explicit start repositions the durable cursor and stores the pattern
    // at once, so a later Stored resumes from there.
    drop(log.subscribe("worker", "mail.*", StartFrom::Now).unwrap());
    let mut sub = log
        .subscribe("worker", "mail.*", StartFrom::Stored)
        .unwrap();
    assert!(drain(&mut sub, 10).is_empty());
    log.proclaim("mail.sent", b"{}", vec![]).unwrap();
    assert_eq!(drain(&mut sub, 10).len(), 1);

    // A new consumer resuming its (absent) cursor starts at the beginning.
    let mut fresh = log.subscribe("fresh", "job.*", StartFrom::Stored).unwrap();
    assert_eq!(drain(&mut fresh, 100).len(), 8);
}

#[test]
fn consumer_names_and_patterns_are_checked() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let too_long = "c".repeat(65);
    for bad in ["", "has space", "slash/name", too_long.as_str()] {
        match log.subscribe(bad, "*", StartFrom::Start) {
            Err(LogError::Subscription(SubscriptionError::InvalidConsumer { name, .. })) => {
                assert_eq!(name, bad)
            }
            Err(other) => panic!("{bad:?}: wrong error {other}"),
            Ok(_) => panic!("{bad:?} must be refused"),
        }
    }
    assert!(
        log.subscribe(&"c".repeat(64), "*", StartFrom::Start)
            .is_ok()
    );
    assert!(log.subscribe("A.b_c-9", "*", StartFrom::Start).is_ok());
    assert!(matches!(
        log.subscribe("ok", "", StartFrom::Start),
        Err(LogError::Subscription(
            SubscriptionError::InvalidPattern { .. }
        ))
    ));
}

#[test]
fn timestamp_start_begins_at_the_first_event_at_or_after_it() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    for i in 0..4 {
        log.proclaim("tick", format!("{i}").as_bytes(), vec![])
            .unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let events = log.read("a", 1..=4).unwrap();
    let third = &events[2];
    let mut sub = log
        .subscribe("t1", "*", StartFrom::Timestamp(third.header.timestamp_us))
        .unwrap();
    assert_eq!(seqs(&drain(&mut sub, 10)), vec![3, 4]);

    // One microsecond later excludes the third event.
    let mut sub = log
        .subscribe(
            "t2",
            "*",
            StartFrom::Timestamp(third.header.timestamp_us + 1),
        )
        .unwrap();
    assert_eq!(seqs(&drain(&mut sub, 10)), vec![4]);

    // After every event: behaves like Now.
    let mut sub = log
        .subscribe("t3", "*", StartFrom::Timestamp(u64::MAX))
        .unwrap();
    assert!(drain(&mut sub, 10).is_empty());
    let later = log.proclaim("tick", b"late", vec![]).unwrap();
    assert_eq!(seqs(&drain(&mut sub, 10)), vec![later.seq]);
}

#[test]
fn now_start_sees_only_later_events() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    for _ in 0..3 {
        log.proclaim("before", b"{}", vec![]).unwrap();
    }
    let mut sub = log.subscribe("late", "*", StartFrom::Now).unwrap();
    assert!(sub.next_batch(10).unwrap().is_empty());
    let r = log.proclaim("after", b"{}", vec![]).unwrap();
    let got = drain(&mut sub, 10);
    assert_eq!(seqs(&got), vec![r.seq]);
    assert_eq!(got[0].header.event_type, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_subscription_redelivers_a_failed_event_and_commits_the_end() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    for i in 0..8 {
        log.proclaim("job.run", format!("{i}").as_bytes(), vec![])
            .unwrap();
    }
    // A trailing event the pattern skips: the cursor still ends past it.
    log.proclaim("other.thing", b"{}", vec![]).unwrap();
    let jobs: Vec<u64> = log
        .read_arrivals(0, 100)
        .unwrap()
        .iter()
        .filter(|e| e.header.event_type == "job.run")
        .map(|e| e.arrival)
        .collect();
    let last_arrival = log.read_arrivals(0, 100).unwrap().last().unwrap().arrival;
    let failing = jobs[4];
    let last_job = *jobs.last().unwrap();

    let sub = log.subscribe("runner", "job.*", StartFrom::Start).unwrap();
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let mut done_tx = Some(done_tx);
    let mut failed_once = false;
    let seen = delivered.clone();
    let handler = move |event: &StoredEvent| -> Result<(), String> {
        seen.lock().unwrap().push(event.arrival);
        if event.arrival == failing && !failed_once {
            failed_once = true;
            return Err(format!("transient failure on {}", event.arrival));
        }
        if event.arrival == last_job
            && let Some(tx) = done_tx.take()
        {
            let _ = tx.send(());
        }
        Ok(())
    };
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(20),
        run_subscription(sub, handler, async {
            let _ = done_rx.await;
        }),
    )
    .await
    .expect("the runner stops when told")
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(SUBSCRIPTION_RETRY_MS),
        "redelivery waits for the backoff"
    );

    let mut expected: Vec<u64> = jobs[..=4].to_vec();
    expected.extend_from_slice(&jobs[4..]);
    assert_eq!(
        *delivered.lock().unwrap(),
        expected,
        "only the failed event is delivered twice"
    );
    let resumed = log.subscribe("runner", "job.*", StartFrom::Stored).unwrap();
    assert_eq!(resumed.committed(), last_arrival);
    assert_eq!(resumed.position(), last_arrival);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_on_a_proclamation_and_times_out_otherwise() {
    let cluster = Cluster::new(&["a"]);
    let log = Arc::new(cluster.open("a"));
    let mut sub = log.subscribe("waiter", "*", StartFrom::Now).unwrap();

    let started = Instant::now();
    assert!(!sub.wait(Duration::from_millis(300)).await);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let writer = log.clone();
    let proclaimer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        writer.proclaim("ping", b"{}", vec![]).unwrap();
    });
    let started = Instant::now();
    assert!(sub.wait(Duration::from_secs(30)).await);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "woke promptly, not at the timeout: {waited:?}"
    );
    proclaimer.join().unwrap();
    // Already pending events: true at once, without consuming them.
    assert!(sub.wait(Duration::from_secs(30)).await);
    assert_eq!(drain(&mut sub, 10).len(), 1);
    assert!(!sub.wait(Duration::from_millis(100)).await);
}

#[test]
fn events_ingested_from_another_feed_are_delivered_in_arrival_order() {
    let cluster = Cluster::new(&["a", "b"]);
    let a = cluster.open("a");
    for i in 0..3 {
        a.proclaim("donation.received", format!("{i}").as_bytes(), vec![])
            .unwrap();
    }
    let (a_events, a_seal) = common::sealed_feed(&a, "a");
    a.close();

    let b = cluster.open("b");
    let mut sub = b.subscribe("all", "*", StartFrom::Start).unwrap();
    let mut donations = b
        .subscribe("donations", "donation.*", StartFrom::Start)
        .unwrap();
    b.proclaim("donation.received", b"\"b1\"", vec![]).unwrap();
    let report = b
        .ingest_sealed(a_events, a_seal, herald::store::IngestPolicy::default())
        .unwrap();
    assert_eq!(report.applied, 4);
    b.proclaim("donation.received", b"\"b2\"", vec![]).unwrap();

    let got: Vec<(String, u64)> = drain(&mut sub, 2)
        .iter()
        .map(|e| (e.header.author.clone(), e.header.seq))
        .collect();
    let want: Vec<(String, u64)> = [
        ("b", 0),
        ("b", 1),
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 2),
    ]
    .iter()
    .map(|(f, s)| (f.to_string(), *s))
    .collect();
    assert_eq!(got, want);
    let d = drain(&mut donations, 10);
    assert_eq!(d.len(), 5, "genesis events do not match donation.*");
    assert!(arrivals(&d).windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_can_be_spawned_and_stops_while_idle() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let sub = log.subscribe("spawned", "*", StartFrom::Now).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // tokio::spawn needs a Send future: a node runs subscriptions as tasks.
    let task = tokio::spawn(run_subscription(
        sub,
        |_event: &StoredEvent| Ok(()),
        async {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "idle until there is work or a stop");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly while waiting for events")
        .unwrap()
        .unwrap();
}

/// A consumer of a rare type steps over commits that hold none of it
/// (`store/recent.rs`) without missing one that does: commits of other
/// types, commits mixing many types, ingested events, a consumer that
/// resumes part way, and one that starts before the log was reopened.
#[test]
fn a_rare_type_is_found_among_many_commits_of_other_types() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let channel = log.channel(None).unwrap();
    let draft = |t: &str| {
        (
            herald::core::verify::Draft::new(t, 1, vec![], b"{}".to_vec()).unwrap(),
            channel.clone(),
        )
    };
    let mut early = log.subscribe("early", "rare.*", StartFrom::Start).unwrap();
    let mut expected = Vec::new();
    let mut seen_before_cursor = 0;
    for round in 0..30u64 {
        // A commit of noise only.
        log.proclaim_batch((0..5).map(|_| draft("noise.tick")).collect())
            .unwrap();
        if round % 7 == 3 {
            // A commit with more distinct types than a summary lists, one
            // of them wanted.
            let mut drafts: Vec<_> = (0..20).map(|i| draft(&format!("noise.t{i}"))).collect();
            drafts.insert(11, draft("rare.found"));
            let receipts = log.proclaim_batch(drafts).unwrap();
            expected.push(receipts[11].seq);
        }
        if round % 5 == 1 {
            let receipt = log.proclaim("rare.single", b"{}", vec![]).unwrap();
            expected.push(receipt.seq);
        }
        if round == 15 {
            // Part way: resume a fresh subscription from the durable cursor.
            let got = seqs(&drain(&mut early, 2));
            let arrival = early.position();
            early.commit(arrival).unwrap();
            assert_eq!(got, expected, "rare events up to round 15");
            seen_before_cursor = expected.len();
        }
    }
    let mut late = log.subscribe("late", "rare.*", StartFrom::Start).unwrap();
    assert_eq!(seqs(&drain(&mut late, 3)), expected);
    let mut resumed = log.subscribe("early", "rare.*", StartFrom::Stored).unwrap();
    assert!(seen_before_cursor > 0 && seen_before_cursor < expected.len());
    assert_eq!(
        seqs(&drain(&mut resumed, 100)),
        expected[seen_before_cursor..],
        "a resumed consumer gets exactly the rare events after its cursor"
    );
    log.close();

    // After reopening, nothing is known about earlier commits: the store is
    // read, with the same result.
    let log = cluster.open("a");
    let mut reopened = log.subscribe("late", "rare.*", StartFrom::Start).unwrap();
    assert_eq!(seqs(&drain(&mut reopened, 4)), expected);
    let mut ticks = log
        .subscribe("ticks", "noise.tick", StartFrom::Start)
        .unwrap();
    assert_eq!(drain(&mut ticks, 64).len(), 30 * 5);
}

/// A runner whose pattern matches nothing does not write its cursor after
/// every commit of unrelated events (that would cost a durable write each),
/// but writes it when it stops, so a restart does not look at them again;
/// a matching event is still delivered and committed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_runner_writes_its_cursor_lazily_and_on_stop() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let sub = log.subscribe("rare", "rare.*", StartFrom::Now).unwrap();
    let start = sub.committed();
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let seen = delivered.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_subscription(
        sub,
        move |event: &StoredEvent| {
            seen.lock().unwrap().push(event.arrival);
            Ok(())
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    let noise_started = Instant::now();
    for _ in 0..20 {
        log.proclaim("noise.tick", b"{}", vec![]).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let noise_took = noise_started.elapsed();
    let cursor = |log: &herald::store::Log| {
        log.subscribe("rare", "rare.*", StartFrom::Stored)
            .unwrap()
            .committed()
    };
    // (On a machine so loaded that the noise took longer than the idle
    // commit interval, one write is allowed.)
    if noise_took < Duration::from_millis(herald::store::SUBSCRIPTION_IDLE_COMMIT_MS) {
        assert_eq!(
            cursor(&log),
            start,
            "twenty unrelated commits cost no cursor write"
        );
    }
    log.proclaim("rare.found", b"{}", vec![]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let arrivals = delivered.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 1, "the matching event is delivered");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cursor(&log) < arrivals[0] && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cursor(&log), arrivals[0], "a handled event is committed");
    for _ in 0..5 {
        log.proclaim("noise.tick", b"{}", vec![]).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        cursor(&log),
        arrivals[0] + 5,
        "stopping writes the cursor past the unrelated events it looked at"
    );
}
