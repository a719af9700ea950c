use pycsp::prelude::*;

#[process]
async fn worker(inp: ChannelIn<u64>) -> u64 {
    inp.read().unwrap()
}

fn main() {}
