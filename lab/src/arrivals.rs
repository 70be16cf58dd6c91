//! The arrival schedule of a load: one stream for the generator and the model.
//!
//! [`Schedule`] yields the requests of a [`LoadSpec`] in order: when each is due (from the
//! start of the load, warm-up included), its class and its index. `nb-bench` sends them at
//! those times and the discrete-event model plays the very same list, so with the same seed
//! the lab and the model see the same arrivals, request for request; the index is what the
//! backends draw each request's fate and service time from
//! ([`backend_sim::model::request_stream`]).
//!
//! Poisson arrivals at the spec's peak rate from a ChaCha8 stream seeded with
//! [`LoadSpec::seed`]: exponential gaps by inverse transform, then thinning (Lewis and
//! Shedler: each kept with probability `rate(t) / peak`), an exact non-homogeneous Poisson
//! process for a ramp; a constant rate draws nothing for the thinning. Each kept request
//! picks its class by weight.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bench::LoadSpec;

/// One request of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Position in the schedule, from 0 (warm-up included).
    pub index: u64,
    /// Intended send time, from the start of the load.
    pub at: Duration,
    /// Index into [`LoadSpec::classes`] (0 without classes).
    pub class: usize,
    /// Whether `at` falls in the measured window.
    pub measured: bool,
}

/// The requests of a [`LoadSpec`], in order.
#[derive(Debug, Clone)]
pub struct Schedule {
    spec: LoadSpec,
    rng: ChaCha8Rng,
    weights: Vec<f64>,
    total_weight: f64,
    peak: f64,
    end: Duration,
    at: Duration,
    next_index: u64,
}

impl Schedule {
    pub fn new(spec: &LoadSpec) -> Self {
        let weights: Vec<f64> = spec.classes.iter().map(|c| c.weight).collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            total_weight: weights.iter().sum(),
            weights,
            peak: spec.rate.max(spec.ramp_to.unwrap_or(spec.rate)),
            end: spec.warmup + spec.duration,
            at: Duration::ZERO,
            next_index: 0,
            spec: spec.clone(),
        }
    }
}

impl Iterator for Schedule {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        if !(self.peak.is_finite() && self.peak > 0.0) {
            return None;
        }
        loop {
            // Inverse transform: 1 - u is in (0, 1], so the logarithm is finite.
            let u: f64 = self.rng.random();
            self.at += Duration::from_secs_f64(-(1.0 - u).ln() / self.peak);
            if self.at >= self.end {
                // Stay exhausted.
                self.peak = 0.0;
                return None;
            }
            let rate = self.spec.rate_at(self.at);
            if rate < self.peak && self.rng.random::<f64>() * self.peak >= rate {
                continue;
            }
            let class = if self.weights.len() > 1 {
                pick(&self.weights, self.rng.random::<f64>() * self.total_weight)
            } else {
                0
            };
            let index = self.next_index;
            self.next_index += 1;
            return Some(Arrival {
                index,
                at: self.at,
                class,
                measured: self.at >= self.spec.warmup,
            });
        }
    }
}

/// The index whose cumulative weight first exceeds `x` (`x` in `[0, total)`).
fn pick(weights: &[f64], mut x: f64) -> usize {
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::RequestClass;

    fn spec(seed: u64) -> LoadSpec {
        let mut s = LoadSpec::new(
            "http://127.0.0.1:1/".parse().expect("url"),
            200.0,
            Duration::from_secs(5),
        );
        s.warmup = Duration::from_secs(1);
        s.seed = seed;
        s.classes = ["a", "b"]
            .map(|n| RequestClass {
                name: n.into(),
                path: format!("/{n}"),
                weight: 1.0,
            })
            .to_vec();
        s
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_indices_count_up() {
        let a: Vec<Arrival> = Schedule::new(&spec(7)).collect();
        let b: Vec<Arrival> = Schedule::new(&spec(7)).collect();
        let c: Vec<Arrival> = Schedule::new(&spec(8)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().enumerate().all(|(i, x)| x.index == i as u64));
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        let measured = a.iter().filter(|x| x.measured).count() as f64;
        // 200/s over 5 s, within 5 standard deviations.
        assert!((measured - 1000.0).abs() < 5.0 * 1000f64.sqrt(), "{measured}");
        let b_share = a.iter().filter(|x| x.class == 1).count() as f64 / a.len() as f64;
        assert!((0.4..0.6).contains(&b_share), "{b_share}");
        assert!(a.iter().all(|x| x.measured == (x.at >= Duration::from_secs(1))));
    }

    #[test]
    fn a_ramp_thins_towards_its_end_rate() {
        let mut s = spec(3);
        s.classes.clear();
        s.rate = 100.0;
        s.ramp_to = Some(500.0);
        let arrivals: Vec<Arrival> = Schedule::new(&s).filter(|a| a.measured).collect();
        let first = arrivals.iter().filter(|a| a.at < Duration::from_secs(2)).count();
        let last = arrivals.iter().filter(|a| a.at >= Duration::from_secs(5)).count();
        assert!(last > 3 * first, "first second {first}, last second {last}");
    }
}
