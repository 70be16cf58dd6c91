//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;

/// A client that never uses an environment proxy and never reuses
/// connections, so stop/restart tests see fresh connects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client builds")
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Reads a response body as JSON.
pub async fn body_json(resp: reqwest::Response) -> serde_json::Value {
    let bytes = resp.bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("JSON body")
}
