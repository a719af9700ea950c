//! Typed shared memory across real processes: `SharedArray` pieces that workers fill in place
//! and that join into the whole array again, and shared atomics updated by several processes.

use std::time::Duration;

use pycsp::prelude::*;
use pycsp::{Error, Failure};

mod common;

#[test]
fn split_pieces_are_disjoint_in_order_and_cover_the_array() {
    for n in [0usize, 1, 7, 100, 1001] {
        for k in [1usize, 2, 3, 8, 200] {
            let pieces = SharedArray::<u32>::zeroed(n).unwrap().split_into(k);
            assert_eq!(pieces.len(), k);
            let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
            let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(max - min <= 1, "n {n} k {k}: {lens:?}");
            let mut at = 0;
            for p in &pieces {
                assert_eq!(
                    p.range().start,
                    at,
                    "n {n} k {k}: in order, no gap or overlap"
                );
                assert_eq!(p.len(), p.range().len());
                assert_eq!(p.whole_len(), n);
                at = p.range().end;
            }
            assert_eq!(at, n);
        }
        for size in [1usize, 3, 64] {
            let pieces = SharedArray::<u32>::zeroed(n).unwrap().into_chunks(size);
            let mut at = 0;
            for p in &pieces {
                assert_eq!(p.range().start, at);
                assert!(p.len() == size || p.range().end == n);
                at = p.range().end;
            }
            assert_eq!(at, n);
        }
    }
}

#[test]
fn writing_one_piece_changes_only_its_own_elements() {
    let mut pieces = SharedArray::<u64>::zeroed(100).unwrap().split_into(4);
    for (i, p) in pieces.iter_mut().enumerate() {
        p.fill(i as u64 + 1);
    }
    pieces.reverse(); // join takes them in any order
    let whole = SharedArray::join(pieces).unwrap();
    assert!(whole.is_whole());
    for (j, x) in whole.iter().enumerate() {
        assert_eq!(*x, j as u64 / 25 + 1, "element {j}");
    }
}

/// Fills its piece with `f(global index)` in place and hands it back.
#[process]
fn fill(
    inp: ChannelIn<SharedArray<f64>>,
    out: ChannelOut<SharedArray<f64>>,
) -> Result<(), ChannelError> {
    for piece in &inp {
        let mut piece = piece?;
        let start = piece.range().start;
        for (i, x) in piece.iter_mut().enumerate() {
            *x = ((start + i) as f64).sqrt();
        }
        out.write(piece)?;
    }
    Ok(())
}

#[test]
fn pieces_written_by_worker_processes_are_visible_after_join() {
    let n = 100_000;
    let (jobs, done) = (
        Channel::buffered(16).unwrap(),
        Channel::buffered(16).unwrap(),
    );
    let workers = Spawn(replicate(3, |_| fill(jobs.reader(), done.writer()))).unwrap();
    let (tx, rx) = (jobs.writer(), done.reader());
    let pieces = SharedArray::<f64>::zeroed(n).unwrap().into_chunks(7_000);
    let k = pieces.len();
    for p in pieces {
        tx.write(p).unwrap();
    }
    drop(tx);
    let back: Vec<_> = (0..k).map(|_| rx.read().unwrap()).collect();
    drop(done);
    workers.join().unwrap().into_iter().for_each(|r| r.unwrap());
    let whole = SharedArray::join(back).unwrap();
    assert_eq!(whole.len(), n);
    for (i, x) in whole.iter().enumerate() {
        assert_eq!(*x, (i as f64).sqrt(), "element {i}");
    }
}

/// A piece passed as an argument and returned as the process's value.
#[process]
fn negate(mut a: SharedArray<i32>) -> SharedArray<i32> {
    for x in a.iter_mut() {
        *x = -*x;
    }
    a
}

#[test]
fn pieces_travel_as_process_arguments_and_return_values() {
    let data: Vec<i32> = (0..10).collect();
    let [a, b] = <[_; 2]>::try_from(SharedArray::from_slice(&data).unwrap().split_into(2)).unwrap();
    let (a, b) = Parallel((negate(b), negate(a))).unwrap();
    let whole = SharedArray::join(vec![a, b]).unwrap();
    assert_eq!(&whole[..], &[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]);
}

#[test]
fn join_refuses_pieces_of_different_arrays_and_gives_them_back() {
    let mut a = SharedArray::<u8>::zeroed(10).unwrap().split_into(2);
    let b = SharedArray::<u8>::zeroed(10).unwrap().split_into(2);
    a[0].fill(1);
    let mixed = vec![a.remove(0), b.into_iter().nth(1).unwrap()];
    let e = SharedArray::join(mixed).unwrap_err();
    assert!(e.reason().contains("another array"), "{e}");
    let back = e.into_pieces();
    assert_eq!(back.len(), 2);
    assert_eq!(&back[0][..], &[1; 5], "the pieces come back unchanged");
}

#[test]
fn join_refuses_missing_pieces_and_no_pieces() {
    let mut pieces = SharedArray::<u8>::zeroed(9).unwrap().split_into(3);
    let middle = pieces.remove(1);
    let e = SharedArray::join(pieces).unwrap_err();
    assert!(e.reason().contains("3..6 of 9 are missing"), "{e}");
    let mut pieces = e.into_pieces();
    let last = pieces.pop().unwrap();
    let e = SharedArray::join(pieces).unwrap_err();
    assert!(e.reason().contains("3..9 of 9 are missing"), "{e}");
    let mut pieces = e.into_pieces();
    pieces.push(last);
    pieces.push(middle);
    assert!(SharedArray::join(pieces).unwrap().is_whole());
    let none: Vec<SharedArray<u8>> = Vec::new();
    assert!(SharedArray::join(none).is_err());
}

#[test]
fn join_refuses_a_piece_that_was_sent_away() {
    let mut pieces = SharedArray::<u8>::zeroed(4).unwrap().split_into(2);
    let ch = Channel::<SharedArray<u8>>::buffered(1).unwrap();
    let (tx, rx) = (ch.writer(), ch.reader());
    tx.write_ref(&pieces[1]).unwrap(); // moved; `pieces[1]` is spent
    let e = SharedArray::join(pieces).unwrap_err();
    assert!(e.reason().contains("piece 1 was sent away"), "{e}");
    pieces = e.into_pieces();
    pieces[1] = rx.read().unwrap();
    assert!(SharedArray::join(pieces).unwrap().is_whole());
}

/// Takes a piece and dies with it: by a panic (the piece is dropped while unwinding) or by
/// SIGKILL (it is never dropped).
#[process]
fn die_holding(inp: ChannelIn<SharedArray<u64>>, ready: ChannelOut<()>, kill: bool) {
    let mut piece = inp.read().unwrap();
    piece.fill(0xdead);
    ready.write(()).unwrap();
    if kill {
        // SAFETY: raising a signal at this process has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    panic!("dies holding a piece");
}

#[test]
fn a_piece_dropped_in_a_dead_process_leaves_the_other_pieces_intact() {
    for kill in [false, true] {
        let mut pieces = SharedArray::<u64>::zeroed(3 << 10).unwrap().split_into(3);
        for (i, p) in pieces.iter_mut().enumerate() {
            p.fill(i as u64 + 1);
        }
        let (to, ready) = (Channel::new().unwrap(), Channel::new().unwrap());
        let p = Spawn(die_holding(to.reader(), ready.writer(), kill)).unwrap();
        to.writer().write(pieces.remove(1)).unwrap();
        ready.reader().read().unwrap();
        match p.join() {
            Err(Error::ProcessFailed { failure, .. }) => match (kill, failure) {
                (true, Failure::Signaled(9)) | (false, Failure::Panicked(_)) => {}
                (_, f) => panic!("died otherwise: {f:?}"),
            },
            other => panic!("the process died: {other:?}"),
        }
        // Blocks allocated now (of the same size class) must not be the pieces' block.
        let others: Vec<_> = (0..4)
            .map(|_| {
                let mut a = SharedArray::<u64>::zeroed(3 << 10).unwrap();
                a.fill(u64::MAX);
                a
            })
            .collect();
        assert!(
            pieces[0].iter().all(|&x| x == 1),
            "kill {kill}: piece 0 intact"
        );
        assert!(
            pieces[1].iter().all(|&x| x == 3),
            "kill {kill}: piece 2 intact"
        );
        assert!(others.iter().all(|a| a.iter().all(|&x| x == u64::MAX)));
        let e = SharedArray::join(pieces).unwrap_err();
        assert!(e.reason().contains("missing"), "{e}");
    }
}

/// Adds to three shared counters, `n` times each.
#[process]
fn count(u: SharedAtomicU64, i: SharedAtomicI64, f: SharedAtomicF64, n: u64) {
    for _ in 0..n {
        u.fetch_add(1);
        i.fetch_sub(2);
        f.fetch_add(0.5);
    }
}

#[test]
fn counters_with_fetch_add_from_several_processes_sum_exactly() {
    let (u, i, f) = (
        SharedAtomicU64::new(0).unwrap(),
        SharedAtomicI64::new(0).unwrap(),
        SharedAtomicF64::new(0.0).unwrap(),
    );
    let n = 20_000;
    let procs = replicate(4, |_| count(u.clone(), i.clone(), f.clone(), n));
    Parallel(procs).unwrap();
    assert_eq!(u.load(), 4 * n);
    assert_eq!(i.load(), -8 * n as i64);
    assert_eq!(f.load(), 2.0 * n as f64); // halves add up exactly in an f64
}

#[test]
fn compare_exchange_and_fetch_update_are_the_lock_pattern() {
    let v = SharedAtomicI64::new(5).unwrap();
    assert_eq!(v.compare_exchange(5, 6), Ok(5));
    assert_eq!(v.compare_exchange(5, 7), Err(6));
    assert_eq!(v.fetch_update(|x| Some(x * 10)), Ok(6));
    assert_eq!(v.fetch_update(|_| None), Err(60));
    assert_eq!(
        (v.swap(1), v.fetch_max(3), v.fetch_min(-1), v.load()),
        (60, 1, 3, -1)
    );
    let f = SharedAtomicF64::new(1.5).unwrap();
    assert_eq!(f.compare_exchange(1.5, 2.5), Ok(1.5));
    assert_eq!(
        (f.fetch_max(4.0), f.fetch_min(0.5), f.load()),
        (2.5, 4.0, 0.5)
    );
}

/// Waits for `go`, then reports what the shared value holds.
#[process]
fn watch(v: SharedAtomicU64, go: ChannelIn<()>) -> Result<u64, ChannelError> {
    go.read()?;
    Ok(v.load())
}

#[test]
fn a_store_in_one_process_is_seen_by_another_holding_a_clone() {
    let v = SharedAtomicU64::new(1).unwrap();
    let go = Channel::new().unwrap();
    let p = Spawn(watch(v.clone(), go.reader())).unwrap();
    v.store(77);
    go.writer().write(()).unwrap();
    assert_eq!(
        p.join_timeout(Duration::from_secs(30)).unwrap().unwrap(),
        Ok(77)
    );
}

#[test]
fn a_socket_channel_refuses_shared_arrays_and_atomics_and_hands_them_back() {
    let ch = Channel::<SharedArray<u8>>::named_buffered("tcp://127.0.0.1:0/arrays", 1).unwrap();
    let port = common::port_of(ch.name());
    match ch
        .writer()
        .try_write(SharedArray::from_slice(&[9]).unwrap())
    {
        Err(TryWriteError::Failed(a, ChannelError::Encode { reason, .. })) => {
            assert!(reason.contains("socket channel"), "{reason}");
            assert_eq!(&a[..], &[9], "still the caller's");
        }
        other => panic!("expected an Encode error with the array back: {other:?}"),
    }
    let atomics = format!("tcp://127.0.0.1:{port}/atomics");
    let ch = Channel::<SharedAtomicU64>::named_buffered(&atomics, 1).unwrap();
    let v = SharedAtomicU64::new(3).unwrap();
    match ch.writer().write_timeout(v, Duration::from_secs(10)) {
        Err(WriteTimeoutError::Failed(v, ChannelError::Encode { .. })) => assert_eq!(v.load(), 3),
        other => panic!("expected an Encode error with the atomic back: {other:?}"),
    }
}

#[test]
fn a_piece_travels_in_a_message_too_large_for_a_ring_slot() {
    let ch = Channel::<(SharedArray<u8>, Vec<u8>, SharedBlock)>::buffered(1).unwrap();
    let (tx, rx) = (ch.writer(), ch.reader());
    let a = SharedArray::from_slice(&[5; 10]).unwrap();
    let b = SharedBlock::from_slice(&[6; 10]).unwrap();
    tx.write((a, vec![7; 300], b)).unwrap();
    let (a, v, b) = rx.read().unwrap();
    assert_eq!((&a[..], v.len(), &b[..]), (&[5; 10][..], 300, &[6; 10][..]));
}
