//! C2SP signed notes, checkpoints, cosignatures and proof text: the spec's own
//! examples, known answers computed independently here, every rejection, and
//! property tests that any single-byte change to a signed checkpoint is caught.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use herald::core::note::*;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

const ROOT: [u8; 32] = [7u8; 32];
const ORIGIN: &str = "herald.example/feed/orders";

fn checkpoint(size: u64) -> Checkpoint {
    Checkpoint::new(ORIGIN, size, ROOT, vec![]).unwrap()
}

fn signed(size: u64) -> SignedCheckpoint {
    sign_checkpoint(&checkpoint(size), ORIGIN, &key(1)).unwrap()
}

fn open(text: &[u8]) -> Result<SignedCheckpoint, NoteError> {
    open_checkpoint(text, ORIGIN, &key(1).verifying_key())
}

/// The signature line of an arbitrary signature, as a note carries it.
fn sig_line(name: &str, raw: &[u8]) -> String {
    format!("\u{2014} {name} {}\n", b64(raw))
}

// ---------------------------------------------------------------------------
// The specs' examples
// ---------------------------------------------------------------------------

const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

#[test]
fn spec_vkey_verifies_spec_note() {
    let vkey = VerifierKey::parse(SPEC_VKEY).unwrap();
    assert_eq!(vkey.name(), "example.com/foo");
    assert_eq!(vkey.sig_type(), SIG_TYPE_ED25519);
    assert_eq!(vkey.key_id(), [0x53, 0x0d, 0x90, 0x3a]);
    assert_eq!(vkey.to_string(), SPEC_VKEY);

    let note = Note::parse(SPEC_NOTE.as_bytes()).unwrap();
    assert_eq!(note.text(), "This is an example message.\n");
    assert_eq!(note.signatures().len(), 1);
    assert_eq!(note.to_text(), SPEC_NOTE);
    assert!(verify_note_signature(
        note.text(),
        &note.signatures()[0],
        vkey.name(),
        vkey.key()
    ));
    // The same signature over another text does not verify.
    assert!(!verify_note_signature(
        "This is an example message!\n",
        &note.signatures()[0],
        vkey.name(),
        vkey.key()
    ));
}

#[test]
fn spec_poem_note_parses_with_empty_lines_in_its_text() {
    let text = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u{e8} subito sera.\n\n\u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
    let note = Note::parse(text.as_bytes()).unwrap();
    assert_eq!(
        note.text(),
        "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u{e8} subito sera.\n"
    );
    assert_eq!(note.signatures()[0].name, "quasimodo.example/salvatore");
    assert_eq!(note.signatures()[0].signature.len(), 64);
    assert_eq!(note.to_text(), text);
}

const SPEC_CHECKPOINT_BODY: &str =
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
const SPEC_COSIGNED: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";

#[test]
fn spec_checkpoint_and_cosignature_examples_parse() {
    let cp = Checkpoint::parse_body(SPEC_CHECKPOINT_BODY).unwrap();
    assert_eq!(cp.origin(), "example.com/behind-the-sofa");
    assert_eq!(cp.size(), 20852163);
    assert_eq!(
        b64(cp.root()),
        "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    );
    assert!(cp.extensions().is_empty());
    assert_eq!(cp.body(), SPEC_CHECKPOINT_BODY);

    let note = Note::parse(SPEC_COSIGNED.as_bytes()).unwrap();
    assert_eq!(note.text(), SPEC_CHECKPOINT_BODY);
    assert_eq!(note.to_text(), SPEC_COSIGNED);
    let [author, witness] = note.signatures() else {
        panic!("two signatures expected");
    };
    assert_eq!(author.signature.len(), 64);
    assert_eq!(witness.name, "witness.example.com/w1");
    assert_eq!(witness.key_id, [0x8d, 0x66, 0xcf, 0x3f]);
    assert_eq!(witness.signature.len(), COSIGNATURE_V1_BYTES);
    // The spec's signed-message example uses this very timestamp.
    assert_eq!(cosignature_timestamp(witness).unwrap(), 1679315147);
}

/// The head of the tlog-proof.md example, verbatim.
const SPEC_PROOF_HEAD: &str = "c2sp.org/tlog-proof@v1
extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ
index 73894
gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=
B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=
EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=
RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=
AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=

";

/// The example's checkpoint, signed for real, with three witnesses.
fn spec_proof_checkpoint() -> SignedCheckpoint {
    let root = STANDARD
        .decode("sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=")
        .unwrap();
    let cp = Checkpoint::new(
        "example.com/fancylog",
        109482,
        root.try_into().unwrap(),
        vec![],
    )
    .unwrap();
    let mut signed = sign_checkpoint(&cp, "example.com/fancylog", &key(9)).unwrap();
    for (i, name) in ["witness1.example", "witness2.example", "witness3.example"]
        .into_iter()
        .enumerate()
    {
        let w = cosign(&cp, name, &key(20 + i as u8), 1_700_000_000 + i as u64).unwrap();
        signed.add_signature(w).unwrap();
    }
    signed
}

#[test]
fn spec_proof_layout_parses_and_round_trips() {
    let signed = spec_proof_checkpoint();
    let text = format!("{SPEC_PROOF_HEAD}{}", signed.to_text());
    let proof = ProofText::parse(text.as_bytes()).unwrap();
    assert_eq!(
        proof.extra().unwrap(),
        STANDARD
            .decode("YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ")
            .unwrap()
    );
    assert_eq!(proof.index(), 73894);
    assert_eq!(proof.proof().len(), 5);
    assert_eq!(
        b64(&proof.proof()[4]),
        "AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk="
    );
    assert_eq!(proof.checkpoint(), signed.to_text().as_bytes());
    assert_eq!(proof.to_text(), text);

    // The embedded checkpoint opens with the log key, and each witness verifies.
    let opened = open_checkpoint(
        proof.checkpoint(),
        "example.com/fancylog",
        &key(9).verifying_key(),
    )
    .unwrap();
    assert_eq!(opened.checkpoint().size(), 109482);
    for i in 0..3u8 {
        let name = format!("witness{}.example", i + 1);
        assert_eq!(
            opened
                .cosignature(&name, &key(20 + i).verifying_key())
                .unwrap(),
            1_700_000_000 + u64::from(i)
        );
    }

    // Built from parts, the same proof serialises to the same text.
    let built = ProofText::new(
        proof.extra().map(<[u8]>::to_vec),
        73894,
        proof.proof().to_vec(),
        signed.to_text().as_bytes(),
    )
    .unwrap();
    assert_eq!(built, proof);
}

#[test]
fn proof_without_extra_or_hashes_round_trips() {
    let signed = signed(1);
    let text = format!("c2sp.org/tlog-proof@v1\nindex 0\n\n{}", signed.to_text());
    let proof = ProofText::parse(text.as_bytes()).unwrap();
    assert_eq!(proof.extra(), None);
    assert_eq!(proof.index(), 0);
    assert!(proof.proof().is_empty());
    assert_eq!(proof.to_text(), text);
}

// ---------------------------------------------------------------------------
// Known answers, computed independently
// ---------------------------------------------------------------------------

#[test]
fn key_ids_are_the_truncated_sha256_of_name_type_and_key() {
    let sk = key(42);
    let public = sk.verifying_key().to_bytes();
    let name = "herald.example/feed/orders";
    for sig_type in [SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1] {
        let mut hasher = Sha256::new();
        hasher.update(name.as_bytes());
        hasher.update([0x0a, sig_type]);
        hasher.update(public);
        let digest = hasher.finalize();
        let expected = [digest[0], digest[1], digest[2], digest[3]];
        assert_eq!(key_id(name, sig_type, &public), expected);
        let vkey = VerifierKey::new(name, sig_type, sk.verifying_key()).unwrap();
        assert_eq!(vkey.key_id(), expected);
        assert_eq!(
            vkey.to_string(),
            format!(
                "{name}+{}+{}",
                hex::encode(expected),
                b64(&[&[sig_type][..], &public].concat())
            )
        );
        assert_eq!(VerifierKey::parse(&vkey.to_string()).unwrap(), vkey);
        // Base64 may contain '+': only the first two separate the parts.
        assert_eq!(vkey.to_string().matches('+').count(), 3, "this key has one");
    }
    // The note signature carries the type 0x01 ID and signs the text as is.
    let text = "hello\n";
    let sig = sign_note(text, name, &sk).unwrap();
    assert_eq!(sig.key_id, key_id(name, 0x01, &public));
    assert_eq!(sig.signature, sk.sign(text.as_bytes()).to_bytes().to_vec());
    assert!(verify_note_signature(text, &sig, name, &sk.verifying_key()));
}

#[test]
fn cosignature_signs_the_spec_message_layout() {
    let sk = key(5);
    let cp = Checkpoint::parse_body(SPEC_CHECKPOINT_BODY).unwrap();
    // Reconstructed here, byte for byte from tlog-cosignature.md.
    let message = "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    let ed = sk.sign(message.as_bytes()).to_bytes();
    let mut id_hasher = Sha256::new();
    id_hasher.update(b"witness.example.com/w1\n\x04");
    id_hasher.update(sk.verifying_key().as_bytes());
    let id = id_hasher.finalize();
    let manual = NoteSignature {
        name: "witness.example.com/w1".into(),
        key_id: [id[0], id[1], id[2], id[3]],
        signature: [&1679315147u64.to_be_bytes()[..], &ed].concat(),
    };
    let ours = cosign(&cp, "witness.example.com/w1", &sk, 1679315147).unwrap();
    assert_eq!(ours, manual, "Ed25519 is deterministic: same bytes");
    assert_eq!(
        verify_cosignature(&cp, &manual, "witness.example.com/w1", &sk.verifying_key()),
        Ok(1679315147)
    );
    // A cosignature is not a note signature over the body, nor the reverse.
    assert!(!verify_note_signature(
        &cp.body(),
        &manual,
        "witness.example.com/w1",
        &sk.verifying_key()
    ));
}

#[test]
fn cosignature_timestamp_bounds() {
    let cp = checkpoint(3);
    let sk = key(6);
    let vk = sk.verifying_key();
    let max = cosign(&cp, "w.example", &sk, COSIGNATURE_TIMESTAMP_MAX).unwrap();
    assert_eq!(
        verify_cosignature(&cp, &max, "w.example", &vk),
        Ok(i64::MAX as u64)
    );
    assert_eq!(
        cosign(&cp, "w.example", &sk, 1 << 63),
        Err(NoteError::CosignatureTimestamp { found: 1 << 63 })
    );
    // A timestamp over the bound is refused before the signature is looked at.
    let mut over = max.clone();
    over.signature[0] |= 0x80;
    assert_eq!(
        verify_cosignature(&cp, &over, "w.example", &vk),
        Err(NoteError::CosignatureTimestamp {
            found: (1 << 63) | (i64::MAX as u64)
        })
    );
    // Changing the timestamp within range breaks the signature.
    let mut shifted = cosign(&cp, "w.example", &sk, 1000).unwrap();
    shifted.signature[7] ^= 1;
    assert!(matches!(
        verify_cosignature(&cp, &shifted, "w.example", &vk),
        Err(NoteError::BadSignature { .. })
    ));
}

#[test]
fn cosignature_rejections() {
    let cp = checkpoint(3);
    let sk = key(6);
    let vk = sk.verifying_key();
    let good = cosign(&cp, "w.example", &sk, 1000).unwrap();
    // Another checkpoint.
    assert!(matches!(
        verify_cosignature(&checkpoint(4), &good, "w.example", &vk),
        Err(NoteError::BadSignature { .. })
    ));
    // Another cosigner's key or name.
    assert!(matches!(
        verify_cosignature(&cp, &good, "w.example", &key(7).verifying_key()),
        Err(NoteError::WrongKey { .. })
    ));
    assert!(matches!(
        verify_cosignature(&cp, &good, "v.example", &vk),
        Err(NoteError::WrongKey { .. })
    ));
    // Wrong length.
    let mut short = good.clone();
    short.signature.pop();
    assert_eq!(
        verify_cosignature(&cp, &short, "w.example", &vk),
        Err(NoteError::CosignatureLength {
            name: "w.example".into(),
            found: 71
        })
    );
    // A note signature by the same key is not a cosignature (type byte differs).
    let note_sig = sign_note(&cp.body(), "w.example", &sk).unwrap();
    assert!(matches!(
        verify_cosignature(&cp, &note_sig, "w.example", &vk),
        Err(NoteError::WrongKey { .. })
    ));
    // Every flipped bit of the signature fails.
    for byte in 8..COSIGNATURE_V1_BYTES {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad.signature[byte] ^= 1 << bit;
            assert!(verify_cosignature(&cp, &bad, "w.example", &vk).is_err());
        }
    }
    // Invalid cosigner names are refused at signing time.
    assert!(matches!(
        cosign(&cp, "w example", &sk, 1),
        Err(NoteError::KeyName { .. })
    ));
}

#[test]
fn signed_checkpoint_cosignature_lookup() {
    let mut signed = signed(10);
    let w = key(30);
    assert_eq!(
        signed.cosignature("w.example", &w.verifying_key()),
        Err(NoteError::NoMatchingSignature {
            name: "w.example".into(),
            key_id: hex::encode(key_id(
                "w.example",
                SIG_TYPE_COSIGNATURE_V1,
                w.verifying_key().as_bytes()
            )),
        })
    );
    let cp = signed.checkpoint().clone();
    signed
        .add_signature(cosign(&cp, "w.example", &w, 50).unwrap())
        .unwrap();
    signed
        .add_signature(cosign(&cp, "w.example", &w, 70).unwrap())
        .unwrap();
    assert_eq!(signed.cosignature("w.example", &w.verifying_key()), Ok(70));
    // One bad cosignature by that key spoils the lot.
    let mut bad = cosign(&cp, "w.example", &w, 90).unwrap();
    bad.signature[20] ^= 1;
    signed.add_signature(bad).unwrap();
    assert!(matches!(
        signed.cosignature("w.example", &w.verifying_key()),
        Err(NoteError::BadSignature { .. })
    ));
    // The author's signature still opens: other keys' signatures are ignored.
    let reopened = open(signed.to_text().as_bytes()).unwrap();
    assert_eq!(reopened, signed);
}

// ---------------------------------------------------------------------------
// Signed checkpoints: opening and rejections
// ---------------------------------------------------------------------------

#[test]
fn signed_checkpoint_round_trips_and_opens() {
    let cp = Checkpoint::new(ORIGIN, 0, [0u8; 32], vec!["ext one".into(), "two".into()]).unwrap();
    assert_eq!(
        cp.body(),
        format!("{ORIGIN}\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\next one\ntwo\n")
    );
    let signed = sign_checkpoint(&cp, ORIGIN, &key(1)).unwrap();
    let text = signed.to_text();
    let opened = open(text.as_bytes()).unwrap();
    assert_eq!(opened.checkpoint(), &cp);
    assert_eq!(opened.note().to_text(), text);
    let (c, n) = opened.into_parts();
    assert_eq!((c, n.text().to_owned()), (cp.clone(), cp.body()));
}

#[test]
fn any_flipped_bit_in_a_signed_checkpoint_fails() {
    let text = signed(20852163).to_text().into_bytes();
    for i in 0..text.len() {
        for bit in 0..8 {
            let mut bad = text.clone();
            bad[i] ^= 1 << bit;
            assert!(open(&bad).is_err(), "byte {i} bit {bit} survived");
        }
    }
}

#[test]
fn signatures_of_other_keys_are_ignored() {
    let signed = signed(5);
    let body = signed.checkpoint().body();
    let author = &signed.note().signatures()[0];
    // Same name, other key (so other ID); same ID, other name; both other.
    let other_key = sign_note(&body, ORIGIN, &key(2)).unwrap();
    let other_name = NoteSignature {
        name: "other.example".into(),
        key_id: author.key_id,
        signature: vec![0u8; 64],
    };
    let unknown = NoteSignature {
        name: "x.example".into(),
        key_id: [1, 2, 3, 4],
        signature: vec![9u8; 3000],
    };
    let note = Note::new(
        body.clone(),
        vec![
            other_key.clone(),
            other_name.clone(),
            author.clone(),
            unknown.clone(),
        ],
    )
    .unwrap();
    let opened = open(note.to_text().as_bytes()).unwrap();
    assert_eq!(opened.note().signatures().len(), 4, "unknown ones are kept");
    assert_eq!(opened.note().to_text(), note.to_text());

    // Without the author's signature nothing matches.
    let note = Note::new(body.clone(), vec![other_key, other_name, unknown]).unwrap();
    assert_eq!(
        open(note.to_text().as_bytes()),
        Err(NoteError::NoMatchingSignature {
            name: ORIGIN.into(),
            key_id: hex::encode(author.key_id)
        })
    );
    // A bad signature claiming the author's name and ID rejects the note, even
    // next to a good one.
    let mut forged = author.clone();
    forged.signature[0] ^= 1;
    let note = Note::new(body, vec![author.clone(), forged]).unwrap();
    assert!(matches!(
        open(note.to_text().as_bytes()),
        Err(NoteError::BadSignature { .. })
    ));
}

#[test]
fn author_signature_of_wrong_length_is_bad() {
    let signed = signed(5);
    let mut sig = signed.note().signatures()[0].clone();
    sig.signature.push(0);
    let note = Note::new(signed.checkpoint().body(), vec![sig]).unwrap();
    assert!(matches!(
        open(note.to_text().as_bytes()),
        Err(NoteError::BadSignature { .. })
    ));
}

#[test]
fn body_is_parsed_only_after_the_signature_verifies() {
    // A validly signed note whose text is not a checkpoint.
    let sig = sign_note("not a checkpoint\n", ORIGIN, &key(1)).unwrap();
    let note = Note::new("not a checkpoint\n", vec![sig]).unwrap();
    assert_eq!(
        open(note.to_text().as_bytes()),
        Err(NoteError::CheckpointTooShort { found: 1 })
    );
    // The same text unsigned by the author: the signature error comes first.
    let sig = sign_note("not a checkpoint\n", ORIGIN, &key(2)).unwrap();
    let note = Note::new("not a checkpoint\n", vec![sig]).unwrap();
    assert!(matches!(
        open(note.to_text().as_bytes()),
        Err(NoteError::NoMatchingSignature { .. })
    ));
}

// ---------------------------------------------------------------------------
// Note parsing: every rejection with its specific error
// ---------------------------------------------------------------------------

fn good_sig() -> String {
    sig_line("a.example", &[1u8; 68])
}

fn parse(text: &str) -> Result<Note, NoteError> {
    Note::parse(text.as_bytes())
}

#[test]
fn note_structure_rejections() {
    let sig = good_sig();
    assert_eq!(
        parse(&format!("text\n{sig}")),
        Err(NoteError::MissingBlankLine)
    );
    assert_eq!(parse("text\n\n"), Err(NoteError::NoSignatures));
    assert_eq!(
        parse(&format!("text\n\n{}", sig.trim_end())),
        Err(NoteError::UnterminatedLine {
            what: "note",
            line: 3
        })
    );
    assert_eq!(
        parse(&format!("text\n\n{sig}garbage")),
        Err(NoteError::UnterminatedLine {
            what: "note",
            line: 4
        })
    );
    assert_eq!(
        parse(&format!("text\n\n{sig}garbage\n")),
        Err(NoteError::SignatureLine {
            line: 4,
            reason: "does not start with an em dash (U+2014) and a space"
        })
    );
    assert_eq!(
        parse("text\n\n- a.example AAAA\n"),
        Err(NoteError::SignatureLine {
            line: 3,
            reason: "does not start with an em dash (U+2014) and a space"
        })
    );
    assert_eq!(
        parse("text\n\n\u{2014} a.example\n"),
        Err(NoteError::SignatureLine {
            line: 3,
            reason: "has no space between key name and signature"
        })
    );
    // A blank line between signatures makes the first one part of the text.
    let note = parse(&format!("text\n\n{sig}\n{sig}")).unwrap();
    assert_eq!(note.text(), format!("text\n\n{sig}"));
}

#[test]
fn note_character_rejections() {
    let sig = good_sig();
    assert_eq!(
        parse(&format!("one\r\ntwo\n\n{sig}")),
        Err(NoteError::ControlCharacter {
            what: "note",
            line: 1,
            code: 0x0d
        })
    );
    assert_eq!(
        parse(&format!("one\ntwo\n\n{}\r\n", sig.trim_end())),
        Err(NoteError::ControlCharacter {
            what: "note",
            line: 4,
            code: 0x0d
        })
    );
    assert_eq!(
        parse(&format!("tab\there\n\n{sig}")),
        Err(NoteError::ControlCharacter {
            what: "note",
            line: 1,
            code: 0x09
        })
    );
    let mut bytes = format!("abc\n\n{sig}").into_bytes();
    bytes[1] = 0xff;
    assert_eq!(
        Note::parse(&bytes),
        Err(NoteError::NotUtf8 {
            what: "note",
            offset: 1
        })
    );
}

#[test]
fn key_name_rejections() {
    let raw = [1u8; 68];
    for (name, reason) in [
        ("a+b", "contains a plus sign (U+002B)"),
        ("a\u{a0}b", "contains a Unicode space"),
        ("a\u{3000}b", "contains a Unicode space"),
    ] {
        assert_eq!(
            parse(&format!("t\n\n{}", sig_line(name, &raw))),
            Err(NoteError::SignatureKeyName { line: 3, reason }),
            "{name:?}"
        );
        assert!(matches!(
            sign_note("t\n", name, &key(1)),
            Err(NoteError::KeyName { .. })
        ));
    }
    assert_eq!(
        parse(&format!("t\n\n\u{2014}  {}\n", b64(&raw))),
        Err(NoteError::SignatureKeyName {
            line: 3,
            reason: "is empty"
        })
    );
    assert_eq!(
        sign_note("t\n", "", &key(1)),
        Err(NoteError::KeyName {
            name: String::new(),
            reason: "is empty"
        })
    );
    // Non-ASCII names without spaces are fine.
    let note = parse(&format!("t\n\n{}", sig_line("caf\u{e9}.example", &raw))).unwrap();
    assert_eq!(note.signatures()[0].name, "caf\u{e9}.example");
}

#[test]
fn signature_encoding_rejections() {
    assert_eq!(
        parse("t\n\n\u{2014} a.example not*base64\n"),
        Err(NoteError::SignatureBase64 { line: 3 })
    );
    // Missing padding.
    let unpadded = b64(&[1u8; 68]).trim_end_matches('=').to_owned();
    assert_eq!(
        parse(&format!("t\n\n\u{2014} a.example {unpadded}\n")),
        Err(NoteError::SignatureBase64 { line: 3 })
    );
    // Non-zero unused bits: a second spelling of the same bytes is refused.
    let canonical = b64(&[1u8; 68]);
    assert!(canonical.ends_with("AQE="));
    let sloppy = canonical.replace("AQE=", "AQF=");
    assert_eq!(STANDARD.decode(&sloppy).ok(), None);
    assert_eq!(
        parse(&format!("t\n\n\u{2014} a.example {sloppy}\n")),
        Err(NoteError::SignatureBase64 { line: 3 })
    );
    // Four bytes is a key ID with no signature.
    assert_eq!(
        parse(&format!("t\n\n{}", sig_line("a.example", &[1, 2, 3, 4]))),
        Err(NoteError::SignatureTooShort { line: 3, found: 4 })
    );
    assert_eq!(
        parse("t\n\n\u{2014} a.example \n"),
        Err(NoteError::SignatureTooShort { line: 3, found: 0 })
    );
    // Five bytes is the shortest signature line accepted.
    assert!(parse(&format!("t\n\n{}", sig_line("a.example", &[1, 2, 3, 4, 5]))).is_ok());
}

#[test]
fn note_limits() {
    let sig = good_sig();
    // NOTE_SIGNATURES_MAX signatures are accepted, one more is not.
    let at = format!("t\n\n{}", sig.repeat(NOTE_SIGNATURES_MAX));
    assert_eq!(parse(&at).unwrap().signatures().len(), NOTE_SIGNATURES_MAX);
    assert_eq!(
        parse(&format!("{at}{sig}")),
        Err(NoteError::TooManySignatures {
            limit: NOTE_SIGNATURES_MAX
        })
    );
    // Oversized notes are refused before anything else is read.
    let big = format!("{}\n\n{sig}", "x".repeat(NOTE_BYTES_MAX));
    assert_eq!(
        parse(&big),
        Err(NoteError::TooLarge {
            what: "note",
            found: big.len(),
            limit: NOTE_BYTES_MAX
        })
    );
    // The spec's floor: 16 signatures of post-quantum size (ML-DSA-44
    // cosignature: key ID, timestamp, 2420-byte signature) must be accepted.
    let pq = sig_line("witness.example.org/some-witness", &[3u8; 4 + 8 + 2420]);
    let note = format!("{SPEC_CHECKPOINT_BODY}\n{}", pq.repeat(16));
    assert_eq!(parse(&note).unwrap().signatures().len(), 16);
}

#[test]
fn note_construction_keeps_to_text_parseable() {
    let sig = sign_note("t\n", "a.example", &key(1)).unwrap();
    assert_eq!(
        Note::new("t", vec![sig.clone()]),
        Err(NoteError::TextNotTerminated)
    );
    assert_eq!(
        sign_note("t", "a.example", &key(1)),
        Err(NoteError::TextNotTerminated)
    );
    assert_eq!(
        Note::new("t\r\n", vec![sig.clone()]),
        Err(NoteError::ControlCharacter {
            what: "note text",
            line: 1,
            code: 0x0d
        })
    );
    assert_eq!(Note::new("t\n", vec![]), Err(NoteError::NoSignatures));
    let empty = NoteSignature {
        name: "a.example".into(),
        key_id: [0; 4],
        signature: vec![],
    };
    assert_eq!(
        Note::new("t\n", vec![empty]),
        Err(NoteError::EmptySignature {
            name: "a.example".into()
        })
    );
    let mut note = Note::new("t\n", vec![sig.clone()]).unwrap();
    for _ in 1..NOTE_SIGNATURES_MAX {
        note.add_signature(sig.clone()).unwrap();
    }
    assert_eq!(
        note.add_signature(sig.clone()),
        Err(NoteError::TooManySignatures {
            limit: NOTE_SIGNATURES_MAX
        })
    );
    assert_eq!(Note::parse(note.to_text().as_bytes()).unwrap(), note);
    // A signature that would push the note over the size limit is refused.
    let mut note = Note::new("t\n", vec![sig]).unwrap();
    let huge = NoteSignature {
        name: "b.example".into(),
        key_id: [0; 4],
        signature: vec![0; NOTE_BYTES_MAX],
    };
    assert!(matches!(
        note.add_signature(huge),
        Err(NoteError::TooLarge { what: "note", .. })
    ));
    // Texts with inner and trailing empty lines survive the round trip.
    for text in ["\n", "a\n\n", "a\n\nb\n", "\n\n\n"] {
        let sig = sign_note(text, "a.example", &key(1)).unwrap();
        let note = Note::new(text, vec![sig]).unwrap();
        let parsed = Note::parse(note.to_text().as_bytes()).unwrap();
        assert_eq!(parsed, note, "{text:?}");
        assert!(verify_note_signature(
            parsed.text(),
            &parsed.signatures()[0],
            "a.example",
            &key(1).verifying_key()
        ));
    }
}

// ---------------------------------------------------------------------------
// Checkpoint bodies
// ---------------------------------------------------------------------------

fn body_err(body: &str) -> NoteError {
    Checkpoint::parse_body(body).unwrap_err()
}

fn size_err(reason: &'static str) -> NoteError {
    NoteError::Decimal {
        what: "checkpoint",
        line: 2,
        field: "tree size",
        reason,
    }
}

#[test]
fn checkpoint_body_rejections() {
    let root = b64(&ROOT);
    assert_eq!(body_err(&format!("\n5\n{root}\n")), NoteError::EmptyOrigin);
    assert_eq!(
        body_err(&format!("o\n05\n{root}\n")),
        size_err("has a leading zero")
    );
    assert_eq!(
        body_err(&format!("o\n00\n{root}\n")),
        size_err("has a leading zero")
    );
    assert_eq!(
        body_err(&format!("o\n+5\n{root}\n")),
        size_err("is not ASCII decimal digits")
    );
    assert_eq!(
        body_err(&format!("o\n-1\n{root}\n")),
        size_err("is not ASCII decimal digits")
    );
    assert_eq!(
        body_err(&format!("o\n5 \n{root}\n")),
        size_err("is not ASCII decimal digits")
    );
    assert_eq!(body_err(&format!("o\n\n{root}\n")), size_err("is empty"));
    assert_eq!(
        body_err(&format!("o\n18446744073709551616\n{root}\n")),
        size_err("does not fit in 64 bits")
    );
    assert_eq!(
        Checkpoint::parse_body(&format!("o\n18446744073709551615\n{root}\n"))
            .unwrap()
            .size(),
        u64::MAX
    );
    assert_eq!(
        body_err(&format!("o\n5\n{}\n", b64(&[7u8; 31]))),
        NoteError::HashLength {
            what: "checkpoint",
            line: 3,
            field: "root hash",
            found: 31
        }
    );
    assert_eq!(
        body_err(&format!("o\n5\n{}\n", b64(&[7u8; 33]))),
        NoteError::HashLength {
            what: "checkpoint",
            line: 3,
            field: "root hash",
            found: 33
        }
    );
    assert_eq!(
        body_err("o\n5\nnot base64!\n"),
        NoteError::Base64 {
            what: "checkpoint",
            line: 3,
            field: "root hash"
        }
    );
    assert_eq!(
        body_err(&format!("o\n5\n{}\n", root.trim_end_matches('='))),
        NoteError::Base64 {
            what: "checkpoint",
            line: 3,
            field: "root hash"
        }
    );
    assert_eq!(
        body_err(&format!("o\n5\n{root}")),
        NoteError::CheckpointNotTerminated
    );
    assert_eq!(
        body_err("o\n5\n"),
        NoteError::CheckpointTooShort { found: 2 }
    );
    assert_eq!(
        body_err(&format!("o\n5\n{root}\next\n\n")),
        NoteError::EmptyExtension { line: 5 }
    );
    assert_eq!(
        body_err(&format!("o\r\n5\n{root}\n")),
        NoteError::ControlCharacter {
            what: "checkpoint",
            line: 1,
            code: 0x0d
        }
    );
    let many = format!(
        "o\n5\n{root}\n{}",
        "e\n".repeat(CHECKPOINT_EXTENSIONS_MAX + 1)
    );
    assert_eq!(
        body_err(&many),
        NoteError::TooManyExtensions {
            limit: CHECKPOINT_EXTENSIONS_MAX
        }
    );
}

#[test]
fn checkpoint_origin_rules() {
    // Clients must not assume the origin is URL-like: parse accepts it...
    let root = b64(&ROOT);
    let odd = Checkpoint::parse_body(&format!("my log+1\n5\n{root}\n")).unwrap();
    assert_eq!(odd.origin(), "my log+1");
    // ...but herald does not build such checkpoints.
    assert_eq!(
        Checkpoint::new("my log", 5, ROOT, vec![]),
        Err(NoteError::Origin {
            origin: "my log".into(),
            reason: "contains a Unicode space"
        })
    );
    assert_eq!(
        Checkpoint::new("log+1", 5, ROOT, vec![]),
        Err(NoteError::Origin {
            origin: "log+1".into(),
            reason: "contains a plus sign (U+002B)"
        })
    );
    assert_eq!(
        Checkpoint::new("", 5, ROOT, vec![]),
        Err(NoteError::EmptyOrigin)
    );
    for (ext, reason) in [
        ("", "is empty"),
        ("a\nb", "contains a newline"),
        ("a\rb", "contains a control character"),
    ] {
        assert_eq!(
            Checkpoint::new("o", 5, ROOT, vec!["fine".into(), ext.into()]),
            Err(NoteError::Extension { index: 1, reason })
        );
    }
    assert_eq!(
        Checkpoint::new(
            "o",
            5,
            ROOT,
            vec!["e".into(); CHECKPOINT_EXTENSIONS_MAX + 1]
        ),
        Err(NoteError::TooManyExtensions {
            limit: CHECKPOINT_EXTENSIONS_MAX
        })
    );
}

// ---------------------------------------------------------------------------
// Verifier keys
// ---------------------------------------------------------------------------

#[test]
fn vkey_rejections() {
    let vkey = |reason| NoteError::Vkey { reason };
    assert_eq!(
        VerifierKey::parse("example.com/foo+530d903a"),
        Err(vkey("it must be three parts separated by '+'"))
    );
    assert_eq!(
        VerifierKey::parse(&format!("{SPEC_VKEY}+x")),
        Err(vkey("the key is not canonical standard base64"))
    );
    assert_eq!(
        VerifierKey::parse(&SPEC_VKEY.replace("530d903a", "530D903A")),
        Err(vkey("the key ID must be 8 lowercase hex digits"))
    );
    assert_eq!(
        VerifierKey::parse(&SPEC_VKEY.replace("530d903a", "530d903b")),
        Err(vkey("the key ID does not match the name, type and key"))
    );
    assert_eq!(
        VerifierKey::parse(&SPEC_VKEY.replace("example.com/foo", "example.com/bar")),
        Err(vkey("the key ID does not match the name, type and key"))
    );
    assert!(matches!(
        VerifierKey::parse(&SPEC_VKEY.replace("example.com/foo", "")),
        Err(NoteError::KeyName { .. })
    ));
    assert_eq!(
        VerifierKey::parse(&SPEC_VKEY.replace("AekyeR", "AekyeR*")),
        Err(vkey("the key is not canonical standard base64"))
    );
    // Type 0x02 (ECDSA) is a valid vkey type but not one herald reads.
    let pk = key(1).verifying_key().to_bytes();
    let ecdsa = format!("a.example+00000000+{}", b64(&[&[2u8][..], &pk].concat()));
    assert_eq!(
        VerifierKey::parse(&ecdsa),
        Err(NoteError::VkeyType { found: 2 })
    );
    let short = format!("a.example+00000000+{}", b64(&[1u8; 32]));
    assert_eq!(
        VerifierKey::parse(&short),
        Err(vkey("the public key is not 32 bytes"))
    );
    // The identity point is a weak key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = VerifyingKey::from_bytes(&identity).unwrap();
    assert_eq!(
        VerifierKey::new("a.example", 1, weak),
        Err(vkey("the public key is a small-order (weak) point"))
    );
    let weak_text = format!(
        "a.example+{}+{}",
        hex::encode(key_id("a.example", 1, &identity)),
        b64(&[&[1u8][..], &identity].concat())
    );
    assert_eq!(
        VerifierKey::parse(&weak_text),
        Err(vkey("the public key is a small-order (weak) point"))
    );
    let long = format!("{}+00000000+AA==", "a".repeat(VKEY_BYTES_MAX));
    assert!(matches!(
        VerifierKey::parse(&long),
        Err(NoteError::TooLarge { .. })
    ));
}

// ---------------------------------------------------------------------------
// Proof text
// ---------------------------------------------------------------------------

fn proof_err(text: &str) -> NoteError {
    ProofText::parse(text.as_bytes()).unwrap_err()
}

#[test]
fn proof_rejections() {
    let note = signed(3).to_text();
    let h = b64(&[5u8; 32]);
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v2\nindex 0\n\n{note}")),
        NoteError::ProofHeader
    );
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\n{h}\n\n{note}")),
        NoteError::ProofIndexMissing { line: 2 }
    );
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\nextra AAAA\n\n{note}")),
        NoteError::ProofIndexMissing { line: 3 }
    );
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\nindex 07\n\n{note}")),
        NoteError::Decimal {
            what: "proof",
            line: 2,
            field: "index",
            reason: "has a leading zero"
        }
    );
    assert_eq!(
        proof_err(&format!(
            "c2sp.org/tlog-proof@v1\nextra A\nindex 1\n\n{note}"
        )),
        NoteError::Base64 {
            what: "proof",
            line: 2,
            field: "extra data"
        }
    );
    assert_eq!(
        proof_err(&format!(
            "c2sp.org/tlog-proof@v1\nindex 1\n{h}\n{}\n\n{note}",
            b64(&[5u8; 31])
        )),
        NoteError::HashLength {
            what: "proof",
            line: 4,
            field: "inclusion proof hash",
            found: 31
        }
    );
    assert_eq!(
        proof_err(&format!(
            "c2sp.org/tlog-proof@v1\nindex 1\n{}\n{note}",
            format!("{h}\n").repeat(PROOF_HASHES_MAX + 1)
        )),
        NoteError::TooManyProofHashes {
            limit: PROOF_HASHES_MAX
        }
    );
    // PROOF_HASHES_MAX hashes are fine.
    let full = format!(
        "c2sp.org/tlog-proof@v1\nindex 1\n{}\n{note}",
        format!("{h}\n").repeat(PROOF_HASHES_MAX)
    );
    assert_eq!(
        ProofText::parse(full.as_bytes()).unwrap().proof().len(),
        PROOF_HASHES_MAX
    );
    // Missing blank line: the checkpoint's origin is read as a hash.
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\nindex 1\n{h}\n{note}")),
        NoteError::Base64 {
            what: "proof",
            line: 4,
            field: "inclusion proof hash"
        }
    );
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\nindex 1\n{h}\n")),
        NoteError::ProofTruncated { line: 3 }
    );
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\nindex 1\n{h}")),
        NoteError::UnterminatedLine {
            what: "proof",
            line: 3
        }
    );
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\r\nindex 1\n\n{note}")),
        NoteError::ControlCharacter {
            what: "proof",
            line: 1,
            code: 0x0d
        }
    );
    // Errors inside the checkpoint name the proof line it starts on.
    let bad_note = note.replace("\n\n", "\n");
    assert_eq!(
        proof_err(&format!(
            "c2sp.org/tlog-proof@v1\nindex 1\n{h}\n\n{bad_note}"
        )),
        NoteError::ProofCheckpoint {
            line: 5,
            source: Box::new(NoteError::MissingBlankLine)
        }
    );
    let not_checkpoint = Note::new(
        "hello\n",
        vec![sign_note("hello\n", "a.example", &key(1)).unwrap()],
    )
    .unwrap()
    .to_text();
    assert_eq!(
        proof_err(&format!(
            "c2sp.org/tlog-proof@v1\nindex 1\n\n{not_checkpoint}"
        )),
        NoteError::ProofCheckpoint {
            line: 4,
            source: Box::new(NoteError::CheckpointTooShort { found: 1 })
        }
    );
    assert_eq!(
        proof_err(&format!("c2sp.org/tlog-proof@v1\nindex 1\n\n{note}junk")),
        NoteError::ProofCheckpoint {
            line: 4,
            source: Box::new(NoteError::UnterminatedLine {
                what: "note",
                line: 6
            })
        }
    );
    // Construction applies the same limits.
    assert!(matches!(
        ProofText::new(
            Some(vec![0; PROOF_EXTRA_BYTES_MAX + 1]),
            0,
            vec![],
            note.as_bytes()
        ),
        Err(NoteError::TooLarge {
            what: "proof extra data",
            ..
        })
    ));
    assert_eq!(
        ProofText::new(
            None,
            0,
            vec![[0; 32]; PROOF_HASHES_MAX + 1],
            note.as_bytes()
        ),
        Err(NoteError::TooManyProofHashes {
            limit: PROOF_HASHES_MAX
        })
    );
    assert_eq!(
        ProofText::new(Some(vec![1]), 0, vec![[0; 32]], b"x\n"),
        Err(NoteError::ProofCheckpoint {
            line: 6,
            source: Box::new(NoteError::MissingBlankLine)
        })
    );
    // The largest proof that respects every limit is within PROOF_BYTES_MAX.
    let max_note = {
        let mut n = Note::parse(note.as_bytes()).unwrap();
        let filler = NoteSignature {
            name: "f.example".into(),
            key_id: [0; 4],
            signature: vec![0; 1000],
        };
        while n.add_signature(filler.clone()).is_ok() {}
        n.to_text()
    };
    let largest = ProofText::new(
        Some(vec![0xff; PROOF_EXTRA_BYTES_MAX]),
        u64::MAX,
        vec![[0xff; 32]; PROOF_HASHES_MAX],
        max_note.as_bytes(),
    )
    .unwrap()
    .to_text();
    assert!(largest.len() <= PROOF_BYTES_MAX);
    assert_eq!(
        ProofText::parse(largest.as_bytes()).unwrap().to_text(),
        largest
    );
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn origin() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9./_-]{0,40}"
}

fn extension() -> impl Strategy<Value = String> {
    // Printable, including spaces and '+', and some non-ASCII.
    "[ -~\u{e9}\u{2014}]{1,30}"
}

fn arb_checkpoint() -> impl Strategy<Value = Checkpoint> {
    (
        origin(),
        any::<u64>(),
        any::<[u8; 32]>(),
        prop::collection::vec(extension(), 0..3),
    )
        .prop_map(|(o, s, r, e)| Checkpoint::new(o, s, r, e).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// sign -> cosign -> to_text -> parse -> verify gives back what was signed,
    /// and no single changed byte anywhere in the text survives.
    #[test]
    fn signed_cosigned_checkpoint_round_trips_and_detects_any_byte_change(
        cp in arb_checkpoint(),
        author_seed in 1u8..=255,
        witness_seed in 1u8..=255,
        timestamp in 0..=COSIGNATURE_TIMESTAMP_MAX,
        flip_at in any::<prop::sample::Index>(),
        flip_with in 1u8..=255,
    ) {
        let author = key(author_seed);
        let witness = key(witness_seed);
        let name = cp.origin().to_owned();
        let mut signed = sign_checkpoint(&cp, &name, &author).unwrap();
        signed.add_signature(cosign(&cp, "w.example", &witness, timestamp).unwrap()).unwrap();
        let text = signed.to_text();

        let check = |bytes: &[u8]| -> Result<(Checkpoint, u64), NoteError> {
            let opened = open_checkpoint(bytes, &name, &author.verifying_key())?;
            let ts = opened.cosignature("w.example", &witness.verifying_key())?;
            Ok((opened.checkpoint().clone(), ts))
        };
        prop_assert_eq!(check(text.as_bytes()), Ok((cp.clone(), timestamp)));
        prop_assert_eq!(Note::parse(text.as_bytes()).unwrap().to_text(), text.clone());
        prop_assert_eq!(Checkpoint::parse_body(&cp.body()).unwrap(), cp.clone());

        let mut bad = text.into_bytes();
        let i = flip_at.index(bad.len());
        bad[i] ^= flip_with;
        prop_assert!(check(&bad).is_err(), "byte {} ^ {:#x} survived", i, flip_with);
    }

    /// Any note herald can build parses back to itself, unknown signatures and all.
    #[test]
    fn built_notes_round_trip(
        lines in prop::collection::vec("[ -~\u{e9}]{0,20}", 0..6),
        sigs in prop::collection::vec(
            ("[a-z.+ ]{0,12}", any::<[u8; 4]>(), prop::collection::vec(any::<u8>(), 0..100)),
            0..5,
        ),
    ) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let sigs: Vec<NoteSignature> = sigs
            .into_iter()
            .map(|(name, key_id, signature)| NoteSignature { name, key_id, signature })
            .collect();
        match Note::new(text.clone(), sigs.clone()) {
            Ok(note) => {
                prop_assert_eq!(Note::parse(note.to_text().as_bytes()), Ok(note.clone()));
                prop_assert_eq!(note.signatures(), &sigs[..]);
            }
            Err(e) => {
                // Only invalid inputs are refused.
                let invalid = text.is_empty()
                    || sigs.is_empty()
                    || sigs.iter().any(|s| {
                        s.name.is_empty() || s.name.contains([' ', '+']) || s.signature.is_empty()
                    });
                prop_assert!(invalid, "refused valid input: {}", e);
            }
        }
    }
}
