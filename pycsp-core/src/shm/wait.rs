//! Blocking without system calls on the fast path: spin, yield, then sleep on a futex word.
//!
//! An [`Event`] is a futex word (`seq`) and a count of processes sleeping on it. Waiters run
//! [`Event::wait_until`]: they spin and yield for a short, bounded time, then announce themselves
//! in `sleepers`, re-check their condition and sleep in the kernel. Notifiers change shared
//! state first, then call [`Event::notify_one`] or [`Event::notify_all`], which make a system
//! call only when somebody announced sleep. The `SeqCst` fence on both sides closes the lost
//! wake-up window: either the notifier sees the sleeper, or the sleeper's re-check sees the new
//! state.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// How long a waiter spins and yields before it sleeps in the kernel. A kernel wake-up costs
/// 15-40 µs on the reference machine, so spinning for about that long first is worth it.
const SPIN_FOR: Duration = Duration::from_micros(30);

/// The most and the fewest times a waiter checks its condition one `pause` apart (about 25 ns
/// each on the reference machine) before it starts yielding its CPU: a peer that answers within
/// that window is seen within one `pause` of its answer.
const MAX_FINE_CHECKS: u32 = 256;
const MIN_FINE_CHECKS: u32 = 4;

thread_local! {
    /// How many fine checks this thread makes before it yields: adapted to what spinning has
    /// been worth lately. A wait that ends while spinning lengthens it a little; a wait that
    /// outlasts it halves it. With spare cores, waits end within the window and it stays
    /// long (a hand-over costs one `pause`, not a system call). With more busy processes than
    /// cores, the peer is often descheduled and no amount of spinning helps: the window
    /// shrinks and the waiter yields its CPU, to that peer, within a few checks.
    static FINE_CHECKS: std::cell::Cell<u32> = const { std::cell::Cell::new(MAX_FINE_CHECKS) };
}

/// Records whether a wait's fine spinning (`limit` checks) paid off, that is, whether the wait
/// ended while spinning.
fn adapt(limit: u32, paid_off: bool) {
    let next = if paid_off {
        (limit + limit / 8 + 1).min(MAX_FINE_CHECKS)
    } else {
        (limit / 2).max(MIN_FINE_CHECKS)
    };
    if next != limit {
        FINE_CHECKS.with(|c| c.set(next));
    }
}

/// A futex word and its sleeper count, in shared memory.
#[repr(C, align(64))]
pub(crate) struct Event {
    seq: AtomicU32,
    sleepers: AtomicU32,
}

impl Event {
    /// Wakes one sleeper, if any announced itself. Call after publishing the change with a
    /// `SeqCst` read-modify-write (the CAS on `head`, `tail`, a flag or a selection word): that
    /// orders the publication before this `SeqCst` load without a separate fence, as in
    /// crossbeam's `SyncWaker`. Sleepers re-check those same words after announcing.
    #[inline]
    pub(crate) fn notify_one(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.seq.fetch_add(1, Ordering::Release);
            sys::futex_wake(&self.seq, 1);
        }
    }

    /// Wakes every sleeper. Call as [`notify_one`](Self::notify_one).
    #[inline]
    pub(crate) fn notify_all(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.seq.fetch_add(1, Ordering::Release);
            sys::futex_wake(&self.seq, i32::MAX);
        }
    }

    /// How many waiters announced that they sleep on this event now (a hint: they leave as
    /// soon as they are woken).
    pub(crate) fn sleepers(&self) -> u32 {
        self.sleepers.load(Ordering::SeqCst)
    }

    /// Waits until `ready` returns `Some`, or until `deadline` passes (then `None`).
    ///
    /// `ready` is called repeatedly and must be cheap; it is always called once more after
    /// this waiter announced that it will sleep.
    pub(crate) fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        ready: impl FnMut() -> Option<T>,
        busy: impl Fn() -> bool,
    ) -> Option<T> {
        wait_any(&[self], deadline, ready, busy)
    }
}

/// Waits until `ready` returns `Some`, or until `deadline` passes (then `None`), sleeping on
/// all of `events` at once: the one-event case is a blocking read or write, the many-event
/// case is alternation over several channels.
///
/// `busy` tells, after this waiter announced that it will sleep, that a peer is in the middle
/// of making it ready (it claimed a slot but has not published it yet): then the waiter does
/// not sleep but keeps yielding, because that peer may have checked for sleepers before the
/// announcement.
pub(crate) fn wait_any<T>(
    events: &[&Event],
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> Option<T>,
    busy: impl Fn() -> bool,
) -> Option<T> {
    if let Some(v) = ready() {
        return Some(v);
    }
    let mut start: Option<Instant> = None;
    let mut round = 0u32;
    let mut words: Vec<(&AtomicU32, u32)> = Vec::new();
    let fine = FINE_CHECKS.with(|c| c.get());
    let mut adapted = false;
    loop {
        // Spin, then yield, for about SPIN_FOR (or until the deadline).
        loop {
            if round < fine {
                std::hint::spin_loop();
            } else {
                if !adapted {
                    adapted = true;
                    adapt(fine, false);
                }
                std::thread::yield_now();
            }
            round += 1;
            if let Some(v) = ready() {
                if !adapted {
                    adapt(fine, true);
                }
                return Some(v);
            }
            if round % 8 == 0 {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return None;
                }
                if now - *start.get_or_insert(now) >= SPIN_FOR {
                    break;
                }
            }
        }
        // Sleep in the kernel.
        for e in events {
            e.sleepers.fetch_add(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        words.clear();
        words.extend(
            events
                .iter()
                .map(|e| (&e.seq, e.seq.load(Ordering::SeqCst))),
        );
        let leave = |events: &[&Event]| {
            for e in events {
                e.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        };
        if let Some(v) = ready() {
            leave(events);
            return Some(v);
        }
        if busy() {
            leave(events);
            std::thread::yield_now();
            continue;
        }
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    leave(events);
                    return None;
                }
                Some(d - now)
            }
        };
        sys::futex_waitv(&words, timeout);
        leave(events);
        if let Some(v) = ready() {
            return Some(v);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        // Woken, but somebody else took what we were woken for: spin a little again.
        round = 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> u32 {
        FINE_CHECKS.with(|c| c.get())
    }

    #[test]
    fn waits_that_outlast_the_spin_window_shrink_it_and_quick_ones_grow_it_back() {
        let e = Event {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        };
        assert_eq!(window(), MAX_FINE_CHECKS);
        // Nothing ever becomes ready: each wait yields, then times out.
        for _ in 0..10 {
            let r = e.wait_until(
                Some(Instant::now() + Duration::from_micros(200)),
                || None::<()>,
                || false,
            );
            assert!(r.is_none());
        }
        assert_eq!(window(), MIN_FINE_CHECKS);
        // Ready at the second check: spinning paid off, the window grows back to its maximum.
        for _ in 0..100 {
            let mut checks = 0;
            let r = e.wait_until(
                None,
                || {
                    checks += 1;
                    (checks == 2).then_some(())
                },
                || false,
            );
            assert!(r.is_some());
        }
        assert_eq!(window(), MAX_FINE_CHECKS);
    }
}
