//! The channel API crossbeam users know, across real processes: `try_read`/`try_write`,
//! deadlines, writes that hand the value back (`TryWriteError<T>`, `WriteTimeoutError<T>`),
//! `len`/`is_empty`/`is_full`/`capacity`, `try_iter`; and `Spawned`'s `is_alive`, `try_join`,
//! `join_timeout`, `kill`.
//!
//! Several cases are crossbeam-channel's own (`tests/array.rs`, `tests/zero.rs`: `smoke`,
//! `capacity`, `len_empty_full`, `try_send`, `try_recv`, `send_timeout`, `recv_timeout`),
//! ported to processes: where crossbeam's threads sleep to be sure the other side waits, these
//! wait for a message that says so.

use std::time::{Duration, Instant};

use pycsp::prelude::*;
use pycsp::{Error, Failure};

/// Retries `f` (a `try_` operation that fails while the other side is not ready yet) until it
/// returns `Some`, for at most 10 s; each try that fails is counted.
fn retry<T>(mut f: impl FnMut() -> Option<T>) -> (T, u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failed = 0;
    loop {
        if let Some(v) = f() {
            return (v, failed);
        }
        failed += 1;
        assert!(Instant::now() < deadline, "not ready within 10 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// crossbeam array.rs / zero.rs: smoke, capacity, len_empty_full.

#[test]
fn try_operations_on_a_new_channel_find_nothing_and_hand_the_value_back() {
    let rv = Channel::<u32>::new().unwrap();
    let (tx, rx) = (rv.writer(), rv.reader());
    assert_eq!(tx.try_write(7), Err(TryWriteError::Full(7)));
    assert_eq!(rx.try_read(), Err(TryReadError::Empty));

    let buf = Channel::<u32>::buffered(1).unwrap();
    let (tx, rx) = (buf.writer(), buf.reader());
    assert_eq!(tx.try_write(7), Ok(()));
    assert_eq!(tx.try_write(8), Err(TryWriteError::Full(8)));
    assert_eq!(rx.try_read(), Ok(7));
    assert_eq!(rx.try_read(), Err(TryReadError::Empty));
}

#[test]
fn capacity_is_the_buffer_and_zero_for_rendezvous() {
    for cap in [0, 1, 10] {
        let ch = Channel::<()>::buffered(cap).unwrap();
        assert_eq!(ch.writer().capacity(), cap);
        assert_eq!(ch.reader().capacity(), cap);
    }
}

#[process]
fn read_n(inp: ChannelIn<u32>, n: u32) -> Result<Vec<u32>, ChannelError> {
    (0..n).map(|_| inp.read()).collect()
}

#[test]
fn len_is_empty_and_is_full_follow_writes_and_a_reader_in_another_process() {
    let ch = Channel::<u32>::buffered(2).unwrap();
    let (tx, rx) = (ch.writer(), ch.reader());
    let lens = |e: (usize, bool, bool)| {
        assert_eq!((tx.len(), tx.is_empty(), tx.is_full()), e);
        assert_eq!((rx.len(), rx.is_empty(), rx.is_full()), e);
    };
    lens((0, true, false));
    tx.write(1).unwrap();
    lens((1, false, false));
    tx.write(2).unwrap();
    lens((2, false, true));
    let got = Parallel(read_n(ch.reader(), 1)).unwrap();
    assert_eq!(got, Ok(vec![1]));
    lens((1, false, false));
    assert_eq!(rx.read(), Ok(2));
    lens((0, true, false));
}

#[test]
fn a_rendezvous_channel_is_always_empty_and_full() {
    let ch = Channel::<u32>::new().unwrap();
    let (tx, rx) = (ch.writer(), ch.reader());
    for e in [&tx.len(), &rx.len()] {
        assert_eq!(*e, 0);
    }
    assert!(tx.is_empty() && tx.is_full() && rx.is_empty() && rx.is_full());
    let p = Spawn(read_n(ch.reader(), 1)).unwrap();
    tx.write(5).unwrap();
    assert_eq!(p.join().unwrap(), Ok(vec![5]));
    assert!(tx.is_empty() && tx.is_full() && rx.is_empty() && rx.is_full());
    assert_eq!(tx.len(), 0);
}

// crossbeam zero.rs: try_send, try_recv.

/// Says it is about to read, then reads one message and returns it.
#[process]
fn announce_then_read(ready: ChannelOut<()>, inp: ChannelIn<u32>) -> Result<u32, ChannelError> {
    ready.write(())?;
    inp.read()
}

#[test]
fn try_write_on_a_rendezvous_channel_reaches_a_reader_waiting_in_another_process() {
    let (ready, data) = (
        Channel::<()>::new().unwrap(),
        Channel::<u32>::new().unwrap(),
    );
    let tx = data.writer();
    let p = Spawn(announce_then_read(ready.writer(), data.reader())).unwrap();
    ready.reader().read().unwrap();
    // Each try writes its own number: a withdrawn offer that reached the reader would show.
    let mut attempt = 0;
    let (written, _) = retry(|| {
        attempt += 1;
        match tx.try_write(attempt) {
            Ok(()) => Some(attempt),
            Err(TryWriteError::Full(v)) => {
                assert_eq!(v, attempt, "the value comes back");
                None
            }
            Err(e) => panic!("{e:?}"),
        }
    });
    assert_eq!(
        p.join().unwrap(),
        Ok(written),
        "the reader got the try that succeeded"
    );
    // No reader any more: every reader retired.
    assert!(matches!(
        tx.try_write(99),
        Err(TryWriteError::Failed(99, ChannelError::Retired))
    ));
}

#[test]
fn try_write_on_a_rendezvous_channel_without_a_reader_fails_at_once_and_is_never_read() {
    let ch = Channel::<u32>::new().unwrap();
    let (tx, rx) = (ch.writer(), ch.reader());
    for i in 0..100 {
        assert_eq!(tx.try_write(i), Err(TryWriteError::Full(i)));
    }
    // A reader that comes afterwards finds none of them.
    assert_eq!(rx.try_read(), Err(TryReadError::Empty));
    assert_eq!(
        rx.read_timeout(Duration::from_millis(50)),
        Err(ChannelError::Timeout)
    );
}

#[process]
fn write_one(out: ChannelOut<u32>, v: u32) -> Result<(), ChannelError> {
    out.write(v)
}

#[test]
fn try_read_on_a_rendezvous_channel_takes_a_writer_waiting_in_another_process() {
    let ch = Channel::<u32>::new().unwrap();
    let rx = ch.reader();
    let p = Spawn(write_one(ch.writer(), 7)).unwrap();
    let (v, _) = retry(|| match rx.try_read() {
        Ok(v) => Some(v),
        Err(TryReadError::Empty) => None,
        Err(e) => panic!("{e:?}"),
    });
    assert_eq!(v, 7);
    assert_eq!(
        p.join().unwrap(),
        Ok(()),
        "the writer's rendezvous completed"
    );
    // The writer returned: its end retired, and so did the channel's only writer.
    assert_eq!(
        rx.try_read(),
        Err(TryReadError::Failed(ChannelError::Retired))
    );
}

// crossbeam array.rs / zero.rs: send_timeout, recv_timeout.

#[test]
fn write_timeout_waits_for_its_timeout_then_hands_the_value_back() {
    for cap in [0, 1] {
        let ch = Channel::<String>::buffered(cap).unwrap();
        let (tx, rx) = (ch.writer(), ch.reader());
        if cap == 1 {
            tx.write("fills the buffer".into()).unwrap();
        }
        let start = Instant::now();
        let r = tx.write_timeout("late".into(), Duration::from_millis(100));
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(r, Err(WriteTimeoutError::Timeout("late".to_string())));
        if cap == 1 {
            assert_eq!(rx.read().unwrap(), "fills the buffer");
        }
        // Withdrawn: nobody reads it.
        assert_eq!(rx.try_read(), Err(TryReadError::Empty));
    }
}

#[test]
fn write_deadline_in_the_past_is_a_try_and_succeeds_when_there_is_room() {
    let ch = Channel::<u32>::buffered(1).unwrap();
    let (tx, rx) = (ch.writer(), ch.reader());
    let past = Instant::now();
    assert_eq!(tx.write_deadline(1, past), Ok(()));
    assert_eq!(
        tx.write_deadline(2, past),
        Err(WriteTimeoutError::Timeout(2))
    );
    assert_eq!(rx.read_deadline(past), Ok(1));
    assert_eq!(rx.read_deadline(past), Err(ChannelError::Timeout));
}

#[test]
fn read_deadline_waits_for_its_deadline_then_times_out_and_then_reads_what_comes() {
    let ch = Channel::<u32>::new().unwrap();
    let rx = ch.reader();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(100);
    assert_eq!(rx.read_deadline(deadline), Err(ChannelError::Timeout));
    assert!(Instant::now() >= deadline);
    let p = Spawn(write_one(ch.writer(), 8)).unwrap();
    assert_eq!(
        rx.read_deadline(Instant::now() + Duration::from_secs(10)),
        Ok(8)
    );
    assert_eq!(p.join().unwrap(), Ok(()));
}

#[test]
fn a_write_that_the_channel_refuses_hands_the_value_back_with_why() {
    let ch = Channel::<u32>::buffered(4).unwrap();
    let tx = ch.writer();
    drop(ch.reader()); // the only reader retires
    assert_eq!(
        tx.write_timeout(1, Duration::from_secs(10)),
        Err(WriteTimeoutError::Failed(1, ChannelError::Retired))
    );
    assert_eq!(
        tx.try_write(2),
        Err(TryWriteError::Failed(2, ChannelError::Retired))
    );
    let ch = Channel::<u32>::buffered(4).unwrap();
    let (tx, _rx) = (ch.writer(), ch.reader());
    tx.poison();
    assert_eq!(
        tx.try_write(3),
        Err(TryWriteError::Failed(3, ChannelError::Poisoned))
    );
    let e = tx.write_timeout(4, Duration::ZERO).unwrap_err();
    assert_eq!(
        (e.error(), e.into_inner()),
        (ChannelError::Poisoned, Some(4))
    );
}

#[process]
fn read_through_end(inp: ChannelIn<ChannelOut<u32>>) -> Result<(), ChannelError> {
    let out = inp.read()?;
    out.write(42)
}

#[test]
fn a_value_handed_back_keeps_the_channel_ends_and_shared_memory_it_carries() {
    // An end that comes back is still live: it can be sent again and used by a process.
    let ends = Channel::<ChannelOut<u32>>::new().unwrap();
    let data = Channel::<u32>::buffered(1).unwrap();
    let tx = ends.writer();
    let end = match tx.try_write(data.writer()) {
        Err(TryWriteError::Full(end)) => end,
        other => panic!("no reader waits, so the end comes back: {other:?}"),
    };
    let p = Spawn(read_through_end(ends.reader())).unwrap();
    tx.write(end).unwrap();
    assert_eq!(p.join().unwrap(), Ok(()));
    assert_eq!(data.reader().read(), Ok(42));

    // A shared array and a shared block that come back are still the caller's.
    let arrays = Channel::<(SharedArray<u64>, SharedBlock)>::buffered(1).unwrap();
    let (atx, arx) = (arrays.writer(), arrays.reader());
    atx.write((
        SharedArray::from_slice(&[1]).unwrap(),
        SharedBlock::zeroed(8).unwrap(),
    ))
    .unwrap();
    let mut a = SharedArray::from_slice(&[1, 2, 3]).unwrap();
    a[0] = 10;
    let (a, b) = match atx.write_timeout((a, SharedBlock::zeroed(300).unwrap()), Duration::ZERO) {
        Err(WriteTimeoutError::Timeout(v)) => v,
        other => panic!("the buffer is full: {other:?}"),
    };
    assert_eq!((&a[..], b.len()), (&[10, 2, 3][..], 300));
    arx.read().unwrap();
    atx.write((a, b)).unwrap();
    let (a, b) = arx.read().unwrap();
    assert_eq!((&a[..], b.len()), (&[10, 2, 3][..], 300));
}

// try_iter, and iterating over &ChannelIn.

#[process]
fn write_all(out: ChannelOut<u32>, n: u32) -> Result<(), ChannelError> {
    (0..n).try_for_each(|i| out.write(i))
}

#[test]
fn try_iter_reads_what_is_there_and_stops_without_waiting() {
    let ch = Channel::<u32>::buffered(8).unwrap();
    let rx = ch.reader();
    assert_eq!(rx.try_iter().count(), 0);
    Parallel(write_all(ch.writer(), 5)).unwrap().unwrap();
    let got: Vec<u32> = rx.try_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    // Every writer retired and the buffer is drained: a clean end, no error.
    assert_eq!(rx.try_iter().count(), 0);
}

#[test]
fn try_iter_reports_poison_instead_of_ending_cleanly() {
    let ch = Channel::<u32>::buffered(8).unwrap();
    let (tx, rx) = (ch.writer(), ch.reader());
    tx.write(1).unwrap();
    tx.poison();
    let items: Vec<_> = rx.try_iter().collect();
    assert_eq!(items, [Err(ChannelError::Poisoned)]);
}

#[test]
fn a_reference_to_a_reading_end_iterates_until_the_writers_retire() {
    let ch = Channel::<u32>::buffered(2).unwrap();
    let rx = ch.reader();
    let p = Spawn(write_all(ch.writer(), 10)).unwrap();
    let mut sum = 0;
    for v in &rx {
        sum += v.unwrap();
    }
    assert_eq!(sum, 45);
    assert_eq!(p.join().unwrap(), Ok(()));
}

// Spawned: is_alive, try_join, join_timeout, kill.

#[process]
fn wait_for_go(go: ChannelIn<u32>) -> Result<u32, ChannelError> {
    go.read()
}

#[test]
fn is_alive_and_try_join_follow_a_process_until_it_returns() {
    let go = Channel::<u32>::new().unwrap();
    let tx = go.writer();
    let p = Spawn(wait_for_go(go.reader())).unwrap();
    assert!(p.is_alive());
    let p = p.try_join().expect_err("it waits for go");
    let p = p
        .join_timeout(Duration::from_millis(50))
        .expect_err("it still waits for go");
    tx.write(3).unwrap();
    let result = p
        .join_timeout(Duration::from_secs(10))
        .expect("it returns once it has go");
    assert_eq!(result.unwrap(), Ok(3));
}

#[test]
fn try_join_returns_once_every_process_has_ended() {
    let go = Channel::<u32>::buffered(2).unwrap();
    let tx = go.writer();
    let mut p = Spawn((wait_for_go(go.reader()), wait_for_go(go.reader()))).unwrap();
    tx.write(1).unwrap();
    tx.write(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        match p.try_join() {
            Ok(out) => break out,
            Err(still) => p = still,
        }
        assert!(Instant::now() < deadline, "the processes did not end");
        std::thread::sleep(Duration::from_millis(1));
    };
    let (a, b) = out.unwrap();
    let mut got = [a.unwrap(), b.unwrap()];
    got.sort();
    assert_eq!(got, [1, 2]);
}

#[test]
fn kill_ends_a_process_that_would_never_return_and_its_peers_learn_it_died() {
    let go = Channel::<u32>::new().unwrap();
    let p = Spawn(wait_for_go(go.reader())).unwrap();
    let pid = p.pids()[0];
    let tx = go.writer();
    p.kill();
    match p.join() {
        Err(Error::ProcessFailed {
            pid: failed,
            failure: Failure::Signaled(9),
            ..
        }) => assert_eq!(failed, pid),
        other => panic!("expected SIGKILL: {other:?}"),
    }
    assert!(matches!(tx.write(1), Err(ChannelError::PeerDied { .. })));
}

#[process]
fn answer() -> u32 {
    42
}

#[test]
fn kill_leaves_a_process_that_already_ended_alone() {
    let p = Spawn(answer()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.is_alive() {
        assert!(Instant::now() < deadline, "the process did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    p.kill(); // it was reaped: its pid is not signalled
    assert_eq!(p.join().unwrap(), 42);
}

/// A timeout too large to add to the clock (`Duration::MAX`) means "no deadline", as in
/// crossbeam-channel: every operation and timer that takes a duration waits as if it had none,
/// and none panics on the overflow.
#[test]
fn a_timeout_too_large_for_the_clock_means_no_deadline() {
    let buffered = Channel::<u32>::buffered(1).unwrap();
    let (out, inp) = (buffered.writer(), buffered.reader());
    out.write_timeout(7, Duration::MAX).unwrap();
    assert_eq!(inp.read_timeout(Duration::MAX), Ok(7));

    // A rendezvous read with no deadline is completed by a writer in another thread.
    let rendezvous = Channel::<u32>::new().unwrap();
    let (out, inp) = (rendezvous.writer(), rendezvous.reader());
    let writer = std::thread::spawn(move || out.write(9));
    assert_eq!(inp.read_timeout(Duration::MAX), Ok(9));
    writer.join().unwrap().unwrap();

    // Timers and timeout guards that are never due: the ready channel is chosen.
    let ready = Channel::<u32>::buffered(1).unwrap();
    let (out, inp) = (ready.writer(), ready.reader());
    out.write(3).unwrap();
    let (late, every) = (pycsp::after(Duration::MAX), pycsp::tick(Duration::MAX));
    let got = pycsp::select! {
        recv(inp) -> v => v.unwrap(),
        recv(late) -> _ => 100,
        recv(every) -> _ => 200,
    };
    assert_eq!(got, 3);
    out.write(4).unwrap();
    let got = Alternation::new()
        .input(&inp, |v| v)
        .timeout(Duration::MAX, || 0)
        .pri_select()
        .unwrap();
    assert_eq!(got.value, 4);
}
