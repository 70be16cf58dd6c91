//! The NeuraBalancer lab: everything that measures a load balancer.
//!
//! The crate serves the `nb-bench` binary and the proxy's store benchmark. It drives the
//! simulated backends of the `backend-sim` crate (which stays the server and nothing else)
//! and the strategies of `nb-strategy`, so what the lab measures is the code the proxy
//! runs.
//!
//! Module map:
//! * [`arrivals`]: the arrival schedule, one stream for the generator and the model.
//! * [`bench`](mod@bench): open-loop load generation and its reports.
//! * [`scenario`]: benchmark scenarios (fleet, load, request mix).
//! * [`lab`]: the scenario runner (fresh fleet and proxy per strategy, peers, charts).
//! * [`des`]: the discrete-event model and its references.

pub mod arrivals;
pub mod bench;
pub mod des;
pub mod lab;
pub mod scenario;

pub use backend_sim::shutdown_signal;
