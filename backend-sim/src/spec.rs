//! The description of one simulated backend.
//!
//! A [`BackendSpec`] is plain data with a builder so that tests read as
//! `BackendSpec::new("b1").with_delay(ms(50))`. It is deliberately separate
//! from the YAML schema ([`crate::fleet::BackendEntry`]): the file format can
//! grow human-friendly fields (`delay_ms`, later latency distributions) without
//! changing the in-process API, and vice versa.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

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
}

impl BackendSpec {
    /// A backend on `127.0.0.1:0` with no delay, status 200 and no padding.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            delay: Duration::ZERO,
            status: 200,
            body_bytes: 0,
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
}
