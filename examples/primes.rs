//! Counts the primes below 1,000,000 by trial division with a farm of worker processes.
//!
//! A farmer process hands out ranges of numbers over one any-to-any channel; each worker
//! counts the primes in the ranges it takes and returns its count. Prints the total (78498),
//! the number of workers, the time, and the speedup over one worker.
//!
//! Run: `cargo run --release --example primes -- --workers 2`

use std::time::{Duration, Instant};

use pycsp::prelude::*;

const LIMIT: u64 = 1_000_000;
const CHUNK: u64 = 10_000;

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

// ANCHOR: farm
#[process]
fn farmer(jobs: ChannelOut<(u64, u64)>, limit: u64, chunk: u64) -> Result<(), ChannelError> {
    let mut start = 0;
    while start < limit {
        jobs.write((start, (start + chunk).min(limit)))?;
        start += chunk;
    }
    jobs.retire(); // workers see Retired once every range is taken
    Ok(())
}

#[process]
fn worker(jobs: ChannelIn<(u64, u64)>) -> Result<u64, ChannelError> {
    jobs.iter()
        .map(|job| job.map(|(lo, hi)| (lo..hi).filter(|&n| is_prime(n)).count() as u64))
        .sum()
}

fn count_primes(workers: usize) -> Result<(u64, Duration), pycsp::Error> {
    let jobs = Channel::<(u64, u64)>::buffered(16)?;
    let start = Instant::now();
    let ((), counts) = Parallel((
        farmer(jobs.writer(), LIMIT, CHUNK),
        replicate(workers, |_| worker(jobs.reader())),
    ))
    .map(|(f, c)| {
        (
            f.expect("the farmer cannot fail: workers never retire early"),
            c,
        )
    })?;
    let counts = counts.into_iter().collect::<Result<Vec<u64>, _>>()?;
    Ok((counts.iter().sum(), start.elapsed()))
}
// ANCHOR_END: farm

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), pycsp::Error> {
    let args: Vec<String> = std::env::args().collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args
        .iter()
        .position(|a| a == "--workers")
        .and_then(|i| args.get(i + 1))
        .map_or(cores, |w| w.parse().expect("--workers takes a number"));
    let runs = 5;
    let mut one = Vec::new();
    let mut many = Vec::new();
    let mut total = 0;
    for _ in 0..runs {
        one.push(count_primes(1)?.1);
        let (n, t) = count_primes(workers)?;
        total = n;
        many.push(t);
    }
    let (t1, tn) = (median(one), median(many));
    println!("primes below {LIMIT}: {total}");
    println!("workers: {workers}");
    println!(
        "time: {:.1} ms (1 worker: {:.1} ms; medians of {runs} runs)",
        tn.as_secs_f64() * 1e3,
        t1.as_secs_f64() * 1e3
    );
    println!(
        "speedup over one worker: {:.2}",
        t1.as_secs_f64() / tn.as_secs_f64()
    );
    assert_eq!(total, 78_498);
    Ok(())
}
