//! The `nb-bench` binary end to end: summary, JSON file, exit status.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use backend_sim::{spawn, BackendSpec};
use tokio::process::Command;

async fn nb_bench(args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_nb-bench"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("nb-bench finishes in time")
    .expect("run nb-bench")
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("nb-bench-{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_a_summary_and_writes_json() {
    let b = spawn(BackendSpec::new("cli-b").with_delay(Duration::from_millis(2)))
        .await
        .expect("backend starts");
    let url = format!("http://{}/", b.addr());
    let json_path = temp_file("report.json");
    let json_arg = json_path.to_str().expect("utf-8 temp path");
    let out = nb_bench(&[
        "--url",
        &url,
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--deadline-ms",
        "500",
        "--seed",
        "3",
        "--json",
        json_arg,
        "--label",
        "cli-run",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let mut lines = stdout.lines();
    let header = lines.next().expect("header line");
    for col in [
        "label",
        "sent",
        "ok",
        "errors",
        "err%",
        "achieved/offered",
        "p99.9",
        "ok-p99",
        "queue-p99",
        "lag-p99",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(lines.next().expect("row").starts_with("cli-run "), "{stdout}");
    assert_eq!(lines.next(), Some("responses per backend: cli-b 100.0%"));

    let json = std::fs::read_to_string(&json_path).expect("JSON file written");
    let _ = std::fs::remove_file(&json_path);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["label"], "cli-run");
    assert_eq!(v["seed"], 3);
    assert_eq!(v["target_rps"], 200.0);
    let sent = v["sent"].as_u64().expect("sent");
    assert!(sent > 120 && sent < 280, "{v}");
    assert_eq!(v["ok"].as_u64(), Some(sent));
    assert_eq!(v["errors"], 0);
    assert_eq!(v["error_rate"], 0.0);
    assert_eq!(v["timeouts"], 0);
    assert_eq!(v["response_share"]["cli-b"], 1.0);
    assert!(v["success_latency_ms"]["p99"].as_f64().expect("ok p99") >= 2.0, "{v}");
    assert_eq!(v["queueing_count"].as_u64(), Some(sent));
    assert_eq!(v["status_counts"]["200"].as_u64(), Some(sent));
    for field in ["offered_rps", "achieved_rps", "goodput_rps"] {
        assert!(v[field].as_f64().expect(field) > 100.0, "{field}: {v}");
    }
    let latency = &v["latency_ms"];
    for q in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(latency[q].as_f64().expect(q) >= 2.0, "{q}: {v}");
    }
}

#[tokio::test]
async fn unreachable_url_fails_before_the_run() {
    // A port that was free a moment ago: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let out = nb_bench(&["--url", &url, "--rate", "10", "--duration", "1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    for args in [
        &["--url", "http://127.0.0.1:9/", "--rate", "0"][..],
        &["--url", "https://127.0.0.1:9/"],
        &["--url", "http://127.0.0.1:9/", "--duration=-1"],
        &["--rate", "10"],
    ] {
        let out = nb_bench(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}
