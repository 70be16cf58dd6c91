//! The scorer: a Pingora background service that keeps every `ml` pool's curves fresh.
//!
//! Every `ml.refresh_ms` (one refresh at a time; a refresh that runs late is followed by the
//! next at once, never by a burst):
//! 1. it takes the pools whose strategy is `ml` (none: nothing to do, no call);
//! 2. unless the circuit breaker is open ([`Breaker`]), it makes sure it knows the model's
//!    features: `GET /version` at start, after a failed call that may mean another model,
//!    and when a score answer names another `model_version` than the plan was made for. A
//!    model that names a feature the proxy does not measure is an error (logged, counted;
//!    the pools fall back) until the model server serves another model;
//! 3. it builds [`curve_rows`] for every server of those pools, in the model's order
//!    ([`RowPlan`]), and sends them all in ONE `POST /v1/score`, under `ml.timeout_ms`;
//! 4. on success it turns each server's 16 answers into a [`Curve`] ([`calibration`], then
//!    [`Curve::new`]) and publishes each pool's [`MlView`]; on failure it publishes the
//!    failure (decisions fall back at once) and counts it towards the breaker.
//!
//! The HTTP client is `reqwest` (hyper) on this service's own runtime, so nothing here ever
//! runs on, or waits for, a request's thread. Settings are re-read at every refresh, so a
//! reload applies to the next one; a new `ml.endpoint` starts afresh (new plan, breaker
//! closed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, Tripped};
use super::{Fallback, MlView, PoolScores};
use crate::clock;
use crate::config::MlConfig;
use crate::metrics::metrics;
use crate::state::Shared;
use crate::strategy::ml::{calibration, curve_rows, scored_queue, Curve, RowPlan, CURVE_LEVELS};
use crate::strategy::{Params, StrategyKind};
use crate::upstream::{BackendStats, Pool, Slot, NO_SLOT};

/// A failure is logged when it starts, when its message changes, and at most this often
/// while it lasts.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One feature as the model server's API spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub name: String,
    pub unit: String,
}

#[derive(Serialize)]
struct ScoreRequest<'a> {
    features: &'a [FeatureSpec],
    rows: Vec<&'a [f32]>,
}

#[derive(Deserialize)]
struct ScoreAnswer {
    model_version: String,
    latency_ms: Vec<f32>,
    p_fail: Vec<f32>,
}

#[derive(Deserialize)]
struct VersionAnswer {
    model: Option<ModelInfo>,
}

#[derive(Deserialize)]
struct ModelInfo {
    version: String,
    features: Vec<FeatureSpec>,
}

/// The model's features and how our rows map onto them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model_version: Arc<str>,
    pub rows: RowPlan,
    pub features: Vec<FeatureSpec>,
}

impl Plan {
    /// A plan for a model that declares `features`; the error names the feature we do not
    /// measure (or the unit that differs).
    pub fn new(model_version: &str, features: Vec<FeatureSpec>) -> Result<Plan, String> {
        let rows = RowPlan::new(features.iter().map(|f| (f.name.as_str(), f.unit.as_str())))?;
        Ok(Plan {
            model_version: model_version.into(),
            rows,
            features,
        })
    }
}

/// Appends the [`CURVE_LEVELS`] rows of `b` (levels 0, 1, … of our requests in flight), each
/// in the model's order: what the scorer sends for one server.
pub fn backend_rows(b: &BackendStats, now_ns: u64, params: &Params, orca: bool, plan: &RowPlan, out: &mut Vec<f32>) {
    for row in curve_rows(&b.load, b.weight(), now_ns, params, orca).iter() {
        plan.write(row, out);
    }
}

/// Why a refresh failed, with what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub reason: Fallback,
    pub message: String,
    /// A model the proxy cannot serve (logged as an error, not a hiccup).
    pub unusable_model: bool,
}

impl Failed {
    fn server(message: impl Into<String>) -> Self {
        Failed {
            reason: Fallback::ModelServerError,
            message: message.into(),
            unusable_model: false,
        }
    }
}

/// The scorer's state across refreshes (only its task touches it).
pub struct ScorerState {
    client: reqwest::Client,
    endpoint: String,
    plan: Option<Plan>,
    breaker: Breaker,
    /// The failure being reported, when it was last logged.
    failing: Option<(String, Instant)>,
    /// Set when the next refresh must fetch `/version` first.
    replan: bool,
}

impl Default for ScorerState {
    fn default() -> Self {
        Self::new()
    }
}

impl ScorerState {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            // The model server is spoken to directly, whatever HTTP_PROXY says.
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "ml scorer: cannot build its HTTP client with options; using the defaults");
                reqwest::Client::new()
            });
        ScorerState {
            client,
            endpoint: String::new(),
            plan: None,
            breaker: Breaker::default(),
            failing: None,
            replan: true,
        }
    }

    /// The model version the rows are built for, if a plan is in place.
    pub fn model_version(&self) -> Option<&str> {
        self.plan.as_ref().map(|p| &*p.model_version)
    }

    /// One refresh of every `ml` pool of `shared`'s upstreams.
    pub async fn refresh(&mut self, shared: &Shared, cfg: &MlConfig) {
        let upstreams = shared.upstreams.load_full();
        let mut pools: Vec<&Arc<Pool>> = upstreams
            .pools
            .values()
            .filter(|p| p.shared.params.load().kind == StrategyKind::Ml)
            .collect();
        if pools.is_empty() {
            return;
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        if cfg.endpoint != self.endpoint {
            // Another server: nothing learned of the old one applies.
            self.endpoint = cfg.endpoint.clone();
            self.plan = None;
            self.replan = true;
            self.breaker.success();
            metrics().ml_circuit_open.set(0);
        }
        let stale_ns = cfg.stale_ms().saturating_mul(1_000_000);
        let now = clock::now_ns();
        if !self.breaker.allows(now) {
            publish_failure(&pools, Fallback::CircuitOpen, stale_ns);
            return;
        }
        match self.score(&pools, cfg, now).await {
            Ok(scores) => {
                for (pool, scores) in pools.iter().zip(scores) {
                    pool.shared.ml.store(Some(Arc::new(MlView {
                        scores: Some(Arc::new(scores)),
                        failure: None,
                        stale_ns,
                    })));
                }
                if self.breaker.is_open() {
                    tracing::info!(endpoint = %cfg.endpoint, "ml scorer: circuit closed, the model server answers again");
                }
                self.breaker.success();
                metrics().ml_circuit_open.set(0);
                if self.failing.take().is_some() {
                    tracing::info!(endpoint = %cfg.endpoint, model_version = self.model_version().unwrap_or(""), "ml scorer: scoring again");
                }
            }
            Err(f) => {
                metrics().ml_errors.inc();
                let open_ns = cfg.circuit_open_ms.saturating_mul(1_000_000);
                let tripped = self.breaker.failure(now, cfg.circuit_failures, open_ns);
                if self.breaker.is_open() {
                    metrics().ml_circuit_open.set(1);
                }
                self.log_failure(cfg, &f, tripped);
                publish_failure(&pools, f.reason, stale_ns);
            }
        }
    }

    fn log_failure(&mut self, cfg: &MlConfig, f: &Failed, tripped: Tripped) {
        let fallback = cfg.fallback.as_str();
        let due = match &self.failing {
            Some((msg, at)) => *msg != f.message || at.elapsed() >= LOG_EVERY,
            None => true,
        };
        if due {
            if f.unusable_model {
                tracing::error!(endpoint = %cfg.endpoint, fallback, "ml scorer: {}; ml pools decide by their fallback until the model server serves a model the proxy can feed", f.message);
            } else {
                tracing::warn!(endpoint = %cfg.endpoint, reason = f.reason.as_str(), fallback, error = %f.message, "ml scorer: scoring failed; ml pools decide by their fallback");
            }
            self.failing = Some((f.message.clone(), Instant::now()));
        }
        if tripped == Tripped::Opened {
            tracing::warn!(
                endpoint = %cfg.endpoint,
                open_ms = cfg.circuit_open_ms,
                failures = cfg.circuit_failures,
                "ml scorer: circuit open; no call until it is over"
            );
        }
    }

    /// GET `/version`: the model's features, as a plan.
    async fn fetch_plan(&self, cfg: &MlConfig) -> Result<Plan, Failed> {
        let url = format!("{}/version", cfg.base_url());
        let (status, body) = call(self.client.get(&url), cfg.timeout_ms).await?;
        if status != reqwest::StatusCode::OK {
            return Err(Failed::server(format!("GET {url}: status {status}")));
        }
        let v: VersionAnswer =
            serde_json::from_slice(&body).map_err(|e| Failed::server(format!("GET {url}: unreadable answer: {e}")))?;
        let model = v
            .model
            .ok_or_else(|| Failed::server(format!("GET {url}: the model server has no model loaded")))?;
        Plan::new(&model.version, model.features).map_err(|e| Failed {
            reason: Fallback::ModelServerError,
            message: format!("model {} cannot be used: {e}", model.version),
            unusable_model: true,
        })
    }

    /// Scores every server of `pools` in one call; the scores of each pool, in order.
    async fn score(&mut self, pools: &[&Arc<Pool>], cfg: &MlConfig, now: u64) -> Result<Vec<PoolScores>, Failed> {
        if self.replan || self.plan.is_none() {
            self.plan = None;
            let plan = self.fetch_plan(cfg).await?;
            tracing::info!(model_version = %plan.model_version, features = ?plan.features.iter().map(|f| &f.name).collect::<Vec<_>>(), "ml scorer: model features read");
            self.plan = Some(plan);
            self.replan = false;
        }
        let Some(plan) = self.plan.as_ref() else {
            return Err(Failed::server("no plan"));
        };
        // (pool index, server, its pool's parameters, the queue its rows carry)
        let mut targets: Vec<(usize, Arc<BackendStats>, Params, u32)> = Vec::new();
        let mut flat = Vec::new();
        for (i, pool) in pools.iter().enumerate() {
            let params = **pool.shared.params.load();
            for s in pool.members().all() {
                if s.is_gone() || s.slot() == NO_SLOT {
                    continue;
                }
                backend_rows(s, now, &params, cfg.orca, &plan.rows, &mut flat);
                let queue = scored_queue(&s.load, now, cfg.orca);
                targets.push((i, s.clone(), params, queue));
            }
        }
        let width = plan.rows.width();
        let n_rows = flat.len() / width;
        let body = serde_json::to_vec(&ScoreRequest {
            features: &plan.features,
            rows: flat.chunks(width).collect(),
        })
        .map_err(|e| Failed::server(format!("cannot encode the rows: {e}")))?;
        let url = format!("{}/v1/score", cfg.base_url());
        let started = Instant::now();
        let answer = call(
            self.client
                .post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body),
            cfg.timeout_ms,
        )
        .await;
        metrics().ml_inference.observe(started.elapsed().as_secs_f64());
        let (status, body) = answer?;
        if status != reqwest::StatusCode::OK {
            // A 400 may mean the server now runs a model with other features: read them again.
            self.replan = true;
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(Failed::server(format!("POST {url}: status {status}: {text}")));
        }
        let a: ScoreAnswer = serde_json::from_slice(&body).map_err(|e| {
            self.replan = true;
            Failed::server(format!("POST {url}: unreadable answer: {e}"))
        })?;
        if a.latency_ms.len() != n_rows || a.p_fail.len() != n_rows {
            self.replan = true;
            return Err(Failed::server(format!(
                "POST {url}: {} latencies and {} failure probabilities for {n_rows} rows",
                a.latency_ms.len(),
                a.p_fail.len()
            )));
        }
        metrics().ml_predictions.inc_by(n_rows as u64);
        if *a.model_version != *plan.model_version {
            // The server swapped its model: it accepted our features, so this answer holds;
            // the next refresh reads the new model's features.
            tracing::info!(old = %plan.model_version, new = %a.model_version, "ml scorer: the model server serves another model");
            self.replan = true;
        }
        let version: Arc<str> = a.model_version.as_str().into();
        let mut per_pool: Vec<Vec<(Slot, Curve)>> = vec![Vec::new(); pools.len()];
        for (k, (i, s, params, queue)) in targets.iter().enumerate() {
            let at = k * CURVE_LEVELS..(k + 1) * CURVE_LEVELS;
            let (lat, pf) = (&a.latency_ms[at.clone()], &a.p_fail[at]);
            let c = calibration(&s.load, lat, pf, params, now);
            if let Some(curve) = Curve::new(lat, pf, params, c) {
                per_pool[*i].push((s.slot(), curve.with_scored_queue(*queue)));
            }
        }
        Ok(per_pool
            .into_iter()
            .map(|curves| PoolScores::new(now, version.clone(), curves))
            .collect())
    }
}

/// Sends `req` and reads the whole answer within `timeout_ms`.
async fn call(req: reqwest::RequestBuilder, timeout_ms: u64) -> Result<(reqwest::StatusCode, bytes::Bytes), Failed> {
    let timeout = Duration::from_millis(timeout_ms);
    let exchange = async {
        let r = req.send().await?;
        let status = r.status();
        Ok::<_, reqwest::Error>((status, r.bytes().await?))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) if e.is_timeout() => Err(Failed {
            reason: Fallback::Timeout,
            message: format!("no answer within {timeout_ms} ms: {e}"),
            unusable_model: false,
        }),
        Ok(Err(e)) => Err(Failed::server(error_chain(&e))),
        Err(_) => Err(Failed {
            reason: Fallback::Timeout,
            message: format!("no answer within {timeout_ms} ms"),
            unusable_model: false,
        }),
    }
}

/// An error with its causes (reqwest's own message is only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Publishes a failed refresh to `pools`, keeping their previous scores for the admin API.
fn publish_failure(pools: &[&Arc<Pool>], reason: Fallback, stale_ns: u64) {
    for pool in pools {
        let scores = pool.shared.ml.load().as_ref().and_then(|v| v.scores.clone());
        pool.shared.ml.store(Some(Arc::new(MlView {
            scores,
            failure: Some(reason),
            stale_ns,
        })));
    }
}

/// The scorer as a Pingora background service: started after any daemon fork, on a
/// runtime of its own. Like the store, it does not stop at the shutdown signal: requests
/// still draining keep their scores until the control service ends the process.
pub struct Scorer {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Scorer {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let mut state = ScorerState::new();
        let mut next = tokio::time::Instant::now();
        loop {
            let cfg = self.shared.config.load().loaded.main.ml.clone();
            state.refresh(&self.shared, &cfg).await;
            next += Duration::from_millis(cfg.refresh_ms);
            let now = tokio::time::Instant::now();
            if next < now {
                next = now;
            }
            tokio::time::sleep_until(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config;
    use crate::features::Features;
    use crate::ml::usable;
    use crate::orca::LoadReport;
    use crate::store::record::{write_json, RequestRecord, REQUEST_COLUMNS};
    use crate::store::Recorder;
    use crate::strategy::ml::FEATURES;

    /// What the fake model server answers.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        /// `/version` declares the features reversed; `/v1/score` answers
        /// `latency_ms` = 1 + the row's `inflight`, scaled by `scale`.
        Ok,
        /// 200 with a body that is not the schema.
        Garbage,
        /// Never answers.
        Hang,
        /// A model that needs a feature we do not measure.
        UnknownFeature,
    }

    struct Fake {
        addr: std::net::SocketAddr,
        mode: Arc<Mutex<Mode>>,
        version: Arc<Mutex<String>>,
        calls: Arc<AtomicUsize>,
        /// The last score request's body.
        last: Arc<Mutex<Option<serde_json::Value>>>,
    }

    fn declared(mode: Mode) -> serde_json::Value {
        let mut f: Vec<serde_json::Value> = FEATURES
            .iter()
            .rev()
            .map(|f| serde_json::json!({"name": f.name, "unit": f.unit}))
            .collect();
        if mode == Mode::UnknownFeature {
            f.push(serde_json::json!({"name": "cpu_utilization", "unit": "ratio"}));
        }
        serde_json::Value::Array(f)
    }

    async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = head.lines().next().unwrap_or("").to_string();
        Some((line, buf[head_end..head_end + len].to_vec()))
    }

    async fn fake() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let f = Fake {
            addr: listener.local_addr().expect("addr"),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            version: Arc::new(Mutex::new("v1".to_string())),
            calls: Arc::new(AtomicUsize::new(0)),
            last: Arc::new(Mutex::new(None)),
        };
        let (mode, version, calls, last) = (f.mode.clone(), f.version.clone(), f.calls.clone(), f.last.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (mode, version, calls, last) = (mode.clone(), version.clone(), calls.clone(), last.clone());
                tokio::spawn(async move {
                    while let Some((line, body)) = read_request(&mut s).await {
                        calls.fetch_add(1, SeqCst);
                        let m = *mode.lock().expect("lock");
                        let v = version.lock().expect("lock").clone();
                        let answer = match m {
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                            Mode::Garbage => "{\"oops\": true".to_string(),
                            _ if line.starts_with("get /version") => serde_json::json!({
                                "name": "model-server",
                                "version": "0.1.0",
                                "model": {"version": v, "features": declared(m)},
                            })
                            .to_string(),
                            _ => {
                                let req: serde_json::Value = serde_json::from_slice(&body).expect("json body");
                                let rows = req["rows"].as_array().cloned().unwrap_or_default();
                                // `inflight` is the last declared feature (reversed order).
                                let lat: Vec<f64> = rows
                                    .iter()
                                    .map(|r| {
                                        1.0 + r
                                            .as_array()
                                            .and_then(|a| a.last())
                                            .and_then(|x| x.as_f64())
                                            .unwrap_or(0.0)
                                    })
                                    .collect();
                                *last.lock().expect("lock") = Some(req);
                                serde_json::json!({"model_version": v, "latency_ms": lat, "p_fail": vec![0.0; lat.len()]})
                                    .to_string()
                            }
                        };
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        f
    }

    fn shared_with(dir: &std::path::Path, endpoint: &str) -> Arc<Shared> {
        let main = dir.join("nb.yaml");
        std::fs::write(
            &main,
            format!("listen: 127.0.0.1:8080\nupstreams_file: up.yaml\nml: {{ endpoint: \"{endpoint}\", timeout_ms: 100, circuit_failures: 3, circuit_open_ms: 2000 }}\n"),
        )
        .expect("write");
        std::fs::write(
            dir.join("up.yaml"),
            "pools:\n  api:\n    strategy: ml\n    servers:\n      - { id: a, address: 127.0.0.1:9001 }\n      - { id: b, address: 127.0.0.1:9002, weight: 2 }\n  other:\n    servers: [ { id: c, address: 127.0.0.1:9003 } ]\nroutes:\n  - { pool: api }\n",
        )
        .expect("write");
        Shared::new(config::load(&main).expect("valid"), None, Recorder::off())
    }

    fn reason(shared: &Shared) -> Result<String, Fallback> {
        let pool = shared.upstreams.load().pools["api"].clone();
        let view = pool.shared.ml.load();
        usable(view.as_deref(), clock::now_ns()).map(|s| s.model_version.to_string())
    }

    #[tokio::test]
    async fn refreshes_score_every_ml_pool_and_fail_over_by_reason() {
        let fake = fake().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared_with(dir.path(), &format!("http://{}", fake.addr));
        let cfg = shared.config.load().loaded.main.ml.clone();
        let mut st = ScorerState::new();

        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Ok("v1".to_string()));
        assert_eq!(fake.calls.load(SeqCst), 2, "GET /version, then one POST /v1/score");
        let sent = fake.last.lock().expect("lock").clone().expect("a score request");
        assert_eq!(
            sent["features"],
            declared(Mode::Ok),
            "the model's features, in its order"
        );
        let rows = sent["rows"].as_array().expect("rows");
        assert_eq!(
            rows.len(),
            2 * CURVE_LEVELS,
            "both servers of the one ml pool, 16 levels each"
        );
        assert_eq!(rows[0].as_array().map(Vec::len), Some(FEATURES.len()));
        let pool = shared.upstreams.load().pools["api"].clone();
        let view = pool.shared.ml.load_full().expect("a view");
        let scores = view.scores.as_ref().expect("scores");
        for s in &pool.members().list {
            let c = scores.curve(s.slot()).expect("a curve per server");
            assert_eq!(c.latency_ms[0], 1.0);
            assert_eq!(c.latency_ms[15], 16.0, "level k was scored with inflight = k");
        }
        assert!(
            shared.upstreams.load().pools["other"].shared.ml.load().is_none(),
            "pools of other strategies are not scored"
        );

        // The model server answers garbage: the next refresh makes decisions fall back.
        *fake.mode.lock().expect("lock") = Mode::Garbage;
        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Err(Fallback::ModelServerError));
        assert!(
            pool.shared.ml.load().as_ref().and_then(|v| v.scores.as_ref()).is_some(),
            "the last scores stay for the admin API"
        );
        // It hangs: a timeout (after timeout_ms, not more).
        *fake.mode.lock().expect("lock") = Mode::Hang;
        let t = Instant::now();
        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Err(Fallback::Timeout));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Third failure in a row: the breaker opens and no call is made while it is.
        st.refresh(&shared, &cfg).await;
        assert!(st.breaker.is_open());
        *fake.mode.lock().expect("lock") = Mode::Ok;
        let calls = fake.calls.load(SeqCst);
        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Err(Fallback::CircuitOpen));
        assert_eq!(fake.calls.load(SeqCst), calls, "no call while open");
        // After circuit_open_ms the next refresh tries, succeeds and closes it. (2 s: long
        // enough that a stalled machine cannot let the half-open call through early above.)
        tokio::time::sleep(Duration::from_millis(2050)).await;
        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Ok("v1".to_string()));
        assert!(!st.breaker.is_open());

        // A new model version in an answer: its features are read again.
        *fake.version.lock().expect("lock") = "v2".to_string();
        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Ok("v2".to_string()), "the answer holds");
        assert!(st.replan);
        let calls = fake.calls.load(SeqCst);
        st.refresh(&shared, &cfg).await;
        assert_eq!(fake.calls.load(SeqCst), calls + 2, "GET /version again, then the score");
        assert_eq!(st.model_version(), Some("v2"));

        // A model naming a feature the proxy does not measure cannot be fed.
        *fake.mode.lock().expect("lock") = Mode::UnknownFeature;
        *fake.version.lock().expect("lock") = "v3".to_string();
        st.refresh(&shared, &cfg).await; // the answer names v3: replan
        assert_eq!(reason(&shared), Ok("v3".to_string()));
        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Err(Fallback::ModelServerError));
        let (msg, _) = st.failing.clone().expect("a failure is being reported");
        assert!(msg.contains("`cpu_utilization`"), "{msg}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_model_server_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared_with(dir.path(), &format!("http://127.0.0.1:{port}"));
        let cfg = shared.config.load().loaded.main.ml.clone();
        let mut st = ScorerState::new();
        st.refresh(&shared, &cfg).await;
        assert_eq!(reason(&shared), Err(Fallback::ModelServerError));
        let (msg, _) = st.failing.clone().expect("reported");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }

    /// The proof that training and serving see the same numbers: the row the scorer sends
    /// for a server, at the level of its current requests in flight, equals feature by
    /// feature (in the model's order and units) what the request record stores as `f_*`
    /// for the same state, read back by the rules of `docs/ml.md`.
    #[test]
    fn the_row_sent_for_a_server_is_what_its_request_record_stores() {
        let b = BackendStats::new("p".into(), "b", "127.0.0.1:1".parse().expect("addr"), 3, false);
        let params = Params {
            decay_ns: 2e9,
            ..Params::new(StrategyKind::Ml)
        };
        let t0 = 10_000_000_000u64;
        // History at several levels: successes, a failure, a load report.
        params.observe(&b.load, 0, 4e6, false, t0);
        params.observe(&b.load, 1, 9e6, false, t0 + 1_000_000);
        params.observe(&b.load, 2, 3e6, true, t0 + 2_000_000);
        params.observe(&b.load, 2, 17e6, false, t0 + 3_000_000);
        b.record_report(
            &LoadReport {
                cpu_utilization: Some(0.7),
                rps_fractional: Some(33.0),
                queue: Some(5.0),
            },
            t0 + 4_000_000,
        );
        let _in_flight = [b.load.track(), b.load.track()];
        let now = t0 + 123_456_789;
        // A model that declares the features in another order than ours.
        let declared: Vec<FeatureSpec> = [5, 0, 3, 6, 2, 4, 1]
            .iter()
            .map(|&i| FeatureSpec {
                name: FEATURES[i].name.to_string(),
                unit: FEATURES[i].unit.to_string(),
            })
            .collect();
        let plan = Plan::new("v", declared).expect("a plan");
        let w = plan.rows.width();
        let record = |f| RequestRecord {
            time_us: 0,
            request_id: "r".into(),
            trace_id: None,
            pool: Some("p".into()),
            route: None,
            backend: Some(Arc::new("b".into())),
            backend_address: None,
            method: "GET",
            status: 200,
            error: None,
            latency_us: 1,
            upstream_latency_us: None,
            request_bytes: 0,
            response_bytes: 0,
            retries: 0,
            strategy: Some("ml"),
            features: Some(f),
            predicted_latency_us: None,
            ml_decided: None,
            ml_fallback: None,
            client_addr: None,
        };
        let mut line = Vec::new();
        write_json(
            &REQUEST_COLUMNS,
            &record(Features::of(&b, now, &params)).cells(),
            &mut line,
        );
        let stored: serde_json::Value = serde_json::from_slice(&line).expect("json");
        let col = |c: &str| stored[c].as_f64().map(|v| v as f32);
        for orca in [true, false] {
            let mut rows = Vec::new();
            backend_rows(&b, now, &params, orca, &plan.rows, &mut rows);
            assert_eq!(rows.len(), CURVE_LEVELS * w);
            let level = b.load.inflight() as usize;
            let sent = &rows[level * w..(level + 1) * w];
            for (k, f) in plan.features.iter().enumerate() {
                // docs/ml.md, "Features": each feature's request-record column.
                let want = match f.name.as_str() {
                    "inflight" => col("f_inflight"),
                    "reported_queue" if orca => col("f_reported_queue").or(Some(0.0)),
                    "has_report" if orca => Some(if stored["f_reported_queue"].is_null() { 0.0 } else { 1.0 }),
                    "reported_queue" | "has_report" => Some(0.0), // the ablation sends none
                    "latency_ewma_ms" => col("f_latency_ewma_ms").or(Some(0.0)),
                    "latency_rif_ms" => col("f_latency_rif_ms").or(Some(0.0)),
                    "failure_rate" => col("f_failure_rate"),
                    "weight" => col("f_weight"),
                    other => panic!("no column for feature {other}"),
                };
                assert_eq!(Some(sent[k]), want, "{} (orca {orca})", f.name);
            }
        }
        // Not a vacuous comparison: every measured feature has a value here.
        for c in [
            "f_inflight",
            "f_reported_queue",
            "f_latency_ewma_ms",
            "f_latency_rif_ms",
            "f_failure_rate",
            "f_weight",
        ] {
            assert!(col(c).is_some_and(|v| v > 0.0), "{c}: {}", stored[c]);
        }
    }
}
