//! The learned strategy's side of a decision: the feature rows a model scores, the curves its
//! answers become, and the pick that reads them with live requests in flight.
//!
//! Who does what, in which order:
//! 1. Off the request path (the proxy's scorer task, or the discrete-event model's refresh
//!    event), every backend of an `ml` pool gets [`CURVE_LEVELS`] rows from
//!    [`feature_row`]: the backend as it is now, at 0, 1, …, 15 of our requests in flight.
//!    [`RowPlan`] puts them in the order the model's metadata declares.
//! 2. The model answers `latency_ms` and `p_fail` per row; [`Curve::new`] turns a backend's
//!    answers into what a request sent at each level is expected to cost its client,
//!    failures included (`(1 − p) × latency + p × failure_penalty`, as [`Load::expected_ns`]
//!    prices them), times a per-backend calibration ([`calibration`]): the ratio of what the
//!    backend's recent attempts cost at the levels where it has samples to what the model
//!    predicted there. A model trained on one fleet is thus scaled to this one, and a server
//!    that drifts between retrainings is tracked. What a server cost fades with the time it
//!    goes without an answer (the pool's decay time, as the peak-EWMA estimate): in its
//!    `latency_rif_ms` feature, in its calibration, and in the level averages its next
//!    answers join ([`crate::Params::observe`]), so a server avoided during an incident is
//!    tried again once the incident is old news instead of never.
//! 3. On the request path, [`pick`] reads the curves (an immutable snapshot) with the
//!    *current* requests in flight, never below what requests sent at that level recently
//!    cost ([`cost_ns`]): Prequal's hot-cold rule (see the crate docs) with the
//!    model's expected cost as the latency. Among the cold
//!    candidates, costs within [`MlParams::tie`] of the lowest count as equal and the fewer
//!    in flight, then chance, decide; when every candidate is hot, the fewest in flight
//!    wins. A share [`MlParams::explore`] of decisions goes to a random cold candidate whose
//!    cost is within twice the lowest, so that the estimates of servers the rule would not
//!    pick stay fresh without sending traffic to a server known to be bad.
//!
//! The pick never waits: a backend without a curve makes the caller fall back to its
//! classic strategy (`ml.fallback`), which also serves while scores are missing, stale or
//! the model server is down.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{sample_eligible, Candidates, Load, Params, RifWindow, StrategyKind, PREQUAL_MAX_PROBES};

/// Levels of requests in flight a curve has rows for (0..=15).
pub const CURVE_LEVELS: usize = 16;

/// One model input: its name and unit, as the model's metadata spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub unit: &'static str,
}

const fn feature(name: &'static str, unit: &'static str) -> Feature {
    Feature { name, unit }
}

/// Every feature a row can carry, in the order [`feature_row`] writes them. The contract
/// (meaning, request-record column) is `docs/ml.md`.
pub const FEATURES: [Feature; 7] = [
    feature("inflight", "count"),
    feature("reported_queue", "count"),
    feature("has_report", "bool"),
    feature("latency_ewma_ms", "ms"),
    feature("latency_rif_ms", "ms"),
    feature("failure_rate", "ratio"),
    feature("weight", "count"),
];

/// A feature row in [`FEATURES`] order.
pub type Row = [f32; FEATURES.len()];

/// The row of a backend as a request sent to it now, with `inflight` of ours already there,
/// would find it. `orca: false` leaves out what the backend reports (the ablation that tells
/// how much of a model's skill is the reported queue).
pub fn feature_row(load: &Load, weight: u32, inflight: u32, now_ns: u64, params: &Params, orca: bool) -> Row {
    let queue = if orca { load.reported_queue(now_ns) } else { None };
    [
        inflight as f32,
        queue.unwrap_or(0) as f32,
        if queue.is_some() { 1.0 } else { 0.0 },
        (load.latency_estimate_ns(now_ns, params.decay_ns) / 1e6) as f32,
        (load.latency_at_rif_decayed_ns(inflight, now_ns, params.decay_ns) / 1e6) as f32,
        load.failure_rate(now_ns, params.decay_ns) as f32,
        weight as f32,
    ]
}

/// How a model's declared features map onto [`FEATURES`]: built once per model, it writes a
/// [`Row`] in the model's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPlan {
    index: Vec<usize>,
}

impl RowPlan {
    /// Checks a model's `(name, unit)` list: every name must be a known feature with the
    /// same unit. The model may use a subset, in any order.
    pub fn new<'a>(declared: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<RowPlan, String> {
        let mut index = Vec::new();
        for (name, unit) in declared {
            let Some(i) = FEATURES.iter().position(|f| f.name == name) else {
                return Err(format!(
                    "the model needs feature `{name}`, which the proxy does not measure"
                ));
            };
            if FEATURES[i].unit != unit {
                return Err(format!(
                    "feature `{name}`: the model expects unit `{unit}`, the proxy measures `{}`",
                    FEATURES[i].unit
                ));
            }
            if index.contains(&i) {
                return Err(format!("feature `{name}` is declared twice"));
            }
            index.push(i);
        }
        if index.is_empty() {
            return Err("the model declares no features".into());
        }
        Ok(RowPlan { index })
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.index.len()
    }

    /// The model's features, in its order.
    pub fn features(&self) -> impl Iterator<Item = Feature> + '_ {
        self.index.iter().map(|&i| FEATURES[i])
    }

    /// Appends `row` to `out` in the model's order.
    pub fn write(&self, row: &Row, out: &mut Vec<f32>) {
        out.extend(self.index.iter().map(|&i| row[i]));
    }
}

/// The queue a backend's rows carry (`reported_queue`), for [`Curve::with_scored_queue`].
pub fn scored_queue(load: &Load, now_ns: u64, orca: bool) -> u32 {
    if orca {
        load.reported_queue(now_ns).unwrap_or(0)
    } else {
        0
    }
}

/// The [`CURVE_LEVELS`] rows of one backend, level by level.
pub fn curve_rows(load: &Load, weight: u32, now_ns: u64, params: &Params, orca: bool) -> [Row; CURVE_LEVELS] {
    std::array::from_fn(|k| feature_row(load, weight, k as u32, now_ns, params, orca))
}

/// What the model says of one backend, level by level, as the pick reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Expected cost in ns of a request sent at each level of our requests in flight,
    /// calibrated.
    cost_ns: [f64; CURVE_LEVELS],
    /// The model's latency of a success at each level (ms), uncalibrated.
    pub latency_ms: [f32; CURVE_LEVELS],
    /// The model's failure probability at each level.
    pub p_fail: [f32; CURVE_LEVELS],
    /// The calibration factor applied.
    pub calibration: f64,
    /// The queue the backend reported when the rows were built (0 without a report): the
    /// pick counts a queue that grew since as requests ahead of ours ([`Curve::level`]).
    pub scored_queue: u32,
}

/// Bounds of the calibration factor: a model that is off by more than 4× is wrong, not
/// miscalibrated, and the factor must not hide it.
pub const CALIBRATION_RANGE: (f64, f64) = (0.25, 4.0);

impl Curve {
    /// A backend's curve from the model's answers for its [`curve_rows`]. Non-finite
    /// answers are treated as missing: `None`.
    pub fn new(latency_ms: &[f32], p_fail: &[f32], params: &Params, calibration: f64) -> Option<Curve> {
        if latency_ms.len() != CURVE_LEVELS || p_fail.len() != CURVE_LEVELS {
            return None;
        }
        if !latency_ms.iter().chain(p_fail).all(|v| v.is_finite()) {
            return None;
        }
        let c = calibration.clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1);
        let mut curve = Curve {
            cost_ns: [0.0; CURVE_LEVELS],
            latency_ms: std::array::from_fn(|k| latency_ms[k].max(0.0)),
            p_fail: std::array::from_fn(|k| p_fail[k].clamp(0.0, 1.0)),
            calibration: c,
            scored_queue: 0,
        };
        for k in 0..CURVE_LEVELS {
            curve.cost_ns[k] = c * expected_cost_ns(curve.latency_ms[k], curve.p_fail[k], params);
        }
        Some(curve)
    }

    /// The same curve, built from rows that saw `queue` reported (see [`Curve::level`]).
    pub fn with_scored_queue(mut self, queue: u32) -> Curve {
        self.scored_queue = queue;
        self
    }

    /// The level to read for a request sent now: our requests in flight, plus how much the
    /// backend's reported queue grew since the rows were built (less what it shrank). The
    /// rows fixed the queue at scoring time, up to a refresh ago; reports arrive with every
    /// response, and a queue that filled since then is work ahead of the request all the
    /// same.
    pub fn level(&self, load: &Load, now_ns: u64, orca: bool) -> u32 {
        let queue = i64::from(scored_queue(load, now_ns, orca));
        (i64::from(load.inflight()) + queue - i64::from(self.scored_queue)).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// Expected cost at `rif` of our requests in flight. Past the last level the curve goes
    /// on with the slope of its last step, at least 1/16 of the last level per request (a
    /// queue grows by a service time per request ahead).
    pub fn cost_ns(&self, rif: u32) -> f64 {
        let last = CURVE_LEVELS - 1;
        let k = rif as usize;
        if k <= last {
            return self.cost_ns[k];
        }
        let step = (self.cost_ns[last] - self.cost_ns[last - 1]).max(self.cost_ns[last] / CURVE_LEVELS as f64);
        self.cost_ns[last] + step * (k - last) as f64
    }

    /// The predicted latency at `rif` in µs (calibrated), as request records store it.
    pub fn predicted_us(&self, rif: u32) -> f64 {
        let k = (rif as usize).min(CURVE_LEVELS - 1);
        f64::from(self.latency_ms[k]) * 1e3 * self.calibration
    }
}

fn expected_cost_ns(latency_ms: f32, p_fail: f32, params: &Params) -> f64 {
    let p = f64::from(p_fail);
    (1.0 - p) * f64::from(latency_ms) * 1e6 + p * params.failure_penalty_ns
}

/// The per-backend calibration factor: what the backend's attempts cost at the levels of
/// requests in flight where it has samples ([`Load::latency_at_rif_exact_ns`], failures at
/// the penalty), over what the model predicts there, each level weighted alike, clamped to
/// [`CALIBRATION_RANGE`]. That evidence counts as much as it is recent: the factor's
/// logarithm is scaled by [`Load::idle_fade`], so a backend that answers all the time keeps
/// its factor, and one that the pick avoided after an incident is judged by the model alone
/// again after a while (half-way after about 0.7 × the decay time, 7 s by default) instead
/// of by what it cost during the incident for ever. 1 when the backend has no samples yet.
pub fn calibration(load: &Load, latency_ms: &[f32], p_fail: &[f32], params: &Params, now_ns: u64) -> f64 {
    let (mut seen, mut predicted) = (0.0, 0.0);
    for k in 0..CURVE_LEVELS.min(latency_ms.len()).min(p_fail.len()) {
        if let Some(measured) = load.latency_at_rif_exact_ns(k as u32) {
            let p = expected_cost_ns(latency_ms[k].max(0.0), p_fail[k].clamp(0.0, 1.0), params);
            if p.is_finite() && p > 0.0 {
                seen += measured;
                predicted += p;
            }
        }
    }
    if predicted <= 0.0 || seen <= 0.0 {
        return 1.0;
    }
    let ratio = (seen / predicted).clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1);
    (load.idle_fade(now_ns, params.decay_ns) * ratio.ln()).exp()
}

/// The `ml` strategy's decision parameters, a pool's `ml` settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlParams {
    /// Share of decisions sent to a random cold candidate whose cost is within twice the
    /// lowest (exploration).
    pub explore: f64,
    /// Cold costs within this fraction of the lowest count as equal; requests in flight
    /// decide among them.
    pub tie: f64,
    /// The classic strategy that decides while the model's scores are missing, stale or
    /// the model server is down.
    pub fallback: StrategyKind,
    /// Whether the decision reads what backends report of their own load (ORCA queues): in
    /// the rows, in the hot threshold and in the level a curve is read at. `false` is the
    /// ablation that shows how much of the strategy's skill the reports are.
    pub orca: bool,
}

/// Default [`MlParams::explore`]: 2 %, so every server of a pool of ten is tried a few times
/// a second at 1000 req/s.
pub const DEFAULT_EXPLORE: f64 = 0.02;

/// Default [`MlParams::tie`]: 30 %. The model's error on one server at one level is of
/// that order (hold-out MAE about 20 ms on latencies of 40–120 ms), so a closer difference
/// is not knowledge, and the requests in flight, which are exact, decide it. In the
/// discrete-event model (12 repetitions) a band of 0.3 beat 0.1 on the shedding fleet
/// (1.01× against 1.03× `prequal`'s p99) and the cold join, and matched it elsewhere; wider
/// bands up to 1.0 changed little.
pub const DEFAULT_TIE: f64 = 0.30;

impl Default for MlParams {
    fn default() -> Self {
        MlParams {
            explore: DEFAULT_EXPLORE,
            tie: DEFAULT_TIE,
            fallback: StrategyKind::P2cEwma,
            orca: true,
        }
    }
}

impl MlParams {
    /// What is wrong with these values: `(key, reason)`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        if !(0.0..=0.5).contains(&self.explore) {
            errs.push(("explore", "must be between 0 and 0.5".to_string()));
        }
        if !(0.0..=1.0).contains(&self.tie) {
            errs.push(("tie", "must be between 0 and 1".to_string()));
        }
        if self.fallback == StrategyKind::Ml {
            errs.push(("fallback", "must be a classic strategy, not `ml`".to_string()));
        }
        errs
    }
}

/// What [`pick`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MlPick {
    /// The candidate and the cost (ns) its curve predicted at its requests in flight.
    Chosen { index: usize, cost_ns: f64, rif: u32 },
    /// A sampled candidate has no curve: the caller falls back to its classic strategy.
    NoCurve,
    /// No eligible candidate.
    None,
}

/// The learned pick: Prequal's hot-cold rule over up to `params.prequal.probes` sampled
/// eligible candidates, with each one's [`Curve::cost_ns`] at its current requests in flight
/// as the latency estimate. `curve(i)` is candidate `i`'s curve, if the model scored it.
/// The hot threshold's window is the pool's, shared with `prequal` (`window`).
pub fn pick<'c, C, R>(
    params: &Params,
    window: &RifWindow,
    c: &C,
    curve: impl Fn(usize) -> Option<&'c Curve>,
    now_ns: u64,
    rng: &mut R,
) -> MlPick
where
    C: Candidates + ?Sized,
    R: Rng + ?Sized,
{
    let mut sampled = [0usize; PREQUAL_MAX_PROBES as usize];
    let d = sample_eligible(c, params.prequal.probes, &mut sampled, rng);
    if d == 0 {
        return MlPick::None;
    }
    let mut probes: [Probe; PREQUAL_MAX_PROBES as usize] = [(0, 0, 0.0); PREQUAL_MAX_PROBES as usize];
    for (slot, &i) in probes.iter_mut().zip(&sampled[..d]) {
        let load = c.load(i);
        let Some(cv) = curve(i) else {
            return MlPick::NoCurve;
        };
        let orca = params.ml.orca;
        let rif = if orca { load.ahead(now_ns) } else { load.inflight() };
        *slot = (i, rif, cost_ns(cv, load, now_ns, params));
    }
    let probes = &probes[..d];
    // Only a pick this strategy makes feeds the window: on `NoCurve` the fallback samples
    // (and, if it is `prequal`, pushes) its own.
    for p in probes {
        window.push(p.1);
    }
    let threshold = window.quantile(params.prequal.hot_quantile, params.prequal.rif_window);
    let cold_min = probes
        .iter()
        .filter(|p| p.1 <= threshold)
        .map(|p| p.2)
        .min_by(f64::total_cmp);
    let chosen = |(index, rif, cost_ns): Probe| MlPick::Chosen { index, cost_ns, rif };
    if let Some(min) = cold_min {
        let ml = &params.ml;
        if ml.explore > 0.0 && rng.random_bool(ml.explore.min(1.0)) {
            let near = |p: &&Probe| p.1 <= threshold && p.2 <= 2.0 * min;
            let n = probes.iter().filter(near).count();
            if let Some(&p) = probes.iter().filter(near).nth(rng.random_range(0..n.max(1))) {
                return chosen(p);
            }
        }
        let bound = min * (1.0 + ml.tie);
        return best_by(probes.iter().filter(|p| p.1 <= threshold && p.2 <= bound), rng, |p| {
            (p.1 as f64, p.2)
        })
        .map_or(MlPick::None, chosen);
    }
    best_by(probes.iter(), rng, |p| (p.1 as f64, p.2)).map_or(MlPick::None, chosen)
}

/// What a request sent to a candidate now is expected to cost: its curve at the level it is
/// at ([`Curve::level`]), and never less than what requests sent at our current requests in
/// flight there recently cost ([`Load::latency_at_rif_recent_ns`], failures at the penalty,
/// fading with the time since the backend's last response like the latency estimate). The
/// floor is the live measurement the curve was calibrated with, read at the moment of the
/// decision: a server that started shedding or slowing since the last refresh, or whose
/// failures at one level the model does not foresee, costs what it costs.
pub fn cost_ns(curve: &Curve, load: &Load, now_ns: u64, params: &Params) -> f64 {
    let at = curve.cost_ns(curve.level(load, now_ns, params.ml.orca));
    load.latency_at_rif_recent_ns(load.inflight(), now_ns, params.decay_ns)
        .map_or(at, |m| at.max(m))
}

/// A sampled candidate: its index, requests in flight (ours plus a fresh reported queue) and
/// expected cost in ns.
type Probe = (usize, u32, f64);

/// The element with the lowest key (lexicographic); ties at random.
fn best_by<'a, R: Rng + ?Sized>(
    it: impl Iterator<Item = &'a Probe>,
    rng: &mut R,
    key: impl Fn(&Probe) -> (f64, f64),
) -> Option<Probe> {
    let mut best: Option<((f64, f64), Probe)> = None;
    let mut ties = 0u32;
    for p in it {
        let k = key(p);
        match &best {
            Some((b, _)) if k > *b => {}
            Some((b, _)) if k == *b => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((k, *p));
                }
            }
            _ => {
                best = Some((k, *p));
                ties = 1;
            }
        }
    }
    best.map(|(_, p)| p)
}
