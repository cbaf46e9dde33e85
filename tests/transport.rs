//! The QUIC transport over real sockets on 127.0.0.1 with real mutual TLS:
//! who gets through the handshake, who does not, and framing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald::core::wire::{
    ALPN_CLIENT, ALPN_PEER, FRAME_BYTES_MAX, PROTOCOL_VERSION, PeerMessage, close,
};
use herald::identity::{TrustAnchor, issue_client, issue_node_with_validity, revoke};
use herald::net::{
    self, AuthenticatedPeer, NetError, Role, TlsIdentity, authenticated_peer, open_exchange,
    read_frame, write_frame,
};
use tokio::sync::mpsc;

/// How long a test waits for the server to report an accept result.
const REPORT_WAIT: Duration = Duration::from_secs(5);

const LOCALHOST: &str = "127.0.0.1:0";

struct Cluster {
    _dir: tempfile::TempDir,
    keys: PathBuf,
}

impl Cluster {
    fn new(nodes: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        herald::config::init_cluster(dir.path(), &names, 17400, 30, false).expect("init");
        let keys = dir.path().join("keys");
        Cluster { _dir: dir, keys }
    }

    fn trust(&self) -> Arc<TrustAnchor> {
        Arc::new(TrustAnchor::load(&self.keys.join("ca.crt"), None).expect("trust"))
    }

    fn trust_with_revocations(&self) -> Arc<TrustAnchor> {
        let revoked = self.keys.join("revoked.toml");
        Arc::new(TrustAnchor::load(&self.keys.join("ca.crt"), Some(&revoked)).expect("trust"))
    }

    fn identity(&self, name: &str, trust: Arc<TrustAnchor>) -> TlsIdentity {
        identity_in(&self.keys, name, trust)
    }
}

fn identity_in(keys: &Path, name: &str, trust: Arc<TrustAnchor>) -> TlsIdentity {
    TlsIdentity::from_files(
        &keys.join(format!("{name}.crt")),
        &keys.join(format!("{name}.key")),
        trust,
    )
    .expect("identity")
}

fn hello(service: &str) -> PeerMessage {
    PeerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        service: service.to_string(),
        heads: vec![],
    }
}

/// A listening node: every accept result is reported; authenticated
/// connections answer each stream's `Hello` with their own.
struct Server {
    addr: SocketAddr,
    reports: mpsc::UnboundedReceiver<Result<AuthenticatedPeer, String>>,
    _endpoint: quinn::Endpoint,
}

impl Server {
    fn start(id: &TlsIdentity) -> Server {
        let endpoint = net::bind(LOCALHOST.parse().expect("addr"), id).expect("bind");
        let addr = endpoint.local_addr().expect("local addr");
        let (tx, reports) = mpsc::unbounded_channel();
        let trust = id.trust().clone();
        let me = id.service().to_string();
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (trust, tx, me) = (trust.clone(), tx.clone(), me.clone());
                tokio::spawn(async move {
                    match net::accept(incoming, &trust).await {
                        Ok((conn, peer)) => {
                            let _ = tx.send(Ok(peer));
                            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                                if let Ok(Some(PeerMessage::Hello { .. })) =
                                    read_frame::<PeerMessage>(&mut recv).await
                                {
                                    let _ = write_frame(&mut send, &hello(&me)).await;
                                    let _ = send.finish();
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            }
        });
        Server {
            addr,
            reports,
            _endpoint: endpoint,
        }
    }

    async fn next_report(&mut self) -> Result<AuthenticatedPeer, String> {
        tokio::time::timeout(REPORT_WAIT, self.reports.recv())
            .await
            .expect("server reported nothing")
            .expect("server task ended")
    }

    /// The server refused the connection and admitted nobody.
    async fn assert_refused(&mut self) -> String {
        let report = self.next_report().await;
        let reason = report.expect_err("server accepted an authenticated connection");
        assert!(
            self.reports.try_recv().is_err(),
            "more than one accept result"
        );
        reason
    }

    /// The server itself refused the client's certificate in the handshake,
    /// for `why` (the rustls certificate error).
    async fn assert_refused_client_cert(&mut self, why: &str) {
        let reason = self.assert_refused().await;
        assert!(
            reason.contains("handshake failed") && !reason.contains("aborted by peer"),
            "{reason}"
        );
        assert!(
            reason.contains(&format!("invalid peer certificate: {why}")),
            "{reason}"
        );
    }

    /// The client refused the server's certificate in the handshake.
    async fn assert_aborted_by_client(&mut self, why: &str) {
        let reason = self.assert_refused().await;
        assert!(
            reason.contains("aborted by peer") && reason.contains("handshake failed"),
            "{reason}"
        );
        assert!(reason.contains(why), "{reason}");
    }
}

fn client_endpoint() -> quinn::Endpoint {
    net::bind_client(LOCALHOST.parse().expect("addr")).expect("client endpoint")
}

/// Dials and does a `Hello` round trip: only success there proves both sides
/// admitted each other.
async fn dial_and_greet(
    id: &TlsIdentity,
    addr: SocketAddr,
    server_name: &str,
    alpn: &'static [u8],
) -> Result<(quinn::Connection, PeerMessage), NetError> {
    let endpoint = client_endpoint();
    let conn = net::connect(&endpoint, addr, server_name, alpn, id).await?;
    let (_send, _recv, answer) =
        open_exchange::<_, PeerMessage>(&conn, &hello(id.service())).await?;
    Ok((conn, answer))
}

#[tokio::test]
async fn two_nodes_authenticate_each_other_and_exchange_hello() {
    let c = Cluster::new(&["a", "b"]);
    let b = c.identity("b", c.trust());
    let mut server = Server::start(&b);
    let a = c.identity("a", c.trust());

    let endpoint = net::bind(LOCALHOST.parse().unwrap(), &a).unwrap();
    let conn = net::connect(&endpoint, server.addr, "b", ALPN_PEER, &a)
        .await
        .unwrap();
    let (mut send, mut recv, answer) = open_exchange::<_, PeerMessage>(&conn, &hello("a"))
        .await
        .unwrap();
    assert_eq!(answer, hello("b"));
    assert_eq!(read_frame::<PeerMessage>(&mut recv).await.unwrap(), None);
    send.finish().unwrap();

    let seen_by_a = authenticated_peer(&conn, &c.trust()).unwrap();
    assert_eq!(
        (seen_by_a.service.as_str(), seen_by_a.role),
        ("b", Role::Node)
    );
    assert_eq!(&seen_by_a.cert, b.cert());
    let seen_by_b = server.next_report().await.unwrap();
    assert_eq!(
        (seen_by_b.service.as_str(), seen_by_b.role),
        ("a", Role::Node)
    );
    assert_eq!(&seen_by_b.cert, a.cert());
}

#[tokio::test]
async fn a_foreign_client_is_refused_in_the_handshake() {
    let ours = Cluster::new(&["a"]);
    let foreign = Cluster::new(&["b"]);
    let mut server = Server::start(&ours.identity("a", ours.trust()));
    // Trusts our CA (so it accepts our server) but presents a foreign cert.
    let intruder = foreign
        .identity("b", foreign.trust())
        .with_trust(ours.trust());
    let e = dial_and_greet(&intruder, server.addr, "a", ALPN_PEER)
        .await
        .expect_err("foreign client got an answer");
    assert!(
        matches!(e, NetError::Connection(_) | NetError::Handshake { .. }),
        "{e}"
    );
    server.assert_refused_client_cert("UnknownIssuer").await;
}

#[tokio::test]
async fn a_foreign_server_is_refused_in_the_handshake() {
    let ours = Cluster::new(&["a"]);
    let foreign = Cluster::new(&["b"]);
    // Would accept us, but its certificate comes from another CA.
    let impostor = foreign
        .identity("b", foreign.trust())
        .with_trust(ours.trust());
    let mut server = Server::start(&impostor);
    let a = ours.identity("a", ours.trust());
    let e = dial_and_greet(&a, server.addr, "b", ALPN_PEER)
        .await
        .expect_err("connected to a foreign server");
    let NetError::Handshake { source, .. } = &e else {
        panic!("expected a handshake failure, got {e}");
    };
    assert!(source.to_string().contains("UnknownIssuer"), "{e}");
    server.assert_aborted_by_client("UnknownIssuer").await;
}

#[tokio::test]
async fn a_revoked_node_is_refused_both_ways() {
    let c = Cluster::new(&["a", "r"]);
    revoke(&c.keys, "r").unwrap();
    let trust = c.trust_with_revocations();
    let a = c.identity("a", trust.clone());
    // r does not know it is revoked: its own anchor has no list.
    let r = c.identity("r", c.trust());

    let mut server_a = Server::start(&a);
    assert!(
        dial_and_greet(&r, server_a.addr, "a", ALPN_PEER)
            .await
            .is_err()
    );
    server_a.assert_refused_client_cert("Revoked").await;

    let mut server_r = Server::start(&r);
    let e = dial_and_greet(&a, server_r.addr, "r", ALPN_PEER)
        .await
        .expect_err("connected to a revoked server");
    assert!(matches!(e, NetError::Handshake { .. }), "{e}");
    assert!(e.to_string().contains("Revoked"), "{e}");
    server_r.assert_aborted_by_client("Revoked").await;
}

#[tokio::test]
async fn an_expired_node_is_refused_both_ways() {
    let c = Cluster::new(&["a"]);
    let now = herald::clock::now_us();
    let day = 86_400 * 1_000_000;
    issue_node_with_validity(&c.keys, "old", now - 3 * day, now - day, false).unwrap();
    let a = c.identity("a", c.trust());
    let old = c.identity("old", c.trust());

    let mut server_a = Server::start(&a);
    assert!(
        dial_and_greet(&old, server_a.addr, "a", ALPN_PEER)
            .await
            .is_err()
    );
    server_a.assert_refused_client_cert("Expired").await;

    let mut server_old = Server::start(&old);
    let e = dial_and_greet(&a, server_old.addr, "old", ALPN_PEER)
        .await
        .expect_err("connected to an expired server");
    assert!(e.to_string().contains("Expired"), "{e}");
    server_old.assert_aborted_by_client("Expired").await;
}

#[tokio::test]
async fn a_not_yet_valid_node_is_refused() {
    let c = Cluster::new(&["a"]);
    let now = herald::clock::now_us();
    let day = 86_400 * 1_000_000;
    issue_node_with_validity(&c.keys, "new", now + day, now + 3 * day, false).unwrap();
    let mut server_a = Server::start(&c.identity("a", c.trust()));
    let new = c.identity("new", c.trust());
    assert!(
        dial_and_greet(&new, server_a.addr, "a", ALPN_PEER)
            .await
            .is_err()
    );
    server_a.assert_refused_client_cert("NotValidYet").await;
}

#[tokio::test]
async fn a_client_certificate_may_use_the_client_alpn_only() {
    let c = Cluster::new(&["a"]);
    issue_client(&c.keys, "cli", 10, false).unwrap();
    let mut server = Server::start(&c.identity("a", c.trust()));
    let cli = c.identity("cli", c.trust());
    assert_eq!(cli.role(), Role::Client);
    // A client certificate cannot serve.
    assert!(matches!(
        net::server_config(&cli),
        Err(NetError::Unauthorized { .. })
    ));

    // ALPN peer: the handshake completes (the verifier cannot see the ALPN),
    // then `accept` finds the client certificate not allowed and closes the
    // connection with UNAUTHORIZED before answering.
    let e = dial_and_greet(&cli, server.addr, "a", ALPN_PEER)
        .await
        .expect_err("client certificate used ALPN peer");
    let NetError::Connection(quinn::ConnectionError::ApplicationClosed(close)) = &e else {
        panic!("expected an application close, got {e}");
    };
    assert_eq!(
        close.error_code,
        quinn::VarInt::from_u32(close::UNAUTHORIZED)
    );
    let reason = server.assert_refused().await;
    assert!(reason.contains("client certificate"), "{reason}");

    // ALPN client: accepted as a client.
    let (conn, answer) = dial_and_greet(&cli, server.addr, "a", ALPN_CLIENT)
        .await
        .unwrap();
    assert_eq!(answer, hello("a"));
    let seen = server.next_report().await.unwrap();
    assert_eq!((seen.service.as_str(), seen.role), ("cli", Role::Client));
    let server_seen = authenticated_peer(&conn, cli.trust()).unwrap();
    assert_eq!(
        (server_seen.service.as_str(), server_seen.role),
        ("a", Role::Node)
    );
}

#[tokio::test]
async fn a_server_with_another_name_is_refused() {
    let c = Cluster::new(&["a", "b"]);
    let mut server_b = Server::start(&c.identity("b", c.trust()));
    let a = c.identity("a", c.trust());
    // Dial b's address expecting "c": b's certificate names b.
    let e = dial_and_greet(&a, server_b.addr, "c", ALPN_PEER)
        .await
        .expect_err("accepted a server under another name");
    assert!(matches!(e, NetError::Handshake { .. }), "{e}");
    assert!(e.to_string().contains("NotValidForName"), "{e}");
    server_b.assert_aborted_by_client("NotValidForName").await;
}

/// An authenticated connection pair for framing tests: (client, server).
/// The endpoints are returned too: they must outlive the connections.
struct Pair {
    _cluster: Cluster,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
    client: quinn::Connection,
    server: quinn::Connection,
}

async fn connected_pair() -> Pair {
    let c = Cluster::new(&["a", "b"]);
    let b = c.identity("b", c.trust());
    let server = net::bind(LOCALHOST.parse().unwrap(), &b).unwrap();
    let addr = server.local_addr().unwrap();
    let a = c.identity("a", c.trust());
    let client = client_endpoint();
    let trust = c.trust();
    let accepting = async {
        let incoming = server.accept().await.expect("incoming");
        net::accept(incoming, &trust).await
    };
    let (client_conn, accepted) =
        tokio::join!(net::connect(&client, addr, "b", ALPN_PEER, &a), accepting);
    let (server_conn, peer) = accepted.unwrap();
    assert_eq!(peer.service, "a");
    Pair {
        _cluster: c,
        _endpoints: (client, server),
        client: client_conn.unwrap(),
        server: server_conn,
    }
}

/// Sends `bytes` on a fresh stream (finished if `finish`) and reads one frame
/// on the server side.
async fn read_raw(
    client: &quinn::Connection,
    server: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> Result<Option<PeerMessage>, NetError> {
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    } else if bytes.is_empty() {
        panic!("an unfinished empty stream is never seen by the server");
    }
    let (_send, mut recv) = server.accept_bi().await.unwrap();
    tokio::time::timeout(REPORT_WAIT, read_frame::<PeerMessage>(&mut recv))
        .await
        .expect("read_frame hung")
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn frames_are_bounded_and_decoded_exactly() {
    let pair = connected_pair().await;
    let (client, server) = (&pair.client, &pair.server);

    // A valid frame.
    let body = postcard::to_allocvec(&hello("a")).unwrap();
    assert_eq!(
        read_raw(client, server, &framed(&body), true)
            .await
            .unwrap(),
        Some(hello("a"))
    );

    // Length prefixes over the limit fail at once, before any body arrives
    // (the stream stays open) and without allocating (4 GiB for u32::MAX).
    for len in [FRAME_BYTES_MAX as u32 + 1, u32::MAX] {
        let e = read_raw(client, server, &len.to_le_bytes(), false)
            .await
            .unwrap_err();
        assert!(
            matches!(e, NetError::FrameTooLarge { len: l, max } if l == len as usize && max == FRAME_BYTES_MAX),
            "{e}"
        );
        assert_eq!(net::close_code(&e), close::FRAME_TOO_LARGE);
    }

    // Garbage.
    let e = read_raw(client, server, &framed(&[0xff; 7]), true)
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Decode { .. }), "{e}");
    assert_eq!(net::close_code(&e), close::PROTOCOL_VIOLATION);

    // A valid message followed by trailing bytes inside the frame.
    let mut trailing = body.clone();
    trailing.extend_from_slice(&[0, 1, 2]);
    let e = read_raw(client, server, &framed(&trailing), true)
        .await
        .unwrap_err();
    assert!(
        matches!(e, NetError::Decode { ref reason } if reason.contains("3 trailing bytes")),
        "{e}"
    );

    // A stream ending inside the prefix or inside the body.
    let e = read_raw(client, server, &[1, 0], true).await.unwrap_err();
    assert!(matches!(e, NetError::Decode { .. }), "{e}");
    let whole = framed(&body);
    let e = read_raw(client, server, &whole[..whole.len() - 1], true)
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Decode { .. }), "{e}");

    // A clean end between frames.
    assert_eq!(read_raw(client, server, &[], true).await.unwrap(), None);

    // The writer refuses an oversize message before writing anything.
    let (mut send, _recv) = client.open_bi().await.unwrap();
    let huge = PeerMessage::Events {
        events: vec![serde_bytes::ByteBuf::from(vec![0u8; FRAME_BYTES_MAX])],
        seals: vec![],
    };
    let e = write_frame(&mut send, &huge).await.unwrap_err();
    assert!(matches!(e, NetError::FrameTooLarge { .. }), "{e}");
}

#[test]
fn close_codes() {
    let unauthorized = NetError::Unauthorized { reason: "x".into() };
    assert_eq!(net::close_code(&unauthorized), close::UNAUTHORIZED);
    assert_eq!(
        net::close_code(&NetError::StreamEnded),
        close::PROTOCOL_VIOLATION
    );
    let timeout = NetError::Timeout {
        what: "x".into(),
        after: Duration::from_secs(1),
    };
    assert_eq!(net::close_code(&timeout), close::SHUTDOWN);
}
