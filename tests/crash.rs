//! Crash safety: a process that dies abnormally (panic, abort, SIGKILL from outside) never
//! hangs its peers, never loses a message whose write returned `Ok`, and never delivers a
//! half-written one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pycsp::prelude::*;

mod common;
use pycsp::{Error, Failure};

#[process]
fn read_one(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.read()
}

#[process]
fn hold_and_wait(out: ChannelOut<u64>, gate: ChannelIn<u8>) -> Result<(), ChannelError> {
    gate.read()?;
    out.write(1)
}

#[test]
fn a_peer_killed_from_outside_wakes_blocked_readers_with_peer_died_within_100ms() {
    let _serial = common::timing();
    let ch = Channel::<u64>::named("crash-kill").unwrap();
    let gate = Channel::<u8>::named("crash-kill-gate").unwrap();
    let _gw = gate.writer();
    let h = Spawn((
        read_one(ch.reader()),
        hold_and_wait(ch.writer(), gate.reader()),
    ))
    .unwrap();
    let pids = h.pids();
    // Kill the writer while the reader is blocked on it.
    std::thread::sleep(Duration::from_millis(50));
    let killed_at = Instant::now();
    // SAFETY: sending SIGKILL to our own child process.
    unsafe { libc::kill(pids[1] as libc::pid_t, libc::SIGKILL) };
    let r = h.join();
    let latency = killed_at.elapsed();
    match r {
        Err(Error::ProcessFailed {
            name, pid, failure, ..
        }) => {
            assert!(name.ends_with("hold_and_wait"), "{name}");
            assert_eq!(pid, pids[1]);
            assert_eq!(failure, Failure::Signaled(libc::SIGKILL));
        }
        other => panic!("expected the killed process to be reported, got {other:?}"),
    }
    assert!(
        latency < Duration::from_millis(100),
        "peers woke after {latency:?}"
    );
}

#[process]
fn read_all(inp: ChannelIn<u64>) -> (Vec<u64>, ChannelError) {
    let mut got = Vec::new();
    loop {
        match inp.read() {
            Ok(v) => got.push(v),
            Err(e) => return (got, e),
        }
    }
}

#[process]
fn write_then_panic(out: ChannelOut<u64>, n: u64) {
    for i in 0..n {
        out.write(i).unwrap();
    }
    panic!("after {n} messages");
}

#[process]
fn write_then_abort(out: ChannelOut<u64>, n: u64) {
    for i in 0..n {
        out.write(i).unwrap();
    }
    std::process::abort();
}

#[test]
fn messages_written_before_a_panic_or_abort_are_delivered_then_peer_died() {
    for (name, abort) in [("crash-panic", false), ("crash-abort", true)] {
        let ch = Channel::<u64>::named_buffered(name, 64).unwrap();
        let writer = if abort {
            write_then_abort(ch.writer(), 40)
        } else {
            write_then_panic(ch.writer(), 40)
        };
        let reader = Spawn(read_all(ch.reader())).unwrap();
        let failure = match Parallel(writer) {
            Err(Error::ProcessFailed { failure, .. }) => failure,
            other => panic!("expected a failure, got {other:?}"),
        };
        let (got, err) = reader.join().unwrap();
        assert_eq!(
            got,
            (0..40).collect::<Vec<_>>(),
            "{name}: acknowledged messages lost"
        );
        match err {
            ChannelError::PeerDied { process, .. } => {
                assert!(process.contains("write_then"), "{process}")
            }
            other => panic!("{name}: expected PeerDied, got {other:?}"),
        }
        if abort {
            assert_eq!(failure, Failure::Signaled(libc::SIGABRT));
        } else {
            assert_eq!(failure, Failure::Panicked("after 40 messages".into()));
        }
    }
}

type Msg = (u32, u64); // (writer, sequence)

/// Writes 0, 1, 2, ... and after each acknowledged write reports the count on `acks`.
#[process]
fn numbered_writer(out: ChannelOut<Msg>, acks: ChannelOut<(u32, u64)>, id: u32, n: u64) -> u64 {
    for seq in 0..n {
        if out.write((id, seq)).is_err() {
            return seq;
        }
        if acks.write((id, seq + 1)).is_err() {
            return seq + 1;
        }
    }
    n
}

/// Reads until the channel fails, then reports everything it read on `results`.
#[process]
fn numbered_reader(inp: ChannelIn<Msg>, results: ChannelOut<Vec<Msg>>) -> Result<(), ChannelError> {
    let mut got = Vec::new();
    let end = loop {
        match inp.read() {
            Ok(m) => got.push(m),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(end, ChannelError::PeerDied { .. }),
        "reader ended with {end:?}"
    );
    results.write(got)
}

/// A tiny deterministic generator, so that a failing round can be replayed from its seed.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

#[test]
fn killing_a_writer_at_random_points_of_a_busy_network_loses_no_acknowledged_message() {
    let _serial = common::timing();
    let seed = 0x5EED_u64 ^ u64::from(std::process::id());
    let mut rng = seed;
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0..9 {
        assert!(
            Instant::now() < deadline,
            "rounds took too long (seed {seed:#x})"
        );
        let cap = [1usize, 8, 64][round % 3];
        let ch = Channel::<Msg>::named_buffered(&format!("busy-{round}"), cap).unwrap();
        let acks =
            Channel::<(u32, u64)>::named_buffered(&format!("busy-acks-{round}"), 1 << 16).unwrap();
        let results =
            Channel::<Vec<Msg>>::named_buffered(&format!("busy-results-{round}"), 2).unwrap();
        let n = 1_000_000;
        let writers = replicate(3, |id| {
            numbered_writer(ch.writer(), acks.writer(), id as u32, n)
        });
        let readers = replicate(2, |_| numbered_reader(ch.reader(), results.writer()));
        let (acks_in, results_in) = (acks.reader(), results.reader());
        let h = Spawn((writers, readers)).unwrap();
        let pids = h.pids();
        let victim = (lcg(&mut rng) % 3) as usize;
        std::thread::sleep(Duration::from_micros(1_000 + lcg(&mut rng) % 20_000));
        // SAFETY: sending SIGKILL to our own child process.
        unsafe { libc::kill(pids[victim] as libc::pid_t, libc::SIGKILL) };
        let err = h.join().unwrap_err();
        let ctx = format!("round {round}, capacity {cap}, victim {victim}, seed {seed:#x}");
        assert!(err.to_string().contains("numbered_writer"), "{ctx}: {err}");
        // Every write acknowledged with Ok was reported here right after (a lower bound).
        let mut acked: HashMap<u32, u64> = HashMap::new();
        while let Ok((id, count)) = acks_in.read_timeout(Duration::from_millis(100)) {
            let e = acked.entry(id).or_default();
            *e = (*e).max(count);
        }
        let mut received: HashMap<u32, Vec<u64>> = HashMap::new();
        for _ in 0..2 {
            for (id, seq) in results_in
                .read_timeout(Duration::from_secs(5))
                .expect("reader results")
            {
                received.entry(id).or_default().push(seq);
            }
        }
        for id in 0..3u32 {
            let mut seqs = received.remove(&id).unwrap_or_default();
            seqs.sort_unstable();
            let k = seqs.len() as u64;
            // Each writer's messages arrive whole, once, and as a gap-free prefix.
            assert!(
                seqs.iter().enumerate().all(|(i, &s)| s == i as u64),
                "{ctx}: writer {id} has gaps or duplicates"
            );
            let a = acked.get(&id).copied().unwrap_or(0);
            assert!(
                k >= a,
                "{ctx}: writer {id}: {a} acknowledged, only {k} delivered"
            );
        }
        assert!(
            received.is_empty(),
            "{ctx}: messages from unknown writers: {:?}",
            received.keys()
        );
    }
}
