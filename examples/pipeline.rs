//! A pipeline: each stage is a process that reads from the stage before it and writes to the
//! stage after it. The end of the stream travels down the pipeline by retiring: a stage whose
//! input has retired returns, which retires its output. A failure travels down it too: `?` on
//! a message returns the error (poison, a crashed peer), which the runtime passes on.
//!
//! Run: `cargo run --release --example pipeline -- [n]`

use pycsp::prelude::*;

// ANCHOR: stages
/// The source: writes 1, 2, ..., n, then returns (which retires `out`).
#[process]
fn numbers(n: u64, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    for i in 1..=n {
        out.write(i)?;
    }
    Ok(())
}

/// A stage: squares what it reads until its input retires.
#[process]
fn square(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    for x in inp.iter() {
        let x = x?;
        out.write(x * x)?;
    }
    Ok(())
}

/// Another stage: writes the running sum.
#[process]
fn running_sum(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    let mut sum = 0;
    for x in inp.iter() {
        sum += x?;
        out.write(sum)?;
    }
    Ok(())
}

/// The sink: returns every value it read, in order.
#[process]
fn collect(inp: ChannelIn<u64>) -> Result<Vec<u64>, ChannelError> {
    inp.iter().collect()
}
// ANCHOR_END: stages

// ANCHOR: main
fn main() -> Result<(), pycsp::Error> {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(10, |s| s.parse().expect("n"));
    let a = Channel::<u64>::new()?;
    let b = Channel::<u64>::new()?;
    let c = Channel::<u64>::new()?;
    let (r1, r2, r3, sums) = Parallel((
        numbers(n, a.writer()),
        square(a.reader(), b.writer()),
        running_sum(b.reader(), c.writer()),
        collect(c.reader()),
    ))?;
    r1?;
    r2?;
    r3?;
    println!("running sums of the squares of 1..={n}: {:?}", sums?);
    Ok(())
}
// ANCHOR_END: main
