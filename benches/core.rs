//! Criterion micro-benchmarks of herald's hot paths: the canonical codec,
//! sealing, signature verification, decoding, durable append and the export
//! record framing.
//!
//! ```sh
//! cargo bench --bench core                 # about two minutes
//! cargo bench --bench core -- --quick      # a rough pass
//! cargo bench --bench core -- seal         # one group
//! ```
//!
//! Each group reports throughput in events (`Throughput::Elements`). Times
//! are kept short (3 s measurement, 20 samples) so the whole run finishes in
//! a few minutes on two cores.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use herald::audit::export::{ExportRecord, ExportWriter, decode_record};
use herald::config::NodeConfig;
use herald::core::codec;
use herald::core::crypto::{ChannelKey, Hash};
use herald::core::verify::{
    DecodedEvent, Draft, Entropy, Sealer, VerifiedEvent, batch_signatures_valid, signature_valid,
};
use herald::store::Log;

/// Events sealed or appended per batch.
const BATCH: usize = 64;
/// Signatures per batch-verification call (herald's `VERIFY_BATCH_EVENTS`).
const VERIFY_BATCH: usize = 256;
/// A fixed timestamp (2025-01-01T00:00:00Z) so runs are comparable.
const NOW_US: u64 = 1_735_689_600_000_000;

/// A plausible event payload (~200 bytes of JSON).
fn payload(i: usize) -> Vec<u8> {
    format!(
        r#"{{"donor":"D-{i:06}","amount_cents":{},"currency":"EUR","campaign":"spring-appeal","channel":"web","gift_aid":true,"note":"monthly gift, thank-you letter requested"}}"#,
        2500 + i
    )
    .into_bytes()
}

fn draft(i: usize) -> Draft {
    Draft::new(
        "donation.received",
        1,
        vec![
            ("correlation_id".into(), format!("donation-{i:06}")),
            ("source".into(), "web".into()),
        ],
        payload(i),
    )
    .expect("valid draft")
}

/// Fixed, distinct per-event entropy (benchmarks only: never reuse nonces
/// under a real key).
fn entropy(i: usize) -> Entropy {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    id[6] = 0x70 | (id[6] & 0x0f);
    id[8] = 0x80 | (id[8] & 0x3f);
    let mut nonce = [0u8; 24];
    nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Entropy { id, nonce }
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn channel() -> ChannelKey {
    ChannelKey::new("default", [9u8; 32])
}

/// A feed's genesis plus `n` sealed events.
fn sealed_events(n: usize) -> Vec<VerifiedEvent> {
    let (mut sealer, genesis) = Sealer::new_feed("fundraising", signing_key())
        .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
        .start_feed(
            b"not a certificate: the sealer does not read it",
            entropy(usize::MAX).id,
            NOW_US,
        );
    let channel = channel();
    let drafts = (0..n)
        .map(|i| (draft(i), &channel, entropy(i)))
        .collect::<Vec<_>>();
    let mut events = vec![genesis];
    events.extend(sealer.seal_batch(drafts, NOW_US + 1));
    events
}

fn bench_codec(c: &mut Criterion) {
    let events = sealed_events(1);
    let event = &events[1];
    let header = event.header().clone();
    let header_bytes = codec::encode_header(&header);
    let envelope_bytes = event.bytes().to_vec();
    let (envelope, _) = codec::decode_envelope(&envelope_bytes).expect("canonical envelope");

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_header", |b| {
        b.iter(|| codec::encode_header(black_box(&header)))
    });
    g.bench_function("decode_header", |b| {
        b.iter(|| codec::decode_header(black_box(&header_bytes)).expect("decodes"))
    });
    g.bench_function("encode_envelope", |b| {
        b.iter(|| codec::encode_envelope(black_box(&envelope)))
    });
    g.bench_function("decode_envelope", |b| {
        b.iter(|| codec::decode_envelope(black_box(&envelope_bytes)).expect("decodes"))
    });
    g.finish();
}

/// One batch of drafts to seal, with their channel and entropy.
fn drafts(channel: &ChannelKey) -> Vec<(Draft, &ChannelKey, Entropy)> {
    (0..BATCH)
        .map(|i| (draft(i), channel, entropy(i)))
        .collect()
}

fn bench_seal(c: &mut Criterion) {
    let channel = channel();
    let (mut sealer, _) = Sealer::new_feed("fundraising", signing_key())
        .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
        .start_feed(b"cert", entropy(usize::MAX).id, NOW_US);
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("seal_batch_64", |b| {
        b.iter_batched(
            || drafts(&channel),
            |drafts| sealer.seal_batch(drafts, NOW_US + 1),
            BatchSize::SmallInput,
        )
    });
    // The sequential half alone (encrypt, hash, chain; no signature): what
    // the seal stage adds on top of the signing ceiling.
    g.bench_function("chain_batch_64", |b| {
        b.iter_batched(
            || drafts(&channel),
            |drafts| sealer.chain_batch(drafts, NOW_US + 1),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The AEAD by itself on a 256-byte payload. `.cargo/config.toml` picks
    // Poly1305's portable backend because of this figure.
    let mut g = c.benchmark_group("aead");
    g.throughput(Throughput::Elements(1));
    let plaintext = vec![0x5au8; 256];
    let aad = [1u8; 120];
    g.bench_function("xchacha20poly1305_seal_256", |b| {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = [7u8; 32];
        let nonce = chacha20poly1305::XNonce::from([9u8; 24]);
        b.iter(|| {
            let cipher = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
            cipher.encrypt(
                &nonce,
                Payload {
                    msg: black_box(&plaintext),
                    aad: &aad,
                },
            )
        })
    });
    g.finish();
}

/// `(key, hash, signature)` of `n` sealed events.
fn signed_items(n: usize) -> Vec<(VerifyingKey, Hash, Signature)> {
    let key = signing_key().verifying_key();
    sealed_events(n)
        .into_iter()
        .skip(1)
        .map(|e| {
            let decoded = DecodedEvent::decode(e.into_bytes()).expect("decodes");
            let sig = Signature::from_bytes(decoded.signature_bytes().expect("a format-1 event"));
            (key, *decoded.hash(), sig)
        })
        .collect()
}

fn bench_verify(c: &mut Criterion) {
    let items = signed_items(VERIFY_BATCH);
    let (key, hash, sig) = items[0];
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("signature_valid", |b| {
        b.iter(|| assert!(signature_valid(black_box(&key), black_box(&hash), &sig)))
    });
    g.throughput(Throughput::Elements(VERIFY_BATCH as u64));
    g.bench_function("batch_signatures_valid_256", |b| {
        b.iter(|| {
            let ok = batch_signatures_valid(black_box(&items));
            assert!(ok.iter().all(|v| *v));
            ok
        })
    });
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let events = sealed_events(1);
    let bytes = events[1].bytes().to_vec();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decoded_event", |b| {
        b.iter_batched(
            || bytes.clone(),
            |bytes| DecodedEvent::decode(bytes).expect("decodes"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    herald::config::init_cluster(dir.path(), &["bench".to_string()], 17400, 365, false)
        .expect("init cluster");
    let config = NodeConfig::load(&dir.path().join("bench.toml")).expect("config");
    let log = Log::open(&config).expect("open log");
    let channel = log.channel(None).expect("default channel");
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("proclaim_batch_64_durable", |b| {
        b.iter_batched(
            || {
                (0..BATCH)
                    .map(|i| (draft(i), Arc::clone(&channel)))
                    .collect::<Vec<_>>()
            },
            |drafts| log.proclaim_batch(drafts).expect("durable append"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    log.close();
}

fn bench_export_framing(c: &mut Criterion) {
    let events = sealed_events(1);
    let record = ExportRecord::Event(events[1].bytes().to_vec());
    let mut framed = Vec::new();
    {
        let mut w = ExportWriter::new(&mut framed, herald::audit::export::ExportFormat::V1)
            .expect("writer");
        w.record(&record).expect("record");
        w.finish().expect("finish");
    }
    // Skip the 8-byte magic and the 4-byte length prefix.
    let body = framed[12..].to_vec();
    let mut g = c.benchmark_group("export");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_record", |b| {
        let mut buf = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            buf.clear();
            let mut w = ExportWriter::new(&mut buf, herald::audit::export::ExportFormat::V1)
                .expect("writer");
            w.record(black_box(&record)).expect("record");
            w.finish().expect("finish");
        })
    });
    g.bench_function("decode_record", |b| {
        b.iter(|| decode_record(black_box(&body)).expect("decodes"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    targets = bench_codec, bench_seal, bench_verify, bench_decode, bench_append,
        bench_export_framing
}
criterion_main!(benches);
