//! The web console (`GET /` on the API port) in headless Chromium against a
//! real three-node cluster on 127.0.0.1: what a person opening the page
//! sees (feeds and their heads, peers, recent events decrypted, the saga
//! timelines with their steps and compensations, a hostile payload shown as
//! text) is read from the DOM Chromium built after the page's script ran.
//!
//! Chromium is Debian's `chromium` at /usr/bin/chromium (`HERALD_CHROMIUM`
//! names another); without it the test fails and says how to install it.
//! `HERALD_CONSOLE_SCREENSHOT=docs/console.png` also saves a screenshot of
//! the page (how docs/console.png is made).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::net::Net;
use herald::config::ApiConfig;
use herald::node::Node;
use scraper::{ElementRef, Html, Selector};
use serde_json::{Value, json};

/// Longest any condition is waited for.
const WAIT: Duration = Duration::from_secs(90);
/// Longest one Chromium run may take.
const CHROMIUM_RUN: Duration = Duration::from_secs(60);
/// Virtual time Chromium gives the page before it dumps the DOM: the first
/// refresh has run by then (virtual time stands still while requests are
/// in flight).
const PAGE_BUDGET_MS: u32 = 3_000;

/// The payload and type a hostile publisher sends: shown as markup, they
/// would add an `<img>` and an `<svg>` element to the page.
const XSS_PAYLOAD: &str = "<img src=x onerror=\"document.body.dataset.pwned=1\">";
const XSS_TYPE: &str = "note.<svg/onload=alert(1)>";

const CAMPAIGN: &str = r#"
saga_type = "Campaign"
deadline_ms = 30000

[[steps]]
name = "secure_media"
service = "press"
command = "media.secure"
compensation = "media.release"
deadline_ms = 20000

[[steps]]
name = "book_venue"
service = "venue"
command = "venue.book"
compensation = "venue.cancel"
deadline_ms = 20000
"#;

// ---------------------------------------------------------------------------
// Chromium.

/// The Chromium binary, or a failed test that says how to get one.
fn chromium() -> PathBuf {
    let path = std::env::var_os("HERALD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "the console test drives headless Chromium, and there is none at {}: \
         install Debian's package (`apt-get install -y chromium`, as .ci/run does) \
         or set HERALD_CHROMIUM to a Chromium binary",
        path.display()
    );
    path
}

/// Runs headless Chromium on `url` with `extra` arguments (`--dump-dom`,
/// `--screenshot=...`) in a fresh profile; returns its standard output.
async fn run_chromium(browser: &Path, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut command = tokio::process::Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={PAGE_BUDGET_MS}"))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CHROMIUM_RUN, command.output())
        .await
        .unwrap_or_else(|_| panic!("Chromium did not finish with {url} within {CHROMIUM_RUN:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    assert!(
        output.status.success(),
        "Chromium failed on {url} ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("Chromium's DOM is UTF-8")
}

// ---------------------------------------------------------------------------
// Reading the DOM the way a person reads the page: by visible text.

fn sel(css: &str) -> Selector {
    Selector::parse(css).unwrap_or_else(|e| panic!("selector {css}: {e:?}"))
}

/// The text an element shows, whitespace as in the DOM.
fn text(e: ElementRef<'_>) -> String {
    e.text().collect()
}

/// The texts of the cells of every row of the table `table_id`'s body.
fn table(dom: &Html, table_id: &str) -> Vec<Vec<String>> {
    dom.select(&sel(&format!("#{table_id} tbody tr")))
        .map(|row| row.select(&sel("td")).map(text).collect())
        .collect()
}

/// What the page shows once its script has read the node, or why not yet.
struct Page {
    dom: Html,
}

impl Page {
    fn parse(html: &str) -> Result<Page, String> {
        let dom = Html::parse_document(html);
        let refreshed = dom
            .select(&sel("body"))
            .next()
            .and_then(|b| b.value().attr("data-refreshes"))
            .is_some();
        if !refreshed {
            let error = dom
                .select(&sel("#error"))
                .next()
                .map(text)
                .unwrap_or_default();
            return Err(format!("the page has not finished a refresh: {error}"));
        }
        Ok(Page { dom })
    }

    fn text_of(&self, css: &str) -> String {
        self.dom.select(&sel(css)).map(text).collect()
    }
}

// ---------------------------------------------------------------------------
// The cluster.

/// An HTTP client for the API of `addr`.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.expect("JSON answer")
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request sent");
        assert!(response.status().is_success(), "POST {path}: {response:?}");
        response.json().await.expect("JSON answer")
    }

    /// Starts the campaign saga with `input` and waits for it to end in
    /// `status`; returns its id.
    async fn run_saga(&self, input: Value, status: &str) -> String {
        let started = self
            .post(
                "/v1/sagas",
                &json!({"definition": CAMPAIGN, "input": input}),
            )
            .await;
        let id = started["saga_id"].as_str().expect("saga id").to_string();
        common::wait_async(&format!("saga {id} to end {status}"), WAIT, || async {
            let saga = self.get(&format!("/v1/sagas/{id}")).await;
            if saga["status"] == status {
                Ok(())
            } else {
                Err(saga["status"].to_string())
            }
        })
        .await;
        id
    }
}

fn with_api(net: &Net, node: &str) {
    net.edit(node, |c| {
        c.api = Some(ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ApiConfig::default()
        })
    });
}

/// The head of `feed` on `node`.
fn head(node: &Node, feed: &str) -> Option<u64> {
    node.log()
        .heads()
        .unwrap()
        .into_iter()
        .find(|h| h.feed == feed)
        .map(|h| h.seq)
}

/// Starts `hq` (with the API, the orchestrator), `press` and `venue`
/// (saga participants; `venue` refuses a booking when the input says
/// `fail`), and waits until `hq` is ready.
async fn cluster() -> (Net, Vec<Node>, Api, SocketAddr) {
    let net = Net::mesh(&["hq", "press", "venue"]);
    with_api(&net, "hq");
    let hq = Node::start(&net.config("hq")).await.expect("start hq");
    let press = Node::start(&net.config("press"))
        .await
        .expect("start press");
    let venue = Node::start(&net.config("venue"))
        .await
        .expect("start venue");
    press.on_command("media.secure", |_, _| Ok(json!({"slot": "front page"})));
    press.on_command("media.release", |_, _| Ok(json!({"released": true})));
    venue.on_command("venue.book", |_, cmd| {
        if cmd.input["fail"] == true {
            Err("the hall is taken on that date".to_string())
        } else {
            Ok(json!({"hall": "A"}))
        }
    });
    venue.on_command("venue.cancel", |_, _| Ok(json!({})));
    let addr = hq.api_addr().expect("hq has an API");
    let api = Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    };
    common::wait_async("hq's API to be ready", WAIT, || async {
        match api.http.get(format!("{}/readyz", api.base)).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    (net, vec![hq, press, venue], api, addr)
}

// ---------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_feeds_peers_events_and_saga_timelines_in_chromium() {
    let browser = chromium();
    let (net, nodes, api, addr) = cluster().await;
    let [hq, press, venue] = [&nodes[0], &nodes[1], &nodes[2]];

    // The page and its files are served with a policy that allows no
    // script but this origin's.
    for path in ["/", "/console/console.js", "/console/console.css"] {
        let response = reqwest::get(format!("{}{path}", api.base)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }

    // Two sagas: one completes, one compensates its first step when the
    // second fails.
    let completed = api.run_saga(json!({"fail": false}), "completed").await;
    let compensated = api.run_saga(json!({"fail": true}), "compensated").await;

    // Events after the sagas, so they are among the newest: a donation and
    // a hostile payload published through hq's API, a release proclaimed on
    // press (hq decrypts it with the cluster's channel key).
    api.post(
        "/v1/events",
        &json!([
            {"type": "donation.received", "data": {"donor": "D-1001", "amount_cents": 2500}},
            {"type": XSS_TYPE, "data": XSS_PAYLOAD},
        ]),
    )
    .await;
    press
        .proclaim(
            "press.release",
            br#"{"headline":"Campaign launched"}"#,
            vec![],
        )
        .await
        .expect("press proclaims");

    // hq holds every feed up to its author's head.
    common::wait_async("hq to hold press's and venue's feeds", WAIT, || async {
        for node in [press, venue] {
            let feed = node.service();
            let (theirs, ours) = (head(node, feed), head(hq, feed));
            if theirs != ours {
                return Err(format!("{feed}: {ours:?} at hq, {theirs:?} at {feed}"));
            }
        }
        Ok(())
    })
    .await;

    // The page, as Chromium renders it once its script has read the node.
    let url = format!("http://{addr}/");
    let deadline = Instant::now() + WAIT;
    let (page, feeds) = loop {
        let before = api.get("/v1/feeds").await;
        let html = run_chromium(&browser, &url, &["--dump-dom".to_string()]).await;
        let after = api.get("/v1/feeds").await;
        match Page::parse(&html) {
            // Heads read during the render are the heads the page shows.
            Ok(page) if before == after => break (page, after),
            Ok(_) => {}
            Err(why) if Instant::now() >= deadline => {
                panic!("{why}\n--- DOM ---\n{html}\n{}", net.logs())
            }
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "the heads never stood still");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dom = &page.dom;

    // The node's name heads the page.
    assert_eq!(page.text_of("#node-name"), "hq");
    assert!(page.text_of("#node-health").contains("healthy"));

    // Feeds: one row per feed with the head hq holds, each verified.
    let feed_rows = table(dom, "feeds");
    let feeds = feeds["feeds"].as_array().unwrap();
    assert_eq!(feed_rows.len(), feeds.len(), "{feed_rows:?}");
    for f in feeds {
        let name = f["feed"].as_str().unwrap();
        let row = feed_rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row for feed {name}: {feed_rows:?}"));
        assert_eq!(row[1], f["seq"].to_string(), "head of {name}");
        assert!(row[4].starts_with("verified"), "{name}: {}", row[4]);
    }
    for name in ["hq", "press", "venue"] {
        assert!(feed_rows.iter().any(|r| r[0] == name), "{name} in feeds");
    }

    // Peers: press and venue, connected, with their backlog and lag.
    let peer_rows = table(dom, "peers");
    let mut peer_names: Vec<&str> = peer_rows.iter().map(|r| r[0].as_str()).collect();
    peer_names.sort();
    assert_eq!(peer_names, ["press", "venue"], "{peer_rows:?}");
    for row in &peer_rows {
        assert_eq!(row[2], "connected", "{row:?}");
        assert!(row[3].parse::<u64>().is_ok(), "backlog {row:?}");
        assert!(!row[4].is_empty(), "lag {row:?}");
    }

    // Recent events, decrypted: hq's own and press's.
    let event_rows = table(dom, "events");
    let shown = |feed: &str, event_type: &str| -> &Vec<String> {
        event_rows
            .iter()
            .find(|r| r[1] == feed && r[3] == event_type)
            .unwrap_or_else(|| panic!("no {event_type} of {feed} in {event_rows:#?}"))
    };
    let donation = shown("hq", "donation.received");
    assert_eq!(
        serde_json::from_str::<Value>(&donation[5]).ok(),
        Some(json!({"donor": "D-1001", "amount_cents": 2500})),
        "{donation:?}"
    );
    assert!(donation[4].starts_with("verified"), "{donation:?}");
    let release = shown("press", "press.release");
    assert_eq!(release[5], r#"{"headline":"Campaign launched"}"#);

    // The hostile event is shown as the text it is, and added no element.
    let hostile = shown("hq", XSS_TYPE);
    assert_eq!(hostile[5], serde_json::to_string(XSS_PAYLOAD).unwrap());
    assert_eq!(dom.select(&sel("img")).count(), 0, "an <img> was injected");
    assert_eq!(
        dom.select(&sel("#events svg")).count(),
        0,
        "an <svg> was injected into the events"
    );
    assert!(
        dom.select(&sel("body[data-pwned]")).next().is_none(),
        "the hostile payload ran"
    );

    // The sagas: each with its steps and a diagram of every signed event,
    // in the order of its history, with who signed it.
    for (id, status, step_statuses) in [
        (&completed, "completed", ["completed", "completed"]),
        (&compensated, "compensated", ["compensated", "failed"]),
    ] {
        let saga = dom
            .select(&sel(&format!("div.saga[data-saga=\"{id}\"]")))
            .next()
            .unwrap_or_else(|| panic!("saga {id} is not shown"));
        let shown_status: String = saga.select(&sel(".saga-status")).map(text).collect();
        assert_eq!(shown_status, status);
        let steps: Vec<Vec<String>> = saga
            .select(&sel("tbody tr"))
            .map(|r| r.select(&sel("td")).map(text).collect())
            .collect();
        assert_eq!(steps.len(), 2, "{steps:?}");
        for (row, (name, step_status)) in steps
            .iter()
            .zip(["secure_media", "book_venue"].iter().zip(step_statuses))
        {
            assert_eq!((row[1].as_str(), row[5].as_str()), (*name, step_status));
        }

        let history = api.get(&format!("/v1/sagas/{id}/history")).await;
        let history = history["events"].as_array().unwrap();
        let drawn: Vec<(String, String, String)> = saga
            .select(&sel("svg g.step-event"))
            .map(|g| {
                (
                    g.value().attr("data-type").unwrap_or("").to_string(),
                    g.select(&sel("text.signer")).map(text).collect(),
                    g.select(&sel("text.label")).map(text).collect(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = history
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    format!("{}#{}", e["feed"].as_str().unwrap(), e["seq"]),
                )
            })
            .collect();
        let drawn_signed: Vec<(String, String)> = drawn
            .iter()
            .map(|(t, s, _)| (t.clone(), s.clone()))
            .collect();
        assert_eq!(drawn_signed, expected, "saga {id}: the diagram's events");
        let labels: Vec<&str> = drawn.iter().map(|(_, _, l)| l.as_str()).collect();
        let has = |wanted: &str| {
            assert!(
                labels.iter().any(|l| l.starts_with(wanted)),
                "saga {id}: no label {wanted:?} in {labels:#?}"
            )
        };
        has("started Campaign");
        has("command step 0 secure_media → press: media.secure");
        has("reply step 0 secure_media ← press: completed");
        has("command step 1 book_venue → venue: venue.book");
        if status == "completed" {
            has("saga completed");
            assert!(!labels.iter().any(|l| l.starts_with("compensate")));
        } else {
            has("reply step 1 book_venue ← venue: failed: the hall is taken on that date");
            has("compensate step 0 secure_media → press: media.release");
            has("compensation reply step 0 secure_media ← press: completed");
            has("step compensated step 0 secure_media");
            has("saga compensated");
        }
        // Lanes: the orchestrator first, then the services.
        let lanes: Vec<String> = saga.select(&sel("svg text.lane")).map(text).collect();
        assert_eq!(
            lanes,
            [
                "time (UTC)",
                "hq (orchestrator)",
                "press",
                "venue",
                "what · signed by (feed#seq)"
            ]
        );
    }

    if let Some(path) = std::env::var_os("HERALD_CONSOLE_SCREENSHOT") {
        let path = PathBuf::from(path);
        let path = if path.is_relative() {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
        } else {
            path
        };
        run_chromium(
            &browser,
            &url,
            &[
                format!("--screenshot={}", path.display()),
                "--window-size=1280,900".to_string(),
            ],
        )
        .await;
        assert!(path.exists(), "no screenshot at {}", path.display());
    }

    for node in nodes {
        node.shutdown().await;
    }
}
