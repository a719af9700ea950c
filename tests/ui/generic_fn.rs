use pycsp::prelude::*;

#[process]
fn worker<T: serde::Serialize>(out: ChannelOut<T>, v: T) {
    let _ = out.write(v);
}

fn main() {}
