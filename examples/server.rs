//! A PyCSP-style server process serving several clients with `fair_select`: one request
//! channel per client, one reply channel per client. The server runs until every client has
//! retired, and reports how many requests it served per client.
//!
//! Run: `cargo run --release --example server -- [clients] [requests]`

use pycsp::prelude::*;

// ANCHOR: server
#[process]
fn server(
    requests: Vec<ChannelIn<u64>>,
    replies: Vec<ChannelOut<u64>>,
) -> Result<Vec<u64>, ChannelError> {
    let mut served = vec![0u64; requests.len()];
    loop {
        let mut alt = Alternation::new();
        for r in &requests {
            alt = alt.input(r, |x| x);
        }
        match alt.fair_select() {
            Ok(Chosen { index, value }) => {
                replies[index].write(value * value)?;
                served[index] += 1;
            }
            Err(ChannelError::Retired) => return Ok(served),
            Err(e) => return Err(e),
        }
    }
}

#[process]
fn client(
    id: u64,
    n: u64,
    request: ChannelOut<u64>,
    reply: ChannelIn<u64>,
) -> Result<u64, ChannelError> {
    let mut sum = 0;
    for i in 0..n {
        request.write(id * 1000 + i)?;
        sum += reply.read()?;
    }
    Ok(sum)
}
// ANCHOR_END: server

fn main() -> Result<(), pycsp::Error> {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(4, |s| s.parse().expect("clients"));
    let n: u64 = args.next().map_or(10_000, |s| s.parse().expect("requests"));
    let req: Vec<Channel<u64>> = (0..clients)
        .map(|_| Channel::new())
        .collect::<Result<_, _>>()?;
    let rep: Vec<Channel<u64>> = (0..clients)
        .map(|_| Channel::new())
        .collect::<Result<_, _>>()?;
    let start = std::time::Instant::now();
    let (served, sums) = Parallel((
        server(
            req.iter().map(|c| c.reader()).collect(),
            rep.iter().map(|c| c.writer()).collect(),
        ),
        replicate(clients, |i| {
            client(i as u64, n, req[i].writer(), rep[i].reader())
        }),
    ))?;
    let elapsed = start.elapsed();
    let served = served?;
    for (i, s) in sums.iter().enumerate() {
        println!(
            "client {i}: {} requests served, sum of replies {}",
            served[i],
            s.as_ref().expect("client")
        );
    }
    println!(
        "{} requests in {elapsed:.2?} ({:.1} µs per request and reply)",
        n * clients as u64,
        elapsed.as_secs_f64() * 1e6 / (n * clients as u64) as f64
    );
    Ok(())
}
