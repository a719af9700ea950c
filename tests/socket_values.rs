//! What a socket channel carries: channel ends travel through it as through shared memory
//! (opened by a one-time token, never by an address), and what stands for shared memory (a
//! `SharedBlock`, an end of a shared-memory channel) is refused at the writer, before anything
//! is sent.

use pycsp::prelude::*;

mod common;

#[process]
fn send_end(ends: ChannelOut<ChannelOut<u64>>, end: ChannelOut<u64>) -> Result<(), ChannelError> {
    ends.write(end)
}

#[test]
fn an_end_sent_through_a_socket_channel_by_a_remote_writer_reaches_its_reader() {
    let ends = Channel::<ChannelOut<u64>>::named("tcp://127.0.0.1:0/ends").unwrap();
    let port = common::port_of(ends.name());
    let data = Channel::<u64>::named_buffered(&format!("tcp://127.0.0.1:{port}/data"), 4).unwrap();
    let (er, dr) = (ends.reader(), data.reader());
    let h = Spawn(send_end(ends.writer(), data.writer()).on(Placement::launcher("{cmd}"))).unwrap();
    let end = er.read().expect("the end arrives whole");
    end.write(42).unwrap();
    drop(end);
    assert_eq!(h.join().unwrap(), Ok(()));
    assert_eq!(dr.read(), Ok(42));
    assert_eq!(dr.read(), Err(ChannelError::Retired));
}

#[process]
fn send_block(out: ChannelOut<SharedBlock>) -> Result<(), ChannelError> {
    let mut b = SharedBlock::new(1 << 16).map_err(|e| ChannelError::SharedMemory(e.to_string()))?;
    b.fill(7);
    out.write(b)
}

#[test]
fn a_shared_block_is_refused_at_a_remote_writer_before_anything_is_sent() {
    let blocks = Channel::<SharedBlock>::named_buffered("tcp://127.0.0.1:0/blocks", 4).unwrap();
    let r = blocks.reader();
    let sent = Parallel(send_block(blocks.writer()).on(Placement::launcher("{cmd}"))).unwrap();
    match sent {
        Err(ChannelError::Encode { reason, .. }) => {
            assert!(reason.contains("Bytes"), "{reason}")
        }
        other => panic!("expected an Encode error at the writer, got {other:?}"),
    }
    assert!(
        matches!(r.read(), Err(ChannelError::Retired)),
        "nothing was delivered"
    );
    assert_eq!(
        pycsp::net::next_connection_error(blocks.name(), std::time::Duration::ZERO),
        None
    );
}

#[test]
fn a_shared_block_or_a_local_end_is_refused_by_a_socket_channel_in_its_host_too() {
    let blocks = Channel::<SharedBlock>::named_buffered("tcp://127.0.0.1:0/b", 1).unwrap();
    let port = common::port_of(blocks.name());
    let err = blocks.writer().write(SharedBlock::new(64).unwrap());
    assert!(matches!(err, Err(ChannelError::Encode { .. })), "{err:?}");
    let ends =
        Channel::<ChannelIn<u8>>::named_buffered(&format!("tcp://127.0.0.1:{port}/e"), 1).unwrap();
    let local = Channel::<u8>::named_buffered(&common::unique("local"), 1).unwrap();
    let err = ends.writer().write(local.reader());
    match err {
        Err(ChannelError::Encode { reason, .. }) => {
            assert!(reason.contains("socket channel"), "{reason}")
        }
        other => panic!("expected an Encode error, got {other:?}"),
    }
}
