//! The remote side of socket channels: an end is a private channel (the *proxy*) in this
//! process's shared memory plus a pump thread that carries its operations to the host.
//!
//! - Writing end of a buffered channel: the proxy is a buffered channel of the channel's
//!   capacity; the pump streams its messages to the host in batches, with at most the capacity
//!   sent and not confirmed (see [`Pump::pump_buffered`]); [`flush`] waits for confirmations.
//! - Writing end of a rendezvous channel: the user writes into the proxy; the pump takes the
//!   message without completing the rendezvous, sends `Write`, and completes it only on the
//!   host's `Done`, so
//!   the user's `write` returns exactly when the host's channel accepted the message. An
//!   `Error` answer or a lost connection fails the user's write with that error.
//! - Reading end of a rendezvous channel: the pump sends `Read` once its user reads (the
//!   proxy counts the reads and input guards that come to it, see `Chan::watch_readers`),
//!   puts the `Message` into the (rendezvous) proxy, waiting until the user takes it, then
//!   sends `Ack` with the next `Read`. If the user does not take it within [`HOLD_FOR_USER`],
//!   retires or poisons, the pump sends `Nack`: the host gives the message back to its writer
//!   (see `Chan::return_to_writer`). The pump holds at most one message at a time.
//! - Reading end of a buffered channel: the proxy is buffered, and the pump asks for messages
//!   ahead: as many as cover twice the round trip at the rate the user takes them (one while
//!   the user works on each longer than a round trip), at most the window the host allows
//!   (the channel's capacity, at most [`READ_WINDOW`]); it acknowledges each message the user
//!   took, in order, and gives back (`Nack`) those the user did not take when it leaves (see
//!   [`Pump::pump_reads_ahead`]).
//!
//! Because the user's side is an ordinary shared-memory channel, alternation over remote ends
//! works unchanged.
//!
//! A rendezvous end's plain reads and writes skip the proxy while the pump waits for its user
//! with nothing in flight: the user's own thread sends and receives those frames on the
//! connection (see `direct.rs`), and hands the exchange back to the pump when it would wait
//! long, when anything but its answer comes, or when the channel fails. A buffered writing
//! end's user sends the first message after a pause so; the pump batches the rest.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::direct::{Buffered, Direct, Wrote, DIRECT_MAX};
use super::key::{self, HandshakeError};
use super::proto::{encode, ErrorBody, OpenBody, OpenedBody, READ_WINDOW};
use super::stream::{self, step_failed, Address, Stream, LOSS_TIMEOUT};
use crate::error::ChannelError;
use crate::frame::{
    append_frame, read_frame, write_frame, write_frames, Frame, FrameError, FrameReader, Kind,
    MAX_FRAME, MAX_MESSAGE,
};
use crate::message::{copy_encoded, write_encoded, write_encoded_placed};
use crate::runtime::{self, Role};
use crate::shm::arena::Arena;
use crate::shm::census;
use crate::shm::ring::{
    Chan, Incoming, Reader, Taken, WriteError, PEER_DIED, POISONED, READERS_RETIRED,
    WRITERS_RETIRED,
};
use crate::shm::wait;
use crate::shm::waiter;
use crate::sys;
use crate::trace;

/// How often a pump waiting for the host checks whether its user retired or poisoned.
const TICK: Duration = Duration::from_millis(50);

/// How often a pump whose message waits at the host (`Offer`) looks whether its writer (a
/// select, or a write with a deadline) asks for it back.
const OFFER_LOOK: Duration = Duration::from_millis(1);

/// How often a buffered reading end's pump waiting for its host looks whether its user took
/// one of the messages waiting in the proxy, for the first [`stream::PUBLISH_AFTER`] of the
/// wait (then it sleeps on the proxy while a thread of its own watches the connection).
const TAKE_LOOK: Duration = Duration::from_millis(1);

/// How long the pump of a reading end holds messages the host sent it while its user takes
/// none of them, by default: then they go back to the host's channel (a rendezvous message's
/// writer still waits), for other readers, and the pump asks again only once its user reads.
/// A user that reads in a loop comes back well within it; one that works on a message, or
/// waits on other guards, does not keep the next ones from other readers for longer.
pub const HOLD_FOR_USER: Duration = Duration::from_millis(2);

/// The environment variable that sets [`HOLD_FOR_USER`] for the remote reading ends of a
/// process: milliseconds, or `never` (nothing goes back while the user does not read: the
/// single reader of a stream that pauses keeps what it asked for ahead; other readers wait
/// for it).
pub const ENV_HOLD_MS: &str = "PYCSP_REMOTE_HOLD_MS";

/// [`HOLD_FOR_USER`], or what [`ENV_HOLD_MS`] says (read once); `None`: never.
fn hold_for_user() -> Option<Duration> {
    static HOLD: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *HOLD.get_or_init(|| match std::env::var(ENV_HOLD_MS) {
        Ok(v) if v.trim() == "never" => None,
        Ok(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_or(HOLD_FOR_USER, Duration::from_millis),
        ),
        Err(_) => Some(HOLD_FOR_USER),
    })
}

/// When a hold that starts now ends (`None`: never).
fn hold_until() -> Option<Instant> {
    hold_for_user().and_then(|d| Instant::now().checked_add(d))
}

/// The largest window of a buffered remote writing end (its proxy's capacity), whatever the
/// channel's capacity: a channel of a larger capacity has its messages beyond this many wait in
/// the writer until the host confirms earlier ones.
const MAX_WINDOW: u64 = 1 << 16;

/// How many bytes of messages a buffered writing end's pump sends in one system call, at most
/// (a message longer than this goes alone, without a copy).
const BATCH: usize = 64 << 10;

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
    /// What the host confirmed of a buffered writing end's messages (see [`Flow`]).
    flow: Mutex<Flow>,
    flow_cv: Condvar,
    /// Flush markers written into the proxy, in order (held while one is written).
    markers: Mutex<u64>,
    /// Whether the user's thread may use the connection itself (a rendezvous end's plain
    /// reads and writes, a buffered writer's first message after a pause: see `direct.rs`).
    direct: Direct,
}

/// The window of a buffered writing end: messages the pump took from the proxy and sent, not
/// yet confirmed by the host, and the flushes waiting for them.
#[derive(Default)]
struct Flow {
    /// Messages the host confirmed, from the connection's first.
    confirmed: u64,
    /// Messages taken from the proxy and not confirmed (sent, or about to be).
    outstanding: u64,
    /// Flush markers the pump took from the proxy.
    markers_seen: u64,
    /// Flush markers whose messages before them are all confirmed.
    flushed: u64,
    /// The connection was lost: `outstanding` is final.
    lost: bool,
}

impl Proxy {
    /// Whether the pump leaves the connection to its user now (a hint, see `direct.rs`).
    pub(crate) fn direct_open(&self) -> bool {
        self.direct.looks_open()
    }

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

impl Proxy {
    /// `e` as reported now: a lost connection of a buffered writer counts what the host did
    /// not confirm, those taken by the pump and those still in the proxy, written by `Ok`
    /// writes before this report.
    fn counted(&self, chan: &Chan, e: ChannelError) -> ChannelError {
        match e {
            ChannelError::ConnectionLost {
                address,
                reason,
                confirmed,
                ..
            } => {
                let markers = *self.markers.lock().unwrap_or_else(|p| p.into_inner());
                let flow = self.flow.lock().unwrap_or_else(|p| p.into_inner());
                let waiting = (chan.len() as u64).saturating_sub(markers - flow.markers_seen);
                ChannelError::ConnectionLost {
                    address,
                    reason,
                    confirmed,
                    unconfirmed: flow.outstanding + waiting,
                }
            }
            e => e,
        }
    }
}

/// Waits until the host confirmed every message written so far through the buffered remote
/// writing end `chan` (and its clones), or until `deadline` ([`ChannelError::Timeout`]); a
/// lost connection fails with [`ChannelError::ConnectionLost`] counting what was not
/// confirmed. Nothing to wait for on a local channel or a rendezvous one (its writes return
/// once a reader took the message).
///
/// A flush is a marker in the proxy's ring behind the messages written before it (an empty
/// message: no message of any type encodes to 0 bytes of MessagePack); the pump counts it done
/// when every message it took before the marker is confirmed.
pub(crate) fn flush(chan: &Chan, deadline: std::time::Instant) -> Result<(), ChannelError> {
    let Some(p) = proxy_of(chan) else {
        return Ok(());
    };
    if !p.writer || chan.is_rendezvous() {
        return Ok(());
    }
    let mine = {
        let mut written = p.markers.lock().unwrap_or_else(|e| e.into_inner());
        match write_encoded(chan, &[], Some(deadline)) {
            Ok(()) => {
                *written += 1;
                *written
            }
            Err(e) => {
                // `remote_error` counts the markers: not under their lock.
                drop(written);
                return Err(remote_error(chan, e));
            }
        }
    };
    let mut flow = p.flow.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if flow.flushed >= mine {
            return Ok(());
        }
        if flow.lost
            || p.finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
        {
            drop(flow);
            return Err(remote_error(chan, ChannelError::Retired));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(ChannelError::Timeout);
        }
        flow = p
            .flow_cv
            .wait_timeout(flow, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
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
/// [`handshake_timeout`](super::handshake_timeout), so a host that accepts and says nothing
/// (stopped, overloaded, another service on the port) fails the open with
/// [`ChannelError::Connection`] instead of hanging.
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
    let (s, opened) = connect(addr, &body)?;
    let host = opened.pid;
    let arena = Arena::get().map_err(|e| ChannelError::SharedMemory(e.to_string()))?;
    // A writing end of a buffered channel has a buffered proxy of the channel's capacity: its
    // messages not yet confirmed by the host (the window) are this part of the channel's
    // buffer. Every other proxy is a rendezvous: an operation completes when the host's does.
    // A reading end of a buffered channel has a buffered proxy too: the messages it asked
    // for ahead (at most the window the host allows and READ_WINDOW, see
    // `Pump::pump_reads_ahead`) wait there for the user.
    let capacity = if writer {
        usize::try_from(opened.capacity.min(MAX_WINDOW)).unwrap_or(0)
    } else {
        usize::try_from(
            opened
                .capacity
                .min(opened.read_window())
                .min(READ_WINDOW as u64),
        )
        .unwrap_or(0)
    };
    let proxy = Chan::create(arena, &addr.full, type_name, fp, capacity, false).map_err(|_| {
        ChannelError::SharedMemory("no room for a socket end's proxy channel".into())
    })?;
    if !writer {
        // Before the user has the end: its pump asks the host only while it reads.
        proxy.watch_readers();
    }
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
        flow: Mutex::new(Flow::default()),
        flow_cv: Condvar::new(),
        markers: Mutex::new(0),
        // A rendezvous end's user exchanges its messages on the connection itself while the
        // pump waits for it; a buffered writing end's user sends the first message after a
        // pause so (the pump batches the rest); a buffered reading end's pump asks ahead.
        direct: Direct::new(if capacity == 0 || writer {
            s.try_clone().ok()
        } else {
            None
        }),
    });
    PROXIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(proxy.key(), info.clone());
    std::thread::Builder::new()
        .name("pycsp-pump".into())
        .spawn(move || {
            let _internal = crate::shm::census::internal_thread(true);
            // The connection's bytes from here on, as the host counts them after `Opened`.
            stream::reset_bytes();
            let mut p = Pump {
                proxy,
                s,
                info,
                host,
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if p.info.writer && !p.proxy.is_rendezvous() {
                    p.pump_buffered()
                } else if p.info.writer {
                    p.pump_writes()
                } else if !p.proxy.is_rendezvous() {
                    p.pump_reads_ahead()
                } else {
                    p.pump_reads()
                }
            }));
            let handed = run.unwrap_or_else(|panic| {
                p.failed_inside(&*panic);
                false
            });
            p.info.direct.close();
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
                return p.counted(chan, err);
            }
        }
    }
    e
}

/// A plain read of the remote rendezvous reading end `chan` (`info`, its end), made on the
/// connection by the user's own thread if the pump leaves it to the user now (see
/// `direct.rs`): the message's encoding, or `None` (then the read goes through the proxy).
pub(crate) fn read_direct(chan: &Chan, info: &Proxy, deadline: Option<Instant>) -> Option<Vec<u8>> {
    if !info.direct.looks_open() {
        return None;
    }
    let t0 = trace::begin();
    let body = info.direct.read(
        deadline,
        || chan.state_flags() & (POISONED | READERS_RETIRED) != 0,
        || {
            chan.events().1.notify_all();
        },
    );
    if t0 != 0 && body.is_some() {
        // No message of this process's shared memory moved: a read with no arrow.
        trace::span(&format!("read {}", chan.name()), t0);
    }
    body
}

/// A plain write of the encoded message `bytes` on the remote rendezvous writing end `chan`
/// (`info`, its end), made on the connection by the user's own thread if the pump leaves it
/// to the user now (see `direct.rs`), else through the proxy, as a write of `chan` is. The
/// error of a failed write is the one the pump would have reported.
pub(crate) fn write_direct(
    chan: &Chan,
    info: &Proxy,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<(), WriteError> {
    let not_placed = |error| WriteError {
        error,
        placed: false,
    };
    if bytes.len() > DIRECT_MAX {
        return write_encoded_placed(chan, bytes, deadline);
    }
    if !chan.is_rendezvous() {
        return write_direct_buffered(chan, info, bytes, deadline);
    }
    let failed = || chan.state_flags() & (POISONED | READERS_RETIRED) != 0;
    let t0 = trace::begin();
    match info
        .direct
        .write(bytes, deadline, failed, &info.address.full)
    {
        None | Some(Wrote::NotTaken) => write_encoded_placed(chan, bytes, deadline),
        Some(Wrote::Done) => {
            if t0 != 0 {
                // As for a read on the connection (`read_direct`): no arrow.
                trace::span(&format!("write {}", chan.name()), t0);
            }
            Ok(())
        }
        Some(Wrote::Failed(e)) => {
            // As the pump does with such an answer (it retires from the host next).
            if e == ChannelError::Poisoned {
                chan.poison();
            } else {
                *info.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                chan.retire_side(false);
            }
            Err(not_placed(e))
        }
        Some(Wrote::Lost { error, offered }) => {
            let e = ChannelError::Connection {
                address: info.address.full.clone(),
                reason: format!("connection to the host lost: {error}"),
            };
            *info.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            chan.retire_side(false);
            // Once the host had the whole `Offer`, a reader there may have taken it.
            Err(WriteError {
                error: e,
                placed: offered,
            })
        }
    }
}

/// [`write_direct`] on a buffered writing end: sent by the user's thread when nothing it wrote
/// is on its way, else into the proxy, where the pump batches it; `Ok` means what a buffered
/// write's `Ok` always means (the message is in the channel's buffer, part of which is here:
/// counted as not confirmed until the host confirms it).
fn write_direct_buffered(
    chan: &Chan,
    info: &Proxy,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<(), WriteError> {
    if chan.state_flags() & (POISONED | READERS_RETIRED) != 0 {
        return write_encoded_placed(chan, bytes, deadline);
    }
    let t0 = trace::begin();
    let count = |b: &Buffered| {
        if b.sent || b.confirmed > 0 {
            let mut flow = info.flow.lock().unwrap_or_else(|p| p.into_inner());
            flow.outstanding = flow.outstanding + u64::from(b.sent) - b.confirmed;
            flow.confirmed += b.confirmed;
        }
    };
    let Some(b) = info
        .direct
        .write_buffered(bytes, || !chan.looks_nonempty(), count)
    else {
        return write_encoded_placed(chan, bytes, deadline);
    };
    if b.back {
        // The pump sleeps on the proxy's readers' event: it goes on.
        chan.events().0.notify_all();
    }
    if b.sent {
        if t0 != 0 {
            // As for a rendezvous write on the connection: no arrow.
            trace::span(&format!("write {}", chan.name()), t0);
        }
        return Ok(());
    }
    write_encoded_placed(chan, bytes, deadline)
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
    /// The host's pid (0 if it did not say): the peer the census follows.
    host: u32,
}

impl Pump {
    fn fail(&self, e: ChannelError) {
        *self.info.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// The pump panicked (a defect of pycsp): its end fails with a `Connection` error saying
    /// so, and its user's waits end (the proxy's side of the pump retires, a flush returns),
    /// instead of waiting for a pump that is gone.
    fn failed_inside(&self, panic: &(dyn std::any::Any + Send)) {
        self.fail(ChannelError::Connection {
            address: self.info.address.full.clone(),
            reason: format!(
                "the end's pump failed (a defect of pycsp): {}",
                crate::error::panic_message(panic)
            ),
        });
        // The pump's side of the proxy: its reader for a writing end, its writer for a
        // reading end; retired once (it may have retired before it panicked).
        let side = if self.info.writer {
            READERS_RETIRED
        } else {
            WRITERS_RETIRED
        };
        if self.proxy.state_flags() & side == 0 {
            self.proxy.retire_side(!self.info.writer);
        }
        self.flow(|f| f.lost = true);
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
        stream::await_readable(&self.s, self.host, self.info.writer, &self.proxy);
        read_frame(&mut self.s, MAX_FRAME)
    }

    /// Sends a message its writer may want back (`Offer`, `taken` from a select or a write
    /// with a deadline) and waits for the host's answer; meanwhile the writer may ask for it
    /// back (a select's timeout or other guard, a write's deadline): then the pump sends
    /// `Withdraw`, once.
    ///
    /// An answer within [`OFFER_LOOK`] is read at once. Then the pump sleeps on the proxy's
    /// writer event, which the writer rings when it asks back, while a thread of its own
    /// watches the connection and rings it when the host answers (or hangs up); the wait is
    /// published for the census as idle. Without such a thread, it looks every
    /// [`OFFER_LOOK`].
    ///
    /// `Err` with whether the whole `Offer` went: from then on the host has the message, and
    /// a connection lost before its answer leaves it unknown whether a reader took it.
    fn offer(&mut self, frame: &Frame, taken: &Taken) -> Result<Frame, (FrameError, bool)> {
        write_frame(&mut self.s, frame).map_err(|e| (e, false))?;
        self.answer_to_offer(taken).map_err(|e| (e, true))
    }

    /// [`offer`](Self::offer) once the `Offer` went: the host's answer.
    fn answer_to_offer(&mut self, taken: &Taken) -> Result<Frame, FrameError> {
        self.proxy.offer_withdrawable(taken);
        if !sys::wait_readable(self.s.as_raw_fd(), OFFER_LOOK) {
            let idle = stream::idle(self.host, self.info.writer, &self.proxy, None);
            let (fd, proxy) = (self.s.as_raw_fd(), self.proxy);
            stream::with_socket_watch(
                fd,
                || {
                    proxy.events().1.notify_all();
                },
                |answered| self.await_answer(taken, answered),
            )?;
            drop(idle);
        }
        read_frame(&mut self.s, MAX_FRAME)
    }

    /// Waits until the host's answer to an `Offer` can be read, sending `Withdraw` once
    /// when the writer asks for the message back: sleeping on the proxy's writer event until
    /// `answered` is set (by a thread that watches the connection), or, without it, looking
    /// every [`OFFER_LOOK`]. A live host answers a `Withdraw` at once; one that gives no
    /// answer for [`LOSS_TIMEOUT`] after it (stopped, or hung) counts as lost, as a
    /// connection that leaves data unacknowledged that long does.
    fn await_answer(
        &mut self,
        taken: &Taken,
        answered: Option<&AtomicBool>,
    ) -> Result<(), FrameError> {
        let fd = self.s.as_raw_fd();
        // When the `Withdraw` went, the time by which its answer must come.
        let mut answer_by: Option<Instant> = None;
        let unanswered = || {
            FrameError::Io(format!(
                "the host did not answer for {LOSS_TIMEOUT:?} after the writer asked its \
                 message back"
            ))
        };
        loop {
            if answer_by.is_none() && self.proxy.offer_asked_back(taken) {
                write_frame(&mut self.s, &Frame::empty(Kind::Withdraw))?;
                answer_by = Some(Instant::now() + LOSS_TIMEOUT);
            }
            match answered {
                Some(flag) => {
                    let ready = || {
                        (flag.load(Ordering::SeqCst)
                            || (answer_by.is_none() && self.proxy.offer_asked_back(taken)))
                        .then_some(())
                    };
                    self.proxy.events().1.wait_until(answer_by, ready, || false);
                    if flag.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                }
                None => {
                    if sys::wait_readable(fd, OFFER_LOOK) {
                        return Ok(());
                    }
                }
            }
            if answer_by.is_some_and(|t| Instant::now() >= t) {
                return Err(unanswered());
            }
        }
    }

    /// Takes the next message the user wrote into the proxy (`deadline` as
    /// `read_deferred`'s); a wait that lasts is published for the census as idle (every
    /// request answered).
    fn next_message(
        &self,
        deadline: Option<Instant>,
        arena: &'static Arena,
    ) -> Result<(Incoming, crate::shm::ring::Taken), ChannelError> {
        let claim = |w| waiter::claim(arena, w);
        if deadline.is_some() {
            return self.proxy.read_deferred(deadline, Reader::Pump, claim);
        }
        match self.proxy.read_deferred(
            Some(Instant::now() + stream::PUBLISH_AFTER),
            Reader::Pump,
            claim,
        ) {
            Err(ChannelError::Timeout) => {
                let publish = || {
                    stream::idle(
                        self.host,
                        self.info.writer,
                        &self.proxy,
                        Some(self.proxy.side_word(false)),
                    )
                };
                self.info.direct.absorb();
                let mut idle = publish();
                loop {
                    match self
                        .proxy
                        .read_deferred(Some(Instant::now() + TICK), Reader::Pump, claim)
                    {
                        // The user's own exchanges meanwhile moved bytes on the connection
                        // (see `direct.rs`): published again with them.
                        Err(ChannelError::Timeout) => {
                            if self.info.direct.absorb() {
                                drop(idle.take());
                                idle = publish();
                            }
                        }
                        r => return r,
                    }
                }
            }
            r => r,
        }
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
            // The user may send its own messages meanwhile (see `direct.rs`).
            let _ = self.info.direct.open();
            let next = self.next_message(None, arena);
            self.info.direct.take_back();
            match next {
                Ok((msg, taken)) => {
                    if let Err(stop) = self.send_write(msg, taken, arena) {
                        return stop;
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

    /// Sends the host a message the user wrote into the proxy (`taken` from it) and completes
    /// the user's write with the answer; `Err` ends the pump (with what it returns).
    ///
    /// Every message is *offered* (`Offer`, its block kept, see [`offer`](Self::offer)): the
    /// host keeps it for a reader until the writer asks for it back (a select: its timeout,
    /// its other guards; a write with a deadline: its deadline; any write: its channel
    /// failing here, by poison or a death), and then it goes back to the writer, which goes
    /// on or has left. Once a write with no deadline was a `Write`, which the host kept until a
    /// reader took it: a writer poisoned here meanwhile reported its error while a reader
    /// there could still take the message, and its process took 10 s to end (its pump waited
    /// for the host's answer).
    fn send_write(
        &mut self,
        msg: Incoming,
        taken: Taken,
        arena: &'static Arena,
    ) -> Result<(), bool> {
        let block = match msg {
            Incoming::Block { offset, .. } => Some(offset),
            Incoming::Inline { .. } => None,
        };
        let proxy = self.proxy;
        let give_back = move || {
            if let Err(t) = proxy.return_to_writer(taken) {
                let _ = proxy.give_back_offer(t);
            }
        };
        let bytes = copy_encoded(&msg);
        let bytes = match bytes {
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
                give_back();
                self.fail(e);
                self.proxy.retire_side(false);
                return Err(false);
            }
        };
        let answer = self.offer(&Frame::new(Kind::Offer, bytes), &taken);
        match answer {
            Ok(f) if f.kind == Kind::Done => {
                // Taken: an offered message's block was ours since the claim.
                if let Some(offset) = block {
                    arena.free_block(offset);
                }
                self.proxy.ack(taken);
                Ok(())
            }
            Ok(f) => {
                let e = if f.kind == Kind::Error {
                    ErrorBody::decode(&f.body).into_error(&self.info.address.full)
                } else {
                    ChannelError::Protocol {
                        address: self.info.address.full.clone(),
                        reason: format!("expected Done, got {:?}", f.kind),
                    }
                };
                give_back();
                if e == ChannelError::Timeout {
                    // Not taken in time: the writer has it back.
                    return Ok(());
                }
                if e == ChannelError::Poisoned {
                    self.proxy.poison();
                } else {
                    self.fail(e);
                    self.proxy.retire_side(false);
                }
                let _ = self.request(&Frame::empty(Kind::Retire));
                Err(false)
            }
            Err((e, false)) => {
                give_back();
                self.fail(self.lost(&e));
                self.proxy.retire_side(false);
                Err(false)
            }
            Err((e, true)) => {
                // The host had the message: whether a reader took it is not known, so it
                // does not go back to its writer, which fails as when the reader that claimed
                // its message died (its write is `Uncertain`; a select fails once its grace
                // ends). The block was ours since the claim.
                if let Some(offset) = block {
                    arena.free_block(offset);
                }
                self.fail(self.lost(&e));
                self.proxy.mark_peer_died(self.host, "the host");
                self.proxy.retire_side(false);
                Err(false)
            }
        }
    }

    /// Updates the window under its lock and wakes flushes waiting on it.
    fn flow(&self, f: impl FnOnce(&mut Flow)) {
        let mut flow = self.info.flow.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut flow);
        self.info.flow_cv.notify_all();
    }

    /// The connection was lost with the window as it is: the user's next operation (and its
    /// flushes) fail with [`ChannelError::ConnectionLost`], counting what was not confirmed.
    fn lost_window(&self, e: &FrameError) {
        let confirmed = self
            .info
            .flow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .confirmed;
        self.fail(ChannelError::ConnectionLost {
            address: self.info.address.full.clone(),
            reason: format!("connection to the host lost: {e}"),
            confirmed,
            unconfirmed: 0,
        });
        self.proxy.retire_side(false);
        self.flow(|f| f.lost = true);
    }

    /// A buffered writing end's pump with nothing on its way leaves the connection to its
    /// user (see `direct.rs`: the first message after a pause goes out from the user's
    /// thread) until a message waits in the proxy, the user leaves or poisons, a user thread
    /// gives the connection back, or the user's own messages are confirmed while it writes no
    /// more (the pump reads the confirmations). Sleeps on the proxy's readers' event
    /// meanwhile, published for the census as it was while it waited for a message. `false`
    /// if the connection is never the user's.
    fn await_direct_writes(&mut self) -> bool {
        let d = &self.info.direct;
        if !d.open() {
            return false;
        }
        let proxy = self.proxy;
        let fd = self.s.as_raw_fd();
        let since = Instant::now();
        let mut idle = None;
        loop {
            let step = if idle.is_none() {
                stream::PUBLISH_AFTER.saturating_sub(since.elapsed())
            } else {
                TICK
            };
            let come = proxy.events().0.sleep_until(Instant::now() + step, || {
                (proxy.looks_nonempty()
                    || proxy.state_flags() & (POISONED | WRITERS_RETIRED | PEER_DIED) != 0
                    || d.handed_back())
                .then_some(())
            });
            if come.is_some()
                || (!d.in_use() && d.unconfirmed() > 0 && sys::wait_readable(fd, Duration::ZERO))
            {
                break;
            }
            let moved = d.absorb();
            if since.elapsed() >= stream::PUBLISH_AFTER && (idle.is_none() || moved) {
                drop(idle.take());
                idle = stream::idle(self.host, true, &proxy, Some(proxy.side_word(false)));
            }
        }
        drop(idle);
        d.take_back();
        true
    }

    /// The pump of a writing end of a buffered channel; returns whether it handed the end
    /// over.
    ///
    /// Every wake-up it takes all the messages waiting in the proxy (up to [`BATCH`] bytes)
    /// and sends them as `Write` frames in one system call, without waiting for the host; the
    /// host answers each with `Done`, in order, several in one system call. At most the
    /// channel's capacity are sent and not confirmed (the window); while the window is full the
    /// pump takes nothing more, the proxy fills up, and the writer blocks as on a full buffer.
    /// So a remote writer is at most twice the capacity ahead of the host's channel: the
    /// proxy's buffer and the window.
    fn pump_buffered(&mut self) -> bool {
        let Ok(arena) = Arena::get() else {
            return false;
        };
        // Messages sent and not confirmed, at most `limit` (the channel's capacity).
        let mut window = 0u64;
        let limit = self.proxy.capacity() as u64;
        // Flush markers waiting for the messages before them: how many confirmations each
        // needs.
        let mut markers: VecDeque<u64> = VecDeque::new();
        let mut taken = 0u64;
        let mut out: Vec<u8> = Vec::with_capacity(BATCH + 256);
        let mut inbox = FrameReader::default();
        loop {
            out.clear();
            let mut gathered = 0usize;
            let mut stop = None;
            // Once there is something to send, the next messages are only looked for (a
            // deadline already passed).
            loop {
                // Wait for a message only when nothing waits for a confirmation.
                let deadline = if window == 0 && out.is_empty() {
                    None
                } else {
                    Some(wait::passed())
                };
                if window >= limit {
                    if self.proxy.state_flags() & POISONED != 0 {
                        // The user poisoned while the host holds back the window: poison is
                        // immediate, whatever waits for room.
                        stop = Some(ChannelError::Poisoned);
                    }
                    break;
                }
                if deadline.is_none() && !inbox.buffered() && self.await_direct_writes() {
                    // The user's own writes meanwhile are the pump's from now on: counted as
                    // taken and sent, their confirmations read with the others.
                    let (sent, unconfirmed) = self.info.direct.take_counts();
                    taken += sent;
                    window += unconfirmed;
                    if window > 0 {
                        continue;
                    }
                }
                match self.next_message(deadline, arena) {
                    Ok((msg, t)) => {
                        if message_len(&msg) == 0 {
                            // A flush marker: done once what was taken before it is confirmed.
                            self.proxy.ack(t);
                            self.flow(|f| {
                                f.markers_seen += 1;
                                if f.confirmed >= taken {
                                    f.flushed += 1;
                                } else {
                                    markers.push_back(taken);
                                }
                            });
                            continue;
                        }
                        // The slot is free again: the message is in `out`, then on its way.
                        self.proxy.ack(t);
                        taken += 1;
                        gathered += 1;
                        window += 1;
                        if let Err(e) = self.append(&mut out, msg, arena) {
                            self.flow(|f| f.outstanding += gathered as u64);
                            match e {
                                Stop::Lost(e) => self.lost_window(&e),
                                Stop::Failed(e) => {
                                    self.fail(e);
                                    self.proxy.retire_side(false);
                                }
                            }
                            return false;
                        }
                        if out.len() >= BATCH {
                            break;
                        }
                    }
                    Err(ChannelError::Timeout) => break,
                    Err(e) => {
                        stop = Some(e);
                        break;
                    }
                }
            }
            if gathered > 0 {
                // Counted once per batch (a lock and a wake-up of the flushes), before
                // anything can report the window.
                self.flow(|f| f.outstanding += gathered as u64);
            }
            if !out.is_empty() {
                if let Err(e) = self.s.write_all(&out).map_err(crate::frame::io_error) {
                    self.lost_window(&e);
                    return false;
                }
            }
            match stop {
                None => {}
                Some(ChannelError::Poisoned) => {
                    // Poison is immediate: what the proxy still held is dropped, as a
                    // poisoned channel's buffer is.
                    let _ = write_frames(&mut self.s, &[Kind::Poison, Kind::Retire]);
                    let _ = self.settle(&mut inbox, &mut window, &mut markers, 2);
                    return false;
                }
                // The process is dying: dropping the connection tells the host so.
                Some(ChannelError::PeerDied { .. }) => return false,
                // Every user end retired (or moved) and the proxy is empty: once the host
                // confirmed the rest, retire or hand over.
                Some(_) => {
                    let handoff = *self.info.handoff.lock().unwrap_or_else(|p| p.into_inner());
                    let f = match handoff {
                        Some(t) => Frame::new(Kind::Handoff, t.to_le_bytes().to_vec()),
                        None => Frame::empty(Kind::Retire),
                    };
                    if let Err(e) = write_frame(&mut self.s, &f) {
                        self.lost_window(&e);
                        return false;
                    }
                    return match self.settle(&mut inbox, &mut window, &mut markers, 1) {
                        Ok(()) => handoff.is_some(),
                        Err(Stop::Lost(e)) => {
                            self.lost_window(&e);
                            false
                        }
                        Err(Stop::Failed(e)) => {
                            self.fail(e);
                            false
                        }
                    };
                }
            }
            if window == 0 {
                continue;
            }
            // Confirmations: wait for one if nothing new was sent, else take what is there.
            let r = self.confirmations(&mut inbox, &mut window, &mut markers, gathered == 0, true);
            match r {
                Ok(()) => {}
                Err(Stop::Lost(e)) => {
                    self.lost_window(&e);
                    return false;
                }
                Err(Stop::Failed(e)) => {
                    if e == ChannelError::Poisoned {
                        self.proxy.poison();
                    } else {
                        self.fail(e);
                        self.proxy.retire_side(false);
                    }
                    // The writes sent after the refused one are refused too; then retire.
                    let _ = write_frame(&mut self.s, &Frame::empty(Kind::Retire));
                    let rest = window + 1;
                    let _ = self.s.set_deadline(Some(LOSS_TIMEOUT));
                    for _ in 0..rest {
                        if inbox.next(&mut self.s, MAX_FRAME).is_err() {
                            break;
                        }
                    }
                    return false;
                }
            }
        }
    }

    /// Appends message `msg` to `out` as a `Write` frame; one longer than [`BATCH`] is sent
    /// at once, what `out` holds and the message straight from its block in one `writev`,
    /// without a copy.
    fn append(&mut self, out: &mut Vec<u8>, msg: Incoming, arena: &Arena) -> Result<(), Stop> {
        let len = message_len(&msg);
        if len > MAX_MESSAGE {
            // `message` refuses these in the user's write; never sent whole.
            if let Incoming::Block { offset, .. } = msg {
                arena.free_block(offset);
            }
            return Err(Stop::Failed(ChannelError::TooLarge {
                channel: self.info.address.full.clone(),
                len: len as u64,
                max: MAX_MESSAGE as u64,
            }));
        }
        out.extend_from_slice(&((len + 1) as u32).to_le_bytes());
        out.push(Kind::Write as u8);
        match msg {
            Incoming::Inline { buf, len } => out.extend_from_slice(&buf[..len]),
            Incoming::Block { offset, len } => {
                // SAFETY: a block taken out of the ring is this reader's until it frees it,
                // and holds `len` bytes.
                let bytes =
                    unsafe { std::slice::from_raw_parts(arena.ptr(offset, len), len as usize) };
                let r = if bytes.len() <= BATCH {
                    out.extend_from_slice(bytes);
                    Ok(())
                } else {
                    let r = crate::frame::write_all_two(&mut self.s, out, bytes);
                    out.clear();
                    r
                };
                arena.free_block(offset);
                r.map_err(|e| Stop::Lost(crate::frame::io_error(e)))?;
            }
        }
        Ok(())
    }

    /// Reads the host's answers to the writes in `window` (waiting for one if `wait`, else
    /// only what has arrived) and confirms them: each `Done` empties the oldest slot of the
    /// window, which lets a blocked writer go on. A wait for them also ends, with nothing
    /// read, once the user poisons the proxy (`poison_ends`: its `Poison` goes out at once,
    /// not after confirmations that a full channel at the host holds back).
    fn confirmations(
        &mut self,
        inbox: &mut FrameReader,
        window: &mut u64,
        markers: &mut VecDeque<u64>,
        wait: bool,
        poison_ends: bool,
    ) -> Result<(), Stop> {
        if !inbox.has_frame(MAX_FRAME) {
            if !wait && !sys::wait_readable(self.s.as_raw_fd(), Duration::ZERO) {
                return Ok(());
            }
            let proxy = self.proxy;
            let poisoned = || poison_ends && proxy.state_flags() & POISONED != 0;
            if !stream::await_readable_unless(
                &self.s,
                self.host,
                self.info.writer,
                &self.proxy,
                &poisoned,
            ) {
                return Ok(());
            }
            inbox.fill(&mut self.s).map_err(Stop::Lost)?;
        }
        let mut done = 0u64;
        let mut failed = None;
        while *window > 0 {
            match inbox.parse(MAX_FRAME) {
                Ok(Some(f)) if f.kind == Kind::Done => {
                    *window -= 1;
                    done += 1;
                }
                Ok(Some(f)) => {
                    *window -= 1;
                    failed = Some(if f.kind == Kind::Error {
                        ErrorBody::decode(&f.body).into_error(&self.info.address.full)
                    } else {
                        ChannelError::Protocol {
                            address: self.info.address.full.clone(),
                            reason: format!("expected Done, got {:?}", f.kind),
                        }
                    });
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(ChannelError::Protocol {
                        address: self.info.address.full.clone(),
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        if done > 0 {
            self.flow(|f| {
                f.confirmed += done;
                f.outstanding -= done;
                while markers.front().is_some_and(|&m| m <= f.confirmed) {
                    markers.pop_front();
                    f.flushed += 1;
                }
            });
        }
        failed.map_or(Ok(()), |e| Err(Stop::Failed(e)))
    }

    /// Waits (at most [`LOSS_TIMEOUT`] for each answer) for the answers to every write of
    /// `window` and then `more` answers, which must be `Done`.
    fn settle(
        &mut self,
        inbox: &mut FrameReader,
        window: &mut u64,
        markers: &mut VecDeque<u64>,
        more: usize,
    ) -> Result<(), Stop> {
        let _ = self.s.set_deadline(Some(LOSS_TIMEOUT));
        while *window > 0 {
            self.confirmations(inbox, window, markers, true, false)?;
        }
        for _ in 0..more {
            let f = inbox.next(&mut self.s, MAX_FRAME).map_err(Stop::Lost)?;
            if f.kind != Kind::Done {
                return Err(Stop::Failed(if f.kind == Kind::Error {
                    ErrorBody::decode(&f.body).into_error(&self.info.address.full)
                } else {
                    ChannelError::Protocol {
                        address: self.info.address.full.clone(),
                        reason: format!("expected Done, got {:?}", f.kind),
                    }
                }));
            }
        }
        Ok(())
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

    /// Puts a message from the host into the (rendezvous) proxy of a reading end and waits
    /// until the user took it, published for the census as this end's write of the proxy, on
    /// the connection to the host (which waits for the `Ack`). Published before the write,
    /// unless the user already sleeps waiting for it (then the write is taken at once): a
    /// rendezvous write that timed out and is written again may spin until a reader comes.
    /// A message its user does not take within [`HOLD_FOR_USER`] is withdrawn (`Timeout`:
    /// not taken), to be given back to the host.
    fn hand_to_user(&self, body: &[u8]) -> Result<(), ChannelError> {
        let until = hold_until();
        if self.host == 0 || self.proxy.reader_asleep() {
            return write_encoded(&self.proxy, body, until);
        }
        let _waiting = self.park_handing();
        write_encoded(&self.proxy, body, until)
    }

    /// Waits until the user of a reading end reads (a read or an input guard came to the
    /// proxy since the look `seen`, or a reader waits there now): `false` if it retired or
    /// poisoned instead. Nothing wakes it meanwhile but the user: the host waits for its
    /// `Read`, and other readers take what its writers write.
    ///
    /// A wait that lasts is published for the census as an idle connection whose pump sleeps
    /// on the proxy's writers' futex word (a reader that comes changes it): the process is
    /// blocked when its user is.
    fn await_user_reading(&self, seen: &mut u32) -> bool {
        let reading = |seen: u32| self.proxy.reader_looks() != seen || self.proxy.readers_wait();
        let mut idle = None;
        let mut step = stream::PUBLISH_AFTER;
        loop {
            if self.user_left() {
                return false;
            }
            if reading(*seen) {
                *seen = self.proxy.reader_looks();
                return true;
            }
            if self.proxy.wait_reader_since(*seen, Instant::now() + step) {
                continue;
            }
            if idle.is_none() {
                step = TICK;
                idle = stream::idle(
                    self.host,
                    false,
                    &self.proxy,
                    Some(self.proxy.side_word(true)),
                );
            }
        }
    }

    /// Publishes for the census that this pump of a reading end waits for its user to take
    /// from the proxy: this end's write of the proxy, on the connection to the host (which
    /// waits for the `Ack`); nothing if the host's pid is unknown.
    fn park_handing(&self) -> Option<census::Parked> {
        if self.host == 0 {
            return None;
        }
        // The host's frames that come meanwhile wait in the socket until the user took this
        // message (nothing else ends the wait).
        let unread = sys::unread_bytes(self.s.as_raw_fd());
        stream::park_for_peer(
            census::Kind::Write,
            &self.proxy,
            true,
            self.host,
            None,
            unread,
        )
    }

    /// Leaves the connection to the user's own reads (see `direct.rs`) until the pump must go
    /// on: a user thread gave it back, the user reads through the proxy (a select, a read
    /// that gave up its own wait, a read that came before the connection was open: the
    /// reads counted since `looks`, taken before the last message was handed over) or left,
    /// or a `Message` waits that no user came for during a whole hold (see
    /// [`HOLD_FOR_USER`]; then the pump gives it back at once, as it does a message its user
    /// did not take from the proxy within the hold).
    ///
    /// While its user reads, the pump sleeps on the proxy's writer event (which a read that
    /// comes through the proxy, the user leaving and a user thread giving the connection back
    /// ring), looking every hold (or [`TICK`]) whether a message waits; once a look finds the
    /// user idle (no exchange since the last, nothing waiting), it waits on the connection
    /// instead, as it does for its own `Read`, woken by the next frame only. A wait that
    /// lasts is published for the census as the pump's wait for the answer is, with the
    /// bytes user threads moved.
    fn await_user_direct(&mut self, looks: u32) -> Direct2Pump {
        let d = &self.info.direct;
        if !d.open() {
            return Direct2Pump::GoOn; // no direct reads on this end
        }
        let hold = hold_for_user();
        let step = hold.map_or(TICK, |h| h.min(TICK));
        let since = Instant::now();
        let fd = self.s.as_raw_fd();
        let proxy = self.proxy;
        let mut idle = None;
        let must_go_on = || {
            d.handed_back()
                || self.user_left()
                || proxy.reader_looks() != looks
                || proxy.readers_wait()
        };
        // The exchanges users had finished at the last look.
        let mut last = d.exchanges();
        // A `Message` waiting: the exchanges finished when it was first seen, and when.
        let mut pending: Option<(u64, Instant)> = None;
        // Whether the pump waits on the connection itself (its user is idle).
        let mut on_socket = false;
        loop {
            if on_socket {
                sys::wait_readable(fd, TICK);
            } else {
                let wake = pending.map_or(step, |(_, t)| {
                    hold.map_or(step, |h| (t + h).saturating_duration_since(Instant::now()))
                });
                proxy
                    .events()
                    .1
                    .sleep_until(Instant::now() + wake, || must_go_on().then_some(()));
            }
            if must_go_on() {
                d.take_back();
                return if self.user_left() {
                    Direct2Pump::UserLeft
                } else {
                    Direct2Pump::GoOn
                };
            }
            let moved = d.absorb();
            if since.elapsed() >= stream::PUBLISH_AFTER && (idle.is_none() || moved) {
                drop(idle.take());
                idle = stream::idle(self.host, false, &proxy, Some(proxy.side_word(true)));
            }
            let n = d.exchanges();
            if d.in_use() {
                // A user thread reads: back to looking every hold.
                (on_socket, pending, last) = (false, None, n);
                continue;
            }
            let waits = sys::wait_readable(fd, Duration::ZERO);
            match (waits, hold) {
                // With no hold, a message waits for the user (the pump looks every TICK).
                (true, None) => on_socket = false,
                (true, Some(h)) => match pending {
                    Some((first, t)) if first == n && t.elapsed() >= h => {
                        // Nobody came for it during a whole hold.
                        if d.try_take_back().is_some() {
                            return Direct2Pump::GiveBack;
                        }
                    }
                    Some((first, _)) if first == n => on_socket = false,
                    _ => (pending, on_socket) = (Some((n, Instant::now())), false),
                },
                (false, _) => {
                    // Nothing waits; a user that finished no exchange since the last look is
                    // idle: the next frame wakes the pump.
                    pending = None;
                    on_socket = n == last;
                }
            }
            last = n;
        }
    }

    /// The pump of a reading end; returns whether it handed the end over.
    fn pump_reads(&mut self) -> bool {
        // Whether the next `Read` already went out, in one write with the last `Ack`.
        let mut asked = false;
        // The user's reads counted before the last message was handed to it.
        let mut looks = 0;
        // The user's reads counted when it was last seen reading.
        let mut seen = 0;
        loop {
            if !asked {
                // A `Read` makes the host take a message for this end, which its writer
                // then waits for: asked only while the user reads.
                if !self.await_user_reading(&mut seen) {
                    return self.user_gone();
                }
                if let Err(e) = write_frame(&mut self.s, &Frame::empty(Kind::Read)) {
                    self.fail(self.lost(&e));
                    self.proxy.retire_side(true);
                    return false;
                }
            }
            // The `Read` went with the `Ack` of a message the user just took: its next read
            // may take the answer itself (see `direct.rs`).
            let mut give_back = false;
            if asked {
                match self.await_user_direct(looks) {
                    Direct2Pump::GoOn => {}
                    Direct2Pump::UserLeft => return self.user_gone(),
                    Direct2Pump::GiveBack => give_back = true,
                }
            }
            // Wait for the answer, watching for the user leaving meanwhile; a wait that lasts
            // is published for the census.
            let mut idle = None;
            let mut step = stream::PUBLISH_AFTER;
            while !sys::wait_readable(self.s.as_raw_fd(), step) {
                if self.user_left() {
                    return self.user_gone();
                }
                if step != TICK {
                    step = TICK;
                    idle = stream::idle(self.host, false, &self.proxy, None);
                }
            }
            drop(idle);
            let f = match read_frame(&mut self.s, MAX_FRAME) {
                Ok(f) => f,
                Err(e) => {
                    self.fail(self.lost(&e));
                    self.proxy.retire_side(true);
                    return false;
                }
            };
            // The user's reads counted before this message is handed over: a read for the
            // next one comes after (see `await_user_direct`).
            looks = self.proxy.reader_looks();
            match f.kind {
                Kind::Message if give_back => {
                    // Its user did not come for it within the hold: back to its writer for
                    // the other readers; asked again once the user reads.
                    if let Err(e) = write_frame(&mut self.s, &Frame::empty(Kind::Nack)) {
                        self.fail(self.lost(&e));
                        self.proxy.retire_side(true);
                        return false;
                    }
                    asked = false;
                    seen = self.proxy.reader_looks();
                }
                Kind::Message => match self.hand_to_user(&f.body) {
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
                    Err(ChannelError::Timeout) if !self.user_left() => {
                        // The user does not read now (it works, or chose another guard):
                        // give the message back for other readers, and ask again once it
                        // reads.
                        if let Err(e) = write_frame(&mut self.s, &Frame::empty(Kind::Nack)) {
                            self.fail(self.lost(&e));
                            self.proxy.retire_side(true);
                            return false;
                        }
                        asked = false;
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

/// How far ahead a reading end of a buffered channel asks: enough messages to cover twice the
/// round trip to the host at the rate the user can take them, within `1..=max`.
///
/// That rate is the user's own: the time between its takes less the time it waited for
/// messages, in reads and selects (the proxy counts it, `Chan::readers_waited`). A user that
/// takes messages faster than they cross the connection (a stream) waits for most of each
/// round trip and gets the proxy's capacity (the time between takes alone would say the
/// window's own pace and keep a small window small); one that takes a message and works on it
/// longer than a round trip (a worker of a farm) asks for one ahead, as a local reader has
/// none: it does not hold jobs that another worker could start.
struct ReadAhead {
    /// The shortest time seen from asking (with nothing asked before) to the answer.
    round_trip: Option<Duration>,
    /// When the user's takes were last counted (none yet: the time before its first read is
    /// not a time between takes), and the time between takes then (smoothed).
    counted: Option<Instant>,
    between: Option<Duration>,
    max: u64,
}

impl ReadAhead {
    fn new(max: u64) -> ReadAhead {
        ReadAhead {
            round_trip: None,
            counted: None,
            between: None,
            max,
        }
    }

    /// The user took `n` more messages since the last count, and its reads waited `waited`
    /// for messages meanwhile: the rest of the time since is what it spent on them (a user
    /// that waits for messages the window did not cover is not a slow user).
    fn took(&mut self, n: u64, now: Instant, waited: Duration) {
        if n == 0 {
            return;
        }
        let Some(counted) = self.counted.replace(now) else {
            return;
        };
        let working = (now - counted).saturating_sub(waited);
        let sample = working / u32::try_from(n).unwrap_or(u32::MAX);
        self.between = Some(match self.between {
            None => sample,
            Some(b) => (b * 3 + sample) / 4,
        });
    }

    /// An answer came `rtt` after a request made while nothing was asked.
    fn answered(&mut self, rtt: Duration) {
        self.round_trip = Some(self.round_trip.map_or(rtt, |r| r.min(rtt)));
    }

    fn window(&self) -> u64 {
        match (self.round_trip, self.between) {
            (Some(rtt), Some(between)) => {
                let want = (rtt.as_nanos() * 2).div_ceil(between.as_nanos().max(1));
                u64::try_from(want).unwrap_or(u64::MAX).clamp(1, self.max)
            }
            _ => 1,
        }
    }
}

/// What a reading end's pump does after leaving the connection to its user (see
/// `Pump::await_user_direct`).
enum Direct2Pump {
    /// Wait for the answer to its `Read` as before.
    GoOn,
    /// The user left.
    UserLeft,
    /// A `Message` waited a whole hold and no user came for it: give it back.
    GiveBack,
}

/// How a buffered reading end's pump's wait for the host ended.
enum HostWait {
    /// A frame (or part of one) is there.
    Ready,
    /// The user retired, poisoned or moved the end.
    UserLeft,
    /// Nothing came for a moment, and the pump has takes to acknowledge (or its user took a
    /// message meanwhile).
    Idle,
}

/// What ended the reading of a buffered reading end's pump.
enum ReadStop {
    /// The user retired, poisoned or moved the end.
    UserLeft,
    /// The host answered with this error (its channel poisoned, retired, ...).
    Host(ChannelError),
    /// The connection failed.
    Lost(FrameError),
}

impl Pump {
    /// The pump of a reading end of a buffered channel; returns whether it handed the end over.
    ///
    /// It keeps up to [`ReadAhead::window`] messages asked for and not acknowledged: the
    /// host's answers go into the (buffered) proxy at once, where the user reads them at
    /// shared-memory speed; the pump acknowledges those the user took, in order, and asks for
    /// as many again, in one system call. It waits for the host while it has asked for
    /// messages not come yet, else for the user to take one. The messages not acknowledged
    /// stay taken in the host's channel (they count in its capacity) and go back to it if the
    /// user leaves without them (`Nack`) or the connection ends.
    fn pump_reads_ahead(&mut self) -> bool {
        let mut ahead = ReadAhead::new(self.proxy.capacity() as u64);
        // Requests sent, messages received (put into the proxy), acknowledgements sent.
        let (mut asked, mut got, mut acked) = (0u64, 0u64, 0u64);
        // When requests went out while none was outstanding (the round trip's start).
        let mut asked_at: Option<Instant> = None;
        let mut inbox = FrameReader::default();
        let mut out: Vec<u8> = Vec::new();
        // The user's takes counted so far; whether the connection was idle with takes not
        // acknowledged.
        let (mut counted, mut flush) = (0u64, false);
        // The user's reads counted when it was last seen reading (see `await_user_reading`).
        let mut seen = 0;
        // What the user's reads had waited when its takes were last counted.
        let mut waited = self.proxy.readers_waited();
        let stop = loop {
            if self.user_left() {
                break ReadStop::UserLeft;
            }
            let taken = got - (self.proxy.len() as u64).min(got - acked);
            let now = Instant::now();
            let waited_now = self.proxy.readers_waited();
            if taken != counted {
                let w = Duration::from_nanos(waited_now.wrapping_sub(waited));
                ahead.took(taken - counted, now, w);
                waited = waited_now;
            }
            counted = taken;
            let window = ahead.window();
            // Acknowledge what the user took and ask for as many again: in batches of half
            // the window (each batch is a system call here and a wake-up at the host), at once
            // when the host had nothing to send for a while, or when nothing is on its way and
            // the user has taken everything (or the window is one message).
            let untaken = got - taken;
            if flush
                || (taken - acked) * 2 >= window
                || (asked == got && (window < 2 || untaken == 0))
            {
                flush = false;
                out.clear();
                for _ in acked..taken {
                    append_frame(&mut out, Kind::Ack, &[]);
                }
                acked = taken;
                if asked == got && asked - acked < window {
                    asked_at = Some(now);
                }
                while asked - acked < window {
                    append_frame(&mut out, Kind::Read, &[]);
                    asked += 1;
                }
                if !out.is_empty() {
                    if let Err(e) = self.s.write_all(&out).map_err(crate::frame::io_error) {
                        break ReadStop::Lost(e);
                    }
                }
            }
            if asked == got {
                // Everything asked for is in the proxy: wait for the user to take one (with a
                // window of one), or half the window's worth with what it took before.
                let need = if window < 2 {
                    1
                } else {
                    (window / 2).saturating_sub(taken - acked).max(1)
                };
                let fewer = untaken.saturating_sub(need) + 1;
                if untaken == 0 {
                    self.await_take(fewer);
                    continue;
                }
                if self.await_take_within(fewer) {
                    continue;
                }
                // The user took none for a while (it works, or waits on something else):
                // what waits for it goes back to the host's channel, for other readers, and
                // the end asks again once its user reads.
                match self.revoke(&mut got, &mut acked) {
                    Ok(()) => {}
                    Err(stop) => break stop,
                }
                asked = got;
                counted = counted.min(got);
                if !self.await_user_reading(&mut seen) {
                    break ReadStop::UserLeft;
                }
                continue;
            }
            // Wait for the host's answers, watching for the user leaving, and for it taking
            // one of those in the proxy.
            if !inbox.has_frame(MAX_FRAME) {
                match self.await_host(&inbox, acked < taken, untaken) {
                    HostWait::Ready => {}
                    HostWait::UserLeft => break ReadStop::UserLeft,
                    HostWait::Idle => {
                        flush = true;
                        continue;
                    }
                }
            }
            match self.receive(&mut inbox, &mut got, asked) {
                Ok(()) => {
                    if let Some(at) = asked_at.take() {
                        ahead.answered(at.elapsed());
                    }
                }
                Err(stop) => break stop,
            }
        };
        self.stop_reading(stop, &mut inbox, asked, got, acked)
    }

    /// Waits until fewer than `fewer` messages are in the proxy (the user took some), or the
    /// user left; a wait that lasts is published for the census as this end's write of the
    /// proxy, on the connection to the host ([`park_handing`](Self::park_handing)).
    /// [`await_take`](Self::await_take) for at most [`HOLD_FOR_USER`]: whether the user took
    /// enough (or left) by then.
    fn await_take_within(&self, fewer: u64) -> bool {
        let fewer = usize::try_from(fewer).unwrap_or(usize::MAX);
        let now = Instant::now();
        let until = hold_until();
        let step = |now: Instant, by: Duration| until.map_or(now + by, |u| u.min(now + by));
        if self
            .proxy
            .wait_fewer_than(fewer, step(now, stream::PUBLISH_AFTER))
        {
            return true;
        }
        let _waiting = self.park_handing();
        loop {
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                return false;
            }
            if self.proxy.wait_fewer_than(fewer, step(now, TICK)) {
                return true;
            }
        }
    }

    /// Takes back the messages in a buffered reading end's proxy that its user has not taken
    /// (everything asked for has arrived: nothing is on its way), acknowledges those it took,
    /// and gives back the rest (`Nack`): the host puts them back into its channel, in order.
    /// `got` and `acked` then count only what the user took.
    fn revoke(&mut self, got: &mut u64, acked: &mut u64) -> Result<(), ReadStop> {
        // Newest first, as long as the user did not take them: the user may take one
        // meanwhile, from the oldest end, so those it took are the first ones, as the host's
        // acknowledgements count them. (Popped from the oldest end, as the user reads, the
        // pump could take back an older message while the user took a newer one: the user
        // read out of order, the host took the older one for acknowledged and gave the newer
        // one back, and a single reader's stream lost one message and read another twice.)
        // The host holds each message until it is acknowledged: these copies go.
        let mut back = 0u64;
        let mut pos = self.proxy.newest_position();
        while back < *got - *acked && self.proxy.retract(pos) {
            back += 1;
            pos = self.proxy.prev_pos(pos);
        }
        let taken = *got - back;
        let mut out = Vec::new();
        for _ in *acked..taken {
            append_frame(&mut out, Kind::Ack, &[]);
        }
        if back > 0 {
            append_frame(&mut out, Kind::Nack, &[]);
        }
        *got = taken;
        *acked = taken;
        self.s
            .write_all(&out)
            .map_err(|e| ReadStop::Lost(crate::frame::io_error(e)))
    }

    fn await_take(&self, fewer: u64) {
        let fewer = usize::try_from(fewer).unwrap_or(usize::MAX);
        if self
            .proxy
            .wait_fewer_than(fewer, Instant::now() + stream::PUBLISH_AFTER)
        {
            return;
        }
        let _waiting = self.park_handing();
        while !self.proxy.wait_fewer_than(fewer, Instant::now() + TICK) {}
    }

    /// Waits until a frame can be read from the host, or the user left; with `unacknowledged`
    /// takes, only until the connection has been idle for a moment (then they go out); with
    /// `untaken` messages in the proxy, only until the user takes one of them (its
    /// acknowledgement is then owed, and goes out at once: the host holds the message's place
    /// in its channel until it comes, and a writer there may wait for that place while the
    /// host has nothing to send). A wait that lasts is published for the census as idle;
    /// the user leaving (it retires or poisons) ends it at once.
    ///
    /// (Once the user's takes were looked at only before this wait: a take during it was seen
    /// only when the host sent something, and with a writer at the host waiting for the place
    /// of the message taken, no reader there taking the rest, the host never did. A remote
    /// reader and a local one sharing a `buffered(2)` channel hung within a few dozen
    /// messages.)
    fn await_host(&self, inbox: &FrameReader, unacknowledged: bool, untaken: u64) -> HostWait {
        if inbox.buffered() {
            // Part of a frame: the rest is on its way.
            return HostWait::Ready;
        }
        let fd = self.s.as_raw_fd();
        let took = || (self.proxy.len() as u64) < untaken;
        let step = if untaken > 0 {
            TAKE_LOOK
        } else {
            stream::PUBLISH_AFTER
        };
        let until = Instant::now() + stream::PUBLISH_AFTER;
        loop {
            if sys::wait_readable(fd, step) {
                return HostWait::Ready;
            }
            if self.user_left() {
                return HostWait::UserLeft;
            }
            let lasted = Instant::now() >= until;
            if took() || (unacknowledged && lasted) {
                return HostWait::Idle;
            }
            if lasted {
                break;
            }
        }
        // Asleep on the proxy, for the user's take or its leaving (a poison goes to the host
        // at once), while a thread of its own watches the connection. Published with the
        // proxy's word it sleeps on, anew when that word moved for something else (the user
        // looked at the empty proxy): a word that moved after it was published is a wake-up
        // in flight for the census, which would then never see this wait as settled.
        let proxy = self.proxy;
        let publish = || stream::idle(self.host, false, &proxy, Some(proxy.side_word(true)));
        let mut idle = publish();
        stream::with_socket_watch(
            fd,
            || {
                proxy.events().1.notify_all();
            },
            |readable| loop {
                if idle
                    .as_ref()
                    .is_some_and(|p| !crate::shm::census::Parked::unchanged(p))
                {
                    drop(idle.take());
                    idle = publish();
                }
                let came = match readable {
                    Some(flag) => {
                        let came = || flag.load(Ordering::SeqCst);
                        proxy.wait_fewer_than_or(
                            usize::try_from(untaken).unwrap_or(usize::MAX),
                            Instant::now() + TICK,
                            came,
                        );
                        came()
                    }
                    None => sys::wait_readable(fd, TAKE_LOOK),
                };
                if came {
                    return HostWait::Ready;
                }
                if self.user_left() {
                    return HostWait::UserLeft;
                }
                if took() {
                    return HostWait::Idle;
                }
            },
        )
    }

    /// Receives the frames the host sent (at least one): messages go into the proxy, in order.
    fn receive(
        &mut self,
        inbox: &mut FrameReader,
        got: &mut u64,
        asked: u64,
    ) -> Result<(), ReadStop> {
        let mut first = true;
        loop {
            let f = if first {
                first = false;
                inbox.next(&mut self.s, MAX_FRAME).map_err(ReadStop::Lost)?
            } else {
                match inbox.parse(MAX_FRAME).map_err(ReadStop::Lost)? {
                    Some(f) => f,
                    None => return Ok(()),
                }
            };
            match f.kind {
                Kind::Message if *got < asked => {
                    put_in_proxy(&self.proxy, &f.body)?;
                    *got += 1;
                    inbox.recycle(f.body);
                }
                Kind::Error => {
                    let e = ErrorBody::decode(&f.body).into_error(&self.info.address.full);
                    return Err(ReadStop::Host(e));
                }
                k => {
                    return Err(ReadStop::Host(ChannelError::Protocol {
                        address: self.info.address.full.clone(),
                        reason: format!("expected Message, got {k:?}"),
                    }))
                }
            }
        }
    }

    /// Ends a buffered reading end's pump: gives back to the host what the user did not take,
    /// lets the user read what is in the proxy when the host's channel ended, and retires or
    /// hands over the end. Returns whether a hand-over was confirmed.
    fn stop_reading(
        &mut self,
        stop: ReadStop,
        inbox: &mut FrameReader,
        asked: u64,
        got: u64,
        mut acked: u64,
    ) -> bool {
        match stop {
            ReadStop::UserLeft => {}
            ReadStop::Lost(e) => {
                // The messages in the proxy stay readable; then the user learns why it ended.
                self.fail(self.lost(&e));
                self.proxy.retire_side(true);
                return false;
            }
            ReadStop::Host(ChannelError::Poisoned) => {
                // Poison is immediate: what the proxy holds is dropped with it.
                self.proxy.poison();
            }
            ReadStop::Host(e) => {
                // The user reads what the proxy holds, then gets the host's error (`Retired`
                // as itself): acknowledged as it goes, as before.
                if e != ChannelError::Retired {
                    self.fail(e);
                }
                self.proxy.retire_side(true);
                while !self.user_left() && acked < got {
                    self.await_take(got - acked);
                    let taken = got - (self.proxy.len() as u64).min(got - acked);
                    let mut out = Vec::new();
                    for _ in acked..taken {
                        append_frame(&mut out, Kind::Ack, &[]);
                    }
                    acked = taken;
                    if self.s.write_all(&out).is_err() {
                        return false;
                    }
                }
            }
        }
        // Acknowledge what the user took; give back the rest (in the proxy, or on its way).
        let taken = got - (self.proxy.len() as u64).min(got - acked);
        let mut frames = Vec::new();
        for _ in acked..taken {
            append_frame(&mut frames, Kind::Ack, &[]);
        }
        if asked > taken {
            append_frame(&mut frames, Kind::Nack, &[]);
        }
        let mut answers = 1;
        if self.proxy.state_flags() & POISONED != 0 {
            append_frame(&mut frames, Kind::Poison, &[]);
            answers += 1;
        }
        let handoff = *self.info.handoff.lock().unwrap_or_else(|p| p.into_inner());
        match handoff {
            Some(t) => append_frame(&mut frames, Kind::Handoff, &t.to_le_bytes()),
            None => append_frame(&mut frames, Kind::Retire, &[]),
        }
        if self.s.write_all(&frames).is_err() {
            return false;
        }
        // Messages and errors that crossed these frames are skipped: the host put them back.
        let _ = self.s.set_deadline(Some(LOSS_TIMEOUT));
        while answers > 0 {
            match inbox.next(&mut self.s, MAX_FRAME) {
                Ok(f) if f.kind == Kind::Done => answers -= 1,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        handoff.is_some()
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
        flow: Mutex::new(Flow::default()),
        flow_cv: Condvar::new(),
        markers: Mutex::new(0),
        direct: Direct::new(None),
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

/// Why a buffered writer's pump stops.
enum Stop {
    /// The connection failed.
    Lost(FrameError),
    /// The host refused a write, or broke the protocol.
    Failed(ChannelError),
}

/// The bytes of a message taken out of a ring.
fn message_len(m: &Incoming) -> usize {
    match m {
        Incoming::Inline { len, .. } => *len,
        Incoming::Block { len, .. } => *len as usize,
    }
}

/// Puts a message the host sent into the (buffered) proxy of a reading end. There is room
/// (the proxy's capacity is the window's largest), but its slot may still be in the hands of
/// the user's read of the message before (the proxy no longer counts that one, so the pump
/// acknowledged it and the host sent this one): then it waits for that read to end, which
/// it does at once unless the thread was preempted. `Err(UserLeft)` only if the user's side
/// left (then the message goes back with the rest).
fn put_in_proxy(proxy: &Chan, body: &[u8]) -> Result<(), ReadStop> {
    // Tried first without reading the clock: there is room at once, but for that read.
    if write_encoded(proxy, body, Some(wait::passed())).is_ok() {
        return Ok(());
    }
    loop {
        match write_encoded(proxy, body, Some(Instant::now() + TICK)) {
            Ok(()) => return Ok(()),
            Err(ChannelError::Timeout)
                if proxy.state_flags() & (READERS_RETIRED | POISONED) == 0 => {}
            Err(_) => return Err(ReadStop::UserLeft),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::waiter::Claim;

    /// `cycles` rounds of a user that takes `n` messages every `every`, its reads waiting
    /// `waited` of it, over a connection whose round trip is `rtt`: the window then.
    fn window_after(rtt: Duration, n: u64, every: Duration, waited: Duration) -> u64 {
        let mut ahead = ReadAhead::new(64);
        ahead.answered(rtt);
        let start = Instant::now();
        for i in 0..20 {
            ahead.took(n, start + every * i, waited);
        }
        ahead.window()
    }

    #[test]
    fn a_reader_that_waits_for_messages_it_did_not_ask_for_gets_the_whole_window() {
        // A stream whose window is 4: the user takes the 4 in 0.5 us and waits 19.5 us for
        // the next 4 (a round trip of 5 us at best, 20 us with the wake-ups). It once took
        // the 20 us as the user's time on 4 messages and asked for 2.
        let us = Duration::from_micros;
        let w = window_after(us(5), 4, us(20), Duration::from_nanos(19_500));
        assert_eq!(w, 64);
    }

    #[test]
    fn a_reader_that_works_on_each_message_longer_than_a_round_trip_asks_for_one() {
        let w = window_after(
            Duration::from_micros(20),
            1,
            Duration::from_millis(10),
            Duration::ZERO,
        );
        assert_eq!(w, 1);
        // Working half a round trip on each: four cover twice the round trip.
        let us = Duration::from_micros;
        assert_eq!(window_after(us(20), 1, us(10), Duration::ZERO), 4);
    }

    #[test]
    fn a_message_for_the_proxy_waits_for_the_users_read_of_its_slot_to_end() {
        // The user of a buffered(1) proxy took its message (the proxy counts none, so the
        // pump acknowledged it and the host sent the next) but its read has not freed the
        // slot yet (preempted between the two): the next message must wait for that read to
        // end. It once took the user for gone, left the proxy open and ended its pump: the
        // user then waited for ever.
        let arena = Arena::get().unwrap();
        let proxy = Chan::create(arena, "proxy-slot-in-use", "u64", 1, 1, false).unwrap();
        write_encoded(&proxy, &[1], None).unwrap();
        let (_, taken) = proxy
            .read_deferred(None, Reader::Pump, |_| Claim::Busy)
            .expect("a message is there");
        assert_eq!(proxy.len(), 0);
        let user = std::thread::spawn(move || {
            // The user's read, still copying its message out.
            std::thread::sleep(Duration::from_millis(50));
            proxy.ack(taken);
        });
        assert!(
            put_in_proxy(&proxy, &[2]).is_ok(),
            "the user was taken for gone"
        );
        user.join().unwrap();
        assert_eq!(proxy.len(), 1);
    }
}
