//! Addresses of socket channels and the connections to them: TCP, or a local (Unix) socket.

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
