//! Python's `shared_memory.SharedMemory` with a numpy-style array of numbers on it, the CSP
//! way: a `SharedArray<i64>`, an array of `i64` in the process network's shared memory that
//! reads and writes as a slice.
//!
//! What differs: Python's processes attach to the block by name and may both touch it at
//! once (a race unless they add a lock). A `SharedArray` has one owner at a time: sending it
//! through a channel moves its place in shared memory (a few bytes, not the data) and spends
//! the sender's handle. Here the parent hands the array to the child and the child hands it
//! back. To let several processes work on one array at once, split it into disjoint pieces
//! (`split_into`), one per worker, and join them again (see the book's shared-arrays section).
//! The Python counterpart is `examples/python/mp_shared_memory.py`; both print the same lines
//! (checked by `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_shared_memory`

use pycsp::prelude::*;

// ANCHOR: array
/// `np.zeros(n, dtype=np.int64)` in shared memory, filled from `a`: no `unsafe`, no views to
/// make by hand; the array dereferences to `[i64]`.
fn shared_copy(a: &[i64]) -> Result<SharedArray<i64>, ChannelError> {
    let mut b = SharedArray::<i64>::zeroed(a.len())?;
    b.copy_from_slice(a);
    Ok(b)
}
// ANCHOR_END: array

// ANCHOR: process
/// `def f(name, n)`: changes the array in place (the numbers never leave shared memory).
#[process]
fn f(
    inp: ChannelIn<SharedArray<i64>>,
    out: ChannelOut<SharedArray<i64>>,
) -> Result<(), ChannelError> {
    let mut c = inp.read()?; // now this process owns the array
    let n = c.len();
    c[n - 1] = 888;
    for x in c.iter_mut() {
        *x *= 10;
    }
    out.write(c) // ownership goes back
}

fn main() -> Result<(), pycsp::Error> {
    let a = [1i64, 1, 2, 3, 5, 8];
    let b = shared_copy(&a)?;
    println!("{:?}", &b[..]);
    let (there, back) = (Channel::new()?, Channel::new()?);
    let (send, recv) = (there.writer(), back.reader());
    let p = Spawn(f(there.reader(), back.writer()))?;
    send.write(b)?; // `b` is spent: using it now would not compile
    let b = recv.read()?;
    p.join()??;
    println!("{:?}", &b[..]);
    println!("sum {}", b.iter().sum::<i64>());
    Ok(())
}
// ANCHOR_END: process
