//! The client-facing edge, byte for byte over raw sockets: which forwarding headers and
//! request ids a backend receives from trusted and untrusted peers, the path it receives
//! and is routed by, and how long a slow or silent client may hold a connection.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{exchange, RawResponse};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bounds: the timeouts under test are a few hundred ms, the machine is shared.
const CLOSE_BOUND: Duration = Duration::from_secs(5);
const SLOT_BOUND: Duration = Duration::from_secs(15);

/// What the echo backend saw, from the headers it answers with.
trait Echo {
    /// What the echo backend received as the request target.
    fn echo_uri(&self) -> &str;
    /// The request headers the echo backend received, name -> list of values.
    fn echo_headers(&self) -> serde_json::Value;
}

impl Echo for RawResponse {
    fn echo_uri(&self) -> &str {
        self.header("x-echo-uri").expect("reached the echo backend")
    }

    fn echo_headers(&self) -> serde_json::Value {
        serde_json::from_str(self.header("x-echo-headers").expect("x-echo-headers")).expect("json")
    }
}

/// Sends `head` (request line and headers, without the final blank line) with
/// `Connection: close` and reads the whole answer.
async fn raw(addr: SocketAddr, head: &str) -> RawResponse {
    exchange(
        addr,
        &format!("{head}\r\nConnection: close\r\n\r\n"),
        Duration::from_secs(10),
    )
    .await
}

async fn get(addr: SocketAddr, path: &str, extra: &str) -> RawResponse {
    raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: shop.example{extra}")).await
}

/// Waits until the peer closes the connection (EOF or reset); false if still open at `bound`.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let r = tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.is_ok()
}

/// One echo backend behind a proxy with `routes_yaml` and `http_yaml` appended to the main file.
async fn echo_behind(routes_yaml: &str, http_yaml: &str) -> (backend_sim::EchoHandle, Proxy) {
    let echo = spawn_echo("127.0.0.1:0".parse().expect("addr")).await.expect("echo");
    let yaml = format!(
        "pools:\n  api:\n    servers: [ {{ id: echo, address: \"{}\" }} ]\nroutes:\n{routes_yaml}",
        echo.addr()
    );
    let proxy = Proxy::start_with(&yaml, http_yaml, &[]).await;
    (echo, proxy)
}

const ROUTE_ALL: &str = "  - { host: \"*\", path_prefix: /, pool: api }\n";
const ROUTE_API: &str = "  - { host: \"*\", path_prefix: /api/, pool: api }\n";

// Defect 4: forwarding headers and request ids.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_cannot_forge_forwarding_headers_or_request_ids() {
    let (_echo, proxy) = echo_behind(ROUTE_ALL, "").await;
    let r = get(
        proxy.addr,
        "/x",
        "\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nX-Request-Id: client-42",
    )
    .await;
    assert_eq!(r.status, 200);
    let h = r.echo_headers();
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{h}");
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["shop.example"]), "{h}");
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]), "{h}");
    let sent = h["x-request-id"][0].as_str().expect("request id upstream");
    assert_ne!(sent, "client-42", "a client's id is not believed by default");
    assert_eq!(sent.len(), 36, "generated ids are UUIDs: {sent}");
    assert_eq!(
        r.header("x-request-id"),
        Some(sent),
        "the id used is echoed to the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_forwarding_headers_are_kept_and_appended() {
    let (_echo, proxy) = echo_behind(ROUTE_ALL, "http:\n  trusted_proxies: [10.0.0.0/8, 127.0.0.1]\n").await;
    let r = get(
        proxy.addr,
        "/x",
        "\r\nX-Forwarded-For: 6.6.6.6, 1.1.1.1\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: www.example\r\nX-Forwarded-Proto: https\r\nX-Request-Id: edge-7",
    )
    .await;
    assert_eq!(r.status, 200);
    let h = r.echo_headers();
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["6.6.6.6, 1.1.1.1, 10.0.0.9, 127.0.0.1"]),
        "every line joined in order, then the peer: {h}"
    );
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["www.example"]), "{h}");
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]), "{h}");
    assert_eq!(h["x-request-id"], serde_json::json!(["edge-7"]), "{h}");
    assert_eq!(r.header("x-request-id"), Some("edge-7"));
    // Absent ones are set from this hop.
    let r = get(proxy.addr, "/x", "").await;
    let h = r.echo_headers();
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{h}");
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["shop.example"]), "{h}");
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_keep_keeps_a_valid_client_id_from_any_peer() {
    let (_echo, proxy) = echo_behind(ROUTE_ALL, "http:\n  request_id: keep\n").await;
    let r = get(proxy.addr, "/x", "\r\nX-Request-Id: client-42").await;
    assert_eq!(r.echo_headers()["x-request-id"], serde_json::json!(["client-42"]));
    assert_eq!(r.header("x-request-id"), Some("client-42"));
    let r = get(proxy.addr, "/x", "\r\nX-Request-Id: has space").await;
    let id = r.header("x-request-id").expect("id");
    assert_eq!(id.len(), 36, "an invalid id is replaced: {id}");
}

/// The client address derived by the trust rule is the one the proxy logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failed_request_log_names_the_real_client() {
    let dead = free_port();
    let yaml = format!(
        "pools:\n  api:\n    servers: [ {{ id: gone, address: \"127.0.0.1:{dead}\" }} ]\n    max_retries: 0\nroutes:\n{ROUTE_ALL}"
    );
    let proxy = Proxy::start_with(
        &yaml,
        "http:\n  trusted_proxies: [127.0.0.0/8]\n",
        &[("RUST_LOG", "info,neurabalancer::proxy=debug")],
    )
    .await;
    let r = get(proxy.addr, "/x", "\r\nX-Forwarded-For: 198.51.100.7, 127.0.0.2").await;
    assert_eq!(r.status, 502);
    let found = eventually(CLOSE_BOUND, || {
        let log = proxy.log();
        async move {
            log.lines()
                .any(|l| l.contains("request failed") && l.contains("client=198.51.100.7"))
        }
    })
    .await;
    assert!(found.is_some(), "log:\n{}", proxy.log());
}

// Defect 5: the path routed and forwarded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_escapes_cannot_leave_a_route() {
    let (_echo, proxy) = echo_behind(ROUTE_API, "").await;
    for p in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/./../admin",
        "/api/%2E%2E/%2e%2e/admin",
    ] {
        let r = get(proxy.addr, p, "").await;
        assert_eq!(r.status, 404, "{p} is /admin, which no route serves");
        assert!(r.header("x-echo-uri").is_none(), "{p} reached the backend");
    }
    // Escaped slashes are rejected by default; so are broken escapes.
    for p in [
        "/api/..%2fadmin",
        "/api/..%2Fadmin",
        "/api/..%5cadmin",
        "/api/%zz",
        "/api/x%4",
    ] {
        let r = get(proxy.addr, p, "").await;
        assert_eq!(r.status, 400, "{p}");
        assert!(r.header("x-request-id").is_some_and(|id| id.len() == 36), "{p}");
    }
    // The normalised path (query untouched) is what the backend receives.
    let r = get(proxy.addr, "/api/v1/./x/../%7Euser/%61b%2d?q=/../%2e%2e&r=%zz", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo_uri(), "/api/v1/~user/ab-?q=/../%2e%2e&r=%zz");
    let r = get(proxy.addr, "/api//x/%c3%a9", "").await;
    assert_eq!(
        r.echo_uri(),
        "/api//x/%C3%A9",
        "slashes kept unless merged; escapes in upper case"
    );
    // Absolute-form targets are normalised by their path.
    let r = raw(
        proxy.addr,
        "GET http://shop.example/api/a/../b?x=1 HTTP/1.1\r\nHost: shop.example",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo_uri(), "/api/b?x=1");
    // `OPTIONS *` is not a path to normalise: no route serves it, and it is no 400.
    let r = raw(proxy.addr, "OPTIONS * HTTP/1.1\r\nHost: shop.example").await;
    assert_eq!(r.status, 404);
    // The 400s count like the 404s: no pool, no backend.
    let m = proxy.metrics().await;
    let line = m
        .lines()
        .find(|l| l.starts_with("neurabalancer_http_requests_total") && l.contains("status=\"400\""))
        .unwrap_or_else(|| panic!("no 400 in metrics:\n{m}"));
    assert!(line.contains("pool=\"none\""), "{line}");
    assert_eq!(line.split_whitespace().last(), Some("5"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_slashes_can_be_kept_opaque_or_decoded() {
    let (_echo, keep) = echo_behind(ROUTE_API, "http:\n  escaped_slashes: keep\n").await;
    let r = get(keep.addr, "/api/..%2fadmin", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo_uri(), "/api/..%2Fadmin", "kept encoded: one segment, not a `..`");
    let r = get(keep.addr, "/api/a%5Cb", "").await;
    assert_eq!(r.echo_uri(), "/api/a%5Cb");
    drop(keep);

    let (_echo, decode) = echo_behind(ROUTE_API, "http:\n  escaped_slashes: decode\n  merge_slashes: true\n").await;
    let r = get(decode.addr, "/api/..%2fadmin", "").await;
    assert_eq!(r.status, 404, "decoded, `/api/../admin` is `/admin`");
    let r = get(decode.addr, "/api/a%2Fb%5cc//d", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo_uri(), "/api/a/b/c/d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalize_path_false_routes_and_forwards_the_raw_path() {
    let (_echo, proxy) = echo_behind(ROUTE_API, "http:\n  normalize_path: false\n").await;
    let r = get(proxy.addr, "/api/../admin", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo_uri(), "/api/../admin");
}

// Defect 9g: client-side timeouts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_header_is_disconnected() {
    let (_echo, proxy) = echo_behind(ROUTE_ALL, "http:\n  client_timeouts: { header_read_ms: 300 }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: shop.exa").await.expect("write");
    assert!(
        closed_within(&mut s, CLOSE_BOUND).await,
        "half a header held the connection"
    );
    // A connection that sends nothing at all is closed too.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    assert!(closed_within(&mut s, CLOSE_BOUND).await, "a silent connection was held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed() {
    let (_echo, proxy) = echo_behind(ROUTE_ALL, "http:\n  client_timeouts: { keepalive_ms: 300 }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .expect("write");
    // The echo's answer to a GET has an empty body (chunked or with a zero length).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !answer_complete(&buf) {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("answer");
    assert_eq!(RawResponse::parse(&buf).status, 200);
    assert!(
        closed_within(&mut s, CLOSE_BOUND).await,
        "an idle keep-alive connection was held"
    );
}

/// Whether `buf` holds a whole answer with an empty body.
fn answer_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf).to_ascii_lowercase();
    text.contains("\r\n\r\n") && (text.contains("\r\ncontent-length: 0\r\n") || text.ends_with("\r\n0\r\n\r\n"))
}

async fn inflight(proxy: &Proxy, id: &str) -> u64 {
    proxy
        .server(id)
        .await
        .and_then(|s| s["inflight"].as_u64())
        .expect("server listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_frees_its_backend_slot() {
    // Far more than the socket buffers between proxy and client hold.
    let big = spawn(BackendSpec::new("big").with_body_bytes(64 << 20))
        .await
        .expect("backend");
    let yaml = upstreams("round_robin", &servers(std::slice::from_ref(&big)), "");
    let proxy = Proxy::start_with(&yaml, "http:\n  client_timeouts: { send_ms: 300 }\n", &[]).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .expect("write");
    let busy = eventually(SLOT_BOUND, || async { inflight(&proxy, "big").await == 1 }).await;
    assert!(busy.is_some(), "the request never held the backend");
    let freed = eventually(SLOT_BOUND, || async { inflight(&proxy, "big").await == 0 }).await;
    assert!(freed.is_some(), "a client that never reads holds the backend slot");
    assert!(closed_within(&mut s, SLOT_BOUND).await, "the connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_in_its_body_frees_its_backend_slot() {
    let (_echo, proxy) = echo_behind(ROUTE_ALL, "http:\n  client_timeouts: { body_read_ms: 300 }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"POST /x HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100\r\n\r\nonly ten..")
        .await
        .expect("write");
    let busy = eventually(SLOT_BOUND, || async { inflight(&proxy, "echo").await == 1 }).await;
    assert!(busy.is_some(), "the request never reached the backend");
    let freed = eventually(SLOT_BOUND, || async { inflight(&proxy, "echo").await == 0 }).await;
    assert!(
        freed.is_some(),
        "a client that stops sending its body holds the backend slot"
    );
    assert!(closed_within(&mut s, CLOSE_BOUND).await, "the connection stayed open");
}
