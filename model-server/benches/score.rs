//! Rows scored per second with the shipped model, at batch sizes 1, 16 and 256 (one backend
//! row, one in-flight curve, a pool of 16 backends' curves):
//!
//! - `onnx/N`: [`Model::score`] alone, one ONNX Runtime call per batch;
//! - `http/N`: the full request path, a `POST /v1/score` on loopback to a server spawned in
//!   this process (JSON encoding, parsing, checks, scoring, the answer), over one kept-alive
//!   connection.
//!
//! Run with `cargo bench -p model-server --bench score` on an otherwise idle machine.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use model_server::scorer::Model;
use model_server::testing::{shipped_model, spawn_model_server};

const BATCHES: [usize; 3] = [1, 16, 256];

/// `n` plausible rows (in-flight cycling 0..15) for `model`, row-major.
fn rows(model: &Model, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * model.features().len());
    for r in 0..n {
        for f in model.features() {
            out.push(match f.name.as_str() {
                "inflight" => (r % 16) as f32,
                "latency_ewma_ms" | "latency_rif_ms" => 12.5,
                "failure_rate" => 0.01,
                "weight" => 1.0,
                _ => 0.0,
            });
        }
    }
    out
}

fn onnx(c: &mut Criterion) {
    let model = Model::load(shipped_model()).expect("shipped model");
    let mut g = c.benchmark_group("onnx");
    for n in BATCHES {
        let input = rows(&model, n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            b.iter(|| model.score(input, n).expect("score"));
        });
    }
    g.finish();
}

fn http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, _task) = rt.block_on(spawn_model_server(shipped_model())).expect("spawn");
    let model = Model::load(shipped_model()).expect("shipped model");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let url = format!("http://{addr}/v1/score");
    let mut g = c.benchmark_group("http");
    g.measurement_time(Duration::from_secs(5));
    for n in BATCHES {
        let values = rows(&model, n);
        let width = model.features().len();
        let table: Vec<&[f32]> = values.chunks(width).collect();
        let body = bytes::Bytes::from(serde_json::json!({ "features": model.features(), "rows": table }).to_string());
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
            b.to_async(&rt).iter(|| async {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("answer")
            });
        });
    }
    g.finish();
}

criterion_group!(benches, onnx, http);
criterion_main!(benches);
