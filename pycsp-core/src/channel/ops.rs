//! The operations crossbeam-channel users know, across processes: `try_read`/`try_write`,
//! operations with a deadline, writes that hand the value back when they fail (as
//! crossbeam's `TrySendError<T>` and `SendTimeoutError<T>`), `len`, `is_empty`, `is_full`,
//! `capacity` and `try_iter`.
//!
//! | crossbeam-channel | pycsp |
//! |---|---|
//! | `s.try_send(v)` → `Err(TrySendError::Full(v))` | [`out.try_write(v)`](ChannelOut::try_write) → `Err(TryWriteError::Full(v))` |
//! | `s.send_timeout(v, d)` → `Err(SendTimeoutError::Timeout(v))` | [`out.write_timeout(v, d)`](ChannelOut::write_timeout) → `Err(WriteTimeoutError::Timeout(v))` |
//! | `s.send_deadline(v, t)` | [`out.write_deadline(v, t)`](ChannelOut::write_deadline) |
//! | `…::Disconnected(v)` | `…::Failed(v, ChannelError::Retired)` (or `Poisoned`, `PeerDied`, …) |
//! | `r.try_recv()` → `Err(TryRecvError::Empty)` | [`inp.try_read()`](ChannelIn::try_read) → `Err(TryReadError::Empty)` |
//! | `r.recv_timeout(d)`, `r.recv_deadline(t)` | [`inp.read_timeout(d)`](ChannelIn::read_timeout), [`inp.read_deadline(t)`](ChannelIn::read_deadline) |
//! | `r.try_iter()`, `r.iter()`, `for m in &r` | [`inp.try_iter()`](ChannelIn::try_iter), [`inp.iter()`](ChannelIn::iter), `for m in &inp` (items are `Result`s) |
//! | `len()`, `is_empty()`, `is_full()`, `capacity()` | the same, on both ends |
//!
//! ```
//! use pycsp_core::{Channel, TryWriteError};
//!
//! let ch = Channel::<String>::buffered(1)?;
//! let (tx, rx) = (ch.writer(), ch.reader());
//! tx.try_write("first".to_string()).expect("room for one");
//! assert!(tx.is_full());
//! match tx.try_write("second".to_string()) {
//!     Err(TryWriteError::Full(v)) => assert_eq!(v, "second"), // handed back
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(rx.try_read().ok(), Some("first".to_string()));
//! assert!(rx.is_empty());
//! # Ok::<(), pycsp_core::ChannelError>(())
//! ```

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{encoding_kept, ChannelIn, ChannelOut};
use crate::error::{ChannelError, TryReadError, TryWriteError, WriteTimeoutError};
use crate::message::{self, Context};
use crate::net;
use crate::shm::census;
use crate::shm::wait::{self, deadline_after};

/// How long [`ChannelOut::try_write`] on a rendezvous channel gives a reader that sleeps in a
/// read to wake up and take the message: a futex wake-up takes 15-40 µs on an idle machine,
/// more when processes outnumber cores.
const WAKE_GRACE: Duration = Duration::from_millis(20);
/// The same when no reader sleeps on the channel: a reader that is spinning or yielding in a
/// read looks at the ring every few hundred nanoseconds.
const SPIN_GRACE: Duration = Duration::from_micros(50);

/// How a write that hands its value back ended.
enum Sent<T> {
    Written,
    /// Not delivered: the value, and why.
    Back(T, ChannelError),
    /// Placed, and perhaps taken, when the channel failed.
    Uncertain(ChannelError),
}

impl<T: Serialize> ChannelOut<T> {
    /// Writes `value` if that can be done now, without waiting: crossbeam's `try_send`.
    ///
    /// On a buffered channel the message goes in if the buffer has room. On a rendezvous
    /// channel it succeeds only if a reader is waiting to take it: the message is offered to
    /// the readers blocked in a read (plain or in an alternation), which are woken, and is
    /// withdrawn unless one takes it within a short grace (20 ms when a reader sleeps on the
    /// channel, 50 µs when none does). So with no reader waiting it fails at once, and a
    /// reader that arrives later never gets a withdrawn message.
    ///
    /// On failure the value comes back: [`TryWriteError::Full`] (no room, or no reader
    /// waiting) or [`TryWriteError::Failed`] (the channel retired, was poisoned, lost a
    /// peer; the value does not encode), with the channel ends and shared memory it carries
    /// still the caller's. Only when the channel fails in the middle of a rendezvous may the
    /// message have been taken ([`TryWriteError::Uncertain`]).
    pub fn try_write(&self, value: T) -> Result<(), TryWriteError<T>> {
        let chan = self.end.chan;
        let grace = if !chan.is_rendezvous() {
            Duration::ZERO
        } else if chan.events().0.sleepers() > 0 {
            WAKE_GRACE
        } else {
            SPIN_GRACE
        };
        // A buffered channel's try is one look: a deadline already passed, no clock reading.
        let deadline = if grace.is_zero() {
            Some(wait::passed())
        } else {
            Instant::now().checked_add(grace)
        };
        match self.send_back(value, deadline) {
            Sent::Written => Ok(()),
            Sent::Back(v, ChannelError::Timeout) => Err(TryWriteError::Full(v)),
            Sent::Back(v, e) => Err(TryWriteError::Failed(v, e)),
            Sent::Uncertain(e) => Err(TryWriteError::Uncertain(e)),
        }
    }

    /// Like [`write`](Self::write), but gives up after `timeout` if the message could not be
    /// placed or, on a rendezvous channel, no reader took it by then: crossbeam's
    /// `send_timeout`. The message is then withdrawn (no reader ever gets it) and the value
    /// comes back in [`WriteTimeoutError::Timeout`]. Exactly one of the two happens: `Ok`
    /// (taken) or `Timeout` (withdrawn). A channel that refuses the write gives the value
    /// back in [`WriteTimeoutError::Failed`]; see [`try_write`](Self::try_write) for the one
    /// uncertain case.
    ///
    /// In a function that returns `pycsp::Error`, `?` turns the error into one, dropping
    /// the value; in one that returns [`ChannelError`], `.map_err(|e| e.error())?` does.
    pub fn write_timeout(&self, value: T, timeout: Duration) -> Result<(), WriteTimeoutError<T>> {
        self.write_until(value, deadline_after(timeout))
    }

    /// [`write_timeout`](Self::write_timeout) with a deadline: crossbeam's `send_deadline`.
    pub fn write_deadline(&self, value: T, deadline: Instant) -> Result<(), WriteTimeoutError<T>> {
        self.write_until(value, Some(deadline))
    }

    fn write_until(&self, value: T, deadline: Option<Instant>) -> Result<(), WriteTimeoutError<T>> {
        match self.send_back(value, deadline) {
            Sent::Written => Ok(()),
            Sent::Back(v, ChannelError::Timeout) => Err(WriteTimeoutError::Timeout(v)),
            Sent::Back(v, e) => Err(WriteTimeoutError::Failed(v, e)),
            Sent::Uncertain(e) => Err(WriteTimeoutError::Uncertain(e)),
        }
    }

    /// Writes `value` by `deadline` (`None`: no deadline); if its message was not placed,
    /// hands it back whole: the ends and shared memory it carries are spent only once the
    /// message is placed.
    fn send_back(&self, value: T, deadline: Option<Instant>) -> Sent<T> {
        let chan = &self.end.chan;
        let socket = self.end.socket;
        let value_ref = &value;
        let write = || {
            if socket {
                message::in_context(Context::Socket, || {
                    message::write_value(chan, value_ref, deadline)
                })
            } else {
                message::write_value(chan, value_ref, deadline)
            }
        };
        let r = if std::mem::needs_drop::<T>() {
            // A type with drop glue may hold channel ends or shared memory: keep them the
            // caller's until the message is placed.
            let (r, carried) = encoding_kept(write);
            if r.as_ref().err().is_none_or(|e| e.placed) {
                // SAFETY: `value` is borrowed for this whole call: alive, and not moved.
                unsafe { carried.sent() };
            }
            r
        } else {
            write()
        };
        match r {
            Ok(()) => {
                census::count_message(true);
                Sent::Written
            }
            Err(e) if e.placed => Sent::Uncertain(match e.error {
                // Placed at its deadline only when the remote reader that had the message did
                // not answer (see `Chan::withdraw`): named.
                ChannelError::Timeout => net::server::silent_reader(chan),
                error => net::client::remote_error(chan, error),
            }),
            Err(e) => Sent::Back(value, net::client::remote_error(chan, e.error)),
        }
    }
}

impl<T> ChannelOut<T> {
    /// How many messages wait in the channel's buffer now (a snapshot: other processes may be
    /// writing and reading); always 0 on a rendezvous channel, as crossbeam's zero-capacity
    /// channel. For an end of a channel hosted outside this network (a socket channel), this
    /// and the other lengths describe this process's side of the connection, a rendezvous.
    pub fn len(&self) -> usize {
        self.end.chan.len()
    }

    /// Whether the buffer is empty now (always on a rendezvous channel).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the buffer is full now (always on a rendezvous channel, as in crossbeam: a
    /// write has to wait for a reader).
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// How many messages the channel buffers; 0 for a rendezvous channel.
    pub fn capacity(&self) -> usize {
        self.end.chan.capacity()
    }
}

impl<T: DeserializeOwned> ChannelIn<T> {
    /// Reads a message if one is there now, without waiting: crossbeam's `try_recv`. On a
    /// rendezvous channel that is a message whose writer is waiting for a reader.
    ///
    /// Fails with [`TryReadError::Empty`] if there is none, and with
    /// [`TryReadError::Failed`] as [`read`](Self::read) does (`Retired` once every writer
    /// retired and the buffer is drained, `Poisoned`, `PeerDied`, ...).
    pub fn try_read(&self) -> Result<T, TryReadError> {
        match self.recv(Some(wait::passed())) {
            Ok(v) => Ok(v),
            Err(ChannelError::Timeout) => Err(TryReadError::Empty),
            Err(e) => Err(TryReadError::Failed(e)),
        }
    }

    /// Like [`read`](Self::read), but fails with [`ChannelError::Timeout`] once `deadline`
    /// passes: crossbeam's `recv_deadline`.
    pub fn read_deadline(&self, deadline: Instant) -> Result<T, ChannelError> {
        self.recv(Some(deadline))
    }

    /// The messages that are there now, read one by one without waiting: crossbeam's
    /// `try_iter`. The iteration ends when none is left (or every writer retired and the
    /// buffer is drained); any other end is an `Err` first (`Poisoned`, `PeerDied`, ...), as
    /// for [`iter`](Self::iter).
    ///
    /// ```
    /// # use pycsp_core::Channel;
    /// let ch = Channel::<u32>::buffered(8)?;
    /// let (tx, rx) = (ch.writer(), ch.reader());
    /// for i in 0..3 {
    ///     tx.write(i)?;
    /// }
    /// let now: Vec<u32> = rx.try_iter().collect::<Result<_, _>>()?;
    /// assert_eq!(now, [0, 1, 2]);
    /// # Ok::<(), pycsp_core::ChannelError>(())
    /// ```
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter {
            inp: self,
            done: false,
        }
    }
}

impl<T> ChannelIn<T> {
    /// How many messages wait in the channel's buffer now; see [`ChannelOut::len`].
    pub fn len(&self) -> usize {
        self.end.chan.len()
    }

    /// Whether the buffer is empty now (always on a rendezvous channel).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the buffer is full now (always on a rendezvous channel).
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// How many messages the channel buffers; 0 for a rendezvous channel.
    pub fn capacity(&self) -> usize {
        self.end.chan.capacity()
    }
}

/// The messages of a [`ChannelIn`] that are there now; see [`ChannelIn::try_iter`].
pub struct TryIter<'a, T> {
    inp: &'a ChannelIn<T>,
    done: bool,
}

impl<T: DeserializeOwned> Iterator for TryIter<'_, T> {
    type Item = Result<T, ChannelError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.inp.try_read() {
            Ok(v) => Some(Ok(v)),
            Err(TryReadError::Empty | TryReadError::Failed(ChannelError::Retired)) => {
                self.done = true;
                None
            }
            Err(TryReadError::Failed(e)) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
