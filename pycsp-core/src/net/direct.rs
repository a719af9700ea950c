//! A remote rendezvous end's user talks to the host itself: a plain `read` or `write` sends
//! and receives its frames on the end's connection in the user's own thread, while the end's
//! pump (see `client.rs`) waits, instead of passing each message through the proxy between
//! the user and the pump. That hand-over cost a wake-up or a shared CPU per message on each
//! side: a round trip over a local socket crossed six threads where a raw socket's crosses
//! two, and took twice as long.
//!
//! Who may use the connection is one word ([`Direct`]). The pump owns it (`BUSY`) except
//! while it waits for its user with nothing of its own in flight (`OPEN`); a user thread then
//! takes it (`USER`) for one exchange, and gives it back either `OPEN` (done) or `BACK` (the
//! pump must go on: the user's wait lasted [`DIRECT_FOR`], a frame came that is not the
//! answer the user waits for, the channel failed here). The pump takes it back (`BUSY`)
//! before it uses the connection again, waiting while a user has it.
//!
//! - Reading end: after the pump handed a message to its user and sent `Ack` with the next
//!   `Read`, it opens the connection. The user's next read takes it, waits for the
//!   `Message`, sends `Ack` and the next `Read`, and opens it again: the pump sleeps through
//!   a stream of such reads. A read that would wait longer than [`DIRECT_FOR`], a read with a
//!   deadline that passes, a select (which goes through the proxy, and wakes the pump), or a
//!   `Message` its user does not come for within the hold (see `HOLD_FOR_USER`) brings the
//!   pump back, which goes on as before: the `Read` is still asked.
//! - Writing end: while the pump waits for its user's next message, the user's write sends
//!   its `Offer` and waits for `Done`. Past [`DIRECT_FOR`] or its deadline, or when the
//!   channel fails here, it sends `Withdraw`; a message the host gives back (`Error`
//!   `timeout`) is then written into the proxy as before, where the pump offers it again
//!   and the wait is published for the deadlock census.
//! - Buffered writing end: while its pump waits for a message with nothing on its way (every
//!   message sent was confirmed, nothing buffered from the connection), the user's write
//!   sends a `Write` itself when none of its own is unconfirmed (it reads the `Done`s that
//!   came first) and the proxy is empty, and returns; the pump, woken by the next message in
//!   the proxy (or a flush marker), counts those writes as its own and reads their
//!   confirmations. Only the pump takes a message out of the proxy, and only as `BUSY`, so a
//!   user's own write never overtakes one of its earlier writes that waits in the proxy.
//!
//! A user thread in such an exchange is not parked (it runs, for the census); its exchange
//! ends within [`DIRECT_FOR`] but for a `Withdraw`'s answer, which a live host gives at once
//! (a write whose deadline passed waits for it at most [`LOSS_TIMEOUT`]).
//! The bytes it moves are the connection's: the pump counts them ([`Direct::absorb`]) before
//! it publishes its own wait, whose byte counts the census compares with the host's.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::proto::ErrorBody;
use super::stream::{self, Stream, LOSS_TIMEOUT};
use crate::error::ChannelError;
use crate::frame::{write_frame, write_frames, Frame, FrameError, Kind, MAX_FRAME};
use crate::sys;

/// How long a user thread waits on the connection itself, at most, before it leaves the
/// wait to the pump (which publishes its waits for the deadlock census after as long).
pub(crate) const DIRECT_FOR: Duration = stream::PUBLISH_AFTER;

/// How often a user thread waiting on the connection looks whether its channel failed here
/// (poisoned by another thread or process of this host).
const LOOK: Duration = Duration::from_millis(1);

/// The largest encoded message a user sends itself; longer ones go through the pump, which
/// sends them from the proxy's block without a copy.
pub(crate) const DIRECT_MAX: usize = 64 << 10;

/// The pump uses the connection.
const BUSY: u32 = 0;
/// The pump waits for its user: a user thread may use the connection.
const OPEN: u32 = 1;
/// A user thread uses the connection.
const USER: u32 = 2;
/// A user thread gave the connection back for the pump to go on.
const BACK: u32 = 3;

/// Who may use a remote end's connection (see the module's documentation).
pub(crate) struct Direct {
    state: AtomicU32,
    /// Whether the end's user may ever use the connection (it has a handle on it); after the
    /// pump ends, `close` keeps the state `BUSY` for good.
    enabled: bool,
    /// The user's handle on the connection (a clone of the pump's), used only as `USER`;
    /// `None` for an end whose user never uses it (a buffered end), and once the pump ended.
    stream: Mutex<Option<Stream>>,
    /// Bytes user threads sent and received on the connection, not yet counted by the pump.
    sent: AtomicU64,
    got: AtomicU64,
    /// Exchanges user threads finished (wrapping): whether the user came meanwhile.
    exchanges: AtomicU64,
    /// A buffered writing end's messages users sent themselves and the pump has not counted
    /// yet, and those of them the host has not confirmed yet.
    sent_here: AtomicU64,
    unconfirmed: AtomicU64,
    /// The pump waits for a user thread to give the connection back.
    pump_waits: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

/// What a user's direct write came to.
pub(crate) enum Wrote {
    /// A reader took it.
    Done,
    /// The host gave it back, not taken, after the user asked for it back: write it as
    /// before.
    NotTaken,
    /// The host answered with this error (the message was not taken).
    Failed(ChannelError),
    /// The connection failed (or the host broke the protocol, or did not answer for
    /// [`LOSS_TIMEOUT`] after the user asked its message back); `offered`: after the whole
    /// `Offer` was sent, so a reader may have taken the message.
    Lost { error: FrameError, offered: bool },
}

/// What a user's own write of a buffered writing end came to (see
/// [`Direct::write_buffered`]).
pub(crate) struct Buffered {
    /// Whether the message was sent (else it goes through the proxy, as before).
    pub(crate) sent: bool,
    /// Earlier messages of the user's own that the host confirmed meanwhile.
    pub(crate) confirmed: u64,
    /// Whether the pump must go on (a frame other than `Done` came, or the connection
    /// failed): wake it.
    pub(crate) back: bool,
}

impl Direct {
    /// The connection of an end whose user may use `stream` (another handle on it), or none.
    pub(crate) fn new(stream: Option<Stream>) -> Direct {
        Direct {
            state: AtomicU32::new(BUSY),
            enabled: stream.is_some(),
            stream: Mutex::new(stream),
            sent: AtomicU64::new(0),
            got: AtomicU64::new(0),
            exchanges: AtomicU64::new(0),
            sent_here: AtomicU64::new(0),
            unconfirmed: AtomicU64::new(0),
            pump_waits: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    // ---- the pump's side

    /// The pump waits for its user with nothing of its own in flight: a user thread may use
    /// the connection until [`take_back`](Self::take_back). Whether it may (`false`: this
    /// end's user never uses the connection).
    pub(crate) fn open(&self) -> bool {
        if !self.enabled {
            return false;
        }
        self.state.store(OPEN, Ordering::SeqCst);
        true
    }

    /// The pump takes the connection back, waiting while a user thread has it (an exchange
    /// ends within [`DIRECT_FOR`], or a `Withdraw`'s answer later); counts the bytes users
    /// moved meanwhile. Returns whether a user gave it back for the pump to go on (`BACK`).
    pub(crate) fn take_back(&self) -> bool {
        loop {
            if let Some(back) = self.try_take_back() {
                return back;
            }
            let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.pump_waits.store(true, Ordering::SeqCst);
            if self.state.load(Ordering::SeqCst) == USER {
                // The user's release notifies under the lock; the timeout is a safety net.
                let _ = self
                    .cv
                    .wait_timeout(guard, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner());
            }
            self.pump_waits.store(false, Ordering::SeqCst);
        }
    }

    /// [`take_back`](Self::take_back) if no user thread has the connection now: `None` if
    /// one has.
    pub(crate) fn try_take_back(&self) -> Option<bool> {
        loop {
            match self.state.load(Ordering::SeqCst) {
                BUSY => return Some(false),
                USER => return None,
                from => {
                    if self
                        .state
                        .compare_exchange(from, BUSY, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        self.absorb();
                        return Some(from == BACK);
                    }
                }
            }
        }
    }

    /// Whether a user thread gave the connection back for the pump to go on.
    pub(crate) fn handed_back(&self) -> bool {
        self.state.load(Ordering::SeqCst) == BACK
    }

    /// Whether a user thread uses the connection now.
    pub(crate) fn in_use(&self) -> bool {
        self.state.load(Ordering::SeqCst) == USER
    }

    /// Exchanges user threads finished so far (wrapping).
    pub(crate) fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::SeqCst)
    }

    /// Counts the bytes user threads moved on the connection as the pump's own (the census
    /// compares the pump's counts with the host's); whether there were any.
    pub(crate) fn absorb(&self) -> bool {
        let (s, g) = (
            self.sent.swap(0, Ordering::SeqCst),
            self.got.swap(0, Ordering::SeqCst),
        );
        stream::add_bytes(s, g);
        s != 0 || g != 0
    }

    /// A buffered writing end's messages users sent themselves since the pump last counted
    /// (it counts them as its own from now on), and those of them not confirmed yet (the
    /// pump reads their confirmations from now on).
    pub(crate) fn take_counts(&self) -> (u64, u64) {
        (
            self.sent_here.swap(0, Ordering::SeqCst),
            self.unconfirmed.swap(0, Ordering::SeqCst),
        )
    }

    /// Messages users sent themselves whose confirmations nobody read yet.
    pub(crate) fn unconfirmed(&self) -> u64 {
        self.unconfirmed.load(Ordering::SeqCst)
    }

    /// The pump ended: no user thread uses the connection from now on (it waits for one
    /// that does, and closes the user's handle).
    pub(crate) fn close(&self) {
        self.take_back();
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    // ---- the user's side

    /// Takes the connection for one exchange, if the pump left it open.
    fn begin(&self) -> Option<Exchange<'_>> {
        if self.state.load(Ordering::Relaxed) != OPEN
            || self
                .state
                .compare_exchange(OPEN, USER, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        if stream.is_none() {
            self.state.store(BUSY, Ordering::SeqCst);
            return None;
        }
        Some(Exchange {
            direct: self,
            stream,
            before: stream::bytes(),
            back: true,
        })
    }

    /// Whether a user thread could take the connection now (a hint: the exchange may still
    /// find it taken).
    pub(crate) fn looks_open(&self) -> bool {
        self.state.load(Ordering::Relaxed) == OPEN
    }

    /// A plain read of a rendezvous reading end, by `deadline`: the `Message`'s body, after
    /// sending `Ack` and the next `Read`; `None` if the pump has the connection, or once the
    /// connection is given back to it (then the read goes on through the proxy).
    /// `failed()` says whether the channel failed here (it is looked at every [`LOOK`]);
    /// `wake` rings the pump when the connection is given back to it.
    pub(crate) fn read(
        &self,
        deadline: Option<Instant>,
        failed: impl Fn() -> bool,
        wake: impl Fn(),
    ) -> Option<Vec<u8>> {
        let mut x = self.begin()?;
        let now = Instant::now();
        let until = deadline.map_or(now + DIRECT_FOR, |d| d.min(now + DIRECT_FOR));
        // Only a `Message` is the user's; anything else (an `Error`, the end of the stream)
        // the pump reads and deals with.
        let body = match next_frame(&mut x, until, Some(Kind::Message), &failed) {
            Next::Frame(f) => {
                // Taken: acknowledged, and the next asked for, as the pump does.
                if write_frames(x.stream(), &[Kind::Ack, Kind::Read]).is_ok() {
                    x.back = false;
                }
                Some(f.body)
            }
            Next::Lost(_) => {
                // Part of a frame was read: the pump could not read on. It finds the
                // connection ended and reports it.
                x.stream().shutdown();
                None
            }
            Next::Other | Next::Waiting => None,
        };
        let back = x.back;
        drop(x);
        if back {
            wake();
        }
        body
    }

    /// A plain write of a rendezvous writing end of the encoded message `bytes` (at most
    /// [`DIRECT_MAX`]), by `deadline`: `None` if the pump has the connection. `failed()` as
    /// for [`read`](Self::read); `address` names the channel in errors.
    pub(crate) fn write(
        &self,
        bytes: &[u8],
        deadline: Option<Instant>,
        failed: impl Fn() -> bool,
        address: &str,
    ) -> Option<Wrote> {
        let mut x = self.begin()?;
        if let Err(e) = write_frame(x.stream(), &Frame::new(Kind::Offer, bytes.to_vec())) {
            // Not all of it went: the host never reads a whole `Offer`.
            return Some(Wrote::Lost {
                error: e,
                offered: false,
            });
        }
        // From here on the host has the message: a connection lost before its answer leaves
        // it unknown whether a reader took it.
        let lost = |error| {
            Some(Wrote::Lost {
                error,
                offered: true,
            })
        };
        let now = Instant::now();
        let until = deadline.map_or(now + DIRECT_FOR, |d| d.min(now + DIRECT_FOR));
        let mut next = next_frame(&mut x, until, None, &failed);
        if matches!(next, Next::Waiting) {
            // Asked back; a live host answers at once (`Done` if a reader took it first). A
            // write with a deadline, or whose channel failed here, waits for that answer at
            // most `LOSS_TIMEOUT` past its deadline (or now), as long as a connection may leave
            // data unacknowledged: a host that gives none by then (stopped, or hung) counts as
            // lost. A write with no deadline waits for its reader as long as it takes.
            let now = Instant::now();
            let answer_by = match deadline {
                _ if failed() => now + LOSS_TIMEOUT,
                Some(d) => d.max(now) + LOSS_TIMEOUT,
                None => now + FOREVER,
            };
            if let Err(e) = write_frame(x.stream(), &Frame::empty(Kind::Withdraw)) {
                return lost(e);
            }
            next = next_frame(&mut x, answer_by, None, &|| false);
            if matches!(next, Next::Waiting) {
                // The pump finds the connection ended, and the host (when it runs again)
                // that its writer left.
                x.stream().shutdown();
                return lost(FrameError::Io(format!(
                    "the host did not answer for {LOSS_TIMEOUT:?} after the write asked its \
                     message back"
                )));
            }
        }
        let f = match next {
            Next::Frame(f) => f,
            Next::Lost(e) => return lost(e),
            Next::Other | Next::Waiting => return lost(FrameError::Closed),
        };
        Some(match f.kind {
            Kind::Done => {
                x.back = false;
                Wrote::Done
            }
            Kind::Error => {
                let e = ErrorBody::decode(&f.body).into_error(address);
                if e == ChannelError::Timeout {
                    // Only after `Withdraw`: not taken, given back.
                    x.back = false;
                    Wrote::NotTaken
                } else {
                    Wrote::Failed(e)
                }
            }
            k => Wrote::Lost {
                error: FrameError::Unexpected(format!("expected Done, got {k:?}")),
                offered: true,
            },
        })
    }
}

impl Direct {
    /// A write of a buffered writing end of the encoded message `bytes` (at most
    /// [`DIRECT_MAX`]): sent as a `Write` on the connection when nothing the user wrote is on
    /// its way (the confirmations of its earlier messages that came are read first) and the
    /// proxy holds nothing (`proxy_empty`) the pump has not sent; `None` if the pump has the
    /// connection. A stream sends its first message so, and the rest through the proxy,
    /// where the pump sends many in one system call.
    ///
    /// `count` is given what the write came to while the user still has the connection: the
    /// pump, once it takes the connection back, reads the confirmations of what was sent and
    /// counts them off the end's messages not confirmed, which must count them by then. (Once
    /// the user's thread counted after giving the connection back: the pump could count a
    /// confirmation off first, and with several threads writing through one end its count of
    /// messages not confirmed went below zero; the pump panicked, and the threads waited for
    /// room for good.)
    pub(crate) fn write_buffered(
        &self,
        bytes: &[u8],
        proxy_empty: impl Fn() -> bool,
        count: impl FnOnce(&Buffered),
    ) -> Option<Buffered> {
        let mut x = self.begin()?;
        let b = self.exchange_buffered(&mut x, bytes, proxy_empty);
        count(&b);
        drop(x);
        Some(b)
    }

    /// [`write_buffered`](Self::write_buffered)'s exchange, on the connection the user has.
    fn exchange_buffered(
        &self,
        x: &mut Exchange<'_>,
        bytes: &[u8],
        proxy_empty: impl Fn() -> bool,
    ) -> Buffered {
        x.back = false;
        let mut b = Buffered {
            sent: false,
            confirmed: 0,
            back: false,
        };
        if !proxy_empty() {
            return b;
        }
        while self.unconfirmed.load(Ordering::SeqCst) > 0 {
            match next_frame(x, Instant::now(), Some(Kind::Done), &|| false) {
                Next::Frame(_) => {
                    self.unconfirmed.fetch_sub(1, Ordering::SeqCst);
                    b.confirmed += 1;
                }
                Next::Waiting => break,
                // An `Error` (a refused write) or the end of the stream: the pump's.
                Next::Other => {
                    (x.back, b.back) = (true, true);
                    return b;
                }
                Next::Lost(_) => {
                    x.stream().shutdown();
                    (x.back, b.back) = (true, true);
                    return b;
                }
            }
        }
        if self.unconfirmed.load(Ordering::SeqCst) > 0 {
            return b;
        }
        if write_frame(x.stream(), &Frame::new(Kind::Write, bytes.to_vec())).is_err() {
            // Part of it may have gone: the pump finds the connection ended.
            x.stream().shutdown();
            (x.back, b.back) = (true, true);
            return b;
        }
        self.unconfirmed.fetch_add(1, Ordering::SeqCst);
        self.sent_here.fetch_add(1, Ordering::SeqCst);
        b.sent = true;
        b
    }
}

/// A wait for the host's answer that has no end of its own (a `Withdraw`'s answer, given
/// at once by a live host; a dead one ends the connection).
const FOREVER: Duration = Duration::from_secs(1 << 30);

/// What came next on the connection (see [`next_frame`]).
enum Next {
    Frame(Frame),
    /// A frame of another kind than the one asked for, a malformed one, or the end of the
    /// stream: nothing was read, the pump reads it.
    Other,
    /// Nothing came by the time given, or the channel failed here.
    Waiting,
    /// Reading the frame failed.
    Lost(FrameError),
}

/// Reads the next frame (`only`: if it is of that kind), in as few system calls as its bytes
/// arrived in: its header is peeked at, then the whole frame read at once. Waits until
/// `until`, looking at `failed()` every [`LOOK`].
fn next_frame(
    x: &mut Exchange<'_>,
    until: Instant,
    only: Option<Kind>,
    failed: &dyn Fn() -> bool,
) -> Next {
    let fd = x.fd();
    let mut head = [0u8; 5];
    loop {
        match sys::peek(fd, &mut head) {
            Some(5) => {
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let kind = match Kind::from_byte(head[4]) {
                    Some(k) if only.is_none_or(|o| o == k) && (1..=MAX_FRAME).contains(&len) => k,
                    _ => return Next::Other,
                };
                let mut buf = vec![0u8; 4 + len];
                if let Err(e) = x.stream().read_exact(&mut buf) {
                    return Next::Lost(FrameError::Io(e.to_string()));
                }
                buf.drain(..5);
                return Next::Frame(Frame::new(kind, buf));
            }
            Some(0) => return Next::Other,
            // A header still arriving.
            Some(_) => std::thread::yield_now(),
            None => {
                let now = Instant::now();
                if now >= until || failed() {
                    return Next::Waiting;
                }
                sys::wait_readable(fd, (until - now).min(LOOK));
            }
        }
    }
}

/// One exchange of a user thread on the connection: gives it back when dropped (`OPEN`, or
/// `BACK` unless the exchange said it is done), with the bytes it moved counted for the
/// pump and not for the user's thread.
struct Exchange<'a> {
    direct: &'a Direct,
    stream: MutexGuard<'a, Option<Stream>>,
    before: (u64, u64),
    back: bool,
}

impl Exchange<'_> {
    fn stream(&mut self) -> &mut Stream {
        self.stream.as_mut().expect("checked in begin")
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.stream.as_ref().expect("checked in begin").as_raw_fd()
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        let (s, g) = stream::bytes();
        stream::set_bytes(self.before);
        let d = self.direct;
        d.sent
            .fetch_add(s.wrapping_sub(self.before.0), Ordering::SeqCst);
        d.got
            .fetch_add(g.wrapping_sub(self.before.1), Ordering::SeqCst);
        d.exchanges.fetch_add(1, Ordering::SeqCst);
        d.state
            .store(if self.back { BACK } else { OPEN }, Ordering::SeqCst);
        if d.pump_waits.load(Ordering::SeqCst) {
            let _guard = d.lock.lock().unwrap_or_else(|p| p.into_inner());
            d.cv.notify_all();
        }
    }
}
