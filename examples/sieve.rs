//! The sieve of Eratosthenes as a growing pipeline of processes: one filter process per prime,
//! each started with `Spawn` by the filter before it. Prints the first N primes, then shuts the
//! whole pipeline down with poison.
//!
//! Run: `cargo run --release --example sieve -- [count]`

use pycsp::prelude::*;

// ANCHOR: sieve
#[process]
fn generate(out: ChannelOut<u64>) -> Result<(), ChannelError> {
    let mut n = 2;
    loop {
        out.write(n)?; // fails with Poisoned when main shuts the sieve down
        n += 1;
    }
}

/// The first number to arrive is a prime; pass on what it does not divide to a new filter.
#[process]
fn filter(inp: ChannelIn<u64>, primes: ChannelOut<u64>) -> Result<(), pycsp::Error> {
    let p = inp.read()?;
    primes.write(p)?;
    let next = Channel::<u64>::new()?;
    // `rest` is joined when it is dropped; declared before `out`, it is dropped after it, so
    // the next filter sees this one's end retire instead of waiting for it forever.
    let _rest = Spawn(filter(next.reader(), primes))?;
    let out = next.writer();
    loop {
        let n = inp.read()?;
        if n % p != 0 {
            out.write(n)?;
        }
    }
    // Poison from either side ends the loop with Err(Poisoned); returning it poisons
    // every channel end of this process, so the shutdown travels down the pipeline.
}
// ANCHOR_END: sieve

fn main() -> Result<(), pycsp::Error> {
    let count: usize = std::env::args()
        .nth(1)
        .map_or(30, |s| s.parse().expect("count"));
    let numbers = Channel::<u64>::new()?;
    let primes = Channel::<u64>::buffered(16)?;
    let found = primes.reader();
    let sieve = Spawn((
        generate(numbers.writer()),
        filter(numbers.reader(), primes.writer()),
    ))?;
    let first: Vec<u64> = (0..count).map(|_| found.read()).collect::<Result<_, _>>()?;
    // Poison both channels every filter may block on: the shutdown reaches every process.
    numbers.poison();
    primes.poison();
    let (generator, first_filter) = sieve.join()?;
    println!("the first {count} primes: {first:?}");
    println!("shut down by poison: generator {generator:?}, first filter {first_filter:?}");
    Ok(())
}
