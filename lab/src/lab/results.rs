//! What a lab (or simulated) run produces: `results.json`, the comparison table and the
//! charts, with aggregates as medians over repetitions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::svg::{self, Series};
use crate::bench::{LatencySummary, Report};
use crate::scenario::Scenario;

/// Everything one `nb-bench --scenario …` invocation measured; `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub tool: String,
    pub version: String,
    /// `lab` (real processes) or `simulate` (the discrete-event model).
    pub mode: String,
    pub command_line: Vec<String>,
    pub started_unix_ms: u64,
    pub machine: Machine,
    /// Method notes that apply to every scenario (threads, seeds, …).
    pub notes: Vec<String>,
    pub scenarios: Vec<ScenarioResult>,
}

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// `MemTotal` of `/proc/meminfo`, in MiB.
    pub mem_mib: u64,
}

impl Machine {
    /// This machine, from `/proc` (fields it cannot read stay empty or zero).
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let mem_kib: u64 = field(&read("/proc/meminfo"), "MemTotal")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu: field(&read("/proc/cpuinfo"), "model name"),
            mem_mib: mem_kib / 1024,
        }
    }
}

/// One scenario: every run, the aggregates and what was skipped.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// The file it came from.
    pub file: String,
    /// The scenario as run (with `--duration`/`--warmup` applied).
    pub scenario: Scenario,
    /// Mean offered rate the scenario asks for over the measured window.
    pub target_rps: f64,
    /// The strategies, in the order they ran within each repetition.
    pub strategies: Vec<String>,
    /// What ratios are computed against: the first strategy (lab) or `oracle` (simulate).
    pub baseline: String,
    pub reps: u32,
    /// Every run, in the order it happened.
    pub runs: Vec<RunResult>,
    /// Per strategy, medians over repetitions.
    pub aggregates: Vec<Aggregate>,
    pub skipped: Vec<Skipped>,
    /// Chart files written for this scenario (names inside the output directory).
    pub charts: Vec<String>,
    /// Wall-clock seconds the scenario took.
    pub wall_s: f64,
}

/// One run of one strategy.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub strategy: String,
    /// 0-based repetition.
    pub rep: u32,
    pub seed: u64,
    pub report: Report,
}

/// A strategy that was not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub strategy: String,
    pub reason: String,
}

/// Medians over the repetitions of one strategy.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub strategy: String,
    /// Repetitions that completed.
    pub reps: u32,
    pub latency_ms: LatencySummary,
    pub error_rate: f64,
    pub goodput_rps: f64,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    /// Median share of the responses per backend.
    pub share: BTreeMap<String, f64>,
    /// Median p99 per request class, in ms.
    pub class_p99_ms: BTreeMap<String, f64>,
    /// p99 divided by the baseline's p99 (1 for the baseline itself).
    pub p99_vs_baseline: Option<f64>,
    /// Median p99 per second: (seconds since load start, ms).
    pub p99_timeline: Vec<(f64, f64)>,
}

/// The median (the mean of the middle two for an even count); NaN when empty.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| !x.is_nan());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The aggregates of `runs` for each of `strategies` that has runs, with ratios against
/// `baseline`'s p99.
pub fn aggregate(strategies: &[String], runs: &[RunResult], baseline: &str) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = strategies
        .iter()
        .filter_map(|name| {
            let reports: Vec<&Report> = runs.iter().filter(|r| &r.strategy == name).map(|r| &r.report).collect();
            (!reports.is_empty()).then(|| aggregate_one(name, &reports))
        })
        .collect();
    let base = out.iter().find(|a| a.strategy == baseline).map(|a| a.latency_ms.p99);
    for a in &mut out {
        a.p99_vs_baseline = base.filter(|b| *b > 0.0).map(|b| a.latency_ms.p99 / b);
    }
    out
}

fn aggregate_one(name: &str, reports: &[&Report]) -> Aggregate {
    let med = |f: &dyn Fn(&Report) -> f64| median(reports.iter().map(|r| f(r)).collect());
    let mut backends: Vec<&String> = reports.iter().flat_map(|r| r.share.keys()).collect();
    backends.sort();
    backends.dedup();
    let mut classes: Vec<&String> = reports.iter().flat_map(|r| r.classes.keys()).collect();
    classes.sort();
    classes.dedup();
    let windows = reports.iter().map(|r| r.timeline.len()).max().unwrap_or(0);
    Aggregate {
        strategy: name.to_owned(),
        reps: reports.len() as u32,
        latency_ms: LatencySummary {
            p50: med(&|r| r.latency_ms.p50),
            p90: med(&|r| r.latency_ms.p90),
            p99: med(&|r| r.latency_ms.p99),
            p999: med(&|r| r.latency_ms.p999),
            max: med(&|r| r.latency_ms.max),
            mean: med(&|r| r.latency_ms.mean),
        },
        error_rate: med(&|r| r.error_rate),
        goodput_rps: med(&|r| r.goodput_rps),
        offered_rps: med(&|r| r.offered_rps),
        achieved_rps: med(&|r| r.achieved_rps),
        share: backends
            .into_iter()
            .map(|b| (b.clone(), med(&|r| r.share.get(b).copied().unwrap_or(0.0))))
            .collect(),
        class_p99_ms: classes
            .into_iter()
            .map(|c| {
                (
                    c.clone(),
                    med(&|r| r.classes.get(c).map_or(f64::NAN, |x| x.latency_ms.p99)),
                )
            })
            .collect(),
        p99_vs_baseline: None,
        p99_timeline: (0..windows)
            .filter_map(|i| {
                let ws: Vec<_> = reports.iter().filter_map(|r| r.timeline.get(i)).collect();
                let t = ws.first()?.t_s;
                let p99 = median(ws.iter().filter(|w| w.sent > 0).map(|w| w.p99_ms).collect());
                Some((t, p99))
            })
            .collect(),
    }
}

/// Milliseconds with three significant digits, as seconds from 1 s on.
fn fmt_ms(ms: f64) -> String {
    match ms {
        m if m.is_nan() => "-".into(),
        m if m >= 999.5 => format!("{:.2}s", m / 1000.0),
        m if m >= 99.95 => format!("{m:.0}ms"),
        m if m >= 9.995 => format!("{m:.1}ms"),
        m => format!("{m:.2}ms"),
    }
}

impl ScenarioResult {
    /// Whether the scenario changes over time (phases, warm-ups, a ramp): then p99 over
    /// time is charted.
    pub fn is_phased(&self) -> bool {
        matches!(self.scenario.load, crate::scenario::Load::Ramp { .. })
            || self
                .scenario
                .fleet
                .iter()
                .any(|p| !p.phases.is_empty() || p.warmup.is_some())
    }

    /// The comparison table: a title line, one row per strategy (medians), per-class p99
    /// when there are classes, the share per backend, and what was skipped.
    pub fn table(&self) -> String {
        let s = &self.scenario;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} rep(s) × {} s measured (+{} s warm-up), {:.0} req/s requested, deadline {} ms",
            s.name, self.reps, s.duration_s, s.warmup_s, self.target_rps, s.deadline_ms
        );
        let width = self.aggregates.iter().map(|a| a.strategy.len()).fold(18, usize::max);
        let ratio_title = format!("p99/{}", self.baseline);
        let _ = writeln!(
            out,
            "{:<width$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>16}  {ratio_title}",
            "strategy", "p50", "p90", "p99", "p99.9", "max", "err%", "goodput", "achieved/offered"
        );
        for a in &self.aggregates {
            let l = &a.latency_ms;
            let ratio = a.p99_vs_baseline.map_or("-".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                out,
                "{:<width$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.2} {:>9.1} {:>16}  {ratio}",
                a.strategy,
                fmt_ms(l.p50),
                fmt_ms(l.p90),
                fmt_ms(l.p99),
                fmt_ms(l.p999),
                fmt_ms(l.max),
                a.error_rate * 100.0,
                a.goodput_rps,
                format!("{:.1}/{:.1}", a.achieved_rps, a.offered_rps),
            );
        }
        if self.aggregates.iter().any(|a| !a.class_p99_ms.is_empty()) {
            out.push_str("p99 per class:\n");
            for a in &self.aggregates {
                let cells: Vec<String> = a
                    .class_p99_ms
                    .iter()
                    .map(|(c, v)| format!("{c} {}", fmt_ms(*v)))
                    .collect();
                let _ = writeln!(out, "  {:<width$} {}", a.strategy, cells.join("  "));
            }
        }
        out.push_str("share per backend:\n");
        for a in &self.aggregates {
            let cells: Vec<String> = a.share.iter().map(|(b, v)| format!("{b} {:.1}%", v * 100.0)).collect();
            let cells = if cells.is_empty() {
                "(no x-backend-id in any response)".to_owned()
            } else {
                cells.join("  ")
            };
            let _ = writeln!(out, "  {:<width$} {cells}", a.strategy);
        }
        for sk in &self.skipped {
            let _ = writeln!(out, "skipped {}: {}", sk.strategy, sk.reason);
        }
        out
    }

    /// Writes this scenario's charts into `dir` and records their names in `charts`.
    pub fn write_charts(&mut self, dir: &Path, mode_note: &str) -> io::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        if self.aggregates.is_empty() {
            return Ok(written);
        }
        let name = &self.scenario.name;
        let groups: Vec<String> = self.aggregates.iter().map(|a| a.strategy.clone()).collect();
        let series: Vec<String> = ["p50", "p90", "p99", "p99.9"].map(String::from).to_vec();
        let values: Vec<Vec<f64>> = self
            .aggregates
            .iter()
            .map(|a| vec![a.latency_ms.p50, a.latency_ms.p90, a.latency_ms.p99, a.latency_ms.p999])
            .collect();
        let reps = if self.reps > 1 {
            format!(", median of {} reps", self.reps)
        } else {
            String::new()
        };
        let title = format!("{name}: latency percentiles ({mode_note}{reps})");
        let file = format!("{name}-latency.svg");
        std::fs::write(
            dir.join(&file),
            svg::bar_chart(&title, "latency (ms)", &groups, &series, &values),
        )?;
        written.push(dir.join(&file));
        self.charts.push(file);
        if self.is_phased() {
            let lines: Vec<Series> = self
                .aggregates
                .iter()
                .map(|a| Series {
                    name: a.strategy.clone(),
                    points: a.p99_timeline.clone(),
                })
                .collect();
            let title = format!("{name}: p99 per second ({mode_note}{reps})");
            let file = format!("{name}-p99-over-time.svg");
            let x = "seconds since load start (phase times count from here)";
            std::fs::write(dir.join(&file), svg::line_chart(&title, x, "p99 latency (ms)", &lines))?;
            written.push(dir.join(&file));
            self.charts.push(file);
        }
        Ok(written)
    }
}

impl Results {
    /// Writes `results.json` into `dir` (created if needed); returns its path.
    pub fn write_json(&self, dir: &Path) -> io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("results.json");
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&path, json + "\n")?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::WindowReport;

    fn report(p99: f64, share_a: f64) -> Report {
        Report {
            latency_ms: LatencySummary {
                p50: p99 / 4.0,
                p99,
                ..LatencySummary::default()
            },
            share: [("a".to_owned(), share_a), ("b".to_owned(), 1.0 - share_a)].into(),
            timeline: vec![WindowReport {
                t_s: 5.0,
                sent: 10,
                p99_ms: p99,
                ..WindowReport::default()
            }],
            ..Report::default()
        }
    }

    fn run(strategy: &str, rep: u32, p99: f64) -> RunResult {
        RunResult {
            strategy: strategy.into(),
            rep,
            seed: 1,
            report: report(p99, 0.5),
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        let runs = vec![
            run("rr", 0, 100.0),
            run("p2c", 0, 20.0),
            run("rr", 1, 300.0),
            run("p2c", 1, 40.0),
            run("rr", 2, 200.0),
            run("p2c", 2, 30.0),
        ];
        let names = vec!["rr".to_owned(), "p2c".to_owned(), "absent".to_owned()];
        let agg = aggregate(&names, &runs, "rr");
        assert_eq!(agg.len(), 2);
        assert_eq!((agg[0].reps, agg[0].latency_ms.p99), (3, 200.0));
        assert_eq!(agg[1].p99_vs_baseline, Some(0.15));
        assert_eq!(agg[1].share["a"], 0.5);
        assert_eq!(agg[1].p99_timeline, vec![(5.0, 30.0)]);
    }
}
