//! Counting decisions: `arrived` and `measured` in a backend's stats, and the
//! fleet-wide stats listener that reports them even for a backend that is down.

mod sim_util;

use std::time::Instant;

use backend_sim::model::Phase;
use backend_sim::{spawn_fleet_stats, spawn_profiles, Stats};
use sim_util::{burst, client, constant, eventually, get, get_with, ms, start, stats};

const MEASURED: (&str, &str) = ("x-nb-measured", "1");

#[tokio::test]
async fn arrived_and_measured_count_every_fate() {
    let mut p = constant("counted", 300.0);
    p.slots = 1;
    p.queue = 0;
    let b = start(p).await;
    let c = client();
    // Served, and a queue-full 503 beside it: both measured.
    let (a, z) = tokio::join!(get_with(&c, b.addr(), "/a", &[MEASURED]), async {
        eventually(ms(3000), "first request in service", || {
            let s = b.stats();
            async move { s.inflight == 1 }
        })
        .await;
        get_with(&c, b.addr(), "/b", &[MEASURED]).await
    });
    assert_eq!((a.status, z.status), (200, 503));
    // Fast 503s: one measured, one not, one marked otherwise.
    b.control(&serde_json::from_str(r#"{"errors": {"fast_503": 1}}"#).expect("control"))
        .await
        .expect("applied");
    assert_eq!(get_with(&c, b.addr(), "/c", &[MEASURED]).await.status, 503);
    assert_eq!(get(&c, b.addr(), "/d").await.status, 503);
    assert_eq!(
        get_with(&c, b.addr(), "/e", &[("x-nb-measured", "0")]).await.status,
        503
    );
    // A hang, measured, abandoned by its client.
    b.control(&serde_json::from_str(r#"{"errors": {"hang": 1}}"#).expect("control"))
        .await
        .expect("applied");
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(ms(200))
        .build()
        .expect("client");
    let res = impatient
        .get(format!("http://{}/f", b.addr()))
        .header(MEASURED.0, MEASURED.1)
        .send()
        .await;
    assert!(res.expect_err("never answered").is_timeout());
    // Management requests are not arrivals.
    assert_eq!(get(&c, b.addr(), "/health").await.status, 200);
    let s = stats(b.addr()).await;
    assert_eq!((s.arrived, s.measured), (6, 4), "{s:?}");
    assert_eq!((s.served, s.rejected), (1, 1));
}

#[tokio::test]
async fn the_fleet_stats_listener_reports_every_backend_even_when_down() {
    let mut late = constant("late", 0.0);
    late.phases.push(Phase {
        at_s: 0.0,
        down: Some(true),
        ..Phase::default()
    });
    let fleet = spawn_profiles(&[constant("up", 0.0), late, constant("crashed", 0.0)], Instant::now())
        .await
        .expect("spawn");
    let listener = spawn_fleet_stats("127.0.0.1:0".parse().expect("addr"), &fleet)
        .await
        .expect("stats listener");
    let c = client();
    for _ in 0..3 {
        assert_eq!(get_with(&c, fleet[0].addr(), "/", &[MEASURED]).await.status, 200);
    }
    burst(fleet[2].addr(), "/", 2).await;
    fleet[2].stop().await;

    let got = get(&c, listener.addr(), "/stats").await;
    assert_eq!(got.status, 200);
    let all: Vec<Stats> = serde_json::from_slice(&got.body).expect("a JSON array of stats");
    let summary: Vec<_> = all
        .iter()
        .map(|s| (s.id.as_str(), s.down, s.arrived, s.measured))
        .collect();
    assert_eq!(
        summary,
        [("up", false, 3, 3), ("late", true, 0, 0), ("crashed", true, 2, 0)]
    );
    assert_eq!(get(&c, listener.addr(), "/other").await.status, 404);

    // It stops with its handle.
    let addr = listener.addr();
    listener.stop().await;
    assert!(sim_util::refused(addr).await);
}
