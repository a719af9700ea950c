//! Fan-out and fan-in. A `delta` process copies every reading to three channels (fan-out: each
//! consumer sees every value); three processes reduce the readings each their own way and
//! write their result to one shared channel (fan-in: any number of writers, one reader).
//!
//! Run: `cargo run --release --example fan_out_in`

use pycsp::prelude::*;

// ANCHOR: processes
/// Writes the readings, then returns (retiring `out`).
#[process]
fn sensor(readings: Vec<i64>, out: ChannelOut<i64>) -> Result<(), ChannelError> {
    for r in readings {
        out.write(r)?;
    }
    Ok(())
}

/// Fan-out: copies every value it reads to every output (CSP's delta process).
#[process]
fn delta(inp: ChannelIn<i64>, outs: Vec<ChannelOut<i64>>) -> Result<(), ChannelError> {
    for x in inp.iter() {
        let x = x?;
        for out in &outs {
            out.write(x)?;
        }
    }
    Ok(()) // returning retires every output: each reducer sees the end of the stream
}

/// What a reducer computes.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Reduce {
    Min,
    Max,
    Sum,
}

/// Reduces its whole input to one value and writes it, labelled, to the shared channel.
#[process]
fn reducer(
    how: Reduce,
    inp: ChannelIn<i64>,
    results: ChannelOut<(String, i64)>,
) -> Result<(), ChannelError> {
    let values = inp.iter().collect::<Result<Vec<i64>, _>>()?.into_iter();
    let result = match how {
        Reduce::Min => values.min().unwrap_or(0),
        Reduce::Max => values.max().unwrap_or(0),
        Reduce::Sum => values.sum(),
    };
    results.write((format!("{how:?}").to_lowercase(), result))
}

/// Fan-in: one reader of a channel that every reducer writes to; returns what arrived, in
/// the order it arrived.
#[process]
fn gather(results: ChannelIn<(String, i64)>) -> Result<Vec<(String, i64)>, ChannelError> {
    results.iter().collect()
}
// ANCHOR_END: processes

// ANCHOR: main
fn main() -> Result<(), pycsp::Error> {
    let readings = vec![3, -1, 4, 1, -5, 9, 2, 6];
    let input = Channel::<i64>::new()?;
    let copies: Vec<Channel<i64>> = (0..3).map(|_| Channel::new()).collect::<Result<_, _>>()?;
    let results = Channel::<(String, i64)>::new()?; // any-to-any: three writers
    let hows = [Reduce::Min, Reduce::Max, Reduce::Sum];
    let (s, d, reduced, gathered) = Parallel((
        sensor(readings, input.writer()),
        delta(input.reader(), copies.iter().map(|c| c.writer()).collect()),
        replicate(3, |i| {
            reducer(hows[i], copies[i].reader(), results.writer())
        }),
        gather(results.reader()),
    ))?;
    s?;
    d?;
    for r in reduced {
        r?;
    }
    let mut gathered = gathered?;
    gathered.sort(); // they arrive in whichever order the reducers finish
    for (what, value) in gathered {
        println!("{what} {value}");
    }
    Ok(())
}
// ANCHOR_END: main
