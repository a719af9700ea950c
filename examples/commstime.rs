//! Commstime, the classic CSP benchmark: prefix, delta, successor and consumer in a ring of
//! rendezvous channels, each process in its own OS process. Prints the time per channel
//! communication.
//!
//! ```text
//!   prefix(0) --a--> delta --b--> consumer
//!      ^               |
//!      d               c
//!      |               v
//!      +---------- successor
//! ```
//!
//! Run: `cargo run --release --example commstime -- [iterations]`

use std::time::Instant;

use pycsp::prelude::*;

// ANCHOR: ring
#[process]
fn prefix(first: u64, inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    out.write(first)?;
    loop {
        out.write(inp.read()?)?;
    }
}

#[process]
fn delta(
    inp: ChannelIn<u64>,
    to_consumer: ChannelOut<u64>,
    to_succ: ChannelOut<u64>,
) -> Result<(), ChannelError> {
    loop {
        let v = inp.read()?;
        to_consumer.write(v)?;
        to_succ.write(v)?;
    }
}

#[process]
fn successor(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        out.write(inp.read()? + 1)?;
    }
}

/// Reads `n` values, then poisons the ring; returns nanoseconds per communication.
#[process]
fn consumer(inp: ChannelIn<u64>, n: u64) -> Result<f64, ChannelError> {
    inp.read()?; // warm up: the ring is running
    let start = Instant::now();
    for _ in 0..n {
        inp.read()?;
    }
    let elapsed = start.elapsed();
    inp.poison();
    // Four communications per value: a, b, c and d.
    Ok(elapsed.as_nanos() as f64 / (4 * n) as f64)
}
// ANCHOR_END: ring

fn main() -> Result<(), pycsp::Error> {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(100_000, |s| s.parse().expect("iterations"));
    let a = Channel::<u64>::new()?;
    let b = Channel::<u64>::new()?;
    let c = Channel::<u64>::new()?;
    let d = Channel::<u64>::new()?;
    let (_, _, _, ns) = Parallel((
        prefix(0, d.reader(), a.writer()),
        delta(a.reader(), b.writer(), c.writer()),
        successor(c.reader(), d.writer()),
        consumer(b.reader(), n),
    ))?;
    let ns = ns.expect("the consumer finishes before it poisons");
    println!("commstime: {n} iterations, 4 processes");
    println!("{:.3} microseconds per channel communication", ns / 1000.0);
    Ok(())
}
