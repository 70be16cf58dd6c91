//! Seeded draws and the `server-timing` header over real sockets: a request
//! that carries its index draws the same fate and service time at every
//! backend with the same seed and id, whatever else that backend served.

mod sim_util;

use std::time::Instant;

use backend_sim::backend::{parse_service_ms, service_timing, NO_SERVICE_TIMING};
use backend_sim::model::{request_stream, size_stream, Dist, Errors, Fate, Profile};
use backend_sim::{spawn_fleet, spawn_profile_seeded, BackendHandle, FleetConfig};
use sim_util::{burst, client, constant, get, get_with, ms, start, Got};

const INDICES: u64 = 50;

/// A profile whose answers differ by index: a log-normal service time and
/// every kind of fate but hangs.
fn varied(id: &str) -> Profile {
    let mut p = Profile::new(
        id,
        Dist::LogNormal {
            median_ms: 2.0,
            sigma: 0.8,
        },
    );
    p.errors = Errors {
        fast_503: 0.15,
        slow_500: 0.2,
        hang: 0.0,
    };
    p
}

async fn seeded(p: Profile, seed: u64) -> BackendHandle {
    spawn_profile_seeded(p, Instant::now(), seed).await.expect("spawn")
}

/// (status, server-timing) of request `index`.
async fn indexed(b: &BackendHandle, index: u64) -> (u16, String) {
    let i = index.to_string();
    let got = get_with(&client(), b.addr(), "/draw", &[("x-nb-request", &i)]).await;
    (got.status, got.server_timing().expect("server-timing").to_owned())
}

/// What request `index` must be answered, from the shared stream alone.
fn expected(p: &Profile, seed: u64, index: u64) -> (u16, String) {
    let draw = p.draw(
        &p.errors,
        "/draw",
        &mut request_stream(seed, &p.id, index),
        Some(&mut size_stream(seed, index)),
    );
    match draw.fate {
        Fate::Serve => (200, service_timing(draw.service_ms)),
        Fate::Slow500 => (500, service_timing(draw.service_ms)),
        Fate::Fast503 => (503, NO_SERVICE_TIMING.to_owned()),
        Fate::Hang => unreachable!("no hangs in this profile"),
    }
}

#[tokio::test]
async fn the_same_seed_and_index_draw_alike_whatever_else_was_served() {
    let a = seeded(varied("b-1"), 7).await;
    let b = seeded(varied("b-1"), 7).await;
    let c = client();
    let mut from_a = Vec::new();
    for i in 0..INDICES {
        from_a.push(indexed(&a, i).await);
    }
    // The other backend serves them in reverse, between requests without an index.
    let mut from_b = vec![(0, String::new()); INDICES as usize];
    for i in (0..INDICES).rev() {
        assert!([200, 500, 503].contains(&get(&c, b.addr(), "/other").await.status));
        from_b[i as usize] = indexed(&b, i).await;
    }
    assert_eq!(from_a, from_b);
    let want: Vec<_> = (0..INDICES).map(|i| expected(&varied("b-1"), 7, i)).collect();
    assert_eq!(
        from_a, want,
        "the draws are request_stream's, reproducible in any process"
    );
    let fates = |st: u16| from_a.iter().filter(|(s, _)| *s == st).count();
    assert!(fates(200) > 20 && fates(500) > 0 && fates(503) > 0, "{from_a:?}");
    let durs: Vec<f64> = from_a
        .iter()
        .filter(|(s, _)| *s != 503)
        .map(|(_, t)| parse_service_ms(t).expect("parseable"))
        .collect();
    assert!(
        durs.iter().any(|&d| d < 2.0) && durs.iter().any(|&d| d > 2.0),
        "{durs:?}"
    );
}

#[tokio::test]
async fn another_seed_draws_otherwise_and_fleet_files_carry_the_seed() {
    let cfg = FleetConfig::from_yaml(
        "seed: 8\nbackends:\n  - { id: b-1, service: { dist: log_normal, median_ms: 2, sigma: 0.8 },\n      errors: { fast_503: 0.15, slow_500: 0.2 } }\n",
    )
    .expect("valid fleet");
    assert_eq!(cfg.seed, 8);
    let fleet = spawn_fleet(&cfg).await.expect("spawn fleet");
    assert_eq!(fleet[0].seed(), 8);
    let seven = seeded(varied("b-1"), 7).await;
    let mut same = 0;
    for i in 0..INDICES {
        let got = indexed(&fleet[0], i).await;
        assert_eq!(got, expected(&varied("b-1"), 8, i));
        if got == indexed(&seven, i).await {
            same += 1;
        }
    }
    // Only fast 503s on both sides (P = 0.15² per index) can coincide.
    assert!(same < 10, "{same} of {INDICES} answers alike under different seeds");
    assert_eq!(
        FleetConfig::from_yaml("backends: [ { id: a } ]").expect("valid").seed,
        0
    );
}

#[tokio::test]
async fn requests_without_a_valid_index_use_the_backends_own_seeded_stream() {
    let a = seeded(varied("own"), 3).await;
    let b = seeded(varied("own"), 3).await;
    let c = client();
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for bad in ["", "abc", "-1", "18446744073709551616", "1.5"] {
        let got: Got = get(&c, a.addr(), "/draw").await;
        from_a.push((got.status, got.server_timing().map(str::to_owned)));
        let got = get_with(&c, b.addr(), "/draw", &[("x-nb-request", bad)]).await;
        from_b.push((got.status, got.server_timing().map(str::to_owned)));
    }
    assert!(from_a.iter().all(|(s, t)| [200, 500, 503].contains(s) && t.is_some()));
    assert_eq!(from_a, from_b, "a malformed index is ignored");
}

#[tokio::test]
async fn server_timing_is_the_service_time_applied() {
    let mut p = constant("timed", 5.0);
    p.slots = 1;
    p.queue = 0;
    let b = start(p).await;
    let c = client();
    let ok = get(&c, b.addr(), "/").await;
    assert_eq!((ok.status, ok.server_timing()), (200, Some("service;dur=5.000")));
    b.control(&serde_json::from_str(r#"{"slowdown": 2.5}"#).expect("control"))
        .await
        .expect("applied");
    let slow = get(&c, b.addr(), "/").await;
    assert_eq!(slow.server_timing(), Some("service;dur=12.500"), "after the slowdown");

    // Queue full: one request holds the only slot, the next is turned away.
    b.control(
        &serde_json::from_str(r#"{"slowdown": 1, "service": {"dist": "constant", "ms": 300}}"#).expect("control"),
    )
    .await
    .expect("applied");
    let both = burst(b.addr(), "/", 2).await;
    let mut got: Vec<_> = both.iter().map(|g| (g.status, g.server_timing())).collect();
    got.sort();
    assert_eq!(got, [(200, Some("service;dur=300.000")), (503, Some("service;dur=0"))]);

    let mut p = constant("errs", 4.0);
    p.errors.slow_500 = 1.0;
    let b = start(p).await;
    let got = get(&c, b.addr(), "/").await;
    assert_eq!((got.status, got.server_timing()), (500, Some("service;dur=4.000")));
    let mut p = constant("fast", 4.0);
    p.errors.fast_503 = 1.0;
    let b = start(p).await;
    let got = get(&c, b.addr(), "/").await;
    assert_eq!((got.status, got.server_timing()), (503, Some("service;dur=0")));
    assert!(got.elapsed < ms(1000));
}
