//! A running simulated backend: spawning, the handle, and its life over time.
//!
//! A backend is a [`Profile`] served over HTTP (see [`crate::sim`] for how
//! requests are answered). Two ways in:
//!
//! * [`spawn_profile`]: a profile and the fleet's epoch — what fleet files,
//!   `nb-bench` and the lab use ([`spawn_profile_seeded`] with the fleet's
//!   seed).
//! * [`spawn`]: the original [`BackendSpec`] API of the proxy's tests, mapped
//!   to a profile with a constant service time and slots and a queue so large
//!   they never fill, no ORCA header, so those tests see exactly the backend
//!   they always did.
//!
//! Life over time: the listener is up or down. Phases (`down: true/false`)
//! and [`BackendHandle::control`] move it, and so do [`BackendHandle::stop`]
//! (a crash: listener and every connection dropped) and
//! [`BackendHandle::restart`]. While down the port stays reserved (bound, not
//! listening), so connections are refused and the backend comes back on the
//! same address. A per-backend driver task sleeps until the next phase
//! boundary (or a change of the profile) and applies it then; it reacts
//! only to *changes* of the phase state, so a manual stop or restart holds
//! until the next boundary that says otherwise.
//!
//! Every backend has a seed ([`DEFAULT_SEED`] unless given): its random draws
//! come from it and its id only (see [`crate::model`]), so backends spawned
//! alike answer alike, in any process.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::StatusCode;
use tokio::net::TcpSocket;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::model::{Profile, DEFAULT_SEED};
use crate::server::{self, Running};
use crate::sim::state::{Padding, Sim};
use crate::sim::{Control, Stats};
use crate::spec::BackendSpec;

/// Header naming the backend that produced a response.
pub const BACKEND_ID_HEADER: &str = "x-backend-id";
/// Request header carrying the request's index in the load generator's schedule: the
/// backend draws the request's fate and service time from it
/// ([`request_stream`](crate::model::request_stream)), so every strategy of a repetition
/// faces the same draws.
pub const REQUEST_INDEX_HEADER: &str = "x-nb-request";
/// Request header (value `1`) marking a request of the measured window: the backend counts
/// them (`Stats::measured`), which is how the lab counts routing decisions, timeouts
/// included.
pub const MEASURED_HEADER: &str = "x-nb-measured";
/// Response header with the request's own service time (after slowdown):
/// `server-timing: service;dur=12.345` (milliseconds, 3 decimals; `dur=0` on fast and
/// queue-full 503s). The generator subtracts it from the latency to get the queueing
/// delay.
pub const SERVER_TIMING_HEADER: &str = "server-timing";
/// The `server-timing` metric name of the service time.
pub const SERVICE_METRIC: &str = "service";
/// The `server-timing` value of an answer given without service (fast and queue-full 503s).
pub const NO_SERVICE_TIMING: &str = "service;dur=0";

/// The `server-timing` value of a service time of `ms` milliseconds:
/// `service;dur=<ms>` with 3 decimals.
pub fn service_timing(ms: f64) -> String {
    format!("{SERVICE_METRIC};dur={ms:.3}")
}

/// The service time in a `server-timing` value (`service;dur=<ms>`, among other metrics).
pub fn parse_service_ms(value: &str) -> Option<f64> {
    value.split(',').find_map(|metric| {
        let mut parts = metric.split(';').map(str::trim);
        if parts.next()? != SERVICE_METRIC {
            return None;
        }
        parts.find_map(|p| {
            p.strip_prefix("dur=")?
                .parse::<f64>()
                .ok()
                .filter(|d| d.is_finite() && *d >= 0.0)
        })
    })
}
/// Path answered by health checks.
pub const HEALTH_PATH: &str = "/health";

/// How long the driver waits before retrying to listen again after a failure.
const RELISTEN_RETRY: Duration = Duration::from_millis(200);

/// Starts a backend as described by `spec` and returns once it is listening.
///
/// Fails if the address cannot be bound or `spec.status` is not a valid HTTP
/// status code. Must be called from within a Tokio runtime.
pub async fn spawn(spec: BackendSpec) -> io::Result<BackendHandle> {
    StatusCode::from_u16(spec.status)
        .map_err(|_| invalid_input(format!("backend {}: invalid status code {}", spec.id, spec.status)))?;
    let profile = spec.profile();
    start(
        profile,
        Instant::now(),
        spec.seed,
        spec.status,
        Padding::Pad(spec.body_bytes),
    )
    .await
}

/// Starts a backend following `profile`, its phases timed from `epoch`, and
/// returns once its address is bound: listening, or reserved if the profile
/// says it is down at first (it joins late). Listens on `profile.listen`,
/// else on 127.0.0.1 on a free port.
///
/// Its seed is [`DEFAULT_SEED`]; see [`spawn_profile_seeded`].
///
/// Fails if the profile is invalid ([`Profile::validate`]), its id is not a
/// valid header value, or the address cannot be bound.
pub async fn spawn_profile(profile: Profile, epoch: Instant) -> io::Result<BackendHandle> {
    spawn_profile_seeded(profile, epoch, DEFAULT_SEED).await
}

/// [`spawn_profile`] with the random draws seeded `seed`: the same seed, id
/// and profile draw the same fates and service times in any process (for
/// requests carrying `x-nb-request`, whatever else the backend served).
pub async fn spawn_profile_seeded(profile: Profile, epoch: Instant, seed: u64) -> io::Result<BackendHandle> {
    profile.validate().map_err(invalid_input)?;
    let padding = Padding::Total(profile.response_bytes);
    start(profile, epoch, seed, 200, padding).await
}

async fn start(
    mut profile: Profile,
    epoch: Instant,
    seed: u64,
    status: u16,
    padding: Padding,
) -> io::Result<BackendHandle> {
    let id_header = HeaderValue::from_str(&profile.id)
        .map_err(|_| invalid_input(format!("backend id {:?} is not a valid header value", profile.id)))?;
    let listen = profile
        .listen
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let socket = server::reserve(listen)?;
    let addr = socket.local_addr()?;
    profile.listen = Some(addr);
    let sim = Arc::new(Sim::new(profile, epoch, seed, status, padding, id_header));
    let (down, slots, _) = sim.schedule(sim.t_s());
    sim.slots.set_limit(slots);
    let state = if down {
        Listener::Down(Some(socket))
    } else {
        sim.set_listening(true);
        Listener::Up(Running::start(server::listen(socket)?, Arc::clone(&sim)))
    };
    let inner = Arc::new(Inner {
        addr,
        sim,
        listener: Mutex::new(state),
        driver: std::sync::Mutex::new(None),
    });
    let driver = tokio::spawn(drive(Arc::downgrade(&inner), down));
    *inner.driver.lock().unwrap_or_else(|e| e.into_inner()) = Some(driver);
    Ok(BackendHandle { inner })
}

/// Control over a running (or stopped) backend.
///
/// Clones share the backend; dropping the last clone stops it.
#[derive(Debug, Clone)]
pub struct BackendHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    sim: Arc<Sim>,
    /// An async mutex so that stops and restarts (from the handle or the
    /// driver) are serialised: a restart never races the listener of a stop.
    listener: Mutex<Listener>,
    driver: std::sync::Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
enum Listener {
    Up(Running),
    /// The port, reserved if that worked.
    Down(Option<TcpSocket>),
}

impl Drop for Inner {
    fn drop(&mut self) {
        let driver = self.driver.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = driver.take() {
            task.abort();
        }
    }
}

impl Inner {
    /// Crashes the backend: closes the listener and drops every connection.
    async fn go_down(&self) {
        let mut listener = self.listener.lock().await;
        if let Listener::Up(_) = &*listener {
            if let Listener::Up(running) = std::mem::replace(&mut *listener, Listener::Down(None)) {
                running.stop().await;
            }
            self.sim.set_listening(false);
            *listener = Listener::Down(server::reserve(self.addr).ok());
        }
    }

    /// Listens again on the same address; a no-op when up.
    async fn go_up(&self) -> io::Result<()> {
        let mut listener = self.listener.lock().await;
        if let Listener::Down(reserved) = &mut *listener {
            let socket = match reserved.take() {
                Some(s) => server::listen(s)?,
                None => server::bind(self.addr)?,
            };
            *listener = Listener::Up(Running::start(socket, Arc::clone(&self.sim)));
            self.sim.set_listening(true);
        }
        Ok(())
    }
}

/// Applies phase boundaries on time; ends when the backend is dropped.
async fn drive(inner: Weak<Inner>, mut down: bool) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let sim = Arc::clone(&strong.sim);
        let t = sim.t_s();
        let (want_down, slots, next) = sim.schedule(t);
        sim.slots.set_limit(slots);
        let mut retry = None;
        if want_down && !down {
            strong.go_down().await;
            tracing::info!(backend = %sim.id, addr = %strong.addr, t_s = t, "backend down (phase)");
            down = true;
        } else if !want_down && down {
            match strong.go_up().await {
                Ok(()) => {
                    tracing::info!(backend = %sim.id, addr = %strong.addr, t_s = t, "backend up (phase)");
                    down = false;
                }
                Err(err) => {
                    tracing::warn!(backend = %sim.id, addr = %strong.addr, "cannot listen again: {err}");
                    retry = Some(Instant::now() + RELISTEN_RETRY);
                }
            }
        }
        drop(strong);
        let boundary = next
            .and_then(|at| Duration::try_from_secs_f64(at).ok())
            .and_then(|d| sim.epoch.checked_add(d));
        let wake = match (boundary, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let changed = sim.changed.notified();
        match wake {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = changed => {}
                }
            }
            None => changed.await,
        }
    }
}

impl BackendHandle {
    /// The address actually bound (the real port when the spec said 0).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.inner.sim.id
    }

    /// The instant its phases are timed from.
    pub fn epoch(&self) -> Instant {
        self.inner.sim.epoch
    }

    /// The seed of its random draws.
    pub fn seed(&self) -> u64 {
        self.inner.sim.seed
    }

    /// Its state, for servers that report on it without keeping it alive.
    pub(crate) fn sim(&self) -> Arc<Sim> {
        Arc::clone(&self.inner.sim)
    }

    /// The profile as it stands, run-time changes included (as phases).
    pub fn profile(&self) -> Profile {
        self.inner.sim.profile()
    }

    /// What `GET /stats` would answer now.
    pub fn stats(&self) -> Stats {
        self.inner.sim.stats()
    }

    /// Changes the backend now, like `POST /control` but `down` takes effect
    /// before this returns (including `down: false`, which HTTP cannot reach).
    pub async fn control(&self, change: &Control) -> Result<Stats, String> {
        self.inner.sim.control(change, false)?;
        match change.down {
            Some(true) => self.inner.go_down().await,
            Some(false) => self
                .inner
                .go_up()
                .await
                .map_err(|e| format!("cannot listen again: {e}"))?,
            None => {}
        }
        Ok(self.stats())
    }

    /// Sets the delay (constant service time) of requests that arrive from
    /// now on; per-class service times of a profile are unaffected.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.sim.set_delay_ms(delay.as_secs_f64() * 1000.0);
    }

    /// Sets the status of non-health responses. A code that is not a valid
    /// HTTP status (outside 100..=999) is answered as 500.
    pub fn set_status(&self, code: u16) {
        self.inner.sim.set_status(code);
    }

    /// Makes `GET /health` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.inner.sim.set_healthy(healthy);
    }

    /// Non-health requests answered after their service time so far (across
    /// restarts); fast 503s and hangs are not counted.
    pub fn served(&self) -> u64 {
        self.inner.sim.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Health checks answered so far (across restarts), 200 or 503.
    pub fn health_checks(&self) -> u64 {
        self.inner.sim.health_checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the backend is currently listening.
    pub async fn is_running(&self) -> bool {
        matches!(*self.inner.listener.lock().await, Listener::Up(_))
    }

    /// Crashes the backend: closes the listener and drops every open
    /// connection, in-flight requests included. When it returns, connecting to
    /// [`addr`](Self::addr) is refused. Does nothing if already stopped.
    pub async fn stop(&self) {
        self.inner.go_down().await;
    }

    /// Listens again on the same address with the current settings. Does
    /// nothing if already running.
    pub async fn restart(&self) -> io::Result<()> {
        self.inner.go_up().await
    }
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}
