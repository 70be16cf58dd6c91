//! What one routing decision costs, per strategy, at 3, 30 and 300 candidates: the hot
//! path's share of a request (`ml` reads its curves from the scorer's snapshot, built off
//! the request path). Run with `cargo bench -p nb-strategy --bench decision` on an
//! otherwise idle machine.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nb_strategy::ml::{self, Curve, CURVE_LEVELS};
use nb_strategy::{pick, Candidates, Load, Params, State, StrategyKind};
use rand::rngs::SmallRng;
use rand::SeedableRng;

struct Fleet {
    loads: Vec<Arc<Load>>,
}

impl Candidates for Fleet {
    fn len(&self) -> usize {
        self.loads.len()
    }
    fn weight(&self, _i: usize) -> u32 {
        1
    }
    fn load(&self, i: usize) -> &Load {
        &self.loads[i]
    }
    fn eligible(&self, _i: usize) -> bool {
        true
    }
}

/// `n` backends with latency history at several levels of requests in flight, some busy.
fn fleet(n: usize, params: &Params) -> (Fleet, Vec<Curve>, Vec<nb_strategy::InflightGuard>) {
    let loads: Vec<Arc<Load>> = (0..n).map(|_| Load::new()).collect();
    let mut busy = Vec::new();
    for (i, l) in loads.iter().enumerate() {
        let base = 2e6 + (i % 7) as f64 * 1e6;
        for k in 0..4 {
            params.observe(l, k, base * (1.0 + k as f64 * 0.2), false, 1_000);
        }
        for _ in 0..(i % 4) {
            busy.push(l.track());
        }
    }
    let curves = loads
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let lat: Vec<f32> = (0..CURVE_LEVELS).map(|k| 2.0 + (i % 7) as f32 + k as f32).collect();
            Curve::new(&lat, &[0.01; CURVE_LEVELS], params, 1.0).expect("a curve")
        })
        .collect();
    (Fleet { loads }, curves, busy)
}

fn decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("decision");
    for n in [3usize, 30, 300] {
        for kind in [StrategyKind::P2cEwma, StrategyKind::Prequal, StrategyKind::Ml] {
            let params = Params::new(kind);
            let (f, curves, _busy) = fleet(n, &params);
            let state = State::new();
            let mut rng = SmallRng::seed_from_u64(1);
            g.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                b.iter(|| match kind {
                    StrategyKind::Ml => black_box(ml::pick(
                        &params,
                        state.rif_window(),
                        &f,
                        |i| curves.get(i),
                        2_000,
                        &mut rng,
                    )),
                    _ => match pick(&params, &state, &f, 2_000, &mut rng) {
                        Some(index) => black_box(ml::MlPick::Chosen {
                            index,
                            cost_ns: 0.0,
                            rif: 0,
                        }),
                        None => black_box(ml::MlPick::None),
                    },
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
