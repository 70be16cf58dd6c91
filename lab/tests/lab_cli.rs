//! `nb-bench --scenario … --simulate` end to end (the model needs no processes), and the
//! scenario mode's argument errors.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn nb_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nb-bench"))
        .args(args)
        .output()
        .expect("run nb-bench")
}

fn scenarios() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../conf/scenarios")
        .display()
        .to_string()
}

fn out_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("nb-lab-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn simulate_runs_every_scenario_with_greedy_beside_the_first_strategy_as_the_baseline() {
    let out = out_dir("sim");
    let out_arg = out.display().to_string();
    let started = Instant::now();
    // Peers are named to show that they are skipped with a note, not an error.
    let o = nb_bench(&[
        "--scenario",
        &scenarios(),
        "--simulate",
        "--strategies",
        "round_robin,p2c_ewma,nginx:least_conn",
        "--duration",
        "5",
        "--out",
        &out_arg,
    ]);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(took < Duration::from_secs(120), "took {took:?}");
    let files = std::fs::read_dir(scenarios())
        .expect("scenario directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    assert!(files >= 7, "{files} scenario files");
    assert_eq!(stdout.matches("p99/round_robin [95% CI]").count(), files, "{stdout}");
    assert_eq!(
        stdout
            .matches("skipped nginx:least_conn: peer proxies are not modelled")
            .count(),
        files
    );

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json")).expect("JSON");
    assert_eq!(v["mode"], "simulate");
    let list = v["scenarios"].as_array().expect("scenarios");
    assert_eq!(list.len(), files);
    for s in list {
        let name = s["scenario"]["name"].as_str().expect("name");
        assert_eq!(s["baseline"], "round_robin", "{name}");
        let strategies: Vec<&str> = s["aggregates"]
            .as_array()
            .expect("aggregates")
            .iter()
            .filter_map(|a| a["strategy"].as_str())
            .collect();
        assert_eq!(strategies, ["round_robin", "p2c_ewma", "greedy"], "{name}");
        assert_eq!(s["aggregates"][0]["p99_vs_baseline"]["ratio"], 1.0, "{name}");
        assert!(
            s["aggregates"][2]["p99_vs_baseline"]["ratio"].as_f64().expect("ratio") > 0.0,
            "{name}"
        );
        assert!(s["runs"][0]["report"]["sent"].as_u64().expect("sent") > 1000, "{name}");
        let chart = out.join(format!("{name}-latency.svg"));
        assert!(chart.is_file(), "{}", chart.display());
    }
    // Phased scenarios also chart p99 over time.
    for phased in ["s2-noisy-neighbour", "s5-cold-join"] {
        assert!(out.join(format!("{phased}-p99-over-time.svg")).is_file(), "{phased}");
    }
    assert!(!out.join("s1-static-skew-p99-over-time.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn scenario_mode_argument_errors_exit_2() {
    let s1 = format!("{}/s1-static-skew.yaml", scenarios());
    let cases: [&[&str]; 6] = [
        &["--scenario", &s1, "--strategies", "fastest", "--simulate"],
        &["--scenario", "/nonexistent/scenario.yaml", "--simulate"],
        &["--simulate"],
        &["--url", "http://127.0.0.1:9/", "--strategies", "round_robin"],
        &["--scenario", &s1, "--reps", "0", "--simulate"],
        &["--scenario", &s1, "--duration", "-3", "--simulate"],
    ];
    for args in cases {
        let o = nb_bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{args:?}: {o:?}");
    }
}
