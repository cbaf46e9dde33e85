//! `herald demo`: provisions a three-service cluster in a scratch directory,
//! proclaims real events on each, exports and verifies every log, then
//! tampers a copy and shows the audit naming the damaged event. Exits 0 only
//! if every step behaved as a user relies on.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, EXIT_OK, EXIT_PROBLEMS};
use crate::audit::export::{RecordReader, export_store};
use crate::audit::verify::{AuditOptions, AuditReport, audit_path};
use crate::clock;
use crate::config::NodeConfig;
use crate::identity::TrustAnchor;
use crate::store::Log;

/// The demo's services and what each proclaims.
const SERVICES: [&str; 3] = ["council", "fundraising", "volunteers"];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the cluster in this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> Result<u8, CliError> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("herald-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    println!("== herald demo in {}", dir.display());
    let mut ok = true;

    step("1. provision three services (CA, node certificates, channel key, configs)");
    let nodes: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    let written = crate::config::init_cluster(&dir, &nodes, 7400, 365, true)?;
    println!("   wrote {} files under {}", written.len(), dir.display());

    step("2. each service proclaims signed, encrypted, chained events");
    for service in SERVICES {
        proclaim_story(&dir, service)?;
    }

    step("3. council receives the other feeds, verifying every event before it stores it");
    ok &= relay_to_council(&dir)?;

    step("4. the fundraising log, decrypted with the channel key");
    let config = NodeConfig::load(&dir.join("fundraising.toml"))?;
    let keys: Vec<_> = config
        .channels
        .iter()
        .map(|(n, p)| crate::identity::load_channel_key(n, p))
        .collect::<Result<_, _>>()?;
    let conn = crate::store::open_read_only(&config.data_dir)?;
    for event in crate::store::read_arrivals_from(&conn, 0, 100)? {
        println!("   {}", super::log::event_json(&event, &keys));
    }
    drop(conn);

    step("5. export every log and verify it offline with only the CA certificate");
    let exports = dir.join("exports");
    std::fs::create_dir_all(&exports)?;
    let trust_options = || -> Result<AuditOptions, CliError> {
        Ok(AuditOptions {
            trust: TrustAnchor::load(
                &dir.join("keys/ca.crt"),
                Some(&dir.join("keys/revoked.toml")),
            )?,
            channel_keys: keys.clone(),
            progress: false,
        })
    };
    for service in SERVICES {
        let path = export_node(&dir, service, &exports)?;
        let report = audit_path(&path, &trust_options()?)?;
        print_short(&report);
        ok &= expect(report.valid, &format!("{service} export verifies"));
    }
    let report = audit_path(&dir.join("data/council"), &trust_options()?)?;
    print_short(&report);
    ok &= expect(
        report.valid && report.feeds.len() == 3,
        "council's data directory (three feeds) verifies",
    );

    step("6. tamper one byte of a donation in a copy of the export");
    let original = exports.join("fundraising.hrld");
    let tampered = exports.join("fundraising-tampered.hrld");
    let (offset, seq) = flip_payload_byte(&original, &tampered, 2)?;
    println!("   flipped the byte at offset {offset} (inside fundraising/{seq}'s payload)");
    let report = audit_path(&tampered, &trust_options()?)?;
    // Scoped: a held stdout lock would block the live part's threads.
    super::verify::print_report(&mut std::io::stdout().lock(), &report)?;
    let named = report.problems.iter().any(|p| {
        p.feed.as_deref() == Some("fundraising") && p.seq == Some(seq) && p.check == "payload-hash"
    });
    ok &= expect(!report.valid, "tampered export is rejected");
    ok &= expect(
        named,
        "the damaged event is named (fundraising, its sequence, payload-hash)",
    );

    step("7. three live nodes on loopback: replication, queries, a SIGKILL, an audit");
    ok &= super::demo_live::run_live(&dir)?;

    step(
        "8. the service's own database: an outbox row in SQLite becomes a signed event in another service's inbox table",
    );
    ok &= super::demo_outbox::run_outbox(&dir)?;

    step(
        "9. the HTTP API, for services in any language: publish, read, subscribe, a durable consumer, a query, metrics, the console",
    );
    ok &= super::demo_api::run_api(&dir)?;

    step(
        "10. keys that change while the cluster runs: a channel key rotated, the CA rolled over (every certificate renewed under the new one), a node key rotated, a stolen key revoked with a cut-off and its feed recovered under a new key, each by a live reload",
    );
    ok &= super::demo_trust::run_trust(&dir)?;

    println!();
    if ok {
        println!("demo finished: every check behaved as expected");
        Ok(EXIT_OK)
    } else {
        println!("demo FAILED: see the lines marked FAILED above");
        Ok(EXIT_PROBLEMS)
    }
}

fn step(title: &str) {
    println!();
    println!("-- {title}");
}

fn expect(condition: bool, what: &str) -> bool {
    println!("   [{}] {what}", if condition { "ok" } else { "FAILED" });
    condition
}

/// An event type, its JSON payload and metadata.
type StoryEvent = (&'static str, String, Vec<(String, String)>);

/// Each service's part of the story: a ratified policy, donations, sign-ups.
fn proclaim_story(dir: &Path, service: &str) -> Result<(), CliError> {
    let config = NodeConfig::load(&dir.join(format!("{service}.toml")))?;
    let log = Log::open(&config)?;
    let events: Vec<StoryEvent> = match service {
        "council" => vec![(
            "policy.ratified",
            r#"{"policy":"clean-energy-2027","vote":"7-2"}"#.into(),
            vec![("correlation_id".into(), "session-114".into())],
        )],
        "fundraising" => (1..=4)
            .map(|i| {
                (
                    "donation.received",
                    format!(
                        r#"{{"donor":"D-{}","amount_cents":{},"currency":"USD"}}"#,
                        1000 + i,
                        2500 * i
                    ),
                    vec![("correlation_id".into(), format!("donation-{i}"))],
                )
            })
            .collect(),
        _ => vec![(
            "volunteer.signed_up",
            r#"{"volunteer":"V-77","region":"north","shifts":["phone-bank"]}"#.into(),
            vec![],
        )],
    };
    for (event_type, data, meta) in events {
        let receipt = log.proclaim(event_type, data.as_bytes(), meta)?;
        println!(
            "   {service}/{} {event_type} id {} hash {}",
            receipt.seq,
            receipt.id,
            &hex::encode(receipt.hash)[..16]
        );
    }
    log.close();
    Ok(())
}

/// Hands every event of fundraising and volunteers to council's log, which
/// verifies each (certificate, signature, chain) before committing it; a
/// second delivery is recognised and applied once.
fn relay_to_council(dir: &Path) -> Result<bool, CliError> {
    let council = Log::open(&NodeConfig::load(&dir.join("council.toml"))?)?;
    let mut ok = true;
    for service in ["fundraising", "volunteers"] {
        let config = NodeConfig::load(&dir.join(format!("{service}.toml")))?;
        let conn = crate::store::open_read_only(&config.data_dir)?;
        let envelopes: Vec<Vec<u8>> = crate::store::read_arrivals_from(&conn, 0, 1000)?
            .into_iter()
            .map(|e| e.envelope)
            .collect();
        // The author's checkpoint over its whole feed vouches for all of it.
        let seal = crate::store::seal_from_store(
            &conn,
            council.cluster(),
            service,
            envelopes.len() as u64,
        )?
        .ok_or_else(|| format!("{service} holds no checkpoint of its feed"))?;
        let policy = crate::store::IngestPolicy::default();
        let first = council.ingest_sealed(envelopes.clone(), vec![seal.clone()], policy.clone())?;
        let again = council.ingest_sealed(envelopes, vec![seal], policy)?;
        println!(
            "   council <- {service}: {} verified and applied, then {} duplicates skipped on redelivery",
            first.applied, again.duplicates
        );
        ok &= expect(
            first.rejected.is_none() && again.applied == 0,
            &format!("{service}'s events applied exactly once"),
        );
    }
    // A forged copy: one flipped bit in the header of volunteers' last event.
    let config = NodeConfig::load(&dir.join("volunteers.toml"))?;
    let conn = crate::store::open_read_only(&config.data_dir)?;
    let mut forged = crate::store::read_arrivals_from(&conn, 0, 1000)?
        .pop()
        .map(|e| e.envelope)
        .ok_or("volunteers has no events")?;
    forged[12] ^= 0x01;
    let heads_before = council.heads()?;
    let outcome = council.ingest(vec![forged])?;
    match &outcome.rejected {
        Some(r) => println!("   council <- forged volunteers event: rejected ({r})"),
        None => println!("   council <- forged volunteers event: ACCEPTED"),
    }
    ok &= expect(
        outcome.rejected.is_some() && outcome.applied == 0 && council.heads()? == heads_before,
        "a forged event is rejected and changes nothing",
    );
    council.close();
    Ok(ok)
}

fn export_node(dir: &Path, service: &str, exports: &Path) -> Result<PathBuf, CliError> {
    let config = NodeConfig::load(&dir.join(format!("{service}.toml")))?;
    let (_, identity) = config.load_identity(clock::now_us())?;
    let conn = crate::store::open_read_only(&config.data_dir)?;
    let path = exports.join(format!("{service}.hrld"));
    let summary = export_store(
        &conn,
        service,
        &identity.signing_key,
        clock::now_us(),
        &path,
    )?;
    println!(
        "   exported {} events of {} to {}",
        summary.events,
        service,
        path.display()
    );
    Ok(path)
}

fn print_short(report: &AuditReport) {
    for f in &report.feeds {
        println!(
            "   verify {}: feed {} events {} head {} status {}",
            report.source,
            f.service,
            f.events,
            f.head_seq.map(|s| s.to_string()).unwrap_or("-".into()),
            f.status
        );
    }
}

/// Copies an export, flipping the last byte of event record `record_index`
/// (1-based among all records, so 1 is the begin record). The last bytes of
/// an event record are its payload ciphertext. Returns the file offset and
/// the event's sequence number.
fn flip_payload_byte(from: &Path, to: &Path, event_seq: u64) -> Result<(u64, u64), CliError> {
    let bytes = std::fs::read(from)?;
    let mut reader = RecordReader::new(bytes.as_slice(), from)?;
    while let Some(record) = reader.next_record()? {
        let raw = record.map_err(|p| format!("export framing: {p:?}"))?;
        if let Ok(crate::audit::export::ExportRecord::Event(env)) =
            crate::audit::export::decode_record(&raw.body)
            && let Ok((_, header)) = crate::core::codec::decode_envelope(&env)
            && header.seq == event_seq
        {
            let end = raw.offset + 4 + raw.body.len() as u64;
            let offset = end - 1;
            let mut copy = bytes.clone();
            copy[offset as usize] ^= 0x01;
            std::fs::write(to, copy)?;
            return Ok((offset, event_seq));
        }
    }
    Err(format!("no event with sequence {event_seq} in {}", from.display()).into())
}
