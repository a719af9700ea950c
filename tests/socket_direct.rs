//! A remote rendezvous end's user exchanges its messages on the end's connection itself while
//! the end's pump waits (`net/direct.rs`): every message still arrives once and in order, a
//! user that waits longer than its own wait, or not at all, hands the exchange back to the
//! pump without losing anything, and failures reach the user as before. Processes placed by
//! the trivial launcher `{cmd}` are their own process networks, so their ends of channels
//! hosted here are remote ends.

use std::time::Duration;

use pycsp::prelude::*;

mod common;

/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(10);

/// Longer than a user's own wait on its connection (5 ms), so that the pump takes over.
const LATE: Duration = Duration::from_millis(30);

fn here() -> Placement {
    Placement::launcher("{cmd}")
}

fn local(name: &str) -> String {
    format!(
        "local://{}/{name}",
        common::unique(&format!("pycsp-direct-{}", std::process::id()))
    )
}

fn tcp(name: &str) -> String {
    format!("tcp://127.0.0.1:0/{name}")
}

/// Reads `r` until every writer retired (each read within [`PROMPT`]): the values.
fn read_until_retired(r: &ChannelIn<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match r.read_timeout(PROMPT) {
            Ok(v) => got.push(v),
            Err(ChannelError::Retired) => return got,
            Err(e) => panic!("{e}"),
        }
    }
}

#[process]
fn echo(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<u64, ChannelError> {
    let mut n = 0;
    loop {
        match inp.read() {
            Ok(v) => out.write(v)?,
            Err(ChannelError::Retired) => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
    }
}

fn echo_over(a: &str, b: &str) {
    let (a, b) = (
        Channel::<u64>::named(a).unwrap(),
        Channel::<u64>::named(b).unwrap(),
    );
    let p = Spawn(echo(a.reader(), b.writer()).on(here())).unwrap();
    let (w, r) = (a.writer(), b.reader());
    drop((a, b));
    for i in 0..2000u64 {
        w.write(i * 7).unwrap();
        assert_eq!(r.read_timeout(PROMPT).unwrap(), i * 7);
    }
    drop(w);
    assert_eq!(p.join().unwrap().unwrap(), 2000);
}

#[test]
fn a_remote_echo_over_rendezvous_channels_returns_every_message_once_in_order_local() {
    echo_over(&local("a"), &local("b"));
}

#[test]
fn a_remote_echo_over_rendezvous_channels_returns_every_message_once_in_order_tcp() {
    echo_over(&tcp("a"), &tcp("b"));
}

#[process]
fn read_n(inp: ChannelIn<u64>, n: usize) -> Result<Vec<u64>, ChannelError> {
    (0..n).map(|_| inp.read()).collect()
}

/// Every other message comes later than the user's own wait: it goes through the pump.
#[test]
fn a_remote_reader_whose_message_comes_late_gets_it_through_its_pump() {
    let c = Channel::<u64>::named(&local("late")).unwrap();
    let p = Spawn(read_n(c.reader(), 8).on(here())).unwrap();
    let w = c.writer();
    drop(c);
    for i in 0..8 {
        if i % 2 == 1 {
            std::thread::sleep(LATE);
        }
        w.write(i).unwrap();
    }
    assert_eq!(p.join().unwrap().unwrap(), (0..8).collect::<Vec<_>>());
}

#[process]
fn produce(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    (0..n).try_for_each(|i| out.write(i))
}

/// Every other message is read later than the writer's own wait: the writer asks it back
/// and writes it through the pump, which offers it again; each arrives once.
#[test]
fn a_remote_writer_whose_reader_comes_late_delivers_each_message_once() {
    let c = Channel::<u64>::named(&local("slow-reader")).unwrap();
    let p = Spawn(produce(c.writer(), 8).on(here())).unwrap();
    let r = c.reader();
    drop(c);
    let mut got = Vec::new();
    for i in 0..8 {
        if i % 2 == 1 {
            std::thread::sleep(LATE);
        }
        got.push(r.read_timeout(PROMPT).unwrap());
    }
    p.join().unwrap().unwrap();
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Retired));
}

/// Reads five messages (the first through its pump, the others on its connection), says
/// so, then reads no more until `gate`: what it read then.
#[process]
fn take_five_then_wait(
    inp: ChannelIn<u64>,
    took: ChannelOut<u64>,
    gate: ChannelIn<()>,
) -> Result<u64, ChannelError> {
    let sum = (0..5).map(|_| inp.read()).sum::<Result<u64, _>>()?;
    took.write(sum)?;
    gate.read()?;
    inp.read()
}

/// The remote reader asked for the next message (with its last `Ack`) and then stopped
/// reading: the message the host sends it is not left on the connection, it goes back to
/// the host's channel for its other readers (after the hold), as a message a remote reader
/// does not take always did.
#[test]
fn a_message_a_remote_reader_does_not_come_for_goes_back_to_the_other_readers() {
    let c = Channel::<u64>::named(&local("jobs")).unwrap();
    let took = Channel::<u64>::named(&local("took")).unwrap();
    let gate = Channel::<()>::named(&local("gate")).unwrap();
    let p =
        Spawn(take_five_then_wait(c.reader(), took.writer(), gate.reader()).on(here())).unwrap();
    let (w, r, took_r, gate_w) = (c.writer(), c.reader(), took.reader(), gate.writer());
    drop((c, took, gate));
    for i in 0..5 {
        w.write(i).unwrap();
    }
    assert_eq!(took_r.read_timeout(PROMPT).unwrap(), 10);
    // The write waits until a reader takes the message: in a thread of its own, so that
    // a message left with the remote reader fails the test instead of hanging it.
    let other = std::thread::spawn(move || r.read_timeout(PROMPT));
    let writer = std::thread::spawn(move || w.write(5).map(|()| w));
    assert_eq!(
        other.join().unwrap(),
        Ok(5),
        "the other reader got the message"
    );
    let w = writer.join().unwrap().unwrap();
    gate_w.write(()).unwrap();
    w.write(6).unwrap();
    assert_eq!(p.join().unwrap().unwrap(), 6);
}

#[process]
fn read_until_error(inp: ChannelIn<u64>) -> Result<(Vec<u64>, ChannelError), ChannelError> {
    let mut got = Vec::new();
    loop {
        match inp.read() {
            Ok(v) => got.push(v),
            Err(e) => return Ok((got, e)),
        }
    }
}

/// The host poisons the channel while the remote reader waits for its next message, on its
/// connection or through its pump: the read fails with `Poisoned`.
#[test]
fn poison_reaches_a_remote_reader_waiting_for_its_next_message() {
    for wait in [Duration::ZERO, Duration::from_millis(2), LATE] {
        let c = Channel::<u64>::named(&local("poisoned")).unwrap();
        let p = Spawn(read_until_error(c.reader()).on(here())).unwrap();
        let w = c.writer();
        drop(c);
        w.write(1).unwrap();
        w.write(2).unwrap();
        std::thread::sleep(wait);
        w.poison();
        let (got, e) = p.join().unwrap().unwrap();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(e, ChannelError::Poisoned, "after waiting {wait:?}");
    }
}

#[process]
fn write_with_deadline(out: ChannelOut<u64>) -> Result<bool, ChannelError> {
    out.write(1)?;
    // Nobody reads this one in time: not delivered.
    let late = out.write_timeout(2, Duration::from_millis(20));
    out.write(3)?;
    Ok(matches!(late, Err(WriteTimeoutError::Timeout(2))))
}

/// A remote write whose deadline passes before a reader comes is withdrawn: `Timeout`, and
/// no reader ever gets that message.
#[test]
fn a_remote_write_whose_deadline_passes_is_withdrawn_and_never_delivered() {
    let c = Channel::<u64>::named(&local("deadline")).unwrap();
    let p = Spawn(write_with_deadline(c.writer()).on(here())).unwrap();
    let r = c.reader();
    drop(c);
    assert_eq!(r.read_timeout(PROMPT).unwrap(), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        r.read_timeout(PROMPT).unwrap(),
        3,
        "the withdrawn message never came"
    );
    assert!(p.join().unwrap().unwrap(), "the late write said Timeout");
}

/// Reads with two threads of its own on clones of one remote end until the channel retires:
/// the values each read (one thread may read on the connection while the other reads
/// through the pump).
#[process]
fn read_with_two_threads(inp: ChannelIn<u64>) -> Result<(Vec<u64>, Vec<u64>), ChannelError> {
    let other = inp.clone();
    let read_all = |r: ChannelIn<u64>| {
        let mut got = Vec::new();
        loop {
            match r.read() {
                Ok(v) => got.push(v),
                Err(ChannelError::Retired) => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    };
    let t = std::thread::spawn(move || read_all(other));
    let mine = read_all(inp)?;
    Ok((mine, t.join().unwrap()?))
}

#[test]
fn two_threads_reading_one_remote_end_get_every_message_once() {
    let c = Channel::<u64>::named(&local("two-readers")).unwrap();
    let p = Spawn(read_with_two_threads(c.reader()).on(here())).unwrap();
    let w = c.writer();
    drop(c);
    for i in 0..2000 {
        w.write(i).unwrap();
    }
    drop(w);
    let (a, b) = p.join().unwrap().unwrap();
    let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..2000).collect::<Vec<_>>(),
        "{} + {} values",
        a.len(),
        b.len()
    );
    for v in [&a, &b] {
        assert!(
            v.windows(2).all(|w| w[0] < w[1]),
            "each thread's values in order"
        );
    }
}

/// Writes `n` values from each of two threads of its own on clones of one remote end.
#[process]
fn write_with_two_threads(out: ChannelOut<u64>, n: u64) -> Result<(), ChannelError> {
    let other = out.clone();
    let t = std::thread::spawn(move || (n..2 * n).try_for_each(|i| other.write(i)));
    (0..n).try_for_each(|i| out.write(i))?;
    t.join().unwrap()
}

#[test]
fn two_threads_writing_one_remote_end_deliver_every_message_once() {
    let c = Channel::<u64>::named(&local("two-writers")).unwrap();
    let p = Spawn(write_with_two_threads(c.writer(), 1000).on(here())).unwrap();
    let r = c.reader();
    drop(c);
    let got = read_until_retired(&r);
    p.join().unwrap().unwrap();
    let (low, high): (Vec<u64>, Vec<u64>) = got.iter().partition(|&&v| v < 1000);
    assert_eq!(
        low,
        (0..1000).collect::<Vec<_>>(),
        "one writer's values, in order"
    );
    assert_eq!(
        high,
        (1000..2000).collect::<Vec<_>>(),
        "the other's, in order"
    );
}

/// Says its pid, reads `n` messages, then reads on until it is killed.
#[process]
fn read_until_killed(
    inp: ChannelIn<u64>,
    pid: ChannelOut<u32>,
    n: u64,
) -> Result<(), ChannelError> {
    pid.write(std::process::id())?;
    for _ in 0..n {
        inp.read()?;
    }
    loop {
        inp.read()?;
    }
}

/// A remote reader killed while it waits for its next message (on its connection, or
/// through its pump) takes nothing with it: the next message goes to a reader here, or (the
/// death reached the channel first: a peer of it died) the writer learns it was not
/// delivered, and the reader here is told of the death instead of getting it. Never a write
/// that says `Ok` with nobody having the message.
#[test]
fn a_remote_reader_killed_while_it_waits_takes_no_message_with_it() {
    for wait in [Duration::from_millis(1), LATE] {
        let c = Channel::<u64>::named(&local("killed")).unwrap();
        let pid = Channel::<u32>::named(&local("pid")).unwrap();
        let p = Spawn(read_until_killed(c.reader(), pid.writer(), 10).on(here())).unwrap();
        let (w, r) = (c.writer(), c.reader());
        let pid = pid.reader().read_timeout(PROMPT).unwrap();
        drop(c);
        for i in 0..10 {
            w.write(i).unwrap();
        }
        std::thread::sleep(wait);
        // SAFETY: kill has no memory preconditions; the pid is the placed process's.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        let writer = std::thread::spawn(move || w.write(10));
        let got = r.read_timeout(PROMPT);
        let wrote = writer.join().unwrap();
        match (&got, &wrote) {
            (Ok(10), Ok(())) => {}
            (
                Err(ChannelError::PeerDied { pid: a, .. }),
                Err(ChannelError::PeerDied { pid: b, .. }),
            ) if *a == pid && *b == pid => {}
            _ => panic!("killed after {wait:?}: the reader got {got:?}, the writer {wrote:?}"),
        }
        assert!(p.join().is_err(), "the placed process was killed");
    }
}

/// Reads `first` messages itself (on the connection), then hands its end on to a child of
/// its own (a local child, or one it places in turn), which reads `then` more: what each
/// read.
#[process]
fn read_then_hand_on(
    inp: ChannelIn<u64>,
    first: usize,
    then: usize,
    place_again: bool,
) -> Result<(Vec<u64>, Vec<u64>), String> {
    let mine: Vec<u64> = (0..first)
        .map(|_| inp.read())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let child = read_n(inp, then);
    let child = if place_again { child.on(here()) } else { child };
    let theirs = Parallel(child)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((mine, theirs))
}

/// Writes `first` values itself (on the connection), then hands its end on to a child of its
/// own, which writes `then` more.
#[process]
fn write_then_hand_on(
    out: ChannelOut<u64>,
    first: u64,
    then: u64,
    place_again: bool,
) -> Result<(), String> {
    (0..first)
        .try_for_each(|i| out.write(i))
        .map_err(|e| e.to_string())?;
    let child = produce_from(out, first, then);
    let child = if place_again { child.on(here()) } else { child };
    Parallel(child)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[process]
fn produce_from(out: ChannelOut<u64>, from: u64, n: u64) -> Result<(), ChannelError> {
    (from..from + n).try_for_each(|i| out.write(i))
}

/// A remote rendezvous end whose user read or wrote on the connection itself moves on to
/// another process with nothing lost or doubled: every message once, in order.
#[test]
fn a_remote_end_that_exchanged_on_its_connection_hands_on_with_every_message_once() {
    for place_again in [false, true] {
        let c = Channel::<u64>::named(&local("handed-reader")).unwrap();
        let p = Spawn(read_then_hand_on(c.reader(), 20, 20, place_again).on(here())).unwrap();
        let w = c.writer();
        drop(c);
        for i in 0..40 {
            w.write(i).unwrap();
        }
        let (mine, theirs) = p.join().unwrap().unwrap();
        assert_eq!(
            mine,
            (0..20).collect::<Vec<_>>(),
            "placed again: {place_again}"
        );
        assert_eq!(
            theirs,
            (20..40).collect::<Vec<_>>(),
            "placed again: {place_again}"
        );

        let c = Channel::<u64>::named(&local("handed-writer")).unwrap();
        let p = Spawn(write_then_hand_on(c.writer(), 20, 20, place_again).on(here())).unwrap();
        let r = c.reader();
        drop(c);
        let got: Vec<u64> = (0..40).map(|_| r.read_timeout(PROMPT).unwrap()).collect();
        assert_eq!(
            got,
            (0..40).collect::<Vec<_>>(),
            "placed again: {place_again}"
        );
        p.join().unwrap().unwrap();
        assert_eq!(r.read_timeout(PROMPT), Err(ChannelError::Retired));
    }
}

/// Writes `rounds` times a single value after a pause (the end's user sends it on the
/// connection itself) and then a burst of `burst` (through the pump, which batches them),
/// flushing once each round: the flushes' outcomes.
#[process]
fn write_in_bursts(
    out: ChannelOut<u64>,
    rounds: u64,
    burst: u64,
) -> Result<Vec<bool>, ChannelError> {
    let mut next = 0;
    let mut flushed = Vec::new();
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(3));
        out.write(next)?;
        next += 1;
        flushed.push(out.flush(PROMPT).is_ok());
        for _ in 0..burst {
            out.write(next)?;
            next += 1;
        }
    }
    Ok(flushed)
}

/// A remote writer of a buffered channel sends the first message after a pause on the
/// connection itself and the rest through its pump: they arrive once and in order, and
/// `flush` still waits for the host's confirmation of every one.
#[test]
fn a_remote_buffered_writer_that_pauses_delivers_every_message_once_in_order() {
    let c = Channel::<u64>::named_buffered(&local("bursts"), 8).unwrap();
    let p = Spawn(write_in_bursts(c.writer(), 20, 30).on(here())).unwrap();
    let r = c.reader();
    drop(c);
    let got = read_until_retired(&r);
    assert_eq!(got, (0..20 * 31).collect::<Vec<_>>());
    assert_eq!(
        p.join().unwrap().unwrap(),
        vec![true; 20],
        "every flush confirmed"
    );
}
