//! Blocking without system calls on the fast path: spin, yield, then sleep on a futex word.
//!
//! An [`Event`] is a futex word (`seq`) and a count of processes sleeping on it. Waiters run
//! [`Event::wait_until`]: they spin and yield for a short, bounded time, then announce themselves
//! in `sleepers`, re-check their condition and sleep in the kernel. Notifiers change shared
//! state first, then call [`Event::notify_one`] or [`Event::notify_all`], which make a system
//! call only when somebody announced sleep. The `SeqCst` fence on both sides closes the lost
//! wake-up window: either the notifier sees the sleeper, or the sleeper's re-check sees the new
//! state.
//!
//! A thread waiting on several events at once (alternation) sleeps on all their words with one
//! `futex_waitv`, which takes at most 128 words. A thread waiting on more events than that has
//! a **bell**: a futex word of its own in the arena. It writes its bell's id into a free
//! `watch` slot of each event and sleeps on the bell alone; a notifier that finds watchers
//! rings their bells. So a select over any number of channels sleeps without polling, and the
//! fast path stays one load: only a notifier that saw sleepers looks at `watchers`.
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::census::{self, Item, Kind, Parked, Tick};
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

/// A yield that gives the CPU back later than this lost it to a process that kept it for (the
/// rest of) a time slice, not to a peer that answered: a peer that communicates gives the CPU
/// back within microseconds.
const LONG_YIELD: Duration = Duration::from_micros(100);

/// How many waits in a row skip the yielding phase after a yield lost the CPU (see
/// [`may_yield`]).
const YIELD_SKIPS: u32 = 256;

thread_local! {
    /// How many of this thread's next waits skip the yielding phase: a new thread starts
    /// skipping (see [`may_yield`]).
    static SKIP_YIELDS: std::cell::Cell<u32> = const { std::cell::Cell::new(YIELD_SKIPS) };
}

/// Whether a wait may yield its CPU between spinning and sleeping (else it sleeps after
/// spinning).
///
/// Yielding hands the CPU to a peer that shares it, which is what a waiter wants when that
/// peer is the one it waits for (four processes of a pipeline on two cores): the peer answers
/// and gives the CPU back within microseconds. But when the process it yields to computes, the
/// yield gives it the rest of its time slice (up to milliseconds), and the waiter, still
/// runnable, does not look at its condition in that time even once it holds: nobody wakes a
/// thread that did not sleep. A farmer waiting for a worker to take a job on a rendezvous
/// channel, beside a computing worker, then hands out the next job a time slice late, and the
/// other worker waits for it (pycsp-bench's rendezvous farm ran at half its parallel limit).
/// Sleeping instead makes the taker's notify a wake-up, which the kernel schedules at once.
/// So a thread whose yield came back later than [`LONG_YIELD`] sleeps at once, and its next
/// [`YIELD_SKIPS`] waits sleep after spinning, without yielding: a futex wake-up costs
/// microseconds more than a yield that pays off, a yield that does not costs milliseconds.
/// A new thread starts as if its yield had just lost the CPU: a fresh farmer would otherwise
/// learn it by losing a time slice of its short life (a farm of 40 ms ran at 0.65-0.91 of its
/// parallel limit, 0.93-0.94 starting this way), and a thread whose yields pay off (a pipeline
/// of processes on two cores) yields again after its first [`YIELD_SKIPS`] hand-overs.
fn may_yield() -> bool {
    SKIP_YIELDS.with(|c| match c.get() {
        0 => true,
        left => {
            c.set(left - 1);
            false
        }
    })
}

/// Yields the CPU (see [`may_yield`]); returns whether it came back so late that the waiter
/// should sleep.
fn yield_cpu() -> bool {
    let before = Instant::now();
    std::thread::yield_now();
    if before.elapsed() < LONG_YIELD {
        return false;
    }
    SKIP_YIELDS.with(|c| c.set(YIELD_SKIPS));
    true
}

/// How long a waiter keeps yielding while a peer is in the middle of making it ready (see
/// [`wait_any`]'s `busy`) before it sleeps in short steps of [`BUSY_RECHECK`] instead: a
/// peer that publishes what it claimed does so within microseconds, one that holds it (a
/// socket host's reader waiting for its remote end) may take a round trip or longer.
const BUSY_YIELD_FOR: Duration = Duration::from_micros(200);
const BUSY_RECHECK: Duration = Duration::from_millis(1);

/// The most futex words one `futex_waitv` takes (the kernel's `FUTEX_WAITV_MAX`).
const WAITV_MAX: usize = 128;

/// Threads with more than [`WAITV_MAX`] events that can watch one event at once by their bell;
/// the slots fill the event's 128 bytes.
const WATCH_SLOTS: usize = 29;

/// Arena bytes per bell (the allocation grain); a bell's id is its offset / `BELL_GRAIN`.
const BELL_GRAIN: u64 = 256;

/// How long a thread that could neither watch nor directly wait on some of its events (more
/// than [`WATCH_SLOTS`] such threads on each of more than 127 of its events) sleeps at most
/// before it re-checks: the one case where a wait is not woken by the change itself.
const UNWATCHED_RECHECK: Duration = Duration::from_millis(10);

/// A futex word and its sleeper count, in shared memory, and the bells of threads that watch
/// it (see the module documentation).
#[repr(C, align(64))]
pub(crate) struct Event {
    seq: AtomicU32,
    /// Threads that announced sleep on this event (watchers included).
    sleepers: AtomicU32,
    /// Taken `watch` slots.
    watchers: AtomicU32,
    /// Bell ids of watching threads; 0: free.
    watch: [AtomicU32; WATCH_SLOTS],
}

const _: () = assert!(std::mem::size_of::<Event>() == 128);

/// Rings the bell with id `id`: bumps its word and wakes whoever sleeps on it.
#[cold]
fn ring(id: u32) {
    if let Ok(arena) = Arena::get() {
        let bell = bell_at(arena, id);
        bell.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(bell, i32::MAX);
    }
}

/// The bell with id `id`.
fn bell_at(arena: &'static Arena, id: u32) -> &'static AtomicU32 {
    // SAFETY: bell ids are only written into events by `my_bell`, from the offset of a bell
    // allocated in this arena for the life of the network (`ptr` checks the range); the word
    // is only accessed atomically.
    unsafe { &*arena.ptr(u64::from(id) * BELL_GRAIN, 4).cast::<AtomicU32>() }
}

thread_local! {
    /// This thread's bell, allocated on its first wait on more than [`WAITV_MAX`] events.
    static BELL: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// This thread's bell id and word, if the arena has room for one.
fn my_bell() -> Option<(u32, &'static AtomicU32)> {
    let arena = Arena::get().ok()?;
    if let Some(id) = BELL.with(std::cell::Cell::get) {
        return Some((id, bell_at(arena, id)));
    }
    let offset = arena.alloc_static(4).ok()?;
    debug_assert_eq!(
        offset % BELL_GRAIN,
        0,
        "static allocations are 256-byte aligned"
    );
    let id = u32::try_from(offset / BELL_GRAIN).ok()?;
    BELL.with(|b| b.set(Some(id)));
    Some((id, bell_at(arena, id)))
}

impl Event {
    /// The futex word its sleepers sleep on (for a wait published on a sleeper's behalf, see
    /// `census::park_socket`).
    pub(crate) fn word(&self) -> &AtomicU32 {
        &self.seq
    }

    /// Whether a thread announced that it sleeps on this event.
    pub(crate) fn has_sleepers(&self) -> bool {
        self.sleepers.load(Ordering::SeqCst) > 0
    }

    /// Wakes one sleeper, if any announced itself. Call after publishing the change.
    /// Sleepers announce themselves (`sleepers`, SeqCst) and then re-check what they wait
    /// for; the notifier publishes its change and then looks at `sleepers`: a store-load pair
    /// on each side, which needs a full fence between the notifier's store and its load.
    /// Some changes are plain `Release` stores (a slot's stamp when a reader empties it or a
    /// writer fills it), which x86 may still hold in its store buffer when the load runs:
    /// without the fence, the notifier could see no sleeper while the sleeper saw no change,
    /// and the sleeper waited for its next census slice (40 ms) or, unpublished, for ever.
    #[inline]
    pub(crate) fn notify_one(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.seq.fetch_add(1, Ordering::Release);
            sys::futex_wake(&self.seq, 1);
            self.ring_watchers();
        }
    }

    /// Wakes every sleeper. Call as [`notify_one`](Self::notify_one). Returns whether
    /// somebody had announced sleep (and was woken).
    #[inline]
    pub(crate) fn notify_all(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.seq.fetch_add(1, Ordering::Release);
            sys::futex_wake(&self.seq, i32::MAX);
            self.ring_watchers();
            return true;
        }
        false
    }

    /// Rings the bells of the threads watching this event. A watcher announces itself in
    /// `sleepers` and `watchers` (`SeqCst`) before it re-checks its condition, so a notifier
    /// that misses it changed state the watcher's re-check sees.
    #[inline]
    fn ring_watchers(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            for slot in &self.watch {
                let id = slot.load(Ordering::SeqCst);
                if id != 0 {
                    ring(id);
                }
            }
        }
    }

    /// Takes a free `watch` slot for bell `id`; its index, or `None` if all are taken.
    fn watch(&self, id: u32) -> Option<usize> {
        let k = self.watch.iter().position(|slot| {
            slot.compare_exchange(0, id, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        })?;
        self.watchers.fetch_add(1, Ordering::SeqCst);
        Some(k)
    }

    /// Frees `watch` slot `k`, taken by [`watch`](Self::watch) for bell `id`.
    fn unwatch(&self, k: usize, id: u32) {
        if self.watch[k]
            .compare_exchange(id, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
        {
            self.watchers.fetch_sub(1, Ordering::SeqCst);
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

    /// Waits as [`wait_until`](Self::wait_until) does, until `deadline` at the latest, but
    /// sleeps at once, without spinning or yielding first: for a change that is a network
    /// round trip or more away. (A short wait that spins first spins for most of its time on a
    /// loaded machine, where its yields come back only after other processes' time slices.)
    pub(crate) fn sleep_until<T>(
        &self,
        deadline: Instant,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let events = [self];
        loop {
            if let Some(v) = ready() {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let sleep = Announced::new(&events);
            if let Some(v) = ready() {
                return Some(v);
            }
            sys::futex_waitv(&sleep.words, Some(deadline - now));
        }
    }

    /// [`wait_until`](Self::wait_until) for a blocking operation that the census may see
    /// (see [`wait_parked`]): with no deadline, the wait is published while it sleeps, and a
    /// deadlock of the network ends it with `deadlocked()`.
    pub(crate) fn wait_until_parked<T>(
        &self,
        deadline: Option<Instant>,
        waiting: Waiting<'_>,
        ready: impl FnMut() -> Option<T>,
        busy: impl Fn() -> bool,
        deadlocked: impl FnOnce() -> T,
    ) -> Option<T> {
        wait_parked(&[self], deadline, Some(waiting), ready, busy, deadlocked)
    }
}

/// What a blocking operation waits on, for the census (`shm/census.rs`): a read or write of
/// one channel, or a select over several; per channel its key, whether the wait is a write,
/// its name (looked up only if the wait is published: never on the fast path) and the event
/// its side sleeps on.
pub(crate) struct Waiting<'a> {
    pub(crate) kind: Kind,
    pub(crate) on: &'a [(u64, bool, &'a dyn Fn() -> &'static str, &'a Event)],
    /// A rendezvous writer whose message is in the ring, waiting for a reader to take it:
    /// the taker goes on with its own work, so a yield may lose the CPU to it (see
    /// [`may_yield`]).
    pub(crate) hand_over: bool,
    /// Whether what the wait needs is a network round trip away now (a socket host holds the
    /// slot the writer waits for, see `ring.rs`'s `HELD`): then the waiter sleeps at once,
    /// woken by the change, instead of spinning and yielding for [`SPIN_FOR`] first, which
    /// cannot pay off and takes CPU time from the threads that carry the round trip.
    pub(crate) far: Option<&'a dyn Fn() -> bool>,
}

impl Waiting<'_> {
    fn park(&self, since: Option<u64>) -> Option<Parked> {
        let items: Vec<Item<'_>> = self
            .on
            .iter()
            .map(|&(key, write, name, e)| Item {
                key,
                write,
                name: name(),
                word: Some(&e.seq),
            })
            .collect();
        census::park(self.kind, &items, since)
    }
}

/// A deadline that has passed, read from the clock once per process: an operation given it
/// is a try (one look), without a clock reading of its own (the clock is read only if the
/// look fails). For hot loops that try many operations in a row.
pub(crate) fn passed() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// The deadline `timeout` from now, or `None` (no deadline) when `timeout` is too large for
/// the clock, as crossbeam-channel takes `Duration::MAX`: every operation that takes a
/// duration turns it into a deadline here, so none panics on the overflow.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
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
    ready: impl FnMut() -> Option<T>,
    busy: impl Fn() -> bool,
) -> Option<T> {
    wait_parked(events, deadline, None, ready, busy, || {
        unreachable!("a wait the census does not see is never deadlocked")
    })
}

/// [`wait_any`] for a blocking operation the census sees (`waiting`). With no deadline, once
/// the waiter is about to sleep in the kernel it publishes what it waits on and sleeps in
/// slices of [`census::SLICE`]; a slice that ends with nothing to do looks for a deadlock of
/// the network, and one declared since the operation parked ends it with `deadlocked()`.
/// Nothing of this runs before the waiter sleeps: the fast path is unchanged.
pub(crate) fn wait_parked<T>(
    events: &[&Event],
    deadline: Option<Instant>,
    waiting: Option<Waiting<'_>>,
    mut ready: impl FnMut() -> Option<T>,
    busy: impl Fn() -> bool,
    deadlocked: impl FnOnce() -> T,
) -> Option<T> {
    if let Some(v) = ready() {
        return Some(v);
    }
    // A deadline already passed makes this a try: the one look above was it.
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    let mut start: Option<Instant> = None;
    let mut round = 0u32;
    let fine = FINE_CHECKS.with(|c| c.get());
    let mut adapted = false;
    let hand_over = waiting.as_ref().is_some_and(|w| w.hand_over);
    let far = || {
        waiting
            .as_ref()
            .and_then(|w| w.far)
            .is_some_and(|far| far())
    };
    // Whether this wait may yield (asked once, when it first would).
    let mut yields: Option<bool> = None;
    // The published wait, kept over slices that end with nothing changed.
    let mut parked: Option<Parked> = None;
    let mut since: Option<u64> = None;
    let mut resleep = false;
    // Since when `busy` has said a peer is making us ready (see below).
    let mut busy_since: Option<Instant> = None;
    loop {
        // Spin, then yield, for about SPIN_FOR (or until the deadline).
        // (Not after a slice that ended with nothing changed: then it sleeps again at once;
        // nor while what it waits for is far away.)
        if !resleep && !far() {
            loop {
                let mut lost_cpu = false;
                if round < fine {
                    std::hint::spin_loop();
                } else {
                    if !adapted {
                        adapted = true;
                        adapt(fine, false);
                    }
                    if far() {
                        // What it waits for went far away meanwhile: yielding cannot help.
                        break;
                    }
                    if !*yields.get_or_insert_with(|| !hand_over || may_yield()) {
                        // Yielding has lately cost this thread whole time slices: sleep.
                        if let Some(v) = ready() {
                            return Some(v);
                        }
                        break;
                    }
                    lost_cpu = if hand_over {
                        yield_cpu()
                    } else {
                        std::thread::yield_now();
                        false
                    };
                }
                round += 1;
                if let Some(v) = ready() {
                    if !adapted {
                        adapt(fine, true);
                    }
                    return Some(v);
                }
                if lost_cpu {
                    yields = Some(false);
                    break;
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
        }
        // Sleep in the kernel.
        let sleep = Announced::new(events);
        if let Some(v) = ready() {
            return Some(v);
        }
        // A peer in the middle of making us ready may have looked for sleepers before we
        // announced ourselves: yield until it is done, for a while; a peer that stays busy
        // (a reader holding a slot until its remote end confirms) is waited for asleep, in
        // short sleeps that do not count on its notify.
        let mut busy_recheck = false;
        if busy() {
            let since = *busy_since.get_or_insert_with(Instant::now);
            if since.elapsed() < BUSY_YIELD_FOR {
                drop(sleep);
                std::thread::yield_now();
                continue;
            }
            busy_recheck = true;
        } else {
            busy_since = None;
        }
        let mut timeout = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                Some(d - now)
            }
        };
        if sleep.unwatched {
            timeout = Some(timeout.map_or(UNWATCHED_RECHECK, |t| t.min(UNWATCHED_RECHECK)));
        }
        if busy_recheck {
            timeout = Some(timeout.map_or(BUSY_RECHECK, |t| t.min(BUSY_RECHECK)));
        }
        if let (None, Some(w)) = (deadline, &waiting) {
            // Published as it is now: the words it sleeps on have not moved since.
            if !parked.as_ref().is_some_and(Parked::unchanged) {
                drop(parked.take());
                parked = w.park(since);
                since = since.or(parked.as_ref().map(Parked::since));
            }
            if parked.is_some() {
                timeout = Some(timeout.map_or(census::SLICE, |t| t.min(census::SLICE)));
            }
        }
        sys::futex_waitv(&sleep.words, timeout);
        drop(sleep);
        if let Some(v) = ready() {
            return Some(v);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        if let Some(p) = parked.as_mut() {
            if p.tick() == Tick::Deadlocked {
                drop(parked);
                return Some(deadlocked());
            }
            if p.unchanged() {
                // The slice ended and nothing moved: sleep again, still published.
                resleep = true;
                continue;
            }
            parked = None;
        }
        resleep = false;
        // Woken, but somebody else took what we were woken for: spin a little again.
        round = 4;
    }
}

/// A waiter's announcement that it is about to sleep on `events`: it counts in each event's
/// `sleepers` (and, with more events than one `futex_waitv` takes, watches them by its bell),
/// and `words` holds the futex words to sleep on with the values they had after the
/// announcement. Dropping it withdraws the announcement.
struct Announced<'e> {
    events: &'e [&'e Event],
    words: Vec<(&'e AtomicU32, u32)>,
    /// Watched events: (index in `events`, watch slot), and the bell they ring.
    watched: Vec<(usize, usize)>,
    bell: u32,
    /// Whether some events are neither watched nor in `words` (see [`UNWATCHED_RECHECK`]).
    unwatched: bool,
}

impl<'e> Announced<'e> {
    fn new(events: &'e [&'e Event]) -> Self {
        for e in events {
            e.sleepers.fetch_add(1, Ordering::SeqCst);
        }
        let mut a = Announced {
            events,
            words: Vec::with_capacity(events.len().min(WAITV_MAX)),
            watched: Vec::new(),
            bell: 0,
            unwatched: false,
        };
        let mut direct: Vec<&'e Event> = Vec::new();
        let mut bell: Option<&'static AtomicU32> = None;
        if events.len() <= WAITV_MAX {
            direct.extend(events);
        } else if let Some((id, word)) = my_bell() {
            (a.bell, bell) = (id, Some(word));
            for (i, e) in events.iter().enumerate() {
                match e.watch(id) {
                    Some(k) => a.watched.push((i, k)),
                    None => direct.push(e),
                }
            }
        } else {
            direct.extend(events);
        }
        let room = WAITV_MAX - usize::from(bell.is_some());
        if direct.len() > room {
            direct.truncate(room);
            a.unwatched = true;
        }
        fence(Ordering::SeqCst);
        if let Some(b) = bell {
            a.words.push((b, b.load(Ordering::SeqCst)));
        }
        a.words.extend(
            direct
                .iter()
                .map(|e| (&e.seq, e.seq.load(Ordering::SeqCst))),
        );
        a
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        for &(i, k) in &self.watched {
            self.events[i].unwatch(k, self.bell);
        }
        for e in self.events {
            e.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
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
        // SAFETY: an all-zero Event is a valid one (atomics), as in a fresh channel header.
        let e: Event = unsafe { std::mem::zeroed() };
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

    #[test]
    fn a_new_thread_sleeps_instead_of_yielding_in_its_first_hand_overs() {
        let first: Vec<bool> =
            std::thread::spawn(|| (0..YIELD_SKIPS + 1).map(|_| may_yield()).collect())
                .join()
                .unwrap();
        assert!(first[..YIELD_SKIPS as usize].iter().all(|y| !y));
        assert!(first[YIELD_SKIPS as usize], "then it yields again");
    }

    #[test]
    fn a_wait_whose_deadline_has_passed_checks_once_and_neither_spins_nor_yields() {
        // SAFETY: an all-zero Event is a valid one (atomics), as in a fresh channel header.
        let e: Event = unsafe { std::mem::zeroed() };
        let window = window();
        for deadline in [Instant::now(), Instant::now() - Duration::from_millis(1)] {
            let mut checks = 0;
            let r = e.wait_until(
                Some(deadline),
                || {
                    checks += 1;
                    None::<()>
                },
                || false,
            );
            assert!(r.is_none());
            // One look (a try): no spinning, no yield, and nothing learnt about spinning.
            assert_eq!(checks, 1);
        }
        assert_eq!(self::window(), window);
    }

    #[test]
    fn a_wait_on_more_events_than_one_futex_waitv_takes_is_woken_by_any_of_them() {
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc;
        let events: &'static [Event] = Box::leak(
            (0..300)
                // SAFETY: an all-zero Event is a valid one, as in a fresh channel header.
                .map(|_| unsafe { std::mem::zeroed::<Event>() })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        static READY: AtomicBool = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let refs: Vec<&Event> = events.iter().collect();
            let r = wait_any(
                &refs,
                None,
                || READY.load(Ordering::SeqCst).then_some(()),
                || false,
            );
            tx.send(r).unwrap();
        });
        // The waiter watches every event by its bell once it is about to sleep.
        while events[299].watchers.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        assert!(events
            .iter()
            .all(|e| e.watchers.load(Ordering::SeqCst) == 1));
        READY.store(true, Ordering::SeqCst);
        events[250].notify_one();
        let woke = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(woke, Ok(Some(())), "the waiter was not woken");
        // It withdrew from every event.
        assert!(events
            .iter()
            .all(|e| e.watchers.load(Ordering::SeqCst) == 0
                && e.sleepers.load(Ordering::SeqCst) == 0));
    }
}
