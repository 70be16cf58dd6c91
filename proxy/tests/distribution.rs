//! How each strategy spreads real requests through the running proxy.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_avoids_a_20x_slower_backend_under_load() {
    let b = backends(3, Duration::from_millis(2)).await;
    b[2].set_delay(Duration::from_millis(40));
    let proxy = Proxy::start(&upstreams("p2c_ewma", &servers(&b), "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let run = load(proxy.url("/"), 16, stop.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = run.await.expect("load");
    let failed = results.iter().filter(|r| r.0 != 200).count();
    assert_eq!(failed, 0, "{:?}", results.iter().find(|r| r.0 != 200));
    let counts = tally(&results);
    let slow = counts.get("backend-3").copied().unwrap_or(0) as f64 / results.len() as f64;
    eprintln!(
        "p2c_ewma: {} requests, slow backend share {:.4} ({counts:?})",
        results.len(),
        slow
    );
    assert!(results.len() > 1000, "enough load: {}", results.len());
    assert!(slow < 0.05, "slow backend share {:.3} ({counts:?})", slow);
}
