//! The revocation list: certificates an operator has cut off.
//!
//! # File format (`revoked.toml`)
//!
//! A TOML file with zero or more `[[revoked]]` tables:
//!
//! ```toml
//! [[revoked]]
//! name = "b"                      # service name: required, labels the entry
//! serial = "5f3a...e1"            # certificate serial, hex (':' separators allowed)
//! public_key = "9c1d...07"        # Ed25519 public key, 64 hex characters
//! revoked_at_us = 1767225600000000 # when it was revoked, microseconds since the Unix epoch (UTC)
//! from_seq = 1200                 # optional cut-off: events of its feed from this sequence number on are refused
//! from_us = 1767225600000000      # optional cut-off: events timestamped at or after this time are refused
//! ```
//!
//! `name` is required (it labels the entry in error messages) but is never
//! matched against a certificate. At least one of `serial` and
//! `public_key` is required; a certificate is revoked when **either** its
//! serial or its public key matches an entry (matching the key also cuts off
//! any other certificate issued for the same key). Hex is case-insensitive.
//! `revoked_at_us` is optional. Unknown fields are rejected, so a typo such as
//! `serail` cannot silently leave a certificate trusted. A file without any
//! `[[revoked]]` table (or an empty file) revokes nothing.
//!
//! **Cut-off.** An entry without `from_seq` and `from_us` revokes the
//! certificate outright: it is refused everywhere, and its author's feed is
//! unverifiable as a whole. An entry with either keeps the history before
//! the cut-off valid: verifiers admit the certificate for the events of its
//! feed before it and refuse every event at or after it (check `revoked`).
//! Any entry, with or without a cut-off, refuses the certificate in TLS
//! handshakes. When several entries match one certificate, an outright one
//! wins, and otherwise the earliest bound of each kind applies.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{IdentityError, read_file};
use crate::core::cert::Cutoff;

/// One `[[revoked]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_us: Option<u64>,
    /// Cut-off: the first sequence number of the feed that is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// Cut-off: the first event time refused (microseconds, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_us: Option<u64>,
}

impl RevokedEntry {
    /// The entry's cut-off, if it has one (`None`: revoked outright).
    pub fn cutoff(&self) -> Option<Cutoff> {
        (self.from_seq.is_some() || self.from_us.is_some()).then_some(Cutoff {
            from_seq: self.from_seq,
            from_us: self.from_us,
        })
    }
}

/// How the list treats one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Not listed.
    None,
    /// Revoked outright: refused everywhere.
    Outright,
    /// Revoked from a cut-off: refused in handshakes; its feed's events
    /// before the cut-off stay valid.
    From(Cutoff),
}

impl Revocation {
    /// Combines two matching entries: outright wins, cut-offs take the
    /// earlier bounds.
    fn and(self, other: Revocation) -> Revocation {
        match (self, other) {
            (Revocation::Outright, _) | (_, Revocation::Outright) => Revocation::Outright,
            (Revocation::From(a), Revocation::From(b)) => Revocation::From(a.stricter(b)),
            (Revocation::None, x) | (x, Revocation::None) => x,
        }
    }

    fn of(entry: &RevokedEntry) -> Revocation {
        entry
            .cutoff()
            .map_or(Revocation::Outright, Revocation::From)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationFile {
    #[serde(default)]
    revoked: Vec<RevokedEntry>,
}

/// A parsed revocation list: pure data, lookups by public key or serial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    entries: Vec<RevokedEntry>,
    keys: BTreeMap<[u8; 32], Revocation>,
    serials: BTreeMap<Vec<u8>, Revocation>,
}

/// Serial numbers compare as unsigned integers: a DER leading zero (added to
/// keep the INTEGER positive) does not make a different serial.
fn normalize_serial(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

fn parse_hex(value: &str) -> Option<Vec<u8>> {
    let cleaned: String = value.chars().filter(|c| *c != ':').collect();
    hex::decode(cleaned).ok()
}

impl RevocationList {
    /// A list that revokes nothing.
    pub fn empty() -> Self {
        RevocationList::default()
    }

    /// Builds a list from entries, checking each.
    pub fn from_entries(entries: Vec<RevokedEntry>) -> Result<Self, String> {
        let mut list = RevocationList::empty();
        for (i, entry) in entries.into_iter().enumerate() {
            list.insert(entry)
                .map_err(|reason| format!("entry {}: {reason}", i + 1))?;
        }
        Ok(list)
    }

    fn insert(&mut self, entry: RevokedEntry) -> Result<(), String> {
        if entry.serial.is_none() && entry.public_key.is_none() {
            return Err(format!(
                "\"{}\" has neither `serial` nor `public_key`",
                entry.name
            ));
        }
        let revocation = Revocation::of(&entry);
        if let Some(serial) = &entry.serial {
            let bytes = parse_hex(serial)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| format!("\"{}\": serial {serial:?} is not hex", entry.name))?;
            let slot = self
                .serials
                .entry(normalize_serial(&bytes))
                .or_insert(Revocation::None);
            *slot = slot.and(revocation);
        }
        if let Some(key) = &entry.public_key {
            let bytes = parse_hex(key)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!(
                        "\"{}\": public_key {key:?} is not 64 hex characters",
                        entry.name
                    )
                })?;
            let slot = self.keys.entry(bytes).or_insert(Revocation::None);
            *slot = slot.and(revocation);
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Parses revocation-list TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RevocationFile =
            toml::from_str(text).map_err(|e| super::describe_toml_error(text, &e))?;
        RevocationList::from_entries(file.revoked)
    }

    /// Reads and parses a revocation list file (format in the module docs).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let bytes = read_file(path)?;
        let malformed = |reason: String| IdentityError::MalformedRevocationList {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| malformed("not UTF-8 text".into()))?;
        RevocationList::parse(text).map_err(malformed)
    }

    /// True if either the public key or the serial is listed (with or
    /// without a cut-off).
    pub fn is_revoked(&self, public_key: &[u8; 32], serial: &[u8]) -> bool {
        self.revocation(public_key, serial) != Revocation::None
    }

    /// How the list treats a certificate with this key and serial: every
    /// matching entry counts (see the module docs).
    pub fn revocation(&self, public_key: &[u8; 32], serial: &[u8]) -> Revocation {
        let by_key = self.keys.get(public_key).copied();
        let by_serial = self.serials.get(&normalize_serial(serial)).copied();
        by_key
            .unwrap_or(Revocation::None)
            .and(by_serial.unwrap_or(Revocation::None))
    }

    /// True if an entry lists this public key.
    pub fn contains_key(&self, public_key: &[u8; 32]) -> bool {
        self.keys.contains_key(public_key)
    }

    /// True if an entry lists this serial.
    pub fn contains_serial(&self, serial: &[u8]) -> bool {
        self.serials.contains_key(&normalize_serial(serial))
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[RevokedEntry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the list revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Renders one entry as a `[[revoked]]` TOML table (appended to a file).
pub fn entry_toml(entry: &RevokedEntry) -> String {
    #[derive(Serialize)]
    struct One<'a> {
        revoked: [&'a RevokedEntry; 1],
    }
    toml::to_string(&One { revoked: [entry] }).unwrap_or_default()
}

/// The header written at the top of a new `revoked.toml`.
pub const FILE_HEADER: &str = "\
# herald revocation list. A certificate is revoked when its serial OR its
# Ed25519 public key matches an entry. Add entries with
# `herald keygen revoke --dir DIR --name NAME`, or by hand:
#
# [[revoked]]
# name = \"b\"                       # service name (required; labels the entry)
# serial = \"...\"                   # certificate serial, hex
# public_key = \"...\"               # Ed25519 public key, 64 hex characters
# revoked_at_us = 1767225600000000 # microseconds since the Unix epoch (UTC)
# from_seq = 1200                  # cut-off (optional): refuse its feed's events from this seq on
# from_us = 1767225600000000       # cut-off (optional): refuse events timestamped from this time on
#
# Without from_seq/from_us the certificate is revoked outright and its whole
# feed is unverifiable; with a cut-off, events before it stay valid.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let key = [3u8; 32];
        let text = format!(
            "{FILE_HEADER}\n[[revoked]]\nname = \"a\"\nserial = \"00:AB:cd\"\n\n\
             [[revoked]]\nname = \"b\"\npublic_key = \"{}\"\nrevoked_at_us = 5\n",
            hex::encode(key)
        );
        let list = RevocationList::parse(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.is_revoked(&[0u8; 32], &[0xab, 0xcd]));
        assert!(list.is_revoked(&[0u8; 32], &[0x00, 0xab, 0xcd]));
        assert!(!list.is_revoked(&[0u8; 32], &[0xab, 0xce]));
        assert!(list.is_revoked(&key, &[1]));
        assert!(!list.is_revoked(&[4u8; 32], &[1]));
        assert!(!RevocationList::empty().is_revoked(&key, &[0xab, 0xcd]));
        assert!(RevocationList::parse(FILE_HEADER).unwrap().is_empty());
        assert!(RevocationList::parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_entries() {
        for bad in [
            "[[revoked]]\nname = \"a\"\n",
            "[[revoked]]\nname = \"a\"\nserail = \"01\"\n",
            "[[revoked]]\nname = \"a\"\nserial = \"xyz\"\n",
            "[[revoked]]\nname = \"a\"\npublic_key = \"0102\"\n",
            "[[revoked]]\nserial = \"01\"\n",
            "revoked = 3\n",
        ] {
            assert!(RevocationList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_roundtrip() {
        let e = RevokedEntry {
            name: "a".into(),
            serial: Some("0102".into()),
            public_key: Some(hex::encode([1u8; 32])),
            revoked_at_us: Some(7),
            from_seq: Some(12),
            from_us: None,
        };
        let text = format!("{FILE_HEADER}\n{}", entry_toml(&e));
        let list = RevocationList::parse(&text).unwrap();
        assert_eq!(list.entries(), &[e]);
    }

    fn cut(from_seq: Option<u64>, from_us: Option<u64>) -> Revocation {
        Revocation::From(Cutoff { from_seq, from_us })
    }

    #[test]
    fn a_cut_off_entry_keeps_history_and_outright_wins_over_it() {
        let key = hex::encode([4u8; 32]);
        let list = RevocationList::parse(&format!(
            "[[revoked]]\nname = \"a\"\npublic_key = \"{key}\"\nfrom_seq = 40\n\n\
             [[revoked]]\nname = \"a\"\nserial = \"0a\"\nfrom_seq = 30\nfrom_us = 900\n"
        ))
        .unwrap();
        // Matched by key alone: its own cut-off.
        assert_eq!(list.revocation(&[4; 32], &[1]), cut(Some(40), None));
        // Matched by key and serial: the earlier bound of each kind.
        assert_eq!(list.revocation(&[4; 32], &[0x0a]), cut(Some(30), Some(900)));
        assert!(list.is_revoked(&[4; 32], &[1]), "a cut-off still revokes");
        assert_eq!(list.revocation(&[5; 32], &[2]), Revocation::None);

        let outright = RevocationList::parse(&format!(
            "[[revoked]]\nname = \"a\"\npublic_key = \"{key}\"\nfrom_seq = 40\n\n\
             [[revoked]]\nname = \"a\"\nserial = \"0a\"\n"
        ))
        .unwrap();
        assert_eq!(
            outright.revocation(&[4; 32], &[0x0a]),
            Revocation::Outright,
            "an entry without a cut-off revokes the whole feed"
        );
        assert!(
            RevocationList::parse("[[revoked]]\nname = \"a\"\nserial = \"0a\"\nfrom_seq = -1\n")
                .is_err(),
            "a negative cut-off is refused"
        );
    }
}
