//! A tour of `Pool`: map, starmap, chunks, imap over an endless input, imap_unordered, a
//! worker that panics, and the pool going on after it. Shown in the book's Pool chapter;
//! `tests/examples_output.rs` checks what it prints.
//!
//! Run: `cargo run --release --example pool`

use pycsp::prelude::*;

// ANCHOR: functions
/// Plain functions: `#[pool_fn]` lets a pool's workers run them, by name.
#[pool_fn]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_fn]
fn power(base: u64, exp: u32) -> u64 {
    base.pow(exp)
}

#[pool_fn]
fn checked_inverse(x: i64) -> f64 {
    assert!(x != 0, "cannot invert {x}");
    1.0 / x as f64
}
// ANCHOR_END: functions

fn main() -> Result<(), pycsp::Error> {
    // ANCHOR: map
    let pool = Pool::new(4)?; // four worker processes, started once
    println!("map: {:?}", pool.map(square, 1..=5)?);
    println!("starmap: {:?}", pool.starmap(power, [(2, 10), (3, 3)])?);
    // One job per 100 items: fewer messages, the same results in the same order.
    let sum: u64 = pool.chunksize(100).map(square, 0..10_000)?.iter().sum();
    println!("sum of 10000 squares: {sum}");
    println!("still callable here: {}", square(12));
    // ANCHOR_END: map

    // ANCHOR: imap
    // imap is lazy: it takes items as workers free up, so an endless input is fine.
    let first: Vec<u64> = pool.imap(square, 1..)?.take(4).collect::<Result<_, _>>()?;
    println!("imap of 1..: {first:?}");
    // imap_unordered yields each result as soon as it is there.
    let mut any_order: Vec<u64> = pool
        .imap_unordered(square, 0..6)?
        .collect::<Result<_, _>>()?;
    any_order.sort_unstable();
    println!("imap_unordered, sorted: {any_order:?}");
    // ANCHOR_END: imap

    // ANCHOR: failure
    let pids = pool.pids();
    match pool.chunksize(1).map(checked_inverse, [4, 2, 0, 1]) {
        Err(pycsp::Error::PoolWorker {
            worker,
            pid,
            item,
            failure,
            ..
        }) => {
            assert_eq!(pid, pids[worker]);
            println!("item {item} failed: worker {failure}");
        }
        other => println!("unexpected: {other:?}"),
    }
    // The worker was replaced; the pool goes on.
    println!("after: {:?}", pool.map(checked_inverse, [4, 2])?);
    // ANCHOR_END: failure
    Ok(())
}
