//! SharedBlock: ownership moves through a channel; a spent handle cannot be used.

use pycsp_core::{Channel, SharedBlock};

#[test]
fn a_block_moves_through_a_channel_without_copying_its_bytes() {
    let ch = Channel::<SharedBlock>::named_buffered("blocks", 2).unwrap();
    let (w, r) = (ch.writer(), ch.reader());
    let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    let block = SharedBlock::from_slice(&data).unwrap();
    let addr = block.as_ptr();
    w.write(block).unwrap();
    let got = r.read().unwrap();
    // Same bytes, same memory: nothing was copied.
    assert_eq!(got.as_ptr(), addr);
    assert!(got[..] == data[..]);
}

#[test]
#[should_panic(expected = "was sent to another process")]
fn a_block_that_was_sent_cannot_be_used_by_its_sender() {
    let ch = Channel::<SharedBlock>::named_buffered("spent-blocks", 2).unwrap();
    let (w, _r) = (ch.writer(), ch.reader());
    let block = SharedBlock::zeroed(16).unwrap();
    w.write_ref(&block).unwrap();
    let _ = block[0];
}

#[test]
fn freed_blocks_are_reused() {
    let a = SharedBlock::new(100_000).unwrap();
    let addr = a.as_ptr();
    drop(a);
    let b = SharedBlock::new(100_000).unwrap();
    assert_eq!(b.as_ptr(), addr);
}
