//! Benchmark scenarios (`conf/scenarios/*.yaml`): a fleet, a load and a request mix.
//! The schema is documented for users in `conf/scenarios/README.md`; keep the two in step.
//!
//! ```yaml
//! name: s1-static-skew
//! description: two of ten backends are 8x and 16x slower
//! duration_s: 30          # measured
//! warmup_s: 5             # excluded
//! deadline_ms: 1000       # a request slower than this counts as failed at the deadline
//! load: { capacity_fraction: 0.7 }   # or { rate: 800 } or { ramp: { from: 0.75, to: 1.3 } }
//! classes:                # optional; default: one class on "/"
//!   - { name: cheap, path: /cheap, weight: 95 }
//! fleet:
//!   - { id: fast, count: 8, slots: 8, service: { dist: exponential, mean_ms: 10 } }
//!   - { id: slow8, slots: 8, service: { dist: exponential, mean_ms: 80 } }
//! pool: { health_check: { path: /health, interval_ms: 500 } }   # optional extra pool settings for the proxy
//! passive_health: on      # default; off: no proxy ejects backends on the failures it sees
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use backend_sim::model::Profile;

/// How hard to push: absolute, relative to fleet capacity, or a linear ramp of capacity
/// fractions over the measured duration (warm-up runs at `from`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Load {
    Rate(f64),
    CapacityFraction(f64),
    Ramp { from: f64, to: f64 },
}

/// Passive health: taking a backend out of rotation for a while after failures seen on real
/// traffic. The lab sets it alike on every proxy of a run (see `lab::configs` for how each
/// proxy expresses it and what still differs); a scenario's `pool.outlier_detection` wins
/// over it for `neurabalancer` and the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassiveHealth {
    /// Every proxy gets its closest equivalent of `neurabalancer`'s default outlier detection.
    #[default]
    On,
    /// No proxy ejects a backend on failures (connect failures are still retried).
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    pub name: String,
    /// Request path (also the prefix backends match their class service times on).
    pub path: String,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub duration_s: f64,
    #[serde(default = "default_warmup")]
    pub warmup_s: f64,
    #[serde(default = "default_deadline")]
    pub deadline_ms: f64,
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub load: Load,
    #[serde(default)]
    pub classes: Vec<Class>,
    /// Backends; an entry with `count: N` stands for N identical ones named `id-1` … `id-N`.
    pub fleet: Vec<Profile>,
    /// Extra keys for the proxy's pool (health_check, outlier_detection, …), as YAML.
    #[serde(default)]
    pub pool: Option<serde_yaml::Value>,
    /// Passive health on every proxy of the run (and in the model).
    #[serde(default)]
    pub passive_health: PassiveHealth,
    /// Seed of every random draw (arrivals, service times, errors).
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_warmup() -> f64 {
    5.0
}
fn default_deadline() -> f64 {
    1000.0
}
fn default_seed() -> u64 {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Yaml(String, serde_yaml::Error),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read(name.clone(), e))?;
        Self::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = serde_yaml::from_str(text).map_err(|e| ScenarioError::Yaml(name.to_string(), e))?;
        s.validate().map_err(|e| ScenarioError::Invalid(name.to_string(), e))?;
        Ok(s)
    }

    /// The fleet with `count` entries expanded, in file order.
    pub fn profiles(&self) -> Vec<Profile> {
        let mut out = Vec::new();
        for e in &self.fleet {
            match e.count {
                None => out.push(e.clone()),
                Some(n) => {
                    for i in 1..=n {
                        let mut p = e.clone();
                        p.id = format!("{}-{i}", e.id);
                        p.count = None;
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// The request mix as (path, weight); one class on "/" when none is given.
    pub fn mix(&self) -> Vec<(String, f64)> {
        if self.classes.is_empty() {
            vec![("/".to_string(), 1.0)]
        } else {
            self.classes.iter().map(|c| (c.path.clone(), c.weight)).collect()
        }
    }

    /// Requests per second the whole fleet sustains (phases and warm-up ignored).
    pub fn capacity_rps(&self) -> f64 {
        let mix = self.mix();
        self.profiles().iter().map(|p| p.capacity_rps(&mix)).sum()
    }

    /// Offered rate at `t_s` seconds into the measured window (negative: warm-up).
    pub fn rate_at(&self, t_s: f64) -> f64 {
        match self.load {
            Load::Rate(r) => r,
            Load::CapacityFraction(f) => f * self.capacity_rps(),
            Load::Ramp { from, to } => {
                let x = (t_s / self.duration_s).clamp(0.0, 1.0);
                (from + (to - from) * x) * self.capacity_rps()
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.duration_s <= 0.0 || self.warmup_s < 0.0 || self.deadline_ms <= 0.0 {
            errs.push("need duration_s > 0, warmup_s >= 0, deadline_ms > 0".to_string());
        }
        let profiles = self.profiles();
        if profiles.is_empty() {
            errs.push("the fleet is empty".to_string());
        }
        let mut ids = std::collections::HashSet::new();
        for p in &profiles {
            if !ids.insert(p.id.clone()) {
                errs.push(format!("duplicate backend id {}", p.id));
            }
            if let Err(e) = p.validate() {
                errs.push(e);
            }
        }
        if self.classes.iter().any(|c| !c.path.starts_with('/') || c.weight <= 0.0) {
            errs.push("classes need a path starting with '/' and a positive weight".to_string());
        }
        match self.load {
            Load::Rate(r) if r <= 0.0 => errs.push("load.rate must be positive".to_string()),
            Load::CapacityFraction(f) if f <= 0.0 => errs.push("load.capacity_fraction must be positive".to_string()),
            Load::Ramp { from, to } if from <= 0.0 || to <= 0.0 => {
                errs.push("load.ramp needs positive fractions".to_string())
            }
            _ => {}
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_counts_and_computes_capacity() {
        let s = Scenario::parse(
            "t",
            "name: t\nduration_s: 10\nload: { capacity_fraction: 0.5 }\nfleet:\n  - { id: fast, count: 3, slots: 2, service: { dist: constant, ms: 10 } }\n  - { id: slow, slots: 2, service: { dist: exponential, mean_ms: 40 } }\n",
        )
        .expect("valid");
        let ids: Vec<String> = s.profiles().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, vec!["fast-1", "fast-2", "fast-3", "slow"]);
        assert!((s.capacity_rps() - (3.0 * 200.0 + 50.0)).abs() < 1e-6);
        assert!((s.rate_at(0.0) - 325.0).abs() < 1e-6);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(Scenario::parse(
            "t",
            "name: t\nduration_s: 10\nload: { rate: 5 }\nfleet: [ { id: a, colour: red } ]\n"
        )
        .is_err());
        assert!(Scenario::parse(
            "t",
            "name: t\nduration_s: 10\nload: { rate: -5 }\nfleet: [ { id: a } ]\n"
        )
        .is_err());
        assert!(Scenario::parse(
            "t",
            "name: t\nduration_s: 10\nload: { rate: 5 }\nfleet: [ { id: a }, { id: a } ]\n"
        )
        .is_err());
    }

    #[test]
    fn passive_health_is_on_unless_the_file_says_off() {
        let base = "name: t\nduration_s: 10\nload: { rate: 5 }\nfleet: [ { id: a } ]\n";
        let parse = |extra: &str| Scenario::parse("t", &format!("{base}{extra}"));
        assert_eq!(parse("").expect("valid").passive_health, PassiveHealth::On);
        assert_eq!(
            parse("passive_health: on\n").expect("valid").passive_health,
            PassiveHealth::On
        );
        assert_eq!(
            parse("passive_health: off\n").expect("valid").passive_health,
            PassiveHealth::Off
        );
        assert!(parse("passive_health: maybe\n").is_err());
        // Written out (results.json carries the scenario) and read back, it stays the same.
        let off = parse("passive_health: off\n").expect("valid");
        let text = serde_yaml::to_string(&off).expect("serialises");
        assert_eq!(
            Scenario::parse("t", &text).expect("valid").passive_health,
            PassiveHealth::Off
        );
    }
}
