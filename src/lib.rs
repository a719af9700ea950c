//! # pycsp: Communicating Sequential Processes across real OS processes
//!
//! A `#[process]` function runs in its own OS process; [`Parallel`] starts processes and
//! joins them; processes talk only through typed [`Channel`]s in shared memory (or over
//! sockets), with PyCSP's semantics. For people who know Python's `multiprocessing` or
//! PyCSP and want the same with CSP's discipline and native speed. **Linux only** (it is
//! built on `memfd`, `futex`, `pidfd` and re-executing `/proc/self/exe`).
//!
//! # Overview
//!
//! - **Processes**: [`macro@process`] turns a function into a constructor of a [`Process`];
//!   [`Parallel`], [`Sequence`] and [`Spawn`] run sets of them (one, a `Vec`, an array, a
//!   tuple) and hand back their return values in the same shape. A failure names the
//!   process and keeps how every other process of the set ended ([`Error::outcomes`],
//!   [`Spawned::join_outcomes`]).
//! - **Channels**: [`Channel::new`] (rendezvous), [`Channel::buffered`], named ones for
//!   [`Channel::open`]; ends [`ChannelOut`] and [`ChannelIn`] are ordinary arguments of a
//!   process. Any number of readers and writers; each message reaches exactly one reader.
//! - **Retire and poison**: dropping an end retires it; [`ChannelOut::poison`] stops a
//!   network; a process that returns an error saying it was poisoned poisons its ends
//!   ([`AsChannelError`]).
//! - **Alternation**: [`Alternation`] waits on input, output, timeout and skip guards, with
//!   `pri_select`, `alt_select` and `fair_select`.
//! - **Crash safety**: a process that dies wakes its peers with
//!   [`ChannelError::PeerDied`] naming it; nothing is left behind.
//! - **Pools**: [`Pool`] is Python's `multiprocessing.Pool` for functions marked
//!   [`macro@pool_fn`]: `map`, `starmap`, `imap`, `imap_unordered`, `map_async`.
//! - **Zero-copy**: a [`SharedBlock`] moves between processes as its offset.
//! - **Sockets and other hosts**: channels named `tcp://HOST:PORT/NAME` and
//!   [`Placement`]s (see [`net`]).
//!
//! Everything a program usually needs is in the [`prelude`].
//!
//! # The book
//!
//! The tutorial is the mdBook in the repository's `book/` directory (`mdbook serve book`):
//! *Getting started*, *Processes and channels*, *Retire and poison*, *Alternation*,
//! *Patterns* (pipeline, farm, server...), *Pools of workers*, *Crash safety*, *Socket
//! channels and several hosts*, *From Python multiprocessing* (every mechanism, with the
//! Python program beside the Rust one), *From PyCSP*, *Performance*, *Wire format*,
//! *Shared-memory layout* and *Troubleshooting*. The repository's README says how to
//! depend on pycsp and what to know when doing so (the `#[process]` functions must be in
//! the binary that runs them; a child does not run `main`).
//!
//! # Example
//!
//! ```
//! use pycsp::prelude::*;
//!
//! #[process]
//! fn producer(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
//!     for i in 0..n {
//!         out.write(i)?;
//!     }
//!     out.retire();
//!     Ok(())
//! }
//!
//! #[process]
//! fn consumer(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
//!     let mut sum = 0;
//!     loop {
//!         match inp.read() {
//!             Ok(v) => sum += v,
//!             Err(ChannelError::Retired) => return Ok(sum),
//!             Err(e) => return Err(e),
//!         }
//!     }
//! }
//!
//! fn main() -> Result<(), pycsp::Error> {
//!     let ch = Channel::<u64>::new()?; // rendezvous
//!     let (sent, sum) = Parallel((producer(ch.writer(), 1_000), consumer(ch.reader())))?;
//!     assert_eq!(sent, Ok(()));
//!     assert_eq!(sum, Ok(499_500));
//!     Ok(())
//! }
//! ```
#![warn(missing_docs)]

pub use pycsp_core::*;
pub use pycsp_macros::{pool_fn, process};

/// Everything a CSP program usually needs: `use pycsp::prelude::*;`.
pub mod prelude {
    pub use crate::{pool_fn, process};
    pub use pycsp_core::{
        after, replicate, tick, Alternation, Bytes, Channel, ChannelError, ChannelIn, ChannelOut,
        Chosen, Parallel, Placement, Pool, Process, Sequence, SharedArray, SharedAtomicF64,
        SharedAtomicI64, SharedAtomicU64, SharedBlock, Spawn, Timer, TryReadError, TryWriteError,
        WriteTimeoutError,
    };
    pub use pycsp_core::{fair_select, pri_select, select};
}
