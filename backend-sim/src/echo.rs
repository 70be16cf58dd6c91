//! A streaming echo server.
//!
//! It lets proxy tests check exactly what reached the upstream: the method,
//! the URI and every header come back as response headers, and the request
//! body comes back as the response body. The body is piped through frame by
//! frame (the response body *is* the request body), never buffered, so it
//! also shows whether the proxy streams: a client can read the first echoed
//! bytes before it has sent the rest.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tokio::sync::Mutex;

use crate::backend::BACKEND_ID_HEADER;
use crate::server::{self, Body, Handler, HangUp, Running};

/// Response header carrying the request method.
pub const ECHO_METHOD_HEADER: &str = "x-echo-method";
/// Response header carrying the request path and query as received.
pub const ECHO_URI_HEADER: &str = "x-echo-uri";
/// Response header carrying all request headers as a JSON object of
/// lowercase name to array of values.
pub const ECHO_HEADERS_HEADER: &str = "x-echo-headers";

/// Starts an echo server on `listen` (port 0 picks a free port).
pub async fn spawn_echo(listen: SocketAddr) -> io::Result<EchoHandle> {
    let listener = server::bind(listen)?;
    let addr = listener.local_addr()?;
    let running = Running::start(listener, Arc::new(Echo));
    Ok(EchoHandle {
        addr,
        server: Mutex::new(Some(running)),
    })
}

/// A running echo server; dropping it stops the server.
#[derive(Debug)]
pub struct EchoHandle {
    addr: SocketAddr,
    server: Mutex<Option<Running>>,
}

impl EchoHandle {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and drops every open connection.
    pub async fn stop(&self) {
        if let Some(running) = self.server.lock().await.take() {
            running.stop().await;
        }
    }
}

struct Echo;

impl Handler for Echo {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, HangUp> {
        let (parts, body) = req.into_parts();

        let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (name, value) in &parts.headers {
            headers
                .entry(name.as_str())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        // serde_json escapes control characters, so the result is a valid
        // header value; the fallback is unreachable in practice.
        let headers_json = serde_json::to_string(&headers)
            .ok()
            .and_then(|json| HeaderValue::from_str(&json).ok())
            .unwrap_or_else(|| HeaderValue::from_static("{}"));
        let uri = parts.uri.path_and_query().map_or(parts.uri.path(), |pq| pq.as_str());

        let mut resp = Response::new(body.boxed());
        let out = resp.headers_mut();
        out.insert(BACKEND_ID_HEADER, HeaderValue::from_static("echo"));
        out.insert(
            ECHO_METHOD_HEADER,
            HeaderValue::from_str(parts.method.as_str()).unwrap_or_else(|_| HeaderValue::from_static("?")),
        );
        if let Ok(uri) = HeaderValue::from_str(uri) {
            out.insert(ECHO_URI_HEADER, uri);
        }
        out.insert(ECHO_HEADERS_HEADER, headers_json);
        Ok(resp)
    }
}
