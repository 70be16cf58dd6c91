//! What request recording costs, measured on this machine:
//!
//! 1. **Proxy throughput** under `wrk -t1 -c32` (one proxy worker thread, a zero-delay
//!    backend): recording off, to PostgreSQL, to JSONL; repetitions interleaved, their
//!    order rotated.
//! 2. **Latency at a fixed rate** (open-loop Poisson arrivals, 5 ms backend): recording
//!    off, to PostgreSQL, and to a PostgreSQL that is stopped during the whole run.
//! 3. **Writer throughput**: records per second the PostgreSQL writer (binary `COPY`, per
//!    batch size) and the JSONL sink sustain, from a full queue to the last row written.
//!
//! Run with `cargo bench -p neurabalancer --bench store` (or `scripts/bench_store.sh`,
//! which installs `wrk` first) on an otherwise idle machine. PostgreSQL is a throwaway
//! cluster on disk with PostgreSQL's default durability settings (or `DATABASE_URL`).
//! Prints markdown tables; a full run (no `--only`) also writes them to
//! `docs/bench/store.md`, which `scripts/bench_report.py` puts into `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_sim::bench::{LoadSpec, RequestClass};
use common::pg::PgCluster;
use common::{spawn, upstreams, BackendSpec, Proxy, Server};
use neurabalancer::config::StorageConfig;
use neurabalancer::features::Features;
use neurabalancer::store::{self, RequestRecord};
use pingora::services::background::BackgroundService;

/// Repetitions of every measurement (`--reps N`).
fn reps() -> usize {
    arg_value("--reps").and_then(|s| s.parse().ok()).unwrap_or(3)
}

fn arg_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn record(i: u64, backends: &[Arc<String>]) -> RequestRecord {
    let b = &backends[(i % backends.len() as u64) as usize];
    RequestRecord {
        time_us: store::record::now_unix_us(),
        request_id: format!("{:08x}-bench-{i:012}", i * 2_654_435_761 % 0xffff_ffff),
        trace_id: None,
        pool: Some("api".into()),
        route: Some("/".into()),
        backend: Some(b.clone()),
        backend_address: Some("127.0.0.1:8001".into()),
        method: "GET",
        status: 200,
        error: None,
        latency_us: 1_000 + (i % 5_000) as i64,
        upstream_latency_us: Some(900 + (i % 5_000) as i64),
        request_bytes: 0,
        response_bytes: 512,
        retries: 0,
        strategy: Some("p2c_ewma"),
        features: Some(Features {
            inflight: (i % 16) as f32,
            latency_ewma_ms: Some(1.0 + (i % 100) as f32 / 10.0),
            error_rate: 0.01,
            weight: 1.0,
            since_success_ms: Some(0.5),
            reported_cpu: Some(0.4),
            reported_queue: Some(2.0),
            reported_rps: Some(120.0),
        }),
        predicted_latency_us: None,
    }
}

/// Fills a queue with `n` records, then times the sink from start to the last write.
async fn time_sink(cfg: &StorageConfig, url: Option<String>, n: u64) -> f64 {
    let (recorder, service) = store::build_with_url(cfg, url).expect("store");
    let service = service.expect("a sink");
    let backends: Vec<Arc<String>> = (1..=8).map(|i| Arc::new(format!("backend-{i}"))).collect();
    for i in 0..n {
        recorder.record(record(i, &backends));
    }
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let task = tokio::spawn(async move { service.start(rx).await });
    assert!(recorder.flush(Duration::from_secs(120)).await, "flushed in time");
    let secs = t.elapsed().as_secs_f64();
    task.abort();
    n as f64 / secs
}

async fn count(url: &str) -> i64 {
    let c = store::pg_connect(url).await.expect("connect");
    c.query_one("SELECT count(*) FROM requests", &[])
        .await
        .expect("count")
        .get(0)
}

async fn writer(pg: &PgCluster, out: &mut String) {
    const N: u64 = 300_000;
    writeln!(out, "### Writer throughput ({N} records from a full queue)\n").ok();
    writeln!(
        out,
        "| sink | batch size | rows/s (each run) | median |\n|---|---|---|---|"
    )
    .ok();
    for batch in [1_024usize, 4_096, 16_384] {
        let mut runs = Vec::new();
        for _ in 0..reps() {
            let url = pg.create_database("writer").await;
            let c = store::pg_connect(&url).await.expect("connect");
            store::migrate::apply(&c).await.expect("migrate");
            let cfg = StorageConfig {
                batch_size: batch,
                queue_capacity: N as usize,
                snapshot_interval_ms: 0,
                ..StorageConfig::default()
            };
            runs.push(time_sink(&cfg, Some(url.clone()), N).await);
            assert_eq!(count(&url).await, N as i64, "every row written");
        }
        row(out, "postgres", batch, &mut runs);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runs = Vec::new();
    for i in 0..reps() {
        let cfg = StorageConfig {
            request_log_file: Some(dir.path().join(format!("r{i}.jsonl"))),
            queue_capacity: N as usize,
            request_log_max_bytes: 1 << 40,
            ..StorageConfig::default()
        };
        runs.push(time_sink(&cfg, None, N).await);
    }
    row(out, "jsonl", StorageConfig::default().batch_size, &mut runs);
    writeln!(out).ok();
}

fn row(out: &mut String, sink: &str, batch: usize, runs: &mut [f64]) {
    let each: Vec<String> = runs.iter().map(|r| format!("{:.0}", r)).collect();
    runs.sort_by(f64::total_cmp);
    writeln!(
        out,
        "| {sink} | {batch} | {} | **{:.0}** |",
        each.join(" / "),
        runs[runs.len() / 2]
    )
    .ok();
    println!("{sink} batch {batch}: {each:?}");
}

#[derive(Clone, Copy, PartialEq)]
enum Rec {
    Off,
    Postgres,
    /// PostgreSQL configured but stopped for the whole run.
    PostgresDown,
    Jsonl,
}

impl Rec {
    fn name(self) -> &'static str {
        match self {
            Rec::Off => "off",
            Rec::Postgres => "postgres",
            Rec::PostgresDown => "postgres, stopped",
            Rec::Jsonl => "jsonl",
        }
    }
}

/// A proxy in front of `backend` with recording as `rec`; the database URL when it has one
/// (`db`, or a new empty database).
async fn proxy(
    rec: Rec,
    pg: &PgCluster,
    backend: &backend_sim::BackendHandle,
    storage: &str,
    db: Option<&str>,
) -> (Proxy, Option<String>) {
    let up = upstreams(
        "round_robin",
        &[Server {
            id: backend.id(),
            addr: backend.addr(),
            weight: 1,
        }],
        "",
    );
    let url = match rec {
        Rec::Postgres => Some(match db {
            Some(url) => url.to_string(),
            None => pg.create_database("proxy").await,
        }),
        Rec::PostgresDown => Some(pg.create_database("proxy").await),
        Rec::Off | Rec::Jsonl => None,
    };
    let main = match rec {
        Rec::Jsonl => format!("storage: {{ request_log_file: requests.jsonl{storage} }}\n"),
        Rec::Postgres | Rec::PostgresDown => format!("storage: {{ snapshot_interval_ms: 1000{storage} }}\n"),
        Rec::Off => String::new(),
    };
    let env: Vec<(&str, &str)> = url.iter().map(|u| ("DATABASE_URL", u.as_str())).collect();
    if rec == Rec::PostgresDown {
        pg.stop();
    }
    let p = Proxy::start_with(&up, &main, &env).await;
    p.wait_ready().await;
    (p, url)
}

fn wrk(url: &str, secs: u64) -> (f64, String) {
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{secs}s"), "--latency", url])
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    (rps, p99)
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn throughput(pg: &PgCluster, out: &mut String) {
    if Command::new("wrk").arg("--version").output().is_err() {
        writeln!(out, "### Proxy throughput\n\nskipped: `wrk` is not installed\n").ok();
        return;
    }
    let secs = arg_value("--wrk-seconds").and_then(|s| s.parse().ok()).unwrap_or(10u64);
    let backend = spawn(BackendSpec::new("b1")).await.expect("backend");
    // The recording database of a running proxy has history: start from a million rows, so
    // the runs see steady-state autovacuum and ANALYZE, not the burst of them an empty table
    // gets while it grows (ANALYZE at every 10 % of growth).
    let history = pg.create_database("history").await;
    {
        let c = store::pg_connect(&history).await.expect("connect");
        store::migrate::apply(&c).await.expect("migrate");
        let cfg = StorageConfig {
            queue_capacity: 250_000,
            snapshot_interval_ms: 0,
            ..StorageConfig::default()
        };
        for _ in 0..4 {
            time_sink(&cfg, Some(history.clone()), 250_000).await;
        }
        c.batch_execute("VACUUM ANALYZE requests").await.expect("vacuum");
        c.batch_execute("CHECKPOINT").await.expect("checkpoint");
    }
    let variants: Vec<Rec> = [Rec::Off, Rec::Postgres, Rec::Jsonl]
        .into_iter()
        .filter(|v| arg_value("--variants").is_none_or(|o| o.split(',').any(|x| x == v.name())))
        .collect();
    let mut results: Vec<Vec<(f64, String, String)>> = vec![Vec::new(); variants.len()];
    for rep in 0..reps() {
        // Rotated each repetition (A B C, B C A, ...), so no variant always runs first.
        for k in 0..variants.len() {
            let vi = (k + rep) % variants.len();
            let v = variants[vi];
            let (p, url) = proxy(v, pg, &backend, "", Some(&history)).await;
            let target = p.url("/");
            let (rps, p99) = tokio::task::spawn_blocking(move || {
                wrk(&target, 2); // warm-up
                wrk(&target, secs)
            })
            .await
            .expect("wrk");
            // Let the writer finish, then see what it did.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let m = p.metrics().await;
            let written = metric(&m, "neurabalancer_store_rows_written_total", "table=\"requests\"");
            let dropped = metric(&m, "neurabalancer_store_rows_dropped_total", "");
            let note = match (v, url) {
                (Rec::Off, _) => String::new(),
                (_, Some(url)) => format!(
                    "{written:.0} written ({} rows), {dropped:.0} dropped",
                    count(&url).await
                ),
                (_, None) => format!("{written:.0} written, {dropped:.0} dropped"),
            };
            println!("rep {rep} {}: {rps:.0} req/s, p99 {p99}; {note}", v.name());
            results[vi].push((rps, p99, note));
        }
    }
    writeln!(
        out,
        "### Proxy throughput, `wrk -t1 -c32 -d{secs}s`, one proxy worker thread\n\n\
         \"vs off\": the median over repetitions of req/s against the `off` run of the same repetition \
         (the ratio of the medians in brackets).\n\n\
         | recording | req/s (each run) | median | vs off | p99 (each run) | records |\n|---|---|---|---|---|---|"
    )
    .ok();
    let median = |v: &Vec<(f64, String, String)>| {
        let mut r: Vec<f64> = v.iter().map(|x| x.0).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let base = median(&results[0]);
    for (vi, v) in variants.iter().enumerate() {
        let r = &results[vi];
        let each: Vec<String> = r.iter().map(|x| format!("{:.0}", x.0)).collect();
        let p99s: Vec<&str> = r.iter().map(|x| x.1.as_str()).collect();
        let notes: Vec<&str> = r.iter().map(|x| x.2.as_str()).filter(|s| !s.is_empty()).collect();
        let mut paired: Vec<f64> = r.iter().zip(&results[0]).map(|(x, o)| x.0 / o.0).collect();
        paired.sort_by(f64::total_cmp);
        writeln!(
            out,
            "| {} | {} | **{:.0}** | **{:.3}×** ({:.3}×) | {} | {} |",
            v.name(),
            each.join(" / "),
            median(r),
            paired[paired.len() / 2],
            median(r) / base,
            p99s.join(" / "),
            notes.join("; ")
        )
        .ok();
    }
    writeln!(out).ok();
}

async fn fixed_rate(pg: &PgCluster, out: &mut String) {
    let rate: f64 = arg_value("--rate").and_then(|s| s.parse().ok()).unwrap_or(1000.0);
    let backend = spawn(BackendSpec::new("b1").with_delay(Duration::from_millis(5)))
        .await
        .expect("backend");
    let variants = [Rec::Off, Rec::Postgres, Rec::PostgresDown];
    let mut p99s: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); variants.len()];
    let mut dropped_down = Vec::new();
    for rep in 0..reps() {
        for k in 0..variants.len() {
            let vi = (k + rep) % variants.len();
            let v = variants[vi];
            // A queue smaller than a run's records, so the stopped database makes it overflow.
            let (p, _url) = proxy(v, pg, &backend, ", queue_capacity: 8192", None).await;
            let spec = LoadSpec {
                url: p.url("/").parse().expect("uri"),
                rate,
                ramp_to: None,
                classes: Vec::<RequestClass>::new(),
                duration: Duration::from_secs(10),
                warmup: Duration::from_secs(2),
                deadline: Duration::from_secs(1),
                seed: rep as u64 + 1,
            };
            let r = backend_sim::bench::run(&spec).await.expect("load");
            if v == Rec::PostgresDown {
                let m = p.metrics().await;
                let dropped = metric(&m, "neurabalancer_store_rows_dropped_total", "queue_full");
                println!("  (database down: {dropped:.0} records dropped, queue 8,192)");
                dropped_down.push(format!("{dropped:.0}"));
                pg.restart();
            }
            let l = r.latency_ms;
            println!(
                "rep {rep} {}: p50 {:.2} ms, p99 {:.2} ms, errors {:.4}",
                v.name(),
                l.p50,
                l.p99,
                r.error_rate
            );
            p99s[vi].push((l.p50, l.p99, r.error_rate));
        }
    }
    writeln!(
        out,
        "### Latency at {rate:.0} req/s (open loop, 5 ms backend, 10 s after 2 s warm-up)\n\n\
         `storage.queue_capacity: 8192`, so with the database stopped the queue overflows: records dropped \
         (and counted) in those runs: {}.\n\n\
         | recording | p50 ms (each run) | p99 ms (each run) | median p99 | vs off | errors |\n|---|---|---|---|---|---|",
        dropped_down.join(" / ")
    )
    .ok();
    let med = |v: &Vec<(f64, f64, f64)>| {
        let mut r: Vec<f64> = v.iter().map(|x| x.1).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let base = med(&p99s[0]);
    for (vi, v) in variants.iter().enumerate() {
        let r = &p99s[vi];
        let p50: Vec<String> = r.iter().map(|x| format!("{:.2}", x.0)).collect();
        let p99: Vec<String> = r.iter().map(|x| format!("{:.2}", x.1)).collect();
        let err: f64 = r.iter().map(|x| x.2).fold(0.0, f64::max);
        writeln!(
            out,
            "| {} | {} | {} | **{:.2}** | {:.3}× | {:.2} % |",
            v.name(),
            p50.join(" / "),
            p99.join(" / "),
            med(r),
            med(r) / base,
            err * 100.0
        )
        .ok();
    }
    writeln!(out).ok();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let only = arg_value("--only");
        let pg = PgCluster::start_durable().await;
        let mut out = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.to_string()))
            .unwrap_or_default();
        writeln!(
            out,
            "Machine: {} cores, {}\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu.split(':').nth(1).unwrap_or("").trim()
        )
        .ok();
        let want = |s: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == s));
        if want("throughput") {
            throughput(&pg, &mut out).await;
        }
        if want("latency") {
            if pg.can_restart() {
                fixed_rate(&pg, &mut out).await;
            } else {
                writeln!(
                    out,
                    "### Latency\n\nskipped: DATABASE_URL names a server this bench cannot stop\n"
                )
                .ok();
            }
        }
        // The writer runs last: the millions of rows it writes leave PostgreSQL checkpointing
        // and vacuuming for a while, which would disturb the proxy measurements.
        if want("writer") {
            writer(&pg, &mut out).await;
        }
        println!("\n{out}");
        if only.is_none() {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/store.md");
            if let Err(e) = std::fs::write(&path, &out) {
                eprintln!("{}: {e}", path.display());
            }
        }
    });
}
