//! Time: phases against the epoch (slowdown, slots, down/up, late join),
//! warm-up, and an epoch in the past.
//!
//! Each test sleeps until a point well inside a phase (never near a
//! boundary), so a late timer on a loaded box cannot land in the wrong one.

mod sim_util;

use std::time::{Duration, Instant};

use backend_sim::model::{Phase, Warmup};
use backend_sim::spawn_profile;
use sim_util::{burst, client, constant, eventually, get, ms, refused, until};

fn phase(at_s: f64) -> Phase {
    Phase {
        at_s,
        ..Phase::default()
    }
}

#[tokio::test]
async fn slowdown_applies_from_its_phase_on() {
    let mut p = constant("slows", 40.0);
    p.phases.push(Phase {
        slowdown: Some(8.0),
        ..phase(1.0)
    });
    let epoch = Instant::now();
    let b = spawn_profile(p, epoch).await.expect("spawn");
    let c = client();
    let before = get(&c, b.addr(), "/").await;
    assert!(before.elapsed < ms(250), "{:?}", before.elapsed);
    assert_eq!(b.stats().slowdown, 1.0);
    until(epoch, ms(1100)).await;
    let after = get(&c, b.addr(), "/").await;
    assert!(after.elapsed >= ms(320), "8 × 40 ms: {:?}", after.elapsed);
    assert_eq!(b.stats().slowdown, 8.0);
}

#[tokio::test]
async fn slots_follow_their_phase() {
    let mut p = constant("shrinks", 200.0);
    p.slots = 4;
    p.phases.push(Phase {
        slots: Some(1),
        ..phase(0.5)
    });
    let epoch = Instant::now();
    let b = spawn_profile(p, epoch).await.expect("spawn");
    assert_eq!(b.stats().slots, 4);
    until(epoch, ms(700)).await;
    assert_eq!(b.stats().slots, 1);
    let mut lat: Vec<Duration> = burst(b.addr(), "/", 3).await.iter().map(|g| g.elapsed).collect();
    lat.sort();
    assert!(lat[2] >= ms(600), "one at a time: {lat:?}");
}

#[tokio::test]
async fn down_refuses_connections_and_up_serves_again() {
    let mut p = constant("blinks", 0.0);
    p.phases.push(Phase {
        down: Some(true),
        ..phase(1.0)
    });
    p.phases.push(Phase {
        down: Some(false),
        ..phase(2.5)
    });
    let epoch = Instant::now();
    let b = spawn_profile(p, epoch).await.expect("spawn");
    let (addr, c) = (b.addr(), client());
    assert_eq!(get(&c, addr, "/").await.status, 200);

    until(epoch, ms(1400)).await;
    assert!(refused(addr).await, "down from 1 s");
    assert!(!b.is_running().await);
    assert!(b.stats().down);

    until(epoch, ms(2500)).await;
    eventually(ms(3000), "serving again", || async move { !refused(addr).await }).await;
    assert_eq!(get(&c, addr, "/again").await.status, 200);
    assert_eq!(b.addr(), addr, "same address");
    let s = b.stats();
    assert!(!s.down && s.uptime_s < 2.0, "{s:?}");
    assert_eq!(s.served, 2);
}

#[tokio::test]
async fn a_backend_down_at_zero_joins_late() {
    let mut p = constant("late", 0.0);
    p.phases.push(Phase {
        down: Some(true),
        ..phase(0.0)
    });
    p.phases.push(Phase {
        down: Some(false),
        ..phase(1.0)
    });
    let epoch = Instant::now();
    let b = spawn_profile(p, epoch).await.expect("spawn");
    let addr = b.addr();
    assert_ne!(addr.port(), 0, "the port is known before joining");
    assert!(refused(addr).await);
    assert!(!b.is_running().await);
    eventually(ms(5000), "joined", || async move { !refused(addr).await }).await;
    assert!(
        epoch.elapsed() >= ms(1000),
        "not before its phase: {:?}",
        epoch.elapsed()
    );
    assert_eq!(get(&client(), addr, "/").await.status, 200);
}

#[tokio::test]
async fn warmup_starts_slow_and_wears_off() {
    let mut p = constant("cold", 50.0);
    p.warmup = Some(Warmup {
        duration_s: 2.0,
        factor: 6.0,
    });
    let epoch = Instant::now();
    let b = spawn_profile(p, epoch).await.expect("spawn");
    let c = client();
    let cold = get(&c, b.addr(), "/").await;
    assert!(cold.elapsed >= ms(200), "about 6 × 50 ms at first: {:?}", cold.elapsed);
    until(epoch, ms(2200)).await;
    let warm = get(&c, b.addr(), "/").await;
    assert!(warm.elapsed < ms(200), "{:?}", warm.elapsed);
    assert_eq!(b.stats().slowdown, 1.0);
}

#[tokio::test]
async fn phases_count_from_the_epoch_not_the_spawn() {
    let mut p = constant("veteran", 40.0);
    p.phases.push(Phase {
        slowdown: Some(8.0),
        ..phase(5.0)
    });
    let epoch = Instant::now()
        .checked_sub(Duration::from_secs(10))
        .expect("10 s after boot");
    let b = spawn_profile(p, epoch).await.expect("spawn");
    let got = get(&client(), b.addr(), "/").await;
    assert!(
        got.elapsed >= ms(320),
        "the phase at 5 s is already on: {:?}",
        got.elapsed
    );
    let s = b.stats();
    assert!(s.t_s >= 10.0 && s.slowdown == 8.0, "{s:?}");
    assert_eq!(b.epoch(), epoch);
}
