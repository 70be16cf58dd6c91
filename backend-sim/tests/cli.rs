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
