//! A provisioned cluster whose nodes listen on free UDP ports, for tests
//! that start real nodes on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald::config::{NodeConfig, PeerConfig};
use herald::identity::TrustAnchor;
use herald::net::TlsIdentity;

// ---------------------------------------------------------------------------
// Provisioning with free ports and custom topologies.

/// `n` distinct free UDP ports on 127.0.0.1 (all held until all are chosen).
pub fn free_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local addr").port())
        .collect()
}

/// A provisioned cluster directory whose nodes listen on free ports.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<String, SocketAddr>,
}

impl Net {
    /// Every node peers with every other (the `herald init` topology).
    pub fn mesh(nodes: &[&str]) -> Net {
        let all: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        Net::with_peers(nodes, |me| {
            all.iter().filter(|n| *n != me).cloned().collect()
        })
    }

    /// `peers(name)` lists the peers of each node (any provisioned names).
    pub fn with_peers(nodes: &[&str], peers: impl Fn(&str) -> Vec<String>) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        herald::config::init_cluster(dir.path(), &names, 17400, 365, false).expect("init cluster");
        let ports = free_ports(names.len());
        let addrs: BTreeMap<String, SocketAddr> = names
            .iter()
            .zip(ports)
            .map(|(n, p)| (n.clone(), SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let net = Net { dir, addrs };
        for name in &names {
            let wanted = peers(name);
            net.edit(name, |c| {
                c.listen = net.addrs[name];
                c.peers = wanted
                    .iter()
                    .map(|p| PeerConfig {
                        name: p.clone(),
                        address: net.addrs[p],
                    })
                    .collect();
            });
        }
        net
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self, node: &str) -> PathBuf {
        self.path().join(format!("{node}.toml"))
    }

    pub fn config(&self, node: &str) -> NodeConfig {
        NodeConfig::load(&self.config_path(node)).expect("load config")
    }

    /// Loads, changes and rewrites a node's config (paths become absolute).
    pub fn edit(&self, node: &str, f: impl FnOnce(&mut NodeConfig)) {
        let mut config = self.config(node);
        f(&mut config);
        std::fs::write(self.config_path(node), config.to_toml()).expect("write config");
    }

    /// The last lines of every node process's log in this cluster.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!("--- {} ---\n", path.display()));
                out.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
                out.push('\n');
            }
        }
        out
    }

    pub fn keys(&self) -> PathBuf {
        self.path().join("keys")
    }

    pub fn ca(&self) -> PathBuf {
        self.keys().join("ca.crt")
    }

    pub fn trust(&self) -> Arc<TrustAnchor> {
        Arc::new(TrustAnchor::load(&self.ca(), None).expect("trust"))
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.config(node).data_dir
    }

    /// A TLS identity for `name`'s files in this cluster's key directory.
    pub fn tls(&self, name: &str) -> TlsIdentity {
        TlsIdentity::from_files(
            &self.keys().join(format!("{name}.crt")),
            &self.keys().join(format!("{name}.key")),
            self.trust(),
        )
        .expect("tls identity")
    }
}
