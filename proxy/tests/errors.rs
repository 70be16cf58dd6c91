//! The proxy's own failures: the status it answers with (502 upstream failure, 504 upstream
//! timeout, 503 only when no server is eligible), the request id on those answers, the cause
//! in the request record, and start-up that fails at once when a listener cannot be bound.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::raw::{exchange, RawResponse};
use common::*;
use tokio::io::AsyncReadExt;

/// Records go to a JSONL file next to the main file, flushed quickly.
const RECORDING: &str = "storage:\n  request_log_file: requests.jsonl\n  flush_interval_ms: 20\n";

/// One GET over a fresh connection, written and read by hand.
async fn raw_get(addr: SocketAddr, path: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: errors.test\r\nConnection: close\r\n\r\n");
    exchange(addr, &req, Duration::from_secs(30)).await
}

/// Checks what every error answer of the proxy carries; returns its request id.
fn request_id_of(r: &RawResponse) -> String {
    let id = r
        .header("x-request-id")
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no X-Request-Id on a {} answer: {:?}", r.status, r.headers));
    assert!(!id.is_empty());
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body));
    assert_eq!(body["request_id"], id.as_str(), "{}", r.body);
    id
}

/// The request record with `id`, once the recorder has written it.
async fn record(proxy: &Proxy, id: &str) -> serde_json::Value {
    let path = proxy.dir.path().join("requests.jsonl");
    let find = || {
        std::fs::read_to_string(&path).ok().and_then(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["request_id"] == id)
        })
    };
    eventually(Duration::from_secs(10), || async { find().is_some() }).await;
    find().unwrap_or_else(|| panic!("no record for {id}; log:\n{}", proxy.log()))
}

/// A backend that reads the first byte of each request and closes with the rest unread, so
/// the kernel resets the connection.
async fn resetting_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut one = [0u8; 1];
            let _ = s.read(&mut one).await;
            drop(s);
        }
    });
    addr
}

/// GETs `path` through a recording proxy and checks the proxy's own answer: `status`, with
/// the request id in header and body, and a request record with that status. Returns the
/// answer, the record and its id.
async fn failed_get(proxy: &Proxy, path: &str, status: u16) -> (RawResponse, serde_json::Value, String) {
    let r = raw_get(proxy.addr, path).await;
    assert_eq!(r.status, status, "{}", r.body);
    let id = request_id_of(&r);
    let rec = record(proxy, &id).await;
    assert_eq!(rec["status"], status, "{rec}");
    (r, rec, id)
}

fn one_server(addr: SocketAddr, pool_extra: &str) -> String {
    upstreams(
        "round_robin",
        &[Server {
            id: "only",
            addr,
            weight: 1,
        }],
        pool_extra,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_resets_gets_502_with_the_cause_recorded() {
    let addr = resetting_backend().await;
    let proxy = Proxy::start_with(&one_server(addr, ""), RECORDING, &[]).await;
    // The retry finds no other server: the answer is the failure's (502), not a 503.
    let (r, rec, _) = failed_get(&proxy, "/reset", 502).await;
    let cause = rec["error"].as_str().unwrap_or_default().to_string();
    assert!(
        ["ConnectionClosed", "ReadError", "WriteError"].contains(&cause.as_str()),
        "cause {cause:?} in {rec}"
    );
    assert!(r.body.contains(&cause), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_in_a_one_server_pool_gets_502() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy = Proxy::start_with(&one_server(dead, ""), RECORDING, &[]).await;
    let (_, rec, id) = failed_get(&proxy, "/refused", 502).await;
    assert_eq!(rec["error"], "ConnectRefused", "{rec}");
    // The log line of the failed request names the cause too.
    let logged = eventually(Duration::from_secs(5), || async {
        proxy
            .log()
            .lines()
            .any(|l| l.contains(&id) && l.contains("ConnectRefused"))
    })
    .await;
    assert!(logged.is_some(), "log:\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_read_ms_gets_504() {
    let slow = spawn(BackendSpec::new("slow").with_delay(Duration::from_secs(5)))
        .await
        .expect("backend");
    let proxy = Proxy::start_with(
        &one_server(slow.addr(), "    timeouts: { read_ms: 200 }\n"),
        RECORDING,
        &[],
    )
    .await;
    let (_, rec, _) = failed_get(&proxy, "/slow", 504).await;
    assert_eq!(rec["error"], "ReadTimedout", "{rec}");
}

/// A listener whose accept queue is full: Linux drops further SYNs, so connecting to it
/// times out. Returns the address and the connections that fill the queue.
async fn unresponsive_listener() -> (SocketAddr, tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let l = sock.listen(1).expect("listen");
    let addr = l.local_addr().expect("addr");
    let mut fill = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fill.push(s),
            _ => return (addr, l, fill),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_gets_504() {
    let (addr, _listener, _fill) = unresponsive_listener().await;
    let proxy = Proxy::start_with(&one_server(addr, "    timeouts: { connect_ms: 200 }\n"), RECORDING, &[]).await;
    let (_, rec, _) = failed_get(&proxy, "/stuck", 504).await;
    assert_eq!(rec["error"], "ConnectTimedout", "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_an_eligible_server_gets_503() {
    // Actively checked against a dead port: the server never passes, so it is never eligible
    // and no attempt is made. (Panic routing is off: with it, a server that failed its checks
    // is tried anyway once none is healthy, and the refused connection is a 502.)
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let extra = format!("{FAST_HC}    panic_threshold_percent: 0\n");
    let proxy = Proxy::start_with(&one_server(dead, &extra), RECORDING, &[]).await;
    let (_, rec, _) = failed_get(&proxy, "/none", 503).await;
    assert_eq!(rec["error"], "NoEligibleBackend", "{rec}");
    assert_eq!(rec["retries"], 0);
}

/// Runs the proxy on `main`, which must exit at once with status 1; returns its stderr.
fn start_fails(main: &Path) -> String {
    let o = run_expecting_exit(main, &[], Duration::from_secs(10));
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "still running or wrong status; stderr:\n{err}"
    );
    err
}

/// Writes a main file (and a valid upstreams file) into `dir`.
fn write_conf(dir: &Path, main: &str) -> std::path::PathBuf {
    let dead = free_port();
    std::fs::write(
        dir.join("upstreams.yaml"),
        format!("pools:\n  api:\n    servers: [ {{ id: a, address: \"127.0.0.1:{dead}\" }} ]\nroutes:\n  - {{ pool: api }}\n"),
    )
    .expect("write upstreams");
    let path = dir.join("neurabalancer.yaml");
    std::fs::write(
        &path,
        format!("upstreams_file: upstreams.yaml\ntelemetry: {{ log_format: text }}\n{main}"),
    )
    .expect("write main");
    path
}

/// Runs `run --config main` and waits for it to exit (it is killed after `limit`).
fn run_expecting_exit(main: &Path, env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .arg("--config")
        .arg(main)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still running after the limit: the test fails on its exit status.
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_proxy_port_held_by_another_socket_ends_start_up() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("upgrade.sock");
    let main = write_conf(
        dir.path(),
        &format!(
            "listen: {taken}\nadmin: {{ listen: \"127.0.0.1:{}\" }}\nserver: {{ upgrade_sock: {sock:?} }}\n",
            free_port()
        ),
    );
    let err = start_fails(&main);
    assert!(err.contains(&taken.to_string()), "the address: {err}");
    assert!(err.contains("Address already in use"), "the OS error: {err}");
    drop(held);
}

/// The admin API on all interfaces and the proxy on loopback, same port: one of Pingora's
/// service threads used to fail to bind while the process went on half-alive.
#[test]
fn overlapping_listeners_end_start_up() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("upgrade.sock");
    let main = write_conf(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: \"0.0.0.0:{port}\" }}\nserver: {{ upgrade_sock: {sock:?} }}\n"
        ),
    );
    let err = start_fails(&main);
    assert!(err.contains("admin.listen: overlaps"), "{err}");
}

/// Without `server.upgrade_sock`, the socket goes into `$XDG_RUNTIME_DIR/neurabalancer`,
/// which must be private: an open one is refused at start.
#[test]
fn an_open_runtime_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("neurabalancer");
    std::fs::create_dir(&runtime).expect("mkdir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let main = write_conf(
        dir.path(),
        &format!(
            "listen: \"127.0.0.1:{}\"\nadmin: {{ listen: \"127.0.0.1:{}\" }}\n",
            free_port(),
            free_port()
        ),
    );
    let xdg = dir.path().display().to_string();
    let o = run_expecting_exit(&main, &[("XDG_RUNTIME_DIR", &xdg)], Duration::from_secs(10));
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "still running or wrong status; stderr:\n{err}"
    );
    assert!(
        err.contains(&runtime.display().to_string()) && err.contains("mode 777"),
        "{err}"
    );
}
