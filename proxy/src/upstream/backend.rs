//! Live state of one backend: load, active health, passive ejection. It is keyed by
//! (pool, address) and survives reloads and selector rebuilds; only the control plane
//! creates or retires it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::clock;
use crate::config::OutlierConfig;
use crate::orca::LoadReport;
use crate::strategy::{Load, REPORT_TTL_NS};

/// Active health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Newly added to a pool with active checks: no traffic until the first check passes.
    Pending,
    Healthy,
    Unhealthy,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Pending,
            1 => Health::Healthy,
            _ => Health::Unhealthy,
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            Health::Pending => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
        }
    }
}

/// Why a request to a backend counted as a failure for passive health.
///
/// Gateway failures (the backend could not be reached or could not answer: 502, 503, 504,
/// resets, timeouts) say something about the server. Other 5xx (a 500 from one broken
/// handler) say something about one request, and any client can trigger them, so by default
/// they do not eject (Envoy's `consecutive_gateway_failure` against `consecutive_5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    /// A 502, 503 or 504 answered by the backend.
    Gateway5xx,
    /// Any other 5xx (500, 501, 505, ...).
    Status5xx,
    /// Reset or timeout after the request was sent.
    Transport,
}

impl Failure {
    /// The failure a response status stands for, `None` below 500.
    pub fn of_status(status: u16) -> Option<Failure> {
        match status {
            502..=504 => Some(Failure::Gateway5xx),
            500..=599 => Some(Failure::Status5xx),
            _ => None,
        }
    }
}

/// Where a backend stands in its pool's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// In the configuration.
    Member,
    /// Removed by a reload but still serving until its pool's replacements are healthy or the
    /// pool's `removed_drain_ms` passes, so that replacing servers never leaves a gap.
    Leaving,
    /// Out of the pool; only requests already sent to it still refer to it.
    Gone,
}

#[derive(Debug)]
pub struct BackendStats {
    pub pool: Arc<str>,
    pub addr: SocketAddr,
    /// `addr` as text, rendered once (request records carry it).
    pub addr_text: Arc<str>,
    id: ArcSwap<String>,
    weight: AtomicU32,
    pub load: Arc<Load>,
    health: AtomicU8,
    /// Consecutive active-check results (only the health task writes these).
    check_passes: AtomicU32,
    check_fails: AtomicU32,
    // Passive health.
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_connect: AtomicU32,
    ejected_until_ns: AtomicU64,
    ejections: AtomicU32,
    /// Error-rate EWMA over requests, in parts per million (decays per request, α = 1/32).
    error_rate_ppm: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    last_success_ns: AtomicU64,
    membership: AtomicU8,
    /// The backend's latest ORCA load report, as f32 bits (NaN: not in that report).
    reported_cpu: AtomicU32,
    reported_queue: AtomicU32,
    reported_rps: AtomicU32,
    /// When that report came (`u64::MAX`: never).
    reported_ns: AtomicU64,
    /// This server's [`Slot`] in its pool's `ml` score tables ([`NO_SLOT`] until the pool
    /// gives it one), as [`Slot::bits`]; set once by the control plane before the server is
    /// published.
    slot: AtomicU64,
}

/// A server's place in its pool's `ml` score tables: an index, reused once the server that
/// held it is gone, and the generation of that use, so that a table scored for the previous
/// holder never describes the next one ([`PoolScores::curve`](crate::ml::PoolScores::curve)
/// compares both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub index: u32,
    pub generation: u32,
}

impl Slot {
    pub const fn new(index: u32, generation: u32) -> Self {
        Slot { index, generation }
    }

    fn bits(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn from_bits(bits: u64) -> Self {
        Slot {
            index: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }
}

/// [`BackendStats::slot`] of a server no pool has given a slot (it has no `ml` scores).
pub const NO_SLOT: Slot = Slot::new(u32::MAX, u32::MAX);

/// What a backend last reported about its own load (ORCA); `None` where it never did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReportedLoad {
    pub cpu_utilization: Option<f32>,
    pub queue: Option<f32>,
    pub rps: Option<f32>,
}

fn nan_bits() -> AtomicU32 {
    AtomicU32::new(f32::NAN.to_bits())
}

fn store_opt(cell: &AtomicU32, v: Option<f64>) {
    cell.store(v.map_or(f32::NAN, |v| v as f32).to_bits(), Relaxed);
}

fn load_opt(cell: &AtomicU32) -> Option<f32> {
    let v = f32::from_bits(cell.load(Relaxed));
    (!v.is_nan()).then_some(v)
}

impl BackendStats {
    pub fn new(pool: Arc<str>, id: &str, addr: SocketAddr, weight: u32, pending: bool) -> Arc<Self> {
        Arc::new(BackendStats {
            pool,
            addr,
            addr_text: addr.to_string().into(),
            id: ArcSwap::from_pointee(id.to_string()),
            weight: AtomicU32::new(weight),
            load: Load::new(),
            health: AtomicU8::new(if pending { Health::Pending } else { Health::Healthy }.to_u8()),
            check_passes: AtomicU32::new(0),
            check_fails: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            error_rate_ppm: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_success_ns: AtomicU64::new(0),
            membership: AtomicU8::new(0),
            reported_cpu: nan_bits(),
            reported_queue: nan_bits(),
            reported_rps: nan_bits(),
            reported_ns: AtomicU64::new(u64::MAX),
            slot: AtomicU64::new(NO_SLOT.bits()),
        })
    }

    /// The server's place in its pool's `ml` score tables, [`NO_SLOT`] when it has none.
    pub fn slot(&self) -> Slot {
        Slot::from_bits(self.slot.load(Relaxed))
    }

    pub(crate) fn set_slot(&self, slot: Slot) {
        self.slot.store(slot.bits(), Relaxed);
    }

    pub fn id(&self) -> Arc<String> {
        self.id.load_full()
    }

    pub(crate) fn set_id(&self, id: &str) {
        if self.id.load().as_str() != id {
            self.id.store(Arc::new(id.to_string()));
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    pub(crate) fn set_weight(&self, w: u32) {
        self.weight.store(w, Relaxed)
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Relaxed))
    }

    pub fn is_healthy(&self) -> bool {
        self.health() == Health::Healthy
    }

    pub fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ns.load(Relaxed) > now_ns
    }

    pub fn membership(&self) -> Membership {
        match self.membership.load(Relaxed) {
            0 => Membership::Member,
            1 => Membership::Leaving,
            _ => Membership::Gone,
        }
    }

    pub(crate) fn set_membership(&self, m: Membership) {
        let v = match m {
            Membership::Member => 0,
            Membership::Leaving => 1,
            Membership::Gone => 2,
        };
        self.membership.store(v, Relaxed)
    }

    /// Out of its pool: only requests already sent to it still refer to it.
    pub fn is_gone(&self) -> bool {
        self.membership() == Membership::Gone
    }

    pub fn is_leaving(&self) -> bool {
        self.membership() == Membership::Leaving
    }

    /// Takes new traffic: healthy and not ejected.
    pub fn eligible(&self, now_ns: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now_ns)
    }

    /// Applies one active-check result with rise/fall thresholds; returns the new state when
    /// it changed. A pending backend becomes healthy on its first pass.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<Health> {
        let before = self.health();
        let after = if ok {
            self.check_fails.store(0, Relaxed);
            let passes = self.check_passes.fetch_add(1, Relaxed).saturating_add(1);
            match before {
                Health::Pending => Health::Healthy,
                Health::Unhealthy if passes >= rise => Health::Healthy,
                h => h,
            }
        } else {
            self.check_passes.store(0, Relaxed);
            let fails = self.check_fails.fetch_add(1, Relaxed).saturating_add(1);
            match before {
                Health::Healthy if fails >= fall => Health::Unhealthy,
                // A new server's first check decides: failed, it is unhealthy (and counts as
                // such for the pool's panic threshold) rather than pending for ever.
                Health::Pending => Health::Unhealthy,
                h => h,
            }
        };
        if after != before {
            self.health.store(after.to_u8(), Relaxed);
            if after == Health::Healthy {
                // A fresh start: forget old passive ejections.
                self.ejected_until_ns.store(0, Relaxed);
                self.ejections.store(0, Relaxed);
            }
            Some(after)
        } else {
            None
        }
    }

    /// Marks the backend healthy without a check (its pool has no active checks).
    pub(crate) fn set_trusted(&self) {
        self.health.store(Health::Healthy.to_u8(), Relaxed);
    }

    fn bump_error_rate(&self, failed: bool) {
        let old = self.error_rate_ppm.load(Relaxed) as i64;
        let sample = if failed { 1_000_000 } else { 0 };
        let new = old + (sample - old) / 32;
        self.error_rate_ppm.store(new.clamp(0, 1_000_000) as u32, Relaxed);
    }

    /// A response arrived with a non-5xx status.
    pub fn record_success(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.reset_consecutive();
        self.last_success_ns.store(clock::now_ns(), Relaxed);
        if self.ejections.load(Relaxed) != 0 && !self.is_ejected(clock::now_ns()) {
            self.ejections.store(0, Relaxed);
        }
        self.bump_error_rate(false);
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_gateway.store(0, Relaxed);
        self.consecutive_connect.store(0, Relaxed);
    }

    /// Counts a failure seen on real traffic; returns true when it completes a run that
    /// should eject the backend (the pool decides whether its ejection cap allows it, then
    /// calls [`BackendStats::eject`]).
    pub fn record_failure(&self, kind: Failure, o: &OutlierConfig) -> bool {
        self.requests.fetch_add(1, Relaxed);
        self.failures.fetch_add(1, Relaxed);
        self.bump_error_rate(true);
        // A threshold of 0 turns its rule off.
        let hit = |cell: &AtomicU32, limit: u32| limit != 0 && cell.fetch_add(1, Relaxed) + 1 >= limit;
        let tripped = match kind {
            Failure::Connect => hit(&self.consecutive_connect, o.consecutive_connect_failures),
            Failure::Gateway5xx | Failure::Transport => {
                let gateway = hit(&self.consecutive_gateway, o.consecutive_gateway_failures);
                hit(&self.consecutive_5xx, o.consecutive_5xx) | gateway
            }
            Failure::Status5xx => {
                // As in Envoy, another 5xx ends a run of gateway failures.
                self.consecutive_gateway.store(0, Relaxed);
                hit(&self.consecutive_5xx, o.consecutive_5xx)
            }
        };
        tripped && !self.is_ejected(clock::now_ns())
    }

    /// Ejects the backend for a back-off that doubles with each consecutive ejection, capped
    /// at `max_ejection_ms`; returns the ejection time in ms. The failure runs start again.
    pub fn eject(&self, o: &OutlierConfig, now_ns: u64) -> u64 {
        self.reset_consecutive();
        let n = self.ejections.fetch_add(1, Relaxed).min(16);
        let ms = o.base_ejection_ms.saturating_mul(1u64 << n).min(o.max_ejection_ms);
        let until = now_ns.saturating_add(ms.saturating_mul(1_000_000));
        self.ejected_until_ns.store(until, Relaxed);
        ms
    }

    /// A run that would have ejected the backend, refused by the pool's ejection cap: it
    /// starts again, so the backend is reconsidered after as many failures more.
    pub fn ejection_refused(&self) {
        self.reset_consecutive();
    }

    pub fn error_rate(&self) -> f64 {
        self.error_rate_ppm.load(Relaxed) as f64 / 1e6
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    pub fn last_success_ns(&self) -> Option<u64> {
        match self.last_success_ns.load(Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Keeps the load report the backend sent with a response at `now_ns` (it replaces the
    /// previous one as a whole), and gives its queue to the backend's [`Load`], which
    /// `orca_least_delay` and `prequal` read.
    pub fn record_report(&self, r: &LoadReport, now_ns: u64) {
        store_opt(&self.reported_cpu, r.cpu_utilization);
        store_opt(&self.reported_queue, r.queue);
        store_opt(&self.reported_rps, r.rps_fractional);
        self.reported_ns.store(now_ns, Relaxed);
        if let Some(queue) = r.queue {
            // Finite and not negative (the parser drops other values); `as` saturates.
            self.load.report(queue.round() as u32, now_ns);
        }
    }

    /// The latest load report, if it is younger than [`REPORT_TTL_NS`] at `now_ns`: a report
    /// describes the moment it was sent, and a backend that stopped reporting is described
    /// by what the proxy measures alone.
    pub fn reported(&self, now_ns: u64) -> ReportedLoad {
        let at = self.reported_ns.load(Relaxed);
        if at == u64::MAX || now_ns.saturating_sub(at) > REPORT_TTL_NS {
            return ReportedLoad::default();
        }
        ReportedLoad {
            cpu_utilization: load_opt(&self.reported_cpu),
            queue: load_opt(&self.reported_queue),
            rps: load_opt(&self.reported_rps),
        }
    }

    pub fn ejected_for_ms(&self, now_ns: u64) -> u64 {
        self.ejected_until_ns.load(Relaxed).saturating_sub(now_ns) / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(pending: bool) -> Arc<BackendStats> {
        BackendStats::new("p".into(), "b", "127.0.0.1:1".parse().expect("addr"), 1, pending)
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let s = stats(true);
        assert_eq!(s.health(), Health::Pending);
        assert_eq!(s.record_check(true, 2, 2), Some(Health::Healthy));
        assert_eq!(s.record_check(false, 2, 2), None);
        assert_eq!(s.record_check(false, 2, 2), Some(Health::Unhealthy));
        assert_eq!(s.record_check(true, 2, 2), None);
        assert_eq!(s.record_check(false, 2, 2), None);
        assert_eq!(s.record_check(true, 2, 2), None);
        assert_eq!(s.record_check(true, 2, 2), Some(Health::Healthy));
    }

    fn outlier(consecutive_5xx: u32, gateway: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx,
            consecutive_gateway_failures: gateway,
            consecutive_connect_failures: 1,
            base_ejection_ms: 100,
            max_ejection_ms: 250,
            ..OutlierConfig::default()
        }
    }

    #[test]
    fn consecutive_failures_eject_with_backoff() {
        let s = stats(false);
        let o = outlier(3, 0);
        let now = clock::now_ns();
        assert!(!s.record_failure(Failure::Status5xx, &o));
        assert!(!s.record_failure(Failure::Status5xx, &o));
        assert!(s.record_failure(Failure::Status5xx, &o));
        assert_eq!(s.eject(&o, now), 100);
        assert!(!s.eligible(now));
        // While ejected, further failures do not eject again.
        assert!(!s.record_failure(Failure::Connect, &o));
        s.ejected_until_ns.store(0, Relaxed);
        assert!(s.record_failure(Failure::Connect, &o));
        assert_eq!(s.eject(&o, now), 200);
        s.ejected_until_ns.store(0, Relaxed);
        assert!(s.record_failure(Failure::Connect, &o));
        assert_eq!(s.eject(&o, now), 250, "capped at max");
        assert!(s.error_rate() > 0.0);
    }

    #[test]
    fn application_500s_do_not_count_as_gateway_failures() {
        let s = stats(false);
        let o = outlier(0, 2);
        for _ in 0..50 {
            assert!(
                !s.record_failure(Failure::Status5xx, &o),
                "500s never eject with consecutive_5xx off"
            );
        }
        assert!(!s.record_failure(Failure::Gateway5xx, &o));
        assert!(
            s.record_failure(Failure::Transport, &o),
            "a 503 then a reset: two gateway failures"
        );
        s.ejection_refused();
        assert!(
            !s.record_failure(Failure::Gateway5xx, &o),
            "a refused ejection starts the run again"
        );
        s.record_success();
        assert!(!s.record_failure(Failure::Gateway5xx, &o), "a success ends the run");
        assert!(!s.record_failure(Failure::Status5xx, &o));
        assert!(
            !s.record_failure(Failure::Gateway5xx, &o),
            "a 500 between two 502s ends the run too (Envoy)"
        );
        assert_eq!(Failure::of_status(500), Some(Failure::Status5xx));
        assert_eq!(Failure::of_status(503), Some(Failure::Gateway5xx));
        assert_eq!(Failure::of_status(404), None);
    }

    #[test]
    fn huge_ejection_times_saturate_instead_of_wrapping() {
        let s = stats(false);
        let o = OutlierConfig {
            base_ejection_ms: u64::MAX,
            max_ejection_ms: u64::MAX,
            ..outlier(1, 1)
        };
        let now = clock::now_ns();
        assert!(s.record_failure(Failure::Status5xx, &o));
        s.eject(&o, now);
        assert!(s.is_ejected(now + 1_000_000_000), "ejected, not wrapped into the past");
    }

    #[test]
    fn a_reported_queue_reaches_the_strategies_load() {
        let s = stats(false);
        let now = clock::now_ns();
        let mut r = LoadReport {
            cpu_utilization: Some(0.9),
            ..LoadReport::default()
        };
        s.record_report(&r, now);
        assert_eq!(s.load.reported_queue(now), None, "no queue in the report");
        r.queue = Some(2.6);
        s.record_report(&r, now);
        assert_eq!(s.load.reported_queue(now), Some(3));
    }

    #[test]
    fn a_failed_first_check_makes_a_new_server_unhealthy() {
        let s = stats(true);
        assert_eq!(s.record_check(false, 2, 2), Some(Health::Unhealthy));
        assert_eq!(s.record_check(true, 2, 2), None);
        assert_eq!(s.record_check(true, 2, 2), Some(Health::Healthy));
    }
}
