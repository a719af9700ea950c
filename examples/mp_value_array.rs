//! Python's `Value` and `Array`, the CSP way: shared data has one owner at a time. The child
//! receives the data (a `SharedBlock` moves without copying), changes it, and hands it back.
//!
//! The Python counterpart is `examples/python/mp_value_array.py`; both print the same lines (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_value_array`

use pycsp::prelude::*;

// ANCHOR: value_array
#[process]
fn f(
    inp: ChannelIn<(f64, SharedBlock)>,
    out: ChannelOut<(f64, SharedBlock)>,
) -> Result<(), ChannelError> {
    let (_n, mut a) = inp.read()?;
    #[allow(clippy::approx_constant)] // the very value Python's example stores
    let n = 3.1415927;
    for chunk in a.chunks_exact_mut(4) {
        let v = i32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
        chunk.copy_from_slice(&(-v).to_ne_bytes());
    }
    out.write((n, a)) // ownership goes back to the parent
}

fn main() -> Result<(), pycsp::Error> {
    let num = 0.0f64;
    let arr: Vec<u8> = (0..10i32).flat_map(|i| i.to_ne_bytes()).collect();
    let arr = SharedBlock::from_slice(&arr)?; // Array('i', range(10)) in shared memory
    let (there, back) = (Channel::new()?, Channel::new()?);
    let (send, recv) = (there.writer(), back.reader());
    let p = Spawn(f(there.reader(), back.writer()))?;
    send.write((num, arr))?;
    let (num, arr) = recv.read()?;
    p.join()??;
    println!("{num}");
    let ints: Vec<i32> = arr
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes(c.try_into().expect("4 bytes")))
        .collect();
    println!("{ints:?}");
    Ok(())
}
// ANCHOR_END: value_array
