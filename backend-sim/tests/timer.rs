//! The precise timer under a real backend: a request whose client gives up
//! during its service frees its timer entry. The only test of this binary,
//! so that the count of pending sleeps is its own.

mod sim_util;

use backend_sim::timer;
use sim_util::{constant, eventually, ms, start};

#[tokio::test]
async fn abandoned_services_free_their_timer_entries() {
    let mut p = constant("long", 3_600_000.0);
    p.slots = 100;
    let b = start(p).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(ms(300))
        .build()
        .expect("client");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, addr) = (impatient.clone(), b.addr());
            tokio::spawn(async move { c.get(format!("http://{addr}/")).send().await })
        })
        .collect();
    eventually(ms(3000), "20 requests in service", || {
        let s = b.stats();
        async move { s.inflight == 20 }
    })
    .await;
    assert_eq!(timer::pending(), 20);
    for t in tasks {
        assert!(t.await.expect("task").expect_err("gave up").is_timeout());
    }
    eventually(ms(5000), "every abandoned sleep left the timer and its slot", || {
        let s = b.stats();
        async move { timer::pending() == 0 && s.inflight == 0 }
    })
    .await;
}
