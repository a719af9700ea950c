//! Socket channels: the same channels, reached over a local socket or TCP.
//!
//! A channel whose name is an **address** lives in the process that created it (its *host*)
//! and is reachable over a socket:
//!
//! - `tcp://HOST:PORT/NAME`: the host listens on `HOST:PORT` (one listener serves every
//!   channel of that address); processes on other machines connect to it;
//! - `local://SOCKET/NAME`: the host listens on the local socket `SOCKET` (the `interprocess`
//!   crate; an abstract-namespace Unix socket on Linux); programs on the same machine that
//!   were not started by the same `Parallel` connect to it.
//!
//! In the host, and in every process of the host's network, the channel is an ordinary
//! shared-memory channel. Elsewhere, an end of it is a *proxy*: a private rendezvous channel in
//! the process's own shared memory, and a pump thread that carries each operation over the
//! connection and completes it only when the host confirms it. So a remote `write` returns
//! once the host's channel took the message (for a rendezvous channel: once a reader took it),
//! a remote reader acknowledges each message it took and gives back one it did not take, and
//! ends, alternation, retire and poison behave as for a local channel.
//!
//! Every connection starts with a mutual HMAC-SHA256 challenge-response on a shared key (like
//! `multiprocessing`'s authkey); the key never crosses the wire. Frames are
//! length-prefixed and limited ([`frame`]); the conversation is in [`proto`]. The book's
//! wire-format chapter describes both for implementers in other languages.
//!
//! # The key
//!
//! Every process reads its key once, from, in order: the environment variable
//! [`PYCSP_AUTHKEY`](ENV_KEY) (its bytes), or the file named by
//! [`PYCSP_AUTHKEY_FILE`](ENV_KEY_FILE) (its bytes, without a trailing newline). Without
//! either, the root process of a network makes a random 32-byte key and hands it to every
//! process it starts, placed ones included (through the launcher's environment: `ip netns
//! exec` and `srun` pass it on; with `ssh`, give each host the key in a file). A program
//! started by other means and given no key makes its own random one, so its connections are
//! refused with [`ChannelError::Auth`] on both sides, with a hint
//! naming these variables; [`key_env`] is the variable and value to give such a program.
//!
//! # Losing a peer
//!
//! A peer process that dies (even by `SIGKILL`) closes its connections at once: its peers get
//! [`ChannelError::PeerDied`] (readers after every
//! acknowledged message) or [`ChannelError::Connection`]
//! within milliseconds. A host that vanishes or a link that goes down is noticed within
//! [`LOSS_TIMEOUT`] plus the keep-alive probes (idle 1 s, 3 probes 1 s apart): under 10 s.

pub(crate) mod client;
pub mod frame;
pub(crate) mod key;
pub mod proto;
pub(crate) mod server;

pub use key::{key_env, ENV_KEY, ENV_KEY_FILE};
pub use server::next_connection_error;

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::error::ChannelError;

/// How long a connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a TCP peer may leave data unacknowledged, or fail keep-alive probes, before its
/// connection counts as lost (`TCP_USER_TIMEOUT` and keep-alive: idle 1 s, then 3 probes 1 s
/// apart). A killed process is noticed at once (its kernel closes the socket); a host that
/// vanished or a link that went down is noticed within about this long.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Connects to `endpoint`.
    pub(crate) fn connect(endpoint: &Endpoint) -> io::Result<Stream> {
        match endpoint {
            Endpoint::Tcp(a) => {
                let mut last = io::Error::other(format!("{a} resolves to no address"));
                for sa in a.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            tune_tcp(&s)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Endpoint::Local(n) => {
                use interprocess::local_socket::{prelude::*, GenericNamespaced};
                let name = n.as_str().to_ns_name::<GenericNamespaced>()?;
                let s = interprocess::local_socket::Stream::connect(name)?;
                Ok(Stream::Unix(local_to_unix(s)))
            }
        }
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

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
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
