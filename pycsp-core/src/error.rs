//! Errors, in one place. Each `Display` says what happened and, where it helps, what to do.

use serde::{Deserialize, Serialize};

/// The error for shared memory that could not be had (the arena could not be created, mapped
/// or inherited).
pub(crate) fn shared_memory(e: std::io::Error) -> ChannelError {
    ChannelError::SharedMemory(e.to_string())
}

/// Why an operation on a channel end failed.
///
/// `Poisoned` and `Retired` are the normal ways a CSP network shuts down; a `#[process]` that
/// returns `Err(ChannelError::Poisoned)` poisons all of its channel ends, as PyCSP's `@process`
/// does, so poison spreads through a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChannelError {
    /// The channel was poisoned: every blocked and every later operation on it fails.
    #[error("the channel was poisoned")]
    Poisoned,
    /// Every end on the other side retired (for a reader: after the buffer was drained).
    #[error("the channel was retired: every end on the other side has retired")]
    Retired,
    /// A process holding an end of the channel died (panic, abort, signal). Readers get this
    /// after reading every message that was written; writers at once.
    #[error("channel {channel:?}: process {process} (pid {pid}) died holding an end of it")]
    PeerDied {
        /// The channel's name.
        channel: String,
        /// The dead process's pid.
        pid: u32,
        /// The dead process's function, with its module path.
        process: String,
    },
    /// A `*_timeout` operation found nothing to do before its deadline.
    #[error("the operation timed out")]
    Timeout,
    /// An end was opened with a message type other than the channel's.
    #[error("channel {channel:?} carries {found}, but an end for {expected} was asked for")]
    TypeMismatch {
        /// The channel's name.
        channel: String,
        /// The type the caller asked for.
        expected: String,
        /// The type the channel was created with.
        found: String,
    },
    /// [`Channel::named`](crate::Channel::named) with a name a live channel of the network has.
    #[error("a channel named {0:?} already exists in this process network; use Channel::open to attach to it")]
    NameInUse(String),
    /// [`Channel::open`](crate::Channel::open) with a name nobody created.
    #[error("no channel named {0:?} exists in this process network")]
    NotFound(String),
    /// A channel name longer than the limit.
    #[error("channel name {name:?} is {len} bytes long; the limit is {max}")]
    NameTooLong {
        /// The name given.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value could not be encoded with MessagePack.
    #[error("could not encode a message for channel {channel:?}: {reason}")]
    Encode {
        /// The channel's name.
        channel: String,
        /// What rmp-serde said.
        reason: String,
    },
    /// The bytes received could not be decoded as the channel's type.
    #[error("could not decode a message on channel {channel:?} as {ty}: {reason}")]
    Decode {
        /// The channel's name.
        channel: String,
        /// The expected type.
        ty: String,
        /// What rmp-serde said.
        reason: String,
    },
    /// The encoded message does not fit in the network's shared memory.
    #[error(
        "a message of {len} bytes for channel {channel:?} does not fit; the limit is {max} bytes"
    )]
    TooLarge {
        /// The channel's name.
        channel: String,
        /// Encoded length.
        len: u64,
        /// The largest message that fits.
        max: u64,
    },
    /// The network's shared memory has no room for a channel's buffer (`capacity` slots of
    /// 128 bytes) or for a message's block, now or ever. Nothing was allocated: the shared
    /// memory is exactly as it was. Read messages (or drop [`SharedBlock`]s) to free blocks,
    /// or ask for less; the size of the shared memory follows the process's memory limits
    /// (see `shm/LAYOUT.md` and the book's troubleshooting chapter).
    ///
    /// [`SharedBlock`]: crate::SharedBlock
    #[error("{}", capacity_message(channel, *needed, *free, *size))]
    Capacity {
        /// The channel's name (empty for a [`SharedBlock`](crate::SharedBlock)).
        channel: String,
        /// Bytes asked for (`u64::MAX` when the size does not even fit in 64 bits).
        needed: u64,
        /// Bytes of the network's shared memory not yet allocated.
        free: u64,
        /// Bytes of the network's shared memory in all.
        size: u64,
    },
    /// A socket channel address that cannot be used.
    #[error("bad channel address {address:?}: {reason}")]
    BadAddress {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A socket connection could not be made, or was lost (the peer process died, its host
    /// vanished or the link went down; see `pycsp_core::net::LOSS_TIMEOUT`).
    #[error("socket channel {address:?}: {reason}")]
    Connection {
        /// The channel's address.
        address: String,
        /// What happened.
        reason: String,
    },
    /// The peers of a socket channel do not share the same key.
    #[error("socket channel {address:?}: {reason}")]
    Auth {
        /// The channel's address.
        address: String,
        /// What happened, and how to give both sides the key.
        reason: String,
    },
    /// A socket peer broke the protocol (a malformed, oversized, unknown or unexpected frame, or
    /// a message that is not the channel's type); the connection was closed.
    #[error("socket channel {address:?}: protocol error: {reason}")]
    Protocol {
        /// The channel's address.
        address: String,
        /// What was wrong.
        reason: String,
    },
    /// The shared memory of the network could not be created or mapped.
    #[error("shared memory: {0}")]
    SharedMemory(String),
}

fn capacity_message(channel: &str, needed: u64, free: u64, size: u64) -> String {
    let what = if channel.is_empty() {
        "a shared block".to_string()
    } else {
        format!("channel {channel:?}")
    };
    let needed = if needed == u64::MAX {
        "more than 2^64 bytes".to_string()
    } else {
        format!("{needed} bytes")
    };
    format!(
        "{what} needs {needed} of the network's shared memory, which has {free} of its {size} \
         bytes free; read messages or drop blocks to free some, or ask for less (its size \
         follows the memory limits: see PYCSP_ARENA_SIZE in the book's troubleshooting chapter)"
    )
}

/// How a process ended when it did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Failure {
    /// The process panicked; the panic message.
    Panicked(String),
    /// The process exited with this code before returning a value.
    Exited(i32),
    /// The process was killed by this signal (9 is SIGKILL, 6 is SIGABRT).
    Signaled(i32),
    /// A placed process (see `Placement`) whose connection was lost: its host or the link to
    /// it went away; its launcher was killed.
    Lost(String),
    /// The process could not be run: its arguments or its return value could not cross the
    /// process boundary, or the binary has no process of that name.
    Broken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panicked(m) => write!(f, "panicked: {m}"),
            Failure::Exited(c) => write!(f, "exited with code {c} before returning"),
            Failure::Signaled(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
            Failure::Broken(m) => write!(f, "could not run: {m}"),
            Failure::Lost(m) => write!(f, "was lost: {m}"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// The error of the process combinators ([`Parallel`](crate::Parallel),
/// [`Sequence`](crate::Sequence), [`Spawn`](crate::Spawn)) and of channel creation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// A channel operation failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A process did not return a value.
    #[error("process {name} (pid {pid}) {failure}")]
    ProcessFailed {
        /// The process's function, with its module path.
        name: String,
        /// Its OS process id.
        pid: u32,
        /// How it ended.
        failure: Failure,
    },
    /// A process could not be started (its arguments could not be encoded, the operating
    /// system refused, a placed process did not connect back). The channels of the ends
    /// among its arguments are poisoned, so that its peers stop instead of taking its
    /// absence for a clean end; the processes of the same `Parallel` or `Spawn` that had
    /// started are poisoned the same way and waited for.
    #[error("could not start process {name}: {reason}")]
    Spawn {
        /// The process's function, with its module path.
        name: String,
        /// What the operating system said.
        reason: String,
    },
}

/// Why [`ChannelOut::try_write`](crate::ChannelOut::try_write) did not write: crossbeam's
/// `TrySendError<T>`. Whenever the message was not delivered the value comes back, with the
/// channel ends and shared blocks it carries still live and owned by the caller.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryWriteError<T> {
    /// The buffer is full, or, on a rendezvous channel, no reader was waiting to take the
    /// message (it was offered and withdrawn): nothing was written. The value.
    Full(T),
    /// The channel refuses writes (every reader retired, it was poisoned, a peer died) or the
    /// value could not be written (it does not encode, it is too large): nothing was
    /// written. The value, and why.
    Failed(T, ChannelError),
    /// The message was placed and a reader may have taken it when the channel failed (poison
    /// during a rendezvous, or a reader that claimed it and died): the one case where it is
    /// not known whether it was delivered (see the book's delivery contract). The value went
    /// with the message, so it cannot come back.
    Uncertain(ChannelError),
}

/// Why [`ChannelOut::write_timeout`](crate::ChannelOut::write_timeout) or
/// [`write_deadline`](crate::ChannelOut::write_deadline) did not write: crossbeam's
/// `SendTimeoutError<T>`. Whenever the message was not delivered the value comes back, with
/// the channel ends and shared blocks it carries still live and owned by the caller.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteTimeoutError<T> {
    /// The deadline passed with the message not placed (a full buffer) or, on a rendezvous
    /// channel, not taken: it was withdrawn, and no reader will ever read it. The value.
    Timeout(T),
    /// As [`TryWriteError::Failed`]: nothing was written. The value, and why.
    Failed(T, ChannelError),
    /// As [`TryWriteError::Uncertain`]: the message may have been taken.
    Uncertain(ChannelError),
}

/// Why [`ChannelIn::try_read`](crate::ChannelIn::try_read) read nothing: crossbeam's
/// `TryRecvError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryReadError {
    /// No message was there (and, on a rendezvous channel, no writer was offering one).
    #[error("no message was waiting in the channel")]
    Empty,
    /// The channel ended or failed: `Retired` once every writer retired and the buffer is
    /// drained, `Poisoned`, `PeerDied`, a message that does not decode...
    #[error(transparent)]
    Failed(ChannelError),
}

macro_rules! value_back {
    ($name:ident, $would_block:ident, $what:literal) => {
        impl<T> $name<T> {
            /// The value, when it came back (every case but `Uncertain`).
            pub fn into_inner(self) -> Option<T> {
                match self {
                    $name::$would_block(v) | $name::Failed(v, _) => Some(v),
                    $name::Uncertain(_) => None,
                }
            }

            /// The error without the value: [`ChannelError::Timeout`] for
            #[doc = concat!("`", stringify!($would_block), "`")]
            /// (the operation found nothing to do by its deadline, which for a `try_` one is
            /// now), else the channel's error. In a function that returns `ChannelError`:
            /// `.map_err(|e| e.error())?`. (There is no `From` conversion to `ChannelError`:
            /// it would make `?` ambiguous in closures whose error type is inferred.)
            pub fn error(&self) -> ChannelError {
                match self {
                    $name::$would_block(_) => ChannelError::Timeout,
                    $name::Failed(_, e) | $name::Uncertain(e) => e.clone(),
                }
            }
        }

        impl<T> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $name::$would_block(_) => write!(f, "{}(..)", stringify!($would_block)),
                    $name::Failed(_, e) => write!(f, "Failed(.., {e:?})"),
                    $name::Uncertain(e) => write!(f, "Uncertain({e:?})"),
                }
            }
        }

        impl<T> std::fmt::Display for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $name::$would_block(_) => write!(f, $what),
                    $name::Failed(_, e) => write!(f, "{e}"),
                    $name::Uncertain(e) => {
                        write!(f, "{e} (the message may have been taken)")
                    }
                }
            }
        }

        impl<T> std::error::Error for $name<T> {}

        /// For `?` in a function that returns `pycsp::Error`: the value is dropped.
        impl<T> From<$name<T>> for Error {
            fn from(e: $name<T>) -> Error {
                Error::Channel(e.error())
            }
        }
    };
}

value_back!(
    TryWriteError,
    Full,
    "the channel is full (or, on a rendezvous channel, no reader was waiting)"
);
value_back!(
    WriteTimeoutError,
    Timeout,
    "the write timed out: the message was withdrawn"
);

impl TryReadError {
    /// The error as a [`ChannelError`]: `Empty` is [`ChannelError::Timeout`] (nothing was
    /// there by the deadline, which for a `try_` operation is now). In a function that
    /// returns `ChannelError`: `.map_err(|e| e.error())?`.
    pub fn error(&self) -> ChannelError {
        match self {
            TryReadError::Empty => ChannelError::Timeout,
            TryReadError::Failed(e) => e.clone(),
        }
    }
}

/// For `?` in a function that returns `pycsp::Error`.
impl From<TryReadError> for Error {
    fn from(e: TryReadError) -> Error {
        Error::Channel(e.error())
    }
}

/// Why [`SharedArray::join`](crate::array::SharedArray::join) refused its pieces; they come
/// back, unchanged, with [`into_pieces`](Self::into_pieces).
pub struct JoinError<P> {
    reason: String,
    pieces: Vec<P>,
}

impl<P> JoinError<P> {
    pub(crate) fn new(reason: String, pieces: Vec<P>) -> JoinError<P> {
        JoinError { reason, pieces }
    }

    /// What was wrong: pieces of different arrays, a piece missing, pieces that overlap.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The pieces given to `join`, in the order given.
    pub fn into_pieces(self) -> Vec<P> {
        self.pieces
    }
}

impl<P> std::fmt::Debug for JoinError<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinError")
            .field("reason", &self.reason)
            .field("pieces", &self.pieces.len())
            .finish()
    }
}

impl<P> std::fmt::Display for JoinError<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot join the pieces of a shared array: {}",
            self.reason
        )
    }
}

impl<P> std::error::Error for JoinError<P> {}
