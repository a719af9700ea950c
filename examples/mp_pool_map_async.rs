//! Python's `Pool.map_async`: start a map, do something else, then get the results.
//!
//! The Python counterpart is `examples/python/mp_pool_map_async.py`; both print the same
//! lines (checked by `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_pool_map_async`

use std::time::Duration;

use pycsp::prelude::*;

// ANCHOR: pool
#[pool_fn]
fn f(x: i64) -> i64 {
    x * x
}

fn main() -> Result<(), pycsp::Error> {
    let pool = Pool::new(4)?;
    let result = pool.map_async(f, 0..10)?; // returns at once; the workers run meanwhile
    println!("submitted 10 jobs"); // main is free while the pool works
    let got = result.get_timeout(Duration::from_secs(10)); // Err if a worker failed or time ran out
    let successful = got.is_ok();
    println!("{:?}", got?);
    println!("successful: {}", if successful { "True" } else { "False" });
    Ok(())
}
// ANCHOR_END: pool
