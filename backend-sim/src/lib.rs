//! Simulated HTTP backends for NeuraBalancer.
//!
//! The crate serves the `backend-sim` binary (a fleet of simulated backends to point a
//! proxy at), the lab (crate `nb-lab`: load generation, the scenario runner and the
//! discrete-event model, which shares [`model`] with the simulator), and the proxy's
//! integration tests, which start backends in-process on `127.0.0.1:0` and steer them at
//! run time. All of them use the same library, so what the tests exercise is what a
//! developer runs by hand.
//!
//! Module map:
//! * [`model`]: what a simulated backend is (`Profile`: slots, queue, service-time
//!   distributions, errors, phases, warm-up), shared by the simulator and the model.
//! * [`sim`]: how a running backend follows a profile (slots, FIFO queue, errors, phases,
//!   `/stats`, `/control`, the ORCA load header).
//! * [`spec`]: the simple `BackendSpec` of the proxy's tests, run as a profile.
//! * [`backend`]: a running backend ([`spawn`], [`BackendHandle`]).
//! * [`echo`]: a streaming echo server for tests of the proxy's body and header forwarding.
//! * [`fleet`]: the YAML fleet file (`seed`, `backends: [Profile…]`) used by the binary.
//! * [`fleet_stats`]: one listener answering `GET /stats` for a whole fleet, down
//!   backends included.
//! * [`timer`]: the precise sleep that service times use.
//! * `server`: the accept loop, which owns every connection so that a stop really is a crash.
//!
//! Service is sleep-based (no busy CPU, precise to tens of microseconds) and every
//! connection is its own task, so one process can hold thousands of concurrent slow
//! requests. Random draws are seeded (default seed 0), never taken from the process, so
//! a fleet started twice with the same seed answers alike.

pub mod backend;
pub mod echo;
pub mod fleet;
pub mod fleet_stats;
pub mod model;
mod server;
pub mod sim;
pub mod spec;
pub mod timer;

pub use backend::{spawn, spawn_profile, spawn_profile_seeded, BackendHandle};
pub use echo::{spawn_echo, EchoHandle};
pub use fleet::{spawn_fleet, spawn_profiles, spawn_profiles_seeded, BackendEntry, ConfigError, FleetConfig};
pub use fleet_stats::{spawn_fleet_stats, FleetStatsHandle};
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
