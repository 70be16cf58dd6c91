//! Stop (crash) and restart of a backend, and cleanup on drop.

mod common;

use std::time::Duration;

use backend_sim::{spawn, BackendSpec};
use common::{client, url};
use tokio::net::TcpStream;

async fn assert_refused(addr: std::net::SocketAddr) {
    let err = TcpStream::connect(addr).await.expect_err("connect must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn stop_breaks_in_flight_requests_and_refuses_connections() {
    let b = spawn(BackendSpec::new("crashy").with_delay(Duration::from_secs(30)))
        .await
        .expect("spawn");
    let addr = b.addr();
    let in_flight = tokio::spawn(client().get(url(addr, "/slow")).send());
    // Also hold an idle keep-alive-style connection open.
    let idle = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;

    b.stop().await;
    assert_refused(addr).await;
    let res = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("in-flight request must end promptly")
        .expect("task");
    assert!(res.is_err(), "in-flight request must fail: {res:?}");
    // The idle connection was closed by the server: reading gives EOF or reset.
    let mut buf = [0u8; 1];
    idle.readable().await.expect("readable");
    assert!(matches!(idle.try_read(&mut buf), Ok(0) | Err(_)));
    assert_eq!(b.served(), 0);

    b.stop().await; // idempotent

    // The server closed those connections itself, so they linger in
    // TIME_WAIT; restarting on the same port must work regardless.
    b.restart().await.expect("restart after crash");
    b.set_delay(Duration::ZERO);
    let resp = client().get(url(addr, "/")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn restart_serves_again_on_same_address_with_same_settings() {
    let b = spawn(BackendSpec::new("phoenix")).await.expect("spawn");
    let addr = b.addr();
    let c = client();
    c.get(url(addr, "/")).send().await.expect("first life");
    b.set_status(418);

    b.stop().await;
    assert_refused(addr).await;
    b.restart().await.expect("restart");
    assert_eq!(b.addr(), addr);
    let resp = c.get(url(addr, "/again")).send().await.expect("second life");
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["x-backend-id"], "phoenix");
    assert_eq!(b.served(), 2);

    b.restart().await.expect("restart while running is a no-op");
    assert!(b.is_running().await);
}

#[tokio::test]
async fn dropping_last_handle_stops_backend() {
    let b = spawn(BackendSpec::new("gone")).await.expect("spawn");
    let addr = b.addr();
    let clone = b.clone();
    drop(b);
    client()
        .get(url(addr, "/"))
        .send()
        .await
        .expect("a clone keeps it alive");
    drop(clone);
    // Shutdown after drop is asynchronous; it must complete promptly.
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("backend still accepting after its last handle was dropped");
}
