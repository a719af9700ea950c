//! Python's `Pool.map_async`, the CSP way: `map_async` starts a farm of workers and a
//! collector process and returns at once; `get(timeout)` waits for the collector's answer.
//! The Python counterpart is `examples/python/mp_pool_map_async.py`; both print the same
//! lines (checked by `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_pool_map_async`

use std::time::Duration;

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

/// Gathers `n` results from the workers and answers with them in the order of the items.
#[process]
fn collector(
    results: ChannelIn<(usize, i64)>,
    n: usize,
    answer: ChannelOut<Vec<i64>>,
) -> Result<(), ChannelError> {
    let mut out = vec![0; n];
    for _ in 0..n {
        let (i, y) = results.read()?;
        out[i] = y;
    }
    answer.write(out)
}

/// A worker or the collector, as a process.
type Job = Process<Result<(), ChannelError>>;

/// The running pool: the workers and the collector, and where the answer will arrive.
struct AsyncResult {
    answer: ChannelIn<Vec<i64>>,
    running: pycsp::Spawned<(Vec<Job>, Job)>,
}

impl AsyncResult {
    /// Waits at most `timeout` for the results (`Err(Timeout)` if they are not there yet).
    fn get(self, timeout: Duration) -> Result<Vec<i64>, pycsp::Error> {
        let out = self.answer.read_timeout(timeout)?;
        let (workers, collector) = self.running.join()?;
        for w in workers {
            w?;
        }
        collector?;
        Ok(out)
    }
}

/// `Pool(workers).map_async(f, items)`: every job is in the channel when it returns.
fn map_async(workers: usize, items: Vec<i64>) -> Result<AsyncResult, pycsp::Error> {
    let n = items.len();
    let jobs = Channel::<(usize, i64)>::buffered(n.max(1))?;
    let results = Channel::<(usize, i64)>::buffered(n.max(1))?;
    let answer = Channel::<Vec<i64>>::new()?;
    let submit = jobs.writer();
    for job in items.into_iter().enumerate() {
        submit.write(job)?; // the buffer holds every job: this never waits
    }
    submit.retire(); // the workers finish once every job is taken
    let running = Spawn((
        replicate(workers, |_| f_worker(jobs.reader(), results.writer())),
        collector(results.reader(), n, answer.writer()),
    ))?;
    Ok(AsyncResult {
        answer: answer.reader(),
        running,
    })
}

fn main() -> Result<(), pycsp::Error> {
    let result = map_async(4, (0..10).collect())?;
    println!("submitted 10 jobs"); // main is free while the pool works
    let got = result.get(Duration::from_secs(10)); // Err if a worker failed or time ran out
    let successful = got.is_ok();
    println!("{:?}", got?);
    println!("successful: {}", if successful { "True" } else { "False" });
    Ok(())
}
// ANCHOR_END: pool
