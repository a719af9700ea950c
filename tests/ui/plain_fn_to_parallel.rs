// A function without #[process] handed to Parallel: the error says to add #[process].
use pycsp::prelude::*;

fn worker(out: ChannelOut<u64>) -> Result<(), ChannelError> {
    out.write(1)
}

fn main() -> Result<(), pycsp::Error> {
    let ch = Channel::<u64>::new()?;
    Parallel(worker(ch.writer()))?;
    Ok(())
}
