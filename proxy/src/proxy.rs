//! The Pingora `ProxyHttp` implementation: one request's path through the proxy.
//!
//! | phase | what happens here |
//! |---|---|
//! | `new_ctx` | counts the request in flight for graceful shutdown |
//! | `early_request_filter` | the client timeouts for the body and the response (`http.client_timeouts`) |
//! | `request_filter` | peer trust, client address and request id; path normalised (400 when invalid); route by Host and path to a pool (404 when none) |
//! | `upstream_peer` | the pool's strategy picks a backend among eligible, untried ones (`ml`: the model's curves, or its fallback; what decided goes into the record); when none: 503 if no server was tried, else the last failure (502/504); its in-flight guard starts |
//! | `upstream_request_filter` | hop-by-hop headers out, `X-Forwarded-*` (by the trust rule of `headers.rs`) and `X-Request-Id` in |
//! | `upstream_response_filter` | latency sample into the peak EWMA; passive health (5xx runs); the backend's ORCA load report read (and removed); hop-by-hop out |
//! | `response_filter` | `X-Request-Id` echoed to the client; `Connection: close` while draining |
//! | `fail_to_connect` / `error_while_proxy` | passive health; the failure is kept as the request's cause; retry on another backend, capped by the pool's `max_retries` |
//! | `fail_to_proxy` | the proxy's own error response: 502 upstream failure, 504 upstream timeout, 503 no eligible server, 400 bad request; JSON body and `X-Request-Id` |
//! | `logging` | metrics and the request record, once per request, success or failure |

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::clock;
use crate::config::{HttpConfig, RequestIdMode};
use crate::features::Features;
use crate::headers;
use crate::metrics::{self, metrics};
use crate::ml::Decision;
use crate::orca;
use crate::path::{self, PathOptions};
use crate::state::Shared;
use crate::store::record::now_unix_us;
use crate::store::RequestRecord;
use crate::strategy::InflightGuard;
use crate::upstream::{BackendStats, Ejection, Failure, Pool};

pub struct Proxy {
    shared: Arc<Shared>,
    /// `server.forward_load_reports`: a main-file key, so fixed until restart.
    forward_load_reports: bool,
    /// `http`: a main-file section, so fixed until restart.
    http: HttpConfig,
    path_options: PathOptions,
    body_read: Duration,
    send: Duration,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        let main = shared.config.load().loaded.main.clone();
        let http = main.http;
        let t = http.client_timeouts;
        Proxy {
            shared,
            forward_load_reports: main.server.forward_load_reports,
            path_options: PathOptions {
                merge_slashes: http.merge_slashes,
                escaped_slashes: http.escaped_slashes,
            },
            body_read: Duration::from_millis(t.body_read_ms),
            send: Duration::from_millis(t.send_ms),
            http,
        }
    }
}

/// `X-Forwarded-Proto` of a request: the scheme of the listener it came in on. Taken from the
/// connection (a TLS listener's connections carry an SSL digest), so a TLS listener gets
/// `https` without a change here.
fn listener_proto(session: &Session) -> &'static str {
    match session.digest().and_then(|d| d.ssl_digest.as_ref()) {
        Some(_) => "https",
        None => "http",
    }
}

/// `uri` with its path replaced and its query kept byte for byte.
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "normalised path", e))?,
    );
    http::Uri::from_parts(parts).map_err(|e| Error::because(ErrorType::InternalError, "normalised uri", e))
}

/// Counts a request in the process-wide in-flight total until dropped.
pub struct RequestGuard(Arc<Shared>);

impl RequestGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.inflight_requests.fetch_add(1, Relaxed);
        RequestGuard(shared.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.inflight_requests.fetch_sub(1, Relaxed);
    }
}

pub struct Ctx {
    start: Instant,
    request_id: String,
    /// The client's address by the trust rule (`headers::client_ip`), set once in
    /// `request_filter` for every consumer; `None` for peers not on IP.
    client_ip: Option<IpAddr>,
    /// The connection's peer address (`None` for peers not on IP), read once.
    peer: Option<IpAddr>,
    /// Whether the peer is one of `http.trusted_proxies`.
    peer_trusted: bool,
    pool: Option<Arc<Pool>>,
    backend: Option<Arc<BackendStats>>,
    /// Dropped when the request ends or moves to another backend.
    backend_guard: Option<InflightGuard>,
    tried: Vec<SocketAddr>,
    retries: u32,
    /// The last backend failure of this request (`ConnectRefused`, `ReadTimedout`, ...): the
    /// answer and the recorded cause when no other backend is left to retry on.
    last_failure: Option<ErrorType>,
    /// When the current backend was chosen (clock ns), for its latency sample.
    sent_at_ns: u64,
    response_started: bool,
    /// Only while recording: what the request record needs beyond the rest of the context.
    rec: Option<RecordCtx>,
    _request: RequestGuard,
}

#[derive(Default)]
struct RecordCtx {
    /// Arrival, µs since the Unix epoch.
    time_us: i64,
    route: Option<Arc<str>>,
    trace_id: Option<String>,
    /// The chosen backend's features at the moment it was chosen, and the strategy that
    /// chose it.
    features: Option<Features>,
    strategy: Option<&'static str>,
    /// What decided the chosen backend (for `ml` pools: the model or its fallback, and why).
    decision: Option<Decision>,
    upstream_latency_us: Option<i64>,
}

/// Counts a backend failure for passive health; logs and counts an ejection it causes.
fn record_failure(pool: &Pool, backend: &BackendStats, kind: Failure) {
    match pool.record_failure(backend, kind) {
        Ejection::None => {}
        Ejection::Ejected(ms) => {
            let id = backend.id();
            metrics().ejections.with_label_values(&[&*pool.name, id.as_str()]).inc();
            tracing::warn!(pool = %pool.name, backend = %id, ejected_ms = ms, reason = ?kind, "backend ejected");
        }
        Ejection::Capped => {
            metrics().ejections_overflow.with_label_values(&[&*pool.name]).inc();
            tracing::warn!(pool = %pool.name, backend = %backend.id(), reason = ?kind, "backend not ejected: max_ejection_percent reached");
        }
    }
}

/// Shared by both error paths: count the failure against the backend and, within budget,
/// mark the error for a retry on a different backend.
fn on_backend_error(ctx: &mut Ctx, mut e: Box<Error>, kind: Failure, retryable: bool) -> Box<Error> {
    let (Some(pool), Some(backend)) = (ctx.pool.clone(), ctx.backend.take()) else {
        return e;
    };
    ctx.last_failure = Some(e.etype().clone());
    // A refused connection, a reset or a timeout costs the failure penalty in the latency
    // estimate, as a 5xx does.
    let now = clock::now_ns();
    let rif = ctx.backend_guard.as_ref().map_or(0, |g| g.rif());
    pool.shared
        .params
        .load()
        .observe(&backend.load, rif, now.saturating_sub(ctx.sent_at_ns) as f64, true, now);
    record_failure(&pool, &backend, kind);
    let cfg = pool.config();
    ctx.backend_guard = None;
    ctx.tried.push(backend.addr);
    if retryable && ctx.retries < cfg.max_retries {
        ctx.retries += 1;
        metrics().retries.with_label_values(&[&*pool.name]).inc();
        e.set_retry(true);
    } else {
        e.set_retry(false);
    }
    ctx.backend = Some(backend);
    e
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: String::new(),
            client_ip: None,
            peer: None,
            peer_trusted: false,
            pool: None,
            backend: None,
            backend_guard: None,
            tried: Vec::new(),
            retries: 0,
            last_failure: None,
            sent_at_ns: 0,
            response_started: false,
            rec: self.shared.recorder.is_on().then(|| RecordCtx {
                time_us: now_unix_us(),
                ..RecordCtx::default()
            }),
            _request: RequestGuard::new(&self.shared),
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // The header is read (under `header_read_ms`, see `downstream.rs`); from here on,
        // reads are of the body and writes of the response.
        session.set_read_timeout(Some(self.body_read));
        session.set_write_timeout(Some(self.send));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        ctx.peer = peer;
        let trusted = &self.http.trusted_proxies;
        let req = session.req_header();
        ctx.peer_trusted = headers::peer_trusted(peer, trusted);
        ctx.client_ip = headers::client_ip(req, peer, trusted);
        ctx.request_id = headers::request_id(req, ctx.peer_trusted || self.http.request_id == RequestIdMode::Keep);
        if let Some(rec) = &mut ctx.rec {
            rec.trace_id = req
                .headers
                .get(headers::TRACEPARENT)
                .and_then(|v| headers::trace_id(v.as_bytes()));
        }
        // The router and the backend must see one path: the normalised one replaces the
        // request's, so what was routed is what goes upstream.
        if self.http.normalize_path {
            match path::normalize(req.uri.path(), &self.path_options) {
                Ok(Cow::Borrowed(_)) => {}
                Ok(Cow::Owned(p)) => {
                    let uri = with_path(&req.uri, &p)?;
                    session.req_header_mut().set_uri(uri);
                }
                Err(e) => {
                    respond_json(session, 400, &ctx.request_id, &e.to_string()).await?;
                    return Ok(true);
                }
            }
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("");
        let upstreams = self.shared.upstreams.load();
        match upstreams.route(host, req.uri.path()) {
            Some(route) => {
                ctx.pool = Some(route.pool.clone());
                if let Some(rec) = &mut ctx.rec {
                    rec.route = Some(route.prefix.clone());
                }
                Ok(false)
            }
            None => {
                respond_json(session, 404, &ctx.request_id, "no route for this host and path").await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.pool.clone() else {
            return Err(Error::explain(ErrorType::HTTPStatus(404), "no route"));
        };
        let Some((backend, decision)) = pool.select_decided(&ctx.tried) else {
            return Err(no_backend(&pool.name, ctx.last_failure.as_ref()));
        };
        let cfg = pool.config();
        let t = &cfg.timeouts;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_millis(t.connect_ms));
        peer.options.read_timeout = Some(Duration::from_millis(t.read_ms));
        peer.options.write_timeout = Some(Duration::from_millis(t.write_ms));
        peer.options.idle_timeout = Some(Duration::from_millis(t.idle_ms));
        let now = clock::now_ns();
        if let Some(rec) = &mut ctx.rec {
            // Before this request counts in flight: what the decision saw.
            let params = pool.shared.params.load();
            rec.features = Some(Features::of(&backend, now, &params));
            rec.strategy = Some(params.kind.as_str());
            rec.decision = Some(decision);
        }
        ctx.backend_guard = Some(backend.load.track());
        ctx.backend = Some(backend);
        ctx.sent_at_ns = now;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::strip_request_hop_by_hop(upstream);
        headers::set_forwarded(upstream, ctx.peer, ctx.peer_trusted, listener_proto(session))?;
        upstream.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        if let (Some(pool), Some(backend)) = (&ctx.pool, &ctx.backend) {
            let now = clock::now_ns();
            let rtt_ns = now.saturating_sub(ctx.sent_at_ns);
            let failure = Failure::of_status(resp.status.as_u16());
            let rif = ctx.backend_guard.as_ref().map_or(0, |g| g.rif());
            pool.shared
                .params
                .load()
                .observe(&backend.load, rif, rtt_ns as f64, failure.is_some(), now);
            if let Some(rec) = &mut ctx.rec {
                rec.upstream_latency_us = Some((rtt_ns / 1_000) as i64);
            }
            if let Some(kind) = failure {
                record_failure(pool, backend, kind);
            } else {
                backend.record_success();
            }
            if let Some(report) = resp.headers.get(orca::HEADER).and_then(|v| orca::parse(v.as_bytes())) {
                backend.record_report(&report, now);
            }
        }
        if !self.forward_load_reports {
            resp.remove_header(orca::HEADER);
        }
        headers::strip_response_hop_by_hop(resp);
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        ctx.response_started = true;
        if self.shared.draining.load(Relaxed) {
            session.set_keepalive(None);
        }
        resp.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, e: Box<Error>) -> Box<Error> {
        on_backend_error(ctx, e, Failure::Connect, true)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("peer: {peer}"));
        // Safe to send again only if nothing reached the client, the method is idempotent and
        // the body is still buffered; a timeout may mean the request is being processed, so
        // it is not retried.
        let retryable = !ctx.response_started
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && !matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::HTTPStatus(_)
            );
        if matches!(e.esource(), pingora::ErrorSource::Downstream) {
            return e;
        }
        on_backend_error(ctx, e, Failure::Transport, retryable)
    }

    /// Pingora's own log lines about a request (e.g. `Fail to proxy: ConnectRefused ...`)
    /// end with this; the request id ties them to the client's answer and the record.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        format!("{}, request_id: {}", session.as_ref().request_summary(), ctx.request_id)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = error_status(e);
        if code > 0 {
            if ctx.request_id.is_empty() {
                // The request failed before `request_filter` gave it an id.
                ctx.request_id = headers::new_request_id();
            }
            let cause = cause(e, ctx.last_failure.as_ref());
            if let Err(we) = respond_error(session, code, &ctx.request_id, cause).await {
                tracing::debug!(request_id = %ctx.request_id, error = %we, "cannot send the error response");
            }
        }
        // The request may have been read only in part: never reuse the connection.
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.backend_guard = None;
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let pool = ctx.pool.as_ref().map(|p| &*p.name).unwrap_or(metrics::NO_POOL);
        let id = ctx.backend.as_ref().map(|b| b.id());
        let backend = id.as_ref().map(|s| s.as_str()).unwrap_or(metrics::NO_BACKEND);
        let method = metrics::method_label(&session.req_header().method);
        let m = metrics();
        m.requests
            .with_label_values(&[pool, backend, method, &metrics::status_label(status)])
            .inc();
        m.duration
            .with_label_values(&[pool, backend])
            .observe(ctx.start.elapsed().as_secs_f64());
        let cause = e.map(|e| cause(e, ctx.last_failure.as_ref()));
        if let Some(e) = e {
            let client = ctx.client_ip.map(tracing::field::display);
            tracing::debug!(request_id = %ctx.request_id, client, pool, backend, status, cause, error = %e, "request failed");
        }
        if let Some(rec) = ctx.rec.take() {
            self.shared.recorder.record(RequestRecord {
                time_us: rec.time_us,
                request_id: std::mem::take(&mut ctx.request_id),
                trace_id: rec.trace_id,
                pool: ctx.pool.as_ref().map(|p| p.name.clone()),
                route: rec.route,
                backend: id,
                backend_address: ctx.backend.as_ref().map(|b| b.addr_text.clone()),
                method,
                status,
                error: cause,
                latency_us: ctx.start.elapsed().as_micros() as i64,
                upstream_latency_us: rec.upstream_latency_us,
                request_bytes: session.body_bytes_read() as i64,
                response_bytes: session.body_bytes_sent() as i64,
                retries: ctx.retries,
                strategy: rec.strategy,
                features: rec.features,
                predicted_latency_us: rec.decision.and_then(Decision::predicted_us),
                ml_decided: rec.decision.and_then(Decision::ml_decided),
                ml_fallback: rec.decision.and_then(Decision::fallback),
                client_addr: ctx.client_ip,
            });
        }
    }
}

/// The error when a pool offers no backend. After a failed attempt this is that failure
/// (the client learns it was a 502/504, not that the pool is empty); only a request that
/// found no eligible server at all gets a 503.
fn no_backend(pool: &str, last_failure: Option<&ErrorType>) -> Box<Error> {
    match last_failure {
        Some(etype) => Error::explain(
            etype.clone(),
            format!("pool {pool}: no other eligible backend to retry on"),
        )
        .into_up(),
        None => Error::explain(NO_ELIGIBLE_BACKEND, format!("pool {pool}: no eligible backend")),
    }
}

/// No server of the pool could take the request (all unhealthy, ejected or draining) and
/// none was tried: the one case answered with 503.
const NO_ELIGIBLE_BACKEND: ErrorType = ErrorType::Custom("NoEligibleBackend");

/// The status of the proxy's own answer to a failed request; 0 when the client is gone.
fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => *code,
        (t, _) if *t == NO_ELIGIBLE_BACKEND => 503,
        (ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout, ErrorSource::Upstream) => 504,
        (_, ErrorSource::Upstream) => 502,
        (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => 0,
        // nginx's `client_body_timeout` answer.
        (ReadTimedout, ErrorSource::Downstream) => 408,
        (_, ErrorSource::Downstream) => 400,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}

/// The name of what went wrong, for the request record and the log: the error's type, or
/// for a bare status (`HTTPStatus`) the backend failure behind it when there was one.
fn cause(e: &Error, last_failure: Option<&ErrorType>) -> &'static str {
    match (e.etype(), last_failure) {
        (ErrorType::HTTPStatus(_), Some(f)) => f.as_str(),
        (t, _) => t.as_str(),
    }
}

/// Writes the proxy's own error response (unless a response has already begun): a small
/// JSON body naming the cause, and the request id so the client can quote it.
async fn respond_error(session: &mut Session, status: u16, request_id: &str, cause: &str) -> Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error");
    let body = Bytes::from(
        serde_json::json!({ "error": reason.to_ascii_lowercase(), "cause": cause, "request_id": request_id })
            .to_string(),
    );
    let mut resp = pingora::protocols::http::ServerSession::generate_error(status);
    resp.set_content_length(body.len())?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(headers::X_REQUEST_ID, request_id)?;
    session.as_downstream_mut().write_error_response(resp, body).await
}

async fn respond_json(session: &mut Session, status: u16, request_id: &str, msg: &str) -> Result<()> {
    let body = Bytes::from(serde_json::json!({ "error": msg, "request_id": request_id }).to_string());
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(headers::X_REQUEST_ID, request_id)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// In-flight requests across the process (for graceful shutdown).
pub fn inflight(shared: &Shared) -> usize {
    shared.inflight_requests.load(Relaxed)
}
