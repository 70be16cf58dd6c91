//! Live per-backend load: in-flight requests, a peak-EWMA latency estimate, the share of
//! recent attempts that failed, the recent cost per level of requests in flight (for
//! `prequal`), and the queue length the backend last reported (ORCA).
//!
//! Written on the request path with relaxed atomics (no locks). The estimators' read-modify-
//! writes are not single atomic steps: two concurrent observations may lose one sample, which
//! an exponentially weighted average tolerates by design. Likewise a report's queue and its
//! time are two stores: a pick that reads between them sees the new queue with the old time
//! (or the reverse), which matters only at the moment a report expires.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::Params;

/// Cost of a backend with no latency history that already has requests in flight: high, so
/// we do not pile onto an unknown server, but finite, so it still gets its first samples
/// (Finagle's `Penalty`).
pub const NO_HISTORY_PENALTY_NS: f64 = 1e12;

/// A load report older than this is ignored. Reports ride on responses, so a backend that
/// serves us reports many times a second; one we have not heard from for a second is either
/// idle for us (its in-flight count says so) or no longer reporting, and what it said then
/// no longer describes it.
pub const REPORT_TTL_NS: u64 = 1_000_000_000;

/// How far one attempt moves a backend's failure rate: an EWMA over attempts with this
/// weight, so the last ~16 attempts count most. One fast 503 after a run of successes makes
/// the next request there look 1/16 of the failure penalty dearer (125 ms at the default
/// 2 s), enough to steer the next requests elsewhere while a full server stays full;
/// 16 successes take most of it back.
pub const FAILURE_WEIGHT: f64 = 1.0 / 16.0;

/// Levels of requests in flight the latency is kept for (0..=14, and 15 or more).
pub const RIF_BUCKETS: usize = 16;

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
    /// Share of recent attempts that failed, as f64 bits (see [`Load::failure_rate`]).
    failure_bits: AtomicU64,
    /// Recent successful latency in ns by our requests in flight when each was sent (f64
    /// bits, 0 = none yet); see [`Load::latency_at_rif_ns`].
    by_rif: [AtomicU64; RIF_BUCKETS],
    /// The spread of those latencies: their exponentially weighted variance in ns² (f64
    /// bits), per level, with the same weight; see [`Load::latency_at_rif_ns`].
    by_rif_var: [AtomicU64; RIF_BUCKETS],
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
            failure_bits: AtomicU64::new(0),
            by_rif: std::array::from_fn(|_| AtomicU64::new(0)),
            by_rif_var: std::array::from_fn(|_| AtomicU64::new(0)),
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
        let rif = self.inflight.fetch_add(1, Relaxed);
        InflightGuard(Arc::clone(self), rif)
    }

    /// The raw estimate in ns (0 = no history), without decay.
    pub fn ewma_ns(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Relaxed))
    }

    /// The estimate decayed towards zero for the time since the last observation, so that a
    /// backend that was slow once is tried again after a while (tower's `PeakEwma`).
    pub fn latency_estimate_ns(&self, now_ns: u64, decay_ns: f64) -> f64 {
        self.decayed(self.ewma_ns(), now_ns, decay_ns)
    }

    /// `value` × e^(−dt/decay), dt being the time since the last observation.
    fn decayed(&self, value: f64, now_ns: u64, decay_ns: f64) -> f64 {
        if value == 0.0 {
            return 0.0;
        }
        let dt = now_ns.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
        value * (-dt / decay_ns).exp()
    }

    /// Records one successful attempt's latency. A sample above the estimate replaces it at
    /// once (the "peak"); lower samples pull it down with weight `1 - exp(-dt/decay)`. The
    /// failure rate moves towards 0 by [`FAILURE_WEIGHT`].
    pub fn observe(&self, rtt_ns: f64, now_ns: u64, decay_ns: f64) {
        let p = self.failure_rate_raw();
        if p != 0.0 {
            self.failure_bits.store((p * (1.0 - FAILURE_WEIGHT)).to_bits(), Relaxed);
        }
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

    /// Records a failed attempt (a 5xx, a reset, a timeout, a refused connection) that
    /// ended after `rtt_ns`. The failure rate moves towards 1 by [`FAILURE_WEIGHT`]. The
    /// latency estimate takes the attempt's time only as a peak: a failure that took long
    /// (a timeout) says the backend is slow, a fast one says nothing about how fast it
    /// answers and never pulls the estimate down.
    pub fn observe_failure(&self, rtt_ns: f64, now_ns: u64) {
        let p = self.failure_rate_raw();
        self.failure_bits
            .store((p + (1.0 - p) * FAILURE_WEIGHT).to_bits(), Relaxed);
        self.stamp_ns.store(now_ns, Relaxed);
        if rtt_ns > self.ewma_ns() {
            self.ewma_bits.store(rtt_ns.max(1.0).to_bits(), Relaxed);
        }
    }

    fn failure_rate_raw(&self) -> f64 {
        f64::from_bits(self.failure_bits.load(Relaxed))
    }

    /// The share of recent attempts that failed (an EWMA over attempts, weight
    /// [`FAILURE_WEIGHT`]), decayed towards zero for the time since the last observation
    /// like the latency estimate, so that a backend that failed and was then avoided is
    /// tried again after a while.
    pub fn failure_rate(&self, now_ns: u64, decay_ns: f64) -> f64 {
        self.decayed(self.failure_rate_raw(), now_ns, decay_ns)
    }

    /// What the next request here is expected to cost its client, failures included:
    /// `(1 − p) × latency + p × penalty`, with `p` the [`Load::failure_rate`] and the
    /// penalty `params.failure_penalty_ns`. A backend that sheds load with a 503 in 0.1 ms
    /// thus looks as costly as its failures are, never faster than one that answers. 0
    /// while the backend has neither latency history nor recent failures.
    pub fn expected_ns(&self, now_ns: u64, params: &Params) -> f64 {
        let p = self.failure_rate(now_ns, params.decay_ns);
        let est = self.latency_estimate_ns(now_ns, params.decay_ns);
        (1.0 - p) * est + p * params.failure_penalty_ns
    }

    /// Records what an attempt cost (its latency, or the failure penalty when it failed) in
    /// the average of its RIF bucket: the requests we had in flight at this backend when it
    /// was sent (`rif`, from its [`InflightGuard`]), weight `alpha` per attempt
    /// (`2 / (window + 1)` averages over about `window` attempts). The bucket's variance is
    /// kept with the same weight (West's incremental form), so that a reader can tell a
    /// difference between two averages from noise. The previous average counts `fade` times
    /// its value (1: Prequal's plain average; see [`Load::idle_fade`]).
    pub fn observe_at_rif(&self, rif: u32, rtt_ns: f64, alpha: f64, fade: f64) {
        let at = (rif as usize).min(RIF_BUCKETS - 1);
        let raw = f64::from_bits(self.by_rif[at].load(Relaxed));
        let prev = if raw == 0.0 { 0.0 } else { (raw * fade).max(1.0) };
        let (mean, var) = if prev == 0.0 {
            (rtt_ns, 0.0)
        } else {
            let var = f64::from_bits(self.by_rif_var[at].load(Relaxed));
            let d = rtt_ns - prev;
            (prev + alpha * d, (1.0 - alpha) * (var + alpha * d * d))
        };
        self.by_rif[at].store(mean.max(1.0).to_bits(), Relaxed);
        self.by_rif_var[at].store(var.to_bits(), Relaxed);
    }

    /// `e^(−idle/decay)`, idle being the time since the backend's last observation (a
    /// response or a failure): how much of what was measured before that pause still
    /// describes the backend, as the latency estimate decays. About 1 for a backend that
    /// answers all the time; it falls for one that was avoided, so that a server the `ml`
    /// strategy kept away during an incident is not judged by the incident for ever.
    pub fn idle_fade(&self, now_ns: u64, decay_ns: f64) -> f64 {
        self.decayed(1.0, now_ns, decay_ns)
    }

    /// The level whose average answers for `rif`: `rif` itself when it has samples, else
    /// the nearest one that has some, the lower first.
    fn rif_level(&self, rif: u32) -> Option<usize> {
        let at = (rif as usize).min(RIF_BUCKETS - 1);
        let has = |i: usize| self.by_rif[i].load(Relaxed) != 0;
        (0..RIF_BUCKETS).find_map(|d| {
            at.checked_sub(d)
                .filter(|&i| has(i))
                .or_else(|| Some(at + d).filter(|&i| i < RIF_BUCKETS && has(i)))
        })
    }

    /// Recent cost of requests sent while `rif` of ours were in flight here, failures at the
    /// penalty (Prequal's latency estimate, which a server gives for its current requests in
    /// flight). A level without samples takes the nearest one that has some, the lower
    /// first; 0 when there is none at all.
    pub fn latency_at_rif_ns(&self, rif: u32) -> f64 {
        self.rif_level(rif)
            .map_or(0.0, |i| f64::from_bits(self.by_rif[i].load(Relaxed)))
    }

    /// The recent cost at exactly level `rif` (15 and above share the last level), `None`
    /// when that level has no samples. The `ml` strategy's calibration compares it with
    /// the model's prediction at the same level.
    pub fn latency_at_rif_exact_ns(&self, rif: u32) -> Option<f64> {
        let at = (rif as usize).min(RIF_BUCKETS - 1);
        Some(f64::from_bits(self.by_rif[at].load(Relaxed))).filter(|&v| v != 0.0)
    }

    /// [`Load::latency_at_rif_ns`] decayed towards zero for the time since the backend's last
    /// observation, as the latency estimate is ([`Load::idle_fade`]); the `ml` feature
    /// `latency_rif_ms`.
    pub fn latency_at_rif_decayed_ns(&self, rif: u32, now_ns: u64, decay_ns: f64) -> f64 {
        self.decayed(self.latency_at_rif_ns(rif), now_ns, decay_ns)
    }

    /// [`Load::latency_at_rif_exact_ns`] decayed towards zero for the time since the
    /// backend's last observation, as the latency estimate is: a level that cost much once
    /// does not keep a backend that is no longer sent anything away for ever.
    pub fn latency_at_rif_recent_ns(&self, rif: u32, now_ns: u64, decay_ns: f64) -> Option<f64> {
        self.latency_at_rif_exact_ns(rif)
            .map(|v| self.decayed(v, now_ns, decay_ns))
    }

    /// [`Load::latency_at_rif_ns`] and its standard error: how far that average may be from
    /// the level's true mean by chance, `σ·√(α / (2 − α))` for an exponentially weighted
    /// average of samples with spread σ and weight `alpha`. `(0, 0)` without history.
    pub fn latency_at_rif_with_error_ns(&self, rif: u32, alpha: f64) -> (f64, f64) {
        self.rif_level(rif).map_or((0.0, 0.0), |i| {
            let mean = f64::from_bits(self.by_rif[i].load(Relaxed));
            let var = f64::from_bits(self.by_rif_var[i].load(Relaxed));
            (mean, (var * alpha / (2.0 - alpha)).max(0.0).sqrt())
        })
    }

    /// `prequal`'s latency estimate and its standard error:
    /// [`Load::latency_at_rif_with_error_ns`] at our current requests in flight. Failures
    /// are in it where they happened, so it needs no separate failure rate: a server that
    /// sheds when full is dear when full and cheap when not.
    pub fn expected_at_rif_ns(&self, alpha: f64) -> (f64, f64) {
        self.latency_at_rif_with_error_ns(self.inflight(), alpha)
    }

    /// Requests known to be ahead of a new one at this backend: ours in flight plus the
    /// queue of its fresh load report (none when the report expired or never came). Our own
    /// waiting requests count twice (see [`Load::delay_cost`]).
    pub fn ahead(&self, now_ns: u64) -> u32 {
        self.inflight().saturating_add(self.reported_queue(now_ns).unwrap_or(0))
    }

    /// Peak-EWMA cost: expected cost ([`Load::expected_ns`]) × (in-flight + 1). Backends
    /// without history cost 0 while idle (probe them) and [`NO_HISTORY_PENALTY_NS`] per
    /// request while busy.
    pub fn cost(&self, now_ns: u64, params: &Params) -> f64 {
        self.expected_times(self.inflight() as f64, now_ns, params)
    }

    /// Cost of `orca_least_delay`: expected cost × (in-flight + reported queue + 1), the
    /// expected delay behind every request we know to be ahead: ours in flight, and those the
    /// backend's fresh report says are waiting for a slot. Without a fresh report it is
    /// [`Load::cost`]; without history, [`NO_HISTORY_PENALTY_NS`] per request ahead.
    pub fn delay_cost(&self, now_ns: u64, params: &Params) -> f64 {
        self.expected_times(f64::from(self.ahead(now_ns)), now_ns, params)
    }

    /// Expected cost × (`ahead` + 1), or [`NO_HISTORY_PENALTY_NS`] × `ahead` without history.
    fn expected_times(&self, ahead: f64, now_ns: u64, params: &Params) -> f64 {
        let est = self.expected_ns(now_ns, params);
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
pub struct InflightGuard(Arc<Load>, u32);

impl InflightGuard {
    pub fn load(&self) -> &Arc<Load> {
        &self.0
    }

    /// Our requests in flight at the backend when this one was sent (itself not counted).
    pub fn rif(&self) -> u32 {
        self.1
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
        let p = Params::new(crate::StrategyKind::P2cEwma);
        assert_eq!(l.cost(0, &p), 0.0);
        let _g = l.track();
        assert_eq!(l.cost(0, &p), NO_HISTORY_PENALTY_NS);
        l.observe(2e6, 0, 1e10);
        assert_eq!(l.cost(0, &p), 4e6);
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
        let p = Params::new(crate::StrategyKind::OrcaLeastDelay);
        assert_eq!(
            l.delay_cost(0, &p),
            NO_HISTORY_PENALTY_NS * 6.0,
            "no history, six ahead"
        );
        l.observe(3e6, 0, 1e10);
        assert_eq!(l.delay_cost(0, &p), 3e6 * 7.0);
        let later = REPORT_TTL_NS + 1;
        assert_eq!(l.delay_cost(later, &p), l.cost(later, &p), "expired: the p2c_ewma cost");
    }
}
