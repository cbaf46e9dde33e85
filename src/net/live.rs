//! The node's TLS state that a reload replaces (live trust updates): its
//! identity (certificate, key, and the trust anchor peers are verified
//! against) and the HTTPS API's server configuration built from it.
//!
//! Every consumer reads the current state when it uses it: the QUIC
//! endpoint's server configuration is replaced in place
//! (`quinn::Endpoint::set_server_config`), dials build their client
//! configuration from [`LiveTls::identity`], the API's TLS listener takes
//! [`LiveTls::current`] per connection, and connections are identified
//! after their handshake with [`LiveTls::trust`]. A handshake already under
//! way finishes under the state it began with.

use std::sync::{Arc, RwLock};

use super::NetError;
use super::tls::{TlsIdentity, api_server_config};
use crate::identity::TrustAnchor;

/// One consistent TLS state.
#[derive(Debug, Clone)]
pub struct TlsState {
    /// The node's certificate, key and trust anchor.
    pub identity: Arc<TlsIdentity>,
    /// The HTTPS API's server configuration built from `identity`, when the
    /// API serves HTTPS.
    pub api: Option<Arc<rustls::ServerConfig>>,
}

/// The current [`TlsState`], swapped whole by a reload.
#[derive(Debug)]
pub struct LiveTls {
    current: RwLock<Arc<TlsState>>,
}

impl LiveTls {
    /// Starts with `identity` and no HTTPS API.
    pub fn new(identity: TlsIdentity) -> LiveTls {
        LiveTls {
            current: RwLock::new(Arc::new(TlsState {
                identity: Arc::new(identity),
                api: None,
            })),
        }
    }

    /// The state as of now.
    pub fn current(&self) -> Arc<TlsState> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The node's TLS identity as of now.
    pub fn identity(&self) -> Arc<TlsIdentity> {
        Arc::clone(&self.current().identity)
    }

    /// The trust anchor peers are verified against as of now.
    pub fn trust(&self) -> Arc<TrustAnchor> {
        Arc::clone(self.current().identity.trust())
    }

    /// Builds the HTTPS API's server configuration from the current
    /// identity and keeps it (at API start; reloads rebuild it).
    pub fn serve_api(&self) -> Result<Arc<rustls::ServerConfig>, NetError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let api = Arc::new(api_server_config(&current.identity)?);
        *current = Arc::new(TlsState {
            identity: Arc::clone(&current.identity),
            api: Some(Arc::clone(&api)),
        });
        Ok(api)
    }

    /// The state `identity` makes: the API's configuration rebuilt if the
    /// API serves HTTPS. Nothing is installed yet (see [`LiveTls::install`]),
    /// so a failure leaves the current state as it is.
    pub fn prepare(&self, identity: TlsIdentity) -> Result<TlsState, NetError> {
        let api = match self.current().api {
            Some(_) => Some(Arc::new(api_server_config(&identity)?)),
            None => None,
        };
        Ok(TlsState {
            identity: Arc::new(identity),
            api,
        })
    }

    /// Makes `state` the current one.
    pub fn install(&self, state: TlsState) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
    }
}
