//! Socket channels: the same channels, reached over a local socket or TCP.
//!
//! A channel whose name is an **address** lives in the process that created it (its *host*)
//! and is reachable over a socket:
//!
//! - `tcp://HOST:PORT/NAME`: the host listens on `HOST:PORT` (one listener serves every
//!   channel of that address); processes on other machines connect to it. Port 0 listens on
//!   a port the system picks, which the channel's name then says;
//! - `local://SOCKET/NAME`: the host listens on the local socket `SOCKET` (the `interprocess`
//!   crate; an abstract-namespace Unix socket on Linux); programs on the same machine that
//!   were not started by the same `Parallel` connect to it.
//!
//! In the host, and in every process of the host's network, the channel is an ordinary
//! shared-memory channel. Elsewhere, an end of it is a *proxy*: a private channel in the
//! process's own shared memory, and a pump thread that carries its operations over the
//! connection. A remote `write` on a rendezvous channel returns once a reader took the message;
//! on a buffered channel once the message is in the channel's buffer, whose part in the
//! writing process (the proxy, of the channel's capacity, and at most as many messages sent and
//! not yet confirmed) the pump streams to the host in batches; a lost connection then fails
//! the writer with [`ChannelError::ConnectionLost`](crate::ChannelError::ConnectionLost),
//! which counts what the host confirmed, and `ChannelOut::flush` waits for the confirmations.
//! A remote reader acknowledges each message it took and gives back one it did not take, and
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
//! [`PYCSP_AUTHKEY_FILE`](ENV_KEY_FILE) (its bytes, without a trailing newline; refused, with
//! an error that says `chmod 600`, if group or others may read or write it). Without either,
//! the root process of a network makes a random 32-byte key. A process hands its key to every
//! process it starts, never through the environment or a command line: a local child reads it
//! from an inherited descriptor, a placed one from its standard input (`ssh`, `srun` and `ip
//! netns exec` pass it on), and `PYCSP_AUTHKEY` is removed from a started process's
//! environment before its code runs, so programs it starts do not see the key. A program
//! started by other means and given no key makes its own random one, so its connections are
//! refused with [`ChannelError::Auth`](crate::ChannelError::Auth) on both sides, with a hint
//! naming these variables; [`key_env`] is the variable and value to give such a program.
//!
//! # Limits and deadlines
//!
//! Each step of opening a connection (connecting, the handshake, `Open` and its answer, a
//! placed process's call-back) waits at most [`handshake_timeout`] ([`HANDSHAKE_TIMEOUT`],
//! 5 s, or [`ENV_HANDSHAKE_TIMEOUT`]); a host authenticates at most [`max_startups`]
//! connections at once ([`MAX_STARTUPS`], 64, or [`ENV_MAX_STARTUPS`]) and closes the oldest
//! when one more comes or when it runs out of descriptors; a message is at most
//! [`frame::MAX_MESSAGE`] bytes ([`ChannelError::TooLarge`](crate::ChannelError::TooLarge) in
//! the writer, before anything is sent). The book's sockets chapter has the table.
//!
//! # Losing a peer
//!
//! A peer process that dies (even by `SIGKILL`) closes its connections at once. A host that
//! loses a **client** (a program that opened the channel's address itself) retires that
//! client's end, puts back a message it had not acknowledged, records the loss for
//! [`next_connection_error`], and serves every other client. A host that loses a process of
//! its own network (one that was handed its end, such as a placed child) marks the channel as
//! held by a dead process, as in shared memory: its peers get
//! [`ChannelError::PeerDied`](crate::ChannelError::PeerDied) (readers after every
//! acknowledged message). A process whose host dies gets
//! [`ChannelError::Connection`](crate::ChannelError::Connection) within milliseconds. A host
//! that vanishes or a link that goes down is noticed within [`LOSS_TIMEOUT`] plus the
//! keep-alive probes (idle 1 s, 3 probes 1 s apart): under 10 s. A host that still holds
//! the connection but does not answer (stopped, hung) is noticed by a remote writer that
//! asks its message back (a deadline, a select's other guard): without an answer within
//! [`LOSS_TIMEOUT`] the connection counts as lost, and the write is
//! [`Uncertain`](crate::WriteTimeoutError::Uncertain): the host had the message.

pub(crate) mod client;
pub(crate) mod direct;
pub(crate) mod key;
pub mod proto;
pub(crate) mod server;
pub(crate) mod stream;

pub use crate::frame;
pub use client::{ENV_HOLD_MS, HOLD_FOR_USER};
pub use key::{key_env, ENV_KEY, ENV_KEY_FILE};
pub use proto::READ_WINDOW;
pub use server::next_connection_error;
pub use stream::{
    handshake_timeout, max_startups, ENV_HANDSHAKE_TIMEOUT, ENV_MAX_STARTUPS, HANDSHAKE_TIMEOUT,
    LOSS_TIMEOUT, MAX_STARTUPS,
};
pub(crate) use stream::{parse_address, tune_tcp, Address, Endpoint, Stream};
