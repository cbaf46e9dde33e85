//! A seeded UDP proxy that impairs the path between two nodes: loss,
//! duplication, reordering and delay, per datagram and per direction.
//!
//! `herald bench --network wan` puts one between every pair of bench nodes,
//! and the network-fault tests (`tests/netfault.rs`) use it between real
//! nodes. The dialling node is configured with the proxy's address instead of
//! its peer's; the proxy forwards each client address's datagrams to the
//! target from a socket of its own, and the answers back.
//!
//! Decisions come from a seeded RNG, so a profile and a seed give the same
//! sequence of drops and delays for the same sequence of datagrams (the
//! datagrams themselves depend on the OS scheduler, so a run is reproducible
//! in distribution, not packet for packet).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram the proxy relays (QUIC's datagrams are far smaller;
/// this is the largest UDP payload).
pub const PROXY_DATAGRAM_BYTES_MAX: usize = 65_535;
/// Most client addresses one proxy serves at once (each gets an upstream
/// socket and a task); datagrams from further addresses are dropped.
pub const PROXY_CLIENTS_MAX: usize = 64;

/// What happens to each datagram, per direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a (kept) datagram is sent twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by an extra [`Self::reorder_ms`],
    /// so later datagrams overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered datagram, in milliseconds.
    pub reorder_ms: u64,
    /// Delay of every datagram, in milliseconds (one way).
    pub delay_ms: u64,
    /// Uniform random extra delay `0..=jitter_ms` per datagram (one way).
    pub jitter_ms: u64,
}

impl Impairment {
    /// A perfect path.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_ms: 0,
        delay_ms: 0,
        jitter_ms: 0,
    };

    /// The `herald bench --network wan` profile: a constant 50 ms round trip
    /// (25 ms each way) and 1 % loss in each direction.
    pub const WAN: Impairment = Impairment {
        loss: 0.01,
        delay_ms: 25,
        ..Impairment::NONE
    };
}

/// A running proxy; stops when dropped.
pub struct UdpProxy {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stats: Arc<ProxyStats>,
}

/// Datagrams the proxy saw and what it did with them (both directions).
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub received: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
    pub duplicated: std::sync::atomic::AtomicU64,
    pub reordered: std::sync::atomic::AtomicU64,
}

/// The shared, seeded decision maker of one direction.
struct Shaper {
    rng: Mutex<rand::rngs::StdRng>,
    impairment: Impairment,
    stats: Arc<ProxyStats>,
}

impl Shaper {
    /// The delays after which to send copies of one datagram (none: drop).
    fn plan(&self) -> Vec<Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        let i = &self.impairment;
        self.stats.received.fetch_add(1, Relaxed);
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if i.loss > 0.0 && rng.random_bool(i.loss.min(1.0)) {
            self.stats.dropped.fetch_add(1, Relaxed);
            return Vec::new();
        }
        let copies = if i.duplicate > 0.0 && rng.random_bool(i.duplicate.min(1.0)) {
            self.stats.duplicated.fetch_add(1, Relaxed);
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let mut ms = i.delay_ms;
                if i.jitter_ms > 0 {
                    ms += rng.random_range(0..=i.jitter_ms);
                }
                if i.reorder > 0.0 && rng.random_bool(i.reorder.min(1.0)) {
                    self.stats.reordered.fetch_add(1, Relaxed);
                    ms += i.reorder_ms;
                }
                Duration::from_millis(ms)
            })
            .collect()
    }
}

/// Sends `datagram` to `to` on `socket` after each of `delays`.
fn forward(socket: &Arc<UdpSocket>, to: SocketAddr, datagram: &[u8], delays: Vec<Duration>) {
    for delay in delays {
        if delay.is_zero() {
            // Best effort, like the network: a full send buffer drops it.
            let _ = socket.try_send_to(datagram, to);
            continue;
        }
        let socket = socket.clone();
        let datagram = datagram.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = socket.send_to(&datagram, to).await;
        });
    }
}

impl UdpProxy {
    /// Listens on `listen` (port 0 for any) and relays to `target`, impairing
    /// client-to-target datagrams with `forward` and the answers with
    /// `backward`, each direction with its own RNG seeded from `seed`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        forward_path: Impairment,
        backward_path: Impairment,
        seed: u64,
    ) -> std::io::Result<UdpProxy> {
        Self::start_from(
            listen,
            target.ip(),
            target,
            forward_path,
            backward_path,
            seed,
        )
        .await
    }

    /// Like [`Self::start`], but the target sees the datagrams come from
    /// `source` (e.g. 127.0.0.2, to tell the proxy's clients apart from
    /// other local senders).
    pub async fn start_from(
        listen: SocketAddr,
        source: std::net::IpAddr,
        target: SocketAddr,
        forward_path: Impairment,
        backward_path: Impairment,
        seed: u64,
    ) -> std::io::Result<UdpProxy> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let shaper = |impairment, seed| {
            Arc::new(Shaper {
                rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
                impairment,
                stats: stats.clone(),
            })
        };
        let to_target = shaper(forward_path, seed);
        let to_client = shaper(backward_path, seed ^ 0x9e37_79b9_7f4a_7c15);
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let upstream_tasks = tasks.clone();
        let main = tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; PROXY_DATAGRAM_BYTES_MAX];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    // Transient errors (e.g. ICMP port unreachable reported
                    // on Linux) must not end the proxy.
                    continue;
                };
                let upstream = match upstreams.get(&client) {
                    Some(u) => u.clone(),
                    None => {
                        if upstreams.len() >= PROXY_CLIENTS_MAX {
                            continue;
                        }
                        let Ok(socket) = UdpSocket::bind(SocketAddr::new(source, 0)).await else {
                            continue;
                        };
                        let socket = Arc::new(socket);
                        upstreams.insert(client, socket.clone());
                        let (back, front, to_client) =
                            (socket.clone(), front.clone(), to_client.clone());
                        let task = tokio::spawn(async move {
                            let mut buf = vec![0u8; PROXY_DATAGRAM_BYTES_MAX];
                            loop {
                                let Ok((n, from)) = back.recv_from(&mut buf).await else {
                                    continue;
                                };
                                if from != target {
                                    continue;
                                }
                                forward(&front, client, &buf[..n], to_client.plan());
                            }
                        });
                        if let Ok(mut t) = upstream_tasks.lock() {
                            t.push(task);
                        }
                        socket
                    }
                };
                forward(&upstream, target, &buf[..n], to_target.plan());
            }
        });
        if let Ok(mut t) = tasks.lock() {
            t.push(main);
        }
        Ok(UdpProxy { addr, tasks, stats })
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_decisions() {
        let profile = Impairment {
            loss: 0.1,
            duplicate: 0.05,
            reorder: 0.1,
            reorder_ms: 20,
            delay_ms: 5,
            jitter_ms: 10,
        };
        let plans = |seed| {
            let shaper = Shaper {
                rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
                impairment: profile,
                stats: Arc::new(ProxyStats::default()),
            };
            (0..1000).map(|_| shaper.plan()).collect::<Vec<_>>()
        };
        assert_eq!(plans(7), plans(7));
        assert_ne!(plans(7), plans(8));
        let dropped = plans(7).iter().filter(|p| p.is_empty()).count();
        assert!((50..150).contains(&dropped), "{dropped} of 1000 dropped");
    }
}
