//! The delivery contract (the crash-safety chapter's table): a write that returns `Ok` is
//! readable by some reader, an abnormal end of a channel is never reported as a clean one,
//! and every failure names the process it came from.

use pycsp::prelude::*;
use serde::{Deserialize, Serialize};

mod common;

#[process]
fn source_then_poison(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    out.poison();
    Err(ChannelError::Poisoned)
}

#[process]
fn source_then_panic(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    for i in 0..n {
        out.write(i)?;
    }
    panic!("the source fails after {n} items");
}

/// The pipeline idiom the book teaches.
#[process]
fn double(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    for x in inp.iter() {
        out.write(x? * 2)?;
    }
    Ok(())
}

#[process]
fn sum(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.iter().sum()
}

/// A stage written with plain reads: it returns what stopped it.
#[process]
fn double_by_reads(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), ChannelError> {
    loop {
        let x = match inp.read() {
            Ok(x) => x,
            Err(ChannelError::Retired) => return Ok(()),
            Err(e) => return Err(e),
        };
        out.write(x * 2)?;
    }
}

fn channels(capacity: usize) -> (Channel<u64>, Channel<u64>) {
    (
        Channel::<u64>::named_buffered(&common::unique("a"), capacity).unwrap(),
        Channel::<u64>::named_buffered(&common::unique("b"), capacity).unwrap(),
    )
}

#[test]
fn every_stage_after_a_poison_returns_poisoned() {
    for capacity in [0, 8] {
        let (a, b) = channels(capacity);
        let (src, mid, end) = Parallel((
            source_then_poison(a.writer(), 500),
            double(a.reader(), b.writer()),
            sum(b.reader()),
        ))
        .unwrap();
        assert_eq!(src, Err(ChannelError::Poisoned), "capacity {capacity}");
        assert_eq!(mid, Err(ChannelError::Poisoned), "capacity {capacity}");
        assert_eq!(end, Err(ChannelError::Poisoned), "capacity {capacity}");
    }
}

fn assert_names_source(r: &Result<u64, ChannelError>, what: &str) {
    match r {
        Err(ChannelError::PeerDied { process, .. }) => {
            assert!(process.ends_with("source_then_panic"), "{what}: {process}")
        }
        other => panic!("{what}: expected PeerDied naming the source, got {other:?}"),
    }
}

/// The sink in this process, so that its result is seen whatever the others did.
fn sum_here(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.iter().sum()
}

#[test]
fn every_stage_after_a_crash_returns_peer_died_naming_the_crashed_process() {
    for capacity in [0, 8] {
        let (a, b) = channels(capacity);
        let h = Spawn((
            source_then_panic(a.writer(), 5),
            double(a.reader(), b.writer()),
        ))
        .unwrap();
        let end = sum_here(b.reader());
        assert_names_source(&end, &format!("sink, capacity {capacity}"));
        match h.join() {
            Err(pycsp::Error::ProcessFailed { name, .. }) => {
                assert!(name.ends_with("source_then_panic"), "{name}")
            }
            other => panic!("expected the source's panic, got {other:?}"),
        }
    }
}

#[test]
fn a_stage_that_returns_peer_died_passes_the_crash_on_instead_of_retiring() {
    for capacity in [0, 8] {
        let (a, b) = channels(capacity);
        let c = Channel::<u64>::named_buffered(&common::unique("c"), capacity).unwrap();
        let h = Spawn((
            source_then_panic(a.writer(), 5),
            double_by_reads(a.reader(), b.writer()),
            double_by_reads(b.reader(), c.writer()),
        ))
        .unwrap();
        let end = sum_here(c.reader());
        assert_names_source(&end, &format!("third stage, capacity {capacity}"));
        let _ = h.join();
    }
}

/// A value whose encoding always fails.
#[derive(Deserialize)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value cannot be encoded"))
    }
}

#[process]
fn never_runs(out: ChannelOut<u64>, _bad: Unencodable) -> Result<(), ChannelError> {
    out.write(1)
}

#[test]
fn a_process_whose_arguments_cannot_be_encoded_is_not_started_and_poisons_its_ends() {
    let ch = Channel::<u64>::named_buffered(&common::unique("unencodable"), 1).unwrap();
    let r = ch.reader();
    match Parallel(never_runs(ch.writer(), Unencodable)) {
        Err(pycsp::Error::Spawn { name, reason }) => {
            assert!(name.ends_with("never_runs"), "{name}");
            assert!(reason.contains("cannot be encoded"), "{reason}");
        }
        other => panic!("expected a Spawn error, got {other:?}"),
    }
    assert_eq!(r.read(), Err(ChannelError::Poisoned));
}

/// Waits on the gate, then dies: its end of `ch` marks the channel as held by a dead process.
#[process]
fn die_after_gate(_ch: ChannelOut<u64>, gate: ChannelIn<u8>) -> Result<(), ChannelError> {
    gate.read()?;
    std::process::abort()
}

#[test]
fn a_rendezvous_write_that_fails_was_not_delivered() {
    // A writer waits in a rendezvous write; another writer of the channel dies; then a reader
    // looks. The waiting write either returned Ok (a reader took the message) or failed, and
    // then no reader may get the message: a writer that retries must not send it twice.
    for round in 0..20 {
        let ch = Channel::<u64>::named(&common::unique("rv-fail")).unwrap();
        let gate = Channel::<u8>::named_buffered(&common::unique("rv-fail-gate"), 1).unwrap();
        let (r, g) = (ch.reader(), gate.writer());
        let h = Spawn(die_after_gate(ch.writer(), gate.reader())).unwrap();
        let w = ch.writer();
        let writer = std::thread::spawn(move || w.write(7));
        // Vary when the other writer dies: before or after the write placed its message (the
        // outcome must be right in every order, so this only spreads the rounds).
        std::thread::sleep(std::time::Duration::from_millis(round % 5));
        g.write(1).unwrap();
        let _ = h.join();
        let wrote = writer.join().unwrap();
        let read = r.read_timeout(std::time::Duration::from_millis(200));
        match (&wrote, &read) {
            (Ok(()), _) => {}
            (Err(_), Ok(v)) => {
                panic!("round {round}: the write failed ({wrote:?}) but a reader read {v}")
            }
            (Err(_), Err(_)) => {}
        }
    }
}
#[test]
fn a_writer_attached_after_every_writer_retired_is_refused() {
    let ch = Channel::<u64>::named_buffered(&common::unique("late"), 4).unwrap();
    let r = ch.reader();
    ch.writer().write(1).unwrap(); // the only writer retires as it drops
    assert_eq!(r.read(), Ok(1));
    assert_eq!(r.read(), Err(ChannelError::Retired));
    let late = Channel::<u64>::open(ch.name()).unwrap().writer();
    assert_eq!(
        late.write(2),
        Err(ChannelError::Retired),
        "a write the readers can never see must not return Ok"
    );
    assert_eq!(r.read(), Err(ChannelError::Retired));
}
