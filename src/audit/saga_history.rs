//! Temporal debugging: a saga's full timeline rebuilt offline from an
//! export, using only events that passed every check of `herald verify`.
//!
//! The timeline needs only the CA certificate: saga events carry their
//! routing fields (step, service, kind, attempt, outcome) in signed,
//! cleartext metadata. With the channel key, each entry also shows its
//! decrypted payload (inputs, results, reasons).
//!
//! It lives in the audit layer, above the sagas, because it is built on the
//! offline verification of an export.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use super::verify::{AuditError, AuditOptions, AuditReport, audit_export_visiting};
use crate::core::verify::{DecodedEvent, decrypt_payload};
use crate::saga::events::{self, SAGA_EVENT_PREFIX, meta};

/// Most timeline entries kept for one saga (a saga with the maximum steps
/// and compensation attempts stays far below this).
pub const HISTORY_ENTRIES_MAX: usize = 100_000;

/// One signed fact in a saga's life.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub timestamp_us: u64,
    /// Who proclaimed it (orchestrator or participant) and where in its feed.
    pub author: String,
    pub seq: u64,
    pub event_type: String,
    /// The signed metadata (saga id, step, service, kind, attempt, ...).
    pub meta: BTreeMap<String, String>,
    /// The decrypted JSON payload, when a channel key was given.
    pub payload: Option<serde_json::Value>,
}

impl Entry {
    /// A one-line human description.
    pub fn describe(&self) -> String {
        let m = |k: &str| self.meta.get(k).map(String::as_str).unwrap_or("?");
        let what = self
            .event_type
            .strip_prefix(SAGA_EVENT_PREFIX)
            .unwrap_or(&self.event_type);
        match what {
            "command" => format!(
                "command   step {} {:<22} -> {:<8} {} ({} attempt {})",
                m(meta::STEP),
                m(meta::STEP_NAME),
                m(meta::SERVICE),
                m(meta::COMMAND),
                m(meta::KIND),
                m(meta::ATTEMPT)
            ),
            "reply" => format!(
                "reply     step {} {:<22} <- {:<8} {} ({} attempt {})",
                m(meta::STEP),
                m(meta::STEP_NAME),
                m(meta::SERVICE),
                m(meta::OUTCOME),
                m(meta::KIND),
                m(meta::ATTEMPT)
            ),
            other => match self.meta.get(meta::STEP) {
                Some(step) => format!(
                    "{other:<9} step {step} {}",
                    self.meta
                        .get(meta::STEP_NAME)
                        .map(String::as_str)
                        .unwrap_or("")
                ),
                None => other.to_string(),
            },
        }
    }
}

impl Entry {
    /// The interesting part of the decrypted payload: a reply's result or
    /// failure reason, a failure or alert message. `None` without a key.
    pub fn detail(&self) -> Option<String> {
        let p = self.payload.as_ref()?;
        let outcome = &p["outcome"];
        let found = [
            &outcome["Failed"]["reason"],
            &outcome["Completed"]["result"],
            &p["Failed"]["reason"],
            &p["Alert"]["message"],
            &p["StepFailed"]["reason"],
            &p["CompensationFailed"]["reason"],
        ]
        .into_iter()
        .find(|v| !v.is_null())?;
        Some(match found {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// A saga's timeline and the verification report of the export it came from.
#[derive(Debug, Serialize)]
pub struct History {
    pub saga_id: Uuid,
    pub entries: Vec<Entry>,
    pub report: AuditReport,
}

/// Verifies `export` and collects every verified event of saga `saga_id`,
/// ordered by timestamp (then author and sequence).
pub fn rebuild(
    export: &Path,
    options: &AuditOptions,
    saga_id: Uuid,
) -> Result<History, AuditError> {
    let mut entries = Vec::new();
    let keys = options.channel_keys.clone();
    let mut visit = |event: &DecodedEvent| {
        let h = event.header();
        if !h.event_type.starts_with(SAGA_EVENT_PREFIX)
            || events::saga_id_of(h) != Some(saga_id)
            || entries.len() >= HISTORY_ENTRIES_MAX
        {
            return;
        }
        let payload = event
            .payload()
            .filter(|_| !keys.is_empty())
            .and_then(|p| decrypt_payload(h, p, &keys).ok())
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        entries.push(Entry {
            timestamp_us: h.timestamp_us,
            author: h.author.clone(),
            seq: h.seq,
            event_type: h.event_type.clone(),
            meta: h.meta.iter().cloned().collect(),
            payload,
        });
    };
    let report = audit_export_visiting(export, options, Some(&mut visit))?;
    entries.sort_by(|a, b| {
        (a.timestamp_us, &a.author, a.seq).cmp(&(b.timestamp_us, &b.author, b.seq))
    });
    Ok(History {
        saga_id,
        entries,
        report,
    })
}
