//! Python's `shared_memory.SharedMemory` with a numpy-style array of numbers on it, the CSP
//! way: a `SharedBlock` (bytes in the process network's shared memory) viewed as `[i64]`.
//!
//! What differs: Python's processes attach to the block by name and may both touch it at
//! once (a race unless they add a lock). A `SharedBlock` has one owner at a time: sending it
//! through a channel moves the offset and length (16 bytes, not the data) and spends the
//! sender's handle. Here the parent hands the array to the child and the child hands it back.
//! The Python counterpart is `examples/python/mp_shared_memory.py`; both print the same lines
//! (checked by `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_shared_memory`

use pycsp::prelude::*;

// ANCHOR: array
/// A numpy-style array of `i64` living in a `SharedBlock`: a typed view, no copy.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedArray {
    block: SharedBlock,
}

impl SharedArray {
    /// `np.zeros(n, dtype=np.int64)` in shared memory.
    fn zeros(n: usize) -> Result<SharedArray, ChannelError> {
        Ok(SharedArray {
            block: SharedBlock::zeroed(n * std::mem::size_of::<i64>())?,
        })
    }

    fn as_slice(&self) -> &[i64] {
        // SAFETY: every bit pattern is a valid i64, and `align_to` puts in the middle part
        // only properly aligned, whole i64s of the block's bytes.
        let (head, ints, tail) = unsafe { self.block.align_to::<i64>() };
        assert!(
            head.is_empty() && tail.is_empty(),
            "block not 8-byte aligned"
        );
        ints
    }

    fn as_mut_slice(&mut self) -> &mut [i64] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only view of the bytes.
        let (head, ints, tail) = unsafe { self.block.align_to_mut::<i64>() };
        assert!(
            head.is_empty() && tail.is_empty(),
            "block not 8-byte aligned"
        );
        ints
    }
}
// ANCHOR_END: array

// ANCHOR: process
/// `def f(name, n)`: changes the array in place (the bytes never leave shared memory).
#[process]
fn f(inp: ChannelIn<SharedArray>, out: ChannelOut<SharedArray>) -> Result<(), ChannelError> {
    let mut array = inp.read()?; // now this process owns the array
    let c = array.as_mut_slice();
    let n = c.len();
    c[n - 1] = 888;
    for x in c.iter_mut() {
        *x *= 10;
    }
    out.write(array) // ownership goes back
}

fn main() -> Result<(), pycsp::Error> {
    let a = [1i64, 1, 2, 3, 5, 8];
    let mut b = SharedArray::zeros(a.len())?;
    b.as_mut_slice().copy_from_slice(&a);
    println!("{:?}", b.as_slice());
    let (there, back) = (Channel::new()?, Channel::new()?);
    let (send, recv) = (there.writer(), back.reader());
    let p = Spawn(f(there.reader(), back.writer()))?;
    send.write(b)?; // `b` is spent: using it now would not compile
    let b = recv.read()?;
    p.join()??;
    println!("{:?}", b.as_slice());
    println!("sum {}", b.as_slice().iter().sum::<i64>());
    Ok(())
}
// ANCHOR_END: process
