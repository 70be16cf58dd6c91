//! The `ml` strategy end to end: the real proxy, real `backend-sim` backends and the real
//! `model-server` binary serving the shipped model (`model-server/models/scorer.onnx`), all
//! on loopback.
//!
//! What is asserted are shares, counters and reasons. The only times asserted are loose
//! bounds (a fallback engages within a second of a failure; ML resumes within seconds), and
//! the measured times are printed.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::model::ModelServer;
use common::*;
use neurabalancer::features::Features;
use neurabalancer::ml::scorer::{backend_rows, FeatureSpec, Plan};
use neurabalancer::orca::LoadReport;
use neurabalancer::store::record::{write_json, REQUEST_COLUMNS};
use neurabalancer::store::RequestRecord;
use neurabalancer::strategy::ml::CURVE_LEVELS;
use neurabalancer::strategy::{Params, StrategyKind};
use neurabalancer::upstream::BackendStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DECISIONS: &str = "neurabalancer_ml_decisions_total{pool=\"api\"}";

fn fallback(reason: &str) -> String {
    format!("neurabalancer_ml_fallback_total{{reason=\"{reason}\"}}")
}

/// The value of one series in a Prometheus text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn read_metric(p: &Proxy, series: &str) -> f64 {
    metric(&p.metrics().await, series)
}

/// The main-file section that points the proxy at `endpoint`.
fn ml_section(endpoint: &str, extra: &str) -> String {
    format!("ml: {{ endpoint: \"{endpoint}\"{extra} }}\n")
}

/// Waits until every server of the pool has an ML score (the scorer's first refresh).
async fn wait_scored(p: &Proxy) -> Duration {
    eventually(Duration::from_secs(10), || async {
        let s = p.servers().await;
        !s.is_empty() && s.iter().all(|s| !s["ml_score"].is_null())
    })
    .await
    .unwrap_or_else(|| panic!("no ML scores; proxy log:\n{}", p.log()))
}

/// (a) One of three backends is 20x slower: the model's decisions send it a small share,
/// where round robin would send a third; the decisions are the model's (metrics), the
/// admin API shows the scores, and the request records say who decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_sends_a_20x_slower_backend_a_small_share() {
    let model = ModelServer::start().await;
    let mut b = Vec::new();
    for (id, ms) in [("fast-1", 5), ("fast-2", 5), ("slow", 100)] {
        b.push(
            spawn(BackendSpec::new(id).with_delay(Duration::from_millis(ms)))
                .await
                .expect("backend"),
        );
    }
    // A generous timeout: this test counts scoring errors, and a loaded machine can stall
    // a 50 ms call.
    let extra = format!(
        "{}storage: {{ request_log_file: requests.jsonl, flush_interval_ms: 50 }}\n",
        ml_section(&model.url(), ", timeout_ms: 1000")
    );
    let proxy = Proxy::start_with(&upstreams("ml", &servers(&b), ""), &extra, &[]).await;
    let scored_in = wait_scored(&proxy).await;
    let results = run_for(proxy.url("/"), 8, 4).await;
    assert_all_ok(&results);
    let t = tally(&results);
    let slow = t.get("slow").copied().unwrap_or(0) as f64 / results.len() as f64;
    let m = proxy.metrics().await;
    let decisions = metric(&m, DECISIONS);
    let fallbacks: f64 = [
        "model_server_error",
        "timeout",
        "stale_scores",
        "circuit_open",
        "no_scores",
    ]
    .iter()
    .map(|r| metric(&m, &fallback(r)))
    .sum();
    eprintln!(
        "ml: first scores after {scored_in:?}; {} requests {t:?}, slow share {slow:.3}; decisions by the model {decisions}, by the fallback {fallbacks}",
        results.len()
    );
    assert!(results.len() > 200, "enough load: {}", results.len());
    assert!(slow < 0.1, "slow backend share {slow:.3}; round robin's is 0.333");
    assert!(
        decisions >= 0.95 * results.len() as f64,
        "the model decided {decisions} of {} requests",
        results.len()
    );
    assert!(metric(&m, "neurabalancer_ml_predictions_total") >= (3 * CURVE_LEVELS) as f64);
    assert_eq!(metric(&m, "neurabalancer_ml_errors_total"), 0.0);
    assert_eq!(metric(&m, "neurabalancer_ml_circuit_breaker_open"), 0.0);
    assert!(metric(&m, "neurabalancer_ml_inference_duration_seconds_count") > 0.0);

    // The admin API: the latest score of each server at its requests in flight.
    let version = model.version().await["model"]["version"].clone();
    for s in proxy.servers().await {
        let sc = &s["ml_score"];
        assert_eq!(sc["model_version"], version, "{s}");
        for k in [
            "predicted_latency_ms",
            "p_fail",
            "expected_cost_ms",
            "calibration",
            "age_ms",
        ] {
            assert!(sc[k].as_f64().is_some(), "{k} in {s}");
        }
        assert!(sc["fallback"].is_null(), "{s}");
    }
    let slow_ms = proxy.server("slow").await.expect("slow")["ml_score"]["predicted_latency_ms"]
        .as_f64()
        .expect("ms");
    let fast_ms = proxy.server("fast-1").await.expect("fast")["ml_score"]["predicted_latency_ms"]
        .as_f64()
        .expect("ms");
    assert!(
        slow_ms > 2.0 * fast_ms,
        "predicted: slow {slow_ms} ms, fast {fast_ms} ms"
    );

    // The request records: who decided, what it predicted, the new features.
    let log = proxy.dir.path().join("requests.jsonl");
    let lines = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).map(|t| t.lines().count()).unwrap_or(0) >= results.len()
    })
    .await;
    assert!(lines.is_some(), "the request log has every request");
    let text = std::fs::read_to_string(&log).expect("log");
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let by_model = rows.iter().filter(|r| r["ml_decided"] == true).count();
    assert!(
        by_model as f64 >= 0.95 * rows.len() as f64,
        "{by_model} of {}",
        rows.len()
    );
    for r in &rows {
        assert_eq!(r["strategy"], "ml");
        assert!(r["f_failure_rate"].as_f64().is_some(), "{r}");
        if r["ml_decided"] == true {
            assert!(r["predicted_latency_us"].as_i64().is_some_and(|v| v > 0), "{r}");
            assert!(r["ml_fallback"].is_null(), "{r}");
        } else {
            assert_eq!(r["ml_decided"], false, "{r}");
            assert!(r["ml_fallback"].is_string(), "{r}");
        }
    }
    assert!(
        rows.iter().any(|r| r["f_latency_rif_ms"].as_f64().is_some()),
        "latency at the in-flight level is recorded once known"
    );
}

/// A local HTTP server that answers every request with 200 and a body that is not JSON.
async fn junk_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    // One answer per request head (bodies are small and read with it, or
                    // arrive later and count as nothing: the answer is junk either way).
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        let body = "certainly not json";
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Points the running proxy's `ml.endpoint` at `endpoint` with a hot reload.
async fn set_endpoint(p: &Proxy, from: &str, to: &str) {
    let text = std::fs::read_to_string(&p.main_path).expect("main file");
    assert!(text.contains(from), "{text}");
    let tmp = p.dir.path().join(".main.tmp");
    std::fs::write(&tmp, text.replace(from, to)).expect("write");
    std::fs::rename(&tmp, &p.main_path).expect("rename");
    let (status, body) = p.reload(None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["restart_required"],
        serde_json::json!([]),
        "ml applies on reload: {body}"
    );
}

/// Polls the metrics until `series` exceeds `above` (for at most `within`); the time from
/// `since` until it did.
async fn rises(p: &Proxy, series: &str, above: f64, since: Instant, within: Duration) -> Option<Duration> {
    eventually(within, || async { read_metric(p, series).await > above })
        .await
        .map(|_| since.elapsed())
}

/// (b) The model server killed, hung (SIGSTOP for 2 s) and answering garbage: every client
/// request still succeeds, the fallback engages with the right reason within a second, and
/// ML resumes by itself once the server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_engages_on_every_failure_and_ml_resumes_by_itself() {
    let mut model = ModelServer::start().await;
    let b = backends(2, Duration::from_millis(2)).await;
    let extra = ml_section(&model.url(), ", circuit_open_ms: 500");
    let proxy = Proxy::start_with(&upstreams("ml", &servers(&b), ""), &extra, &[]).await;
    wait_scored(&proxy).await;
    let stop = Arc::new(AtomicBool::new(false));
    let run = load(proxy.url("/"), 4, stop.clone());
    let within = Duration::from_secs(1);
    let resume_within = Duration::from_secs(10);
    assert!(
        rises(&proxy, DECISIONS, 50.0, Instant::now(), Duration::from_secs(5))
            .await
            .is_some(),
        "the model decides under load"
    );

    // 1. Killed: calls are refused.
    let before = read_metric(&proxy, &fallback("model_server_error")).await;
    let t = Instant::now();
    model.kill();
    let killed = rises(&proxy, &fallback("model_server_error"), before, t, within).await;
    let three = Duration::from_secs(3);
    let opened = rises(&proxy, "neurabalancer_ml_circuit_breaker_open", 0.0, t, three).await;
    let circuit = rises(&proxy, &fallback("circuit_open"), 0.0, t, three).await;
    let decided = read_metric(&proxy, DECISIONS).await;
    model.spawn().await;
    let t = Instant::now();
    let resumed_after_kill = rises(&proxy, DECISIONS, decided + 20.0, t, resume_within).await;
    eprintln!(
        "killed: fallback (model_server_error) {killed:?} after the kill, breaker open {opened:?} after, circuit_open decisions {circuit:?} after; restarted: ML resumed {resumed_after_kill:?} after it answered again"
    );
    assert!(killed.is_some(), "no model_server_error fallback within {within:?}");
    assert!(
        opened.is_some() && circuit.is_some(),
        "the breaker opens after repeated failures"
    );
    assert!(resumed_after_kill.is_some(), "ML did not resume after the restart");
    assert_eq!(
        read_metric(&proxy, "neurabalancer_ml_circuit_breaker_open").await,
        0.0,
        "a success closes the breaker"
    );

    // 2. Hung for 2 s: calls time out.
    let before = read_metric(&proxy, &fallback("timeout")).await;
    let stopped = Instant::now();
    model.signal("STOP");
    let hung = rises(&proxy, &fallback("timeout"), before, stopped, within).await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed())).await;
    let decided = read_metric(&proxy, DECISIONS).await;
    let t = Instant::now();
    model.signal("CONT");
    let resumed_after_hang = rises(&proxy, DECISIONS, decided + 20.0, t, resume_within).await;
    eprintln!(
        "hung: fallback (timeout) {hung:?} after SIGSTOP; SIGCONT after 2 s: ML resumed {resumed_after_hang:?} after it"
    );
    assert!(hung.is_some(), "no timeout fallback within {within:?}");
    assert!(resumed_after_hang.is_some(), "ML did not resume after SIGCONT");

    // 3. Garbage: a hot reload points ml.endpoint at a server that answers 200 with junk.
    let junk = format!("http://{}", junk_server().await);
    let before = read_metric(&proxy, &fallback("model_server_error")).await;
    let switched = Instant::now();
    set_endpoint(&proxy, &model.url(), &junk).await;
    let garbage = rises(&proxy, &fallback("model_server_error"), before, switched, within).await;
    let decided = read_metric(&proxy, DECISIONS).await;
    let t = Instant::now();
    set_endpoint(&proxy, &junk, &model.url()).await;
    let resumed_after_garbage = rises(&proxy, DECISIONS, decided + 20.0, t, resume_within).await;
    eprintln!(
        "garbage: fallback (model_server_error) {garbage:?} after the reload to the junk endpoint; endpoint restored: ML resumed {resumed_after_garbage:?} after that reload"
    );
    assert!(
        garbage.is_some(),
        "no model_server_error fallback within {within:?} of the reload"
    );
    assert!(
        resumed_after_garbage.is_some(),
        "ML did not resume on the restored endpoint"
    );

    stop.store(true, Relaxed);
    let results = run.await.expect("load");
    eprintln!(
        "{} requests through all three failures: {:?}",
        results.len(),
        tally(&results)
    );
    assert_all_ok(&results);
    assert!(read_metric(&proxy, "neurabalancer_ml_errors_total").await > 0.0);
}

/// Units are identical in training and serving: for a server's state, the row the scorer
/// sends (at the server's current requests in flight), in the order and units the REAL
/// model's metadata declares, equals feature by feature what the request record stores as
/// `f_*` (read back by the rules of docs/ml.md); and the model server accepts those rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_sent_are_the_recorded_features_in_the_models_order_and_units() {
    let model = ModelServer::start().await;
    let v = model.version().await;
    let m = &v["model"];
    let declared: Vec<FeatureSpec> = serde_json::from_value(m["features"].clone()).expect("features");
    let plan = Plan::new(m["version"].as_str().expect("version"), declared.clone())
        .expect("the shipped model is one the proxy can feed");

    let b = BackendStats::new("p".into(), "b", "127.0.0.1:1".parse().expect("addr"), 2, false);
    let params = Params::new(StrategyKind::Ml);
    let t0 = 50_000_000_000u64;
    params.observe(&b.load, 0, 6e6, false, t0);
    params.observe(&b.load, 1, 11e6, false, t0 + 1_000_000);
    params.observe(&b.load, 1, 2e6, true, t0 + 2_000_000);
    b.record_report(
        &LoadReport {
            cpu_utilization: Some(0.5),
            rps_fractional: None,
            queue: Some(2.0),
        },
        t0 + 3_000_000,
    );
    let _in_flight = b.load.track();
    let now = t0 + 40_000_000;

    let mut rows = Vec::new();
    backend_rows(&b, now, &params, true, &plan.rows, &mut rows);
    let w = plan.rows.width();
    let level = b.load.inflight() as usize;
    let sent = &rows[level * w..(level + 1) * w];

    let record = RequestRecord {
        time_us: 0,
        request_id: "r".into(),
        trace_id: None,
        pool: Some("p".into()),
        route: None,
        backend: Some(Arc::new("b".into())),
        backend_address: None,
        method: "GET",
        status: 200,
        error: None,
        latency_us: 1,
        upstream_latency_us: None,
        request_bytes: 0,
        response_bytes: 0,
        retries: 0,
        strategy: Some("ml"),
        features: Some(Features::of(&b, now, &params)),
        predicted_latency_us: None,
        ml_decided: Some(true),
        ml_fallback: None,
        client_addr: None,
    };
    let mut line = Vec::new();
    write_json(&REQUEST_COLUMNS, &record.cells(), &mut line);
    let stored: serde_json::Value = serde_json::from_slice(&line).expect("json");
    let col = |c: &str| stored[c].as_f64().unwrap_or(0.0) as f32; // docs/ml.md: null is 0
    for (k, f) in declared.iter().enumerate() {
        let want = match (f.name.as_str(), f.unit.as_str()) {
            ("inflight", "count") => col("f_inflight"),
            ("reported_queue", "count") => col("f_reported_queue"),
            ("has_report", "bool") => f32::from(u8::from(!stored["f_reported_queue"].is_null())),
            ("latency_ewma_ms", "ms") => col("f_latency_ewma_ms"),
            ("latency_rif_ms", "ms") => col("f_latency_rif_ms"),
            ("failure_rate", "ratio") => col("f_failure_rate"),
            ("weight", "count") => col("f_weight"),
            other => panic!("the model declares {other:?}, which has no request-record column"),
        };
        eprintln!("{:>16} [{}] sent {} recorded {want}", f.name, f.unit, sent[k]);
        assert_eq!(sent[k], want, "{} [{}]", f.name, f.unit);
    }

    // The model server takes exactly these rows (it checks names, order and units).
    let body = serde_json::json!({
        "features": declared,
        "rows": rows.chunks(w).collect::<Vec<_>>(),
    });
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!("{}/v1/score", model.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("score");
    let status = r.status();
    let answer: serde_json::Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["latency_ms"].as_array().map(Vec::len), Some(CURVE_LEVELS));
}
