//! Helpers for the tests of profile-driven backends (profile.rs, phases.rs,
//! control.rs): starting a profile, timing one request, reading `/stats`.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backend_sim::model::{Dist, Profile};
use backend_sim::sim::OrcaReport;
use backend_sim::{spawn_profile, BackendHandle, Stats};

#[path = "../common/mod.rs"]
mod common;
pub use common::client;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A profile with a constant service time of `service_ms`.
pub fn constant(id: &str, service_ms: f64) -> Profile {
    Profile::new(id, Dist::Constant { ms: service_ms })
}

/// Starts `p` with its epoch now.
pub async fn start(p: Profile) -> BackendHandle {
    spawn_profile(p, Instant::now()).await.expect("spawn profile")
}

/// One answered request.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub elapsed: Duration,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Got {
    /// The `server-timing` header, as sent.
    pub fn server_timing(&self) -> Option<&str> {
        Some(self.headers.get("server-timing")?.to_str().expect("ASCII header"))
    }

    pub fn orca(&self) -> Option<OrcaReport> {
        let v = self.headers.get("endpoint-load-metrics")?;
        Some(OrcaReport::parse(v.to_str().expect("ASCII header")).expect("parseable ORCA TEXT header"))
    }
}

pub async fn get(c: &reqwest::Client, addr: SocketAddr, path: &str) -> Got {
    get_with(c, addr, path, &[]).await
}

/// A GET with extra request headers.
pub async fn get_with(c: &reqwest::Client, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    let start = Instant::now();
    let mut req = c.get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body");
    Got {
        status,
        elapsed: start.elapsed(),
        headers,
        body,
    }
}

/// `n` concurrent GETs of `path`, in request order.
pub async fn burst(addr: SocketAddr, path: &str, n: usize) -> Vec<Got> {
    let c = client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, path) = (c.clone(), path.to_string());
            tokio::spawn(async move { get(&c, addr, &path).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// `GET /stats` over HTTP.
pub async fn stats(addr: SocketAddr) -> Stats {
    let got = get(&client(), addr, "/stats").await;
    assert_eq!(got.status, 200);
    serde_json::from_slice(&got.body).expect("stats JSON")
}

/// `POST /control` with a raw body: (status, JSON answer).
pub async fn control(addr: SocketAddr, body: &str) -> (u16, serde_json::Value) {
    let resp = client()
        .post(format!("http://{addr}/control"))
        .body(body.to_string())
        .send()
        .await
        .expect("control request");
    let status = resp.status().as_u16();
    let json = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON answer");
    (status, json)
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(ms(20)).await;
    }
}

/// Whether connecting to `addr` is refused.
pub async fn refused(addr: SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Sleeps until `at` after `epoch`.
pub async fn until(epoch: Instant, at: Duration) {
    tokio::time::sleep_until((epoch + at).into()).await;
}
