//! The process combinators (`Parallel`, `Sequence`, `Spawn`) and the three kinds of channel
//! use (rendezvous, buffered, any-to-any), one small step each.
//!
//! Run: `cargo run --release --example processes`

use pycsp::prelude::*;

// ANCHOR: combinators
#[process]
fn square(x: i64) -> i64 {
    x * x
}

fn combinators() -> Result<(), pycsp::Error> {
    // Parallel: run at once, wait for all, get every return value in the shape given.
    let (a, b) = Parallel((square(3), square(4)))?;
    println!("Parallel of a tuple: {a} {b}");
    let all = Parallel(replicate(4, |i| square(i as i64)))?;
    println!("Parallel of replicate(4, ..): {all:?}");
    // Sequence: one after another, each in its own process.
    let (c, d) = Sequence((square(5), square(6)))?;
    println!("Sequence: {c} {d}");
    // Spawn: start now, join later; this process is free in between.
    let handle = Spawn(square(7))?;
    println!("Spawn: started");
    println!("joined: {}", handle.join()?);
    Ok(())
}
// ANCHOR_END: combinators

// ANCHOR: channels
#[process]
fn send_all(out: ChannelOut<u32>, first: u32, n: u32) -> Result<(), ChannelError> {
    for i in first..first + n {
        out.write(i)?;
    }
    Ok(())
}

#[process]
fn receive_all(inp: ChannelIn<u32>) -> Result<Vec<u32>, ChannelError> {
    inp.iter().collect()
}

fn channels() -> Result<(), pycsp::Error> {
    // Rendezvous: a write returns once a reader has taken the message, so the writer and the
    // reader must run at the same time.
    let ch = Channel::<u32>::new()?;
    let (sent, got) = Parallel((send_all(ch.writer(), 0, 3), receive_all(ch.reader())))?;
    sent?;
    println!("rendezvous: {:?}", got?);

    // Buffered: writes return once the message is in the buffer, so the writer can finish
    // before the reader starts (with a rendezvous channel this Sequence would never end).
    let ch = Channel::<u32>::buffered(3)?;
    let (sent, got) = Sequence((send_all(ch.writer(), 0, 3), receive_all(ch.reader())))?;
    sent?;
    println!("buffered: {:?}", got?);

    // Any-to-any: two writers and two readers on one channel. Each message reaches exactly
    // one reader, and each writer's messages arrive in the order it wrote them.
    let ch = Channel::<u32>::buffered(16)?;
    let (writers, readers) = Parallel((
        replicate(2, |i| send_all(ch.writer(), 1000 * i as u32, 100)),
        replicate(2, |_| receive_all(ch.reader())),
    ))?;
    for w in writers {
        w?;
    }
    let readers = readers.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut all: Vec<u32> = readers.concat();
    let in_order = readers.iter().all(|got| {
        let from = |w: u32| got.iter().filter(move |&&v| v / 1000 == w);
        (0..2).all(|w| from(w).zip(from(w).skip(1)).all(|(a, b)| a < b))
    });
    all.sort();
    let expected: Vec<u32> = (0..100).chain(1000..1100).collect();
    println!(
        "any-to-any: {} messages, each read once: {}, each writer's in order: {in_order}",
        all.len(),
        all == expected
    );
    Ok(())
}
// ANCHOR_END: channels

fn main() -> Result<(), pycsp::Error> {
    combinators()?;
    channels()
}
