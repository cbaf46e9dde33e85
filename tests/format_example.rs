//! The worked example of `docs/FORMAT.md`, checked.
//!
//! 1. One non-genesis event is sealed deterministically through herald's
//!    public API, and its bytes are pinned (the doc shows the same hex).
//! 2. [`spec`] is an independent mini-verifier written from FORMAT.md alone:
//!    it parses envelopes and headers byte by byte, applies the field rules,
//!    and hashes, verifies and decrypts with `sha2`, `ed25519-dalek` and
//!    `chacha20poly1305` directly. It never calls herald's codec. It must
//!    reproduce herald's bytes, hash, signature check and plaintext, and accept
//!    exactly the single-byte mutations of the example that herald accepts.
//!
//! Print the example (to refresh the doc) with:
//! `cargo test --test format_example -- --nocapture print_worked_example`

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use herald::core::crypto::ChannelKey;
use herald::core::verify::{DecodedEvent, Draft, Entropy, Sealer};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// The example's inputs (FORMAT.md, "Worked example").

const SIGNING_SEED: [u8; 32] = [7u8; 32];
const AUTHOR: &str = "fundraising";
const HEAD_SEQ: u64 = 41;
const HEAD_HASH: [u8; 32] = [0x11; 32];
const LAST_TIMESTAMP_US: u64 = 1_780_000_000_000_000;
const NOW_US: u64 = 1_780_000_000_000_001;
const CHANNEL_KEY: [u8; 32] = [0x42; 32];
const EVENT_TYPE: &str = "donation.received";
const SCHEMA_VERSION: u32 = 1;
const PLAINTEXT: &[u8] = br#"{"amount":25}"#;
/// UUID v7 `0190f3a0-0000-7000-8000-000000000001`.
const EVENT_ID: [u8; 16] = [
    0x01, 0x90, 0xf3, 0xa0, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
];
const NONCE: [u8; 24] = [0x24; 24];

// ---------------------------------------------------------------------------
// The example's outputs, exactly as docs/FORMAT.md shows them.

const EXPECTED_HEADER_HEX: &str = concat!(
    "010190f3a00000700080000000000000010b66756e6472616973696e672a1111",
    "1111111111111111111111111111111111111111111111111111111111118180",
    "cddde8dc940311646f6e6174696f6e2e726563656976656401010e636f727265",
    "6c6174696f6e5f696403632d3101fc7cd415e0c734f951de1650d8ba23242424",
    "2424242424242424242424242424242424242424242453e2c77cd6dc089a473f",
    "437948b221b07408c4b8952bf4735afd4c6c52828d761d00",
);
const EXPECTED_HASH_HEX: &str = "44508bdbf8d83eaa354a323024b9b7f9d7a6971d12155c15a13e86e190cce884";
const EXPECTED_SIGNATURE_HEX: &str = concat!(
    "7568e63a2b0f0fb5baae7021a3d883d144b93e673932e203595336a8a73c2e36",
    "92db2e4d15511596c816c6152c71cc73640c8bed19e671a3ceb14d85d4cc6002",
);
const EXPECTED_KEY_ID_HEX: &str = "fc7cd415e0c734f951de1650d8ba2324";
const EXPECTED_AAD_HEX: &str = concat!(
    "686572616c642f76312f7061796c6f61642d616164000b66756e647261697369",
    "6e672a1111111111111111111111111111111111111111111111111111111111",
    "1111110190f3a000007000800000000000000111646f6e6174696f6e2e726563",
    "6569766564fc7cd415e0c734f951de1650d8ba2324",
);
const EXPECTED_CIPHERTEXT_HEX: &str = "de7cb608015122d280150d0f73b6401749084acf162d86d8dc17e9d0c4";
const EXPECTED_ENVELOPE_HEX: &str = concat!(
    "b801010190f3a00000700080000000000000010b66756e6472616973696e672a",
    "1111111111111111111111111111111111111111111111111111111111111111",
    "8180cddde8dc940311646f6e6174696f6e2e726563656976656401010e636f72",
    "72656c6174696f6e5f696403632d3101fc7cd415e0c734f951de1650d8ba2324",
    "24242424242424242424242424242424242424242424242453e2c77cd6dc089a",
    "473f437948b221b07408c4b8952bf4735afd4c6c52828d761d00407568e63a2b",
    "0f0fb5baae7021a3d883d144b93e673932e203595336a8a73c2e3692db2e4d15",
    "511596c816c6152c71cc73640c8bed19e671a3ceb14d85d4cc6002011dde7cb6",
    "08015122d280150d0f73b6401749084acf162d86d8dc17e9d0c4",
);

/// Seals the example through herald's public API.
fn seal_example() -> Vec<u8> {
    let key = SigningKey::from_bytes(&SIGNING_SEED);
    let mut sealer = Sealer::resume(AUTHOR, key, HEAD_SEQ, HEAD_HASH, LAST_TIMESTAMP_US)
        .with_format(herald::core::limits::FORMAT_VERSION_SIGNED);
    let channel = ChannelKey::new("default", CHANNEL_KEY);
    let draft = Draft::new(
        EVENT_TYPE,
        SCHEMA_VERSION,
        vec![("correlation_id".into(), "c-1".into())],
        PLAINTEXT.to_vec(),
    )
    .expect("the example draft is valid");
    let entropy = Entropy {
        id: EVENT_ID,
        nonce: NONCE,
    };
    let mut events = sealer.seal_batch(vec![(draft, &channel, entropy)], NOW_US);
    assert_eq!(events.len(), 1);
    let event = events.remove(0);
    assert_eq!(event.header().seq, HEAD_SEQ + 1);
    event.into_bytes()
}

/// The example's header, built by hand from FORMAT.md's field table.
fn example_header() -> spec::Header {
    spec::Header {
        version: 1,
        id: EVENT_ID,
        author: AUTHOR.into(),
        seq: HEAD_SEQ + 1,
        prev: HEAD_HASH,
        timestamp_us: NOW_US.max(LAST_TIMESTAMP_US),
        event_type: EVENT_TYPE.into(),
        schema_version: SCHEMA_VERSION,
        meta: vec![("correlation_id".into(), "c-1".into())],
        encryption: spec::Encryption::XChaCha20Poly1305 {
            key_id: spec::channel_key_id(&CHANNEL_KEY),
            nonce: NONCE,
        },
        // Filled in from the ciphertext below.
        payload_hash: [0; 32],
        payload_len: 0,
        signature_scope: 0,
    }
}

#[test]
fn worked_example_bytes_are_pinned() {
    let envelope = seal_example();
    let decoded = DecodedEvent::decode(envelope.clone()).expect("herald decodes its own event");
    let env = spec::parse_envelope(&envelope).expect("spec parses the envelope");
    assert_eq!(hex::encode(&env.header), EXPECTED_HEADER_HEX);
    assert_eq!(hex::encode(decoded.hash()), EXPECTED_HASH_HEX);
    assert_eq!(
        hex::encode(decoded.signature_bytes().expect("a format-1 event")),
        EXPECTED_SIGNATURE_HEX
    );
    assert_eq!(
        hex::encode(env.payload.as_deref().unwrap()),
        EXPECTED_CIPHERTEXT_HEX
    );
    assert_eq!(hex::encode(&envelope), EXPECTED_ENVELOPE_HEX);
    let header = spec::parse_header(&env.header).unwrap();
    assert_eq!(
        hex::encode(spec::associated_data(&header)),
        EXPECTED_AAD_HEX
    );
    assert_eq!(
        hex::encode(ChannelKey::new("default", CHANNEL_KEY).id()),
        EXPECTED_KEY_ID_HEX
    );
    // Sealing is deterministic: same inputs, same bytes.
    assert_eq!(seal_example(), envelope);
}

#[test]
fn independent_verifier_reproduces_the_example() {
    let envelope = seal_example();
    let key = SigningKey::from_bytes(&SIGNING_SEED).verifying_key();

    // Envelope framing, by hand.
    let env = spec::parse_envelope(&envelope).expect("spec parses the envelope");
    let ciphertext = env.payload.clone().expect("payload present");
    assert_eq!(spec::encode_envelope(&env), envelope);

    // The header, built from the documented layout and the known field
    // values, equals herald's header bytes.
    let mut expected = example_header();
    expected.payload_hash = Sha256::digest(&ciphertext).into();
    expected.payload_len = ciphertext.len() as u32;
    assert_eq!(spec::encode_header(&expected), env.header);
    let header = spec::parse_header(&env.header).expect("spec parses the header");
    assert_eq!(header, expected);
    assert_eq!(ciphertext.len(), PLAINTEXT.len() + 16);

    // Hash and signature.
    let hash = spec::event_hash(&env.header);
    assert_eq!(hex::encode(hash), EXPECTED_HASH_HEX);
    let decoded = DecodedEvent::decode(envelope.clone()).unwrap();
    assert_eq!(&hash, decoded.hash());
    let message = spec::signing_message(&hash);
    assert_eq!(message.len(), 58);
    key.verify(&message, &Signature::from_bytes(&env.signature))
        .expect("signature verifies over tag ‖ hash");
    // The signature is deterministic Ed25519 (RFC 8032): signing again gives
    // the same bytes.
    let resigned = ed25519_dalek::Signer::sign(&SigningKey::from_bytes(&SIGNING_SEED), &message);
    assert_eq!(resigned.to_bytes(), env.signature);

    // Payload commitment.
    assert_eq!(spec::check_payload(&header, &ciphertext), Ok(()));

    // Decryption with the documented AAD.
    let plaintext = spec::decrypt(&header, &ciphertext, &CHANNEL_KEY).expect("decrypts");
    assert_eq!(plaintext, PLAINTEXT);
    // And herald's own decryption agrees.
    let herald_plain = herald::core::verify::decrypt_payload(
        decoded.header(),
        &ciphertext,
        &[ChannelKey::new("default", CHANNEL_KEY)],
    )
    .unwrap();
    assert_eq!(herald_plain, PLAINTEXT);
    // The AAD binds the ciphertext to its place: another seq does not decrypt.
    let mut moved = header.clone();
    moved.seq += 1;
    assert!(spec::decrypt(&moved, &ciphertext, &CHANNEL_KEY).is_none());
    // A wrong key does not decrypt either.
    assert!(spec::decrypt(&header, &ciphertext, &[0x43; 32]).is_none());

    // Chain rules against the known head.
    assert_eq!(header.seq, HEAD_SEQ + 1);
    assert_eq!(header.prev, HEAD_HASH);
    assert!(header.timestamp_us >= LAST_TIMESTAMP_US);
}

/// Flipping any single byte of the envelope is caught: herald's decoder
/// refuses it, or the signature no longer verifies over the recomputed
/// hash, or the payload no longer matches the header. The spec decoder
/// accepts exactly the mutations herald's decoder accepts.
#[test]
fn every_single_byte_flip_is_caught() {
    let envelope = seal_example();
    let key = SigningKey::from_bytes(&SIGNING_SEED).verifying_key();
    let mut decoded_count = 0;
    for i in 0..envelope.len() {
        for mask in [0x01u8, 0x20, 0x80, 0xff] {
            let mut bytes = envelope.clone();
            bytes[i] ^= mask;
            let herald = DecodedEvent::decode(bytes.clone());
            let ours = spec::decode(&bytes);
            assert_eq!(
                herald.is_ok(),
                ours.is_ok(),
                "byte {i} ^ {mask:#04x}: herald {:?}, spec {:?}",
                herald.as_ref().err(),
                ours.as_ref().err()
            );
            let Ok((env, header)) = ours else { continue };
            decoded_count += 1;
            let herald = herald.unwrap();
            let hash = spec::event_hash(&env.header);
            assert_eq!(&hash, herald.hash(), "byte {i} ^ {mask:#04x}");
            let signature_ok = key
                .verify(
                    &spec::signing_message(&hash),
                    &Signature::from_bytes(&env.signature),
                )
                .is_ok();
            let payload_ok = match &env.payload {
                Some(p) => spec::check_payload(&header, p).is_ok(),
                None => true,
            };
            assert!(
                !(signature_ok && payload_ok),
                "byte {i} ^ {mask:#04x} went unnoticed"
            );
        }
    }
    // Sanity: some mutations do decode (signature and payload bytes), so the
    // signature and payload checks above were exercised.
    assert!(decoded_count > 0);
}

/// docs/FORMAT.md shows exactly the bytes pinned here: every constant
/// appears as one fenced hex block (whitespace ignored) or inline.
#[test]
fn format_doc_shows_the_pinned_bytes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md");
    let doc = std::fs::read_to_string(&path).expect("docs/FORMAT.md exists");
    let blocks: Vec<String> = doc
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| b.split_whitespace().collect())
        .collect();
    for (name, hex) in [
        ("header", EXPECTED_HEADER_HEX),
        ("event hash", EXPECTED_HASH_HEX),
        ("signature", EXPECTED_SIGNATURE_HEX),
        ("aad", EXPECTED_AAD_HEX),
        ("ciphertext", EXPECTED_CIPHERTEXT_HEX),
        ("envelope", EXPECTED_ENVELOPE_HEX),
    ] {
        assert!(
            blocks.iter().any(|b| b == hex),
            "FORMAT.md lacks the {name} block {hex}"
        );
    }
    let message = hex::encode(spec::signing_message(
        &hex::decode(EXPECTED_HASH_HEX).unwrap().try_into().unwrap(),
    ));
    assert!(blocks.contains(&message), "signing message block");
    assert!(doc.contains(EXPECTED_KEY_ID_HEX));
    let verifying_key = SigningKey::from_bytes(&SIGNING_SEED).verifying_key();
    assert!(doc.contains(&hex::encode(verifying_key.as_bytes())));
}

/// Prints the example for the doc (run with `--nocapture`).
#[test]
fn print_worked_example() {
    let envelope = seal_example();
    let env = spec::parse_envelope(&envelope).unwrap();
    let header = spec::parse_header(&env.header).unwrap();
    let hash = spec::event_hash(&env.header);
    println!("header ({} bytes):", env.header.len());
    spec::annotate_header(&env.header);
    println!("header hex: {}", hex::encode(&env.header));
    println!("event hash: {}", hex::encode(hash));
    println!(
        "signing message ({} bytes): {}",
        spec::signing_message(&hash).len(),
        hex::encode(spec::signing_message(&hash))
    );
    println!("signature: {}", hex::encode(env.signature));
    println!(
        "verifying key: {}",
        hex::encode(
            SigningKey::from_bytes(&SIGNING_SEED)
                .verifying_key()
                .as_bytes()
        )
    );
    println!(
        "key id: {}",
        hex::encode(spec::channel_key_id(&CHANNEL_KEY))
    );
    let aad = spec::associated_data(&header);
    println!("aad ({} bytes): {}", aad.len(), hex::encode(&aad));
    let ct = env.payload.as_deref().unwrap();
    println!("ciphertext ({} bytes): {}", ct.len(), hex::encode(ct));
    println!("payload hash: {}", hex::encode(Sha256::digest(ct)));
    println!(
        "envelope ({} bytes): {}",
        envelope.len(),
        hex::encode(&envelope)
    );
}

/// FORMAT.md, "Signature": herald's single and batch checks accept exactly
/// the same signatures. A signature whose `R` carries a small-order
/// component `T` (only the key holder can make one) fails RFC 8032's
/// cofactorless check but passes herald's cofactored rule, both singly and in
/// every batch, so nodes and auditors that chunk differently agree.
#[test]
fn batch_and_single_verification_agree_on_torsion_signatures() {
    use herald::core::verify::{batch_signatures_valid, signature_valid};
    use sha2::Sha512;

    let author = SigningKey::from_bytes(&SIGNING_SEED);
    let a = scalar::clamp(author.to_scalar_bytes()); // secret scalar a, A = aB
    let public = author.verifying_key();
    // Any known scalar r with R = rB: another key's clamped scalar.
    let nonce_key = SigningKey::from_bytes(&[9u8; 32]);
    let r = scalar::clamp(nonce_key.to_scalar_bytes());
    let big_r = nonce_key.verifying_key().to_bytes();
    // R' = R + T where T = (0, -1) has order 2: R' = (-x, -y).
    let r_prime = scalar::negate_point_encoding(&big_r);

    let mut batch_accepts = 0;
    for i in 0u8..32 {
        let hash = [i; 32];
        let message = spec::signing_message(&hash);
        let k = scalar::reduce512(
            &Sha512::new()
                .chain_update(r_prime)
                .chain_update(public.as_bytes())
                .chain_update(&message)
                .finalize()
                .into(),
        );
        // s = r + k·a (mod l), so sB = R + kA = R' - T + kA.
        let s = scalar::mul_add(&k, &a, &r);
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_prime);
        sig[32..].copy_from_slice(&s);
        let sig = Signature::from_bytes(&sig);
        assert!(
            ed25519_dalek::Verifier::verify(&public, &message, &sig).is_err(),
            "RFC 8032's cofactorless check rejects a torsion signature"
        );
        assert!(
            signature_valid(&public, &hash, &sig),
            "herald's cofactored rule accepts it"
        );
        if batch_signatures_valid(&[(public, hash, sig)])[0] {
            batch_accepts += 1;
        }
        // Control: the same construction without T verifies everywhere.
        let k = scalar::reduce512(
            &Sha512::new()
                .chain_update(big_r)
                .chain_update(public.as_bytes())
                .chain_update(&message)
                .finalize()
                .into(),
        );
        let mut good = [0u8; 64];
        good[..32].copy_from_slice(&big_r);
        good[32..].copy_from_slice(&scalar::mul_add(&k, &a, &r));
        let good = Signature::from_bytes(&good);
        assert!(signature_valid(&public, &hash, &good));
        assert!(batch_signatures_valid(&[(public, hash, good)])[0]);
    }
    assert_eq!(
        batch_accepts, 32,
        "a batch gives the single verdict every time"
    );
}

/// A signature by `key` on `message` whose `R` carries the order-2 point
/// `T = (0, -1)`: `R' = R + T` for a known nonce `r`, `S = r + k·a` with `k`
/// hashed over `R'`. RFC 8032's cofactorless equation fails; the cofactored
/// one (FORMAT.md section 7) holds. Only the key holder can make one.
fn torsion_signature(key: &SigningKey, message: &[u8]) -> Signature {
    use sha2::Sha512;
    let a = scalar::clamp(key.to_scalar_bytes());
    let nonce_key = SigningKey::from_bytes(&[9u8; 32]);
    let r = scalar::clamp(nonce_key.to_scalar_bytes());
    let r_prime = scalar::negate_point_encoding(&nonce_key.verifying_key().to_bytes());
    let k = scalar::reduce512(
        &Sha512::new()
            .chain_update(r_prime)
            .chain_update(key.verifying_key().as_bytes())
            .chain_update(message)
            .finalize()
            .into(),
    );
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r_prime);
    sig[32..].copy_from_slice(&scalar::mul_add(&k, &a, &r));
    Signature::from_bytes(&sig)
}

/// FORMAT.md section 7: one rule for every signature herald checks. A
/// query answer signed with a small-order component in `R` gets the verdict
/// an event signed that way gets (accepted), where `verify_strict` used to
/// refuse it; a damaged signature is still refused.
#[test]
fn query_answers_follow_the_one_signature_rule() {
    use herald::core::query::{
        QueryRequest, QueryResultBody, QueryStatus, SignedQueryResult, result_signing_message,
        sign_result, verify_result,
    };
    use herald::core::verify::signature_valid;

    let responder = SigningKey::from_bytes(&SIGNING_SEED);
    let public = responder.verifying_key();
    let request = QueryRequest {
        id: EVENT_ID,
        caller: "council".into(),
        target: AUTHOR.into(),
        query_type: "herald.head".into(),
        correlation_id: "c-1".into(),
        payload: br#"{"feed":"fundraising"}"#.to_vec(),
        timeout_ms: 1000,
    };
    let body = QueryResultBody {
        request_id: request.id,
        responder: AUTHOR.into(),
        caller: "council".into(),
        query_type: "herald.head".into(),
        correlation_id: "c-1".into(),
        status: QueryStatus::Success,
        payload: br#"{"seq":41}"#.to_vec(),
        timestamp_us: NOW_US,
    };
    let honest = sign_result(&responder, &body);
    assert_eq!(verify_result(&honest, &public, &request), Ok(body.clone()));

    let message = result_signing_message(&honest.body);
    let torsion = torsion_signature(&responder, &message);
    assert!(public.verify(&message, &torsion).is_err());
    assert!(herald::core::signature::verify_single(
        &public, &message, &torsion
    ));
    let signed = SignedQueryResult {
        body: honest.body.clone(),
        signature: torsion.to_bytes(),
    };
    assert_eq!(verify_result(&signed, &public, &request), Ok(body));

    // The same construction on an event's signing message: the same verdict.
    let hash = [0x44; 32];
    let event_sig = torsion_signature(&responder, &spec::signing_message(&hash));
    assert!(signature_valid(&public, &hash, &event_sig));

    // Control: a damaged torsion signature is refused.
    let mut bad = torsion.to_bytes();
    bad[40] ^= 0x01;
    let signed = SignedQueryResult {
        body: honest.body,
        signature: bad,
    };
    assert!(verify_result(&signed, &public, &request).is_err());
}

/// An independent reading of FORMAT.md section 10 (`spec::check_export`)
/// agrees with `herald verify` on every single-byte change of the `Begin`
/// and `End` records of the test vector `valid.hrld` (length prefixes
/// included): the document no longer lets a literal verifier accept a
/// flipped `Begin` byte or a re-framed record that herald refuses. Both also
/// accept the small-order-component signatures of the torsion vectors.
#[test]
fn a_verifier_written_from_section_10_agrees_with_herald_on_begin_and_end_bytes() {
    use herald::audit::verify::{AuditOptions, audit_export};
    use herald::identity::{NodeIdentity, TrustAnchor};

    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let keys = vectors.join("keys");
    let trust = || TrustAnchor::load(&keys.join("ca.crt"), None).expect("CA");
    let council = NodeIdentity::load(
        "council",
        &keys.join("council.key"),
        &keys.join("council.crt"),
        &trust(),
        herald::clock::now_us(),
    )
    .expect("council key")
    .signing_key
    .verifying_key()
    .to_bytes();
    let options = AuditOptions {
        trust: trust(),
        channel_keys: Vec::new(),
        progress: false,
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let herald_valid = |bytes: &[u8]| {
        let path = tmp.path().join("case.hrld");
        std::fs::write(&path, bytes).expect("write");
        audit_export(&path, &options).expect("audit runs").valid
    };

    for name in ["valid.hrld", "torsion-event.hrld", "torsion-end.hrld"] {
        let bytes = std::fs::read(vectors.join(name)).expect("vector");
        assert_eq!(spec::check_export(&bytes, &council), Ok(()), "{name}");
        assert!(herald_valid(&bytes), "{name}");
    }

    let valid = std::fs::read(vectors.join("valid.hrld")).expect("valid.hrld");
    // Where each record (its length prefix) starts.
    let mut starts = vec![8usize];
    while let Some(&at) = starts.last() {
        let len = u32::from_le_bytes(valid[at..at + 4].try_into().unwrap()) as usize;
        if at + 4 + len >= valid.len() {
            break;
        }
        starts.push(at + 4 + len);
    }
    let begin = starts[0]..starts[1];
    let end = starts[starts.len() - 1]..valid.len();
    let mut flips = 0;
    for at in begin.chain(end) {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bytes = valid.clone();
            bytes[at] ^= mask;
            let ours = spec::check_export(&bytes, &council);
            assert_eq!(
                herald_valid(&bytes),
                ours.is_ok(),
                "byte {at} ^ {mask:#04x}: spec says {ours:?}"
            );
            assert!(ours.is_err(), "byte {at} ^ {mask:#04x} passed both");
            flips += 1;
        }
    }
    assert!(flips > 100);
}

/// Just enough 256-bit arithmetic for the torsion test: scalars mod
/// l = 2^252 + 27742317777372353535851937790883648493 and the field prime
/// p = 2^255 - 19, little-endian 64-bit limbs.
/// docs/FORMAT.md section 16: a verifier written from the document alone
/// (module `spec`: its own decoder, RFC 6962 root and note parser) agrees
/// with herald on sealed events: which bytes decode, and that a run is
/// authentic exactly when its tree's root is the one the author signed. Every
/// single-byte change of an event either fails to decode (in both), fails
/// its payload commitment, or changes the root so the checkpoint no longer
/// covers it, in herald's seal check as in the spec's.
#[test]
fn a_verifier_written_from_section_16_authenticates_sealed_events_as_herald_does() {
    use herald::core::checkpoint::{CheckpointSigner, cluster_id};
    use herald::core::merkle::Frontier;
    use herald::core::verify::{Seal, check_sealed_run};
    let key = SigningKey::from_bytes(&SIGNING_SEED);
    let cluster = cluster_id(&[3; 32]);
    let origin = format!("herald/{cluster}/{AUTHOR}");
    let (mut sealer, genesis) = Sealer::new_feed(AUTHOR, key.clone())
        .with_format(herald::core::limits::FORMAT_VERSION_SEALED)
        .start_feed(b"certificate bytes", EVENT_ID, LAST_TIMESTAMP_US);
    let channel = ChannelKey::new("default", CHANNEL_KEY);
    let drafts = (0..3u8)
        .map(|i| {
            let draft = Draft::new(EVENT_TYPE, 1, vec![], vec![i; 40]).expect("draft");
            let mut id = EVENT_ID;
            id[15] = i + 1;
            (draft, &channel, Entropy { id, nonce: [i; 24] })
        })
        .collect();
    let mut run: Vec<Vec<u8>> = vec![genesis.bytes().to_vec()];
    run.extend(
        sealer
            .seal_batch(drafts, LAST_TIMESTAMP_US + 1)
            .into_iter()
            .map(|e| e.into_bytes()),
    );
    // The spec's view: decode, hash, leaves, root.
    let spec_hashes = |run: &[Vec<u8>]| -> Result<Vec<[u8; 32]>, String> {
        run.iter()
            .map(|b| {
                let (env, header) = spec::decode_sealed(b)?;
                if let Some(p) = &env.payload {
                    spec::check_payload(&header, p)?;
                }
                Ok(spec::event_hash(&env.header))
            })
            .collect()
    };
    let hashes = spec_hashes(&run).expect("the spec decodes herald's sealed events");
    let leaves: Vec<[u8; 32]> = hashes.iter().map(spec::leaf).collect();
    let root = spec::merkle_root(&leaves);
    let signer = CheckpointSigner::new(cluster.clone(), AUTHOR.into(), key.clone());
    let note = signer.sign(4, root).expect("sign").to_text();
    assert_eq!(
        spec::open_checkpoint(&note, &origin, &key.verifying_key()),
        Some((4, root)),
        "the spec opens herald's checkpoint"
    );
    // herald's view of the same run and seal.
    let herald_accepts = |run: &[Vec<u8>]| -> bool {
        let Ok(decoded) = run
            .iter()
            .map(|b| DecodedEvent::decode(b.clone()))
            .collect::<Result<Vec<_>, _>>()
        else {
            return false;
        };
        let payloads_ok = decoded.iter().all(|e| match e.payload() {
            Some(p) => herald::core::verify::check_payload(e.header(), p).is_ok(),
            None => true,
        });
        let refs: Vec<&DecodedEvent> = decoded.iter().collect();
        let seal = Seal {
            note: note.as_bytes(),
            proof: &[],
        };
        payloads_ok
            && check_sealed_run(
                &cluster,
                AUTHOR,
                &key.verifying_key(),
                &Frontier::new(),
                &refs,
                seal,
            )
            .is_ok()
    };
    let spec_accepts = |run: &[Vec<u8>]| -> bool {
        spec_hashes(run)
            .is_ok_and(|h| spec::merkle_root(&h.iter().map(spec::leaf).collect::<Vec<_>>()) == root)
    };
    assert!(herald_accepts(&run) && spec_accepts(&run));
    let target = 2;
    for i in 0..run[target].len() {
        for mask in [0x01u8, 0x80] {
            let mut changed = run.clone();
            changed[target][i] ^= mask;
            let decodes = (
                DecodedEvent::decode(changed[target].clone()).is_ok(),
                spec::decode_sealed(&changed[target]).is_ok(),
            );
            assert_eq!(
                decodes.0, decodes.1,
                "byte {i} ^ {mask:#04x}: decoders disagree"
            );
            assert!(
                !herald_accepts(&changed) && !spec_accepts(&changed),
                "byte {i} ^ {mask:#04x} of a sealed event went unnoticed"
            );
        }
    }
}

mod scalar {
    type U256 = [u64; 4];
    const L: U256 = [
        0x5812631a5cf5d3ed,
        0x14def9dea2f79cd6,
        0x0000000000000000,
        0x1000000000000000,
    ];
    const P: U256 = [
        0xffffffffffffffed,
        0xffffffffffffffff,
        0xffffffffffffffff,
        0x7fffffffffffffff,
    ];

    /// RFC 8032 clamping of the first half of SHA-512(seed).
    pub fn clamp(mut b: [u8; 32]) -> [u8; 32] {
        b[0] &= 0b1111_1000;
        b[31] &= 0b0111_1111;
        b[31] |= 0b0100_0000;
        b
    }

    fn from_le(b: &[u8]) -> Vec<u64> {
        b.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn to_le(x: &U256) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in x.iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    fn geq(a: &U256, b: &U256) -> bool {
        for i in (0..4).rev() {
            if a[i] != b[i] {
                return a[i] > b[i];
            }
        }
        true
    }

    fn sub(a: &U256, b: &U256) -> U256 {
        let mut out = [0u64; 4];
        let mut borrow = 0u64;
        for i in 0..4 {
            let (d, b1) = a[i].overflowing_sub(b[i]);
            let (d, b2) = d.overflowing_sub(borrow);
            out[i] = d;
            borrow = (b1 || b2) as u64;
        }
        out
    }

    /// `limbs` (little-endian, any length) mod l, bit by bit.
    fn reduce(limbs: &[u64]) -> U256 {
        let mut acc: U256 = [0; 4];
        for limb in limbs.iter().rev() {
            for bit in (0..64).rev() {
                // acc < l < 2^253, so 2·acc + 1 fits.
                let mut shifted = [0u64; 4];
                for i in (0..4).rev() {
                    shifted[i] = (acc[i] << 1) | if i > 0 { acc[i - 1] >> 63 } else { 0 };
                }
                shifted[0] |= (limb >> bit) & 1;
                acc = if geq(&shifted, &L) {
                    sub(&shifted, &L)
                } else {
                    shifted
                };
            }
        }
        acc
    }

    /// A 64-byte little-endian integer (a SHA-512 output) mod l.
    pub fn reduce512(bytes: &[u8; 64]) -> [u8; 32] {
        to_le(&reduce(&from_le(bytes)))
    }

    /// (k·a + r) mod l for 32-byte little-endian integers.
    pub fn mul_add(k: &[u8; 32], a: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
        let (k, a, r) = (from_le(k), from_le(a), from_le(r));
        let mut product = [0u64; 9];
        for i in 0..4 {
            let mut carry = 0u128;
            for j in 0..4 {
                let t = product[i + j] as u128 + (k[i] as u128) * (a[j] as u128) + carry;
                product[i + j] = t as u64;
                carry = t >> 64;
            }
            let mut idx = i + 4;
            while carry > 0 {
                let t = product[idx] as u128 + carry;
                product[idx] = t as u64;
                carry = t >> 64;
                idx += 1;
            }
        }
        let mut carry = 0u128;
        for i in 0..9 {
            let t = product[i] as u128 + if i < 4 { r[i] as u128 } else { 0 } + carry;
            product[i] = t as u64;
            carry = t >> 64;
        }
        to_le(&reduce(&product))
    }

    /// Encoding of (-x, -y) given the encoding of (x, y): y' = p - y and the
    /// sign bit of x flipped (x is never 0 for the points used here).
    pub fn negate_point_encoding(enc: &[u8; 32]) -> [u8; 32] {
        let sign = enc[31] >> 7;
        let mut y = [0u8; 32];
        y.copy_from_slice(enc);
        y[31] &= 0x7f;
        let y: U256 = from_le(&y).try_into().unwrap();
        let mut out = to_le(&sub(&P, &y));
        out[31] |= (sign ^ 1) << 7;
        out
    }
}

/// An independent reading of docs/FORMAT.md. Only `sha2`, `ed25519-dalek`,
/// `curve25519-dalek` (for section 7's point arithmetic) and
/// `chacha20poly1305`; nothing from herald.
mod spec {
    use super::*;

    // Limits (FORMAT.md, "Limits").
    pub const FORMAT_VERSION: u8 = 1;
    pub const FORMAT_VERSION_SEALED: u8 = 2;
    pub const SERVICE_NAME_BYTES_MAX: usize = 63;
    pub const EVENT_TYPE_BYTES_MAX: usize = 128;
    pub const META_ENTRIES_MAX: usize = 32;
    pub const META_KEY_BYTES_MAX: usize = 64;
    pub const META_VALUE_BYTES_MAX: usize = 1024;
    pub const PAYLOAD_BYTES_MAX: usize = 1_048_592;
    pub const HEADER_BYTES_MAX: usize = 49_152;
    pub const ENVELOPE_BYTES_MAX: usize = 1_097_872;
    pub const CERT_BYTES_MAX: usize = 16_384;

    // Domain tags (FORMAT.md, "Domain tags"), each ending in one NUL byte.
    pub const EVENT_HASH_TAG: &[u8] = b"herald/v1/event-hash\0";
    pub const SIGNATURE_TAG: &[u8] = b"herald/v1/event-signature\0";
    pub const AAD_TAG: &[u8] = b"herald/v1/payload-aad\0";
    pub const CHANNEL_KEY_ID_TAG: &[u8] = b"herald/v1/channel-key-id\0";

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Encryption {
        Plain,
        XChaCha20Poly1305 { key_id: [u8; 16], nonce: [u8; 24] },
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Header {
        pub version: u8,
        pub id: [u8; 16],
        pub author: String,
        pub seq: u64,
        pub prev: [u8; 32],
        pub timestamp_us: u64,
        pub event_type: String,
        pub schema_version: u32,
        pub meta: Vec<(String, String)>,
        pub encryption: Encryption,
        pub payload_hash: [u8; 32],
        pub payload_len: u32,
        pub signature_scope: u32,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Envelope {
        pub header: Vec<u8>,
        pub signature: [u8; 64],
        pub payload: Option<Vec<u8>>,
    }

    // -- encoding ---------------------------------------------------------

    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }

    pub fn encode_header(h: &Header) -> Vec<u8> {
        let mut out = vec![h.version];
        out.extend_from_slice(&h.id);
        string(&mut out, &h.author);
        varint(&mut out, h.seq);
        out.extend_from_slice(&h.prev);
        varint(&mut out, h.timestamp_us);
        string(&mut out, &h.event_type);
        varint(&mut out, h.schema_version as u64);
        varint(&mut out, h.meta.len() as u64);
        for (k, v) in &h.meta {
            string(&mut out, k);
            string(&mut out, v);
        }
        match &h.encryption {
            Encryption::Plain => varint(&mut out, 0),
            Encryption::XChaCha20Poly1305 { key_id, nonce } => {
                varint(&mut out, 1);
                out.extend_from_slice(key_id);
                out.extend_from_slice(nonce);
            }
        }
        out.extend_from_slice(&h.payload_hash);
        varint(&mut out, h.payload_len as u64);
        varint(&mut out, h.signature_scope as u64);
        out
    }

    pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, e.header.len() as u64);
        out.extend_from_slice(&e.header);
        varint(&mut out, 64);
        out.extend_from_slice(&e.signature);
        match &e.payload {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                varint(&mut out, p.len() as u64);
                out.extend_from_slice(p);
            }
        }
        out
    }

    // -- decoding ---------------------------------------------------------

    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn byte(&mut self) -> Result<u8, String> {
            let b = *self.buf.get(self.pos).ok_or("unexpected end")?;
            self.pos += 1;
            Ok(b)
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.buf.len() - self.pos < n {
                return Err("unexpected end".into());
            }
            let s = &self.buf[self.pos..self.pos + n];
            self.pos += n;
            Ok(s)
        }

        fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
            Ok(self.take(N)?.try_into().unwrap())
        }

        /// Unsigned LEB128 of at most `bits` bits, minimal encoding only.
        fn varint(&mut self, bits: u32) -> Result<u64, String> {
            let max_bytes = bits.div_ceil(7) as usize;
            let mut value: u128 = 0;
            for i in 0..max_bytes {
                let b = self.byte()?;
                value |= ((b & 0x7f) as u128) << (7 * i);
                if b & 0x80 == 0 {
                    if i > 0 && b == 0 {
                        return Err("non-minimal varint".into());
                    }
                    if value >> bits != 0 {
                        return Err("varint overflows".into());
                    }
                    return Ok(value as u64);
                }
            }
            Err("varint too long".into())
        }

        fn len(&mut self) -> Result<usize, String> {
            Ok(self.varint(64)? as usize)
        }

        fn bytes(&mut self) -> Result<&'a [u8], String> {
            let n = self.len()?;
            self.take(n)
        }

        fn string(&mut self) -> Result<String, String> {
            let b = self.bytes()?;
            String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8".into())
        }

        fn end(&self) -> Result<(), String> {
            if self.pos != self.buf.len() {
                return Err(format!("{} trailing bytes", self.buf.len() - self.pos));
            }
            Ok(())
        }
    }

    pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope, String> {
        if bytes.len() > ENVELOPE_BYTES_MAX {
            return Err("envelope too large".into());
        }
        let mut r = Reader { buf: bytes, pos: 0 };
        let header = r.bytes()?.to_vec();
        let signature: [u8; 64] = r
            .bytes()?
            .try_into()
            .map_err(|_| "signature is not 64 bytes".to_string())?;
        let payload = match r.byte()? {
            0 => None,
            1 => Some(r.bytes()?.to_vec()),
            t => return Err(format!("option tag {t}")),
        };
        r.end()?;
        Ok(Envelope {
            header,
            signature,
            payload,
        })
    }

    pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() > HEADER_BYTES_MAX {
            return Err("header too large".into());
        }
        let mut r = Reader { buf: bytes, pos: 0 };
        let version = r.byte()?;
        if version != FORMAT_VERSION && version != FORMAT_VERSION_SEALED {
            return Err(format!("version {version}"));
        }
        let id = r.array::<16>()?;
        let author = r.string()?;
        let seq = r.varint(64)?;
        let prev = r.array::<32>()?;
        let timestamp_us = r.varint(64)?;
        let event_type = r.string()?;
        let schema_version = r.varint(32)? as u32;
        let n = r.len()?;
        let mut meta = Vec::new();
        for _ in 0..n {
            let k = r.string()?;
            let v = r.string()?;
            meta.push((k, v));
        }
        let encryption = match r.varint(32)? {
            0 => Encryption::Plain,
            1 => Encryption::XChaCha20Poly1305 {
                key_id: r.array::<16>()?,
                nonce: r.array::<24>()?,
            },
            v => return Err(format!("encryption variant {v}")),
        };
        let payload_hash = r.array::<32>()?;
        let payload_len = r.varint(32)? as u32;
        // Section 3: `Event` (0) with version 1, `Checkpoint` (1) with 2.
        let signature_scope = match r.varint(32)? {
            0 if version == FORMAT_VERSION => 0,
            1 if version == FORMAT_VERSION_SEALED => 1,
            v => return Err(format!("signature scope variant {v} in version {version}")),
        };
        r.end()?;
        let h = Header {
            version,
            id,
            author,
            seq,
            prev,
            timestamp_us,
            event_type,
            schema_version,
            meta,
            encryption,
            payload_hash,
            payload_len,
            signature_scope,
        };
        check_fields(&h)?;
        Ok(h)
    }

    fn check_fields(h: &Header) -> Result<(), String> {
        if h.id[6] >> 4 != 7 || h.id[8] >> 6 != 0b10 {
            return Err("id is not a UUID v7".into());
        }
        if h.seq > (1u64 << 63) - 2 || h.timestamp_us > (1u64 << 63) - 1 {
            return Err("seq or timestamp over the limit".into());
        }
        let a = h.author.as_bytes();
        let label = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        if a.is_empty()
            || a.len() > SERVICE_NAME_BYTES_MAX
            || !a.iter().all(label)
            || a[0] == b'-'
            || a[a.len() - 1] == b'-'
        {
            return Err("author".into());
        }
        let t = h.event_type.as_bytes();
        if t.is_empty()
            || t.len() > EVENT_TYPE_BYTES_MAX
            || !t.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err("event_type".into());
        }
        if h.meta.len() > META_ENTRIES_MAX {
            return Err("meta entries".into());
        }
        for (i, (k, v)) in h.meta.iter().enumerate() {
            if k.is_empty() || k.len() > META_KEY_BYTES_MAX || v.len() > META_VALUE_BYTES_MAX {
                return Err("meta size".into());
            }
            if i > 0 && h.meta[i - 1].0.as_bytes() >= k.as_bytes() {
                return Err("meta order".into());
            }
        }
        if h.payload_len as usize > PAYLOAD_BYTES_MAX {
            return Err("payload.len".into());
        }
        let reserved = h.event_type.starts_with("herald.");
        if h.encryption == Encryption::Plain && !reserved {
            return Err("plain payload on a non-herald type".into());
        }
        if (h.event_type == "herald.genesis") != (h.seq == 0) {
            return Err("genesis type iff seq 0".into());
        }
        if h.seq == 0
            && (h.prev != [0; 32]
                || h.encryption != Encryption::Plain
                || h.payload_len as usize > CERT_BYTES_MAX)
        {
            return Err("genesis rules".into());
        }
        Ok(())
    }

    /// A format-2 envelope (section 16.1): after the `00` marker, the header
    /// bytes and the payload option.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Sealed {
        pub header: Vec<u8>,
        pub payload: Option<Vec<u8>>,
    }

    /// Section 16.1 and 5: a format-2 event, decoded and checked.
    pub fn decode_sealed(bytes: &[u8]) -> Result<(Sealed, Header), String> {
        if bytes.len() > ENVELOPE_BYTES_MAX {
            return Err("envelope too large".into());
        }
        let Some((0, rest)) = bytes.split_first() else {
            return Err("not a sealed envelope".into());
        };
        let mut r = Reader { buf: rest, pos: 0 };
        let header = r.bytes()?.to_vec();
        let payload = match r.byte()? {
            0 => None,
            1 => Some(r.bytes()?.to_vec()),
            t => return Err(format!("option tag {t}")),
        };
        r.end()?;
        let h = parse_header(&header)?;
        if h.version != FORMAT_VERSION_SEALED {
            return Err("a format-1 header in a sealed envelope".into());
        }
        if payload
            .as_ref()
            .is_some_and(|p| p.len() > PAYLOAD_BYTES_MAX)
        {
            return Err("payload too large".into());
        }
        Ok((Sealed { header, payload }, h))
    }

    /// Section 15.1: the RFC 6962 root over leaf hashes.
    pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                let k = n.next_power_of_two() / 2;
                let mut h = Sha256::new();
                h.update([0x01]);
                h.update(merkle_root(&leaves[..k]));
                h.update(merkle_root(&leaves[k..]));
                h.finalize().into()
            }
        }
    }

    /// Section 15.1: an event's leaf.
    pub fn leaf(event_hash: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0x00]);
        h.update(event_hash);
        h.finalize().into()
    }

    /// Section 15.3: the size and root of a checkpoint note whose origin is
    /// `origin`, if a signature line by `origin` verifies under `key`.
    pub fn open_checkpoint(
        note: &str,
        origin: &str,
        key: &VerifyingKey,
    ) -> Option<(u64, [u8; 32])> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (text, signatures) = note.split_once("\n\n")?;
        let text = format!("{text}\n");
        let mut lines = text.lines();
        if lines.next()? != origin {
            return None;
        }
        let size: u64 = lines.next()?.parse().ok()?;
        let root: [u8; 32] = b64.decode(lines.next()?).ok()?.try_into().ok()?;
        let signed = signatures.lines().any(|line| {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return false;
            };
            let Some((name, sig)) = rest.split_once(' ') else {
                return false;
            };
            let Ok(raw) = b64.decode(sig) else {
                return false;
            };
            name == origin
                && raw.len() == 68
                && key
                    .verify(
                        text.as_bytes(),
                        &Signature::from_slice(&raw[4..]).expect("64 bytes"),
                    )
                    .is_ok()
        });
        signed.then_some((size, root))
    }

    /// Everything a decoder checks before any signature or chain check.
    pub fn decode(bytes: &[u8]) -> Result<(Envelope, Header), String> {
        let env = parse_envelope(bytes)?;
        let header = parse_header(&env.header)?;
        if header.version != FORMAT_VERSION {
            return Err("a format-2 header in a signed envelope".into());
        }
        if let Some(p) = &env.payload
            && p.len() > PAYLOAD_BYTES_MAX
        {
            return Err("payload too large".into());
        }
        Ok((env, header))
    }

    // -- cryptography -----------------------------------------------------

    pub fn event_hash(header_bytes: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(EVENT_HASH_TAG);
        h.update(header_bytes);
        h.finalize().into()
    }

    pub fn signing_message(hash: &[u8; 32]) -> Vec<u8> {
        [SIGNATURE_TAG, hash.as_slice()].concat()
    }

    pub fn channel_key_id(key: &[u8; 32]) -> [u8; 16] {
        let d: [u8; 32] = Sha256::new()
            .chain_update(CHANNEL_KEY_ID_TAG)
            .chain_update(key)
            .finalize()
            .into();
        d[..16].try_into().unwrap()
    }

    pub fn check_payload(h: &Header, payload: &[u8]) -> Result<(), String> {
        if payload.len() != h.payload_len as usize {
            return Err("payload length".into());
        }
        let d: [u8; 32] = Sha256::digest(payload).into();
        if d != h.payload_hash {
            return Err("payload hash".into());
        }
        Ok(())
    }

    /// AAD = tag ‖ author ‖ seq ‖ prev ‖ id ‖ event_type ‖ key_id, with the
    /// header's encodings (strings length-prefixed, seq a varint).
    pub fn associated_data(h: &Header) -> Vec<u8> {
        let Encryption::XChaCha20Poly1305 { key_id, .. } = &h.encryption else {
            panic!("plain payloads have no AAD");
        };
        let mut out = AAD_TAG.to_vec();
        string(&mut out, &h.author);
        varint(&mut out, h.seq);
        out.extend_from_slice(&h.prev);
        out.extend_from_slice(&h.id);
        string(&mut out, &h.event_type);
        out.extend_from_slice(key_id);
        out
    }

    pub fn decrypt(h: &Header, ciphertext: &[u8], key: &[u8; 32]) -> Option<Vec<u8>> {
        let Encryption::XChaCha20Poly1305 { key_id, nonce } = &h.encryption else {
            return Some(ciphertext.to_vec());
        };
        if *key_id != channel_key_id(key) {
            return None;
        }
        let cipher = XChaCha20Poly1305::new(key.into());
        cipher
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad: &associated_data(h),
                },
            )
            .ok()
    }

    /// Prints the header as an annotated hex table (offset, bytes, field).
    pub fn annotate_header(bytes: &[u8]) {
        let mut r = Reader { buf: bytes, pos: 0 };
        let row = |r: &mut Reader<'_>, start: usize, what: &str| {
            println!(
                "| {start:>3} | `{}` | {what} |",
                hex::encode(&r.buf[start..r.pos])
            );
        };
        let mut s = r.pos;
        r.byte().unwrap();
        row(&mut r, s, "version");
        s = r.pos;
        r.array::<16>().unwrap();
        row(&mut r, s, "id");
        s = r.pos;
        r.len().unwrap();
        row(&mut r, s, "author length");
        s = r.pos;
        r.take(AUTHOR.len()).unwrap();
        row(&mut r, s, "author");
        s = r.pos;
        r.varint(64).unwrap();
        row(&mut r, s, "seq");
        s = r.pos;
        r.array::<32>().unwrap();
        row(&mut r, s, "prev");
        s = r.pos;
        r.varint(64).unwrap();
        row(&mut r, s, "timestamp_us");
        s = r.pos;
        let n = r.len().unwrap();
        row(&mut r, s, "event_type length");
        s = r.pos;
        r.take(n).unwrap();
        row(&mut r, s, "event_type");
        s = r.pos;
        r.varint(32).unwrap();
        row(&mut r, s, "schema_version");
        s = r.pos;
        let m = r.len().unwrap();
        row(&mut r, s, "meta count");
        for _ in 0..m {
            for what in ["meta key", "meta value"] {
                s = r.pos;
                let n = r.len().unwrap();
                row(&mut r, s, &format!("{what} length"));
                s = r.pos;
                r.take(n).unwrap();
                row(&mut r, s, what);
            }
        }
        s = r.pos;
        r.varint(32).unwrap();
        row(&mut r, s, "payload.encryption variant");
        s = r.pos;
        r.array::<16>().unwrap();
        row(&mut r, s, "key_id");
        s = r.pos;
        r.array::<24>().unwrap();
        row(&mut r, s, "nonce");
        s = r.pos;
        r.array::<32>().unwrap();
        row(&mut r, s, "payload.hash");
        s = r.pos;
        r.varint(32).unwrap();
        row(&mut r, s, "payload.len");
        s = r.pos;
        r.varint(32).unwrap();
        row(&mut r, s, "signature_scope");
        r.end().unwrap();
    }

    #[allow(dead_code)]
    pub fn verifying_key(seed: &[u8; 32]) -> VerifyingKey {
        SigningKey::from_bytes(seed).verifying_key()
    }

    // -- signatures (FORMAT.md section 7, "Verification rule") -------------

    /// The one rule, step by step as the document states it. Point decoding
    /// and arithmetic come from curve25519-dalek, as the document says.
    pub fn verify_cofactored(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        use curve25519_dalek::traits::IsIdentity;
        use sha2::Sha512;
        // 1. S < l.
        let s_bytes: [u8; 32] = signature[32..].try_into().unwrap();
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        // 2. R and A decode.
        let r_bytes: [u8; 32] = signature[..32].try_into().unwrap();
        let (Some(r), Some(a)) = (
            CompressedEdwardsY(r_bytes).decompress(),
            CompressedEdwardsY(*key).decompress(),
        ) else {
            return false;
        };
        // 3. A not of small order.
        if a.is_small_order() {
            return false;
        }
        // 4. [8]([S]B − R − [k]A) is the identity, k over the bytes received.
        let hram: [u8; 64] = Sha512::new()
            .chain_update(r_bytes)
            .chain_update(key)
            .chain_update(message)
            .finalize()
            .into();
        let k = Scalar::from_bytes_mod_order_wide(&hram);
        let b = curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
        (s * b - r - k * a).mul_by_cofactor().is_identity()
    }

    // -- the export file (FORMAT.md section 10) ----------------------------

    pub const EXPORT_END_TAG: &[u8] = b"herald/v1/export-end\0";
    pub const MAGIC: &[u8; 8] = b"HERALDX1";
    pub const RECORD_BYTES_MAX: usize = 2_195_808;
    pub const EXPORT_FEEDS_MAX: u64 = 100_000;

    pub enum Record {
        Begin {
            exporter: String,
            created_us: u64,
        },
        Event(Vec<u8>),
        Fork,
        End {
            /// `postcard(ExportEndBody)`: the bytes between the variant index
            /// and the signature, as found (canonical, so as signed).
            body: Vec<u8>,
            exporter: String,
            created_us: u64,
            /// `(feed, events, head_seq, head_hash)`.
            feeds: Vec<(String, u64, u64, [u8; 32])>,
            forks: u64,
            signature: [u8; 64],
        },
    }

    /// One record body, parsed strictly (minimal varints, exact lengths, no
    /// trailing bytes): the canonical-form rule.
    pub fn parse_record(body: &[u8]) -> Result<Record, String> {
        let mut r = Reader { buf: body, pos: 0 };
        let record = match r.varint(32)? {
            0 => Record::Begin {
                exporter: r.string()?,
                created_us: r.varint(64)?,
            },
            1 => Record::Event(r.bytes()?.to_vec()),
            2 => {
                r.bytes()?;
                r.bytes()?;
                Record::Fork
            }
            3 => {
                let start = r.pos;
                let exporter = r.string()?;
                let created_us = r.varint(64)?;
                let count = r.varint(64)?;
                if count > EXPORT_FEEDS_MAX {
                    return Err("too many feeds".into());
                }
                let mut feeds = Vec::new();
                for _ in 0..count {
                    feeds.push((r.string()?, r.varint(64)?, r.varint(64)?, r.array::<32>()?));
                }
                let forks = r.varint(64)?;
                let body = body[start..r.pos].to_vec();
                let signature: [u8; 64] = r
                    .bytes()?
                    .try_into()
                    .map_err(|_| "signature is not 64 bytes".to_string())?;
                Record::End {
                    body,
                    exporter,
                    created_us,
                    feeds,
                    forks,
                    signature,
                }
            }
            v => return Err(format!("unknown record variant {v}")),
        };
        r.end()?;
        Ok(record)
    }

    /// Section 10's file-level checks, read literally: magic, framing, every
    /// record canonical, one `Begin` first, the `End` last with the
    /// `Begin`'s exporter and time, the number of `Fork` records, a
    /// signature under section 7's rule by `exporter_key`, and every feed's
    /// head as listed (last event found per author; events are decoded and
    /// hashed but their chain and signatures are section 9's business).
    pub fn check_export(file: &[u8], exporter_key: &[u8; 32]) -> Result<(), String> {
        if file.len() < 8 || &file[..8] != MAGIC {
            return Err("magic".into());
        }
        let mut at = 8;
        let mut records = Vec::new();
        while at < file.len() {
            let prefix: [u8; 4] = file
                .get(at..at + 4)
                .ok_or("truncated length")?
                .try_into()
                .unwrap();
            let len = u32::from_le_bytes(prefix) as usize;
            if len > RECORD_BYTES_MAX {
                return Err("record too large".into());
            }
            let body = file.get(at + 4..at + 4 + len).ok_or("truncated record")?;
            records.push(parse_record(body)?);
            at += 4 + len;
        }
        let Some(Record::Begin {
            exporter: begin_exporter,
            created_us: begin_created_us,
        }) = records.first()
        else {
            return Err("no begin record first".into());
        };
        let Some(Record::End {
            body,
            exporter,
            created_us,
            feeds,
            forks,
            signature,
        }) = records.last()
        else {
            return Err("no end record last".into());
        };
        if (exporter, created_us) != (begin_exporter, begin_created_us) {
            return Err("begin and end records disagree".into());
        }
        let mut heads = std::collections::BTreeMap::new();
        let mut fork_records = 0;
        for record in &records[1..records.len() - 1] {
            match record {
                Record::Event(envelope) => {
                    let (env, header) = decode(envelope)?;
                    heads.insert(header.author, (header.seq, event_hash(&env.header)));
                }
                Record::Fork => fork_records += 1,
                _ => return Err("a begin or end record in the middle".into()),
            }
        }
        if *forks != fork_records {
            return Err("fork count".into());
        }
        let listed: std::collections::BTreeMap<String, (u64, [u8; 32])> = feeds
            .iter()
            .map(|(f, _, seq, hash)| (f.clone(), (*seq, *hash)))
            .collect();
        if listed != heads {
            return Err("heads".into());
        }
        let message = [EXPORT_END_TAG, body].concat();
        if !verify_cofactored(exporter_key, &message, signature) {
            return Err("end record signature".into());
        }
        Ok(())
    }
}
