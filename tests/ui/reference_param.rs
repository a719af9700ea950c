use pycsp::prelude::*;

#[process]
fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
