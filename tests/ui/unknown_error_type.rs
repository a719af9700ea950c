// A process's error type must say whether it means poison: one that cannot is refused.
use pycsp::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct MyError(u8);

#[process]
fn worker(out: ChannelOut<u64>) -> Result<(), MyError> {
    out.write(1).map_err(|_| MyError(1))
}

fn main() {}
