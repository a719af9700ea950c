//! The channel operations a crossbeam-channel user reaches for, across processes:
//! `try_write`/`try_read`, writes that hand the value back when they fail, deadlines,
//! `len`/`is_full`, `try_iter`; and a `Spawned` handle's `is_alive`, `join_timeout`, `kill`.
//!
//! Run: `cargo run --release --example channel_api`

use std::time::{Duration, Instant};

use pycsp::prelude::*;

// ANCHOR: try
#[process]
fn worker(jobs: ChannelIn<String>) -> Result<usize, ChannelError> {
    let mut done = 0;
    for job in &jobs {
        done += job?.len();
    }
    Ok(done)
}

fn try_and_timeouts() -> Result<(), pycsp::Error> {
    let jobs = Channel::<String>::buffered(2)?;
    let tx = jobs.writer();
    tx.try_write("a".into())?;
    tx.try_write("bb".into())?;
    println!(
        "buffered {} of {}, full: {}",
        tx.len(),
        tx.capacity(),
        tx.is_full()
    );
    // Full: the value comes back, as crossbeam's TrySendError::Full(v).
    let job = match tx.try_write("ccc".into()) {
        Err(TryWriteError::Full(job)) => job,
        other => panic!("the buffer is full: {other:?}"),
    };
    println!("try_write handed back {job:?}");
    let p = Spawn(worker(jobs.reader()))?;
    // A worker drains the buffer: now there is room within the timeout.
    tx.write_timeout(job, Duration::from_secs(10))?;
    drop(tx);
    println!("worker read {} bytes", p.join()??);

    // A rendezvous channel with no reader: nothing waits to take the message, and a
    // deadline hands it back too.
    let rv = Channel::<u32>::new()?;
    let (out, inp) = (rv.writer(), rv.reader());
    println!("no reader waiting: {:?}", out.try_write(1));
    match out.write_deadline(2, Instant::now() + Duration::from_millis(10)) {
        Err(WriteTimeoutError::Timeout(v)) => println!("deadline passed, {v} handed back"),
        other => panic!("no reader: {other:?}"),
    }
    println!("nothing was delivered: {:?}", inp.try_read());
    Ok(())
}
// ANCHOR_END: try

// ANCHOR: try_iter
#[process]
fn burst(out: ChannelOut<u32>, n: u32) -> Result<(), ChannelError> {
    (0..n).try_for_each(|i| out.write(i))
}

fn drain_what_is_there() -> Result<(), pycsp::Error> {
    let ch = Channel::<u32>::buffered(16)?;
    let inp = ch.reader();
    Parallel(burst(ch.writer(), 5))??; // five messages wait in the buffer
    let now: Vec<u32> = inp.try_iter().collect::<Result<_, _>>()?;
    println!("try_iter took {now:?} without waiting");
    Ok(())
}
// ANCHOR_END: try_iter

// ANCHOR: spawned
#[process]
fn forever(inp: ChannelIn<u32>) -> Result<u32, ChannelError> {
    inp.read() // nobody writes: it would wait forever
}

fn watch_and_kill() -> Result<(), pycsp::Error> {
    let ch = Channel::<u32>::new()?;
    let p = Spawn(forever(ch.reader()))?;
    println!("alive: {}", p.is_alive());
    let p = match p.join_timeout(Duration::from_millis(100)) {
        Ok(_) => unreachable!("it never returns"),
        Err(still_running) => still_running,
    };
    p.kill();
    match p.join() {
        Err(pycsp::Error::ProcessFailed { failure, .. }) => println!("killed: {failure}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
// ANCHOR_END: spawned

fn main() -> Result<(), pycsp::Error> {
    try_and_timeouts()?;
    drain_what_is_there()?;
    watch_and_kill()
}
