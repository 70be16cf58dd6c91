//! How each strategy spreads real requests through the running proxy.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_sim::model::{Dist, Profile};
use backend_sim::spawn_profile;
use common::*;

async fn sequential(proxy: &Proxy, n: usize) -> Vec<(u16, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(proxy.get("/").await);
    }
    assert!(
        out.iter().all(|(s, _)| *s == 200),
        "failures: {:?}",
        out.iter().filter(|r| r.0 != 200).take(3).collect::<Vec<_>>()
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let b = backends(3, Duration::ZERO).await;
    let proxy = Proxy::start(&upstreams("round_robin", &servers(&b), "")).await;
    let counts = tally(&sequential(&proxy, 300).await);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!((98..=102).contains(n), "{id}: {n} of 300 ({counts:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights_and_interleaves() {
    let b = backends(3, Duration::ZERO).await;
    let mut s = servers(&b);
    for (i, sv) in s.iter_mut().enumerate() {
        sv.weight = i as u32 + 1;
    }
    let proxy = Proxy::start(&upstreams("weighted_round_robin", &s, "")).await;
    let results = sequential(&proxy, 600).await;
    let counts = tally(&results);
    for (i, id) in ["backend-1", "backend-2", "backend-3"].iter().enumerate() {
        let share = counts[*id] as f64 / 600.0;
        let want = (i + 1) as f64 / 6.0;
        assert!(
            (share - want).abs() <= 0.03,
            "{id}: {share:.3} vs {want:.3} ({counts:?})"
        );
    }
    // Never more than `weight` times in a row.
    let mut run = 1;
    for w in results.windows(2) {
        run = if w[0].1 == w[1].1 { run + 1 } else { 1 };
        let weight: usize = w[1].1.trim_start_matches("backend-").parse().expect("id");
        assert!(run <= weight, "{} served {run} in a row", w[1].1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_reaches_every_backend_with_sequential_traffic() {
    let b = backends(3, Duration::ZERO).await;
    let proxy = Proxy::start(&upstreams("least_connections", &servers(&b), "")).await;
    let counts = tally(&sequential(&proxy, 60).await);
    assert_eq!(counts.len(), 3, "all backends used: {counts:?}");
    assert!(counts.values().all(|&n| n >= 5), "{counts:?}");
}

/// Runs 16 client loops through `proxy` for `secs` seconds.
async fn under_load(proxy: &Proxy, secs: u64) -> Vec<(u16, String)> {
    let stop = Arc::new(AtomicBool::new(false));
    let run = load(proxy.url("/"), 16, stop.clone());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Relaxed);
    run.await.expect("load")
}

fn share(results: &[(u16, String)], id: &str) -> f64 {
    tally(results).get(id).copied().unwrap_or(0) as f64 / results.len().max(1) as f64
}

async fn avoids_a_20x_slower_backend_under_load(strategy: &str) {
    let b = backends(3, Duration::from_millis(2)).await;
    b[2].set_delay(Duration::from_millis(40));
    let proxy = Proxy::start(&upstreams(strategy, &servers(&b), "")).await;
    let results = under_load(&proxy, 4).await;
    assert_all_ok(&results);
    let slow = share(&results, "backend-3");
    eprintln!(
        "{strategy}: {} requests, slow backend share {slow:.4} ({:?})",
        results.len(),
        tally(&results)
    );
    assert!(results.len() > 1000, "enough load: {}", results.len());
    assert!(slow < 0.05, "slow backend share {slow:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_avoids_a_20x_slower_backend_under_load() {
    avoids_a_20x_slower_backend_under_load("p2c_ewma").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prequal_avoids_a_20x_slower_backend_under_load() {
    avoids_a_20x_slower_backend_under_load("prequal").await;
}

/// Two backends answer in 2 ms; a third answers half of its requests at once with a 503
/// (passive ejection off, so only the strategy can avoid it). Share of the requests the
/// shedding backend answered, under `pool_extra`.
async fn shedder_share(strategy: &str, pool_extra: &str) -> f64 {
    let mut b = backends(2, Duration::from_millis(2)).await;
    let mut p = Profile::new("shedder", Dist::Constant { ms: 2.0 });
    p.errors.fast_503 = 0.5;
    b.push(spawn_profile(p, Instant::now()).await.expect("backend"));
    let extra = format!("    outlier_detection: {{ consecutive_gateway_failures: 0 }}\n{pool_extra}");
    let proxy = Proxy::start(&upstreams(strategy, &servers(&b), &extra)).await;
    let results = under_load(&proxy, 3).await;
    let failed: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(
        failed.iter().all(|r| r.0 == 503 && r.1 == "shedder"),
        "only the shedder fails: {:?}",
        failed.iter().find(|r| r.0 != 503 || r.1 != "shedder")
    );
    assert!(results.len() > 500, "enough load: {}", results.len());
    let s = share(&results, "shedder");
    eprintln!(
        "{strategy} {pool_extra:?}: {} requests, shedder share {s:.4} ({:?})",
        results.len(),
        tally(&results)
    );
    s
}

/// A fast 503 is not a fast answer: with failures priced in (the default 2 s penalty), the
/// latency-learning strategies send the shedding backend a small share; with a zero penalty,
/// what they did before, it looks like the fastest, idlest backend and `p2c_ewma` sends it
/// more than round robin's third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_shedding_fast_503s_is_not_the_favourite() {
    for strategy in ["p2c_ewma", "orca_least_delay", "prequal"] {
        let s = shedder_share(strategy, "").await;
        assert!(s < 0.1, "{strategy}: shedder share {s:.3}, round robin's is 0.333");
    }
    let s = shedder_share("p2c_ewma", "    failure_penalty_ms: 0\n").await;
    assert!(s > 0.4, "without the penalty: shedder share {s:.3}");
}
