//! Socket channels: processes placed by a launcher (here the trivial `{cmd}`, so a separate
//! process network on this machine) reach channels hosted by the root over TCP.

use pycsp::prelude::*;

mod common;

/// A TCP port free at the moment of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[process]
fn produce(out: ChannelOut<u64>, from: u64, n: u64) -> Result<u32, ChannelError> {
    for i in from..from + n {
        out.write(i)?;
    }
    Ok(std::process::id())
}

#[process]
fn relay(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        let v = match inp.read() {
            Ok(v) => v,
            Err(ChannelError::Retired) => return Ok(()),
            Err(e) => return Err(e),
        };
        out.write(v * 10)?;
    }
}

#[process]
fn consume(inp: ChannelIn<u64>) -> (u64, u64) {
    inp.iter().fold((0, 0), |(n, s), v| (n + 1, s + v))
}

#[test]
fn a_placed_pipeline_over_tcp_delivers_every_message_once() {
    let port = free_port();
    let a = Channel::<u64>::new(&format!("tcp://127.0.0.1:{port}/a")).unwrap();
    let b = Channel::<u64>::buffered(&format!("tcp://127.0.0.1:{port}/b"), 8).unwrap();
    let here = Placement::launcher("{cmd}");
    let (pid, relayed, (n, sum)) = Parallel((
        produce(a.writer(), 1, 2000).on(here.clone()),
        relay(a.reader(), b.writer()).on(here),
        consume(b.reader()),
    ))
    .unwrap();
    assert_ne!(pid.unwrap(), std::process::id());
    relayed.unwrap();
    assert_eq!(n, 2000);
    assert_eq!(sum, 10 * (1..=2000u64).sum::<u64>());
}

#[process]
fn farm_worker(jobs: ChannelIn<u64>, results: ChannelOut<(u64, u64)>) -> u64 {
    let mut done = 0;
    while let Ok(n) = jobs.read() {
        if results.write((n, n * n)).is_err() {
            break;
        }
        done += 1;
    }
    done
}

#[test]
fn placed_workers_share_one_any_to_any_tcp_channel() {
    let port = free_port();
    let jobs = Channel::<u64>::new(&format!("tcp://127.0.0.1:{port}/jobs")).unwrap();
    let results =
        Channel::<(u64, u64)>::buffered(&format!("tcp://127.0.0.1:{port}/res"), 4).unwrap();
    let here = Placement::launcher("{cmd}");
    let (w, r) = (jobs.writer(), results.reader());
    let workers = Spawn(
        (0..3)
            .map(|_| farm_worker(jobs.reader(), results.writer()).on(here.clone()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let feeder = std::thread::spawn(move || {
        for n in 0..300u64 {
            w.write(n).unwrap();
        }
    });
    let mut seen = vec![false; 300];
    for _ in 0..300 {
        let (n, sq) = r.read().unwrap();
        assert_eq!(sq, n * n);
        assert!(!seen[n as usize], "{n} twice");
        seen[n as usize] = true;
    }
    feeder.join().unwrap();
    drop(jobs);
    let done: u64 = workers.join().unwrap().iter().sum();
    assert_eq!(done, 300);
}
