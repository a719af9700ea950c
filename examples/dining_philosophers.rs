//! Dining philosophers: five philosophers, five forks and a butler, each an OS process.
//!
//! Forks and the butler are built on alternation: a fork waits for whichever neighbour picks
//! it up first (`fair_select`), the butler seats at most four philosophers at a time (its
//! "sit" guard is only offered while a seat is free), so the table never deadlocks. Every
//! philosopher eats a fixed number of meals; then the network retires and shuts down.
//!
//! Run: `cargo run --release --example dining_philosophers -- [meals]`

use pycsp::prelude::*;

const N: usize = 5;

// ANCHOR: fork
/// A fork lies between two philosophers; it is picked up and put down by one at a time.
#[process]
fn fork(
    left_up: ChannelIn<()>,
    left_down: ChannelIn<()>,
    right_up: ChannelIn<()>,
    right_down: ChannelIn<()>,
) -> Result<u64, ChannelError> {
    let mut uses = 0;
    loop {
        let taken = Alternation::new()
            .input(&left_up, |()| 0)
            .input(&right_up, |()| 1)
            .fair_select();
        match taken {
            Ok(c) if c.value == 0 => left_down.read()?,
            Ok(_) => right_down.read()?,
            Err(ChannelError::Retired) => return Ok(uses),
            Err(e) => return Err(e),
        }
        uses += 1;
    }
}
// ANCHOR_END: fork

// ANCHOR: butler
/// Seats at most N - 1 philosophers at once.
#[process]
fn butler(sit: ChannelIn<usize>, stand: ChannelIn<usize>) -> Result<usize, ChannelError> {
    let (mut seated, mut most) = (0usize, 0usize);
    loop {
        let mut alt = Alternation::new();
        if seated < N - 1 {
            alt = alt.input(&sit, |_| 1isize);
        }
        alt = alt.input(&stand, |_| -1isize);
        match alt.pri_select() {
            Ok(c) => seated = seated.checked_add_signed(c.value).expect("seat count"),
            Err(ChannelError::Retired) => return Ok(most),
            Err(e) => return Err(e),
        }
        most = most.max(seated);
    }
}
// ANCHOR_END: butler

// ANCHOR: philosopher
#[allow(clippy::too_many_arguments)]
#[process]
fn philosopher(
    id: usize,
    meals: u64,
    sit: ChannelOut<usize>,
    stand: ChannelOut<usize>,
    left_up: ChannelOut<()>,
    left_down: ChannelOut<()>,
    right_up: ChannelOut<()>,
    right_down: ChannelOut<()>,
) -> Result<(usize, u64), ChannelError> {
    for _ in 0..meals {
        // think
        sit.write(id)?;
        left_up.write(())?;
        right_up.write(())?;
        // eat
        left_down.write(())?;
        right_down.write(())?;
        stand.write(id)?;
    }
    Ok((id, meals))
}
// ANCHOR_END: philosopher

/// For each fork, one channel from its left-hand and one from its right-hand philosopher.
fn fork_channels() -> Result<Vec<[Channel<()>; 2]>, ChannelError> {
    (0..N)
        .map(|_| Ok([Channel::new()?, Channel::new()?]))
        .collect()
}

fn main() -> Result<(), pycsp::Error> {
    let meals: u64 = std::env::args()
        .nth(1)
        .map_or(1000, |s| s.parse().expect("meals"));
    let sit = Channel::<usize>::new()?;
    let stand = Channel::<usize>::new()?;
    // Fork i lies between philosopher i (its left hand) and philosopher i+1 (its right hand).
    let up = fork_channels()?;
    let down = fork_channels()?;
    let forks = replicate(N, |i| {
        fork(
            up[i][0].reader(),
            down[i][0].reader(),
            up[i][1].reader(),
            down[i][1].reader(),
        )
    });
    let philosophers = replicate(N, |i| {
        let right_fork = (i + N - 1) % N;
        philosopher(
            i,
            meals,
            sit.writer(),
            stand.writer(),
            up[i][0].writer(),
            down[i][0].writer(),
            up[right_fork][1].writer(),
            down[right_fork][1].writer(),
        )
    });
    let start = std::time::Instant::now();
    let (ate, uses, most) = Parallel((philosophers, forks, butler(sit.reader(), stand.reader())))?;
    for r in &ate {
        let (id, meals) = r.as_ref().expect("philosophers finish");
        println!("philosopher {id} ate {meals} meals");
    }
    let uses: Vec<u64> = uses.into_iter().map(|u| u.expect("forks retire")).collect();
    println!("fork uses: {uses:?}");
    println!(
        "most philosophers seated at once: {}",
        most.expect("the butler retires")
    );
    println!("{} meals in {:.2?}", meals * N as u64, start.elapsed());
    Ok(())
}
