//! The feature vector of one backend at the moment a decision is made: what a request
//! record stores as "what the decision saw", and what the learned strategy will score.
//!
//! Every feature is measured by the proxy itself per backend (never host-wide numbers),
//! plus what the backend reports of its own load (ORCA). Units are fixed here, once, for
//! recording and serving alike: milliseconds for times, 0..1 for rates.

use serde::{Deserialize, Serialize};

use crate::upstream::BackendStats;

/// Column names are the serialised field names: `f_` + the feature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Requests in flight to the backend, not counting the one being decided.
    #[serde(rename = "f_inflight")]
    pub inflight: f32,
    /// Peak-EWMA response-header latency, decayed to now; `None` before the first response.
    #[serde(rename = "f_latency_ewma_ms")]
    pub latency_ewma_ms: Option<f32>,
    /// Recent error rate (per-request EWMA), 0..1.
    #[serde(rename = "f_error_rate")]
    pub error_rate: f32,
    #[serde(rename = "f_weight")]
    pub weight: f32,
    /// Time since the backend last answered without a 5xx; `None` if it never has.
    #[serde(rename = "f_since_success_ms")]
    pub since_success_ms: Option<f32>,
    #[serde(rename = "f_reported_cpu")]
    pub reported_cpu: Option<f32>,
    #[serde(rename = "f_reported_queue")]
    pub reported_queue: Option<f32>,
    #[serde(rename = "f_reported_rps")]
    pub reported_rps: Option<f32>,
}

impl Features {
    /// Reads a backend's live state; `decay_ns` is its pool's EWMA decay.
    pub fn of(b: &BackendStats, now_ns: u64, decay_ns: f64) -> Features {
        let est_ns = b.load.latency_estimate_ns(now_ns, decay_ns);
        let reported = b.reported(now_ns);
        Features {
            inflight: b.load.inflight() as f32,
            latency_ewma_ms: (est_ns > 0.0).then_some((est_ns / 1e6) as f32),
            error_rate: b.error_rate() as f32,
            weight: b.weight() as f32,
            since_success_ms: b
                .last_success_ns()
                .map(|t| (now_ns.saturating_sub(t) as f64 / 1e6) as f32),
            reported_cpu: reported.cpu_utilization,
            reported_queue: reported.queue,
            reported_rps: reported.rps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orca::LoadReport;
    use crate::strategy::REPORT_TTL_NS;

    #[test]
    fn features_read_live_state_in_fixed_units() {
        let b = BackendStats::new("p".into(), "b", "127.0.0.1:1".parse().expect("addr"), 3, false);
        let f = Features::of(&b, 1_000_000_000, 1e9);
        assert_eq!(f.inflight, 0.0);
        assert_eq!(f.latency_ewma_ms, None);
        assert_eq!(f.since_success_ms, None);
        assert_eq!(f.weight, 3.0);
        assert_eq!(f.reported_cpu, None);

        let _g = b.load.track();
        b.load.observe(25e6, 1_000_000_000, 1e9);
        b.record_report(
            &LoadReport {
                cpu_utilization: Some(0.5),
                rps_fractional: None,
                queue: Some(4.0),
            },
            1_000_000_000,
        );
        let f = Features::of(&b, 1_000_000_000, 1e9);
        assert_eq!(f.inflight, 1.0);
        assert_eq!(f.latency_ewma_ms, Some(25.0));
        assert_eq!(f.reported_cpu, Some(0.5));
        assert_eq!(f.reported_queue, Some(4.0));
        assert_eq!(f.reported_rps, None);

        let json = serde_json::to_value(f).expect("json");
        assert_eq!(json["f_latency_ewma_ms"], 25.0);
        assert!(json["f_reported_rps"].is_null());
    }

    #[test]
    fn reported_features_expire_and_a_new_report_replaces_the_old_one() {
        let b = BackendStats::new("p".into(), "b", "127.0.0.1:1".parse().expect("addr"), 1, false);
        let at = 5_000_000_000;
        let full = LoadReport {
            cpu_utilization: Some(0.5),
            rps_fractional: Some(90.0),
            queue: Some(4.0),
        };
        b.record_report(&full, at);
        let f = Features::of(&b, at + REPORT_TTL_NS, 1e9);
        assert_eq!((f.reported_cpu, f.reported_queue), (Some(0.5), Some(4.0)), "fresh");
        let f = Features::of(&b, at + REPORT_TTL_NS + 1, 1e9);
        assert_eq!(
            (f.reported_cpu, f.reported_queue, f.reported_rps),
            (None, None, None),
            "a backend that stopped reporting is described by what the proxy measures"
        );
        // A later report without a field does not keep the old report's value.
        let later = at + 2 * REPORT_TTL_NS;
        b.record_report(
            &LoadReport {
                cpu_utilization: Some(0.2),
                ..LoadReport::default()
            },
            later,
        );
        let f = Features::of(&b, later, 1e9);
        assert_eq!(
            (f.reported_cpu, f.reported_queue, f.reported_rps),
            (Some(0.2), None, None)
        );
    }
}
