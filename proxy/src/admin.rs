//! The admin API, on its own listener (never the proxy port).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/health/live` | 200 while the process runs |
//! | GET | `/health/ready` | 200 when every routed pool has a healthy backend, else 503 and the reason |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/api/v1/servers` | live state of every backend |
//! | GET | `/api/v1/config` | effective configuration, version, hash, last reload |
//! | POST | `/api/v1/reload` | re-read both files: 200 applied, 422 rejected (with the errors) |
//!
//! Mutating calls need `Authorization: Bearer <token>` when a token is configured.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use serde_json::json;

use crate::clock;
use crate::control::{self, Trigger};
use crate::metrics::metrics;
use crate::state::Shared;
use crate::strategy::ml::CURVE_LEVELS;
use crate::strategy::StrategyKind;
use crate::upstream::{Health, Membership};

pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = r.body().len().to_string().parse() {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    r
}

fn json_response(status: StatusCode, v: &impl Serialize) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    respond(status, "application/json", body)
}

/// One row of `/api/v1/servers`.
#[derive(Serialize)]
struct ServerRow {
    pool: String,
    id: String,
    address: String,
    weight: u32,
    healthy: bool,
    health: Health,
    ejected: bool,
    ejected_for_ms: u64,
    /// `member`, or `leaving`: removed by a reload, serving until its replacements are healthy.
    membership: Membership,
    inflight: u32,
    /// Peak-EWMA response-header latency in ms, decayed to now; null before the first response.
    ewma_latency_ms: Option<f64>,
    /// What the latency-learning strategies expect a request there to cost, failures
    /// included: latency × (1 − failure rate) + failure penalty × failure rate; null before
    /// the first response.
    expected_ms: Option<f64>,
    error_rate: f64,
    requests: u64,
    /// The latest learned-model score at the server's current requests in flight; null
    /// where the scorer has none (the pool's strategy is not `ml`, or no refresh scored it).
    ml_score: Option<MlScore>,
    strategy: String,
}

/// A server's latest `ml` score, read at its current requests in flight.
#[derive(Serialize)]
struct MlScore {
    /// The model's latency of a success, times the calibration, in ms.
    predicted_latency_ms: f64,
    /// The model's failure probability.
    p_fail: f64,
    /// What the decision weighs: the expected cost of a request sent now, failures at the
    /// pool's penalty, calibrated, in ms.
    expected_cost_ms: f64,
    /// The server's calibration factor (its measured cost over the model's prediction).
    calibration: f64,
    /// The level of requests in flight read (the curve's last level, 15, serves above it).
    inflight: u32,
    model_version: String,
    /// Time since the rows were built.
    age_ms: u64,
    /// Why the pool's decisions fall back right now (null: the model decides).
    fallback: Option<&'static str>,
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timing.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` are accepted too.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

impl Admin {
    fn authorized(&self, s: &ServerSession) -> bool {
        let Some(token) = &self.shared.admin_token else {
            return true;
        };
        s.req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .is_some_and(|t| token_matches(t, token.as_bytes()))
    }

    fn ready(&self) -> Response<Vec<u8>> {
        let upstreams = self.shared.upstreams.load();
        let down: Vec<String> = upstreams
            .routed_pools()
            .iter()
            .filter(|p| !p.has_healthy())
            .map(|p| p.name.to_string())
            .collect();
        if down.is_empty() {
            json_response(StatusCode::OK, &json!({"status": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": format!("no healthy backend in pool(s): {}", down.join(", ")), "pools": down}),
            )
        }
    }

    fn servers(&self) -> Response<Vec<u8>> {
        let upstreams = self.shared.upstreams.load();
        let now = clock::now_ns();
        let mut names: Vec<&String> = upstreams.pools.keys().collect();
        names.sort();
        let mut rows = Vec::new();
        for name in names {
            let pool = &upstreams.pools[name];
            let params = **pool.shared.params.load();
            let ml_view = pool.shared.ml.load();
            let fallback = (params.kind == StrategyKind::Ml)
                .then(|| crate::ml::usable(ml_view.as_deref(), now).err().map(|r| r.as_str()))
                .flatten();
            for s in pool.members().all() {
                // Only while the pool's strategy is `ml`: a pool that left it keeps its last
                // view, which no longer decides anything.
                let scores = ml_view
                    .as_ref()
                    .filter(|_| params.kind == StrategyKind::Ml)
                    .and_then(|v| v.scores.as_ref());
                let ml_score = scores.and_then(|scores| {
                    let curve = scores.curve(s.slot())?;
                    let inflight = s.load.inflight();
                    // The level a decision reads now (the queue's growth since scoring counted).
                    let at = curve.level(&s.load, now, params.ml.orca);
                    let level = (at as usize).min(CURVE_LEVELS - 1);
                    Some(MlScore {
                        predicted_latency_ms: curve.predicted_us(at) / 1e3,
                        p_fail: f64::from(curve.p_fail[level]),
                        expected_cost_ms: crate::strategy::ml::cost_ns(curve, &s.load, now, &params) / 1e6,
                        calibration: curve.calibration,
                        inflight,
                        model_version: scores.model_version.to_string(),
                        age_ms: now.saturating_sub(scores.at_ns) / 1_000_000,
                        fallback,
                    })
                });
                let est = s.load.latency_estimate_ns(now, params.decay_ns);
                let expected = s.load.expected_ns(now, &params);
                rows.push(ServerRow {
                    pool: name.clone(),
                    id: s.id().to_string(),
                    address: s.addr.to_string(),
                    weight: s.weight(),
                    healthy: s.is_healthy(),
                    health: s.health(),
                    ejected: s.is_ejected(now),
                    ejected_for_ms: s.ejected_for_ms(now),
                    membership: s.membership(),
                    inflight: s.load.inflight(),
                    ewma_latency_ms: (est > 0.0).then_some(est / 1e6),
                    expected_ms: (expected > 0.0).then_some(expected / 1e6),
                    error_rate: s.error_rate(),
                    requests: s.requests(),
                    ml_score,
                    strategy: params.kind.to_string(),
                });
            }
        }
        json_response(StatusCode::OK, &rows)
    }

    fn config(&self) -> Response<Vec<u8>> {
        let c = self.shared.config.load();
        json_response(
            StatusCode::OK,
            &json!({
                "version": c.version,
                "hash": c.loaded.hash,
                "main_file": c.loaded.main_path.display().to_string(),
                "upstreams_file": c.loaded.main.upstreams_file.display().to_string(),
                "main": c.loaded.main,
                "upstreams": c.loaded.upstreams,
                "last_reload": c.last_reload,
            }),
        )
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        match control::reload_async(self.shared.clone(), Trigger::Api).await {
            Ok(a) => json_response(
                StatusCode::OK,
                &json!({"result": if a.unchanged { "unchanged" } else { "applied" }, "version": a.version, "hash": a.hash, "restart_required": a.restart_required}),
            ),
            Err(errors) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"result": "rejected", "errors": errors, "messages": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        // Drain any request body so the connection stays reusable.
        while let Ok(Some(_)) = s.read_request_body().await {}
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::GET, "/health/live") => json_response(StatusCode::OK, &json!({"status": "ok"})),
            (Method::GET, "/health/ready") => self.ready(),
            (Method::GET, "/metrics") => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics().render(&self.shared.upstreams.load()).into_bytes(),
            ),
            (Method::GET, "/api/v1/servers") => self.servers(),
            (Method::GET, "/api/v1/config") => self.config(),
            (Method::POST, "/api/v1/reload") => {
                if self.authorized(s) {
                    self.reload().await
                } else {
                    json_response(
                        StatusCode::UNAUTHORIZED,
                        &json!({"error": "missing or wrong bearer token"}),
                    )
                }
            }
            (
                _,
                "/health/live" | "/health/ready" | "/metrics" | "/api/v1/servers" | "/api/v1/config" | "/api/v1/reload",
            ) => json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method not allowed"})),
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, token_matches};

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secreT", b"secret"));
        assert!(!token_matches(b"secret1", b"secret"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let ok = |v: &[u8]| bearer_token(v).is_some_and(|t| token_matches(t, b"secret"));
        assert!(ok(b"Bearer secret"));
        assert!(ok(b"bearer secret"));
        assert!(ok(b"BEARER secret"));
        assert!(ok(b"bEaReR   secret"));
        assert!(!ok(b"Bearer wrong"));
        assert!(!ok(b"bearer wrong"));
        assert!(!ok(b"Basic secret"));
        assert!(!ok(b"Bearersecret"));
        assert!(!ok(b"Bearer "));
        assert!(!ok(b"secret"));
    }
}
