//! Alternation: wait on several guards at once and commit to exactly one.
//!
//! Guards are added to an [`Alternation`] with a closure each that turns what happened into a
//! value of one type `R` (as the arms of crossbeam's `select!` do); the select then returns
//! which guard fired and that value:
//!
//! - [`input`](Alternation::input): a message can be read from a channel end;
//! - [`output`](Alternation::output): a message can be written (on a rendezvous channel: a
//!   reader is there to take it). The guard holds the value until it is chosen: unchosen, it
//!   is dropped unsent, and the channel ends it carries retire;
//! - [`input_result`](Alternation::input_result), [`output_result`](Alternation::output_result):
//!   the same, reporting a channel's end to the closure (see *Termination*);
//! - [`timeout`](Alternation::timeout): nothing else fired within a duration;
//! - [`timer`](Alternation::timer): a [`Timer`] of this thread is due ([`after`], [`tick`]);
//! - [`skip`](Alternation::skip): always ready (a non-blocking select);
//!   [`otherwise`](Alternation::otherwise): ready when nothing else is, whatever the policy.
//!
//! Three policies, named as in PyCSP: [`pri_select`](Alternation::pri_select) takes the first
//! ready guard in the order given, [`alt_select`](Alternation::alt_select) one chosen
//! uniformly among the ready guards, [`fair_select`](Alternation::fair_select) the ready
//! guard whose channel this thread chose least recently (over all its selects, whatever their
//! guards), so no ready channel starves.
//!
//! A builder: it reads as plain Rust and takes any number of guards (also built in a loop).
//! crossbeam's [`select!`](crate::select!) macro is built on it, for a fixed set of arms.
//!
//! No silent caps: a select takes any number of guards, any number of processes may select
//! on one channel, and none of them polls. A select over more than 128 channels sleeps on a
//! bell of its own that the channels ring; a selecting process that finds a channel's offer
//! table full waits for room (see `shm/LAYOUT.md`).
//!
//! # Exactly once, across processes
//!
//! On a buffered channel, reading or writing the ring is itself the commitment (one CAS). On a
//! rendezvous channel, a selecting process that has to wait posts offers in the channels'
//! offer tables and sleeps on all the channels at once (`futex_waitv`); a counterpart commits
//! it with one CAS on its selection word (see `shm/waiter.rs`). As in Go's runtime, the
//! message then changes hands between exactly those two: a selecting writer stages its
//! message in an arena block before it waits, and whoever wins its offer (a selecting reader
//! or a plain `read`) takes that block; a writer that wins a selecting reader's offer hands
//! its message to that reader's record. So a plain reader and a selecting writer always see
//! each other (a plain writer's message sits in the ring, where selecting readers look), a
//! selecting writer writes nothing unless a reader committed to take its message, and each
//! message reaches exactly one reader. A select never counts its own offers: it cannot match
//! itself. The deadline of a timeout guard is checked every time the wait returns.
//!
//! # Termination
//!
//! A guard whose channel can never complete (poisoned, a peer died, or retired: for an input,
//! every writer retired and the buffer is drained; for an output, every reader retired) is
//! *ready*, as in JCSP and crossbeam, and reports its state:
//!
//! - [`input_result`](Alternation::input_result) and
//!   [`output_result`](Alternation::output_result) guards fire with the error (their closure
//!   gets `Err(Retired)`, `Err(Poisoned)`, ...), and the select returns `Ok` with their
//!   index, as crossbeam's `recv(r) -> msg` does: a server learns which client ended;
//! - [`input`](Alternation::input) and [`output`](Alternation::output) guards fail the select
//!   with `Poisoned` (or `PeerDied`) when chosen. A retired one is passed over while another
//!   channel guard of the select is live (so a server keeps serving its other clients);
//!   once every channel guard has retired the select fails with `Retired` (for a socket end
//!   whose connection was lost, with that `Connection` error), also when it has a skip or
//!   timeout guard: they never hide that every channel ended.
//!
//! ```
//! use std::time::Duration;
//! use pycsp_core::{alt::Alternation, Channel};
//!
//! let numbers = Channel::<u64>::buffered(4)?;
//! let words = Channel::<String>::buffered(4)?;
//! let (n_in, w_in) = (numbers.reader(), words.reader());
//! words.writer().write("hi".to_string())?;
//!
//! let chosen = Alternation::new()
//!     .input(&n_in, |n| format!("number {n}"))
//!     .input(&w_in, |w| format!("word {w}"))
//!     .timeout(Duration::from_millis(10), || "nothing".to_string())
//!     .pri_select()?;
//! assert_eq!((chosen.index, chosen.value.as_str()), (1, "word hi"));
//! # Ok::<(), pycsp_core::ChannelError>(())
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{encoding_kept, Carried, ChannelIn, ChannelOut};
use crate::error::ChannelError;
use crate::message::{decode, encode, in_context, write_encoded};
use crate::shm::arena::Arena;
use crate::shm::census::{self, Kind};
use crate::shm::ring::{
    Chan, Incoming, HELD_ANSWER_WAIT, PEER_DIED, POISONED, READERS_RETIRED, WRITERS_RETIRED,
};
use crate::shm::wait::{wait_parked, Event, Waiting};
use crate::shm::waiter::{self, Outcome, Waiter};
use crate::trace;

mod select;
mod timer;

#[doc(hidden)]
pub use select::__selected;
pub use select::{RecvGuard, SendGuard};
use timer::Fire;
pub use timer::{after, at, never, tick, Timer};

/// What an input guard does with its outcome: a message, or why its channel ended.
type InputFn<'a, R> =
    Box<dyn FnOnce(&Chan, Result<Incoming, ChannelError>) -> Result<R, ChannelError> + 'a>;
/// What an output guard does with its outcome: written, or why it could not be.
type OutputFn<'a, R> = Box<dyn FnOnce(Result<(), ChannelError>) -> Result<R, ChannelError> + 'a>;

enum Guard<'a, R> {
    Input {
        chan: Chan,
        take: InputFn<'a, R>,
        /// Whether the guard reports its channel's end to its closure (`input_result`):
        /// then it is ready as soon as its channel retired, was poisoned or lost a peer.
        reports: bool,
    },
    Output {
        chan: Chan,
        bytes: Result<Vec<u8>, ChannelError>,
        /// On a rendezvous channel, once the select first waits or meets a waiting reader:
        /// the arena block holding the message, and its length.
        staged: Option<(u64, u64)>,
        /// The value, kept until the guard is done: the ends it carries stay live (and are
        /// released when an unchosen guard drops it) unless its message is placed.
        held: Box<dyn Held + 'a>,
        carried: Carried,
        then: OutputFn<'a, R>,
        /// As for `Input`.
        reports: bool,
    },
    Timeout {
        after: Duration,
        then: Box<dyn FnOnce() -> R + 'a>,
    },
    Skip {
        then: Box<dyn FnOnce() -> R + 'a>,
        /// Tried after every other guard, whatever the policy ([`Alternation::otherwise`]).
        last: bool,
    },
    Timer {
        timer: &'a Timer,
        then: Box<dyn FnOnce(Instant) -> R + 'a>,
    },
}

/// Any value an output guard holds (only to drop it, or not, later).
trait Held {}
impl<T> Held for T {}

/// An output guard's message was placed (or taken): the ends its value carries are the
/// reader's now. Then the value is dropped.
fn sent(held: Box<dyn Held + '_>, carried: Carried) {
    census::count_message(true);
    // SAFETY: `held` is the boxed value `carried` was encoded from; it has not moved (it is
    // boxed) and is alive until the end of this function.
    unsafe { carried.sent() };
    drop(held);
}

/// Takes output guard `i`, whose message a reader took, and spends the ends its message
/// carries: its closure, to run with the outcome.
fn sent_output<'a, R>(guards: &mut [Option<Guard<'a, R>>], i: usize) -> OutputFn<'a, R> {
    let Some(Guard::Output {
        then,
        held,
        carried,
        ..
    }) = guards[i].take()
    else {
        unreachable!("only output guards are sent")
    };
    sent(held, carried);
    then
}

/// The guard that fired and the value its closure made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen<R> {
    /// The guard's position, in the order the guards were added.
    pub index: usize,
    /// What the guard's closure returned.
    pub value: R,
}

/// A set of guards to select from. See the [module documentation](self).
pub struct Alternation<'a, R> {
    guards: Vec<Guard<'a, R>>,
}

impl<R> Default for Alternation<'_, R> {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy)]
enum Policy {
    Pri,
    Alt,
    Fair,
}

thread_local! {
    /// For `fair_select`: when this thread last chose each channel (per direction) or skip,
    /// on a counter of choices (the counter is the last entry's value, under key `TICK`).
    static FAIR_LAST: RefCell<HashMap<u64, u64>> = RefCell::new(HashMap::new());
    static RNG: Cell<u64> = Cell::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
}

/// The key of `FAIR_LAST` under which its counter is kept (no guard has it).
const TICK: u64 = u64::MAX;

/// What `fair_select` remembers a guard by: its channel and direction (a channel's key
/// shifted by two, plus 1 for output), or its kind.
fn fair_key<R>(g: &Guard<'_, R>) -> u64 {
    match g {
        Guard::Input { chan, .. } => chan.key() << 2,
        Guard::Output { chan, .. } => (chan.key() << 2) | 1,
        Guard::Timeout { .. } => 2,
        Guard::Skip { .. } => 3,
        Guard::Timer { .. } => 4,
    }
}

fn random(n: usize) -> usize {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        (x % n as u64) as usize
    })
}

enum Step<R> {
    Done(Result<Chosen<R>, ChannelError>),
    Retired,
    NotReady,
    /// A timer guard that becomes ready at its deadline.
    Later,
}

impl<'a, R> Alternation<'a, R> {
    /// An empty set of guards.
    pub fn new() -> Self {
        Alternation { guards: Vec::new() }
    }

    /// An input guard: fires when a message can be read from `end`; `then` receives it.
    pub fn input<T: DeserializeOwned>(
        mut self,
        end: &'a ChannelIn<T>,
        then: impl FnOnce(T) -> R + 'a,
    ) -> Self {
        let context = end.context();
        let take: InputFn<'a, R> = Box::new(move |chan, msg| {
            let m = msg?;
            census::count_message(false);
            in_context(context, || decode(chan, m)).map(then)
        });
        self.guards.push(Guard::Input {
            chan: end.chan(),
            take,
            reports: false,
        });
        self
    }

    /// An input guard that reports its channel's end, as crossbeam's `recv(r) -> msg`: it
    /// fires with `Ok(message)`, or with `Err` as soon as its channel has retired (and is
    /// drained), was poisoned or lost a peer; the select itself then still returns `Ok`, with
    /// this guard's index.
    pub fn input_result<T: DeserializeOwned>(
        mut self,
        end: &'a ChannelIn<T>,
        then: impl FnOnce(Result<T, ChannelError>) -> R + 'a,
    ) -> Self {
        let context = end.context();
        let take: InputFn<'a, R> = Box::new(move |chan, msg| {
            Ok(then(msg.and_then(|m| {
                census::count_message(false);
                in_context(context, || decode(chan, m))
            })))
        });
        self.guards.push(Guard::Input {
            chan: end.chan(),
            take,
            reports: true,
        });
        self
    }

    /// An output guard: fires when `value` can be written to `end` (on a rendezvous channel:
    /// when a reader takes it); then `then` runs. If another guard fires, nothing is written.
    pub fn output<T: Serialize>(
        mut self,
        end: &'a ChannelOut<T>,
        value: T,
        then: impl FnOnce() -> R + 'a,
    ) -> Self {
        let (chan, context) = (end.chan(), end.context());
        let held = Box::new(value);
        let (bytes, carried) = encoding_kept(|| in_context(context, || encode(&chan, &*held)));
        self.guards.push(Guard::Output {
            chan,
            bytes,
            staged: None,
            held,
            carried,
            then: Box::new(move |r| r.map(|()| then())),
            reports: false,
        });
        self
    }

    /// An output guard that reports its channel's end, as crossbeam's `send(s, v) -> res`:
    /// it fires with `Ok(())` once `value` was written, or with `Err` as soon as every reader
    /// retired, the channel was poisoned or lost a peer (or `value` could not be encoded);
    /// the select then still returns `Ok`, with this guard's index.
    pub fn output_result<T: Serialize>(
        mut self,
        end: &'a ChannelOut<T>,
        value: T,
        then: impl FnOnce(Result<(), ChannelError>) -> R + 'a,
    ) -> Self {
        let (chan, context) = (end.chan(), end.context());
        let held = Box::new(value);
        let (bytes, carried) = encoding_kept(|| in_context(context, || encode(&chan, &*held)));
        self.guards.push(Guard::Output {
            chan,
            bytes,
            staged: None,
            held,
            carried,
            then: Box::new(move |r| Ok(then(r))),
            reports: true,
        });
        self
    }

    /// A timeout guard: fires if no other guard fired within `after`. A duration too large for
    /// the clock (`Duration::MAX`) is never due, like a [`never()`](fn@never) timer.
    pub fn timeout(mut self, after: Duration, then: impl FnOnce() -> R + 'a) -> Self {
        self.guards.push(Guard::Timeout {
            after,
            then: Box::new(then),
        });
        self
    }

    /// A skip guard: always ready. With `pri_select`, guards before it still take precedence.
    pub fn skip(mut self, then: impl FnOnce() -> R + 'a) -> Self {
        self.guards.push(Guard::Skip {
            then: Box::new(then),
            last: false,
        });
        self
    }

    /// A guard that fires when no other guard is ready, whatever the policy (crossbeam's
    /// `default`): a skip guard tried after all the others.
    pub fn otherwise(mut self, then: impl FnOnce() -> R + 'a) -> Self {
        self.guards.push(Guard::Skip {
            then: Box::new(then),
            last: true,
        });
        self
    }

    /// A timer guard: fires when `timer` is due (see [`Timer`]), with the instant it was due
    /// at; firing moves the timer on (an [`after`] timer is spent, a [`tick`] timer is due again
    /// one period later). A timer is this thread's own: waiting for it adds no channel and no
    /// polling, only a deadline to the select's wait.
    pub fn timer(mut self, timer: &'a Timer, then: impl FnOnce(Instant) -> R + 'a) -> Self {
        self.guards.push(Guard::Timer {
            timer,
            then: Box::new(then),
        });
        self
    }

    /// Selects the first ready guard in the order the guards were added.
    pub fn pri_select(self) -> Result<Chosen<R>, ChannelError> {
        self.select(Policy::Pri)
    }

    /// Selects a ready guard chosen uniformly at random among the ready ones (the guards
    /// are tried in a random order, as Go's `select` does).
    pub fn alt_select(self) -> Result<Chosen<R>, ChannelError> {
        self.select(Policy::Alt)
    }

    /// Selects the ready guard whose channel this thread chose least recently (in any select,
    /// whatever the other guards), so that over time no ready channel starves; guards whose
    /// channels were never chosen come first, in the order given.
    pub fn fair_select(self) -> Result<Chosen<R>, ChannelError> {
        self.select(Policy::Fair)
    }

    fn select(self, policy: Policy) -> Result<Chosen<R>, ChannelError> {
        let n = self.guards.len();
        assert!(n > 0, "an alternation needs at least one guard");
        let t0 = trace::begin();
        let keys: Vec<u64> = self.guards.iter().map(fair_key).collect();
        let mut order: Vec<usize> = (0..n).collect();
        match policy {
            Policy::Pri => {}
            Policy::Alt => {
                // Fisher-Yates: the first ready guard of a uniformly random order is uniform
                // among the ready guards.
                for k in (1..n).rev() {
                    order.swap(k, random(k + 1));
                }
            }
            Policy::Fair => FAIR_LAST.with(|f| {
                let f = f.borrow();
                order.sort_by_key(|&i| f.get(&keys[i]).copied().unwrap_or(0));
            }),
        }
        // `otherwise` guards come last, whatever the policy (a stable partition).
        order.sort_by_key(|&i| matches!(self.guards[i], Guard::Skip { last: true, .. }));
        let chosen = self.run(order);
        if t0 != 0 {
            trace::span("select", t0);
        }
        if let (Policy::Fair, Ok(c)) = (policy, &chosen) {
            FAIR_LAST.with(|f| {
                let mut f = f.borrow_mut();
                let tick = f.get(&TICK).copied().unwrap_or(0) + 1;
                f.insert(TICK, tick);
                f.insert(keys[c.index], tick);
            });
        }
        chosen
    }

    fn run(self, order: Vec<usize>) -> Result<Chosen<R>, ChannelError> {
        let arena = Arena::get().map_err(|e| ChannelError::SharedMemory(e.to_string()))?;
        let mut guards: Vec<Option<Guard<'a, R>>> = self.guards.into_iter().map(Some).collect();
        let mut waited = false;
        let chosen = run_guards(arena, &mut guards, &order, &mut waited);
        for (i, g) in guards.iter_mut().enumerate() {
            let Some(g) = g else { continue };
            match g {
                // An unchosen output guard's staged message was never taken: free its block.
                Guard::Output { staged, .. } => {
                    if let Some((offset, _)) = staged.take() {
                        free_staged(arena, i, offset);
                    }
                }
                // A wake-up meant for a message we did not take (a plain writer's, in the
                // ring) may have woken us: pass it on to another reader.
                Guard::Input { chan, .. } if waited && chan.looks_nonempty() => {
                    chan.events().0.notify_one();
                }
                _ => {}
            }
        }
        chosen
    }
}

fn run_guards<'a, R>(
    arena: &'static Arena,
    guards: &mut [Option<Guard<'a, R>>],
    order: &[usize],
    waited: &mut bool,
) -> Result<Chosen<R>, ChannelError> {
    let began = Instant::now();
    let timeout = guards
        .iter()
        .enumerate()
        .filter_map(|(i, g)| match g {
            Some(Guard::Timeout { after, .. }) => Some((*after, i)),
            _ => None,
        })
        .min_by_key(|(after, _)| *after)
        // A timeout too large for the clock is never due: a guard that can never fire.
        .filter(|(after, _)| began.checked_add(*after).is_some());
    let deadline = timeout.and_then(|(after, _)| began.checked_add(after));
    // The wait ends at the timeout or when the first timer is due, whichever comes first.
    let wake_at = guards
        .iter()
        .filter_map(|g| match g {
            Some(Guard::Timer { timer, .. }) => timer.deadline(),
            _ => None,
        })
        .chain(deadline)
        .min();
    let claim = |w| waiter::claim(arena, w);
    let channel_guards = guards
        .iter()
        .filter(|g| matches!(g, Some(Guard::Input { .. } | Guard::Output { .. })))
        .count();
    loop {
        // Try phase: the first ready guard in policy order wins.
        let (mut live, mut timers) = (0, 0);
        for &i in order {
            if let Some(Guard::Skip { .. }) = guards[i] {
                // A skip never hides that every channel of the select has ended.
                if channel_guards > 0 && guards.iter().all(|g| looks_retired(g.as_ref())) {
                    return Err(every_guard_retired(guards, order));
                }
            }
            match try_guard(arena, guards, i, &claim) {
                Step::Done(r) => return r,
                Step::Retired => {}
                Step::NotReady => live += 1,
                Step::Later => timers += 1,
            }
        }
        if live == 0 && (channel_guards > 0 || (timeout.is_none() && timers == 0)) {
            // Every channel guard retired: a timeout or timer guard does not hide it either.
            return Err(every_guard_retired(guards, order));
        }
        // The deadline is checked every time the wait returns, whatever woke it.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(fire_timeout(guards, timeout));
        }
        // A guard waiting for messages given back on a channel whose peer died waits until
        // its grace ends at most (see `try_guard`).
        let wake_at = guards
            .iter()
            .filter_map(|g| match g {
                Some(Guard::Input { chan, .. }) if chan.state_flags() & PEER_DIED != 0 => {
                    chan.give_back_grace()
                }
                _ => None,
            })
            .chain(wake_at)
            .min();
        // Wait phase: stage the messages of rendezvous output guards where a claimer can
        // take them, say what each guard waits on, post offers on rendezvous channels and
        // sleep on every channel.
        let me = Waiter::current(arena, guards.len())?;
        for (i, g) in guards.iter_mut().enumerate() {
            let key = match g {
                Some(Guard::Input { chan, .. }) if chan.is_rendezvous() => chan.offer_key(true),
                Some(Guard::Output {
                    chan,
                    bytes: Ok(bytes),
                    staged,
                    ..
                }) if chan.is_rendezvous() => {
                    let (offset, len) = stage(arena, chan, bytes, staged)?;
                    me.stage(i, offset, len);
                    chan.offer_key(false)
                }
                _ => 0,
            };
            me.set_key(i, key);
        }
        // Before the round begins: a message a claimer takes from us is taken after this.
        let round_t = trace::begin();
        me.begin();
        *waited = true;
        let mut posted: Vec<(Chan, bool, u64)> = Vec::new();
        // Rendezvous guards that could not post an offer (their table was full): they wait
        // for room, or a counterpart's offer, on their channel's event (see `shm/ring.rs`).
        let mut unposted: Vec<bool> = vec![false; guards.len()];
        let mut events: Vec<&'static Event> = Vec::new();
        let mut deadlocked = false;
        // In policy order: a plain reader takes the first offer in the table, so the table's
        // order is the choice among our output guards on one channel.
        for &i in order {
            let (chan, reads) = match &guards[i] {
                Some(Guard::Input { chan, .. }) => (*chan, true),
                Some(Guard::Output { chan, .. }) => (*chan, false),
                _ => continue,
            };
            let (rx, tx) = chan.events();
            events.push(if reads { rx } else { tx });
            if chan.is_rendezvous() {
                match me.offer(i) {
                    Some(word) if chan.post_offer(reads, word) => posted.push((chan, reads, word)),
                    _ => unposted[i] = true,
                }
            }
        }
        events.sort_unstable_by_key(|e| std::ptr::from_ref::<Event>(e) as usize);
        events.dedup_by_key(|e| std::ptr::from_ref::<Event>(e) as usize);
        if events.is_empty() {
            // Only timeout and timer guards: sleep until the first is due.
            // (None of them is ever due: sleep on; each round re-checks.)
            let forever = Duration::from_secs(3600);
            std::thread::sleep(
                wake_at.map_or(forever, |d| d.saturating_duration_since(Instant::now())),
            );
        } else {
            let id = me.id();
            // A remote reading end's pump counts this wait as its user's (see `readers_waited`).
            let since: Vec<(Chan, Option<u64>)> = guards
                .iter()
                .filter_map(|g| match g {
                    Some(Guard::Input { chan, .. }) => Some((*chan, chan.reader_wait_starts())),
                    _ => None,
                })
                .filter(|(_, t)| t.is_some())
                .collect();
            let woke = waiting_on(guards, |waiting| {
                wait_parked(
                    &events,
                    wake_at,
                    Some(waiting),
                    || {
                        (me.is_selected()
                            || guards
                                .iter()
                                .zip(&unposted)
                                .any(|(g, &unposted)| looks_ready(g.as_ref(), id, unposted))
                            // The last channel guard retired: the select ends (see the try
                            // phase).
                            || (channel_guards > 0
                                && guards.iter().all(|g| looks_retired(g.as_ref()))))
                        .then_some(true)
                    },
                    || false,
                    || false,
                )
            });
            deadlocked = woke == Some(false);
            for (chan, t) in since {
                chan.reader_wait_ends(t);
            }
        }
        let outcome = me.finish();
        for (chan, reads, word) in posted {
            chan.withdraw_offer(reads, word);
        }
        if let Outcome::Selected(i) = outcome {
            if let Some(r) = complete_selected(me, guards, i, round_t, (&events, wake_at)) {
                return r;
            }
            // The claimer gave our message back (a remote end's pump found no reader for it
            // in time): nothing was sent; the select goes on.
        }
        if deadlocked {
            return Err(ChannelError::Deadlock);
        }
    }
}

/// Runs `wait` with what the census sees of a select that waits on `guards`: each channel
/// guard's side, in the guards' order (the names are looked up now: only a select that
/// waits pays for it).
fn waiting_on<R, T>(guards: &[Option<Guard<'_, R>>], wait: impl FnOnce(Waiting<'_>) -> T) -> T {
    let sides: Vec<(u64, bool, &'static str, &Event)> = guards
        .iter()
        .filter_map(|g| match g {
            Some(Guard::Input { chan, .. }) => {
                Some((chan.key(), false, chan.name(), chan.events().0))
            }
            Some(Guard::Output { chan, .. }) => {
                Some((chan.key(), true, chan.name(), chan.events().1))
            }
            _ => None,
        })
        .collect();
    let names: Vec<_> = sides.iter().map(|s| move || s.2).collect();
    let on: Vec<(u64, bool, &dyn Fn() -> &'static str, &Event)> = sides
        .iter()
        .zip(&names)
        .map(|(s, n)| (s.0, s.1, n as &dyn Fn() -> &'static str, s.3))
        .collect();
    wait(Waiting {
        kind: Kind::Select,
        on: &on,
        hand_over: false,
        far: None,
    })
}

/// The timeout guard fires.
fn fire_timeout<R>(
    guards: &mut [Option<Guard<'_, R>>],
    timeout: Option<(Duration, usize)>,
) -> Chosen<R> {
    let (_, i) = timeout.expect("a deadline comes from a timeout guard");
    let Some(Guard::Timeout { then, .. }) = guards[i].take() else {
        unreachable!()
    };
    Chosen {
        index: i,
        value: then(),
    }
}

/// Frees output guard `i`'s staged block, which no reader took: named no more by the
/// thread's waiter record first (see `waiter::unstage`).
fn free_staged(arena: &'static Arena, i: usize, offset: u64) {
    waiter::unstage(i);
    arena.free_block(offset);
}

/// The block holding an output guard's message, staged for a reader to take (allocated and
/// filled once per select).
fn stage(
    arena: &'static Arena,
    chan: &Chan,
    bytes: &[u8],
    staged: &mut Option<(u64, u64)>,
) -> Result<(u64, u64), ChannelError> {
    if let Some(s) = *staged {
        return Ok(s);
    }
    let len = bytes.len() as u64;
    let offset = arena
        .alloc_block(len)
        .map_err(|e| e.into_channel_error(chan.name()))?;
    // SAFETY: the block was just allocated for us and is `len` bytes long (checked by `ptr`);
    // nobody reads it before a claimer wins our offer, which is after it is named in `out`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), arena.ptr(offset, len), bytes.len()) };
    *staged = Some((offset, len));
    Ok((offset, len))
}

/// How the claimer of an output guard's message let go of it.
enum Hold {
    /// A reader took it.
    Taken,
    /// The claimer gave it back, not taken.
    GivenBack,
    /// The channel failed meanwhile.
    Failed(ChannelError),
}

/// Completes guard `i`, which a counterpart selected while we waited (`waited`: the events the
/// round waited on, and when its timeout or first timer is due); `None` if that counterpart
/// gave an output guard's message back, not taken (the guard stays, its message staged, for
/// the next round).
fn complete_selected<R>(
    me: &Waiter,
    guards: &mut [Option<Guard<'_, R>>],
    i: usize,
    round_t: u64,
    waited: (&[&Event], Option<Instant>),
) -> Option<Result<Chosen<R>, ChannelError>> {
    match &guards[i] {
        Some(Guard::Input { .. }) => {
            let Some(Guard::Input { chan, take, .. }) = guards[i].take() else {
                unreachable!()
            };
            // A writer won us: it delivers its message to our record at once.
            let rx = chan.events().0;
            let mut mail = rx.wait_until(
                None,
                || {
                    me.mail()
                        .map(Ok)
                        .or_else(|| (chan.state_flags() & PEER_DIED != 0).then_some(Err(())))
                },
                || false,
            );
            if let Some(Err(())) = mail {
                // A process of the channel died: give the writer a moment, in case it lives.
                let grace = Instant::now() + Duration::from_millis(100);
                mail = rx.wait_until(Some(grace), || me.mail().map(Ok), || false);
            }
            let msg = match mail {
                Some(Ok((offset, len))) => {
                    if round_t != 0 {
                        trace::took(chan.name(), me.message_id(i), round_t);
                    }
                    Ok(Incoming::Block { offset, len })
                }
                _ => Err(chan.peer_died()),
            };
            Some(take(&chan, msg).map(|value| Chosen { index: i, value }))
        }
        Some(Guard::Output { chan, staged, .. }) => {
            // A reader won us and took the staged block (with the ends it carries): wait
            // until it has the message, or gives it back.
            let chan = *chan;
            debug_assert!(staged.is_some());
            let (hold, deadlocked) = await_claimer(me, guards, i, chan, waited);
            let done = match hold {
                Hold::GivenBack if deadlocked => return Some(Err(ChannelError::Deadlock)),
                Hold::GivenBack => return None,
                Hold::Taken => Ok(()),
                // Left to its claimer (see `after_failure`); a socket end's pump that gave up
                // on its host says why.
                Hold::Failed(ChannelError::Timeout) => {
                    Err(crate::net::server::silent_reader(&chan))
                }
                Hold::Failed(e) => Err(crate::net::client::remote_error(&chan, e)),
            };
            // The block is the reader's now (the guard is gone: `run` does not free it).
            let then = sent_output(guards, i);
            if round_t != 0 {
                trace::sent(me.message_id(i), round_t);
            }
            Some(then(done).map(|value| Chosen { index: i, value }))
        }
        _ => unreachable!("only channel guards are offered"),
    }
}

/// Waits until the claimer of output guard `i`'s message (on `chan`) let go of it. A claimer
/// that keeps it only until asked (a socket pump offering it to a remote host, see
/// `Chan::offer_withdrawable`) is asked for it back once the select has something else to do:
/// its timeout or first timer is due, another guard looks ready, or the census declared the
/// network deadlocked (the second value: then the select fails, unless a reader took the
/// message meanwhile). Meanwhile the select is seen by the census as waiting on its guards.
fn await_claimer<R>(
    me: &Waiter,
    guards: &[Option<Guard<'_, R>>],
    i: usize,
    chan: Chan,
    (events, wake_at): (&[&Event], Option<Instant>),
) -> (Hold, bool) {
    let held = || {
        let_go(me, i).or_else(|| {
            let f = chan.state_flags();
            if f & POISONED != 0 {
                Some(Hold::Failed(ChannelError::Poisoned))
            } else if f & PEER_DIED != 0 {
                Some(Hold::Failed(chan.peer_died()))
            } else {
                None
            }
        })
    };
    let (hold, deadlocked) = claimer_lets_go(me, guards, i, chan, (events, wake_at), held);
    match hold {
        Hold::Failed(e) => (after_failure(me, i, chan, e), deadlocked),
        hold => (hold, deadlocked),
    }
}

/// Whether the claimer of output guard `i`'s message took it or gave it back.
fn let_go(me: &Waiter, i: usize) -> Option<Hold> {
    if me.taken(i) {
        Some(Hold::Taken)
    } else if me.given_back(i) {
        Some(Hold::GivenBack)
    } else {
        None
    }
}

/// How long a select whose channel failed (poison, a dead process) waits for the claimer of
/// its output guard's message, in another process, to take it or give it back, before it
/// leaves it (then the block is not freed: the claimer may have died with the channel).
const CLAIMER_GRACE: Duration = Duration::from_millis(100);

/// The channel failed (`e`) while a claimer holds output guard `i`'s message: waits until the
/// claimer lets go of it, so that the block is freed once, by whoever has it (once the select
/// failed at once and forgot the block, which a claimer that gave it back then leaked). A
/// claimer that keeps the message only until asked (a socket pump of this process offering it
/// to its host) is asked, and answers within a round trip; a reader elsewhere decides at
/// once, or within [`CLAIMER_GRACE`], after which the select leaves the block to it. Given
/// back, the guard's next round reports the failure and frees its staged block.
///
/// A socket pump marks its claim withdrawable only once it sent the message to its host: a
/// failure in between found the claim not (yet) withdrawable, left the message after the
/// grace without asking for it, and the select reported the failure while its message was
/// still offered at the host, where a reader then took it (delivered, though the select said
/// it failed: `tests/sockets.rs`, 1 run in 30). So the wait also ends when the claim becomes
/// withdrawable (the pump's mark wakes this event), and the message is asked back then.
///
/// A pump whose host did not answer (or whose connection was lost) with the message there
/// does not know whether a reader took it: it neither gives it back nor says it was taken,
/// and marks the channel's peer dead; the select then leaves the message after the grace and
/// fails, never reporting another guard while its message may have been delivered.
fn after_failure(me: &Waiter, i: usize, chan: Chan, e: ChannelError) -> Hold {
    let grace = Instant::now() + CLAIMER_GRACE;
    let mut asked = false;
    loop {
        if !asked && me.withdrawable(i) {
            me.ask_back(i);
            chan.events().1.notify_all();
            asked = true;
        }
        // Asked, a pump answers within a round trip, unless it gave up on its host (stopped,
        // or gone, with the message: it marks the channel's peer dead): then it never will.
        let deadline = (!asked || chan.state_flags() & PEER_DIED != 0).then_some(grace);
        let ready = || {
            let_go(me, i)
                .map(Some)
                .or_else(|| (!asked && me.withdrawable(i)).then_some(None))
        };
        match chan.events().1.wait_until(deadline, ready, || false) {
            Some(Some(hold)) => return hold,
            // Withdrawable now: asked above.
            Some(None) => {}
            None => {
                // Its claimer has the block and did not say it is done with it: the record
                // no longer names it (a leak if the claimer died, never a block freed
                // twice).
                waiter::unstage(i);
                return Hold::Failed(e);
            }
        }
    }
}

/// [`await_claimer`]'s wait, with `held` saying whether the claimer let go or the channel
/// failed.
fn claimer_lets_go<R>(
    me: &Waiter,
    guards: &[Option<Guard<'_, R>>],
    i: usize,
    chan: Chan,
    (events, wake_at): (&[&Event], Option<Instant>),
    held: impl Fn() -> Option<Hold>,
) -> (Hold, bool) {
    let id = me.id();
    let others_ready = || {
        guards
            .iter()
            .enumerate()
            .any(|(j, g)| j != i && looks_ready(g.as_ref(), id, false))
    };
    let mut deadlocked = false;
    let give_up = wake_at.map(|t| t.max(Instant::now()) + HELD_ANSWER_WAIT);
    loop {
        if me.withdrawable(i) {
            // `Some(None)`: something else to do; `None`: the timeout or a timer is due.
            let r = waiting_on(guards, |waiting| {
                wait_parked(
                    events,
                    wake_at,
                    Some(waiting),
                    || match held() {
                        Some(h) => Some(Some(h)),
                        None => others_ready().then_some(None),
                    },
                    || false,
                    || {
                        deadlocked = true;
                        None
                    },
                )
            });
            if let Some(Some(h)) = r {
                return (h, deadlocked);
            }
            me.ask_back(i);
            // Its claimer, a socket pump, sleeps on this event while the host keeps the offer.
            chan.events().1.notify_all();
            // It answers within a round trip to its host: it gives the message back, or a
            // reader took it meanwhile.
            let h = chan.events().1.wait_until(None, held, || false);
            return (h.expect("no deadline"), deadlocked);
        }
        // Until it let go, or says it keeps the message only until asked. A claimer decides
        // at once, but a socket host that sent the message to its remote reader decides only
        // with that reader's answer: a select that has a timeout or timer waits for it at
        // most `HELD_ANSWER_WAIT` past that (a reader stopped, or hung, with its connection
        // up), then fails (`net::server::silent_reader` names it): it may have taken it.
        let h = chan.events().1.wait_until(
            give_up,
            || match held() {
                Some(h) => Some(Some(h)),
                None => me.withdrawable(i).then_some(None),
            },
            || false,
        );
        match h {
            Some(Some(h)) => return (h, deadlocked),
            Some(None) => {}
            None => return (Hold::Failed(ChannelError::Timeout), deadlocked),
        }
    }
}

/// Whether `g` is a channel guard whose channel has retired for good (or no channel guard);
/// a hint, without taking anything.
fn looks_retired<R>(g: Option<&Guard<'_, R>>) -> bool {
    match g {
        Some(Guard::Input { reports: true, .. } | Guard::Output { reports: true, .. }) => false,
        Some(Guard::Input { chan, .. }) => {
            // Not while a message taken and not emptied may come back (see `try_guard`).
            let may_get_more =
                || (chan.is_rendezvous() && chan.has_offers(false)) || chan.more_may_come_back();
            chan.state_flags() & WRITERS_RETIRED != 0 && !chan.looks_nonempty() && !may_get_more()
        }
        Some(Guard::Output { chan, .. }) => chan.state_flags() & READERS_RETIRED != 0,
        _ => true,
    }
}

/// Whether guard `g` may have become ready (or failed): worth another try phase.
/// Offers of waiter `me` (this select) do not count: a select never waits for itself.
/// An `unposted` rendezvous guard (its offer table was full) also looks for room to offer,
/// and an unposted output guard for readers' offers (nobody can claim it meanwhile).
fn looks_ready<R>(g: Option<&Guard<'_, R>>, me: u64, unposted: bool) -> bool {
    // A retired channel makes its guard ready only if the guard reports it: a guard that does
    // not never fires again (`retired`), so waking for it would only spin.
    let ended = |flags: u32, retired: u32, reports: bool| {
        flags & (POISONED | PEER_DIED) != 0 || (reports && flags & retired != 0)
    };
    match g {
        Some(Guard::Input { chan, reports, .. }) => {
            let f = chan.state_flags();
            // Ended, unless taken messages may still come back (see `try_guard`).
            let for_good = || {
                if f & POISONED != 0 {
                    true
                } else if f & PEER_DIED != 0 {
                    chan.give_back_grace().is_none()
                } else {
                    !chan.more_may_come_back()
                }
            };
            (ended(f, WRITERS_RETIRED, *reports) && for_good())
                || chan.looks_nonempty()
                || (chan.is_rendezvous() && chan.has_offers_from_others(false, me))
                || (unposted && chan.offer_room(true))
        }
        Some(Guard::Output { chan, reports, .. }) => {
            let flags = chan.state_flags();
            if !*reports && flags & (POISONED | PEER_DIED | READERS_RETIRED) == READERS_RETIRED {
                return false; // nobody will ever read what it would write
            }
            ended(flags, READERS_RETIRED, *reports)
                || (!chan.is_rendezvous() && chan.looks_writable())
                || (unposted && (chan.offer_room(false) || chan.has_offers_from_others(true, me)))
        }
        _ => false,
    }
}

fn try_guard<'a, R>(
    arena: &'static Arena,
    guards: &mut [Option<Guard<'a, R>>],
    i: usize,
    claim: &impl Fn(waiter::Offer) -> waiter::Claim,
) -> Step<R> {
    match &mut guards[i] {
        Some(Guard::Skip { .. }) => {
            let Some(Guard::Skip { then, .. }) = guards[i].take() else {
                unreachable!()
            };
            Step::Done(Ok(Chosen {
                index: i,
                value: then(),
            }))
        }
        Some(Guard::Timer { timer, .. }) => match timer.fire(Instant::now()) {
            Fire::Now(at) => {
                let Some(Guard::Timer { then, .. }) = guards[i].take() else {
                    unreachable!()
                };
                Step::Done(Ok(Chosen {
                    index: i,
                    value: then(at),
                }))
            }
            Fire::Later => Step::Later,
            Fire::Never => Step::Retired,
        },
        Some(Guard::Timeout { .. }) | None => Step::Retired,
        Some(Guard::Input { chan, reports, .. }) => {
            let (chan, reports) = (*chan, *reports);
            let f = chan.state_flags();
            if f & POISONED != 0 {
                return Step::Done(ended(arena, guards, i, ChannelError::Poisoned));
            }
            if let Some(msg) = chan.try_pop() {
                chan.events().1.notify_all();
                return Step::Done(take_input(guards, i, msg));
            }
            // A remote reading end's pump asks for a message only while its user looks.
            chan.reader_came();
            if f & PEER_DIED != 0 {
                // Everything published was read; a slot the dead writer never published is
                // not waited for here (plain reads skip it after a grace period). Messages
                // given back may still come for a while, as for a plain read (the wait phase
                // wakes when that grace ends).
                if chan.give_back_grace().is_some() {
                    return Step::NotReady;
                }
                return Step::Done(ended(arena, guards, i, chan.peer_died()));
            }
            if chan.is_rendezvous() {
                if let Some(h) = chan.claim_offer(false, claim) {
                    // A selecting writer is committed to us: its staged block is ours.
                    chan.release_offer(h.word);
                    if trace::on() {
                        trace::took(chan.name(), waiter::message_id(h.word, h.round), 0);
                    }
                    let msg = Incoming::Block {
                        offset: h.offset,
                        len: h.len,
                    };
                    return Step::Done(take_input(guards, i, msg));
                }
            }
            if f & WRITERS_RETIRED != 0 {
                // Not while a message taken and not emptied may come back (a remote reader's
                // host gives back what that reader asked for ahead and did not get): as a
                // plain read, the guard waits for it.
                if chan.more_may_come_back() {
                    return Step::NotReady;
                }
                return retired(arena, guards, i, reports);
            }
            Step::NotReady
        }
        Some(Guard::Output {
            chan,
            bytes,
            staged,
            reports,
            ..
        }) => {
            let (chan, reports) = (*chan, *reports);
            let f = chan.state_flags();
            if f & POISONED != 0 {
                return Step::Done(ended(arena, guards, i, ChannelError::Poisoned));
            }
            if f & PEER_DIED != 0 {
                return Step::Done(ended(arena, guards, i, chan.peer_died()));
            }
            if f & READERS_RETIRED != 0 {
                return retired(arena, guards, i, reports);
            }
            let bytes = match bytes {
                Ok(b) => b,
                Err(e) => {
                    let e = e.clone();
                    return Step::Done(ended(arena, guards, i, e));
                }
            };
            if chan.is_rendezvous() {
                if !chan.has_offers(true) {
                    return Step::NotReady;
                }
                let (offset, len) = match stage(arena, &chan, bytes, staged) {
                    Ok(s) => s,
                    Err(e) => return Step::Done(ended(arena, guards, i, e)),
                };
                if let Some(h) = chan.claim_offer(true, claim) {
                    // A selecting reader is committed to us: hand it the message.
                    *staged = None;
                    waiter::unstage(i);
                    // Before the reader can have the message.
                    let t0 = trace::begin();
                    waiter::deliver(arena, h.word, offset, len);
                    if t0 != 0 {
                        trace::wrote(chan.name(), waiter::message_id(h.word, h.round), t0);
                    }
                    chan.events().0.notify_all();
                    let then = sent_output(guards, i);
                    return Step::Done(then(Ok(())).map(|value| Chosen { index: i, value }));
                }
                return Step::NotReady;
            }
            if !chan.looks_writable() {
                return Step::NotReady;
            }
            // Buffered: placing the message in the ring is the commitment. A ring that filled
            // up since we looked makes the write wait briefly for room, never fail.
            Step::Done(complete(guards, i))
        }
    }
}

/// The error of a select whose channel guards have all retired: `Retired`, unless one of them
/// (the first in policy order) is a socket end whose connection was lost; then that error.
fn every_guard_retired<R>(guards: &[Option<Guard<'_, R>>], order: &[usize]) -> ChannelError {
    order
        .iter()
        .find_map(|&i| match &guards[i] {
            Some(Guard::Input { chan, .. } | Guard::Output { chan, .. }) => {
                match crate::net::client::remote_error(chan, ChannelError::Retired) {
                    ChannelError::Retired => None,
                    e => Some(e),
                }
            }
            _ => None,
        })
        .unwrap_or(ChannelError::Retired)
}

fn take_input<R>(
    guards: &mut [Option<Guard<'_, R>>],
    i: usize,
    msg: Incoming,
) -> Result<Chosen<R>, ChannelError> {
    let Some(Guard::Input { chan, take, .. }) = guards[i].take() else {
        unreachable!()
    };
    take(&chan, Ok(msg)).map(|value| Chosen { index: i, value })
}

/// Channel guard `i` cannot complete because of `error`: a reporting guard fires with it, any
/// other fails the select with it.
fn ended<R>(
    arena: &'static Arena,
    guards: &mut [Option<Guard<'_, R>>],
    i: usize,
    error: ChannelError,
) -> Result<Chosen<R>, ChannelError> {
    let value = match guards[i].take() {
        Some(Guard::Input { chan, take, .. }) => take(&chan, Err(error)),
        Some(Guard::Output { staged, then, .. }) => {
            if let Some((offset, _)) = staged {
                free_staged(arena, i, offset);
            }
            then(Err(error))
        }
        _ => unreachable!("only channel guards end"),
    };
    value.map(|value| Chosen { index: i, value })
}

/// Channel guard `i` retired: a reporting guard fires with `Retired` (or the lost connection
/// of a socket end); any other is passed over.
fn retired<R>(
    arena: &'static Arena,
    guards: &mut [Option<Guard<'_, R>>],
    i: usize,
    reports: bool,
) -> Step<R> {
    if !reports {
        return Step::Retired;
    }
    let error = match &guards[i] {
        Some(Guard::Input { chan, .. } | Guard::Output { chan, .. }) => {
            crate::net::client::remote_error(chan, ChannelError::Retired)
        }
        _ => ChannelError::Retired,
    };
    Step::Done(ended(arena, guards, i, error))
}

/// Completes output guard `i` on a buffered channel: places its message in the ring.
fn complete<R>(guards: &mut [Option<Guard<'_, R>>], i: usize) -> Result<Chosen<R>, ChannelError> {
    match guards[i].take() {
        Some(Guard::Output {
            chan,
            bytes,
            then,
            held,
            carried,
            ..
        }) => {
            let written = bytes.and_then(|b| write_encoded(&chan, &b, None));
            if written.is_ok() {
                sent(held, carried);
            }
            then(written).map(|value| Chosen { index: i, value })
        }
        _ => unreachable!("only buffered output guards are completed here"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_waiting_for_a_message_in_a_read_or_a_select_counts_as_waiting() {
        // What a remote reading end's pump subtracts from the time between its user's takes:
        // a user that reads through a select waits as one that reads (it once counted as
        // working all along, and a select's stream got the window of a slow user).
        let c = crate::channel::Channel::<u64>::buffered(4).unwrap();
        let r = c.reader();
        r.chan().watch_readers();
        let ms = Duration::from_millis;
        let before = r.chan().readers_waited();
        assert_eq!(r.read_timeout(ms(30)), Err(ChannelError::Timeout));
        let read = r.chan().readers_waited() - before;
        let chosen = Alternation::new()
            .input(&r, |_| false)
            .timeout(ms(30), || true)
            .pri_select()
            .unwrap();
        assert!(chosen.value, "the timeout fired");
        let selected = r.chan().readers_waited() - before - read;
        // Each waited its 30 ms, less the moment before its wait began.
        assert!(read >= 20_000_000, "a read waited {read} ns");
        assert!(selected >= 20_000_000, "a select waited {selected} ns");
    }
}
