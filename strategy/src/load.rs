//! Live per-backend load: in-flight requests, a peak-EWMA latency estimate, and the queue
//! length the backend last reported (ORCA).
//!
//! Written on the request path with relaxed atomics (no locks). The estimator's read-modify-
//! write is not a single atomic step: two concurrent observations may lose one sample, which
//! an exponentially weighted average tolerates by design. Likewise a report's queue and its
//! time are two stores: a pick that reads between them sees the new queue with the old time
//! (or the reverse), which matters only at the moment a report expires.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Cost of a backend with no latency history that already has requests in flight: high, so
/// we do not pile onto an unknown server, but finite, so it still gets its first samples
/// (Finagle's `Penalty`).
pub const NO_HISTORY_PENALTY_NS: f64 = 1e12;

/// A load report older than this is ignored. Reports ride on responses, so a backend that
/// serves us reports many times a second; one we have not heard from for a second is either
/// idle for us (its in-flight count says so) or no longer reporting, and what it said then
/// no longer describes it.
pub const REPORT_TTL_NS: u64 = 1_000_000_000;

/// `report_ns` of a backend that never reported.
const NEVER: u64 = u64::MAX;

/// Load of one backend. Shared by the proxy (through an `Arc`) and by the strategy code.
#[derive(Debug)]
pub struct Load {
    inflight: AtomicU32,
    /// Peak-EWMA of response-header latency in ns, as f64 bits; 0 means no history.
    ewma_bits: AtomicU64,
    /// Time (ns on the caller's clock) of the last observation.
    stamp_ns: AtomicU64,
    /// The queue length of the latest report.
    reported_queue: AtomicU32,
    /// Time of the latest report, [`NEVER`] before the first.
    report_ns: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            inflight: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(0),
            stamp_ns: AtomicU64::new(0),
            reported_queue: AtomicU32::new(0),
            report_ns: AtomicU64::new(NEVER),
        }
    }
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
        self.latency_times(self.inflight() as f64, now_ns, decay_ns)
    }

    /// Cost of `orca_least_delay`: estimated latency × (in-flight + reported queue + 1), the
    /// expected delay behind every request we know to be ahead: ours in flight, and those the
    /// backend's fresh report says are waiting for a slot. Without a fresh report it is
    /// [`Load::cost`]; without latency history, [`NO_HISTORY_PENALTY_NS`] per request ahead.
    pub fn delay_cost(&self, now_ns: u64, decay_ns: f64) -> f64 {
        let queue = self.reported_queue(now_ns).unwrap_or(0);
        self.latency_times(f64::from(self.inflight()) + f64::from(queue), now_ns, decay_ns)
    }

    /// Estimated latency × (`ahead` + 1), or [`NO_HISTORY_PENALTY_NS`] × `ahead` without history.
    fn latency_times(&self, ahead: f64, now_ns: u64, decay_ns: f64) -> f64 {
        let est = self.latency_estimate_ns(now_ns, decay_ns);
        if est == 0.0 {
            NO_HISTORY_PENALTY_NS * ahead
        } else {
            est * (ahead + 1.0)
        }
    }

    /// Takes a load report: `queue` requests were waiting at the backend (ORCA
    /// `named_metrics.queue`) when it answered at `now_ns`.
    pub fn report(&self, queue: u32, now_ns: u64) {
        self.reported_queue.store(queue, Relaxed);
        self.report_ns.store(now_ns, Relaxed);
    }

    /// The queue of the latest report, if that report is younger than [`REPORT_TTL_NS`] at
    /// `now_ns`.
    pub fn reported_queue(&self, now_ns: u64) -> Option<u32> {
        let at = self.report_ns.load(Relaxed);
        if at == NEVER || now_ns.saturating_sub(at) > REPORT_TTL_NS {
            return None;
        }
        Some(self.reported_queue.load(Relaxed))
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

    #[test]
    fn reports_expire() {
        let l = Load::new();
        assert_eq!(l.reported_queue(0), None, "never reported");
        // A report at time 0 is a report (0 is a valid time on the caller's clock).
        l.report(7, 0);
        assert_eq!(l.reported_queue(REPORT_TTL_NS), Some(7));
        assert_eq!(l.reported_queue(REPORT_TTL_NS + 1), None);
        l.report(2, REPORT_TTL_NS + 5);
        assert_eq!(l.reported_queue(REPORT_TTL_NS + 5), Some(2), "a newer report is fresh");
    }

    #[test]
    fn delay_cost_adds_the_reported_queue_to_the_requests_in_flight() {
        let l = Load::new();
        let _busy = [l.track(), l.track()];
        l.report(4, 0);
        assert_eq!(
            l.delay_cost(0, 1e10),
            NO_HISTORY_PENALTY_NS * 6.0,
            "no history, six ahead"
        );
        l.observe(3e6, 0, 1e10);
        assert_eq!(l.delay_cost(0, 1e10), 3e6 * 7.0);
        let later = REPORT_TTL_NS + 1;
        assert_eq!(
            l.delay_cost(later, 1e10),
            l.cost(later, 1e10),
            "expired: the p2c_ewma cost"
        );
    }
}
