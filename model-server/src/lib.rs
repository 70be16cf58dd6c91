//! The model server. It will score backends with an ONNX latency model for the proxy's `ml`
//! strategy; today it serves its liveness and version endpoints, which deployments and the
//! proxy's client use to find it.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/health` | 200 `{"status":"ok"}` |
//! | GET | `/version` | 200 `{"name":"model-server","version":"…"}` |

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/version") => json(
            StatusCode::OK,
            serde_json::json!({"name": "model-server", "version": VERSION}),
        ),
        (_, "/health" | "/version") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method not allowed"}),
        ),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "not found"})),
    })
}

/// Serves on `listener` until the task is dropped.
pub async fn run(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(run(listener))))
}
