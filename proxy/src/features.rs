//! The feature vector of one backend at the moment a decision is made: what a request
//! record stores as "what the decision saw", and what the learned strategy will score.
//!
//! Every feature is measured by the proxy itself per backend (never host-wide numbers),
//! plus what the backend reports of its own load (ORCA). Units are fixed here, once, for
//! recording and serving alike: milliseconds for times, 0..1 for rates.

use serde::{Deserialize, Serialize};

use crate::strategy::ml::{feature_row, Row};
use crate::strategy::Params;
use crate::upstream::BackendStats;

/// Where each feature sits in a [`Row`] ([`FEATURES`](crate::strategy::ml::FEATURES) order;
/// a test checks the names).
const INFLIGHT: usize = 0;
const REPORTED_QUEUE: usize = 1;
const HAS_REPORT: usize = 2;
const LATENCY_EWMA_MS: usize = 3;
const LATENCY_RIF_MS: usize = 4;
const FAILURE_RATE: usize = 5;
const WEIGHT: usize = 6;

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
    /// Requests waiting at the backend per its fresh load report (ORCA
    /// `named_metrics.queue`, as the strategies count it); `None` without a fresh report.
    #[serde(rename = "f_reported_queue")]
    pub reported_queue: Option<f32>,
    #[serde(rename = "f_reported_rps")]
    pub reported_rps: Option<f32>,
    /// Share of recent attempts that failed (the strategies' EWMA over attempts, decayed to
    /// now), 0..1.
    #[serde(rename = "f_failure_rate")]
    pub failure_rate: f32,
    /// Recent cost of attempts sent at the current level of requests in flight (`prequal`'s
    /// estimate, failures at the penalty); `None` while no level has samples.
    #[serde(rename = "f_latency_rif_ms")]
    pub latency_rif_ms: Option<f32>,
}

impl Features {
    /// Reads a backend's live state with its pool's strategy parameters. The features the
    /// model sees come from [`feature_row`] at the backend's current requests in flight, the
    /// very row the scorer sends for that level (with the load reports in; `ml.orca: false`
    /// only zeroes them in what is sent), so recorded and served values are the same numbers
    /// in the same units.
    pub fn of(b: &BackendStats, now_ns: u64, params: &Params) -> Features {
        let row = Self::row(b, now_ns, params);
        let reported = b.reported(now_ns);
        let known = |v: f32| (v > 0.0).then_some(v);
        Features {
            inflight: row[INFLIGHT],
            latency_ewma_ms: known(row[LATENCY_EWMA_MS]),
            error_rate: b.error_rate() as f32,
            weight: row[WEIGHT],
            since_success_ms: b
                .last_success_ns()
                .map(|t| (now_ns.saturating_sub(t) as f64 / 1e6) as f32),
            reported_cpu: reported.cpu_utilization,
            reported_queue: (row[HAS_REPORT] == 1.0).then_some(row[REPORTED_QUEUE]),
            reported_rps: reported.rps,
            failure_rate: row[FAILURE_RATE],
            latency_rif_ms: known(row[LATENCY_RIF_MS]),
        }
    }

    /// The model's row of `b` at its current requests in flight.
    pub fn row(b: &BackendStats, now_ns: u64, params: &Params) -> Row {
        feature_row(&b.load, b.weight(), b.load.inflight(), now_ns, params, true)
    }

    /// The value a model row carries for feature `name` (as `FEATURES` names it), read back
    /// from these recorded columns by the rules of `docs/ml.md` (a null is 0; `has_report` is
    /// whether `f_reported_queue` is set). `None` for a name that is no feature.
    pub fn model_value(&self, name: &str) -> Option<f32> {
        Some(match name {
            "inflight" => self.inflight,
            "reported_queue" => self.reported_queue.unwrap_or(0.0),
            "has_report" => f32::from(u8::from(self.reported_queue.is_some())),
            "latency_ewma_ms" => self.latency_ewma_ms.unwrap_or(0.0),
            "latency_rif_ms" => self.latency_rif_ms.unwrap_or(0.0),
            "failure_rate" => self.failure_rate,
            "weight" => self.weight,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orca::LoadReport;
    use crate::strategy::ml::FEATURES;
    use crate::strategy::{StrategyKind, REPORT_TTL_NS};

    fn params(decay_ns: f64) -> Params {
        Params {
            decay_ns,
            ..Params::new(StrategyKind::Ml)
        }
    }

    #[test]
    fn row_positions_are_the_features_of_the_contract() {
        for (i, name) in [
            (INFLIGHT, "inflight"),
            (REPORTED_QUEUE, "reported_queue"),
            (HAS_REPORT, "has_report"),
            (LATENCY_EWMA_MS, "latency_ewma_ms"),
            (LATENCY_RIF_MS, "latency_rif_ms"),
            (FAILURE_RATE, "failure_rate"),
            (WEIGHT, "weight"),
        ] {
            assert_eq!(FEATURES[i].name, name);
        }
        assert_eq!(FEATURES.len(), 7, "a new feature needs a column and a line above");
        let f = Features::default();
        for feat in FEATURES {
            assert!(f.model_value(feat.name).is_some(), "{}", feat.name);
        }
    }

    #[test]
    fn features_read_live_state_in_fixed_units() {
        let b = BackendStats::new("p".into(), "b", "127.0.0.1:1".parse().expect("addr"), 3, false);
        let f = Features::of(&b, 1_000_000_000, &params(1e9));
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
        let f = Features::of(&b, 1_000_000_000, &params(1e9));
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
        let f = Features::of(&b, at + REPORT_TTL_NS, &params(1e9));
        assert_eq!((f.reported_cpu, f.reported_queue), (Some(0.5), Some(4.0)), "fresh");
        let f = Features::of(&b, at + REPORT_TTL_NS + 1, &params(1e9));
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
        let f = Features::of(&b, later, &params(1e9));
        assert_eq!(
            (f.reported_cpu, f.reported_queue, f.reported_rps),
            (Some(0.2), None, None)
        );
    }
}
