//! herald's Merkle verifiers against the reference test vectors of
//! transparency-dev/merkle (see `tests/vectors/merkle/README.md`): every
//! case the reference accepts must verify, every case it rejects must be
//! rejected, and the happy paths' proofs must be exactly what herald
//! generates for the same tree.
//!
//! Hashes in herald are `[u8; 32]`. Some cases hand the reference a root,
//! leaf or proof entry of another length (empty strings, "don't care 1").
//! Those values are replaced by 32-byte stand-ins that keep equality
//! between values, and the verdict must still match. The only exceptions
//! are pinned by name: cases the reference rejects *only* because a value
//! has the wrong length, which herald's types cannot even carry, and which
//! any herald decoder refuses before a verifier sees them.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::core::crypto::{Hash, sha256};
use herald::core::merkle::{
    MemoryTree, consistency_proof, inclusion_proof, leaf_hash, root_at, verify_consistency,
    verify_inclusion,
};
use serde::Deserialize;

/// Inclusion cases (JSON files under `testdata/inclusion/`) at commit
/// 417fb0c. Counted exactly, so that a missing or partly copied directory
/// fails the tests instead of passing them vacuously.
const INCLUSION_FILES: usize = 98;
/// Consistency cases under `testdata/consistency/`, counted the same way.
const CONSISTENCY_FILES: usize = 98;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionCase {
    #[serde(rename = "leafIdx")]
    leaf_index: u64,
    #[serde(rename = "treeSize")]
    tree_size: u64,
    root: String,
    #[serde(rename = "leafHash")]
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyCase {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

/// Decodes base64 fields to hashes; a field that is not 32 bytes long is
/// replaced by its [`stand_in`] and reported in the second value.
fn decode_all(fields: &[&str]) -> (Vec<Hash>, bool) {
    let mut malformed = false;
    let hashes = fields
        .iter()
        .map(|f| {
            let raw = STANDARD
                .decode(f)
                .unwrap_or_else(|e| panic!("base64 {f:?}: {e}"));
            Hash::try_from(raw.as_slice()).unwrap_or_else(|_| {
                malformed = true;
                stand_in(&raw)
            })
        })
        .collect();
    (hashes, malformed)
}

/// A 32-byte stand-in for a value of another length; equal values get
/// equal stand-ins, different values different ones.
fn stand_in(raw: &[u8]) -> Hash {
    sha256(&[b"herald test stand-in\0", raw])
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/merkle/testdata")
}

/// The tree every happy path of the vectors is built on: the eight leaves of
/// Certificate Transparency's RFC 6962 example.
fn example_tree() -> MemoryTree {
    let data: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    MemoryTree::from_leaf_hashes(data.iter().map(|d| leaf_hash(d))).unwrap()
}

/// What happened to the cases of one kind.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// `wantErr: false` cases herald verified.
    accepted: usize,
    /// `wantErr: true` cases herald's verifier rejected.
    rejected: usize,
    /// Of those, cases with a value that is not 32 bytes long.
    rejected_with_stand_ins: usize,
    /// Accepted cases on the example tree whose proof herald regenerated
    /// byte for byte.
    generated_equal: usize,
    /// Accepted cases with a value that is not 32 bytes long.
    accepted_with_stand_ins: Vec<String>,
    /// Rejected cases that only the wrong length of a value rejects.
    rejected_only_for_length: Vec<String>,
}

impl Tally {
    /// Records a verdict; panics when it disagrees with the reference.
    fn record(&mut self, case: &str, desc: &str, want_err: bool, malformed: bool, ok: bool) {
        match (want_err, ok, malformed) {
            (false, true, false) => self.accepted += 1,
            (false, true, true) => {
                self.accepted += 1;
                self.accepted_with_stand_ins.push(case.to_string());
            }
            (false, false, _) => panic!("{case} ({desc}): rejected, the reference accepts it"),
            (true, false, stand_ins) => {
                self.rejected += 1;
                self.rejected_with_stand_ins += usize::from(stand_ins);
            }
            (true, true, true) => self.rejected_only_for_length.push(case.to_string()),
            (true, true, false) => panic!("{case} ({desc}): accepted, the reference rejects it"),
        }
    }
}

fn name(path: &Path) -> String {
    path.strip_prefix(testdata()).unwrap().display().to_string()
}

#[test]
fn inclusion_vectors() {
    let files = json_files(&testdata().join("inclusion"));
    assert_eq!(files.len(), INCLUSION_FILES, "inclusion vector files");
    let mut tree = example_tree();
    let mut tally = Tally::default();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let case: InclusionCase =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", name(path)));
        let proof_fields = case.proof.clone().unwrap_or_default();
        let mut fields = vec![case.leaf_hash.as_str(), case.root.as_str()];
        fields.extend(proof_fields.iter().map(String::as_str));
        let (hashes, malformed) = decode_all(&fields);
        let (leaf, root, proof) = (hashes[0], hashes[1], &hashes[2..]);
        let verdict = verify_inclusion(&leaf, case.leaf_index, case.tree_size, proof, &root);
        tally.record(
            &name(path),
            &case.desc,
            case.want_err,
            malformed,
            verdict.is_ok(),
        );
        // On the example tree, the reference's proof is exactly the one
        // herald generates.
        if !case.want_err && root_at(&mut tree, case.tree_size) == Ok(root) {
            assert_eq!(tree.leaf_hashes()[case.leaf_index as usize], leaf);
            let ours = inclusion_proof(&mut tree, case.leaf_index, case.tree_size).unwrap();
            assert_eq!(ours, proof, "{}", name(path));
            tally.generated_equal += 1;
        }
    }
    assert_eq!(
        tally,
        Tally {
            accepted: 6,
            rejected: 91,
            rejected_with_stand_ins: 25,
            generated_equal: 5,
            accepted_with_stand_ins: vec![],
            // An empty leaf hash and an empty root: equal stand-ins, so
            // only the lengths reject it.
            rejected_only_for_length: vec![
                "inclusion/single-entry/empty-root-and-leaf.json".into()
            ],
        }
    );
}

#[test]
fn consistency_vectors() {
    let files = json_files(&testdata().join("consistency"));
    assert_eq!(files.len(), CONSISTENCY_FILES, "consistency vector files");
    let mut tree = example_tree();
    let mut tally = Tally::default();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let case: ConsistencyCase =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", name(path)));
        let proof_fields = case.proof.clone().unwrap_or_default();
        let mut fields = vec![case.root1.as_str(), case.root2.as_str()];
        fields.extend(proof_fields.iter().map(String::as_str));
        let (hashes, malformed) = decode_all(&fields);
        let (old_root, new_root, proof) = (hashes[0], hashes[1], &hashes[2..]);
        let verdict = verify_consistency(case.size1, case.size2, &old_root, &new_root, proof);
        tally.record(
            &name(path),
            &case.desc,
            case.want_err,
            malformed,
            verdict.is_ok(),
        );
        // On the example tree, the reference's proof is exactly the one
        // herald generates.
        if !case.want_err && root_at(&mut tree, case.size2) == Ok(new_root) {
            assert_eq!(root_at(&mut tree, case.size1), Ok(old_root));
            let ours = consistency_proof(&mut tree, case.size1, case.size2).unwrap();
            assert_eq!(ours, proof, "{}", name(path));
            tally.generated_equal += 1;
        }
    }
    assert_eq!(
        tally,
        Tally {
            accepted: 6,
            rejected: 92,
            rejected_with_stand_ins: 26,
            generated_equal: 5,
            // Equal sizes and two equal "don't care 2" roots: accepted.
            accepted_with_stand_ins: vec![
                "consistency/additional/sizes-are-equal-one-and-proof-is-empty.json".into(),
            ],
            rejected_only_for_length: vec![],
        }
    );
}
