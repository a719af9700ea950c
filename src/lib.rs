//! # pycsp: Communicating Sequential Processes across real OS processes
//!
//! A `#[process]` function runs in its own OS process; [`Parallel`] starts processes and
//! joins them; processes talk only through typed, named [`Channel`]s in shared memory.
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
        replicate, Alternation, Bytes, Channel, ChannelError, ChannelIn, ChannelOut, Chosen,
        Parallel, Placement, Pool, Process, Sequence, SharedBlock, Spawn,
    };
}
