//! The event format's core promises, property-tested: one canonical encoding,
//! and no single-byte change to an event survives verification.

mod common;

use common::Cluster;
use ed25519_dalek::Signer;
use herald::core::codec::{self, DecodeError};
use herald::core::crypto::ChannelKey;
use herald::core::event::{Encryption, Envelope, EventHeader, PayloadDescriptor, SignatureScope};
use herald::core::limits::{FORMAT_VERSION_SEALED, FORMAT_VERSION_SIGNED};
use herald::core::verify::{
    Check, DecodedEvent, Draft, Entropy, FeedVerifier, Sealer, VerifiedEvent,
    batch_signatures_valid, check_event_signatures, open_payload,
};
use herald::identity::{NodeIdentity, TrustAnchor};
use proptest::prelude::*;

/// A feed with a genesis and a few sealed events, plus what verifies it.
struct Fixture {
    _cluster: Cluster,
    trust: TrustAnchor,
    identity: NodeIdentity,
    channel: ChannelKey,
    genesis: VerifiedEvent,
    events: Vec<VerifiedEvent>,
}

const NOW_US: u64 = 1_790_000_000_000_000;

fn entropy(i: u8) -> Entropy {
    let mut id = [i; 16];
    id[6] = 0x70 | (i & 0x0f); // UUID version 7
    id[8] = 0x80; // RFC 9562 variant
    Entropy { id, nonce: [i; 24] }
}

fn fixture() -> Fixture {
    let cluster = Cluster::new(&["fundraising"]);
    let config = cluster.config("fundraising");
    let trust = TrustAnchor::load(&config.ca, None).unwrap();
    let identity = NodeIdentity::load(
        "fundraising",
        &config.key,
        &config.cert,
        &trust,
        herald::clock::now_us(),
    )
    .unwrap();
    let channel = ChannelKey::new("default", [0x42; 32]);
    let now = herald::clock::now_us();
    let (mut sealer, genesis) = Sealer::new_feed("fundraising", identity.signing_key.clone())
        .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
        .start_feed(&identity.cert.der, entropy(0).id, now);
    let drafts = (1..=3u8)
        .map(|i| {
            let meta = vec![("correlation_id".to_string(), format!("c-{i}"))];
            let draft = Draft::new(
                "donation.received",
                1,
                meta,
                format!(r#"{{"n":{i}}}"#).into_bytes(),
            )
            .unwrap();
            (draft, &channel, entropy(i))
        })
        .collect();
    let events = sealer.seal_batch(drafts, now);
    Fixture {
        _cluster: cluster,
        trust,
        identity,
        channel,
        genesis,
        events,
    }
}

fn verifier(f: &Fixture) -> FeedVerifier {
    let genesis = DecodedEvent::decode(f.genesis.bytes().to_vec()).unwrap();
    FeedVerifier::genesis(&f.trust, genesis, None).unwrap().0
}

/// Verifies `bytes` as the event after genesis; `Err` names the failed check.
fn verify_first(f: &Fixture, bytes: Vec<u8>) -> Result<VerifiedEvent, Check> {
    let mut v = verifier(f);
    let decoded = DecodedEvent::decode(bytes).map_err(|_| Check::Decode)?;
    let verdict = v.check_signature(&decoded);
    v.verify_next(decoded, verdict).map_err(|r| r.check)
}

#[test]
fn sealed_events_verify_and_decrypt() {
    let f = fixture();
    let mut v = verifier(&f);
    for event in &f.events {
        let decoded = DecodedEvent::decode(event.bytes().to_vec()).unwrap();
        let verdict = v.check_signature(&decoded);
        let verified = v.verify_next(decoded, verdict).unwrap();
        let plain = open_payload(&verified, std::slice::from_ref(&f.channel)).unwrap();
        assert!(plain.starts_with(br#"{"n":"#));
    }
    // A wrong key is named as such; it never yields wrong plaintext.
    let wrong = ChannelKey::new("default", [0x43; 32]);
    assert!(open_payload(&f.events[0], &[wrong]).is_err());
}

#[test]
fn every_single_byte_change_is_rejected() {
    let f = fixture();
    let original = f.events[0].bytes().to_vec();
    assert!(verify_first(&f, original.clone()).is_ok());
    for position in 0..original.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut mutated = original.clone();
            mutated[position] ^= flip;
            assert!(
                verify_first(&f, mutated).is_err(),
                "flipping byte {position} with {flip:#x} went unnoticed"
            );
        }
    }
}

#[test]
fn order_gaps_duplicates_and_foreign_authors_are_rejected() {
    let f = fixture();
    let bytes = |i: usize| f.events[i].bytes().to_vec();
    assert_eq!(
        verify_first(&f, bytes(1)).err(),
        Some(Check::Sequence),
        "gap"
    );
    let mut v = verifier(&f);
    let first = DecodedEvent::decode(bytes(0)).unwrap();
    let verdict = v.check_signature(&first);
    v.verify_next(first.clone(), verdict).unwrap();
    assert_eq!(
        v.verify_next(first, verdict).err().map(|r| r.check),
        Some(Check::Duplicate)
    );
    // The genesis of the feed cannot be replayed as a later event either.
    let genesis = DecodedEvent::decode(f.genesis.bytes().to_vec()).unwrap();
    let verdict = v.check_signature(&genesis);
    assert!(v.verify_next(genesis, verdict).is_err());
}

#[test]
fn ciphertext_moved_to_another_event_does_not_decrypt() {
    let f = fixture();
    // Re-seal event 2's header around event 1's ciphertext: the AAD binds the
    // ciphertext to seq, prev, id and type, so the author's own key cannot
    // make it readable elsewhere.
    let (env1, _) = codec::decode_envelope(f.events[0].bytes()).unwrap();
    let (env2, mut h2) = codec::decode_envelope(f.events[1].bytes()).unwrap();
    let payload = env1.payload.unwrap();
    h2.payload = PayloadDescriptor {
        encryption: match codec::decode_envelope(f.events[0].bytes())
            .unwrap()
            .1
            .payload
            .encryption
        {
            e @ Encryption::XChaCha20Poly1305 { .. } => e,
            Encryption::Plain => unreachable!(),
        },
        hash: herald::core::crypto::sha256(&[&payload]),
        len: payload.len() as u32,
    };
    let header = codec::encode_header(&h2);
    let hash = codec::event_hash(&header);
    let signature = f
        .identity
        .signing_key
        .sign(&codec::signing_message(&hash))
        .to_bytes();
    let moved = codec::encode_envelope(&herald::core::event::Envelope {
        header,
        signature: Some(signature),
        payload: Some(payload),
    });
    let _ = env2;
    let mut v = verifier(&f);
    let e1 = DecodedEvent::decode(f.events[0].bytes().to_vec()).unwrap();
    let verdict = v.check_signature(&e1);
    v.verify_next(e1, verdict).unwrap();
    let decoded = DecodedEvent::decode(moved).unwrap();
    let verdict = v.check_signature(&decoded);
    let verified = v
        .verify_next(decoded, verdict)
        .expect("validly signed by the author");
    assert!(open_payload(&verified, std::slice::from_ref(&f.channel)).is_err());
}

#[test]
fn batch_verification_names_the_one_bad_signature() {
    let f = fixture();
    let key = f.identity.signing_key.clone();
    let vk = key.verifying_key();
    let mut items: Vec<_> = (0..600u32)
        .map(|i| {
            let hash = herald::core::crypto::sha256(&[&i.to_le_bytes()]);
            (vk, hash, key.sign(&codec::signing_message(&hash)))
        })
        .collect();
    items[437].1[0] ^= 1;
    let results = batch_signatures_valid(&items);
    let bad: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(bad, vec![437]);
}

#[test]
fn ids_must_be_uuid_v7_and_sequence_numbers_bounded() {
    let f = fixture();
    let (_, header) = codec::decode_envelope(f.events[0].bytes()).unwrap();
    let mut h = header.clone();
    h.id[6] = 0x40; // version 4
    assert!(codec::decode_header(&codec::encode_header(&h)).is_err());
    let mut h = header;
    h.seq = herald::core::limits::SEQ_MAX + 1;
    assert!(codec::decode_header(&codec::encode_header(&h)).is_err());
}

#[test]
fn trailing_bytes_and_unknown_versions_are_refused() {
    let f = fixture();
    let mut bytes = f.events[0].bytes().to_vec();
    bytes.push(0);
    assert!(matches!(
        DecodedEvent::decode(bytes).err(),
        Some(DecodeError::TrailingBytes { .. })
    ));
    let (_, header) = codec::decode_envelope(f.events[0].bytes()).unwrap();
    let mut header_bytes = codec::encode_header(&header);
    header_bytes[0] = 3;
    assert_eq!(
        codec::decode_header(&header_bytes).err(),
        Some(DecodeError::Version { found: 3 })
    );
    let oversized = vec![0u8; herald::core::limits::ENVELOPE_BYTES_MAX + 1];
    assert!(matches!(
        DecodedEvent::decode(oversized).err(),
        Some(DecodeError::EnvelopeTooLarge { .. })
    ));
}

/// `n` as a varint one byte longer than it needs to be (postcard decodes
/// it to the same number).
fn overlong_varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(byte | 0x80);
        if n == 0 {
            break;
        }
    }
    out.push(0);
    out
}

/// An envelope written by hand, each length prefix minimal or overlong.
fn hand_encoded(
    header: &[u8],
    signature: Option<&[u8; 64]>,
    payload: &[u8],
    overlong: [bool; 2],
) -> Vec<u8> {
    let length = |n: usize, long: bool| {
        if long {
            overlong_varint(n)
        } else {
            let mut v = overlong_varint(n);
            v.pop();
            if let Some(last) = v.last_mut() {
                *last &= 0x7f;
            }
            v
        }
    };
    let mut out = Vec::new();
    if signature.is_none() {
        out.push(codec::SEALED_ENVELOPE_MARKER);
    }
    out.extend(length(header.len(), overlong[0]));
    out.extend_from_slice(header);
    if let Some(signature) = signature {
        out.push(64);
        out.extend_from_slice(signature);
    }
    out.push(1); // Some(payload)
    out.extend(length(payload.len(), overlong[1]));
    out.extend_from_slice(payload);
    out
}

#[test]
fn overlong_length_prefixes_are_not_canonical_in_either_form() {
    let f = fixture();
    let signed = f.events[0].bytes();
    let (parts, _) = codec::decode_envelope(signed).unwrap();
    let signature = parts.signature.unwrap();
    let payload = parts.payload.clone().unwrap();
    // Written by hand with minimal prefixes, the bytes are the canonical ones.
    let minimal = hand_encoded(&parts.header, Some(&signature), &payload, [false, false]);
    assert_eq!(
        minimal, signed,
        "the hand encoder writes what the sealer writes"
    );
    for overlong in [[true, false], [false, true], [true, true]] {
        let bytes = hand_encoded(&parts.header, Some(&signature), &payload, overlong);
        assert!(
            matches!(
                DecodedEvent::decode(bytes).err(),
                Some(DecodeError::NotCanonical { what: "envelope" })
            ),
            "signed envelope with overlong prefixes {overlong:?}"
        );
    }
    // The same for a format-2 envelope of the same header's fields.
    let (_, mut header) = codec::decode_envelope(signed).unwrap();
    header.version = FORMAT_VERSION_SEALED;
    header.signature_scope = SignatureScope::Checkpoint;
    let header_bytes = codec::encode_header(&header);
    let sealed = hand_encoded(&header_bytes, None, &payload, [false, false]);
    assert!(DecodedEvent::decode(sealed).is_ok());
    for overlong in [[true, false], [false, true], [true, true]] {
        let bytes = hand_encoded(&header_bytes, None, &payload, overlong);
        assert!(
            matches!(
                DecodedEvent::decode(bytes).err(),
                Some(DecodeError::NotCanonical { what: "envelope" })
            ),
            "sealed envelope with overlong prefixes {overlong:?}"
        );
    }
    // An option tag other than 0 or 1 is not an encoding of anything.
    let mut bad_tag = hand_encoded(&header_bytes, None, &payload, [false, false]);
    let tag_at = 1 + 2 + header_bytes.len();
    assert_eq!(bad_tag[tag_at], 1);
    bad_tag[tag_at] = 2;
    assert!(DecodedEvent::decode(bad_tag).is_err());
}

fn arb_header() -> impl Strategy<Value = EventHeader> {
    (
        any::<[u8; 16]>(),
        "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        1u64..=herald::core::limits::SEQ_MAX,
        any::<[u8; 32]>(),
        0u64..=herald::core::limits::TIMESTAMP_US_MAX,
        "[a-z]{1,10}\\.[a-z_]{1,20}",
        any::<u32>(),
        proptest::collection::btree_map("[a-z_]{1,12}", "[ -~]{0,40}", 0..6),
        (
            any::<[u8; 16]>(),
            any::<[u8; 24]>(),
            any::<[u8; 32]>(),
            0u32..1_000_000,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                mut id,
                author,
                seq,
                prev,
                ts,
                event_type,
                schema,
                meta,
                (key_id, nonce, hash, len, sealed),
            )| {
                id[6] = 0x70 | (id[6] & 0x0f); // UUID version 7
                id[8] = 0x80 | (id[8] & 0x3f); // RFC 9562 variant
                let (version, signature_scope) = if sealed {
                    (FORMAT_VERSION_SEALED, SignatureScope::Checkpoint)
                } else {
                    (FORMAT_VERSION_SIGNED, SignatureScope::Event)
                };
                EventHeader {
                    version,
                    id,
                    author,
                    seq,
                    prev,
                    timestamp_us: ts,
                    event_type,
                    schema_version: schema,
                    meta: meta.into_iter().collect(),
                    payload: PayloadDescriptor {
                        encryption: Encryption::XChaCha20Poly1305 { key_id, nonce },
                        hash,
                        len,
                    },
                    signature_scope,
                }
            },
        )
}

proptest! {
    #[test]
    fn headers_round_trip_canonically(header in arb_header()) {
        let bytes = codec::encode_header(&header);
        let decoded = codec::decode_header(&bytes).unwrap();
        prop_assert_eq!(&decoded, &header);
        prop_assert_eq!(codec::encode_header(&decoded), bytes);
    }

    #[test]
    fn envelopes_of_both_formats_round_trip_and_a_mismatched_form_is_refused(
        header in arb_header(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let sealed = header.version == FORMAT_VERSION_SEALED;
        let header_bytes = codec::encode_header(&header);
        let envelope = |signature: Option<[u8; 64]>| Envelope {
            header: header_bytes.clone(),
            signature,
            payload: Some(payload.clone()),
        };
        let (right, wrong) = if sealed {
            (envelope(None), envelope(Some([7; 64])))
        } else {
            (envelope(Some([7; 64])), envelope(None))
        };
        let bytes = codec::encode_envelope(&right);
        prop_assert_eq!(codec::is_sealed_envelope(&bytes), sealed);
        // Payload length and hash are not checked by the codec (the
        // verifier checks them against the header).
        let (decoded, decoded_header) = codec::decode_envelope(&bytes).unwrap();
        prop_assert_eq!(&decoded, &right);
        prop_assert_eq!(&decoded_header, &header);
        let mismatched = codec::decode_envelope(&codec::encode_envelope(&wrong));
        prop_assert!(
            matches!(mismatched, Err(DecodeError::Field { field: "envelope", .. })),
            "{:?}", mismatched
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        prop_assert!(codec::decode_envelope(&trailing).is_err());
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DecodedEvent::decode(bytes);
    }

    #[test]
    fn unsorted_metadata_is_not_canonical(header in arb_header()) {
        prop_assume!(header.meta.len() >= 2);
        let mut h = header;
        h.meta.reverse();
        prop_assert!(codec::decode_header(&codec::encode_header(&h)).is_err());
    }
}

#[test]
fn timestamps_never_go_backwards_even_if_the_clock_does() {
    let f = fixture();
    let last = f.events.last().unwrap();
    let mut sealer = Sealer::resume(
        "fundraising",
        f.identity.signing_key.clone(),
        last.header().seq,
        *last.hash(),
        NOW_US,
    )
    .with_format(herald::core::limits::FORMAT_VERSION_SIGNED);
    let draft = Draft::new("donation.received", 1, vec![], b"{}".to_vec()).unwrap();
    let sealed = sealer.seal_batch(vec![(draft, &f.channel, entropy(9))], NOW_US - 5_000_000);
    assert_eq!(sealed[0].header().timestamp_us, NOW_US);
}

#[test]
fn a_verdict_about_another_event_is_refused_and_changes_nothing() {
    let f = fixture();
    let mut v = verifier(&f);
    let decode = |i: usize| DecodedEvent::decode(f.events[i].bytes().to_vec()).unwrap();
    let verdicts = v.check_signatures(&[decode(0), decode(1)]);
    assert!(verdicts.iter().all(|verdict| verdict.is_valid()));
    assert_eq!(verdicts[1].event_hash(), f.events[1].hash());
    // Event 1's valid verdict does not vouch for event 0.
    let rejection = v.verify_next(decode(0), verdicts[1]).unwrap_err();
    assert_eq!(rejection.check, Check::Signature, "{rejection}");
    assert!(
        rejection.found.contains(&hex::encode(f.events[1].hash())),
        "names the event the verdict is about: {rejection}"
    );
    assert_eq!(
        v.next_seq(),
        1,
        "a refused verdict does not advance the feed"
    );
    v.verify_next(decode(0), verdicts[0]).unwrap();
    v.verify_next(decode(1), verdicts[1]).unwrap();
    assert_eq!(v.head_hash(), f.events[1].hash());
}

#[test]
fn a_verdict_under_another_feeds_key_does_not_admit_a_forgery() {
    let cluster = Cluster::new(&["fundraising", "billing"]);
    let trust = TrustAnchor::load(&cluster.config("fundraising").ca, None).unwrap();
    let now = herald::clock::now_us();
    let identity = |node: &str| {
        let config = cluster.config(node);
        NodeIdentity::load(node, &config.key, &config.cert, &trust, now).unwrap()
    };
    let (insider, billing) = (identity("fundraising"), identity("billing"));
    let (_, billing_genesis) = Sealer::new_feed("billing", billing.signing_key.clone())
        .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
        .start_feed(&billing.cert.der, entropy(0).id, now);
    let genesis = |e: &VerifiedEvent| DecodedEvent::decode(e.bytes().to_vec()).unwrap();
    let (mut billing_verifier, _) =
        FeedVerifier::genesis(&trust, genesis(&billing_genesis), None).unwrap();
    let (_, insider_genesis) = Sealer::new_feed("fundraising", insider.signing_key.clone())
        .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
        .start_feed(&insider.cert.der, entropy(1).id, now);
    let (insider_verifier, _) =
        FeedVerifier::genesis(&trust, genesis(&insider_genesis), None).unwrap();
    // The insider writes the next event of billing's feed, signed with its
    // own key: its own verifier truthfully finds the signature valid.
    let mut forger = Sealer::resume(
        "billing",
        insider.signing_key.clone(),
        0,
        *billing_genesis.hash(),
        now,
    )
    .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
    .with_format(herald::core::limits::FORMAT_VERSION_SIGNED);
    let channel = ChannelKey::new("default", [0x42; 32]);
    let draft = Draft::new("invoice.paid", 1, vec![], b"{}".to_vec()).unwrap();
    let forged = forger.seal_batch(vec![(draft, &channel, entropy(2))], now);
    let forged = DecodedEvent::decode(forged[0].bytes().to_vec()).unwrap();
    let insider_key = *insider_verifier.key();
    for verdict in [
        insider_verifier.check_signature(&forged),
        check_event_signatures([(&insider_key, &forged)])[0],
    ] {
        assert!(verdict.is_valid());
        let rejection = billing_verifier
            .verify_next(forged.clone(), verdict)
            .unwrap_err();
        assert_eq!(rejection.check, Check::Signature, "{rejection}");
        assert!(rejection.found.contains("another key"), "{rejection}");
    }
    // Under billing's own key the forgery is what it is: invalid.
    let verdict = billing_verifier.check_signature(&forged);
    assert!(!verdict.is_valid());
    let rejection = billing_verifier.verify_next(forged, verdict).unwrap_err();
    assert_eq!(rejection.check, Check::Signature);
    assert_eq!(billing_verifier.next_seq(), 1);
}
