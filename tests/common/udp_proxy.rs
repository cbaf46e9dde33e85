//! Real nodes behind the seeded UDP proxy of `herald::bench::netem`: the
//! dialling node of each pair is pointed at a proxy in front of its peer, so
//! every datagram of their connection crosses the impaired path.
//!
//! Declared as its own module by the test files that use it (it is not part
//! of `common/mod.rs`, so other test crates do not compile it).

use std::net::SocketAddr;

pub use herald::bench::netem::{Impairment, UdpProxy};

use crate::common::net::Net;

/// Starts a proxy in front of `target` and points `dialer`'s configured
/// address of `target` at it. `dialer` must sort before `target` (it dials).
pub async fn interpose(
    net: &Net,
    dialer: &str,
    target: &str,
    forward: Impairment,
    backward: Impairment,
    seed: u64,
) -> UdpProxy {
    assert!(dialer < target, "{dialer} does not dial {target}");
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let proxy = UdpProxy::start(listen, net.addrs[target], forward, backward, seed)
        .await
        .expect("start the UDP proxy");
    let via = proxy.addr();
    net.edit(dialer, |c| {
        for p in &mut c.peers {
            if p.name == target {
                p.address = via;
            }
        }
    });
    proxy
}
