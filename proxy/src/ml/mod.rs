//! The learned strategy (`ml`) in the proxy: the scores a decision reads, why a decision
//! falls back, and the scorer that keeps the scores fresh.
//!
//! Who writes what, in which order (see also `upstream/pool.rs`):
//! 1. The scorer ([`scorer::Scorer`], a Pingora background service) is the only writer.
//!    Every `ml.refresh_ms` it builds the [`nb_strategy::ml::curve_rows`] of every server of
//!    every pool whose strategy is `ml`, sends them in one `POST /v1/score` and turns each
//!    server's answers into a [`Curve`]. It publishes, per pool, one immutable [`MlView`]
//!    (`PoolShared::ml`, an `ArcSwapOption`): the pool's [`PoolScores`] (a curve per
//!    server, indexed by the server's slot, [`BackendStats::slot`](crate::upstream::BackendStats::slot)),
//!    and the outcome of the latest refresh. A failed refresh publishes a view with the
//!    failure and the previous scores, so decisions fall back at once, and the admin API
//!    still shows the last scores with their age.
//! 2. A decision (`PoolIter::next`) loads the pool's view once ([`usable`]): when the
//!    latest refresh succeeded and its scores are younger than `ml.stale_ms`, the curves of
//!    the sampled candidates are read by slot, O(1) each, and
//!    [`nb_strategy::ml::pick`] decides. Otherwise, or when a sampled candidate has no
//!    curve (a server added since the last refresh), the pool's classic fallback decides,
//!    and the [`Fallback`] reason is counted. No lock, no network, no allocation.
//! 3. What decided ([`Decision`]) goes with the chosen server into the request context,
//!    and from there into the request record (`ml_decided`, `ml_fallback`,
//!    `predicted_latency_us`).

pub mod breaker;
pub mod scorer;

use std::sync::Arc;

use serde::Serialize;

use crate::strategy::ml::Curve;
use crate::upstream::{Slot, NO_SLOT};

pub use breaker::Breaker;
pub use scorer::Scorer;

/// Why a decision of an `ml` pool was made by its fallback strategy (the `reason` label of
/// `neurabalancer_ml_fallback_total` and the request record's `ml_fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The latest scoring call failed: refused, reset, a non-200 answer, an unreadable body,
    /// or a model that needs a feature the proxy does not measure.
    ModelServerError,
    /// The latest scoring call took longer than `ml.timeout_ms`.
    Timeout,
    /// The scores are older than `ml.stale_ms` (the scorer is behind).
    StaleScores,
    /// The circuit breaker is open after `ml.circuit_failures` failed calls in a row.
    CircuitOpen,
    /// No scores yet, or none for a sampled candidate (a server added since the last refresh).
    NoScores,
}

impl Fallback {
    pub const ALL: [Fallback; 5] = [
        Fallback::ModelServerError,
        Fallback::Timeout,
        Fallback::StaleScores,
        Fallback::CircuitOpen,
        Fallback::NoScores,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::ModelServerError => "model_server_error",
            Fallback::Timeout => "timeout",
            Fallback::StaleScores => "stale_scores",
            Fallback::CircuitOpen => "circuit_open",
            Fallback::NoScores => "no_scores",
        }
    }

    /// Index into [`Fallback::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One pool's scores from one successful refresh: a curve per server, by slot.
#[derive(Debug)]
pub struct PoolScores {
    /// When the rows were built (clock ns): the scores describe the servers then.
    pub at_ns: u64,
    pub model_version: Arc<str>,
    /// Indexed by [`Slot::index`] of [`BackendStats::slot`](crate::upstream::BackendStats::slot),
    /// with the slot's generation when scored; `None` where a slot is not in the pool or its
    /// answers were not finite. As long as the pool's largest number of servers at once
    /// (slots are reused).
    curves: Vec<Option<(u32, Curve)>>,
}

impl PoolScores {
    /// Scores from `(slot, curve)` pairs.
    pub fn new(at_ns: u64, model_version: Arc<str>, curves: impl IntoIterator<Item = (Slot, Curve)>) -> Self {
        let mut by_slot: Vec<Option<(u32, Curve)>> = Vec::new();
        for (slot, curve) in curves {
            if slot == NO_SLOT {
                continue;
            }
            let i = slot.index as usize;
            if by_slot.len() <= i {
                by_slot.resize(i + 1, None);
            }
            by_slot[i] = Some((slot.generation, curve));
        }
        PoolScores {
            at_ns,
            model_version,
            curves: by_slot,
        }
    }

    /// The curve of the server in `slot`, if it was scored: `None` also for a slot's earlier
    /// or later holder.
    pub fn curve(&self, slot: Slot) -> Option<&Curve> {
        match self.curves.get(slot.index as usize)? {
            Some((generation, curve)) if *generation == slot.generation => Some(curve),
            _ => None,
        }
    }
}

/// What decisions of one `ml` pool read: the latest scores and how the latest refresh went.
/// Immutable; the scorer publishes a new one every refresh.
#[derive(Debug)]
pub struct MlView {
    /// The scores of the latest successful refresh, if any.
    pub scores: Option<Arc<PoolScores>>,
    /// Why the latest refresh gave no scores (`None`: it succeeded).
    pub failure: Option<Fallback>,
    /// `ml.stale_ms` in ns when this view was published.
    pub stale_ns: u64,
}

/// The scores a decision at `now_ns` may use, or why it falls back: the latest refresh's
/// failure first (so a failed call takes effect at once), then no scores, then stale ones.
pub fn usable(view: Option<&MlView>, now_ns: u64) -> Result<&PoolScores, Fallback> {
    let view = view.ok_or(Fallback::NoScores)?;
    if let Some(reason) = view.failure {
        return Err(reason);
    }
    let scores = view.scores.as_deref().ok_or(Fallback::NoScores)?;
    if now_ns.saturating_sub(scores.at_ns) > view.stale_ns {
        return Err(Fallback::StaleScores);
    }
    Ok(scores)
}

/// What decided one pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// The pool's strategy is a classic one.
    Classic,
    /// The model's curves decided; the chosen server's predicted latency (µs, calibrated) at
    /// its requests in flight.
    Ml { predicted_us: f64 },
    /// The pool's strategy is `ml`, but its fallback decided.
    Fallback(Fallback),
}

impl Decision {
    /// The request record's `ml_decided`: null outside `ml` pools.
    pub fn ml_decided(self) -> Option<bool> {
        match self {
            Decision::Classic => None,
            Decision::Ml { .. } => Some(true),
            Decision::Fallback(_) => Some(false),
        }
    }

    /// The request record's `ml_fallback`.
    pub fn fallback(self) -> Option<&'static str> {
        match self {
            Decision::Fallback(r) => Some(r.as_str()),
            _ => None,
        }
    }

    /// The request record's `predicted_latency_us`.
    pub fn predicted_us(self) -> Option<i64> {
        match self {
            Decision::Ml { predicted_us } if predicted_us.is_finite() => Some(predicted_us.round() as i64),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::ml::CURVE_LEVELS;
    use crate::strategy::{Params, StrategyKind};

    fn curve(ms: f32) -> Curve {
        let params = Params::new(StrategyKind::Ml);
        Curve::new(&[ms; CURVE_LEVELS], &[0.0; CURVE_LEVELS], &params, 1.0).expect("finite")
    }

    fn view(failure: Option<Fallback>, at_ns: Option<u64>) -> MlView {
        MlView {
            scores: at_ns.map(|at| Arc::new(PoolScores::new(at, "v1".into(), [(Slot::new(0, 0), curve(5.0))]))),
            failure,
            stale_ns: 1_000,
        }
    }

    #[test]
    fn fallback_reasons_in_order_of_precedence() {
        assert_eq!(usable(None, 0).err(), Some(Fallback::NoScores), "no view yet");
        assert_eq!(usable(Some(&view(None, None)), 0).err(), Some(Fallback::NoScores));
        assert!(
            usable(Some(&view(None, Some(100))), 1_100).is_ok(),
            "exactly stale_ns old"
        );
        assert_eq!(
            usable(Some(&view(None, Some(100))), 1_101).err(),
            Some(Fallback::StaleScores)
        );
        // A failed refresh falls back at once, with fresh scores still in the view...
        for reason in [Fallback::ModelServerError, Fallback::Timeout, Fallback::CircuitOpen] {
            assert_eq!(usable(Some(&view(Some(reason), Some(100))), 100).err(), Some(reason));
            // ...and its reason wins over stale or missing scores.
            assert_eq!(usable(Some(&view(Some(reason), Some(100))), 10_000).err(), Some(reason));
            assert_eq!(usable(Some(&view(Some(reason), None)), 0).err(), Some(reason));
        }
    }

    #[test]
    fn curves_are_found_by_slot() {
        let s = PoolScores::new(
            0,
            "v".into(),
            [
                (Slot::new(3, 0), curve(7.0)),
                (NO_SLOT, curve(1.0)),
                (Slot::new(1, 2), curve(2.0)),
            ],
        );
        assert!(
            s.curve(Slot::new(0, 0)).is_none()
                && s.curve(Slot::new(2, 0)).is_none()
                && s.curve(Slot::new(4, 0)).is_none()
        );
        assert!(s.curve(NO_SLOT).is_none());
        assert_eq!(s.curve(Slot::new(3, 0)).map(|c| c.latency_ms[0]), Some(7.0));
        assert_eq!(s.curve(Slot::new(1, 2)).map(|c| c.latency_ms[0]), Some(2.0));
        // The slot's earlier and later holders find nothing.
        assert!(s.curve(Slot::new(1, 1)).is_none() && s.curve(Slot::new(1, 3)).is_none());
        assert!(s.curve(Slot::new(3, 1)).is_none());
    }

    #[test]
    fn decisions_become_record_columns() {
        assert_eq!(
            (
                Decision::Classic.ml_decided(),
                Decision::Classic.fallback(),
                Decision::Classic.predicted_us()
            ),
            (None, None, None)
        );
        let ml = Decision::Ml { predicted_us: 1234.4 };
        assert_eq!(
            (ml.ml_decided(), ml.fallback(), ml.predicted_us()),
            (Some(true), None, Some(1234))
        );
        let fb = Decision::Fallback(Fallback::StaleScores);
        assert_eq!(
            (fb.ml_decided(), fb.fallback(), fb.predicted_us()),
            (Some(false), Some("stale_scores"), None)
        );
        for (i, r) in Fallback::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
