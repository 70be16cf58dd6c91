//! The state of one simulated backend, shared by its request handlers, its
//! handle and its phase driver.
//!
//! The profile (base plus phases plus run-time changes) sits behind one
//! mutex with the backend's RNG; a request takes it twice, briefly: once on
//! arrival to draw its fate and service time, once when it gets a slot to
//! read the slowdown then in force.
//!
//! Draws: a request that carries its index in the load draws from
//! [`request_stream`]`(seed, id, index)` and [`size_stream`]`(seed, index)`, so its fate and
//! service time do not
//! depend on what else the backend served; any other request draws from the
//! backend's own stream, [`backend_stream`]`(seed, id)`. Nothing depends on
//! the process, so a run can be repeated. Everything a request only bumps
//! (counters) or a test flips (health, status) is an atomic. No lock is ever
//! held across an `.await`.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hyper::header::HeaderValue;
use rand::rngs::SmallRng;
use tokio::sync::Notify;

use super::control::{Control, Stats};
use super::orca::{OrcaReport, Rate};
use super::slots::Slots;
use crate::model::{backend_stream, request_stream, size_stream, Dist, Profile};

/// How response bodies are padded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Padding {
    /// A `"pad"` string of exactly this length (`BackendSpec::body_bytes`).
    Pad(usize),
    /// The whole body this long, when that exceeds the bare JSON reply
    /// (`Profile::response_bytes`).
    Total(usize),
}

pub(crate) use crate::model::Fate;

#[derive(Debug)]
pub(crate) struct Plan {
    pub fate: Fate,
    /// Service time before slowdown, ms.
    pub service_ms: f64,
    pub queue: u32,
    pub orca: bool,
}

#[derive(Debug)]
struct Model {
    profile: Profile,
    rng: SmallRng,
}

#[derive(Debug)]
pub(crate) struct Sim {
    pub id: String,
    pub seed: u64,
    pub id_header: HeaderValue,
    pub epoch: Instant,
    model: Mutex<Model>,
    pub slots: Arc<Slots>,
    status: AtomicU16,
    healthy: AtomicBool,
    pub served: AtomicU64,
    pub errors: AtomicU64,
    pub rejected: AtomicU64,
    pub health_checks: AtomicU64,
    pub hanging: AtomicU64,
    pub arrived: AtomicU64,
    pub measured: AtomicU64,
    rate: Mutex<Rate>,
    pub padding: Padding,
    /// `'x'` × the largest pad a body can need.
    pub pad: String,
    listening_since: Mutex<Option<Instant>>,
    /// Wakes the phase driver after a change of the profile.
    pub changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent; a panic elsewhere
    // must not take the backend down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    pub fn new(
        profile: Profile,
        epoch: Instant,
        seed: u64,
        status: u16,
        padding: Padding,
        id_header: HeaderValue,
    ) -> Self {
        let pad = match padding {
            Padding::Pad(n) | Padding::Total(n) => "x".repeat(n),
        };
        let slots = Slots::new(profile.effective(0.0).slots);
        Self {
            id: profile.id.clone(),
            seed,
            id_header,
            epoch,
            model: Mutex::new(Model {
                rng: backend_stream(seed, &profile.id),
                profile,
            }),
            slots,
            status: AtomicU16::new(status),
            healthy: AtomicBool::new(true),
            served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            hanging: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            rate: Mutex::new(Rate::new()),
            padding,
            pad,
            listening_since: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    /// Seconds since the epoch, 0 before it: until the epoch a backend is
    /// in its initial state.
    pub fn t_s(&self) -> f64 {
        Instant::now().saturating_duration_since(self.epoch).as_secs_f64()
    }

    pub fn profile(&self) -> Profile {
        lock(&self.model).profile.clone()
    }

    /// Whether the backend should be down at `t_s`, and the next phase
    /// boundary after it (seconds since the epoch), if any.
    pub fn schedule(&self, t_s: f64) -> (bool, u32, Option<f64>) {
        let m = lock(&self.model);
        let eff = m.profile.effective(t_s);
        let next = m
            .profile
            .phases
            .iter()
            .map(|p| p.at_s)
            .filter(|&at| at > t_s)
            .min_by(f64::total_cmp);
        (eff.down, eff.slots, next)
    }

    /// Draws a request's plan: from its own stream when it carries its
    /// index in the load (`request`), else from the backend's.
    pub fn plan(&self, path: &str, request: Option<u64>) -> Plan {
        let t = self.t_s();
        let mut m = lock(&self.model);
        let Model { profile, rng } = &mut *m;
        let e = profile.effective(t).errors;
        let draw = match request {
            Some(index) => profile.draw(
                &e,
                path,
                &mut request_stream(self.seed, &self.id, index),
                Some(&mut size_stream(self.seed, index)),
            ),
            None => profile.draw(&e, path, rng, None),
        };
        Plan {
            fate: draw.fate,
            service_ms: draw.service_ms,
            queue: profile.queue,
            orca: profile.orca,
        }
    }

    /// The service-time multiplier in force now.
    pub fn slowdown(&self) -> f64 {
        let t = self.t_s();
        lock(&self.model).profile.effective(t).slowdown
    }

    /// Status of normal responses (`set_status`).
    pub fn status(&self) -> u16 {
        self.status.load(Ordering::Relaxed)
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Makes the default service time constant (`set_delay`).
    pub fn set_delay_ms(&self, ms: f64) {
        lock(&self.model).profile.service = Dist::Constant { ms };
    }

    pub fn set_listening(&self, listening: bool) {
        *lock(&self.listening_since) = listening.then(Instant::now);
    }

    /// Records a request that finished its service.
    pub fn completed(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
        lock(&self.rate).record();
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn orca(&self) -> OrcaReport {
        let (_, queued, _, util) = self.slots.snapshot();
        OrcaReport {
            cpu_utilization: util,
            rps_fractional: lock(&self.rate).read(),
            queue: f64::from(queued),
        }
    }

    /// Applies a run-time change. Over HTTP (`http: true`) going down waits
    /// 50 ms so that the answer to the change still gets out.
    pub fn control(&self, c: &Control, http: bool) -> Result<Stats, String> {
        let now = self.t_s();
        let at = if http && c.down == Some(true) { now + 0.05 } else { now };
        let slots = {
            let mut m = lock(&self.model);
            m.profile = c.applied_to(&m.profile, at)?;
            m.profile.effective(now).slots
        };
        self.slots.set_limit(slots);
        if let Some(h) = c.healthy {
            self.set_healthy(h);
        }
        if let Some(s) = c.status {
            self.set_status(s);
        }
        self.changed.notify_one();
        Ok(self.stats_at(at))
    }

    pub fn stats(&self) -> Stats {
        self.stats_at(self.t_s())
    }

    fn stats_at(&self, t_s: f64) -> Stats {
        let (eff, queue) = {
            let m = lock(&self.model);
            (m.profile.effective(t_s), m.profile.queue)
        };
        let (inflight, queued, _, util) = self.slots.snapshot();
        let since = *lock(&self.listening_since);
        Stats {
            id: self.id.clone(),
            t_s,
            inflight,
            queued,
            slots: eff.slots,
            queue,
            slot_utilisation_ewma: util,
            rps: lock(&self.rate).read(),
            served: self.served.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            hanging: self.hanging.load(Ordering::Relaxed),
            health_checks: self.health_checks.load(Ordering::Relaxed),
            arrived: self.arrived.load(Ordering::Relaxed),
            measured: self.measured.load(Ordering::Relaxed),
            uptime_s: since.map_or(0.0, |s| s.elapsed().as_secs_f64()),
            slowdown: eff.slowdown,
            error_rates: eff.errors,
            healthy: self.healthy(),
            down: eff.down || since.is_none(),
            status: self.status(),
        }
    }
}

/// Counts a hanging request for as long as it lives.
pub(crate) struct Hanging<'a>(&'a AtomicU64);

impl<'a> Hanging<'a> {
    pub fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Hanging<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
