//! The management surface: `GET /stats`, the ORCA load header and
//! `POST /control` (plus its library twin, `BackendHandle::control`).

mod sim_util;

use backend_sim::model::Dist;
use backend_sim::{spawn, BackendSpec, Control, Stats};
use sim_util::{burst, client, constant, control, eventually, get, ms, refused, start, stats};

#[tokio::test]
async fn stats_reports_configuration_and_counts() {
    let mut p = constant("counted", 0.0);
    p.slots = 3;
    p.queue = 7;
    let b = start(p).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, b.addr(), "/work").await.status, 200);
    }
    assert_eq!(get(&c, b.addr(), "/health").await.status, 200);

    let raw = get(&c, b.addr(), "/stats").await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.headers["x-backend-id"], "counted");
    let json: serde_json::Value = serde_json::from_slice(&raw.body).expect("JSON");
    for key in [
        "id",
        "inflight",
        "queued",
        "slots",
        "slot_utilisation_ewma",
        "served",
        "errors",
        "rejected",
        "uptime_s",
        "slowdown",
    ] {
        assert!(json.get(key).is_some(), "/stats lacks {key}: {json}");
    }
    let s: Stats = serde_json::from_value(json).expect("Stats");
    assert_eq!(s.id, "counted");
    assert_eq!((s.served, s.errors, s.rejected, s.health_checks), (5, 0, 0, 1));
    assert_eq!((s.inflight, s.queued, s.slots, s.queue), (0, 0, 3, 7));
    assert!(s.uptime_s > 0.0 && s.uptime_s < 60.0, "{}", s.uptime_s);
    assert_eq!(s.slowdown, 1.0);
    assert!(s.healthy && !s.down);
    assert!(s.rps > 0.0, "5 recent completions");
    assert_eq!(b.stats().served, 5, "the handle sees the same");
}

#[tokio::test]
async fn orca_header_reports_utilisation_queue_and_rate() {
    let mut p = constant("busy", 1500.0);
    p.slots = 2;
    p.queue = 0;
    let b = start(p).await;
    let addr = b.addr();
    let long = tokio::spawn(async move { burst(addr, "/long", 2).await });
    eventually(ms(3000), "both slots busy", || {
        let s = b.stats();
        async move { s.inflight == 2 }
    })
    .await;
    tokio::time::sleep(ms(1000)).await;
    // A third request is rejected at once; its report shows a full backend.
    let rejected = get(&client(), addr, "/").await;
    assert_eq!(rejected.status, 503);
    let orca = rejected.orca().expect("ORCA header");
    // 1 s at 100 % with tau = 1 s: about 1 - 1/e = 0.63.
    assert!((0.4..=1.0).contains(&orca.cpu_utilization), "{}", orca.cpu_utilization);
    assert_eq!(orca.queue, 0.0);
    assert!(b.stats().slot_utilisation_ewma > 0.4);
    for g in long.await.expect("task") {
        assert_eq!(g.status, 200);
        assert!(g.orca().is_some());
    }

    // The completion rate: 100 quick answers in a short while.
    b.control(&Control {
        service: Some(Dist::Constant { ms: 0.0 }),
        slots: Some(100),
        ..Control::default()
    })
    .await
    .expect("control");
    burst(addr, "/", 100).await;
    let last = get(&client(), addr, "/").await.orca().expect("ORCA header");
    assert!(last.rps_fractional > 10.0 && last.rps_fractional <= 103.0, "{last:?}");
    assert!((0.0..=1.0).contains(&last.cpu_utilization));
}

#[tokio::test]
async fn orca_header_is_absent_when_off_and_for_spec_backends() {
    let mut p = constant("quiet", 0.0);
    p.orca = false;
    let b = start(p).await;
    let got = get(&client(), b.addr(), "/").await;
    assert_eq!(got.status, 200);
    assert!(got.orca().is_none());

    let legacy = spawn(BackendSpec::new("legacy")).await.expect("spawn");
    assert!(get(&client(), legacy.addr(), "/").await.orca().is_none());
}

#[tokio::test]
async fn control_changes_behaviour_at_run_time() {
    let b = start(constant("steered", 60.0)).await;
    let (addr, c) = (b.addr(), client());

    let (code, state) = control(addr, r#"{"slowdown": 5}"#).await;
    assert_eq!(code, 200, "{state}");
    assert_eq!(state["slowdown"], 5.0);
    let got = get(&c, addr, "/").await;
    assert!(got.elapsed >= ms(300), "5 × 60 ms: {:?}", got.elapsed);

    let (code, state) = control(addr, r#"{"errors": {"fast_503": 1.0}, "slowdown": 1}"#).await;
    assert_eq!(code, 200);
    assert_eq!(state["error_rates"]["fast_503"], 1.0);
    let got = get(&c, addr, "/").await;
    assert_eq!(got.status, 503);
    assert!(got.elapsed < ms(250), "a fast 503: {:?}", got.elapsed);

    let (code, _) = control(
        addr,
        r#"{"errors": {}, "status": 418, "healthy": false, "slots": 1, "service": {"dist": "constant", "ms": 0}}"#,
    )
    .await;
    assert_eq!(code, 200);
    let got = get(&c, addr, "/").await;
    assert_eq!(got.status, 418);
    assert!(got.elapsed < ms(250));
    assert_eq!(get(&c, addr, "/health").await.status, 503);
    let s = stats(addr).await;
    assert_eq!((s.slots, s.status, s.healthy), (1, 418, false));
}

#[tokio::test]
async fn control_rejects_bad_input_and_changes_nothing() {
    let b = start(constant("strict", 0.0)).await;
    let addr = b.addr();
    let before = b.stats();
    for (body, needle) in [
        ("not json", "invalid control JSON"),
        (r#"{"slowness": 2}"#, "slowness"),
        (r#"{"slots": 0}"#, "slots"),
        (r#"{"slowdown": 0}"#, "slowdown must be a positive number"),
        (r#"{"slowdown": 2, "errors": {"fast_503": 2}}"#, "0..=1"),
        (r#"{"service": {"dist": "uniform"}}"#, "invalid control JSON"),
    ] {
        let (code, json) = control(addr, body).await;
        assert_eq!(code, 400, "{body}");
        let msg = json["error"].as_str().expect("a message");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let after = b.stats();
    assert_eq!((after.slowdown, after.slots), (before.slowdown, before.slots));
    assert_eq!(after.error_rates, before.error_rates);
    assert!(b.profile().phases.is_empty(), "nothing recorded");
}

#[tokio::test]
async fn control_can_take_a_backend_down_and_the_handle_up() {
    let b = start(constant("switch", 0.0)).await;
    let addr = b.addr();
    let (code, state) = control(addr, r#"{"down": true}"#).await;
    assert_eq!(code, 200, "the answer gets out before the listener closes");
    assert_eq!(state["down"], true);
    eventually(ms(3000), "down", || async move { refused(addr).await }).await;
    assert!(!b.is_running().await);

    let s = b
        .control(&Control {
            down: Some(false),
            ..Control::default()
        })
        .await
        .expect("up again");
    assert!(!s.down);
    assert!(b.is_running().await, "up when control returns");
    assert_eq!(get(&client(), addr, "/").await.status, 200);
}
