//! The binary end to end: start, serve, exit 0 on SIGTERM.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{client, url};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn single_backend_serves_and_exits_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend-sim"))
        .args(["--listen", "127.0.0.1:0", "--id", "cli-1", "--delay-ms", "1"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start binary");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if let Some(rest) = line.split("addr=").nth(1) {
                assert!(line.contains("cli-1"), "{line}");
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("listening line in time")
    .expect("listening line");
    let addr = addr.parse().expect("socket address");

    let resp = client().get(url(addr, "/cli")).send().await.expect("request");
    assert_eq!(resp.headers()["x-backend-id"], "cli-1");

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// Starts the binary with `args` and returns it with the address of the
/// backend named `id`, read from its start-up log line.
/// The binary with `args`, logging at `info` to a pipe on its stderr; killed on drop.
fn spawn_logging(args: &[&str]) -> tokio::process::Child {
    Command::new(env!("CARGO_BIN_EXE_backend-sim"))
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start binary")
}

async fn start_logged(args: &[&str], id: &str) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = spawn_logging(args);
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if line.contains(&format!("id={id} ")) {
                let rest = line.split("addr=").nth(1).expect("addr field");
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("start-up line in time")
    .expect("start-up line");
    (child, addr.parse().expect("socket address"))
}

#[tokio::test]
async fn epoch_flag_sets_the_origin_of_phases() {
    // Down from 0 s, up from 30 s: with an epoch a minute ago it is up at once.
    let fleet = std::env::temp_dir().join(format!("nb-sim-epoch-{}.yaml", std::process::id()));
    std::fs::write(
        &fleet,
        "backends:\n  - { id: late, phases: [ { at_s: 0, down: true }, { at_s: 30, down: false } ] }\n",
    )
    .expect("write fleet file");
    let path = fleet.to_str().expect("UTF-8 path");

    let (_fresh, addr) = start_logged(&["--fleet", path], "late").await;
    let err = tokio::net::TcpStream::connect(addr).await.expect_err("not joined yet");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    let epoch = (now_ms - 60_000).to_string();
    let (_old, addr) = start_logged(&["--fleet", path, "--epoch-unix-ms", &epoch], "late").await;
    let resp = client().get(url(addr, "/")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend-id"], "late");
    assert!(resp.headers().contains_key("endpoint-load-metrics"));
    let _ = std::fs::remove_file(&fleet);
}

#[tokio::test]
async fn bad_fleet_file_exits_non_zero() {
    let status = Command::new(env!("CARGO_BIN_EXE_backend-sim"))
        .args(["--fleet", "/nonexistent/fleet.yaml"])
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run binary");
    assert!(!status.success());
}

#[tokio::test]
async fn seed_flag_and_the_fleet_stats_listener() {
    use backend_sim::backend::{service_timing, NO_SERVICE_TIMING};
    use backend_sim::model::{request_stream, size_stream, Fate};
    use backend_sim::{FleetConfig, Stats};

    let yaml = "seed: 3\nbackends:\n  \
                - { id: up, service: { dist: exponential, mean_ms: 2 }, errors: { fast_503: 0.2 } }\n  \
                - { id: down, phases: [ { at_s: 0, down: true } ] }\n";
    let fleet = std::env::temp_dir().join(format!("nb-sim-stats-{}.yaml", std::process::id()));
    std::fs::write(&fleet, yaml).expect("write fleet file");
    let path = fleet.to_str().expect("UTF-8 path");
    let mut child = spawn_logging(&["--fleet", path, "--seed", "5", "--stats-listen", "127.0.0.1:0"]);
    // Backends log their address first, then the stats listener its own.
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (up, stats_addr) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut up = None;
        while let Some(line) = lines.next_line().await.expect("read log") {
            let addr = || line.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok();
            if line.contains("id=up ") {
                assert!(line.contains("seed=5"), "--seed beats the file: {line}");
                up = addr();
            } else if line.contains("fleet stats listening") {
                return (up.expect("the backend's line came first"), addr().expect("stats addr"));
            }
        }
        panic!("no stats line");
    })
    .await
    .expect("start-up lines in time");
    let _ = std::fs::remove_file(&fleet);

    let c = client();
    let mut served = 0;
    for i in 0..20u64 {
        let resp = c
            .get(url(up, "/x"))
            .header("x-nb-request", i.to_string())
            .header("x-nb-measured", "1")
            .send()
            .await
            .expect("request");
        let cfg = FleetConfig::from_yaml(yaml).expect("valid");
        let p = &cfg.backends[0].profile;
        let draw = p.draw(
            &p.errors,
            "/x",
            &mut request_stream(5, "up", i),
            Some(&mut size_stream(5, i)),
        );
        let want = match draw.fate {
            Fate::Fast503 => (503, NO_SERVICE_TIMING.to_owned()),
            _ => (200, service_timing(draw.service_ms)),
        };
        let got = (
            resp.status().as_u16(),
            resp.headers()["server-timing"].to_str().expect("ASCII").to_owned(),
        );
        assert_eq!(got, want, "request {i} drawn with seed 5");
        served += usize::from(got.0 == 200);
    }
    assert!(served > 5, "{served}");

    let resp = c.get(url(stats_addr, "/stats")).send().await.expect("stats request");
    assert_eq!(resp.status(), 200);
    let all: Vec<Stats> = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON array");
    let summary: Vec<_> = all
        .iter()
        .map(|s| (s.id.as_str(), s.down, s.arrived, s.measured))
        .collect();
    assert_eq!(summary, [("up", false, 20, 20), ("down", true, 0, 0)]);
}
