//! Errors, in one place. Each `Display` says what happened and, where it helps, what to do.

use serde::{Deserialize, Serialize};

/// The message of a panic's payload (`panic!` with a literal or with arguments), for the
/// reports of a panicked process, pool worker or socket pump.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_string())
}

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
    /// The operation waited in a deadlocked network: every process of the network was blocked
    /// in a channel operation, a select or a join that no live process could complete
    /// (`PYCSP_DEADLOCK=fail`, the default). The report of who waited on what is in the
    /// [`Error::Deadlock`] of the `Parallel` that started the network.
    #[error("the network is deadlocked: every process waits for another (the report is in the error of the Parallel that started them)")]
    Deadlock,
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
    /// The connection of a buffered remote writing end was lost (its host died, vanished or
    /// the link went down) while messages it had accepted were not yet confirmed by the host.
    ///
    /// A buffered remote `write` returns `Ok` once the message is in the channel's buffer, whose
    /// part in the writing process holds the messages the host has not confirmed yet (at most
    /// twice the channel's capacity: the writer's buffer and those on their way). The host confirms messages in the order they were written: the
    /// first `confirmed` messages written through this connection (this end and its clones)
    /// reached the host's channel; the `unconfirmed` ones written after them, with `Ok`, may
    /// or may not have (the host may have placed some before it was lost). Nothing is sent
    /// twice. A writer that must know uses `flush` before relying on its messages.
    #[error(
        "socket channel {address:?}: {reason}; the host confirmed the first {confirmed} \
         messages written through this connection, the {unconfirmed} written after them \
         were not confirmed"
    )]
    ConnectionLost {
        /// The channel's address.
        address: String,
        /// What happened.
        reason: String,
        /// Messages the host confirmed, counted from the connection's first.
        confirmed: u64,
        /// Messages accepted by `write` after those, not confirmed.
        unconfirmed: u64,
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
    ///
    /// From a combinator that ran several processes, `outcomes` holds how **every** one of
    /// them ended, in the order of the set (a tuple's members in order, a `Vec` or array
    /// element by element): the values the others returned are not lost with the failure
    /// (see [`Outcomes`]; `Spawned::join_outcomes` gives them typed instead). It is empty
    /// when the error concerns one process only.
    ProcessFailed {
        /// The process's function, with its module path.
        name: String,
        /// Its OS process id.
        pid: u32,
        /// How it ended.
        failure: Failure,
        /// How every process of the set ended, this one included (empty for one process).
        #[serde(default)]
        outcomes: Outcomes,
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
    /// A worker of a [`Pool`](crate::Pool) did not return the results of a call: it panicked
    /// in the function (on item `item`), or died (killed, exited) while it ran items
    /// `items.0..items.1` of the call (`item` is then the first of them). The pool has
    /// replaced the worker; the call's other results are dropped.
    #[error("pool worker {worker} (pid {pid}) running {function} on item {item} {failure}")]
    PoolWorker {
        /// The worker's number in the pool (0 to the pool's size - 1).
        worker: usize,
        /// The worker's OS process id.
        pid: u32,
        /// The pool function, with its module path.
        function: String,
        /// The position of the item in the call's input (the first item of `items` when the
        /// worker died without saying which item it was running).
        item: usize,
        /// The items the worker had taken and not answered (a chunk, or one item).
        items: (usize, usize),
        /// How the worker ended.
        failure: Failure,
    },
    /// The network deadlocked while this combinator waited for its processes: every process
    /// was blocked in a channel operation, a select or a join that no live process could
    /// complete. `report` says who waited on what and who held the other ends; `picture`
    /// names a file with a picture of the network, if one was written (`PYCSP_PICTURE`).
    #[error("{report}{}", picture.as_ref().map(|p| format!("\n(a picture of the network: {p})")).unwrap_or_default())]
    Deadlock {
        /// Who waited on what, one line per process.
        report: String,
        /// The picture written for it, if any.
        picture: Option<String>,
    },
    /// A [`Pool`](crate::Pool) call that cannot be made: the pool was terminated, or the
    /// function is not a pool function of this binary.
    #[error("pool: {0}")]
    Pool(String),
}

impl Error {
    /// How every process of the set ended, when this error is a process failure from a
    /// combinator that ran several (see [`Error::ProcessFailed`]).
    pub fn outcomes(&self) -> Option<&Outcomes> {
        match self {
            Error::ProcessFailed { outcomes, .. } if !outcomes.is_empty() => Some(outcomes),
            _ => None,
        }
    }
}

/// How each process of a set ended, in the order of the set: carried by
/// [`Error::ProcessFailed`] so that when one process of a `Parallel` fails, what the others
/// returned is still there to take.
///
/// ```ignore
/// match Parallel((count(jobs.reader()), fragile(out.writer()))) {
///     Err(e) => {
///         let outcomes = e.outcomes().expect("two processes ran");
///         let counted: u64 = outcomes[0].value()?;   // the survivor's return value
///         assert!(outcomes[1].failure().is_some());  // how the other one failed
///     }
///     Ok(_) => {}
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes(Vec<Outcome>);

impl Outcomes {
    pub(crate) fn new(v: Vec<Outcome>) -> Outcomes {
        Outcomes(v)
    }

    /// Every outcome, in the order of the set.
    pub fn iter(&self) -> std::slice::Iter<'_, Outcome> {
        self.0.iter()
    }

    /// The outcomes of the processes that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Outcome> {
        self.0.iter().filter(|o| o.failure.is_some())
    }
}

impl std::ops::Deref for Outcomes {
    type Target = [Outcome];
    fn deref(&self) -> &[Outcome] {
        &self.0
    }
}

impl IntoIterator for Outcomes {
    type Item = Outcome;
    type IntoIter = std::vec::IntoIter<Outcome>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// How one process of a set ended: the value it returned (encoded, decoded by
/// [`value`](Self::value) as the process's return type), or how it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The process's function, with its module path.
    pub process: String,
    /// Its OS process id.
    pub pid: u32,
    /// Its return value, MessagePack-encoded, if it returned one.
    #[serde(with = "serde_bytes")]
    returned: Vec<u8>,
    /// How it failed, if it did not return a value.
    failure: Option<Failure>,
}

impl Outcome {
    pub(crate) fn returned(process: String, pid: u32, bytes: Vec<u8>) -> Outcome {
        Outcome {
            process,
            pid,
            returned: bytes,
            failure: None,
        }
    }

    pub(crate) fn failed(process: String, pid: u32, failure: Failure) -> Outcome {
        Outcome {
            process,
            pid,
            returned: Vec::new(),
            failure: Some(failure),
        }
    }

    /// How the process failed, or `None` if it returned a value.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The value the process returned, decoded as `R` (its return type), or the error of a
    /// process that did not return one (or whose value is not an `R`).
    pub fn value<R: serde::de::DeserializeOwned>(&self) -> Result<R, Error> {
        let fail = |failure| Error::ProcessFailed {
            name: self.process.clone(),
            pid: self.pid,
            failure,
            outcomes: Outcomes::default(),
        };
        if let Some(f) = &self.failure {
            return Err(fail(f.clone()));
        }
        rmp_serde::from_slice(&self.returned).map_err(|e| {
            fail(Failure::Broken(format!(
                "its return value could not be decoded as {}: {e}",
                std::any::type_name::<R>()
            )))
        })
    }
}

/// What an error a `#[process]` returns says about its channels: the [`ChannelError`] it
/// stands for, if any. A process that returns `Err(e)` where `e` stands for
/// [`ChannelError::Poisoned`] poisons all of its channel ends (as PyCSP's `@process` does,
/// so poison spreads through a network); one that stands for [`ChannelError::PeerDied`]
/// passes the crash on to its peers.
///
/// `#[process]` finds this out for any error type:
/// - types that implement this trait: [`ChannelError`], [`Error`] (its `Channel` variant),
///   `String` and `&str` (the text of `Poisoned`, as `e.to_string()` makes it),
///   `Box<dyn std::error::Error>` (with or without `Send + Sync`, downcast),
///   `std::io::Error` (its inner error), `Infallible`, `()`;
/// - otherwise any `std::error::Error + 'static` type, or a type that is
///   `AsRef<dyn std::error::Error + Send + Sync>` (as `anyhow::Error`): the error and its
///   chain of [`source`](std::error::Error::source)s are searched for a `ChannelError` or an
///   [`Error`], and an error whose text is that of `Poisoned` counts as poisoned (an
///   `#[error(transparent)]` wrapper);
/// - any other error type is a compile error that asks for an implementation of this trait.
///
/// ```
/// use pycsp_core::{AsChannelError, ChannelError};
///
/// enum JobError {
///     Channel(ChannelError),
///     BadInput(String),
/// }
///
/// impl AsChannelError for JobError {
///     fn as_channel_error(&self) -> Option<ChannelError> {
///         match self {
///             JobError::Channel(e) => Some(e.clone()),
///             JobError::BadInput(_) => None,
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "a #[process] returning `Result<_, {Self}>` cannot tell whether `{Self}` means its channels were poisoned",
    label = "the error type of this process's Result",
    note = "implement `pycsp::AsChannelError` for `{Self}` (return None for errors that are not about channels), or return an error type that implements `std::error::Error`"
)]
pub trait AsChannelError {
    /// The channel error this error stands for, if any.
    fn as_channel_error(&self) -> Option<ChannelError>;
}

impl AsChannelError for ChannelError {
    fn as_channel_error(&self) -> Option<ChannelError> {
        Some(self.clone())
    }
}

impl AsChannelError for Error {
    fn as_channel_error(&self) -> Option<ChannelError> {
        match self {
            Error::Channel(e) => Some(e.clone()),
            _ => None,
        }
    }
}

/// The channel error named by `text`, when it is the text of `Poisoned`.
fn from_text(text: &str) -> Option<ChannelError> {
    (text == ChannelError::Poisoned.to_string()).then_some(ChannelError::Poisoned)
}

impl AsChannelError for String {
    fn as_channel_error(&self) -> Option<ChannelError> {
        from_text(self)
    }
}

impl AsChannelError for &str {
    fn as_channel_error(&self) -> Option<ChannelError> {
        from_text(self)
    }
}

impl AsChannelError for Box<dyn std::error::Error> {
    fn as_channel_error(&self) -> Option<ChannelError> {
        in_chain(&**self)
    }
}

impl AsChannelError for Box<dyn std::error::Error + Send + Sync> {
    fn as_channel_error(&self) -> Option<ChannelError> {
        in_chain(&**self)
    }
}

impl AsChannelError for std::io::Error {
    fn as_channel_error(&self) -> Option<ChannelError> {
        match self.get_ref() {
            Some(inner) => in_chain(inner),
            None => None,
        }
    }
}

impl AsChannelError for std::convert::Infallible {
    fn as_channel_error(&self) -> Option<ChannelError> {
        None
    }
}

impl AsChannelError for () {
    fn as_channel_error(&self) -> Option<ChannelError> {
        None
    }
}

/// The channel error that `e` or one of its sources is, or whose text `e` has.
pub(crate) fn in_chain(e: &(dyn std::error::Error + 'static)) -> Option<ChannelError> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<ChannelError>() {
            return Some(c.clone());
        }
        if let Some(Error::Channel(c)) = e.downcast_ref::<Error>() {
            return Some(c.clone());
        }
        next = e.source();
    }
    from_text(&e.to_string())
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
    /// during a rendezvous, a reader that claimed it and died, a socket host that had it and
    /// was lost or did not answer, a remote reader that had it and did not answer): the one
    /// case where it is
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
