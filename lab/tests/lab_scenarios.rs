//! The scenario files in `conf/scenarios/` and their README: every file parses and
//! validates, stays within what a 2-core machine can generate, and the README documents
//! every key of the schema.

use std::collections::BTreeSet;
use std::path::PathBuf;

use backend_sim::model::{ClassService, Dist, Errors, Phase, Profile, Warmup};
use nb_lab::lab;
use nb_lab::scenario::{Class, Load, PassiveHealth, Scenario};
use serde_yaml::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf/scenarios")
}

const SCENARIOS: [&str; 7] = [
    "s0-homogeneous",
    "s1-static-skew",
    "s2-noisy-neighbour",
    "s3-sinkhole",
    "s4-mixed-classes",
    "s5-cold-join",
    "s6-shedding",
];

/// Most requests per second the lab should offer on a 2-core machine.
const MAX_RPS: f64 = 1500.0;

/// The model-only scenarios of `docs/bench/ml/unseen/` (fleets the shipped model was not
/// trained on, run with `--simulate` for `docs/benchmarks.md`) parse and validate, each file
/// named after its scenario and saying what it tests.
#[test]
fn the_model_only_scenarios_of_the_benchmarks_parse() {
    let unseen = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/ml/unseen");
    let loaded = lab::load_scenarios(&[unseen]).expect("every file parses and validates");
    assert_eq!(loaded.len(), 7);
    for (file, s) in &loaded {
        let stem = file.file_stem().and_then(|f| f.to_str()).expect("file name");
        assert_eq!(stem, s.name, "file name and name differ");
        assert!(!s.description.is_empty(), "{stem}: no description");
    }
}

#[test]
fn every_scenario_parses_validates_and_fits_the_machine() {
    let loaded = lab::load_scenarios(&[dir()]).expect("every scenario file parses and validates");
    let names: Vec<&str> = loaded.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, SCENARIOS);
    for (file, s) in &loaded {
        let stem = file.file_stem().and_then(|f| f.to_str()).expect("file name");
        assert_eq!(stem, s.name, "file name and name differ");
        assert!(!s.description.is_empty(), "{stem}: no description");
        assert!(
            (30.0..=60.0).contains(&s.duration_s) && s.warmup_s == 5.0,
            "{stem}: duration"
        );
        let peak = s.rate_at(0.0).max(s.rate_at(s.duration_s));
        assert!(peak <= MAX_RPS, "{stem}: {peak} req/s is more than {MAX_RPS}");
        assert!(
            peak >= 500.0,
            "{stem}: {peak} req/s is too light to tell strategies apart"
        );
        let text = std::fs::read_to_string(file).expect("read");
        assert!(
            text.lines()
                .any(|l| l.starts_with("passive_health: ") && l.contains('#')),
            "{stem}: no explicit passive_health with its reason"
        );
        assert_eq!(s.passive_health, PassiveHealth::On, "{stem}");
    }
}

#[test]
fn scenarios_say_what_the_issue_asks() {
    let load = |name: &str| Scenario::load(&dir().join(format!("{name}.yaml"))).expect("valid");
    let s1 = load("s1-static-skew");
    let means: Vec<f64> = s1.profiles().iter().map(|p| p.service.mean_ms()).collect();
    assert_eq!(means.len(), 10);
    assert_eq!(means.iter().filter(|m| **m == 20.0).count(), 8);
    assert!(
        means.contains(&160.0) && means.contains(&320.0),
        "8x and 16x: {means:?}"
    );

    let s2 = load("s2-noisy-neighbour");
    assert_eq!(s2.load, Load::Ramp { from: 0.75, to: 1.3 });
    let halved_at = |t: f64| s2.profiles().iter().filter(|p| p.effective(t).slowdown == 2.0).count();
    for t in [6.0, 16.0, 26.0, 36.0] {
        assert_eq!(halved_at(t), 2, "a hot pair at {t} s");
    }
    let hot = |t: f64| -> Vec<String> {
        let ps = s2.profiles();
        ps.into_iter()
            .filter(|p| p.effective(t).slowdown == 2.0)
            .map(|p| p.id)
            .collect()
    };
    assert_ne!(hot(6.0), hot(16.0), "the hot set moves");

    let s3 = load("s3-sinkhole");
    let sinks: Vec<f64> = s3
        .profiles()
        .iter()
        .map(|p| p.errors.fast_503)
        .filter(|r| *r > 0.0)
        .collect();
    assert_eq!(sinks, [0.5]);

    let s4 = load("s4-mixed-classes");
    let weights: Vec<f64> = s4.classes.iter().map(|c| c.weight).collect();
    assert_eq!(weights, [95.0, 5.0]);
    let p = &s4.profiles()[0];
    assert_eq!(p.service_for("/cheap").mean_ms(), 1.0);
    let heavy = p.service_for("/heavy");
    assert!(matches!(heavy, Dist::BoundedPareto { .. }), "{heavy:?}");
    assert!((heavy.mean_ms() - 100.0).abs() < 5.0, "heavy mean {}", heavy.mean_ms());
    let slots: Vec<u32> = s4.profiles().iter().map(|p| p.slots).collect();
    assert_eq!(slots.iter().filter(|s| **s == 4).count(), slots.len() / 2);
    assert_eq!(slots.iter().filter(|s| **s == 32).count(), slots.len() / 2);

    let s5 = load("s5-cold-join");
    let joiners: Vec<Profile> = s5.profiles().into_iter().filter(|p| p.joined_at_s() > 0.0).collect();
    assert_eq!(joiners.len(), 2);
    for j in &joiners {
        assert!(j.effective(1.0).down && !j.effective(10.0).down);
        assert!((j.effective(10.0).slowdown - 3.0).abs() < 1e-9);
        assert_eq!(j.warmup.as_ref().map(|w| w.duration_s), Some(60.0));
    }
    let initial: f64 = s5
        .profiles()
        .iter()
        .filter(|p| p.joined_at_s() == 0.0)
        .map(|p| p.capacity_rps(&s5.mix()))
        .sum();
    assert!(
        (s5.rate_at(0.0) / initial - 0.8).abs() < 1e-9,
        "80% load when they join"
    );

    // Every backend sheds with a fast 503 once its short queue is full, and the slow ones
    // fill first; nothing else fails.
    let s6 = load("s6-shedding");
    let ps = s6.profiles();
    assert_eq!(ps.len(), 10);
    assert!(ps
        .iter()
        .all(|p| p.queue == 2 && p.slots == 4 && p.errors == Errors::default()));
    let means: Vec<f64> = ps.iter().map(|p| p.service.mean_ms()).collect();
    assert_eq!(means.iter().filter(|m| **m == 20.0).count(), 8);
    assert_eq!(means.iter().filter(|m| **m == 80.0).count(), 2);
}

/// A scenario with every optional field set, so that serialising it names every key.
fn full_scenario() -> Scenario {
    let dists = [
        Dist::Constant { ms: 1.0 },
        Dist::Exponential { mean_ms: 2.0 },
        Dist::LogNormal {
            median_ms: 3.0,
            sigma: 0.5,
        },
        Dist::BoundedPareto {
            min_ms: 1.0,
            max_ms: 9.0,
            alpha: 1.5,
        },
    ];
    let errors = Errors {
        fast_503: 0.1,
        slow_500: 0.1,
        hang: 0.1,
    };
    let mut p = Profile::new("b", dists[0].clone());
    p.listen = Some("127.0.0.1:1".parse().expect("addr"));
    p.count = Some(2);
    p.classes = dists
        .iter()
        .map(|d| ClassService {
            path_prefix: "/x".into(),
            service: d.clone(),
        })
        .collect();
    p.errors = errors.clone();
    p.warmup = Some(Warmup {
        duration_s: 1.0,
        factor: 2.0,
    });
    p.phases = vec![Phase {
        at_s: 1.0,
        slowdown: Some(2.0),
        errors: Some(errors),
        slots: Some(3),
        down: Some(false),
    }];
    Scenario {
        name: "full".into(),
        description: "d".into(),
        duration_s: 1.0,
        warmup_s: 1.0,
        deadline_ms: 1.0,
        load: Load::Rate(1.0),
        classes: vec![Class {
            name: "c".into(),
            path: "/c".into(),
            weight: 1.0,
        }],
        fleet: vec![p],
        pool: Some(serde_yaml::from_str("{ health_check: { path: /health } }").expect("yaml")),
        passive_health: PassiveHealth::Off,
        seed: 1,
    }
}

fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    out.insert(k.to_owned());
                }
                keys(v, out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| keys(i, out)),
        _ => {}
    }
}

#[test]
fn the_readme_documents_every_key_of_the_schema() {
    let readme = std::fs::read_to_string(dir().join("README.md")).expect("conf/scenarios/README.md");
    let mut all = BTreeSet::new();
    let mut forms = vec![full_scenario()];
    for load in [Load::CapacityFraction(0.5), Load::Ramp { from: 0.5, to: 1.0 }] {
        let mut s = full_scenario();
        s.load = load;
        forms.push(s);
    }
    for s in &forms {
        let v: Value = serde_yaml::from_str(&serde_yaml::to_string(s).expect("serialises")).expect("yaml");
        keys(&v, &mut all);
    }
    // The values of `dist` are names too.
    all.extend(["constant", "exponential", "log_normal", "bounded_pareto"].map(String::from));
    let missing: Vec<&String> = all.iter().filter(|k| !readme.contains(&format!("`{k}`"))).collect();
    assert!(
        missing.is_empty(),
        "conf/scenarios/README.md does not mention {missing:?}"
    );
    assert!(all.len() > 40, "the full scenario names {} keys: {all:?}", all.len());
    for name in SCENARIOS {
        assert!(
            readme.contains(&format!("`{name}.yaml`")),
            "{name} is not in the README's list"
        );
    }
}

#[test]
fn a_scenario_becomes_the_load_the_lab_offers() {
    let s = Scenario::load(&dir().join("s2-noisy-neighbour.yaml")).expect("valid");
    let spec = lab::load_spec(&s, "127.0.0.1:9".parse().expect("addr"), 7);
    let capacity = s.capacity_rps();
    assert!((spec.rate - 0.75 * capacity).abs() < 1e-6);
    assert!((spec.ramp_to.expect("a ramp") - 1.3 * capacity).abs() < 1e-6);
    assert_eq!((spec.seed, spec.duration.as_secs(), spec.warmup.as_secs()), (7, 40, 5));
    assert_eq!(spec.url.to_string(), "http://127.0.0.1:9/");

    let s4 = Scenario::load(&dir().join("s4-mixed-classes.yaml")).expect("valid");
    let spec = lab::load_spec(&s4, "127.0.0.1:9".parse().expect("addr"), 1);
    let classes: Vec<(&str, &str, f64)> = spec
        .classes
        .iter()
        .map(|c| (c.name.as_str(), c.path.as_str(), c.weight))
        .collect();
    assert_eq!(classes, [("cheap", "/cheap", 95.0), ("heavy", "/heavy", 5.0)]);
    assert_eq!((spec.rate, spec.ramp_to), (1200.0, None));
    assert_eq!(spec.deadline.as_millis(), 2000);

    let mut short = s4.clone();
    lab::apply_overrides(&mut short, Some(2.0), Some(0.5)).expect("valid overrides");
    assert_eq!((short.duration_s, short.warmup_s), (2.0, 0.5));
    assert!(lab::apply_overrides(&mut short, Some(-1.0), None).is_err());
}
