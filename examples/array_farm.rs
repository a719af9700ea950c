//! A farm that fills one large array in place, as numpy users split an array among worker
//! processes: the array is cut into one piece per worker, each piece goes to its worker
//! through a channel (its place in shared memory travels, a few bytes, not its elements), the
//! worker fills it, hands it back, and the pieces are joined into the whole array again.
//! No element is copied, and there is no `unsafe`.
//!
//! Run: `cargo run --release --example array_farm [ELEMENTS] [WORKERS]` (default: 10 million
//! elements, one worker per core). The time it took goes to standard error.

use std::time::Instant;

use pycsp::prelude::*;

// ANCHOR: farm
/// The value of element `i`.
fn value(i: usize) -> f64 {
    (i as f64).sqrt().sin()
}

/// Fills each piece it is given, in place, and hands it back.
#[process]
fn filler(
    jobs: ChannelIn<SharedArray<f64>>,
    done: ChannelOut<SharedArray<f64>>,
) -> Result<(), ChannelError> {
    for piece in &jobs {
        let mut piece = piece?;
        let start = piece.range().start; // where the piece lies in the whole array
        for (i, x) in piece.iter_mut().enumerate() {
            *x = value(start + i);
        }
        done.write(piece)?;
    }
    Ok(())
}

/// Fills `array` with `workers` processes (at least one) and returns it whole.
fn fill(array: SharedArray<f64>, workers: usize) -> Result<SharedArray<f64>, pycsp::Error> {
    let (jobs, done) = (Channel::buffered(workers)?, Channel::buffered(workers)?);
    let farm = Spawn(replicate(workers, |_| filler(jobs.reader(), done.writer())))?;
    let (tx, rx) = (jobs.writer(), done.reader());
    for piece in array.split_into(workers) {
        tx.write(piece)?;
    }
    drop(tx); // no more pieces: each worker's loop ends
    let pieces = (0..workers)
        .map(|_| rx.read())
        .collect::<Result<Vec<_>, _>>()?;
    for worker in farm.join()? {
        worker?;
    }
    Ok(SharedArray::join(pieces).expect("every piece of the array came back"))
}
// ANCHOR_END: farm

fn main() -> Result<(), pycsp::Error> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map_or(10_000_000, |a| a.parse().expect("ELEMENTS"));
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let workers: usize = args.next().map_or(cores, |a| a.parse().expect("WORKERS"));
    assert!(workers > 0, "at least one worker");
    let array = SharedArray::<f64>::zeroed(n)?;
    let start = Instant::now();
    let array = fill(array, workers)?;
    eprintln!("filled in {:?}", start.elapsed());
    let right = array.iter().enumerate().all(|(i, x)| *x == value(i));
    println!(
        "{n} elements filled in place by {workers} worker processes, every one right: {right}"
    );
    Ok(())
}
