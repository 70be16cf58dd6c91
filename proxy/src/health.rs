//! Active health checks: one probe loop per pool with a `health_check` section, using
//! Pingora's `HttpHealthCheck` as the probe and our rise/fall thresholds on
//! [`BackendStats`].
//!
//! Probe loops outlive reloads: a reload that leaves a pool's `health_check` section as it
//! was keeps the pool's loop (and the probes in flight) running, so frequent reloads cannot
//! keep a hung server from being marked down. A loop restarts only when its pool is new or
//! its `health_check` section changed. Servers a reload adds are probed at once (they take
//! no traffic until their first pass), and after every round the pool retires the removed
//! servers that were still serving once their replacements are healthy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::server::ShutdownWatch;
use tokio::task::{AbortHandle, JoinSet};

use crate::config::HealthCheckConfig;
use crate::metrics::metrics;
use crate::state::Shared;
use crate::upstream::{BackendStats, Health, Pool};

/// After a probe loop ended unexpectedly (a panic), wait this long before starting it again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The probe for `hc`. Fails (instead of panicking inside Pingora) on a host or path that
/// cannot be sent; validation at load refuses those, so this is a second line of defence.
fn probe(hc: &HealthCheckConfig) -> Result<HttpHealthCheck, String> {
    let path: http::Uri = hc
        .path
        .parse()
        .map_err(|e| format!("health_check.path `{}`: {e}", hc.path.escape_debug()))?;
    let host = hc.host_header();
    let mut check = HttpHealthCheck::new("localhost", false);
    check.req.set_uri(path);
    check
        .req
        .insert_header(http::header::HOST, host)
        .map_err(|e| format!("health_check.host `{}`: {e}", host.escape_debug()))?;
    check.peer_template.options.connection_timeout = Some(hc.timeout());
    check.peer_template.options.read_timeout = Some(hc.timeout());
    check.peer_template.options.total_connection_timeout = Some(hc.timeout());
    Ok(check)
}

async fn check_one(check: Option<&HttpHealthCheck>, hc: &HealthCheckConfig, pool: &str, s: &Arc<BackendStats>) {
    let ok = match check {
        Some(check) => {
            let target = Backend {
                addr: PSocketAddr::Inet(s.addr),
                weight: 1,
                ext: Default::default(),
            };
            matches!(
                tokio::time::timeout(hc.timeout() + Duration::from_millis(50), check.check(&target)).await,
                Ok(Ok(()))
            )
        }
        None => false,
    };
    let id = s.id();
    let result = match (check, ok) {
        (None, _) => "error",
        (_, true) => "pass",
        (_, false) => "fail",
    };
    metrics()
        .health_checks
        .with_label_values(&[pool, id.as_str(), result])
        .inc();
    if let Some(h) = s.record_check(ok, hc.rise, hc.fall) {
        match h {
            Health::Healthy => tracing::info!(pool, backend = %id, "backend healthy"),
            _ => tracing::warn!(pool, backend = %id, "backend unhealthy"),
        }
    }
}

/// Probes the pool's servers every interval, and new ones as soon as a reload adds them.
async fn pool_loop(pool: Arc<Pool>, hc: HealthCheckConfig) {
    let check = match probe(&hc) {
        Ok(c) => Some(c),
        Err(e) => {
            // Every check of this pool fails and counts as `error`: its servers become
            // unhealthy, readiness says so, and the panic threshold keeps traffic flowing.
            tracing::error!(pool = %pool.name, error = %e, "health check cannot run");
            None
        }
    };
    let mut tick = tokio::time::interval(hc.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let only_new = tokio::select! {
            _ = tick.tick() => false,
            _ = pool.added.notified() => true,
        };
        let members = pool.members();
        let probes = members
            .all()
            .filter(|s| !only_new || s.health() == Health::Pending)
            .map(|s| check_one(check.as_ref(), &hc, &pool.name, s));
        futures::future::join_all(probes).await;
        let retired = pool.retire_leaving();
        if retired > 0 {
            tracing::info!(pool = %pool.name, retired, "removed servers stopped serving");
        }
    }
}

/// One running probe loop.
struct Running {
    pool: Arc<Pool>,
    hc: HealthCheckConfig,
    task: AbortHandle,
}

/// Starts, keeps or stops probe loops to match the current pools.
fn reconcile(shared: &Shared, tasks: &mut JoinSet<String>, running: &mut HashMap<String, Running>) {
    let upstreams = shared.upstreams.load();
    running.retain(|name, r| {
        let keep = upstreams
            .pools
            .get(name)
            .is_some_and(|p| Arc::ptr_eq(p, &r.pool) && p.config().health_check.as_ref() == Some(&r.hc));
        if !keep {
            r.task.abort();
        }
        keep
    });
    for (name, pool) in &upstreams.pools {
        let Some(hc) = pool.config().health_check.clone() else {
            continue;
        };
        if running.contains_key(name) {
            continue;
        }
        let (loop_pool, loop_hc, loop_name) = (pool.clone(), hc.clone(), name.clone());
        let task = tasks.spawn(async move {
            pool_loop(loop_pool, loop_hc).await;
            loop_name
        });
        running.insert(
            name.clone(),
            Running {
                pool: pool.clone(),
                hc,
                task,
            },
        );
    }
}

/// Runs until shutdown.
pub async fn run(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let mut generation = shared.generation.subscribe();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut running: HashMap<String, Running> = HashMap::new();
    reconcile(&shared, &mut tasks, &mut running);
    loop {
        tokio::select! {
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
                reconcile(&shared, &mut tasks, &mut running);
            }
            Some(ended) = tasks.join_next() => {
                // Loops run for ever: one that ended was aborted (replaced) or panicked.
                if let Err(e) = ended {
                    if e.is_panic() {
                        let task_id = e.id();
                        running.retain(|name, r| {
                            let dead = r.task.id() == task_id;
                            if dead {
                                metrics().health_check_failures.with_label_values(&[name]).inc();
                                tracing::error!(pool = %name, error = %e, "health checker stopped; restarting it");
                            }
                            !dead
                        });
                        tokio::time::sleep(RESTART_DELAY).await;
                        reconcile(&shared, &mut tasks, &mut running);
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
