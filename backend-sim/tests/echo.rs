//! The streaming echo server.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use backend_sim::spawn_echo;
use bytes::Bytes;
use common::{client, url};
use futures_util::stream;
use serde_json::{json, Value};

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn echoes_5_mib_body_with_method_uri_and_headers() {
    let echo = spawn_echo(any_port()).await.expect("spawn");
    let payload: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    // Send it as a chunked stream of 64 KiB pieces.
    let chunks: Vec<Result<Bytes, std::io::Error>> = payload
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = client()
        .put(url(echo.addr(), "/echo/path?x=1&y=two"))
        .header("x-test", "a")
        .header("X-Multi", "one")
        .header("x-multi", "two")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-backend-id"], "echo");
    assert_eq!(h["x-echo-method"], "PUT");
    assert_eq!(h["x-echo-uri"], "/echo/path?x=1&y=two");
    let headers: Value = serde_json::from_str(h["x-echo-headers"].to_str().expect("ascii")).expect("json");
    assert_eq!(headers["x-test"], json!(["a"]));
    assert_eq!(headers["x-multi"], json!(["one", "two"]));
    assert_eq!(headers["host"], json!([echo.addr().to_string()]));
    let body = resp.bytes().await.expect("body");
    assert_eq!(body.len(), payload.len());
    assert!(body == payload, "echoed body differs");
}

#[tokio::test]
async fn streams_without_buffering_the_whole_body() {
    let echo = spawn_echo(any_port()).await.expect("spawn");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let request = tokio::spawn(
        client()
            .post(url(echo.addr(), "/stream"))
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    tx.send(Bytes::from_static(b"first")).await.expect("send");
    // The request body is still open, yet the first chunk must come back.
    let mut resp = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("response head before body end")
        .expect("task")
        .expect("request");
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("first chunk before body end")
        .expect("chunk");
    assert_eq!(first.as_deref(), Some(&b"first"[..]));
    tx.send(Bytes::from_static(b"second")).await.expect("send");
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second");
}

#[tokio::test]
async fn stop_refuses_connections() {
    let echo = spawn_echo(any_port()).await.expect("spawn");
    let addr = echo.addr();
    client().get(url(addr, "/")).send().await.expect("request");
    echo.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
