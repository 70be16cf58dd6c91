//! A pool: its servers' live state, its strategy, and the Pingora `LoadBalancer` that
//! selects among them.
//!
//! Ownership and update order (the control plane is the only writer):
//! 1. [`Pool::apply`] creates [`BackendStats`] for new servers (pending when the pool has
//!    active checks), updates weights and ids of kept ones, marks removed ones draining,
//!    and publishes the new member map (`PoolShared::members`).
//! 2. It then stores the new strategy parameters and pool settings.
//! 3. Finally it publishes the new backend set to the discovery and runs
//!    `LoadBalancer::update`, which rebuilds the [`PoolSelector`] only when addresses or
//!    weights changed. The selector finds each backend's stats in the member map, so live
//!    state survives every rebuild.
//!
//! Requests read one snapshot of each and never wait on the control plane.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::FutureExt;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;

use super::backend::BackendStats;
use crate::clock;
use crate::config::PoolConfig;
use crate::strategy::{self, Candidates, Load, Params, StrategyKind};

/// The current members of a pool, in configuration order.
#[derive(Debug, Default)]
pub struct Members {
    pub list: Vec<Arc<BackendStats>>,
    by_addr: HashMap<SocketAddr, Arc<BackendStats>>,
}

impl Members {
    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<BackendStats>> {
        self.by_addr.get(addr)
    }
}

/// State shared between a pool and every selector built for it.
#[derive(Debug)]
pub struct PoolShared {
    pub name: Arc<str>,
    pub members: ArcSwap<Members>,
    pub params: ArcSwap<Params>,
}

impl PoolShared {
    fn new(name: Arc<str>, kind: StrategyKind) -> Arc<Self> {
        Arc::new(PoolShared {
            name,
            members: ArcSwap::from_pointee(Members::default()),
            params: ArcSwap::from_pointee(Params { kind, decay_ns: 10e9 }),
        })
    }
}

fn inet(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}

/// Pingora [`BackendSelection`] over any of our strategies. Built per membership; the
/// strategy kind and live load are read from [`PoolShared`] at every pick.
pub struct PoolSelector {
    entries: Vec<(Backend, Arc<BackendStats>)>,
    state: strategy::State,
    shared: Arc<PoolShared>,
}

impl BackendSelection for PoolSelector {
    type Iter = PoolIter;
    type Config = Arc<PoolShared>;

    fn build_with_config(backends: &BTreeSet<Backend>, shared: &Self::Config) -> Self {
        let members = shared.members.load();
        let entries = backends
            .iter()
            .filter_map(|b| {
                let addr = inet(b)?;
                let stats = members.get(&addr).cloned().unwrap_or_else(|| {
                    BackendStats::new(shared.name.clone(), &addr.to_string(), addr, b.weight as u32, false)
                });
                Some((b.clone(), stats))
            })
            .collect();
        PoolSelector {
            entries,
            state: strategy::State::new(),
            shared: shared.clone(),
        }
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &PoolShared::new("default".into(), StrategyKind::RoundRobin))
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> PoolIter {
        PoolIter {
            sel: self.clone(),
            yielded: Vec::new(),
        }
    }
}

/// Yields backends in the strategy's order of preference: each call picks again among the
/// eligible backends not yielded yet. When every healthy backend is passively ejected it
/// picks among them anyway (Envoy's panic mode) rather than fail the request.
pub struct PoolIter {
    sel: Arc<PoolSelector>,
    yielded: Vec<bool>,
}

struct View<'a> {
    sel: &'a PoolSelector,
    yielded: &'a [bool],
    now_ns: u64,
    ignore_ejection: bool,
}

impl Candidates for View<'_> {
    fn len(&self) -> usize {
        self.sel.entries.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.sel.entries[i].0.weight as u32
    }
    fn load(&self, i: usize) -> &Load {
        &self.sel.entries[i].1.load
    }
    fn eligible(&self, i: usize) -> bool {
        let s = &self.sel.entries[i].1;
        !self.yielded.get(i).copied().unwrap_or(false)
            && s.is_healthy()
            && !s.is_draining()
            && (self.ignore_ejection || !s.is_ejected(self.now_ns))
    }
}

impl BackendIter for PoolIter {
    fn next(&mut self) -> Option<&Backend> {
        let sel = &*self.sel;
        let params = **sel.shared.params.load();
        let now_ns = clock::now_ns();
        let mut rng = rand::rng();
        let mut view = View {
            sel,
            yielded: &self.yielded,
            now_ns,
            ignore_ejection: false,
        };
        let pick = strategy::pick(&params, &sel.state, &view, now_ns, &mut rng).or_else(|| {
            view.ignore_ejection = true;
            strategy::pick(&params, &sel.state, &view, now_ns, &mut rng)
        })?;
        if self.yielded.is_empty() {
            self.yielded = vec![false; sel.entries.len()];
        }
        self.yielded[pick] = true;
        Some(&sel.entries[pick].0)
    }
}

/// Service discovery over a set the control plane replaces ([`pingora::lb::discovery::Static`]
/// cannot be changed from outside its crate).
struct SwapDiscovery(Arc<ArcSwap<BTreeSet<Backend>>>);

#[async_trait]
impl ServiceDiscovery for SwapDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok(((**self.0.load()).clone(), HashMap::new()))
    }
}

pub struct Pool {
    pub name: Arc<str>,
    pub shared: Arc<PoolShared>,
    lb: LoadBalancer<PoolSelector>,
    discovered: Arc<ArcSwap<BTreeSet<Backend>>>,
    config: ArcSwap<PoolConfig>,
}

impl Pool {
    pub fn new(name: &str, cfg: &PoolConfig) -> Arc<Pool> {
        let name: Arc<str> = Arc::from(name);
        let shared = PoolShared::new(name.clone(), cfg.strategy);
        let discovered = Arc::new(ArcSwap::from_pointee(BTreeSet::new()));
        let backends = Backends::new(Box::new(SwapDiscovery(discovered.clone())));
        let lb = LoadBalancer::from_backends_with_config(backends, Some(shared.clone()));
        let pool = Arc::new(Pool {
            name,
            shared,
            lb,
            discovered,
            config: ArcSwap::from_pointee(cfg.clone()),
        });
        pool.apply(cfg);
        pool
    }

    /// Applies a validated pool configuration; returns the servers that are new.
    pub fn apply(&self, cfg: &PoolConfig) -> Vec<Arc<BackendStats>> {
        let old = self.shared.members.load_full();
        let has_checks = cfg.health_check.is_some();
        let mut added = Vec::new();
        let mut list = Vec::with_capacity(cfg.servers.len());
        for s in &cfg.servers {
            let stats = match old.get(&s.resolved) {
                Some(st) => {
                    st.set_id(&s.id);
                    st.set_weight(s.weight);
                    if !has_checks && !st.is_healthy() {
                        st.set_trusted();
                    }
                    st.clone()
                }
                None => {
                    let st = BackendStats::new(self.name.clone(), &s.id, s.resolved, s.weight, has_checks);
                    added.push(st.clone());
                    st
                }
            };
            list.push(stats);
        }
        let by_addr: HashMap<_, _> = list.iter().map(|s| (s.addr, s.clone())).collect();
        for s in &old.list {
            if !by_addr.contains_key(&s.addr) {
                s.set_draining();
            }
        }
        self.shared.members.store(Arc::new(Members { list, by_addr }));
        self.shared.params.store(Arc::new(Params {
            kind: cfg.strategy,
            decay_ns: cfg.ewma_decay_ms as f64 * 1e6,
        }));
        self.config.store(Arc::new(cfg.clone()));
        let set: BTreeSet<Backend> = cfg
            .servers
            .iter()
            .map(|s| Backend {
                addr: PSocketAddr::Inet(s.resolved),
                weight: s.weight as usize,
                ext: Default::default(),
            })
            .collect();
        self.discovered.store(Arc::new(set));
        // The discovery never waits, so the update completes on its first poll.
        match self.lb.update().now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::error!(pool = %self.name, error = %e, "selector update failed"),
            None => tracing::error!(pool = %self.name, "selector update did not complete at once"),
        }
        added
    }

    pub fn config(&self) -> Arc<PoolConfig> {
        self.config.load_full()
    }

    pub fn members(&self) -> Arc<Members> {
        self.shared.members.load_full()
    }

    pub fn has_healthy(&self) -> bool {
        self.shared.members.load().list.iter().any(|s| s.is_healthy())
    }

    /// Chooses a backend, excluding those already tried by this request.
    ///
    /// Pingora's own readiness flag is ignored: it is keyed by address *and* weight, so a
    /// selector built just before a re-weighting reload would see every backend as "not
    /// ready". Eligibility (health, ejection) is decided by our selector from `BackendStats`.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<Arc<BackendStats>> {
        let mut skip: Vec<SocketAddr> = Vec::new();
        // A selector older than the member map may offer a server a reload just removed;
        // skip it once and choose again.
        for _ in 0..2 {
            let max = self.shared.members.load().list.len() + 1;
            let b = self.lb.select_with(b"", max, |b, _ready| {
                inet(b).is_some_and(|a| !tried.contains(&a) && !skip.contains(&a))
            })?;
            let addr = inet(&b)?;
            if let Some(stats) = self.shared.members.load().get(&addr) {
                return Some(stats.clone());
            }
            skip.push(addr);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamsConfig;

    fn pool_cfg(yaml_servers: &str, extra: &str) -> PoolConfig {
        let text = format!("pools:\n  p:\n{extra}    servers:\n{yaml_servers}routes:\n  - {{ pool: p }}\n");
        UpstreamsConfig::parse("t.yaml", &text).expect("valid").pools["p"].clone()
    }

    const THREE: &str = "      - { id: a, address: 127.0.0.1:9001 }\n      - { id: b, address: 127.0.0.1:9002 }\n      - { id: c, address: 127.0.0.1:9003 }\n";

    #[test]
    fn live_state_survives_rebuilds_and_strategy_changes() {
        let pool = Pool::new("p", &pool_cfg(THREE, "    strategy: round_robin\n"));
        let a = pool
            .members()
            .get(&"127.0.0.1:9001".parse().expect("addr"))
            .cloned()
            .expect("a");
        let _inflight = a.load.track();
        // Re-weight (selector rebuild) and switch strategy.
        let cfg = pool_cfg(
            &THREE.replace("9002 }", "9002, weight: 3 }"),
            "    strategy: least_connections\n",
        );
        assert!(pool.apply(&cfg).is_empty());
        let a2 = pool
            .members()
            .get(&"127.0.0.1:9001".parse().expect("addr"))
            .cloned()
            .expect("a");
        assert!(Arc::ptr_eq(&a, &a2));
        // least_connections now avoids the busy `a`.
        for _ in 0..20 {
            assert_ne!(pool.select(&[]).expect("pick").addr, a.addr);
        }
    }

    #[test]
    fn new_servers_wait_for_their_first_check_and_tried_ones_are_skipped() {
        let hc = "    health_check: { path: /health, interval_ms: 100 }\n";
        let pool = Pool::new("p", &pool_cfg(THREE, hc));
        assert!(pool.select(&[]).is_none(), "all pending");
        for s in &pool.members().list {
            s.record_check(true, 2, 2);
        }
        let first = pool.select(&[]).expect("pick");
        let second = pool.select(&[first.addr]).expect("pick");
        assert_ne!(first.addr, second.addr);
        let more = format!("{THREE}      - {{ id: d, address: 127.0.0.1:9004 }}\n");
        let added = pool.apply(&pool_cfg(&more, hc));
        assert_eq!(added.len(), 1);
        let d = added[0].addr;
        for _ in 0..30 {
            assert_ne!(pool.select(&[]).expect("pick").addr, d);
        }
    }
}
