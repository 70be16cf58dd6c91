//! The model server end to end: real sockets on 127.0.0.1:0, the real ONNX Runtime, the
//! shipped model and a second real model of another version.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use model_server::scorer::{Feature, Model};
use model_server::testing::{previous_model, shipped_model, spawn_model_server};
use model_server::{Config, Server};
use serde_json::{json, Value};

type Task = tokio::task::JoinHandle<std::io::Result<()>>;

fn features() -> Vec<Feature> {
    Model::load(shipped_model()).expect("shipped model").features().to_vec()
}

fn version_of(path: &Path) -> String {
    Model::load(path).expect("model").version().to_string()
}

/// A row of the shipped model's width with `name` set to `value` and the rest to `base`.
fn row(features: &[Feature], set: &[(&str, f64)]) -> Vec<f64> {
    features
        .iter()
        .map(|f| {
            set.iter()
                .find(|(n, _)| *n == f.name)
                .map_or(if f.name == "weight" { 1.0 } else { 0.0 }, |(_, v)| *v)
        })
        .collect()
}

fn body(features: &[Feature], rows: &[Vec<f64>]) -> Value {
    json!({ "features": features, "rows": rows })
}

async fn start(path: impl Into<PathBuf>) -> (SocketAddr, Task) {
    spawn_model_server(path).await.expect("spawn")
}

/// A server whose watcher will not poll during the test (reloads only by `POST /v1/reload`).
async fn start_unwatched(path: impl Into<PathBuf>) -> (SocketAddr, Task) {
    let config = Config {
        model_path: path.into(),
        watch_interval: Duration::from_secs(3600),
    };
    Server::new(config)
        .spawn("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("spawn")
}

async fn post(addr: SocketAddr, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json answer"))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.expect("get");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (s, b) = get(addr, path).await;
    (s, serde_json::from_str(&b).expect("json"))
}

async fn score(addr: SocketAddr, body: &Value) -> (u16, Value) {
    post(addr, "/v1/score", body.to_string()).await
}

/// The value of one series in a Prometheus text page (0 when absent).
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("metric value"))
}

async fn metrics(addr: SocketAddr) -> String {
    let (s, page) = get(addr, "/metrics").await;
    assert_eq!(s, 200);
    page
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces `to` with `from` the way deployments do: write aside, then rename over.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

fn temp_model(dir: &tempfile::TempDir, from: &Path) -> PathBuf {
    let path = dir.path().join("scorer.onnx");
    std::fs::copy(from, &path).expect("copy model");
    path
}

async fn assert_400(body: impl Into<reqwest::Body>, want: &str) {
    let (addr, _task) = start(shipped_model()).await;
    let (status, answer) = post(addr, "/v1/score", body).await;
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(
        status == 400 && message.contains(want),
        "want 400 naming {want:?}, got {status} {answer}"
    );
}

#[tokio::test]
async fn scores_every_row_in_order_with_sane_outputs() {
    let (addr, _task) = start(shipped_model()).await;
    let f = features();
    let idle = row(&f, &[("latency_ewma_ms", 5.0), ("latency_rif_ms", 5.0)]);
    let busy = row(
        &f,
        &[
            ("inflight", 15.0),
            ("latency_ewma_ms", 80.0),
            ("latency_rif_ms", 80.0),
            ("failure_rate", 0.3),
        ],
    );
    let mut rows = vec![idle.clone(), busy.clone()];
    rows.extend((0..16).map(|i| row(&f, &[("inflight", f64::from(i)), ("latency_rif_ms", 10.0)])));
    let (status, answer) = score(addr, &body(&f, &rows)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model_version"], version_of(&shipped_model()));
    let lat: Vec<f64> = serde_json::from_value(answer["latency_ms"].clone()).expect("latency_ms");
    let pf: Vec<f64> = serde_json::from_value(answer["p_fail"].clone()).expect("p_fail");
    assert_eq!((lat.len(), pf.len()), (rows.len(), rows.len()));
    assert!(lat.iter().all(|l| l.is_finite() && *l > 0.0), "{lat:?}");
    assert!(pf.iter().all(|p| (0.0..=1.0).contains(p)), "{pf:?}");
    assert!(lat[1] > lat[0], "a loaded backend must look slower: {lat:?}");

    // One row at a time gives what the batch gave: rows are scored in order.
    for (i, r) in rows.iter().enumerate().step_by(5) {
        let (_, one) = score(addr, &body(&f, std::slice::from_ref(r))).await;
        let l = one["latency_ms"][0].as_f64().expect("latency");
        assert!(
            (l - lat[i]).abs() <= 1e-3 * lat[i].abs().max(1.0),
            "row {i}: {l} vs {}",
            lat[i]
        );
    }
}

#[tokio::test]
async fn large_batches_score_too() {
    let (addr, _task) = start(shipped_model()).await;
    let f = features();
    let rows: Vec<Vec<f64>> = (0..3000).map(|i| row(&f, &[("inflight", f64::from(i % 16))])).collect();
    let (status, answer) = score(addr, &body(&f, &rows)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["latency_ms"].as_array().map(Vec::len), Some(3000));
}

#[tokio::test]
async fn empty_rows_give_empty_arrays() {
    let (addr, _task) = start(shipped_model()).await;
    let (status, answer) = score(addr, &body(&features(), &[])).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["latency_ms"], json!([]));
    assert_eq!(answer["p_fail"], json!([]));
}

#[tokio::test]
async fn refuses_a_body_that_is_not_json() {
    assert_400("features: all", "body is not valid JSON").await;
}

#[tokio::test]
async fn refuses_a_body_that_is_not_the_schema() {
    let f = features();
    assert_400(json!({ "features": f }).to_string(), "missing field `rows`").await;
    assert_400(
        json!({ "features": f, "rows": [], "row": [] }).to_string(),
        "unknown field `row`",
    )
    .await;
    assert_400(json!({ "features": f, "rows": 3 }).to_string(), "`rows` to be an array").await;
    assert_400("[1, 2]", "body is not a score request").await;
}

#[tokio::test]
async fn refuses_a_row_of_the_wrong_length() {
    let f = features();
    let mut rows = vec![row(&f, &[]), row(&f, &[])];
    rows[1].pop();
    let want = format!("rows[1] has {} values; each row needs {}", f.len() - 1, f.len());
    assert_400(body(&f, &rows).to_string(), &want).await;
}

#[tokio::test]
async fn refuses_nan() {
    let f = features();
    let text = body(&f, &[row(&f, &[("inflight", 1234.5)])])
        .to_string()
        .replace("1234.5", "NaN");
    assert_400(text, "body is not valid JSON").await;
}

#[tokio::test]
async fn refuses_infinity() {
    let f = features();
    let text = body(&f, &[row(&f, &[]), row(&f, &[("latency_ewma_ms", 1234.5)])]).to_string();
    let col = f.iter().position(|x| x.name == "latency_ewma_ms").expect("column");
    assert_400(
        text.replace("1234.5", "1e39"),
        &format!("rows[1][{col}] = 1e39 is out of range for float32"),
    )
    .await;
    assert_400(text.replace("1234.5", "Infinity"), "body is not valid JSON").await;
}

#[tokio::test]
async fn refuses_null_in_a_row() {
    let f = features();
    let mut rows = vec![json!(row(&f, &[]))];
    rows[0][2] = Value::Null;
    assert_400(
        json!({ "features": f, "rows": rows }).to_string(),
        "invalid type: null, expected rows[0][2] to be a finite number",
    )
    .await;
}

#[tokio::test]
async fn refuses_a_string_in_a_row() {
    let f = features();
    let mut rows = vec![json!(row(&f, &[])), json!(row(&f, &[]))];
    rows[1][0] = json!("3");
    assert_400(
        json!({ "features": f, "rows": rows }).to_string(),
        "expected rows[1][0] to be a finite number",
    )
    .await;
}

#[tokio::test]
async fn refuses_an_unknown_feature() {
    let mut f = features();
    f[3].name = "cpu_load".into();
    let rows = vec![vec![0.0; f.len()]];
    assert_400(body(&f, &rows).to_string(), "unknown feature `cpu_load` at features[3]").await;
}

#[tokio::test]
async fn refuses_a_missing_feature() {
    let mut f = features();
    let gone = f.remove(2);
    let rows = vec![vec![0.0; f.len()]];
    assert_400(body(&f, &rows).to_string(), &format!("missing feature `{}`", gone.name)).await;
}

#[tokio::test]
async fn refuses_features_in_the_wrong_order() {
    let mut f = features();
    let (a, b) = (f[0].name.clone(), f[1].name.clone());
    f.swap(0, 1);
    let rows = vec![vec![0.0; f.len()]];
    assert_400(
        body(&f, &rows).to_string(),
        &format!("wrong order: features[0] is `{b}` but the model expects `{a}` there"),
    )
    .await;
}

#[tokio::test]
async fn refuses_a_unit_mismatch() {
    let mut f = features();
    let i = f.iter().position(|x| x.unit == "ms").expect("a feature in ms");
    f[i].unit = "s".into();
    let rows = vec![vec![0.0; f.len()]];
    assert_400(
        body(&f, &rows).to_string(),
        &format!(
            "unit mismatch: feature `{}` is in `s` but the model expects `ms`",
            f[i].name
        ),
    )
    .await;
}

#[tokio::test]
async fn without_a_model_answers_503_then_picks_the_file_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scorer.onnx");
    let (addr, _task) = start(&path).await;

    let (status, health) = get_json(addr, "/health").await;
    assert_eq!(status, 503);
    assert_eq!(health["status"], "no model");
    assert!(health["error"].as_str().is_some_and(|e| !e.is_empty()), "{health}");
    let (status, answer) = score(addr, &body(&features(), &[])).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("no model")),
        "{answer}"
    );
    let (status, version) = get_json(addr, "/version").await;
    assert_eq!((status, &version["model"]), (200, &Value::Null));
    assert_eq!(metric(&metrics(addr).await, "model_server_model_loaded"), 0.0);

    replace(&shipped_model(), &path);
    eventually("the watcher loads the new file", || async {
        get(addr, "/health").await.0 == 200
    })
    .await;
    let (_, health) = get_json(addr, "/health").await;
    assert_eq!(health["model_version"], version_of(&shipped_model()));
    let f = features();
    assert_eq!(score(addr, &body(&f, &[row(&f, &[])])).await.0, 200);
    let page = metrics(addr).await;
    assert_eq!(metric(&page, "model_server_model_loaded"), 1.0);
    assert!(
        metric(&page, "model_server_reloads_total{result=\"applied\"}") >= 1.0,
        "{page}"
    );
}

#[tokio::test]
async fn a_broken_file_at_start_is_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scorer.onnx");
    std::fs::write(&path, b"not a model").expect("write");
    let (addr, _task) = start(&path).await;
    let (status, health) = get_json(addr, "/health").await;
    assert_eq!(status, 503);
    assert!(
        health["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a loadable ONNX model")),
        "{health}"
    );
    replace(&shipped_model(), &path);
    eventually("the watcher loads the fixed file", || async {
        get(addr, "/health").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn the_watcher_swaps_in_a_changed_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = temp_model(&dir, &shipped_model());
    let (addr, _task) = start(&path).await;
    let (old, new) = (version_of(&shipped_model()), version_of(&previous_model()));
    assert_ne!(old, new, "the two model files must differ in version");
    assert_eq!(get_json(addr, "/version").await.1["model"]["version"], old);

    replace(&previous_model(), &path);
    eventually("the watcher applies the new model", || async {
        get_json(addr, "/version").await.1["model"]["version"] == new
    })
    .await;
    let f = features();
    let (status, answer) = score(addr, &body(&f, &[row(&f, &[])])).await;
    assert_eq!((status, &answer["model_version"]), (200, &json!(new)));
    let page = metrics(addr).await;
    assert_eq!(
        metric(&page, "model_server_reloads_total{result=\"applied\"}"),
        1.0,
        "{page}"
    );
    assert!(
        page.contains(&format!("model_server_model_info{{version=\"{new}\"}} 1")),
        "{page}"
    );
}

#[tokio::test]
async fn post_reload_applies_a_new_file_and_reports_an_unchanged_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = temp_model(&dir, &shipped_model());
    let (addr, _task) = start_unwatched(&path).await;
    let (old, new) = (version_of(&shipped_model()), version_of(&previous_model()));

    let (status, answer) = post(addr, "/v1/reload", "").await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({ "result": "unchanged", "model_version": old }));

    std::fs::copy(previous_model(), &path).expect("overwrite in place");
    let (status, answer) = post(addr, "/v1/reload", "").await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({ "result": "applied", "model_version": new }));
    assert_eq!(get_json(addr, "/health").await.1["model_version"], new);
    let page = metrics(addr).await;
    assert_eq!(metric(&page, "model_server_reloads_total{result=\"applied\"}"), 1.0);
    assert_eq!(metric(&page, "model_server_reloads_total{result=\"unchanged\"}"), 1.0);
}

#[tokio::test]
async fn post_reload_of_a_broken_file_keeps_the_old_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = temp_model(&dir, &shipped_model());
    let (addr, _task) = start_unwatched(&path).await;
    let old = version_of(&shipped_model());

    let mut bytes = std::fs::read(&path).expect("read");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, &bytes).expect("truncate");
    let (status, answer) = post(addr, "/v1/reload", "").await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a loadable ONNX model")),
        "{answer}"
    );

    let f = features();
    let (status, answer) = score(addr, &body(&f, &[row(&f, &[])])).await;
    assert_eq!((status, &answer["model_version"]), (200, &json!(old)));
    assert_eq!(get(addr, "/health").await.0, 200);
    let page = metrics(addr).await;
    assert_eq!(
        metric(&page, "model_server_reloads_total{result=\"error\"}"),
        1.0,
        "{page}"
    );
    assert_eq!(metric(&page, "model_server_model_loaded"), 1.0);

    std::fs::remove_file(&path).expect("remove");
    let (status, answer) = post(addr, "/v1/reload", "").await;
    assert_eq!(status, 422);
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read model file")),
        "{answer}"
    );
}

#[tokio::test]
async fn the_watcher_keeps_the_old_model_when_the_file_breaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = temp_model(&dir, &shipped_model());
    let (addr, _task) = start(&path).await;
    let old = version_of(&shipped_model());

    std::fs::write(dir.path().join("broken"), b"\x08\x07garbage").expect("write");
    std::fs::rename(dir.path().join("broken"), &path).expect("rename");
    eventually("the watcher counts the broken file", || async {
        metric(&metrics(addr).await, "model_server_reloads_total{result=\"error\"}") >= 1.0
    })
    .await;
    let f = features();
    let (status, answer) = score(addr, &body(&f, &[row(&f, &[])])).await;
    assert_eq!((status, &answer["model_version"]), (200, &json!(old)));
}

#[tokio::test]
async fn version_health_and_metrics_describe_the_model() {
    let (addr, _task) = start(shipped_model()).await;
    let model = Model::load(shipped_model()).expect("model");
    let (status, v) = get_json(addr, "/version").await;
    assert_eq!(status, 200);
    assert_eq!(v["name"], "model-server");
    assert_eq!(v["version"], model_server::VERSION);
    assert_eq!(v["model"]["version"], model.version());
    assert_eq!(v["model"]["features"], json!(model.features()));
    assert_eq!(v["model"]["trained_at"], model.info().trained_at);
    assert_eq!(v["model"]["training_rows"], model.info().training_rows);
    assert!(v["model"]["holdout"].is_object(), "{v}");

    let (status, h) = get_json(addr, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(h, json!({ "status": "ok", "model_version": model.version() }));

    let f = features();
    score(addr, &body(&f, &[row(&f, &[]), row(&f, &[])])).await;
    score(addr, &json!({ "features": [], "rows": [[1]] })).await;
    let page = metrics(addr).await;
    assert_eq!(
        metric(&page, "model_server_requests_total{path=\"/v1/score\",status=\"200\"}"),
        1.0,
        "{page}"
    );
    assert_eq!(
        metric(&page, "model_server_requests_total{path=\"/v1/score\",status=\"400\"}"),
        1.0,
        "{page}"
    );
    assert_eq!(metric(&page, "model_server_rows_scored_total"), 2.0);
    assert_eq!(metric(&page, "model_server_score_duration_seconds_count"), 1.0);
    assert_eq!(metric(&page, "model_server_model_loaded"), 1.0);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let (addr, _task) = start(shipped_model()).await;
    let c = reqwest::Client::new();
    let r = c.get(format!("http://{addr}/v1/score")).send().await.expect("get");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = c.post(format!("http://{addr}/health")).send().await.expect("post");
    assert_eq!(r.status(), 405);
    assert_eq!(get(addr, "/nope").await.0, 404);
    assert!(metrics(addr).await.contains("path=\"other\",status=\"404\""));
}
