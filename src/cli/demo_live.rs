//! `herald demo`, second part: three real `herald node` processes on
//! loopback (QUIC, mutual TLS, fsync), replicating, answering a synchronous
//! identity query, surviving a SIGKILL, and audited at the end.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::CliError;
use crate::audit::export::export_store;
use crate::audit::verify::{AuditOptions, audit_path};
use crate::clock;
use crate::config::{NodeConfig, QueryHandlerConfig};
use crate::core::query::QueryStatus;
use crate::node::NodeStatus;
use crate::node::client::{ClientRequest, ClientResponse, NodeClient};

/// The live cluster's services.
const LIVE: [&str; 3] = ["fundraising", "identity", "press"];
/// How long the demo waits for the cluster to connect or converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The identity service's donor check: a query handler any executable can
/// implement (exit 0 = found, exit 3 = not found).
const VERIFY_DONOR_SCRIPT: &str = r#"#!/bin/sh
input=$(cat)
case "$input" in
  *'"D-1001"'*) echo '{"donor":"D-1001","verified":true,"checked":"government id"}'; exit 0 ;;
  *) echo '{"verified":false}'; exit 3 ;;
esac
"#;

/// Every saga step on every node is this script: it does the work (here:
/// says it did) and fails a forward step when the saga input names it in
/// `fail_at`, so the demo can show compensation.
const CAMPAIGN_STEP_SCRIPT: &str = r#"#!/bin/sh
input=$(cat)
if [ "$HERALD_KIND" = do ] && printf '%s' "$input" | grep -q "\"fail_at\":\"$HERALD_STEP\""; then
  echo "the $HERALD_STEP partner refused" >&2
  exit 1
fi
printf '{"done":"%s","attempt":%s}\n' "$HERALD_COMMAND" "$HERALD_ATTEMPT"
"#;

/// The demo saga, in the TOML form `herald saga start --definition` takes.
const CAMPAIGN_SAGA: &str = r#"saga_type = "NationalAdvocacyCampaign"
deadline_ms = 60000

[compensation]
attempts = 3
backoff_initial_ms = 200
backoff_max_ms = 2000

[[steps]]
name = "secure_media_partners"
service = "press"
command = "media.secure"
compensation = "media.release"
deadline_ms = 10000

[[steps]]
name = "schedule_local_events"
service = "fundraising"
command = "events.schedule"
compensation = "events.cancel"
deadline_ms = 10000

[[steps]]
name = "draft_endorsements"
service = "identity"
command = "endorsements.draft"
compensation = "endorsements.retract"
deadline_ms = 10000

[[steps]]
name = "activate_phone_banks"
service = "press"
command = "phonebank.activate"
compensation = "phonebank.deactivate"
deadline_ms = 10000
"#;

/// Runs the live part; returns whether every expectation held.
pub fn run_live(dir: &Path) -> Result<bool, CliError> {
    let live = dir.join("live");
    let configs = provision(&live)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut nodes: BTreeMap<&str, Child> = BTreeMap::new();
    for service in LIVE {
        nodes.insert(service, spawn_node(&configs[service], &live, service)?);
    }
    let mut sagas = Vec::new();
    let outcome = runtime.block_on(drive(&live, &configs, &mut nodes, &mut sagas));
    for (service, child) in nodes.iter_mut() {
        stop_gracefully(service, child);
    }
    let mut ok = outcome?;
    ok &= audit_all(&live, &configs)?;
    ok &= print_timelines(&live, &sagas)?;
    Ok(ok)
}

fn expect(condition: bool, what: &str) -> bool {
    println!("   [{}] {what}", if condition { "ok" } else { "FAILED" });
    condition
}

/// A fresh three-node cluster on free loopback ports; identity answers
/// `identity.verify_donor` with a shell script.
fn provision(live: &Path) -> Result<BTreeMap<&'static str, PathBuf>, CliError> {
    let names: Vec<String> = LIVE.iter().map(|s| s.to_string()).collect();
    crate::config::init_cluster(live, &names, 7400, 365, true)?;
    let ports: BTreeMap<&str, SocketAddr> = LIVE
        .iter()
        .map(|s| Ok((*s, free_port()?)))
        .collect::<Result<_, std::io::Error>>()?;
    let script = live.join("verify-donor.sh");
    std::fs::write(&script, VERIFY_DONOR_SCRIPT)?;
    set_executable(&script)?;
    let step_script = live.join("campaign-step.sh");
    std::fs::write(&step_script, CAMPAIGN_STEP_SCRIPT)?;
    set_executable(&step_script)?;
    let definition = crate::saga::SagaDefinition::from_toml(CAMPAIGN_SAGA)?;
    let mut paths = BTreeMap::new();
    for service in LIVE {
        let path = live.join(format!("{service}.toml"));
        let mut config = NodeConfig::load(&path)?;
        config.listen = ports[service];
        for peer in &mut config.peers {
            if let Some(addr) = ports.get(peer.name.as_str()) {
                peer.address = *addr;
            }
        }
        config.command_handlers = definition
            .steps
            .iter()
            .filter(|step| step.service == service)
            .flat_map(|step| [step.command.clone(), step.compensation.clone()])
            .map(|command_type| crate::config::CommandHandlerConfig {
                command_type,
                command: vec![step_script.display().to_string()],
                timeout_ms: Some(10_000),
            })
            .collect();
        if service == "identity" {
            config.query_handlers = vec![QueryHandlerConfig {
                query_type: "identity.verify_donor".into(),
                command: vec![script.display().to_string()],
                timeout_ms: Some(2_000),
            }];
        }
        std::fs::write(&path, config.to_toml())?;
        paths.insert(service, path);
    }
    println!(
        "   provisioned {} on loopback ports {}",
        LIVE.join(", "),
        ports
            .values()
            .map(|a| a.port().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(paths)
}

fn free_port() -> std::io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(unix)]
fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

pub(super) fn spawn_node(config: &Path, live: &Path, service: &str) -> Result<Child, CliError> {
    let log = std::fs::File::create(live.join(format!("{service}.log")))?;
    Ok(Command::new(std::env::current_exe()?)
        .args(["node", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// SIGTERM, then wait: the node finishes in-flight commits and tells peers.
pub(super) fn stop_gracefully(service: &str, child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            println!("   {service} stopped ({status})");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("   {service} did not stop in time; killed");
}

pub(super) async fn client(config: &Path) -> Result<(NodeConfig, NodeClient), CliError> {
    let config = NodeConfig::load(config)?;
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        match NodeClient::connect(&config).await {
            Ok(c) => return Ok((config, c)),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub(super) async fn status(client: &NodeClient) -> Result<NodeStatus, CliError> {
    let mut json = None;
    client
        .request(&ClientRequest::Status, |r| match r {
            ClientResponse::Status(s) => {
                json = Some(s);
                Ok(())
            }
            other => Err(format!("unexpected answer {other:?}")),
        })
        .await?;
    Ok(serde_json::from_str(&json.ok_or("no status")?)?)
}

/// Publishes one event through `client`; returns its sequence number.
async fn publish(
    client: &NodeClient,
    service: &str,
    event_type: &str,
    data: &str,
) -> Result<u64, CliError> {
    let request = ClientRequest::Publish {
        event_type: event_type.into(),
        payload: data.as_bytes().to_vec(),
        meta: vec![],
        channel: None,
        count: 1,
    };
    let mut seq = None;
    client
        .request(&request, |r| match r {
            ClientResponse::Receipts(rs) => {
                for r in rs {
                    println!("   {service}/{} {event_type} {data}", r.seq);
                    seq = Some(r.seq);
                }
                Ok(())
            }
            ClientResponse::Error(e) => Err(e),
            other => Err(format!("unexpected answer {other:?}")),
        })
        .await?;
    Ok(seq.ok_or("the node sent no receipt")?)
}

/// Copies the files of a node's data directory (its SQLite store, with its
/// WAL) from `from` into `to`, which is emptied first. Only while no node
/// runs on either.
fn copy_store(from: &Path, to: &Path) -> Result<(), CliError> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// The head of `service`'s own feed as its node reports it.
async fn own_head(client: &NodeClient, service: &str) -> Result<u64, CliError> {
    let status = status(client).await?;
    let head = status.feeds.iter().find(|f| f.feed == service);
    Ok(head
        .ok_or(format!("{service} reports no feed of its own"))?
        .seq)
}

async fn query(client: &NodeClient, donor: &str) -> Result<(QueryStatus, String, bool), CliError> {
    let request = ClientRequest::Query {
        target: "identity".into(),
        query_type: "identity.verify_donor".into(),
        payload: format!(r#"{{"donor":"{donor}"}}"#).into_bytes(),
        correlation_id: format!("check-{donor}"),
        timeout_ms: 2_000,
    };
    let answer = client
        .request_one(&request, "a query", |r| match r {
            ClientResponse::Query(o) => Some((
                o.status,
                String::from_utf8_lossy(&o.payload).trim().to_string(),
                o.signed_by_responder,
            )),
            _ => None,
        })
        .await?;
    Ok(answer)
}

/// Waits until every node reports every peer connected and identical heads.
async fn wait_converged(
    clients: &BTreeMap<&str, NodeClient>,
    want_connected: bool,
) -> Result<bool, CliError> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let mut heads = Vec::new();
        let mut connected = true;
        for client in clients.values() {
            let s = status(client).await?;
            connected &= s.peers.iter().all(|p| p.connected);
            heads.push(
                s.feeds
                    .iter()
                    .map(|f| (f.feed.clone(), f.seq, f.hash))
                    .collect::<Vec<_>>(),
            );
        }
        let same = heads.windows(2).all(|w| w[0] == w[1]) && heads[0].len() == LIVE.len();
        if same && (connected || !want_connected) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drive(
    live: &Path,
    configs: &BTreeMap<&'static str, PathBuf>,
    nodes: &mut BTreeMap<&'static str, Child>,
    sagas: &mut Vec<(uuid::Uuid, &'static str)>,
) -> Result<bool, CliError> {
    let mut ok = true;
    let mut clients = BTreeMap::new();
    for service in LIVE {
        clients.insert(service, client(&configs[service]).await?.1);
    }
    ok &= expect(
        wait_converged(&clients, true).await?,
        "three nodes connected over QUIC with mutual TLS",
    );

    println!("   -- a subscriber on press prints donations as they arrive");
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber = spawn_subscriber(configs["press"].clone(), stop.clone());

    publish(
        &clients["fundraising"],
        "fundraising",
        "donation.received",
        r#"{"donor":"D-1001","amount_cents":2500}"#,
    )
    .await?;
    publish(
        &clients["identity"],
        "identity",
        "donor.verified",
        r#"{"donor":"D-1001"}"#,
    )
    .await?;
    publish(
        &clients["press"],
        "press",
        "press.release",
        r#"{"title":"Clean energy 2027 ratified"}"#,
    )
    .await?;
    ok &= expect(
        wait_converged(&clients, true).await?,
        "every event reached every node, verified",
    );

    println!("   -- synchronous identity queries from fundraising (signed by identity)");
    let (status, payload, signed) = query(&clients["fundraising"], "D-1001").await?;
    println!("   verify_donor D-1001 -> {status:?} {payload}");
    ok &= expect(
        status == QueryStatus::Success && signed,
        "known donor verified, answer signed by identity",
    );
    let (status, payload, _) = query(&clients["fundraising"], "D-9999").await?;
    println!("   verify_donor D-9999 -> {status:?} {payload}");
    ok &= expect(
        status == QueryStatus::NotFound,
        "unknown donor is not found",
    );

    println!("   -- SIGKILL press, keep proclaiming, restart press");
    if let Some(mut press) = nodes.remove("press") {
        let _ = press.kill();
        let _ = press.wait();
    }
    clients.remove("press");
    // A backup of press's store as it is now, for the restore below.
    let press_dir = NodeConfig::load(&configs["press"])?.data_dir;
    let backup = live.join("press-backup");
    copy_store(&press_dir, &backup)?;
    for i in 2..=6 {
        let data = format!(r#"{{"donor":"D-100{i}","amount_cents":{}}}"#, 1000 * i);
        publish(
            &clients["fundraising"],
            "fundraising",
            "donation.received",
            &data,
        )
        .await?;
    }
    nodes.insert("press", spawn_node(&configs["press"], live, "press")?);
    clients.insert("press", client(&configs["press"]).await?.1);
    ok &= expect(
        wait_converged(&clients, true).await?,
        "press restarted and caught up",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = subscriber.join().unwrap_or(0);
    ok &= expect(
        seen >= 6,
        &format!("the subscriber saw all 6 donations ({seen})"),
    );
    ok &= restore_old_backup(live, configs, nodes, &mut clients, &press_dir, &backup).await?;

    println!("   -- saga NationalAdvocacyCampaign, orchestrated by fundraising");
    let data_dir = NodeConfig::load(&configs["fundraising"])?.data_dir;
    let (id, saga) = run_saga(&clients["fundraising"], &data_dir, "{}").await?;
    sagas.push((id, "succeeding"));
    ok &= expect(
        saga.status == crate::saga::SagaStatus::Completed,
        &format!(
            "saga {id} completed all four steps ({})",
            saga.status.as_str()
        ),
    );
    let (id, saga) = run_saga(
        &clients["fundraising"],
        &data_dir,
        r#"{"fail_at":"activate_phone_banks"}"#,
    )
    .await?;
    sagas.push((id, "failing at activate_phone_banks"));
    let compensated: Vec<usize> = saga
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status == crate::saga::StepStatus::Compensated)
        .map(|(i, _)| i)
        .collect();
    ok &= expect(
        saga.status == crate::saga::SagaStatus::Compensated && compensated == [0, 1, 2],
        &format!(
            "saga {id} failed at step 3 and compensated steps 2, 1, 0 ({})",
            saga.status.as_str()
        ),
    );
    ok &= witnessed(configs).await?;
    ok &= prove_a_donation(live, configs)?;
    for c in clients.values() {
        c.close();
    }
    Ok(ok)
}

/// Proves fundraising's first donation to an auditor who holds only the CA
/// certificate (and the channel key, to read it): a C2SP tlog-proof with
/// the event, its inclusion path, the cosigned checkpoint and the author's
/// certificate, checked offline, with the two other nodes as witnesses.
fn prove_a_donation(
    live: &Path,
    configs: &BTreeMap<&'static str, PathBuf>,
) -> Result<bool, CliError> {
    use crate::audit::proof::{ProofOptions, ProofTarget, prove_inclusion, verify_inclusion_proof};
    println!("   -- prove one donation to an auditor who holds the CA certificate, not the log");
    let config = NodeConfig::load(&configs["fundraising"])?;
    let (trust, _) = config.load_identity(clock::now_us())?;
    let conn = crate::store::open_read_only(&config.data_dir)?;
    let proof = prove_inclusion(&conn, &ProofTarget::FeedSeq("fundraising".into(), 1))?;
    let path = live.join("donation.tlog-proof");
    std::fs::write(&path, &proof.text)?;
    println!(
        "   herald prove --feed fundraising --seq 1 -> {} ({} hashes to a checkpoint of {} events)",
        path.display(),
        proof.hashes,
        proof.checkpoint_size
    );
    let mut witness_certs = Vec::new();
    for witness in ["identity", "press"] {
        let config = NodeConfig::load(&configs[witness])?;
        witness_certs.push(config.load_identity(clock::now_us())?.1.cert.der);
    }
    let channel_keys = config.load_channel_keys()?;
    let report = verify_inclusion_proof(
        proof.text.as_bytes(),
        &ProofOptions {
            trust: &trust,
            channel_keys: &channel_keys,
            witness_certs: &witness_certs,
            witnesses: Some(2),
        },
    );
    Ok(match report {
        Ok(r) => {
            println!(
                "   {}/{} {} {} cosigned by {}",
                r.event.feed,
                r.event.seq,
                r.event.event_type,
                r.event.payload.as_deref().unwrap_or("(encrypted)"),
                r.checkpoint.cosigners.join(", ")
            );
            expect(
                r.event.feed == "fundraising" && r.checkpoint.cosigners.len() == 2,
                "the proof verifies offline with the CA alone, witnessed by identity and press",
            )
        }
        Err(e) => expect(false, &format!("the donation's proof verifies ({e})")),
    })
}

/// Every node signs a checkpoint of its feed per commit batch and cosigns
/// the others' once it verified them: waits until each node holds every
/// feed's latest checkpoint with both other nodes' cosignatures, and shows
/// one.
async fn witnessed(configs: &BTreeMap<&'static str, PathBuf>) -> Result<bool, CliError> {
    println!(
        "   -- Merkle checkpoints: each feed's author signs its tree head, the other nodes cosign"
    );
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let mut missing = Vec::new();
        let mut shown = None;
        for service in LIVE {
            let config = NodeConfig::load(&configs[service])?;
            let conn = crate::store::open_read_only(&config.data_dir)?;
            let cluster = crate::core::checkpoint::cluster_id(
                &config.load_identity(clock::now_us())?.0.ca_public_key(),
            );
            for feed in LIVE {
                let checkpoint = crate::store::read_checkpoint(&conn, feed)?;
                let cosigners = checkpoint
                    .as_ref()
                    .map(|c| c.cosigners(&cluster))
                    .unwrap_or_default();
                if cosigners.len() < LIVE.len() - 1 {
                    missing.push(format!("{service}:{feed}"));
                }
                if service == "press" && feed == "fundraising" {
                    shown = checkpoint;
                }
            }
        }
        if missing.is_empty() {
            if let Some(c) = shown {
                println!(
                    "   fundraising's checkpoint as press holds it ({} events):",
                    c.size
                );
                for line in c.note.lines() {
                    println!("   | {line}");
                }
            }
            return Ok(expect(
                true,
                "every node holds every feed's checkpoint cosigned by the two other nodes",
            ));
        }
        if Instant::now() > deadline {
            return Ok(expect(
                false,
                &format!(
                    "checkpoints cosigned everywhere (still missing: {})",
                    missing.join(" ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Press proclaims past the backup taken while it was down, then its store
/// is replaced by that backup and it restarts: press must fetch the tail of
/// its own feed back from its peers before it proclaims again, so its next
/// event continues the feed instead of reusing sequence numbers.
async fn restore_old_backup(
    live: &Path,
    configs: &BTreeMap<&'static str, PathBuf>,
    nodes: &mut BTreeMap<&'static str, Child>,
    clients: &mut BTreeMap<&'static str, NodeClient>,
    press_dir: &Path,
    backup: &Path,
) -> Result<bool, CliError> {
    println!("   -- press proclaims on; then its store is restored from the older backup");
    for title in ["Phone banks open", "Volunteer drive"] {
        let data = format!(r#"{{"title":"{title}"}}"#);
        publish(&clients["press"], "press", "press.release", &data).await?;
    }
    if !wait_converged(clients, true).await? {
        return Ok(expect(false, "press's releases reached every node"));
    }
    let head = own_head(&clients["press"], "press").await?;
    if let Some(c) = clients.remove("press") {
        c.close();
    }
    if let Some(mut press) = nodes.remove("press") {
        stop_gracefully("press", &mut press);
    }
    copy_store(backup, press_dir)?;
    let conn = crate::store::open_read_only(press_dir)?;
    let restored = crate::store::read_heads_from(&conn)?
        .into_iter()
        .find(|f| f.feed == "press")
        .map(|f| f.seq)
        .ok_or("the backup holds no feed of press")?;
    drop(conn);
    println!("   press's store now ends at press/{restored}; its peers hold press/{head}");
    nodes.insert("press", spawn_node(&configs["press"], live, "press")?);
    clients.insert("press", client(&configs["press"]).await?.1);
    let next = publish(
        &clients["press"],
        "press",
        "press.release",
        r#"{"title":"Restored from backup"}"#,
    )
    .await?;
    let mut ok = expect(
        next == head + 1,
        &format!(
            "press recovered press/{}..{head} from its peers before proclaiming press/{next} (no sequence number used twice)",
            restored + 1
        ),
    );
    ok &= expect(
        wait_converged(clients, true).await?,
        "every node holds the same press feed",
    );
    Ok(ok)
}

/// Starts the campaign saga through fundraising's client endpoint and
/// waits (reading fundraising's store) until it ends.
async fn run_saga(
    client: &NodeClient,
    data_dir: &Path,
    input: &str,
) -> Result<(uuid::Uuid, crate::saga::Saga), CliError> {
    let request = ClientRequest::StartSaga {
        definition: CAMPAIGN_SAGA.to_string(),
        input: input.to_string(),
    };
    let id = client
        .request_one(&request, "a saga start", |r| match r {
            ClientResponse::SagaStarted(id) => Some(id),
            _ => None,
        })
        .await?;
    let id = uuid::Uuid::parse_str(&id)?;
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let conn = crate::store::open_read_only(data_dir)?;
        if let Some(saga) = crate::saga::orchestrator::load(&conn, id)?
            && (saga.is_terminal() || Instant::now() >= deadline)
        {
            return Ok((id, saga));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rebuilds both sagas' timelines from fundraising's verified export (only
/// the CA and the channel key needed) and prints them.
fn print_timelines(live: &Path, sagas: &[(uuid::Uuid, &str)]) -> Result<bool, CliError> {
    let mut ok = true;
    let config = NodeConfig::load(&live.join("fundraising.toml"))?;
    let (trust, _) = config.load_identity(clock::now_us())?;
    let options = AuditOptions {
        trust,
        channel_keys: config.load_channel_keys()?,
        progress: false,
    };
    for (id, label) in sagas {
        let history =
            crate::audit::saga_history::rebuild(&live.join("fundraising.hrld"), &options, *id)?;
        println!("   -- timeline of the {label} saga, rebuilt offline from the verified export");
        for e in &history.entries {
            println!(
                "   {}  {:<11}#{:<3} {}",
                crate::audit::verify::format_timestamp(e.timestamp_us),
                e.author,
                e.seq,
                e.describe()
            );
            if let Some(detail) = e.detail() {
                println!("   {:>44}{detail}", "");
            }
        }
        ok &= expect(
            history.report.valid && !history.entries.is_empty(),
            &format!("{} signed saga events, all verified", history.entries.len()),
        );
    }
    Ok(ok)
}

/// Follows press's store read-only (as `herald tail --follow` does) and
/// prints donations as they arrive; returns how many it saw.
fn spawn_subscriber(config: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let Ok(config) = NodeConfig::load(&config) else {
            return 0;
        };
        let keys: Vec<_> = config
            .channels
            .iter()
            .filter_map(|(n, p)| crate::identity::load_channel_key(n, p).ok())
            .collect();
        let mut after = 0;
        let mut seen = 0;
        while !stop.load(Ordering::Relaxed) {
            let events = crate::store::open_read_only(&config.data_dir)
                .and_then(|conn| crate::store::read_arrivals_from(&conn, after, 1000));
            if let Err(e) = &events {
                eprintln!("subscriber: {e}");
            }
            if let Ok(events) = events {
                for e in events {
                    after = e.arrival;
                    if e.header.event_type == "donation.received" {
                        seen += 1;
                        let json = super::log::event_json(&e, &keys);
                        println!(
                            "   [press subscriber] {}/{} {}",
                            e.header.author, e.header.seq, json["data"]
                        );
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

/// Exports every node's log and verifies it offline with only the CA.
fn audit_all(live: &Path, configs: &BTreeMap<&'static str, PathBuf>) -> Result<bool, CliError> {
    let mut ok = true;
    for service in LIVE {
        let config = NodeConfig::load(&configs[service])?;
        let (trust, identity) = config.load_identity(clock::now_us())?;
        let conn = crate::store::open_read_only(&config.data_dir)?;
        let path = live.join(format!("{service}.hrld"));
        export_store(
            &conn,
            service,
            &identity.signing_key,
            clock::now_us(),
            &path,
        )?;
        let report = audit_path(
            &path,
            &AuditOptions {
                trust,
                channel_keys: Vec::new(),
                progress: false,
            },
        )?;
        let mut report = report;
        // `herald verify --witnesses 2`: every feed's final checkpoint
        // carries the cosignatures of both other nodes.
        report.require_witnesses(LIVE.len() - 1);
        let summary: Vec<String> = report
            .feeds
            .iter()
            .map(|f| format!("{}:{}", f.service, f.events))
            .collect();
        ok &= expect(
            report.valid && report.feeds.len() == LIVE.len(),
            &format!(
                "{service}'s export verifies, every feed witnessed by the two other nodes ({})",
                summary.join(" ")
            ),
        );
    }
    Ok(ok)
}
