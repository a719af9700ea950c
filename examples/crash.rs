//! Crash safety: a process that dies (here it panics, then in a second run it aborts) never
//! leaves its peers waiting. Its reader gets every message it wrote, then
//! `ChannelError::PeerDied` naming it; `Parallel` reports the process and how it died.
//!
//! Run: `cargo run --release --example crash`

use pycsp::prelude::*;

// ANCHOR: processes
/// How the fragile process dies after writing its messages.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Death {
    Panic,
    Abort,
}

/// Writes three messages, then dies without returning.
#[process]
fn fragile(out: ChannelOut<u32>, death: Death) -> Result<(), ChannelError> {
    for i in 1..=3 {
        out.write(i)?;
    }
    match death {
        Death::Panic => panic!("out of cheese"),
        Death::Abort => std::process::abort(), // like a SIGKILL: no unwinding, no clean-up
    }
}

/// Reads until an error, then prints what it read and which error ended it.
#[process]
fn consumer(inp: ChannelIn<u32>) {
    let mut read = Vec::new();
    loop {
        match inp.read() {
            Ok(v) => read.push(v),
            Err(ChannelError::PeerDied { process, .. }) => {
                let name = process.rsplit("::").next().unwrap_or(&process).to_string();
                println!("  consumer read {read:?}, then PeerDied: {name} died");
                return;
            }
            Err(e) => {
                println!("  consumer read {read:?}, then {e}");
                return;
            }
        }
    }
}
// ANCHOR_END: processes

// ANCHOR: main
fn main() -> Result<(), pycsp::Error> {
    for death in [Death::Panic, Death::Abort] {
        println!("{death:?}:");
        let ch = Channel::<u32>::new()?;
        match Parallel((fragile(ch.writer(), death), consumer(ch.reader()))) {
            Err(pycsp::Error::ProcessFailed { name, failure, .. }) => {
                let name = name.rsplit("::").next().unwrap_or(&name).to_string();
                println!("  Parallel: process {name} {failure}");
            }
            other => panic!("expected a failed process, got {other:?}"),
        }
    }
    Ok(())
}
// ANCHOR_END: main
