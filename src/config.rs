//! The node configuration file (`a.toml`), written by `herald init` and read by
//! every command that works on a node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One node's configuration. Relative paths are relative to the directory of
/// the config file, so a provisioned cluster directory can be moved as a whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The service this node speaks for; must match the SAN of `cert`.
    pub service: String,
    /// Directory holding the node's SQLite store (`herald.db`).
    pub data_dir: PathBuf,
    /// PKCS#8 PEM Ed25519 private key of this node.
    pub key: PathBuf,
    /// X.509 PEM certificate of this node, issued by `ca`.
    pub cert: PathBuf,
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// The revocation list (TOML) every verification honours, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<PathBuf>,
    /// Channel used by `publish` when none is named.
    pub default_channel: String,
    /// Channel name to key file (`channel-NAME.key`).
    pub channels: BTreeMap<String, PathBuf>,
    /// UDP address the node listens on (QUIC).
    pub listen: SocketAddr,
    /// Peers this node keeps a connection to.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

/// A configured peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's service name (its certificate SAN).
    pub name: String,
    /// The peer's UDP address.
    pub address: SocketAddr,
}

impl NodeConfig {
    /// Reads and parses `path`, then resolves every relative path against the
    /// config file's directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if config.service.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: "`service` is empty".into(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Serialises the config as TOML (paths as they are held).
    pub fn to_toml(&self) -> String {
        // Serialising plain strings, paths and addresses cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.data_dir);
        resolve(&mut self.key);
        resolve(&mut self.cert);
        resolve(&mut self.ca);
        if let Some(r) = self.revoked.as_mut() {
            resolve(r);
        }
        for p in self.channels.values_mut() {
            resolve(p);
        }
    }
}
