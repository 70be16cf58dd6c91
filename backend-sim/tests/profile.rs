//! A profile-driven backend over real sockets: service-time distributions,
//! classes, slots and the FIFO queue, injected errors, response sizes.
//!
//! Timing bounds are generous (a loaded 2-core box adds tens of ms) but each
//! one would fail for the wrong behaviour: lower bounds are the service time
//! itself, upper bounds are well below the next wrong answer.

mod sim_util;

use std::sync::{Arc, Mutex};

use backend_sim::model::{ClassService, Dist, Errors, Profile};
use sim_util::{burst, client, constant, eventually, get, ms, start, stats};

#[tokio::test]
async fn constant_service_time_is_honoured() {
    let b = start(constant("const", 150.0)).await;
    let c = client();
    for _ in 0..3 {
        let got = get(&c, b.addr(), "/x").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["x-backend-id"], "const");
        assert!(got.elapsed >= ms(150) && got.elapsed < ms(1000), "{:?}", got.elapsed);
    }
    // With slots to spare, concurrent requests do not wait for each other.
    let all = burst(b.addr(), "/y", 20).await;
    let slowest = all.iter().map(|g| g.elapsed).max().expect("20 results");
    assert!(slowest < ms(1000), "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_service_times_are_spread_like_one() {
    // 16 closed-loop workers on keep-alive connections: concurrency low
    // enough that client overhead stays a few ms, high enough to be quick.
    const WORKERS: usize = 16;
    const EACH: usize = 25;
    const N: usize = WORKERS * EACH;
    let mut p = Profile::new("expo", Dist::Exponential { mean_ms: 100.0 });
    p.slots = 1000;
    let b = start(p).await;
    let c = reqwest::Client::builder().no_proxy().build().expect("client");
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (c, addr) = (c.clone(), b.addr());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for _ in 0..EACH {
                let g = get(&c, addr, "/").await;
                assert_eq!(g.status, 200);
                lat.push(g.elapsed.as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let mean = lat.iter().sum::<f64>() / N as f64;
    let short = lat.iter().filter(|&&l| l < 60.0).count();
    let long = lat.iter().filter(|&&l| l > 250.0).count();
    // Exponential(100 ms): mean 100 (±5 sampling sd), P(<60 ms) = 45 %,
    // P(>250 ms) = 8 %. A constant 100 ms would have neither short nor long.
    assert!((75.0..160.0).contains(&mean), "mean {mean:.1} ms");
    assert!(short >= N / 5, "only {short} of {N} under 60 ms");
    assert!((10..=80).contains(&long), "{long} of {N} over 250 ms");
}

#[tokio::test]
async fn classes_pick_the_service_time_by_path_prefix() {
    let mut p = constant("classy", 0.0);
    p.classes.push(ClassService {
        path_prefix: "/heavy".into(),
        service: Dist::Constant { ms: 300.0 },
    });
    let b = start(p).await;
    let c = client();
    let heavy = get(&c, b.addr(), "/heavy/1").await;
    let light = get(&c, b.addr(), "/light").await;
    assert!(heavy.elapsed >= ms(300), "{:?}", heavy.elapsed);
    assert!(light.elapsed < ms(250), "{:?}", light.elapsed);
}

#[tokio::test]
async fn slots_and_queue_bound_concurrency() {
    let mut p = constant("narrow", 300.0);
    p.slots = 2;
    p.queue = 2;
    let b = start(p).await;
    let all = burst(b.addr(), "/", 6).await;
    let mut ok: Vec<_> = all.iter().filter(|g| g.status == 200).map(|g| g.elapsed).collect();
    let rejected: Vec<_> = all.iter().filter(|g| g.status == 503).collect();
    assert_eq!((ok.len(), rejected.len()), (4, 2), "{all:?}");
    ok.sort();
    // Two served at once, two after waiting for them.
    assert!(ok[0] >= ms(300) && ok[1] < ms(600), "{ok:?}");
    assert!(ok[2] >= ms(600) && ok[3] >= ms(600), "{ok:?}");
    for r in rejected {
        assert!(
            r.elapsed < ok[0] && r.elapsed < ms(250),
            "a rejection is fast: {:?}",
            r.elapsed
        );
        let orca = r.orca().expect("ORCA on a rejection too");
        assert_eq!(orca.queue, 2.0, "the queue was full");
    }
    let s = b.stats();
    assert_eq!((s.served, s.rejected, s.inflight, s.queued), (4, 2, 0, 0));
}

#[tokio::test]
async fn the_queue_is_first_in_first_out() {
    let mut p = constant("fifo", 250.0);
    p.slots = 1;
    p.queue = 10;
    let b = start(p).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4u64 {
        let (c, addr, done) = (client(), b.addr(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            assert_eq!(get(&c, addr, &format!("/r{i}")).await.status, 200);
            done.lock().expect("lock").push(i);
        }));
        // Send the next one only once this one has arrived.
        eventually(ms(3000), "request arrived", || {
            let s = b.stats();
            async move { u64::from(s.inflight) + u64::from(s.queued) + s.served > i }
        })
        .await;
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(*done.lock().expect("lock"), vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn fast_503_rate_matches_the_profile() {
    const N: usize = 400;
    let mut p = constant("flaky", 0.0);
    p.errors = Errors {
        fast_503: 0.3,
        ..Errors::default()
    };
    let b = start(p).await;
    let mut failed = 0;
    for _ in 0..N / 50 {
        failed += burst(b.addr(), "/", 50)
            .await
            .iter()
            .filter(|g| {
                assert!(g.status == 200 || g.status == 503, "{}", g.status);
                g.status == 503
            })
            .count();
    }
    // Binomial(400, 0.3): 120 ± 9.2; the bounds are ±4.3 sd.
    assert!((80..=160).contains(&failed), "{failed} of {N} failed");
    let s = stats(b.addr()).await;
    assert_eq!(s.errors, failed as u64);
    assert_eq!(s.served, (N - failed) as u64, "fast 503s take no service");
}

#[tokio::test]
async fn slow_500s_come_after_the_service_time() {
    let mut p = constant("slow-err", 150.0);
    p.errors.slow_500 = 1.0;
    let b = start(p).await;
    let got = get(&client(), b.addr(), "/").await;
    assert_eq!(got.status, 500);
    assert!(got.elapsed >= ms(150), "{:?}", got.elapsed);

    let mut p = constant("half-err", 0.0);
    p.errors.slow_500 = 0.5;
    let b = start(p).await;
    let errors = burst(b.addr(), "/", 200)
        .await
        .iter()
        .filter(|g| g.status == 500)
        .count();
    // Binomial(200, 0.5): 100 ± 7.1.
    assert!((70..=130).contains(&errors), "{errors} of 200");
}

#[tokio::test]
async fn a_hang_is_held_until_the_client_gives_up() {
    let mut p = constant("black-hole", 0.0);
    p.errors.hang = 1.0;
    let b = start(p).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(ms(500))
        .build()
        .expect("client");
    let addr = b.addr();
    let started = std::time::Instant::now();
    let req = tokio::spawn(async move { c.get(format!("http://{addr}/")).send().await });
    eventually(ms(3000), "one request hanging", || {
        let s = b.stats();
        async move { s.hanging == 1 && s.inflight == 1 }
    })
    .await;
    let res = req.await.expect("task");
    assert!(res.expect_err("never answered").is_timeout());
    assert!(started.elapsed() >= ms(500));
    // The client closed its connection: the hang ends and frees its slot.
    eventually(ms(5000), "hang released after the client left", || {
        let s = b.stats();
        async move { s.hanging == 0 }
    })
    .await;
    let s = b.stats();
    assert_eq!((s.served, s.errors, s.inflight), (0, 1, 0));
}

#[tokio::test]
async fn response_bytes_sets_the_body_size() {
    let mut p = constant("big", 0.0);
    p.response_bytes = 5000;
    let b = start(p).await;
    let got = get(&client(), b.addr(), "/payload?q=1").await;
    assert_eq!(got.body.len(), 5000);
    let json: serde_json::Value = serde_json::from_slice(&got.body).expect("still JSON");
    assert_eq!(
        (json["backend"].as_str(), json["query"].as_str()),
        (Some("big"), Some("q=1"))
    );

    let mut p = constant("small", 0.0);
    p.response_bytes = 10;
    let b = start(p).await;
    let got = get(&client(), b.addr(), "/").await;
    let json: serde_json::Value = serde_json::from_slice(&got.body).expect("JSON");
    assert!(json.get("pad").is_none(), "below the bare reply: no padding");
}
