//! `nb-bench --simulate`: the scenarios through the discrete-event model
//! ([`crate::des::simulate`]) instead of real processes. The model plays the lab's own
//! arrival schedule and per-request draws, and adds two references no real strategy can be:
//! `greedy` (every backend's true queue and speed), always included, and `clairvoyant`
//! (also each request's own service time). Both are greedy per request, so neither is a
//! strict ceiling for tail latency; ratios are against the first strategy, as in the lab,
//! so that a reference's own tail does not squeeze every ratio towards 1.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::target::{Target, OUR_STRATEGIES, REFERENCES};
use super::{finish, rep_seed, LabError, RunResult, ScenarioResult, Skipped};
use crate::bench::Report;
use crate::des::SimStrategy;
use crate::scenario::Scenario;

/// The reference always run.
const GREEDY: &str = REFERENCES[0];

/// What `--simulate` runs when `--strategies` is not given: every classic strategy, then
/// the references.
pub const SIM_STRATEGIES: [&str; 9] = [
    OUR_STRATEGIES[0],
    OUR_STRATEGIES[1],
    OUR_STRATEGIES[2],
    OUR_STRATEGIES[3],
    OUR_STRATEGIES[4],
    OUR_STRATEGIES[5],
    OUR_STRATEGIES[6],
    REFERENCES[0],
    REFERENCES[1],
];

/// Simulates one scenario: each of `strategies` (peers are skipped: they are not
/// modelled; a former name such as `oracle` runs and reports as its current one; `greedy`
/// is added if missing; `NAME@no_orca` runs with every profile's ORCA report off) `reps`
/// times with the seeds a lab run would use, spread over the machine's cores. The baseline
/// is `baseline` if it ran, else the first strategy.
pub fn simulate_scenario(
    file: &Path,
    scenario: &Scenario,
    strategies: &[Target],
    reps: u32,
    baseline: Option<String>,
) -> Result<ScenarioResult, LabError> {
    let started = Instant::now();
    let mut names: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    for t in strategies {
        match t {
            Target::Ours(s) => {
                let name = s
                    .parse::<SimStrategy>()
                    .map_or_else(|_| s.clone(), |k| k.as_str().to_owned() + &s[t.strategy().len()..]);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            peer => skipped.push(Skipped {
                strategy: peer.to_string(),
                reason: "peer proxies are not modelled (--simulate)".into(),
            }),
        }
    }
    if !names.iter().any(|n| n == GREEDY) {
        names.push(GREEDY.to_owned());
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
    finish(file, scenario, names, reps, runs, skipped, started, baseline)
}

/// One simulated run of `strategy` (`NAME@no_orca`: with every ORCA report off).
fn model(scenario: &Scenario, strategy: &str, seed: u64) -> Result<Report, String> {
    let target: Target = strategy.parse()?;
    let kind: SimStrategy = target.strategy().parse()?;
    if kind == SimStrategy::Classic(nb_strategy::StrategyKind::Ml) {
        crate::des::ml::model()?;
    }
    if target.orca_off() {
        let mut ablated = scenario.clone();
        for p in &mut ablated.fleet {
            p.orca = false;
        }
        return Ok(crate::des::simulate(&ablated, kind, seed));
    }
    Ok(crate::des::simulate(scenario, kind, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_is_every_model_strategy_in_order() {
        let model: Vec<&str> = SimStrategy::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(SIM_STRATEGIES.as_slice(), model.as_slice());
        for name in SIM_STRATEGIES.iter().chain(&[super::super::target::ORACLE]) {
            assert!(name.parse::<Target>().is_ok(), "{name}");
        }
    }

    #[test]
    fn a_former_name_runs_and_reports_as_the_current_one() {
        let s = Scenario::parse(
            "t",
            "name: t\nduration_s: 2\nwarmup_s: 1\nload: { rate: 100 }\nfleet: [ { id: a, count: 2 } ]\n",
        )
        .expect("valid scenario");
        let targets = super::super::target::parse_list("oracle,clairvoyant,greedy").expect("valid list");
        let r = simulate_scenario(Path::new("t.yaml"), &s, &targets, 1, None).expect("simulated");
        assert_eq!(r.strategies, ["greedy", "clairvoyant"]);
        assert_eq!(r.baseline, "greedy");
        let labels: Vec<&str> = r.runs.iter().map(|run| run.report.label.as_str()).collect();
        assert_eq!(labels, ["greedy", "clairvoyant"]);
    }

    #[test]
    fn an_ablation_runs_under_its_own_name_and_the_first_strategy_is_the_baseline() {
        let s = Scenario::parse(
            "t",
            "name: t\nduration_s: 2\nwarmup_s: 1\nload: { rate: 100 }\nfleet: [ { id: a, count: 2 } ]\n",
        )
        .expect("valid scenario");
        let targets = super::super::target::parse_list("p2c_ewma,p2c_ewma@no_orca").expect("valid list");
        let r = simulate_scenario(Path::new("t.yaml"), &s, &targets, 1, None).expect("simulated");
        assert_eq!(r.strategies, ["p2c_ewma", "p2c_ewma@no_orca", "greedy"]);
        assert_eq!(r.baseline, "p2c_ewma");
        let r = simulate_scenario(Path::new("t.yaml"), &s, &targets, 1, Some("greedy".into())).expect("simulated");
        assert_eq!(r.baseline, "greedy");
    }
}
