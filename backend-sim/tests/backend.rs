//! Behaviour of a single simulated backend over real sockets.

mod common;

use std::time::{Duration, Instant};

use backend_sim::{spawn, BackendSpec};
use common::{body_json, client, url};
use serde_json::json;

#[tokio::test]
async fn answers_with_id_header_and_json_body() {
    let b = spawn(BackendSpec::new("b-1")).await.expect("spawn");
    let resp = client().get(url(b.addr(), "/x?a=1")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend-id"], "b-1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = body_json(resp).await;
    assert_eq!(
        body,
        json!({"backend": "b-1", "method": "GET", "path": "/x", "query": "a=1"})
    );
    assert_eq!(b.id(), "b-1");
    assert_ne!(b.addr().port(), 0);
}

#[tokio::test]
async fn drains_request_body_and_pads_response() {
    let b = spawn(BackendSpec::new("b-pad").with_body_bytes(100))
        .await
        .expect("spawn");
    let c = client();
    // Two POSTs with bodies over one keep-alive-capable client.
    for _ in 0..2 {
        let resp = c
            .post(url(b.addr(), "/upload"))
            .body(vec![7u8; 256 * 1024])
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let body = body_json(resp).await;
        assert_eq!(body["method"], "POST");
        assert_eq!(body["query"], "");
        assert_eq!(body["pad"].as_str().map(str::len), Some(100));
    }
    assert_eq!(b.served(), 2);
}

#[tokio::test]
async fn keeps_connections_alive_across_requests_with_bodies() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = spawn(BackendSpec::new("ka")).await.expect("spawn");
    let mut conn = tokio::net::TcpStream::connect(b.addr()).await.expect("connect");
    let req = "POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let last = "GET /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    conn.write_all(format!("{req}{req}{last}").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out))
        .await
        .expect("server closes after the last request")
        .expect("read");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert_eq!(b.served(), 3);
}

#[tokio::test]
async fn answers_only_after_the_whole_body_arrived() {
    let b = spawn(BackendSpec::new("drain")).await.expect("spawn");
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let request = tokio::spawn(
        client()
            .post(url(b.addr(), "/slow-upload"))
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    tx.send(bytes::Bytes::from_static(b"part one")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!request.is_finished(), "answered before the body ended");
    tx.send(bytes::Bytes::from_static(b"part two")).await.expect("send");
    drop(tx);
    let resp = request.await.expect("task").expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(b.served(), 1);
}

#[tokio::test]
async fn delay_is_honoured_and_can_be_changed() {
    let b = spawn(BackendSpec::new("slow").with_delay(Duration::from_millis(50)))
        .await
        .expect("spawn");
    let c = client();
    let start = Instant::now();
    let resp = c.get(url(b.addr(), "/")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(50), "{:?}", start.elapsed());

    b.set_delay(Duration::from_millis(300));
    let start = Instant::now();
    c.get(url(b.addr(), "/")).send().await.expect("request");
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
}

#[tokio::test]
async fn health_is_immediate_and_toggles() {
    let b = spawn(BackendSpec::new("h").with_delay(Duration::from_secs(10)))
        .await
        .expect("spawn");
    let c = client();
    let resp = tokio::time::timeout(Duration::from_secs(5), c.get(url(b.addr(), "/health")).send())
        .await
        .expect("health must not wait for the delay")
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend-id"], "h");
    let body = body_json(resp).await;
    assert_eq!(body, json!({"status": "ok", "backend": "h"}));

    b.set_healthy(false);
    let resp = c.get(url(b.addr(), "/health")).send().await.expect("request");
    assert_eq!(resp.status(), 503);

    b.set_healthy(true);
    let resp = c.get(url(b.addr(), "/health")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(b.health_checks(), 3);
    assert_eq!(b.served(), 0);
}

#[tokio::test]
async fn set_status_changes_normal_responses_only() {
    let b = spawn(BackendSpec::new("s").with_status(201)).await.expect("spawn");
    let c = client();
    let resp = c.get(url(b.addr(), "/a")).send().await.expect("request");
    assert_eq!(resp.status(), 201);

    b.set_status(502);
    let resp = c.get(url(b.addr(), "/a")).send().await.expect("request");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-backend-id"], "s");
    let resp = c.get(url(b.addr(), "/health")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn invalid_specs_are_rejected() {
    let err = spawn(BackendSpec::new("bad").with_status(42))
        .await
        .expect_err("status 42 is invalid");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = spawn(BackendSpec::new("bad\nid"))
        .await
        .expect_err("newline in id is invalid");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn served_counts_requests() {
    let b = spawn(BackendSpec::new("count")).await.expect("spawn");
    let c = client();
    for path in ["/1", "/2", "/3"] {
        c.get(url(b.addr(), path)).send().await.expect("request");
    }
    c.post(url(b.addr(), "/health")).send().await.expect("request");
    c.get(url(b.addr(), "/health")).send().await.expect("request");
    assert_eq!(b.served(), 4, "POST /health is a normal request");
    assert_eq!(b.health_checks(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_many_slow_requests_concurrently() {
    const N: usize = 1000;
    let b = spawn(BackendSpec::new("wide").with_delay(Duration::from_millis(500)))
        .await
        .expect("spawn");
    let c = reqwest::Client::builder().no_proxy().build().expect("client");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (c, u) = (c.clone(), url(b.addr(), &format!("/r{i}")));
        tasks.spawn(async move { c.get(u).send().await.map(|r| r.status()) });
    }
    while let Some(res) = tasks.join_next().await {
        assert_eq!(res.expect("task").expect("request"), 200);
    }
    // Serially this would take 500 s; concurrently about the delay.
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    assert_eq!(b.served(), N as u64);
}
