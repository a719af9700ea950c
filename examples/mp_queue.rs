//! Python's `multiprocessing.Queue`, the CSP way: a buffered channel.
//!
//! The Python counterpart is `examples/python/mp_queue.py`; both print the same lines (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_queue`

use pycsp::prelude::*;

// ANCHOR: queue
#[process]
fn f(q: ChannelOut<(i32, Option<i32>, String)>) -> Result<(), ChannelError> {
    q.write((42, None, "hello".into()))
}

fn main() -> Result<(), pycsp::Error> {
    let q = Channel::buffered(16)?; // a Queue holds messages until they are taken
    let get = q.reader();
    let p = Spawn(f(q.writer()))?; // p.start()
    let (n, none, s) = get.read()?; // q.get()
    println!(
        "[{n}, {}, '{s}']",
        none.map_or("None".to_string(), |v| v.to_string())
    );
    p.join()??; // p.join()
    Ok(())
}
// ANCHOR_END: queue
