//! Simulated HTTP backends for NeuraBalancer.
//!
//! The crate serves two masters: the `backend-sim` binary (a fleet of fake
//! backends to point a locally running proxy at) and the proxy's integration
//! tests, which start backends in-process on `127.0.0.1:0` and steer them at
//! run time (slow them down, make them fail health checks, crash and restart
//! them). Both use the same library so what the tests exercise is exactly what
//! a developer runs by hand.
//!
//! Module map:
//! * [`bench`](mod@bench): open-loop load generation, the library behind the `nb-bench`
//!   binary.
//! * [`spec`]: what a backend is ([`BackendSpec`]), independent of any socket.
//! * [`backend`]: a running backend ([`spawn`], [`BackendHandle`]) and how it
//!   answers requests.
//! * [`echo`]: a streaming echo server for tests of the proxy's body and header
//!   forwarding.
//! * [`fleet`]: the YAML fleet file used by the binary.
//! * `server`: the accept loop shared by all of the above, which owns every
//!   connection so that a stop really is a crash.
//!
//! Service is sleep-based (no busy CPU) and every connection is its own task,
//! so one process can hold thousands of concurrent slow requests.

pub mod backend;
pub mod bench;
pub mod des;
pub mod echo;
pub mod fleet;
pub mod lab;
pub mod model;
pub mod scenario;
mod server;
pub mod sim;
pub mod spec;

pub use backend::{spawn, spawn_profile, BackendHandle};
pub use echo::{spawn_echo, EchoHandle};
pub use fleet::{spawn_fleet, spawn_profiles, BackendEntry, ConfigError, FleetConfig};
pub use sim::{Control, Stats};
pub use spec::BackendSpec;

/// Waits until the process receives SIGINT (Ctrl-C) or, on Unix, SIGTERM.
///
/// Used by the binary so that `kill` and Ctrl-C both end it cleanly (exit 0).
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            res = tokio::signal::ctrl_c() => res,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
