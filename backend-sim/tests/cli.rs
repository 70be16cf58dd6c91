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
async fn start_logged(args: &[&str], id: &str) -> (tokio::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backend-sim"))
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start binary");
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
