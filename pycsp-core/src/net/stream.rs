//! Addresses of socket channels and the connections to them: TCP, or a local (Unix) socket.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::ChannelError;
use crate::frame::FrameError;

/// The default of [`handshake_timeout`]: how long each step of opening a connection may take
/// (connecting, the key's handshake, `Open` and its answer, a placed process's call-back).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable that overrides [`HANDSHAKE_TIMEOUT`], in seconds (`0.5`, `30`).
pub const ENV_HANDSHAKE_TIMEOUT: &str = "PYCSP_HANDSHAKE_TIMEOUT";

/// The default of [`max_startups`]: how many connections a host authenticates at once.
pub const MAX_STARTUPS: usize = 64;

/// The environment variable that overrides [`MAX_STARTUPS`].
pub const ENV_MAX_STARTUPS: &str = "PYCSP_MAX_STARTUPS";

/// How long a peer may take to connect, to answer each step of the handshake and to answer
/// `Open`, in this process: [`HANDSHAKE_TIMEOUT`] (5 s), or the number of seconds in
/// [`ENV_HANDSHAKE_TIMEOUT`] (read once; a value that is not a positive number is ignored with
/// a warning). A peer that does not answer in time fails the step with
/// [`ChannelError::Connection`] ("no answer from the peer in time"); a host closes the
/// connection and records the error for [`next_connection_error`](super::next_connection_error).
pub fn handshake_timeout() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| {
        env_number(ENV_HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT, |v| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(Duration::from_secs_f64)
        })
    })
}

/// How many connections that have not yet authenticated a host serves at once, in this
/// process: [`MAX_STARTUPS`] (64), or [`ENV_MAX_STARTUPS`] (read once). When one more arrives,
/// the oldest of them is closed (like OpenSSH's `MaxStartups`); so is the oldest when `accept`
/// finds no descriptor left.
pub fn max_startups() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        env_number(ENV_MAX_STARTUPS, MAX_STARTUPS, |v| {
            v.parse::<usize>().ok().filter(|n| *n > 0)
        })
    })
}

/// What a handshake step that failed with `e` reports: a time-out says which deadline.
pub(crate) fn step_failed(step: &str, e: &FrameError) -> String {
    match e {
        FrameError::Io(m) if m.contains("in time") => format!(
            "{step}: {e}: the deadline is {:?} ({ENV_HANDSHAKE_TIMEOUT} sets it)",
            handshake_timeout()
        ),
        _ => format!("{step}: {e}"),
    }
}

fn env_number<T>(var: &str, default: T, parse: impl Fn(&str) -> Option<T>) -> T {
    match std::env::var(var) {
        Err(_) => default,
        Ok(v) => parse(v.trim()).unwrap_or_else(|| {
            eprintln!("pycsp: ignoring {var}={v:?}: not a positive number");
            default
        }),
    }
}

/// How long a TCP peer may leave data unacknowledged, or fail keep-alive probes, before its
/// connection counts as lost (`TCP_USER_TIMEOUT` and keep-alive: idle 1 s, then 3 probes 1 s
/// apart). A killed process is noticed at once (its kernel closes the socket); a host that
/// vanished or a link that went down is noticed within about this long.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(5);

// A writer waits for a silent remote reader as long as a remote writer waits for a silent host.
const _: () = assert!(LOSS_TIMEOUT.as_nanos() == crate::shm::ring::HELD_ANSWER_WAIT.as_nanos());

/// Where a socket channel lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    /// `HOST:PORT`.
    Tcp(String),
    /// A local socket name.
    Local(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Local(a) => write!(f, "local://{a}"),
        }
    }
}

/// A parsed channel address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub(crate) endpoint: Endpoint,
    /// The channel's name at that endpoint.
    pub(crate) channel: String,
    /// The whole address, as given.
    pub(crate) full: String,
}

/// Parses `name` as an address: `None` if it is a plain name (no `://`).
pub(crate) fn parse_address(name: &str) -> Option<Result<Address, ChannelError>> {
    let (scheme, rest) = name.split_once("://")?;
    let bad = |reason: &str| {
        Some(Err(ChannelError::BadAddress {
            address: name.to_string(),
            reason: reason.to_string(),
        }))
    };
    let Some((at, channel)) = rest.split_once('/') else {
        return bad("no channel name: write SCHEME://WHERE/NAME");
    };
    if channel.is_empty() {
        return bad("the channel name after the last '/' is empty");
    }
    if at.is_empty() {
        return bad("nothing between :// and /");
    }
    let endpoint = match scheme {
        "tcp" => {
            let Some((host, port)) = at.rsplit_once(':') else {
                return bad("a tcp address needs HOST:PORT");
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return bad("a tcp address needs HOST:PORT with a port from 0 to 65535");
            }
            Endpoint::Tcp(at.to_string())
        }
        "local" => Endpoint::Local(at.to_string()),
        _ => return bad("unknown scheme: use tcp:// or local://"),
    };
    Some(Ok(Address {
        endpoint,
        channel: channel.to_string(),
        full: name.to_string(),
    }))
}

/// A connected socket: TCP, or a local (Unix) socket made by `interprocess`.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `endpoint`, taking at most [`handshake_timeout`] (per address). The stream
    /// returned has that deadline on every read and write, for the handshake: call
    /// [`set_deadline`](Self::set_deadline)`(None)` once it is over.
    pub(crate) fn connect(endpoint: &Endpoint) -> io::Result<Stream> {
        let limit = handshake_timeout();
        let s = match endpoint {
            Endpoint::Tcp(a) => {
                let mut last = io::Error::other(format!("{a} resolves to no address"));
                let mut found = None;
                for sa in a.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, limit) {
                        Ok(s) => {
                            tune_tcp(&s)?;
                            found = Some(Stream::Tcp(s));
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
            Endpoint::Local(n) => {
                // The abstract-namespace Unix socket `interprocess` listens on for this name
                // (`GenericNamespaced` on Linux), connected with a send time-out: a Unix
                // `connect` waits for room in a full backlog at most that long.
                use std::os::unix::ffi::OsStrExt;
                let mut raw = vec![0u8];
                raw.extend_from_slice(n.as_bytes());
                let addr = socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&raw))?;
                let sock =
                    socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
                sock.set_write_timeout(Some(limit))?;
                sock.connect(&addr).map_err(|e| {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        io::Error::new(io::ErrorKind::TimedOut, "the host accepts no connection")
                    } else {
                        e
                    }
                })?;
                Stream::Unix(UnixStream::from(OwnedFd::from(sock)))
            }
        };
        s.set_deadline(Some(limit))?;
        Ok(s)
    }

    /// Makes every later read and write fail with a time-out once it waited `limit` (`None`:
    /// wait as long as it takes).
    pub(crate) fn set_deadline(&self, limit: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(limit)?;
                s.set_write_timeout(limit)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(limit)?;
                s.set_write_timeout(limit)
            }
        }
    }

    /// Makes reads and writes return at once (`WouldBlock`) instead of waiting, or wait again.
    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Another handle on the same connection.
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Who is at the other end, for messages.
    pub(crate) fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "a TCP peer".into(), |a| a.to_string()),
            Stream::Unix(_) => "a local-socket peer".into(),
        }
    }
}

/// Keep-alive and a user time-out, so that a vanished host is noticed (see [`LOSS_TIMEOUT`]).
pub(crate) fn tune_tcp(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let sock = socket2::SockRef::from(s);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(1))
            .with_interval(Duration::from_secs(1))
            .with_retries(3),
    )?;
    sock.set_tcp_user_timeout(Some(LOSS_TIMEOUT))?;
    Ok(())
}

/// The Unix stream inside an `interprocess` local socket.
pub(crate) fn local_to_unix(s: interprocess::local_socket::Stream) -> UnixStream {
    match s {
        interprocess::local_socket::Stream::UdSocket(u) => UnixStream::from(OwnedFd::from(u)),
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

thread_local! {
    /// Bytes this thread sent and received through streams (since [`reset_bytes`]): a socket
    /// host or pump thread serves one connection, so these are its connection's, for the
    /// census to tell an idle connection from one with bytes in flight.
    static BYTES: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Bytes this thread sent and received through streams since it last called [`reset_bytes`].
pub(crate) fn bytes() -> (u64, u64) {
    BYTES.with(std::cell::Cell::get)
}

/// Counts this thread's bytes from now on (a connection's serving starts).
pub(crate) fn reset_bytes() {
    BYTES.with(|b| b.set((0, 0)));
}

/// Sets this thread's counts back to `bytes` (a user thread that used a pump's connection
/// for one exchange: those bytes are the connection's, see `net/direct.rs`).
pub(crate) fn set_bytes(bytes: (u64, u64)) {
    BYTES.with(|b| b.set(bytes));
}

/// Adds bytes that another thread sent and received on this thread's connection.
pub(crate) fn add_bytes(sent: u64, got: u64) {
    BYTES.with(|b| {
        let (o, i) = b.get();
        b.set((o.wrapping_add(sent), i.wrapping_add(got)));
    });
}

/// How long a socket thread waits before it publishes its wait for the deadlock census
/// (`shm/census.rs`): a wait that ends sooner costs nothing.
pub(crate) const PUBLISH_AFTER: Duration = Duration::from_millis(5);

/// Runs `body` while a thread of its own waits until socket `fd` has bytes to read or hung
/// up, and then sets the flag `body` is given and calls `wake`: so `body` can sleep on an
/// event of shared memory, which `wake` rings, instead of polling the socket between two
/// looks at it (a socket host offering a remote select's message, a pump whose offer waits
/// at its host). `body` gets `None` if no thread could be started; the thread's wait ends
/// when `body` returns, if the socket did not end it.
pub(crate) fn with_socket_watch<R>(
    fd: RawFd,
    wake: impl Fn() + Send,
    body: impl FnOnce(Option<&AtomicBool>) -> R,
) -> R {
    let Ok((done, done_seen)) = UnixStream::pair() else {
        return body(None);
    };
    let readable = AtomicBool::new(false);
    let flag = &readable;
    std::thread::scope(|scope| {
        let watcher = std::thread::Builder::new()
            .name("pycsp-watch".into())
            .spawn_scoped(scope, move || {
                let _internal = crate::shm::census::internal_thread(false);
                if crate::sys::wait_any_readable(&[fd, done_seen.as_raw_fd()]) == Some(0) {
                    flag.store(true, Ordering::SeqCst);
                    wake();
                }
            });
        let r = body(watcher.is_ok().then_some(flag));
        // Ends the watcher's wait, if the socket did not.
        drop(done);
        r
    })
}

/// This socket thread waits on its connection to `peer` (0 if unknown: then nothing is
/// published, and its process is never judged blocked), of a `writer` (or reading) end, for
/// channel `chan` (its key and name; `word`: the proxy's futex word the thread sleeps on
/// meanwhile, if any), having sent and received what [`bytes`] says: published for the census
/// while the guard lives.
pub(crate) fn idle(
    peer: u32,
    writer: bool,
    chan: &crate::shm::ring::Chan,
    word: Option<&std::sync::atomic::AtomicU32>,
) -> Option<crate::shm::census::Parked> {
    if peer == 0 {
        return None;
    }
    crate::shm::census::park_remote(peer, writer, chan.key(), chan.name(), word, bytes())
}

/// This socket thread waits in a `kind` operation on the `write` (or read) side of `chan` for
/// the peer `peer` of its connection, having sent and received what [`bytes`] says: published
/// for the census while the guard lives (`since`: the deadlock count when the operation first
/// waited, if it waited before). `unread`: bytes that came on the connection and that this
/// thread reads only once its operation is done (it does not watch the socket meanwhile, so
/// they cannot end its wait): counted as received, so that the connection is idle for the
/// census, as it is. (Counted as in flight, a buffered remote writer's last `Write`, which
/// came after its host's connection thread blocked on the full channel, kept a deadlock of
/// the two from ever being declared.)
pub(crate) fn park_for_peer(
    kind: crate::shm::census::Kind,
    chan: &crate::shm::ring::Chan,
    write: bool,
    peer: u32,
    since: Option<u64>,
    unread: u64,
) -> Option<crate::shm::census::Parked> {
    use crate::shm::census::Item;
    let (sent, got) = bytes();
    let got = got.wrapping_add(unread);
    let item = |key| Item {
        key,
        write: false,
        name: "",
        word: None,
    };
    crate::shm::census::park_socket(
        kind,
        &[
            Item {
                key: chan.key(),
                write,
                name: chan.name(),
                word: Some(chan.side_word(write)),
            },
            item(u64::from(peer)),
            item(sent),
            item(got),
        ],
        since,
    )
}

/// Waits until `s` is readable (a frame came, or the peer hung up); once the wait lasts, it
/// is published as [`idle`].
pub(crate) fn await_readable(s: &Stream, peer: u32, writer: bool, chan: &crate::shm::ring::Chan) {
    await_readable_unless(s, peer, writer, chan, &|| false);
}

/// [`await_readable`], which also ends (`false`) once `stop` says so (looked at every
/// [`SLICE`](crate::shm::census::SLICE) at most); `true` when `s` is readable or its
/// deadline passed.
pub(crate) fn await_readable_unless(
    s: &Stream,
    peer: u32,
    writer: bool,
    chan: &crate::shm::ring::Chan,
    stop: &dyn Fn() -> bool,
) -> bool {
    if crate::sys::wait_readable(s.as_raw_fd(), PUBLISH_AFTER) {
        return true;
    }
    if stop() {
        return false;
    }
    // The read that follows keeps the stream's deadline, if it has one: this wait ends by
    // then too (the read then fails with it).
    let limit = match s {
        Stream::Tcp(t) => t.read_timeout(),
        Stream::Unix(u) => u.read_timeout(),
    }
    .ok()
    .flatten()
    .map(|d| std::time::Instant::now() + d);
    let _idle = idle(peer, writer, chan, None);
    while !crate::sys::wait_readable(s.as_raw_fd(), crate::shm::census::SLICE) {
        if limit.is_some_and(|l| std::time::Instant::now() >= l) {
            return true;
        }
        if stop() {
            return false;
        }
    }
    true
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }?;
        BYTES.with(|b| {
            let (o, i) = b.get();
            b.set((o, i.wrapping_add(n as u64)));
        });
        Ok(n)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }?;
        BYTES.with(|b| {
            let (o, i) = b.get();
            b.set((o.wrapping_add(n as u64), i));
        });
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }?;
        BYTES.with(|b| {
            let (o, i) = b.get();
            b.set((o.wrapping_add(n as u64), i));
        });
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_endpoint_and_channel() {
        let a = parse_address("tcp://10.0.0.1:7000/results")
            .unwrap()
            .unwrap();
        assert_eq!(a.endpoint, Endpoint::Tcp("10.0.0.1:7000".into()));
        assert_eq!(a.channel, "results");
        let a = parse_address("local://myapp/jobs/a").unwrap().unwrap();
        assert_eq!(a.endpoint, Endpoint::Local("myapp".into()));
        assert_eq!(a.channel, "jobs/a");
        assert!(parse_address("plain-name").is_none());
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (a, why) in [
            ("tcp://10.0.0.1/x", "HOST:PORT"),
            ("tcp://h:99999/x", "port"),
            ("udp://h:1/x", "unknown scheme"),
            ("tcp://h:1", "no channel name"),
            ("tcp://h:1/", "empty"),
        ] {
            match parse_address(a) {
                Some(Err(ChannelError::BadAddress { reason, .. })) => {
                    assert!(reason.contains(why), "{a}: {reason}")
                }
                other => panic!("{a}: {other:?}"),
            }
        }
    }
}
