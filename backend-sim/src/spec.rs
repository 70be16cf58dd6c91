//! The simple description of one simulated backend.
//!
//! A [`BackendSpec`] is plain data with a builder so that tests read as
//! `BackendSpec::new("b1").with_delay(ms(50))`. It predates the full
//! [`Profile`] (slots, queue, distributions, errors, phases) and stays as the
//! API of the proxy's tests: [`crate::spawn`] turns it into a profile with a
//! constant service time, so many slots and so long a queue that neither ever
//! fills, and no ORCA header — a backend that behaves exactly as the original
//! delay-and-status simulator did. Use [`crate::spawn_profile`] for the rest.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::model::{Dist, Profile, DEFAULT_SEED};

/// Slots (and queue places) of a [`BackendSpec`] backend: more than any
/// test opens connections, so requests never wait for one another.
pub const SPEC_SLOTS: u32 = 1 << 20;

/// What a backend answers and where it listens. See [`crate::spawn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Reported in the `x-backend-id` header and the JSON body.
    pub id: String,
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Time every non-health request waits before it is answered.
    pub delay: Duration,
    /// Status code of non-health responses.
    pub status: u16,
    /// Length of the `"pad"` string added to every non-health JSON body (0: none).
    pub body_bytes: usize,
    /// Seed of the backend's random draws (a spec's service time is constant,
    /// so it only matters to what `/control` makes random later).
    pub seed: u64,
}

impl BackendSpec {
    /// A backend on `127.0.0.1:0` with no delay, status 200, no padding and
    /// seed [`DEFAULT_SEED`].
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            delay: Duration::ZERO,
            status: 200,
            body_bytes: 0,
            seed: DEFAULT_SEED,
        }
    }

    /// Sets the per-request delay.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the listen address.
    #[must_use]
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Sets the status code of non-health responses.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Sets the size of the `"pad"` field in response bodies.
    #[must_use]
    pub fn with_body_bytes(mut self, body_bytes: usize) -> Self {
        self.body_bytes = body_bytes;
        self
    }

    /// Sets the seed of the backend's random draws.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The profile this spec runs as (status and padding live beside it).
    pub(crate) fn profile(&self) -> Profile {
        let mut p = Profile::new(
            self.id.clone(),
            Dist::Constant {
                ms: self.delay.as_secs_f64() * 1000.0,
            },
        );
        p.listen = Some(self.listen);
        p.slots = SPEC_SLOTS;
        p.queue = SPEC_SLOTS;
        p.orca = false;
        p
    }
}
