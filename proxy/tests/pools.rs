//! Pool resilience as an edge proxy sees it: clients cannot eject healthy servers, replacing
//! a pool's servers leaves no gap, a broken health path does not take a pool down, and
//! reloads neither repeat nor interrupt health checks.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `n` instant backends behind a ready proxy whose pool checks them every `interval_ms`.
async fn checked_pool(n: usize, interval_ms: u64) -> (Vec<BackendHandle>, Proxy) {
    let b = backends(n, Duration::ZERO).await;
    let hc = format!(
        "    health_check: {{ path: /health, interval_ms: {interval_ms}, timeout_ms: 300, rise: 1, fall: 1 }}\n"
    );
    let proxy = Proxy::start(&upstreams("round_robin", &servers(&b), &hc)).await;
    proxy.wait_ready().await;
    (b, proxy)
}

/// The backends that answer 30 GETs, each of which must succeed.
async fn ids_of_30_oks(proxy: &Proxy) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (st, id) = proxy.get("/").await;
        assert_eq!(st, 200);
        seen.insert(id);
    }
    seen
}

async fn ejected(proxy: &Proxy) -> Vec<String> {
    proxy
        .servers()
        .await
        .into_iter()
        .filter(|s| s["ejected"] == true)
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Defect: 14 requests to a path that answers 500 ejected two of three servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_500s_eject_nothing_by_default() {
    let b = backends(3, Duration::ZERO).await;
    for x in &b {
        x.set_status(500);
    }
    let proxy = Proxy::start(&upstreams("round_robin", &servers(&b), "")).await;
    for _ in 0..60 {
        assert_eq!(proxy.get("/broken").await.0, 500, "a 500 is passed through");
    }
    assert_eq!(ejected(&proxy).await, Vec::<String>::new());
    assert!(!proxy.metrics().await.contains("neurabalancer_backend_ejections_total{"));
    for x in &b {
        x.set_status(200);
    }
    let seen = ids_of_30_oks(&proxy).await;
    assert_eq!(seen.len(), 3, "every server still takes traffic: {seen:?}");
}

/// Gateway failures do eject, but never more than `max_ejection_percent` of the pool (at
/// least one server always stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_failures_eject_at_most_the_cap() {
    let b = backends(3, Duration::ZERO).await;
    for x in &b {
        x.set_status(503);
    }
    let extra =
        "    outlier_detection: { consecutive_gateway_failures: 2, base_ejection_ms: 60000, max_ejection_ms: 60000 }\n";
    let proxy = Proxy::start(&upstreams("round_robin", &servers(&b), extra)).await;
    for _ in 0..60 {
        assert_eq!(proxy.get("/").await.0, 503);
    }
    let out = ejected(&proxy).await;
    assert_eq!(out.len(), 1, "10 % of three: one ejected, got {out:?}");
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "neurabalancer_ejections_overflow_total{pool=\"api\"}") >= 1.0,
        "refused ejections are counted:\n{m}"
    );
    for x in &b {
        x.set_status(200);
    }
    let seen = ids_of_30_oks(&proxy).await;
    assert_eq!(seen.len(), 2, "the two servers not ejected serve: {seen:?}");
    assert!(!seen.contains(&out[0]));
}

/// Sends GETs at about `rate` per second (each of `workers` loops on its own interval) until
/// `stop`; returns (status, backend id) of each.
fn paced_load(url: String, rate: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(u16, String)>> {
    tokio::spawn(async move {
        let workers = 20u32;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(workers as usize)
            .build()
            .expect("client");
        let every = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(every * w / workers).await;
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut out = Vec::new();
                while !stop.load(Relaxed) {
                    tick.tick().await;
                    out.push(get_once(&client, &url).await);
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("load worker"));
        }
        all
    })
}

/// Defect: swapping a pool's servers for new ones gave a burst of 503s while the new ones
/// waited for their first check (and a second reload right after made it longer). Here the
/// new servers fail their checks for a while; the removed ones serve until they pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_every_server_under_load_fails_no_request() {
    let old = backends(3, Duration::from_millis(1)).await;
    let mut new = Vec::new();
    for i in 1..=3 {
        let b = spawn(BackendSpec::new(format!("new-{i}")).with_delay(Duration::from_millis(1)))
            .await
            .expect("backend");
        b.set_healthy(false);
        new.push(b);
    }
    let hc = "    health_check: { path: /health, interval_ms: 100, timeout_ms: 300, rise: 2, fall: 2 }\n";
    let proxy = Proxy::start(&upstreams("p2c_ewma", &servers(&old), hc)).await;
    proxy.wait_ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let run = paced_load(proxy.url("/"), 1000, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replaced = upstreams("p2c_ewma", &servers(&new), hc);
    proxy.write_upstreams(&replaced);
    assert_eq!(proxy.reload(None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(6)).await;
    // A second, different file right after (a comment is enough to make it a new version).
    proxy.write_upstreams(&format!("{replaced}# again\n"));
    assert_eq!(proxy.reload(None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leaving = proxy
        .servers()
        .await
        .iter()
        .filter(|s| s["membership"] == "leaving")
        .count();
    assert_eq!(
        leaving, 3,
        "the removed servers serve while the new ones fail their checks"
    );
    for b in &new {
        b.set_healthy(true);
    }
    let retired = eventually(Duration::from_secs(5), || async {
        proxy.servers().await.iter().all(|s| s["membership"] == "member")
    })
    .await
    .expect("removed servers retired once the new ones are healthy");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served_old: u64 = old.iter().map(|b| b.served()).sum();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    let results = run.await.expect("load");

    let counts = tally(&results);
    eprintln!(
        "replace under load: {} requests; retired {retired:?} after the new servers became healthy; {counts:?}",
        results.len()
    );
    assert_all_ok(&results);
    assert!(results.len() >= 1500, "load ran at about 1000/s: {}", results.len());
    for b in &new {
        assert!(counts.get(b.id()).copied().unwrap_or(0) > 0, "{} took traffic", b.id());
    }
    assert_eq!(
        old.iter().map(|b| b.served()).sum::<u64>(),
        served_old,
        "retired servers take no new requests"
    );
}

/// Defect: a health path that is broken while the servers answer traffic took the pool down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_health_path_does_not_take_the_pool_down() {
    let (b, proxy) = checked_pool(2, 100).await;
    for x in &b {
        x.set_healthy(false);
    }
    eventually(Duration::from_secs(3), || async {
        proxy.admin_get("/health/ready").await.0 == 503
    })
    .await
    .expect("readiness reports the unhealthy pool");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (st, id) = proxy.get("/").await;
        assert_eq!(st, 200, "panic routing: unhealthy servers that answer still serve");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 2);
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "neurabalancer_upstream_panic_total{pool=\"api\"}") >= 20.0,
        "panic decisions counted:\n{m}"
    );
}

/// Defect: every reload was a full reload; 100 reloads of unchanged files cost 100 extra
/// probes per server and bumped the version each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_unchanged_files_is_a_no_op() {
    let (b, proxy) = checked_pool(2, 500).await;
    let version = proxy.admin_json("/api/v1/config").await["version"].clone();
    let probes_before = b[0].health_checks();
    let t0 = Instant::now();
    for i in 0..100 {
        let (st, body) = proxy.reload(None).await;
        assert_eq!(st, 200, "reload {i}: {body}");
        assert_eq!(body["result"], "unchanged", "reload {i}: {body}");
        assert_eq!(body["version"], version, "reload {i}: {body}");
    }
    let took = t0.elapsed();
    let probes = b[0].health_checks() - probes_before;
    // One probe per interval, plus one of slack for a round in progress.
    let bound = took.as_millis() as u64 / 500 + 2;
    eprintln!("100 unchanged reloads in {took:?}: {probes} probes of one server (bound {bound})");
    assert!(
        probes <= bound,
        "{probes} probes in {took:?}: reloads restarted the checks"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "neurabalancer_config_reloads_total{result=\"unchanged\"}"),
        100.0
    );
    assert_eq!(
        metric(&m, "neurabalancer_config_reloads_total{result=\"success\"}"),
        0.0
    );
}

/// A server whose `/health` answers 200 until `hang` is set, then accepts connections and
/// never answers (a hung process).
async fn hangable_health_server(hang: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let held = Arc::new(AtomicUsize::new(0));
        while let Ok((mut sock, _)) = listener.accept().await {
            let (hang, held) = (hang.clone(), held.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                if hang.load(Relaxed) {
                    held.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                } else {
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                }
            });
        }
    });
    addr
}

/// Defect: each reload aborted the probes in flight, so frequent reloads kept a hung server
/// from ever being marked down. Reloads that change the files (but not the pool's checks)
/// now leave the probes running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_reloads_do_not_hide_a_hung_server() {
    let hang = Arc::new(AtomicBool::new(false));
    let hung = hangable_health_server(hang.clone()).await;
    let good = backends(1, Duration::ZERO).await;
    let list = [
        Server {
            id: "hung",
            addr: hung,
            weight: 1,
        },
        Server {
            id: good[0].id(),
            addr: good[0].addr(),
            weight: 1,
        },
    ];
    let hc = "    health_check: { path: /health, interval_ms: 100, timeout_ms: 400, rise: 1, fall: 1 }\n";
    let yaml = upstreams("round_robin", &list, hc);
    let proxy = Proxy::start(&yaml).await;
    eventually(Duration::from_secs(5), || async {
        proxy.server("hung").await.is_some_and(|s| s["healthy"] == true)
    })
    .await
    .expect("healthy at first");
    hang.store(true, Relaxed);
    let t0 = Instant::now();
    let mut i = 0;
    let mut down_after = None;
    while t0.elapsed() < Duration::from_secs(4) {
        i += 1;
        proxy.write_upstreams(&format!("{yaml}# reload {i}\n"));
        let (st, body) = proxy.reload(None).await;
        // The file watcher may apply the change first; the explicit reload then finds the
        // files as running.
        assert!(
            st == 200 && (body["result"] == "applied" || body["result"] == "unchanged"),
            "{st} {body}"
        );
        if proxy.server("hung").await.is_some_and(|s| s["healthy"] == false) {
            down_after = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("hung server marked down after {down_after:?}, {i} reloads");
    assert!(down_after.is_some(), "still healthy after {i} reloads in 4 s");
}
