//! One listener that reports on a whole fleet: `GET /stats` answers a JSON
//! array with every backend's [`Stats`], in the order given, ids included.
//!
//! Why a listener of its own: a backend's `/stats` is served by its own
//! listener, which is closed while the backend is down, and the lab reads
//! every backend's counters (e.g. `measured`, how many routing decisions
//! chose it) once the run is over, whatever state the run left it in. This
//! listener reads the backends' shared state directly, so it answers for a
//! backend that is down, joins late or has crashed; it does not keep the
//! backends running (dropping their handles still stops them).
//!
//! `backend-sim --stats-listen ADDR` runs it beside the fleet; tests and the
//! lab can run it in-process with [`spawn_fleet_stats`]. Other paths and
//! methods answer 404.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::backend::BackendHandle;
use crate::server::{self, Body, Handler, HangUp, Running};
use crate::sim::state::Sim;
use crate::sim::{Stats, STATS_PATH};

/// Starts serving the fleet's `GET /stats` on `listen` (port 0: a free port)
/// for `backends`; returns once it is listening.
pub async fn spawn_fleet_stats(listen: SocketAddr, backends: &[BackendHandle]) -> io::Result<FleetStatsHandle> {
    let listener = server::bind(listen)?;
    let addr = listener.local_addr()?;
    let sims = backends.iter().map(BackendHandle::sim).collect();
    let running = Running::start(listener, Arc::new(FleetStats { sims }));
    Ok(FleetStatsHandle { addr, running })
}

/// The running fleet stats listener; dropping it stops it.
#[derive(Debug)]
pub struct FleetStatsHandle {
    addr: SocketAddr,
    running: Running,
}

impl FleetStatsHandle {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and its connections; returns when done.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

#[derive(Debug)]
struct FleetStats {
    sims: Vec<Arc<Sim>>,
}

impl FleetStats {
    fn stats(&self) -> Vec<Stats> {
        self.sims.iter().map(|s| s.stats()).collect()
    }
}

impl Handler for FleetStats {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, HangUp> {
        let (status, body) = if req.method() == Method::GET && req.uri().path() == STATS_PATH {
            // Serialising plain structs of strings and numbers cannot fail.
            (StatusCode::OK, serde_json::to_vec(&self.stats()).unwrap_or_default())
        } else {
            (StatusCode::NOT_FOUND, br#"{"error":"not found; GET /stats"}"#.to_vec())
        };
        // Read the request to its end (discarding it) so that the connection stays usable.
        let mut req_body = req.into_body();
        while let Some(frame) = req_body.frame().await {
            if let Err(err) = frame {
                tracing::debug!("fleet stats request body failed: {err}");
                break;
            }
        }
        let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(resp)
    }
}
