//! The runtime of [pycsp](https://docs.rs/pycsp): Communicating Sequential Processes across
//! real OS processes.
//!
//! Use it through the `pycsp` crate, which adds the `#[process]` attribute. The parts:
//! - [`channel`]: typed, named channels on shared memory ([`Channel`], [`ChannelIn`],
//!   [`ChannelOut`]);
//! - [`process`]: [`Process`], [`Parallel`], [`Sequence`], [`Spawn`];
//! - shared memory: [`SharedBlock`] (bytes), [`SharedArray`] (typed arrays that split into
//!   pieces for workers), [`SharedAtomicU64`] and friends (`multiprocessing.Value`);
//! - errors: [`ChannelError`], [`Error`], [`Failure`].
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
pub mod process;
mod runtime;
mod shm;
mod sys;
pub mod value;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use alt::{Alternation, Chosen};
pub use array::SharedArray;
pub use block::{Bytes, SharedBlock};
/// The plain-old-data trait of [`SharedArray`] elements ([`bytemuck::Pod`]).
pub use bytemuck;
pub use channel::{Channel, ChannelIn, ChannelOut};
pub use error::{
    ChannelError, Error, Failure, JoinError, TryReadError, TryWriteError, WriteTimeoutError,
};
pub use process::{replicate, Parallel, Placement, Process, ProcessSet, Sequence, Spawn, Spawned};
/// `#[serde(with = "pycsp::serde_bytes")]` sends a `Vec<u8>` field as bytes, like [`Bytes`].
pub use serde_bytes;
pub use value::{SharedAtomicF64, SharedAtomicI64, SharedAtomicU64};
