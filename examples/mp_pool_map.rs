//! Python's `Pool.map`: a pool of worker processes applies a function to every item.
//!
//! The Python counterpart is `examples/python/mp_pool_map.py`; both print the same lines (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_pool_map`

use pycsp::prelude::*;

// ANCHOR: pool
/// A plain function; `#[pool_fn]` lets a pool's workers run it.
#[pool_fn]
fn f(x: i64) -> i64 {
    x * x
}

fn main() -> Result<(), pycsp::Error> {
    let pool = Pool::new(5)?; // five worker processes, reused by every call
    println!("{:?}", pool.map(f, [1, 2, 3])?);
    Ok(())
}
// ANCHOR_END: pool
