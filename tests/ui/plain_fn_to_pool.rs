// A function without #[pool_fn] handed to a Pool: the error says to add #[pool_fn].
use pycsp::prelude::*;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), pycsp::Error> {
    let pool = Pool::new(2)?;
    let _ = pool.map(square, 0..10u64)?;
    Ok(())
}
