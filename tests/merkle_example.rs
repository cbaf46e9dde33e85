//! The worked example of `docs/FORMAT.md` section 15 ("Merkle feeds"),
//! re-derived here from the spec alone with `sha2`, `ed25519-dalek` and
//! `base64` (never herald's Merkle or note code), compared with what herald
//! produces, and found verbatim in the document.
//!
//! Print the example (to refresh the doc) with:
//! `cargo test --test merkle_example -- --nocapture print_merkle_example`

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey};
use herald::core::checkpoint::{CheckpointSigner, cluster_id};
use herald::core::merkle::{self, MemoryTree};
use herald::core::note::Checkpoint;
use sha2::{Digest, Sha256};

// The example's inputs.
const CA_SEED: [u8; 32] = [1; 32];
const AUTHOR_SEED: [u8; 32] = [7; 32];
const WITNESS_SEED: [u8; 32] = [9; 32];
const FEED: &str = "fundraising";
const WITNESS: &str = "council";
const EVENT_HASHES: [[u8; 32]; 3] = [[0xa0; 32], [0xa1; 32], [0xa2; 32]];
const COSIGNED_AT_S: u64 = 1_780_000_000;

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Everything the example shows, computed from the spec.
struct Example {
    cluster: String,
    leaves: Vec<[u8; 32]>,
    root: [u8; 32],
    body: String,
    note: String,
    cosigned_note: String,
    proof_leaf_0: Vec<[u8; 32]>,
    proof_leaf_2: Vec<[u8; 32]>,
}

fn derive() -> Example {
    let ca = SigningKey::from_bytes(&CA_SEED).verifying_key();
    let author = SigningKey::from_bytes(&AUTHOR_SEED);
    let witness = SigningKey::from_bytes(&WITNESS_SEED);
    let cluster = hex::encode(&sha256(&[b"herald/v1/cluster-id\0", ca.as_bytes()])[..8]);
    let leaves: Vec<[u8; 32]> = EVENT_HASHES.iter().map(|e| sha256(&[&[0x00], e])).collect();
    let node01 = sha256(&[&[0x01], &leaves[0], &leaves[1]]);
    let root = sha256(&[&[0x01], &node01, &leaves[2]]);
    let origin = format!("herald/{cluster}/{FEED}");
    let body = format!("{origin}\n3\n{}\n", B64.encode(root));
    let key_id = &sha256(&[
        origin.as_bytes(),
        b"\n",
        &[0x01],
        author.verifying_key().as_bytes(),
    ])[..4];
    let signature = author.sign(body.as_bytes()).to_bytes();
    let line = B64.encode([key_id, &signature[..]].concat());
    let note = format!("{body}\n\u{2014} {origin} {line}\n");
    let witness_name = format!("herald/{cluster}/{WITNESS}");
    let witness_id = &sha256(&[
        witness_name.as_bytes(),
        b"\n",
        &[0x04],
        witness.verifying_key().as_bytes(),
    ])[..4];
    let message = format!("cosignature/v1\ntime {COSIGNED_AT_S}\n{body}");
    let cosig = witness.sign(message.as_bytes()).to_bytes();
    let cosig_line = B64.encode([witness_id, &COSIGNED_AT_S.to_be_bytes(), &cosig[..]].concat());
    let cosigned_note = format!("{note}\u{2014} {witness_name} {cosig_line}\n");
    Example {
        cluster,
        root,
        body,
        note,
        cosigned_note,
        proof_leaf_0: vec![leaves[1], leaves[2]],
        proof_leaf_2: vec![node01],
        leaves,
    }
}

#[test]
fn herald_produces_exactly_what_the_spec_derives() {
    let ex = derive();
    let ca = SigningKey::from_bytes(&CA_SEED).verifying_key();
    assert_eq!(cluster_id(ca.as_bytes()), ex.cluster);
    let mut tree = MemoryTree::default();
    for e in &EVENT_HASHES {
        tree.push(merkle::leaf_hash(e)).unwrap();
    }
    assert_eq!(tree.leaf_hashes(), ex.leaves.as_slice());
    assert_eq!(tree.root(), ex.root);
    assert_eq!(
        merkle::inclusion_proof(&mut tree.clone(), 0, 3).unwrap(),
        ex.proof_leaf_0
    );
    assert_eq!(
        merkle::inclusion_proof(&mut tree.clone(), 2, 3).unwrap(),
        ex.proof_leaf_2
    );
    let author = CheckpointSigner::new(
        ex.cluster.clone(),
        FEED.into(),
        SigningKey::from_bytes(&AUTHOR_SEED),
    );
    let note = author.sign(3, ex.root).unwrap();
    assert_eq!(note.text(), ex.body);
    assert_eq!(note.to_text(), ex.note);
    let witness = CheckpointSigner::new(
        ex.cluster.clone(),
        WITNESS.into(),
        SigningKey::from_bytes(&WITNESS_SEED),
    );
    let checkpoint = Checkpoint::parse_body(note.text()).unwrap();
    let mut cosigned = note.clone();
    cosigned
        .add_signature(witness.cosign(&checkpoint, COSIGNED_AT_S).unwrap())
        .unwrap();
    assert_eq!(cosigned.to_text(), ex.cosigned_note);
    // And herald's checker accepts the derived note.
    herald::core::checkpoint::open_checkpoint(
        &ex.cluster,
        ex.cosigned_note.as_bytes(),
        &SigningKey::from_bytes(&AUTHOR_SEED).verifying_key(),
    )
    .unwrap();
}

#[test]
fn the_document_shows_the_derived_values() {
    let ex = derive();
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    for (what, value) in [
        ("cluster id", ex.cluster.clone()),
        ("leaf 0", hex::encode(ex.leaves[0])),
        ("root", hex::encode(ex.root)),
        ("proof of leaf 2", hex::encode(ex.proof_leaf_2[0])),
        ("cosigned note", ex.cosigned_note.clone()),
    ] {
        assert!(
            doc.contains(&value),
            "docs/FORMAT.md lacks the example's {what}: {value}"
        );
    }
}

#[test]
#[ignore]
fn print_merkle_example() {
    let ex = derive();
    println!("cluster id: {}", ex.cluster);
    for (i, l) in ex.leaves.iter().enumerate() {
        println!("leaf {i}: {}", hex::encode(l));
    }
    println!("root: {}", hex::encode(ex.root));
    println!(
        "proof 0: {:?}",
        ex.proof_leaf_0.iter().map(hex::encode).collect::<Vec<_>>()
    );
    println!(
        "proof 2: {:?}",
        ex.proof_leaf_2.iter().map(hex::encode).collect::<Vec<_>>()
    );
    println!("---\n{}---", ex.cosigned_note);
}
