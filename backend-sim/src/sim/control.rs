//! Run-time changes (`POST /control`) and the state report (`GET /stats`).
//!
//! A change must compose with the profile's phases in an obvious way. The
//! rule is "latest wins": a change made at `t` holds until a later phase
//! boundary changes the same field. That falls out for free by recording
//! the time-varying part of a change (slowdown, errors, slots, down) as one
//! more [`Phase`] at `t`: [`Profile::effective`] applies phases in time order
//! (stably, so the change beats an earlier phase at the same instant), and
//! warm-up after a `down: false` restarts exactly as it would for a phase.
//! Fields phases do not vary (service times, queue bound) are set on the
//! profile itself.
//!
//! A change is validated as a whole against the profile it would produce
//! ([`Profile::validate`]), so a bad request changes nothing.

use serde::{Deserialize, Serialize};

use crate::model::{ClassService, Dist, Errors, Phase, Profile};

/// A change to a running backend; absent fields keep their value.
///
/// ```json
/// {"slowdown": 4, "errors": {"fast_503": 0.3}, "slots": 2, "healthy": false}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Service time of requests no class matches (classes keep theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Dist>,
    /// Replaces the per-class service times (`[]`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<ClassService>>,
    /// Multiplier of every service time (warm-up still applies on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowdown: Option<f64>,
    /// Replaces the injected error rates (absent rates: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Errors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Bound of the FIFO queue behind the slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// What `GET /health` answers: 200 (`true`) or 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// `true` closes the listener (over HTTP: 50 ms after answering, so the
    /// answer gets out); `false` listens again (only reachable through
    /// [`crate::BackendHandle::control`], a down backend cannot be asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<bool>,
    /// Status of normal responses that no injected error replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl Control {
    /// Whether the change touches a field that phases also vary.
    fn is_phase(&self) -> bool {
        self.slowdown.is_some() || self.errors.is_some() || self.slots.is_some() || self.down.is_some()
    }

    /// `profile` with this change made at `t_s` seconds after the epoch, or
    /// why the result would be invalid.
    pub fn applied_to(&self, profile: &Profile, t_s: f64) -> Result<Profile, String> {
        if let Some(s) = self.status {
            if !(100..=999).contains(&s) {
                return Err(format!("invalid status code {s}"));
            }
        }
        if self.slots == Some(0) {
            return Err("slots must be at least 1".to_string());
        }
        if self.slowdown.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return Err("slowdown must be a positive number".to_string());
        }
        let mut p = profile.clone();
        if let Some(d) = &self.service {
            p.service = d.clone();
        }
        if let Some(c) = &self.classes {
            p.classes = c.clone();
        }
        if let Some(q) = self.queue {
            p.queue = q;
        }
        if self.is_phase() {
            p.phases.push(Phase {
                at_s: t_s.max(0.0),
                slowdown: self.slowdown,
                errors: self.errors.clone(),
                slots: self.slots,
                down: self.down,
            });
        }
        p.validate()?;
        Ok(p)
    }
}

/// What `GET /stats` (and `POST /control`) answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub id: String,
    /// Seconds since the fleet epoch (0 before it).
    pub t_s: f64,
    /// Requests holding a slot.
    pub inflight: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
    /// Current number of slots.
    pub slots: u32,
    /// Current bound of the queue.
    pub queue: u32,
    /// Time-weighted EWMA (tau 1 s) of `inflight / slots`, capped at 1.
    pub slot_utilisation_ewma: f64,
    /// Recent completion rate (decaying, tau 1 s), requests per second.
    pub rps: f64,
    /// Requests answered after their service time (any status).
    pub served: u64,
    /// Injected errors (fast 503, slow 500, hang once it has a slot) and
    /// served responses whose status was set to 5xx.
    pub errors: u64,
    /// Fast 503s because the queue was full.
    pub rejected: u64,
    /// Requests currently held without an answer (each holds a slot).
    pub hanging: u64,
    pub health_checks: u64,
    /// Requests that reached the service path (everything but `/health`,
    /// `/stats` and `/control`), whatever their fate: fast 503s, queue-full
    /// 503s and hangs included.
    #[serde(default)]
    pub arrived: u64,
    /// Of those, the ones marked `x-nb-measured: 1` (the lab's measured
    /// window): how many of its routing decisions chose this backend,
    /// requests that timed out included.
    #[serde(default)]
    pub measured: u64,
    /// Seconds since the listener last opened (0 while down).
    pub uptime_s: f64,
    /// Current multiplier of service times (phases × warm-up).
    pub slowdown: f64,
    /// Current injected error rates.
    pub error_rates: Errors,
    pub healthy: bool,
    pub down: bool,
    /// Status of normal responses.
    pub status: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        let mut p = Profile::new("c", Dist::Constant { ms: 10.0 });
        p.phases.push(Phase {
            at_s: 5.0,
            slowdown: Some(1.5),
            ..Phase::default()
        });
        p
    }

    #[test]
    fn latest_wins_between_changes_and_phases() {
        let c = Control {
            slowdown: Some(3.0),
            ..Control::default()
        };
        let early = c.applied_to(&profile(), 2.0).expect("valid");
        assert_eq!(early.effective(1.0).slowdown, 1.0);
        assert_eq!(early.effective(3.0).slowdown, 3.0);
        assert_eq!(early.effective(6.0).slowdown, 1.5, "the later phase wins");
        let late = c.applied_to(&profile(), 5.0).expect("valid");
        assert_eq!(late.effective(5.0).slowdown, 3.0, "the change wins at the same instant");
        assert_eq!(late.effective(60.0).slowdown, 3.0);
    }

    #[test]
    fn invalid_changes_are_refused_whole() {
        for bad in [
            r#"{"slots": 0}"#,
            r#"{"slowdown": -1}"#,
            r#"{"errors": {"fast_503": 2}}"#,
            r#"{"service": {"dist": "exponential", "mean_ms": 0}}"#,
            r#"{"status": 42}"#,
        ] {
            let c: Control = serde_json::from_str(bad).expect("well-formed");
            assert!(c.applied_to(&profile(), 1.0).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Control>(r#"{"slowness": 2}"#).is_err());
        let c: Control = serde_json::from_str(r#"{"queue": 3, "service": {"dist": "constant", "ms": 1}}"#).expect("ok");
        let p = c.applied_to(&profile(), 1.0).expect("valid");
        assert_eq!((p.queue, p.phases.len()), (3, 1), "no phase for non-phase fields");
    }
}
