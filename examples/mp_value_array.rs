//! Python's `Value` and `Array`: a shared atomic number, and an array in shared memory that
//! moves to the child and back (one owner at a time: the CSP way for data that is not a
//! single number).
//!
//! `SharedAtomicF64` is a number every process holding a handle sees and changes at once,
//! lock-free, as Python's `Value('d')` (without its lock). `SharedArray<i32>` is
//! `Array('i', range(10))`: passing it to the process moves it there without copying, and the
//! process hands it back as its return value.
//!
//! The Python counterpart is `examples/python/mp_value_array.py`; both print the same lines (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_value_array`

use pycsp::prelude::*;

// ANCHOR: value_array
#[process]
fn f(n: SharedAtomicF64, mut a: SharedArray<i32>) -> SharedArray<i32> {
    #[allow(clippy::approx_constant)] // the very value Python's example stores
    n.store(3.1415927);
    for x in a.iter_mut() {
        *x = -*x;
    }
    a // ownership goes back to the parent
}

fn main() -> Result<(), pycsp::Error> {
    let num = SharedAtomicF64::new(0.0)?; // Value('d', 0.0)
    let arr = SharedArray::from_slice(&(0..10).collect::<Vec<i32>>())?; // Array('i', range(10))
    let p = Spawn(f(num.clone(), arr))?; // p.start()
    let arr = p.join()?; // p.join()
    println!("{}", num.load());
    println!("{:?}", &arr[..]);
    Ok(())
}
// ANCHOR_END: value_array
