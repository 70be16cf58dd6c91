//! Requests and responses pass through unchanged and streamed, with hop-by-hop headers
//! removed and the forwarding headers set.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::StreamExt;

fn echo_headers(r: &reqwest::Response) -> serde_json::Value {
    let raw = r
        .headers()
        .get("x-echo-headers")
        .expect("x-echo-headers")
        .to_str()
        .expect("ascii");
    serde_json::from_str(raw).expect("json")
}

async fn echo_proxy() -> (backend_sim::EchoHandle, Proxy) {
    let echo = spawn_echo("127.0.0.1:0".parse().expect("addr")).await.expect("echo");
    let yaml = upstreams(
        "round_robin",
        &[Server {
            id: "echo",
            addr: echo.addr(),
            weight: 1,
        }],
        "",
    );
    let proxy = Proxy::start(&yaml).await;
    (echo, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_path_query_headers_and_a_5mib_body_pass_both_ways() {
    let (_echo, proxy) = echo_proxy().await;
    let body: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let r = proxy
        .client
        .post(proxy.url("/some/path%20x?q=1&b=two"))
        .header("x-custom", "alpha")
        .header("x-multi", "one")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must-not-pass")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "10.1.2.3")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-method"], "POST");
    assert_eq!(r.headers()["x-echo-uri"], "/some/path%20x?q=1&b=two");
    let h = echo_headers(&r);
    assert_eq!(h["x-custom"], serde_json::json!(["alpha"]));
    assert_eq!(h["x-multi"], serde_json::json!(["one"]));
    for hop in ["x-hop", "keep-alive", "te", "proxy-authorization", "connection"] {
        assert!(h.get(hop).is_none(), "{hop} reached the backend: {h}");
    }
    // The client is no trusted proxy: its X-Forwarded-For is replaced (see tests/edge.rs).
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    let sent_id = h["x-request-id"][0]
        .as_str()
        .expect("request id sent upstream")
        .to_string();
    assert_eq!(sent_id.len(), 36, "generated ids are UUIDs: {sent_id}");
    assert_eq!(
        r.headers()["x-request-id"].to_str().expect("ascii"),
        sent_id,
        "the id is echoed to the client"
    );
    let got = r.bytes().await.expect("body");
    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "body changed in transit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_pass_and_a_client_request_id_is_replaced() {
    let (_echo, proxy) = echo_proxy().await;
    for m in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).expect("method");
        let r = proxy
            .client
            .request(method, proxy.url("/m?x=%2F"))
            .header("x-request-id", "client-id-42")
            .body(if m == "GET" { "" } else { "payload" })
            .send()
            .await
            .expect("response");
        assert_eq!(r.status(), 200, "{m}");
        assert_eq!(r.headers()["x-echo-method"], m);
        assert_eq!(r.headers()["x-echo-uri"], "/m?x=%2F");
        // Kept only from trusted proxies or with `http.request_id: keep` (tests/edge.rs).
        let id = r.headers()["x-request-id"].to_str().expect("ascii").to_string();
        assert_ne!(id, "client-id-42");
        let h = echo_headers(&r);
        assert_eq!(h["x-request-id"], serde_json::json!([id]));
        assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
        let body = r.text().await.expect("body");
        assert_eq!(body, if m == "GET" { "" } else { "payload" }, "{m}");
    }
}

/// The response starts before the request body has finished: nothing buffers the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_without_whole_body_buffering() {
    let (_echo, proxy) = echo_proxy().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = tokio_stream_from(rx);
    let first = Bytes::from(vec![b'a'; 256 * 1024]);
    tx.send(Ok(first.clone())).await.expect("send first chunk");
    let req = proxy
        .client
        .post(proxy.url("/stream"))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let resp = tokio::time::timeout(Duration::from_secs(5), req)
        .await
        .expect("response headers arrived while the request body was still open")
        .expect("response");
    let mut body = resp.bytes_stream();
    let mut got = 0usize;
    while got < first.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("echoed bytes arrived while the request body was still open")
            .expect("a chunk")
            .expect("chunk ok");
        got += chunk.len();
    }
    tx.send(Ok(Bytes::from_static(b"tail"))).await.expect("send tail");
    drop(tx);
    let mut rest = 0;
    while let Some(c) = body.next().await {
        rest += c.expect("chunk").len();
    }
    assert_eq!(got + rest, first.len() + 4);
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_requests_get_404_and_refused_connections_502() {
    let dead = free_port();
    let yaml = format!(
        "pools:\n  api:\n    servers: [ {{ id: gone, address: \"127.0.0.1:{dead}\" }} ]\n    max_retries: 0\nroutes:\n  - {{ host: api.example, path_prefix: /, pool: api }}\n"
    );
    let proxy = Proxy::start(&yaml).await;
    let r = proxy
        .client
        .get(proxy.url("/x"))
        .header("host", "other.example")
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("x-request-id").is_some());
    let r = proxy
        .client
        .get(proxy.url("/x"))
        .header("host", "api.example")
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), 502, "connection refused by the only backend");
}
