//! Active health checks: one probe loop per pool with a `health_check` section, using
//! Pingora's `HttpHealthCheck` as the probe and our rise/fall thresholds on
//! [`BackendStats`]. The loops restart on every applied reload, so new servers are probed
//! at once (they take no traffic until their first pass) and changed settings apply.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::server::ShutdownWatch;
use tokio::task::JoinSet;

use crate::config::HealthCheckConfig;
use crate::metrics::metrics;
use crate::state::Shared;
use crate::upstream::{BackendStats, Health, Pool};

fn probe(hc: &HealthCheckConfig) -> HttpHealthCheck {
    let mut check = HttpHealthCheck::new(hc.host.as_deref().unwrap_or("localhost"), false);
    check
        .req
        .set_uri(hc.path.parse().unwrap_or_else(|_| http::Uri::from_static("/")));
    check.peer_template.options.connection_timeout = Some(hc.timeout());
    check.peer_template.options.read_timeout = Some(hc.timeout());
    check.peer_template.options.total_connection_timeout = Some(hc.timeout());
    check
}

async fn check_one(check: &HttpHealthCheck, hc: &HealthCheckConfig, pool: &str, s: &Arc<BackendStats>) {
    let target = Backend {
        addr: PSocketAddr::Inet(s.addr),
        weight: 1,
        ext: Default::default(),
    };
    let ok = matches!(
        tokio::time::timeout(hc.timeout() + Duration::from_millis(50), check.check(&target)).await,
        Ok(Ok(()))
    );
    let id = s.id();
    metrics()
        .health_checks
        .with_label_values(&[pool, id.as_str(), if ok { "pass" } else { "fail" }])
        .inc();
    if let Some(h) = s.record_check(ok, hc.rise, hc.fall) {
        match h {
            Health::Healthy => tracing::info!(pool, backend = %id, "backend healthy"),
            _ => tracing::warn!(pool, backend = %id, "backend unhealthy"),
        }
    }
}

async fn pool_loop(pool: Arc<Pool>, hc: HealthCheckConfig) {
    let check = probe(&hc);
    let mut tick = tokio::time::interval(hc.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let members = pool.members();
        let probes = members.list.iter().map(|s| check_one(&check, &hc, &pool.name, s));
        futures::future::join_all(probes).await;
    }
}

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let mut generation = shared.generation.subscribe();
    loop {
        let mut tasks = JoinSet::new();
        for pool in shared.upstreams.load().pools.values() {
            if let Some(hc) = pool.config().health_check.clone() {
                tasks.spawn(pool_loop(pool.clone(), hc));
            }
        }
        tokio::select! {
            changed = generation.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        tasks.abort_all();
    }
}
