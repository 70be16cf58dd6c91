//! The model server: scores backends with the learned latency model for the proxy's `ml`
//! strategy, over plain HTTP/1 and JSON. The contract (feature rows, ONNX graph, metadata,
//! this API) is `docs/ml.md`.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/score` | 200 `{"model_version", "latency_ms": [..], "p_fail": [..]}`; 400 `{"error"}` naming what is wrong; 503 while no model is loaded |
//! | GET | `/health` | 200 `{"status": "ok", "model_version"}`; 503 `{"status": "no model", "error"}` |
//! | GET | `/version` | 200 `{"name": "model-server", "version", "model": {..} or null}` |
//! | GET | `/metrics` | Prometheus text ([`metrics`]) |
//! | POST | `/v1/reload` | 200 `{"result": "applied" or "unchanged", "model_version"}`; 422 `{"error"}` (the old model stays) |
//!
//! The model file is watched and hot-swapped ([`reload`]); the server starts without a model
//! and answers 503 until one loads. Scoring itself is the [`scorer`] library, which the
//! discrete-event model uses too. A request's rows are scored in one ONNX Runtime call, on
//! the connection's task for small batches (a call takes microseconds) and on the blocking
//! pool above [`INLINE_ROWS`] rows, so that a huge batch cannot stall other connections.
//!
//! Every status code is decided in one place, [`ApiError::status`].

pub mod metrics;
pub mod reload;
pub mod request;
pub mod scorer;
pub mod testing;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::reload::{ModelSlot, ReloadOutcome, Stamp};
use crate::request::ScoreResponse;
use crate::scorer::{Model, ModelError};

/// This crate's version, as `/version` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
/// Model file when none is given (relative to the working directory: the repository root).
pub const DEFAULT_MODEL: &str = "model-server/models/scorer.onnx";
/// How often the model file is checked for a change.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Largest request body accepted (413 above): about 300k rows of 7 features.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Batches up to this many rows are scored on the connection's task; larger ones on the
/// blocking pool.
pub const INLINE_ROWS: usize = 1024;

/// What a server serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The ONNX model file; it need not exist yet.
    pub model_path: PathBuf,
    /// How often the file is checked for a change.
    pub watch_interval: Duration,
}

impl Config {
    /// `model_path`, watched every [`DEFAULT_WATCH_INTERVAL`].
    pub fn new(model_path: impl Into<PathBuf>) -> Config {
        Config {
            model_path: model_path.into(),
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }
}

/// A model server: its model slot and metrics. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Server {
    slot: Arc<ModelSlot>,
    metrics: Arc<Metrics>,
    watch_interval: Duration,
}

impl Server {
    /// A server for `config`; nothing is read until it runs.
    pub fn new(config: Config) -> Server {
        let metrics = Arc::new(Metrics::new());
        Server {
            slot: Arc::new(ModelSlot::new(config.model_path, Arc::clone(&metrics))),
            metrics,
            watch_interval: config.watch_interval,
        }
    }

    /// The serving model, if any.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.slot.current()
    }

    /// Re-reads the model file now, as `POST /v1/reload` does (blocking).
    pub fn reload(&self) -> ReloadOutcome {
        self.slot.reload_counted()
    }

    /// Loads the model, then serves on `listener` and watches the model file until the
    /// future is dropped. Errors accepting a connection are logged, not fatal.
    pub async fn run(self, listener: TcpListener) -> std::io::Result<()> {
        let stamp = self.load_initial().await;
        self.serve(listener, stamp).await
    }

    /// Binds `addr`, loads the model (a missing or broken file is logged, not fatal), and
    /// serves in the background. Returns the bound address; aborting the handle stops the
    /// listener and the watcher.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let stamp = self.load_initial().await;
        Ok((local, tokio::spawn(self.serve(listener, stamp))))
    }

    /// The load at start: the stamp is taken first, so a change racing this load is seen by
    /// the watcher's first poll.
    async fn load_initial(&self) -> Option<Stamp> {
        let stamp = Stamp::of(self.slot.path());
        let slot = Arc::clone(&self.slot);
        if let Err(e) = tokio::task::spawn_blocking(move || slot.reload()).await {
            tracing::error!(error = %e, "initial model load failed");
        }
        stamp
    }

    async fn serve(self, listener: TcpListener, stamp: Option<Stamp>) -> std::io::Result<()> {
        let _watcher = AbortOnDrop(tokio::spawn(Arc::clone(&self.slot).watch(stamp, self.watch_interval)));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin or die.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(server.clone(), req));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    }
}

/// Stops the watcher with the listener that started it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a request is not answered with 200.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no model loaded: {0}")]
    NoModel(String),
    #[error("{0}")]
    ReloadFailed(String),
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("not found")]
    NotFound,
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The one mapping from errors to status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NoModel(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ReloadFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut r = json(self.status(), &serde_json::json!({ "error": self.to_string() }));
        if let ApiError::MethodNotAllowed(allow) = self {
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        }
        r
    }

    /// A scoring failure: the caller's rows (400) or the model (500).
    fn from_score(e: ModelError) -> ApiError {
        match e {
            ModelError::Shape { .. } | ModelError::NonFinite { .. } => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(b) => (status, b),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": format!("cannot encode the answer: {e}") })
                .to_string()
                .into_bytes(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn handle(server: Server, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let label = Metrics::path_label(req.uri().path());
    let response = route(&server, req).await.unwrap_or_else(|e| e.response());
    server
        .metrics
        .requests
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    Ok(response)
}

async fn route(server: &Server, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/score") => score(server, req).await,
        (&Method::POST, "/v1/reload") => reload(server).await,
        (&Method::GET, "/health") => Ok(health(server)),
        (&Method::GET, "/version") => Ok(version(server)),
        (&Method::GET, "/metrics") => metrics(server),
        (_, "/v1/score" | "/v1/reload") => Err(ApiError::MethodNotAllowed("POST")),
        (_, "/health" | "/version" | "/metrics") => Err(ApiError::MethodNotAllowed("GET")),
        _ => Err(ApiError::NotFound),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::TooLarge),
        Err(e) => Err(ApiError::BadRequest(format!("cannot read the body: {e}"))),
    }
}

async fn score(server: &Server, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = read_body(req).await?;
    let model = server
        .slot
        .current()
        .ok_or_else(|| ApiError::NoModel(server.slot.no_model_reason()))?;
    let request = request::parse(&body).map_err(ApiError::BadRequest)?;
    model
        .check_features(&request.features)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    request
        .rows
        .check_width(model.features().len())
        .map_err(ApiError::BadRequest)?;
    let n = request.rows.len();
    let values = request.rows.values;
    let started = Instant::now();
    let scores = if n > INLINE_ROWS {
        let m = Arc::clone(&model);
        tokio::task::spawn_blocking(move || m.score(&values, n))
            .await
            .map_err(|e| ApiError::Internal(format!("scoring task failed: {e}")))?
    } else {
        model.score(&values, n)
    }
    .map_err(ApiError::from_score)?;
    if n > 0 {
        server.metrics.score_seconds.observe(started.elapsed().as_secs_f64());
        server.metrics.rows_scored.inc_by(n as u64);
    }
    Ok(json(
        StatusCode::OK,
        &ScoreResponse {
            model_version: model.version(),
            latency_ms: &scores.latency_ms,
            p_fail: &scores.p_fail,
        },
    ))
}

async fn reload(server: &Server) -> Result<Response<Full<Bytes>>, ApiError> {
    let s = server.clone();
    let outcome = tokio::task::spawn_blocking(move || s.reload())
        .await
        .map_err(|e| ApiError::Internal(format!("reload task failed: {e}")))?;
    match outcome {
        ReloadOutcome::Applied { version } => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "result": "applied", "model_version": version }),
        )),
        ReloadOutcome::Unchanged { version } => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "result": "unchanged", "model_version": version }),
        )),
        ReloadOutcome::Failed(e) => Err(ApiError::ReloadFailed(e.to_string())),
    }
}

fn health(server: &Server) -> Response<Full<Bytes>> {
    match server.slot.current() {
        Some(m) => json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "model_version": m.version() }),
        ),
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "no model", "error": server.slot.no_model_reason() }),
        ),
    }
}

fn version(server: &Server) -> Response<Full<Bytes>> {
    let model = server.slot.current();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "name": "model-server",
            "version": VERSION,
            "model": model.as_ref().map(|m| m.info()),
        }),
    )
}

fn metrics(server: &Server) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = server
        .metrics
        .encode()
        .map_err(|e| ApiError::Internal(format!("cannot encode metrics: {e}")))?;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    Ok(r)
}
