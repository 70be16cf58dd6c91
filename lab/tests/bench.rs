//! The load generator against in-process backends on real sockets.
//!
//! Each test runs alone (a process-wide lock) on its own two-worker runtime:
//! they measure time, and running them side by side on a small machine would
//! only measure each other.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use backend_sim::{spawn, BackendHandle, BackendSpec};
use nb_lab::bench::{self, LoadSpec, Report, RequestClass};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime builds")
        .block_on(fut)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn backend(id: &str, delay: Duration) -> BackendHandle {
    spawn(BackendSpec::new(id).with_delay(delay))
        .await
        .expect("backend starts")
}

fn load(addr: SocketAddr, rate: f64, duration: Duration, deadline: Duration) -> LoadSpec {
    LoadSpec {
        url: format!("http://{addr}/bench").parse().expect("valid url"),
        rate,
        ramp_to: None,
        classes: Vec::new(),
        duration,
        warmup: ms(500),
        deadline,
        seed: 7,
    }
}

async fn run(spec: &LoadSpec) -> Report {
    let report = bench::run(spec).await.expect("run completes");
    eprintln!("{}", bench::format_table(std::slice::from_ref(&report)));
    report
}

/// Median latency in ms of sequential requests on one keep-alive connection
/// from `from` to `to`: what a plain client sees from this backend on this
/// machine at the same time (the backend's sleep is rounded up to Tokio's
/// 1 ms timer tick, and the machine may be busy).
async fn sequential_median_ms(addr: SocketAddr, from: Instant, to: Instant) -> f64 {
    let client = reqwest::Client::builder().no_proxy().build().expect("client builds");
    tokio::time::sleep_until(from.into()).await;
    let mut samples = Vec::new();
    while Instant::now() < to {
        let t = Instant::now();
        let resp = client
            .get(format!("http://{addr}/baseline"))
            .send()
            .await
            .expect("request");
        resp.bytes().await.expect("body");
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[test]
fn low_load_p50_is_the_backend_delay() {
    let _serial = serial();
    block_on(async {
        let b = backend("b10", ms(10)).await;
        let spec = load(b.addr(), 100.0, ms(3000), ms(1000));
        let t0 = Instant::now();
        let (report, baseline) = tokio::join!(run(&spec), sequential_median_ms(b.addr(), t0 + ms(500), t0 + ms(3500)),);
        let p50 = report.latency_ms.p50;
        let lag = report.dispatch_lag_ms;
        eprintln!("p50 {p50:.3} ms, sequential-client median {baseline:.3} ms, lag {lag:?}");

        assert!(report.sent > 240 && report.sent < 360, "{report:#?}");
        assert_eq!(report.errors, 0, "{report:#?}");
        assert_eq!(report.response_share.get("b10"), Some(&1.0));
        assert!(report.share.is_empty(), "nobody counted decisions: {:?}", report.share);
        assert_eq!(report.status_counts.get("200"), Some(&report.sent));
        // The backend reports its 10 ms in server-timing: what is left is the way there and
        // back, well under the delay itself.
        assert_eq!(report.queueing_count, report.sent);
        assert!(report.queueing_ms.p50 < 5.0, "{:?}", report.queueing_ms);
        // Never below the delay (latency is not measured from a late start) …
        assert!(p50 >= 10.0, "p50 {p50} ms below the 10 ms delay");
        // … and within 1 ms of it, allowing for what any client sees here
        // beyond the delay (timer rounding, a loaded machine): the generator
        // adds less than 1 ms.
        let bound = 11.0_f64.max(baseline + 1.0);
        assert!(lag.p50 < 1.0, "generator lag {lag:?}");
        assert!(p50 <= bound, "p50 {p50} ms > {bound} ms (baseline {baseline})");
    });
}

/// A backend that really answers in `delay`: its handler sleeps on a blocking-pool thread
/// (`std::thread::sleep`, ~0.1 ms precision) instead of Tokio's 1 ms timer wheel, which
/// rounds every sleep up. backend-sim uses the latter, so its "10 ms" is ~12 ms.
async fn precise_backend(delay: Duration) -> SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("x-backend-id", "precise")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                            .expect("response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Against a constant 10 ms backend at low load, p50 is within 1 ms of 10 ms.
#[test]
fn low_load_p50_is_within_1ms_of_a_constant_10ms_backend() {
    let _serial = serial();
    block_on(async {
        let addr = precise_backend(ms(10)).await;
        let report = run(&load(addr, 100.0, ms(3000), ms(1000))).await;
        let p50 = report.latency_ms.p50;
        eprintln!("precise 10 ms backend: p50 {p50:.3} ms over {} requests", report.sent);
        assert_eq!(report.errors, 0, "{report:#?}");
        assert!((p50 - 10.0).abs() <= 1.0, "p50 {p50:.3} ms is not within 1 ms of 10 ms");
    });
}

/// Makes `b` answer nothing until `until`: every request arriving before then
/// is held and answered at `until`, like a process stuck in a GC pause.
async fn stall(b: &BackendHandle, until: Instant, normal: Duration) {
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        b.set_delay(until - now);
        tokio::time::sleep(ms(1)).await;
    }
    b.set_delay(normal);
}

#[test]
fn a_stall_shows_in_the_tail_no_coordinated_omission() {
    let _serial = serial();
    block_on(async {
        let b = backend("b-stall", ms(10)).await;
        let spec = load(b.addr(), 200.0, ms(3000), ms(3000));
        let t0 = Instant::now();
        // The measured window is about [0.5 s, 3.5 s); stall for [1.5 s, 2.5 s).
        let stalled = async {
            tokio::time::sleep_until((t0 + ms(1500)).into()).await;
            stall(&b, t0 + ms(2500), ms(10)).await;
        };
        let (report, ()) = tokio::join!(run(&spec), stalled);
        let l = report.latency_ms;

        assert_eq!(report.errors, 0, "{report:#?}");
        // Sending went on during the stall: a closed-loop client would have
        // sent about a third fewer requests and dispatched them late.
        assert!(report.sent > 500 && report.sent < 700, "{report:#?}");
        let lag = (report.achieved_rps - report.offered_rps).abs() / report.offered_rps;
        assert!(lag < 0.02, "achieved vs offered differ by {lag}: {report:#?}");
        // A third of the requests arrived during the 1 s stall and waited
        // 0-1 s from their intended send time: about 10 % waited over 700 ms.
        // A client that waited for each answer would have recorded only a
        // handful of slow requests, invisible at p99.
        assert!(l.p99 >= 500.0, "p99 {} ms hides the stall", l.p99);
        assert!(l.p90 >= 300.0, "p90 {} ms hides the stall", l.p90);
        assert!(l.max >= 800.0 && l.max < 1500.0, "max {} ms", l.max);
        assert!(l.p50 < 100.0, "p50 {} ms: most requests were fast", l.p50);
    });
}

#[test]
fn achieved_rate_matches_offered_below_capacity() {
    let _serial = serial();
    block_on(async {
        let b = backend("b1", ms(1)).await;
        let spec = load(b.addr(), 1000.0, ms(3000), ms(1000));
        let report = run(&spec).await;

        assert_eq!(report.errors, 0, "{report:#?}");
        // The drawn schedule is within Poisson noise (σ ≈ 1.8 %) of the target …
        let noise = (report.offered_rps - 1000.0).abs() / 1000.0;
        assert!(noise < 0.1, "offered {} req/s", report.offered_rps);
        // … and the generator kept to it.
        let lag = (report.achieved_rps - report.offered_rps).abs() / report.offered_rps;
        assert!(lag <= 0.02, "achieved vs offered differ by {lag}: {report:#?}");
        let good = (report.goodput_rps - report.offered_rps).abs() / report.offered_rps;
        assert!(good < 1e-9, "all requests were good: {report:#?}");
        assert!(b.served() >= report.sent, "backend served {}", b.served());
    });
}

#[test]
fn requests_past_the_deadline_fail_at_the_deadline() {
    let _serial = serial();
    block_on(async {
        let b = backend("b-slow", ms(1000)).await;
        let mut spec = load(b.addr(), 50.0, ms(2000), ms(100));
        spec.warmup = ms(200);
        let report = run(&spec).await;
        let l = report.latency_ms;

        assert!(report.sent > 60 && report.sent < 140, "{report:#?}");
        assert_eq!(report.ok, 0, "{report:#?}");
        assert_eq!(report.errors, report.sent);
        assert_eq!(report.timeouts, report.sent);
        assert_eq!(report.error_rate, 1.0);
        assert_eq!(report.goodput_rps, 0.0);
        assert!(report.status_counts.is_empty(), "{report:#?}");
        // Recorded at the deadline (to histogram precision), not at the
        // backend's 1 s.
        for (name, v) in [("p50", l.p50), ("max", l.max), ("mean", l.mean)] {
            assert!((99.9..=100.1).contains(&v), "{name} {v} ms");
        }
    });
}

#[test]
fn non_2xx_responses_are_errors_with_status_counts() {
    let _serial = serial();
    block_on(async {
        let b = spawn(BackendSpec::new("b-503").with_status(503))
            .await
            .expect("backend starts");
        let report = run(&load(b.addr(), 100.0, ms(1000), ms(500))).await;

        assert!(report.sent > 60, "{report:#?}");
        assert_eq!((report.ok, report.errors), (0, report.sent));
        assert_eq!((report.timeouts, report.failures), (0, 0));
        assert_eq!(report.status_counts.get("503"), Some(&report.sent));
        assert_eq!(report.response_share.get("b-503"), Some(&1.0));
        assert_eq!(report.goodput_rps, 0.0);
        // Fast failures count at the deadline in the headline figures.
        assert!(report.latency_ms.p50 >= 499.0, "{:?}", report.latency_ms);
        assert_eq!(report.queueing_count, 0);
    });
}

#[test]
fn a_ramp_and_a_class_mix_follow_the_spec_per_window() {
    let _serial = serial();
    block_on(async {
        let b = backend("b-mix", ms(2)).await;
        let spec = LoadSpec {
            rate: 100.0,
            ramp_to: Some(500.0),
            classes: vec![
                RequestClass {
                    name: "cheap".into(),
                    path: "/cheap".into(),
                    weight: 3.0,
                },
                RequestClass {
                    name: "heavy".into(),
                    path: "/heavy?x=1".into(),
                    weight: 1.0,
                },
            ],
            ..load(b.addr(), 1.0, ms(2000), ms(1000))
        };
        let report = run(&spec).await;

        assert_eq!(report.errors, 0, "{report:#?}");
        assert_eq!(report.target_rps, 300.0, "the mean of the ramp");
        // Two one-second windows: the ramp's means there are 200 and 400 req/s.
        let sent: Vec<u64> = report.timeline.iter().map(|w| w.sent).collect();
        assert_eq!(sent.len(), 2, "{:?}", report.timeline);
        assert!(
            (140..=260).contains(&sent[0]) && (320..=480).contains(&sent[1]),
            "{sent:?}"
        );
        assert_eq!(report.timeline[0].t_s, 0.5, "windows count from the start of the load");
        assert!(report.timeline.iter().all(|w| w.p99_ms >= 2.0), "{:?}", report.timeline);
        // The class mix is 3:1.
        let (cheap, heavy) = (report.classes["cheap"].sent, report.classes["heavy"].sent);
        assert_eq!(cheap + heavy, report.sent);
        let share = cheap as f64 / report.sent as f64;
        assert!((0.68..=0.82).contains(&share), "cheap share {share}");
        assert!(report.classes["heavy"].latency_ms.p50 >= 2.0);
    });
}
