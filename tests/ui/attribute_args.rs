use pycsp::prelude::*;

#[process(name = "worker")]
fn worker(n: u64) -> u64 {
    n
}

fn main() {}
