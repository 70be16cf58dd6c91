//! Active and passive health: a backend killed under load costs no client request, is
//! reported unhealthy within two check intervals and healthy again within `rise` intervals.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const INTERVAL_MS: u64 = 200;

fn hc(rise: u32, fall: u32) -> String {
    format!("    health_check: {{ path: /health, interval_ms: {INTERVAL_MS}, timeout_ms: 150, rise: {rise}, fall: {fall} }}\n")
}

async fn healthy(proxy: &Proxy, id: &str) -> bool {
    proxy.server(id).await.is_some_and(|s| s["healthy"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_fails_no_request() {
    let b = backends(3, Duration::from_millis(5)).await;
    let proxy = Proxy::start(&upstreams("round_robin", &servers(&b), &hc(2, 2))).await;
    proxy.wait_ready().await;
    assert!(eventually(Duration::from_secs(5), || async {
        let mut all = true;
        for x in &b {
            all &= healthy(&proxy, x.id()).await;
        }
        all
    })
    .await
    .is_some());

    let stop = Arc::new(AtomicBool::new(false));
    let run = load(proxy.url("/"), 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    b[1].stop().await;
    let down_after = eventually(Duration::from_secs(3), || healthy_not(&proxy, "backend-2"))
        .await
        .expect("reported unhealthy");
    tokio::time::sleep(Duration::from_millis(500)).await;
    b[1].restart().await.expect("restart");
    let up_after = eventually(Duration::from_secs(3), || healthy(&proxy, "backend-2"))
        .await
        .expect("reported healthy again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    let results = run.await.expect("load");

    assert_all_ok(&results);
    assert!(results.len() > 500, "load ran: {}", results.len());
    let counts = tally(&results);
    eprintln!(
        "kill under load: {} requests, 0 failed; unhealthy after {down_after:?}, healthy again after {up_after:?} ({counts:?})",
        results.len()
    );
    assert!(counts.get("backend-2").copied().unwrap_or(0) > 0);
    // Two intervals (fall = 2) plus the admin poll and one probe timeout of slack.
    let bound = Duration::from_millis(2 * INTERVAL_MS + 250);
    assert!(down_after <= bound, "unhealthy after {down_after:?} > {bound:?}");
    assert!(up_after <= bound, "healthy after {up_after:?} > {bound:?} (rise = 2)");
}

async fn healthy_not(proxy: &Proxy, id: &str) -> bool {
    proxy.server(id).await.is_some_and(|s| s["healthy"] == false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_backend_health() {
    let b = backends(2, Duration::ZERO).await;
    // Without panic routing, so that "no healthy server" means a 503 (the default routes
    // across unhealthy servers instead: see tests/pools.rs).
    let extra = format!("{}    panic_threshold_percent: 0\n", hc(1, 1));
    let proxy = Proxy::start(&upstreams("p2c_ewma", &servers(&b), &extra)).await;
    proxy.wait_ready().await;
    for x in &b {
        x.set_healthy(false);
    }
    assert!(eventually(Duration::from_secs(3), || async {
        proxy.admin_get("/health/ready").await.0 == 503
    })
    .await
    .is_some());
    let (_, body) = proxy.admin_get("/health/ready").await;
    assert!(body.contains("no healthy backend in pool(s): api"), "{body}");
    assert_eq!(proxy.get("/").await.0, 503, "no healthy backend: 503");
    b[0].set_healthy(true);
    assert!(eventually(Duration::from_secs(3), || async {
        proxy.admin_get("/health/ready").await.0 == 200
    })
    .await
    .is_some());
    assert_eq!(proxy.get("/").await, (200, "backend-1".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_5xx_eject_a_backend_for_a_while() {
    let b = backends(2, Duration::ZERO).await;
    b[1].set_status(503);
    let extra = "    outlier_detection: { consecutive_5xx: 3, base_ejection_ms: 60000, max_ejection_ms: 60000 }\n";
    let proxy = Proxy::start(&upstreams("round_robin", &servers(&b), extra)).await;
    let mut from_bad = 0;
    for _ in 0..40 {
        let (st, id) = proxy.get("/").await;
        if id == "backend-2" {
            from_bad += 1;
            assert_eq!(st, 503, "a 5xx is passed through, not hidden");
        }
    }
    assert_eq!(from_bad, 3, "ejected after three consecutive 5xx");
    let s = proxy.server("backend-2").await.expect("listed");
    assert_eq!(s["ejected"], true, "{s}");
    assert!(proxy
        .metrics()
        .await
        .contains("neurabalancer_backend_ejections_total{backend=\"backend-2\",pool=\"api\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_servers_and_metrics_after_traffic() {
    let b = backends(2, Duration::from_millis(1)).await;
    let proxy = Proxy::start(&upstreams("least_connections", &servers(&b), "")).await;
    for _ in 0..20 {
        assert_eq!(proxy.get("/x/y?secret=1").await.0, 200);
    }
    assert_eq!(
        proxy.admin_get("/health/live").await,
        (200, "{\n  \"status\": \"ok\"\n}".to_string())
    );
    let servers = proxy.servers().await;
    assert_eq!(servers.len(), 2);
    for s in &servers {
        for field in [
            "pool",
            "id",
            "address",
            "weight",
            "healthy",
            "inflight",
            "ewma_latency_ms",
            "expected_ms",
            "error_rate",
            "ml_score",
        ] {
            assert!(s.get(field).is_some(), "{field} missing in {s}");
        }
        assert_eq!(s["pool"], "api");
        let est = s["ewma_latency_ms"].as_f64().expect("latency known after traffic");
        assert!(est > 0.0);
        // No failures: what a request is expected to cost is its latency.
        assert_eq!(s["expected_ms"].as_f64(), Some(est), "{s}");
    }
    let m = proxy.metrics().await;
    for name in [
        "neurabalancer_http_requests_total{backend=\"backend-1\",method=\"GET\",pool=\"api\",status=\"200\"}",
        "neurabalancer_http_request_duration_seconds_bucket{backend=\"backend-2\",pool=\"api\",le=",
        "neurabalancer_backend_inflight{backend=\"backend-1\",pool=\"api\"} 0",
        "neurabalancer_backend_healthy{backend=\"backend-2\",pool=\"api\"} 1",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    assert!(
        m.contains("# TYPE neurabalancer_upstream_retries_total counter")
            || !m.contains("neurabalancer_upstream_retries_total{")
    );
    assert!(!m.contains("secret"), "raw paths never become label values");
    assert_eq!(proxy.admin_get("/nope").await.0, 404);
    assert_eq!(
        proxy
            .client
            .get(proxy.admin_url("/api/v1/reload"))
            .send()
            .await
            .expect("r")
            .status(),
        405
    );
}
