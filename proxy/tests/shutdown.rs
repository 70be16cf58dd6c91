//! SIGTERM: stop accepting, let in-flight requests finish, exit 0.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_100_in_flight_requests_finish_then_exits_0() {
    let b = backends(2, Duration::from_millis(1500)).await;
    let mut proxy = Proxy::start(&upstreams("least_connections", &servers(&b), "")).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("client");
    let mut reqs = Vec::new();
    for _ in 0..100 {
        let c = client.clone();
        let url = proxy.url("/slow");
        reqs.push(tokio::spawn(async move {
            match c.get(url).send().await {
                Ok(r) => {
                    let st = r.status().as_u16();
                    r.bytes().await.map(|_| st).unwrap_or(0)
                }
                Err(_) => 0,
            }
        }));
    }
    // Wait until all 100 are at the backends.
    let inflight = eventually(Duration::from_secs(5), || async {
        let s = proxy.servers().await;
        s.iter().map(|x| x["inflight"].as_u64().unwrap_or(0)).sum::<u64>() == 100
    })
    .await;
    assert!(inflight.is_some(), "100 requests in flight");
    let t = Instant::now();
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "no new connections after SIGTERM"
    );
    let mut ok = 0;
    for r in reqs {
        if r.await.expect("task") == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 100, "every in-flight request completed with 200");
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "exited once drained, not after the whole grace period: {:?}",
        t.elapsed()
    );
}

/// `run --upgrade` + SIGQUIT: the new process takes over the listeners, the old one drains
/// and exits, and no request fails in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_the_listeners_without_failing_a_request() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;

    let b = backends(2, Duration::from_millis(2)).await;
    let mut old = Proxy::start(&upstreams("round_robin", &servers(&b), "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = load_opts(old.url("/"), 4, stop.clone(), Some(retried.clone()));
    let _new = old.spawn_upgrade();
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let status = old
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("old process exited");
    assert!(status.success(), "old exit status {status:?}");
    // The new process serves the same ports on its own now.
    let before = b[0].served() + b[1].served();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    let results = run.await.expect("load");
    let after = b[0].served() + b[1].served();
    assert!(
        after > before + 50,
        "traffic flowed after the old process left ({before} -> {after})"
    );
    assert_eq!(old.admin_get("/health/live").await.0, 200, "admin port handed over too");
    assert_all_ok(&results);
    // While draining, responses close their connections, so clients seldom meet a socket
    // closed under them; each such retry is a GET the old process never read.
    let retried = retried.load(Relaxed);
    eprintln!(
        "upgrade: {} requests, {retried} retried after a closed keep-alive connection",
        results.len()
    );
    assert!(retried <= 4, "{retried} retries");
}
