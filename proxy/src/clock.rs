//! The proxy's monotonic clock in nanoseconds, the time base of every strategy input.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (never 0 after the first call returns).
pub fn now_ns() -> u64 {
    let start = START.get_or_init(Instant::now);
    start.elapsed().as_nanos() as u64 + 1
}
