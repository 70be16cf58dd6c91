//! What a lab (or simulated) run produces: `results.json`, the comparison table and the
//! charts.
//!
//! Aggregates per strategy: medians over repetitions for the per-run figures (p50, p90,
//! p99, error rate, queueing delay, lag), pooled histograms of every repetition for p99.9
//! and max (a median of per-run maxima hides the worst run), and ratios against the
//! baseline **paired per repetition**: in a repetition every strategy faces the same
//! arrivals and the same service-time draws, so the ratio of two strategies' p99 in one
//! repetition cancels most of the noise that separates repetitions. The ratio reported is
//! the geometric mean of the per-repetition ratios, with a 95 % percentile-bootstrap
//! interval over repetitions ([`paired_ratio`]); an interval that contains 1 does not
//! separate the two strategies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::svg::{self, Series};
use crate::bench::{pooled_histogram, LatencySummary, Report};
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
    /// What ratios are computed against: `--baseline`, else the first strategy.
    pub baseline: String,
    pub reps: u32,
    /// Every run, in the order it happened.
    pub runs: Vec<RunResult>,
    /// Per strategy, medians over repetitions.
    pub aggregates: Vec<Aggregate>,
    pub skipped: Vec<Skipped>,
    /// How each proxy's (and the model's) passive health was set, and what still differs.
    #[serde(default)]
    pub passive_health: Vec<String>,
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

/// One strategy over its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub strategy: String,
    /// Repetitions that completed.
    pub reps: u32,
    /// Headline latency (failures at the deadline): p50, p90, p99 and mean are medians
    /// over repetitions; p99.9 and max come from the pooled histogram of every repetition.
    pub latency_ms: LatencySummary,
    /// Median p99 of the 2xx answers only.
    pub success_p99_ms: f64,
    pub error_rate: f64,
    pub goodput_rps: f64,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    /// Median queueing delay (latency minus the backend's service time) p50 and p99, in ms;
    /// NaN when no answer reported its service time.
    pub queueing_p50_ms: f64,
    pub queueing_p99_ms: f64,
    /// Largest generator lag p99 of the repetitions, in ms.
    pub lag_p99_ms: f64,
    /// Repetitions whose generator lagged (flagged even after a re-run).
    pub lagging_runs: u32,
    /// Median share of the routing decisions per backend (of the responses when decisions
    /// were not counted).
    pub share: BTreeMap<String, f64>,
    /// Median p99 per request class, in ms.
    pub class_p99_ms: BTreeMap<String, f64>,
    /// Headline p99 against the baseline's, paired per repetition (1 for the baseline).
    pub p99_vs_baseline: Option<Ratio>,
    /// Median p99 per second: (seconds since load start, ms).
    pub p99_timeline: Vec<(f64, f64)>,
}

/// A ratio paired per repetition: the geometric mean of the per-repetition ratios and its
/// 95 % bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    pub ratio: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Repetitions in which both strategies ran.
    pub pairs: u32,
}

impl Ratio {
    /// `0.85x [0.80, 0.91]`; just the ratio when there is a single pair.
    pub fn display(&self) -> String {
        if self.pairs < 2 {
            format!("{:.2}x", self.ratio)
        } else {
            format!("{:.2}x [{:.2}, {:.2}]", self.ratio, self.ci_low, self.ci_high)
        }
    }

    /// Whether the interval excludes 1 (the difference is larger than the noise).
    pub fn separates(&self) -> bool {
        self.pairs >= 2 && (self.ci_high < 1.0 || self.ci_low > 1.0)
    }
}

/// Bootstrap resamples of [`paired_ratio`].
const BOOTSTRAP_RESAMPLES: usize = 4000;

/// The geometric mean of `ratios` (positive; others are ignored) with a 95 % percentile
/// bootstrap interval: the repetitions resampled with replacement, deterministically
/// (a fixed seed), so the same results give the same interval.
pub fn paired_ratio(ratios: &[f64]) -> Option<Ratio> {
    let logs: Vec<f64> = ratios
        .iter()
        .filter(|r| r.is_finite() && **r > 0.0)
        .map(|r| r.ln())
        .collect();
    if logs.is_empty() {
        return None;
    }
    let n = logs.len();
    let mean = |xs: &mut dyn Iterator<Item = f64>| xs.sum::<f64>() / n as f64;
    let point = mean(&mut logs.iter().copied()).exp();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| mean(&mut (0..n).map(|_| logs[rng.random_range(0..n)])))
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * BOOTSTRAP_RESAMPLES as f64) as usize).min(BOOTSTRAP_RESAMPLES - 1)].exp();
    Some(Ratio {
        ratio: point,
        ci_low: at(0.025),
        ci_high: at(0.975),
        pairs: n as u32,
    })
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
/// `baseline`'s p99 paired per repetition.
pub fn aggregate(strategies: &[String], runs: &[RunResult], baseline: &str) -> Vec<Aggregate> {
    let p99_of = |name: &str, rep: u32| {
        runs.iter()
            .find(|r| r.strategy == name && r.rep == rep)
            .map(|r| r.report.latency_ms.p99)
    };
    strategies
        .iter()
        .filter_map(|name| {
            let mine: Vec<&RunResult> = runs.iter().filter(|r| &r.strategy == name).collect();
            if mine.is_empty() {
                return None;
            }
            let mut a = aggregate_one(name, &mine.iter().map(|r| &r.report).collect::<Vec<_>>());
            let ratios: Vec<f64> = mine
                .iter()
                .filter_map(|r| Some(r.report.latency_ms.p99 / p99_of(baseline, r.rep)?))
                .collect();
            a.p99_vs_baseline = paired_ratio(&ratios);
            Some(a)
        })
        .collect()
}

fn aggregate_one(name: &str, reports: &[&Report]) -> Aggregate {
    let med = |f: &dyn Fn(&Report) -> f64| median(reports.iter().map(|r| f(r)).collect());
    let decisions = reports.iter().any(|r| !r.share.is_empty());
    let share_of = |r: &Report| -> BTreeMap<String, f64> {
        if decisions {
            r.share.clone()
        } else {
            r.response_share.clone()
        }
    };
    let shares: Vec<BTreeMap<String, f64>> = reports.iter().map(|r| share_of(r)).collect();
    let mut backends: Vec<&String> = shares.iter().flat_map(|s| s.keys()).collect();
    backends.sort();
    backends.dedup();
    let mut classes: Vec<&String> = reports.iter().flat_map(|r| r.classes.keys()).collect();
    classes.sort();
    classes.dedup();
    let windows = reports.iter().map(|r| r.timeline.len()).max().unwrap_or(0);
    let pooled = pooled_histogram(reports.iter().map(|r| r.histogram_us.as_slice()));
    // Reports written before histograms were kept: medians of the per-run figures.
    let (p999, max) = if pooled.is_empty() {
        (med(&|r| r.latency_ms.p999), med(&|r| r.latency_ms.max))
    } else {
        let p = LatencySummary::of(&pooled);
        (p.p999, p.max)
    };
    let queueing = |f: &dyn Fn(&LatencySummary) -> f64| {
        median(
            reports
                .iter()
                .filter(|r| r.queueing_count > 0)
                .map(|r| f(&r.queueing_ms))
                .collect(),
        )
    };
    Aggregate {
        strategy: name.to_owned(),
        reps: reports.len() as u32,
        latency_ms: LatencySummary {
            p50: med(&|r| r.latency_ms.p50),
            p90: med(&|r| r.latency_ms.p90),
            p99: med(&|r| r.latency_ms.p99),
            p999,
            max,
            mean: med(&|r| r.latency_ms.mean),
        },
        success_p99_ms: med(&|r| r.success_latency_ms.p99),
        error_rate: med(&|r| r.error_rate),
        goodput_rps: med(&|r| r.goodput_rps),
        offered_rps: med(&|r| r.offered_rps),
        achieved_rps: med(&|r| r.achieved_rps),
        queueing_p50_ms: queueing(&|q| q.p50),
        queueing_p99_ms: queueing(&|q| q.p99),
        lag_p99_ms: reports.iter().map(|r| r.dispatch_lag_ms.p99).fold(0.0, f64::max),
        lagging_runs: reports.iter().filter(|r| r.lagging).count() as u32,
        share: backends
            .into_iter()
            .map(|b| {
                (
                    b.clone(),
                    median(shares.iter().map(|s| s.get(b).copied().unwrap_or(0.0)).collect()),
                )
            })
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
        let ratio_title = format!("p99/{} [95% CI]", self.baseline);
        let _ = writeln!(
            out,
            "{:<width$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9}  {ratio_title}",
            "strategy", "p50", "p90", "p99", "p99.9", "max", "ok-p99", "err%", "q-p50", "q-p99", "lag-p99", "goodput"
        );
        for a in &self.aggregates {
            let l = &a.latency_ms;
            let ratio = a.p99_vs_baseline.map_or("-".to_owned(), |r| r.display());
            let lag = fmt_ms(a.lag_p99_ms) + if a.lagging_runs > 0 { "!" } else { "" };
            let _ = writeln!(
                out,
                "{:<width$} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.2} {:>8} {:>8} {:>8} {:>9.1}  {ratio}",
                a.strategy,
                fmt_ms(l.p50),
                fmt_ms(l.p90),
                fmt_ms(l.p99),
                fmt_ms(l.p999),
                fmt_ms(l.max),
                fmt_ms(a.success_p99_ms),
                a.error_rate * 100.0,
                fmt_ms(a.queueing_p50_ms),
                fmt_ms(a.queueing_p99_ms),
                lag,
                a.goodput_rps,
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
        let decisions = self.runs.iter().any(|r| !r.report.share.is_empty());
        out.push_str(if decisions {
            "routing decisions per backend:\n"
        } else {
            "responses per backend:\n"
        });
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
        if self.aggregates.iter().any(|a| a.lagging_runs > 0) {
            let _ = writeln!(
                out,
                "! the generator lagged (lag p99 > {} ms) in a repetition even after a re-run",
                crate::bench::LAG_P99_LIMIT_MS
            );
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
        // Compact: the histograms make up most of it, and a pretty-printed one is a line per
        // bucket (tens of megabytes for a full benchmark).
        let json = serde_json::to_string(self).map_err(io::Error::other)?;
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
        // Paired: 20/100, 40/300, 30/200; their geometric mean.
        let r = agg[1].p99_vs_baseline.expect("paired ratio");
        let want = (0.2f64 * (40.0 / 300.0) * 0.15).powf(1.0 / 3.0);
        assert!((r.ratio - want).abs() < 1e-9, "{r:?}");
        assert!(r.ci_low <= r.ratio && r.ratio <= r.ci_high && r.separates(), "{r:?}");
        assert_eq!(agg[0].p99_vs_baseline.map(|r| (r.ratio, r.pairs)), Some((1.0, 3)));
        assert_eq!(agg[1].share["a"], 0.5);
        assert_eq!(agg[1].p99_timeline, vec![(5.0, 30.0)]);
    }

    #[test]
    fn pairing_separates_a_steady_gain_from_noise_between_repetitions() {
        // The baseline's p99 swings 3× between repetitions; the other strategy is 10 %
        // better in every one: unpaired medians would overlap, the paired ratio does not.
        let steady = paired_ratio(&[0.9, 0.9, 0.9, 0.9, 0.9]).expect("ratio");
        assert!((steady.ratio - 0.9).abs() < 1e-9 && steady.separates(), "{steady:?}");
        assert!((steady.ci_high - 0.9).abs() < 1e-9, "{steady:?}");
        // Ratios on both sides of 1: the interval straddles it.
        let noise = paired_ratio(&[0.8, 1.2, 0.95, 1.1, 1.0]).expect("ratio");
        assert!(
            noise.ci_low < 1.0 && noise.ci_high > 1.0 && !noise.separates(),
            "{noise:?}"
        );
        assert_eq!(
            noise.display(),
            format!("{:.2}x [{:.2}, {:.2}]", noise.ratio, noise.ci_low, noise.ci_high)
        );
        // Deterministic, and nothing from nothing.
        assert_eq!(paired_ratio(&[0.8, 1.2, 0.95, 1.1, 1.0]), Some(noise));
        assert_eq!(paired_ratio(&[]), None);
        assert_eq!(paired_ratio(&[0.5]).map(|r| r.display()), Some("0.50x".into()));
    }
}
