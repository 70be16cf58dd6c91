//! Concurrency slots with a bounded FIFO queue behind them.
//!
//! Why not a `tokio::sync::Semaphore` (which is FIFO-fair too): the number of
//! slots changes at run time (phases, `/control`), including *below* the
//! number of requests in service, and `/stats` and the ORCA header need the
//! exact queue length. A mutex around a counter and a queue of waiters gives
//! all three plainly; the lock is never held across an `.await` and each
//! critical section is a few instructions, so thousands of waiters are cheap.
//!
//! Invariants: `busy` counts granted slots (it may exceed `limit` right after
//! the limit was lowered: nobody is pre-empted, new grants wait until `busy`
//! fell below the limit); a waiter is granted only from the front of the
//! queue. A waiter whose request is abandoned (client gone) removes itself,
//! or gives back the slot it was granted in the meantime, so nothing leaks.
//!
//! The utilisation EWMA is time-weighted: between two changes utilisation is
//! constant, so the exact update over a gap `dt` is `1 - e^(-dt/tau)`. That
//! makes the value independent of the request rate, unlike a per-event EWMA.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

/// Time constant of the utilisation and rate EWMAs, in seconds.
pub const EWMA_TAU_S: f64 = 1.0;

#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    busy: u32,
    limit: u32,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    next_id: u64,
    util: f64,
    util_at: Instant,
}

/// The queue was full: the request gets a fast 503.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

/// A slot held until dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

/// Removes an abandoned waiter from the queue (or returns its slot).
struct Waiting<'a> {
    slots: &'a Arc<Slots>,
    id: u64,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut s = self.slots.lock();
        if let Some(pos) = s.waiters.iter().position(|(id, _)| *id == self.id) {
            s.waiters.remove(pos);
        } else {
            // Granted between the wake-up and the cancellation: give it back.
            drop(s);
            self.slots.release();
        }
    }
}

impl Slots {
    pub(crate) fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                busy: 0,
                limit,
                waiters: VecDeque::new(),
                next_id: 0,
                util: 0.0,
                util_at: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters
        // half-updated in a way worse than a lost request; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot, waiting in FIFO order behind at most `queue_bound`
    /// others; `Err(Full)` at once if that many are already waiting.
    pub(crate) async fn acquire(self: &Arc<Self>, queue_bound: u32) -> Result<Slot, Full> {
        let (id, rx) = {
            let mut s = self.lock();
            if s.busy < s.limit && s.waiters.is_empty() {
                s.touch();
                s.busy += 1;
                return Ok(Slot {
                    slots: Arc::clone(self),
                });
            }
            if s.waiters.len() >= queue_bound as usize {
                return Err(Full);
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_id;
            s.next_id += 1;
            s.waiters.push_back((id, tx));
            (id, rx)
        };
        let mut waiting = Waiting {
            slots: self,
            id,
            armed: true,
        };
        // The sender lives in the queue until it is used, and `Waiting`
        // removes the entry before `rx` can be dropped, so this cannot fail
        // while `self` exists; treat a failure like a full queue anyway.
        let granted = rx.await.is_ok();
        waiting.armed = false;
        if granted {
            Ok(Slot {
                slots: Arc::clone(self),
            })
        } else {
            Err(Full)
        }
    }

    fn release(&self) {
        let mut s = self.lock();
        s.touch();
        s.busy = s.busy.saturating_sub(1);
        s.grant();
    }

    /// Changes the number of slots; requests in service are not pre-empted.
    pub(crate) fn set_limit(&self, limit: u32) {
        let mut s = self.lock();
        if s.limit != limit {
            s.touch();
            s.limit = limit;
            s.grant();
        }
    }

    /// (in service, waiting, slots, utilisation EWMA in 0..=1)
    pub(crate) fn snapshot(&self) -> (u32, u32, u32, f64) {
        let mut s = self.lock();
        s.touch();
        let queued = u32::try_from(s.waiters.len()).unwrap_or(u32::MAX);
        (s.busy, queued, s.limit, s.util)
    }
}

impl State {
    /// Brings the utilisation EWMA up to now (call before every change).
    fn touch(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.util_at).as_secs_f64();
        let current = if self.limit == 0 {
            1.0
        } else {
            (f64::from(self.busy) / f64::from(self.limit)).min(1.0)
        };
        self.util += (1.0 - (-dt / EWMA_TAU_S).exp()) * (current - self.util);
        self.util_at = now;
    }

    fn grant(&mut self) {
        while self.busy < self.limit {
            let Some((_, tx)) = self.waiters.pop_front() else { break };
            self.busy += 1;
            // The receiver is alive while its entry is queued (see `Waiting`).
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn grants_in_fifo_order_and_bounds_the_queue() {
        let slots = Slots::new(1);
        let first = slots.acquire(2).await.expect("free slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..2 {
            let (mine, order) = (Arc::clone(&slots), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let slot = mine.acquire(2).await.expect("queued");
                order.lock().expect("lock").push(i);
                drop(slot);
            }));
            while slots.snapshot().1 != i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(slots.acquire(2).await.err(), Some(Full), "queue of 2 is full");
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*order.lock().expect("lock"), vec![0, 1]);
        assert_eq!(slots.snapshot().0, 0);
    }

    #[tokio::test]
    async fn abandoned_waiters_leave_the_queue() {
        let slots = Slots::new(1);
        let held = slots.acquire(5).await.expect("free");
        let r = tokio::time::timeout(Duration::from_millis(20), slots.acquire(5)).await;
        assert!(r.is_err(), "must wait");
        assert_eq!(slots.snapshot().1, 0, "the timed-out waiter is gone");
        drop(held);
        assert_eq!(slots.snapshot().0, 0);
        let _again = slots.acquire(0).await.expect("the slot is free again");
    }

    #[tokio::test]
    async fn limit_changes_do_not_preempt() {
        let slots = Slots::new(2);
        let a = slots.acquire(0).await.expect("a");
        let b = slots.acquire(0).await.expect("b");
        slots.set_limit(1);
        drop(a);
        assert_eq!(slots.acquire(0).await.err(), Some(Full), "still 1 busy of 1");
        slots.set_limit(3);
        let _c = slots.acquire(0).await.expect("room again");
        assert_eq!(slots.snapshot().0, 2);
        drop(b);
    }
}
