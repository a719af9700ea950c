//! The runtime of [pycsp](https://docs.rs/pycsp): Communicating Sequential Processes across
//! real OS processes.
//!
//! Use it through the `pycsp` crate, which adds the `#[process]` attribute. The parts:
//! - [`channel`]: typed, named channels on shared memory ([`Channel`], [`ChannelIn`],
//!   [`ChannelOut`]);
//! - [`process`]: [`Process`], [`Parallel`], [`Sequence`], [`Spawn`];
//! - errors: [`ChannelError`], [`Error`], [`Failure`].
//!
//! Shared-memory layout, the wait/wake protocol and the module map (which module owns what,
//! and which it may use) are documented in one place, `pycsp-core/src/shm/LAYOUT.md`, the
//! documentation of the private `shm` module and the book's layout chapter.
#![warn(missing_docs)]

pub mod alt;
pub mod block;
pub mod channel;
mod error;
pub mod frame;
mod message;
pub mod net;
pub mod process;
mod runtime;
mod shm;
mod sys;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use alt::{Alternation, Chosen};
pub use block::{Bytes, SharedBlock};
pub use channel::{Channel, ChannelIn, ChannelOut};
pub use error::{AsChannelError, ChannelError, Error, Failure, Outcome, Outcomes};
pub use process::{
    replicate, AsyncResult, Imap, Parallel, Placement, Pool, PoolFn, Process, ProcessSet, Sequence,
    Spawn, Spawned,
};
/// `#[serde(with = "pycsp::serde_bytes")]` sends a `Vec<u8>` field as bytes, like [`Bytes`].
pub use serde_bytes;
