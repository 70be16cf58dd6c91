//! Live per-backend load: in-flight requests and a peak-EWMA latency estimate.
//!
//! Written on the request path with relaxed atomics (no locks). The estimator's read-modify-
//! write is not a single atomic step: two concurrent observations may lose one sample, which
//! an exponentially weighted average tolerates by design.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Cost of a backend with no latency history that already has requests in flight: high, so
/// we do not pile onto an unknown server, but finite, so it still gets its first samples
/// (Finagle's `Penalty`).
pub const NO_HISTORY_PENALTY_NS: f64 = 1e12;

/// Load of one backend. Shared by the proxy (through an `Arc`) and by the strategy code.
#[derive(Debug, Default)]
pub struct Load {
    inflight: AtomicU32,
    /// Peak-EWMA of response-header latency in ns, as f64 bits; 0 means no history.
    ewma_bits: AtomicU64,
    /// Time (ns on the caller's clock) of the last observation.
    stamp_ns: AtomicU64,
}

impl Load {
    pub fn new() -> Arc<Self> {
        Arc::new(Load::default())
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Relaxed)
    }

    /// Counts a request in flight until the returned guard drops (success, error or
    /// cancellation alike).
    pub fn track(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Relaxed);
        InflightGuard(Arc::clone(self))
    }

    /// The raw estimate in ns (0 = no history), without decay.
    pub fn ewma_ns(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Relaxed))
    }

    /// The estimate decayed towards zero for the time since the last observation, so that a
    /// backend that was slow once is tried again after a while (tower's `PeakEwma`).
    pub fn latency_estimate_ns(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let ewma = self.ewma_ns();
        if ewma == 0.0 {
            return 0.0;
        }
        let dt = now_ns.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
        ewma * (-dt / decay_ns).exp()
    }

    /// Records one latency sample. A sample above the estimate replaces it at once (the
    /// "peak"); lower samples pull it down with weight `1 - exp(-dt/decay)`.
    pub fn observe(&self, rtt_ns: f64, now_ns: u64, decay_ns: f64) {
        let prev = self.ewma_ns();
        let last = self.stamp_ns.swap(now_ns, Relaxed);
        let next = if prev == 0.0 || rtt_ns > prev {
            rtt_ns
        } else {
            let w = (-(now_ns.saturating_sub(last) as f64) / decay_ns).exp();
            prev * w + rtt_ns * (1.0 - w)
        };
        self.ewma_bits.store(next.max(1.0).to_bits(), Relaxed);
    }

    /// Peak-EWMA cost: estimated latency × (in-flight + 1). Backends without history cost 0
    /// while idle (probe them) and [`NO_HISTORY_PENALTY_NS`] per request while busy.
    pub fn cost(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let inflight = self.inflight() as f64;
        let est = self.latency_estimate_ns(now_ns, decay_ns);
        if est == 0.0 {
            NO_HISTORY_PENALTY_NS * inflight
        } else {
            est * (inflight + 1.0)
        }
    }
}

/// RAII in-flight count; see [`Load::track`].
#[derive(Debug)]
pub struct InflightGuard(Arc<Load>);

impl InflightGuard {
    pub fn load(&self) -> &Arc<Load> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_in_flight() {
        let l = Load::new();
        let a = l.track();
        let b = l.track();
        assert_eq!(l.inflight(), 2);
        drop(a);
        assert_eq!(l.inflight(), 1);
        drop(b);
        assert_eq!(l.inflight(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let l = Load::default();
        let decay = 10e9;
        l.observe(1e6, 0, decay);
        assert_eq!(l.ewma_ns(), 1e6);
        l.observe(5e6, 1_000, decay); // peak: replaces at once
        assert_eq!(l.ewma_ns(), 5e6);
        l.observe(1e6, 10_000_000_000, decay); // one decay period later: weight 1-1/e
        let expect = 5e6 / std::f64::consts::E + 1e6 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((l.ewma_ns() - expect).abs() < 1.0);
        // Read-side decay towards zero while idle.
        assert!(l.latency_estimate_ns(30_000_000_000, decay) < l.ewma_ns() / 2.0);
    }

    #[test]
    fn cost_penalises_busy_backends_without_history() {
        let l = Load::new();
        assert_eq!(l.cost(0, 1e10), 0.0);
        let _g = l.track();
        assert_eq!(l.cost(0, 1e10), NO_HISTORY_PENALTY_NS);
        l.observe(2e6, 0, 1e10);
        assert_eq!(l.cost(0, 1e10), 4e6);
    }
}
