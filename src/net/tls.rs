//! The node's TLS identity, the rustls configurations, and the certificate
//! verifiers built on the cluster trust anchor.
//!
//! Rules, both directions: TLS 1.3 only; Ed25519 handshake signatures only;
//! exactly one certificate (the end entity, issued directly by the cluster CA;
//! intermediates are refused); admitted by [`TrustAnchor::admit_peer`] or
//! [`TrustAnchor::admit_author`] (CA signature, Ed25519 key, not a CA, key
//! usage, not revoked); within its validity window at the identity's clock.
//! A server's certificate must be a node certificate whose SAN equals the
//! name the client dialled. A client's certificate must carry clientAuth
//! (node certificates do); whether it may use the negotiated ALPN is decided
//! after the handshake by [`super::authenticated_peer`]. Session resumption
//! and 0-RTT are off, so every connection runs these checks in full.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{
    CONNECTION_RECEIVE_WINDOW_BYTES, IDLE_TIMEOUT, INCOMING_BUFFER_BYTES,
    INCOMING_BUFFER_BYTES_TOTAL, INCOMING_PENDING_MAX, KEEP_ALIVE_INTERVAL, LOSS_PACKET_THRESHOLD,
    LOSS_TIME_THRESHOLD, MAX_CONCURRENT_BIDI_STREAMS, MAX_CONCURRENT_UNI_STREAMS, NetError, Role,
    SEND_WINDOW_BYTES, STREAM_RECEIVE_WINDOW_BYTES,
};
use crate::core::cert::{AuthorCert, CertError};
use crate::core::wire::{ALPN_CLIENT, ALPN_PEER};
use crate::identity::trust::parse_cert;
use crate::identity::{TrustAnchor, pem, read_cert_pem};

/// The only handshake signature scheme offered and accepted.
const SIGNATURE_SCHEMES: &[SignatureScheme] = &[SignatureScheme::ED25519];

/// This node's (or client's) TLS identity: certificate, PKCS#8 key and the
/// trust anchor it verifies peers against, plus the clock it checks validity
/// windows with.
pub struct TlsIdentity {
    cert_der: CertificateDer<'static>,
    key_der: PrivatePkcs8KeyDer<'static>,
    cert: AuthorCert,
    role: Role,
    trust: Arc<TrustAnchor>,
    now_us: fn() -> u64,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("service", &self.cert.service)
            .field("role", &self.role)
            .field("serial", &self.cert.serial_hex())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads a certificate (PEM) and its Ed25519 private key (PKCS#8 PEM).
    /// The certificate must be admitted by `trust` (node or client) and match
    /// the key. Its validity window is not checked here (it is checked at every
    /// handshake, by the peer); `NodeIdentity::load` checks it at start-up.
    pub fn from_files(
        cert_path: &Path,
        key_path: &Path,
        trust: Arc<TrustAnchor>,
    ) -> Result<Self, NetError> {
        let der = read_cert_pem(cert_path)?;
        let signing_key = pem::read_private_key(key_path)?;
        let (cert, role) = trust
            .admit_peer(&der)
            .map_err(|source| NetError::OwnCertificate {
                path: cert_path.display().to_string(),
                source,
            })?;
        if signing_key.verifying_key().to_bytes() != cert.public_key {
            return Err(crate::identity::IdentityError::KeyMismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
            }
            .into());
        }
        let pkcs8 = pem::pkcs8_v1_der(&signing_key.to_bytes());
        Ok(TlsIdentity {
            cert_der: CertificateDer::from(der),
            key_der: PrivatePkcs8KeyDer::from(pkcs8.to_vec()),
            cert,
            role,
            trust,
            now_us: crate::clock::now_us,
        })
    }

    /// Replaces the clock (microseconds since the Unix epoch) used to check
    /// peers' validity windows. Default: [`crate::clock::now_us`].
    pub fn with_clock(mut self, now_us: fn() -> u64) -> Self {
        self.now_us = now_us;
        self
    }

    /// Verifies peers against `trust` instead of the anchor that admitted this
    /// identity's own certificate (e.g. while a cluster moves to a new CA, or
    /// in tests that present a foreign certificate to a server).
    pub fn with_trust(mut self, trust: Arc<TrustAnchor>) -> Self {
        self.trust = trust;
        self
    }

    /// The service named by this identity's certificate.
    pub fn service(&self) -> &str {
        &self.cert.service
    }

    /// Node or client.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This identity's admitted certificate.
    pub fn cert(&self) -> &AuthorCert {
        &self.cert
    }

    /// The clock (microseconds since the Unix epoch) validity windows are
    /// checked with.
    pub fn clock(&self) -> fn() -> u64 {
        self.now_us
    }

    /// The trust anchor peers are verified against.
    pub fn trust(&self) -> &Arc<TrustAnchor> {
        &self.trust
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC transport limits and loss recovery shared by both sides (see the
/// constants in [`super`]).
///
/// Congestion control is BBR with a window floor (see [`super::congestion`]
/// for why not quinn's default CUBIC).
fn transport_config() -> Result<Arc<quinn::TransportConfig>, NetError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES))
        .send_window(SEND_WINDOW_BYTES)
        .packet_threshold(LOSS_PACKET_THRESHOLD)
        .time_threshold(LOSS_TIME_THRESHOLD)
        .congestion_controller_factory(Arc::new(super::congestion::FlooredBbrConfig::default()))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
                .map_err(|e| NetError::Config(format!("idle timeout: {e}")))?,
        ))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    Ok(Arc::new(t))
}

/// The server configuration: TLS 1.3, ALPNs `herald-peer/1` and
/// `herald-client/1`, client certificates required and verified against the
/// identity's trust anchor, no session resumption. The identity must be a node.
pub fn server_config(id: &TlsIdentity) -> Result<quinn::ServerConfig, NetError> {
    let tls = node_server_tls(
        id,
        "",
        vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()],
        |provider| {
            Arc::new(ClientVerifier {
                trust: id.trust.clone(),
                provider,
                now_us: id.now_us,
                kind: ClientKind::Peer,
            })
        },
    )?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::Config(format!("QUIC server TLS: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(transport_config()?)
        .max_incoming(INCOMING_PENDING_MAX)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_BYTES_TOTAL);
    Ok(config)
}

/// A client configuration offering `alpn` and presenting the identity's
/// certificate; the server must present a node certificate named as dialled.
pub fn client_config(
    id: &TlsIdentity,
    alpn: &'static [u8],
) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let verifier = Arc::new(NodeServerVerifier {
        trust: id.trust.clone(),
        provider: provider.clone(),
        now_us: id.now_us,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![id.cert_der.clone()], id.key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Config(format!("QUIC client TLS: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config()?);
    Ok(config)
}

// ---------------------------------------------------------------------------
// HTTPS for the HTTP API (`src/api/auth.rs`, docs/API.md "Access control").

/// The ALPN protocol the API's HTTPS listener offers (axum serves HTTP/1.1).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The rustls configuration of the API's HTTPS listener: TLS 1.3, Ed25519,
/// the node's own certificate, and a **client certificate** (EKU clientAuth
/// only, `herald keygen client`) issued by the cluster CA, not revoked and
/// within its validity window, required of every caller. A node certificate
/// is refused as an API client: nodes and API clients are not
/// interchangeable, and permissions are granted to client names only. No
/// session resumption, so every connection runs these checks in full.
pub fn api_server_config(id: &TlsIdentity) -> Result<rustls::ServerConfig, NetError> {
    node_server_tls(id, " the HTTP API", vec![ALPN_HTTP1.to_vec()], |provider| {
        Arc::new(ClientVerifier {
            trust: id.trust.clone(),
            provider,
            now_us: id.now_us,
            kind: ClientKind::Api,
        })
    })
}

/// What both servers share: a node certificate (`serves` names what a
/// client certificate cannot serve), TLS 1.3 only, client certificates
/// checked by the verifier `make_verifier` builds on the provider, no early
/// data and no session resumption.
fn node_server_tls(
    id: &TlsIdentity,
    serves: &str,
    alpn_protocols: Vec<Vec<u8>>,
    make_verifier: impl FnOnce(Arc<CryptoProvider>) -> Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, NetError> {
    if id.role != Role::Node {
        return Err(NetError::Unauthorized {
            reason: format!(
                "certificate \"{}\" is a client certificate and cannot serve{serves}; a server needs a node certificate",
                id.cert.service
            ),
        });
    }
    let provider = provider();
    let verifier = make_verifier(provider.clone());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert_der.clone()], id.key())?;
    tls.alpn_protocols = alpn_protocols;
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(tls)
}

/// A rustls configuration for an HTTPS client of a node's API: presents the
/// identity's (client) certificate and accepts only a node certificate of
/// the cluster named as dialled (so the URL's host is the node's service
/// name). Usable with any HTTP client that takes a rustls 0.23
/// configuration (reqwest's `use_preconfigured_tls`, hyper-rustls).
pub fn api_client_config(id: &TlsIdentity) -> Result<rustls::ClientConfig, NetError> {
    let provider = provider();
    let verifier = Arc::new(NodeServerVerifier {
        trust: id.trust.clone(),
        provider: provider.clone(),
        now_us: id.now_us,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![id.cert_der.clone()], id.key())?;
    tls.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    Ok(tls)
}

/// The client certificate an API connection presented, admitted again
/// after the handshake to learn its name (the verifier accepted it moments
/// ago; this repeats its checks rather than trusting that it ran).
pub fn api_client_of(
    trust: &TrustAnchor,
    presented: Option<&[CertificateDer<'_>]>,
    now_us: u64,
) -> Result<AuthorCert, CertError> {
    let Some([end_entity, intermediates @ ..]) = presented else {
        return Err(CertError::Malformed {
            reason: "no client certificate was presented".into(),
        });
    };
    admit_api_client(trust, end_entity, intermediates, now_us)
}

/// An API client's certificate: a client certificate of the cluster (not a
/// node's), in its validity window at `now_us`.
fn admit_api_client(
    trust: &TrustAnchor,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now_us: u64,
) -> Result<AuthorCert, CertError> {
    // Common TLS stacks (OpenSSL, so curl) send the root along with the
    // client certificate when it is in their trust store: a CA
    // certificate of the bundle, byte for byte, is not an intermediate.
    let others: Vec<&CertificateDer<'_>> = intermediates
        .iter()
        .filter(|c| !trust.is_ca_cert(c.as_ref()))
        .collect();
    if !others.is_empty() {
        return Err(CertError::Malformed {
            reason: format!(
                "{} intermediate certificate(s) presented; herald certificates are issued directly by the cluster CA",
                others.len()
            ),
        });
    }
    let (cert, role) = trust.admit_peer(end_entity)?;
    if role != Role::Client {
        return Err(CertError::NotPeerCertificate {
            reason: format!(
                "\"{}\" is a node certificate; the HTTP API takes client certificates only (herald keygen client)",
                cert.service
            ),
        });
    }
    cert.check_time(now_us)?;
    Ok(cert)
}

/// The presented certificate's subject, for logs.
fn subject_of(der: &[u8]) -> String {
    match parse_cert(der) {
        Ok(cert) => cert.tbs_certificate.subject.to_string(),
        Err(e) => format!("(unparseable certificate: {e})"),
    }
}

/// The rustls error (and so the TLS alert) for a refused certificate.
fn refusal(e: CertError) -> rustls::Error {
    let kind = match e {
        CertError::NotIssuedByCa { .. } => CertificateError::UnknownIssuer,
        CertError::BadSignature => CertificateError::BadSignature,
        CertError::Revoked { .. } => CertificateError::Revoked,
        CertError::Expired { .. } => CertificateError::Expired,
        CertError::NotYetValid { .. } => CertificateError::NotValidYet,
        CertError::NameMismatch { .. } => CertificateError::NotValidForName,
        CertError::UnknownCriticalExtension { .. } => CertificateError::UnhandledCriticalExtension,
        CertError::Malformed { .. }
        | CertError::TooLarge { .. }
        | CertError::TrailingBytes { .. } => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

/// Refuses intermediates: herald certificates are issued directly by the CA.
fn no_intermediates(intermediates: &[CertificateDer<'_>]) -> Result<(), CertError> {
    if intermediates.is_empty() {
        Ok(())
    } else {
        Err(CertError::Malformed {
            reason: format!(
                "{} intermediate certificate(s) presented; herald certificates are issued directly by the cluster CA",
                intermediates.len()
            ),
        })
    }
}

fn verify_ed25519_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if !SIGNATURE_SCHEMES.contains(&dss.scheme) {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not supported; herald speaks TLS 1.3 only".into())
}

/// Verifies servers: a node certificate named as dialled.
#[derive(Debug)]
struct NodeServerVerifier {
    trust: Arc<TrustAnchor>,
    provider: Arc<CryptoProvider>,
    now_us: fn() -> u64,
}

impl NodeServerVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> Result<(), CertError> {
        no_intermediates(intermediates)?;
        let name = match server_name {
            ServerName::DnsName(d) => d.as_ref(),
            other => {
                return Err(CertError::NameMismatch {
                    expected: format!("{other:?}"),
                    found: "a service name (servers are dialled by service name)".into(),
                });
            }
        };
        let cert = self.trust.admit_node(name, end_entity)?;
        cert.check_time((self.now_us)())
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, server_name) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                tracing::warn!(
                    subject = %subject_of(end_entity),
                    dialled = ?server_name,
                    reason = %e,
                    "refused server certificate"
                );
                Err(refusal(e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIGNATURE_SCHEMES.to_vec()
    }
}

/// Who a server takes as client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    /// QUIC peers and local tools: node or client certificates.
    Peer,
    /// The HTTPS API: client certificates only ([`admit_api_client`]).
    Api,
}

/// Verifies client certificates of the cluster, as `kind` says.
#[derive(Debug)]
struct ClientVerifier {
    trust: Arc<TrustAnchor>,
    provider: Arc<CryptoProvider>,
    now_us: fn() -> u64,
    kind: ClientKind,
}

impl ClientVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), CertError> {
        let now_us = (self.now_us)();
        match self.kind {
            ClientKind::Api => {
                admit_api_client(&self.trust, end_entity, intermediates, now_us).map(|_| ())
            }
            ClientKind::Peer => {
                no_intermediates(intermediates)?;
                let (cert, _role) = self.trust.admit_peer(end_entity)?;
                cert.check_time(now_us)
            }
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates) {
            Ok(()) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::warn!(
                    subject = %subject_of(end_entity),
                    reason = %e,
                    api = self.kind == ClientKind::Api,
                    "refused client certificate"
                );
                Err(match e {
                    // A node certificate at the API is the wrong purpose.
                    CertError::NotPeerCertificate { .. } if self.kind == ClientKind::Api => {
                        rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose)
                    }
                    e => refusal(e),
                })
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIGNATURE_SCHEMES.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        keys: std::path::PathBuf,
        trust: Arc<TrustAnchor>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        crate::config::init_cluster(dir.path(), &["a".to_string()], 17400, 30, false).unwrap();
        let keys = dir.path().join("keys");
        let trust = Arc::new(TrustAnchor::load(&keys.join("ca.crt"), None).unwrap());
        Fixture {
            _dir: dir,
            keys,
            trust,
        }
    }

    fn der(f: &Fixture, name: &str) -> CertificateDer<'static> {
        CertificateDer::from(read_cert_pem(&f.keys.join(format!("{name}.crt"))).unwrap())
    }

    #[test]
    fn loads_identity_and_builds_configs() {
        let f = fixture();
        let id = TlsIdentity::from_files(
            &f.keys.join("a.crt"),
            &f.keys.join("a.key"),
            f.trust.clone(),
        )
        .unwrap();
        assert_eq!((id.service(), id.role()), ("a", Role::Node));
        server_config(&id).unwrap();
        client_config(&id, ALPN_PEER).unwrap();
        client_config(&id, ALPN_CLIENT).unwrap();
        // The key must match the certificate.
        crate::identity::issue_node(&f.keys, "b", 10, false).unwrap();
        let e = TlsIdentity::from_files(
            &f.keys.join("a.crt"),
            &f.keys.join("b.key"),
            f.trust.clone(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn verifiers_refuse_intermediates_and_names_that_do_not_match() {
        let f = fixture();
        let provider = provider();
        let server = NodeServerVerifier {
            trust: f.trust.clone(),
            provider: provider.clone(),
            now_us: crate::clock::now_us,
        };
        let a = der(&f, "a");
        let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        server.check(&a, &[], &name("a")).unwrap();
        let e = server.check(&a, &[der(&f, "ca")], &name("a")).unwrap_err();
        assert!(e.to_string().contains("intermediate"), "{e}");
        let e = server.check(&a, &[], &name("b")).unwrap_err();
        assert!(matches!(e, CertError::NameMismatch { .. }), "{e}");
        let ip = ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
        assert!(server.check(&a, &[], &ip).is_err());
        assert_eq!(
            server.supported_verify_schemes(),
            vec![SignatureScheme::ED25519]
        );

        let client = ClientVerifier {
            trust: f.trust.clone(),
            provider,
            now_us: || 0,
            kind: ClientKind::Peer,
        };
        let e = client.check(&a, &[]).unwrap_err();
        assert!(matches!(e, CertError::NotYetValid { .. }), "{e}");
        assert!(client.client_auth_mandatory());
    }

    #[test]
    fn the_api_verifier_takes_client_certificates_only() {
        let f = fixture();
        crate::identity::issue_client(&f.keys, "app", 10, false).unwrap();
        let now = crate::clock::now_us();
        let app = admit_api_client(&f.trust, &der(&f, "app"), &[], now).unwrap();
        assert_eq!(app.service, "app");
        let e = admit_api_client(&f.trust, &der(&f, "a"), &[], now).unwrap_err();
        assert!(e.to_string().contains("client certificates only"), "{e}");
        let e = admit_api_client(&f.trust, &der(&f, "app"), &[], 0).unwrap_err();
        assert!(matches!(e, CertError::NotYetValid { .. }), "{e}");
        let e = admit_api_client(&f.trust, &der(&f, "app"), &[], u64::MAX).unwrap_err();
        assert!(matches!(e, CertError::Expired { .. }), "{e}");
        // The CA's own certificate sent along is not an intermediate; any
        // other certificate is.
        admit_api_client(&f.trust, &der(&f, "app"), &[der(&f, "ca")], now).unwrap();
        let e = admit_api_client(&f.trust, &der(&f, "app"), &[der(&f, "a")], now).unwrap_err();
        assert!(e.to_string().contains("intermediate"), "{e}");
        let e = api_client_of(&f.trust, None, now).unwrap_err();
        assert!(e.to_string().contains("no client certificate"), "{e}");
        let id = TlsIdentity::from_files(
            &f.keys.join("a.crt"),
            &f.keys.join("a.key"),
            f.trust.clone(),
        )
        .unwrap();
        api_server_config(&id).unwrap();
        let client = TlsIdentity::from_files(
            &f.keys.join("app.crt"),
            &f.keys.join("app.key"),
            f.trust.clone(),
        )
        .unwrap();
        api_client_config(&client).unwrap();
        assert!(api_server_config(&client).is_err(), "a client cannot serve");
    }

    #[test]
    fn refusals_map_to_tls_alerts() {
        assert_eq!(
            refusal(CertError::BadSignature),
            rustls::Error::InvalidCertificate(CertificateError::BadSignature)
        );
        assert!(matches!(
            refusal(CertError::IsCa),
            rustls::Error::InvalidCertificate(CertificateError::Other(_))
        ));
    }
}
