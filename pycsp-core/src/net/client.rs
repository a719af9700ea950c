//! The remote side of socket channels: an end is a private rendezvous channel (the *proxy*) in
//! this process's shared memory plus a pump thread that carries its operations to the host.
//!
//! - Writing end: the user writes into the proxy; the pump takes the message without
//!   completing the rendezvous, sends `Write`, and completes it only on the host's `Done`, so
//!   the user's `write` returns exactly when the host's channel accepted the message. An
//!   `Error` answer or a lost connection fails the user's write with that error.
//! - Reading end: the pump sends `Read`, puts the `Message` into the proxy (waiting until the
//!   user takes it), then sends `Ack`; if the user retires or poisons instead, it sends `Nack`
//!   and the host puts the message back. The pump holds at most one message at a time.
//!
//! Because the user's side is an ordinary shared-memory channel, alternation over remote ends
//! works unchanged.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::key::{self, HandshakeError};
use super::proto::{encode, ErrorBody, OpenBody, OpenedBody};
use super::stream::{step_failed, Address, Stream, LOSS_TIMEOUT};
use crate::error::ChannelError;
use crate::frame::{
    read_frame, write_frame, write_frames, Frame, FrameError, Kind, MAX_FRAME, MAX_MESSAGE,
};
use crate::message::{take_encoded, write_encoded};
use crate::runtime::{self, Role};
use crate::shm::arena::Arena;
use crate::shm::ring::{Chan, POISONED, READERS_RETIRED, WRITERS_RETIRED};
use crate::shm::waiter;
use crate::sys;

/// How often a pump waiting for the host checks whether its user retired or poisoned.
const TICK: Duration = Duration::from_millis(50);

/// What this process knows of one remote end.
pub(crate) struct Proxy {
    pub(crate) address: Address,
    writer: bool,
    /// Set when the end is being moved to another process: the pump hands its count over.
    handoff: Mutex<Option<u64>>,
    /// Set by the pump when it stopped (after a hand-over: whether the host confirmed it).
    finished: Mutex<Option<bool>>,
    finished_cv: Condvar,
    /// The error that ended the pump, reported to the user in place of `Retired`.
    error: Mutex<Option<ChannelError>>,
}

impl Proxy {
    /// Waits until the pump stopped, or until `deadline`: `Some(whether it handed the end
    /// over)`, or `None` if it was still running at the deadline.
    fn wait_finished(&self, deadline: std::time::Instant) -> Option<bool> {
        let mut done = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        while done.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            done = self
                .finished_cv
                .wait_timeout(done, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *done
    }
}

static PROXIES: Mutex<BTreeMap<u64, Arc<Proxy>>> = Mutex::new(BTreeMap::new());

fn process_name() -> String {
    runtime::current_name().to_string()
}

/// Waits (at most `limit`) until every pump of this process has finished: a process that
/// ends lets its ends' retirements reach their hosts before it exits.
pub(crate) fn drain(limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    let proxies: Vec<Arc<Proxy>> = PROXIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for p in proxies {
        if p.wait_finished(deadline).is_none() {
            return;
        }
    }
}

/// After an end of `chan` retired: if `chan` is a proxy and that was its last end on that side,
/// waits (at most [`LOSS_TIMEOUT`]) until its pump told the host. Without this, a program that
/// drops its socket ends and exits at once would look to the host like a crashed peer.
pub(crate) fn await_retired(chan: &Chan, writer: bool) {
    if !chan.name().contains("://") {
        return;
    }
    let Some(p) = proxy_of(chan) else { return };
    let side = if writer {
        WRITERS_RETIRED
    } else {
        READERS_RETIRED
    };
    if chan.state_flags() & side == 0 {
        return; // clones of this end remain
    }
    if p.wait_finished(std::time::Instant::now() + LOSS_TIMEOUT)
        .is_some()
    {
        PROXIES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan.key());
    }
}

/// Connects, authenticates and sends `Open`; every step has the deadline
/// [`handshake_timeout`](super::handshake_timeout), so a host that accepts and says nothing (stopped, overloaded, another
/// service on the port) fails the open with [`ChannelError::Connection`] instead of hanging.
fn connect(addr: &Address, body: &OpenBody) -> Result<(Stream, OpenedBody), ChannelError> {
    let conn = |reason: String| ChannelError::Connection {
        address: addr.full.clone(),
        reason,
    };
    let k = key::key().map_err(|reason| ChannelError::Auth {
        address: addr.full.clone(),
        reason,
    })?;
    let mut s = Stream::connect(&addr.endpoint)
        .map_err(|e| conn(format!("cannot connect to {}: {e}", addr.endpoint)))?;
    key::join(&mut s, k).map_err(|e| match e {
        HandshakeError::Auth(reason) => ChannelError::Auth {
            address: addr.full.clone(),
            reason,
        },
        HandshakeError::Frame(f) => conn(step_failed("handshake", &f)),
    })?;
    write_frame(&mut s, &Frame::new(Kind::Open, encode(body)))
        .map_err(|e| conn(step_failed("sending Open", &e)))?;
    let f =
        read_frame(&mut s, 64 << 10).map_err(|e| conn(step_failed("waiting for Opened", &e)))?;
    match f.kind {
        Kind::Opened => {
            let o = rmp_serde::from_slice(&f.body).map_err(|e| ChannelError::Protocol {
                address: addr.full.clone(),
                reason: format!("a malformed Opened frame ({e})"),
            })?;
            // Open: from now on the host may take as long as a rendezvous takes.
            s.set_deadline(None)
                .map_err(|e| conn(format!("cannot clear the handshake deadline: {e}")))?;
            Ok((s, o))
        }
        Kind::Error => Err(ErrorBody::decode(&f.body).into_error(&addr.full)),
        k => Err(ChannelError::Protocol {
            address: addr.full.clone(),
            reason: format!("expected Opened, got {k:?}"),
        }),
    }
}

fn open_body(addr: &Address, type_name: &str, fp: u64, writer: bool) -> OpenBody {
    OpenBody {
        channel: addr.channel.clone(),
        type_name: type_name.to_string(),
        fingerprint: fp,
        writer,
        token: None,
        process: process_name(),
        pid: std::process::id(),
        probe: false,
    }
}

/// Checks that the host has the channel with this type; returns its capacity.
pub(crate) fn probe(addr: &Address, type_name: &str, fp: u64) -> Result<u64, ChannelError> {
    let mut body = open_body(addr, type_name, fp, false);
    body.probe = true;
    connect(addr, &body).map(|(_, o)| o.capacity)
}

/// Opens a remote end: connects, and returns the proxy channel the user's end uses.
pub(crate) fn open_end(
    addr: &Address,
    type_name: &str,
    fp: u64,
    writer: bool,
    token: Option<u64>,
) -> Result<Chan, ChannelError> {
    let mut body = open_body(addr, type_name, fp, writer);
    body.token = token;
    let (s, _) = connect(addr, &body)?;
    let arena = Arena::get().map_err(|e| ChannelError::SharedMemory(e.to_string()))?;
    let proxy = Chan::create(arena, &addr.full, type_name, fp, 0, false).map_err(|_| {
        ChannelError::SharedMemory("no room for a socket end's proxy channel".into())
    })?;
    // The creator's hold is the pump's (let go when it ends); the user's end holds it too.
    runtime::took(&proxy);
    runtime::hold(&proxy, Role::end(writer));
    proxy.join_side(!writer);
    let info = Arc::new(Proxy {
        address: addr.clone(),
        writer,
        handoff: Mutex::new(None),
        finished: Mutex::new(None),
        finished_cv: Condvar::new(),
        error: Mutex::new(None),
    });
    PROXIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(proxy.key(), info.clone());
    std::thread::Builder::new()
        .name("pycsp-pump".into())
        .spawn(move || {
            let _internal = crate::shm::census::internal_thread(true);
            let mut p = Pump { proxy, s, info };
            let handed = if p.info.writer {
                p.pump_writes()
            } else {
                p.pump_reads()
            };
            p.s.shutdown();
            *p.info.finished.lock().unwrap_or_else(|e| e.into_inner()) = Some(handed);
            p.info.finished_cv.notify_all();
            runtime::release(p.proxy, Role::Handle);
        })
        .map_err(|e| ChannelError::Connection {
            address: addr.full.clone(),
            reason: format!("cannot start the pump thread: {e}"),
        })?;
    Ok(proxy)
}

/// The remote end behind a proxy channel, if `chan` is one.
pub(crate) fn proxy_of(chan: &Chan) -> Option<Arc<Proxy>> {
    PROXIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&chan.key())
        .cloned()
}

/// The error to report for an operation on a proxy that failed with `e`: the pump's own
/// error (a lost connection, an error from the host) when it stopped with one.
pub(crate) fn remote_error(chan: &Chan, e: ChannelError) -> ChannelError {
    if matches!(e, ChannelError::Retired | ChannelError::PeerDied { .. }) {
        if let Some(p) = proxy_of(chan) {
            if let Some(err) = p.error.lock().unwrap_or_else(|x| x.into_inner()).clone() {
                return err;
            }
        }
    }
    e
}

/// Moves a remote end to another process: the pump hands its count to the host under a new
/// token (the user's count on the proxy is released here). Returns the address and token the
/// receiving process opens with.
pub(crate) fn hand_over(chan: &Chan, info: &Proxy) -> Result<(String, u64), String> {
    let t = key::token();
    *info.handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    runtime::release(*chan, Role::end(info.writer));
    match info.wait_finished(std::time::Instant::now() + LOSS_TIMEOUT * 2) {
        None => Err("the host did not confirm the hand-over in time".into()),
        Some(true) => Ok((info.address.full.clone(), t)),
        Some(false) => Err(info
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or_else(|| "the connection ended".into(), |e| e.to_string())),
    }
}

struct Pump {
    proxy: Chan,
    s: Stream,
    info: Arc<Proxy>,
}

impl Pump {
    fn fail(&self, e: ChannelError) {
        *self.info.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn lost(&self, e: &FrameError) -> ChannelError {
        ChannelError::Connection {
            address: self.info.address.full.clone(),
            reason: format!("connection to the host lost: {e}"),
        }
    }

    /// Sends `frame` and reads the answer.
    fn request(&mut self, frame: &Frame) -> Result<Frame, FrameError> {
        write_frame(&mut self.s, frame)?;
        read_frame(&mut self.s, MAX_FRAME)
    }

    /// Ends the end on the host: hands it over if asked to, else retires it. Returns whether a
    /// hand-over was confirmed.
    fn leave(&mut self) -> bool {
        let handoff = *self.info.handoff.lock().unwrap_or_else(|p| p.into_inner());
        match handoff {
            Some(t) => matches!(
                self.request(&Frame::new(Kind::Handoff, t.to_le_bytes().to_vec())),
                Ok(f) if f.kind == Kind::Done
            ),
            None => {
                let _ = self.request(&Frame::empty(Kind::Retire));
                false
            }
        }
    }

    /// The pump of a writing end; returns whether it handed the end over.
    fn pump_writes(&mut self) -> bool {
        let Ok(arena) = Arena::get() else {
            return false;
        };
        loop {
            match self.proxy.read_deferred(None, |w| waiter::claim(arena, w)) {
                Ok((msg, taken)) => {
                    let bytes = match take_encoded(msg) {
                        // `message` refuses these in the user's write; never sent whole.
                        Ok(b) if b.len() > MAX_MESSAGE => Err(ChannelError::TooLarge {
                            channel: self.info.address.full.clone(),
                            len: b.len() as u64,
                            max: MAX_MESSAGE as u64,
                        }),
                        r => r,
                    };
                    let bytes = match bytes {
                        Ok(b) => b,
                        Err(e) => {
                            self.fail(e);
                            self.proxy.retire_side(false);
                            return false;
                        }
                    };
                    match self.request(&Frame::new(Kind::Write, bytes)) {
                        Ok(f) if f.kind == Kind::Done => self.proxy.ack(taken),
                        Ok(f) => {
                            let e = if f.kind == Kind::Error {
                                ErrorBody::decode(&f.body).into_error(&self.info.address.full)
                            } else {
                                ChannelError::Protocol {
                                    address: self.info.address.full.clone(),
                                    reason: format!("expected Done, got {:?}", f.kind),
                                }
                            };
                            if e == ChannelError::Poisoned {
                                self.proxy.poison();
                            } else {
                                self.fail(e);
                                self.proxy.retire_side(false);
                            }
                            let _ = self.request(&Frame::empty(Kind::Retire));
                            return false;
                        }
                        Err(e) => {
                            self.fail(self.lost(&e));
                            self.proxy.retire_side(false);
                            return false;
                        }
                    }
                }
                Err(ChannelError::Poisoned) => {
                    let _ = self.request(&Frame::empty(Kind::Poison));
                    let _ = self.request(&Frame::empty(Kind::Retire));
                    return false;
                }
                // The process is dying: dropping the connection tells the host so.
                Err(ChannelError::PeerDied { .. }) => return false,
                Err(_) => return self.leave(),
            }
        }
    }

    /// Whether the user's side of a reading proxy retired or poisoned it.
    fn user_left(&self) -> bool {
        self.proxy.state_flags() & (READERS_RETIRED | POISONED) != 0
    }

    /// Tells the host the user left: poison if the user poisoned, then retire or hand over.
    /// Returns whether a hand-over was confirmed.
    fn user_gone(&mut self) -> bool {
        let handoff = *self.info.handoff.lock().unwrap_or_else(|p| p.into_inner());
        let mut frames = Vec::new();
        if self.proxy.state_flags() & POISONED != 0 {
            frames.push(Frame::empty(Kind::Poison));
        }
        frames.push(match handoff {
            Some(t) => Frame::new(Kind::Handoff, t.to_le_bytes().to_vec()),
            None => Frame::empty(Kind::Retire),
        });
        for f in &frames {
            if write_frame(&mut self.s, f).is_err() {
                return false;
            }
        }
        // A Message that crossed our frames is skipped: the host puts it back, since what
        // follows it is not an Ack.
        let mut done = 0;
        while done < frames.len() {
            match read_frame(&mut self.s, MAX_FRAME) {
                Ok(f) if f.kind == Kind::Done => done += 1,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        handoff.is_some()
    }

    /// The pump of a reading end; returns whether it handed the end over.
    fn pump_reads(&mut self) -> bool {
        // Whether the next `Read` already went out, in one write with the last `Ack`.
        let mut asked = false;
        loop {
            if !asked {
                if self.user_left() {
                    return self.user_gone();
                }
                if let Err(e) = write_frame(&mut self.s, &Frame::empty(Kind::Read)) {
                    self.fail(self.lost(&e));
                    self.proxy.retire_side(true);
                    return false;
                }
            }
            // Wait for the answer, watching for the user leaving meanwhile.
            while !sys::wait_readable(self.s.as_raw_fd(), TICK) {
                if self.user_left() {
                    return self.user_gone();
                }
            }
            let f = match read_frame(&mut self.s, MAX_FRAME) {
                Ok(f) => f,
                Err(e) => {
                    self.fail(self.lost(&e));
                    self.proxy.retire_side(true);
                    return false;
                }
            };
            match f.kind {
                Kind::Message => match write_encoded(&self.proxy, &f.body, None) {
                    Ok(()) => {
                        // The next Read goes with the Ack, in one system call, so that the
                        // host finds it at once instead of blocking for it.
                        asked = !self.user_left();
                        let sent = if asked {
                            write_frames(&mut self.s, &[Kind::Ack, Kind::Read])
                        } else {
                            write_frame(&mut self.s, &Frame::empty(Kind::Ack))
                        };
                        if let Err(e) = sent {
                            self.fail(self.lost(&e));
                            self.proxy.retire_side(true);
                            return false;
                        }
                    }
                    Err(_) => {
                        // The user left without taking it: give it back.
                        let _ = write_frame(&mut self.s, &Frame::empty(Kind::Nack));
                        return self.user_gone();
                    }
                },
                Kind::Error => {
                    let e = ErrorBody::decode(&f.body).into_error(&self.info.address.full);
                    match e {
                        ChannelError::Poisoned => self.proxy.poison(),
                        ChannelError::Retired => {}
                        e => self.fail(e),
                    }
                    self.proxy.retire_side(true);
                    let _ = self.request(&Frame::empty(Kind::Retire));
                    return false;
                }
                k => {
                    self.fail(ChannelError::Protocol {
                        address: self.info.address.full.clone(),
                        reason: format!("expected Message, got {k:?}"),
                    });
                    self.proxy.retire_side(true);
                    return false;
                }
            }
        }
    }
}

/// A remote end that could not be opened: its first operation reports `e`.
pub(crate) fn failed_end(
    addr: &Address,
    type_name: &str,
    fp: u64,
    writer: bool,
    e: ChannelError,
) -> Result<Chan, ChannelError> {
    let arena = Arena::get().map_err(|e| ChannelError::SharedMemory(e.to_string()))?;
    let proxy = Chan::create(arena, &addr.full, type_name, fp, 0, false).map_err(|_| {
        ChannelError::SharedMemory("no room for a socket end's proxy channel".into())
    })?;
    runtime::took(&proxy);
    runtime::hold(&proxy, Role::end(writer));
    let info = Arc::new(Proxy {
        address: addr.clone(),
        writer,
        handoff: Mutex::new(None),
        finished: Mutex::new(Some(false)),
        finished_cv: Condvar::new(),
        error: Mutex::new(Some(e)),
    });
    PROXIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(proxy.key(), info);
    // The other side has no end at all: retired.
    proxy.join_side(!writer);
    proxy.retire_side(!writer);
    runtime::release(proxy, Role::Handle);
    Ok(proxy)
}
