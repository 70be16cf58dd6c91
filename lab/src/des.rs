//! The discrete-event model of a scenario (`nb-bench --simulate`).
//!
//! [`simulate`] plays a [`Scenario`] against a model of its fleet and of the proxy in
//! simulated time and returns the same [`Report`] a real run produces, tallied by the real
//! generator's own [`Recorder`] (label = strategy name, url = `sim://<scenario>`), so tables
//! and charts treat real and simulated runs alike. A 60 s scenario at a few thousand requests
//! per second takes well under a second in release mode, and the result depends only on the
//! seed. [`simulate_detailed`] also returns the run's [`Details`]: every routing decision and
//! each request's own service time, request by request.
//!
//! # The client (as `nb-bench`)
//!
//! * The requests are those of [`Schedule`] over [`lab::load_spec`] with the run's seed: the
//!   very list the generator sends in the lab, with the same times, classes and indices
//!   (open-loop Poisson arrivals, thinned along a ramp), from the start of the warm-up to the
//!   end of the measured window. Requests that arrive during the warm-up are simulated but not
//!   reported. `target_rps` is the spec's mean requested rate.
//! * Each request's latency runs from its arrival (its intended send time).
//! * A request not answered by the deadline counts as a timeout with latency = deadline. The
//!   client closes the connection then, so the proxy drops its in-flight count and the backend
//!   forgets the request (a queued one leaves the queue, one in service frees its slot).
//!
//! # The backends (as `backend-sim` with a [`Profile`])
//!
//! State follows [`Profile::effective`] at the simulated time (seconds since the start of the
//! load, warm-up included), re-read at every phase boundary and at least every 10 ms while a
//! profile has a warm-up. On arrival at an up backend the request's [`Draw`] is made with
//! [`Profile::draw`] under the error rates in force then, from
//! [`request_stream`]`(seed, backend id, request index)` (its fate) and
//! [`size_stream`]`(seed, request index)` (its service time): the streams the lab's backend
//! draws from for the same request, so in a repetition every strategy (and the lab) faces
//! the same draws; a retry at another backend draws its fate from that backend's stream.
//! Then:
//! * a fast 503 is answered at once, without a slot;
//! * else the request takes a free slot, or waits in the FIFO queue, or, when `queue`
//!   requests already wait, gets a 503 at once;
//! * its service time is the drawn one × the slowdown in force when it gets its slot; a
//!   `slow_500` answers 500 after its service, a hang never answers and holds its slot until
//!   the client's deadline.
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
//!   the response, the failure or the client's deadline; every backend response feeds
//!   `Params::observe(load, requests in flight when it was sent, latency of this attempt,
//!   failed, now)`, a 5xx as a failure, as do a reset and a refused connection (the proxy's
//!   `upstream_response_filter` and `on_backend_error`). A backend whose profile has
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
//!   non-5xx response resets the counters. Connect failures and resets are retried at once on
//!   another backend, at most `max_retries` (2) times; after that the proxy answers 502.
//! * Active health checks run only when `scenario.pool` has a `health_check`: every
//!   `interval_ms` from the start, a check passes exactly when the backend is up, with the
//!   proxy's rise/fall rules (backends start pending and take traffic after their first pass).
//!   Without checks backends are trusted and only passive ejection keeps traffic away.
//! * `max_retries`, `ewma_decay_ms`, `failure_penalty_ms`, `prequal`, `outlier_detection`
//!   and `health_check` are read from `scenario.pool` (see [`ProxySettings`]), with the
//!   proxy's defaults.
//!
//! # The references
//!
//! Two strategies exist only here and see what no real strategy can (see [`SimStrategy`] and
//! the `reference` module): [`SimStrategy::Greedy`] every backend's true queue, speed and
//! error rates; [`SimStrategy::Clairvoyant`] also each request's own draw and the true
//! remaining work at every backend. Both decide per request, greedily: neither plans for the
//! requests still to come (nor keeps a slot free for a heavy one, nor chooses whom to drop
//! under overload), so neither is a strict ceiling, for tail latency least of all; a real
//! strategy can beat them on some percentile. They mark how far a strategy is from what
//! information could buy.
//!
//! A request's size is its own: its service time comes from [`size_stream`]`(seed, index)`,
//! the same quantile of each backend's distribution for its class wherever it goes, so a
//! heavy request is heavy everywhere (scaled by the backend's speed) and clairvoyant cannot
//! shop for a lucky draw; what it knows beyond greedy is the sizes of the request and of the
//! work queued ahead of it.
//!
//! # Observations
//!
//! Every routing decision (each pick of a backend for an attempt of a measured request,
//! retries and picks of a `down` backend that refuses included) and, for each measured
//! request a backend answered after serving it, its own service time there (after slowdown)
//! go through two hooks of the simulation, `decided` and `served`, into the report (the
//! decisions make `share`; the service time of a 2xx answer gives its queueing delay, its
//! latency minus that service time: what a load balancer controls) and into [`Details`].
//!
//! # Not modelled
//!
//! * Overheads outside the backends, all zero: the proxy hop (parsing, the pick, the
//!   upstream connection pool), the network between generator, proxy and backends (loopback
//!   in the lab), connection setup, response bodies (`response_bytes`), and the backends'
//!   timer precision (they sleep to within tens of microseconds). The lab's latencies carry
//!   these; the model's do not, so compare strategies within one mode, not across modes.
//! * The proxy's thread and connection limits and its own per-attempt timeouts
//!   (`pool.timeouts`): the client's deadline is the only timeout.
//! * The generator's own lateness: `dispatch_lag_ms` is zero and achieved = offered.
//! * Health-check latency: a check's result applies at its tick.
//! * A backend's cap on a hang (`HANG_LIMIT`, far beyond any deadline): a hang lasts until
//!   the client's deadline.

pub mod ml;
mod proxy;
mod reference;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use nb_strategy::{self as strategy, Candidates, InflightGuard, Load, Params, StrategyKind};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use proxy::{HealthCheck, OutlierDetection, ProxySettings};

use crate::arrivals::{Arrival, Schedule};
use crate::bench::{Answer, Recorder, Report, RunInfo};
use crate::lab;
use crate::scenario::Scenario;
use backend_sim::model::{request_stream, size_stream, Draw, Effective, Fate, Profile};
use proxy::{Failure, Passive};

/// How the model chooses backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimStrategy {
    /// A strategy the proxy has, run through the proxy's own code.
    Classic(StrategyKind),
    /// Model only: a greedy expected-completion reference, not a ceiling. From every
    /// backend's true state (skipping `down` ones and those already tried) it picks the least
    /// expected completion time
    /// `c = (max(0, queued + in_service - slots + 1) × mean / slots + mean) × slowdown`,
    /// with `mean` the backend's mean service time for *this* request's class (so queued work
    /// is priced at the new request's class mean, whatever its class), where a failure (its
    /// current `fast_503`, `slow_500` and `hang` rates) counts as bad as a timeout:
    /// `p_ok × c + (1 - p_ok) × deadline`. It ignores variance. A backend whose queue is full
    /// comes last; ties are broken at random. Named `oracle` before; that name is still
    /// accepted.
    Greedy,
    /// Model only: a reference that sees each request's service time at arrival. For every
    /// candidate (up, not tried yet) it knows this request's draw there (fate and service
    /// time from the shared stream, × the slowdown in force now) and the true remaining work:
    /// the end of each request in service and the drawn service time of each queued one
    /// (priced at the slowdown in force now, since the one in force when it starts is not
    /// known yet), queued FIFO into the earliest free slot. It sends the request where it
    /// will *complete* first, capped at its deadline; a draw that fails (fast 503, slow 500,
    /// hang) costs the deadline; a full queue comes last; ties are broken at random. It is
    /// still greedy: it does not plan for future arrivals.
    Clairvoyant,
}

impl SimStrategy {
    /// The proxy's strategies, then the references.
    pub const ALL: [SimStrategy; 9] = [
        SimStrategy::Classic(StrategyKind::RoundRobin),
        SimStrategy::Classic(StrategyKind::WeightedRoundRobin),
        SimStrategy::Classic(StrategyKind::LeastConnections),
        SimStrategy::Classic(StrategyKind::Random),
        SimStrategy::Classic(StrategyKind::P2cEwma),
        SimStrategy::Classic(StrategyKind::OrcaLeastDelay),
        SimStrategy::Classic(StrategyKind::Prequal),
        SimStrategy::Greedy,
        SimStrategy::Clairvoyant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SimStrategy::Classic(k) => k.as_str(),
            SimStrategy::Greedy => "greedy",
            SimStrategy::Clairvoyant => "clairvoyant",
        }
    }

    /// Whether this exists only in the model.
    pub fn is_reference(self) -> bool {
        !matches!(self, SimStrategy::Classic(_))
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
        match s {
            // `oracle`: the greedy reference's former name.
            "greedy" | "oracle" => Ok(SimStrategy::Greedy),
            "clairvoyant" => Ok(SimStrategy::Clairvoyant),
            _ => s
                .parse::<StrategyKind>()
                .map(SimStrategy::Classic)
                .map_err(|_| format!("unknown strategy `{s}` (expected one of {})", names())),
        }
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

/// What a simulated run observed, request by request: the routing decisions and each
/// request's own service time (the report holds their totals and percentiles).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// The backends' ids in pool order (the fleet expanded, in file order).
    pub backends: Vec<String>,
    /// Routing decisions per backend (indexed like `backends`): every pick of a backend for
    /// an attempt of a measured request, retries and picks of a `down` backend included.
    pub decisions: Vec<u64>,
    /// The measured requests a backend answered after serving them (200 or a slow 500), in
    /// the order of their answers. Responses without service (fast 503s, a full queue) and
    /// timeouts have no service time and are not here.
    pub served: Vec<Served>,
}

/// One measured request answered after its service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Served {
    /// Its index in the schedule ([`Arrival::index`]).
    pub index: u64,
    /// The backend that answered (index into [`Details::backends`]).
    pub backend: usize,
    /// Its own service time there, after slowdown, in ms.
    pub service_ms: f64,
    /// Its latency minus `service_ms`, in ms: time spent in queues, failed attempts
    /// included.
    pub queueing_ms: f64,
}

impl Details {
    /// Each backend's share of the routing decisions, by id (empty without decisions).
    pub fn decision_share(&self) -> BTreeMap<String, f64> {
        let total: u64 = self.decisions.iter().sum();
        if total == 0 {
            return BTreeMap::new();
        }
        self.backends
            .iter()
            .zip(&self.decisions)
            .map(|(id, &n)| (id.clone(), n as f64 / total as f64))
            .collect()
    }
}

/// Simulates `scenario` with `strategy`; `seed` (not `scenario.seed`) seeds every draw.
///
/// The proxy settings come from `scenario.pool` ([`ProxySettings::from_scenario`]); a `pool`
/// section the model cannot read falls back to the proxy's defaults (check it with
/// `from_scenario` first to report the error instead).
pub fn simulate(scenario: &Scenario, strategy: SimStrategy, seed: u64) -> Report {
    simulate_detailed(scenario, strategy, seed).0
}

/// [`simulate`] with explicit proxy settings.
pub fn simulate_with(scenario: &Scenario, settings: &ProxySettings, strategy: SimStrategy, seed: u64) -> Report {
    Sim::new(scenario, settings, strategy, seed).run().0
}

/// [`simulate`], with the routing decisions and service times of the run.
pub fn simulate_detailed(scenario: &Scenario, strategy: SimStrategy, seed: u64) -> (Report, Details) {
    let settings = ProxySettings::from_scenario(scenario).unwrap_or_default();
    Sim::new(scenario, &settings, strategy, seed).run()
}

/// Re-read a profile with a warm-up at least this often.
const WARMUP_REFRESH_NS: u64 = 10_000_000;

fn ms_to_ns(ms: f64) -> u64 {
    // Float-to-int `as` saturates (NaN becomes 0).
    (ms * 1e6).round() as u64
}

fn s_to_ns(s: f64) -> u64 {
    (s * 1e9).round() as u64
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
    /// The next request of the schedule (`Sim::next`) arrives.
    Arrival,
    /// Service of attempt `token` of the request in `slot` ends.
    Done { slot: u32, token: u64 },
    /// The client of request `index` (in `slot`) gives up.
    Deadline { slot: u32, index: u64 },
    /// A phase of a backend begins.
    Phase { backend: u32 },
    /// A round of active health checks.
    Health,
    /// The `ml` scorer re-scores every backend.
    MlRefresh,
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

/// A request in flight; slots are reused, `index` and `token` tell lives and attempts apart.
#[derive(Debug)]
struct Req {
    /// Its index in the schedule: what the backends draw from.
    index: u64,
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
    /// The current attempt's draw at `at`: its fate and service time before slowdown.
    fate: Fate,
    draw_ms: f64,
    /// In service: its service time after slowdown (0 for a hang), and when it leaves its
    /// slot (its answer or its client's deadline, whichever is first).
    service_ns: u64,
    end_ns: u64,
    /// Its service time (after slowdown) once a backend answered it after serving it.
    served_ns: Option<u64>,
    guard: Option<InflightGuard>,
}

impl Req {
    fn new(a: &Arrival, now: u64) -> Self {
        Req {
            index: a.index,
            state: St::Routing,
            arrival_ns: now,
            class: a.class,
            measured: a.measured,
            retries: 0,
            tried: Vec::new(),
            at: 0,
            token: 0,
            attempt_ns: now,
            fate: Fate::Serve,
            draw_ms: 0.0,
            service_ns: 0,
            end_ns: 0,
            served_ns: None,
            guard: None,
        }
    }
}

struct Backend {
    profile: Profile,
    /// Mean service time in ns, per class.
    mean_ns: Vec<f64>,
    load: Arc<Load>,
    passive: Passive,
    eff: Effective,
    eff_until_ns: u64,
    /// Whether the last phase event left the backend down.
    applied_down: bool,
    /// Phase starts as (ns, at_s), sorted.
    phases: Vec<(u64, f64)>,
    /// The requests in service (their slots in `Sim::reqs`).
    serving: Vec<u32>,
    /// Live entries of `queue` (it also holds stale ones, skipped when popped).
    queued: u32,
    queue: VecDeque<(u32, u64)>,
}

impl Backend {
    fn new(profile: Profile, paths: &[String], pending: bool) -> Self {
        let mean_ns = paths.iter().map(|p| profile.service_for(p).mean_ms() * 1e6).collect();
        let mut phases: Vec<(u64, f64)> = profile.phases.iter().map(|p| (s_to_ns(p.at_s), p.at_s)).collect();
        phases.sort_by(|a, b| a.1.total_cmp(&b.1));
        let eff = profile.effective(0.0);
        Backend {
            mean_ns,
            load: Load::new(),
            passive: Passive::new(pending),
            applied_down: eff.down,
            eff,
            eff_until_ns: 0,
            phases,
            serving: Vec::new(),
            queued: 0,
            queue: VecDeque::new(),
            profile,
        }
    }

    fn in_service(&self) -> u32 {
        self.serving.len() as u32
    }

    /// Whether a request arriving now would find every slot busy and the queue full.
    fn is_full(&self) -> bool {
        self.in_service() >= self.eff.slots && self.queued >= self.profile.queue
    }

    /// The request in `slot` leaves its slot.
    fn leave(&mut self, slot: u32) {
        if let Some(i) = self.serving.iter().position(|&s| s == slot) {
            self.serving.swap_remove(i);
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
            .saturating_sub(self.eff.slots.saturating_sub(self.in_service()))
    }
}

/// One pick of the proxy's strategy over `view`: `ml` with its scorer's curves where every
/// sampled backend has one, else (and for every other strategy) [`strategy::pick`], which
/// for `ml` is its fallback's pick.
fn pick_one(
    params: &Params,
    state: &strategy::State,
    scorer: Option<&ml::Scorer>,
    view: &View<'_>,
    now: u64,
    rng: &mut SmallRng,
) -> Option<usize> {
    if let (StrategyKind::Ml, Some(s)) = (params.kind, scorer) {
        match strategy::ml::pick(params, state.rif_window(), view, |i| s.curves[i].as_ref(), now, rng) {
            strategy::ml::MlPick::Chosen { index, .. } => return Some(index),
            strategy::ml::MlPick::None => return None,
            strategy::ml::MlPick::NoCurve => {}
        }
    }
    strategy::pick(params, state, view, now, rng)
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

struct Sim {
    settings: ProxySettings,
    strategy: SimStrategy,
    seed: u64,
    params: Params,
    state: strategy::State,
    /// `ml`'s scorer; `None` for every other strategy.
    scorer: Option<ml::Scorer>,
    pick_rng: SmallRng,
    schedule: Schedule,
    /// The schedule's next request, due at the pending `Ev::Arrival`.
    next: Option<Arrival>,
    /// The request path of each class (in the order of `Scenario::mix`), as the backends
    /// see it.
    paths: Vec<String>,
    backends: Vec<Backend>,
    ids: Vec<String>,
    reqs: Vec<Req>,
    free: Vec<u32>,
    yielded: Vec<bool>,
    /// Scratch for the clairvoyant's slot timeline.
    ends: BinaryHeap<Reverse<u64>>,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    next_token: u64,
    deadline_ns: u64,
    /// No health checks after this (every request has ended by then).
    stop_ns: u64,
    /// Arrivals in the measured window.
    offered: u64,
    recorder: Recorder,
    details: Details,
}

impl Sim {
    fn new(scenario: &Scenario, settings: &ProxySettings, strategy: SimStrategy, seed: u64) -> Self {
        // The address only names the target; nothing is sent.
        let spec = lab::load_spec(scenario, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), seed);
        let paths: Vec<String> = scenario
            .mix()
            .into_iter()
            .map(|(path, _)| path.split('?').next().unwrap_or_default().to_owned())
            .collect();
        let pending = settings.health_check.is_some();
        let profiles = scenario.profiles();
        let ids: Vec<String> = profiles.iter().map(|p| p.id.clone()).collect();
        let backends: Vec<Backend> = profiles.into_iter().map(|p| Backend::new(p, &paths, pending)).collect();
        let kind = match strategy {
            SimStrategy::Classic(k) => k,
            SimStrategy::Greedy | SimStrategy::Clairvoyant => StrategyKind::RoundRobin,
        };
        let warmup_ns = duration_ns(spec.warmup);
        let deadline_ns = ms_to_ns(scenario.deadline_ms).max(1);
        let end_ns = warmup_ns + duration_ns(spec.duration);
        let n = backends.len();
        let info = RunInfo {
            label: strategy.as_str().to_string(),
            url: format!("sim://{}", scenario.name),
            target_rps: spec.mean_rate(),
            warmup: spec.warmup,
            duration: spec.duration,
            deadline: Duration::from_nanos(deadline_ns),
            seed,
        };
        let class_names: Vec<String> = scenario.classes.iter().map(|c| c.name.clone()).collect();
        Sim {
            settings: settings.clone(),
            strategy,
            seed,
            params: Params {
                kind,
                decay_ns: settings.ewma_decay_ms as f64 * 1e6,
                failure_penalty_ns: settings.failure_penalty_ms as f64 * 1e6,
                prequal: settings.prequal,
                ml: strategy::MlParams::default(),
            },
            state: strategy::State::new(),
            // Without a model `ml` decides as its fallback, as the proxy does without scores;
            // `nb-bench` refuses to simulate `ml` when the model does not load.
            scorer: match kind {
                StrategyKind::Ml => ml::model().ok().and_then(|m| ml::Scorer::new(m, n).ok()),
                _ => None,
            },
            pick_rng: stream(seed, 2),
            schedule: Schedule::new(&spec),
            next: None,
            paths,
            details: Details {
                backends: ids.clone(),
                decisions: vec![0; n],
                served: Vec::new(),
            },
            backends,
            ids,
            reqs: Vec::new(),
            free: Vec::new(),
            yielded: vec![false; n],
            ends: BinaryHeap::new(),
            events: BinaryHeap::new(),
            seq: 0,
            next_token: 0,
            deadline_ns,
            stop_ns: end_ns + deadline_ns,
            offered: 0,
            recorder: Recorder::new(info, &class_names),
        }
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, ev)));
    }

    fn run(mut self) -> (Report, Details) {
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
        if self.scorer.is_some() {
            self.push(0, Ev::MlRefresh);
        }
        self.schedule_next();
        while let Some(Reverse((now, _, ev))) = self.events.pop() {
            match ev {
                Ev::Arrival => self.arrival(now),
                Ev::Done { slot, token } => self.done(slot, token, now),
                Ev::Deadline { slot, index } => self.deadline(slot, index, now),
                Ev::Phase { backend } => self.phase(backend, now),
                Ev::Health => self.health(now),
                Ev::MlRefresh => self.ml_refresh(now),
            }
        }
        (self.recorder.finish(Some(self.offered)), self.details)
    }

    /// Takes the schedule's next request and its arrival event.
    fn schedule_next(&mut self) {
        self.next = self.schedule.next();
        if let Some(a) = &self.next {
            let t = duration_ns(a.at);
            self.push(t, Ev::Arrival);
        }
    }

    fn arrival(&mut self, now: u64) {
        let Some(a) = self.next.take() else { return };
        self.offered += u64::from(a.measured);
        let fresh = Req::new(&a, now);
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
        self.push(now + self.deadline_ns, Ev::Deadline { slot, index: a.index });
        self.dispatch(slot, now);
        self.schedule_next();
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
            self.decided(slot, b);
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

    /// Backend `b` is picked for an attempt of the request in `slot`.
    fn decided(&mut self, slot: u32, b: u32) {
        let r = &self.reqs[slot as usize];
        if r.measured {
            self.details.decisions[b as usize] += 1;
            self.recorder
                .decision(Duration::from_nanos(r.arrival_ns), &self.ids[b as usize]);
        }
    }

    /// The backend of the request in `slot` answers it after serving it for `service_ns`
    /// (after slowdown); the rest of its latency is queueing.
    fn served(&mut self, slot: u32, service_ns: u64, now: u64) {
        let r = &mut self.reqs[slot as usize];
        r.served_ns = Some(service_ns);
        if !r.measured {
            return;
        }
        let latency_ns = now - r.arrival_ns;
        self.details.served.push(Served {
            index: r.index,
            backend: r.at as usize,
            service_ms: service_ns as f64 / 1e6,
            queueing_ms: latency_ns.saturating_sub(service_ns) as f64 / 1e6,
        });
    }

    fn select(&mut self, slot: u32, now: u64) -> Option<u32> {
        match self.strategy {
            SimStrategy::Classic(_) => self.select_classic(slot, now),
            SimStrategy::Greedy | SimStrategy::Clairvoyant => self.select_reference(slot, now),
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
            let (params, state, scorer) = (&self.params, &self.state, self.scorer.as_ref());
            let pick = pick_one(params, state, scorer, &view, now, &mut self.pick_rng).or_else(|| {
                view.ignore_ejection = true;
                pick_one(params, state, scorer, &view, now, &mut self.pick_rng)
            })?;
            self.yielded[pick] = true;
            if !tried.contains(&(pick as u32)) {
                return Some(pick as u32);
            }
        }
        None
    }

    /// `ml`'s scorer: every backend's curve afresh, then the next refresh.
    fn ml_refresh(&mut self, now: u64) {
        if let Some(scorer) = &mut self.scorer {
            scorer.refresh(self.backends.iter().map(|b| &*b.load), now, &self.params);
            if now + ml::REFRESH_NS <= self.stop_ns {
                self.push(now + ml::REFRESH_NS, Ev::MlRefresh);
            }
        }
    }

    /// The references: the up backend this request has not tried with the least cost
    /// (see `reference`), ties broken at random.
    fn select_reference(&mut self, slot: u32, now: u64) -> Option<u32> {
        for be in &mut self.backends {
            be.refresh(now);
        }
        let mut best: Option<(u32, f64)> = None;
        let mut ties = 0u32;
        for b in 0..self.backends.len() as u32 {
            let (be, r) = (&self.backends[b as usize], &self.reqs[slot as usize]);
            if be.eff.down || r.tried.contains(&b) {
                continue;
            }
            let cost = match self.strategy {
                SimStrategy::Clairvoyant => {
                    let draw = self.draw(slot, b);
                    reference::clairvoyant_cost_ns(be, &self.reqs, r, &draw, now, self.deadline_ns, &mut self.ends)
                }
                _ => reference::greedy_cost_ns(be, r.class, self.deadline_ns as f64),
            };
            match best {
                Some((_, c)) if cost > c => {}
                Some((_, c)) if cost == c => {
                    ties += 1;
                    if self.pick_rng.random_range(0..ties) == 0 {
                        best = Some((b, cost));
                    }
                }
                _ => {
                    best = Some((b, cost));
                    ties = 1;
                }
            }
        }
        best.map(|(b, _)| b)
    }

    /// The draw of the request in `slot` at backend `b` under the error rates in force there
    /// (refreshed by the caller): the lab's backend draws the same from the same stream.
    fn draw(&self, slot: u32, b: u32) -> Draw {
        let r = &self.reqs[slot as usize];
        let be = &self.backends[b as usize];
        let mut rng = request_stream(self.seed, &self.ids[b as usize], r.index);
        let mut size = size_stream(self.seed, r.index);
        be.profile
            .draw(&be.eff.errors, &self.paths[r.class], &mut rng, Some(&mut size))
    }

    /// `on_backend_error`: passive health, then whether to retry elsewhere (the request is
    /// idempotent and nothing reached the client).
    fn backend_error(&mut self, slot: u32, kind: Failure, now: u64) -> bool {
        let b = self.reqs[slot as usize].at;
        let rtt_ns = now.saturating_sub(self.reqs[slot as usize].attempt_ns) as f64;
        let rif = self.reqs[slot as usize].guard.as_ref().map_or(0, |g| g.rif());
        self.params
            .observe(&self.backends[b as usize].load, rif, rtt_ns, true, now);
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

    /// The request reaches an up backend (refreshed by the caller): its draw, then a slot,
    /// the queue or a 503.
    fn admit(&mut self, slot: u32, b: u32, now: u64) {
        let draw = self.draw(slot, b);
        let r = &mut self.reqs[slot as usize];
        r.fate = draw.fate;
        r.draw_ms = draw.service_ms;
        if draw.fate == Fate::Fast503 {
            self.respond(slot, 503, now);
            return;
        }
        let be = &mut self.backends[b as usize];
        if be.in_service() < be.eff.slots {
            self.start(slot, b, now);
        } else if be.queued < be.profile.queue {
            be.queued += 1;
            be.queue.push_back((slot, r.token));
            r.state = St::Queued;
        } else {
            self.respond(slot, 503, now);
        }
    }

    /// The request takes a slot of backend `b`; its service time is its draw × the slowdown
    /// in force now.
    fn start(&mut self, slot: u32, b: u32, now: u64) {
        let be = &mut self.backends[b as usize];
        be.refresh(now);
        be.serving.push(slot);
        let r = &mut self.reqs[slot as usize];
        r.state = St::InService;
        let gone = r.arrival_ns + self.deadline_ns;
        if r.fate == Fate::Hang {
            (r.service_ns, r.end_ns) = (0, gone);
        } else {
            let service = ms_to_ns(r.draw_ms * be.eff.slowdown);
            (r.service_ns, r.end_ns) = (service, (now + service).min(gone));
            let token = r.token;
            self.push(now + service, Ev::Done { slot, token });
        }
    }

    /// Starts queued requests on backend `b` while it has free slots.
    fn pull(&mut self, b: u32, now: u64) {
        loop {
            let be = &mut self.backends[b as usize];
            be.refresh(now);
            if be.eff.down || be.in_service() >= be.eff.slots {
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
        let (b, service_ns) = (r.at, r.service_ns);
        let status = if r.fate == Fate::Slow500 { 500 } else { 200 };
        self.backends[b as usize].leave(slot);
        self.served(slot, service_ns, now);
        self.respond(slot, status, now);
        self.pull(b, now);
    }

    /// A response from the backend of the current attempt (`upstream_response_filter`).
    fn respond(&mut self, slot: u32, status: u16, now: u64) {
        let r = &self.reqs[slot as usize];
        let b = r.at;
        let be = &mut self.backends[b as usize];
        let failed = Failure::of_status(status).is_some();
        let rif = r.guard.as_ref().map_or(0, |g| g.rif());
        self.params
            .observe(&be.load, rif, now.saturating_sub(r.attempt_ns) as f64, failed, now);
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
                    service: r.served_ns.map(Duration::from_nanos),
                    status,
                    backend: Some(self.ids[b as usize].clone()),
                },
                Outcome::Proxy(status) => Answer::Response {
                    status,
                    backend: None,
                    service: None,
                },
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

    fn deadline(&mut self, slot: u32, index: u64, now: u64) {
        let r = &self.reqs[slot as usize];
        if r.index != index || r.state == St::Free {
            return;
        }
        let (b, state) = (r.at, r.state);
        self.finish(slot, now, Outcome::Timeout);
        let be = &mut self.backends[b as usize];
        match state {
            St::InService => {
                be.leave(slot);
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
        be.serving.clear();
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
        assert_eq!("oracle".parse::<SimStrategy>(), Ok(SimStrategy::Greedy));
        assert!("fastest".parse::<SimStrategy>().is_err());
        let references: Vec<&str> = SimStrategy::ALL
            .iter()
            .filter(|s| s.is_reference())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(references, ["greedy", "clairvoyant"]);
    }

    #[test]
    fn the_model_plays_the_generators_schedule() {
        let s = scenario(
            "name: t\nduration_s: 10\nwarmup_s: 2\nload: { ramp: { from: 0.5, to: 1.5 } }\nclasses: [ { name: x, path: /x, weight: 1 }, { name: y, path: /y, weight: 3 } ]\nfleet: [ { id: a, slots: 1, service: { dist: constant, ms: 1 } } ]\n",
        );
        let spec = lab::load_spec(&s, SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)), 5);
        // Capacity 1000 req/s: 500 during the warm-up and at the start, 1500 at the end.
        assert!((spec.mean_rate() - 1000.0).abs() < 1e-6);
        assert!((spec.rate_at(Duration::from_secs(1)) - 500.0).abs() < 1e-6);
        assert!((spec.rate_at(Duration::from_secs(7)) - 1000.0).abs() < 1e-6);
        assert!((spec.rate_at(Duration::from_secs(12)) - 1500.0).abs() < 1e-6);
        let mut sim = Sim::new(&s, &ProxySettings::default(), StrategyKind::RoundRobin.into(), 5);
        let played: Vec<Arrival> = std::iter::from_fn(|| {
            sim.schedule_next();
            sim.next
        })
        .collect();
        let generated: Vec<Arrival> = Schedule::new(&spec).collect();
        assert_eq!(played, generated);
        let (early, late) = played.iter().fold((0, 0), |(e, l), a| {
            let t = a.at.as_secs_f64();
            (
                e + u32::from((2.0..4.0).contains(&t)),
                l + u32::from((10.0..12.0).contains(&t)),
            )
        });
        // Expected 1200 and 2800.
        assert!((1100..1300).contains(&early), "{early}");
        assert!((2650..2950).contains(&late), "{late}");
        assert_eq!(sim.paths, ["/x", "/y"]);
    }

    #[test]
    fn the_proxy_view_hides_unhealthy_and_ejected_backends() {
        let s = scenario("name: t\nduration_s: 1\nload: { rate: 1 }\nfleet: [ { id: a, count: 3 } ]\n");
        let mut sim = Sim::new(&s, &ProxySettings::default(), StrategyKind::RoundRobin.into(), 1);
        sim.passive_failure(1, Failure::Connect, 0);
        let arrival = Arrival {
            index: 0,
            at: Duration::ZERO,
            class: 0,
            measured: false,
        };
        sim.reqs.push(Req::new(&arrival, 0));
        let slot = 0;
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
