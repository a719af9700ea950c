//! Sizes from a user (a channel's capacity, a message's or a block's length) can be absurd:
//! they must fail with a typed error and leave the network's shared memory exactly as it was,
//! so that live channels keep their messages and later allocations still succeed.

use std::os::unix::fs::MetadataExt;

use pycsp_core::{Channel, ChannelError, SharedBlock};

/// The error of an allocation that does not fit in shared memory (now or ever).
fn assert_no_room(what: &str, r: Result<impl std::fmt::Debug, ChannelError>) {
    match r {
        Err(ChannelError::Capacity { .. }) => {}
        other => panic!("{what}: expected a Capacity error, got {other:?}"),
    }
}

/// A later, ordinary channel and block are still possible, and work.
fn assert_still_usable(tag: &str) {
    let ch = Channel::<u64>::named_buffered(&format!("after-{tag}"), 4).unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    w.write(42).unwrap();
    assert_eq!(r.read().unwrap(), 42);
    let mut b = SharedBlock::new(100_000).unwrap();
    b[99_999] = 7;
    assert_eq!(b[99_999], 7);
}

#[test]
fn a_failed_huge_buffer_leaves_room_for_later_channels() {
    assert_no_room(
        "buffered(1 << 40)",
        Channel::<u64>::named_buffered("huge", 1 << 40),
    );
    assert_still_usable("huge");
}

#[test]
fn capacities_whose_size_overflows_are_typed_errors() {
    for (i, cap) in [
        usize::MAX,
        usize::MAX / 2,
        1 << 57,
        (1 << 57) + 1,
        (1 << 57) - 1,
        usize::MAX / 128,
        1 << 63,
    ]
    .into_iter()
    .enumerate()
    {
        assert_no_room(
            &format!("buffered({cap})"),
            Channel::<u64>::named_buffered(&format!("overflow-{i}"), cap),
        );
    }
    assert_still_usable("overflow");
}

#[test]
fn a_block_larger_than_shared_memory_is_too_large_and_changes_nothing() {
    let max = SharedBlock::max_len().unwrap();
    for len in [36usize << 30, max + 1, usize::MAX, usize::MAX - 15, 1 << 63] {
        match SharedBlock::new(len) {
            Err(ChannelError::TooLarge { len: l, max: m, .. }) => {
                assert_eq!((l, m), (len as u64, max as u64));
            }
            other => panic!("SharedBlock::new({len}): expected TooLarge, got {other:?}"),
        }
    }
    assert_still_usable("too-large-block");
}

/// Bytes of the network's shared memory that hold pages (the arena memfd's allocated blocks).
fn arena_pages_bytes() -> u64 {
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy().starts_with("/memfd:pycsp-arena") {
            return std::fs::metadata(e.path()).unwrap().blocks() * 512;
        }
    }
    panic!("this process has no arena");
}

#[test]
fn a_huge_buffer_touches_its_slots_only_as_messages_use_them() {
    Channel::<u8>::named("touch-probe").unwrap();
    let before = arena_pages_bytes();
    // 10^7 slots of 128 bytes: 1.28 GB if they were written at creation.
    let ch = Channel::<u64>::named_buffered("ten-million", 10_000_000).unwrap();
    let touched = arena_pages_bytes().saturating_sub(before);
    assert!(
        touched < 64 << 20,
        "creating the channel touched {touched} bytes"
    );
    let (w, r) = (ch.writer(), ch.reader());
    for i in 0..10_000u64 {
        w.write(i).unwrap();
    }
    for i in 0..10_000u64 {
        assert_eq!(r.read().unwrap(), i);
    }
}

/// Buffered messages stay intact and readable however the arena was mistreated meanwhile.
#[test]
fn random_absurd_and_normal_sizes_never_disturb_a_live_channel() {
    // Messages of every kind of size: inline in a slot, and in blocks of a few size classes.
    let sizes = [0usize, 1, 50, 100, 200, 1000, 5000, 70_000, 300_000];
    let message = |i: usize| -> Vec<u64> {
        let n = sizes[i % sizes.len()] / 8;
        (0..n as u64).map(|k| k * 31 + i as u64).collect()
    };
    let live = Channel::<Vec<u64>>::named_buffered("live", 64).unwrap();
    let (w, r) = (live.writer(), live.reader());
    for i in 0..64 {
        w.write(message(i)).unwrap();
    }
    let mut held = SharedBlock::new(50_000).unwrap();
    for (k, b) in held.iter_mut().enumerate() {
        *b = (k % 241) as u8;
    }
    let max_block = SharedBlock::max_len().unwrap();
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for step in 0..150 {
            let tag = format!("prop-{seed}-{step}");
            match rng.below(4) {
                0 | 1 => {
                    let cap = capacity(&mut rng);
                    let huge = (cap as u128) * 128 > 64 << 30;
                    match Channel::<u32>::named_buffered(&tag, cap) {
                        Ok(ch) if cap > 0 => {
                            assert!(!huge, "seed {seed} step {step}: buffered({cap}) succeeded");
                            let (cw, cr) = (ch.writer(), ch.reader());
                            cw.write(step).unwrap();
                            assert_eq!(cr.read().unwrap(), step);
                        }
                        Ok(_) => {}
                        Err(ChannelError::Capacity { .. }) => {}
                        Err(e) => panic!("seed {seed} step {step}: buffered({cap}): {e:?}"),
                    }
                }
                2 => {
                    let len = block_len(&mut rng, max_block);
                    match SharedBlock::new(len) {
                        Ok(mut b) => {
                            assert!(len <= max_block);
                            if len > 1 {
                                b[0] = 1;
                                b[len - 1] = 2;
                                assert_eq!((b[0], b[len - 1]), (1, 2));
                            }
                        }
                        Err(ChannelError::TooLarge { .. }) if len > max_block => {}
                        Err(ChannelError::Capacity { .. }) if len <= max_block => {}
                        Err(e) => panic!("seed {seed} step {step}: SharedBlock::new({len}): {e:?}"),
                    }
                }
                _ => {
                    // An ordinary message through an ordinary channel, next to the live one.
                    let ch = Channel::<Vec<u64>>::named_buffered(&tag, 2).unwrap();
                    let m = message(rng.below(1000) as usize);
                    ch.writer().write(m.clone()).unwrap();
                    assert_eq!(ch.reader().read().unwrap(), m);
                }
            }
        }
    }
    for i in 0..64 {
        assert_eq!(
            r.read().unwrap(),
            message(i),
            "live message {i} was disturbed"
        );
    }
    for (k, b) in held.iter().enumerate() {
        assert_eq!(
            *b,
            (k % 241) as u8,
            "a live block was disturbed at byte {k}"
        );
    }
    assert_still_usable("property");
}

/// A capacity: usually ordinary, often absurd (near powers of two, near `usize::MAX`, sizes
/// whose byte count wraps around 2^64).
fn capacity(rng: &mut Rng) -> usize {
    let jitter = rng.below(5).wrapping_sub(2);
    let base = match rng.below(8) {
        0 => return rng.below(1025) as usize,
        1 => return rng.below(100_000) as usize,
        2 => 1 << (36 + rng.below(28)),
        3 => u64::MAX,
        4 => (1 << 57) - rng.below(4096),
        5 => u64::MAX / 128,
        6 => return rng.next() as usize,
        _ => 1 << 63,
    };
    base.wrapping_add(jitter) as usize
}

/// A block length: ordinary, or around the largest block, or absurd.
fn block_len(rng: &mut Rng, max: usize) -> usize {
    let jitter = (rng.below(5) as usize).wrapping_sub(2);
    match rng.below(6) {
        0 | 1 => rng.below(300_000) as usize,
        2 => max + 1 + rng.below(3) as usize,
        3 => usize::MAX.wrapping_add(jitter),
        4 => (36usize << 30).wrapping_add(jitter),
        _ => rng.next() as usize,
    }
}

/// xorshift64*: enough randomness for sizes, and the same sequence for a seed on any machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
