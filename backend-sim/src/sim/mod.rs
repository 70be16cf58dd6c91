//! The behaviour of a simulated backend: a [`model::Profile`](crate::model::Profile)
//! brought to life over HTTP.
//!
//! Why a profile and not just a delay: load-balancing strategies differ only
//! when backends differ the way real ones do — finite concurrency with a
//! queue behind it, service times with tails, errors, slow starts, and
//! changes over time. The same profile drives the discrete-event model, so
//! what the lab measures on sockets and what it predicts agree by
//! construction.
//!
//! * `slots`: concurrency slots with a bounded FIFO queue.
//! * `state`: the shared state (profile, counters) of one backend.
//! * `http`: the request path (management endpoints, fate, queue, service).
//! * [`control`]: run-time changes (`POST /control`) and `GET /stats`.
//! * [`orca`]: the `endpoint-load-metrics` response header.
//!
//! Time: a backend evaluates its phases at `t` = seconds since its *epoch*,
//! an [`Instant`] given at spawn (the same for a whole fleet, so phases line
//! up across backends and with the load generator). Before the epoch a
//! backend is in its `t = 0` state. The `backend-sim` binary takes the epoch
//! as Unix milliseconds ([`epoch_from_unix_ms`]) so that separate processes
//! can share it.

pub mod control;
mod http;
pub mod orca;
mod slots;
pub(crate) mod state;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use control::{Control, Stats};
pub use orca::{OrcaReport, ORCA_HEADER};
pub use slots::EWMA_TAU_S;

/// `GET`: the backend's state as JSON ([`Stats`]).
pub const STATS_PATH: &str = "/stats";
/// `POST` a [`Control`] as JSON to change the backend at run time.
pub const CONTROL_PATH: &str = "/control";
/// A hung request gives up (closes its connection unanswered) after this,
/// if the client has not given up first.
pub const HANG_LIMIT: Duration = Duration::from_secs(600);

/// The [`Instant`] corresponding to a Unix time in milliseconds (in the past
/// or the future), as read from the system clock now. `None` if it lies
/// before the monotonic clock's origin (on Linux: boot).
pub fn epoch_from_unix_ms(unix_ms: u64) -> Option<Instant> {
    let now_i = Instant::now();
    let now_ms = unix_ms_now();
    if unix_ms <= now_ms {
        now_i.checked_sub(Duration::from_millis(now_ms - unix_ms))
    } else {
        now_i.checked_add(Duration::from_millis(unix_ms - now_ms))
    }
}

/// The Unix time in milliseconds of an [`Instant`] (the inverse of
/// [`epoch_from_unix_ms`]), e.g. to pass a fleet's epoch to `backend-sim
/// --epoch-unix-ms`.
pub fn unix_ms_of(instant: Instant) -> u64 {
    let now_i = Instant::now();
    let now_ms = unix_ms_now();
    if instant <= now_i {
        now_ms.saturating_sub(millis(now_i - instant))
    } else {
        now_ms.saturating_add(millis(instant - now_i))
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_round_trips() {
        let now = unix_ms_now();
        for ms in [now - 60_000, now, now + 5_000] {
            let back = unix_ms_of(epoch_from_unix_ms(ms).expect("after boot"));
            assert!(back.abs_diff(ms) <= 2, "{ms} -> {back}");
        }
    }
}
