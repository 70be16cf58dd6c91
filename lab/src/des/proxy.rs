//! The proxy's side of the model: the pool settings it reads from a scenario's `pool` section
//! and its per-backend health state (active checks with rise/fall, passive ejection with
//! exponential back-off).
//!
//! The health rules are a line-by-line mirror of `BackendStats::{record_check,
//! record_success, record_failure, eject}` in `proxy/src/upstream/backend.rs` (and of the
//! ejection cap in `Pool::record_failure`), on the simulated clock instead of the proxy's; the
//! defaults are those of `proxy/src/config/upstreams.rs`. Keep them in step.

use nb_strategy::PrequalParams;
use serde::Deserialize;

use crate::scenario::{PassiveHealth, Scenario};

/// The proxy's pool settings the model uses, read from a scenario's `pool` section. Keys the
/// model does not use (`path`, `timeouts`, …) are ignored; absent keys take the proxy's
/// defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ProxySettings {
    /// Active checks; `None`: backends are trusted until passive checks eject them.
    pub health_check: Option<HealthCheck>,
    pub outlier_detection: OutlierDetection,
    /// Extra attempts on another backend after a connect failure or a reset.
    pub max_retries: u32,
    /// Peak-EWMA decay of the latency estimate.
    pub ewma_decay_ms: u64,
    /// What a failed attempt counts as in the latency estimate.
    pub failure_penalty_ms: u64,
    pub prequal: PrequalParams,
    /// Below this share of healthy, non-ejected backends, unhealthy ones are eligible too.
    pub panic_threshold_percent: u32,
}

/// Active health checks of a pool. A check passes exactly when the backend is not `down`
/// (the simulator answers `/health` without a slot).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    pub interval_ms: u64,
    /// Consecutive passes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub fall: u32,
}

/// Passive health: consecutive failures eject a backend for a back-off that doubles with each
/// ejection.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct OutlierDetection {
    /// 502, 503, 504 and resets in a row.
    pub consecutive_gateway_failures: u32,
    /// Any 5xx in a row (off by default).
    pub consecutive_5xx: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// At most this share of the pool ejected at once (one always may be, never the last).
    pub max_ejection_percent: u32,
}

impl OutlierDetection {
    /// Every rule off: what `passive_health: off` gives the proxy (a threshold of 0 turns
    /// its rule off).
    pub fn off() -> Self {
        OutlierDetection {
            consecutive_gateway_failures: 0,
            consecutive_5xx: 0,
            consecutive_connect_failures: 0,
            ..OutlierDetection::default()
        }
    }

    /// Whether any rule can eject a backend.
    pub fn is_on(&self) -> bool {
        self.consecutive_gateway_failures != 0 || self.consecutive_5xx != 0 || self.consecutive_connect_failures != 0
    }

    /// How many of `n` backends may be ejected at once (`OutlierConfig::max_ejected`).
    pub fn max_ejected(&self, n: usize) -> usize {
        let share = n * self.max_ejection_percent as usize / 100;
        share.max(1).min(n.saturating_sub(1))
    }
}

/// The proxy's floor on the health check interval.
const MIN_HC_INTERVAL_MS: u64 = 50;

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            health_check: None,
            outlier_detection: OutlierDetection::default(),
            max_retries: 2,
            ewma_decay_ms: nb_strategy::DEFAULT_DECAY_MS,
            failure_penalty_ms: nb_strategy::DEFAULT_FAILURE_PENALTY_MS,
            prequal: PrequalParams::default(),
            panic_threshold_percent: 50,
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval_ms: 1_000,
            rise: 2,
            fall: 2,
        }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_gateway_failures: 5,
            consecutive_5xx: 0,
            consecutive_connect_failures: 1,
            base_ejection_ms: 1_000,
            max_ejection_ms: 30_000,
            max_ejection_percent: 10,
        }
    }
}

impl ProxySettings {
    /// The settings of `scenario.pool` (the proxy's defaults when it has none), with
    /// outlier detection off when the scenario says `passive_health: off` and its pool sets
    /// no `outlier_detection` of its own (an explicit one wins, as it does for the proxy).
    pub fn from_scenario(scenario: &Scenario) -> Result<Self, String> {
        let mut settings: ProxySettings = match &scenario.pool {
            None => ProxySettings::default(),
            Some(v) => {
                serde_yaml::from_value(v.clone()).map_err(|e| format!("scenario {}: pool: {e}", scenario.name))?
            }
        };
        let explicit = scenario
            .pool
            .as_ref()
            .is_some_and(|p| p.get("outlier_detection").is_some());
        if scenario.passive_health == PassiveHealth::Off && !explicit {
            settings.outlier_detection = OutlierDetection::off();
        }
        Ok(settings)
    }

    pub(super) fn check_interval_ns(hc: &HealthCheck) -> u64 {
        hc.interval_ms.max(MIN_HC_INTERVAL_MS) * 1_000_000
    }
}

/// Active health state (`proxy::upstream::Health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    /// In a pool with active checks: no traffic until the first check passes.
    Pending,
    Healthy,
    Unhealthy,
}

/// Why a request counted as a failure for passive health (`proxy::upstream::Failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Connect,
    /// A 502, 503 or 504 from the backend.
    Gateway5xx,
    /// Any other 5xx.
    Status5xx,
    /// Reset after the request was sent.
    Transport,
}

impl Failure {
    /// `Failure::of_status`: the failure a status stands for, `None` below 500.
    pub(super) fn of_status(status: u16) -> Option<Failure> {
        match status {
            502..=504 => Some(Failure::Gateway5xx),
            500..=599 => Some(Failure::Status5xx),
            _ => None,
        }
    }
}

/// One backend's health as the proxy sees it (`BackendStats` minus load and metrics).
#[derive(Debug, Clone)]
pub(super) struct Passive {
    health: Health,
    check_passes: u32,
    check_fails: u32,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_connect: u32,
    ejected_until_ns: u64,
    ejections: u32,
}

impl Passive {
    pub(super) fn new(pending: bool) -> Self {
        Passive {
            health: if pending { Health::Pending } else { Health::Healthy },
            check_passes: 0,
            check_fails: 0,
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            consecutive_connect: 0,
            ejected_until_ns: 0,
            ejections: 0,
        }
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.health == Health::Healthy
    }

    /// Checked at least once (pending backends are never picked, not even in panic).
    pub(super) fn is_checked(&self) -> bool {
        self.health != Health::Pending
    }

    pub(super) fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ns > now_ns
    }

    /// One active-check result with rise/fall thresholds; a pending backend becomes healthy
    /// on its first pass, and becoming healthy forgets passive ejections.
    pub(super) fn record_check(&mut self, ok: bool, rise: u32, fall: u32) {
        let before = self.health;
        let after = if ok {
            self.check_fails = 0;
            self.check_passes = self.check_passes.saturating_add(1);
            match before {
                Health::Pending => Health::Healthy,
                Health::Unhealthy if self.check_passes >= rise => Health::Healthy,
                h => h,
            }
        } else {
            self.check_passes = 0;
            self.check_fails = self.check_fails.saturating_add(1);
            match before {
                Health::Healthy if self.check_fails >= fall => Health::Unhealthy,
                Health::Pending => Health::Unhealthy,
                h => h,
            }
        };
        if after != before {
            self.health = after;
            if after == Health::Healthy {
                self.ejected_until_ns = 0;
                self.ejections = 0;
            }
        }
    }

    fn reset_consecutive(&mut self) {
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        self.consecutive_connect = 0;
    }

    /// A response with a non-5xx status.
    pub(super) fn record_success(&mut self, now_ns: u64) {
        self.reset_consecutive();
        if self.ejections != 0 && !self.is_ejected(now_ns) {
            self.ejections = 0;
        }
    }

    /// A failure on real traffic; true when it completes a run that should eject the
    /// backend (the caller applies the pool's ejection cap, then [`Passive::eject`]).
    pub(super) fn record_failure(&mut self, kind: Failure, o: &OutlierDetection, now_ns: u64) -> bool {
        fn hit(cell: &mut u32, limit: u32) -> bool {
            *cell += 1;
            limit != 0 && *cell >= limit
        }
        let tripped = match kind {
            Failure::Connect => hit(&mut self.consecutive_connect, o.consecutive_connect_failures),
            Failure::Gateway5xx | Failure::Transport => {
                let gateway = hit(&mut self.consecutive_gateway, o.consecutive_gateway_failures);
                hit(&mut self.consecutive_5xx, o.consecutive_5xx) | gateway
            }
            Failure::Status5xx => {
                self.consecutive_gateway = 0;
                hit(&mut self.consecutive_5xx, o.consecutive_5xx)
            }
        };
        tripped && !self.is_ejected(now_ns)
    }

    /// Ejects for the back-off of this ejection; returns it in ms.
    pub(super) fn eject(&mut self, o: &OutlierDetection, now_ns: u64) -> u64 {
        self.reset_consecutive();
        let n = self.ejections.min(16);
        self.ejections += 1;
        let ms = o.base_ejection_ms.saturating_mul(1u64 << n).min(o.max_ejection_ms);
        self.ejected_until_ns = now_ns.saturating_add(ms.saturating_mul(1_000_000));
        ms
    }

    /// A complete run refused by the ejection cap starts again.
    pub(super) fn ejection_refused(&mut self) {
        self.reset_consecutive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_backs_off_and_caps_like_the_proxy() {
        let o = OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_ms: 100,
            max_ejection_ms: 250,
            ..OutlierDetection::default()
        };
        let mut p = Passive::new(false);
        assert!(!p.record_failure(Failure::Status5xx, &o, 0));
        assert!(!p.record_failure(Failure::Status5xx, &o, 0));
        assert!(p.record_failure(Failure::Status5xx, &o, 0));
        assert_eq!(p.eject(&o, 0), 100);
        assert!(p.is_ejected(99_000_000) && !p.is_ejected(100_000_000));
        // While ejected, failures do not eject again.
        assert!(!p.record_failure(Failure::Connect, &o, 50_000_000));
        assert!(p.record_failure(Failure::Connect, &o, 200_000_000));
        assert_eq!(p.eject(&o, 200_000_000), 200);
        assert!(p.record_failure(Failure::Connect, &o, 500_000_000));
        assert_eq!(p.eject(&o, 500_000_000), 250, "capped at max");
        // A success after the ejection ended resets the back-off.
        p.record_success(1_000_000_000);
        assert!(p.record_failure(Failure::Connect, &o, 1_000_000_000));
        assert_eq!(p.eject(&o, 1_000_000_000), 100);
        // Application 500s alone never eject by default; gateway failures do.
        let d = OutlierDetection::default();
        let mut q = Passive::new(false);
        for _ in 0..20 {
            assert!(!q.record_failure(Failure::Status5xx, &d, 0));
        }
        for _ in 0..4 {
            assert!(!q.record_failure(Failure::Gateway5xx, &d, 0));
        }
        assert!(q.record_failure(Failure::Transport, &d, 0));
        assert_eq!((d.max_ejected(1), d.max_ejected(10), d.max_ejected(30)), (0, 1, 3));
    }

    #[test]
    fn checks_rise_and_fall() {
        let mut p = Passive::new(true);
        assert!(!p.is_healthy());
        p.record_check(true, 2, 2);
        assert!(p.is_healthy(), "pending becomes healthy on its first pass");
        p.record_check(false, 2, 2);
        assert!(p.is_healthy());
        p.record_check(false, 2, 2);
        assert_eq!(p.health, Health::Unhealthy);
        p.record_check(true, 2, 2);
        assert_eq!(p.health, Health::Unhealthy);
        p.record_check(true, 2, 2);
        assert!(p.is_healthy());
        let mut q = Passive::new(true);
        q.record_check(false, 2, 2);
        assert_eq!(
            q.health,
            Health::Unhealthy,
            "a failed first check: unhealthy, not pending"
        );
        assert!(q.is_checked());
    }

    #[test]
    fn settings_come_from_the_pool_section_with_proxy_defaults() {
        let s = Scenario::parse(
            "t",
            "name: t\nduration_s: 1\nload: { rate: 1 }\nfleet: [ { id: a } ]\npool: { health_check: { path: /health, interval_ms: 500 }, max_retries: 1 }\n",
        )
        .expect("valid");
        let p = ProxySettings::from_scenario(&s).expect("settings");
        assert_eq!(
            p.health_check,
            Some(HealthCheck {
                interval_ms: 500,
                rise: 2,
                fall: 2
            })
        );
        assert_eq!((p.max_retries, p.ewma_decay_ms), (1, 10_000));
        assert_eq!(p.outlier_detection, OutlierDetection::default());
    }

    #[test]
    fn passive_health_off_turns_every_rule_off_unless_the_pool_sets_its_own() {
        let parse = |tail: &str| {
            let s = Scenario::parse(
                "t",
                &format!("name: t\nduration_s: 1\nload: {{ rate: 1 }}\nfleet: [ {{ id: a }} ]\n{tail}"),
            )
            .expect("valid");
            ProxySettings::from_scenario(&s).expect("settings")
        };
        assert!(parse("").outlier_detection.is_on());
        assert!(parse("passive_health: on\n").outlier_detection.is_on());
        let off = parse("passive_health: off\n").outlier_detection;
        assert_eq!(off, OutlierDetection::off());
        assert!(!off.is_on());
        let mut p = Passive::new(false);
        for _ in 0..50 {
            assert!(!p.record_failure(Failure::Connect, &off, 0));
            assert!(!p.record_failure(Failure::Gateway5xx, &off, 0));
        }
        // An explicit outlier_detection wins over the key.
        let own = parse("passive_health: off\npool: { outlier_detection: { consecutive_gateway_failures: 3 } }\n");
        assert_eq!(own.outlier_detection.consecutive_gateway_failures, 3);
        assert_eq!(own.outlier_detection.consecutive_connect_failures, 1);
    }
}
