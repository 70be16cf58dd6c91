//! The lab end to end: `nb-bench --scenario` with real `backend-sim` and `neurabalancer`
//! processes, a short run of two strategies, its table, `results.json` and charts, and
//! no process or temp dir left behind (also when interrupted).
//!
//! `neurabalancer` and `backend-sim` belong to other packages, so cargo does not build them
//! for this test; when one is missing next to `nb-bench`, the test builds it (same profile)
//! first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nb_bench() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nb-bench"))
}

/// Makes sure `neurabalancer`, `backend-sim` and `model-server` sit next to `nb-bench`
/// (where nb-bench looks for them).
fn ensure_proxy_built() {
    let dir = nb_bench().parent().expect("nb-bench is in a directory");
    for (package, bin) in [
        ("neurabalancer", "neurabalancer"),
        ("backend-sim", "backend-sim"),
        ("model-server", "model-server"),
    ] {
        if dir.join(bin).is_file() {
            continue;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", package, "--bin", bin])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        eprintln!("building {bin} for the lab test: {cmd:?}");
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
        assert!(dir.join(bin).is_file(), "no {bin} in {}", dir.display());
    }
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("nb-lab-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two small backends, one of which halves its capacity half-way (so the run is phased
/// and gets a p99-over-time chart).
const TINY: &str = "\
name: tiny
description: two backends, one slows down at 1.5 s
duration_s: 10
warmup_s: 1
deadline_ms: 500
load: { rate: 150 }
fleet:
  - { id: steady, slots: 4, service: { dist: constant, ms: 5 } }
  - { id: wobbly, slots: 4, service: { dist: constant, ms: 5 }, phases: [ { at_s: 1.5, slowdown: 2 } ] }
";

/// Processes whose command line mentions nb-bench's temp dirs for process `pid`.
fn strays(pid: u32) -> Vec<String> {
    let marker = format!("nb-bench-{pid}-");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&marker) {
            out.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    out
}

fn temp_dirs_of(pid: u32) -> Vec<PathBuf> {
    let marker = format!("nb-bench-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&marker)))
        .collect()
}

fn run_to_end(mut cmd: Command, limit: Duration) -> (Output, u32) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nb-bench");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(limit)
        .expect("nb-bench finishes in time")
        .expect("nb-bench output");
    (out, pid)
}

#[test]
fn a_short_lab_run_writes_the_table_results_and_charts() {
    let _serial = serial();
    ensure_proxy_built();
    let scratch = Scratch::new("run");
    let scenario = scratch.0.join("tiny.yaml");
    std::fs::write(&scenario, TINY).expect("write scenario");
    let out_dir = scratch.0.join("out");
    let mut cmd = Command::new(nb_bench());
    cmd.arg("--scenario")
        .arg(&scenario)
        .args(["--strategies", "round_robin,least_connections", "--reps", "1"])
        .args(["--duration", "2", "--warmup", "0.5", "--out"])
        .arg(&out_dir);
    let started = Instant::now();
    let (out, pid) = run_to_end(cmd, Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("took {:?}\n{stdout}\n{stderr}", started.elapsed());
    assert!(out.status.success(), "{out:?}");

    // The table: both strategies, ratios against the first, shares per backend.
    assert!(stdout.contains("p99/round_robin"), "{stdout}");
    let row = |name: &str| stdout.lines().find(|l| l.starts_with(name)).map(str::to_owned);
    assert!(
        row("round_robin")
            .expect("round_robin row")
            .trim_end()
            .ends_with("1.00x"),
        "{stdout}"
    );
    assert!(row("least_connections").is_some(), "{stdout}");
    assert!(stdout.contains("steady") && stdout.contains("wobbly"), "{stdout}");
    assert!(stderr.contains("one worker thread"), "{stderr}");

    // results.json.
    let json = std::fs::read_to_string(out_dir.join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["mode"], "lab");
    assert!(v["machine"]["nproc"].as_u64().expect("nproc") >= 1, "{}", v["machine"]);
    assert!(!v["machine"]["kernel"].as_str().expect("kernel").is_empty());
    assert!(v["command_line"].as_array().expect("argv").len() > 5);
    let s = &v["scenarios"][0];
    assert_eq!(s["scenario"]["name"], "tiny");
    assert_eq!(s["scenario"]["duration_s"], 2.0);
    assert_eq!(s["baseline"], "round_robin");
    let runs = s["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for (run, name) in runs.iter().zip(["round_robin", "least_connections"]) {
        assert_eq!(run["strategy"], name);
        let r = &run["report"];
        let sent = r["sent"].as_u64().expect("sent");
        assert!((200..=420).contains(&sent), "{name}: sent {sent}");
        assert_eq!(r["ok"].as_u64(), Some(sent), "{name}: {r}");
        let share = r["share"].as_object().expect("share");
        assert!(
            share.contains_key("steady") && share.contains_key("wobbly"),
            "{share:?}"
        );
        // Every measured request reached a backend: the fleet counted each decision once.
        let decided: u64 = r["decisions"]
            .as_object()
            .expect("decisions")
            .values()
            .filter_map(|v| v.as_u64())
            .sum();
        assert_eq!(decided, sent, "{name}: {r}");
        assert_eq!(r["timeline"].as_array().expect("timeline").len(), 2);
        assert!(r["latency_ms"]["p50"].as_f64().expect("p50") >= 5.0);
        let lag = r["dispatch_lag_ms"]["p99"].as_f64().expect("lag");
        // A 2 s run: one scheduling hiccup on a shared 2-core machine moves this p99 by tens of
        // ms; a generator that cannot keep up lags by seconds.
        assert!(lag < 100.0, "generator lagged {lag} ms");
    }
    let aggs = s["aggregates"].as_array().expect("aggregates");
    assert_eq!(aggs.len(), 2);
    assert_eq!(aggs[0]["p99_vs_baseline"]["ratio"], 1.0);
    assert_eq!(aggs[0]["p99_vs_baseline"]["pairs"], 1);
    assert!(aggs[1]["p99_vs_baseline"]["ratio"].as_f64().expect("ratio") > 0.0);
    // Routing decisions per backend, counted by the fleet.
    for a in aggs {
        let total: f64 = a["share"]
            .as_object()
            .expect("share")
            .values()
            .filter_map(|v| v.as_f64())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{a}");
    }

    // Charts.
    let charts: Vec<&str> = s["charts"]
        .as_array()
        .expect("charts")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(charts, ["tiny-latency.svg", "tiny-p99-over-time.svg"]);
    for c in charts {
        let svg = std::fs::read_to_string(out_dir.join(c)).expect("chart written");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{c}");
        assert!(svg.contains("round_robin") && svg.contains("least_connections"), "{c}");
    }

    // Nothing left behind.
    assert_eq!(strays(pid), Vec::<String>::new());
    assert_eq!(temp_dirs_of(pid), Vec::<PathBuf>::new());
}

#[test]
fn ctrl_c_stops_every_child_and_removes_the_temp_dir() {
    let _serial = serial();
    ensure_proxy_built();
    let scratch = Scratch::new("interrupt");
    let scenario = scratch.0.join("tiny.yaml");
    std::fs::write(&scenario, TINY).expect("write scenario");
    let mut child = Command::new(nb_bench())
        .arg("--scenario")
        .arg(&scenario)
        .args(["--strategies", "round_robin", "--duration", "30", "--out"])
        .arg(scratch.0.join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nb-bench");
    let pid = child.id();
    // Wait until the fleet and the proxy run, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while strays(pid).len() < 2 {
        assert!(Instant::now() < deadline, "the fleet and the proxy never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-s", "INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let exit = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("nb-bench stops")
        .expect("status");
    assert_eq!(exit.code(), Some(130));
    assert_eq!(strays(pid), Vec::<String>::new());
    assert_eq!(temp_dirs_of(pid), Vec::<PathBuf>::new());
    assert!(!scratch.0.join("out/results.json").exists());
}

/// Per (scenario, strategy): the headline p99, the error rate and the queueing p99 of a
/// `results.json` (medians over repetitions).
fn figures(results: &Path) -> std::collections::BTreeMap<(String, String), Figures> {
    let json = std::fs::read_to_string(results).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let mut out = std::collections::BTreeMap::new();
    for s in v["scenarios"].as_array().expect("scenarios") {
        let name = s["scenario"]["name"].as_str().expect("name").to_string();
        for a in s["aggregates"].as_array().expect("aggregates") {
            let strategy = a["strategy"].as_str().expect("strategy").to_string();
            let f = Figures {
                p99: a["latency_ms"]["p99"].as_f64().expect("p99"),
                errors: a["error_rate"].as_f64().expect("error rate"),
            };
            out.insert((name.clone(), strategy), f);
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    p99: f64,
    errors: f64,
}

/// Pairs of strategies whose p99s differ by less than this factor count as tied.
const TIE: f64 = 1.25;

/// The model against the real lab on every scenario, same seeds and durations.
///
/// Both play the same arrivals (one schedule) and the same per-request draws (the
/// generator tells each backend the request's index), and the simulator sleeps precisely,
/// so what separates them is what the model leaves out: the proxy hop and the load
/// generator (a fraction of a millisecond per request), three processes on two cores, and
/// the timing of health checks and ejections. Tolerance, per strategy: error rates within
/// 2 points + 25 %; where both error rates stay under 0.5 %, the lab's headline p99 within
/// [LOW, HIGH] × the model's + SLACK_MS (above that the p99 sits on the share of failures,
/// and the error rates are what to compare). Ordering: a pair of strategies the model
/// separates by more than [`TIE`], all four runs under 0.5 % errors, comes out in the same
/// order in the lab. Measured (one run, 10 s after 5 s, every scenario): the p99 ratio
/// lab/model was 1.00–1.19 everywhere but s4's round robin (1.38: its heavy-tailed class on
/// the 4-slot backends); error rates within 2.6 points (s2, round robin, 19.2 % against
/// 16.6 %). A fast failure costs the model nothing and the lab a proxy hop, so on s3 the
/// model sends least_connections to the sinkhole more often (errors 2.2 % against 0.5 %).
/// `ml` runs with a real model server in the lab and the same model scored in-process in the
/// model: lab/model 1.00–1.04 on every scenario (s5 1.04), errors within 0.7 points (s2, 13.0 %
/// against 13.6 %).
#[test]
fn the_model_agrees_with_the_lab_on_every_scenario() {
    const LOW: f64 = 0.8;
    const HIGH: f64 = 1.5;
    const CLEAN: f64 = 0.005;
    const SLACK_MS: f64 = 5.0;
    let _serial = serial();
    ensure_proxy_built();
    let scratch = Scratch::new("model");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/scenarios");
    let strategies = ["round_robin", "least_connections", "p2c_ewma", "prequal", "ml"];
    let mut dirs = Vec::new();
    for simulate in [false, true] {
        let out_dir = scratch.0.join(if simulate { "sim" } else { "real" });
        let mut cmd = Command::new(nb_bench());
        cmd.args(["--scenario", dir, "--strategies", &strategies.join(",")])
            .args(["--reps", "1", "--duration", "10", "--warmup", "5", "--out"])
            .arg(&out_dir);
        if simulate {
            cmd.arg("--simulate");
        }
        let (out, _) = run_to_end(cmd, Duration::from_secs(900));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        dirs.push(out_dir);
    }
    let (real, model) = (
        figures(&dirs[0].join("results.json")),
        figures(&dirs[1].join("results.json")),
    );
    let scenarios: std::collections::BTreeSet<&String> = model.keys().map(|(s, _)| s).collect();
    assert_eq!(scenarios.len(), 7, "{scenarios:?}");
    let mut misses = Vec::new();
    for scenario in scenarios {
        let get = |m: &std::collections::BTreeMap<(String, String), Figures>, s: &str| {
            *m.get(&(scenario.to_string(), s.to_string()))
                .unwrap_or_else(|| panic!("{scenario}/{s} missing"))
        };
        for s in strategies {
            let (r, m) = (get(&real, s), get(&model, s));
            eprintln!(
                "{scenario} {s}: lab p99 {:.1} ms, model {:.1} ms, ratio {:.2}; errors lab {:.2} %, model {:.2} %",
                r.p99,
                m.p99,
                r.p99 / m.p99,
                100.0 * r.errors,
                100.0 * m.errors
            );
            let clean = r.errors < CLEAN && m.errors < CLEAN;
            if clean && !(r.p99 >= LOW * m.p99 - SLACK_MS && r.p99 <= HIGH * m.p99 + SLACK_MS) {
                misses.push(format!(
                    "{scenario} {s}: p99 lab {:.1} ms vs model {:.1} ms",
                    r.p99, m.p99
                ));
            }
            if (r.errors - m.errors).abs() > 0.02 + 0.25 * r.errors.max(m.errors) {
                misses.push(format!(
                    "{scenario} {s}: errors lab {:.2} % vs model {:.2} %",
                    100.0 * r.errors,
                    100.0 * m.errors
                ));
            }
        }
        for (i, a) in strategies.iter().enumerate() {
            for b in &strategies[i + 1..] {
                let all = [get(&model, a), get(&model, b), get(&real, a), get(&real, b)];
                let clean = all.iter().all(|f| f.errors < CLEAN);
                let [ma, mb, ra, rb] = all.map(|f| f.p99);
                if clean && ma.max(mb) > TIE * ma.min(mb) && (ma < mb) != (ra < rb) {
                    misses.push(format!(
                        "{scenario}: model orders {a} {ma:.1} / {b} {mb:.1}, lab {ra:.1} / {rb:.1}"
                    ));
                }
            }
        }
    }
    assert!(
        misses.is_empty(),
        "the model and the lab disagree:\n{}",
        misses.join("\n")
    );
}
