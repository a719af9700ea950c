//! Supervision without a join: a started process that dies is noticed at once, whether or not
//! anyone joins it, and dropping a `Spawned` never waits forever.

use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::{Error, Failure};

mod common;

/// Waits for the gate, then writes (or dies as told).
#[process]
fn hold_then(out: ChannelOut<u64>, gate: ChannelIn<u8>, how: u8) -> Result<(), ChannelError> {
    gate.read()?;
    match how {
        0 => std::process::abort(),
        1 => std::process::exit(3),
        _ => out.write(1),
    }
}

/// How long a blocked reader of `r` takes to learn that its writer died, and what it got.
fn reader_learns(r: &ChannelIn<u64>, since: Instant) -> (Duration, Result<u64, ChannelError>) {
    let got = r.read_timeout(Duration::from_secs(10));
    (since.elapsed(), got)
}

fn assert_peer_died(got: &Result<u64, ChannelError>, latency: Duration) {
    match got {
        Err(ChannelError::PeerDied { process, .. }) => {
            assert!(process.ends_with("hold_then"), "{process}")
        }
        other => panic!("expected PeerDied naming hold_then, got {other:?} after {latency:?}"),
    }
    // 100 ms on a quiet machine; the bound leaves room for a loaded one.
    assert!(
        latency < Duration::from_secs(1),
        "noticed after {latency:?}"
    );
    println!("noticed after {latency:?}");
}

#[test]
fn a_spawned_child_killed_from_outside_wakes_its_reader_without_a_join() {
    let ch = Channel::<u64>::named(&common::unique("reap-kill")).unwrap();
    let gate = Channel::<u8>::named(&common::unique("reap-kill-gate")).unwrap();
    let _gate_open = gate.writer();
    let r = ch.reader();
    let h = Spawn(hold_then(ch.writer(), gate.reader(), 2)).unwrap();
    let pid = h.pids()[0];
    let since = Instant::now();
    // SAFETY: sending SIGKILL to our own child process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let (latency, got) = reader_learns(&r, since);
    assert_peer_died(&got, latency);
    match h.join() {
        Err(Error::ProcessFailed {
            failure, pid: p, ..
        }) => {
            assert_eq!(failure, Failure::Signaled(libc::SIGKILL));
            assert_eq!(p, pid);
        }
        other => panic!("expected the kill to be reported, got {other:?}"),
    }
}

#[test]
fn a_spawned_child_that_aborts_or_exits_wakes_its_reader_without_a_join() {
    for (how, failure) in [
        (0, Failure::Signaled(libc::SIGABRT)),
        (1, Failure::Exited(3)),
    ] {
        let ch = Channel::<u64>::named(&common::unique("reap-exit")).unwrap();
        let gate = Channel::<u8>::named_buffered(&common::unique("reap-exit-gate"), 1).unwrap();
        let g = gate.writer();
        let r = ch.reader();
        let h = Spawn(hold_then(ch.writer(), gate.reader(), how)).unwrap();
        let since = Instant::now();
        g.write(1).unwrap();
        let (latency, got) = reader_learns(&r, since);
        assert_peer_died(&got, latency);
        match h.join() {
            Err(Error::ProcessFailed { failure: f, .. }) => assert_eq!(f, failure),
            other => panic!("expected {failure:?}, got {other:?}"),
        }
    }
}

#[process]
fn read_one(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.read()
}

#[test]
fn dropping_a_spawned_while_unwinding_stops_its_processes_instead_of_waiting_forever() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| {
            let ch = Channel::<u64>::named(&common::unique("unwind")).unwrap();
            let _w = ch.writer(); // dropped after the Spawned: the child waits on it
            let _h = Spawn(read_one(ch.reader())).unwrap();
            panic!("the root fails while its child waits");
        });
        let _ = done_tx.send(r.is_err());
    });
    match done_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(panicked) => assert!(panicked),
        Err(_) => panic!("dropping the Spawned during the panic did not return within 20 s"),
    }
}
