//! The scenario runner behind `nb-bench --scenario`: for each strategy a fresh fleet
//! (`backend-sim`) and a fresh proxy (`neurabalancer`, or a peer: nginx, HAProxy), a
//! warm-up, a measured window and a teardown; strategies interleaved within each
//! repetition and the order rotated between repetitions (A B C, B C A, C A B, …), so that
//! a drift of the machine, or a position in the order, spreads over all of them.
//! `--simulate` runs the same scenarios through the discrete-event model instead
//! ([`crate::des`]), in seconds, with its references (`greedy`, `clairvoyant`).
//!
//! Common random numbers: in repetition `r` every strategy gets the same seed
//! ([`rep_seed`]): the same arrivals ([`crate::arrivals`]) and, because the generator tells
//! each backend the request's index and the fleet runs with that seed, the same fate and
//! service time for a request at a given backend. Differences within a repetition are the
//! strategies'; ratios are paired per repetition ([`results::paired_ratio`]).
//!
//! One run, in order:
//! 1. Free loopback ports for every backend, the proxy and its admin API.
//! 2. A fleet file (`backends:` with each scenario profile and its `listen`) and
//!    `backend-sim --fleet FILE --epoch-unix-ms T --seed S --stats-listen ADDR`, where `T`
//!    is the moment the load will start (the scenario's phase times count from it, warm-up
//!    included) and `S` the repetition's seed.
//! 3. The proxy's files ([`configs`]) and the proxy, with one worker thread; it must be
//!    ready (`GET /health/ready` = 200 for `neurabalancer`, listening for the peers)
//!    before `T`, else everything is torn down and started again with more slack.
//! 4. The load ([`bench::run_from`]) starting exactly at `T`, then a check that neither
//!    child died during the run, and the routing decisions: how many measured requests each
//!    backend received (the fleet's `/stats`, timeouts included).
//! 6. A run whose generator lagged ([`bench::LAG_P99_LIMIT_MS`]) is run again, up to
//!    [`LAG_RERUNS`] times; if it still lags it is kept, flagged in the results.
//! 5. Teardown: every child's process group is killed and the temp dir removed
//!    ([`procs`]), also on errors, panics and Ctrl-C (the guards are dropped).

pub mod configs;
pub mod procs;
pub mod results;
mod simulate;
pub mod svg;
pub mod target;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::ProgressBar;

use crate::bench::{self, LoadSpec, Report, RequestClass};
use crate::scenario::{Load, Scenario, ScenarioError};
use procs::{ChildGuard, Role, TempDir};
pub use results::{Aggregate, Machine, Results, RunResult, ScenarioResult, Skipped};
pub use simulate::{simulate_scenario, SIM_STRATEGIES};
pub use target::{parse_list, Target};

/// Slack between starting the children and the start of the load, at first; it grows
/// when a start is slow and shrinks to [`MIN_STARTUP`] + 1.5× the last startup time.
const FIRST_STARTUP: Duration = Duration::from_secs(3);
const MIN_STARTUP: Duration = Duration::from_millis(750);
/// Attempts at getting the fleet and the proxy ready before the load's start.
const START_ATTEMPTS: u32 = 3;
/// Longest wait for the fleet or the proxy to come up.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// Readiness must be reached at least this long before the load starts.
const READY_MARGIN: Duration = Duration::from_millis(100);
/// Times a run whose generator lagged is run again.
pub const LAG_RERUNS: u32 = 2;

/// What a lab run needs besides the scenario.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// In the order they run within each repetition.
    pub strategies: Vec<Target>,
    /// The strategy whose p99 the others are divided by; `None`: the first that ran.
    pub baseline: Option<String>,
    /// Repetitions (each runs every strategy once).
    pub reps: u32,
    /// The `neurabalancer` executable.
    pub proxy_bin: PathBuf,
    /// The `backend-sim` executable.
    pub sim_bin: PathBuf,
    /// The `model-server` executable, for `ml`.
    pub model_bin: PathBuf,
    /// The model file `ml` runs with.
    pub model: PathBuf,
    /// Where our proxy writes its request log, one JSONL file per run
    /// (`<scenario>.<strategy>.s<seed>.jsonl`); `None`: no recording (the default).
    pub record: Option<PathBuf>,
}

/// Why a lab run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// No run of the scenario completed.
    #[error("{scenario}: no run completed: {reasons}")]
    NothingRan { scenario: String, reasons: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The scenario files named by `paths`: files as given, directories as their `*.yaml`
/// and `*.yml` files in name order. Every file is parsed and validated.
pub fn load_scenarios(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Scenario)>, LabError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io_err(format!("cannot list {}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(LabError::Invalid(format!("{}: no *.yaml scenario in it", p.display())));
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let s = Scenario::load(&f)?;
        configs::check_pool_extra(s.pool.as_ref()).map_err(|e| LabError::Invalid(format!("{}: {e}", f.display())))?;
        out.push((f, s));
    }
    Ok(out)
}

/// Applies `--duration` and `--warmup` (seconds). A ramp stretches with the duration;
/// phase times do not move (they count from the start of the load).
pub fn apply_overrides(s: &mut Scenario, duration_s: Option<f64>, warmup_s: Option<f64>) -> Result<(), LabError> {
    if let Some(d) = duration_s {
        s.duration_s = d;
    }
    if let Some(w) = warmup_s {
        s.warmup_s = w;
    }
    s.validate().map_err(|e| LabError::Invalid(format!("{}: {e}", s.name)))
}

/// The load of a scenario against `front` with `seed`: its rate (or ramp), classes,
/// duration, warm-up and deadline.
pub fn load_spec(s: &Scenario, front: SocketAddr, seed: u64) -> LoadSpec {
    let classes: Vec<RequestClass> = s
        .classes
        .iter()
        .map(|c| RequestClass {
            name: c.name.clone(),
            path: c.path.clone(),
            weight: c.weight,
        })
        .collect();
    let path = classes.first().map_or("/", |c| c.path.as_str());
    LoadSpec {
        url: format!("http://{front}{path}")
            .parse()
            .expect("a socket address and a path make a URL"),
        rate: s.rate_at(0.0),
        ramp_to: matches!(s.load, Load::Ramp { .. }).then(|| s.rate_at(s.duration_s)),
        classes,
        duration: Duration::from_secs_f64(s.duration_s),
        warmup: Duration::from_secs_f64(s.warmup_s),
        deadline: Duration::from_secs_f64(s.deadline_ms / 1000.0),
        seed,
    }
}

/// The seed of repetition `rep` (0-based): the scenario's seed plus `rep`, the same for
/// every strategy of the repetition (common random numbers: each strategy sees the same
/// arrivals).
pub fn rep_seed(s: &Scenario, rep: u32) -> u64 {
    s.seed.wrapping_add(u64::from(rep))
}

/// `neurabalancer` and `backend-sim` next to the running executable (as cargo builds
/// them), for `--proxy-bin` and `--sim-bin` defaults.
pub fn sibling_binaries() -> (PathBuf, PathBuf) {
    (sibling_binary("neurabalancer"), sibling_binary("backend-sim"))
}

/// The executable `name` next to the running one.
pub fn sibling_binary(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    dir.join(name)
}

/// Splits `strategies` into what runs in the lab and what is skipped (peers not
/// installed, the references, which exist only in the model).
pub fn plan(strategies: &[Target]) -> (Vec<Target>, Vec<Skipped>) {
    let mut run = Vec::new();
    let mut skipped = Vec::new();
    for t in strategies {
        let reason = match t {
            t if t.is_reference() || t.strategy() == target::ORACLE => {
                Some(format!("{t} is a reference of the model only (--simulate)"))
            }
            Target::Ours(_) => None,
            peer => peer.peer_binary().is_none().then(|| {
                let bin = if matches!(peer, Target::Nginx(_)) {
                    "nginx"
                } else {
                    "haproxy"
                };
                format!("{bin} is not installed (not on PATH nor in /usr/sbin); e.g. apt-get install -y {bin}")
            }),
        };
        match reason {
            Some(reason) => skipped.push(Skipped {
                strategy: t.to_string(),
                reason,
            }),
            None => run.push(t.clone()),
        }
    }
    (run, skipped)
}

/// Seconds of load a lab run of `scenarios` will offer (for a progress bar's length).
pub fn planned_seconds(scenarios: &[(PathBuf, Scenario)], runs_per_rep: usize, reps: u32) -> f64 {
    scenarios
        .iter()
        .map(|(_, s)| (s.warmup_s + s.duration_s) * runs_per_rep as f64 * f64::from(reps))
        .sum()
}

/// Runs one scenario in the lab: every strategy of `opts` (peers that are not installed
/// are skipped with a note), `opts.reps` times, interleaved. `progress` advances by the
/// load's seconds; its message names the current run. A failed run is recorded in
/// `skipped` and the others go on; fails only if no run completed.
pub async fn run_scenario(
    file: &Path,
    scenario: &Scenario,
    opts: &LabOptions,
    progress: &ProgressBar,
) -> Result<ScenarioResult, LabError> {
    let started = Instant::now();
    let (targets, mut skipped) = plan(&opts.strategies);
    let mut runs = Vec::new();
    let mut budget = FIRST_STARTUP;
    let run_secs = scenario.warmup_s + scenario.duration_s;
    for rep in 0..opts.reps {
        let seed = rep_seed(scenario, rep);
        for t in rotated(&targets, rep) {
            progress.set_message(format!("{} rep {}/{}: {t}", scenario.name, rep + 1, opts.reps));
            let base = progress.position();
            let ticker = tick_progress(progress.clone(), base, run_secs);
            let mut outcome = run_once(scenario, t, seed, opts, &mut budget).await;
            for _ in 0..LAG_RERUNS {
                match &outcome {
                    Ok(r) if r.lagging => {
                        progress.suspend(|| {
                            eprintln!(
                                "nb-bench: {} rep {}: {t}: the generator lagged (lag p99 {:.1} ms), running it again",
                                scenario.name,
                                rep + 1,
                                r.dispatch_lag_ms.p99
                            )
                        });
                        outcome = run_once(scenario, t, seed, opts, &mut budget).await;
                    }
                    _ => break,
                }
            }
            ticker.abort();
            progress.set_position(base + (run_secs * 1000.0) as u64);
            match outcome {
                Ok(report) => runs.push(RunResult {
                    strategy: t.to_string(),
                    rep,
                    seed,
                    report,
                }),
                Err(reason) => {
                    progress.suspend(|| eprintln!("nb-bench: {} rep {}: {t} failed: {reason}", scenario.name, rep + 1));
                    skipped.push(Skipped {
                        strategy: t.to_string(),
                        reason: format!("rep {} failed: {reason}", rep + 1),
                    });
                }
            }
        }
    }
    let names: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let baseline = opts.baseline.clone().filter(|b| names.contains(b));
    finish(file, scenario, names, opts.reps, runs, skipped, started, baseline)
}

/// `targets` rotated left by `rep`: repetition `r` starts with the `r`-th strategy.
pub fn rotated<T>(targets: &[T], rep: u32) -> impl Iterator<Item = &T> {
    let k = if targets.is_empty() {
        0
    } else {
        rep as usize % targets.len()
    };
    targets[k..].iter().chain(&targets[..k])
}

/// Assembles a [`ScenarioResult`]; the baseline is `baseline`, else the first strategy
/// that ran.
#[allow(clippy::too_many_arguments)]
fn finish(
    file: &Path,
    scenario: &Scenario,
    strategies: Vec<String>,
    reps: u32,
    runs: Vec<RunResult>,
    skipped: Vec<Skipped>,
    started: Instant,
    baseline: Option<String>,
) -> Result<ScenarioResult, LabError> {
    if runs.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|s| format!("{}: {}", s.strategy, s.reason))
            .collect();
        return Err(LabError::NothingRan {
            scenario: scenario.name.clone(),
            reasons: reasons.join("; "),
        });
    }
    let ran = |name: &String| runs.iter().any(|r| &r.strategy == name);
    let baseline = baseline
        .filter(ran)
        .or_else(|| strategies.iter().find(|s| ran(s)).cloned())
        .unwrap_or_default();
    let aggregates = results::aggregate(&strategies, &runs, &baseline);
    Ok(ScenarioResult {
        file: file.display().to_string(),
        target_rps: (scenario.rate_at(0.0) + scenario.rate_at(scenario.duration_s)) / 2.0,
        scenario: scenario.clone(),
        strategies,
        baseline,
        reps,
        runs,
        aggregates,
        skipped,
        passive_health: configs::passive_health_notes(scenario),
        charts: Vec::new(),
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Advances `pb` from `base` with the wall clock, for at most `secs` (in ms units).
fn tick_progress(pb: ProgressBar, base: u64, secs: f64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let cap = (secs * 1000.0) as u64;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
            pb.set_position(base + ms.min(cap));
        }
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One run of one strategy: fresh fleet, fresh proxy, load, teardown (on drop).
async fn run_once(
    scenario: &Scenario,
    target: &Target,
    seed: u64,
    opts: &LabOptions,
    budget: &mut Duration,
) -> Result<Report, String> {
    let mut last_error = None;
    for _attempt in 0..START_ATTEMPTS {
        let dir = TempDir::new("nb-bench").map_err(|e| format!("temp dir: {e}"))?;
        let started = Instant::now();
        let epoch = started + *budget;
        let epoch_unix_ms = unix_ms() + u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
        let stats = SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            procs::free_ports(1).map_err(|e| format!("ports: {e}"))?[0],
        ));
        let fleet_run = FleetRun {
            epoch_unix_ms,
            seed,
            stats,
            orca: !target.orca_off(),
        };
        let record = opts.record.as_ref().map(|d| {
            let name = format!(
                "{}.{}.s{seed}.jsonl",
                scenario.name,
                target.to_string().replace([':', '@'], "_")
            );
            d.join(name)
        });
        // The fleet, then the proxy in front of it on ports chosen once the fleet holds its
        // own. Either may find a port it was given taken by another process between the
        // choice and the bind: that attempt starts over.
        let started_all = async {
            let (fleet, servers) = start_fleet(scenario, opts, dir.path(), &fleet_run).await?;
            let ports = procs::free_ports(2).map_err(|e| format!("ports: {e}"))?;
            let front = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[1]));
            let (proxy, scorer) = start_front(
                target,
                scenario,
                opts,
                &servers,
                front,
                admin,
                dir.path(),
                record.as_deref(),
            )
            .await?;
            Ok::<_, String>((fleet, proxy, scorer, front))
        };
        let (mut fleet, mut proxy, scorer, front) = match started_all.await {
            Err(e) if port_taken(&e) => {
                last_error = Some(e);
                continue;
            }
            r => r?,
        };
        let startup = started.elapsed();
        if Instant::now() + READY_MARGIN > epoch {
            // Too slow for the chosen start: tear down (on drop) and retry with more slack.
            *budget = (*budget * 2).max(startup * 2);
            last_error = None;
            continue;
        }
        *budget = MIN_STARTUP + startup.mul_f64(1.5);
        let spec = load_spec(scenario, front, seed);
        let mut report = bench::run_from(&spec, Some(epoch)).await.map_err(|e| e.to_string())?;
        fleet.check_running()?;
        proxy.check_running()?;
        report.set_decisions(fleet_decisions(stats).await?);
        drop((proxy, scorer, fleet, dir));
        return Ok(report.with_label(target.to_string()));
    }
    Err(match last_error {
        Some(e) => format!("{START_ATTEMPTS} attempts found a chosen port taken; the last: {e}"),
        None => format!(
            "the fleet and the proxy were not ready within the start-up slack ({START_ATTEMPTS} attempts, last {budget:?})"
        ),
    })
}

/// Whether a start failed because another process bound a port between its choice
/// ([`procs::free_ports`]) and the child's bind: worth another attempt on fresh ports.
fn port_taken(error: &str) -> bool {
    error.contains("Address already in use")
}

/// How one run's fleet is started.
struct FleetRun {
    /// Its clock's zero: the start of the load.
    epoch_unix_ms: u64,
    /// The repetition's seed (every backend's draws).
    seed: u64,
    /// The fleet-wide `/stats` listener.
    stats: SocketAddr,
    /// `false`: every backend's ORCA load report is off (an `@no_orca` ablation).
    orca: bool,
}

/// Starts the scenario's fleet on free ports; returns it and (id, address) per backend
/// once those up at the start listen.
async fn start_fleet(
    scenario: &Scenario,
    opts: &LabOptions,
    dir: &Path,
    run: &FleetRun,
) -> Result<(ChildGuard, Vec<(String, SocketAddr)>), String> {
    let mut profiles = scenario.profiles();
    let ports = procs::free_ports(profiles.len()).map_err(|e| format!("ports: {e}"))?;
    for (p, port) in profiles.iter_mut().zip(ports) {
        p.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        p.orca &= run.orca;
    }
    let servers: Vec<(String, SocketAddr)> = profiles
        .iter()
        .filter_map(|p| Some((p.id.clone(), p.listen?)))
        .collect();
    let up_at_start: Vec<SocketAddr> = profiles
        .iter()
        .filter(|p| !p.effective(0.0).down)
        .filter_map(|p| p.listen)
        .collect();
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, configs::fleet_yaml(&profiles)).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut cmd = Command::new(&opts.sim_bin);
    cmd.arg("--fleet")
        .arg(&file)
        .arg("--epoch-unix-ms")
        .arg(run.epoch_unix_ms.to_string())
        .arg("--seed")
        .arg(run.seed.to_string())
        .arg("--stats-listen")
        .arg(run.stats.to_string())
        .env("RUST_LOG", "warn");
    let mut fleet = ChildGuard::spawn_as(Role::Fleet, "backend-sim", &mut cmd, &dir.join("fleet.log"))
        .map_err(|e| e.to_string())?;
    let mut wait_for = up_at_start;
    wait_for.push(run.stats);
    procs::wait_listening(&mut fleet, &wait_for, READY_LIMIT).await?;
    Ok((fleet, servers))
}

/// The measured requests each backend of the fleet received (its `measured` count), from
/// the fleet-wide `/stats` on `stats`: the routing decisions of the run, timeouts included.
async fn fleet_decisions(stats: SocketAddr) -> Result<BTreeMap<String, u64>, String> {
    #[derive(serde::Deserialize)]
    struct BackendCount {
        id: String,
        measured: u64,
    }
    let body = tokio::task::spawn_blocking(move || http_get_body(stats, "/stats"))
        .await
        .map_err(|e| format!("fleet stats: {e}"))?
        .map_err(|e| format!("fleet stats on {stats}: {e}"))?;
    let counts: Vec<BackendCount> =
        serde_json::from_str(&body).map_err(|e| format!("fleet stats on {stats}: {e}: {body}"))?;
    Ok(counts.into_iter().map(|c| (c.id, c.measured)).collect())
}

/// Starts the proxy in front of `servers` on `front` and waits until it is ready; for `ml`
/// also its model server (on the proxy's CPU: what `ml` costs, it costs there), returned
/// second. `record`: our proxy's request log.
#[allow(clippy::too_many_arguments)]
async fn start_front(
    target: &Target,
    scenario: &Scenario,
    opts: &LabOptions,
    servers: &[(String, SocketAddr)],
    front: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    record: Option<&Path>,
) -> Result<(ChildGuard, Option<ChildGuard>), String> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok::<PathBuf, String>(path)
    };
    let log = dir.join("proxy.log");
    let mut scorer = None;
    let mut child = match target {
        Target::Ours(_) => {
            write(
                "upstreams.yaml",
                configs::neurabalancer_upstreams(target.strategy(), scenario, servers),
            )?;
            let mut text = configs::neurabalancer_main(front, admin, dir);
            if target.strategy() == "ml" {
                let addr = SocketAddr::from((
                    Ipv4Addr::LOCALHOST,
                    procs::free_ports(1).map_err(|e| format!("ports: {e}"))?[0],
                ));
                scorer = Some(start_model_server(opts, addr, dir).await?);
                text += &configs::neurabalancer_ml(addr);
            }
            if let Some(file) = record {
                text += &configs::neurabalancer_record(file);
            }
            let main = write("neurabalancer.yaml", text)?;
            let mut cmd = Command::new(&opts.proxy_bin);
            cmd.arg("run")
                .arg("--config")
                .arg(main)
                .env("RUST_LOG", "warn")
                .env_remove("NEURABALANCER_ADMIN_TOKEN");
            let mut child =
                ChildGuard::spawn_as(Role::Proxy, "neurabalancer", &mut cmd, &log).map_err(|e| e.to_string())?;
            procs::wait_http_200(&mut child, admin, "/health/ready", READY_LIMIT).await?;
            child
        }
        Target::Nginx(method) => {
            let bin = target.peer_binary().ok_or("nginx is not installed")?;
            let conf = write("nginx.conf", configs::nginx_conf(method, front, servers, dir, scenario))?;
            let mut cmd = Command::new(bin);
            cmd.arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(conf);
            ChildGuard::spawn_as(Role::Proxy, "nginx", &mut cmd, &log).map_err(|e| e.to_string())?
        }
        Target::Haproxy(method) => {
            let bin = target.peer_binary().ok_or("haproxy is not installed")?;
            let cfg = write("haproxy.cfg", configs::haproxy_cfg(method, front, servers, scenario))?;
            let mut cmd = Command::new(bin);
            cmd.arg("-db").arg("-f").arg(cfg);
            ChildGuard::spawn_as(Role::Proxy, "haproxy", &mut cmd, &log).map_err(|e| e.to_string())?
        }
    };
    procs::wait_listening(&mut child, &[front], READY_LIMIT).await?;
    Ok((child, scorer))
}

/// Starts `model-server` with the run's model on `addr` and waits until it has loaded it.
async fn start_model_server(opts: &LabOptions, addr: SocketAddr, dir: &Path) -> Result<ChildGuard, String> {
    let mut cmd = Command::new(&opts.model_bin);
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--model")
        .arg(&opts.model)
        .env("RUST_LOG", "warn");
    let mut child = ChildGuard::spawn_as(Role::Proxy, "model-server", &mut cmd, &dir.join("model-server.log"))
        .map_err(|e| e.to_string())?;
    procs::wait_http_200(&mut child, addr, "/health", READY_LIMIT).await?;
    Ok(child)
}

/// The body of a one-shot `GET` answered 200 (for the fleet's stats).
fn http_get_body(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    match procs::http_get(addr, path, Duration::from_secs(2))? {
        (200, body) => Ok(body),
        (status, body) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("status {status}: {body:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_between_choice_and_bind_is_recognised_from_the_child_log() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        let e = std::net::TcpListener::bind(addr).expect_err("the port is held");
        // What backend-sim and the proxy log when their bind fails, as run_once sees it.
        let start_error =
            format!("backend-sim exited (exit status: 1); its log ends:\nERROR stats listener on {addr}: {e}");
        assert!(port_taken(&start_error), "{start_error}");
        assert!(!port_taken(
            "backend-sim exited (exit status: 1); its log ends:\nbad fleet file"
        ));
    }
}
