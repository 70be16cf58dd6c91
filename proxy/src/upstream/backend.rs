//! Live state of one backend: load, active health, passive ejection. It is keyed by
//! (pool, address) and survives reloads and selector rebuilds; only the control plane
//! creates or retires it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::clock;
use crate::config::OutlierConfig;
use crate::orca::LoadReport;
use crate::strategy::Load;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Status5xx,
    /// Reset or timeout after the request was sent.
    Transport,
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
    consecutive_connect: AtomicU32,
    ejected_until_ns: AtomicU64,
    ejections: AtomicU32,
    /// Error-rate EWMA over requests, in parts per million (decays per request, α = 1/32).
    error_rate_ppm: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    last_success_ns: AtomicU64,
    draining: AtomicBool,
    /// The backend's latest ORCA load report, as f32 bits (NaN: never reported).
    reported_cpu: AtomicU32,
    reported_queue: AtomicU32,
    reported_rps: AtomicU32,
}

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

fn store_if_some(cell: &AtomicU32, v: Option<f64>) {
    if let Some(v) = v {
        cell.store((v as f32).to_bits(), Relaxed);
    }
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
            consecutive_connect: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            error_rate_ppm: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_success_ns: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            reported_cpu: nan_bits(),
            reported_queue: nan_bits(),
            reported_rps: nan_bits(),
        })
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

    /// Removed from the configuration but still referenced by in-flight requests.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Relaxed)
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
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_connect.store(0, Relaxed);
        self.last_success_ns.store(clock::now_ns(), Relaxed);
        if self.ejections.load(Relaxed) != 0 && !self.is_ejected(clock::now_ns()) {
            self.ejections.store(0, Relaxed);
        }
        self.bump_error_rate(false);
    }

    /// A failure seen on real traffic; returns the ejection time in ms when it ejected the
    /// backend.
    pub fn record_failure(&self, kind: Failure, o: &OutlierConfig) -> Option<u64> {
        self.requests.fetch_add(1, Relaxed);
        self.failures.fetch_add(1, Relaxed);
        self.bump_error_rate(true);
        let (count, limit) = match kind {
            Failure::Connect => (
                self.consecutive_connect.fetch_add(1, Relaxed) + 1,
                o.consecutive_connect_failures,
            ),
            Failure::Status5xx | Failure::Transport => {
                (self.consecutive_5xx.fetch_add(1, Relaxed) + 1, o.consecutive_5xx)
            }
        };
        if limit == 0 || count < limit {
            return None;
        }
        let now = clock::now_ns();
        if self.is_ejected(now) {
            return None;
        }
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_connect.store(0, Relaxed);
        let n = self.ejections.fetch_add(1, Relaxed).min(16);
        let ms = o.base_ejection_ms.saturating_mul(1u64 << n).min(o.max_ejection_ms);
        self.ejected_until_ns.store(now + ms * 1_000_000, Relaxed);
        Some(ms)
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

    /// Keeps the fields of a load report the backend sent with a response.
    pub fn record_report(&self, r: &LoadReport) {
        store_if_some(&self.reported_cpu, r.cpu_utilization);
        store_if_some(&self.reported_queue, r.queue);
        store_if_some(&self.reported_rps, r.rps_fractional);
    }

    pub fn reported(&self) -> ReportedLoad {
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

    #[test]
    fn consecutive_failures_eject_with_backoff() {
        let s = stats(false);
        let o = OutlierConfig {
            consecutive_5xx: 3,
            consecutive_connect_failures: 1,
            base_ejection_ms: 100,
            max_ejection_ms: 250,
        };
        assert_eq!(s.record_failure(Failure::Status5xx, &o), None);
        assert_eq!(s.record_failure(Failure::Status5xx, &o), None);
        assert_eq!(s.record_failure(Failure::Status5xx, &o), Some(100));
        assert!(!s.eligible(clock::now_ns()));
        // While ejected, further failures do not extend it.
        assert_eq!(s.record_failure(Failure::Connect, &o), None);
        s.ejected_until_ns.store(0, Relaxed);
        assert_eq!(s.record_failure(Failure::Connect, &o), Some(200));
        s.ejected_until_ns.store(0, Relaxed);
        assert_eq!(s.record_failure(Failure::Connect, &o), Some(250), "capped at max");
        assert!(s.error_rate() > 0.0);
    }
}
