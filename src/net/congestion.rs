//! Congestion control for herald's links: quinn's BBR with a floor under
//! its window.
//!
//! Why not quinn's default (CUBIC): it reads every lost packet as
//! congestion, so on a path with random loss its window stays near the
//! minimum and replication crawls (10 % loss plus reordering and delay took
//! minutes to converge what a clean path does in milliseconds). BBR paces by
//! measured bandwidth and round trip and ignores random loss.
//!
//! Why the floor: BBR sizes its window from the *smallest* round trip it
//! has seen. On a path whose delay varies per packet (0 to 50 ms of jitter)
//! that minimum is a fraction of the typical round trip, so the window
//! (about 2 x bandwidth x minimum RTT) falls to a few packets and throughput
//! to a few packets per typical round trip. [`CONGESTION_WINDOW_FLOOR_BYTES`]
//! keeps enough in flight to carry replication over such a path. A herald
//! cluster is a handful of nodes, one connection per pair, so the floor's
//! cost to other traffic on a congested path is bounded by it per pair.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};

/// Least congestion window, in bytes: about 100 full-size packets. At a
/// 50 ms round trip this alone carries 2.6 MB/s, several times what
/// replicating tens of thousands of small events a second needs.
pub const CONGESTION_WINDOW_FLOOR_BYTES: u64 = 128 * 1024;

/// Builds [`FlooredBbr`] controllers.
#[derive(Debug, Default)]
pub struct FlooredBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for FlooredBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(FlooredBbr {
            inner: self.bbr.clone().build(now, current_mtu),
        })
    }
}

/// BBR whose window never falls below [`CONGESTION_WINDOW_FLOOR_BYTES`].
pub struct FlooredBbr {
    inner: Box<dyn Controller>,
}

impl Controller for FlooredBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        self.inner.window().max(CONGESTION_WINDOW_FLOOR_BYTES)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(FlooredBbr {
            inner: self.inner.clone_box(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner
            .initial_window()
            .max(CONGESTION_WINDOW_FLOOR_BYTES)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_never_falls_below_the_floor() {
        let now = Instant::now();
        let bbr = Arc::new(FlooredBbrConfig::default()).build(now, 1200);
        assert!(bbr.window() >= CONGESTION_WINDOW_FLOOR_BYTES);
        // Any controller's collapse stops at the floor: NewReno drops to
        // two packets on persistent congestion.
        let reno = Arc::new(quinn::congestion::NewRenoConfig::default()).build(now, 1200);
        let mut floored = FlooredBbr { inner: reno };
        floored.on_congestion_event(now, now, true, 1_000_000);
        assert!(floored.inner.window() < CONGESTION_WINDOW_FLOOR_BYTES);
        assert_eq!(floored.window(), CONGESTION_WINDOW_FLOOR_BYTES);
    }
}
