//! Request recording against a real PostgreSQL (a throwaway cluster, or `DATABASE_URL`)
//! and the JSONL request log, through the real proxy binary.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::PgCluster;
use common::*;
use neurabalancer::store::migrate;
use neurabalancer::store::record::REQUEST_COLUMNS;

/// The tests here load the machine and time requests: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sum of a metric's samples whose label set contains every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A `SELECT count(*)`; -1 while the database or the table is not there.
async fn count(url: &str, sql: &str) -> i64 {
    let Ok(c) = neurabalancer::store::pg_connect(url).await else {
        return -1;
    };
    match c.query_one(sql, &[]).await {
        Ok(row) => row.get::<_, i64>(0),
        Err(_) => -1,
    }
}

/// Main-file lines that turn recording on with quick flushes.
fn storage(extra: &str) -> String {
    format!("storage:\n  flush_interval_ms: 50\n  snapshot_interval_ms: 200\n{extra}")
}

/// One pool per backend delay class: `/slow` goes to the slow backend, the rest to the fast
/// ones.
fn two_pools(fast: &[BackendHandle], slow: &BackendHandle) -> String {
    let mut s = String::from("pools:\n  api:\n    strategy: p2c_ewma\n    servers:\n");
    for b in fast {
        s.push_str(&format!("      - {{ id: {}, address: \"{}\" }}\n", b.id(), b.addr()));
    }
    s.push_str(&format!(
        "  slow:\n    servers:\n      - {{ id: {}, address: \"{}\" }}\n",
        slow.id(),
        slow.addr()
    ));
    s.push_str("routes:\n  - { path_prefix: /slow, pool: slow }\n  - { path_prefix: /, pool: api }\n");
    s
}

struct Seen {
    backend: String,
    status: u16,
    /// Client-measured, send to last body byte.
    latency_us: i64,
    /// False for a request whose measurement includes opening the connection.
    timed: bool,
}

async fn get_seen(client: &reqwest::Client, url: &str) -> (String, Seen) {
    let t = Instant::now();
    let r = client.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let backend = backend_id(&r);
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    r.bytes().await.expect("body");
    let latency_us = t.elapsed().as_micros() as i64;
    (
        id,
        Seen {
            backend,
            status,
            latency_us,
            timed: true,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_give_ten_thousand_matching_rows() {
    let _serial = SERIAL.lock().await;
    let pg = PgCluster::start().await;
    let url = pg.create_database("rows").await;
    let fast = backends(3, Duration::from_millis(1)).await;
    let slow = spawn(BackendSpec::new("slow-1").with_delay(Duration::from_millis(30)))
        .await
        .expect("slow backend");
    let proxy = Proxy::start_with(&two_pools(&fast, &slow), &storage(""), &[("DATABASE_URL", &url)]).await;

    const TOTAL: usize = 10_000;
    const SLOW: usize = 200;
    const CLIENTS: usize = 8;
    let per_client = (TOTAL - SLOW) / CLIENTS;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = proxy.client.clone();
        let url = proxy.url("/item");
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                v.push(get_seen(&client, &url).await);
            }
            v
        }));
    }
    let mut seen: HashMap<String, Seen> = HashMap::new();
    for t in tasks {
        seen.extend(t.await.expect("client"));
    }
    // Let the writer and PostgreSQL finish with those rows first: on two cores, their work
    // would otherwise delay requests before the proxy reads them (a scheduler time slice, ~4 ms).
    let fast_rows = (TOTAL - SLOW) as i64;
    eventually(Duration::from_secs(15), || async {
        count(&url, "SELECT count(*) FROM requests").await >= fast_rows
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Then the slow requests, one at a time, timed by a client on a thread of its own. (Run
    // next to the load on two cores, the time a request waits before the proxy reads it,
    // which the proxy cannot see, adds up to a few ms now and then.)
    let slow_url = proxy.url("/slow/x");
    let slow = common::on_own_thread(move || async move {
        let client = reqwest::Client::new();
        let mut v = Vec::with_capacity(SLOW);
        for i in 0..SLOW {
            let (id, mut seen) = get_seen(&client, &slow_url).await;
            seen.timed = i > 0;
            v.push((id, seen));
        }
        v
    });
    seen.extend(
        tokio::task::spawn_blocking(move || slow.join().expect("slow client"))
            .await
            .expect("join"),
    );
    assert_eq!(seen.len(), TOTAL, "every response had its own request id");
    assert!(seen.values().all(|s| s.status == 200), "all requests succeeded");

    let done = eventually(Duration::from_secs(15), || async {
        count(&url, "SELECT count(*) FROM requests").await >= TOTAL as i64
    })
    .await;
    assert!(
        done.is_some(),
        "rows: {}",
        count(&url, "SELECT count(*) FROM requests").await
    );
    let c = neurabalancer::store::pg_connect(&url).await.expect("connect");
    let rows = c
        .query(
            "SELECT request_id, backend, status, latency_us, pool, route, f_inflight, strategy, client_addr FROM requests",
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(rows.len(), TOTAL, "exactly one row per request");
    let mut slow_diffs = Vec::new();
    for r in &rows {
        let id: String = r.get(0);
        let s = seen.get(&id).unwrap_or_else(|| panic!("row for unknown request {id}"));
        let backend: Option<String> = r.get(1);
        assert_eq!(backend.as_deref(), Some(s.backend.as_str()), "request {id}");
        assert_eq!(r.get::<_, i16>(2), s.status as i16, "request {id}");
        assert!(r.get::<_, Option<f32>>(6).is_some(), "features recorded");
        let client: Option<String> = r.get(8);
        assert_eq!(
            client.as_deref(),
            Some("127.0.0.1"),
            "the client's address, request {id}"
        );
        let pool: String = r.get(4);
        let route: String = r.get(5);
        assert_eq!(
            (pool.as_str(), route.as_str()),
            if s.backend == "slow-1" {
                ("slow", "/slow")
            } else {
                ("api", "/")
            }
        );
        if s.backend == "slow-1" {
            assert_eq!(r.get::<_, String>(7), "p2c_ewma");
            if s.timed {
                slow_diffs.push((s.latency_us - r.get::<_, i64>(3)).abs());
            }
        }
    }
    assert_eq!(slow_diffs.len(), SLOW - 1);
    slow_diffs.sort_unstable();
    let max = *slow_diffs.last().unwrap_or(&0);
    println!(
        "slow requests: |client - recorded| latency p50 {} us, p99 {} us, max {} us",
        slow_diffs[slow_diffs.len() / 2],
        slow_diffs[slow_diffs.len() * 99 / 100],
        max
    );
    // Within 1 ms for (nearly) all of them. The rare exception on a shared two-core machine
    // is a request the scheduler held back before the proxy read it, which no proxy-side timer
    // can see; it is bounded here, and the figures are printed above.
    let within = slow_diffs.iter().filter(|d| **d < 1_000).count();
    assert!(
        within * 100 >= slow_diffs.len() * 98,
        "recorded latency within 1 ms of the client's for {within} of {}",
        slow_diffs.len()
    );
    assert!(max < 10_000, "max diff {max} us");

    let m = proxy.metrics().await;
    let written = metric(
        &m,
        "neurabalancer_store_rows_written_total",
        &[("sink", "postgres"), ("table", "requests")],
    );
    assert_eq!(written, TOTAL as f64);
    assert_eq!(metric(&m, "neurabalancer_store_rows_dropped_total", &[]), 0.0);
    // Snapshots and servers are written as well.
    assert!(eventually(Duration::from_secs(5), || async {
        count(&url, "SELECT count(*) FROM backend_snapshots").await >= 4
    })
    .await
    .is_some());
    assert_eq!(count(&url, "SELECT count(*) FROM servers").await, 4);
}

#[tokio::test]
async fn migrations_apply_once_even_when_started_together() {
    let _serial = SERIAL.lock().await;
    let pg = PgCluster::start().await;
    let url = pg.create_database("migrate").await;
    // Four clients race on an empty database.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = neurabalancer::store::pg_connect(&url).await.expect("connect");
            migrate::apply(&c).await.expect("migrations")
        }));
    }
    let mut applied = Vec::new();
    for t in tasks {
        applied.push(t.await.expect("task"));
    }
    let all: Vec<i32> = migrate::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied.iter().filter(|a| **a == all).count(), 1, "{applied:?}");
    assert_eq!(applied.iter().filter(|a| a.is_empty()).count(), 3, "{applied:?}");
    assert_eq!(
        count(&url, "SELECT count(*) FROM schema_migrations").await,
        all.len() as i64
    );
    for table in [
        "servers",
        "requests",
        "backend_snapshots",
        "models",
        "training_requests",
    ] {
        assert_eq!(
            count(&url, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table} exists"
        );
    }
    // Re-applying is a no-op, also through the CLI.
    let c = neurabalancer::store::pg_connect(&url).await.expect("connect");
    assert!(migrate::apply(&c).await.expect("again").is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write_conf(dir.path(), "");
    let out = std::process::Command::new(bin())
        .args(["migrate", "--config"])
        .arg(&main)
        .env("DATABASE_URL", &url)
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 0 migration(s) applied"
    );

    // At most one active model.
    c.batch_execute("INSERT INTO models (version, trained_at, active) VALUES ('a', now(), true), ('b', now(), false)")
        .await
        .expect("models");
    assert!(c
        .batch_execute("UPDATE models SET active = true WHERE version = 'b'")
        .await
        .is_err());

    // An edited migration is refused with a clear error.
    c.batch_execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        .await
        .expect("tamper");
    let e = migrate::apply(&c).await.expect_err("checksum mismatch");
    assert!(e.to_string().contains("must not be edited"), "{e}");
}

fn write_conf(dir: &std::path::Path, main_extra: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.join("upstreams.yaml"),
        "pools:\n  api: { servers: [ { id: a, address: \"127.0.0.1:9\" } ] }\nroutes:\n  - { pool: api }\n",
    )
    .expect("upstreams");
    let main = dir.join("neurabalancer.yaml");
    std::fs::write(
        &main,
        format!(
            "listen: 127.0.0.1:{}\nupstreams_file: upstreams.yaml\n{main_extra}",
            free_port()
        ),
    )
    .expect("main");
    main
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_starting_together_share_one_schema() {
    let _serial = SERIAL.lock().await;
    let pg = PgCluster::start().await;
    let url = pg.create_database("two").await;
    let b = backends(1, Duration::ZERO).await;
    let up = upstreams("round_robin", &servers(&b), "");
    let env = [("DATABASE_URL", url.as_str())];
    let main = storage("");
    let (p1, p2) = tokio::join!(Proxy::start_with(&up, &main, &env), Proxy::start_with(&up, &main, &env));
    for p in [&p1, &p2] {
        for _ in 0..50 {
            assert_eq!(p.get("/").await.0, 200);
        }
    }
    let ok = eventually(Duration::from_secs(10), || async {
        count(&url, "SELECT count(*) FROM requests").await == 100
    })
    .await;
    assert!(ok.is_some(), "logs:\n{}\n{}", p1.log(), p2.log());
    assert_eq!(
        count(&url, "SELECT count(*) FROM schema_migrations").await,
        migrate::MIGRATIONS.len() as i64
    );
    for p in [&p1, &p2] {
        assert!(!p.log().contains("migrations:"), "no migration error:\n{}", p.log());
    }
}

/// A proxy with one pool (`strategy` over `b`) that records to `url`, `main` added to its main file.
async fn recording_proxy(strategy: &str, b: &[BackendHandle], main: &str, url: &str) -> Proxy {
    Proxy::start_with(&upstreams(strategy, &servers(b), ""), main, &[("DATABASE_URL", url)]).await
}

/// A cluster the test may stop, with a fresh database on it; `None` (the test is skipped)
/// when `DATABASE_URL` names a server that is not ours to stop.
async fn restartable_database(hint: &str) -> Option<(PgCluster, String)> {
    let pg = PgCluster::start().await;
    if !pg.can_restart() {
        eprintln!("skipped: DATABASE_URL names a server this test cannot stop");
        return None;
    }
    let url = pg.create_database(hint).await;
    Some((pg, url))
}

/// Runs GET load until `stop`; returns (ok, failed) counts.
fn steady_load(url: String, clients: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let h = load(url, clients, stop);
    tokio::spawn(async move {
        let all = h.await.expect("load");
        let ok = all.iter().filter(|r| r.0 == 200).count();
        (ok, all.len() - ok)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_drops_counted_records_and_writing_resumes() {
    let _serial = SERIAL.lock().await;
    let Some((pg, url)) = restartable_database("outage").await else {
        return;
    };
    let b = backends(2, Duration::from_millis(1)).await;
    let proxy = recording_proxy(
        "p2c_ewma",
        &b,
        &storage("  queue_capacity: 2000\n  batch_size: 500\n"),
        &url,
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(proxy.url("/"), 8, stop.clone());

    let written = || async {
        let m = proxy.metrics().await;
        metric(
            &m,
            "neurabalancer_store_rows_written_total",
            &[("sink", "postgres"), ("table", "requests")],
        )
    };
    assert!(eventually(Duration::from_secs(5), || async { written().await > 500.0 })
        .await
        .is_some());
    pg.stop();
    let before = written().await;
    // Long enough for the 2,000-record queue to fill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = proxy.metrics().await;
    let dropped = metric(
        &m,
        "neurabalancer_store_rows_dropped_total",
        &[("sink", "postgres"), ("reason", "queue_full")],
    );
    assert!(dropped > 0.0, "records beyond the queue are dropped and counted");
    assert!(metric(&m, "neurabalancer_store_write_errors_total", &[("sink", "postgres")]) > 0.0);
    let during = written().await;
    pg.restart();
    let resumed = eventually(Duration::from_secs(15), || async { written().await > during + 1000.0 }).await;
    stop.store(true, Relaxed);
    let (ok, failed) = load.await.expect("load");
    println!(
        "outage: {ok} ok, {failed} failed; written before stop {before}, during {during}, dropped {dropped}, resumed after {resumed:?}"
    );
    assert_eq!(failed, 0, "no client errors while the database was down");
    assert!(resumed.is_some(), "writing resumed without a restart:\n{}", proxy.log());
    // What was held in the queue at restart reached the database too.
    let rows = count(&url, "SELECT count(*) FROM requests").await as f64;
    assert!(rows > during, "rows {rows} > {during}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_start_delays_recording_not_the_proxy() {
    let _serial = SERIAL.lock().await;
    let Some((pg, url)) = restartable_database("late").await else {
        return;
    };
    pg.stop();
    let b = backends(1, Duration::ZERO).await;
    let proxy = recording_proxy("round_robin", &b, &storage(""), &url).await;
    for _ in 0..20 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    pg.restart();
    for _ in 0..20 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    // Migrations run on the first connection; the held records follow.
    let ok = eventually(Duration::from_secs(15), || async {
        count(&url, "SELECT count(*) FROM requests").await == 40
    })
    .await;
    assert!(ok.is_some(), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_and_the_export_have_identical_columns_and_values() {
    let _serial = SERIAL.lock().await;
    let pg = PgCluster::start().await;
    let url = pg.create_database("export").await;
    let b = vec![backend_sim::spawn_profile(
        backend_sim::model::Profile::new("orca-1", backend_sim::model::Dist::Constant { ms: 1.0 }),
        Instant::now(),
    )
    .await
    .expect("backend")];
    let log_file = "requests.jsonl";
    let mut proxy = recording_proxy(
        "least_connections",
        &b,
        &storage(&format!("  request_log_file: {log_file}\n")),
        &url,
    )
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for i in 0..300 {
        let req = if i % 3 == 0 {
            proxy.client.post(proxy.url("/upload")).body(vec![b'x'; 1000])
        } else {
            proxy.client.get(proxy.url("/q")).header("traceparent", traceparent)
        };
        let r = req.send().await.expect("request");
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("endpoint-load-metrics").is_none(),
            "the backend's load report is removed"
        );
        r.bytes().await.expect("body");
    }
    // A graceful stop flushes both sinks before the process exits.
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert!(status.success());

    let file = std::fs::read_to_string(proxy.dir.path().join(log_file)).expect("request log");
    let out = proxy.dir.path().join("export.jsonl");
    let export = std::process::Command::new(bin())
        .args(["export-training", "--since", "1h", "--config"])
        .arg(&proxy.main_path)
        .arg("--out")
        .arg(&out)
        .env("DATABASE_URL", &url)
        .output()
        .expect("export");
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let exported = std::fs::read_to_string(&out).expect("export file");

    let parse = |text: &str| -> Vec<serde_json::Map<String, serde_json::Value>> {
        text.lines()
            .map(|l| match serde_json::from_str(l).expect("json line") {
                serde_json::Value::Object(o) => o,
                v => panic!("not an object: {v}"),
            })
            .collect()
    };
    let (mut a, mut b) = (parse(&file), parse(&exported));
    assert_eq!(a.len(), 300, "every request in the log");
    assert_eq!(b.len(), 300, "every request exported");
    // Every line has every column, in the same order.
    for line in file.lines().chain(exported.lines()) {
        let mut at = 0;
        for c in &REQUEST_COLUMNS {
            let key = format!("\"{}\":", c.name);
            at = line[at..]
                .find(&key)
                .map(|p| p + at + key.len())
                .unwrap_or_else(|| panic!("{} missing or out of order in {line}", c.name));
        }
    }
    for o in a.iter().chain(&b) {
        assert_eq!(o.len(), REQUEST_COLUMNS.len());
    }
    let key = |o: &serde_json::Map<String, serde_json::Value>| o["request_id"].as_str().unwrap_or("").to_string();
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b, "the same values from both");
    // Spot checks of what the rows hold.
    let posts = a.iter().filter(|o| o["method"] == "POST").count();
    assert_eq!(posts, 100);
    assert!(a
        .iter()
        .filter(|o| o["method"] == "POST")
        .all(|o| o["request_bytes"] == 1000));
    assert!(a
        .iter()
        .filter(|o| o["method"] == "GET")
        .all(|o| o["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"));
    // The backend's ORCA reports reach the features once it has sent one.
    let unreported = a.iter().filter(|o| !o["f_reported_cpu"].is_number()).count();
    assert!(
        unreported <= 1,
        "only the first request precedes every report: {unreported}"
    );

    // A missing database is a clear error.
    let e = std::process::Command::new(bin())
        .args(["export-training", "--since", "1h", "--config"])
        .arg(&proxy.main_path)
        .arg("--out")
        .arg(&out)
        .env_remove("DATABASE_URL")
        .output()
        .expect("export");
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("DATABASE_URL is not set"));
}

#[tokio::test]
async fn bad_storage_settings_stop_the_start_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write_conf(dir.path(), "admin: { listen: \"127.0.0.1:0\" }\n");
    let run = |env: Option<&str>, main: &std::path::Path| {
        let mut c = std::process::Command::new(bin());
        c.arg("run").arg("--config").arg(main);
        match env {
            Some(u) => c.env("DATABASE_URL", u),
            None => c.env_remove("DATABASE_URL"),
        };
        c.output().expect("run")
    };
    let out = run(Some("postgres://nobody@127.0.0.1:1/x?sslmode=bogus"), &main);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATABASE_URL: not a PostgreSQL URL"), "{err}");

    let main = write_conf(
        dir.path(),
        "admin: { listen: \"127.0.0.1:0\" }\nstorage: { request_log_file: /nonexistent-dir/r.jsonl }\n",
    );
    let out = run(None, &main);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage.request_log_file /nonexistent-dir/r.jsonl"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_database_refuses_is_dropped_and_counted_and_writing_goes_on() {
    let _serial = SERIAL.lock().await;
    let pg = PgCluster::start().await;
    let url = pg.create_database("reject").await;
    let b = backends(1, Duration::ZERO).await;
    let proxy = recording_proxy("round_robin", &b, &storage(""), &url).await;
    let written = || async {
        metric(
            &proxy.metrics().await,
            "neurabalancer_store_rows_written_total",
            &[("sink", "postgres"), ("table", "requests")],
        )
    };
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async { written().await == 10.0 })
            .await
            .is_some()
    );
    // An operator's constraint the next record breaks: the database refuses its batch.
    let c = neurabalancer::store::pg_connect(&url).await.expect("connect");
    c.batch_execute("ALTER TABLE requests ADD CONSTRAINT no_deletes CHECK (method <> 'DELETE')")
        .await
        .expect("constraint");
    let r = proxy.client.delete(proxy.url("/x")).send().await.expect("delete");
    assert_eq!(r.status(), 200, "the request itself is served");
    let rejected = eventually(Duration::from_secs(10), || async {
        metric(
            &proxy.metrics().await,
            "neurabalancer_store_rows_dropped_total",
            &[("sink", "postgres"), ("reason", "rejected")],
        ) == 1.0
    })
    .await;
    assert!(rejected.is_some(), "{}", proxy.log());
    // Later batches are written as before.
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async { written().await == 20.0 })
            .await
            .is_some()
    );
    assert_eq!(count(&url, "SELECT count(*) FROM requests").await, 20);
    assert!(proxy.log().contains("batch rejected"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_exit_with_the_database_down_still_flushes_the_request_log() {
    let _serial = SERIAL.lock().await;
    let Some((pg, url)) = restartable_database("exit").await else {
        return;
    };
    pg.stop();
    let b = backends(1, Duration::ZERO).await;
    let mut proxy = recording_proxy(
        "round_robin",
        &b,
        &storage("  request_log_file: requests.jsonl\n"),
        &url,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    let t = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert!(status.success());
    let took = t.elapsed();
    let lines = std::fs::read_to_string(proxy.dir.path().join("requests.jsonl"))
        .expect("log")
        .lines()
        .count();
    assert_eq!(lines, 20, "the file sink flushed although the database sink could not");
    assert!(
        proxy.log().contains("records not written before exit"),
        "the unwritten records are reported:\n{}",
        proxy.log()
    );
    // Both flushes ran at once, bounded by one timeout (5 s), not one after the other.
    assert!(took < Duration::from_secs(9), "exit took {took:?}");
}
