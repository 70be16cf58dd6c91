//! The costs of the model's two references ([`SimStrategy::Greedy`] and
//! [`SimStrategy::Clairvoyant`]): what sending a request to one backend now would cost it, in
//! ns of latency, from knowledge no real strategy has.
//!
//! Both are greedy: the simulation sends each request to the backend of least cost for that
//! request alone (ties at random), never holding capacity back for the requests to come. So
//! neither is a strict ceiling; under overload, or with heavy-tailed classes that a little
//! spare capacity would protect, a real strategy can beat them on a tail percentile.
//!
//! * Greedy prices the backend's queue from means: every request ahead of this one is
//!   assumed to need this request's class mean, and its own failure odds are the error rates
//!   in force. It ignores variance.
//! * Clairvoyant replays the backend's slots: the requests in service leave at their known
//!   ends, the queued ones take the earliest free slot in FIFO order for their drawn service
//!   times, and this request follows with its own draw. Its only blind spot is time: a
//!   queued request's service is priced at the slowdown in force now (the backend applies
//!   the one in force when the request gets its slot), and phases that change slots or take
//!   the backend down are not foreseen.
//!
//! A backend whose queue is full comes last for both ([`FULL_PENALTY_NS`]).
//!
//! [`SimStrategy::Greedy`]: super::SimStrategy::Greedy
//! [`SimStrategy::Clairvoyant`]: super::SimStrategy::Clairvoyant

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use backend_sim::model::{Draw, Fate};

use super::{ms_to_ns, Backend, Req, St};

/// Added to the cost of a backend whose queue is full: it answers 503 at once.
const FULL_PENALTY_NS: f64 = 1e30;

/// Greedy's cost of a request of `class` at `be` now: the expected completion time
/// `c = (max(0, queued + in_service - slots + 1) × mean / slots + mean) × slowdown`, with
/// `mean` this class's mean service time there, where a failure counts as a timeout:
/// `p_ok × c + (1 - p_ok) × deadline`.
pub(super) fn greedy_cost_ns(be: &Backend, class: usize, deadline_ns: f64) -> f64 {
    let slots = be.eff.slots;
    if slots == 0 {
        return FULL_PENALTY_NS * 2.0;
    }
    let mean = be.mean_ns[class] * be.eff.slowdown;
    let ahead = (f64::from(be.queued) + f64::from(be.in_service()) - f64::from(slots) + 1.0).max(0.0);
    let completion = ahead * mean / f64::from(slots) + mean;
    let e = &be.eff.errors;
    let p_ok = ((1.0 - e.fast_503) * (1.0 - e.hang - e.slow_500)).clamp(0.0, 1.0);
    let cost = p_ok * completion + (1.0 - p_ok) * deadline_ns;
    if be.is_full() {
        cost + FULL_PENALTY_NS
    } else {
        cost
    }
}

/// Clairvoyant's cost of request `r` at `be` now, given its `draw` there: its latency if it
/// goes there, capped at the deadline, which a failing draw (fast 503, slow 500, hang) costs
/// in full. `ends` is scratch space.
pub(super) fn clairvoyant_cost_ns(
    be: &Backend,
    reqs: &[Req],
    r: &Req,
    draw: &Draw,
    now: u64,
    deadline_ns: u64,
    ends: &mut BinaryHeap<Reverse<u64>>,
) -> f64 {
    let timeout = deadline_ns as f64;
    if be.eff.slots == 0 {
        return FULL_PENALTY_NS * 2.0;
    }
    if be.is_full() {
        return FULL_PENALTY_NS + timeout;
    }
    if draw.fate != Fate::Serve {
        return timeout;
    }
    let gone = r.arrival_ns + deadline_ns;
    match slot_free_at(be, reqs, now, gone, deadline_ns, ends) {
        Some(start) => {
            let done = start.saturating_add(ms_to_ns(draw.service_ms * be.eff.slowdown));
            (done.min(gone) - r.arrival_ns) as f64
        }
        None => timeout,
    }
}

/// When a request joining `be`'s queue now would get a slot, or `None` if not before
/// `limit_ns`. The requests in service leave at their `end_ns`; each live queued request, in
/// FIFO order, takes the earliest free slot unless its client has left by then, and holds it
/// for its drawn service × the slowdown in force now (a hang: until its client's deadline),
/// never past its deadline.
fn slot_free_at(
    be: &Backend,
    reqs: &[Req],
    now: u64,
    limit_ns: u64,
    deadline_ns: u64,
    ends: &mut BinaryHeap<Reverse<u64>>,
) -> Option<u64> {
    let slots = be.eff.slots as usize;
    ends.clear();
    ends.extend(be.serving.iter().map(|&s| Reverse(reqs[s as usize].end_ns)));
    let mut t = now;
    for &(s, token) in &be.queue {
        let q = &reqs[s as usize];
        if q.state != St::Queued || q.token != token {
            continue;
        }
        t = next_start(ends, slots, t);
        if t >= limit_ns {
            return None;
        }
        let gone = q.arrival_ns + deadline_ns;
        if t >= gone {
            continue;
        }
        let end = match q.fate {
            Fate::Hang => gone,
            _ => t.saturating_add(ms_to_ns(q.draw_ms * be.eff.slowdown)).min(gone),
        };
        ends.push(Reverse(end));
    }
    let t = next_start(ends, slots, t);
    (t < limit_ns).then_some(t)
}

/// The first time from `t` on when fewer than `slots` of the occupants (their end times in
/// `ends`) remain; the ones gone by then are removed.
fn next_start(ends: &mut BinaryHeap<Reverse<u64>>, slots: usize, mut t: u64) -> u64 {
    loop {
        while ends.peek().is_some_and(|e| e.0 <= t) {
            ends.pop();
        }
        if ends.len() < slots {
            return t;
        }
        match ends.pop() {
            Some(Reverse(end)) => t = end,
            None => return t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_start_waits_until_fewer_occupants_than_slots() {
        // Three occupants of two slots (the slots shrank): a newcomer waits for two to leave.
        let mut ends: BinaryHeap<Reverse<u64>> = [5, 9, 3].map(Reverse).into_iter().collect();
        assert_eq!(next_start(&mut ends, 2, 0), 5);
        assert_eq!(ends.len(), 1);
        assert_eq!(next_start(&mut ends, 4, 6), 6, "a free slot: at once");
        assert_eq!(next_start(&mut ends, 1, 6), 9);
        assert!(ends.is_empty());
    }
}
