//! A running simulated backend and how it answers requests.
//!
//! Everything a test may change at run time (delay, status, health) lives in
//! `Shared` as atomics read once per request, so changes apply to new
//! requests without locks on the hot path. Richer behaviours (latency
//! distributions, slots and queues, phases, load headers) are meant to grow
//! here as further fields of `Shared` consulted by `Shared::answer`.
//!
//! The lifecycle (stop = crash, restart on the same address) is delegated to
//! `crate::server`; a handle only remembers the bound address and the
//! currently running server, if any.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::server::{self, Body, Handler, Running};
use crate::spec::BackendSpec;

/// Header naming the backend that produced a response.
pub const BACKEND_ID_HEADER: &str = "x-backend-id";
/// Path answered by health checks.
pub const HEALTH_PATH: &str = "/health";

/// Starts a backend as described by `spec` and returns once it is listening.
///
/// Fails if the address cannot be bound or `spec.status` is not a valid HTTP
/// status code. Must be called from within a Tokio runtime.
pub async fn spawn(spec: BackendSpec) -> io::Result<BackendHandle> {
    StatusCode::from_u16(spec.status)
        .map_err(|_| invalid_input(format!("backend {}: invalid status code {}", spec.id, spec.status)))?;
    let id_header = HeaderValue::from_str(&spec.id)
        .map_err(|_| invalid_input(format!("backend id {:?} is not a valid header value", spec.id)))?;
    let listener = server::bind(spec.listen)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        id: spec.id,
        id_header,
        delay_nanos: AtomicU64::new(nanos(spec.delay)),
        status: AtomicU16::new(spec.status),
        healthy: AtomicBool::new(true),
        pad: "x".repeat(spec.body_bytes),
        served: AtomicU64::new(0),
        health_checks: AtomicU64::new(0),
    });
    let running = Running::start(listener, Arc::clone(&shared));
    Ok(BackendHandle {
        inner: Arc::new(Inner {
            addr,
            shared,
            server: Mutex::new(Some(running)),
        }),
    })
}

/// Control over a running (or stopped) backend.
///
/// Clones share the backend; dropping the last clone stops it.
#[derive(Debug, Clone)]
pub struct BackendHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// `None` while stopped. An async mutex so that `stop` and `restart`
    /// are serialised: a restart never races the listener of a stop.
    server: Mutex<Option<Running>>,
}

impl BackendHandle {
    /// The address actually bound (the real port when the spec said 0).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.inner.shared.id
    }

    /// Sets the delay of requests that arrive from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.shared.delay_nanos.store(nanos(delay), Ordering::Relaxed);
    }

    /// Sets the status of non-health responses. A code that is not a valid
    /// HTTP status (outside 100..=999) is answered as 500.
    pub fn set_status(&self, code: u16) {
        self.inner.shared.status.store(code, Ordering::Relaxed);
    }

    /// Makes `GET /health` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.inner.shared.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Non-health requests answered so far (across restarts).
    pub fn served(&self) -> u64 {
        self.inner.shared.served.load(Ordering::Relaxed)
    }

    /// Health checks answered so far (across restarts), 200 or 503.
    pub fn health_checks(&self) -> u64 {
        self.inner.shared.health_checks.load(Ordering::Relaxed)
    }

    /// Whether the backend is currently listening.
    pub async fn is_running(&self) -> bool {
        self.inner.server.lock().await.is_some()
    }

    /// Crashes the backend: closes the listener and drops every open
    /// connection, in-flight requests included. When it returns, connecting to
    /// [`addr`](Self::addr) is refused. Does nothing if already stopped.
    pub async fn stop(&self) {
        let mut server = self.inner.server.lock().await;
        if let Some(running) = server.take() {
            running.stop().await;
        }
    }

    /// Listens again on the same address with the current settings. Does
    /// nothing if already running.
    pub async fn restart(&self) -> io::Result<()> {
        let mut server = self.inner.server.lock().await;
        if server.is_none() {
            let listener = server::bind(self.inner.addr)?;
            *server = Some(Running::start(listener, Arc::clone(&self.inner.shared)));
        }
        Ok(())
    }
}

/// State shared by the handle and the request handlers.
#[derive(Debug)]
struct Shared {
    id: String,
    /// `id` as a header value, validated once at spawn.
    id_header: HeaderValue,
    delay_nanos: AtomicU64,
    status: AtomicU16,
    healthy: AtomicBool,
    pad: String,
    served: AtomicU64,
    health_checks: AtomicU64,
}

/// Body of non-health responses.
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

impl Shared {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        // Read and discard the body first, so keep-alive connections stay
        // usable and uploads are paced like a real server's.
        if let Err(err) = drain(body).await {
            tracing::debug!(backend = %self.id, "request body failed: {err}");
            return self.json(StatusCode::BAD_REQUEST, b"{}".to_vec());
        }

        if parts.method == Method::GET && parts.uri.path() == HEALTH_PATH {
            self.health_checks.fetch_add(1, Ordering::Relaxed);
            let (status, word) = if self.healthy.load(Ordering::Relaxed) {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            };
            return self.json(
                status,
                to_json(&Health {
                    status: word,
                    backend: &self.id,
                }),
            );
        }

        let delay = Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let status =
            StatusCode::from_u16(self.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = to_json(&Reply {
            backend: &self.id,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            pad: &self.pad,
        });
        self.served.fetch_add(1, Ordering::Relaxed);
        self.json(status, body)
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

impl Handler for Shared {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        Ok(self.answer(req).await)
    }
}

/// Reads a body to its end, discarding the data.
async fn drain(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs of strings cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn never(never: Infallible) -> hyper::Error {
    match never {}
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
