//! The CA bundle file (`ca.crt`): the cluster's CA certificates, one PEM
//! `CERTIFICATE` block each, during a CA rollover more than one.
//!
//! Format (docs/FORMAT.md section 9, "The CA bundle"): UTF-8 text holding
//! 1 to [`CA_BUNDLE_CERTS_MAX`] PEM `CERTIFICATE` blocks (RFC 7468), numbered
//! 1, 2, ... in file order. Text outside the blocks is explanatory and
//! ignored, except one kind of line: `herald-ca-retired: <RFC 3339 UTC time>`
//! placed among the lines before a block (after the previous block's END
//! line) marks that block's CA as **retired** from that time. At most one
//! such line precedes a block, and one must not follow the last block.
//! Certificate 1 is the cluster's founding CA: its key names the cluster
//! (the cluster id of section 15.2), so it is never removed or reordered.
//!
//! Parsing is pure (text in, blocks out); [`super::TrustAnchor::load`] reads
//! the file and checks each block is a CA.

/// Most CA certificates one bundle may hold. A rollover adds one and none is
/// ever removed (feeds whose certificates a retired CA issued must stay
/// verifiable), so this allows seven rollovers: seventy years at the default
/// ten-year CA validity.
pub const CA_BUNDLE_CERTS_MAX: usize = 8;

/// The line prefix that marks the next block's CA as retired.
pub const RETIRED_MARKER: &str = "herald-ca-retired:";

const BEGIN_CERT: &str = "-----BEGIN CERTIFICATE-----";
const END_CERT: &str = "-----END CERTIFICATE-----";

/// One certificate of a bundle, as found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleBlock {
    /// The certificate DER.
    pub der: Vec<u8>,
    /// When its CA was retired (microseconds since the Unix epoch), if it is.
    pub retired_at_us: Option<u64>,
    /// The 0-based index of its BEGIN line in the file's lines.
    pub begin_line: usize,
}

/// Parses RFC 3339 UTC text (`2026-12-04T12:40:00.123456Z`) into
/// microseconds since the Unix epoch (digits beyond microseconds dropped).
pub fn parse_rfc3339_us(text: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 UTC time ({e})"))?;
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    u64::try_from(since.as_micros()).map_err(|_| format!("{text:?} is too far in the future"))
}

/// Splits bundle text into its certificate blocks. Errors name the line
/// (1-based) or the certificate number and say what is wrong.
pub fn parse_bundle(text: &str) -> Result<Vec<BundleBlock>, String> {
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let mut blocks = Vec::new();
    let mut pending_retired: Option<(usize, u64)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(rest) = line.strip_prefix(RETIRED_MARKER) {
            if let Some((first, _)) = pending_retired {
                return Err(format!(
                    "line {}: a second `{RETIRED_MARKER}` line for the same certificate (the first is line {})",
                    i + 1,
                    first + 1
                ));
            }
            let at = parse_rfc3339_us(rest.trim()).map_err(|e| format!("line {}: {e}", i + 1))?;
            pending_retired = Some((i, at));
            i += 1;
            continue;
        }
        if line.starts_with("-----BEGIN ") {
            if line != BEGIN_CERT {
                return Err(format!(
                    "line {}: `{line}`: a CA bundle holds only CERTIFICATE blocks",
                    i + 1
                ));
            }
            let begin = i;
            let end = (begin + 1..lines.len())
                .find(|&j| lines[j].trim().starts_with("-----"))
                .ok_or_else(|| format!("line {}: certificate block has no END line", begin + 1))?;
            if lines[end].trim() != END_CERT {
                return Err(format!(
                    "line {}: expected `{END_CERT}`, found `{}`",
                    end + 1,
                    lines[end].trim()
                ));
            }
            let number = blocks.len() + 1;
            if number > CA_BUNDLE_CERTS_MAX {
                return Err(format!(
                    "holds more than {CA_BUNDLE_CERTS_MAX} certificates, the limit (certificate {number} begins at line {})",
                    begin + 1
                ));
            }
            let mut pem_text = String::new();
            for l in &lines[begin..=end] {
                pem_text.push_str(l.trim());
                pem_text.push('\n');
            }
            let block = ::pem::parse(pem_text.as_bytes())
                .map_err(|e| format!("certificate {number} (line {}): {e}", begin + 1))?;
            blocks.push(BundleBlock {
                der: block.into_contents(),
                retired_at_us: pending_retired.take().map(|(_, at)| at),
                begin_line: begin,
            });
            i = end + 1;
            continue;
        }
        i += 1;
    }
    if let Some((line, _)) = pending_retired {
        return Err(format!(
            "line {}: `{RETIRED_MARKER}` is not followed by a certificate",
            line + 1
        ));
    }
    if blocks.is_empty() {
        return Err("no PEM block found; expected 1 to 8 CERTIFICATE blocks".into());
    }
    Ok(blocks)
}

/// `text` with certificate `number` (1-based) marked retired at `at_us`: a
/// comment and the marker line inserted right before its BEGIN line, every
/// other byte kept.
pub fn with_retirement(text: &str, number: usize, at_us: u64) -> Result<String, String> {
    let blocks = parse_bundle(text)?;
    let block = number
        .checked_sub(1)
        .and_then(|i| blocks.get(i))
        .ok_or_else(|| {
            format!(
                "there is no CA {number}: the bundle holds CA 1 to {}",
                blocks.len()
            )
        })?;
    let stamp = crate::clock::format_timestamp(at_us);
    let mut out = String::with_capacity(text.len() + 128);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if i == block.begin_line {
            out.push_str(&format!(
                "# CA {number} retired: it verifies feed history dated up to this time, nothing else\n{RETIRED_MARKER} {stamp}\n"
            ));
        }
        out.push_str(line);
    }
    Ok(out)
}

/// `text` with `cert_pem` appended as a new last certificate, after a
/// comment naming it.
pub fn with_appended(text: &str, cert_pem: &str, comment: &str) -> String {
    let mut out = String::with_capacity(text.len() + cert_pem.len() + comment.len() + 8);
    out.push_str(text);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("\n# ");
    out.push_str(comment);
    out.push('\n');
    out.push_str(cert_pem);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_of(der: &[u8]) -> String {
        crate::identity::pem::cert_pem(der)
    }

    #[test]
    fn blocks_markers_and_comments() {
        let one = pem_of(&[1, 2, 3]);
        let two = pem_of(&[4, 5, 6]);
        let text = format!(
            "# the cluster CA bundle\n{RETIRED_MARKER} 2026-12-04T12:00:00.5Z\n{one}\nsome words\n{two}"
        );
        let blocks = parse_bundle(&text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].der, vec![1, 2, 3]);
        assert_eq!(
            blocks[0].retired_at_us,
            Some(parse_rfc3339_us("2026-12-04T12:00:00.500000Z").unwrap())
        );
        assert_eq!(blocks[1].der, vec![4, 5, 6]);
        assert_eq!(blocks[1].retired_at_us, None);

        // Retiring the second keeps every byte of the first part.
        let at = parse_rfc3339_us("2027-01-01T00:00:00Z").unwrap();
        let retired = with_retirement(&text, 2, at).unwrap();
        assert!(retired.starts_with(&text[..text.find("some words").unwrap()]));
        let blocks = parse_bundle(&retired).unwrap();
        assert_eq!(blocks[1].retired_at_us, Some(at));
        assert!(blocks[0].retired_at_us.is_some());
        assert!(
            with_retirement(&text, 3, at)
                .unwrap_err()
                .contains("no CA 3")
        );
        assert!(
            with_retirement(&text, 0, at)
                .unwrap_err()
                .contains("no CA 0")
        );

        let appended = with_appended(&text, &pem_of(&[7]), "CA 3");
        let blocks = parse_bundle(&appended).unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[2].der, vec![7]);
    }

    #[test]
    fn refuses_what_is_not_a_bundle() {
        let one = pem_of(&[1]);
        let cases = [
            (String::new(), "no PEM block"),
            ("just words\n".to_string(), "no PEM block"),
            (
                format!("{one}-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"),
                "line 4",
            ),
            (
                format!("{one}{RETIRED_MARKER} 2026-12-04T12:00:00Z\n"),
                "not followed",
            ),
            (
                format!(
                    "{RETIRED_MARKER} 2026-12-04T12:00:00Z\n{RETIRED_MARKER} 2026-12-05T12:00:00Z\n{one}"
                ),
                "second",
            ),
            (format!("{RETIRED_MARKER} yesterday\n{one}"), "line 1"),
            (
                "-----BEGIN CERTIFICATE-----\nAA==\n".to_string(),
                "no END line",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_string(),
                "certificate 1 (line 1)",
            ),
        ];
        for (text, needle) in cases {
            let e = parse_bundle(&text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let too_many: String = (0..=CA_BUNDLE_CERTS_MAX as u8)
            .map(|i| pem_of(&[i]))
            .collect();
        let e = parse_bundle(&too_many).unwrap_err();
        assert!(e.contains("more than 8 certificates"), "{e}");
        let at_limit: String = (0..CA_BUNDLE_CERTS_MAX as u8)
            .map(|i| pem_of(&[i]))
            .collect();
        assert_eq!(parse_bundle(&at_limit).unwrap().len(), CA_BUNDLE_CERTS_MAX);
    }
}
