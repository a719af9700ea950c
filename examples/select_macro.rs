//! `select!` with timers: a worker process counts primes in chunks and reports each chunk;
//! the main process waits for reports with `select!`, prints a heartbeat from a `tick`
//! timer while it waits, and gives up at a deadline set with `after`.
//!
//! Run: `cargo run --release --example select_macro -- [limit]`

use std::time::Duration;

use pycsp::prelude::*;

/// Counts the primes below `limit` in chunks of 100 000 numbers; reports each chunk's count.
#[process]
fn worker(out: ChannelOut<u64>, limit: u64) -> Result<(), ChannelError> {
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    for start in (0..limit).step_by(100_000) {
        out.write(
            (start..(start + 100_000).min(limit))
                .filter(|&n| is_prime(n))
                .count() as u64,
        )?;
    }
    Ok(()) // returning retires `out`
}

fn main() -> Result<(), pycsp::Error> {
    let limit = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let reports = Channel::<u64>::named("select-macro-reports")?;
    let chunks = reports.reader();
    let running = Spawn(worker(reports.writer(), limit))?;

    // ANCHOR: select
    let heartbeat = tick(Duration::from_millis(250));
    let deadline = after(Duration::from_secs(60));
    let (mut primes, mut beats) = (0u64, 0u32);
    let finished = loop {
        select! {
            recv(chunks) -> n => match n {
                Ok(n) => primes += n,
                Err(ChannelError::Retired) => break true, // the worker is done
                Err(e) => return Err(e.into()),
            },
            recv(heartbeat) -> _ => beats += 1,
            recv(deadline) -> _ => break false,
        }
    };
    // ANCHOR_END: select

    if finished {
        running.join()?.map_err(pycsp::Error::from)?;
        println!("{primes} primes below {limit} ({beats} heartbeats while waiting)");
    } else {
        reports.poison();
        println!("gave up after 60 s ({primes} primes counted so far)");
    }
    Ok(())
}
