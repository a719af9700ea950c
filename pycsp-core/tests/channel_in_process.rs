//! Channel semantics between threads of one process (the cross-process tests live in the
//! `pycsp` crate's `tests/`). Same shared-memory ring, same code paths.

use std::thread;
use std::time::{Duration, Instant};

use pycsp_core::{Channel, ChannelError};

#[test]
fn buffered_channel_keeps_order_and_retires_after_drain() {
    let ch = Channel::<u32>::named_buffered("order", 8).unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    let t = thread::spawn(move || {
        for i in 0..1000 {
            w.write(i).unwrap();
        }
        w.retire();
    });
    let got: Vec<u32> = r.iter().collect::<Result<_, _>>().unwrap();
    t.join().unwrap();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert_eq!(r.read(), Err(ChannelError::Retired));
}

#[test]
fn rendezvous_write_returns_only_after_the_reader_took_the_message() {
    let ch = Channel::<u64>::named("rendezvous-ack").unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    let t = thread::spawn(move || {
        w.write(7).unwrap();
        Instant::now()
    });
    // Give a wrong (non-blocking) write every chance to return first.
    thread::sleep(Duration::from_millis(100));
    let reading_from = Instant::now();
    assert_eq!(r.read().unwrap(), 7);
    let returned_at = t.join().unwrap();
    // A rendezvous write returns only once the message was taken, so after the read began.
    assert!(
        returned_at >= reading_from,
        "write returned {:?} before the read began",
        reading_from - returned_at
    );
}

#[test]
fn any_to_any_delivers_each_message_exactly_once_in_per_writer_order() {
    let ch = Channel::<(u32, u32)>::named_buffered("any-to-any", 4).unwrap();
    let writers: Vec<_> = (0..4u32)
        .map(|id| {
            let w = ch.writer();
            thread::spawn(move || {
                for i in 0..2000u32 {
                    w.write((id, i)).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let r = ch.reader();
            thread::spawn(move || r.iter().collect::<Result<Vec<(u32, u32)>, _>>().unwrap())
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut all = Vec::new();
    for r in readers {
        let got = r.join().unwrap();
        // Within one reader, each writer's messages arrive in order.
        for id in 0..4 {
            let seq: Vec<u32> = got.iter().filter(|m| m.0 == id).map(|m| m.1).collect();
            assert!(seq.windows(2).all(|w| w[0] < w[1]));
        }
        all.extend(got);
    }
    all.sort();
    let expected: Vec<(u32, u32)> = (0..4)
        .flat_map(|id| (0..2000).map(move |i| (id, i)))
        .collect();
    assert_eq!(all, expected);
}

#[test]
fn poison_fails_blocked_and_later_operations_even_with_data_buffered() {
    let ch = Channel::<u8>::named_buffered("poison-now", 4).unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    w.write(1).unwrap();
    let r2 = ch.reader();
    let blocked = Channel::<u8>::named("poison-blocked").unwrap();
    let br = blocked.reader();
    let bw = blocked.writer();
    let t = thread::spawn(move || br.read());
    bw.poison();
    assert_eq!(t.join().unwrap(), Err(ChannelError::Poisoned));
    ch.poison();
    assert_eq!(r.read(), Err(ChannelError::Poisoned));
    assert_eq!(r2.read(), Err(ChannelError::Poisoned));
    assert_eq!(w.write(2), Err(ChannelError::Poisoned));
}

#[test]
fn writers_get_retired_once_every_reader_retired() {
    let ch = Channel::<u8>::named_buffered("readers-gone", 1).unwrap();
    let w = ch.writer();
    let (r1, r2) = (ch.reader(), ch.reader());
    r1.retire();
    w.write(1).unwrap();
    drop(r2);
    assert_eq!(w.write(2), Err(ChannelError::Retired));
}

#[test]
fn messages_larger_than_a_slot_round_trip() {
    let ch = Channel::<Vec<u64>>::named_buffered("large", 2).unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    for n in [0usize, 13, 14, 1000, 300_000] {
        let v: Vec<u64> = (0..n as u64).map(|i| i * 2_654_435_761).collect();
        w.write_ref(&v).unwrap();
        assert_eq!(r.read().unwrap(), v);
    }
}

#[test]
fn opening_with_another_type_is_an_error_naming_both_types() {
    let _ch = Channel::<u64>::named("typed").unwrap();
    let err = Channel::<String>::open("typed").unwrap_err();
    match &err {
        ChannelError::TypeMismatch {
            channel,
            expected,
            found,
        } => {
            assert_eq!(channel, "typed");
            assert!(expected.contains("String"), "{expected}");
            assert_eq!(found, "u64");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("u64") && err.to_string().contains("String"));
    assert!(Channel::<u64>::open("typed").is_ok());
}

#[test]
fn names_are_unique_within_a_network() {
    let _a = Channel::<u8>::named("unique-name").unwrap();
    assert_eq!(
        Channel::<u8>::named("unique-name").unwrap_err(),
        ChannelError::NameInUse("unique-name".into())
    );
    assert_eq!(
        Channel::<u8>::open("no-such").unwrap_err(),
        ChannelError::NotFound("no-such".into())
    );
    let long = "x".repeat(200);
    assert!(matches!(
        Channel::<u8>::named(&long),
        Err(ChannelError::NameTooLong { .. })
    ));
}

#[test]
fn read_timeout_expires_without_a_writer() {
    let ch = Channel::<u8>::named("timeout").unwrap();
    let (_w, r) = (ch.writer(), ch.reader());
    let start = Instant::now();
    assert_eq!(
        r.read_timeout(Duration::from_millis(50)),
        Err(ChannelError::Timeout)
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
}
