// #[pool_fn] refuses what cannot cross a process boundary, as #[process] does.
use pycsp::prelude::*;

#[pool_fn]
fn length(s: &str) -> usize {
    s.len()
}

fn main() {}
