use pycsp::prelude::*;

struct Farm;

impl Farm {
    #[process]
    fn run(&self, n: u64) -> u64 {
        n
    }
}

fn main() {}
