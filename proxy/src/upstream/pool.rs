//! A pool: its servers' live state, its strategy, and the Pingora `LoadBalancer` that
//! selects among them.
//!
//! Ownership and update order (the control plane is the only writer, serialised by
//! `Pool::write_lock`):
//! 1. [`Pool::apply`] creates [`BackendStats`] for new servers (pending when the pool has
//!    active checks; each with a *slot*, its place in the pool's `ml` curves, taken from
//!    `PoolShared::slots`: the lowest free index, with a new generation, so the tables stay
//!    as long as the most servers the pool had at once), updates weights and ids of kept
//!    ones, and turns removed ones into
//!    *leaving* servers, which keep serving until every server of the pool is healthy or
//!    `removed_drain_ms` passes ([`Pool::retire_leaving`], called after every check round).
//!    It publishes the new member map (`PoolShared::members`).
//! 2. It then stores the new strategy parameters and pool settings.
//! 3. Finally it publishes the new backend set (members and leaving servers) to the
//!    discovery and runs `LoadBalancer::update`, which rebuilds the [`PoolSelector`] only
//!    when addresses or weights changed. The selector finds each backend's stats in the
//!    member map, so live state survives every rebuild.
//!
//! The `ml` scores have a writer of their own, the scorer (`ml::scorer`, a background
//! service): every refresh it publishes one immutable [`MlView`] per `ml` pool
//! (`PoolShared::ml`, an `ArcSwapOption`): the curves of the pool's servers indexed by slot,
//! and the outcome of the refresh. It reads the member map and each server's `Load`, never
//! writes them. A pick of an `ml` pool loads that view once and maps each sampled candidate
//! to its curve by the candidate's slot (`BackendStats::slot`), O(1); what decided (the
//! model, or the fallback and why, see `ml`) reaches [`Pool::select_decided`] through a
//! thread-local, since Pingora's `select_with` returns only the backend.
//!
//! Requests read one snapshot of each and never wait on the control plane. The one lock a
//! request may take is `Pool::eject_lock`, and only when a failure run would eject a server
//! (so that concurrent ejections cannot pass `max_ejection_percent` together).
//!
//! Which servers a pick considers, in order:
//! 1. healthy and not ejected (members and leaving servers);
//! 2. when fewer than `panic_threshold_percent` of the members are healthy and not ejected
//!    (leaving servers count for their replacements): every checked server that is not
//!    ejected, healthy or not (Envoy's panic routing, counted in
//!    `neurabalancer_upstream_panic_total`); a server still waiting for its first check is
//!    never picked;
//! 3. when that leaves nothing, ejected ones too (healthy ones only, outside panic).

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use futures::FutureExt;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use prometheus::IntCounter;

use super::backend::{BackendStats, Failure, Health, Membership, Slot};
use crate::clock;
use crate::config::PoolConfig;
use crate::metrics::metrics;
use crate::ml::{self, Decision, Fallback, MlView};
use crate::strategy::ml::MlPick;
use crate::strategy::{self, Candidates, Load, Params, StrategyKind};

/// A server removed by a reload that keeps serving for a while.
#[derive(Debug, Clone)]
pub struct Leaving {
    pub stats: Arc<BackendStats>,
    /// Clock ns after which it leaves whatever the state of its replacements.
    pub until_ns: u64,
}

/// The current members of a pool, in configuration order, and the servers leaving it.
#[derive(Debug, Default)]
pub struct Members {
    pub list: Vec<Arc<BackendStats>>,
    pub leaving: Vec<Leaving>,
    /// Members and leaving servers.
    by_addr: HashMap<SocketAddr, Arc<BackendStats>>,
}

impl Members {
    fn new(list: Vec<Arc<BackendStats>>, leaving: Vec<Leaving>) -> Self {
        let by_addr = list
            .iter()
            .chain(leaving.iter().map(|l| &l.stats))
            .map(|s| (s.addr, s.clone()))
            .collect();
        Members { list, leaving, by_addr }
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<BackendStats>> {
        self.by_addr.get(addr)
    }

    /// Members, then leaving servers.
    pub fn all(&self) -> impl Iterator<Item = &Arc<BackendStats>> {
        self.list.iter().chain(self.leaving.iter().map(|l| &l.stats))
    }
}

/// State shared between a pool and every selector built for it.
#[derive(Debug)]
pub struct PoolShared {
    pub name: Arc<str>,
    pub members: ArcSwap<Members>,
    pub params: ArcSwap<Params>,
    /// `panic_threshold_percent`.
    panic_threshold: AtomicU32,
    /// `neurabalancer_upstream_panic_total{pool}`, looked up once.
    panic_total: IntCounter,
    /// The latest `ml` scores and refresh outcome; written by the scorer only.
    pub ml: ArcSwapOption<MlView>,
    /// The servers' slots (control plane only).
    slots: Mutex<Slots>,
    /// `neurabalancer_ml_decisions_total{pool}`, looked up once.
    ml_decisions: IntCounter,
}

impl PoolShared {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `s` gone from the pool and frees its slot.
    fn gone(&self, s: &BackendStats) {
        s.set_membership(Membership::Gone);
        self.slots().release(s.slot());
    }

    fn new(name: Arc<str>, kind: StrategyKind) -> Arc<Self> {
        let panic_total = metrics().panic_routing.with_label_values(&[&*name]);
        let ml_decisions = metrics().ml_decisions.with_label_values(&[&*name]);
        Arc::new(PoolShared {
            name,
            members: ArcSwap::from_pointee(Members::default()),
            params: ArcSwap::from_pointee(Params::new(kind)),
            panic_threshold: AtomicU32::new(0),
            panic_total,
            ml: ArcSwapOption::empty(),
            slots: Mutex::default(),
            ml_decisions,
        })
    }
}

thread_local! {
    /// What decided the latest pick on this thread. Pingora's `select_with` runs our
    /// iterator synchronously on the caller's thread and returns only the backend, so
    /// [`PoolIter::next`] leaves its [`Decision`] here and [`Pool::select_decided`] takes it
    /// right after.
    static LAST_DECISION: Cell<Decision> = const { Cell::new(Decision::Classic) };
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
            panicked: false,
        }
    }
}

impl PoolSelector {
    /// One pick among `view`'s eligible candidates, and what decided it: the pool's
    /// strategy, or for `ml` the model's curves when they are usable (see `ml`), else the
    /// fallback strategy.
    fn pick<R: rand::Rng + ?Sized>(
        &self,
        params: &Params,
        view: &View<'_>,
        now_ns: u64,
        rng: &mut R,
    ) -> Option<(usize, Decision)> {
        if params.kind != StrategyKind::Ml {
            return strategy::pick(params, &self.state, view, now_ns, rng).map(|i| (i, Decision::Classic));
        }
        let ml_view = self.shared.ml.load();
        let reason = match ml::usable(ml_view.as_deref(), now_ns) {
            Ok(scores) => {
                let curve = |i: usize| scores.curve(self.entries[i].1.slot());
                match strategy::ml::pick(params, self.state.rif_window(), view, curve, now_ns, rng) {
                    MlPick::Chosen { index, .. } => {
                        // The level the pick read: our requests in flight there, plus the
                        // growth of its reported queue since the scoring.
                        let predicted_us = curve(index).map_or(f64::NAN, |c| {
                            c.predicted_us(c.level(view.load(index), now_ns, params.ml.orca))
                        });
                        return Some((index, Decision::Ml { predicted_us }));
                    }
                    MlPick::None => return None,
                    MlPick::NoCurve => Fallback::NoScores,
                }
            }
            Err(reason) => reason,
        };
        // `pick` with kind `ml` decides as `params.ml.fallback` does.
        strategy::pick(params, &self.state, view, now_ns, rng).map(|i| (i, Decision::Fallback(reason)))
    }

    /// Panic routing: fewer than the threshold share of the members healthy and not ejected
    /// (leaving servers that are count for the members replacing them).
    fn in_panic(&self, now_ns: u64) -> bool {
        let threshold = self.shared.panic_threshold.load(Relaxed) as usize;
        if threshold == 0 {
            return false;
        }
        let (mut members, mut healthy) = (0usize, 0usize);
        for (_, s) in &self.entries {
            match s.membership() {
                Membership::Gone => continue,
                Membership::Member => members += 1,
                Membership::Leaving => {}
            }
            if s.eligible(now_ns) {
                healthy += 1;
            }
        }
        healthy * 100 < threshold * members
    }
}

/// Yields backends in the strategy's order of preference: each call picks again among the
/// eligible backends not yielded yet (see the module docs for which are eligible).
pub struct PoolIter {
    sel: Arc<PoolSelector>,
    yielded: Vec<bool>,
    /// Counted once per request.
    panicked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Healthy and not ejected.
    Healthy,
    /// Healthy, ejected or not.
    HealthyEjected,
    /// Checked at least once, healthy or not, not ejected.
    Panic,
    /// Checked at least once, ejected or not.
    PanicEjected,
}

struct View<'a> {
    sel: &'a PoolSelector,
    yielded: &'a [bool],
    now_ns: u64,
    tier: Tier,
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
        if self.yielded.get(i).copied().unwrap_or(false) || s.is_gone() {
            return false;
        }
        let ejected = || s.is_ejected(self.now_ns);
        match self.tier {
            Tier::Healthy => s.is_healthy() && !ejected(),
            Tier::HealthyEjected => s.is_healthy(),
            Tier::Panic => s.health() != Health::Pending && !ejected(),
            Tier::PanicEjected => s.health() != Health::Pending,
        }
    }
}

impl BackendIter for PoolIter {
    fn next(&mut self) -> Option<&Backend> {
        let sel = &*self.sel;
        let params = **sel.shared.params.load();
        let now_ns = clock::now_ns();
        let mut rng = rand::rng();
        let panic = sel.in_panic(now_ns);
        let tiers: [Tier; 2] = if panic {
            [Tier::Panic, Tier::PanicEjected]
        } else {
            [Tier::Healthy, Tier::HealthyEjected]
        };
        let mut view = View {
            sel,
            yielded: &self.yielded,
            now_ns,
            tier: tiers[0],
        };
        let (pick, decision) = sel.pick(&params, &view, now_ns, &mut rng).or_else(|| {
            view.tier = tiers[1];
            sel.pick(&params, &view, now_ns, &mut rng)
        })?;
        LAST_DECISION.set(decision);
        if panic && !self.panicked {
            self.panicked = true;
            sel.shared.panic_total.inc();
        }
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
    /// Serialises membership changes (reloads and retiring leaving servers; control plane only).
    write_lock: Mutex<()>,
    /// Serialises ejection decisions, so concurrent ones respect the cap together.
    eject_lock: Mutex<()>,
    /// Woken when a reload added servers: the health checker probes them at once.
    pub added: tokio::sync::Notify,
}

/// What [`Pool::record_failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// The failure did not complete a run.
    None,
    /// Ejected for this many ms.
    Ejected(u64),
    /// A run was complete, but `max_ejection_percent` servers are ejected already.
    Capped,
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
            write_lock: Mutex::new(()),
            eject_lock: Mutex::new(()),
            added: tokio::sync::Notify::new(),
        });
        pool.apply(cfg);
        pool
    }

    /// Applies a validated pool configuration; returns the servers that are new.
    pub fn apply(&self, cfg: &PoolConfig) -> Vec<Arc<BackendStats>> {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.shared.members.load_full();
        let now = clock::now_ns();
        let has_checks = cfg.health_check.is_some();
        let mut added = Vec::new();
        let mut list = Vec::with_capacity(cfg.servers.len());
        for s in &cfg.servers {
            let stats = match old.get(&s.resolved) {
                Some(st) => {
                    st.set_id(&s.id);
                    st.set_weight(s.weight);
                    st.set_membership(Membership::Member);
                    if !has_checks && !st.is_healthy() {
                        st.set_trusted();
                    }
                    st.clone()
                }
                None => {
                    let st = BackendStats::new(self.name.clone(), &s.id, s.resolved, s.weight, has_checks);
                    st.set_slot(self.shared.slots().take());
                    added.push(st.clone());
                    st
                }
            };
            list.push(stats);
        }
        let kept: HashSet<SocketAddr> = list.iter().map(|s| s.addr).collect();
        let drain_ns = cfg.removed_drain_ms.saturating_mul(1_000_000);
        let mut leaving = Vec::new();
        for s in old.all().filter(|s| !kept.contains(&s.addr)) {
            let until_ns = old
                .leaving
                .iter()
                .find(|l| Arc::ptr_eq(&l.stats, s))
                .map(|l| l.until_ns)
                .unwrap_or_else(|| now.saturating_add(drain_ns));
            // A server that never passed a check never served: nothing to keep.
            if drain_ns > 0 && s.health() != Health::Pending {
                s.set_membership(Membership::Leaving);
                leaving.push(Leaving {
                    stats: s.clone(),
                    until_ns,
                });
            } else {
                self.shared.gone(s);
            }
        }
        self.shared.panic_threshold.store(cfg.panic_threshold_percent, Relaxed);
        self.shared.params.store(Arc::new(Params {
            kind: cfg.strategy,
            decay_ns: cfg.ewma_decay_ms as f64 * 1e6,
            failure_penalty_ns: cfg.failure_penalty_ms as f64 * 1e6,
            prequal: cfg.prequal,
            ml: cfg.ml,
        }));
        self.config.store(Arc::new(cfg.clone()));
        let leaving = still_leaving(&list, leaving, now, |s| self.shared.gone(s));
        self.publish(Members::new(list, leaving));
        if !added.is_empty() {
            self.added.notify_one();
        }
        added
    }

    /// Retires leaving servers once every member is healthy or their drain time is over;
    /// the health checker calls it after every round. Returns how many left.
    pub fn retire_leaving(&self) -> usize {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.shared.members.load_full();
        if old.leaving.is_empty() {
            return 0;
        }
        let leaving = still_leaving(&old.list, old.leaving.clone(), clock::now_ns(), |s| self.shared.gone(s));
        let gone = old.leaving.len() - leaving.len();
        if gone > 0 {
            self.publish(Members::new(old.list.clone(), leaving));
        }
        gone
    }

    /// Publishes members, then the backend set the selector is built from.
    fn publish(&self, members: Members) {
        let set: BTreeSet<Backend> = members
            .all()
            .map(|s| Backend {
                addr: PSocketAddr::Inet(s.addr),
                weight: s.weight() as usize,
                ext: Default::default(),
            })
            .collect();
        self.shared.members.store(Arc::new(members));
        self.discovered.store(Arc::new(set));
        // The discovery never waits, so the update completes on its first poll.
        match self.lb.update().now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::error!(pool = %self.name, error = %e, "selector update failed"),
            None => tracing::error!(pool = %self.name, "selector update did not complete at once"),
        }
    }

    /// Counts a failure of `backend` and ejects it when that completes a run and the pool's
    /// ejection cap allows it.
    pub fn record_failure(&self, backend: &BackendStats, kind: Failure) -> Ejection {
        let cfg = self.config.load();
        let o = &cfg.outlier_detection;
        if !backend.record_failure(kind, o) {
            return Ejection::None;
        }
        let _e = self.eject_lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = clock::now_ns();
        if backend.is_ejected(now) {
            // Another request's failure completed the same run a moment ago and ejected it.
            return Ejection::None;
        }
        let members = self.shared.members.load();
        let ejected = members.list.iter().filter(|s| s.is_ejected(now)).count();
        // Leaving servers are not counted and may always be ejected: they are on their way out.
        if backend.membership() == Membership::Member && ejected >= o.max_ejected(members.list.len()) {
            backend.ejection_refused();
            return Ejection::Capped;
        }
        Ejection::Ejected(backend.eject(o, now))
    }

    pub fn config(&self) -> Arc<PoolConfig> {
        self.config.load_full()
    }

    pub fn members(&self) -> Arc<Members> {
        self.shared.members.load_full()
    }

    pub fn has_healthy(&self) -> bool {
        self.shared.members.load().all().any(|s| s.is_healthy())
    }

    /// Chooses a backend, excluding those already tried by this request.
    ///
    /// Pingora's own readiness flag is ignored: it is keyed by address *and* weight, so a
    /// selector built just before a re-weighting reload would see every backend as "not
    /// ready". Eligibility (health, ejection) is decided by our selector from `BackendStats`.
    pub fn select(&self, tried: &[SocketAddr]) -> Option<Arc<BackendStats>> {
        self.select_decided(tried).map(|(b, _)| b)
    }

    /// [`Pool::select`], and what decided the choice; counts `ml` decisions and fallbacks.
    pub fn select_decided(&self, tried: &[SocketAddr]) -> Option<(Arc<BackendStats>, Decision)> {
        LAST_DECISION.set(Decision::Classic);
        let chosen = self.select_inner(tried)?;
        let decision = LAST_DECISION.replace(Decision::Classic);
        match decision {
            Decision::Classic => {}
            Decision::Ml { .. } => self.shared.ml_decisions.inc(),
            Decision::Fallback(reason) => metrics().ml_fallback_for(reason).inc(),
        }
        Some((chosen, decision))
    }

    fn select_inner(&self, tried: &[SocketAddr]) -> Option<Arc<BackendStats>> {
        let mut skip: Vec<SocketAddr> = Vec::new();
        // A selector older than the member map may offer a server a reload just removed;
        // skip it once and choose again.
        for _ in 0..2 {
            let max = self.shared.members.load().by_addr.len() + 1;
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

/// The leaving servers that stay: none once every member is healthy, and each only until its
/// drain time; `gone` is called with each that goes.
fn still_leaving(
    members: &[Arc<BackendStats>],
    leaving: Vec<Leaving>,
    now_ns: u64,
    mut gone: impl FnMut(&BackendStats),
) -> Vec<Leaving> {
    let replaced = members.iter().all(|s| s.is_healthy());
    leaving
        .into_iter()
        .filter(|l| {
            let stay = !replaced && now_ns < l.until_ns;
            if !stay {
                gone(&l.stats);
            }
            stay
        })
        .collect()
}

/// A pool's `ml` slots: indexes given out lowest free first, each use with a generation of
/// its own.
#[derive(Debug, Default)]
struct Slots {
    /// The generation of each index's latest use.
    generations: Vec<u32>,
    free: BinaryHeap<Reverse<u32>>,
}

impl Slots {
    fn take(&mut self) -> Slot {
        match self.free.pop() {
            Some(Reverse(index)) => Slot {
                index,
                generation: self.generations[index as usize],
            },
            None => {
                let index = u32::try_from(self.generations.len()).expect("fewer than 2^32 servers in a pool");
                self.generations.push(0);
                Slot { index, generation: 0 }
            }
        }
    }

    /// Frees `slot` for the next server, under a new generation.
    fn release(&mut self, slot: Slot) {
        let Some(generation) = self.generations.get_mut(slot.index as usize) else {
            return;
        };
        if *generation != slot.generation {
            return; // not this holder's (already released)
        }
        *generation = generation.wrapping_add(1);
        self.free.push(Reverse(slot.index));
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

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn picks(pool: &Pool, n: usize) -> BTreeSet<u16> {
        (0..n).filter_map(|_| pool.select(&[])).map(|s| s.addr.port()).collect()
    }

    #[test]
    fn ejection_is_capped_and_never_takes_the_last_server() {
        let pool = Pool::new("p", &pool_cfg(THREE, "    strategy: round_robin\n"));
        let members = pool.members();
        let mut outcomes = Vec::new();
        for s in &members.list {
            for _ in 0..5 {
                outcomes.push(pool.record_failure(s, Failure::Gateway5xx));
            }
        }
        let ejected = outcomes.iter().filter(|o| matches!(o, Ejection::Ejected(_))).count();
        assert_eq!(ejected, 1, "10 % of three servers: one may be ejected, {outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == Ejection::Capped).count(), 2);
        assert_eq!(picks(&pool, 60).len(), 2, "the two that were not ejected keep serving");

        let one = "      - { id: a, address: 127.0.0.1:9001 }\n";
        let single = Pool::new("s", &pool_cfg(one, ""));
        let a = single.members().list[0].clone();
        for _ in 0..10 {
            assert_eq!(single.record_failure(&a, Failure::Connect), Ejection::Capped);
        }
        assert!(!a.is_ejected(clock::now_ns()));
    }

    #[test]
    fn application_500s_eject_nothing_by_default() {
        let pool = Pool::new("p", &pool_cfg(THREE, ""));
        let a = pool.members().list[0].clone();
        for _ in 0..100 {
            assert_eq!(pool.record_failure(&a, Failure::Status5xx), Ejection::None);
        }
        assert_eq!(picks(&pool, 60).len(), 3);
    }

    #[test]
    fn below_the_panic_threshold_unhealthy_servers_take_traffic() {
        let four = format!("{THREE}      - {{ id: d, address: 127.0.0.1:9004 }}\n");
        let hc = "    health_check: { path: /health, interval_ms: 100, rise: 1, fall: 1 }\n";
        let pool = Pool::new("p", &pool_cfg(&four, hc));
        let list = pool.members().list.clone();
        list[0].record_check(true, 1, 1);
        for s in &list[1..] {
            s.record_check(false, 1, 1);
        }
        let before = pool.shared.panic_total.get();
        assert_eq!(
            picks(&pool, 80).len(),
            4,
            "one of four healthy (< 50 %): panic routing over all four"
        );
        assert_eq!(
            pool.shared.panic_total.get() - before,
            80,
            "every panic decision is counted"
        );

        let pool = Pool::new("q", &pool_cfg(&four, &format!("{hc}    panic_threshold_percent: 0\n")));
        let list = pool.members().list.clone();
        list[0].record_check(true, 1, 1);
        for s in &list[1..] {
            s.record_check(false, 1, 1);
        }
        assert_eq!(
            picks(&pool, 40),
            BTreeSet::from([9001]),
            "threshold 0: healthy servers only"
        );
    }

    #[test]
    fn removed_servers_serve_until_their_replacements_are_healthy() {
        let hc = "    health_check: { path: /health, interval_ms: 100 }\n";
        let pool = Pool::new("p", &pool_cfg(THREE, hc));
        for s in &pool.members().list {
            s.record_check(true, 2, 2);
        }
        let new = "      - { id: x, address: 127.0.0.1:9101 }\n      - { id: y, address: 127.0.0.1:9102 }\n";
        let added = pool.apply(&pool_cfg(new, hc));
        assert_eq!(added.len(), 2);
        assert_eq!(pool.members().leaving.len(), 3);
        assert_eq!(
            picks(&pool, 60),
            BTreeSet::from([9001, 9002, 9003]),
            "replacements pending: the old ones serve"
        );
        assert_eq!(pool.retire_leaving(), 0);
        added[0].record_check(true, 2, 2);
        assert_eq!(pool.retire_leaving(), 0, "one replacement still pending");
        added[1].record_check(true, 2, 2);
        assert_eq!(pool.retire_leaving(), 3);
        assert_eq!(picks(&pool, 60), BTreeSet::from([9101, 9102]));
        assert!(pool.members().get(&addr(9001)).is_none());

        // With removed_drain_ms: 0 they leave at once, and pending replacements serve nothing.
        let no_drain = format!("{hc}    removed_drain_ms: 0\n");
        let pool = Pool::new("q", &pool_cfg(THREE, &no_drain));
        for s in &pool.members().list {
            s.record_check(true, 2, 2);
        }
        pool.apply(&pool_cfg(new, &no_drain));
        assert!(pool.members().leaving.is_empty());
        assert!(pool.select(&[]).is_none());
    }

    fn curve(ms: f32) -> crate::strategy::ml::Curve {
        let params = Params::new(StrategyKind::Ml);
        let levels = crate::strategy::ml::CURVE_LEVELS;
        crate::strategy::ml::Curve::new(&vec![ms; levels], &vec![0.0; levels], &params, 1.0).expect("finite")
    }

    /// A member has no curve in the latest scores (`why`): the fallback decides, with
    /// `no_scores`, until a refresh scores every member; then the model does.
    fn unscored_until_a_refresh(pool: &Pool, why: &str) {
        let (_, d) = pool.select_decided(&[]).expect("pick");
        assert_eq!(d, Decision::Fallback(Fallback::NoScores), "{why}");
        publish(pool, clock::now_ns(), None, |_| 1.0);
        let (_, d) = pool.select_decided(&[]).expect("pick");
        assert!(matches!(d, Decision::Ml { .. }), "{why}: {d:?}");
    }

    /// Publishes scores for `pool` as the scorer would: `ms(port)` per server.
    fn publish(pool: &Pool, at_ns: u64, failure: Option<Fallback>, ms: impl Fn(u16) -> f32) {
        let curves: Vec<_> = pool
            .members()
            .list
            .iter()
            .map(|s| (s.slot(), curve(ms(s.addr.port()))))
            .collect();
        pool.shared.ml.store(Some(Arc::new(MlView {
            scores: Some(Arc::new(ml::PoolScores::new(at_ns, "v1".into(), curves))),
            failure,
            stale_ns: 1_000_000_000,
        })));
    }

    #[test]
    fn ml_decides_by_the_curves_and_falls_back_with_the_reason() {
        let pool = Pool::new("p", &pool_cfg(THREE, "    strategy: ml\n"));
        let slots: BTreeSet<u32> = pool.members().list.iter().map(|s| s.slot().index).collect();
        assert_eq!(slots, BTreeSet::from([0, 1, 2]), "each server has its own slot");
        let (_, d) = pool.select_decided(&[]).expect("pick");
        assert_eq!(
            d,
            Decision::Fallback(Fallback::NoScores),
            "no scores yet: the fallback decides"
        );

        // 9001 is predicted 100x slower than the others: never chosen, not even to explore
        // (exploration stays within twice the best cost).
        publish(
            &pool,
            clock::now_ns(),
            None,
            |port| if port == 9001 { 100.0 } else { 1.0 },
        );
        for _ in 0..300 {
            let (s, d) = pool.select_decided(&[]).expect("pick");
            assert_ne!(s.addr.port(), 9001);
            assert_eq!(d, Decision::Ml { predicted_us: 1000.0 });
        }
        // Retries exclude what was tried, and the model still decides among the rest.
        let (s, d) = pool.select_decided(&[addr(9002)]).expect("pick");
        assert_eq!((s.addr.port(), d), (9003, Decision::Ml { predicted_us: 1000.0 }));
        let (s, _) = pool
            .select_decided(&[addr(9002), addr(9003)])
            .expect("the slow one is left");
        assert_eq!(s.addr.port(), 9001);
        assert!(pool.select_decided(&[addr(9001), addr(9002), addr(9003)]).is_none());

        // A failed refresh: the fallback decides at once, with the refresh's reason.
        publish(&pool, clock::now_ns(), Some(Fallback::Timeout), |_| 1.0);
        let (_, d) = pool.select_decided(&[]).expect("pick");
        assert_eq!(d, Decision::Fallback(Fallback::Timeout));
        // Scores older than stale_ms.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let old = clock::now_ns().saturating_sub(2_000_000_000);
        publish(&pool, old.max(1), None, |_| 1.0);
        if old > 0 {
            let (_, d) = pool.select_decided(&[]).expect("pick");
            assert_eq!(d, Decision::Fallback(Fallback::StaleScores));
        }
        // A server added since the last refresh has no curve: the fallback decides until the
        // next refresh scores it.
        publish(&pool, clock::now_ns(), None, |_| 1.0);
        let four = format!("{THREE}      - {{ id: d, address: 127.0.0.1:9004 }}\n");
        let added = pool.apply(&pool_cfg(&four, "    strategy: ml\n"));
        assert_eq!(added[0].slot(), Slot::new(3, 0), "a new slot, never one in use");
        unscored_until_a_refresh(&pool, "a new server");

        // A gone server's index goes to the next server that joins, under a new generation:
        // the tables stay as long as the most servers the pool had at once, and scores of
        // the old holder are not the new one's. (A replacement in the same reload joins
        // before its predecessor leaves, so it takes the next index.)
        let with = |id: &str, port: u16| {
            four.replace(
                "id: d, address: 127.0.0.1:9004",
                &format!("id: {id}, address: 127.0.0.1:{port}"),
            )
        };
        let old_d = pool.members().get(&addr(9004)).expect("d").clone();
        let added = pool.apply(&pool_cfg(&with("e", 9005), "    strategy: ml\n"));
        assert!(old_d.is_gone());
        assert_eq!(added[0].slot(), Slot::new(4, 0));
        // The latest scores still hold d's curve at index 3, generation 0.
        let added = pool.apply(&pool_cfg(&with("f", 9006), "    strategy: ml\n"));
        assert_eq!(added[0].slot(), Slot::new(3, 1), "d's index, reused");
        unscored_until_a_refresh(&pool, "d's curve is not f's");
        let mut most = 0;
        for round in 0..50u16 {
            let added = pool.apply(&pool_cfg(&with("g", 9100 + round), "    strategy: ml\n"));
            most = most.max(added[0].slot().index);
        }
        assert_eq!(most, 4, "churn reuses slots");

        // Another strategy: no ML decision at all.
        pool.apply(&pool_cfg(&four, "    strategy: p2c_ewma\n"));
        let (_, d) = pool.select_decided(&[]).expect("pick");
        assert_eq!(d, Decision::Classic);
    }

    #[test]
    fn a_removed_server_added_back_is_a_member_again() {
        let hc = "    health_check: { path: /health, interval_ms: 100 }\n";
        let pool = Pool::new("p", &pool_cfg(THREE, hc));
        for s in &pool.members().list {
            s.record_check(true, 2, 2);
        }
        let a = pool.members().list[0].clone();
        let two = "      - { id: b, address: 127.0.0.1:9002 }\n      - { id: n, address: 127.0.0.1:9009 }\n";
        pool.apply(&pool_cfg(two, hc));
        assert!(a.is_leaving());
        pool.apply(&pool_cfg(THREE, hc));
        assert_eq!(a.membership(), Membership::Member);
        assert!(Arc::ptr_eq(&a, &pool.members().list[0]), "live state kept");
    }
}
