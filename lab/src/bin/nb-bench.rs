//! `nb-bench`: open-loop Poisson load, against one URL or through whole scenarios.
//!
//! * `--url URL`: offer load to a running target and summarise latency
//!   ([`nb_lab::bench`]).
//! * `--scenario FILE|DIR…`: the lab ([`nb_lab::lab`]): for every strategy a fresh
//!   fleet and proxy, interleaved repetitions, a comparison table, `results.json` and SVG
//!   charts in `--out`.
//! * `--scenario … --simulate`: the same scenarios through the discrete-event model.
//!
//! Kept thin on purpose: the method lives in the library. Exit status: 0 when every run
//! completed (even with request errors), 1 when a target is unreachable, a run failed or
//! an output cannot be written, 2 for bad arguments or scenario files, 130 on Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hyper::Uri;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nb_lab::bench::{self, BenchError, LoadSpec};
use nb_lab::lab::{self, procs, LabOptions, Machine, Results, ScenarioResult, Target};
use nb_lab::scenario::Scenario;

/// Open-loop HTTP load generator and benchmark lab for NeuraBalancer.
#[derive(Debug, Parser)]
#[command(version, about)]
#[command(group = clap::ArgGroup::new("mode").required(true).args(["url", "scenario"]))]
struct Args {
    /// Target of every GET request (plain http): load one running target.
    #[arg(long)]
    url: Option<Uri>,
    /// Scenario files or directories of them (`*.yaml`): run each in the lab (or the
    /// model with --simulate). Several may be given, space- or comma-separated.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    scenario: Vec<PathBuf>,
    /// Strategies, comma-separated, in run order of the first repetition (the order
    /// rotates between repetitions; the first is the default --baseline). Ours:
    /// round_robin, weighted_round_robin, least_connections, random, p2c_ewma,
    /// orca_least_delay, prequal, ml (the learned strategy, with its model server), each also as
    /// NAME@no_orca (backends without ORCA load reports); with --simulate also the
    /// references greedy and clairvoyant; peers: nginx:least_conn, nginx:random_two,
    /// haproxy:leastconn, haproxy:roundrobin. [default: round_robin,least_connections,
    /// p2c_ewma; with --simulate every classic strategy and both references]
    #[arg(long, conflicts_with = "url")]
    strategies: Option<String>,
    /// The strategy the others' p99 is divided by, paired per repetition [default: the
    /// first].
    #[arg(long, conflicts_with = "url")]
    baseline: Option<String>,
    /// Repetitions; each runs every strategy once, in order.
    #[arg(long, default_value_t = 1, conflicts_with = "url", value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Directory for results.json and the SVG charts (created if needed).
    #[arg(long, default_value = "nb-bench-results", conflicts_with = "url")]
    out: PathBuf,
    /// Run the scenarios through the discrete-event model instead of real processes.
    #[arg(long, conflicts_with = "url")]
    simulate: bool,
    /// The neurabalancer executable [default: next to nb-bench].
    #[arg(long, conflicts_with = "url")]
    proxy_bin: Option<PathBuf>,
    /// The backend-sim executable [default: next to nb-bench].
    #[arg(long, conflicts_with = "url")]
    sim_bin: Option<PathBuf>,
    /// The model-server executable, for `ml` in the lab [default: next to nb-bench].
    #[arg(long, conflicts_with = "url")]
    model_bin: Option<PathBuf>,
    /// The ONNX model `ml` runs with, in the lab and the model [default:
    /// model-server/models/scorer.onnx].
    #[arg(long, conflicts_with = "url")]
    model: Option<PathBuf>,
    /// Record every request of our proxy into this directory, one JSONL request log per run
    /// (`<scenario>.<strategy>.s<seed>.jsonl`): training data for the model.
    #[arg(long, conflicts_with_all = ["url", "simulate"])]
    record: Option<PathBuf>,
    /// Seed of every scenario's first repetition instead of the scenario's own (repetition
    /// r uses seed + r): training runs use seeds disjoint from the benchmark's.
    #[arg(long, conflicts_with = "url")]
    seed_base: Option<u64>,
    /// Leave CPU placement to the OS. By default, with two CPUs or more, the proxy runs on
    /// one and nb-bench and the fleet on another, alike for every proxy.
    #[arg(long, conflicts_with_all = ["url", "simulate"])]
    no_pin: bool,
    /// Measured duration, in seconds [default: 10 with --url; the scenario's otherwise].
    #[arg(long)]
    duration: Option<f64>,
    /// Unreported warm-up, in seconds [default: 2 with --url; the scenario's otherwise].
    #[arg(long)]
    warmup: Option<f64>,
    /// Mean request rate, in requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 500.0, conflicts_with = "scenario")]
    rate: f64,
    /// Per-request deadline from the intended send time, in milliseconds.
    #[arg(long, default_value_t = 1000, conflicts_with = "scenario")]
    deadline_ms: u64,
    /// Seed of the arrival schedule.
    #[arg(long, default_value_t = 1, conflicts_with = "scenario")]
    seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long, conflicts_with = "scenario")]
    json: Option<PathBuf>,
    /// Name of the run in the summary (default: the URL).
    #[arg(long, conflicts_with = "scenario")]
    label: Option<String>,
}

/// Why `nb-bench` stops early, with its exit status.
struct Fail(String, u8);

impl Fail {
    fn args(msg: impl Into<String>) -> Self {
        Self(msg.into(), 2)
    }
    fn run(msg: impl Into<String>) -> Self {
        Self(msg.into(), 1)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Every process of a run gets the same descriptor limit: this one's, inherited.
    if let Err(e) = procs::raise_nofile_limit() {
        eprintln!("note: cannot raise the file descriptor limit: {e}");
    }
    let result = match &args.url {
        Some(url) => url_mode(&args, url.clone()).await,
        None => scenario_mode(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("nb-bench: error: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn url_mode(args: &Args, url: Uri) -> Result<(), Fail> {
    let secs = |name: &str, value: f64| {
        Duration::try_from_secs_f64(value).map_err(|_| Fail::args(format!("--{name}: {value} is not a duration")))
    };
    let spec = LoadSpec {
        duration: secs("duration", args.duration.unwrap_or(10.0))?,
        warmup: secs("warmup", args.warmup.unwrap_or(2.0))?,
        deadline: Duration::from_millis(args.deadline_ms),
        seed: args.seed,
        ..LoadSpec::new(url, args.rate, Duration::from_secs(1))
    };
    let report = match bench::run(&spec).await {
        Ok(report) => report,
        Err(err @ BenchError::InvalidSpec(_)) => return Err(Fail::args(err.to_string())),
        Err(err) => return Err(Fail::run(err.to_string())),
    };
    let report = match &args.label {
        Some(label) => report.with_label(label.clone()),
        None => report,
    };
    bench::print_table(std::slice::from_ref(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("a report serialises");
        std::fs::write(path, json + "\n").map_err(|e| Fail::run(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

async fn scenario_mode(args: &Args) -> Result<(), Fail> {
    let started = Instant::now();
    let mut scenarios = lab::load_scenarios(&args.scenario).map_err(|e| Fail::args(e.to_string()))?;
    for (_, s) in &mut scenarios {
        lab::apply_overrides(s, args.duration, args.warmup).map_err(|e| Fail::args(e.to_string()))?;
        if let Some(seed) = args.seed_base {
            s.seed = seed;
        }
    }
    if let Some(model) = &args.model {
        nb_lab::des::ml::set_model_path(model.clone());
    }
    if let Some(dir) = &args.record {
        std::fs::create_dir_all(dir).map_err(|e| Fail::run(format!("cannot create {}: {e}", dir.display())))?;
    }
    let default = if args.simulate {
        lab::SIM_STRATEGIES.join(",")
    } else {
        "round_robin,least_connections,p2c_ewma".to_owned()
    };
    let strategies = lab::parse_list(args.strategies.as_deref().unwrap_or(&default)).map_err(Fail::args)?;
    if let Some(b) = &args.baseline {
        let b: Target = b.parse().map_err(Fail::args)?;
        if !strategies.contains(&b) {
            return Err(Fail::args(format!("--baseline {b} is not one of --strategies")));
        }
    }
    std::fs::create_dir_all(&args.out).map_err(|e| Fail::run(format!("cannot create {}: {e}", args.out.display())))?;
    if !args.simulate {
        procs::pin_lab(!args.no_pin);
    }
    let mut results = Results {
        tool: "nb-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        mode: if args.simulate { "simulate" } else { "lab" }.into(),
        command_line: std::env::args().collect(),
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        machine: Machine::current(),
        notes: notes(args.simulate, args.record.is_some()),
        scenarios: Vec::new(),
    };
    for n in &results.notes {
        eprintln!("note: {n}");
    }
    let (done, failures) = if args.simulate {
        let baseline = args
            .baseline
            .as_ref()
            .and_then(|b| b.parse::<Target>().ok())
            .map(|b| b.to_string());
        simulate(&scenarios, &strategies, args.reps, baseline)
    } else {
        let Some(done) = lab_runs(args, &scenarios, &strategies).await? else {
            return Err(Fail("interrupted: children stopped, nothing written".into(), 130));
        };
        done
    };
    let mode = if args.simulate { "simulated" } else { "lab" };
    let mut files = Vec::new();
    for mut r in done {
        let written = r
            .write_charts(&args.out, mode)
            .map_err(|e| Fail::run(format!("cannot write charts into {}: {e}", args.out.display())))?;
        files.extend(written);
        results.scenarios.push(r);
    }
    files.insert(
        0,
        results
            .write_json(&args.out)
            .map_err(|e| Fail::run(format!("results.json: {e}")))?,
    );
    println!("wrote {}", list(&files));
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    match failures.is_empty() {
        true => Ok(()),
        false => Err(Fail::run(failures.join("\n"))),
    }
}

fn list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn notes(simulate: bool, record: bool) -> Vec<String> {
    let mut notes = vec![
        "latency counts from each request's intended send time (open-loop Poisson arrivals); every failure \
         (non-2xx, refused, reset, timeout) counts at the deadline in the headline percentiles; ok-p99 is the \
         2xx answers only"
            .to_owned(),
        "queueing delay (q-p50, q-p99) = latency minus the request's own service time, as the backend reports \
         it in server-timing"
            .to_owned(),
        "repetition r uses seed = scenario seed + r for every strategy: the same arrivals and the same service \
         time for a request at a given backend; the order of strategies rotates between repetitions"
            .to_owned(),
        "ratios are paired per repetition: geometric mean of per-repetition p99 ratios, 95 % bootstrap interval; \
         p99.9 and max come from the pooled histogram of all repetitions"
            .to_owned(),
    ];
    if simulate {
        notes.push(
            "discrete-event model: greedy and clairvoyant are references that see what no proxy can (every \
             backend's true queue; also each request's service time); neither is a ceiling for tail latency"
                .into(),
        );
    } else {
        notes.push(format!(
            "a run whose generator lag p99 exceeds {} ms is run again (up to {} times) and flagged if it still lags",
            bench::LAG_P99_LIMIT_MS,
            lab::LAG_RERUNS
        ));
        notes.push(
            "every proxy runs with one worker thread (neurabalancer threads: 1, nginx worker_processes 1, \
             haproxy nbthread 1): the load generator and the fleet share this machine"
                .into(),
        );
        notes.push(procs::pinning_description());
        notes.push(if record {
            "--record: our proxy writes a JSONL record of every request (training data); its runs are not \
             comparable with peers' as a benchmark"
                .to_owned()
        } else {
            format!(
                "request recording is off in every run: {} and every NEURABALANCER_* variable are removed from \
                 every child's environment, so no proxy writes a record of its requests on the shared cores",
                procs::SCRUBBED_ENV.join(", ")
            )
        });
        notes.push(format!(
            "every process of a run has {} file descriptors (nginx worker_rlimit_nofile and haproxy ulimit-n \
             alike)",
            procs::nofile_limit()
        ));
    }
    notes
}

/// Prints a scenario's table with its wall time.
fn print_result(r: &ScenarioResult) {
    print!("{}", r.table());
    println!("({} took {:.1} s)\n", r.scenario.name, r.wall_s);
}

/// The runs of a scenario that failed (recorded as skipped repetitions).
fn rep_failures(s: &Scenario, r: &ScenarioResult) -> Vec<String> {
    r.skipped
        .iter()
        .filter(|k| k.reason.starts_with("rep "))
        .map(|k| format!("{}: {}: {}", s.name, k.strategy, k.reason))
        .collect()
}

fn simulate(
    scenarios: &[(PathBuf, Scenario)],
    strategies: &[Target],
    reps: u32,
    baseline: Option<String>,
) -> (Vec<ScenarioResult>, Vec<String>) {
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for (file, s) in scenarios {
        match lab::simulate_scenario(file, s, strategies, reps, baseline.clone()) {
            Ok(r) => {
                print_result(&r);
                failures.extend(rep_failures(s, &r));
                done.push(r);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    (done, failures)
}

/// The lab runs of every scenario; `None` when interrupted (children are stopped as the
/// run's future is dropped).
async fn lab_runs(
    args: &Args,
    scenarios: &[(PathBuf, Scenario)],
    strategies: &[Target],
) -> Result<Option<(Vec<ScenarioResult>, Vec<String>)>, Fail> {
    let (proxy_default, sim_default) = lab::sibling_binaries();
    let opts = LabOptions {
        strategies: strategies.to_vec(),
        baseline: args
            .baseline
            .as_ref()
            .and_then(|b| b.parse::<Target>().ok())
            .map(|b| b.to_string()),
        reps: args.reps,
        proxy_bin: args.proxy_bin.clone().unwrap_or(proxy_default),
        sim_bin: args.sim_bin.clone().unwrap_or(sim_default),
        model_bin: args
            .model_bin
            .clone()
            .unwrap_or_else(|| lab::sibling_binary("model-server")),
        model: nb_lab::des::ml::model_path(),
        record: args.record.clone(),
    };
    let (runnable, skipped) = lab::plan(strategies);
    for k in &skipped {
        eprintln!("note: skipping {}: {}", k.strategy, k.reason);
    }
    let needs_proxy = runnable.iter().any(|t| !t.is_peer());
    let needs_model = runnable.iter().any(|t| !t.is_peer() && t.strategy() == "ml");
    if needs_model && !opts.model.is_file() {
        return Err(Fail::args(format!(
            "ml: the model {} does not exist (train it: scripts/train_model.sh, or pass --model)",
            opts.model.display()
        )));
    }
    for (bin, needed, flag) in [
        (&opts.proxy_bin, needs_proxy, "--proxy-bin"),
        (&opts.sim_bin, true, "--sim-bin"),
        (&opts.model_bin, needs_model, "--model-bin"),
    ] {
        if needed && !bin.is_file() {
            return Err(Fail::args(format!(
                "{} not found (build it: cargo build --release -p neurabalancer -p backend-sim, or pass {flag})",
                bin.display()
            )));
        }
    }
    let total = lab::planned_seconds(scenarios, runnable.len(), args.reps);
    let progress = progress_bar(total);
    let work = async {
        let mut done = Vec::new();
        let mut failures = Vec::new();
        for (file, s) in scenarios {
            match lab::run_scenario(file, s, &opts, &progress).await {
                Ok(r) => {
                    progress.suspend(|| print_result(&r));
                    failures.extend(rep_failures(s, &r));
                    done.push(r);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        (done, failures)
    };
    let outcome = tokio::select! {
        done = work => Some(done),
        _ = nb_lab::shutdown_signal() => None,
    };
    progress.finish_and_clear();
    Ok(outcome)
}

fn progress_bar(total_s: f64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some((total_s * 1000.0) as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% eta {eta} {msg}")
        .expect("a valid progress template")
        .progress_chars("=> ");
    pb.set_style(style);
    pb
}
