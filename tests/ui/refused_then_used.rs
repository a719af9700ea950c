// A refused signature gives one error: the uses of the function add none.
use pycsp::prelude::*;

#[process]
fn worker<T: serde::Serialize>(out: ChannelOut<T>, v: T) {
    let _ = out.write(v);
}

#[process]
fn borrower(s: &str) -> u64 {
    s.len() as u64
}

fn main() -> Result<(), pycsp::Error> {
    let ch = Channel::<u64>::new()?;
    let (a, n) = Parallel((worker(ch.writer(), 1u64), borrower("abc")))?;
    let _: () = a;
    let _: u64 = n + 1;
    Ok(())
}
