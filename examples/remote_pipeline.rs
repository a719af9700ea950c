//! A pipeline whose stages run as placed processes, reaching the channels of this process over
//! TCP. By default the launcher is the trivial `{cmd}` (the stages run on this machine, as
//! separate process networks); give another launcher to place them elsewhere:
//!
//! ```sh
//! cargo run --example remote_pipeline
//! sudo ip netns add blue    # (with a veth link to 10.0.0.1 set up)
//! cargo run --example remote_pipeline -- "ip netns exec blue {cmd}" 10.0.0.1
//! ```

use pycsp::prelude::*;

// ANCHOR: stages
#[process]
fn numbers(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 1..=n {
        out.write(i)?;
    }
    Ok(()) // `out` retires when dropped: the next stage sees Retired after the last number
}

#[process]
fn squares(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        match inp.read() {
            Ok(v) => out.write(v * v)?,
            Err(ChannelError::Retired) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[process]
fn total(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.iter().sum()
}
// ANCHOR_END: stages

fn main() -> Result<(), pycsp::Error> {
    let mut args = std::env::args().skip(1);
    let launcher = args.next().unwrap_or_else(|| "{cmd}".into());
    let here = args.next().unwrap_or_else(|| "127.0.0.1".into());
    // A port free now (a real deployment picks a fixed one).
    let port = std::net::TcpListener::bind((here.as_str(), 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    // ANCHOR: main
    // Channels hosted by this process, on this address, for processes anywhere.
    let a = Channel::<u64>::named(&format!("tcp://{here}:{port}/numbers"))?;
    let b = Channel::<u64>::named_buffered(&format!("tcp://{here}:{port}/squares"), 16)?;
    // Where the stages run: `{cmd}` is the command that starts this binary as that process.
    let there = Placement::launcher(&launcher).reach_back(&here);
    let (sent, squared, sum) = Parallel((
        numbers(a.writer(), 100).on(there.clone()),
        squares(a.reader(), b.writer()).on(there),
        total(b.reader()), // a local child: the same channels through shared memory
    ))?;
    // ANCHOR_END: main
    sent?;
    squared?;
    let sum = sum?;
    println!("sum of the squares of 1..=100: {sum}");
    assert_eq!(sum, 338_350);
    Ok(())
}
