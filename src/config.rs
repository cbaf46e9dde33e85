//! The node configuration file (`a.toml`), written by `herald init` and read by
//! every command that works on a node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{ClusterNode, IdentityError, describe_toml_error};

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config file {}: {message}", .path.display())]
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
    /// Executable query handlers (see `docs/QUERIES.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_handlers: Vec<QueryHandlerConfig>,
    /// Executable saga command handlers (see `docs/SAGAS.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_handlers: Vec<CommandHandlerConfig>,
    /// The event format this node writes: 2 (sealed by checkpoints, the
    /// default) or 1 (a signature per event, for verifiers that only read
    /// format 1). Every node reads both.
    #[serde(
        default = "default_event_format",
        skip_serializing_if = "is_default_event_format"
    )]
    pub event_format: u8,
}

fn default_event_format() -> u8 {
    crate::core::limits::FORMAT_VERSION
}

fn is_default_event_format(format: &u8) -> bool {
    *format == default_event_format()
}

/// An executable that runs a saga command (or compensation) type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandHandlerConfig {
    /// The command type it runs (a step's `command` or `compensation`).
    pub command_type: String,
    /// Program and arguments (no shell), resolved like a query handler's.
    /// It reads the command (JSON) on stdin; exit 0 completes the step with
    /// stdout as the result, any other exit fails it with stderr.
    pub command: Vec<String>,
    /// How long it may run before it is killed and the step fails.
    /// Default: [`EXEC_TIMEOUT_MS_DEFAULT`](crate::saga::participant::EXEC_TIMEOUT_MS_DEFAULT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
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

/// An executable that answers one query type (contract in `docs/QUERIES.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryHandlerConfig {
    /// The query type it answers; `herald.*` is reserved for built-ins.
    pub query_type: String,
    /// Program and arguments (no shell). A program containing `/` is a path,
    /// relative to the config file's directory unless absolute; a bare name
    /// is looked up in `PATH` when the handler runs.
    pub command: Vec<String>,
    /// Its own deadline; the request's deadline still applies when shorter.
    /// Default: [`EXEC_TIMEOUT_MS_DEFAULT`](crate::node::query::EXEC_TIMEOUT_MS_DEFAULT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
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
            message: describe_toml_error(&text, &e),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        // Names end up in certificates (SAN), feeds and peer sessions: a
        // node whose own or peer names cannot be valid would start and then
        // never author an event or never hear from that peer.
        crate::core::codec::check_service_name(&config.service)
            .map_err(|e| invalid(format!("`service`: {e}")))?;
        let mut peer_names = std::collections::BTreeSet::new();
        for peer in &config.peers {
            crate::core::codec::check_service_name(&peer.name)
                .map_err(|e| invalid(format!("peer: {e}")))?;
            if peer.name == config.service {
                return Err(invalid(format!(
                    "peer {:?} is this node itself (its `service`)",
                    peer.name
                )));
            }
            if !peer_names.insert(peer.name.as_str()) {
                return Err(invalid(format!("peer {:?} is listed twice", peer.name)));
            }
        }
        // Every `publish` without `--channel` uses the default channel: a name
        // with no key would start a node on which every such publish fails.
        if !config.channels.contains_key(&config.default_channel) {
            let known: Vec<&str> = config.channels.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "default_channel {:?} is not in [channels] (channels: {})",
                config.default_channel,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        for handler in &config.query_handlers {
            crate::core::query::check_exec_handler(
                &handler.query_type,
                &handler.command,
                handler.timeout_ms,
            )
            .map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!("query handler: {e}"),
            })?;
        }
        for handler in &config.command_handlers {
            if handler.command_type.is_empty()
                || handler
                    .command_type
                    .starts_with(crate::core::event::RESERVED_TYPE_PREFIX)
                || handler.command.first().is_none_or(|p| p.is_empty())
            {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "command handler {:?}: needs a command_type outside herald.* and a non-empty command",
                        handler.command_type
                    ),
                });
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// The config of a node provisioned by [`init_cluster`]: the files
    /// identity wrote, its store in `data/NAME`, every other node a peer,
    /// and no handlers.
    pub fn for_cluster_node(node: &ClusterNode) -> NodeConfig {
        NodeConfig {
            service: node.service.clone(),
            data_dir: PathBuf::from("data").join(&node.service),
            key: node.key.clone(),
            cert: node.cert.clone(),
            ca: node.ca.clone(),
            revoked: Some(node.revoked.clone()),
            default_channel: node.channel.clone(),
            channels: BTreeMap::from([(node.channel.clone(), node.channel_key.clone())]),
            listen: node.listen,
            peers: node
                .peers
                .iter()
                .map(|(name, address)| PeerConfig {
                    name: name.clone(),
                    address: *address,
                })
                .collect(),
            query_handlers: Vec::new(),
            command_handlers: Vec::new(),
            event_format: default_event_format(),
        }
    }

    /// Serialises the config as TOML (paths as they are held).
    pub fn to_toml(&self) -> String {
        // Serialising plain strings, paths and addresses cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The trust anchor (CA and revocation list) and this node's identity,
    /// checked valid at `now_us`.
    pub fn load_identity(
        &self,
        now_us: u64,
    ) -> Result<
        (crate::identity::TrustAnchor, crate::identity::NodeIdentity),
        crate::identity::IdentityError,
    > {
        let trust = crate::identity::TrustAnchor::load(&self.ca, self.revoked.as_deref())?;
        let identity = crate::identity::NodeIdentity::load(
            &self.service,
            &self.key,
            &self.cert,
            &trust,
            now_us,
        )?;
        Ok((trust, identity))
    }

    /// Every channel key the config names.
    pub fn load_channel_keys(
        &self,
    ) -> Result<Vec<crate::core::crypto::ChannelKey>, crate::identity::IdentityError> {
        self.channels
            .iter()
            .map(|(name, path)| crate::identity::load_channel_key(name, path))
            .collect()
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
        let programs = self
            .query_handlers
            .iter_mut()
            .map(|h| &mut h.command)
            .chain(self.command_handlers.iter_mut().map(|h| &mut h.command));
        for command in programs {
            if let Some(program) = command.first_mut()
                && program.contains('/')
                && Path::new(program.as_str()).is_relative()
            {
                *program = base.join(program.as_str()).to_string_lossy().into_owned();
            }
        }
    }
}

/// Provisions a local cluster in `dir`: `dir/keys/` (CA, one node
/// certificate and key per name, `channel-default.key`, an empty
/// `revoked.toml`) and one config `dir/NAME.toml` per node with paths
/// relative to `dir` (see [`NodeConfig::for_cluster_node`]). Node `i`
/// listens on `127.0.0.1:(base_port + i)` and peers with every other node.
/// The CA and node certificates are valid for `validity_days`.
pub fn init_cluster(
    dir: &Path,
    nodes: &[String],
    base_port: u16,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    crate::identity::init_cluster_with(dir, nodes, base_port, validity_days, force, |node| {
        NodeConfig::for_cluster_node(node).to_toml()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
service = "a"
data_dir = "data-a"
key = "keys/a.key"
cert = "keys/a.crt"
ca = "keys/ca.crt"
default_channel = "default"
listen = "127.0.0.1:17400"

[channels]
default = "keys/channel-default.key"
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("a.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn query_handlers_default_to_none_and_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = NodeConfig::load(&write(dir.path(), BASE)).expect("existing config loads");
        assert!(old.query_handlers.is_empty());
        assert!(!old.to_toml().contains("query_handlers"));

        let text = format!(
            "{BASE}\n[[query_handlers]]\nquery_type = \"stock.level\"\ncommand = [\"handlers/stock.sh\", \"--fast\"]\ntimeout_ms = 2500\n\n[[query_handlers]]\nquery_type = \"price\"\ncommand = [\"jq\", \".\"]\n"
        );
        let config = NodeConfig::load(&write(dir.path(), &text)).expect("loads");
        let expected = vec![
            QueryHandlerConfig {
                query_type: "stock.level".into(),
                command: vec![
                    dir.path()
                        .join("handlers/stock.sh")
                        .to_string_lossy()
                        .into_owned(),
                    "--fast".into(),
                ],
                timeout_ms: Some(2500),
            },
            QueryHandlerConfig {
                query_type: "price".into(),
                command: vec!["jq".into(), ".".into()],
                timeout_ms: None,
            },
        ];
        assert_eq!(config.query_handlers, expected);
        let again: NodeConfig = toml::from_str(&config.to_toml()).expect("reparses");
        assert_eq!(again, config);
    }

    #[test]
    fn configs_that_cannot_work_are_refused_naming_the_culprit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer =
            |name: &str| format!("\n[[peers]]\nname = \"{name}\"\naddress = \"127.0.0.1:9\"\n");
        for (text, needle) in [
            (
                BASE.replace("\"default\"\nlisten", "\"news\"\nlisten"),
                "\"news\"",
            ),
            (
                BASE.replace("service = \"a\"", "service = \"A_1\""),
                "\"A_1\"",
            ),
            (format!("{BASE}{}", peer("a")), "itself"),
            (format!("{BASE}{}{}", peer("b"), peer("b")), "twice"),
            (format!("{BASE}{}", peer("-b")), "\"-b\""),
        ] {
            let e = NodeConfig::load(&write(dir.path(), &text)).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
            let message = e.to_string();
            assert!(message.contains(needle), "{message:?} should name {needle}");
            assert!(
                message.contains("a.toml"),
                "{message:?} should name the file"
            );
        }
    }

    #[test]
    fn toml_errors_are_one_line_with_line_column_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Top level (after `[channels]` it would be a channel).
        let text = format!("bogus = 1{BASE}");
        let e = NodeConfig::load(&write(dir.path(), &text)).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("line 1, column 1 (`bogus = 1`): unknown field `bogus`"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
        let text = BASE.replace("127.0.0.1:17400", "nowhere");
        let message = NodeConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(message.contains("(`listen = \"nowhere\"`)"), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }

    #[test]
    fn query_handler_config_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [
            "query_type = \"herald.head\"\ncommand = [\"x\"]",
            "query_type = \"ok\"\ncommand = []",
            "query_type = \"ok\"\ncommand = [\"x\"]\ntimeout_ms = 0",
            "query_type = \"has space\"\ncommand = [\"x\"]",
        ] {
            let text = format!("{BASE}\n[[query_handlers]]\n{bad}\n");
            let e = NodeConfig::load(&write(dir.path(), &text)).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{bad}: {e}");
        }
    }
}
