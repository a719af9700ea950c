//! The classic producer/consumer pair, each in its own OS process.
//!
//! Run: `cargo run --release --example producer_consumer`

use pycsp::prelude::*;

// ANCHOR: processes
#[process]
fn producer(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    out.retire();
    Ok(())
}

#[process]
fn consumer(inp: ChannelIn<u64>) -> Result<(u32, u64, u64), ChannelError> {
    let (mut count, mut sum) = (0u64, 0u64);
    loop {
        match inp.read() {
            Ok(v) => {
                count += 1;
                sum += v;
            }
            Err(ChannelError::Retired) => return Ok((std::process::id(), count, sum)),
            Err(e) => return Err(e),
        }
    }
}
// ANCHOR_END: processes

// ANCHOR: main
fn main() -> Result<(), pycsp::Error> {
    let n = 1_000_000;
    let ch = Channel::<u64>::buffered(1024)?;
    let start = std::time::Instant::now();
    let ((), (pid, count, sum)) = match Parallel((producer(ch.writer(), n), consumer(ch.reader())))?
    {
        (Ok(p), Ok(c)) => (p, c),
        (p, c) => panic!("a process failed: {p:?} {c:?}"),
    };
    let secs = start.elapsed().as_secs_f64();
    println!("parent pid {}, consumer pid {pid}", std::process::id());
    println!("consumer received {count} numbers, sum {sum}");
    println!(
        "{:.1} million messages per second",
        count as f64 / secs / 1e6
    );
    Ok(())
}
// ANCHOR_END: main
