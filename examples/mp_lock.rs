//! Python's `Lock`, and why CSP needs none: instead of four processes taking turns at a
//! shared counter under a lock, one process owns the counter and the others send it what to
//! add. The update happens where the data lives, so no other process can come in between
//! its read and its write. The Python counterpart is `examples/python/mp_lock.py`; both
//! print the same line (checked by `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_lock`

use pycsp::prelude::*;

// ANCHOR: lock
/// The owner of the counter: the only process that reads or writes it. It adds what it
/// receives until every writer has retired, then returns the total.
#[process]
fn counter(increments: ChannelIn<i64>) -> Result<i64, ChannelError> {
    let mut value = 0;
    for n in increments.iter() {
        value += n?; // `counter.value += 1` in Python, done by the owner: whole, unlocked
    }
    Ok(value)
}

/// `def add(lock, counter, n)`: asks the owner to add 1, n times.
#[process]
fn add(counter: ChannelOut<i64>, n: u32) -> Result<(), ChannelError> {
    for _ in 0..n {
        counter.write(1)?;
    }
    Ok(())
}

fn main() -> Result<(), pycsp::Error> {
    let increments = Channel::<i64>::buffered(64)?; // any-to-any
    let (total, added) = Parallel((
        counter(increments.reader()),
        replicate(4, |_| add(increments.writer(), 1000)),
    ))?;
    for a in added {
        a?;
    }
    println!("{}", total?);
    Ok(())
}
// ANCHOR_END: lock
