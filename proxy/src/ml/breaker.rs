//! The scorer's circuit breaker: after `failures` failed calls in a row it opens, and no
//! call is made for `open_ns`; the first refresh after that tries once (half-open): a success
//! closes it, a failure opens it again for another `open_ns`.
//!
//! Time is the caller's (clock ns), so the breaker is a plain value, tested without a clock.
//! Only the scorer task touches it.

/// State of the breaker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Breaker {
    /// Failed calls in a row.
    failures: u32,
    /// While set, open until then (clock ns).
    open_until_ns: Option<u64>,
}

/// What [`Breaker::failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    /// Still closed (fewer failures in a row than the threshold).
    No,
    /// This failure opened it (from closed, or again from half-open).
    Opened,
}

impl Breaker {
    /// Whether a call may be made at `now_ns`: closed, or open and the open time is over
    /// (the half-open try).
    pub fn allows(&self, now_ns: u64) -> bool {
        self.open_until_ns.is_none_or(|until| now_ns >= until)
    }

    /// Whether it is open (a half-open breaker is still open until its try succeeds).
    pub fn is_open(&self) -> bool {
        self.open_until_ns.is_some()
    }

    /// A call succeeded: closed, the count of failures starts again.
    pub fn success(&mut self) {
        *self = Breaker::default();
    }

    /// A call failed at `now_ns`; `threshold` failures in a row open the breaker for
    /// `open_ns`.
    pub fn failure(&mut self, now_ns: u64, threshold: u32, open_ns: u64) -> Tripped {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= threshold.max(1) {
            self.open_until_ns = Some(now_ns.saturating_add(open_ns));
            Tripped::Opened
        } else {
            Tripped::No
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_in_a_row_and_a_success_resets_the_count() {
        let mut b = Breaker::default();
        assert!(b.allows(0) && !b.is_open());
        assert_eq!(b.failure(0, 3, 1000), Tripped::No);
        assert_eq!(b.failure(1, 3, 1000), Tripped::No);
        b.success();
        assert_eq!(b.failure(2, 3, 1000), Tripped::No, "the count started again");
        assert_eq!(b.failure(3, 3, 1000), Tripped::No);
        assert_eq!(b.failure(4, 3, 1000), Tripped::Opened);
        assert!(b.is_open());
        assert!(!b.allows(5) && !b.allows(1003));
    }

    #[test]
    fn half_open_after_the_open_time_one_try_decides() {
        let mut b = Breaker::default();
        b.failure(0, 1, 1000);
        assert!(!b.allows(999));
        assert!(b.allows(1000), "the first refresh after circuit_open_ms tries");
        assert!(b.is_open(), "still open until the try succeeds");
        assert_eq!(b.failure(1000, 1, 1000), Tripped::Opened, "a failed try opens it again");
        assert!(!b.allows(1999) && b.allows(2000));
        b.success();
        assert!(!b.is_open() && b.allows(2000));
    }

    #[test]
    fn a_threshold_of_zero_counts_as_one() {
        let mut b = Breaker::default();
        assert_eq!(b.failure(0, 0, 10), Tripped::Opened);
    }
}
