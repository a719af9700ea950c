//! Python's `Pool.map`, the CSP way: a farm of worker processes fed by one any-to-any channel.
//!
//! The Python counterpart is `examples/python/mp_pool_map.py`; both print the same lines (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_pool_map`

use pycsp::prelude::*;

// ANCHOR: pool
/// A worker: squares every (index, x) it takes, until the jobs channel retires.
#[process]
fn f_worker(
    jobs: ChannelIn<(usize, i64)>,
    results: ChannelOut<(usize, i64)>,
) -> Result<(), ChannelError> {
    for job in jobs.iter() {
        let (i, x) = job?;
        results.write((i, x * x))?;
    }
    Ok(())
}

/// `Pool(workers).map(f, items)`: results in the order of `items`.
fn pool_map(workers: usize, items: Vec<i64>) -> Result<Vec<i64>, pycsp::Error> {
    let jobs = Channel::<(usize, i64)>::buffered(items.len().max(1))?;
    let results = Channel::<(usize, i64)>::buffered(items.len().max(1))?;
    let pool = Spawn(replicate(workers, |_| {
        f_worker(jobs.reader(), results.writer())
    }))?;
    let (submit, collect) = (jobs.writer(), results.reader());
    for job in items.iter().copied().enumerate() {
        submit.write(job)?;
    }
    submit.retire(); // the workers finish once every job is taken
    let mut out = vec![0; items.len()];
    for _ in 0..items.len() {
        let (i, y) = collect.read()?;
        out[i] = y;
    }
    pool.join()?;
    Ok(out)
}
// ANCHOR_END: pool

fn main() -> Result<(), pycsp::Error> {
    println!("{:?}", pool_map(5, vec![1, 2, 3])?);
    Ok(())
}
