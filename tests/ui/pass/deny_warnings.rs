// No #[process] or #[pool_fn] body warns, whatever its shape.
#![deny(warnings)]

use pycsp::prelude::*;

#[process]
fn one_line(x: u64) -> u64 {
    x * 2
}

#[process]
fn nothing() {}

#[process]
fn statement_only(out: ChannelOut<u64>) {
    let _ = out.write(1);
}

#[process]
fn early_return(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    let v = inp.read()?;
    if v > 10 {
        return Ok(v);
    }
    Ok(v + 1)
}

#[process]
fn patterns((a, b): (u64, u64), mut c: Vec<u8>) -> usize {
    c.push(1);
    (a + b) as usize + c.len()
}

#[process]
fn string_error(inp: ChannelIn<u64>) -> Result<u64, String> {
    inp.read().map_err(|e| e.to_string())
}

/// Squares.
#[pool_fn]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_fn]
fn pair(a: u64, b: String) -> String {
    format!("{b}{a}")
}

#[pool_fn]
fn unit() {}

fn main() -> Result<(), pycsp::Error> {
    let ch = Channel::<u64>::buffered(4)?;
    let _ = Parallel((
        one_line(1),
        nothing(),
        statement_only(ch.writer()),
        early_return(ch.reader()),
        patterns((1, 2), Vec::new()),
        string_error(ch.reader()),
    ));
    let pool = Pool::new(1)?;
    let _ = pool.map(square, [1u64])?;
    let _ = pool.starmap(pair, [(1u64, String::new())])?;
    let _ = pool.starmap(unit, [()])?;
    let _ = square(2) + pair(1, String::new()).len() as u64;
    Ok(())
}
