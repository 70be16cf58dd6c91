//! `nb-bench --simulate`: the scenarios through the discrete-event model
//! ([`crate::des::simulate`]) instead of real processes, with `oracle` always included
//! as the ceiling that every other strategy's p99 is compared with.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::target::{Target, ORACLE, OUR_STRATEGIES};
use super::{finish, rep_seed, LabError, RunResult, ScenarioResult, Skipped};
use crate::bench::Report;
use crate::des::SimStrategy;
use crate::scenario::Scenario;

/// What `--simulate` runs when `--strategies` is not given: every classic strategy and
/// the oracle.
pub const SIM_STRATEGIES: [&str; 7] = [
    OUR_STRATEGIES[0],
    OUR_STRATEGIES[1],
    OUR_STRATEGIES[2],
    OUR_STRATEGIES[3],
    OUR_STRATEGIES[4],
    OUR_STRATEGIES[5],
    ORACLE,
];

/// Simulates one scenario: each of `strategies` (peers are skipped: they are not
/// modelled; `oracle` is added if missing) `reps` times with the seeds a lab run would
/// use, spread over the machine's cores.
pub fn simulate_scenario(
    file: &Path,
    scenario: &Scenario,
    strategies: &[Target],
    reps: u32,
) -> Result<ScenarioResult, LabError> {
    let started = Instant::now();
    let mut names = Vec::new();
    let mut skipped = Vec::new();
    for t in strategies {
        match t {
            Target::Ours(s) => names.push(s.clone()),
            peer => skipped.push(Skipped {
                strategy: peer.to_string(),
                reason: "peer proxies are not modelled (--simulate)".into(),
            }),
        }
    }
    if !names.iter().any(|n| n == ORACLE) {
        names.push(ORACLE.to_owned());
    }
    let jobs: Vec<(u32, &String)> = (0..reps).flat_map(|rep| names.iter().map(move |n| (rep, n))).collect();
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, Result<Report, String>)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(jobs.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((rep, name)) = jobs.get(i) else { break };
                let result = model(scenario, name, rep_seed(scenario, *rep));
                done.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((i, result));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    done.sort_by_key(|(i, _)| *i);
    let mut runs = Vec::new();
    for (i, result) in done {
        let (rep, name) = jobs[i];
        match result {
            Ok(report) => runs.push(RunResult {
                strategy: name.clone(),
                rep,
                seed: rep_seed(scenario, rep),
                report: report.with_label(name.clone()),
            }),
            Err(reason) => skipped.push(Skipped {
                strategy: name.clone(),
                reason: format!("rep {}: {reason}", rep + 1),
            }),
        }
    }
    finish(file, scenario, names, reps, runs, skipped, started, None)
}

/// One simulated run of `strategy`.
fn model(scenario: &Scenario, strategy: &str, seed: u64) -> Result<Report, String> {
    let strategy: SimStrategy = strategy.parse()?;
    Ok(crate::des::simulate(scenario, strategy, seed))
}
