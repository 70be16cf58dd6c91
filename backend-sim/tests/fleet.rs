//! Fleet files: parsing, validation and spawning.

mod common;

use std::time::{Duration, Instant};

use backend_sim::{spawn_fleet, ConfigError, FleetConfig};
use common::{client, url};

#[test]
fn demo_file_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/sim/demo.yaml");
    let cfg = FleetConfig::load(path).expect("demo.yaml is valid");
    let summary: Vec<_> = cfg
        .backends
        .iter()
        .map(|b| (b.id.as_str(), b.listen.to_string(), b.delay_ms, b.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("backend-1", "127.0.0.1:8001".to_string(), 2, 200),
            ("backend-2", "127.0.0.1:8002".to_string(), 5, 200),
            ("backend-3", "127.0.0.1:8003".to_string(), 20, 200),
        ]
    );
}

#[test]
fn defaults_apply() {
    let cfg = FleetConfig::from_yaml("backends: [ { id: a } ]").expect("valid");
    let b = &cfg.backends[0];
    assert_eq!(b.listen.to_string(), "127.0.0.1:0");
    assert_eq!((b.delay_ms, b.status, b.body_bytes), (0, 200, 0));
}

#[test]
fn unknown_keys_are_rejected() {
    let err = FleetConfig::from_yaml("backends: [ { id: a, delay: 5 } ]").expect_err("typo");
    assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
    assert!(err.to_string().contains("delay"), "{err}");
    let err = FleetConfig::from_yaml("backends: []\nextra: 1").expect_err("top-level");
    assert!(matches!(err, ConfigError::Yaml(_)), "{err}");
}

#[test]
fn invalid_fleets_are_rejected() {
    let err = FleetConfig::from_yaml("backends: [ { id: a }, { id: a } ]").expect_err("dup");
    assert!(matches!(err, ConfigError::DuplicateId(id) if id == "a"));
    let err = FleetConfig::from_yaml("backends: [ { id: a, status: 1000 } ]").expect_err("status");
    assert!(matches!(err, ConfigError::InvalidStatus { status: 1000, .. }));
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
  - { id: f-1, listen: "127.0.0.1:0", delay_ms: 0 }
  - { id: f-2, listen: "127.0.0.1:0", delay_ms: 60, status: 503 }
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
    assert_eq!(resp.status(), 503);
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
