//! The discrete-event model of a scenario (`nb-bench --simulate`).
//!
//! [`simulate`] plays a [`Scenario`] against a model of its fleet and of the proxy in
//! simulated time and returns the same [`Report`] a real run produces, tallied by the real
//! generator's own [`Recorder`] (label = strategy name, url = `sim://<scenario>`), so tables
//! and charts treat real and simulated runs alike. A 60 s scenario at a few thousand requests per second
//! takes well under a second in release mode, and the result depends only on the seed.
//!
//! # The client (as `nb-bench`)
//!
//! * Open-loop Poisson arrivals at [`Scenario::rate_at`] (by thinning, so ramps are exact),
//!   from the start of the warm-up to the end of the measured window. Requests that arrive
//!   during the warm-up are simulated but not reported.
//! * Each request's class is drawn by weight; its latency runs from its arrival.
//! * A request not answered by the deadline counts as a timeout with latency = deadline. The
//!   client closes the connection then, so the proxy drops its in-flight count and the backend
//!   forgets the request (a queued one leaves the queue, one in service frees its slot).
//!
//! # The backends (as `backend-sim` with a [`Profile`])
//!
//! State follows [`Profile::effective`] at the simulated time (seconds since the start of the
//! load, warm-up included), re-read at every phase boundary and at least every 10 ms while a
//! profile has a warm-up. On arrival at an up backend:
//! * with probability `fast_503`: 503 at once, without a slot;
//! * else the request takes a free slot, or waits in the FIFO queue, or, when `queue`
//!   requests already wait, gets a 503 at once;
//! * its fate is drawn on arrival (`hang`, then `slow_500`); its service time
//!   `service_for(class).sample() × slowdown` when it starts; a `slow_500` answers 500 after
//!   its service, a hang never answers and holds its slot until the client's deadline.
//! * A backend that goes `down` crashes: its listener closes (new connections are refused)
//!   and every connection in flight is reset (the proxy sees a transport error for each
//!   queued or in-service request).
//!
//! # The proxy (as `proxy/src/proxy.rs` and `proxy/src/upstream`)
//!
//! * The pool is the expanded fleet in file order, every weight 1. Selection is
//!   `Pool::select`: the very same [`nb_strategy::pick`] over a [`Candidates`] view whose
//!   eligible backends are healthy and not ejected, re-picking with ejection ignored when none
//!   is; below `panic_threshold_percent` (50) healthy and non-ejected backends, every checked
//!   backend is eligible, healthy or not (panic routing); skipping backends this request
//!   already tried, with one [`nb_strategy::State`] and one seeded `SmallRng`. No backend
//!   left: the proxy answers 503, or 502 when it tried one that failed.
//! * The chosen backend's [`Load`] is tracked with an [`InflightGuard`] from the pick until
//!   the response, the failure or the client's deadline; every backend response (any status)
//!   feeds `Load::observe(latency of this attempt, now, decay)`. A backend whose profile has
//!   `orca` (the default) reports its load on every response, as `backend-sim` does in the
//!   `endpoint-load-metrics` header, and the proxy feeds `Load::report(queue, now)`; the
//!   queue is the FIFO's length as the backend sends the response (a slot its request freed
//!   already went to the head of the queue). Reported utilisation is not modelled: no
//!   strategy reads it.
//! * Passive health mirrors `BackendStats::record_failure` and `Pool::record_failure`: a
//!   connect failure (a `down` backend) or a reset (a crash) counts against the backend;
//!   5 consecutive gateway failures (502/503/504 or resets; a 500 is not one) or 1 connect
//!   failure eject it for 1 s doubling per ejection up to 30 s, unless `max_ejection_percent`
//!   (10 %) of the pool is ejected already (one backend always may be, never the last); a
//!   non-5xx response resets the counters. Connect failures and resets are retried at once on another backend,
//!   at most `max_retries` (2) times; after that the proxy answers 502.
//! * Active health checks run only when `scenario.pool` has a `health_check`: every
//!   `interval_ms` from the start, a check passes exactly when the backend is up, with the
//!   proxy's rise/fall rules (backends start pending and take traffic after their first pass).
//!   Without checks backends are trusted and only passive ejection keeps traffic away.
//! * `max_retries`, `ewma_decay_ms`, `outlier_detection` and `health_check` are read from
//!   `scenario.pool` (see [`ProxySettings`]), with the proxy's defaults.
//!
//! # The oracle
//!
//! [`SimStrategy::Oracle`] exists only here: it sees every backend's true state (queue, slots
//! in use, slowdown, error rates, `down`) and sends each request where it expects it to
//! complete first, failures counting as timeouts: a ceiling no real strategy reaches while
//! the fleet has spare capacity. It is greedy, per request, so under overload (where the
//! question is whom to drop) a real strategy can occasionally beat it.
//!
//! # Not modelled
//!
//! Network and proxy overheads (zero), connection setup, body sizes, the proxy's thread and
//! connection limits, the generator's own lateness (`dispatch_lag_ms` is zero and achieved =
//! offered), and health-check latency (a check's result applies at its tick).

mod proxy;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use nb_strategy::{self as strategy, Candidates, InflightGuard, Load, Params, StrategyKind};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use proxy::{HealthCheck, OutlierDetection, ProxySettings};

use crate::bench::{Answer, Recorder, Report, RunInfo};
use crate::scenario::Scenario;
use backend_sim::model::{Dist, Effective, Profile};
use proxy::{Failure, Passive};

/// How the model chooses backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimStrategy {
    /// A strategy the proxy has, run through the proxy's own code.
    Classic(StrategyKind),
    /// Model only: the backend with the least expected cost for this request, from every
    /// backend's true state (skipping `down` ones and those already tried). The cost is the
    /// expected completion time
    /// `c = (max(0, queued + in_service - slots + 1) × mean / slots + mean) × slowdown`,
    /// with `mean` the backend's mean service time for the request's class, where a failure
    /// (its current `fast_503`, `slow_500` and `hang` rates) counts as bad as a timeout:
    /// `p_ok × c + (1 - p_ok) × deadline`. A backend whose queue is full comes last; ties
    /// are broken at random.
    Oracle,
}

impl SimStrategy {
    /// The proxy's strategies, then the oracle.
    pub const ALL: [SimStrategy; 7] = [
        SimStrategy::Classic(StrategyKind::RoundRobin),
        SimStrategy::Classic(StrategyKind::WeightedRoundRobin),
        SimStrategy::Classic(StrategyKind::LeastConnections),
        SimStrategy::Classic(StrategyKind::Random),
        SimStrategy::Classic(StrategyKind::P2cEwma),
        SimStrategy::Classic(StrategyKind::OrcaLeastDelay),
        SimStrategy::Oracle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SimStrategy::Classic(k) => k.as_str(),
            SimStrategy::Oracle => "oracle",
        }
    }
}

impl fmt::Display for SimStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SimStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "oracle" {
            return Ok(SimStrategy::Oracle);
        }
        s.parse::<StrategyKind>()
            .map(SimStrategy::Classic)
            .map_err(|_| format!("unknown strategy `{s}` (expected one of {})", names()))
    }
}

fn names() -> String {
    SimStrategy::ALL.map(SimStrategy::as_str).join(", ")
}

impl From<StrategyKind> for SimStrategy {
    fn from(k: StrategyKind) -> Self {
        SimStrategy::Classic(k)
    }
}

/// Simulates `scenario` with `strategy`; `seed` (not `scenario.seed`) seeds every draw.
///
/// The proxy settings come from `scenario.pool` ([`ProxySettings::from_scenario`]); a `pool`
/// section the model cannot read falls back to the proxy's defaults (check it with
/// `from_scenario` first to report the error instead).
pub fn simulate(scenario: &Scenario, strategy: SimStrategy, seed: u64) -> Report {
    let settings = ProxySettings::from_scenario(scenario).unwrap_or_default();
    simulate_with(scenario, &settings, strategy, seed)
}

/// [`simulate`] with explicit proxy settings.
pub fn simulate_with(scenario: &Scenario, settings: &ProxySettings, strategy: SimStrategy, seed: u64) -> Report {
    Sim::new(scenario, settings, strategy, seed).run()
}

/// Re-read a profile with a warm-up at least this often.
const WARMUP_REFRESH_NS: u64 = 10_000_000;
/// Spacing of the arrival-rate table.
const RATE_STEP_S: f64 = 0.1;
/// Added to the cost of a backend whose queue is full, for the oracle.
const FULL_PENALTY_NS: f64 = 1e30;

fn ms_to_ns(ms: f64) -> u64 {
    // Float-to-int `as` saturates (NaN becomes 0).
    (ms * 1e6).round() as u64
}

fn s_to_ns(s: f64) -> u64 {
    (s * 1e9).round() as u64
}

/// Independent random streams from one seed (SplitMix64 finaliser).
fn stream(seed: u64, k: u64) -> SmallRng {
    let mut z = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    SmallRng::seed_from_u64(z ^ (z >> 31))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    /// Service of attempt `token` of the request in `slot` ends.
    Done {
        slot: u32,
        token: u64,
    },
    /// The client of request `rid` (in `slot`) gives up.
    Deadline {
        slot: u32,
        rid: u64,
    },
    /// A phase of a backend begins.
    Phase {
        backend: u32,
    },
    /// A round of active health checks.
    Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Free,
    /// Between attempts (only within one event).
    Routing,
    Queued,
    InService,
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A response from backend `.1`.
    Backend(u16, u32),
    /// A response the proxy made itself (no `x-backend-id`): 502 after failed attempts, 503
    /// when no backend was left to try.
    Proxy(u16),
    /// Not answered by the deadline.
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    Slow500,
    Hang,
}

/// A request in flight; slots are reused, `rid` and `token` tell lives and attempts apart.
#[derive(Debug)]
struct Req {
    rid: u64,
    state: St,
    arrival_ns: u64,
    class: usize,
    measured: bool,
    retries: u32,
    tried: Vec<u32>,
    /// The backend of the current attempt.
    at: u32,
    token: u64,
    attempt_ns: u64,
    fate: Fate,
    guard: Option<InflightGuard>,
}

struct Backend {
    profile: Profile,
    /// Service time and its mean in ns, per class.
    service: Vec<Dist>,
    mean_ns: Vec<f64>,
    load: Arc<Load>,
    passive: Passive,
    rng: SmallRng,
    eff: Effective,
    eff_until_ns: u64,
    /// Whether the last phase event left the backend down.
    applied_down: bool,
    /// Phase starts as (ns, at_s), sorted.
    phases: Vec<(u64, f64)>,
    in_service: u32,
    /// Live entries of `queue` (it also holds stale ones, skipped when popped).
    queued: u32,
    queue: VecDeque<(u32, u64)>,
}

impl Backend {
    fn new(profile: Profile, mix: &[(String, f64)], pending: bool, rng: SmallRng) -> Self {
        let service: Vec<Dist> = mix.iter().map(|(path, _)| profile.service_for(path).clone()).collect();
        let mean_ns = service.iter().map(|d| d.mean_ms() * 1e6).collect();
        let mut phases: Vec<(u64, f64)> = profile.phases.iter().map(|p| (s_to_ns(p.at_s), p.at_s)).collect();
        phases.sort_by(|a, b| a.1.total_cmp(&b.1));
        let eff = profile.effective(0.0);
        Backend {
            service,
            mean_ns,
            load: Load::new(),
            passive: Passive::new(pending),
            rng,
            applied_down: eff.down,
            eff,
            eff_until_ns: 0,
            phases,
            in_service: 0,
            queued: 0,
            queue: VecDeque::new(),
            profile,
        }
    }

    /// Brings `eff` up to date for `now`.
    fn refresh(&mut self, now: u64) {
        if now < self.eff_until_ns {
            return;
        }
        // A phase whose start rounds to `now` applies even if `now` in seconds is a hair early.
        let k = self.phases.partition_point(|&(ns, _)| ns <= now);
        let mut t_s = now as f64 / 1e9;
        if k > 0 {
            t_s = t_s.max(self.phases[k - 1].1);
        }
        self.eff = self.profile.effective(t_s);
        let mut until = self.phases.get(k).map_or(u64::MAX, |p| p.0);
        if self.profile.warmup.is_some() {
            until = until.min(now + WARMUP_REFRESH_NS);
        }
        self.eff_until_ns = until.max(now + 1);
    }

    /// The queue of the ORCA report sent with a response now (`backend-sim`'s
    /// `Sim::orca`): the waiting requests that free slots do not take at once. In `done` the
    /// response goes out before `pull` hands the freed slot on; the backend sends it after.
    fn orca_queue(&self) -> u32 {
        self.queued
            .saturating_sub(self.eff.slots.saturating_sub(self.in_service))
    }

    /// The oracle's cost of sending a request of `class` here now (ns); see
    /// [`SimStrategy::Oracle`].
    fn oracle_cost_ns(&self, class: usize, deadline_ns: f64) -> f64 {
        let slots = self.eff.slots;
        if slots == 0 {
            return FULL_PENALTY_NS * 2.0;
        }
        let mean = self.mean_ns[class] * self.eff.slowdown;
        let ahead = (f64::from(self.queued) + f64::from(self.in_service) - f64::from(slots) + 1.0).max(0.0);
        let completion = ahead * mean / f64::from(slots) + mean;
        let e = &self.eff.errors;
        let p_ok = ((1.0 - e.fast_503) * (1.0 - e.hang - e.slow_500)).clamp(0.0, 1.0);
        let cost = p_ok * completion + (1.0 - p_ok) * deadline_ns;
        if self.in_service >= slots && self.queued >= self.profile.queue {
            cost + FULL_PENALTY_NS
        } else {
            cost
        }
    }
}

/// The proxy's view of its pool for one pick (`upstream::pool::View`).
struct View<'a> {
    backends: &'a [Backend],
    yielded: &'a [bool],
    now_ns: u64,
    ignore_ejection: bool,
    /// Panic routing: unhealthy (but checked) backends are eligible too.
    panic: bool,
}

impl Candidates for View<'_> {
    fn len(&self) -> usize {
        self.backends.len()
    }
    fn weight(&self, _i: usize) -> u32 {
        1
    }
    fn load(&self, i: usize) -> &Load {
        &self.backends[i].load
    }
    fn eligible(&self, i: usize) -> bool {
        let p = &self.backends[i].passive;
        let health = if self.panic { p.is_checked() } else { p.is_healthy() };
        !self.yielded[i] && health && (self.ignore_ejection || !p.is_ejected(self.now_ns))
    }
}

/// Poisson arrivals at a time-varying rate, by thinning against a rate table.
struct Arrivals {
    /// (seconds since the start of the load, requests per second), increasing in time.
    table: Vec<(f64, f64)>,
    seg: usize,
    max_rate: f64,
    t: f64,
    end: f64,
}

impl Arrivals {
    fn new(s: &Scenario) -> Self {
        let (w, d) = (s.warmup_s, s.duration_s);
        let mut table = Vec::new();
        // Points on both sides of 0 (where a ramp bends); `rate_at` takes measured-window time.
        let nw = (w / RATE_STEP_S).ceil() as usize;
        for k in 0..nw {
            let t = -w + w * k as f64 / nw as f64;
            table.push((t + w, s.rate_at(t)));
        }
        let nd = ((d / RATE_STEP_S).ceil() as usize).max(1);
        for k in 0..=nd {
            let t = d * k as f64 / nd as f64;
            table.push((t + w, s.rate_at(t)));
        }
        let max_rate = table.iter().map(|p| p.1).fold(0.0, f64::max);
        Arrivals {
            table,
            seg: 0,
            max_rate,
            t: 0.0,
            end: w + d,
        }
    }

    /// Mean rate over the measured window.
    fn mean_measured_rate(&self, warmup_s: f64, duration_s: f64) -> f64 {
        let pts: Vec<(f64, f64)> = self.table.iter().copied().filter(|p| p.0 >= warmup_s).collect();
        let (lo, hi) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        if pts.len() < 2 || lo == hi {
            // A constant rate, exactly.
            return pts.first().map_or(0.0, |p| p.1);
        }
        let area: f64 = pts
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
            .sum();
        area / duration_s
    }

    /// The rate at `t` (never earlier than the previous call).
    fn rate(&mut self, t: f64) -> f64 {
        while self.seg + 2 < self.table.len() && self.table[self.seg + 1].0 <= t {
            self.seg += 1;
        }
        let (a, b) = (self.table[self.seg], self.table[self.seg + 1]);
        if b.0 <= a.0 {
            return b.1;
        }
        let x = ((t - a.0) / (b.0 - a.0)).clamp(0.0, 1.0);
        a.1 + (b.1 - a.1) * x
    }

    /// The next arrival, in seconds since the start of the load.
    fn next<R: Rng>(&mut self, rng: &mut R) -> Option<f64> {
        // No load, or an infinite one (a capacity fraction of a fleet with zero service times).
        if !(self.max_rate > 0.0 && self.max_rate.is_finite()) {
            return None;
        }
        loop {
            let u: f64 = rng.random();
            self.t += -(1.0 - u).ln() / self.max_rate;
            if self.t >= self.end {
                return None;
            }
            let accept: f64 = rng.random();
            if accept * self.max_rate < self.rate(self.t) {
                return Some(self.t);
            }
        }
    }
}

struct Sim {
    settings: ProxySettings,
    strategy: SimStrategy,
    params: Params,
    state: strategy::State,
    pick_rng: SmallRng,
    arrival_rng: SmallRng,
    arrivals: Arrivals,
    /// Cumulative class weights, in the order of `Scenario::mix`.
    class_cdf: Vec<f64>,
    backends: Vec<Backend>,
    ids: Vec<String>,
    reqs: Vec<Req>,
    free: Vec<u32>,
    yielded: Vec<bool>,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    next_rid: u64,
    next_token: u64,
    warmup_ns: u64,
    end_ns: u64,
    deadline_ns: u64,
    /// No health checks after this (every request has ended by then).
    stop_ns: u64,
    /// Arrivals in the measured window.
    offered: u64,
    recorder: Recorder,
}

impl Sim {
    fn new(scenario: &Scenario, settings: &ProxySettings, strategy: SimStrategy, seed: u64) -> Self {
        let mix = scenario.mix();
        let mut total = 0.0;
        let class_cdf = mix
            .iter()
            .map(|(_, w)| {
                total += w;
                total
            })
            .collect();
        let pending = settings.health_check.is_some();
        let profiles = scenario.profiles();
        let ids = profiles.iter().map(|p| p.id.clone()).collect();
        let backends: Vec<Backend> = profiles
            .into_iter()
            .enumerate()
            .map(|(i, p)| Backend::new(p, &mix, pending, stream(seed, 100 + i as u64)))
            .collect();
        let kind = match strategy {
            SimStrategy::Classic(k) => k,
            SimStrategy::Oracle => StrategyKind::RoundRobin,
        };
        let warmup_ns = s_to_ns(scenario.warmup_s);
        let deadline_ns = ms_to_ns(scenario.deadline_ms).max(1);
        let end_ns = warmup_ns + s_to_ns(scenario.duration_s);
        let stop_ns = end_ns + deadline_ns;
        let n = backends.len();
        let arrivals = Arrivals::new(scenario);
        let info = RunInfo {
            label: strategy.as_str().to_string(),
            url: format!("sim://{}", scenario.name),
            target_rps: arrivals.mean_measured_rate(scenario.warmup_s, scenario.duration_s),
            warmup: Duration::from_nanos(warmup_ns),
            duration: Duration::from_nanos(end_ns - warmup_ns),
            deadline: Duration::from_nanos(deadline_ns),
            seed,
        };
        let class_names: Vec<String> = scenario.classes.iter().map(|c| c.name.clone()).collect();
        Sim {
            settings: settings.clone(),
            strategy,
            params: Params {
                kind,
                decay_ns: settings.ewma_decay_ms as f64 * 1e6,
            },
            state: strategy::State::new(),
            pick_rng: stream(seed, 2),
            arrival_rng: stream(seed, 1),
            arrivals,
            class_cdf,
            backends,
            ids,
            reqs: Vec::new(),
            free: Vec::new(),
            yielded: vec![false; n],
            events: BinaryHeap::new(),
            seq: 0,
            next_rid: 0,
            next_token: 0,
            warmup_ns,
            end_ns,
            deadline_ns,
            stop_ns,
            offered: 0,
            recorder: Recorder::new(info, &class_names),
        }
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, ev)));
    }

    fn run(mut self) -> Report {
        for b in 0..self.backends.len() {
            let starts: Vec<u64> = self.backends[b].phases.iter().map(|p| p.0).collect();
            for (k, &t) in starts.iter().enumerate() {
                if k == 0 || starts[k - 1] != t {
                    self.push(t, Ev::Phase { backend: b as u32 });
                }
            }
        }
        if self.settings.health_check.is_some() {
            self.push(0, Ev::Health);
        }
        if let Some(t) = self.arrivals.next(&mut self.arrival_rng) {
            self.push(s_to_ns(t), Ev::Arrival);
        }
        while let Some(Reverse((now, _, ev))) = self.events.pop() {
            match ev {
                Ev::Arrival => self.arrival(now),
                Ev::Done { slot, token } => self.done(slot, token, now),
                Ev::Deadline { slot, rid } => self.deadline(slot, rid, now),
                Ev::Phase { backend } => self.phase(backend, now),
                Ev::Health => self.health(now),
            }
        }
        self.recorder.finish(Some(self.offered))
    }

    fn arrival(&mut self, now: u64) {
        let u: f64 = self.arrival_rng.random();
        let total = self.class_cdf.last().copied().unwrap_or(0.0);
        let class = self
            .class_cdf
            .iter()
            .position(|&c| u * total < c)
            .unwrap_or(self.class_cdf.len().saturating_sub(1));
        let measured = (self.warmup_ns..self.end_ns).contains(&now);
        self.offered += u64::from(measured);
        self.next_rid += 1;
        let rid = self.next_rid;
        let fresh = Req {
            rid,
            state: St::Routing,
            arrival_ns: now,
            class,
            measured,
            retries: 0,
            tried: Vec::new(),
            at: 0,
            token: 0,
            attempt_ns: now,
            fate: Fate::Ok,
            guard: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let r = &mut self.reqs[slot as usize];
                let mut tried = std::mem::take(&mut r.tried);
                tried.clear();
                *r = Req { tried, ..fresh };
                slot
            }
            None => {
                self.reqs.push(fresh);
                (self.reqs.len() - 1) as u32
            }
        };
        self.push(now + self.deadline_ns, Ev::Deadline { slot, rid });
        self.dispatch(slot, now);
        if let Some(t) = self.arrivals.next(&mut self.arrival_rng) {
            self.push(s_to_ns(t).max(now), Ev::Arrival);
        }
    }

    /// Routes the request in `slot` (first attempt or retry), as `upstream_peer` and the
    /// connect-failure retries do.
    fn dispatch(&mut self, slot: u32, now: u64) {
        loop {
            let Some(b) = self.select(slot, now) else {
                // As the proxy: 503 when no backend was eligible, else the last failure's 502.
                let status = if self.reqs[slot as usize].tried.is_empty() {
                    503
                } else {
                    502
                };
                self.finish(slot, now, Outcome::Proxy(status));
                return;
            };
            self.next_token += 1;
            let guard = self.backends[b as usize].load.track();
            let r = &mut self.reqs[slot as usize];
            r.guard = Some(guard);
            r.at = b;
            r.token = self.next_token;
            r.attempt_ns = now;
            r.state = St::Routing;
            let be = &mut self.backends[b as usize];
            be.refresh(now);
            if !be.eff.down {
                self.admit(slot, b, now);
                return;
            }
            if !self.backend_error(slot, Failure::Connect, now) {
                self.finish(slot, now, Outcome::Proxy(502));
                return;
            }
        }
    }

    fn select(&mut self, slot: u32, now: u64) -> Option<u32> {
        match self.strategy {
            SimStrategy::Classic(_) => self.select_classic(slot, now),
            SimStrategy::Oracle => self.select_oracle(slot, now),
        }
    }

    /// `Pool::select`: the strategy's picks in order of preference (each pick among the
    /// backends not yielded yet, in panic mode when all eligible ones are ejected) until one
    /// this request has not tried.
    fn select_classic(&mut self, slot: u32, now: u64) -> Option<u32> {
        let n = self.backends.len();
        self.yielded.clear();
        self.yielded.resize(n, false);
        let tried = &self.reqs[slot as usize].tried;
        let threshold = self.settings.panic_threshold_percent as usize;
        let healthy = self
            .backends
            .iter()
            .filter(|b| b.passive.is_healthy() && !b.passive.is_ejected(now))
            .count();
        let panic = threshold > 0 && healthy * 100 < threshold * n;
        for _ in 0..=n {
            let mut view = View {
                backends: &self.backends,
                yielded: &self.yielded,
                now_ns: now,
                ignore_ejection: false,
                panic,
            };
            let pick = strategy::pick(&self.params, &self.state, &view, now, &mut self.pick_rng).or_else(|| {
                view.ignore_ejection = true;
                strategy::pick(&self.params, &self.state, &view, now, &mut self.pick_rng)
            })?;
            self.yielded[pick] = true;
            if !tried.contains(&(pick as u32)) {
                return Some(pick as u32);
            }
        }
        None
    }

    fn select_oracle(&mut self, slot: u32, now: u64) -> Option<u32> {
        let r = &self.reqs[slot as usize];
        let mut best: Option<(u32, f64)> = None;
        let mut ties = 0u32;
        for (i, be) in self.backends.iter_mut().enumerate() {
            let i = i as u32;
            be.refresh(now);
            if be.eff.down || r.tried.contains(&i) {
                continue;
            }
            let cost = be.oracle_cost_ns(r.class, self.deadline_ns as f64);
            match best {
                Some((_, c)) if cost > c => {}
                Some((_, c)) if cost == c => {
                    ties += 1;
                    if self.pick_rng.random_range(0..ties) == 0 {
                        best = Some((i, cost));
                    }
                }
                _ => {
                    best = Some((i, cost));
                    ties = 1;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// `on_backend_error`: passive health, then whether to retry elsewhere (the request is
    /// idempotent and nothing reached the client).
    fn backend_error(&mut self, slot: u32, kind: Failure, now: u64) -> bool {
        let b = self.reqs[slot as usize].at;
        self.passive_failure(b, kind, now);
        let r = &mut self.reqs[slot as usize];
        r.guard = None;
        r.tried.push(b);
        r.state = St::Routing;
        if r.retries < self.settings.max_retries {
            r.retries += 1;
            true
        } else {
            false
        }
    }

    /// `Pool::record_failure`: counts the failure and ejects the backend when that completes
    /// a run and fewer than `max_ejection_percent` of the pool are ejected.
    fn passive_failure(&mut self, b: u32, kind: Failure, now: u64) {
        let o = self.settings.outlier_detection;
        if !self.backends[b as usize].passive.record_failure(kind, &o, now)
            || self.backends[b as usize].passive.is_ejected(now)
        {
            return;
        }
        let ejected = self.backends.iter().filter(|x| x.passive.is_ejected(now)).count();
        let cap = o.max_ejected(self.backends.len());
        let be = &mut self.backends[b as usize].passive;
        if ejected >= cap {
            be.ejection_refused();
        } else {
            be.eject(&o, now);
        }
    }

    /// The request reaches an up backend.
    fn admit(&mut self, slot: u32, b: u32, now: u64) {
        let be = &mut self.backends[b as usize];
        let (fast, fate): (f64, f64) = (be.rng.random(), be.rng.random());
        let e = &be.eff.errors;
        if fast < e.fast_503 {
            self.respond(slot, 503, now);
            return;
        }
        let r = &mut self.reqs[slot as usize];
        r.fate = if fate < e.hang {
            Fate::Hang
        } else if fate < e.hang + e.slow_500 {
            Fate::Slow500
        } else {
            Fate::Ok
        };
        if be.in_service < be.eff.slots {
            self.start(slot, b, now);
        } else if be.queued < be.profile.queue {
            be.queued += 1;
            be.queue.push_back((slot, r.token));
            r.state = St::Queued;
        } else {
            self.respond(slot, 503, now);
        }
    }

    /// The request takes a slot of backend `b`.
    fn start(&mut self, slot: u32, b: u32, now: u64) {
        let be = &mut self.backends[b as usize];
        be.refresh(now);
        be.in_service += 1;
        let r = &mut self.reqs[slot as usize];
        r.state = St::InService;
        if r.fate != Fate::Hang {
            let ms = be.service[r.class].sample(&mut be.rng) * be.eff.slowdown;
            let token = r.token;
            self.push(now + ms_to_ns(ms), Ev::Done { slot, token });
        }
    }

    /// Starts queued requests on backend `b` while it has free slots.
    fn pull(&mut self, b: u32, now: u64) {
        loop {
            let be = &mut self.backends[b as usize];
            be.refresh(now);
            if be.eff.down || be.in_service >= be.eff.slots {
                return;
            }
            let Some((slot, token)) = be.queue.pop_front() else {
                return;
            };
            let r = &self.reqs[slot as usize];
            if r.state != St::Queued || r.token != token {
                continue;
            }
            be.queued -= 1;
            self.start(slot, b, now);
        }
    }

    fn done(&mut self, slot: u32, token: u64, now: u64) {
        let r = &self.reqs[slot as usize];
        if r.state != St::InService || r.token != token {
            return;
        }
        let (b, status) = (r.at, if r.fate == Fate::Slow500 { 500 } else { 200 });
        self.backends[b as usize].in_service -= 1;
        self.respond(slot, status, now);
        self.pull(b, now);
    }

    /// A response from the backend of the current attempt (`upstream_response_filter`).
    fn respond(&mut self, slot: u32, status: u16, now: u64) {
        let r = &self.reqs[slot as usize];
        let b = r.at;
        let be = &mut self.backends[b as usize];
        be.load
            .observe(now.saturating_sub(r.attempt_ns) as f64, now, self.params.decay_ns);
        if be.profile.orca {
            be.load.report(be.orca_queue(), now);
        }
        match Failure::of_status(status) {
            Some(kind) => self.passive_failure(b, kind, now),
            None => self.backends[b as usize].passive.record_success(now),
        }
        self.finish(slot, now, Outcome::Backend(status, b));
    }

    /// The request ends; `slot` is free again.
    fn finish(&mut self, slot: u32, now: u64, outcome: Outcome) {
        let r = &mut self.reqs[slot as usize];
        if r.measured {
            let answer = match outcome {
                Outcome::Backend(status, b) => Answer::Response {
                    status,
                    backend: Some(self.ids[b as usize].clone()),
                },
                Outcome::Proxy(status) => Answer::Response { status, backend: None },
                Outcome::Timeout => Answer::Timeout,
            };
            let (at, latency) = (r.arrival_ns, now - r.arrival_ns);
            self.recorder
                .record(Duration::from_nanos(at), r.class, Duration::from_nanos(latency), answer);
        }
        r.guard = None;
        r.state = St::Free;
        self.free.push(slot);
    }

    fn deadline(&mut self, slot: u32, rid: u64, now: u64) {
        let r = &self.reqs[slot as usize];
        if r.rid != rid || r.state == St::Free {
            return;
        }
        let (b, state) = (r.at, r.state);
        self.finish(slot, now, Outcome::Timeout);
        let be = &mut self.backends[b as usize];
        match state {
            St::InService => {
                be.in_service -= 1;
                self.pull(b, now);
            }
            St::Queued => be.queued -= 1,
            St::Free | St::Routing => {}
        }
    }

    fn phase(&mut self, b: u32, now: u64) {
        let be = &mut self.backends[b as usize];
        be.refresh(now);
        let (was_down, down) = (be.applied_down, be.eff.down);
        be.applied_down = down;
        if down && !was_down {
            self.crash(b, now);
        } else {
            // Slots may have grown.
            self.pull(b, now);
        }
    }

    /// Backend `b` goes down: every connection it holds is reset.
    fn crash(&mut self, b: u32, now: u64) {
        let victims: Vec<u32> = (0..self.reqs.len() as u32)
            .filter(|&s| {
                let r = &self.reqs[s as usize];
                r.at == b && matches!(r.state, St::Queued | St::InService)
            })
            .collect();
        let be = &mut self.backends[b as usize];
        be.in_service = 0;
        be.queued = 0;
        be.queue.clear();
        for slot in victims {
            if self.backend_error(slot, Failure::Transport, now) {
                self.dispatch(slot, now);
            } else {
                self.finish(slot, now, Outcome::Proxy(502));
            }
        }
    }

    fn health(&mut self, now: u64) {
        let Some(hc) = self.settings.health_check else {
            return;
        };
        for be in &mut self.backends {
            be.refresh(now);
            let ok = !be.eff.down;
            be.passive.record_check(ok, hc.rise, hc.fall);
        }
        let next = now + ProxySettings::check_interval_ns(&hc);
        if next < self.stop_ns {
            self.push(next, Ev::Health);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(yaml: &str) -> Scenario {
        Scenario::parse("t", yaml).expect("valid scenario")
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in SimStrategy::ALL {
            assert_eq!(s.as_str().parse::<SimStrategy>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert!("fastest".parse::<SimStrategy>().is_err());
    }

    #[test]
    fn ramp_rates_are_followed() {
        let s = scenario(
            "name: t\nduration_s: 10\nwarmup_s: 2\nload: { ramp: { from: 0.5, to: 1.5 } }\nfleet: [ { id: a, slots: 1, service: { dist: constant, ms: 1 } } ]\n",
        );
        let mut a = Arrivals::new(&s);
        assert!((a.mean_measured_rate(2.0, 10.0) - 1000.0).abs() < 1e-6);
        assert!((a.rate(1.0) - 500.0).abs() < 1e-6);
        assert!((a.rate(7.0) - 1000.0).abs() < 1e-6);
        assert!((a.rate(12.0) - 1500.0).abs() < 1e-6);
        let mut rng = stream(1, 1);
        let mut a = Arrivals::new(&s);
        let (mut early, mut late) = (0, 0);
        while let Some(t) = a.next(&mut rng) {
            early += u32::from((2.0..4.0).contains(&t));
            late += u32::from((10.0..12.0).contains(&t));
        }
        // Expected 1200 and 2800.
        assert!((1100..1300).contains(&early), "{early}");
        assert!((2650..2950).contains(&late), "{late}");
    }

    #[test]
    fn the_proxy_view_hides_unhealthy_and_ejected_backends() {
        let s = scenario("name: t\nduration_s: 1\nload: { rate: 1 }\nfleet: [ { id: a, count: 3 } ]\n");
        let mut sim = Sim::new(&s, &ProxySettings::default(), StrategyKind::RoundRobin.into(), 1);
        sim.passive_failure(1, Failure::Connect, 0);
        let slot = {
            sim.reqs.push(Req {
                rid: 1,
                state: St::Routing,
                arrival_ns: 0,
                class: 0,
                measured: false,
                retries: 0,
                tried: vec![],
                at: 0,
                token: 0,
                attempt_ns: 0,
                fate: Fate::Ok,
                guard: None,
            });
            0
        };
        let picks: Vec<u32> = (0..4).filter_map(|_| sim.select_classic(slot, 10)).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        // The ejection cap (one of three) keeps the others in.
        sim.passive_failure(0, Failure::Connect, 0);
        sim.passive_failure(2, Failure::Connect, 0);
        assert!(!sim.backends[0].passive.is_ejected(10) && !sim.backends[2].passive.is_ejected(10));
        // With everything ejected (a cap of 100 %), ejected backends are picked anyway.
        let o = OutlierDetection::default();
        sim.backends[0].passive.eject(&o, 0);
        sim.backends[2].passive.eject(&o, 0);
        assert!(sim.select_classic(slot, 10).is_some());
        // Tried backends are skipped.
        sim.reqs[0].tried = vec![0, 1, 2];
        assert_eq!(sim.select_classic(slot, 10), None);
    }
}
