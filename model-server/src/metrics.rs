//! The server's Prometheus metrics, in a registry of its own (not the process-wide default,
//! so that several servers in one test process count apart).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `model_server_requests_total` | counter | `path` (a known path or `other`), `status` |
//! | `model_server_rows_scored_total` | counter | |
//! | `model_server_score_duration_seconds` | histogram | (one ONNX Runtime call per request) |
//! | `model_server_reloads_total` | counter | `result`: `applied`, `unchanged`, `error` |
//! | `model_server_model_loaded` | gauge | 1 while a model serves |
//! | `model_server_model_info` | gauge | `version` of the serving model (one series) |

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Paths counted under their own label; anything else is `other` (label values stay bounded).
pub const PATHS: [&str; 5] = ["/v1/score", "/v1/reload", "/health", "/version", "/metrics"];

const SCORE_BUCKETS: [f64; 14] = [
    0.000_02, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub rows_scored: IntCounter,
    pub score_seconds: Histogram,
    pub reloads: IntCounterVec,
    pub model_loaded: IntGauge,
    model_info: IntGaugeVec,
}

impl Metrics {
    /// # Panics
    /// Never with these static definitions (names and labels are valid and distinct).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("model_server_requests_total", "HTTP requests by path and status"),
            &["path", "status"],
        )
        .expect("valid metric");
        let rows_scored =
            IntCounter::new("model_server_rows_scored_total", "Feature rows scored").expect("valid metric");
        let score_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "model_server_score_duration_seconds",
                "Time of one ONNX Runtime call scoring a request's rows",
            )
            .buckets(SCORE_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "model_server_reloads_total",
                "Model reloads (file watcher and POST /v1/reload) by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let model_loaded =
            IntGauge::new("model_server_model_loaded", "1 while a model is loaded").expect("valid metric");
        let model_info = IntGaugeVec::new(
            Opts::new("model_server_model_info", "The serving model's version"),
            &["version"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rows_scored.clone()),
            Box::new(score_seconds.clone()),
            Box::new(reloads.clone()),
            Box::new(model_loaded.clone()),
            Box::new(model_info.clone()),
        ] {
            registry.register(c).expect("distinct metric names");
        }
        for result in ["applied", "unchanged", "error"] {
            reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            requests,
            rows_scored,
            score_seconds,
            reloads,
            model_loaded,
            model_info,
        }
    }

    /// Records the serving model (`None`: no model).
    pub fn set_model(&self, version: Option<&str>) {
        self.model_info.reset();
        match version {
            Some(v) => {
                self.model_loaded.set(1);
                self.model_info.with_label_values(&[v]).set(1);
            }
            None => self.model_loaded.set(0),
        }
    }

    /// The `path` label for a request path.
    pub fn path_label(path: &str) -> &'static str {
        PATHS.iter().find(|p| **p == path).copied().unwrap_or("other")
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
