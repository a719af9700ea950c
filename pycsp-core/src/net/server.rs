//! The host side of socket channels: one listener per address, one thread per connection.
//!
//! A connection holds one end (a count of writers or readers) of a hosted channel and performs
//! its operations on the shared-memory channel for the remote process. A connection that
//! closes without `Retire` (the remote process was killed, its host vanished) is handled by
//! who held it: an end handed over by a process of the host's network (a child it started,
//! placed or local) marks the channel as held by a dead process, as a local crash does; an end
//! a client opened by address retires, so that the channel goes on serving every other client.
//! A connection that breaks the protocol is closed and its end retired, and every other
//! connection carries on. Each such event is recorded for [`next_connection_error`].
//!
//! Connections that have not authenticated yet are limited ([`max_startups`]) and have a
//! deadline ([`handshake_timeout`]); the accept loop backs off when descriptors run out.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::key;
use super::proto::{encode, ErrorBody, OpenBody, OpenedBody, READ_WINDOW};
use super::stream::{
    self, handshake_timeout, local_to_unix, max_startups, step_failed, tune_tcp, Address, Endpoint,
    Stream, ENV_MAX_STARTUPS, PUBLISH_AFTER,
};
use crate::error::ChannelError;
use crate::frame::{
    append_frame, read_frame, write_frame, Frame, FrameError, FrameReader, Kind, MAX_FRAME,
    ONE_WRITE,
};
use crate::message::{copy_encoded_into, write_encoded, write_encoded_back, write_encoded_until};
use crate::runtime::{self, Role};
use crate::shm::arena::Arena;
use crate::shm::census;
use crate::shm::ring::{Chan, Incoming, Outgoing, Reader, Taken};
use crate::shm::wait::{self, deadline_after};
use crate::shm::waiter;
use crate::sys;

/// Checks that a message body decodes as the channel's type.
pub(crate) type Validate = fn(Chan, &[u8]) -> Result<(), String>;

/// How often a connection blocked on its channel checks whether its peer hung up.
const TICK: Duration = Duration::from_millis(100);

/// How long a host's first attempt to write an `Offer` lasts (a remote select's output guard
/// on a rendezvous channel, kept until a reader takes it or the select withdraws it) before a
/// thread starts to watch the connection for the peer's `Withdraw` (see `Conn::offer`); and
/// each attempt, between two of which it looks itself, when no thread can be started.
pub(crate) const OFFER_STEP: Duration = Duration::from_millis(1);

/// How often a message given back to a full buffered channel looks whether anything readable
/// is left to make room for it (see `Conn::put_back`).
const PUT_BACK_STEP: Duration = Duration::from_millis(10);

struct Hosted {
    chan: Chan,
    validate: Validate,
}

struct Host {
    endpoint: Endpoint,
    channels: Mutex<HashMap<String, Hosted>>,
    /// Counts handed over to processes that have not connected yet: token -> (channel, writer).
    pending: Mutex<HashMap<u64, (String, bool)>>,
    /// Connections that have not authenticated yet.
    startups: Mutex<Startups>,
}

static HOSTS: Mutex<Vec<Arc<Host>>> = Mutex::new(Vec::new());

/// The remote readers this process's channels serve now: (channel key, pid, who) of each
/// reading connection, so that a writer that gave up waiting for one's answer can name it.
static FAR_READERS: Mutex<Vec<(u64, u32, String)>> = Mutex::new(Vec::new());

/// A reading connection's entry in [`FAR_READERS`], removed when it drops.
struct FarReader(u64, u32);

impl FarReader {
    fn new(chan: &Chan, pid: u32, who: &str) -> FarReader {
        let mut r = FAR_READERS.lock().unwrap_or_else(|p| p.into_inner());
        r.push((chan.key(), pid, who.to_string()));
        FarReader(chan.key(), pid)
    }
}

impl Drop for FarReader {
    fn drop(&mut self) {
        let mut r = FAR_READERS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = r.iter().position(|e| (e.0, e.1) == (self.0, self.1)) {
            r.swap_remove(i);
        }
    }
}

/// The error of a write (or select) on `chan` that reached its deadline while the reader that
/// had its message, a remote one of this host, did not answer for `HELD_ANSWER_WAIT`: the
/// message may have been taken. Names the channel's remote readers (one held it).
pub(crate) fn silent_reader(chan: &Chan) -> ChannelError {
    let named: Vec<String> = FAR_READERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|e| e.0 == chan.key())
        .map(|(_, pid, who)| format!("{who} (pid {pid})"))
        .collect();
    let reader = match named.len() {
        0 => "the reader that took it".to_string(),
        1 => format!("the remote reader {}", named[0]),
        _ => format!("one of the remote readers {}", named.join(", ")),
    };
    ChannelError::Connection {
        address: chan.name().to_string(),
        reason: format!(
            "{reader} had the message and did not answer for {:?} after the deadline: \
             whether it took it is not known",
            crate::shm::ring::HELD_ANSWER_WAIT
        ),
    }
}

fn conn_error(addr: &str, reason: String) -> ChannelError {
    ChannelError::Connection {
        address: addr.to_string(),
        reason,
    }
}

/// Serves `chan` at `addr`, listening there first if this process does not yet.
pub(crate) fn host(addr: &Address, chan: Chan, validate: Validate) -> Result<(), ChannelError> {
    key::key().map_err(|reason| ChannelError::Auth {
        address: addr.full.clone(),
        reason,
    })?;
    let mut hosts = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
    let host = match hosts.iter().find(|h| h.endpoint == addr.endpoint) {
        Some(h) => h.clone(),
        None => {
            let h = new_host(&addr.endpoint);
            listen(&h, &addr.full)?;
            hosts.push(h.clone());
            h
        }
    };
    let mut chans = host.channels.lock().unwrap_or_else(|p| p.into_inner());
    if chans.contains_key(&addr.channel) {
        return Err(ChannelError::NameInUse(addr.full.clone()));
    }
    // Hosting holds the channel for as long as this process runs.
    runtime::hold(&chan, Role::Handle);
    chans.insert(addr.channel.clone(), Hosted { chan, validate });
    Ok(())
}

/// For a TCP address whose port is 0 (`tcp://HOST:0/NAME`, as `bind` takes port 0): listens
/// on a port the system picks and returns the address with that port, under which the channel
/// is then created and hosted ([`host`] finds the listener). Any other address comes back as
/// it is. Each such address listens anew: a second channel joins the first one's listener
/// under the port it got.
pub(crate) fn pick_port(addr: Address) -> Result<Address, ChannelError> {
    let Endpoint::Tcp(at) = &addr.endpoint else {
        return Ok(addr);
    };
    let Some((host_name, port)) = at.rsplit_once(':') else {
        return Ok(addr);
    };
    if port.parse::<u16>() != Ok(0) {
        return Ok(addr);
    }
    key::key().map_err(|reason| ChannelError::Auth {
        address: addr.full.clone(),
        reason,
    })?;
    let fail = |e: std::io::Error| conn_error(&addr.full, format!("cannot listen on {at}: {e}"));
    let l = TcpListener::bind(at.as_str()).map_err(fail)?;
    let port = l.local_addr().map_err(fail)?.port();
    let at = format!("{host_name}:{port}");
    let picked = Address {
        full: format!("tcp://{at}/{}", addr.channel),
        endpoint: Endpoint::Tcp(at),
        channel: addr.channel,
    };
    let mut hosts = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
    let h = new_host(&picked.endpoint);
    serve_tcp(&h, l, &picked.full)?;
    hosts.push(h);
    Ok(picked)
}

fn new_host(endpoint: &Endpoint) -> Arc<Host> {
    Arc::new(Host {
        endpoint: endpoint.clone(),
        channels: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        startups: Mutex::new(Startups::default()),
    })
}

/// Records that an end of the hosted channel at `addr` goes to another process, which will
/// present the returned token; the end's count stays held meanwhile.
pub(crate) fn hand_over(addr: &Address, writer: bool) -> Option<u64> {
    let hosts = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
    let host = hosts.iter().find(|h| h.endpoint == addr.endpoint)?;
    let token = key::token();
    host.pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token, (addr.channel.clone(), writer));
    Some(token)
}

fn listen(host: &Arc<Host>, full: &str) -> Result<(), ChannelError> {
    let fail =
        |e: std::io::Error| conn_error(full, format!("cannot listen on {}: {e}", host.endpoint));
    let h = host.clone();
    match &host.endpoint {
        Endpoint::Tcp(a) => {
            let l = TcpListener::bind(a.as_str()).map_err(fail)?;
            serve_tcp(host, l, full)?;
        }
        Endpoint::Local(n) => {
            use interprocess::local_socket::{prelude::*, GenericNamespaced, ListenerOptions};
            let name = n.as_str().to_ns_name::<GenericNamespaced>().map_err(fail)?;
            let l = ListenerOptions::new()
                .name(name)
                .create_sync()
                .map_err(fail)?;
            std::thread::Builder::new()
                .name("pycsp-listen".into())
                .spawn(move || {
                    let _internal = crate::shm::census::internal_thread(true);
                    key::listening();
                    accept_loop(&h, || Ok(Stream::Unix(local_to_unix(l.accept()?))))
                })
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// Accepts connections for `host` on `l`, on a thread of its own.
fn serve_tcp(host: &Arc<Host>, l: TcpListener, full: &str) -> Result<(), ChannelError> {
    let h = host.clone();
    std::thread::Builder::new()
        .name("pycsp-listen".into())
        .spawn(move || {
            let _internal = crate::shm::census::internal_thread(true);
            key::listening();
            accept_loop(&h, || {
                let (s, _) = l.accept()?;
                tune_tcp(&s)?;
                Ok(Stream::Tcp(s))
            })
        })
        .map_err(|e| conn_error(full, format!("cannot listen on {}: {e}", host.endpoint)))?;
    Ok(())
}

/// How long the accept loop waits, at most, before trying again when no descriptor is left
/// and no unauthenticated connection can be closed to free one.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections for `host` forever, each served by a thread of its own. When `accept`
/// fails for want of descriptors or memory (`EMFILE`, `ENFILE`, ...) the pending connection
/// stays queued and `accept` would fail again at once: the loop closes the oldest connection
/// still in its handshake, if there is one, and waits before trying again (1 ms, doubling up to
/// [`ACCEPT_BACKOFF_MAX`] while nothing can be freed), instead of spinning.
fn accept_loop(host: &Arc<Host>, mut accept: impl FnMut() -> std::io::Result<Stream>) {
    let mut pause = Duration::ZERO;
    loop {
        match accept() {
            Ok(s) => {
                pause = Duration::ZERO;
                let startup = host.admit(s);
                let _ = std::thread::Builder::new()
                    .name("pycsp-conn".into())
                    .spawn(move || {
                        let _internal = crate::shm::census::internal_thread(true);
                        serve(startup)
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let freed = sys::out_of_descriptors(&e) && host.shed_oldest("no descriptor left");
                let before = pause;
                pause = if freed {
                    Duration::from_millis(1)
                } else {
                    (pause * 2).clamp(Duration::from_millis(1), ACCEPT_BACKOFF_MAX)
                };
                if pause == ACCEPT_BACKOFF_MAX && before != pause {
                    report(
                        "the listener",
                        conn_error(
                            &host.endpoint.to_string(),
                            format!("cannot accept connections: {e}; retrying every second"),
                        ),
                    );
                }
                std::thread::sleep(pause);
            }
        }
    }
}

/// The connections of a host that have not authenticated yet, oldest first (see
/// [`max_startups`]).
#[derive(Default)]
struct Startups {
    next: u64,
    /// Id and descriptor of each (the descriptor stays open while its id is listed: its
    /// owner removes the id before closing it).
    open: VecDeque<(u64, RawFd)>,
    /// Ids closed to make room, with why.
    shed: HashMap<u64, &'static str>,
}

impl Host {
    /// Lists a new connection as unauthenticated, closing the oldest listed one if there are
    /// [`max_startups`] already.
    fn admit(self: &Arc<Host>, s: Stream) -> Startup {
        let fd = s.as_raw_fd();
        let mut st = self.startups.lock().unwrap_or_else(|p| p.into_inner());
        if st.open.len() >= max_startups() {
            Self::shed_locked(&mut st, "too many connections in their handshake");
        }
        st.next += 1;
        let id = st.next;
        st.open.push_back((id, fd));
        Startup {
            host: self.clone(),
            id,
            stream: Some(s),
        }
    }

    /// Closes the oldest unauthenticated connection; whether there was one.
    fn shed_oldest(&self, why: &'static str) -> bool {
        let mut st = self.startups.lock().unwrap_or_else(|p| p.into_inner());
        Self::shed_locked(&mut st, why)
    }

    fn shed_locked(st: &mut Startups, why: &'static str) -> bool {
        let Some((id, fd)) = st.open.pop_front() else {
            return false;
        };
        // The owner has not closed `fd`: it removes its id (under this lock) first.
        sys::shutdown_socket(fd);
        st.shed.insert(id, why);
        true
    }

    /// Removes connection `id` from the unauthenticated ones; why it was closed, if it was.
    fn forget(&self, id: u64) -> Option<&'static str> {
        let mut st = self.startups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = st.open.iter().position(|(i, _)| *i == id) {
            st.open.remove(i);
        }
        st.shed.remove(&id)
    }
}

/// A connection that has not authenticated yet: it leaves the host's list when it
/// authenticates or is dropped, before its stream closes.
struct Startup {
    host: Arc<Host>,
    id: u64,
    stream: Option<Stream>,
}

impl Startup {
    fn stream(&mut self) -> &mut Stream {
        self.stream
            .as_mut()
            .expect("the stream of a connection in its handshake")
    }

    /// Why the host closed it to make room, if it did.
    fn shed(&self) -> Option<&'static str> {
        self.host.forget(self.id)
    }

    /// The peer proved it knows the key: it no longer counts against the cap.
    fn authenticated(mut self) -> Stream {
        self.host.forget(self.id);
        self.stream
            .take()
            .expect("the stream of a connection in its handshake")
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        self.host.forget(self.id);
        // `stream` closes after this.
    }
}

/// The connection errors this process's hosts met, oldest first (at most [`KEPT`]).
static ERRORS: Mutex<VecDeque<ChannelError>> = Mutex::new(VecDeque::new());
static ERRORS_CV: Condvar = Condvar::new();
const KEPT: usize = 256;

/// At most this many connection errors are printed per second; the others are counted, and
/// still kept for [`next_connection_error`] (a flood must not flood standard error too).
const PRINTED_PER_SECOND: u32 = 20;

/// The second printing started in, how many were printed in it, how many were not.
static PRINTED: Mutex<Option<(Instant, u32, u64)>> = Mutex::new(None);

/// Whether to print one more connection error now; prints how many were left out before.
fn may_print() -> bool {
    let mut p = PRINTED.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let (start, printed, skipped) = p.get_or_insert((now, 0, 0));
    if now.duration_since(*start) >= Duration::from_secs(1) {
        if *skipped > 0 {
            eprintln!(
                "pycsp: {skipped} more connection errors were not printed \
                 (pycsp::net::next_connection_error returns them)"
            );
        }
        (*start, *printed, *skipped) = (now, 0, 0);
    }
    if *printed < PRINTED_PER_SECOND {
        *printed += 1;
        true
    } else {
        *skipped += 1;
        false
    }
}

/// Reports a refused, broken or lost connection on this side (the other side gets an `Error`
/// frame when it can still be sent): on standard error (at most [`PRINTED_PER_SECOND`] a
/// second), and to [`next_connection_error`].
fn report(peer: &str, e: ChannelError) {
    if may_print() {
        eprintln!("pycsp: connection from {peer} closed: {e}");
    }
    let mut errors = ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    if errors.len() == KEPT {
        errors.pop_front();
    }
    errors.push_back(e);
    ERRORS_CV.notify_all();
}

/// The address an error is about.
fn error_address(e: &ChannelError) -> Option<&str> {
    match e {
        ChannelError::Connection { address, .. }
        | ChannelError::Auth { address, .. }
        | ChannelError::Protocol { address, .. }
        | ChannelError::TypeMismatch {
            channel: address, ..
        }
        | ChannelError::PeerDied {
            channel: address, ..
        } => Some(address),
        ChannelError::NotFound(address) => Some(address),
        _ => None,
    }
}

/// Whether address `a` is `prefix` or lies under it (`tcp://h:70` is not under `tcp://h:7`).
fn under(a: &str, prefix: &str) -> bool {
    a.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

/// Waits up to `timeout` for a connection error met by a channel this process hosts at an
/// address `address` or under it (say `tcp://0.0.0.0:7000`, or one channel's
/// address), and takes it.
///
/// A host never fails because of one connection: a peer that fails the handshake
/// ([`ChannelError::Auth`]), breaks the protocol ([`ChannelError::Protocol`]), asks for a
/// channel that is not there or with another type, or is lost ([`ChannelError::Connection`])
/// has its connection closed, and every other connection carries on; so does a client that
/// is lost (its end retires), a connection that does not finish its handshake in
/// [`handshake_timeout`](super::handshake_timeout), and one closed to make room
/// ([`max_startups`](super::max_startups)). Each such event is printed on standard error (at
/// most 20 a second, then a count of those left out) and kept (the last 256) for this
/// function, so that a program can log or count them.
pub fn next_connection_error(address: &str, timeout: Duration) -> Option<ChannelError> {
    let deadline = deadline_after(timeout);
    let mut errors = ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let at = errors
            .iter()
            .position(|e| error_address(e).is_some_and(|a| under(a, address)));
        if let Some(i) = at {
            return errors.remove(i);
        }
        // No deadline: wait on, an hour at a time.
        let left = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return None;
        }
        errors = ERRORS_CV
            .wait_timeout(errors, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// One connection, from handshake to close. The handshake and `Open` have the deadline
/// [`handshake_timeout`]; once the end is open, the peer may take its time.
fn serve(mut startup: Startup) {
    let host = startup.host.clone();
    let peer = startup.stream().peer();
    let Ok(k) = key::key() else { return };
    let at = host.endpoint.to_string();
    if let Err(e) = startup.stream().set_deadline(Some(handshake_timeout())) {
        return report(
            &peer,
            conn_error(&at, format!("cannot set a deadline: {e}")),
        );
    }
    if let Err(e) = key::serve(startup.stream(), k) {
        let e = match e {
            key::HandshakeError::Auth(reason) => ChannelError::Auth {
                address: at,
                reason,
            },
            key::HandshakeError::Frame(
                f @ (FrameError::Closed | FrameError::Truncated { .. } | FrameError::Io(_)),
            ) => match startup.shed() {
                Some(why) => conn_error(
                    &at,
                    format!(
                        "closed {peer} before it authenticated: {why} (at most {} at once, \
                         {ENV_MAX_STARTUPS} sets it; the oldest is closed)",
                        max_startups()
                    ),
                ),
                None => conn_error(&at, step_failed(&format!("handshake with {peer}"), &f)),
            },
            key::HandshakeError::Frame(f) => {
                let e = ChannelError::Protocol {
                    address: at,
                    reason: format!("in the handshake: {f}"),
                };
                let _ = write_frame(startup.stream(), &ErrorBody::from_error(&e).frame());
                e
            }
        };
        return report(&peer, e);
    }
    let mut s = startup.authenticated();
    let refuse = |s: &mut Stream, e: ChannelError| {
        let _ = write_frame(s, &ErrorBody::from_error(&e).frame());
        report(&peer, e);
    };
    let open = match read_frame(&mut s, 64 << 10) {
        Ok(f) if f.kind == Kind::Open => match rmp_serde::from_slice::<OpenBody>(&f.body) {
            Ok(o) => o,
            Err(e) => {
                return refuse(
                    &mut s,
                    protocol(&host, format!("a malformed Open frame ({e})")),
                );
            }
        },
        Ok(f) => {
            return refuse(
                &mut s,
                protocol(&host, format!("expected Open, got {:?}", f.kind)),
            )
        }
        Err(e) => return report(&peer, conn_error(&at, step_failed("waiting for Open", &e))),
    };
    let full = format!("{}/{}", host.endpoint, open.channel);
    let (chan, validate) = {
        let chans = host.channels.lock().unwrap_or_else(|p| p.into_inner());
        match chans.get(&open.channel) {
            Some(h) => (h.chan, h.validate),
            None => return refuse(&mut s, ChannelError::NotFound(full)),
        }
    };
    // Fingerprint 0: a peer that cannot compute Rust's fingerprint skips the check (every
    // message it writes is still checked against the channel's type).
    if open.fingerprint != 0 && chan.type_fp() != open.fingerprint {
        return refuse(
            &mut s,
            ChannelError::TypeMismatch {
                channel: full,
                expected: open.type_name,
                found: chan.type_name().to_string(),
            },
        );
    }
    if open.probe {
        let opened = OpenedBody {
            capacity: chan.capacity() as u64,
            pid: std::process::id(),
            read_window: Some(read_window(&chan) as u64),
        };
        let _ = write_frame(&mut s, &Frame::new(Kind::Opened, encode(&opened)));
        return;
    }
    let writer = open.writer;
    match open.token {
        Some(t) => {
            let held = host
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&t);
            if held != Some((open.channel.clone(), writer)) {
                return refuse(
                    &mut s,
                    protocol(&host, "an unknown or already used hand-over token".into()),
                );
            }
            // The end's hold, left with the token, is this connection's now.
            runtime::moved_in(&chan, Role::end(writer));
        }
        None => runtime::hold(&chan, Role::end(writer)),
    }
    let opened = OpenedBody {
        capacity: chan.capacity() as u64,
        pid: std::process::id(),
        read_window: Some(read_window(&chan) as u64),
    };
    if write_frame(&mut s, &Frame::new(Kind::Opened, encode(&opened))).is_err()
        || s.set_deadline(None).is_err()
    {
        runtime::release(chan, Role::end(writer));
        return;
    }
    // The connection's bytes from here on, as the peer's pump counts them.
    super::stream::reset_bytes();
    let who = format!("{} on {peer}", open.process);
    let conn = Conn {
        host: &host,
        chan,
        writer,
        validate,
        channel: open.channel.clone(),
        full,
        who,
        pid: open.pid,
        handed: open.token.is_some(),
        since: std::cell::Cell::new(None),
    };
    let _listed = (!writer).then(|| FarReader::new(&conn.chan, conn.pid, &conn.who));
    conn.run(s);
}

fn protocol(host: &Host, reason: String) -> ChannelError {
    ChannelError::Protocol {
        address: host.endpoint.to_string(),
        reason,
    }
}

struct Conn<'a> {
    host: &'a Host,
    chan: Chan,
    writer: bool,
    validate: Validate,
    channel: String,
    full: String,
    who: String,
    pid: u32,
    /// The end came by hand-over from a process of the host's network (it was passed to a
    /// child, placed or local): its holder is one of the network's processes, and its loss is
    /// a crash, as in shared memory. Otherwise the peer is a client that opened the address
    /// itself, and its loss retires its end.
    handed: bool,
    /// The deadlock count when this connection's operation first waited, until one completes:
    /// after a deadlock the operations the peer sent before it learnt fail too.
    since: std::cell::Cell<Option<u64>>,
}

/// How a connection ends.
enum End {
    /// The peer retired, handed its end over, or poisoned and left: nothing more to do.
    Clean,
    /// The peer vanished without retiring: its end counts as held by a dead process.
    Lost(String),
    /// The peer broke the protocol: its end retires.
    Broken(ChannelError),
}

impl Conn<'_> {
    fn run(&self, mut s: Stream) {
        let end = self.serve_frames(&mut s);
        match end {
            End::Clean => {}
            End::Lost(why) if self.handed => {
                // A process of this network died holding the end: as in shared memory, the
                // channel fails for everyone (readers after draining it).
                self.chan.mark_peer_died(self.pid, &self.who);
                report(
                    &self.who,
                    conn_error(
                        &self.full,
                        format!("{} (pid {}) was lost: {why}", self.who, self.pid),
                    ),
                );
            }
            End::Lost(why) => {
                // A client was lost: its end retires (a message it had not acknowledged was
                // put back, one it was sending is dropped) and the channel serves the others.
                runtime::release(self.chan, Role::end(self.writer));
                report(
                    &self.who,
                    conn_error(
                        &self.full,
                        format!(
                            "the client {} (pid {}) was lost: {why}; its {} end was retired",
                            self.who,
                            self.pid,
                            if self.writer { "writing" } else { "reading" }
                        ),
                    ),
                );
            }
            End::Broken(e) => {
                let _ = write_frame(&mut s, &ErrorBody::from_error(&e).frame());
                runtime::release(self.chan, Role::end(self.writer));
                report(&self.who, e);
            }
        }
        s.shutdown();
    }

    /// Serves the connection's frames. Frames are read through a buffer, so that a stream of
    /// `Write` frames costs one system call per batch; the answers (`Done`, `Error`) are
    /// gathered in `replies`, in order, and sent in one system call whenever the connection
    /// would wait: for the peer's next frame, for room in the channel, or before any frame but
    /// `Write`.
    ///
    /// A reader's `Read`s are credits: the host answers each with one message, and may hold
    /// up to [`read_window`](Self::read_window) messages sent and not acknowledged plus reads
    /// not answered yet. A message's slot stays taken (its writer, on a rendezvous channel,
    /// waiting) until its `Ack`; whatever the peer did not acknowledge when the connection
    /// ends, or when it sends `Nack`, goes back to the channel.
    fn serve_frames(&self, s: &mut Stream) -> End {
        let mut held = VecDeque::new();
        let end = self.serve_frames_holding(s, &mut held);
        self.put_back(held.into_iter().collect());
        end
    }

    /// How many messages a reader may ask for ahead (see [`serve_frames`](Self::serve_frames)):
    /// one on a rendezvous channel (a writer returns when the remote user took its message),
    /// up to [`READ_WINDOW`] of a buffered channel's capacity.
    fn read_window(&self) -> usize {
        read_window(&self.chan)
    }

    fn serve_frames_holding(&self, s: &mut Stream, held: &mut VecDeque<(Vec<u8>, Taken)>) -> End {
        let mut acks = Acks {
            chan: &self.chan,
            made: false,
        };
        let mut next: Option<Frame> = None;
        let mut spare = Spare::default();
        let mut inbox = FrameReader::default();
        let mut replies: Vec<u8> = Vec::new();
        // A reader's `Read`s not answered yet.
        let mut credits = 0usize;
        let send = |s: &mut Stream, replies: &mut Vec<u8>| {
            let r = s.write_all(replies);
            replies.clear();
            r
        };
        loop {
            let frame = match next.take() {
                Some(f) => f,
                None => match inbox.parse(MAX_FRAME) {
                    Ok(Some(f)) => f,
                    Ok(None)
                        if credits > 0
                            && !inbox.buffered()
                            && !sys::wait_readable(s.as_raw_fd(), Duration::ZERO) =>
                    {
                        // Every frame that came is handled (a read interrupted by the peer's
                        // next frame comes back here, and that frame is read first, below):
                        // answer the reads.
                        acks.end();
                        match self.answer_reads(
                            s,
                            &inbox,
                            &mut credits,
                            held,
                            &mut spare,
                            &mut replies,
                        ) {
                            Ok(()) => continue,
                            Err(end) => return end,
                        }
                    }
                    Ok(None) => {
                        acks.end();
                        if send(s, &mut replies).is_err() {
                            return End::Lost("hung up before its answer".into());
                        }
                        if inbox.long_head(MAX_FRAME).is_none() {
                            super::stream::await_readable(s, self.pid, self.writer, &self.chan);
                            if let Err(e) = inbox.fill(s) {
                                return self.frame_error(e);
                            }
                        }
                        match inbox.long_head(MAX_FRAME) {
                            Some((kind @ (Kind::Write | Kind::Offer), len))
                                if self.writer && len <= STRAIGHT_MAX =>
                            {
                                match self.write_long(s, &mut inbox, kind, len, &mut replies) {
                                    Long::Answer(r) => {
                                        answer(&mut replies, r);
                                        continue;
                                    }
                                    Long::End(end) => return end,
                                    // No block for it: read as any frame, and written (or
                                    // refused) as any message.
                                    Long::NoBlock => {}
                                }
                            }
                            _ => {}
                        }
                        match inbox.next(s, MAX_FRAME) {
                            Ok(f) => f,
                            Err(e) => return self.frame_error(e),
                        }
                    }
                    Err(e) => return self.frame_error(e),
                },
            };
            if frame.kind != Kind::Ack {
                acks.end();
            }
            if frame.kind != Kind::Write && send(s, &mut replies).is_err() {
                return End::Lost("hung up before its answer".into());
            }
            let reply = match (frame.kind, self.writer) {
                (Kind::Write, true) => {
                    if let Err(reason) = (self.validate)(self.chan, &frame.body) {
                        return self.not_a_message(reason);
                    }
                    let r = self.write(s, &inbox, &frame.body, &mut replies);
                    inbox.recycle(frame.body);
                    match r {
                        Some(r) => r,
                        None => return End::Lost("hung up during a write".into()),
                    }
                }
                (Kind::Offer, true) => {
                    if let Err(reason) = (self.validate)(self.chan, &frame.body) {
                        return self.not_a_message(reason);
                    }
                    let r = self.offer(s, &mut inbox, &frame.body);
                    inbox.recycle(frame.body);
                    match r {
                        Ok(r) => r,
                        Err(end) => return end,
                    }
                }
                // Sent as the host answered its `Offer`: nothing to take back any more.
                (Kind::Withdraw, true) => continue,
                (Kind::Read, false) => {
                    if credits + held.len() >= self.read_window() {
                        return End::Broken(self.protocol(format!(
                            "a Read beyond the window of {} messages",
                            self.read_window()
                        )));
                    }
                    credits += 1;
                    continue;
                }
                (Kind::Ack, false) => match held.pop_front() {
                    Some((bytes, taken)) => {
                        acks.made(taken);
                        spare.keep(bytes);
                        continue;
                    }
                    None => return End::Broken(self.protocol("an Ack without a message".into())),
                },
                (Kind::Nack, false) => {
                    // The peer gives back every message it did not acknowledge (and asks for
                    // no more).
                    credits = 0;
                    self.put_back(held.drain(..).collect());
                    continue;
                }
                (Kind::Poison, _) => {
                    self.chan.poison();
                    Ok(())
                }
                (Kind::Retire, _) => {
                    runtime::release(self.chan, Role::end(self.writer));
                    let _ = write_frame(s, &Frame::empty(Kind::Done));
                    return End::Clean;
                }
                (Kind::Handoff, _) => {
                    let Ok(t) = <[u8; 8]>::try_from(&frame.body[..]) else {
                        return End::Broken(self.protocol("a Handoff without its token".into()));
                    };
                    self.host
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(u64::from_le_bytes(t), (self.channel.clone(), self.writer));
                    let _ = write_frame(s, &Frame::empty(Kind::Done));
                    return End::Clean;
                }
                (k, _) => {
                    return End::Broken(self.protocol(format!(
                        "a {k:?} frame on the connection of a {}",
                        if self.writer { "writer" } else { "reader" }
                    )))
                }
            };
            answer(&mut replies, reply);
        }
    }

    /// Writes for the peer the message of the long `Write` frame (of `len` body bytes) whose
    /// head `inbox` holds: its body is read from the socket straight into a block of shared
    /// memory, checked there, and the block is placed in the channel as it is (no copy of the
    /// message in this process). `NoBlock` (nothing read, nothing changed) if no block can
    /// be had for it now.
    fn write_long(
        &self,
        s: &mut Stream,
        inbox: &mut FrameReader,
        kind: Kind,
        len: usize,
        replies: &mut Vec<u8>,
    ) -> Long {
        let Ok(arena) = Arena::get() else {
            return Long::NoBlock;
        };
        let Ok(offset) = arena.alloc_block(len as u64) else {
            return Long::NoBlock;
        };
        {
            // SAFETY: the block was just allocated for this connection and is `len` bytes long
            // (`ptr` checks the range); nobody else touches it until its offset is placed in
            // the ring below, and this slice is gone by then.
            let body =
                unsafe { std::slice::from_raw_parts_mut(arena.ptr(offset, len as u64), len) };
            if let Err(e) = inbox.read_long_body(s, body) {
                arena.free_block(offset);
                return Long::End(self.frame_error(e));
            }
            if let Err(reason) = (self.validate)(self.chan, body) {
                arena.free_block(offset);
                return Long::End(self.not_a_message(reason));
            }
        }
        let msg = Outgoing::Block {
            offset,
            len: len as u64,
        };
        // Once placed, the block is the channel's (its reader frees it); a write withdrawn
        // leaves it ours, to place again or to free.
        let mut placed = false;
        let mut attempt = |deadline: Option<Instant>, stop: Option<&AtomicBool>| {
            let r = match stop {
                Some(stop) => self.chan.write_until(&msg, deadline, stop),
                None => self.chan.write(&msg, deadline),
            };
            placed = r.as_ref().map_or_else(|e| e.placed, |()| true);
            r.map_err(|e| e.error)
        };
        let r = if kind == Kind::Offer {
            // It may wait long: the answers gathered go out first.
            let sent = s.write_all(replies);
            replies.clear();
            if sent.is_err() {
                arena.free_block(offset);
                return Long::End(End::Lost("hung up before its answer".into()));
            }
            self.offer_with(s, inbox, &mut attempt).map(Some)
        } else {
            Ok(self.put(s, inbox, replies, |deadline| attempt(deadline, None)))
        };
        if !placed {
            arena.free_block(offset);
        }
        match r {
            Ok(Some(r)) => Long::Answer(r),
            Ok(None) => Long::End(End::Lost("hung up during a write".into())),
            Err(end) => Long::End(end),
        }
    }

    /// A peer's message that does not decode as the channel's type.
    fn not_a_message(&self, reason: String) -> End {
        End::Broken(ChannelError::Protocol {
            address: self.full.clone(),
            reason: format!(
                "a message that is not a {}: {reason}",
                self.chan.type_name()
            ),
        })
    }

    fn protocol(&self, reason: String) -> ChannelError {
        ChannelError::Protocol {
            address: self.full.clone(),
            reason,
        }
    }

    fn frame_error(&self, e: FrameError) -> End {
        match e {
            FrameError::Closed | FrameError::Truncated { .. } | FrameError::Io(_) => {
                End::Lost(e.to_string())
            }
            _ => End::Broken(self.protocol(e.to_string())),
        }
    }

    /// Writes `body` for the peer's select for as long as the select wants it (an `Offer`),
    /// publishing its wait for the census as the peer's write of the channel. `Ok(Ok)`: a
    /// reader took it; `Ok(Err(Timeout))`: withdrawn, nothing delivered; `Err`: the
    /// connection ends.
    fn offer(
        &self,
        s: &mut Stream,
        inbox: &mut FrameReader,
        body: &[u8],
    ) -> Result<Result<(), ChannelError>, End> {
        self.offer_with(s, inbox, &mut |deadline, stop| match stop {
            Some(stop) => write_encoded_until(&self.chan, body, deadline, stop),
            None => write_encoded(&self.chan, body, deadline),
        })
    }

    /// An `Offer`, each attempt of which is `attempt` (see [`OfferAttempt`]).
    ///
    /// A reader that is there, or comes within [`OFFER_STEP`], takes it at once. Then the
    /// message stays placed while a thread of its own watches the connection: when the peer
    /// sends (its `Withdraw`, or it hangs up), that thread stops the write, which withdraws
    /// the message unless a reader is taking it. The write is placed anew each [`TICK`], to
    /// look for a deadlock. (Writing in steps of [`OFFER_STEP`], looking at the socket
    /// between two, as it does when no thread can be started, costs a few % of a CPU for as
    /// long as the select waits.)
    fn offer_with(
        &self,
        s: &mut Stream,
        inbox: &mut FrameReader,
        attempt: &mut OfferAttempt<'_>,
    ) -> Result<Result<(), ChannelError>, End> {
        match attempt(Some(Instant::now() + OFFER_STEP), None) {
            Err(ChannelError::Timeout) => {}
            r => {
                self.since.set(None);
                return Ok(r);
            }
        }
        let chan = self.chan;
        stream::with_socket_watch(
            s.as_raw_fd(),
            || chan.wake_writers(),
            |stop| self.keep_offering(s, inbox, attempt, stop),
        )
    }

    /// [`offer_with`](Self::offer_with) after its first step: with `stop` set by a watcher of
    /// the connection, in steps of [`TICK`]; without, in steps of [`OFFER_STEP`].
    fn keep_offering(
        &self,
        s: &mut Stream,
        inbox: &mut FrameReader,
        attempt: &mut OfferAttempt<'_>,
        stop: Option<&AtomicBool>,
    ) -> Result<Result<(), ChannelError>, End> {
        let mut parked: Option<census::Parked> = None;
        loop {
            if inbox.buffered() || sys::wait_readable(s.as_raw_fd(), Duration::ZERO) {
                // The peer's select wants it back, or the peer hung up.
                return match inbox.next(s, MAX_FRAME) {
                    Ok(f) if f.kind == Kind::Withdraw => {
                        self.since.set(None);
                        Ok(Err(ChannelError::Timeout))
                    }
                    Ok(f) => Err(End::Broken(
                        self.protocol(format!("a {:?} frame while an Offer waits", f.kind)),
                    )),
                    Err(e) => Err(self.frame_error(e)),
                };
            }
            if parked.as_ref().is_some_and(census::Parked::deadlocked) {
                // The remote select is part of a deadlock: its offer fails with it.
                return Ok(Err(ChannelError::Deadlock));
            }
            // It watches the connection (above): what comes is in flight until read.
            self.publish(&mut parked, true, 0);
            let step = if stop.is_some() { TICK } else { OFFER_STEP };
            match attempt(Some(Instant::now() + step), stop) {
                Err(ChannelError::Timeout) => {}
                r => {
                    self.since.set(None);
                    return Ok(r);
                }
            }
        }
    }

    /// Writes `body` for the peer; `None` if the peer hung up before the message was placed.
    /// The answers gathered in `replies` go out first if the write has to wait.
    fn write(
        &self,
        s: &mut Stream,
        inbox: &FrameReader,
        body: &[u8],
        replies: &mut Vec<u8>,
    ) -> Option<Result<(), ChannelError>> {
        self.put(s, inbox, replies, |deadline| {
            write_encoded(&self.chan, body, deadline)
        })
    }

    /// Writes a message for the peer with `attempt` (a write into the channel with the
    /// deadline it is given), as often as it takes: `None` if the peer hung up before the
    /// message was placed. The answers gathered in `replies` go out first if the write has to
    /// wait. A `Poison` the peer sent after it (buffered in `inbox`, or in the socket) poisons
    /// the channel at once: the write then fails, and the frame is still read and answered in
    /// its turn (poison is immediate, as in shared memory, not behind messages that wait for
    /// room).
    fn put(
        &self,
        s: &mut Stream,
        inbox: &FrameReader,
        replies: &mut Vec<u8>,
        mut attempt: impl FnMut(Option<Instant>) -> Result<(), ChannelError>,
    ) -> Option<Result<(), ChannelError>> {
        if !self.chan.is_rendezvous() {
            match attempt(Some(wait::passed())) {
                Err(ChannelError::Timeout) => {}
                r => return Some(r),
            }
        }
        if !replies.is_empty() {
            let r = s.write_all(replies);
            replies.clear();
            r.ok()?;
        }
        let mut parked: Option<census::Parked> = None;
        // The peer's frames that came after this one wait in the socket until the message is
        // placed (only a hang-up is looked for meanwhile): published as received, and
        // published anew when more come.
        let mut unread = 0;
        loop {
            match attempt(Some(Instant::now() + TICK)) {
                Err(ChannelError::Timeout) => {
                    if sys::socket_hung_up(s.as_raw_fd()) {
                        return None;
                    }
                    if parked.as_ref().is_some_and(census::Parked::deadlocked) {
                        // The remote writer is part of a deadlock: its write fails with it.
                        return Some(Err(ChannelError::Deadlock));
                    }
                    let now = sys::unread_bytes(s.as_raw_fd());
                    if now != unread {
                        unread = now;
                        parked = None;
                    }
                    if poison_comes(s, inbox, now) {
                        self.chan.poison();
                        continue;
                    }
                    self.publish(&mut parked, true, unread);
                }
                r => {
                    if r.is_ok() {
                        self.since.set(None);
                    }
                    return Some(r);
                }
            }
        }
    }

    /// Reads a message for the peer, which holds `held` messages not acknowledged.
    ///
    /// A frame that comes from the peer meanwhile ends the wait (`Interrupted`: the frame
    /// loop reads it, and the read is made again): after [`PUBLISH_AFTER`] at most, then at
    /// once, asleep while a thread of its own watches the connection. While the peer holds
    /// messages, it is looked for every [`OFFER_STEP`] from the start: its `Ack`s free their
    /// places in the channel, which a writer here may wait for while a reader here takes every
    /// other message (then nothing else ends this wait). (Once it was looked for only every
    /// [`TICK`]: a writer waited 100 ms for a place that the peer's `Ack` had freed, and the
    /// peer's poison reached the channel's other ends 100 ms late.)
    fn read(&self, s: &Stream, inbox: &FrameReader, held: usize, spare: &mut Spare) -> Outcome {
        let Ok(arena) = Arena::get() else {
            return Outcome::Failed(ChannelError::SharedMemory("no arena".into()));
        };
        let fd = s.as_raw_fd();
        let mut parked: Option<census::Parked> = None;
        // One attempt, until `deadline` or `stop`: `None` if it should be made again
        // (published for the census when `publish`).
        let mut attempt = |deadline: Instant, stop: Option<&AtomicBool>, publish: bool| {
            let reader = Reader::Host { held };
            let claim = |w| waiter::claim(arena, w);
            let r = match stop {
                Some(stop) => self
                    .chan
                    .read_deferred_until(Some(deadline), reader, claim, stop),
                None => self.chan.read_deferred(Some(deadline), reader, claim),
            };
            match r {
                Ok((m, taken)) => Some(match take_held_into(m, spare.take()) {
                    Ok(b) => Outcome::Got(b, taken),
                    Err(e) => {
                        self.chan.ack_kept(taken);
                        Outcome::Failed(e)
                    }
                }),
                Err(ChannelError::Timeout) => {
                    if inbox.buffered() || sys::wait_readable(fd, Duration::ZERO) {
                        // The peer sent something while its read was pending (an `Ack`; it
                        // retires, poisons or hands over), or it hung up: the frame loop
                        // finds out.
                        return Some(Outcome::Interrupted);
                    }
                    if parked.as_ref().is_some_and(census::Parked::deadlocked) {
                        // The remote reader is part of a deadlock: its read fails with it.
                        return Some(Outcome::Failed(ChannelError::Deadlock));
                    }
                    if publish {
                        // Anything that comes on the connection ends this wait (above): in
                        // flight until this thread reads it.
                        self.publish(&mut parked, false, 0);
                    }
                    None
                }
                Err(e) => Some(Outcome::Failed(e)),
            }
        };
        // While the peer holds messages, its `Ack`s are looked for every OFFER_STEP at first.
        let first = if held > 0 { OFFER_STEP } else { PUBLISH_AFTER };
        let until = Instant::now() + PUBLISH_AFTER;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            if let Some(o) = attempt((now + first).min(until), None, false) {
                return o;
            }
        }
        let chan = self.chan;
        stream::with_socket_watch(
            fd,
            || chan.wake_readers(),
            |stop| loop {
                let step = if stop.is_some() { TICK } else { OFFER_STEP };
                if let Some(o) = attempt(Instant::now() + step, stop, true) {
                    return o;
                }
            },
        )
    }

    /// This thread waits (in steps of [`TICK`]) to read (`write` false) or write the channel
    /// for the peer: published for the census as the peer's operation, with the futex word
    /// its side sleeps on as it is now (published anew when it moved: the next step sees
    /// what moved it), and `unread` bytes of the connection that it will not read before the
    /// operation is done (see `stream::park_for_peer`).
    fn publish(&self, parked: &mut Option<census::Parked>, write: bool, unread: u64) {
        if parked.as_ref().is_some_and(census::Parked::unchanged) {
            return;
        }
        // Published anew: since the deadlock count when the connection's operation first
        // waited.
        *parked = None;
        let since = self.since.get();
        let kind = if write {
            census::Kind::Write
        } else {
            census::Kind::Read
        };
        *parked = super::stream::park_for_peer(kind, &self.chan, write, self.pid, since, unread);
        if let Some(p) = parked {
            self.since.set(Some(p.since()));
        }
    }

    /// Puts the messages the peer did not take back into the channel (see [`give_back`]).
    fn put_back(&self, messages: Vec<(Vec<u8>, Taken)>) {
        give_back(self.chan, messages);
    }

    /// Answers the reader's outstanding `Read`s (`credits`): waits for a message (returning
    /// early when the peer sends a frame), then takes those there now, up to `credits`, and
    /// sends them, after the `replies` gathered, in one system call (a message longer than
    /// [`ONE_WRITE`] on its own, without a copy). A read that fails is answered with its
    /// `Error`, and the reader asks for nothing more.
    fn answer_reads(
        &self,
        s: &mut Stream,
        inbox: &FrameReader,
        credits: &mut usize,
        held: &mut VecDeque<(Vec<u8>, Taken)>,
        spare: &mut Spare,
        replies: &mut Vec<u8>,
    ) -> Result<(), End> {
        fn lost<E>(_: E) -> End {
            End::Lost("hung up before a message reached it".into())
        }
        if !replies.is_empty() {
            s.write_all(replies)
                .map_err(|_| End::Lost("hung up before its answer".into()))?;
            replies.clear();
        }
        let (bytes, taken) = match self.read(s, inbox, held.len(), spare) {
            Outcome::Got(bytes, taken) => (bytes, taken),
            Outcome::Failed(e) => {
                *credits = 0;
                return s
                    .write_all(&ErrorBody::from_error(&e).frame().encode())
                    .map_err(lost);
            }
            Outcome::Interrupted => return Ok(()),
        };
        let mut next = Some((bytes, taken));
        while let Some((bytes, taken)) = next.take() {
            *credits -= 1;
            if bytes.len() > ONE_WRITE {
                s.write_all(replies).map_err(lost)?;
                replies.clear();
                let f = Frame::new(Kind::Message, bytes);
                let r = write_frame(s, &f);
                // Held before anything else: if it did not reach the peer, it goes back.
                held.push_back((f.body, taken));
                r.map_err(lost)?;
            } else {
                append_frame(replies, Kind::Message, &bytes);
                held.push_back((bytes, taken));
            }
            if *credits == 0 || replies.len() >= ONE_WRITE {
                break;
            }
            // Those there now, without waiting.
            let Ok(arena) = Arena::get() else { break };
            if let Ok((m, taken)) = self.chan.read_deferred(
                Some(wait::passed()),
                Reader::Host { held: held.len() },
                |w| waiter::claim(arena, w),
            ) {
                match take_held_into(m, spare.take()) {
                    Ok(b) => next = Some((b, taken)),
                    Err(e) => {
                        self.chan.ack_kept(taken);
                        *credits = 0;
                        replies.extend_from_slice(&ErrorBody::from_error(&e).frame().encode());
                    }
                }
            }
        }
        s.write_all(replies).map_err(lost)?;
        replies.clear();
        Ok(())
    }
}

/// The acknowledgements of a run of `Ack` frames (a remote reader confirms its messages in
/// batches): each empties its slot at once; whom they concern (a writer waiting for room) is
/// woken once, when the run ends or the connection does.
struct Acks<'c> {
    chan: &'c Chan,
    made: bool,
}

impl Acks<'_> {
    fn made(&mut self, taken: Taken) {
        self.chan.ack_kept_quietly(taken);
        self.made = true;
    }

    /// Ends the run: wakes whom it concerns (before the connection waits, or handles another
    /// kind of frame).
    fn end(&mut self) {
        if std::mem::take(&mut self.made) {
            self.chan.acked();
        }
    }
}

impl Drop for Acks<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// Whether the peer sent a `Poison` that this connection has not read yet: among the frames
/// buffered in `inbox`, then in the `unread` bytes of the socket (the first [`POISON_LOOK`]
/// of them, peeked).
fn poison_comes(s: &Stream, inbox: &FrameReader, unread: u64) -> bool {
    let mut more = vec![0u8; (unread as usize).min(POISON_LOOK)];
    let n = if more.is_empty() {
        0
    } else {
        sys::peek(s.as_raw_fd(), &mut more).unwrap_or(0)
    };
    inbox.announces(Kind::Poison, &more[..n])
}

/// How many unread bytes of its socket a connection waiting to place a message looks through
/// for a `Poison` (a `Poison` behind more than this many bytes of messages waits its turn).
const POISON_LOOK: usize = 64 << 10;

/// How many messages a remote reader of `chan` may ask for ahead (said in `Opened`): one on a
/// rendezvous channel, the capacity of a buffered one, at most [`READ_WINDOW`].
fn read_window(chan: &Chan) -> usize {
    chan.capacity().clamp(1, READ_WINDOW)
}

/// Adds the answer to a `Write` to the answers waiting to go out.
fn answer(replies: &mut Vec<u8>, r: Result<(), ChannelError>) {
    match r {
        Ok(()) => replies.extend_from_slice(&[1, 0, 0, 0, Kind::Done as u8]),
        Err(e) => replies.extend_from_slice(&ErrorBody::from_error(&e).frame().encode()),
    }
}

/// One attempt of an `Offer` (see `Conn::offer_with`): a write into the channel by the
/// deadline, withdrawn as soon as the flag (if any) is set.
type OfferAttempt<'a> =
    dyn FnMut(Option<Instant>, Option<&AtomicBool>) -> Result<(), ChannelError> + 'a;

/// How a long `Write` or `Offer` read straight into shared memory went.
enum Long {
    /// The answer to send.
    Answer(Result<(), ChannelError>),
    /// The connection ends.
    End(End),
    /// No block could be had: nothing was read.
    NoBlock,
}

/// The longest message body a host reads straight into a block of shared memory, reserved
/// whole when its frame's head arrives (longer ones are read as their bytes arrive, as
/// [`FrameReader`] reads them, and then copied into a block).
const STRAIGHT_MAX: usize = 4 << 20;

enum Outcome {
    /// A message, and the slot it was taken from (to acknowledge once the peer took it).
    Got(Vec<u8>, Taken),
    Failed(ChannelError),
    Interrupted,
}

/// Puts the messages the peer did not take back into the channel, in the order they were
/// taken, holding a writing end meanwhile (so that the channel's writers do not all
/// retire in between).
///
/// On a rendezvous channel a message taken from a slot goes back to its writer, which is
/// still waiting in its write and writes it again ([`Chan::return_to_writer`]): it returns
/// once another reader took it; if no reader can take it any more (every reader retired,
/// poison), its write fails as the channel says. One taken from a selecting writer's offer
/// goes back to that select ([`Chan::give_back_offer`]), which goes on as if nobody had
/// claimed it (its timeout and other guards can fire).
///
/// On a buffered channel each goes back now where there is room, then its slot is
/// emptied, so that a peer's death marked next finds them in the channel (readers read
/// the buffer before they learn of it); what finds the ring full waits for room in
/// another thread with its slot still taken (readers that find a dead peer's channel
/// empty wait while slots are taken), unless nothing readable is left to free room: then
/// its own slot is emptied first.
fn give_back(chan: Chan, messages: Vec<(Vec<u8>, Taken)>) {
    if messages.is_empty() {
        return;
    }
    let taken: Vec<Taken> = messages.iter().map(|(_, t)| *t).collect();
    if chan.give_back_in_place(&taken) {
        return;
    }
    runtime::hold(&chan, Role::Writer);
    let mut rest: Vec<(Vec<u8>, Taken)> = Vec::new();
    for (bytes, taken) in messages {
        if chan.is_rendezvous() {
            // Back to its writer, still waiting (in a write, or in a select committed to it).
            if let Err(taken) = chan.return_to_writer(taken) {
                let _ = chan.give_back_offer(taken);
            }
            continue;
        }
        if !rest.is_empty() {
            rest.push((bytes, taken));
        } else if let Err(ChannelError::Timeout) =
            write_encoded_back(&chan, &bytes, Some(Instant::now()))
        {
            // Full: it waits for room with its slot still taken, so that readers do not
            // take the channel for drained meanwhile.
            rest.push((bytes, taken));
        } else {
            chan.ack_kept(taken);
        }
    }
    if rest.is_empty() {
        runtime::release(chan, Role::Writer);
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("pycsp-put-back".into())
        .spawn(move || {
            let _internal = crate::shm::census::internal_thread(true);
            give_back_waiting(chan, rest);
            runtime::release(chan, Role::Writer);
        });
    if spawned.is_err() {
        runtime::release(chan, Role::Writer);
    }
}

/// The bytes of a message this host took for its remote reader, as it holds them until the
/// reader's `Ack` (then [`Chan::ack_kept`]): copied into `buf` (whose allocation is reused,
/// see [`Spare`]), its block kept where it is, so that the message can go back there.
fn take_held_into(m: Incoming, mut buf: Vec<u8>) -> Result<Vec<u8>, ChannelError> {
    copy_encoded_into(&m, &mut buf)?;
    Ok(buf)
}

/// The buffers of messages a remote reader acknowledged, for the copies of the next ones
/// ([`take_held_into`]): a stream of small messages otherwise costs an allocation and a free
/// per message. At most [`READ_WINDOW`] buffers of at most [`Spare::LARGEST`] bytes (64 KiB
/// a connection keeps while it lives; a larger message's allocation costs little beside its
/// copies).
#[derive(Default)]
struct Spare(Vec<Vec<u8>>);

impl Spare {
    const LARGEST: usize = 256;

    fn take(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_default()
    }

    fn keep(&mut self, buf: Vec<u8>) {
        if self.0.len() < READ_WINDOW && buf.capacity() <= Self::LARGEST {
            self.0.push(buf);
        }
    }
}

/// Gives back, in order, messages a remote reader held (each with its slot, still taken),
/// waiting for room as a writer does: the end of [`Conn::put_back`] for a full channel, on a
/// thread of its own.
fn give_back_waiting(chan: Chan, held: Vec<(Vec<u8>, Taken)>) {
    let mut held = held.into_iter();
    while let Some((bytes, taken)) = held.next() {
        let mut parked = None;
        loop {
            let step = Some(Instant::now() + PUT_BACK_STEP);
            match write_encoded_back(&chan, &bytes, step) {
                Err(ChannelError::Timeout) if !chan.looks_nonempty() => {
                    // Nothing to read frees a slot: the ring is full of slots taken and not
                    // emptied, ours among them. Empty all of ours (readers wait for the
                    // copies meanwhile), then write the copies as room comes: a writer of
                    // the channel may take a slot emptied here, and a copy must not wait for
                    // a slot this give-back still holds.
                    let empty = |t: Taken| {
                        chan.free_kept(&t);
                        chan.empty_for_give_back(t)
                    };
                    let mut copies = vec![(bytes, empty(taken))];
                    copies.extend(held.by_ref().map(|(b, t)| (b, empty(t))));
                    for (bytes, giving_back) in copies {
                        let _ = write_encoded_back(&chan, &bytes, None);
                        drop(giving_back);
                    }
                    return;
                }
                // Room comes when a reader reads: published as a write of the channel, so
                // that a network whose processes are all blocked meanwhile is a deadlock.
                Err(ChannelError::Timeout) => publish_put_back(&chan, &mut parked),
                _ => {
                    chan.ack_kept(taken);
                    break;
                }
            }
        }
    }
}

/// Publishes for the census that this put-back thread waits to write `chan` (for room), as
/// it is now: anew when the futex word its side sleeps on moved.
fn publish_put_back(chan: &Chan, parked: &mut Option<census::Parked>) {
    if parked.as_ref().is_some_and(census::Parked::unchanged) {
        return;
    }
    *parked = None;
    *parked = census::park_socket(
        census::Kind::Write,
        &[census::Item {
            key: chan.key(),
            write: true,
            name: chan.name(),
            word: Some(chan.side_word(true)),
        }],
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::take_encoded;
    use crate::shm::waiter::Claim;

    #[test]
    fn messages_given_back_reach_a_reader_when_a_writer_takes_a_slot_emptied_for_them() {
        // A remote reader held both messages of a full buffered channel and left; a writer
        // of the channel retries its write. The messages go back through a ring full of
        // their own taken slots: a slot emptied for the first may go to the writer, and the
        // copies must then not wait for a slot the give-back itself still holds (once they
        // did, and every reader and writer of the channel waited for ever).
        let encoded = |v: u64| rmp_serde::to_vec(&v).unwrap();
        for round in 0..30 {
            let chan = Chan::create(
                Arena::get().unwrap(),
                &format!("give-back-stolen-{round}"),
                "u64",
                0,
                2,
                false,
            )
            .unwrap();
            runtime::hold(&chan, Role::Writer);
            runtime::hold(&chan, Role::Reader);
            for v in [1, 2] {
                write_encoded(&chan, &encoded(v), None).unwrap();
            }
            let held: Vec<(Vec<u8>, Taken)> = (0..2)
                .map(|held| {
                    let (m, t) = chan
                        .read_deferred(None, Reader::Host { held }, |_| Claim::Busy)
                        .unwrap();
                    (take_encoded(m).unwrap(), t)
                })
                .collect();
            // The writer retries with short deadlines, so it is often spinning on the ring
            // when a slot is emptied.
            let writer = std::thread::spawn(move || loop {
                let soon = Some(Instant::now() + Duration::from_millis(1));
                match write_encoded(&chan, &encoded(3), soon) {
                    Err(ChannelError::Timeout) => continue,
                    r => break r,
                }
            });
            std::thread::spawn(move || give_back_waiting(chan, held));
            let mut got: Vec<u64> = (0..3)
                .map(|i| {
                    let m = chan
                        .read(Some(Instant::now() + Duration::from_secs(5)), true, |_| {
                            Claim::Busy
                        })
                        .unwrap_or_else(|e| panic!("round {round}, message {i}: {e}"));
                    rmp_serde::from_slice(&take_encoded(m).unwrap()).unwrap()
                })
                .collect();
            writer.join().unwrap().unwrap();
            got.sort();
            assert_eq!(got, [1, 2, 3], "round {round}");
        }
    }

    #[test]
    fn a_rendezvous_message_given_back_after_the_ring_wrapped_reaches_a_reader() {
        // A remote reader held a rendezvous message (its slot taken, its writer waiting)
        // while 15 more messages passed through the 16-slot ring; the next write waits for
        // the held slot. Given back then, the message must still reach a reader, and that
        // next write too (a copy written into the ring once waited for the held slot itself,
        // and every reader and writer of the channel waited for ever). The held message is
        // longer than a slot holds: its block must survive the give-back.
        let arena = Arena::get().unwrap();
        let chan = Chan::create(arena, "give-back-wrapped", "bytes", 0, 0, false).unwrap();
        runtime::hold(&chan, Role::Writer);
        runtime::hold(&chan, Role::Reader);
        let long = rmp_serde::to_vec(&vec![7u8; 300]).unwrap();
        let soon = || Some(Instant::now() + Duration::from_secs(10));
        let first = {
            let long = long.clone();
            std::thread::spawn(move || write_encoded(&chan, &long, soon()))
        };
        let (m, taken) = chan
            .read_deferred(None, Reader::Host { held: 0 }, |_| Claim::Busy)
            .unwrap();
        let held = vec![(take_held_into(m, Vec::new()).unwrap(), taken)];
        assert_eq!(held[0].0, long);
        let others = std::thread::spawn(move || {
            for v in 0..16u64 {
                write_encoded(&chan, &rmp_serde::to_vec(&v).unwrap(), soon())?;
            }
            Ok::<(), ChannelError>(())
        });
        let read = |what: &str| {
            let m = chan
                .read(Some(Instant::now() + Duration::from_secs(5)), true, |_| {
                    Claim::Busy
                })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            take_encoded(m).unwrap()
        };
        for v in 0..15u64 {
            assert_eq!(
                read("a message passing the held one"),
                rmp_serde::to_vec(&v).unwrap()
            );
        }
        give_back(chan, held);
        let mut got = vec![read("after the give-back"), read("after the give-back")];
        got.sort();
        let mut want = vec![long, rmp_serde::to_vec(&15u64).unwrap()];
        want.sort();
        assert_eq!(got, want);
        first.join().unwrap().unwrap();
        others.join().unwrap().unwrap();
    }

    #[test]
    fn messages_a_single_remote_reader_gives_back_are_read_again_in_order() {
        // The one reader of a stream (remote) held the first two messages and gave them back
        // (its user took none for a while): the next reads get them first, in order, then the
        // rest (copies written behind the later messages once came out of order). One is
        // longer than a slot holds: its block must survive.
        let arena = Arena::get().unwrap();
        let chan = Chan::create(arena, "give-back-in-order", "bytes", 0, 4, false).unwrap();
        runtime::hold(&chan, Role::Writer);
        runtime::hold(&chan, Role::Reader);
        let message = |i: u8| rmp_serde::to_vec(&vec![i; if i == 0 { 300 } else { 3 }]).unwrap();
        for i in 0..4 {
            write_encoded(&chan, &message(i), None).unwrap();
        }
        let held: Vec<(Vec<u8>, Taken)> = (0..2)
            .map(|held| {
                let (m, t) = chan
                    .read_deferred(None, Reader::Host { held }, |_| Claim::Busy)
                    .unwrap();
                (take_held_into(m, Vec::new()).unwrap(), t)
            })
            .collect();
        assert_eq!(held[0].0, message(0));
        give_back(chan, held);
        for i in 0..4 {
            let m = chan
                .read(Some(Instant::now() + Duration::from_secs(5)), true, |_| {
                    Claim::Busy
                })
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
            assert_eq!(take_encoded(m).unwrap(), message(i), "message {i}");
        }
    }
}
