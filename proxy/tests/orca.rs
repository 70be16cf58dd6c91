//! `orca_least_delay` through the running proxy, against simulated backends that send ORCA
//! load reports (`endpoint-load-metrics`): the proxy feeds each report to the backend's load,
//! and the strategy routes away from backends whose reported queue is long.
//!
//! The assertions compare shares of requests, never times, so that a busy machine changes
//! how many requests a run sends but not what it shows.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_sim::model::{Dist, Profile};
use backend_sim::spawn_profile;
use common::*;

const STRATEGY: &str = "orca_least_delay";

/// A backend that reports its load (`orca: true`) with `slots` slots and a constant service
/// time.
async fn reporting(id: &str, slots: u32, service_ms: f64) -> BackendHandle {
    let mut p = Profile::new(id, Dist::Constant { ms: service_ms });
    p.slots = slots;
    assert!(p.orca, "profiles report their load by default");
    spawn_profile(p, Instant::now()).await.expect("backend")
}

fn share(results: &[(u16, String)], id: &str) -> f64 {
    tally(results).get(id).copied().unwrap_or(0) as f64 / results.len().max(1) as f64
}

/// A backend with one slot and a slow service builds a queue under load; round robin would
/// still send it a third of the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_with_one_slot_gets_far_less_than_round_robin_would_send() {
    let b = vec![
        reporting("fast-1", 8, 5.0).await,
        reporting("fast-2", 8, 5.0).await,
        reporting("narrow", 1, 50.0).await,
    ];
    let proxy = Proxy::start(&upstreams(STRATEGY, &servers(&b), "")).await;
    let results = run_for(proxy.url("/"), 8, 3).await;
    assert_all_ok(&results);
    let narrow = share(&results, "narrow");
    eprintln!(
        "{STRATEGY}: {} requests, narrow backend share {narrow:.3} ({:?})",
        results.len(),
        tally(&results)
    );
    assert!(results.len() > 200, "enough load: {}", results.len());
    assert!(narrow < 0.1, "narrow backend share {narrow:.3}, round robin's is 0.333");
}

/// The reports themselves steer: a backend kept busy by other clients answers our few
/// requests faster than the others, so latency alone favours it (with its reports turned
/// off it took about 60 % of the requests), but it reports the queue those clients built,
/// and that queue costs more than the others' slower service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_queue_steers_traffic_away_where_latency_alone_would_not() {
    // 100 ms at the quiet backends; at the shared one, 5 ms behind about 7 others (~40 ms),
    // which with its reported queue costs about 40 ms × 8.
    let b = vec![
        reporting("quiet-1", 16, 100.0).await,
        reporting("quiet-2", 16, 100.0).await,
        reporting("shared", 1, 5.0).await,
    ];
    let proxy = Proxy::start(&upstreams(STRATEGY, &servers(&b), "")).await;
    // `neurabalancer check` accepts the strategy too.
    let check = Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(&proxy.main_path)
        .output()
        .expect("run check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let stop = Arc::new(AtomicBool::new(false));
    let others = load(format!("http://{}/", b[2].addr()), 8, stop.clone());
    // Let the other clients' queue form before our first request.
    let formed = eventually(Duration::from_secs(5), || async { b[2].stats().queued >= 4 }).await;
    assert!(formed.is_some(), "no queue at the shared backend: {:?}", b[2].stats());
    let results = run_for(proxy.url("/"), 2, 3).await;
    stop.store(true, Relaxed);
    assert_all_ok(&others.await.expect("other clients"));
    assert_all_ok(&results);
    let shared = share(&results, "shared");
    eprintln!(
        "{STRATEGY}: {} requests, shared backend share {shared:.3} ({:?})",
        results.len(),
        tally(&results)
    );
    assert!(results.len() >= 20, "enough requests: {}", results.len());
    // Its report is read at each answer and expires after a second, so it is tried again
    // about once a second (and once at the start, before any backend has answered).
    assert!(shared < 0.2, "shared backend share {shared:.3}, round robin's is 0.333");
}
