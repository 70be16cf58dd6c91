//! Fleet files: parsing, validation and spawning.

mod common;

use std::time::{Duration, Instant};

use backend_sim::model::{Dist, Profile};
use backend_sim::{spawn_fleet, ConfigError, FleetConfig};
use common::{client, url};

#[test]
fn demo_file_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/sim/demo.yaml");
    let cfg = FleetConfig::load(path).expect("demo.yaml is valid");
    let summary: Vec<_> = cfg
        .backends
        .iter()
        .map(|b| (b.id.as_str(), b.listen.to_string(), b.profile.service.clone()))
        .collect();
    let ms = |ms| Dist::Constant { ms };
    assert_eq!(
        summary,
        [
            ("backend-1", "127.0.0.1:8001".to_string(), ms(2.0)),
            ("backend-2", "127.0.0.1:8002".to_string(), ms(5.0)),
            ("backend-3", "127.0.0.1:8003".to_string(), ms(20.0)),
        ]
    );
    for b in &cfg.backends {
        assert!(b.profile.slots >= 1000, "{}: plenty of slots", b.id);
        assert!(b.profile.phases.is_empty() && b.profile.errors == Default::default());
    }
}

#[test]
fn defaults_apply() {
    let cfg = FleetConfig::from_yaml("backends: [ { id: a } ]").expect("valid");
    let b = &cfg.backends[0];
    assert_eq!(b.listen.to_string(), "127.0.0.1:0");
    assert_eq!(b.profile, {
        let mut p = Profile::new("a", Dist::default());
        p.listen = Some(b.listen);
        p
    });
}

#[test]
fn full_profiles_parse_and_counts_expand() {
    let cfg = FleetConfig::from_yaml(
        r#"
backends:
  - id: rich
    slots: 8
    queue: 100
    service: { dist: exponential, mean_ms: 10 }
    classes: [ { path_prefix: /heavy, service: { dist: constant, ms: 200 } } ]
    errors: { fast_503: 0.01, hang: 0.001 }
    response_bytes: 512
    orca: false
    warmup: { duration_s: 30, factor: 3 }
    phases:
      - { at_s: 0, down: true }
      - { at_s: 60, down: false, slowdown: 4 }
  - { id: pool, count: 3, listen: "127.0.0.1:8010" }
  - { id: free, count: 2 }
"#,
    )
    .expect("valid");
    let rich = &cfg.backends[0].profile;
    assert_eq!(
        (rich.slots, rich.queue, rich.response_bytes, rich.orca),
        (8, 100, 512, false)
    );
    assert_eq!(rich.joined_at_s(), 60.0);
    let ids: Vec<_> = cfg
        .backends
        .iter()
        .map(|b| (b.id.as_str(), b.listen.to_string()))
        .collect();
    assert_eq!(
        ids,
        [
            ("rich", "127.0.0.1:0".to_string()),
            ("pool-1", "127.0.0.1:8010".to_string()),
            ("pool-2", "127.0.0.1:8011".to_string()),
            ("pool-3", "127.0.0.1:8012".to_string()),
            ("free-1", "127.0.0.1:0".to_string()),
            ("free-2", "127.0.0.1:0".to_string()),
        ]
    );
    assert!(cfg
        .backends
        .iter()
        .all(|b| b.profile.count.is_none() && b.profile.id == b.id));
}

#[test]
fn unknown_keys_are_rejected() {
    let err = FleetConfig::from_yaml("backends: [ { id: a, slot: 5 } ]").expect_err("typo");
    assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
    assert!(err.to_string().contains("slot"), "{err}");
    let err = FleetConfig::from_yaml("backends: [ { id: a, delay_ms: 5 } ]").expect_err("old schema");
    assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
    let err = FleetConfig::from_yaml("backends: []\nextra: 1").expect_err("top-level");
    assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
    let err = FleetConfig::from_yaml("backends: [ { id: a, phases: [ { at_s: 1, slow: 2 } ] } ]").expect_err("phase");
    assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
}

#[test]
fn invalid_fleets_are_rejected() {
    let err = FleetConfig::from_yaml("backends: [ { id: a }, { id: a } ]").expect_err("dup");
    assert!(matches!(err, ConfigError::DuplicateId(id) if id == "a"));
    let err = FleetConfig::from_yaml("backends: [ { id: a, count: 2 }, { id: a-2 } ]").expect_err("dup after count");
    assert!(matches!(err, ConfigError::DuplicateId(id) if id == "a-2"));
    let err = FleetConfig::from_yaml("backends: [ { id: a, slots: 0 } ]").expect_err("slots");
    assert!(matches!(&err, ConfigError::Invalid(m) if m.contains("slots")), "{err}");
    let err = FleetConfig::from_yaml("backends: [ { id: a, errors: { fast_503: 1.5 } } ]").expect_err("rate");
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    let err = FleetConfig::from_yaml("backends: [ { id: a, count: 0 } ]").expect_err("count");
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    let err = FleetConfig::from_yaml("backends: [ { id: a, count: 3, listen: \"127.0.0.1:65534\" } ]")
        .expect_err("ports overflow");
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    let err = FleetConfig::from_yaml("backends: [ { id: a, listen: nowhere } ]").expect_err("addr");
    assert!(matches!(err, ConfigError::Yaml(_)));
    let err = FleetConfig::load("/nonexistent/fleet.yaml").expect_err("missing");
    assert!(matches!(err, ConfigError::Read { .. }));
}

#[tokio::test]
async fn spawns_every_backend() {
    let cfg = FleetConfig::from_yaml(
        r#"
backends:
  - { id: f-1, listen: "127.0.0.1:0", service: { dist: constant, ms: 0 } }
  - { id: f-2, listen: "127.0.0.1:0", service: { dist: constant, ms: 60 }, errors: { slow_500: 1 } }
"#,
    )
    .expect("valid");
    let fleet = spawn_fleet(&cfg).await.expect("spawn");
    assert_eq!(fleet.len(), 2);
    let c = client();
    let resp = c.get(url(fleet[0].addr(), "/")).send().await.expect("f-1");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend-id"], "f-1");
    let start = Instant::now();
    let resp = c.get(url(fleet[1].addr(), "/")).send().await.expect("f-2");
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["x-backend-id"], "f-2");
}

#[tokio::test]
async fn spawn_fleet_reports_the_failing_backend() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let cfg = FleetConfig::from_yaml(&format!(
        "backends: [ {{ id: ok }}, {{ id: clash, listen: \"127.0.0.1:{port}\" }} ]"
    ))
    .expect("valid");
    let err = spawn_fleet(&cfg).await.expect_err("port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("clash"), "{err}");
}
