//! The runtime of [pycsp](https://docs.rs/pycsp): Communicating Sequential Processes across
//! real OS processes.
//!
//! Use it through the `pycsp` crate, which adds the `#[process]` attribute. The parts:
//! - [`channel`]: typed, named channels on shared memory ([`Channel`], [`ChannelIn`],
//!   [`ChannelOut`]);
//! - [`process`]: [`Process`], [`Parallel`], [`Sequence`], [`Spawn`];
//! - [`alt`]: [`Alternation`] and the [`select!`] macro, with timers ([`after`], [`tick`]);
//! - shared memory: [`SharedBlock`] (bytes), [`SharedArray`] (typed arrays that split into
//!   pieces for workers), [`SharedAtomicU64`] and friends (`multiprocessing.Value`);
//! - errors: [`ChannelError`], [`Error`], [`Failure`];
//! - seeing a network run: [`tracing`](https://docs.rs/tracing) events (targets
//!   `pycsp::process`, `pycsp::channel`) and a message trace of every process in Chrome's
//!   trace-event JSON when `PYCSP_TRACE` names a file (the book's "Seeing your network").
//!
//! Shared-memory layout, the wait/wake protocol and the module map (which module owns what,
//! and which it may use) are documented in one place, `pycsp-core/src/shm/LAYOUT.md`, the
//! documentation of the private `shm` module and the book's layout chapter.
#![warn(missing_docs)]

pub mod alt;
pub mod array;
pub mod block;
pub mod channel;
mod error;
pub mod frame;
mod message;
pub mod net;
pub mod observe;
pub mod process;
mod runtime;
mod shm;
mod sys;
mod trace;
pub mod value;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use alt::{after, at, never, tick, Alternation, Chosen, Timer};
pub use array::SharedArray;
pub use block::{Bytes, SharedBlock};
/// The plain-old-data trait of [`SharedArray`] elements ([`bytemuck::Pod`]).
pub use bytemuck;
pub use channel::{shared_memory_usage, Channel, ChannelIn, ChannelOut, Usage};
pub use error::{
    AsChannelError, ChannelError, Error, Failure, JoinError, Outcome, Outcomes, TryReadError,
    TryWriteError, WriteTimeoutError,
};
/// Placements from a Slurm allocation ([`slurm::Allocation`]).
pub use observe::{network_picture, ChannelView, Network, Picture, ProcessView, Snapshot};
pub use process::slurm;
pub use process::{
    replicate, AsyncResult, Imap, Parallel, Placement, Pool, PoolFn, Process, ProcessSet, Sequence,
    Spawn, Spawned,
};
/// `#[serde(with = "pycsp::serde_bytes")]` sends a `Vec<u8>` field as bytes, like [`Bytes`].
pub use serde_bytes;
pub use value::{SharedAtomicF64, SharedAtomicI64, SharedAtomicU64};

// crossbeam-channel's `select!` over an `Alternation` (see `alt/select.rs` for what the arms
// expand to): defined here, in the crate root, where `#[macro_export]` puts them.

/// Waits until one of several operations can proceed, performs it and runs its arm: the
/// `select!` of crossbeam-channel, across processes, built on [`Alternation`]. Among the
/// operations that can proceed it chooses one uniformly at random
/// ([`Alternation::alt_select`]); [`pri_select!`](crate::pri_select!) takes the first in
/// order and [`fair_select!`](crate::fair_select!) the least recently chosen channel.
///
/// Arms, each `=> expression,` or `=> { block }`:
///
/// - `recv(r) -> msg => ...`: `r` is a [`ChannelIn`] (or a [`Timer`]: [`after`](crate::after),
///   [`tick`](crate::tick), ...); `msg` is `Ok(message)`, or `Err` once the channel retired,
///   was poisoned or lost a peer (as crossbeam's `Err(RecvError)` once it disconnects);
/// - `send(s, value) -> res => ...`: `s` is a [`ChannelOut`]; `res` is `Ok(())` once
///   `value` was written (on a rendezvous channel: taken by a reader), or `Err` once every
///   reader retired or the channel failed. If another arm runs, `value` is not written;
/// - `default => ...`: runs when no other operation can proceed now (at most one);
/// - `default(timeout) => ...`: runs when no other operation could proceed for `timeout`.
///
/// The arms' bodies run after the select, outside any closure: they may `break`, `continue`,
/// `return` or use `?`. The select evaluates to the body that ran.
///
/// ```
/// use std::time::Duration;
/// use pycsp_core::{after, select, Channel};
///
/// let numbers = Channel::<u64>::buffered(4)?;
/// let words = Channel::<String>::buffered(4)?;
/// let (n_in, w_in) = (numbers.reader(), words.reader());
/// words.writer().write("hi".to_string())?;
///
/// let got = select! {
///     recv(n_in) -> n => format!("number {}", n?),
///     recv(w_in) -> w => format!("word {}", w?),
///     recv(after(Duration::from_secs(1))) -> _ => "nothing".to_string(),
/// };
/// assert_eq!(got, "word hi");
///
/// let got = select! {
///     recv(n_in) -> n => Some(n?),
///     default => None,
/// };
/// assert_eq!(got, None);
/// # Ok::<(), pycsp_core::ChannelError>(())
/// ```
///
/// # Panics
///
/// If the select cannot work at all: the network's shared memory has no room for this
/// thread's waiter record, or its only arms are timers that are spent (an
/// [`after`](crate::after) timer fired before) and no operation can ever proceed.
///
#[macro_export]
macro_rules! select {
    ($($arms:tt)+) => {
        $crate::__select!(alt_select; [] $($arms)+)
    };
}

/// [`select!`] that takes the first operation, in the order of the arms, that can proceed
/// ([`Alternation::pri_select`](crate::Alternation::pri_select)).
#[macro_export]
macro_rules! pri_select {
    ($($arms:tt)+) => {
        $crate::__select!(pri_select; [] $($arms)+)
    };
}

/// [`select!`] that takes, among the operations that can proceed, the one whose channel this
/// thread chose least recently
/// ([`Alternation::fair_select`](crate::Alternation::fair_select)).
#[macro_export]
macro_rules! fair_select {
    ($($arms:tt)+) => {
        $crate::__select!(fair_select; [] $($arms)+)
    };
}

/// The arms of [`select!`], one at a time: each becomes `(kind slot source (args) (pattern)
/// body)`, where `slot` and `source` are names made by this step (so distinct per arm).
#[doc(hidden)]
#[macro_export]
macro_rules! __select {
    (@bind recv $slot:ident $src:ident $r:expr) => {
        let $src = &$r;
        let mut $slot = ::std::option::Option::None;
    };
    (@bind send $slot:ident $src:ident $s:expr, $v:expr) => {
        let $src = &$s;
        let mut $slot = ::std::option::Option::None;
    };
    (@bind $kind:ident $slot:ident $src:ident $($arg:tt)*) => {
        let mut $slot = ::std::option::Option::None;
    };
    (@guard $alt:ident recv $slot:ident $src:ident $r:expr) => {
        $crate::alt::RecvGuard::add_recv($src, $alt, |got| $slot = ::std::option::Option::Some(got))
    };
    (@guard $alt:ident send $slot:ident $src:ident $s:expr, $v:expr) => {
        $crate::alt::SendGuard::add_send(
            $src,
            $alt,
            $v,
            |got| $slot = ::std::option::Option::Some(got),
        )
    };
    (@guard $alt:ident timeout $slot:ident $src:ident $t:expr) => {
        $alt.timeout($t, || $slot = ::std::option::Option::Some(()))
    };
    (@guard $alt:ident default $slot:ident $src:ident) => {
        $alt.otherwise(|| $slot = ::std::option::Option::Some(()))
    };
    // recv
    ($policy:ident; [$($done:tt)*] recv($r:expr) -> $p:pat => $body:block, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (recv slot src ($r) ($p) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] recv($r:expr) -> $p:pat => $body:block $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (recv slot src ($r) ($p) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] recv($r:expr) -> $p:pat => $body:expr, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (recv slot src ($r) ($p) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] recv($r:expr) -> $p:pat => $body:expr) => {
        $crate::__select!($policy; [$($done)* (recv slot src ($r) ($p) $body)])
    };
    // send
    ($policy:ident; [$($done:tt)*] send($s:expr, $v:expr) -> $p:pat => $body:block, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (send slot src ($s, $v) ($p) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] send($s:expr, $v:expr) -> $p:pat => $body:block $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (send slot src ($s, $v) ($p) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] send($s:expr, $v:expr) -> $p:pat => $body:expr, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (send slot src ($s, $v) ($p) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] send($s:expr, $v:expr) -> $p:pat => $body:expr) => {
        $crate::__select!($policy; [$($done)* (send slot src ($s, $v) ($p) $body)])
    };
    // default(timeout)
    ($policy:ident; [$($done:tt)*] default($t:expr) => $body:block, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (timeout slot src ($t) (_) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] default($t:expr) => $body:block $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (timeout slot src ($t) (_) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] default($t:expr) => $body:expr, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (timeout slot src ($t) (_) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] default($t:expr) => $body:expr) => {
        $crate::__select!($policy; [$($done)* (timeout slot src ($t) (_) $body)])
    };
    // default
    ($policy:ident; [$($done:tt)*] default => $body:block, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (default slot src () (_) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] default => $body:block $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (default slot src () (_) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] default => $body:expr, $($rest:tt)*) => {
        $crate::__select!($policy; [$($done)* (default slot src () (_) $body)] $($rest)*)
    };
    ($policy:ident; [$($done:tt)*] default => $body:expr) => {
        $crate::__select!($policy; [$($done)* (default slot src () (_) $body)])
    };
    // Every arm parsed: build the alternation, select, run the arm whose slot is set.
    ($policy:ident; [$(($kind:ident $slot:ident $src:ident ($($arg:tt)*) ($pat:pat) $body:expr))+]) => {{
        $( $crate::__select!(@bind $kind $slot $src $($arg)*); )+
        let alt = $crate::alt::Alternation::new();
        $( let alt = $crate::__select!(@guard alt $kind $slot $src $($arg)*); )+
        $crate::alt::__selected(alt.$policy());
        $(
            if let ::std::option::Option::Some(got) = $slot {
                let $pat = got;
                $body
            } else
        )+
        {
            ::std::unreachable!("select!: one arm fired")
        }
    }};
}
