//! Retire and poison, side by side. A writer puts three messages in a buffered channel and
//! then either retires its end or poisons the channel; a reader started after it reports
//! what it gets. Retire is the end of a stream (the reader first gets every message); poison
//! is a shutdown (at once, for everyone, buffered messages included).
//!
//! Run: `cargo run --release --example retire_poison`

use pycsp::prelude::*;

// ANCHOR: processes
/// Writes 1, 2, 3, then retires its end or poisons the channel.
#[process]
fn writer(out: ChannelOut<u32>, poison: bool) -> Result<(), ChannelError> {
    for i in 1..=3 {
        out.write(i)?;
    }
    if poison {
        out.poison(); // every end of the channel, in every process, fails from now on
    } else {
        out.retire(); // this writer is done; readers read what is left, then see Retired
    }
    Ok(())
}

/// Reads until an error and describes what happened.
#[process]
fn reader(inp: ChannelIn<u32>) -> String {
    let mut seen = Vec::new();
    loop {
        match inp.read() {
            Ok(v) => seen.push(format!("read {v}")),
            Err(e) => {
                seen.push(format!("then {e:?}"));
                return seen.join(", ");
            }
        }
    }
}
// ANCHOR_END: processes

// ANCHOR: main
fn main() -> Result<(), pycsp::Error> {
    for (name, poison) in [("retire", false), ("poison", true)] {
        let ch = Channel::<u32>::buffered(8)?;
        // Sequence: the reader starts only after the writer has returned.
        let (wrote, got) = Sequence((writer(ch.writer(), poison), reader(ch.reader())))?;
        wrote?;
        println!("{name}: {got}");
    }
    Ok(())
}
// ANCHOR_END: main
