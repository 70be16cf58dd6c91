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
mod wrr;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use load::{InflightGuard, Load, NO_HISTORY_PENALTY_NS, REPORT_TTL_NS};
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
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 6] = [
        StrategyKind::RoundRobin,
        StrategyKind::WeightedRoundRobin,
        StrategyKind::LeastConnections,
        StrategyKind::Random,
        StrategyKind::P2cEwma,
        StrategyKind::OrcaLeastDelay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::WeightedRoundRobin => "weighted_round_robin",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::Random => "random",
            StrategyKind::P2cEwma => "p2c_ewma",
            StrategyKind::OrcaLeastDelay => "orca_least_delay",
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
}

/// Per-membership state of the stateful strategies; rebuilt when membership or weights
/// change (a reset round-robin position is harmless).
#[derive(Debug, Default)]
pub struct State {
    next: AtomicUsize,
    schedule: OnceLock<Schedule>,
}

impl State {
    pub fn new() -> Self {
        State::default()
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
        StrategyKind::P2cEwma => p2c(c, now_ns, params.decay_ns, rng),
        StrategyKind::OrcaLeastDelay => least_by(c, rng, |l| l.delay_cost(now_ns, params.decay_ns)),
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

fn p2c<C: Candidates + ?Sized, R: Rng + ?Sized>(c: &C, now_ns: u64, decay_ns: f64, rng: &mut R) -> Option<usize> {
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
            let (ca, cb) = (c.load(a).cost(now_ns, decay_ns), c.load(b).cost(now_ns, decay_ns));
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

#[cfg(test)]
mod tests;
