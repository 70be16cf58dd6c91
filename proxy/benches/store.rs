//! What request recording costs, measured on this machine:
//!
//! 1. **Proxy throughput** under `wrk -t1 -c32` (one proxy worker thread, a zero-delay
//!    backend), recording off, to PostgreSQL and to JSONL, measured two ways:
//!    - *side by side*: the three proxies on CPU 0, each in its own session so the scheduler
//!      gives each process an equal share, loaded at the same time by a wrk each; wrk, the
//!      backend and PostgreSQL on the other CPU(s). The ratio of req/s is what recording
//!      costs the proxy per request, and drifts of the host fall on all proxies at once.
//!    - *one at a time*: everything sharing all CPUs, wrk taking turns (off, A, off, B, ...),
//!      each recording slice compared with the `off` slices around it. This one includes
//!      PostgreSQL's own ingest competing with the proxy for the same two cores.
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

use common::pg::PgCluster;
use common::{spawn, upstreams, BackendSpec, Proxy, Server};
use nb_lab::bench::{LoadSpec, RequestClass};
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
            failure_rate: 0.01,
            latency_rif_ms: Some(1.5),
        }),
        predicted_latency_us: None,
        ml_decided: None,
        ml_fallback: None,
        client_addr: None,
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

/// A proxy in front of `backend` with recording as `rec` (`storage`: more storage keys), run
/// under `wrapper` (see [`Proxy::start_under`]); the database URL when it has one (`db`, or a
/// new empty database).
async fn proxy(
    rec: Rec,
    pg: &PgCluster,
    backend: &backend_sim::BackendHandle,
    storage: &str,
    wrapper: &[&str],
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
    let p = Proxy::start_under(wrapper, &up, &main, &env).await;
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
    let secs = arg_value("--wrk-seconds").and_then(|s| s.parse().ok()).unwrap_or(3u64);
    let slices = arg_value("--slices").and_then(|s| s.parse().ok()).unwrap_or(10usize);
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
    // `off` always: it is what the others are compared with.
    let variants: Vec<Rec> = [Rec::Off, Rec::Postgres, Rec::Jsonl]
        .into_iter()
        .filter(|v| *v == Rec::Off || arg_value("--variants").is_none_or(|o| o.split(',').any(|x| x == v.name())))
        .collect();
    for side_by_side in [true, false] {
        if side_by_side && cpus() < 2 {
            writeln!(out, "### Proxy throughput side by side\n\nskipped: needs two CPUs\n").ok();
            continue;
        }
        let all = format!("0-{}", cpus() - 1);
        // Side by side: every variant's proxy on CPU 0, each in a session of its own (so the
        // scheduler shares the CPU equally between the processes, a recording proxy's writer
        // thread included), all loaded at once by a wrk each. This process (the backend, the
        // wrk clients) and PostgreSQL keep to the other CPUs, as a database on its own host
        // would. A proxy's share of req/s then shows what recording costs it per request,
        // and the machine's drifts (other tenants, CPU steal) fall on all of them at once.
        let others = format!("1-{}", cpus() - 1);
        let wrapper: &[&str] = if side_by_side {
            set_tree_cpus(std::process::id(), &others);
            pg.postmaster_pid().inspect(|&pid| set_tree_cpus(pid, &others));
            &["setsid", "taskset", "-c", "0"]
        } else {
            &[]
        };
        let rows_before = count(&history).await;
        let mut proxies = Vec::new();
        for &v in &variants {
            let (p, url) = proxy(v, pg, &backend, "", wrapper, Some(&history)).await;
            let target = p.url("/");
            tokio::task::spawn_blocking(move || wrk(&target, 2))
                .await
                .expect("warm-up");
            proxies.push((p, url));
        }
        // Per variant: each slice's (req/s, p99) and its ratio to `off`.
        let mut runs: Vec<Vec<(f64, String)>> = vec![Vec::new(); variants.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        if side_by_side {
            for slice in 0..slices {
                let clients: Vec<_> = proxies
                    .iter()
                    .map(|(p, _)| {
                        let target = p.url("/");
                        tokio::task::spawn_blocking(move || wrk(&target, secs))
                    })
                    .collect();
                let mut got = Vec::new();
                for c in clients {
                    got.push(c.await.expect("wrk"));
                }
                for (vi, r) in got.iter().enumerate() {
                    println!("side by side {slice}: {} {:.0} req/s", variants[vi].name(), r.0);
                    ratios[vi].push(r.0 / got[0].0);
                }
                for (vi, r) in got.into_iter().enumerate() {
                    runs[vi].push(r);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        } else {
            // One proxy at a time, sharing all CPUs with everything else: off, A, off, B,
            // off, B, off, A, off... Every recording slice lies between two `off` slices and
            // is compared with their mean.
            let mut order = Vec::new();
            for round in 0..slices {
                for k in 1..variants.len() {
                    order.push(0);
                    order.push(1 + (k - 1 + round) % (variants.len() - 1));
                }
            }
            order.push(0);
            let mut seq: Vec<(usize, f64)> = Vec::new();
            for vi in order {
                let target = proxies[vi].0.url("/");
                let (rps, p99) = tokio::task::spawn_blocking(move || wrk(&target, secs))
                    .await
                    .expect("wrk");
                println!("alternating: {} {rps:.0} req/s, p99 {p99}", variants[vi].name());
                runs[vi].push((rps, p99));
                seq.push((vi, rps));
                // Let the writer catch up before the next slice.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            for i in 1..seq.len() - 1 {
                if seq[i].0 != 0 {
                    ratios[seq[i].0].push(seq[i].1 / ((seq[i - 1].1 + seq[i + 1].1) / 2.0));
                }
            }
            ratios[0] = vec![1.0];
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut notes = Vec::new();
        for (v, (p, url)) in variants.iter().zip(&proxies) {
            let m = p.metrics().await;
            let written = metric(&m, "neurabalancer_store_rows_written_total", "table=\"requests\"");
            let dropped = metric(&m, "neurabalancer_store_rows_dropped_total", "");
            notes.push(match (v, url) {
                (Rec::Off, _) => String::new(),
                (_, Some(_)) => format!(
                    "{written:.0} written, {} rows added to `requests`, {dropped:.0} dropped",
                    count(&history).await - rows_before
                ),
                (_, None) => format!("{written:.0} written, {dropped:.0} dropped"),
            });
        }
        drop(proxies);
        if side_by_side {
            set_tree_cpus(std::process::id(), &all);
            pg.postmaster_pid().inspect(|&pid| set_tree_cpus(pid, &all));
        }
        let heading = if side_by_side {
            format!(
                "### Proxy throughput side by side: `wrk -t1 -c32 -d{secs}s` on every proxy at once\n\n\
                 One worker thread per proxy; all proxies on CPU 0, each in its own session (an equal \
                 share of the CPU per process, its writer thread included); wrk, the backend and \
                 PostgreSQL on the other CPU(s). \"vs off\": the median over slices of req/s against \
                 the `off` proxy's req/s in the same slice (the ratio of the medians in brackets)."
            )
        } else {
            format!(
                "### Proxy throughput one at a time: `wrk -t1 -c32 -d{secs}s`, all processes sharing the CPUs\n\n\
                 One worker thread; the proxy, wrk, the backend and PostgreSQL on the same 2 CPUs, so \
                 PostgreSQL's own work competes with the proxy's. wrk takes turns: off, A, off, B, off, B, \
                 off, A, off, ... \"vs off\": the median over a variant's slices of its req/s against \
                 the mean of the two `off` slices around it (the ratio of the medians in brackets)."
            )
        };
        table(out, &heading, &variants, &runs, &ratios, &notes);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Moves every thread of `pid` to `cpus` (a `taskset` list); false if it could not (the
/// process has exited).
fn try_set_cpus(pid: u32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// [`try_set_cpus`] for `pid` and all its descendants (those that exit meanwhile, such as
/// PostgreSQL's autovacuum workers, are skipped).
fn set_tree_cpus(pid: u32, cpus: &str) {
    try_set_cpus(pid, cpus);
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    for task in tasks {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            set_tree_cpus(child, cpus);
        }
    }
}

fn table(
    out: &mut String,
    heading: &str,
    variants: &[Rec],
    runs: &[Vec<(f64, String)>],
    ratios: &[Vec<f64>],
    notes: &[String],
) {
    writeln!(
        out,
        "{heading}\n\n\
         | recording | slices | req/s (each slice) | median | vs off | p99 (median) | records |\n|---|---|---|---|---|---|---|"
    )
    .ok();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ms = |p99: &str| {
        let num = |v: &str| v.parse::<f64>().ok();
        p99.strip_suffix("ms")
            .and_then(num)
            .or_else(|| p99.strip_suffix("us").and_then(num).map(|v| v / 1000.0))
            .or_else(|| p99.strip_suffix('s').and_then(num).map(|v| v * 1000.0))
            .unwrap_or(f64::NAN)
    };
    let rps = |vi: usize| runs[vi].iter().map(|r| r.0).collect::<Vec<f64>>();
    let base = median(rps(0));
    for (vi, v) in variants.iter().enumerate() {
        let each: Vec<String> = rps(vi).iter().map(|r| format!("{r:.0}")).collect();
        let med = median(rps(vi));
        writeln!(
            out,
            "| {} | {} | {} | **{med:.0}** | **{:.3}×** ({:.3}×) | {:.2}ms | {} |",
            v.name(),
            each.len(),
            each.join(" / "),
            median(ratios[vi].clone()),
            med / base,
            median(runs[vi].iter().map(|r| ms(&r.1)).collect()),
            notes[vi]
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
            let (p, _url) = proxy(v, pg, &backend, ", queue_capacity: 8192", &[], None).await;
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
            let r = nb_lab::bench::run(&spec).await.expect("load");
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
