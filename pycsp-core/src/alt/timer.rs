//! Timers for alternation: crossbeam's `after`, `at`, `tick` and `never`, as guards of this
//! thread that add only a deadline to a select's wait.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::shm::wait::deadline_after;

/// A timer of this thread, for [`Alternation::timer`] (and `recv(timer)` in [`select!`]):
/// crossbeam's `after`, `tick`, `at` and `never` channels, without a channel. It is due at
/// an instant; a select with a timer guard sleeps no longer than that, and the guard fires
/// once it is due, unless another guard is chosen first. Firing moves it on: an [`after`]
/// or [`at`] timer fires once, a [`tick`] timer is due again one period after it fired
/// (missed ticks are not made up, as with crossbeam's `tick`), a [`never()`] timer never fires.
///
/// A timer is not a channel end: it cannot be sent to another process, and a select whose
/// only guards are spent timers fails with `Retired` instead of waiting forever.
///
/// [`select!`]: crate::select!
/// [`Alternation::timer`]: super::Alternation::timer
#[derive(Debug, Clone)]
pub struct Timer {
    next: Cell<Option<Instant>>,
    period: Option<Duration>,
}

/// A timer due once, `after` from now (crossbeam's `after`).
pub fn after(after: Duration) -> Timer {
    Timer {
        next: Cell::new(deadline_after(after)),
        period: None,
    }
}

/// A timer due once, at `when` (crossbeam's `at`).
pub fn at(when: Instant) -> Timer {
    Timer {
        next: Cell::new(Some(when)),
        period: None,
    }
}

/// A timer due every `period`, first `period` from now (crossbeam's `tick`).
pub fn tick(period: Duration) -> Timer {
    Timer {
        next: Cell::new(deadline_after(period)),
        period: Some(period),
    }
}

/// A timer that is never due (crossbeam's `never`): a guard on it never fires.
pub fn never() -> Timer {
    Timer {
        next: Cell::new(None),
        period: None,
    }
}

/// Whether a timer fires.
pub(super) enum Fire {
    /// Now, for the instant it was due at.
    Now(Instant),
    Later,
    Never,
}

impl Timer {
    /// When the timer is next due (`None`: never again).
    pub fn deadline(&self) -> Option<Instant> {
        self.next.get()
    }

    /// Fires the timer if it is due at `now`, and moves it on.
    pub(super) fn fire(&self, now: Instant) -> Fire {
        match self.next.get() {
            None => Fire::Never,
            Some(due) if due > now => Fire::Later,
            Some(due) => {
                self.next.set(self.period.and_then(|p| now.checked_add(p)));
                Fire::Now(due)
            }
        }
    }
}
