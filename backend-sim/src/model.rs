//! What a simulated backend *is*, independent of sockets and clocks: its slots and queue,
//! its service-time distributions per request class, its errors, its warm-up and the
//! phases that change it over time.
//!
//! One model, three users: the real simulator (`backend-sim`, serving over TCP), the
//! discrete-event model behind `nb-bench --simulate`, and `nb-bench` itself (fleet capacity
//! for `capacity_fraction` loads). Because all three read the same profile through
//! [`Profile::effective`] and [`Dist::sample`], the model cannot drift from the lab.
//!
//! Randomness is seeded, never taken from the process: a backend seeded `seed` draws a
//! request's fate and service time ([`Profile::draw`]) from [`request_stream`] when the
//! request carries its index in the load (header `x-nb-request`), else from its own
//! [`backend_stream`]. Both are keyed by the backend's id through [`id_hash`], so two
//! processes started with the same seed draw alike; the default seed is
//! [`DEFAULT_SEED`].
//!
//! Times are in milliseconds in files and `f64` milliseconds here; `t_s` is seconds since
//! the fleet's epoch: the start of the load (warm-up included) when `nb-bench` runs it, else
//! the start of the `backend-sim` process.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub const DEFAULT_SLOTS: u32 = 64;
pub const DEFAULT_QUEUE: u32 = 1024;
/// The seed of a backend nobody seeded (tests, fleet files without `seed:`).
pub const DEFAULT_SEED: u64 = 0;

/// A service-time distribution (milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    Constant {
        ms: f64,
    },
    Exponential {
        mean_ms: f64,
    },
    /// Log-normal with the given median and shape `sigma` (of the underlying normal).
    LogNormal {
        median_ms: f64,
        sigma: f64,
    },
    /// Pareto with shape `alpha`, truncated to `[min_ms, max_ms]` (heavy tail, finite mean).
    BoundedPareto {
        min_ms: f64,
        max_ms: f64,
        alpha: f64,
    },
}

impl Default for Dist {
    fn default() -> Self {
        Dist::Constant { ms: 1.0 }
    }
}

impl Dist {
    /// The mean in ms.
    pub fn mean_ms(&self) -> f64 {
        match *self {
            Dist::Constant { ms } => ms,
            Dist::Exponential { mean_ms } => mean_ms,
            Dist::LogNormal { median_ms, sigma } => median_ms * (sigma * sigma / 2.0).exp(),
            Dist::BoundedPareto {
                min_ms: l,
                max_ms: h,
                alpha: a,
            } => {
                if (a - 1.0).abs() < 1e-9 {
                    (h * l / (h - l)) * (h / l).ln()
                } else {
                    let la = l.powf(a);
                    la / (1.0 - (l / h).powf(a)) * (a / (a - 1.0)) * (1.0 / l.powf(a - 1.0) - 1.0 / h.powf(a - 1.0))
                }
            }
        }
    }

    /// One sample in ms (never negative).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        match *self {
            Dist::Constant { ms } => ms,
            Dist::Exponential { mean_ms } => -mean_ms * u.ln(),
            Dist::LogNormal { median_ms, sigma } => {
                // Box-Muller for one standard normal.
                let v: f64 = rng.random_range(0.0..1.0);
                let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                median_ms * (sigma * z).exp()
            }
            Dist::BoundedPareto {
                min_ms: l,
                max_ms: h,
                alpha: a,
            } => {
                // Inverse CDF of the truncated Pareto.
                let la = l.powf(a);
                let ha = h.powf(a);
                (-(u * ha - u * la - ha) / (ha * la)).powf(-1.0 / a)
            }
        }
        .max(0.0)
    }

    pub fn validate(&self) -> Result<(), String> {
        let ok = match *self {
            Dist::Constant { ms } => ms >= 0.0,
            Dist::Exponential { mean_ms } => mean_ms > 0.0,
            Dist::LogNormal { median_ms, sigma } => median_ms > 0.0 && sigma >= 0.0,
            Dist::BoundedPareto { min_ms, max_ms, alpha } => min_ms > 0.0 && max_ms > min_ms && alpha > 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("invalid distribution parameters: {self:?}"))
        }
    }
}

/// Service time of the requests whose path starts with `path_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassService {
    pub path_prefix: String,
    pub service: Dist,
}

/// Injected failures, as fractions of requests (0..=1).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Errors {
    /// Answered at once with 503, without taking a slot.
    pub fast_503: f64,
    /// Served normally, then answered with 500 after the service time.
    pub slow_500: f64,
    /// Never answered: the connection stays open until the client gives up.
    pub hang: f64,
}

/// A backend that starts slow: `factor`× its service time at start (or join), falling
/// linearly to 1× over `duration_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    pub duration_s: f64,
    pub factor: f64,
}

/// From `at_s` on, overrides of the profile (absent fields keep their value).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub at_s: f64,
    /// Multiplies every service time (2.0 = half the capacity).
    #[serde(default)]
    pub slowdown: Option<f64>,
    #[serde(default)]
    pub errors: Option<Errors>,
    #[serde(default)]
    pub slots: Option<u32>,
    /// `true`: the listener is closed (connections refused); `false`: open again. A backend
    /// whose first phase at 0 s is `down: true` joins late.
    #[serde(default)]
    pub down: Option<bool>,
}

/// One simulated backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub id: String,
    /// Where the real simulator listens (fleet files); `None`: 127.0.0.1 on a free port.
    /// Ignored by the discrete-event model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// In fleet lists: this many identical backends, named `id-1` … `id-count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Requests served concurrently.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Requests waiting (FIFO) beyond the slots; more get a fast 503.
    #[serde(default = "default_queue")]
    pub queue: u32,
    /// Service time of requests no class matches.
    #[serde(default)]
    pub service: Dist,
    /// Per-class service times, first matching prefix wins.
    #[serde(default)]
    pub classes: Vec<ClassService>,
    #[serde(default)]
    pub errors: Errors,
    /// Response body size.
    #[serde(default)]
    pub response_bytes: usize,
    /// Send the ORCA `endpoint-load-metrics` response header.
    #[serde(default = "yes")]
    pub orca: bool,
    #[serde(default)]
    pub warmup: Option<Warmup>,
    #[serde(default)]
    pub phases: Vec<Phase>,
}

fn default_slots() -> u32 {
    DEFAULT_SLOTS
}
fn default_queue() -> u32 {
    DEFAULT_QUEUE
}
fn yes() -> bool {
    true
}

/// What happens to a request at a backend, drawn on its arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Served after its service time, with the backend's status.
    Serve,
    /// 503 at once, without a slot.
    Fast503,
    /// 500 after its service time.
    Slow500,
    /// Never answered; holds its slot until the client leaves.
    Hang,
}

/// The draws of one request at one backend: its fate and its service time before any
/// slowdown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub fate: Fate,
    pub service_ms: f64,
}

/// The random stream of request number `request` (its index in the load's schedule) at
/// backend `backend` in a run seeded `seed`.
///
/// The lab's backends and the discrete-event model both draw a request's fate from this
/// stream and its service time from [`size_stream`], so within one repetition every
/// strategy (and the model) faces the same draws: request 1234 sent to `b-3` gets the same
/// fate and service time whoever sent it there.
/// A simulated backend uses it for every request that carries its index in the
/// `x-nb-request` header (`backend::REQUEST_INDEX_HEADER`), whatever else it served before.
pub fn request_stream(seed: u64, backend: &str, request: u64) -> SmallRng {
    SmallRng::seed_from_u64(mix64(mix64(seed ^ id_hash(backend).rotate_left(17)) ^ request))
}

/// The stream of request number `request`'s size in a run seeded `seed`: the service time
/// is drawn from it, the same uniforms at every backend, so a request that is large (a
/// high quantile of its class's distribution) is large wherever it goes, scaled by each
/// backend's own distribution. What a backend adds of its own (its fate) comes from
/// [`request_stream`].
pub fn size_stream(seed: u64, request: u64) -> SmallRng {
    SmallRng::seed_from_u64(mix64(mix64(seed ^ 0x51ce_5eed_0000_0001) ^ request))
}

/// The stream a backend seeded `seed` draws from for requests that carry no index: its
/// own sequence, so the n-th such request of a fresh backend draws the same in every run,
/// but what it draws depends on the requests before it.
pub fn backend_stream(seed: u64, backend: &str) -> SmallRng {
    SmallRng::seed_from_u64(mix64(seed ^ id_hash(backend)))
}

/// FNV-1a of a backend id: stable across processes and builds (unlike `RandomState`).
pub fn id_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The SplitMix64 finaliser: a bijection that scatters nearby inputs.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The profile's state at one moment, after phases and warm-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// Multiplier of every service time (phase slowdown × warm-up factor).
    pub slowdown: f64,
    pub errors: Errors,
    pub slots: u32,
    pub down: bool,
}

impl Profile {
    pub fn new(id: impl Into<String>, service: Dist) -> Self {
        Profile {
            id: id.into(),
            listen: None,
            count: None,
            slots: DEFAULT_SLOTS,
            queue: DEFAULT_QUEUE,
            service,
            classes: Vec::new(),
            errors: Errors::default(),
            response_bytes: 0,
            orca: true,
            warmup: None,
            phases: Vec::new(),
        }
    }

    /// The service distribution for a request path.
    pub fn service_for(&self, path: &str) -> &Dist {
        self.classes
            .iter()
            .find(|c| path.starts_with(&c.path_prefix))
            .map(|c| &c.service)
            .unwrap_or(&self.service)
    }

    /// Draws a request's fate and service time under `errors` (the rates in force), in the
    /// order both the simulator and the model use: a fast 503 first, then the fate of the
    /// others (so P(hang) = (1 - fast_503) × hang), both from `rng`; then the service time
    /// of `path`'s class, from `size` when given (a request's [`size_stream`]) else from
    /// `rng`.
    pub fn draw(&self, errors: &Errors, path: &str, rng: &mut SmallRng, size: Option<&mut SmallRng>) -> Draw {
        let (fast, fate): (f64, f64) = (rng.random(), rng.random());
        let fate = if fast < errors.fast_503 {
            Fate::Fast503
        } else if fate < errors.hang {
            Fate::Hang
        } else if fate < errors.hang + errors.slow_500 {
            Fate::Slow500
        } else {
            Fate::Serve
        };
        let dist = self.service_for(path);
        Draw {
            fate,
            service_ms: match size {
                Some(size) => dist.sample(size),
                None => dist.sample(rng),
            },
        }
    }

    /// When the backend first comes up (0 unless it joins late).
    pub fn joined_at_s(&self) -> f64 {
        let mut down = false;
        let mut joined = 0.0;
        for p in self.sorted_phases() {
            if let Some(d) = p.down {
                if d && !down {
                    down = true;
                } else if !d && down {
                    down = false;
                    joined = p.at_s;
                }
            }
        }
        joined
    }

    fn sorted_phases(&self) -> Vec<&Phase> {
        let mut v: Vec<&Phase> = self.phases.iter().collect();
        v.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        v
    }

    /// The state at `t_s` seconds after the fleet started.
    pub fn effective(&self, t_s: f64) -> Effective {
        let mut e = Effective {
            slowdown: 1.0,
            errors: self.errors.clone(),
            slots: self.slots,
            down: false,
        };
        // Warm-up counts from the last time the backend came up before `t_s`.
        let mut up_since = 0.0;
        for p in self.sorted_phases().into_iter().filter(|p| p.at_s <= t_s) {
            if let Some(s) = p.slowdown {
                e.slowdown = s;
            }
            if let Some(err) = &p.errors {
                e.errors = err.clone();
            }
            if let Some(s) = p.slots {
                e.slots = s;
            }
            if let Some(d) = p.down {
                if e.down && !d {
                    up_since = p.at_s;
                }
                e.down = d;
            }
        }
        if let Some(w) = &self.warmup {
            let since = (t_s - up_since).max(0.0);
            if since < w.duration_s && w.duration_s > 0.0 {
                e.slowdown *= w.factor + (1.0 - w.factor) * since / w.duration_s;
            }
        }
        e
    }

    /// Requests per second it sustains at full load, for a class mix given as
    /// (path, weight) pairs, ignoring phases and warm-up.
    pub fn capacity_rps(&self, mix: &[(String, f64)]) -> f64 {
        let total: f64 = mix.iter().map(|(_, w)| w).sum();
        let mean_ms = if mix.is_empty() || total <= 0.0 {
            self.service.mean_ms()
        } else {
            mix.iter().map(|(p, w)| self.service_for(p).mean_ms() * w / total).sum()
        };
        if mean_ms <= 0.0 {
            f64::INFINITY
        } else {
            self.slots as f64 * 1000.0 / mean_ms
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.slots == 0 {
            errs.push("slots must be at least 1".to_string());
        }
        if let Err(e) = self.service.validate() {
            errs.push(e);
        }
        for c in &self.classes {
            if let Err(e) = c.service.validate() {
                errs.push(format!("class {}: {e}", c.path_prefix));
            }
        }
        let rates = |e: &Errors| [e.fast_503, e.slow_500, e.hang].iter().all(|r| (0.0..=1.0).contains(r));
        if !rates(&self.errors) || self.phases.iter().any(|p| p.errors.as_ref().is_some_and(|e| !rates(e))) {
            errs.push("error rates must be within 0..=1".to_string());
        }
        if self
            .phases
            .iter()
            .any(|p| p.at_s < 0.0 || p.slowdown.is_some_and(|s| s <= 0.0) || p.slots == Some(0))
        {
            errs.push("phases need at_s >= 0, slowdown > 0 and slots >= 1".to_string());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(format!("backend {}: {}", self.id, errs.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn sample_mean(d: &Dist) -> f64 {
        let mut rng = SmallRng::seed_from_u64(3);
        let n = 200_000;
        (0..n).map(|_| d.sample(&mut rng)).sum::<f64>() / n as f64
    }

    #[test]
    fn sample_means_match_the_formulas() {
        for d in [
            Dist::Constant { ms: 4.0 },
            Dist::Exponential { mean_ms: 10.0 },
            Dist::LogNormal {
                median_ms: 5.0,
                sigma: 0.5,
            },
            Dist::BoundedPareto {
                min_ms: 10.0,
                max_ms: 1000.0,
                alpha: 1.5,
            },
        ] {
            let (want, got) = (d.mean_ms(), sample_mean(&d));
            assert!((got - want).abs() / want < 0.03, "{d:?}: sampled {got}, formula {want}");
        }
    }

    #[test]
    fn streams_depend_on_seed_id_and_index_only() {
        use rand::RngCore;
        let first = |mut r: SmallRng| r.next_u64();
        assert_eq!(first(request_stream(7, "b-1", 42)), first(request_stream(7, "b-1", 42)));
        assert_ne!(first(request_stream(7, "b-1", 42)), first(request_stream(8, "b-1", 42)));
        assert_ne!(first(request_stream(7, "b-1", 42)), first(request_stream(7, "b-2", 42)));
        assert_ne!(first(request_stream(7, "b-1", 42)), first(request_stream(7, "b-1", 43)));
        assert_eq!(first(backend_stream(7, "b-1")), first(backend_stream(7, "b-1")));
        assert_ne!(first(backend_stream(7, "b-1")), first(backend_stream(8, "b-1")));
        // FNV-1a's published test vector: the hash must never change between builds.
        assert_eq!(id_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn bounded_pareto_stays_in_bounds() {
        let d = Dist::BoundedPareto {
            min_ms: 1.0,
            max_ms: 100.0,
            alpha: 1.1,
        };
        let mut rng = SmallRng::seed_from_u64(9);
        for _ in 0..10_000 {
            let x = d.sample(&mut rng);
            assert!((1.0..=100.0 + 1e-9).contains(&x), "{x}");
        }
    }

    #[test]
    fn phases_and_warmup_combine() {
        let mut p = Profile::new("b", Dist::Constant { ms: 10.0 });
        p.warmup = Some(Warmup {
            duration_s: 60.0,
            factor: 3.0,
        });
        p.phases = vec![
            Phase {
                at_s: 0.0,
                down: Some(true),
                ..Phase::default()
            },
            Phase {
                at_s: 20.0,
                down: Some(false),
                ..Phase::default()
            },
            Phase {
                at_s: 50.0,
                slowdown: Some(2.0),
                ..Phase::default()
            },
        ];
        assert!(p.effective(10.0).down);
        assert_eq!(p.joined_at_s(), 20.0);
        assert!((p.effective(20.0).slowdown - 3.0).abs() < 1e-9);
        assert!((p.effective(50.0).slowdown - 2.0 * (3.0 - 2.0 * 30.0 / 60.0)).abs() < 1e-9);
        assert!((p.effective(90.0).slowdown - 2.0).abs() < 1e-9);
    }

    #[test]
    fn capacity_follows_slots_and_class_mix() {
        let mut p = Profile::new("b", Dist::Constant { ms: 1.0 });
        p.slots = 4;
        p.classes.push(ClassService {
            path_prefix: "/heavy".into(),
            service: Dist::Constant { ms: 100.0 },
        });
        assert_eq!(p.capacity_rps(&[]), 4000.0);
        let mix = vec![("/cheap".to_string(), 95.0), ("/heavy".to_string(), 5.0)];
        let mean = 0.95 * 1.0 + 0.05 * 100.0;
        assert!((p.capacity_rps(&mix) - 4000.0 / mean).abs() < 1e-6);
    }
}
