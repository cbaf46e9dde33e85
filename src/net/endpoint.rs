//! Binding, dialling and accepting connections, and who the peer is.

use std::net::SocketAddr;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tls::{TlsIdentity, client_config, server_config};
use super::{
    AuthenticatedPeer, CONNECT_TIMEOUT, FIRST_ANSWER_TIMEOUT, HANDSHAKE_TIMEOUT, NetError, Role,
    close_with, read_frame, write_frame,
};
use crate::core::wire::{ALPN_CLIENT, ALPN_PEER};
use crate::identity::TrustAnchor;

/// Binds a QUIC endpoint on `listen` that serves with `id` (see
/// [`server_config`]) and dials with ALPN `herald-peer/1` by default.
pub fn bind(listen: SocketAddr, id: &TlsIdentity) -> Result<quinn::Endpoint, NetError> {
    let mut endpoint =
        quinn::Endpoint::server(server_config(id)?, listen).map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
    endpoint.set_default_client_config(client_config(id, ALPN_PEER)?);
    Ok(endpoint)
}

/// Binds a client-only QUIC endpoint on `local` (usually port 0): for
/// command-line clients, whose certificates cannot serve. Dial with
/// [`connect`].
pub fn bind_client(local: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    quinn::Endpoint::client(local).map_err(|source| NetError::Bind {
        addr: local,
        source,
    })
}

/// Dials `server_name` at `addr` with `alpn`, presenting `id`, within
/// [`CONNECT_TIMEOUT`]. The server's certificate is verified during the
/// handshake. The server verifies ours after the client has finished, so a
/// refusal of our certificate only shows on first use: see [`open_exchange`].
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    alpn: &'static [u8],
    id: &TlsIdentity,
) -> Result<quinn::Connection, NetError> {
    let connecting = endpoint
        .connect_with(client_config(id, alpn)?, addr, server_name)
        .map_err(|source| NetError::Connect {
            addr,
            server_name: server_name.to_string(),
            source,
        })?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| NetError::Timeout {
            what: format!("connecting to \"{server_name}\" at {addr}"),
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|source| NetError::Handshake {
            addr,
            server_name: server_name.to_string(),
            source,
        })?;
    tracing::debug!(%addr, server_name, "connected");
    Ok(conn)
}

/// Accepts an incoming connection: finishes the handshake within
/// [`HANDSHAKE_TIMEOUT`] (the client's certificate is verified there) and
/// identifies the peer with [`authenticated_peer`]. A peer whose certificate
/// does not allow the negotiated ALPN (a client certificate on
/// `herald-peer/1`) is closed with `close::UNAUTHORIZED` and the error returned.
pub async fn accept(
    incoming: quinn::Incoming,
    trust: &TrustAnchor,
) -> Result<(quinn::Connection, AuthenticatedPeer), NetError> {
    let remote = incoming.remote_address();
    let connecting = incoming.accept()?;
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| NetError::Timeout {
            what: format!("handshake with {remote}"),
            after: HANDSHAKE_TIMEOUT,
        })??;
    match authenticated_peer(&conn, trust) {
        Ok(peer) => {
            tracing::debug!(%remote, service = %peer.service, role = ?peer.role, "accepted");
            Ok((conn, peer))
        }
        Err(e) => {
            tracing::warn!(%remote, reason = %e, "refused connection after handshake");
            close_with(&conn, &e);
            Err(e)
        }
    }
}

/// Who is on the other end of `conn`: the certificate the peer proved in the
/// handshake, admitted again by `trust`, and the role the negotiated ALPN
/// allows. ALPN `herald-peer/1` needs a node certificate; `herald-client/1`
/// takes a client or node certificate. Time was checked in the handshake.
pub fn authenticated_peer(
    conn: &quinn::Connection,
    trust: &TrustAnchor,
) -> Result<AuthenticatedPeer, NetError> {
    let unauthorized = |reason: String| NetError::Unauthorized { reason };
    let certs = conn
        .peer_identity()
        .ok_or_else(|| unauthorized("peer presented no certificate".into()))?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| unauthorized("peer identity is not an X.509 certificate chain".into()))?;
    let der = match certs.as_slice() {
        [one] => one,
        other => {
            return Err(unauthorized(format!(
                "peer presented {} certificates; exactly one, issued by the cluster CA, is accepted",
                other.len()
            )));
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .ok_or_else(|| unauthorized("no application protocol (ALPN) negotiated".into()))?;
    let (cert, role) = trust
        .admit_peer(der.as_ref())
        .map_err(|e| unauthorized(format!("certificate refused: {e}")))?;
    if alpn == ALPN_PEER {
        if role != Role::Node {
            return Err(unauthorized(format!(
                "\"{}\" holds a client certificate, which may not use ALPN {}",
                cert.service,
                String::from_utf8_lossy(ALPN_PEER)
            )));
        }
    } else if alpn != ALPN_CLIENT {
        return Err(unauthorized(format!(
            "unknown application protocol {:?}",
            String::from_utf8_lossy(&alpn)
        )));
    }
    Ok(AuthenticatedPeer {
        service: cert.service.clone(),
        role,
        cert,
    })
}

/// Opens a bidirectional stream, sends `first` as a frame and waits (within
/// [`FIRST_ANSWER_TIMEOUT`]) for the peer's first frame. A client should treat
/// a connection as authenticated only once this returns: a server that
/// refused its certificate closes the connection instead of answering, which
/// surfaces here as [`NetError::Connection`].
pub async fn open_exchange<S: Serialize, R: DeserializeOwned>(
    conn: &quinn::Connection,
    first: &S,
) -> Result<(quinn::SendStream, quinn::RecvStream, R), NetError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, first).await?;
        match read_frame::<R>(&mut recv).await? {
            Some(answer) => Ok((send, recv, answer)),
            None => Err(NetError::StreamEnded),
        }
    };
    tokio::time::timeout(FIRST_ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| NetError::Timeout {
            what: format!("first answer from {}", conn.remote_address()),
            after: FIRST_ANSWER_TIMEOUT,
        })?
}
