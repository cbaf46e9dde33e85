//! Certificate expiry warnings (renewal before expiry).
//!
//! A node warns in its log (at start, then every
//! [`EXPIRY_CHECK_INTERVAL_MS`]) and in `herald status` once its own
//! certificate or the cluster CA's is within [`CERT_EXPIRY_WARNING_DAYS`] of
//! its end. The computation is pure: the caller passes the time.

use serde::{Deserialize, Serialize};

use crate::clock::format_timestamp;
use crate::identity::TrustAnchor;

/// How long before a certificate (the node's or the CA's) expires the node
/// starts warning, in days.
pub const CERT_EXPIRY_WARNING_DAYS: u64 = 30;
/// How often a running node re-checks its certificates and logs the warning
/// again while it applies, in milliseconds (one day).
pub const EXPIRY_CHECK_INTERVAL_MS: u64 = 24 * 60 * 60 * 1000;

const US_PER_DAY: u64 = 86_400 * 1_000_000;

/// A certificate's end of validity as `herald status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateExpiry {
    /// End of validity (inclusive), RFC 3339 UTC.
    pub not_after: String,
    /// The same, in microseconds since the Unix epoch.
    pub not_after_us: u64,
    /// Whole days left until `not_after` (rounded down); negative once it
    /// has passed (`-1` on the first day after).
    pub days_left: i64,
    /// Set within [`CERT_EXPIRY_WARNING_DAYS`] of the end, and once expired:
    /// what is wrong and what to do.
    pub warning: Option<String>,
}

impl CertificateExpiry {
    /// The expiry of `what` (e.g. `certificate of node "a"`), ending at
    /// `not_after_us`, seen at `now_us`. `remedy` says how to renew it.
    pub fn at(what: &str, not_after_us: u64, now_us: u64, remedy: &str) -> CertificateExpiry {
        let days_left = if now_us <= not_after_us {
            ((not_after_us - now_us) / US_PER_DAY) as i64
        } else {
            -(((now_us - not_after_us).div_ceil(US_PER_DAY)) as i64)
        };
        let not_after = format_timestamp(not_after_us);
        let warning = if now_us > not_after_us {
            Some(format!("{what} expired at {not_after}; {remedy}"))
        } else if not_after_us - now_us <= CERT_EXPIRY_WARNING_DAYS * US_PER_DAY {
            Some(format!(
                "{what} expires at {not_after}, in {days_left} days; {remedy}"
            ))
        } else {
            None
        };
        CertificateExpiry {
            not_after,
            not_after_us,
            days_left,
            warning,
        }
    }
}

/// What to do about an expiring node certificate.
pub const NODE_REMEDY: &str =
    "renew it with `herald keygen renew --dir DIR --name NAME`, then `herald reload` the node";
/// What to do about an expiring CA certificate.
pub const CA_REMEDY: &str =
    "the CA cannot be renewed in place: plan a CA rollover before it ends (keys/README.md)";

/// The node's certificate expiry, seen at `now_us`.
pub fn node_expiry(service: &str, not_after_us: u64, now_us: u64) -> CertificateExpiry {
    CertificateExpiry::at(
        &format!("the certificate of node \"{service}\""),
        not_after_us,
        now_us,
        NODE_REMEDY,
    )
}

/// The expiry of each current (not retired) CA of the bundle, seen at
/// `now_us`, in bundle order. A retired CA is left out: it verifies only
/// history, for which CA validity dates are not checked.
pub fn ca_expiries(trust: &TrustAnchor, now_us: u64) -> Vec<CertificateExpiry> {
    let current: Vec<_> = trust.current_cas().collect();
    let several = current.len() > 1;
    current
        .into_iter()
        .map(|ca| {
            let what = if several {
                format!(
                    "CA certificate {} of the bundle (\"{}\")",
                    ca.number(),
                    ca.subject()
                )
            } else {
                "the cluster CA certificate".to_string()
            };
            CertificateExpiry::at(&what, ca.not_after_us(), now_us, CA_REMEDY)
        })
        .collect()
}

/// The CA expiry `herald status` shows: the current CA of the bundle that
/// ends first, its warning joined with every other current CA's (so a
/// warning about any CA of the bundle is shown). `None` if every CA is
/// retired.
pub fn ca_expiry(trust: &TrustAnchor, now_us: u64) -> Option<CertificateExpiry> {
    let all = ca_expiries(trust, now_us);
    let warnings: Vec<&str> = all.iter().filter_map(|e| e.warning.as_deref()).collect();
    let warning = (!warnings.is_empty()).then(|| warnings.join("; "));
    let mut first = all.iter().min_by_key(|e| e.not_after_us)?.clone();
    first.warning = warning;
    Some(first)
}

/// Logs a `warn` for each of the node's certificate and the CA's that is
/// within [`CERT_EXPIRY_WARNING_DAYS`] of its end or past it.
pub fn log_warnings(service: &str, expiries: &[&CertificateExpiry]) {
    for e in expiries {
        if let Some(warning) = &e.warning {
            tracing::warn!(%service, not_after = %e.not_after, days_left = e.days_left, "{warning}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000_000;

    #[test]
    fn warns_from_thirty_days_before_and_after_expiry() {
        let far = node_expiry("a", NOW + 31 * US_PER_DAY, NOW);
        assert_eq!(far.days_left, 31);
        assert_eq!(far.warning, None);

        let edge = node_expiry("a", NOW + 30 * US_PER_DAY, NOW);
        assert_eq!(edge.days_left, 30);
        let w = edge.warning.unwrap();
        assert!(w.contains("expires at") && w.contains("in 30 days"), "{w}");
        assert!(w.contains("herald keygen renew"), "{w}");

        let soon = node_expiry("a", NOW + US_PER_DAY / 2, NOW);
        assert_eq!(soon.days_left, 0);
        assert!(soon.warning.is_some());

        let past = node_expiry("a", NOW - 1, NOW);
        assert_eq!(past.days_left, -1);
        assert!(past.warning.unwrap().contains("expired at"));

        let long_past = node_expiry("a", NOW - 3 * US_PER_DAY, NOW);
        assert_eq!(long_past.days_left, -3);
    }

    #[test]
    fn every_current_ca_of_the_bundle_is_watched() {
        let dir = tempfile::tempdir().unwrap();
        crate::identity::create_ca(dir.path(), 3650, false).unwrap();
        // CA 2 ends in 10 days: its warning shows though CA 1 has years.
        crate::identity::rollover_ca(dir.path(), 10).unwrap();
        let trust = TrustAnchor::load(&dir.path().join("ca.crt"), None).unwrap();
        let now = crate::clock::now_us();
        let each = ca_expiries(&trust, now);
        assert_eq!(each.len(), 2);
        assert_eq!(each[0].warning, None);
        let w = each[1].warning.as_deref().unwrap();
        assert!(w.contains("CA certificate 2 of the bundle"), "{w}");
        let shown = ca_expiry(&trust, now).unwrap();
        assert_eq!(shown.not_after_us, each[1].not_after_us, "the first to end");
        assert_eq!(shown.warning.as_deref(), Some(w));
        // Once retired, CA 2 is no longer watched (it verifies history only,
        // for which CA dates do not matter).
        crate::identity::retire_ca(dir.path(), 2).unwrap();
        let trust = TrustAnchor::load(&dir.path().join("ca.crt"), None).unwrap();
        let shown = ca_expiry(&trust, now).unwrap();
        assert_eq!(shown.warning, None);
        assert!(shown.days_left > 3000);
    }
}
