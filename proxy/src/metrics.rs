//! Prometheus metrics (names are a contract: dashboards and alerts use them).
//!
//! Label values are bounded: pool and backend ids come from the configuration, methods are
//! folded to the standard set, statuses are numeric codes. Gauges of live state are set from
//! the current snapshot at scrape time, so removed backends disappear from them.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::ml::Fallback;

use crate::upstream::Upstreams;

pub const NO_POOL: &str = "none";
pub const NO_BACKEND: &str = "none";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub inflight: IntGaugeVec,
    pub healthy: IntGaugeVec,
    pub retries: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub health_checks: IntCounterVec,
    pub ejections: IntCounterVec,
    pub ejections_overflow: IntCounterVec,
    pub panic_routing: IntCounterVec,
    pub health_check_failures: IntCounterVec,
    pub store_written: IntCounterVec,
    pub store_dropped: IntCounterVec,
    pub store_errors: IntCounterVec,
    /// Rows the model server scored.
    pub ml_predictions: IntCounter,
    /// Failed scoring refreshes (the call, or reading the model's features).
    pub ml_errors: IntCounter,
    pub ml_fallback: IntCounterVec,
    /// `ml_fallback` by [`Fallback::index`], looked up once (decisions count here).
    ml_fallback_by: [IntCounter; Fallback::ALL.len()],
    pub ml_circuit_open: IntGauge,
    pub ml_inference: Histogram,
    pub ml_decisions: IntCounterVec,
}

/// Buckets of the scoring call: it should take a few ms; `ml.timeout_ms` defaults to 50.
const INFERENCE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    g
}

impl Metrics {
    /// # Panics
    /// Only on a programming error in the static metric definitions below.
    fn new() -> Self {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "neurabalancer_http_request_duration_seconds",
                "Time from request arrival to the end of the response, by pool and backend.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["pool", "backend"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(duration.clone()))
            .unwrap_or_else(|e| panic!("register histogram: {e}"));
        let ml_inference = Histogram::with_opts(
            HistogramOpts::new(
                "neurabalancer_ml_inference_duration_seconds",
                "Duration of the scoring calls to the model server (one per refresh, every ml pool's rows), failed ones included.",
            )
            .buckets(INFERENCE_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(ml_inference.clone()))
            .unwrap_or_else(|e| panic!("register histogram: {e}"));
        let ml_circuit_open = IntGauge::new(
            "neurabalancer_ml_circuit_breaker_open",
            "1 while the scorer's circuit breaker is open (no call to the model server; ml pools use their fallback).",
        )
        .unwrap_or_else(|e| panic!("gauge: {e}"));
        registry
            .register(Box::new(ml_circuit_open.clone()))
            .unwrap_or_else(|e| panic!("register gauge: {e}"));
        let ml_fallback = counter(
            &registry,
            "neurabalancer_ml_fallback_total",
            "Decisions of ml pools made by their fallback strategy, by reason (model_server_error, timeout, stale_scores, circuit_open, no_scores).",
            &["reason"],
        );
        let ml_fallback_by = Fallback::ALL.map(|r| ml_fallback.with_label_values(&[r.as_str()]));
        let one = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            c
        };
        let ml_predictions = one(
            "neurabalancer_ml_predictions_total",
            "Rows the model server scored (16 levels of requests in flight per server per refresh).",
        );
        let ml_errors = one(
            "neurabalancer_ml_errors_total",
            "Failed scoring refreshes: the model server refused, reset, timed out, answered other than 200 or unreadably, or serves a model the proxy cannot feed.",
        );
        let m = Metrics {
            ml_predictions,
            ml_errors,
            ml_fallback,
            ml_fallback_by,
            ml_circuit_open,
            ml_inference,
            ml_decisions: counter(
                &registry,
                "neurabalancer_ml_decisions_total",
                "Decisions of ml pools made by the model's scores, by pool.",
                &["pool"],
            ),
            requests: counter(
                &registry,
                "neurabalancer_http_requests_total",
                "Proxied requests by pool, backend, method and status.",
                &["pool", "backend", "method", "status"],
            ),
            duration,
            inflight: gauge(
                &registry,
                "neurabalancer_backend_inflight",
                "Requests in flight per backend.",
                &["pool", "backend"],
            ),
            healthy: gauge(
                &registry,
                "neurabalancer_backend_healthy",
                "1 when the backend passes active health checks and is not ejected.",
                &["pool", "backend"],
            ),
            retries: counter(
                &registry,
                "neurabalancer_upstream_retries_total",
                "Requests retried on another backend.",
                &["pool"],
            ),
            config_reloads: counter(
                &registry,
                "neurabalancer_config_reloads_total",
                "Configuration reloads by result (success, error, unchanged: the files were as running).",
                &["result"],
            ),
            store_written: counter(
                &registry,
                "neurabalancer_store_rows_written_total",
                "Records written by sink (postgres, jsonl) and table.",
                &["sink", "table"],
            ),
            store_dropped: counter(
                &registry,
                "neurabalancer_store_rows_dropped_total",
                "Records dropped by sink, table and reason (queue_full: the sink was behind; rejected: the database refused the batch; unavailable: a snapshot the database could not take; shutdown: still queued when a graceful exit stopped waiting).",
                &["sink", "table", "reason"],
            ),
            store_errors: counter(
                &registry,
                "neurabalancer_store_write_errors_total",
                "Failed write attempts by sink (the batch is retried unless it was rejected).",
                &["sink"],
            ),
            health_checks: counter(
                &registry,
                "neurabalancer_health_checks_total",
                "Active health checks by result (pass, fail).",
                &["pool", "backend", "result"],
            ),
            ejections: counter(
                &registry,
                "neurabalancer_backend_ejections_total",
                "Passive-health ejections per backend.",
                &["pool", "backend"],
            ),
            ejections_overflow: counter(
                &registry,
                "neurabalancer_ejections_overflow_total",
                "Failure runs that would have ejected a backend, refused because max_ejection_percent of the pool was ejected already.",
                &["pool"],
            ),
            panic_routing: counter(
                &registry,
                "neurabalancer_upstream_panic_total",
                "Requests routed in panic mode: fewer than panic_threshold_percent of the pool healthy, so unhealthy servers were eligible too.",
                &["pool"],
            ),
            health_check_failures: counter(
                &registry,
                "neurabalancer_health_checker_restarts_total",
                "Probe loops that stopped unexpectedly and were restarted, by pool.",
                &["pool"],
            ),
            registry,
        };
        // Export both reload series from the start, so `increase()` sees the first error.
        for result in ["success", "error", "unchanged"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }

    /// The fallback counter of `reason`.
    pub fn ml_fallback_for(&self, reason: Fallback) -> &IntCounter {
        &self.ml_fallback_by[reason.index()]
    }

    /// Prometheus text exposition, with live gauges refreshed from `upstreams`.
    pub fn render(&self, upstreams: &Upstreams) -> String {
        self.inflight.reset();
        self.healthy.reset();
        let now = crate::clock::now_ns();
        for pool in upstreams.pools.values() {
            for s in pool.members().all() {
                let id = s.id();
                let labels = [&*pool.name, id.as_str()];
                self.inflight.with_label_values(&labels).set(s.load.inflight() as i64);
                self.healthy.with_label_values(&labels).set(i64::from(s.eligible(now)));
            }
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Folds a method into a bounded label value.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Static strings for the status codes, so label lookups do not format numbers.
pub fn status_label(code: u16) -> String {
    code.to_string()
}
