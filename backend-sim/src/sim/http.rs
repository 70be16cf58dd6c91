//! How a simulated backend answers HTTP requests.
//!
//! Routes: `GET /health`, `GET /stats` and `POST /control` are management
//! endpoints, answered at once without a slot (other methods on those paths
//! are normal requests, as they always were for `/health`). Every other
//! request follows the profile:
//!
//! 1. its body is read to the end (keep-alive stays usable, uploads are
//!    paced like a real server's);
//! 2. it is counted (`arrived`, and `measured` if it carries
//!    `x-nb-measured: 1`), and its fate and service time are drawn: from
//!    its own stream if it carries `x-nb-request: <u64>` (see
//!    [`state`](super::state); a malformed index is ignored), else from the
//!    backend's. A fast 503 is answered at once, without a slot;
//! 3. it waits for a slot in the FIFO queue, or gets a fast 503 when the
//!    queue is full;
//! 4. a hang then holds its slot and never answers (a stuck worker: it costs
//!    capacity until the client gives up, or [`HANG_LIMIT`]); the others
//!    sleep for their service time × the slowdown in force when they got the
//!    slot, on the precise timer ([`crate::timer`]: Tokio's rounds a 1 ms
//!    sleep up to about 2 ms). Sleeping costs no CPU, so the fleet is never
//!    the bottleneck;
//! 5. it is answered: 500 for a slow error, else the status set on the
//!    backend, with a JSON body, `x-backend-id`, (if `orca`) the ORCA load
//!    report, and `server-timing: service;dur=<ms>`, the service time it
//!    was given (3 decimals). Fast and queue-full 503s say `service;dur=0`, so
//!    a client can subtract the service time from every answer's latency.
//!
//! These are the rules of the discrete-event model (`nb_lab::des`) too.
//!
//! A client that gives up (closes its connection) drops the request's
//! future, which gives back its slot or queue place and ends a hang.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::control::Control;
use super::orca::ORCA_HEADER;
use super::state::{Fate, Hanging, Padding, Sim};
use super::{CONTROL_PATH, HANG_LIMIT, STATS_PATH};
use crate::backend::{
    service_timing, BACKEND_ID_HEADER, HEALTH_PATH, MEASURED_HEADER, NO_SERVICE_TIMING, REQUEST_INDEX_HEADER,
    SERVER_TIMING_HEADER,
};
use crate::server::{Body, Handler, HangUp};
use crate::timer::precise_sleep;

/// Largest `/control` body accepted.
const CONTROL_BODY_LIMIT: usize = 64 * 1024;
/// What a `"pad"` field adds to a JSON object besides the padding itself.
const PAD_FIELD_LEN: usize = r#","pad":"""#.len();

/// Body of normal responses.
#[derive(Serialize)]
struct Reply<'a> {
    backend: &'a str,
    method: &'a str,
    path: &'a str,
    /// The raw query string, `""` when there is none.
    query: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pad: &'a str,
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    backend: &'a str,
}

#[derive(Serialize)]
struct Failure<'a> {
    backend: &'a str,
    error: &'a str,
}

impl Handler for Sim {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, HangUp> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if parts.method == Method::POST && path == CONTROL_PATH {
            return Ok(match Limited::new(body, CONTROL_BODY_LIMIT).collect().await {
                Ok(b) => self.control_reply(&b.to_bytes()),
                Err(err) => self.failure(StatusCode::BAD_REQUEST, &format!("cannot read the body: {err}"), false),
            });
        }
        if let Err(err) = drain(body).await {
            tracing::debug!(backend = %self.id, "request body failed: {err}");
            return Ok(self.json(StatusCode::BAD_REQUEST, b"{}".to_vec()));
        }
        if parts.method == Method::GET && path == HEALTH_PATH {
            Sim::count(&self.health_checks);
            let (status, word) = if self.healthy() {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            };
            let body = to_json(&Health {
                status: word,
                backend: &self.id,
            });
            return Ok(self.json(status, body));
        }
        if parts.method == Method::GET && path == STATS_PATH {
            return Ok(self.json(StatusCode::OK, to_json(&self.stats())));
        }
        self.serve(&parts).await
    }
}

impl Sim {
    async fn serve(&self, parts: &Parts) -> Result<Response<Body>, HangUp> {
        Sim::count(&self.arrived);
        if parts
            .headers
            .get(MEASURED_HEADER)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
        {
            Sim::count(&self.measured);
        }
        let index = parts
            .headers
            .get(REQUEST_INDEX_HEADER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let plan = self.plan(parts.uri.path(), index);
        match plan.fate {
            Fate::Fast503 => {
                Sim::count(&self.errors);
                let resp = self.failure(StatusCode::SERVICE_UNAVAILABLE, "injected fast 503", plan.orca);
                return Ok(without_service(resp));
            }
            Fate::Serve | Fate::Slow500 | Fate::Hang => {}
        }
        let Ok(slot) = self.slots.acquire(plan.queue).await else {
            Sim::count(&self.rejected);
            let resp = self.failure(StatusCode::SERVICE_UNAVAILABLE, "overloaded", plan.orca);
            return Ok(without_service(resp));
        };
        if plan.fate == Fate::Hang {
            Sim::count(&self.errors);
            let _gauge = Hanging::new(&self.hanging);
            tokio::time::sleep(HANG_LIMIT).await;
            drop(slot);
            return Err(HangUp);
        }
        let ms = plan.service_ms * self.slowdown();
        if ms > 0.0 {
            // Absurd values (overflow) sleep "for ever", i.e. until the client gives up.
            precise_sleep(Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX)).await;
        }
        drop(slot);
        self.completed();
        if plan.fate == Fate::Slow500 {
            Sim::count(&self.errors);
            let resp = self.failure(StatusCode::INTERNAL_SERVER_ERROR, "injected slow 500", plan.orca);
            return Ok(with_service_ms(resp, ms));
        }
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            Sim::count(&self.errors);
        }
        let mut resp = self.json(status, self.reply_body(parts));
        self.add_orca(&mut resp, plan.orca);
        Ok(with_service_ms(resp, ms))
    }

    fn reply_body(&self, parts: &Parts) -> Vec<u8> {
        let mut reply = Reply {
            backend: &self.id,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            pad: "",
        };
        match self.padding {
            Padding::Pad(n) => reply.pad = &self.pad[..n],
            Padding::Total(n) => {
                let bare = to_json(&reply);
                if n <= bare.len() + PAD_FIELD_LEN {
                    return bare;
                }
                reply.pad = &self.pad[..n - bare.len() - PAD_FIELD_LEN];
            }
        }
        to_json(&reply)
    }

    fn control_reply(&self, body: &[u8]) -> Response<Body> {
        let change: Control = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(err) => return self.failure(StatusCode::BAD_REQUEST, &format!("invalid control JSON: {err}"), false),
        };
        match self.control(&change, true) {
            Ok(stats) => {
                tracing::info!(backend = %self.id, change = ?change, "control");
                self.json(StatusCode::OK, to_json(&stats))
            }
            Err(err) => self.failure(StatusCode::BAD_REQUEST, &err, false),
        }
    }

    fn failure(&self, status: StatusCode, error: &str, orca: bool) -> Response<Body> {
        let mut resp = self.json(
            status,
            to_json(&Failure {
                backend: &self.id,
                error,
            }),
        );
        self.add_orca(&mut resp, orca);
        resp
    }

    fn add_orca(&self, resp: &mut Response<Body>, orca: bool) {
        if orca {
            if let Ok(v) = HeaderValue::from_str(&self.orca().to_text()) {
                resp.headers_mut().insert(ORCA_HEADER, v);
            }
        }
    }

    fn json(&self, status: StatusCode, body: Vec<u8>) -> Response<Body> {
        let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(never).boxed());
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(BACKEND_ID_HEADER, self.id_header.clone());
        resp
    }
}

/// Adds the `server-timing` header with the service time a request was given.
fn with_service_ms(mut resp: Response<Body>, ms: f64) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&service_timing(ms)) {
        resp.headers_mut().insert(SERVER_TIMING_HEADER, v);
    }
    resp
}

/// Adds `server-timing: service;dur=0`: answered without service.
fn without_service(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(SERVER_TIMING_HEADER, HeaderValue::from_static(NO_SERVICE_TIMING));
    resp
}

/// Reads a body to its end, discarding the data.
async fn drain(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn never(never: std::convert::Infallible) -> hyper::Error {
    match never {}
}
