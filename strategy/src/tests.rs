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
    Params { kind, decay_ns: 10e9 }
}

fn counts(kind: StrategyKind, f: &Fleet, n: usize) -> Vec<usize> {
    counts_at(kind, f, n, 0)
}

/// How often each candidate is picked in `n` picks at time `now_ns` (the picks are not
/// tracked, so the load stays as the test set it).
fn counts_at(kind: StrategyKind, f: &Fleet, n: usize, now_ns: u64) -> Vec<usize> {
    let state = State::new();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut out = vec![0; f.len()];
    for _ in 0..n {
        out[pick(&params(kind), &state, f, now_ns, &mut rng).expect("a pick")] += 1;
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
        assert_eq!(l.delay_cost(0, 10e9), l.cost(0, 10e9));
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
