//! `herald keygen rotate` and `herald keygen recover` from the command
//! line: exit codes, the JSON they print, refusals on stderr that write
//! nothing. The real binary in temporary directories.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use herald::core::transition::{KeyTransition, TransitionKind};
use herald::identity::transition::read_transition;
use herald::identity::{TrustAnchor, read_cert_pem};

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .expect("run herald")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
}

#[track_caller]
fn json(o: &Output) -> serde_json::Value {
    assert_ok(o);
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// Exit 2, one `herald: error:` line naming `needle`, nothing on stdout.
#[track_caller]
fn assert_refused(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {:?}", o.stdout);
    assert!(err.starts_with("herald: error: "), "{err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A key directory with a CA and node `a`.
fn keys(root: &Path) -> std::path::PathBuf {
    let dir = root.join("keys");
    assert_ok(&herald(&["keygen", "ca", "--dir", s(&dir)]));
    assert_ok(&herald(&[
        "keygen",
        "node",
        "--dir",
        s(&dir),
        "--name",
        "a",
    ]));
    dir
}

fn public_key_of_cert(dir: &Path, name: &str) -> [u8; 32] {
    let trust = TrustAnchor::load(&dir.join("ca.crt"), None).unwrap();
    let der = read_cert_pem(&dir.join(format!("{name}.crt"))).unwrap();
    trust.admit_node(name, &der).unwrap().public_key
}

/// The authorization next to `dir/a.crt`, checked to be for that
/// certificate, as a transition payload (without its checkpoint).
fn installed_transition(dir: &Path) -> KeyTransition {
    let cert = dir.join("a.crt");
    let der = read_cert_pem(&cert).unwrap();
    let auth = read_transition(&cert).unwrap().expect("a.transition");
    assert!(auth.is_for("a", &der));
    KeyTransition {
        kind: auth.kind,
        new_cert: der,
        authorization: auth.signature,
        final_checkpoint: Vec::new(),
    }
}

fn verifying_key(bytes: [u8; 32]) -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap()
}

#[test]
fn rotate_prints_what_it_wrote_and_the_old_key_authorizes_the_new_certificate() {
    let root = tempfile::tempdir().unwrap();
    let dir = keys(root.path());
    let old_public = public_key_of_cert(&dir, "a");

    let out = json(&herald(&[
        "keygen",
        "rotate",
        "--dir",
        s(&dir),
        "--name",
        "a",
        "--days",
        "30",
        "--json",
    ]));
    assert_eq!(out["kind"], "rotation");
    assert_eq!(out["service"], "a");
    let written: Vec<&str> = out["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected: Vec<String> = ["a.prev.key", "a.transition", "a.key", "a.crt"]
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    assert_eq!(written, expected);
    let new_public = public_key_of_cert(&dir, "a");
    assert_eq!(out["public_key"], hex::encode(new_public));
    assert_ne!(new_public, old_public);
    assert_eq!(out["serial"].as_str().unwrap().len(), 32, "{out}");

    let transition = installed_transition(&dir);
    assert_eq!(transition.kind, TransitionKind::Rotation);
    assert!(transition.authorized_by("a", &verifying_key(old_public)));

    // Text output: one line per file and what to do next.
    std::fs::remove_file(dir.join("a.prev.key")).unwrap();
    let o = herald(&["keygen", "rotate", "--dir", s(&dir), "--name", "a"]);
    assert_ok(&o);
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[0],
        format!("wrote {}", dir.join("a.prev.key").display())
    );
    assert!(lines[4].contains("herald reload --config"), "{text}");
    assert!(lines[4].contains("SIGHUP"), "{text}");
}

#[test]
fn a_refused_rotate_exits_2_with_the_reason_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = keys(root.path());
    assert_ok(&herald(&[
        "keygen",
        "revoke",
        "--dir",
        s(&dir),
        "--name",
        "a",
        "--from-seq",
        "3",
    ]));
    let before = snapshot(&dir);
    let o = herald(&[
        "keygen",
        "rotate",
        "--dir",
        s(&dir),
        "--name",
        "a",
        "--json",
    ]);
    assert_refused(&o, "is revoked");
    assert!(
        stderr(&o).contains("herald keygen recover"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&dir), before, "nothing written");

    let o = herald(&["keygen", "rotate", "--dir", s(&dir), "--name", "zz"]);
    assert_refused(&o, "no node named \"zz\"");
    assert_eq!(snapshot(&dir), before, "nothing written");
}

#[test]
fn recover_needs_a_revoked_certificate_and_is_authorized_by_the_ca() {
    let root = tempfile::tempdir().unwrap();
    let dir = keys(root.path());

    let before = snapshot(&dir);
    let o = herald(&[
        "keygen",
        "recover",
        "--dir",
        s(&dir),
        "--name",
        "a",
        "--json",
    ]);
    assert_refused(&o, "herald keygen revoke --name a --from-seq");
    assert_eq!(snapshot(&dir), before, "nothing written");

    assert_ok(&herald(&[
        "keygen",
        "revoke",
        "--dir",
        s(&dir),
        "--name",
        "a",
        "--from-seq",
        "3",
    ]));
    let out = json(&herald(&[
        "keygen",
        "recover",
        "--dir",
        s(&dir),
        "--name",
        "a",
        "--json",
    ]));
    assert_eq!(out["kind"], "recovery");
    assert_eq!(out["service"], "a");
    assert_eq!(
        out["public_key"],
        hex::encode(public_key_of_cert(&dir, "a"))
    );
    assert_eq!(out["written"].as_array().unwrap().len(), 4, "{out}");

    let ca_key = herald::identity::pem::read_private_key(&dir.join("ca.key")).unwrap();
    let transition = installed_transition(&dir);
    assert_eq!(transition.kind, TransitionKind::Recovery);
    assert!(transition.authorized_by("a", &ca_key.verifying_key()));
}
