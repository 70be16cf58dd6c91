//! Backend selection strategies as pure functions of (candidates, their live load, `now`,
//! an RNG). Nothing here touches a socket or the wall clock, so the proxy, unit tests and
//! the benchmark's discrete-event model all drive the very same code.
//!
//! A strategy sees candidates through [`Candidates`]: their weights, their [`Load`] and
//! whether each is eligible right now (healthy, not ejected, not already tried). It returns
//! the index of its choice among eligible candidates, or `None` when there is none.
//!
//! | kind | choice | cost |
//! |---|---|---|
//! | `round_robin` | next in order, weights ignored; an ineligible one's turn rotates over the eligible | O(1) typical |
//! | `weighted_round_robin` | nginx's smooth weighted round robin (interleaved, never A,A,A,B) | O(1) typical |
//! | `least_connections` | fewest in-flight per unit of weight; ties broken at random | O(n) |
//! | `random` | weighted random | O(n) |
//! | `p2c_ewma` | power of two choices over peak-EWMA latency × (in-flight + 1) (Mitzenmacher; Finagle, Linkerd) | O(n) scan for eligibility, two cost reads |
//! | `orca_least_delay` | least expected delay over every candidate: peak-EWMA latency × (in-flight + the backend's reported queue + 1); ties broken at random | O(n) |
//! | `prequal` | Prequal's hot-cold lexicographic rule over `probes` sampled candidates (NSDI 2024; see below) | O(n) scan for eligibility, O(`rif_window`) quantile |
//! | `ml` | the same rule with a learned model's expected cost at each candidate's current requests in flight ([`ml`]); without the model's curves, its fallback | as `prequal`, plus one curve read per probe |
//!
//! **Failures cost.** Every strategy that learns from latency (`p2c_ewma`,
//! `orca_least_delay`, `prequal`) prices a backend by what a request sent there is expected
//! to cost its client, failures included ([`Load::expected_ns`]): `(1 − p) × latency + p ×
//! failure_penalty`, with `p` the share of recent attempts that failed (an EWMA over
//! attempts, [`FAILURE_WEIGHT`], decaying while idle). A 503 served in 0.1 ms is no latency
//! sample: without this, a server that sheds load at once looks like the fastest and holds
//! nothing in flight, so latency- and connection-based rules pour traffic into it. A slow
//! failure (a timeout) still raises the latency estimate as a peak. `prequal` keeps its
//! latency per level of requests in flight, and a failure costs the penalty at the level
//! where it happened ([`Load::latency_at_rif_ns`]).
//!
//! **`prequal`.** Prequal (Wydrowski, Kleinberg, Rumble, "Load is not what you should
//! balance", NSDI 2024) probes `d` servers for their requests in flight (RIF) and their
//! latency at that RIF; those whose RIF is above the `Q_RIF` quantile of recent probes are
//! hot; it picks the cold one with the lowest latency, or, when all are hot, the one with
//! the fewest in flight. A proxy in front of its servers already knows both without
//! probing: the RIF is our requests in flight there plus the queue of a fresh ORCA report
//! ([`Load::ahead`]), and the latency is the recent average for requests sent at the
//! current level of our requests in flight ([`Load::expected_at_rif_ns`]). Averages are
//! noisy: cold candidates whose estimates differ from the lowest by less than twice the
//! standard error of the difference count as tied with it, and the fewer in flight, then
//! chance, decide among them; otherwise one of two equal servers whose average happens to
//! be lower takes every request until its queue makes it hot. Defaults
//! ([`PrequalParams`]): 16 probes (Prequal's probe pool; every server of a pool of up to
//! 16), hot above the 0.84 quantile of the last 16 sampled RIF values, latency averaged over
//! about 16 responses per level; all per pool. They were chosen on measurements, see
//! [`PrequalParams::default`].
//!
//! `orca_least_delay` is the classic strategy that uses what backends report about their own
//! load (ORCA `named_metrics.queue`, fed through [`Load::report`]), so that a learned
//! strategy given the same reports is measured against a rule that has them too. It is
//! shortest-expected-delay routing (SED: the server minimising (jobs ahead + 1) × time per
//! job, as in the queueing literature and IPVS's `sed` scheduler) with our peak-EWMA latency
//! estimate as the time per job and, as the jobs ahead, our requests in flight there plus
//! the requests its latest report says wait for a slot ([`Load::delay_cost`]). That is the
//! cost of `p2c_ewma` with the reported queue added: our in-flight count alone cannot tell
//! a request waiting for a slot (which delays a newcomer) from one being served (which, on a
//! backend with free slots, does not), and cannot see requests other clients queued. A
//! waiting request of ours therefore counts twice, once in flight and once queued; one of
//! another client's counts once. The cost is minimised over every eligible backend rather
//! than two random ones: with k slow or slot-starved backends among n, two random choices
//! are both bad for a share k(k-1)/(n(n-1)) of the requests, too many for a tail.
//!
//! Fallback: a report expires after [`REPORT_TTL_NS`], and a backend without a fresh report
//! counts no queue, only our requests in flight. With no reports at all the rule is
//! therefore `p2c_ewma`'s cost minimised over every candidate; a backend that stops reporting
//! neither looks idle while it holds our requests nor stays shunned for a queue it reported
//! long ago. A backend without latency history costs [`NO_HISTORY_PENALTY_NS`] per request
//! ahead (0 when there are none, so new backends are tried). Weights are ignored, as in
//! `p2c_ewma`.

mod load;
pub mod ml;
mod wrr;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use load::{InflightGuard, Load, FAILURE_WEIGHT, NO_HISTORY_PENALTY_NS, REPORT_TTL_NS};
pub use ml::MlParams;
pub use wrr::Schedule;

/// The strategies a pool can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    Random,
    P2cEwma,
    OrcaLeastDelay,
    Prequal,
    /// The learned strategy ([`ml`]); [`pick`] alone, without the model's curves, decides
    /// as its fallback does.
    Ml,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 8] = [
        StrategyKind::RoundRobin,
        StrategyKind::WeightedRoundRobin,
        StrategyKind::LeastConnections,
        StrategyKind::Random,
        StrategyKind::P2cEwma,
        StrategyKind::OrcaLeastDelay,
        StrategyKind::Prequal,
        StrategyKind::Ml,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::WeightedRoundRobin => "weighted_round_robin",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::Random => "random",
            StrategyKind::P2cEwma => "p2c_ewma",
            StrategyKind::OrcaLeastDelay => "orca_least_delay",
            StrategyKind::Prequal => "prequal",
            StrategyKind::Ml => "ml",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown strategy `{s}`"))
    }
}

/// The candidates of one decision.
pub trait Candidates {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn weight(&self, i: usize) -> u32;
    fn load(&self, i: usize) -> &Load;
    fn eligible(&self, i: usize) -> bool;
}

/// Parameters that may change on reload without a membership change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub kind: StrategyKind,
    /// Peak-EWMA decay time in ns.
    pub decay_ns: f64,
    /// What a failed attempt costs, weighted by the failure rate in the expected cost
    /// ([`Load::expected_ns`]).
    pub failure_penalty_ns: f64,
    pub prequal: PrequalParams,
    pub ml: MlParams,
}

impl Params {
    /// `kind` with every other parameter at its default.
    pub fn new(kind: StrategyKind) -> Self {
        Params {
            kind,
            decay_ns: DEFAULT_DECAY_MS as f64 * 1e6,
            failure_penalty_ns: DEFAULT_FAILURE_PENALTY_MS as f64 * 1e6,
            prequal: PrequalParams::default(),
            ml: MlParams::default(),
        }
    }

    /// Feeds the end of one attempt at a backend (its time to the response header, or to
    /// the failure) into the backend's estimates; `rif` is [`InflightGuard::rif`]. In an
    /// `ml` pool the level's previous average first fades for the time the backend went
    /// without an answer ([`Load::idle_fade`]), so that the first answers of a server that
    /// was avoided after an incident outweigh what it cost then; the other strategies keep
    /// Prequal's plain average.
    pub fn observe(&self, load: &Load, rif: u32, rtt_ns: f64, failed: bool, now_ns: u64) {
        let alpha = self.prequal.latency_alpha();
        let fade = if self.kind == StrategyKind::Ml {
            load.idle_fade(now_ns, self.decay_ns)
        } else {
            1.0
        };
        if failed {
            load.observe_failure(rtt_ns, now_ns);
            load.observe_at_rif(rif, rtt_ns.max(self.failure_penalty_ns), alpha, fade);
        } else {
            load.observe(rtt_ns, now_ns, self.decay_ns);
            load.observe_at_rif(rif, rtt_ns, alpha, fade);
        }
    }
}

/// Default peak-EWMA decay time (a pool's `ewma_decay_ms`): 10 s, as Finagle and Linkerd.
pub const DEFAULT_DECAY_MS: u64 = 10_000;

/// Default failure penalty (a pool's `failure_penalty_ms`): 2 s, about what a failed request
/// costs a client that waited for it and tries again (a typical 1 s timeout and the retry).
/// It has to outweigh the latency estimates of healthy servers, and peak-EWMA estimates
/// sit near the recent maximum latency, several times the mean: on the lab's sinkhole
/// fleet (`s3`), healthy servers' estimates reach hundreds of milliseconds and a 1 s
/// penalty let `p2c_ewma` keep sending the sinkhole 2 % of requests (1.15 % errors in the
/// model; 0.10 % at 2 s). A larger one shuns a server that shed load once for longer, which
/// costs where shedding is momentary (`s6`: `p2c_ewma` 3.3 % errors at 1 s, 3.4 % at 2 s,
/// 4.0 % at 5 s).
pub const DEFAULT_FAILURE_PENALTY_MS: u64 = 2_000;

/// `prequal`'s parameters, as a pool's `prequal` section spells them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrequalParams {
    /// Candidates sampled per decision (the paper's probes, d).
    pub probes: u32,
    /// A candidate is hot when its requests in flight exceed this quantile of the recently
    /// sampled values (the paper's Q_RIF).
    pub hot_quantile: f64,
    /// How many recent samples that quantile is taken over (the paper's probe pool).
    pub rif_window: u32,
    /// How many recent responses at a level of requests in flight the latency estimate
    /// averages over.
    pub latency_window: u32,
}

/// The largest `rif_window` a pool may set.
pub const PREQUAL_MAX_WINDOW: u32 = 128;
/// The largest `latency_window` a pool may set.
pub const PREQUAL_MAX_LATENCY_WINDOW: u32 = 100_000;
/// The largest `probes` a pool may set.
pub const PREQUAL_MAX_PROBES: u32 = 16;

impl PrequalParams {
    /// What is wrong with these values, if anything: `(key, reason)`.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        if !(1..=PREQUAL_MAX_PROBES).contains(&self.probes) {
            errs.push(("probes", format!("must be between 1 and {PREQUAL_MAX_PROBES}")));
        }
        if !(self.hot_quantile > 0.0 && self.hot_quantile <= 1.0) {
            errs.push(("hot_quantile", "must be above 0 and at most 1".to_string()));
        }
        if !(1..=PREQUAL_MAX_WINDOW).contains(&self.rif_window) {
            errs.push(("rif_window", format!("must be between 1 and {PREQUAL_MAX_WINDOW}")));
        }
        if !(1..=PREQUAL_MAX_LATENCY_WINDOW).contains(&self.latency_window) {
            errs.push((
                "latency_window",
                format!("must be between 1 and {PREQUAL_MAX_LATENCY_WINDOW}"),
            ));
        }
        errs
    }

    /// The weight of one response in the per-level latency average: `2 / (window + 1)`,
    /// which averages over about `latency_window` responses.
    pub fn latency_alpha(&self) -> f64 {
        2.0 / (f64::from(self.latency_window.max(1)) + 1.0)
    }
}

/// The defaults. Prequal selects from a pool of up to 16 recent probes, so a decision
/// weighs up to 16 candidates: here 16 sampled afresh, every server of a smaller pool. A
/// server is hot when its RIF is above more than 84 % of the recent samples. They were
/// chosen in the discrete-event model over the lab's seven scenarios and checked in the
/// lab (`docs/benchmarks.md`, "prequal's parameters"). With 3 probes (the power-of-d
/// reading) the sampled fast servers are often all hot or full, and the rule falls to a
/// cold slow one: in the model, p99 1.02× the best classic strategy on `s1-static-skew` and
/// 0.88× on `s6-shedding`, against 0.95× and 0.68× with 16 (lab: 1.01× and 0.90×, against
/// 0.95× and 0.73×). A lower threshold (the median) helps a
/// fleet of equals by a point but leaves a server that fails fast, and so holds nothing in
/// flight, as often the only cold one: in a pool of two healthy servers and one shedding
/// half its requests with fast 503s it took a quarter of the traffic.
impl Default for PrequalParams {
    fn default() -> Self {
        PrequalParams {
            probes: 16,
            hot_quantile: 0.84,
            rif_window: 16,
            latency_window: 16,
        }
    }
}

/// Per-membership state of the stateful strategies; rebuilt when membership or weights
/// change (a reset round-robin position is harmless).
#[derive(Debug, Default)]
pub struct State {
    next: AtomicUsize,
    schedule: OnceLock<Schedule>,
    rif: RifWindow,
}

impl State {
    pub fn new() -> Self {
        State::default()
    }

    /// The recent requests-in-flight samples `prequal` and `ml` take their hot threshold
    /// from.
    pub fn rif_window(&self) -> &RifWindow {
        &self.rif
    }
}

/// Picks one eligible candidate.
pub fn pick<C: Candidates + ?Sized, R: Rng + ?Sized>(
    params: &Params,
    state: &State,
    c: &C,
    now_ns: u64,
    rng: &mut R,
) -> Option<usize> {
    if c.is_empty() {
        return None;
    }
    match params.kind {
        StrategyKind::RoundRobin => round_robin(state, c),
        StrategyKind::WeightedRoundRobin => {
            // An ineligible entry's turn goes to a weighted random pick, not to its successor
            // in the schedule, so the others keep their proportions.
            let schedule = state.schedule.get_or_init(|| Schedule::build(&weights(c)));
            schedule
                .get(state.next.fetch_add(1, Relaxed))
                .filter(|&i| c.eligible(i))
                .or_else(|| weighted_random(c, rng))
        }
        StrategyKind::LeastConnections => least_connections(c, rng),
        StrategyKind::Random => weighted_random(c, rng),
        StrategyKind::P2cEwma => p2c(c, now_ns, params, rng),
        StrategyKind::OrcaLeastDelay => least_by(c, rng, |l| l.delay_cost(now_ns, params)),
        StrategyKind::Prequal => prequal(params, &state.rif, c, now_ns, rng),
        StrategyKind::Ml => {
            // Without the model's curves `ml` decides as its fallback does.
            let fallback = Params {
                kind: match params.ml.fallback {
                    StrategyKind::Ml => StrategyKind::P2cEwma,
                    k => k,
                },
                ..*params
            };
            pick(&fallback, state, c, now_ns, rng)
        }
    }
}

fn weights<C: Candidates + ?Sized>(c: &C) -> Vec<u32> {
    (0..c.len()).map(|i| c.weight(i)).collect()
}

/// The next position in order; when it is not eligible, an eligible candidate chosen in
/// rotation. Skipping forward to the next eligible one instead would hand the skipped
/// candidates' whole share to their successor (with two of ten pending, the next one gets
/// triple load).
fn round_robin<C: Candidates + ?Sized>(state: &State, c: &C) -> Option<usize> {
    let n = c.len();
    let turn = state.next.fetch_add(1, Relaxed);
    let i = turn % n;
    if c.eligible(i) {
        return Some(i);
    }
    let m = (0..n).filter(|&j| c.eligible(j)).count();
    if m == 0 {
        return None;
    }
    nth_eligible(c, (turn / n) % m)
}

fn least_connections<C: Candidates + ?Sized, R: Rng + ?Sized>(c: &C, rng: &mut R) -> Option<usize> {
    // Compare inflight/weight without division: a/wa < b/wb  <=>  a*wb < b*wa.
    let mut best: Option<(usize, u64, u64)> = None;
    let mut ties = 0u32;
    for i in 0..c.len() {
        if !c.eligible(i) {
            continue;
        }
        let (inf, w) = (c.load(i).inflight() as u64, c.weight(i).max(1) as u64);
        match best {
            None => {
                best = Some((i, inf, w));
                ties = 1;
            }
            Some((_, binf, bw)) => {
                let (lhs, rhs) = (inf * bw, binf * w);
                if lhs < rhs {
                    best = Some((i, inf, w));
                    ties = 1;
                } else if lhs == rhs {
                    // Reservoir sampling: each tied candidate wins with probability 1/ties.
                    ties += 1;
                    if rng.random_range(0..ties) == 0 {
                        best = Some((i, inf, w));
                    }
                }
            }
        }
    }
    best.map(|(i, _, _)| i)
}

fn weighted_random<C: Candidates + ?Sized, R: Rng + ?Sized>(c: &C, rng: &mut R) -> Option<usize> {
    let total: u64 = (0..c.len())
        .filter(|&i| c.eligible(i))
        .map(|i| c.weight(i).max(1) as u64)
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.random_range(0..total);
    for i in 0..c.len() {
        if !c.eligible(i) {
            continue;
        }
        let w = c.weight(i).max(1) as u64;
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

/// The `k`-th eligible candidate.
fn nth_eligible<C: Candidates + ?Sized>(c: &C, k: usize) -> Option<usize> {
    (0..c.len()).filter(|&i| c.eligible(i)).nth(k)
}

fn p2c<C: Candidates + ?Sized, R: Rng + ?Sized>(c: &C, now_ns: u64, params: &Params, rng: &mut R) -> Option<usize> {
    let n = (0..c.len()).filter(|&i| c.eligible(i)).count();
    match n {
        0 => None,
        1 => nth_eligible(c, 0),
        _ => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth_eligible(c, a)?, nth_eligible(c, b)?);
            let (ca, cb) = (c.load(a).cost(now_ns, params), c.load(b).cost(now_ns, params));
            Some(if cb < ca { b } else { a })
        }
    }
}

/// The eligible candidate of lowest `cost`; ties broken at random (reservoir sampling, as
/// in [`least_connections`]), so equal candidates share the traffic.
fn least_by<C, R>(c: &C, rng: &mut R, cost: impl Fn(&Load) -> f64) -> Option<usize>
where
    C: Candidates + ?Sized,
    R: Rng + ?Sized,
{
    let mut best: Option<(usize, f64)> = None;
    let mut ties = 0u32;
    for i in 0..c.len() {
        if !c.eligible(i) {
            continue;
        }
        let k = cost(c.load(i));
        match best {
            Some((_, b)) if k > b => {}
            Some((_, b)) if k == b => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((i, k));
                }
            }
            _ => {
                best = Some((i, k));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// The requests-in-flight values `prequal` sampled last, newest overwriting oldest: the
/// distribution its hot threshold is a quantile of. Lock-free: each sample takes a slot with
/// one `fetch_add`; a reader that races a writer sees the slot's old or new value.
#[derive(Debug)]
pub struct RifWindow {
    next: AtomicUsize,
    samples: Box<[AtomicU32]>,
}

impl Default for RifWindow {
    fn default() -> Self {
        RifWindow {
            next: AtomicUsize::new(0),
            samples: (0..PREQUAL_MAX_WINDOW).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl RifWindow {
    pub fn push(&self, rif: u32) {
        let i = self.next.fetch_add(1, Relaxed) % self.samples.len();
        self.samples[i].store(rif, Relaxed);
    }

    /// The `q`-quantile of the last `window` samples (or of all of them while fewer were
    /// taken), as the hot threshold reads it: the value at 0-based rank ⌊q·n⌋ in order, so that
    /// a RIF above it is above more than a `q` share of the samples. With two samples 0 and 1
    /// and `q` = 0.5 it is 1: neither is hot, where the lower median would make the busier of
    /// two servers hot whatever the other's latency.
    pub fn quantile(&self, q: f64, window: u32) -> u32 {
        let len = self.samples.len();
        let taken = self.next.load(Relaxed);
        let n = taken.min(window as usize).clamp(1, len);
        let mut buf = [0u32; PREQUAL_MAX_WINDOW as usize];
        for (k, slot) in buf.iter_mut().take(n).enumerate() {
            // The n most recent slots, ending just before `taken`.
            let at = (taken + len - 1 - k) % len;
            *slot = self.samples[at].load(Relaxed);
        }
        let rank = ((q * n as f64).floor() as usize).min(n - 1);
        *buf[..n].select_nth_unstable(rank).1
    }
}

/// Samples up to `probes` distinct eligible candidates (at most [`PREQUAL_MAX_PROBES`])
/// into `out`, in index order; returns how many.
pub(crate) fn sample_eligible<C: Candidates + ?Sized, R: Rng + ?Sized>(
    c: &C,
    probes: u32,
    out: &mut [usize; PREQUAL_MAX_PROBES as usize],
    rng: &mut R,
) -> usize {
    let m = (0..c.len()).filter(|&i| c.eligible(i)).count();
    let d = (probes.max(1) as usize).min(m).min(PREQUAL_MAX_PROBES as usize);
    // d distinct ranks among the eligible, by rejection (d is small).
    let mut ranks = [0usize; PREQUAL_MAX_PROBES as usize];
    let mut k = 0;
    while k < d {
        let r = rng.random_range(0..m);
        if !ranks[..k].contains(&r) {
            ranks[k] = r;
            k += 1;
        }
    }
    ranks[..d].sort_unstable();
    // Map the sorted ranks to candidate indices in one pass.
    let (mut seen, mut k) = (0, 0);
    for i in 0..c.len() {
        if k == d {
            break;
        }
        if !c.eligible(i) {
            continue;
        }
        if seen == ranks[k] {
            out[k] = i;
            k += 1;
        }
        seen += 1;
    }
    d
}

/// Prequal's hot-cold lexicographic rule (Wydrowski, Kleinberg, Rumble, "Load is not what
/// you should balance: Introducing Prequal", NSDI 2024), with the proxy's own view in place
/// of probes: sample `probes` distinct eligible candidates; record their requests in flight
/// (ours plus a fresh reported queue, [`Load::ahead`]); those above the `hot_quantile` of
/// the last `rif_window` recorded values are hot. Pick the cold candidate with the lowest
/// latency estimate (fewer in flight, then chance, breaking ties, where a tie is a
/// difference within noise: two standard errors); when every candidate is
/// hot, the one with the fewest in flight (lower estimate, then chance, breaking ties).
fn prequal<C: Candidates + ?Sized, R: Rng + ?Sized>(
    params: &Params,
    window: &RifWindow,
    c: &C,
    now_ns: u64,
    rng: &mut R,
) -> Option<usize> {
    let p = &params.prequal;
    let mut sampled = [0usize; PREQUAL_MAX_PROBES as usize];
    let d = sample_eligible(c, p.probes, &mut sampled, rng);
    if d == 0 {
        return None;
    }
    let alpha = p.latency_alpha();
    let mut probes = [(0usize, 0u32, 0f64, 0f64); PREQUAL_MAX_PROBES as usize];
    for (slot, &i) in probes.iter_mut().zip(&sampled[..d]) {
        let load = c.load(i);
        let rif = load.ahead(now_ns);
        window.push(rif);
        let (est, se) = load.expected_at_rif_ns(alpha);
        *slot = (i, rif, est, se);
    }
    let probes = &probes[..d];
    let threshold = window.quantile(p.hot_quantile, p.rif_window);
    // The cold candidate with the lowest estimate, and how sure that estimate is.
    let cold_best = probes
        .iter()
        .filter(|&&(_, rif, ..)| rif <= threshold)
        .map(|&(.., est, se)| (est, se))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let mut best: Option<(usize, bool, u32, f64)> = None;
    let mut ties = 0u32;
    for &(i, rif, est, se) in probes {
        let hot = rif > threshold;
        // A cold estimate within noise of the best one (two standard errors of their
        // difference) counts as equal to it, so that requests in flight decide between
        // servers the averages cannot tell apart, as least-loaded rules would.
        let est = match cold_best {
            Some((b, b_se)) if !hot && est - b <= 2.0 * (se * se + b_se * b_se).sqrt() => b,
            _ => est,
        };
        // Lexicographic: cold before hot; among cold, latency then requests in flight;
        // among hot, requests in flight then latency.
        let key = |hot: bool, rif: u32, est: f64| {
            if hot {
                (1, rif as f64, est)
            } else {
                (0, est, rif as f64)
            }
        };
        let this = key(hot, rif, est);
        match best {
            Some((_, bh, br, be)) => {
                let that = key(bh, br, be);
                match this.partial_cmp(&that) {
                    Some(std::cmp::Ordering::Less) => {
                        best = Some((i, hot, rif, est));
                        ties = 1;
                    }
                    Some(std::cmp::Ordering::Equal) => {
                        ties += 1;
                        if rng.random_range(0..ties) == 0 {
                            best = Some((i, hot, rif, est));
                        }
                    }
                    _ => {}
                }
            }
            None => {
                best = Some((i, hot, rif, est));
                ties = 1;
            }
        }
    }
    best.map(|(i, ..)| i)
}

#[cfg(test)]
mod tests;
