use pycsp::prelude::*;

struct NotSerde(u8);

#[process]
fn worker(v: NotSerde) -> u8 {
    v.0
}

fn main() {}
