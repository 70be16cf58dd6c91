use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::*;

struct Fleet {
    weights: Vec<u32>,
    loads: Vec<Arc<Load>>,
    eligible: Vec<bool>,
}

impl Fleet {
    fn new(weights: &[u32]) -> Self {
        Fleet {
            weights: weights.to_vec(),
            loads: weights.iter().map(|_| Load::new()).collect(),
            eligible: vec![true; weights.len()],
        }
    }
}

impl Candidates for Fleet {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn load(&self, i: usize) -> &Load {
        &self.loads[i]
    }
    fn eligible(&self, i: usize) -> bool {
        self.eligible[i]
    }
}

fn params(kind: StrategyKind) -> Params {
    Params::new(kind)
}

fn counts(kind: StrategyKind, f: &Fleet, n: usize) -> Vec<usize> {
    counts_at(kind, f, n, 0)
}

/// How often each candidate is picked in `n` picks at time `now_ns` (the picks are not
/// tracked, so the load stays as the test set it).
fn counts_at(kind: StrategyKind, f: &Fleet, n: usize, now_ns: u64) -> Vec<usize> {
    counts_with(&params(kind), &State::new(), f, n, now_ns)
}

fn counts_with(p: &Params, state: &State, f: &Fleet, n: usize, now_ns: u64) -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut out = vec![0; f.len()];
    for _ in 0..n {
        out[pick(p, state, f, now_ns, &mut rng).expect("a pick")] += 1;
    }
    out
}

#[test]
fn kinds_round_trip_through_their_names() {
    for kind in StrategyKind::ALL {
        assert_eq!(kind.as_str().parse::<StrategyKind>(), Ok(kind));
        assert_eq!(kind.to_string(), kind.as_str());
    }
    assert_eq!("orca_least_delay".parse(), Ok(StrategyKind::OrcaLeastDelay));
    assert!("least_queue".parse::<StrategyKind>().is_err());
}

#[test]
fn round_robin_is_exact_and_skips_ineligible() {
    let mut f = Fleet::new(&[1, 5, 1]);
    assert_eq!(counts(StrategyKind::RoundRobin, &f, 300), vec![100, 100, 100]);
    f.eligible[1] = false;
    assert_eq!(counts(StrategyKind::RoundRobin, &f, 300)[1], 0);
}

/// Skipped candidates' turns are spread over the others, not handed to their successor.
#[test]
fn ineligible_turns_are_shared_fairly() {
    for kind in [StrategyKind::RoundRobin, StrategyKind::WeightedRoundRobin] {
        let mut f = Fleet::new(&[1; 10]);
        f.eligible[3] = false;
        f.eligible[4] = false;
        let c = counts(kind, &f, 8000);
        for (i, n) in c.iter().enumerate() {
            if i == 3 || i == 4 {
                assert_eq!(*n, 0);
            } else {
                assert!((900..=1100).contains(n), "{kind}: backend {i} got {n} of 8000: {c:?}");
            }
        }
    }
}

#[test]
fn smooth_weighted_interleaves_like_nginx() {
    // nginx documents weights 5,1,1 as the sequence a a b a c a a.
    let s = Schedule::build(&[5, 1, 1]);
    assert_eq!(s.entries().collect::<Vec<_>>(), vec![0, 0, 1, 0, 2, 0, 0]);
    let f = Fleet::new(&[1, 2, 3]);
    assert_eq!(counts(StrategyKind::WeightedRoundRobin, &f, 600), vec![100, 200, 300]);
    // Never more than `weight` in a row.
    let s = Schedule::build(&[1, 2, 3]);
    let seq: Vec<usize> = s.entries().chain(s.entries()).collect();
    let mut run = 1;
    for w in seq.windows(2) {
        run = if w[0] == w[1] { run + 1 } else { 1 };
        assert!(run <= [1, 2, 3][w[1]], "{seq:?}");
    }
}

#[test]
fn least_connections_takes_the_least_loaded_and_spreads_ties() {
    let f = Fleet::new(&[1, 1, 1]);
    let _busy = [f.loads[0].track(), f.loads[0].track(), f.loads[2].track()];
    assert_eq!(counts(StrategyKind::LeastConnections, &f, 50), vec![0, 50, 0]);
    let idle = Fleet::new(&[1, 1, 1]);
    let c = counts(StrategyKind::LeastConnections, &idle, 3000);
    assert!(c.iter().all(|&x| x > 850), "{c:?}");
}

#[test]
fn random_follows_weights() {
    let f = Fleet::new(&[1, 3]);
    let c = counts(StrategyKind::Random, &f, 40_000);
    let share = c[1] as f64 / 40_000.0;
    assert!((share - 0.75).abs() < 0.02, "{c:?}");
}

#[test]
fn p2c_avoids_the_slow_backend() {
    let f = Fleet::new(&[1, 1, 1]);
    f.loads[0].observe(1e6, 0, 10e9);
    f.loads[1].observe(1e6, 0, 10e9);
    f.loads[2].observe(20e6, 0, 10e9);
    let c = counts(StrategyKind::P2cEwma, &f, 3000);
    assert_eq!(c[2], 0, "{c:?}");
    assert!(c[0] > 1000 && c[1] > 1000, "{c:?}");
}

/// A fleet whose backends all answered once in 1 ms, so that only queues tell them apart.
fn equally_fast(n: usize) -> Fleet {
    let f = Fleet::new(&vec![1; n]);
    for l in &f.loads {
        l.observe(1e6, 0, 10e9);
    }
    f
}

#[test]
fn orca_least_delay_prefers_the_shorter_reported_queue() {
    // Backend 1 has more requests in flight, so least connections avoids it, but it reports
    // no queue where backend 0 reports 4: 3 requests ahead against 4.
    let f = equally_fast(2);
    f.loads[0].report(4, 0);
    f.loads[1].report(0, 0);
    let _busy = [f.loads[1].track(), f.loads[1].track(), f.loads[1].track()];
    assert_eq!(counts(StrategyKind::OrcaLeastDelay, &f, 100), vec![0, 100]);
    assert_eq!(counts(StrategyKind::LeastConnections, &f, 100), vec![100, 0]);
    let f = equally_fast(3);
    for (l, q) in f.loads.iter().zip([5, 0, 2]) {
        l.report(q, 0);
    }
    assert_eq!(counts(StrategyKind::OrcaLeastDelay, &f, 300), vec![0, 300, 0]);
}

#[test]
fn orca_least_delay_weighs_the_queue_by_latency() {
    // 2 waiting at a 1 ms backend beat an empty queue at a 10 ms one.
    let f = Fleet::new(&[1, 1]);
    f.loads[0].observe(1e6, 0, 10e9);
    f.loads[1].observe(10e6, 0, 10e9);
    f.loads[0].report(2, 0);
    f.loads[1].report(0, 0);
    assert_eq!(counts(StrategyKind::OrcaLeastDelay, &f, 10), vec![10, 0]);
}

#[test]
fn orca_least_delay_adds_our_requests_in_flight_to_the_reported_queue() {
    let f = equally_fast(2);
    f.loads[0].report(1, 0);
    f.loads[1].report(2, 0);
    assert_eq!(counts(StrategyKind::OrcaLeastDelay, &f, 10), vec![10, 0]);
    let _sent = [f.loads[0].track(), f.loads[0].track()];
    assert_eq!(counts(StrategyKind::OrcaLeastDelay, &f, 10), vec![0, 10]);
}

#[test]
fn orca_least_delay_ignores_an_expired_report() {
    let f = equally_fast(2);
    f.loads[0].report(9, 0);
    let _busy = [f.loads[1].track(), f.loads[1].track()];
    assert_eq!(
        counts_at(StrategyKind::OrcaLeastDelay, &f, 10, REPORT_TTL_NS),
        vec![0, 10]
    );
    // Expired, backend 0 is judged by its in-flight count alone (none) against backend 1's two.
    assert_eq!(
        counts_at(StrategyKind::OrcaLeastDelay, &f, 10, REPORT_TTL_NS + 1),
        vec![10, 0]
    );
}

#[test]
fn orca_least_delay_without_reports_takes_the_least_p2c_ewma_cost() {
    let f = Fleet::new(&[1, 1, 1, 1]);
    for (l, ms) in f.loads.iter().zip([1.0, 1.0, 20.0, 2.0]) {
        l.observe(ms * 1e6, 0, 10e9);
    }
    let _busy = [f.loads[0].track(), f.loads[0].track(), f.loads[3].track()];
    // Costs 3, 1, 20 and 4 ms: always backend 1, as the fewest in flight would not say
    // (backends 1 and 2 tie there).
    assert_eq!(counts(StrategyKind::OrcaLeastDelay, &f, 100), vec![0, 100, 0, 0]);
    for l in &f.loads {
        let p = params(StrategyKind::OrcaLeastDelay);
        assert_eq!(l.delay_cost(0, &p), l.cost(0, &p));
    }
}

#[test]
fn orca_least_delay_spreads_ties() {
    for (history, report) in [(false, None), (true, None), (true, Some(1))] {
        let f = if history {
            equally_fast(3)
        } else {
            Fleet::new(&[1, 1, 1])
        };
        for l in &f.loads {
            if let Some(q) = report {
                l.report(q, 0);
            }
        }
        let c = counts(StrategyKind::OrcaLeastDelay, &f, 3000);
        assert!(
            c.iter().all(|&x| x > 850),
            "history {history}, report {report:?}: {c:?}"
        );
    }
}

/// `prequal` with every candidate sampled (`probes` = the fleet's size) and a hot quantile.
fn prequal_all(n: usize, hot_quantile: f64) -> Params {
    Params {
        prequal: PrequalParams {
            probes: n as u32,
            hot_quantile,
            ..PrequalParams::default()
        },
        ..Params::new(StrategyKind::Prequal)
    }
}

/// Recent latencies (of requests sent while none were in flight) of 5, 1, 3 and 2 ms.
fn prequal_fleet() -> Fleet {
    let f = Fleet::new(&[1, 1, 1, 1]);
    for (l, ms) in f.loads.iter().zip([5.0, 1.0, 3.0, 2.0]) {
        params(StrategyKind::Prequal).observe(l, 0, ms * 1e6, false, 0);
    }
    f
}

#[test]
fn prequal_picks_the_fastest_cold_candidate() {
    let f = prequal_fleet();
    let state = State::new();
    let p = prequal_all(4, 0.8);
    // All idle: all cold, the lowest latency estimate wins.
    assert_eq!(counts_with(&p, &state, &f, 10, 0), vec![0, 10, 0, 0]);
    // The fastest gets busy: above the quantile of recent samples (all zeros but its own)
    // it is hot, and the fastest cold one takes over, however fast the hot one is.
    let _busy = [f.loads[1].track(), f.loads[1].track()];
    assert_eq!(counts_with(&p, &state, &f, 3, 0), vec![0, 0, 0, 3]);
    // The threshold follows the samples: once 4 of the last 16 are 2, the 0.8-quantile
    // (the 13th of 16) is 2, so 2 in flight is no longer above it: the fastest is cold again.
    assert_eq!(counts_with(&p, &state, &f, 1, 0), vec![0, 1, 0, 0]);
}

#[test]
fn prequal_takes_the_fewest_in_flight_when_every_candidate_is_hot() {
    let f = prequal_fleet();
    let state = State::new();
    // A low quantile of a window full of idle samples: any request in flight is hot.
    let p = prequal_all(4, 0.5);
    assert_eq!(counts_with(&p, &state, &f, 16, 0), vec![0, 16, 0, 0]);
    let _busy: Vec<_> = [(0, 1), (1, 3), (2, 2), (3, 4)]
        .into_iter()
        .flat_map(|(i, k)| (0..k).map(|_| f.loads[i].track()).collect::<Vec<_>>())
        .collect();
    // The first pick sees 12 zeros and 1, 3, 2, 4 in its window: all hot. The slowest has
    // the fewest in flight and wins over the fastest, as the lexicographic rule says.
    assert_eq!(counts_with(&p, &state, &f, 1, 0), vec![1, 0, 0, 0]);
}

#[test]
fn prequal_hot_threshold_tracks_the_recent_quantile() {
    let w = RifWindow::default();
    assert_eq!(w.quantile(0.84, 16), 0, "nothing sampled yet");
    for v in [5, 1, 4, 2, 3] {
        w.push(v);
    }
    // Fewer samples than the window: the quantile of those there are (1..=5).
    assert_eq!(w.quantile(0.5, 16), 3);
    assert_eq!(w.quantile(0.84, 16), 5);
    assert_eq!(w.quantile(1.0, 16), 5);
    // A RIF above the threshold is above more than a q share of the samples: 2 is above one
    // of five (0.2, not more), so at q = 0.2 the threshold is 2.
    assert_eq!(w.quantile(0.2, 16), 2);
    assert_eq!(w.quantile(0.19, 16), 1);
    // Only the most recent `window` samples count: the last three are 4, 2, 3.
    assert_eq!(w.quantile(1.0, 3), 4);
    assert_eq!(w.quantile(0.33, 3), 2);
    assert_eq!(w.quantile(0.34, 3), 3);
    // Old samples age out as new ones come.
    for _ in 0..16 {
        w.push(9);
    }
    assert_eq!(w.quantile(0.1, 16), 9);
    // The ring wraps without losing the newest values.
    for v in 0..(PREQUAL_MAX_WINDOW + 3) {
        w.push(v);
    }
    assert_eq!(w.quantile(1.0, 4), PREQUAL_MAX_WINDOW + 2);
    assert_eq!(w.quantile(0.24, 4), PREQUAL_MAX_WINDOW - 1);
    assert_eq!(w.quantile(0.25, 4), PREQUAL_MAX_WINDOW);
    // Two samples at the median: the upper one, so neither of two servers is hot.
    let two = RifWindow::default();
    two.push(0);
    two.push(1);
    assert_eq!(two.quantile(0.5, 16), 1);
}

#[test]
fn prequal_spreads_ties_and_samples_only_eligible_candidates() {
    // Equal candidates share the traffic, whether two or all of them are sampled.
    for probes in [2, 3, 5] {
        let f = equally_fast(5);
        let p = Params {
            prequal: PrequalParams {
                probes,
                ..PrequalParams::default()
            },
            ..Params::new(StrategyKind::Prequal)
        };
        let c = counts_with(&p, &State::new(), &f, 5000, 0);
        assert!(c.iter().all(|&x| x > 850), "probes {probes}: {c:?}");
    }
    // More probes than eligible candidates: every eligible one is sampled, no other.
    let mut f = prequal_fleet();
    f.eligible = vec![true, false, true, false];
    assert_eq!(
        counts_with(&prequal_all(16, 0.84), &State::new(), &f, 20, 0),
        vec![0, 0, 20, 0]
    );
    f.eligible = vec![true, false, false, false];
    assert_eq!(
        counts_with(&prequal_all(3, 0.84), &State::new(), &f, 5, 0),
        vec![5, 0, 0, 0]
    );
}

#[test]
fn prequal_counts_a_fresh_reported_queue_as_requests_in_flight() {
    let f = prequal_fleet();
    let p = prequal_all(4, 0.7);
    // The fastest reports a queue of 3, above the other three of every four samples (more
    // than a 0.7 share): hot while the report is fresh, cold again after.
    f.loads[1].report(3, 0);
    assert_eq!(counts_with(&p, &State::new(), &f, 10, REPORT_TTL_NS), vec![0, 0, 0, 10]);
    assert_eq!(
        counts_with(&p, &State::new(), &f, 10, REPORT_TTL_NS + 1),
        vec![0, 10, 0, 0]
    );
}

#[test]
fn prequal_parameters_are_checked() {
    assert!(PrequalParams::default().check().is_empty());
    let bad = PrequalParams {
        probes: 0,
        hot_quantile: 1.5,
        rif_window: PREQUAL_MAX_WINDOW + 1,
        latency_window: 0,
    };
    let keys: Vec<_> = bad.check().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["probes", "hot_quantile", "rif_window", "latency_window"]);
    assert_eq!(
        PrequalParams {
            hot_quantile: f64::NAN,
            ..PrequalParams::default()
        }
        .check()[0]
            .0,
        "hot_quantile"
    );
}

/// Two backends serving in 20 ms; backend 1 also sheds half its requests with a 503 in
/// 0.1 ms. Feeds `rounds` alternating observations through `Params::observe`.
fn shedding_pair(p: &Params, rounds: u64) -> Fleet {
    let f = Fleet::new(&[1, 1]);
    for k in 0..rounds {
        let now = k * 5_000_000;
        p.observe(&f.loads[0], 0, 20e6, false, now);
        if k % 2 == 0 {
            p.observe(&f.loads[1], 0, 0.1e6, true, now);
        } else {
            p.observe(&f.loads[1], 0, 20e6, false, now);
        }
    }
    f
}

#[test]
fn a_fast_failure_is_not_a_fast_answer() {
    // The healthy backend holds a request; the shedding one answered all of its own at once.
    for kind in [
        StrategyKind::P2cEwma,
        StrategyKind::OrcaLeastDelay,
        StrategyKind::Prequal,
    ] {
        let p = params(kind);
        let f = shedding_pair(&p, 2000);
        let _busy = f.loads[0].track();
        let now = 2000 * 5_000_000;
        let (ok, shed) = if kind == StrategyKind::Prequal {
            let a = p.prequal.latency_alpha();
            (f.loads[0].expected_at_rif_ns(a).0, f.loads[1].expected_at_rif_ns(a).0)
        } else {
            (f.loads[0].expected_ns(now, &p), f.loads[1].expected_ns(now, &p))
        };
        assert!(shed > 10.0 * ok, "{kind}: shedding {shed} ns, healthy {ok} ns");
        let c = counts_with(&p, &State::new(), &f, 100, now);
        assert_eq!(c, vec![100, 0], "{kind}");
    }
    // Without the penalty (a zero penalty: failures cost nothing), the shedding backend
    // looks no slower than the healthy one, holds nothing in flight, and p2c_ewma sends it
    // everything.
    let p = Params {
        failure_penalty_ns: 0.0,
        ..params(StrategyKind::P2cEwma)
    };
    let f = shedding_pair(&p, 2000);
    let _busy = f.loads[0].track();
    let now = 2000 * 5_000_000;
    assert!(f.loads[1].latency_estimate_ns(now, p.decay_ns) <= f.loads[0].latency_estimate_ns(now, p.decay_ns));
    assert_eq!(counts_with(&p, &State::new(), &f, 100, now), vec![0, 100]);
}

#[test]
fn a_failure_costs_its_share_of_the_penalty_and_successes_take_it_back() {
    let p = params(StrategyKind::P2cEwma);
    let l = Load::new();
    p.observe(&l, 0, 20e6, false, 0);
    assert_eq!(l.expected_ns(0, &p), 20e6);
    // A fast 503: the failure rate moves 1/16 of the way to 1, the latency estimate stays.
    p.observe(&l, 0, 0.1e6, true, 0);
    assert_eq!(l.failure_rate(0, p.decay_ns), FAILURE_WEIGHT);
    assert_eq!(
        l.latency_estimate_ns(0, p.decay_ns),
        20e6,
        "a fast failure is no latency sample"
    );
    let expect = (1.0 - FAILURE_WEIGHT) * 20e6 + FAILURE_WEIGHT * p.failure_penalty_ns;
    assert!((l.expected_ns(0, &p) - expect).abs() < 1.0);
    // Each success takes 1/16 of what is left back.
    p.observe(&l, 0, 20e6, false, 0);
    assert!((l.failure_rate(0, p.decay_ns) - FAILURE_WEIGHT * (1.0 - FAILURE_WEIGHT)).abs() < 1e-12);
    // Idle, the rate decays with the estimate's decay time, so the backend is tried again.
    let later = (p.decay_ns * 3.0) as u64;
    assert!(l.failure_rate(later, p.decay_ns) < l.failure_rate(0, p.decay_ns) / 19.0);
    // A failure that took long (a timeout) is a peak of the latency estimate.
    p.observe(&l, 0, 3e9, true, 0);
    assert_eq!(l.latency_estimate_ns(0, p.decay_ns), 3e9);
    // A backend whose only attempts failed fast costs its failures, not nothing.
    let n = Load::new();
    p.observe(&n, 0, 0.1e6, true, 0);
    let only_failed = n.expected_ns(0, &p);
    assert!(only_failed >= FAILURE_WEIGHT * p.failure_penalty_ns, "{only_failed}");
    let _busy = n.track();
    assert_eq!(n.cost(0, &p), 2.0 * only_failed);
}

#[test]
fn prequal_latency_is_kept_per_level_of_requests_in_flight() {
    let p = params(StrategyKind::Prequal);
    let l = Load::new();
    assert_eq!(l.latency_at_rif_ns(0), 0.0, "no history");
    p.observe(&l, 1, 10e6, false, 0);
    p.observe(&l, 4, 40e6, false, 0);
    assert_eq!(l.latency_at_rif_ns(1), 10e6);
    assert_eq!(l.latency_at_rif_ns(4), 40e6);
    // Levels without samples take the nearest, the lower first.
    assert_eq!(l.latency_at_rif_ns(0), 10e6);
    assert_eq!(l.latency_at_rif_ns(2), 10e6);
    assert_eq!(l.latency_at_rif_ns(3), 40e6);
    assert_eq!(l.latency_at_rif_ns(9), 40e6);
    // 15 in flight and more share the last level.
    p.observe(&l, 40, 90e6, false, 0);
    assert_eq!(l.latency_at_rif_ns(15), 90e6);
    assert_eq!(l.latency_at_rif_ns(1000), 90e6);
    // An average over about `latency_window` responses: weight 2 / (16 + 1).
    p.observe(&l, 1, 27e6, false, 0);
    assert!((l.latency_at_rif_ns(1) - 12e6).abs() < 1.0);
    // A failure at a level costs the penalty there, and only there: a server that sheds
    // when four of ours are in flight is dear at four, not at one.
    p.observe(&l, 4, 0.1e6, true, 0);
    let at4 = 40e6 + 2.0 / 17.0 * (p.failure_penalty_ns - 40e6);
    assert!((l.latency_at_rif_ns(4) - at4).abs() < 1.0);
    assert!((l.latency_at_rif_ns(1) - 12e6).abs() < 1.0);
    // The estimate prequal reads is the one at our current requests in flight.
    let _g: Vec<_> = (0..4).map(|_| l.track()).collect();
    let a = p.prequal.latency_alpha();
    assert_eq!(l.expected_at_rif_ns(a), l.latency_at_rif_with_error_ns(4, a));
    assert_eq!(l.expected_at_rif_ns(a).0, l.latency_at_rif_ns(4));
    assert_eq!(_g[3].rif(), 3, "a guard knows what was in flight before it");
}

#[test]
fn prequal_latency_spread_is_tracked_per_level() {
    let p = params(StrategyKind::Prequal);
    let a = p.prequal.latency_alpha();
    let l = Load::new();
    assert_eq!(l.latency_at_rif_with_error_ns(0, a), (0.0, 0.0), "no history");
    // One sample: an average, no spread yet. Steady samples keep it at zero.
    for _ in 0..50 {
        p.observe(&l, 0, 10e6, false, 0);
    }
    assert_eq!(l.latency_at_rif_with_error_ns(0, a), (10e6, 0.0));
    // Samples alternating 8 and 12 ms (σ = 2 ms): the weighted variance settles near σ²
    // and the standard error of the average near σ·√(α / (2 − α)), 0.5 ms for α = 2/17.
    let l = Load::new();
    for k in 0..2000 {
        p.observe(&l, 3, if k % 2 == 0 { 8e6 } else { 12e6 }, false, 0);
    }
    let (mean, se) = l.latency_at_rif_with_error_ns(3, a);
    assert!((mean - 10e6).abs() < 0.3e6, "{mean}");
    let want = 2e6 * (a / (2.0 - a)).sqrt();
    assert!((se - want).abs() < 0.1 * want, "se {se}, want {want}");
    // A level without samples borrows the nearest one's average and its error.
    assert_eq!(l.latency_at_rif_with_error_ns(0, a), (mean, se));
}

/// Two servers whose recent latencies (sent while none of ours were in flight) average
/// `a_ms` and `b_ms`, each with the spread of samples alternating ±`jitter_ms`.
fn noisy_pair(a_ms: f64, b_ms: f64, jitter_ms: f64) -> Fleet {
    let f = Fleet::new(&[1, 1]);
    let p = params(StrategyKind::Prequal);
    for k in 0..200 {
        let j = if k % 2 == 0 { jitter_ms } else { -jitter_ms };
        p.observe(&f.loads[0], 0, (a_ms + j) * 1e6, false, 0);
        p.observe(&f.loads[1], 0, (b_ms + j) * 1e6, false, 0);
    }
    f
}

#[test]
fn prequal_leaves_a_difference_within_noise_to_requests_in_flight() {
    let p = prequal_all(2, 0.84);
    // 10 and 10.5 ms, each ±5 ms: the averages cannot tell them apart (standard error about
    // 1.3 ms each). Both cold; the one with fewer in flight takes the request, whichever is
    // the faster on paper.
    let f = noisy_pair(10.0, 10.5, 5.0);
    let _busy = f.loads[0].track();
    assert_eq!(counts_with(&p, &State::new(), &f, 20, 0), vec![0, 20]);
    let f = noisy_pair(10.5, 10.0, 5.0);
    let _busy = f.loads[1].track();
    assert_eq!(counts_with(&p, &State::new(), &f, 20, 0), vec![20, 0]);
    // Neither busy: a tie, shared at random.
    let f = noisy_pair(10.0, 10.5, 5.0);
    let c = counts_with(&p, &State::new(), &f, 2000, 0);
    assert!(c[0] > 800 && c[1] > 800, "{c:?}");
}

#[test]
fn prequal_still_follows_a_clear_latency_difference() {
    let p = prequal_all(2, 0.84);
    // 10 and 30 ms, ±1 ms: a difference far beyond the noise decides, even against one
    // more request in flight (both stay cold: the window holds mostly zeros and ones).
    let f = noisy_pair(10.0, 30.0, 1.0);
    let _busy = f.loads[0].track();
    let state = State::new();
    for _ in 0..16 {
        state.rif.push(1);
    }
    assert_eq!(counts_with(&p, &state, &f, 20, 0), vec![20, 0]);
    // The same means with no spread at all: the faster wins every time too.
    let f = noisy_pair(10.0, 10.5, 0.0);
    assert_eq!(counts_with(&p, &State::new(), &f, 20, 0), vec![20, 0]);
}

#[test]
fn nothing_eligible_means_none() {
    let mut f = Fleet::new(&[1, 1]);
    f.eligible = vec![false, false];
    for kind in StrategyKind::ALL {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(pick(&params(kind), &State::new(), &f, 0, &mut rng), None, "{kind}");
    }
}

proptest! {
    #[test]
    fn never_picks_an_ineligible_backend(
        spec in proptest::collection::vec((1u32..20, any::<bool>(), 0u32..5), 1..12),
        kind in 0usize..StrategyKind::ALL.len(),
        seed in any::<u64>(),
    ) {
        let mut f = Fleet::new(&spec.iter().map(|s| s.0).collect::<Vec<_>>());
        f.eligible = spec.iter().map(|s| s.1).collect();
        let _guards: Vec<_> = spec.iter().enumerate().flat_map(|(i, s)| (0..s.2).map(|_| f.loads[i].track()).collect::<Vec<_>>()).collect();
        let state = State::new();
        let mut rng = SmallRng::seed_from_u64(seed);
        let any_eligible = f.eligible.iter().any(|&e| e);
        for _ in 0..20 {
            let got = pick(&params(StrategyKind::ALL[kind]), &state, &f, 0, &mut rng);
            match got {
                Some(i) => prop_assert!(f.eligible[i]),
                None => prop_assert!(!any_eligible),
            }
        }
    }
}

mod ml_tests {
    use super::*;
    use crate::ml::{self, Curve, MlPick, RowPlan, CURVE_LEVELS, FEATURES};

    fn flat(latency_ms: f32, p_fail: f32, slope_ms: f32) -> (Vec<f32>, Vec<f32>) {
        let lat = (0..CURVE_LEVELS).map(|k| latency_ms + slope_ms * k as f32).collect();
        (lat, vec![p_fail; CURVE_LEVELS])
    }

    fn curve(p: &Params, latency_ms: f32, p_fail: f32, slope_ms: f32) -> Curve {
        let (l, f) = flat(latency_ms, p_fail, slope_ms);
        Curve::new(&l, &f, p, 1.0).expect("curve")
    }

    #[test]
    fn feature_rows_use_the_contract_units_and_order() {
        let p = params(StrategyKind::Ml);
        let l = Load::new();
        l.observe(25e6, 1_000, p.decay_ns);
        l.observe_at_rif(2, 40e6, 0.5, 1.0);
        l.observe_failure(1e5, 1_000);
        l.report(3, 1_000);
        let r = ml::feature_row(&l, 2, 2, 1_000, &p, true);
        assert_eq!(FEATURES[0].name, "inflight");
        assert_eq!(r[0], 2.0);
        assert_eq!((r[1], r[2]), (3.0, 1.0), "reported queue and its flag");
        assert!((r[3] - 25.0).abs() < 1e-3, "peak-EWMA in ms: {}", r[3]);
        assert!((r[4] - 40.0).abs() < 1e-3, "latency at the level in ms: {}", r[4]);
        assert!((r[5] - FAILURE_WEIGHT as f32).abs() < 1e-6, "failure rate: {}", r[5]);
        assert_eq!(r[6], 2.0);
        let r = ml::feature_row(&l, 2, 2, 1_000, &p, false);
        assert_eq!((r[1], r[2]), (0.0, 0.0), "orca off: no report");
        let later = 1_000 + REPORT_TTL_NS + 1;
        let r = ml::feature_row(&l, 2, 0, later, &p, true);
        assert_eq!((r[1], r[2]), (0.0, 0.0), "an expired report is no report");
        let faded = 40.0 * (-((later - 1_000) as f64) / p.decay_ns).exp();
        assert!(
            (f64::from(r[4]) - faded).abs() < 1e-3,
            "level 0 borrows the nearest level with samples, faded for the second without an answer: {}",
            r[4]
        );
        let rows = ml::curve_rows(&l, 1, 1_000, &p, true);
        assert_eq!(rows.map(|r| r[0]), std::array::from_fn(|k| k as f32));
    }

    #[test]
    fn a_row_plan_follows_the_models_order_and_refuses_what_it_cannot_measure() {
        let plan = RowPlan::new([("weight", "count"), ("inflight", "count")]).expect("plan");
        let mut out = Vec::new();
        plan.write(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], &mut out);
        assert_eq!(out, [7.0, 1.0]);
        assert_eq!(plan.width(), 2);
        let all = RowPlan::new(FEATURES.iter().map(|f| (f.name, f.unit))).expect("all");
        assert_eq!(all.features().collect::<Vec<_>>(), FEATURES);
        let e = RowPlan::new([("cpu", "ratio")]).expect_err("unknown");
        assert!(e.contains("`cpu`"), "{e}");
        let e = RowPlan::new([("latency_ewma_ms", "s")]).expect_err("unit");
        assert!(e.contains("unit `s`"), "{e}");
        assert!(RowPlan::new([("weight", "count"), ("weight", "count")]).is_err());
        assert!(RowPlan::new([]).is_err());
    }

    #[test]
    fn a_curve_prices_failures_and_extends_past_its_last_level() {
        let p = params(StrategyKind::Ml);
        let c = curve(&p, 10.0, 0.0, 1.0);
        assert_eq!(c.cost_ns(0), 10e6);
        assert_eq!(c.cost_ns(15), 25e6);
        // Past the last level: its step (1 ms) or, when larger, 1/16 of its cost per request.
        assert!((c.cost_ns(17) - (25e6 + 2.0 * 25e6 / 16.0)).abs() < 1.0);
        let steep = curve(&p, 1.0, 0.0, 4.0);
        assert!((steep.cost_ns(17) - (61e6 + 2.0 * 4e6)).abs() < 1.0, "the last step");
        let failing = curve(&p, 1.0, 0.5, 0.0);
        assert_eq!(failing.cost_ns(0), 0.5 * 1e6 + 0.5 * p.failure_penalty_ns);
        let (mut l, f) = flat(1.0, 0.0, 0.0);
        l[3] = f32::NAN;
        assert!(Curve::new(&l, &f, &p, 1.0).is_none(), "a non-finite answer");
        assert!(Curve::new(&l[..4], &f[..4], &p, 1.0).is_none(), "too few levels");
    }

    #[test]
    fn a_queue_that_grew_since_scoring_counts_as_requests_ahead() {
        let p = params(StrategyKind::Ml);
        let l = Load::new();
        let _busy = [l.track(), l.track()];
        l.report(5, 1_000);
        let c = curve(&p, 10.0, 0.0, 1.0);
        assert_eq!(
            c.level(&l, 1_000, true),
            7,
            "scored without a report: the whole queue is new"
        );
        assert_eq!(c.level(&l, 1_000, false), 2, "orca off: our requests in flight only");
        assert_eq!(c.clone().with_scored_queue(3).level(&l, 1_000, true), 4);
        assert_eq!(
            c.clone().with_scored_queue(9).level(&l, 1_000, true),
            0,
            "shrunk: never below 0"
        );
        assert_eq!(ml::scored_queue(&l, 1_000, true), 5);
        assert_eq!(ml::scored_queue(&l, 1_000, false), 0);
        let expired = 1_000 + REPORT_TTL_NS + 1;
        assert_eq!(
            c.with_scored_queue(5).level(&l, expired, true),
            0,
            "an expired report: no queue"
        );
    }

    #[test]
    fn calibration_scales_the_model_to_what_the_backend_measured() {
        let p = params(StrategyKind::Ml);
        let (lat, pf) = flat(10.0, 0.0, 0.0);
        let l = Load::new();
        assert_eq!(ml::calibration(&l, &lat, &pf, &p, 0), 1.0, "no samples");
        l.observe_at_rif(0, 20e6, 1.0, 1.0);
        l.observe_at_rif(1, 20e6, 1.0, 1.0);
        assert!((ml::calibration(&l, &lat, &pf, &p, 0) - 2.0).abs() < 1e-9);
        l.observe_at_rif(0, 400e6, 1.0, 1.0);
        assert_eq!(ml::calibration(&l, &lat, &pf, &p, 0), ml::CALIBRATION_RANGE.1);
        let c = Curve::new(&lat, &pf, &p, 2.0).expect("curve");
        assert_eq!(c.cost_ns(0), 20e6);
        assert_eq!(c.predicted_us(0), 20e3);
    }

    /// What a backend cost counts as long as it keeps answering; once the pick avoids it (an
    /// incident), the factor returns to 1 with the time without an answer, so the model
    /// alone judges it again instead of the incident for ever.
    #[test]
    fn calibration_returns_to_the_model_while_a_backend_goes_unanswered() {
        let p = params(StrategyKind::Ml);
        let (lat, pf) = flat(10.0, 0.0, 0.0);
        let l = Load::new();
        let t0 = 1_000_000_000u64;
        p.observe(&l, 0, 40e6, false, t0);
        p.observe(&l, 1, 40e6, false, t0);
        assert!(
            (ml::calibration(&l, &lat, &pf, &p, t0) - 4.0).abs() < 1e-9,
            "answering now"
        );
        let decay = p.decay_ns as u64;
        let c = ml::calibration(&l, &lat, &pf, &p, t0 + decay);
        assert!((c - 4f64.powf((-1f64).exp())).abs() < 1e-9, "one decay time later: {c}");
        let c = ml::calibration(&l, &lat, &pf, &p, t0 + 20 * decay);
        assert!((c - 1.0).abs() < 1e-6, "long unanswered: the model alone ({c})");
    }

    /// In an `ml` pool the first answer after a pause outweighs the average from before it
    /// in proportion to the pause; `prequal` keeps its plain average.
    #[test]
    fn after_a_pause_an_ml_pool_lets_new_answers_outweigh_an_old_incident() {
        let level_after = |kind: StrategyKind| {
            let p = params(kind);
            let l = Load::new();
            for i in 0..50 {
                p.observe(&l, 0, 1e6, true, i * 1_000_000);
            }
            let incident = l.latency_at_rif_ns(0);
            assert!(
                incident > 0.99 * p.failure_penalty_ns,
                "failures at the penalty: {incident}"
            );
            let after = 49_000_000 + 6 * p.decay_ns as u64;
            p.observe(&l, 0, 20e6, false, after);
            (p, incident, l.latency_at_rif_ns(0))
        };
        let (p, incident, plain) = level_after(StrategyKind::Prequal);
        let a = p.prequal.latency_alpha();
        assert!((plain - ((1.0 - a) * incident + a * 20e6)).abs() < 1.0);
        let (_, incident, faded) = level_after(StrategyKind::Ml);
        let prev = incident * (-6f64).exp();
        assert!((faded - ((1.0 - a) * prev + a * 20e6)).abs() < 1.0, "{faded}");
        assert!(faded < plain / 50.0, "ml {faded} vs prequal {plain}");
    }

    fn ml_params(explore: f64) -> Params {
        let mut p = params(StrategyKind::Ml);
        p.ml.explore = explore;
        p
    }

    fn ml_counts(p: &Params, f: &Fleet, curves: &[Curve], n: usize) -> Vec<usize> {
        let state = State::new();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut out = vec![0; f.len()];
        for _ in 0..n {
            match ml::pick(p, state.rif_window(), f, |i| curves.get(i), 0, &mut rng) {
                MlPick::Chosen { index, .. } => out[index] += 1,
                other => panic!("no pick: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn ml_sends_requests_where_the_model_expects_them_answered_soonest() {
        let p = ml_params(0.0);
        let f = Fleet::new(&[1; 10]);
        let mut curves = vec![
            curve(&p, 50.0, 0.0, 5.0),
            curve(&p, 10.0, 0.0, 1.0),
            curve(&p, 12.0, 0.5, 1.0),
        ];
        curves.extend((3..10).map(|_| curve(&p, 80.0, 0.0, 5.0)));
        let c = ml_counts(&p, &f, &curves, 200);
        assert_eq!(c[1], 200, "the slow ones and the failing one lose: {c:?}");
        // The fast one is hot (far more in flight than the others): the cold ones decide.
        let _busy: Vec<_> = (0..12).map(|_| f.loads[1].track()).collect();
        let c = ml_counts(&p, &f, &curves, 200);
        assert_eq!(c[1], 0, "hot: {c:?}");
        assert_eq!(c[0], 200, "of the cold, the fastest without failures: {c:?}");
    }

    #[test]
    fn what_a_level_cost_lately_is_a_floor_under_the_curve() {
        let p = ml_params(0.0);
        let f = Fleet::new(&[1, 1]);
        let curves = [curve(&p, 10.0, 0.0, 0.0), curve(&p, 20.0, 0.0, 0.0)];
        // The model thinks the first is cheap; its last requests at this level failed.
        f.loads[0].observe_at_rif(0, p.failure_penalty_ns, 1.0, 1.0);
        assert_eq!(ml::cost_ns(&curves[0], &f.loads[0], 0, &p), p.failure_penalty_ns);
        assert_eq!(
            ml::cost_ns(&curves[1], &f.loads[1], 0, &p),
            20e6,
            "no samples: the curve"
        );
        f.loads[1].observe_at_rif(0, 5e6, 1.0, 1.0);
        assert_eq!(
            ml::cost_ns(&curves[1], &f.loads[1], 0, &p),
            20e6,
            "cheaper lately: still the curve"
        );
        assert_eq!(ml_counts(&p, &f, &curves, 100), [0, 100]);
        // Sent nothing for a long while, the failure fades and the curve decides again.
        let later = (10.0 * p.decay_ns) as u64;
        assert_eq!(ml::cost_ns(&curves[0], &f.loads[0], later, &p), 10e6);
    }

    #[test]
    fn ml_reads_the_curve_at_the_current_requests_in_flight() {
        let p = ml_params(0.0);
        let f = Fleet::new(&[1, 1]);
        // Equal at rest; the first slows down fast with load.
        let curves = [curve(&p, 10.0, 0.0, 10.0), curve(&p, 10.0, 0.0, 1.0)];
        let _busy = f.loads[0].track();
        let _also = f.loads[1].track();
        assert_eq!(ml_counts(&p, &f, &curves, 100), [0, 100]);
    }

    #[test]
    fn ml_ties_go_to_the_less_busy_and_exploration_stays_near_the_best() {
        let p = ml_params(0.0);
        let f = Fleet::new(&[1, 1, 1]);
        let curves = [
            curve(&p, 10.0, 0.0, 0.0),
            curve(&p, 10.5, 0.0, 0.0),
            curve(&p, 100.0, 0.0, 0.0),
        ];
        let _busy = f.loads[0].track();
        assert_eq!(
            ml_counts(&p, &f, &curves, 100),
            [0, 100, 0],
            "within the tie: fewer in flight"
        );
        let p = ml_params(0.5);
        let c = ml_counts(&p, &f, &curves, 2000);
        assert_eq!(c[2], 0, "never explores a server far from the best: {c:?}");
        assert!(c[0] > 300, "explores the near one: {c:?}");
    }

    #[test]
    fn ml_without_a_curve_says_so_and_pick_falls_back() {
        let p = ml_params(0.0);
        let f = Fleet::new(&[1, 1]);
        let curves = [curve(&p, 10.0, 0.0, 0.0)];
        let mut rng = SmallRng::seed_from_u64(1);
        let state = State::new();
        let _busy: Vec<_> = (0..5).map(|_| f.loads[0].track()).collect();
        let got = ml::pick(&p, state.rif_window(), &f, |i| curves.get(i), 0, &mut rng);
        assert_eq!(got, MlPick::NoCurve);
        assert_eq!(
            state.rif_window().quantile(1.0, 16),
            0,
            "a pick left to the fallback adds nothing to the hot threshold's window"
        );
        drop(_busy);
        let mut none = Fleet::new(&[1]);
        none.eligible[0] = false;
        let got = ml::pick(&p, State::new().rif_window(), &none, |i| curves.get(i), 0, &mut rng);
        assert_eq!(got, MlPick::None);
        // `pick` with kind `ml` is its fallback's pick: p2c_ewma avoids the slow one.
        f.loads[0].observe(100e6, 0, p.decay_ns);
        f.loads[1].observe(1e6, 0, p.decay_ns);
        assert_eq!(counts(StrategyKind::Ml, &f, 100), [0, 100]);
        let mut bad = p.ml;
        bad.fallback = StrategyKind::Ml;
        bad.explore = 0.9;
        let errs: Vec<_> = bad.check().into_iter().map(|(k, _)| k).collect();
        assert_eq!(errs, ["explore", "fallback"]);
    }
}
