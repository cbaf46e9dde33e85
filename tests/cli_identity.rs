//! End-to-end tests of `herald keygen` and `herald init`: the real binary in
//! temporary directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herald::config::NodeConfig;
use herald::identity::{CertError, NodeIdentity, TrustAnchor, load_channel_key, read_cert_pem};

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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
}

#[track_caller]
fn assert_failed(o: &Output, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {} stderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err:?}");
}

/// All files below `dir` with their contents, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn ca_and_node(dir: &Path, node: &str) {
    assert_ok(&herald(&["keygen", "ca", "--dir", s(dir)]));
    assert_ok(&herald(&[
        "keygen",
        "node",
        "--dir",
        s(dir),
        "--name",
        node,
    ]));
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn init_cluster_loads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let out = herald(&[
        "init",
        "--dir",
        s(&dir),
        "--nodes",
        "a,b,c",
        "--base-port",
        "9100",
        "--json",
    ]);
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let written: Vec<String> = json["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for f in [
        "keys/ca.crt",
        "keys/ca.key",
        "keys/channel-default.key",
        "keys/revoked.toml",
    ] {
        assert!(
            written.contains(&s(&dir.join(f)).to_string()),
            "{f} in {written:?}"
        );
    }
    for n in ["a", "b", "c"] {
        for f in [
            format!("{n}.toml"),
            format!("keys/{n}.crt"),
            format!("keys/{n}.key"),
        ] {
            assert!(written.contains(&s(&dir.join(&f)).to_string()), "{f}");
        }
    }
    assert_eq!(written.len(), 13);

    // Config paths are relative, so the directory can be moved as a whole.
    let text = std::fs::read_to_string(dir.join("a.toml")).unwrap();
    assert!(text.contains("key = \"keys/a.key\""), "{text}");
    assert!(text.contains("data_dir = \"data/a\""), "{text}");

    let now = herald::clock::now_us();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let cfg = NodeConfig::load(&dir.join(format!("{n}.toml"))).unwrap();
        assert_eq!(cfg.service, *n);
        assert_eq!(cfg.listen.to_string(), format!("127.0.0.1:{}", 9100 + i));
        assert_eq!(cfg.default_channel, "default");
        assert_eq!(cfg.data_dir, dir.join("data").join(n));
        let peers: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
        let expected: Vec<&str> = ["a", "b", "c"].into_iter().filter(|p| p != n).collect();
        assert_eq!(peers, expected);
        for p in &cfg.peers {
            let j = ["a", "b", "c"].iter().position(|x| *x == p.name).unwrap();
            assert_eq!(p.address.to_string(), format!("127.0.0.1:{}", 9100 + j));
        }
        let trust = TrustAnchor::load(&cfg.ca, cfg.revoked.as_deref()).unwrap();
        let id = NodeIdentity::load(&cfg.service, &cfg.key, &cfg.cert, &trust, now).unwrap();
        assert_eq!(id.service, *n);
        assert_eq!(mode(&cfg.key), 0o600);
        for (name, path) in &cfg.channels {
            let key = load_channel_key(name, path).unwrap();
            assert_eq!(key.name(), "default");
            assert_eq!(mode(path), 0o600);
        }
    }
    assert_eq!(mode(&dir.join("keys/ca.key")), 0o600);
    let channel = std::fs::read_to_string(dir.join("keys/channel-default.key")).unwrap();
    assert_eq!(channel.len(), 65);
    assert!(channel.ends_with('\n'));
    assert!(
        channel[..64]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );

    // Key material never appears on stdout or stderr.
    let seed = &std::fs::read_to_string(dir.join("keys/a.key")).unwrap()[28..60];
    assert!(!stdout(&out).contains(seed));
    assert!(!stdout(&out).contains(&channel[..64]));

    // A second init refuses, naming a file, and changes nothing.
    let before = snapshot(&dir);
    let again = herald(&["init", "--dir", s(&dir), "--nodes", "a,b,c"]);
    assert_failed(&again, "already exists");
    assert!(stderr(&again).contains("--force"));
    assert_eq!(snapshot(&dir), before);
    // Even if only one of the targets exists.
    let dir2 = tmp.path().join("partial");
    std::fs::create_dir_all(&dir2).unwrap();
    std::fs::write(dir2.join("b.toml"), "keep").unwrap();
    assert_failed(
        &herald(&["init", "--dir", s(&dir2), "--nodes", "a,b"]),
        s(&dir2.join("b.toml")),
    );
    assert_eq!(snapshot(&dir2).len(), 1);
    assert!(!dir2.join("keys").exists());
    // --force replaces everything with a fresh CA.
    assert_ok(&herald(&[
        "init",
        "--dir",
        s(&dir),
        "--nodes",
        "a,b,c",
        "--force",
    ]));
    assert_ne!(
        std::fs::read(dir.join("keys/ca.crt")).unwrap(),
        before
            .iter()
            .find(|(p, _)| p.ends_with("keys/ca.crt"))
            .unwrap()
            .1
    );
}

#[test]
fn openssl_reads_and_verifies_the_files() {
    if !openssl_available() {
        eprintln!("openssl not found; skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca_and_node(dir, "a");
    assert_ok(&herald(&[
        "keygen",
        "client",
        "--dir",
        s(dir),
        "--name",
        "cli",
    ]));
    for cert in ["a.crt", "cli.crt"] {
        let o = Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                s(&dir.join("ca.crt")),
                s(&dir.join(cert)),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "verify {cert}: {}", stderr(&o));
    }
    for key in ["ca.key", "a.key", "cli.key"] {
        let o = Command::new("openssl")
            .args(["pkey", "-in", s(&dir.join(key)), "-noout"])
            .output()
            .unwrap();
        assert!(o.status.success(), "pkey {key}: {}", stderr(&o));
        // PKCS#8 v1: exactly the RFC 8410 prefix and a 32-byte seed.
        let o = Command::new("openssl")
            .args(["pkey", "-in", s(&dir.join(key)), "-outform", "DER"])
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_eq!(o.stdout.len(), 48, "{key}");
        assert_eq!(
            hex::encode(&o.stdout[..16]),
            "302e020100300506032b657004220420"
        );
    }
    // The node certificate's public key is the one in its key file.
    let pub_of = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(
        pub_of(&["x509", "-in", s(&dir.join("a.crt")), "-noout", "-pubkey"]),
        pub_of(&["pkey", "-in", s(&dir.join("a.key")), "-pubout"])
    );
    // A certificate from another CA does not verify (the check can fail).
    let other = tempfile::tempdir().unwrap();
    ca_and_node(other.path(), "a");
    let o = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            s(&dir.join("ca.crt")),
            s(&other.path().join("a.crt")),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());

    // herald reads keys that OpenSSL generated (its default Ed25519 PKCS#8).
    let ossl_key = dir.join("ossl.key");
    let o = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out", s(&ossl_key)])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::copy(&ossl_key, dir.join("ca.key")).unwrap();
    // ...but it does not match ca.crt, which issuing must report.
    let out = herald(&["keygen", "node", "--dir", s(dir), "--name", "b"]);
    assert_failed(&out, "does not match certificate");
    assert!(stderr(&out).contains(s(&dir.join("ca.key"))));
    assert!(!dir.join("b.crt").exists() && !dir.join("b.key").exists());

    // An RSA key is refused as the wrong type, naming the file.
    let rsa = dir.join("rsa.key");
    let o = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
        ])
        .arg(&rsa)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(&rsa, dir.join("ca.key")).unwrap();
    let out = herald(&["keygen", "node", "--dir", s(dir), "--name", "b"]);
    assert_failed(&out, "wrong key type");
    assert!(stderr(&out).contains(s(&dir.join("ca.key"))));
    assert!(stderr(&out).contains("RSA"));
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca_and_node(dir, "a");
    assert_ok(&herald(&[
        "keygen",
        "channel",
        "--dir",
        s(dir),
        "--name",
        "ops",
    ]));
    let before = snapshot(dir);

    let cases: [&[&str]; 3] = [
        &["keygen", "ca", "--dir", s(dir)],
        &["keygen", "node", "--dir", s(dir), "--name", "a"],
        &["keygen", "channel", "--dir", s(dir), "--name", "ops"],
    ];
    for args in cases {
        let out = herald(args);
        assert_failed(&out, "already exists");
        assert!(stderr(&out).contains(s(dir)), "{}", stderr(&out));
        assert!(stdout(&out).is_empty());
        assert_eq!(snapshot(dir), before, "{args:?} changed files");
    }
    // Only one of the two targets exists: still nothing written.
    std::fs::remove_file(dir.join("a.crt")).unwrap();
    let before = snapshot(dir);
    assert_failed(
        &herald(&["keygen", "node", "--dir", s(dir), "--name", "a"]),
        s(&dir.join("a.key")),
    );
    assert_eq!(snapshot(dir), before);

    // --force replaces the files, keeping key files private.
    let old_key = std::fs::read(dir.join("a.key")).unwrap();
    std::fs::set_permissions(dir.join("a.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = herald(&["keygen", "node", "--dir", s(dir), "--name", "a", "--force"]);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        format!(
            "wrote {}\nwrote {}\n",
            s(&dir.join("a.crt")),
            s(&dir.join("a.key"))
        )
    );
    assert_ne!(std::fs::read(dir.join("a.key")).unwrap(), old_key);
    assert_eq!(mode(&dir.join("a.key")), 0o600);
    let old_ca = std::fs::read(dir.join("ca.key")).unwrap();
    assert_ok(&herald(&["keygen", "ca", "--dir", s(dir), "--force"]));
    assert_ne!(std::fs::read(dir.join("ca.key")).unwrap(), old_ca);
    // No temporary files are left behind.
    assert!(
        snapshot(dir)
            .iter()
            .all(|(p, _)| { !p.file_name().unwrap().to_str().unwrap().starts_with('.') })
    );
}

#[test]
fn key_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca_and_node(dir, "a");
    assert_ok(&herald(&[
        "keygen",
        "client",
        "--dir",
        s(dir),
        "--name",
        "cli",
    ]));
    assert_ok(&herald(&[
        "keygen",
        "channel",
        "--dir",
        s(dir),
        "--name",
        "ops",
    ]));
    for key in ["ca.key", "a.key", "cli.key", "channel-ops.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    for cert in ["ca.crt", "a.crt", "cli.crt"] {
        assert_eq!(mode(&dir.join(cert)) & 0o600, 0o600, "{cert}");
    }
    let text = std::fs::read_to_string(dir.join("channel-ops.key")).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    assert_eq!(
        load_channel_key("ops", &dir.join("channel-ops.key"))
            .unwrap()
            .name(),
        "ops"
    );
}

#[test]
fn malformed_pem_fails_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca_and_node(dir, "a");
    let before_key = std::fs::read(dir.join("ca.key")).unwrap();

    std::fs::write(
        dir.join("ca.crt"),
        "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = herald(&["keygen", "node", "--dir", s(dir), "--name", "b"]);
    assert_failed(&out, s(&dir.join("ca.crt")));
    assert!(stderr(&out).contains("malformed PEM"), "{}", stderr(&out));
    assert!(!dir.join("b.crt").exists() && !dir.join("b.key").exists());

    // Missing CA files.
    std::fs::remove_file(dir.join("ca.crt")).unwrap();
    let out = herald(&["keygen", "node", "--dir", s(dir), "--name", "b"]);
    assert_failed(&out, s(&dir.join("ca.crt")));
    assert!(stderr(&out).contains("not found"));

    // A malformed key file.
    let fresh = tempfile::tempdir().unwrap();
    ca_and_node(fresh.path(), "a");
    std::fs::write(fresh.path().join("ca.key"), "garbage").unwrap();
    let out = herald(&["keygen", "node", "--dir", s(fresh.path()), "--name", "b"]);
    assert_failed(&out, s(&fresh.path().join("ca.key")));
    assert!(!before_key.is_empty());
}

#[test]
fn unwritable_directory_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores permission bits; then only the not-a-directory case applies.
    let probe = ro.join("probe");
    let root = std::fs::write(&probe, b"x").is_ok();
    if !root {
        let out = herald(&["keygen", "ca", "--dir", s(&ro)]);
        assert_failed(&out, "cannot write");
        assert!(stderr(&out).contains(s(&ro)));
        assert!(std::fs::read_dir(&ro).unwrap().next().is_none());
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        // As root, use a directory the kernel refuses writes to, if there is one.
        let sys = Path::new("/sys/kernel");
        if sys.is_dir() && std::fs::write(sys.join("herald-probe"), b"x").is_err() {
            let out = herald(&["keygen", "channel", "--dir", s(sys), "--name", "x"]);
            assert_failed(&out, "cannot write");
            assert!(stderr(&out).contains("/sys/kernel/channel-x.key"));
        }
    }

    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    for dir in [file.clone(), file.join("sub")] {
        let out = herald(&["keygen", "ca", "--dir", s(&dir)]);
        assert_failed(&out, "not a directory");
        assert!(stderr(&out).contains(s(&file)));
        let out = herald(&["init", "--dir", s(&dir), "--nodes", "a"]);
        assert_failed(&out, "not a directory");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn revoke_then_admit_reports_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca_and_node(dir, "a");
    assert_ok(&herald(&["keygen", "node", "--dir", s(dir), "--name", "b"]));
    let list = dir.join("revoked.toml");
    assert!(!list.exists());

    let out = herald(&["keygen", "revoke", "--dir", s(dir), "--name", "a", "--json"]);
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["written"][0], s(&list));
    let first = std::fs::read_to_string(&list).unwrap();
    assert!(
        first.contains("[[revoked]]") && first.contains("name = \"a\""),
        "{first}"
    );

    // Idempotent.
    let out = herald(&["keygen", "revoke", "--dir", s(dir), "--name", "a"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("already revoked"));
    assert_eq!(std::fs::read_to_string(&list).unwrap(), first);

    let trust = TrustAnchor::load(&dir.join("ca.crt"), Some(&list)).unwrap();
    let a = read_cert_pem(&dir.join("a.crt")).unwrap();
    let e = trust.admit_author("a", &a).unwrap_err();
    assert!(matches!(e, CertError::Revoked { .. }), "{e}");
    assert!(e.to_string().contains("revoked"));
    let b = read_cert_pem(&dir.join("b.crt")).unwrap();
    assert!(trust.admit_author("b", &b).is_ok());

    // Revoking a second node appends.
    assert_ok(&herald(&[
        "keygen",
        "revoke",
        "--dir",
        s(dir),
        "--name",
        "b",
    ]));
    let trust = TrustAnchor::load(&dir.join("ca.crt"), Some(&list)).unwrap();
    assert!(trust.admit_author("b", &b).is_err());
    assert!(trust.admit_author("a", &a).is_err());
    assert_eq!(trust.revoked().len(), 2);

    // Revoking a name without a certificate fails with the path.
    let out = herald(&["keygen", "revoke", "--dir", s(dir), "--name", "zz"]);
    assert_failed(&out, s(&dir.join("zz.crt")));
}

#[test]
fn invalid_names_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_ok(&herald(&["keygen", "ca", "--dir", s(dir)]));
    let before = snapshot(dir);
    let long = "x".repeat(64);
    for name in [
        "Upper",
        "-lead",
        "trail-",
        "a.b",
        "a_b",
        "",
        long.as_str(),
        "ca",
        "channel-x",
    ] {
        for kind in ["node", "client", "channel"] {
            if kind == "channel" && (name == "ca" || name == "channel-x") {
                continue;
            }
            let name_arg = format!("--name={name}");
            let out = herald(&["keygen", kind, "--dir", s(dir), &name_arg]);
            assert_failed(&out, "invalid");
            assert!(
                stderr(&out).contains(&format!("{name:?}")),
                "{}",
                stderr(&out)
            );
        }
    }
    let out = herald(&["init", "--dir", s(&dir.join("c")), "--nodes", "a,B"]);
    assert_failed(&out, "invalid service name \"B\"");
    assert!(!dir.join("c").exists());
    assert_eq!(snapshot(dir), before);
}
