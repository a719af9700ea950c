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
//! refused with [`ChannelError::Auth`](crate::ChannelError::Auth) on both sides, with a hint
//! naming these variables; [`key_env`] is the variable and value to give such a program.
//!
//! # Losing a peer
//!
//! A peer process that dies (even by `SIGKILL`) closes its connections at once: its peers get
//! [`ChannelError::PeerDied`](crate::ChannelError::PeerDied) (readers after every
//! acknowledged message) or [`ChannelError::Connection`](crate::ChannelError::Connection)
//! within milliseconds. A host that vanishes or a link that goes down is noticed within
//! [`LOSS_TIMEOUT`] plus the keep-alive probes (idle 1 s, 3 probes 1 s apart): under 10 s.

pub(crate) mod client;
pub(crate) mod key;
pub mod proto;
pub(crate) mod server;
pub(crate) mod stream;

pub use crate::frame;
pub use key::{key_env, ENV_KEY, ENV_KEY_FILE};
pub use server::next_connection_error;
pub use stream::{
    handshake_timeout, max_startups, ENV_HANDSHAKE_TIMEOUT, ENV_MAX_STARTUPS, HANDSHAKE_TIMEOUT,
    LOSS_TIMEOUT, MAX_STARTUPS,
};
pub(crate) use stream::{parse_address, tune_tcp, Address, Endpoint, Stream};
